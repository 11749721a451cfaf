"""Persistent whole-sequence LSTM kernels: one launch per layer and direction, W_hh held on chip across steps.

Dimensions: B batch, T steps, H hidden, H_PAD = next power of two >= H (constexpr BLOCK_K), U hidden units per
program (constexpr BLOCK_H), BB batch tile (BLOCK_B), S K slices of each dot (SPLIT_K, one per warp),
KS = H_PAD / S, P number of programs = cdiv(H, U).

Why: at small batch a per-step kernel is bound by reading W_hh (4H x H) from L2 once per step plus the gaps
between launches. Here each program loads its slice of W_hh once, before the time loop, and keeps it on chip
for all T steps. Where: Triton (3.6) stores the loop-invariant ``tl.dot`` operands to shared memory once (the
``local_alloc`` is hoisted out of the loop) and reads them with ldmatrix each step (64 KB per program at
H = 1024 in 16-bit; the compile check reports registers, spills and shared memory). The programs meet at a
grid-wide barrier once per step. Budget and predictions: docs/PERFORMANCE.md. The cell-independent parts (the
barrier, the error flag, the cooperative launch, the co-residency check, ``_splitk_dot``, the W-slice loaders,
the config and the decision skeleton) are in kernels/_persistent.py, shared with the GRU's kernels
(kernels/gru_persistent.py).

Programs (H100/H200, 132 SMs, 16-bit): H = 1024 -> 128 programs of 8 units forward, 64 of 16 backward; H = 512 ->
64 of 8 forward, 32 of 16 backward; H = 256 -> 64 of 4; H <= 128 -> cdiv(H, 4) forward, cdiv(H, 8) backward (the
configs: ``CONFIGS``). The dots are mma.sync (M = 16 is below wgmma's 64).

Split-K (``_splitk_dot``): every dot cuts its reduction axis into S slices and runs a batched (3-D) ``tl.dot``
with the slice as batch axis, (S, BB, KS) x (S, KS, U) -> (S, BB, U), then ``tl.sum`` over the slices. Triton puts
one slice on each warp (``warpsPerCTA = [S, 1, 1]``), so no two warps compute the same MMA tile (a 2-D dot of a
16 x 8 result over 16 warps would repeat it 16 times).

Forward (``_lstm_fwd_persistent``), program p owns hidden units j in [p*U, p*U + U):
- before the loop it loads W_hh's rows of its units for all four gates side by side, W_hh[g*H + j, :]^T as
  (S, KS, 4U) (``_w_units``), so each step has ONE split-K dot and ONE reduction over the slices;
- one loop over (step, batch tile) pairs (the same code for every tile, so one layout: the reduced (BB, 4U) tile
  is converted once to a layout spread over the warps and every activation and cell update is computed by one
  warp): h_{t-1} as (S, BB, KS), the dot plus xp[t] as one (BB, 4U) tile, the activations (``gate_act``), the
  cell (``lstm_cell_state``); h_t into the per-step buffer ``hbuf[t + 1]`` (hbuf[0] = h0, y = hbuf[1:]); after a
  step's last tile the arrival at the barrier, and only then c_t into ``cbuf`` and the gates (as the per-step
  path stores them, so either backward can follow either forward): nothing another program reads waits behind
  them;
- the next tile's xp is loaded before the wait (no other program writes xp), off the step's critical path;
- grid barrier after every step (after the last too): ``_arrive`` (``tl.debug_barrier()``: every thread's stores
  issued, then one release atomic add on a step counter, ``red.release.gpu``) and ``_wait`` (acquire loads,
  ``ld.acquire.gpu``, which also invalidate L1, until the counter reaches (t+1)*P, then ``tl.debug_barrier()``).
  The counter is monotonic (zeroed by the launcher before each launch), so there is no reset inside the launch.
  h_{t-1} is read from its own slot hbuf[t] with ``cache_modifier=".cg"`` (skips L1). The cell state is private to
  its program (own units): read back from ``cbuf`` by the program that wrote it (slot t % NSLOT, carried from
  step to step, NSLOT = T+1 when storing every c_t for backward, else 2);
- the loop is ``tl.range(..., num_stages=1)``: never software-pipelined across the barrier.

Backward (``_lstm_bwd_persistent``), program p owns unit columns j of W_hh: the slice W_hh[:, j] (all 4H rows,
one (S, KS, U) block per gate), passed in as W_hh^T (the launcher's one transposed copy) so that K runs along
the rows and Triton's shared-memory copy is read with ldmatrix (``_w_units``). dh_t[b, j] = sum_k dz_{t+1}[b, k]
W_hh[k, j] needs the full dz_{t+1} row, available after one barrier per step, and no cross-program reduction:
four split-K dots over the gate blocks of the reduction axis, each block's gather issued before the previous
block's dot (``_bwd_dh``), accumulated into one partial and reduced once. Then the pointwise LSTM backward of its
units (docs/MATH.md); dz_t is stored, then the arrival, then dc (a private ping-pong buffer). The same (step,
batch tile) loop as the forward; the next pair's dy, gates, c_t and c_{t-1} (inputs no program writes) are loaded
before the wait, as the forward's xp: off the step's path, and, coming after the dots in the loop body, they are
the loads whose layout Triton gives the pointwise work (a blocked layout spread over the warps; loaded inside the
step, before the dots, the reduced tile's layout won: a slice of the MMA layout, held whole by every warp). Each
pointwise value is computed by one warp where the (BB, U) tile has a value per thread (16 units on 8 warps, 8 on
4). Weight gradients stay the large GEMMs after the loop (``_common.weight_grads``).

Safety: a kernel cannot raise. A barrier that spins more than ``spin_cap`` iterations writes 1 to the device's
sticky error flag (``error_flag``; no kernel clears it), stops waiting at later barriers and writes NaN from then
on (in bounds), so its results can never pass as valid, also inside a CUDA graph. The launcher reads the flag after
an eager launch and raises ``RuntimeError`` (``check_flag``); after a graph replay ``check_errors()`` does, and so
does the next eager launch. On CUDA the launch is cooperative (``launch_cooperative_grid``): the driver guarantees
that all programs are resident at once or refuses the launch; before it the launcher also checks that one program
fits on one SM (registers x threads, shared memory). A refusal or a failed check means per_step, with the reason at
DEBUG level on the ``"fusedrnn"`` logger.

Scope (``decide``): on CUDA fp16/bf16 up to H = 1024, fp32 up to H = 512, fp64 up to H = 128 (the compile-checked
configs of ``CONFIGS``; fewer SMs than programs -> per_step), H % 16 == 0 and 16-byte aligned tensors (only the
aligned kernels are compile-checked); no proj_size (h_t = r_t @ W_hr^T needs the whole r_t row: a second product per
step). PackedSequence lengths are supported (finished rows keep their state and output zeros). Anything else runs
per_step: ``strategy="auto"`` and an explicit ``strategy="persistent"`` alike, with the reason logged at DEBUG level
(persistent is a performance strategy, never a semantic one, so a fallback is always correct). "auto" is decided
per pass and shape from the predictor's table (``_persistent.auto_strategy``).

Interpreter (``TRITON_INTERPRET=1``): programs run one after another, so a many-program barrier would time out.
There one program owns every unit (U = H_PAD), the counter reaches (t+1)*1 on its own arrival and the spin loop
does no iteration: the same kernel source is tested for its math ("auto" runs per_step there; only an explicit
"persistent" runs this). The many-program kernels are checked by the compile check (sm_90a and sm_80, every config
of ``CONFIGS``, 0 spills).

Not verified without a GPU: co-residency at run time, the barrier under real concurrency, and speed. The flag check
reads one int after each eager launch (a host sync per layer and direction).
"""
from __future__ import annotations

import triton
import triton.language as tl
import torch

from . import _persistent as _p
from ._common import (
    acc_torch_dtype,
    carried_rows,
    dtype_group,
    gate_act,
    lstm_cell_bwd,
    lstm_cell_state,
    split_gates4,
    store_blocks,
)
# The cell-independent parts live in kernels/_persistent.py (shared with the GRU's kernels); the names this module
# exposed before are importable from here (patch ``_capturing`` and ``_TRITON`` there, where they are read).
from ._persistent import (  # noqa: F401 - re-exported
    _CORES_CACHE,
    _ERROR_FLAGS,
    _TIMEOUT,
    SPIN_CAP,
    Fallback,
    Misaligned,
    NotCoresident,
    PersistentConfig,
    _arrive,
    _check_aligned,
    _check_coresident,
    _cooperative,
    _launch,
    _blocks_dot,
    _splitk_dot,
    _store_gate_tile,
    _w_units,
    _wait,
    check_errors,
    check_flag,
    coresidency,
    device_limits,
    error_flag,
    interpreter_config,
    log,
)


@triton.jit
def _gate_cols(j0, H, U: tl.constexpr):
    """The (BB, 4U) gate tile's columns: n = g*U + u is unit j0 + u of gate g, at g*H + j0 + u in a (B, 4H) row
    (xp, gates); returns (that offset, its mask, whether the gate is g)."""
    n = tl.arange(0, 4 * U)
    j = j0 + n % U
    return (n // U) * H + j, j < H, (n // U) == 2


@triton.jit
def _fwd_tile(hbuf, lengths, resets, t, b0, B, H, w3, x, c_prev, alive, o_j, is_g,
              HAS_LENGTHS: tl.constexpr, HAS_RESETS: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr,
              ACC: tl.constexpr, FAST: tl.constexpr, BLOCK_B: tl.constexpr, U: tl.constexpr, S: tl.constexpr,
              KS: tl.constexpr):
    """One forward step of one batch tile: z = h_{t-1} @ [W_i; W_f; W_g; W_o]^T slice (one split-K dot, one
    reduction) + xp[t] as a (BB, 4U) tile, the activations, the cell; h_t stored into hbuf[t+1]. Returns the
    activated gates i, f, g, o and c_t, (BB, U) each, for the caller to store after its arrival. HAS_RESETS: the
    rows set in resets[t] start from h_{t-1} = c_{t-1} = 0."""
    t64 = tl.cast(t, tl.int64)
    s_t = B * H
    o_b = b0 + tl.arange(0, BLOCK_B)
    m_b = o_b < B
    # h_{t-1} of the tile as (S, BB, KS): [s, b, k] = h[b, s*KS + k], read past L1 (written by other programs)
    b3 = o_b[None, :, None]
    kk = tl.arange(0, S)[:, None, None] * KS + tl.arange(0, KS)[None, None, :]
    if HAS_RESETS:  # the rows whose state carries into step t: loaded beside the h gather, applied after the dot
        m_h = carried_rows(resets + t64 * B, o_b, m_b)[:, None]
    b_h = tl.load(hbuf + t64 * s_t + b3 * H + kk, mask=(b3 < B) & (kk < H), other=0.0, cache_modifier=".cg")
    rec = _splitk_dot(b_h, w3, CAST_F32, PRECISION, ACC)
    if HAS_RESETS:  # a restarting row: h_{t-1} = c_{t-1} = 0 (a select: its old state never reaches the result)
        rec = tl.where(m_h, rec, 0.0)
        c_prev = tl.where(m_h, c_prev, 0.0)
    z = x.to(ACC) + rec
    a = gate_act(z, is_g[None, :], FAST)
    b_i, b_f, b_g, b_o = split_gates4(a, BLOCK_B, U)
    b_c, b_r = lstm_cell_state(b_i, b_f, b_g, b_o, c_prev, lengths, t, o_b, m_b, HAS_LENGTHS, FAST)
    b_c = tl.where(alive != 0, b_c, float("nan"))
    b_r = tl.where(alive != 0, b_r, float("nan"))
    tl.store(hbuf + (t64 + 1) * s_t + o_b[:, None] * H + o_j[None, :], b_r.to(hbuf.dtype.element_ty),
             mask=m_b[:, None] & (o_j < H)[None, :])
    return b_i, b_f, b_g, b_o, b_c


@triton.jit
def _fwd_keep(cbuf, gates, t, slot, b0, B, H, b_i, b_f, b_g, b_o, b_c, o_j, STORE_GATES: tl.constexpr,
              BLOCK_B: tl.constexpr):
    """Store what only this program reads (c_t into cbuf[slot]) and the gates (for the backward)."""
    s_t = B * H
    o_b = b0 + tl.arange(0, BLOCK_B)
    m_bj = (o_b < B)[:, None] & (o_j < H)[None, :]
    tl.store(cbuf + slot * s_t + o_b[:, None] * H + o_j[None, :], b_c, mask=m_bj)
    if STORE_GATES:
        store_blocks(gates + tl.cast(t, tl.int64) * s_t * 4 + o_b[:, None] * (4 * H) + o_j[None, :], H, b_i, b_f,
                     b_g, b_o, m_bj)


@triton.jit(do_not_specialize=["T", "B", "NSLOT", "spin_cap"])
def _lstm_fwd_persistent(
    xp,  # (T, B, 4H) input projection, biases included
    w,  # (4H, H) W_hh
    hbuf,  # (T+1, B, H) hbuf[0] = h0, hbuf[t+1] = h_t (= y[t])
    cbuf,  # (NSLOT, B, H) accumulator dtype; slot 0 = c0, c_t in slot (t+1) % NSLOT
    gates,  # (T, B, 4H) activated i, f, g, o (only if STORE_GATES)
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (T, B) int8 reset mask (only if HAS_RESETS)
    counter,  # (1,) int32, zero at launch
    flag,  # (1,) int32 sticky error flag: set to 1 on a barrier timeout, never cleared by a kernel
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
    SPLIT_K: tl.constexpr,  # S: K slices, one per warp
    FAST_TANH: tl.constexpr = False,  # tanh.approx for the activations (16-bit, compiled for a GPU only)
    HAS_RESETS: tl.constexpr = False,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    U: tl.constexpr = BLOCK_H
    S: tl.constexpr = SPLIT_K
    KS: tl.constexpr = BLOCK_K // SPLIT_K
    j0 = pid * U
    # loop-invariant, the four gates side by side: Triton keeps this dot operand in shared memory for the launch
    w3 = _w_units(w, s_w, 0, j0, H, S, KS, U, 4, 4, CAST_F32)
    o_j = j0 + tl.arange(0, U)
    o_n, m_n, is_g = _gate_cols(j0, H, U)
    s_t = B * H
    o_b0 = tl.arange(0, BLOCK_B)
    # One loop over (step, batch tile) pairs, so that every tile runs the same code (one layout choice, each
    # pointwise value computed by one warp); the grid barrier after each step's last tile. The next pair's xp is
    # loaded before the wait (no other program writes it), and the counters are carried (no division per step).
    x = tl.load(xp + o_b0[:, None] * (4 * H) + o_n[None, :], mask=(o_b0 < B)[:, None] & m_n[None, :], other=0.0)
    n_tiles = tl.cdiv(B, BLOCK_B)
    alive = 1
    t = 0
    tile = 0
    slot = 0  # c_{t-1}'s cbuf slot, t % NSLOT
    for _ in tl.range(0, T * n_tiles, num_stages=1):
        slot_next = tl.where(slot + 1 == NSLOT, 0, slot + 1)
        o_b = tile * BLOCK_B + o_b0
        # c_{t-1}: this program's own store, read beside the h gather
        c_prev = tl.load(cbuf + slot * s_t + o_b[:, None] * H + o_j[None, :],
                         mask=(o_b < B)[:, None] & (o_j < H)[None, :], other=0.0)
        b_i, b_f, b_g, b_o, b_c = _fwd_tile(hbuf, lengths, resets, t, tile * BLOCK_B, B, H, w3, x, c_prev, alive, o_j,
                                            is_g, HAS_LENGTHS, HAS_RESETS, CAST_F32, PRECISION, ACC, FAST_TANH,
                                            BLOCK_B, U, S, KS)
        last = tile == n_tiles - 1
        if last:
            _arrive(counter)  # h_t of every tile is out: the others may go on
        _fwd_keep(cbuf, gates, t, slot_next, tile * BLOCK_B, B, H, b_i, b_f, b_g, b_o, b_c, o_j, STORE_GATES,
                  BLOCK_B)
        t_next = tl.where(last, t + 1, t)
        tile = tl.where(last, 0, tile + 1)
        o_b = tile * BLOCK_B + o_b0
        x = tl.load(xp + tl.cast(t_next, tl.int64) * s_t * 4 + o_b[:, None] * (4 * H) + o_n[None, :],
                    mask=(o_b < B)[:, None] & m_n[None, :] & (t_next < T), other=0.0)
        if last:
            alive = _wait(counter, flag, (t + 1) * nprog, spin_cap, alive)
            slot = slot_next
        t = t_next


@triton.jit
def _bwd_loads(dy, gates, c_seq, c0, t, b0, B, H, o_j, m_j, ACC: tl.constexpr, BLOCK_B: tl.constexpr):
    """What step t's backward of the tile at b0 reads that no other program writes: dy[t], the gates, c_t and
    c_{t-1} (c0 at t = 0)."""
    t64 = tl.cast(t, tl.int64)
    s_t = B * H
    o_b = b0 + tl.arange(0, BLOCK_B)
    m = (o_b < B)[:, None] & m_j[None, :] & (t >= 0)
    o_bj = o_b[:, None] * H + o_j[None, :]
    b_dy = tl.load(dy + t64 * s_t + o_bj, mask=m, other=0.0).to(ACC)
    p_g = gates + t64 * s_t * 4 + o_b[:, None] * (4 * H) + o_j[None, :]
    b_i = tl.load(p_g, mask=m, other=0.0).to(ACC)
    b_f = tl.load(p_g + H, mask=m, other=0.0).to(ACC)
    b_g = tl.load(p_g + 2 * H, mask=m, other=0.0).to(ACC)
    b_o = tl.load(p_g + 3 * H, mask=m, other=0.0).to(ACC)
    b_c = tl.load(c_seq + t64 * s_t + o_bj, mask=m, other=0.0).to(ACC)
    b_cp = tl.load(c_seq + (t64 - 1) * s_t + o_bj, mask=m & (t > 0), other=0.0).to(ACC)
    b_cp += tl.load(c0 + o_bj, mask=m & (t == 0), other=0.0).to(ACC)
    return b_dy, b_i, b_f, b_g, b_o, b_c, b_cp


@triton.jit
def _bwd_dh(dz, t, step, o_b, B, H, w_i, w_f, w_g, w_o, CAST_F32: tl.constexpr, PRECISION: tl.constexpr,
            ACC: tl.constexpr, S: tl.constexpr, KS: tl.constexpr):
    """dz_{t+1} @ W_hh[:, units] for the batch rows o_b (zero at the first step): the four gate blocks of dz_{t+1}
    as (S, BB, KS), [s, b, k] = dz[t+1, b, gate*H + s*KS + k], one block in flight ahead of the dots, one
    reduction (``_blocks_dot``)."""
    b3 = o_b[None, :, None]
    kk = tl.arange(0, S)[:, None, None] * KS + tl.arange(0, KS)[None, None, :]
    p = dz + (tl.cast(t, tl.int64) + 1) * B * H * 4 + b3 * (4 * H) + kk
    return _blocks_dot(p, (b3 < B) & (kk < H) & (step > 0), H, w_i, w_f, w_g, w_o, 4, CAST_F32, PRECISION, ACC)


@triton.jit(do_not_specialize=["T", "B", "spin_cap"])
def _lstm_bwd_persistent(
    dy,  # (T, B, H) gradient of y (gradient of h_n already added at its step)
    w,  # (H, 4H) W_hh^T (K-contiguous rows: the shared-memory copy is read with ldmatrix)
    gates,  # (T, B, 4H) i, f, g, o
    c_seq,  # (T, B, H) c_t, accumulator dtype
    c0,  # (B, H) c0, input dtype
    dcbuf,  # (2, B, H) accumulator dtype; slot 0 = dc_n on entry, dc_0 in slot T % 2 on exit
    dz,  # (T, B, 4H) output dz_t
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (T, B) int8 reset mask (only if HAS_RESETS)
    counter,  # (1,) int32, zero at launch
    flag,  # (1,) int32 sticky error flag
    s_w,
    T, B, H, spin_cap,
    HAS_LENGTHS: tl.constexpr,
    CAST_F32: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,  # U
    BLOCK_K: tl.constexpr,  # H_PAD
    SPLIT_K: tl.constexpr,  # S: slices of each gate block (H_PAD) of the reduction axis, one per warp
    HAS_RESETS: tl.constexpr = False,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    U: tl.constexpr = BLOCK_H
    S: tl.constexpr = SPLIT_K
    KS: tl.constexpr = BLOCK_K // SPLIT_K
    j0 = pid * U
    # loop-invariant: Triton keeps these dot operands in shared memory for the whole launch;
    # [s, k, u] = W_hh[gate*H + s*KS + k, j0 + u] = w[j0 + u, gate*H + s*KS + k]
    w_i = _w_units(w, s_w, 0, j0, H, S, KS, U, 1, 1, CAST_F32)
    w_f = _w_units(w, s_w, H, j0, H, S, KS, U, 1, 1, CAST_F32)
    w_g = _w_units(w, s_w, 2 * H, j0, H, S, KS, U, 1, 1, CAST_F32)
    w_o = _w_units(w, s_w, 3 * H, j0, H, S, KS, U, 1, 1, CAST_F32)
    o_j = j0 + tl.arange(0, U)
    m_j = o_j < H
    o_n, m_n, _ = _gate_cols(j0, H, U)
    s_t = B * H
    o_b0 = tl.arange(0, BLOCK_B)
    # one loop over (step, batch tile) pairs, as the forward's; the grid barrier after each step's last tile; the
    # step inputs no program writes are loaded one pair ahead (module docstring)
    n_tiles = tl.cdiv(B, BLOCK_B)
    alive = 1
    step = 0
    tile = 0
    b_dy, b_i, b_f, b_g, b_o, b_c, b_cp = _bwd_loads(dy, gates, c_seq, c0, T - 1, 0, B, H, o_j, m_j, ACC, BLOCK_B)
    for _ in tl.range(0, T * n_tiles, num_stages=1):
        t = T - 1 - step
        o_b = tile * BLOCK_B + o_b0
        m_b = o_b < B
        m_bj = m_b[:, None] & m_j[None, :]
        o_bj = o_b[:, None] * H + o_j[None, :]
        dc_in = tl.load(dcbuf + (step % 2) * s_t + o_bj, mask=m_bj, other=0.0)
        # resets: a row restarting at t had c_{t-1} = 0 and passes no gradient to step t-1; one restarting at t+1
        # takes none from dz_{t+1} (its dc came as 0 from step t+1); loaded beside the dz gather, applied after
        if HAS_RESETS:
            p_r = resets + tl.cast(t, tl.int64) * B  # rows t and t+1 of the mask
            m_h = carried_rows(p_r, o_b, m_b)[:, None]
            m_dz = carried_rows(p_r + B, o_b, m_b & (step > 0))[:, None]
        rec = _bwd_dh(dz, t, step, o_b, B, H, w_i, w_f, w_g, w_o, CAST_F32, PRECISION, ACC, S, KS)
        if HAS_RESETS:
            rec = tl.where(m_dz, rec, 0.0)
            b_cp = tl.where(m_h, b_cp, 0.0)
        b_dh = b_dy + rec
        b_dh = tl.where(alive != 0, b_dh, float("nan"))
        b_dzi, b_dzf, b_dzg, b_dzo, b_dcp = lstm_cell_bwd(b_dh, b_i, b_f, b_g, b_o, b_c, b_cp, dc_in, lengths, t,
                                                          o_b, m_b, HAS_LENGTHS)
        if HAS_RESETS:
            b_dcp = tl.where(m_h, b_dcp, 0.0)
        _store_gate_tile(dz + tl.cast(t, tl.int64) * s_t * 4, o_b, B, H, o_n, m_n, b_dzi, b_dzf, b_dzg, b_dzo,
                         BLOCK_B, U)
        last = tile == n_tiles - 1
        if last:
            _arrive(counter)  # dz_t of every tile is out: the others may go on
        tl.store(dcbuf + ((step + 1) % 2) * s_t + o_bj, tl.where(alive != 0, b_dcp, float("nan")), mask=m_bj)
        step_next = tl.where(last, step + 1, step)
        tile = tl.where(last, 0, tile + 1)
        # the next pair's inputs before the wait: off the step's path, and the anchors of the pointwise layout
        b_dy, b_i, b_f, b_g, b_o, b_c, b_cp = _bwd_loads(dy, gates, c_seq, c0, T - 1 - step_next, tile * BLOCK_B,
                                                         B, H, o_j, m_j, ACC, BLOCK_B)
        if last:
            alive = _wait(counter, flag, (step + 1) * nprog, spin_cap, alive)
        step = step_next


# ----------------------------------------------------------------------------------------------
# Configs: one per (dtype group, H_PAD, units per program). Every entry is compiled by experiments/compile_check.py
# for sm_90a and sm_80 (aligned) with 0 spills; only listed entries ever run on a GPU (``PersistentConfig``:
# kernels/_persistent.py).
# ----------------------------------------------------------------------------------------------
# Per dtype group, in order of preference within each H_PAD (fewest units per program first). ``pick_config``
# takes the smallest H_PAD >= H, then the first UNITS whose grids fit in the SMs (H100/H200: 132; A100: 108,
# where H in (864, 1024] has no config: its forward would need 16 units per program). Smaller H runs in the
# H_PAD = 128 tile, masked. Triton keeps the loop-invariant W slice in shared memory (one local_alloc hoisted out of the
# time loop, read by ldmatrix each step): 64 KB at H = 1024 in 16-bit. ``CONFIGS`` is what sm_90 (and later)
# runs, ``CONFIGS_SM80`` what sm_8x runs (``ARCH_CONFIGS``, chosen at launch from the device's capability:
# ``_persistent.config_arch``); each list is compile-checked for its architecture.
CONFIGS = {
    "16bit": _p.CONFIGS_16BIT[90],  # shared with the GRU (kernels/_persistent.py: why these shapes)
    "fp32": [
        PersistentConfig(H_PAD=512, UNITS=4, BLOCK_B=16, fwd_warps=8, bwd_warps=8),
        PersistentConfig(H_PAD=512, UNITS=8, BLOCK_B=16, fwd_warps=16, bwd_warps=8),  # 8 forward warps spill
        PersistentConfig(H_PAD=256, UNITS=4, BLOCK_B=16, fwd_warps=16, bwd_warps=16),  # 8 backward warps spill
        PersistentConfig(H_PAD=128, UNITS=4, BLOCK_B=16, fwd_warps=4, bwd_warps=4),
    ],
    "fp64": [PersistentConfig(H_PAD=128, UNITS=4, BLOCK_B=16, fwd_warps=8, bwd_warps=8)],
}
# sm_80 runs the same shapes but the 16-bit backward at H_PAD 1024 (8 units on 4 warps: shared memory)
CONFIGS_SM80 = dict(CONFIGS, **{"16bit": _p.CONFIGS_16BIT[80]})
ARCH_CONFIGS = {90: CONFIGS, 80: CONFIGS_SM80}


# ----------------------------------------------------------------------------------------------
# Planning: which config, or why not (then per_step)
# ----------------------------------------------------------------------------------------------
def pick_config(dtype: torch.dtype, H: int, sm_count: int, arch: int = 90):
    """The compile-checked LSTM config of ``dtype``'s group for ``arch`` (``ARCH_CONFIGS``) with the smallest
    H_PAD >= H and then the fewest units per program whose grid (cdiv(H, UNITS) programs) fits in ``sm_count``
    SMs, or None."""
    return _p.pick_config(ARCH_CONFIGS[arch], dtype, H, sm_count)


def decide(strategy: str, *, device_type: str, dtype: torch.dtype, H: int, B: int, has_proj: bool,
           sm_count: int = 0, interpret: bool | None = None, kind: str = "fwd", arch: int = 90):
    """Whether the ``kind`` pass ("fwd" or "bwd") of a layer runs persistent: returns ``(config, "")`` or
    ``(None, reason)``. Pure function of its arguments (unit-tested with fake device properties); co-residency
    of the compiled kernel is checked later by ``coresidency``. ``arch`` (``_persistent.config_arch``) picks
    the config list: ``ARCH_CONFIGS[arch]``.

    - "per_step": never. "auto": on CUDA where a checked config fits and the predictor's table says persistent
      for this pass, shape and ``arch`` (``_persistent.auto_strategy``); in the interpreter never (there is
      nothing to gain, and the per-step kernels stay the tested default).
    - "persistent": in the interpreter always (one program); on CUDA where a checked config fits.
    - never with proj_size, never on a device that is neither CUDA nor the interpreter, on CUDA never with
      H % 16 != 0 (only the aligned kernels are compile-checked: see COMPILE_CHECK).

    The rules other than proj_size are ``_persistent.decide_common``'s (shared with the GRU).
    """
    if strategy == "per_step":
        return None, "strategy='per_step'"
    if has_proj:
        return None, "persistent does not support proj_size (h_t = r_t @ W_hr^T needs the whole r_t row)"
    return _p.decide_common(strategy, device_type=device_type, dtype=dtype, H=H, B=B, sm_count=sm_count,
                            interpret=interpret, kind=kind, configs=ARCH_CONFIGS[arch], cell="lstm", arch=arch)


def _supported(dtype, arch: int = 90) -> str:
    return _p.supported(ARCH_CONFIGS[arch], dtype)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def lstm_fwd_persistent(xp, w_hh, h0, c0, lengths=None, *, store=True, cfg: PersistentConfig,
                        spin_cap: int = SPIN_CAP, n_programs: int | None = None, resets=None):
    """The whole forward recurrence of one layer and direction in one launch.

    Args: xp (T, B, 4H) with biases; w_hh (4H, H); h0 (B, H); c0 (B, H); lengths (B,) int32 or None;
    resets (T, B) int8 row-major or None (``_common.check_resets``); ``cfg`` from ``decide``. ``n_programs``
    overrides the grid (tests of the barrier timeout only).
    Returns what ``lstm.lstm_fwd_sequence`` returns: y (T, B, H), c_n (B, H) in the accumulator dtype,
    c_seq (T, B, H), gates (T, B, 4H), None (the last three only with ``store``, else None).
    Raises NotCoresident (before launching) or RuntimeError (barrier timeout).
    """
    T, B, G4 = xp.shape
    H = G4 // 4
    xp, w_hh = xp.contiguous(), w_hh if w_hh.stride(-1) == 1 else w_hh.contiguous()
    hbuf, cbuf, nslot = _p.lstm_state_buffers(xp, h0, c0, store)
    gates = xp.new_empty(T, B, G4) if store else None
    _check_aligned(xp=xp, w_hh=w_hh, hbuf=hbuf, cbuf=cbuf, gates=gates, lengths=lengths)
    args = dict(xp=xp, w=w_hh, hbuf=hbuf, cbuf=cbuf, gates=gates, lengths=lengths, resets=resets, s_w=w_hh.stride(0),
                T=T, B=B, H=H, NSLOT=nslot, spin_cap=spin_cap, STORE_GATES=store)
    _p.run_persistent(_lstm_fwd_persistent, args, cfg=cfg, kind="fwd", like=xp, what="LSTM forward",
                      n_programs=n_programs, extra_meta=dict(FAST_TANH=_p.fast_tanh(xp.dtype)))
    y = hbuf[1:]
    c_n = cbuf[T % nslot]
    return y, c_n, (cbuf[1:] if store else None), gates, None


def lstm_bwd_persistent(dy, dc_n, w_hh, c0, c_seq, gates, lengths=None, *, cfg: PersistentConfig,
                        spin_cap: int = SPIN_CAP, n_programs: int | None = None, resets=None):
    """The whole backward recurrence of one layer and direction in one launch.

    Args: dy (T, B, H) (gradient of h_n added at its step); dc_n (B, H); w_hh (4H, H); c0 (B, H); c_seq
    (T, B, H) accumulator dtype and gates (T, B, 4H) as saved by either forward strategy; lengths, resets (as the
    forward's) or None.
    Returns what ``lstm.lstm_bwd_sequence`` returns: dz (T, B, 4H), dc0 (B, H) accumulator dtype, None.
    """
    T, B, H = dy.shape
    acc = acc_torch_dtype(dy.dtype)
    dy, c_seq, gates = dy.contiguous(), c_seq.contiguous(), gates.contiguous()
    c0 = c0.contiguous()
    w_t = w_hh.t().contiguous()  # (H, 4H): each unit's column of W_hh K-contiguous (ldmatrix reads it)
    dz = gates.new_empty(T, B, 4 * H)
    dcbuf = dy.new_empty(2, B, H, dtype=acc)
    dcbuf[0].copy_(dc_n)
    _check_aligned(dy=dy, w_hh=w_t, gates=gates, c_seq=c_seq, c0=c0, dcbuf=dcbuf, dz=dz, lengths=lengths)
    args = dict(dy=dy, w=w_t, gates=gates, c_seq=c_seq, c0=c0, dcbuf=dcbuf, dz=dz, lengths=lengths, resets=resets,
                s_w=w_t.stride(0), T=T, B=B, H=H, spin_cap=spin_cap)
    _p.run_persistent(_lstm_bwd_persistent, args, cfg=cfg, kind="bwd", like=dy, what="LSTM backward",
                      n_programs=n_programs)
    return dz, dcbuf[T % 2], None


def plan(strategy: str, *, device: torch.device, dtype: torch.dtype, H: int, B: int, has_proj: bool,
         kind: str = "fwd"):
    """``decide`` for a real device (SM count from torch); logs the reason of a fallback at DEBUG level on
    the "fusedrnn" logger. Returns a config or None (per_step)."""
    cfg, why = decide(strategy, device_type=device.type, dtype=dtype, H=H, B=B, has_proj=has_proj,
                      sm_count=_p.sm_count_of(device), kind=kind, arch=_p.arch_of(device))
    if cfg is None:
        _p.log_per_step("LSTM", kind, strategy, why)
    return cfg


def log_fallback(strategy: str, err: Fallback) -> None:
    """Log at DEBUG level why a launch planned as persistent runs per_step (the caller then runs it)."""
    _p.log_fallback(strategy, err, "LSTM")


# Static compile check (experiments/compile_check.py): BLOCK_K is H_PAD, BLOCK_H the units per program; the
# heaviest constexpr variant (lengths, stored gates, resets); the aligned variant only, the one ``decide`` lets run
# (H % 16 == 0 and 16-byte aligned tensors: unaligned rows would need one 64-bit pointer per element of the
# (S, BB, KS) gathers and spill).
_FWD_CHECK = dict(
    args=dict(xp="x", w="x", hbuf="x", cbuf="acc", gates="x", lengths="*i32", resets="*i8", counter="*i32",
              flag="*i32"),
    aligns=("aligned",),
)
COMPILE_CHECK = [
    *_p.check_entries(_lstm_fwd_persistent, ARCH_CONFIGS, "fwd", **_FWD_CHECK,
                      constexprs=dict(HAS_LENGTHS=True, STORE_GATES=True, CAST_F32=False, FAST_TANH=True,
                                      HAS_RESETS=True)),
    *_p.check_entries(_lstm_bwd_persistent, ARCH_CONFIGS, "bwd", aligns=("aligned",),
                      args=dict(dy="x", w="x", gates="x", c_seq="acc", c0="x", dcbuf="acc", dz="x",
                                lengths="*i32", resets="*i8", counter="*i32", flag="*i32"),
                      constexprs=dict(HAS_LENGTHS=True, CAST_F32=False, HAS_RESETS=True)),
]
