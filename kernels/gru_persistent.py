"""Persistent whole-sequence GRU kernels: one launch per layer and direction, W_hh held on chip across steps.

The LSTM's design (kernels/lstm_persistent.py, whose docstring is the full description) with the GRU's cell;
the barrier, the error flag, the cooperative launch, the co-residency check, the split-K dots, the W-slice
loader and the decision skeleton are shared with it (kernels/_persistent.py). Dimensions as there: B batch, T steps,
H hidden, H_PAD = next power of two >= H (BLOCK_K), U units per program (BLOCK_H), BB batch tile (BLOCK_B), S K
slices of each dot (SPLIT_K, one per warp), KS = H_PAD / S, P = cdiv(H, U) programs. The equations: docs/MATH.md,
"GRU"; the pointwise work is ``_common.gru_cell_fwd`` / ``gru_cell_bwd``, shared with the per-step kernels.

Forward (``_gru_fwd_persistent``), program p owns hidden units j in [p*U, p*U + U):
- before the loop it loads W_hh's r, z, n rows of its units side by side as (S, KS, 4U) (``_w_units``; the
  fourth block is zero: tensor sizes are powers of two), and b_hn[j] into the n block of a (4U,) vector;
- one loop over (step, batch tile) pairs, as the LSTM's: h_{t-1} as (S, BB, KS) (the split-K A operand) and its
  own units' h_{t-1} as (BB, U) (the z * h_{t-1} term); ONE split-K dot and one reduction, plus xp[t] of r, z and
  b_hn of n as one (BB, 4U) tile (hn = h_{t-1} W_hn^T + b_hn; n's input part stays apart); the cell
  (``gru_cell_fwd``, tanh.approx on the 16-bit compiled path: FAST_TANH); h_t into ``hbuf[t + 1]`` (hbuf[0] = h0,
  y = hbuf[1:]); after a step's last tile the arrival, then with ``store`` the gates [r, z, n, hn] (the per-step
  layout, so either backward can follow either forward); the next tile's xp is loaded before the wait;
- grid barrier after every step (``_arrive`` / ``_wait``, a monotonic counter zeroed by the launcher). No
  private state crosses steps (the GRU has no cell state): h_{t-1} of the own units is read back from hbuf[t].

Backward (``_gru_bwd_persistent``), program p owns unit columns j of W_hh (all 3H rows, one (S, KS, U) block per
gate), passed in as W_hh^T so the blocks are K-contiguous (ldmatrix): dh = dy_t + q + dg_{t+1}[:, :3H] @ W_hh[:, j],
three split-K dots over the r, z, n row blocks of the reduction axis (dg's row stride is 4H: its fourth block,
dn, is the input's gradient only), each block's gather one ahead of the dots, one reduction (``_blocks_dot``);
then ``gru_cell_bwd``; dg_t = [da_r, da_z, dhn, dn] stored, the arrival, then the carry q_{t-1} = dh * z into a
private ping-pong buffer (zero at t = T-1). h_{t-1} is read from y[t-1] (h0 at t = 0); it, dy and the gates of
the next (step, tile) pair are loaded before the wait, as the LSTM's (off the path, and the anchors that spread
the pointwise work over the warps: one warp per value with 16 units on 8 warps). The weight gradients, dx
and dh0 = q0 + dg_0[:, :3H] @ W_hh are the large GEMMs after the loop (kernels/gru.py).

Safety and scope as for the LSTM: a barrier that spins more than ``spin_cap`` iterations sets the device's sticky
error flag and the program writes NaN from then on (h_t forward, dh backward); the launcher raises
(``check_flag``), ``check_errors()`` after a CUDA-graph replay. Cooperative launch and co-residency check on CUDA;
``decide``: fp16/bf16 up to H = 1024, fp32 up to 512, fp64 up to 128 (the compile-checked ``ARCH_CONFIGS``),
H % 16 == 0, 16-byte aligned tensors, "auto" per pass and shape from the predictor's table; anything else runs
per_step with the reason at DEBUG level. Synchronisation is the counter barrier only.
In the interpreter one program owns every unit (``interpreter_config``), so the same source is tested for its math;
the many-program kernels are compile-checked (sm_90a and sm_80, 0 spills, no replicated MMA work).

Not verified without a GPU: co-residency at run time, the barrier under real concurrency, and speed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _persistent as _p
from ._common import (
    acc_torch_dtype,
    carried_rows,
    dtype_group,  # noqa: F401 - re-exported for callers that look the group up here
    gru_cell_bwd,
    gru_cell_fwd,
    split_gates4,
    store_blocks,
)
from ._persistent import (  # noqa: F401 - re-exported: the GRU's public persistent names
    SPIN_CAP,
    Fallback,
    NotCoresident,
    PersistentConfig,
    _arrive,
    _blocks_dot,
    _check_aligned,
    _splitk_dot,
    _store_gate_tile,
    _w_units,
    _wait,
    check_errors,
    interpreter_config,
)


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _fwd_tile(hbuf, lengths, resets, t, b0, B, H, w3, x, x_n, v_hn, alive, o_j, gate_n, HAS_LENGTHS: tl.constexpr,
              HAS_RESETS: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
              FAST: tl.constexpr, BLOCK_B: tl.constexpr, U: tl.constexpr, S: tl.constexpr, KS: tl.constexpr):
    """One forward step of one batch tile: h_{t-1} @ [W_r; W_z; W_n]^T slice as ONE split-K dot (four blocks wide,
    the fourth masked) and one reduction, plus xp[t] of r, z and b_hn of n as one (BB, 4U) tile; the cell; h_t
    into hbuf[t+1]. Returns r, z, n, hn for the caller to store after its arrival. HAS_RESETS: the rows set in
    resets[t] start from h_{t-1} = 0."""
    t64 = tl.cast(t, tl.int64)
    s_t = B * H
    o_b = b0 + tl.arange(0, BLOCK_B)
    m_b = o_b < B
    m_bj = m_b[:, None] & (o_j < H)[None, :]
    o_bj = o_b[:, None] * H + o_j[None, :]
    # h_{t-1} of the tile as (S, BB, KS): [s, b, k] = h[b, s*KS + k], read past L1 (written by other programs)
    b3 = o_b[None, :, None]
    kk = tl.arange(0, S)[:, None, None] * KS + tl.arange(0, KS)[None, None, :]
    if HAS_RESETS:  # the rows whose h_{t-1} carries into step t: loaded beside the h gather, applied after the dot
        m_h = carried_rows(resets + t64 * B, o_b, m_b)[:, None]
    b_h = tl.load(hbuf + t64 * s_t + b3 * H + kk, mask=(b3 < B) & (kk < H), other=0.0, cache_modifier=".cg")
    h_prev = tl.load(hbuf + t64 * s_t + o_bj, mask=m_bj, other=0.0, cache_modifier=".cg").to(ACC)
    rec = _splitk_dot(b_h, w3, CAST_F32, PRECISION, ACC)
    if HAS_RESETS:  # a restarting row: h_{t-1} = 0 (a select: its old state never reaches the result)
        rec = tl.where(m_h, rec, 0.0)
        h_prev = tl.where(m_h, h_prev, 0.0)
    pre = rec + tl.where((gate_n < 2)[None, :], x.to(ACC), v_hn[None, :])
    a_r, a_z, b_hn, _ = split_gates4(pre, BLOCK_B, U)
    b_r, b_z, b_n, b_ht = gru_cell_fwd(a_r, a_z, x_n.to(ACC), b_hn, h_prev, lengths, t, o_b, m_b, HAS_LENGTHS, FAST)
    b_ht = tl.where(alive != 0, b_ht, float("nan"))
    tl.store(hbuf + (t64 + 1) * s_t + o_bj, b_ht.to(hbuf.dtype.element_ty), mask=m_bj)
    return b_r, b_z, b_n, b_hn


@triton.jit
def _fwd_xp(xp, t, T, b0, B, H, o_n, m_n, gate_n, o_j, BLOCK_B: tl.constexpr):
    """xp[t] of the batch tile at b0: the r and z blocks in a (BB, 4U) tile laid out as the gate tile (zero in its
    n and fourth blocks), and the n block (BB, U); zeros for t >= T (a prefetch past the last step)."""
    o_b = b0 + tl.arange(0, BLOCK_B)
    m_b = (o_b < B) & (t < T)
    p = xp + tl.cast(t, tl.int64) * B * 3 * H + o_b[:, None] * (3 * H)
    x = tl.load(p + o_n[None, :], mask=m_b[:, None] & (m_n & (gate_n < 2))[None, :], other=0.0)
    x_n = tl.load(p + 2 * H + o_j[None, :], mask=m_b[:, None] & (o_j < H)[None, :], other=0.0)
    return x, x_n


@triton.jit(do_not_specialize=["T", "B", "spin_cap"])
def _gru_fwd_persistent(
    xp,  # (T, B, 3H) input projection with b_ih and b_hr, b_hz (reference.gru_input_projection)
    w,  # (3H, H) W_hh, rows r, z, n
    b_hn,  # (H,) the n block of b_hh (only if HAS_BHN)
    hbuf,  # (T+1, B, H) hbuf[0] = h0, hbuf[t+1] = h_t (= y[t])
    gates,  # (T, B, 4H) r, z, n, hn (only if STORE_GATES)
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (T, B) int8 reset mask (only if HAS_RESETS)
    counter,  # (1,) int32, zero at launch
    flag,  # (1,) int32 sticky error flag: set to 1 on a barrier timeout, never cleared by a kernel
    s_w,
    T, B, H, spin_cap,
    HAS_BHN: tl.constexpr,
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
    nprog = tl.num_programs(0)
    U: tl.constexpr = BLOCK_H
    S: tl.constexpr = SPLIT_K
    KS: tl.constexpr = BLOCK_K // SPLIT_K
    j0 = tl.program_id(0) * U
    # loop-invariant, the r, z, n gates side by side (a fourth block of zeros): kept in shared memory by Triton
    w3 = _w_units(w, s_w, 0, j0, H, S, KS, U, 4, 3, CAST_F32)
    o_j = j0 + tl.arange(0, U)
    n = tl.arange(0, 4 * U)
    gate_n = n // U
    o_n = gate_n * H + j0 + n % U  # column of the gate tile in a (B, 3H) row of xp (r, z blocks only)
    m_n = j0 + n % U < H
    if HAS_BHN:
        v_hn = tl.load(b_hn + j0 + n % U, mask=(gate_n == 2) & m_n, other=0.0).to(ACC)
    else:
        v_hn = tl.zeros((4 * U,), ACC)
    s_t = B * H
    o_b0 = tl.arange(0, BLOCK_B)
    # one loop over (step, batch tile) pairs as the LSTM's: the same code for every tile, the barrier after each
    # step's last tile, the next pair's xp loaded before the wait
    x, x_n = _fwd_xp(xp, 0, T, 0, B, H, o_n, m_n, gate_n, o_j, BLOCK_B)
    n_tiles = tl.cdiv(B, BLOCK_B)
    alive = 1
    t = 0
    tile = 0
    for _ in tl.range(0, T * n_tiles, num_stages=1):
        g_r, g_z, g_n, g_hn = _fwd_tile(hbuf, lengths, resets, t, tile * BLOCK_B, B, H, w3, x, x_n, v_hn, alive, o_j,
                                        gate_n, HAS_LENGTHS, HAS_RESETS, CAST_F32, PRECISION, ACC, FAST_TANH, BLOCK_B,
                                        U, S, KS)
        last = tile == n_tiles - 1
        if last:
            _arrive(counter)  # h_t of every tile is out: the others may go on
        if STORE_GATES:
            o_b = tile * BLOCK_B + o_b0
            store_blocks(gates + tl.cast(t, tl.int64) * s_t * 4 + o_b[:, None] * (4 * H) + o_j[None, :], H, g_r,
                         g_z, g_n, g_hn, (o_b < B)[:, None] & (o_j < H)[None, :])
        t_next = tl.where(last, t + 1, t)
        tile = tl.where(last, 0, tile + 1)
        x, x_n = _fwd_xp(xp, t_next, T, tile * BLOCK_B, B, H, o_n, m_n, gate_n, o_j, BLOCK_B)
        if last:
            alive = _wait(counter, flag, (t + 1) * nprog, spin_cap, alive)
        t = t_next


# ----------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _bwd_loads(dy, gates, y, h0, t, b0, B, H, o_j, m_j, ACC: tl.constexpr, BLOCK_B: tl.constexpr):
    """What step t's backward of the tile at b0 reads that no other program writes in this launch: dy[t], the
    gates r, z, n, hn and h_{t-1} (y[t-1], h0 at t = 0); zeros for t < 0 (a prefetch past the last step)."""
    t64 = tl.cast(t, tl.int64)
    s_t = B * H
    o_b = b0 + tl.arange(0, BLOCK_B)
    m = (o_b < B)[:, None] & m_j[None, :] & (t >= 0)
    o_bj = o_b[:, None] * H + o_j[None, :]
    b_dy = tl.load(dy + t64 * s_t + o_bj, mask=m, other=0.0).to(ACC)
    p_g = gates + t64 * s_t * 4 + o_b[:, None] * (4 * H) + o_j[None, :]
    b_r = tl.load(p_g, mask=m, other=0.0).to(ACC)
    b_z = tl.load(p_g + H, mask=m, other=0.0).to(ACC)
    b_n = tl.load(p_g + 2 * H, mask=m, other=0.0).to(ACC)
    b_hn = tl.load(p_g + 3 * H, mask=m, other=0.0).to(ACC)
    b_hp = tl.load(y + (t64 - 1) * s_t + o_bj, mask=m & (t > 0), other=0.0).to(ACC)
    b_hp += tl.load(h0 + o_bj, mask=m & (t == 0), other=0.0).to(ACC)
    return b_dy, b_r, b_z, b_n, b_hn, b_hp


@triton.jit(do_not_specialize=["T", "B", "spin_cap"])
def _gru_bwd_persistent(
    dy,  # (T, B, H) gradient of y (gradient of h_n already added at its step)
    w,  # (H, 3H) W_hh^T (K-contiguous rows: the shared-memory copy is read with ldmatrix)
    gates,  # (T, B, 4H) r, z, n, hn
    y,  # (T, B, H) the forward's outputs (h_{t-1} = y[t-1])
    h0,  # (B, H)
    qbuf,  # (2, B, H) accumulator dtype; slot 0 zero on entry (q at T-1), q_0 in slot T % 2 on exit
    dg,  # (T, B, 4H) output dg_t = [da_r, da_z, dhn, dn]
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
    nprog = tl.num_programs(0)
    U: tl.constexpr = BLOCK_H
    S: tl.constexpr = SPLIT_K
    KS: tl.constexpr = BLOCK_K // SPLIT_K
    j0 = tl.program_id(0) * U
    # loop-invariant: [s, k, u] = W_hh[gate*H + s*KS + k, j0 + u] = w[j0 + u, gate*H + s*KS + k]
    w_r = _w_units(w, s_w, 0, j0, H, S, KS, U, 1, 1, CAST_F32)
    w_z = _w_units(w, s_w, H, j0, H, S, KS, U, 1, 1, CAST_F32)
    w_n = _w_units(w, s_w, 2 * H, j0, H, S, KS, U, 1, 1, CAST_F32)
    o_j = j0 + tl.arange(0, U)
    m_j = o_j < H
    n = tl.arange(0, 4 * U)
    o_n = (n // U) * H + j0 + n % U  # column of the (BB, 4U) tile in a (B, 4H) row of dg
    m_n = j0 + n % U < H
    s_t = B * H
    o_b0 = tl.arange(0, BLOCK_B)
    kk = tl.arange(0, S)[:, None, None] * KS + tl.arange(0, KS)[None, None, :]
    n_tiles = tl.cdiv(B, BLOCK_B)
    alive = 1
    step = 0
    tile = 0
    # as the LSTM's backward: the next pair's dy, gates and h_{t-1} loaded before the wait
    b_dy, b_r, b_z, b_n, b_hn, b_hp = _bwd_loads(dy, gates, y, h0, T - 1, 0, B, H, o_j, m_j, ACC, BLOCK_B)
    for _ in tl.range(0, T * n_tiles, num_stages=1):
        t = T - 1 - step
        o_b = tile * BLOCK_B + o_b0
        m_b = o_b < B
        m_bj = m_b[:, None] & m_j[None, :]
        o_bj = o_b[:, None] * H + o_j[None, :]
        q_in = tl.load(qbuf + (step % 2) * s_t + o_bj, mask=m_bj, other=0.0)
        # dh += dg_{t+1}[:, :3H] @ W_hh[:, units]: the r, z, n blocks of dg_{t+1} (row stride 4H; dn is not read)
        b3 = o_b[None, :, None]
        # resets: a row restarting at t had h_{t-1} = 0 and passes no gradient (no carry) to step t-1; one
        # restarting at t+1 takes none from dg_{t+1} (its carry came as 0); loaded beside the gather, applied after
        if HAS_RESETS:
            m_h = carried_rows(resets + tl.cast(t, tl.int64) * B, o_b, m_b)[:, None]
            m_dg = carried_rows(resets + (tl.cast(t, tl.int64) + 1) * B, o_b, m_b & (step > 0))[:, None]
        p = dg + (tl.cast(t, tl.int64) + 1) * s_t * 4 + b3 * (4 * H) + kk
        rec = _blocks_dot(p, (b3 < B) & (kk < H) & (step > 0), H, w_r, w_z, w_n, w_n, 3, CAST_F32, PRECISION, ACC)
        if HAS_RESETS:
            rec = tl.where(m_dg, rec, 0.0)
            b_hp = tl.where(m_h, b_hp, 0.0)
        b_dh = b_dy + q_in + rec
        b_dh = tl.where(alive != 0, b_dh, float("nan"))  # after a timeout: dg and (q = dh * z) NaN from here on
        da_r, da_z, dhn, dn, b_q = gru_cell_bwd(b_dh, b_r, b_z, b_n, b_hn, b_hp, lengths, t, o_b, m_b, HAS_LENGTHS)
        if HAS_RESETS:
            b_q = tl.where(m_h, b_q, 0.0)
        _store_gate_tile(dg + tl.cast(t, tl.int64) * s_t * 4, o_b, B, H, o_n, m_n, da_r, da_z, dhn, dn, BLOCK_B, U)
        last = tile == n_tiles - 1
        if last:
            _arrive(counter)  # dg_t of every tile is out: the others may go on
        tl.store(qbuf + ((step + 1) % 2) * s_t + o_bj, b_q, mask=m_bj)
        step_next = tl.where(last, step + 1, step)
        tile = tl.where(last, 0, tile + 1)
        b_dy, b_r, b_z, b_n, b_hn, b_hp = _bwd_loads(dy, gates, y, h0, T - 1 - step_next, tile * BLOCK_B, B, H, o_j,
                                                     m_j, ACC, BLOCK_B)
        if last:
            alive = _wait(counter, flag, (step + 1) * nprog, spin_cap, alive)
        step = step_next


# ----------------------------------------------------------------------------------------------
# Configs: one per (dtype group, H_PAD, units per program). Every entry is compiled by experiments/compile_check.py
# for sm_90a and sm_80 (aligned) with 0 spills and no replicated MMA work; only listed entries ever run on a GPU.
# Selection as for the LSTM (``_persistent.pick_config``): the smallest H_PAD >= H, then the fewest units per
# program whose grid fits in the SMs.
# ----------------------------------------------------------------------------------------------
# The GRU's 16-bit backward at H_PAD 256: 8 units on 2 warps (sm_90a) or 4 (sm_80), 16 K slices, a value per thread
# (`epilogue_repeat` 1); predicted 0.06-0.17 us per step faster than the LSTM's 4 units on 8 warps at B = 16 and
# B = 1, where the LSTM's own backward is slower with it (docs/PERFORMANCE.md, "Step 3 rewrites", row 7).
_GRU_256 = {arch: PersistentConfig(H_PAD=256, UNITS=4, BLOCK_B=16, fwd_warps=2, bwd_warps=warps, bwd_units=8,
                                   bwd_split=16) for arch, warps in ((90, 2), (80, 4))}
_GRU_16BIT = {arch: [_GRU_256[arch] if c.H_PAD == 256 else c for c in cfgs] for arch, cfgs in _p.CONFIGS_16BIT.items()}
CONFIGS = {
    "16bit": _GRU_16BIT[90],  # the LSTM's (kernels/_persistent.py: why these shapes) but H_PAD 256's backward
    # the LSTM's fp32 shapes, except 16 backward warps at (512, 8) and (256, 4): with 8 the fp32 (FFMA) backward
    # kept two loop scalars on the stack (8 B of spill, sm_80 and sm_90a respectively)
    "fp32": [
        PersistentConfig(H_PAD=512, UNITS=4, BLOCK_B=16, fwd_warps=8, bwd_warps=16),
        PersistentConfig(H_PAD=512, UNITS=8, BLOCK_B=16, fwd_warps=16, bwd_warps=16),
        PersistentConfig(H_PAD=256, UNITS=4, BLOCK_B=16, fwd_warps=16, bwd_warps=16),
        PersistentConfig(H_PAD=128, UNITS=4, BLOCK_B=16, fwd_warps=4, bwd_warps=4),
    ],
    "fp64": [PersistentConfig(H_PAD=128, UNITS=4, BLOCK_B=16, fwd_warps=8, bwd_warps=8)],
}
# sm_8x runs the same shapes but the 16-bit backward at H_PAD 1024 (``ARCH_CONFIGS``: _persistent.config_arch)
CONFIGS_SM80 = dict(CONFIGS, **{"16bit": _GRU_16BIT[80]})
ARCH_CONFIGS = {90: CONFIGS, 80: CONFIGS_SM80}

# ----------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------
def decide(strategy: str, *, device_type: str, dtype: torch.dtype, H: int, B: int, sm_count: int = 0,
           interpret: bool | None = None, kind: str = "fwd", arch: int = 90):
    """Whether the ``kind`` pass ("fwd" or "bwd") of a GRU layer runs persistent: ``(config, "")`` or
    ``(None, reason)``; the rules of ``_persistent.decide_common`` with the GRU's ``ARCH_CONFIGS[arch]`` ("auto":
    the predictor's table for ``arch``). Pure function of its arguments."""
    return _p.decide_common(strategy, device_type=device_type, dtype=dtype, H=H, B=B, sm_count=sm_count,
                            interpret=interpret, kind=kind, configs=ARCH_CONFIGS[arch], cell="gru", arch=arch)


def plan(strategy: str, *, device: torch.device, dtype: torch.dtype, H: int, B: int, kind: str = "fwd"):
    """``decide`` for a real device (SM count from torch); logs the reason of a fallback at DEBUG level on the
    "fusedrnn" logger. Returns a config or None (per_step)."""
    cfg, why = decide(strategy, device_type=device.type, dtype=dtype, H=H, B=B, sm_count=_p.sm_count_of(device),
                      kind=kind, arch=_p.arch_of(device))
    if cfg is None:
        _p.log_per_step("GRU", kind, strategy, why)
    return cfg


def log_fallback(strategy: str, err: Fallback) -> None:
    """Log at DEBUG level why a GRU launch planned as persistent runs per_step (the caller then runs it)."""
    _p.log_fallback(strategy, err, "GRU")


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def gru_fwd_persistent(xp, w_hh, b_hn, h0, lengths=None, *, store=True, cfg: PersistentConfig,
                       spin_cap: int = SPIN_CAP, n_programs: int | None = None, resets=None):
    """The whole forward recurrence of one GRU layer and direction in one launch.

    Args: xp (T, B, 3H) (``reference.gru_input_projection``: b_ih and b_hr, b_hz included); w_hh (3H, H); b_hn
    (H,) or None; h0 (B, H); lengths (B,) int32 or None; resets (T, B) int8 row-major or None; ``cfg`` from
    ``decide``. ``n_programs`` overrides the grid (tests of the barrier timeout only).
    Returns y (T, B, H) and, with ``store``, gates (T, B, 4H) = [r, z, n, hn] in xp's dtype, else None.
    Raises NotCoresident / Misaligned (before launching) or RuntimeError (barrier timeout).
    """
    T, B, G3 = xp.shape
    H = G3 // 3
    xp, w_hh = xp.contiguous(), w_hh if w_hh.stride(-1) == 1 else w_hh.contiguous()
    b_hn = None if b_hn is None else b_hn.contiguous()
    hbuf = xp.new_empty(T + 1, B, H)
    hbuf[0].copy_(h0)
    gates = xp.new_empty(T, B, 4 * H) if store else None
    _check_aligned(xp=xp, w_hh=w_hh, b_hn=b_hn, hbuf=hbuf, gates=gates, lengths=lengths)
    args = dict(xp=xp, w=w_hh, b_hn=b_hn, hbuf=hbuf, gates=gates, lengths=lengths, resets=resets, s_w=w_hh.stride(0),
                T=T, B=B, H=H, spin_cap=spin_cap, HAS_BHN=b_hn is not None, STORE_GATES=store)
    _p.run_persistent(_gru_fwd_persistent, args, cfg=cfg, kind="fwd", like=xp, what="GRU forward",
                      n_programs=n_programs, extra_meta=dict(FAST_TANH=_p.fast_tanh(xp.dtype)))
    return hbuf[1:], gates


def gru_bwd_persistent(dy, w_hh, h0, y, gates, lengths=None, *, cfg: PersistentConfig, spin_cap: int = SPIN_CAP,
                       n_programs: int | None = None, resets=None):
    """The whole backward recurrence of one GRU layer and direction in one launch.

    Args: dy (T, B, H) (gradient of h_n added at each row's last step); w_hh (3H, H); h0 (B, H); y (T, B, H) and
    gates (T, B, 4H) as saved by either forward strategy; lengths, resets (as the forward's) or None.
    Returns dg (T, B, 4H) = [da_r, da_z, dhn, dn] in gates' dtype and q0 (B, H) in the accumulator dtype (the
    direct part of dh0: dh0 = q0 + dg[0, :, :3H] @ W_hh).
    """
    T, B, H = dy.shape
    acc = acc_torch_dtype(dy.dtype)
    dy, y, gates, h0 = dy.contiguous(), y.contiguous(), gates.contiguous(), h0.contiguous()
    w_t = w_hh.t().contiguous()  # (H, 3H): each unit's column of W_hh K-contiguous (ldmatrix reads it)
    dg = gates.new_empty(T, B, 4 * H)
    qbuf = dy.new_zeros(2, B, H, dtype=acc)
    _check_aligned(dy=dy, w_hh=w_t, gates=gates, y=y, h0=h0, qbuf=qbuf, dg=dg, lengths=lengths)
    args = dict(dy=dy, w=w_t, gates=gates, y=y, h0=h0, qbuf=qbuf, dg=dg, lengths=lengths, resets=resets,
                s_w=w_t.stride(0), T=T, B=B, H=H, spin_cap=spin_cap)
    _p.run_persistent(_gru_bwd_persistent, args, cfg=cfg, kind="bwd", like=dy, what="GRU backward",
                      n_programs=n_programs)
    return dg, qbuf[T % 2]


# Static compile check (experiments/compile_check.py): the heaviest constexpr variant (b_hn, lengths, stored gates,
# resets), aligned only (the variant ``decide`` lets run).
COMPILE_CHECK = [
    *_p.check_entries(_gru_fwd_persistent, ARCH_CONFIGS, "fwd", aligns=("aligned",),
                      args=dict(xp="x", w="x", b_hn="x", hbuf="x", gates="x", lengths="*i32", resets="*i8",
                                counter="*i32", flag="*i32"),
                      constexprs=dict(HAS_BHN=True, HAS_LENGTHS=True, STORE_GATES=True, CAST_F32=False,
                                      FAST_TANH=True, HAS_RESETS=True)),
    *_p.check_entries(_gru_bwd_persistent, ARCH_CONFIGS, "bwd", aligns=("aligned",),
                      args=dict(dy="x", w="x", gates="x", y="x", h0="x", qbuf="acc", dg="x", lengths="*i32",
                                resets="*i8", counter="*i32", flag="*i32"),
                      constexprs=dict(HAS_LENGTHS=True, CAST_F32=False, HAS_RESETS=True)),
]
