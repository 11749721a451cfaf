"""Persistent whole-sequence LSTM kernels: one launch per layer and direction, W_hh held on chip across steps.

# B batch, T steps, H hidden, H_PAD = next power of two >= H (the dot depth, constexpr BLOCK_K), U hidden
# units per program (constexpr BLOCK_H), BB batch tile (BLOCK_B), P number of programs = cdiv(H, U).

Why: at small batch a per-step kernel is bound by reading W_hh (4H x H) from L2 once per step plus the gaps
between launches. Here each program loads its slice of W_hh once, before the time loop, and keeps it on chip
for all T steps. Where: Triton (3.6) stores the loop-invariant ``tl.dot`` operand to shared memory once (the
``local_alloc`` is hoisted out of the loop) and reads it with ldmatrix each step, so the slice lives in shared
memory, not in registers (64 KB per program at H = 1024 in 16-bit; the compile check reports registers,
spills and shared memory). The programs meet at a grid-wide barrier once per step.

Programs (H100/H200, 132 SMs): H = 1024 -> 128 programs of 8 units (16 warps); H = 512 -> 128 of 4 (8 warps);
H = 256 -> 64 of 4; H <= 128 -> cdiv(H, 4). The dots are mma.sync (M = 16 is below wgmma's 64).

Forward (``_lstm_fwd_persistent``), program p owns hidden units j in [p*U, p*U + U):
- before the loop it loads W^T slice as one (H_PAD, 4U) tile with *gate-interleaved* columns n = 4*jj + g
  (row g*H + j of W_hh), so a single ``tl.dot`` has N = 4U >= 16 even when U = 4;
- step t, for each batch tile: z = h_{t-1} (BB, H_PAD) @ W slice -> (BB, 4U); reshape (BB, U, 2, 2) and two
  ``tl.split`` give the four gates of its units; add xp[t], activations, cell update; write h_t into the
  per-step buffer ``hbuf[t + 1]`` (hbuf[0] = h0, y = hbuf[1:]), c_t into ``cbuf`` and the gates (as the
  per-step path stores them, so either backward can follow either forward);
- grid barrier after every step (after the last too, which keeps ptxas from spilling around it):
  ``tl.debug_barrier()`` (every thread's stores issued), one release atomic add on a step counter
  (``red.release.gpu``), spin with acquire loads (``ld.acquire.gpu``, which also invalidates L1) until the
  counter reaches (t+1)*P, ``tl.debug_barrier()``. The counter is monotonic (zeroed by the launcher before each
  launch), so there is no reset inside the launch. h_{t-1} is read from its own slot hbuf[t] (a slot no program
  read before, only its 128-byte boundary lines could be cached) and with ``cache_modifier=".cg"`` (skips L1)
  on top. The cell state is private to its program (own units): read back from ``cbuf`` by the program
  that wrote it (slot t % NSLOT, NSLOT = T+1 when storing every c_t for backward, else 2).
- the time loop is ``tl.range(..., num_stages=1)``: never software-pipelined across the barrier.

Backward (``_lstm_bwd_persistent``), program p owns unit columns j of W_hh: the slice W_hh[:, j] (all 4H
rows). dh_t[b, j] = sum_k dz_{t+1}[b, k] W_hh[k, j] needs the full dz_{t+1} row, available after one barrier
per step, and no cross-program reduction. N = U < 16 is too small for ``tl.dot``, so the 4H rows are split
into S = KSPLIT groups (S * U >= 16): A (S*BB, 4*H_PAD/S) stacks the S row groups of dz_{t+1}, W' (4*H_PAD/S,
S*U) puts the S column groups side by side, and dh is the sum of the S diagonal blocks of A @ W' (S times the
minimal arithmetic, which is not what bounds a step at small batch). Then the pointwise LSTM backward of its
units (shared/MATH.md), dz_t written to global memory, dc kept in a private ping-pong buffer. Weight
gradients stay the large GEMMs after the loop (``_common.weight_grads``).

Safety: a kernel cannot raise. A barrier that spins more than ``spin_cap`` iterations writes 1 to an error
flag, and the program stops waiting at later barriers (it finishes its loop on garbage, in bounds); the
launcher reads the flag after the launch and raises ``RuntimeError`` (``check_flag``). Co-residency: the grid is
at most the number of SMs, and the launcher checks that one program fits on one SM (registers x threads,
shared memory) before launching; otherwise it falls back to per_step with the reason logged at DEBUG level on
the ``"fusedrnn"`` logger (``decide``). All programs must run at once: a GPU shared with other work that
occupies SMs for long can make the barrier time out (an error, never a hang).

Scope (``decide``): on CUDA fp16/bf16 up to H = 1024, fp32 up to H = 512, fp64 up to H = 128 (the
compile-checked configs of ``CONFIGS``; fewer SMs than programs -> per_step); no proj_size (h_t = r_t @ W_hr^T needs the whole r_t row: a second product per
step). PackedSequence lengths are supported (finished rows keep their state and output zeros). Anything else
runs per_step: ``strategy="auto"`` silently (reason at DEBUG level), an explicit ``strategy="persistent"`` too,
with the reason logged at DEBUG level (persistent is a performance strategy, never a semantic one, so a
fallback is always correct).

Interpreter (``TRITON_INTERPRET=1``): programs run one after another, so a many-program barrier would time out.
There one program owns every unit (U = H_PAD), the counter reaches (t+1)*1 on its own arrival and the spin
loop does no iteration: the same kernel source is tested for its math ("auto" runs per_step there; only an
explicit "persistent" runs this). The many-program kernels are checked by the compile check (sm_90a and
sm_80, both alignments, every config of ``CONFIGS``, 0 spills).

Not verified without a GPU: co-residency at run time (``_check_coresident`` reads ``n_regs`` and shared
memory of the compiled kernel; any failure there means per_step), the barrier under real concurrency, and
speed. The flag check reads one int after each launch (a host sync per layer and direction).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import (
    DTYPE_GROUPS,  # noqa: F401  (re-exported for tests)
    acc_tl_dtype,
    acc_torch_dtype,
    cast_dot_inputs,
    compile_check_entries,
    dot_precision,
    dtype_group,
    interpreting,
    lstm_cell_bwd,
    lstm_cell_fwd,
    store_blocks,
)

log = logging.getLogger("fusedrnn")

# Spin iterations of one barrier before giving up (each is one acquire load of the counter, ~1 us when
# contended): ~seconds, far beyond any legitimate step.
SPIN_CAP = 1 << 24


@triton.jit
def _grid_barrier(counter, flag, target, cap, alive):
    """Every program of the grid meets here. Returns the updated ``alive`` (0 once a barrier timed out)."""
    tl.debug_barrier()  # every thread of this program has issued its stores
    tl.atomic_add(counter, 1, sem="release", scope="gpu")
    cnt = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
    it = 0
    lim = cap * alive
    while (cnt < target) & (it < lim):
        cnt = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        it += 1
    if cnt < target:
        tl.atomic_xchg(flag, 1)
        alive = 0
    tl.debug_barrier()  # every thread waits for the acquire before reading what others wrote
    return alive


@triton.jit(do_not_specialize=["T", "B", "NSLOT", "spin_cap"])
def _lstm_fwd_persistent(
    xp,  # (T, B, 4H) input projection, biases included
    w,  # (4H, H) W_hh
    hbuf,  # (T+1, B, H) hbuf[0] = h0, hbuf[t+1] = h_t (= y[t])
    cbuf,  # (NSLOT, B, H) accumulator dtype; slot 0 = c0, c_t in slot (t+1) % NSLOT
    gates,  # (T, B, 4H) activated i, f, g, o (only if STORE_GATES)
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    counter,  # (1,) int32, zero at launch
    flag,  # (1,) int32, set to 1 on a barrier timeout
    s_w,
    T, B, H, NSLOT, spin_cap,
    HAS_LENGTHS: tl.constexpr,
    STORE_GATES: tl.constexpr,
    CAST_F32: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,  # batch tile
    BLOCK_H: tl.constexpr,  # U: hidden units per program
    BLOCK_K: tl.constexpr,  # H_PAD
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    U: tl.constexpr = BLOCK_H
    G4H = 4 * H
    # W slice, transposed, gate-interleaved columns: n = 4*jj + g  ->  row g*H + pid*U + jj of W_hh
    o_n = tl.arange(0, 4 * U)
    j_n = pid * U + o_n // 4
    row_n = (o_n % 4) * H + j_n
    o_k = tl.arange(0, BLOCK_K)
    m_k = o_k < H
    b_w = tl.load(w + row_n[None, :].to(tl.int64) * s_w + o_k[:, None], mask=m_k[:, None] & (j_n < H)[None, :],
                  other=0.0)
    if CAST_F32:
        b_w = b_w.to(tl.float32)

    o_j = pid * U + tl.arange(0, U)
    m_j = o_j < H
    s_t = B * H  # step stride of hbuf / cbuf
    alive = 1
    for t in tl.range(0, T, num_stages=1):
        t64 = tl.cast(t, tl.int64)
        # slots of c_{t-1} and c_t; 32-bit remainders (a 64-bit one is a subroutine call with a stack frame)
        slot_prev = tl.cast(t % NSLOT, tl.int64)
        slot_next = tl.cast((t + 1) % NSLOT, tl.int64)
        for b0 in range(0, B, BLOCK_B):
            o_b = b0 + tl.arange(0, BLOCK_B)
            m_b = o_b < B
            m_bj = m_b[:, None] & m_j[None, :]
            b_h = tl.load(hbuf + t64 * s_t + o_b[:, None] * H + o_k[None, :], mask=m_b[:, None] & m_k[None, :],
                          other=0.0, cache_modifier=".cg")
            if CAST_F32:
                b_h = b_h.to(tl.float32)
            z = tl.dot(b_h, b_w, input_precision=PRECISION, out_dtype=ACC)  # (BB, 4U)
            z_even, z_odd = tl.split(tl.reshape(z, (BLOCK_B, U, 2, 2)))  # g % 2 == 0: (i, g); 1: (f, o)
            z_i, z_g = tl.split(z_even)
            z_f, z_o = tl.split(z_odd)

            p_x = xp + t64 * s_t * 4 + o_b[:, None] * G4H + o_j[None, :]
            z_i += tl.load(p_x, mask=m_bj, other=0.0).to(ACC)
            z_f += tl.load(p_x + H, mask=m_bj, other=0.0).to(ACC)
            z_g += tl.load(p_x + 2 * H, mask=m_bj, other=0.0).to(ACC)
            z_o += tl.load(p_x + 3 * H, mask=m_bj, other=0.0).to(ACC)
            o_bj = o_b[:, None] * H + o_j[None, :]
            b_cp = tl.load(cbuf + slot_prev * s_t + o_bj, mask=m_bj, other=0.0)
            b_i, b_f, b_g, b_o, b_c, b_r = lstm_cell_fwd(z_i, z_f, z_g, z_o, b_cp, lengths, t, o_b, m_b,
                                                         HAS_LENGTHS)
            tl.store(cbuf + slot_next * s_t + o_bj, b_c, mask=m_bj)
            tl.store(hbuf + (t64 + 1) * s_t + o_bj, b_r.to(hbuf.dtype.element_ty), mask=m_bj)
            if STORE_GATES:
                store_blocks(gates + t64 * s_t * 4 + o_b[:, None] * G4H + o_j[None, :], H, b_i, b_f, b_g, b_o,
                             m_bj)
        alive = _grid_barrier(counter, flag, (t + 1) * nprog, spin_cap, alive)


@triton.jit(do_not_specialize=["T", "B", "spin_cap"])
def _lstm_bwd_persistent(
    dy,  # (T, B, H) gradient of y (gradient of h_n already added at its step)
    w,  # (4H, H) W_hh
    gates,  # (T, B, 4H) i, f, g, o
    c_seq,  # (T, B, H) c_t, accumulator dtype
    c0,  # (B, H) accumulator dtype
    dcbuf,  # (2, B, H) accumulator dtype; slot 0 = dc_n on entry, dc_0 in slot T % 2 on exit
    dz,  # (T, B, 4H) output dz_t
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    counter,  # (1,) int32, zero at launch
    flag,  # (1,) int32
    s_w,
    T, B, H, spin_cap,
    HAS_LENGTHS: tl.constexpr,
    CAST_F32: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    KSPLIT: tl.constexpr,  # S: row groups of dz stacked along M so that N = S*U >= 16
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,  # U
    BLOCK_K: tl.constexpr,  # H_PAD
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    U: tl.constexpr = BLOCK_H
    S: tl.constexpr = KSPLIT
    KS: tl.constexpr = 4 * BLOCK_K // KSPLIT  # dot depth per row group
    GPS: tl.constexpr = 4 // KSPLIT  # gates per row group
    G4H = 4 * H
    # W' (KS, S*U): W'[k, s*U + jj] = W_hh[gate*H + kk, pid*U + jj], gate = s*GPS + k // H_PAD, kk = k % H_PAD
    o_k = tl.arange(0, KS)
    kk = o_k % BLOCK_K
    o_n = tl.arange(0, S * U)
    s_n = o_n // U
    j_n = pid * U + o_n % U
    gate_kn = s_n[None, :] * GPS + (o_k // BLOCK_K)[:, None]
    b_w = tl.load(w + (gate_kn * H + kk[:, None]).to(tl.int64) * s_w + j_n[None, :],
                  mask=(kk < H)[:, None] & (j_n < H)[None, :], other=0.0)
    if CAST_F32:
        b_w = b_w.to(tl.float32)
    # A (S*BB, KS): A[s*BB + b, k] = dz_{t+1}[b, gate*H + kk], gate = s*GPS + k // BLOCK_K
    o_m = tl.arange(0, S * BLOCK_B)
    s_m = o_m // BLOCK_B
    col_mk = (s_m[:, None] * GPS + (o_k // BLOCK_K)[None, :]) * H + kk[None, :]

    o_j = pid * U + tl.arange(0, U)
    m_j = o_j < H
    s_t = B * H
    alive = 1
    for step in tl.range(0, T, num_stages=1):
        t = T - 1 - step
        t64 = tl.cast(t, tl.int64)
        for b0 in range(0, B, BLOCK_B):
            o_b = b0 + tl.arange(0, BLOCK_B)
            m_b = o_b < B
            m_bj = m_b[:, None] & m_j[None, :]
            o_bj = o_b[:, None] * H + o_j[None, :]
            b_dh = tl.load(dy + t64 * s_t + o_bj, mask=m_bj, other=0.0).to(ACC)
            if step > 0:
                b_m = b0 + o_m % BLOCK_B
                b_a = tl.load(dz + (t64 + 1) * s_t * 4 + b_m[:, None] * G4H + col_mk,
                              mask=(b_m < B)[:, None] & (kk < H)[None, :], other=0.0, cache_modifier=".cg")
                if CAST_F32:
                    b_a = b_a.to(tl.float32)
                r = tl.dot(b_a, b_w, input_precision=PRECISION, out_dtype=ACC)  # (S*BB, S*U)
                if S == 1:
                    b_dh += r
                else:
                    r4 = tl.reshape(r, (S, BLOCK_B, S, U))
                    o_s = tl.arange(0, S)
                    diag = o_s[:, None, None, None] == o_s[None, None, :, None]
                    b_dh += tl.sum(tl.sum(tl.where(diag, r4, 0.0), axis=2), axis=0)

            p_g = gates + t64 * s_t * 4 + o_b[:, None] * G4H + o_j[None, :]
            b_i = tl.load(p_g, mask=m_bj, other=0.0).to(ACC)
            b_f = tl.load(p_g + H, mask=m_bj, other=0.0).to(ACC)
            b_g = tl.load(p_g + 2 * H, mask=m_bj, other=0.0).to(ACC)
            b_o = tl.load(p_g + 3 * H, mask=m_bj, other=0.0).to(ACC)
            b_c = tl.load(c_seq + t64 * s_t + o_bj, mask=m_bj, other=0.0).to(ACC)
            # c_{t-1}: c_seq[t-1], or c0 at t = 0 (two masked loads, one of them empty)
            b_cp = tl.load(c_seq + (t64 - 1) * s_t + o_bj, mask=m_bj & (t > 0), other=0.0).to(ACC)
            b_cp += tl.load(c0 + o_bj, mask=m_bj & (t == 0), other=0.0).to(ACC)
            b_dcin = tl.load(dcbuf + (step % 2) * s_t + o_bj, mask=m_bj, other=0.0).to(ACC)

            b_dzi, b_dzf, b_dzg, b_dzo, b_dcp = lstm_cell_bwd(b_dh, b_i, b_f, b_g, b_o, b_c, b_cp, b_dcin, lengths,
                                                              t, o_b, m_b, HAS_LENGTHS)
            tl.store(dcbuf + ((step + 1) % 2) * s_t + o_bj, b_dcp, mask=m_bj)
            store_blocks(dz + t64 * s_t * 4 + o_b[:, None] * G4H + o_j[None, :], H, b_dzi, b_dzf, b_dzg, b_dzo,
                         m_bj)
        alive = _grid_barrier(counter, flag, (step + 1) * nprog, spin_cap, alive)


# ----------------------------------------------------------------------------------------------
# Configs: one per (dtype group, H_PAD, units per program). Every entry is compiled by kernels/compile_check.py
# for sm_90a and sm_80 in both alignments with 0 spills; only listed entries ever run on a GPU.
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PersistentConfig:
    H_PAD: int  # BLOCK_K: dot depth, next power of two >= H
    UNITS: int  # BLOCK_H: hidden units per program (programs = cdiv(H, UNITS))
    BLOCK_B: int  # forward batch tile (tl.dot's M); backward uses BLOCK_B // KSPLIT (M = KSPLIT * tile)
    fwd_warps: int
    bwd_warps: int
    ksplit: int = 0  # 0: the smallest legal one (tests set it to exercise the stacking in the interpreter)

    @property
    def KSPLIT(self) -> int:
        """Backward row groups S, so that N = S * UNITS >= 16 (tl.dot's minimal N)."""
        return self.ksplit or max(1, 16 // self.UNITS)

    def meta(self, kind: str) -> dict:
        """Constexprs of the ``"fwd"`` or ``"bwd"`` kernel."""
        if kind == "fwd":
            return dict(BLOCK_B=self.BLOCK_B, BLOCK_H=self.UNITS, BLOCK_K=self.H_PAD)
        return dict(BLOCK_B=self.BLOCK_B // self.KSPLIT, BLOCK_H=self.UNITS, BLOCK_K=self.H_PAD, KSPLIT=self.KSPLIT)

    def warps(self, kind: str) -> int:
        return self.fwd_warps if kind == "fwd" else self.bwd_warps

    def as_triton(self, kind: str) -> triton.Config:
        return triton.Config(self.meta(kind), num_warps=self.warps(kind), num_stages=1)


def _cfgs(spec):
    return [PersistentConfig(*c) for c in spec]


# (H_PAD, UNITS, BLOCK_B, forward warps, backward warps), per H_PAD in order of preference (fewest units per
# program first). ``pick_config`` takes the smallest H_PAD >= H, then the first UNITS whose grid fits in the SMs
# (H100/H200: 132; A100: 108, where H in (864, 1024] has no config: it would need 16 units per program, whose
# backward takes 256 KB of shared memory). Smaller H runs in the H_PAD = 128 tile, masked. Triton keeps the
# loop-invariant W slice in shared memory (one local_alloc hoisted out of the time loop, read by ldmatrix each
# step): 64 KB at H = 1024 in 16-bit. The warps are what compiled without a byte of stack (triton 3.6.0): ptxas
# outlines the barrier's spin loop (two bar.sync per iteration, broadcasting the atomic's result) as a
# subroutine and, depending on the warp count, saves a register around it (8 B of stack); at H_PAD = 1024,
# 8 warps capped ptxas at 128 registers and spilled, 16 warps use <= 128.
CONFIGS = {
    "16bit": _cfgs([(1024, 8, 16, 16, 16), (512, 4, 16, 8, 8), (512, 8, 16, 8, 8), (256, 4, 16, 4, 8),
                    (128, 4, 16, 4, 4)]),
    "fp32": _cfgs([(512, 4, 16, 16, 16), (512, 8, 16, 8, 8), (256, 4, 16, 8, 8), (128, 4, 16, 4, 4)]),
    "fp64": _cfgs([(128, 4, 16, 4, 4)]),
}


def _triton_configs(kind):
    return {g: [c.as_triton(kind) for c in cfgs] for g, cfgs in CONFIGS.items()}


# ----------------------------------------------------------------------------------------------
# Planning: which config, or why not (then per_step)
# ----------------------------------------------------------------------------------------------
# "auto" picks persistent only up to this batch: beyond it every program loops over many batch tiles per
# step while per_step spreads the batch over the grid (a heuristic to be measured on the GPU; cuDNN's
# persistent algorithm stops at B = 128 too).
AUTO_MAX_BATCH = 128


def interpreter_config(H: int, block_b: int = 4, ksplit: int = 0) -> PersistentConfig:
    """The interpreter's config: one program owns every unit (U = H_PAD), so the grid barrier is trivial; a
    small batch tile (the interpreter allows tl.dot with M < 16) so that B = 5 runs the batch-tile loop."""
    h_pad = max(16, triton.next_power_of_2(H))
    return PersistentConfig(h_pad, h_pad, block_b, 4, 4, ksplit)


def pick_config(dtype: torch.dtype, H: int, sm_count: int):
    """The compile-checked config of ``dtype``'s group with the smallest H_PAD >= H and then the fewest units
    per program whose grid (cdiv(H, UNITS) programs) fits in ``sm_count`` SMs, or None."""
    fits = [c for c in CONFIGS[dtype_group(dtype)] if c.H_PAD >= H and triton.cdiv(H, c.UNITS) <= sm_count]
    return min(fits, key=lambda c: (c.H_PAD, c.UNITS)) if fits else None


def decide(strategy: str, *, device_type: str, dtype: torch.dtype, H: int, B: int, has_proj: bool,
           sm_count: int = 0, interpret: bool | None = None):
    """Whether a layer runs persistent: returns ``(config, "")`` or ``(None, reason)``. Pure function of its
    arguments (unit-tested with fake device properties); co-residency of the compiled kernel is checked
    later by ``coresidency``.

    - "per_step": never. "auto": on CUDA where a checked config fits and B <= AUTO_MAX_BATCH; in the
      interpreter never (there is nothing to gain, and the per-step kernels stay the tested default).
    - "persistent": in the interpreter always (one program); on CUDA where a checked config fits.
    - never with proj_size, never on a device that is neither CUDA nor the interpreter.
    """
    if strategy == "per_step":
        return None, "strategy='per_step'"
    interpret = interpreting() if interpret is None else interpret
    if has_proj:
        return None, "persistent does not support proj_size (h_t = r_t @ W_hr^T needs the whole r_t row)"
    if interpret:
        if strategy == "auto":
            return None, "strategy='auto' in the interpreter runs per_step"
        return interpreter_config(H), ""
    if device_type != "cuda":
        return None, f"persistent runs on CUDA (device type {device_type!r})"
    if strategy == "auto" and B > AUTO_MAX_BATCH:
        return None, f"B={B} > {AUTO_MAX_BATCH}: per_step parallelizes the batch better"
    cfg = pick_config(dtype, H, sm_count)
    if cfg is None:
        return None, (f"no compile-checked persistent config for {dtype} with H={H} in at most {sm_count} "
                      f"programs (checked: {_supported(dtype)})")
    return cfg, ""


def _supported(dtype) -> str:
    cfgs = CONFIGS[dtype_group(dtype)]
    if not cfgs:
        return "none"
    return f"H <= {max(c.H_PAD for c in cfgs)}, programs = cdiv(H, units) with units in " \
           f"{sorted({c.UNITS for c in cfgs})}"


def coresidency(n_programs: int, n_regs: int, num_warps: int, shared: int, *, sm_count: int,
                regs_per_sm: int = 65536, shared_per_sm: int = 227 * 1024, threads_per_sm: int = 2048) -> str:
    """"" when ``n_programs`` programs of a compiled kernel can all be resident at once (one per SM at
    most: every SM must hold one), else the reason."""
    threads = num_warps * 32
    if n_programs > sm_count:
        return f"{n_programs} programs > {sm_count} SMs"
    if n_regs <= 0:
        return "register count of the compiled kernel unknown"
    if n_regs * threads > regs_per_sm:
        return f"{n_regs} registers x {threads} threads > {regs_per_sm} registers per SM"
    if shared > shared_per_sm:
        return f"{shared} B of shared memory > {shared_per_sm} B per SM"
    if threads > threads_per_sm:
        return f"{threads} threads > {threads_per_sm} per SM"
    return ""


def device_limits(device: torch.device) -> dict:
    """SM count and per-SM limits of a CUDA device (defaults of sm_90 where torch does not say)."""
    p = torch.cuda.get_device_properties(device)
    return dict(
        sm_count=p.multi_processor_count,
        regs_per_sm=getattr(p, "regs_per_multiprocessor", 65536),
        shared_per_sm=getattr(p, "shared_memory_per_block_optin", 227 * 1024),
        threads_per_sm=getattr(p, "max_threads_per_multi_processor", 2048),
    )


class NotCoresident(RuntimeError):
    """The compiled persistent kernel cannot have all its programs resident at once (caller falls back)."""


_CORES_CACHE: dict = {}


def _check_coresident(kernel, grid, args: dict, meta: dict, num_warps: int, device: torch.device):
    """On CUDA: compile (cached) and check that the grid is co-resident; raise NotCoresident otherwise."""
    if interpreting():
        return
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else id(kernel), grid, device.index,
           tuple((k, str(v)) for k, v in sorted(meta.items())),
           tuple(str(v.dtype) if isinstance(v, torch.Tensor) else None for v in args.values()))
    why = _CORES_CACHE.get(key)
    if why is None:
        try:
            ck = kernel.warmup(**args, **meta, grid=grid, num_warps=num_warps, num_stages=1)
            ck._init_handles()
            n_regs, shared = int(ck.n_regs), int(ck.metadata.shared)
            why = coresidency(grid[0], n_regs, num_warps, shared, **device_limits(device))
        except Exception as e:  # noqa: BLE001 - any failure to compile or measure means: do not risk it
            why = f"could not compile/measure the persistent kernel: {type(e).__name__}: {e}"
        _CORES_CACHE[key] = why
    if why:
        raise NotCoresident(why)


def check_flag(flag: torch.Tensor, what: str) -> None:
    """Raise when a persistent kernel's barrier timed out (the kernel wrote 1 to ``flag``). Skipped while a
    CUDA graph is being captured (reading the flag would synchronize)."""
    if flag.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if int(flag.item()) != 0:
        raise RuntimeError(
            f"fusedrnn: the persistent LSTM {what} kernel timed out at its grid barrier (its programs were not "
            "all resident at once: the GPU is shared with other work, or the co-residency check was wrong). "
            "The results are invalid; rerun with strategy='per_step'."
        )


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def lstm_fwd_persistent(xp, w_hh, h0, c0, lengths=None, *, store=True, cfg: PersistentConfig,
                        spin_cap: int = SPIN_CAP, n_programs: int | None = None):
    """The whole forward recurrence of one layer and direction in one launch.

    Args: xp (T, B, 4H) with biases; w_hh (4H, H); h0 (B, H); c0 (B, H); lengths (B,) int32 or None;
    ``cfg`` from ``decide``. ``n_programs`` overrides the grid (tests of the barrier timeout only).
    Returns what ``lstm.lstm_fwd_sequence`` returns: y (T, B, H), c_n (B, H) in the accumulator dtype,
    c_seq (T, B, H), gates (T, B, 4H), None (the last three only with ``store``, else None).
    Raises NotCoresident (before launching) or RuntimeError (barrier timeout).
    """
    T, B, G4 = xp.shape
    H = G4 // 4
    acc = acc_torch_dtype(xp.dtype)
    xp, w_hh = xp.contiguous(), w_hh if w_hh.stride(-1) == 1 else w_hh.contiguous()
    hbuf = xp.new_empty(T + 1, B, H)
    hbuf[0].copy_(h0)
    nslot = T + 1 if store else 2
    cbuf = xp.new_empty(nslot, B, H, dtype=acc)
    cbuf[0].copy_(c0)
    gates = xp.new_empty(T, B, G4) if store else None
    sync = torch.zeros(2, dtype=torch.int32, device=xp.device)  # [counter, error flag]
    grid = (n_programs or triton.cdiv(H, cfg.UNITS),)
    args = dict(xp=xp, w=w_hh, hbuf=hbuf, cbuf=cbuf, gates=gates if store else hbuf,
                lengths=lengths if lengths is not None else sync, counter=sync[0:], flag=sync[1:],
                s_w=w_hh.stride(0), T=T, B=B, H=H, NSLOT=nslot, spin_cap=spin_cap,
                HAS_LENGTHS=lengths is not None, STORE_GATES=store, CAST_F32=cast_dot_inputs(xp.dtype),
                PRECISION=dot_precision(xp.dtype, xp.device), ACC=acc_tl_dtype(xp.dtype))
    meta = cfg.meta("fwd")
    _check_coresident(_lstm_fwd_persistent, grid, args, meta, cfg.fwd_warps, xp.device)
    _lstm_fwd_persistent[grid](**args, **meta, num_warps=cfg.fwd_warps, num_stages=1)
    check_flag(sync[1], "forward")
    y = hbuf[1:]
    c_n = cbuf[T % nslot]
    return y, c_n, (cbuf[1:] if store else None), gates, None


def lstm_bwd_persistent(dy, dc_n, w_hh, c0, c_seq, gates, lengths=None, *, cfg: PersistentConfig,
                        spin_cap: int = SPIN_CAP, n_programs: int | None = None):
    """The whole backward recurrence of one layer and direction in one launch.

    Args: dy (T, B, H) (gradient of h_n added at its step); dc_n (B, H); w_hh (4H, H); c0 (B, H); c_seq
    (T, B, H) accumulator dtype and gates (T, B, 4H) as saved by either forward strategy; lengths or None.
    Returns what ``lstm.lstm_bwd_sequence`` returns: dz (T, B, 4H), dc0 (B, H) accumulator dtype, None.
    """
    T, B, H = dy.shape
    acc = acc_torch_dtype(dy.dtype)
    dy, c_seq, gates = dy.contiguous(), c_seq.contiguous(), gates.contiguous()
    c0 = c0.contiguous()
    w_hh = w_hh if w_hh.stride(-1) == 1 else w_hh.contiguous()
    dz = gates.new_empty(T, B, 4 * H)
    dcbuf = dy.new_empty(2, B, H, dtype=acc)
    dcbuf[0].copy_(dc_n)
    sync = torch.zeros(2, dtype=torch.int32, device=dy.device)
    grid = (n_programs or triton.cdiv(H, cfg.UNITS),)
    args = dict(dy=dy, w=w_hh, gates=gates, c_seq=c_seq, c0=c0, dcbuf=dcbuf, dz=dz,
                lengths=lengths if lengths is not None else sync, counter=sync[0:], flag=sync[1:],
                s_w=w_hh.stride(0), T=T, B=B, H=H, spin_cap=spin_cap,
                HAS_LENGTHS=lengths is not None, CAST_F32=cast_dot_inputs(dy.dtype),
                PRECISION=dot_precision(dy.dtype, dy.device), ACC=acc_tl_dtype(dy.dtype))
    meta = cfg.meta("bwd")
    _check_coresident(_lstm_bwd_persistent, grid, args, meta, cfg.bwd_warps, dy.device)
    _lstm_bwd_persistent[grid](**args, **meta, num_warps=cfg.bwd_warps, num_stages=1)
    check_flag(sync[1], "backward")
    return dz, dcbuf[T % 2], None


def plan(strategy: str, *, device: torch.device, dtype: torch.dtype, H: int, B: int, has_proj: bool):
    """``decide`` for a real device (SM count from torch); logs the reason of a fallback at DEBUG level on
    the "fusedrnn" logger. Returns a config or None (per_step)."""
    sm = device_limits(device)["sm_count"] if device.type == "cuda" else 0
    cfg, why = decide(strategy, device_type=device.type, dtype=dtype, H=H, B=B, has_proj=has_proj, sm_count=sm)
    if cfg is None and strategy != "per_step":
        log.debug("fusedrnn: LSTM strategy=%r runs per_step: %s", strategy, why)
    return cfg


def fallback(strategy: str, err: NotCoresident) -> None:
    log.debug("fusedrnn: LSTM strategy=%r runs per_step: %s", strategy, err)


# Static compile check (kernels/compile_check.py): BLOCK_K is H_PAD, BLOCK_H the units per program; the
# heaviest constexpr variant (lengths, stored gates).
COMPILE_CHECK = compile_check_entries(
    _lstm_fwd_persistent, _triton_configs("fwd"),
    args=dict(xp="x", w="x", hbuf="x", cbuf="acc", gates="x", lengths="*i32", counter="*i32", flag="*i32"),
    constexprs=dict(HAS_LENGTHS=True, STORE_GATES=True, CAST_F32=False),
) + compile_check_entries(
    _lstm_bwd_persistent, _triton_configs("bwd"),
    args=dict(dy="x", w="x", gates="x", c_seq="acc", c0="x", dcbuf="acc", dz="x", lengths="*i32",
              counter="*i32", flag="*i32"),
    constexprs=dict(HAS_LENGTHS=True, CAST_F32=False),
)
