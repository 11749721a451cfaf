"""Persistent whole-sequence forward of the LayerNorm LSTM (Haste's cell, zoneout, lengths: kernels/layernorm.py's
per_step kernels compute the same thing with two launches a step; the math: docs/MATH.md, "LayerNorm LSTM and
LayerNorm GRU"). One launch per layer and direction, built on the plain persistent LSTM's machinery
(kernels/_persistent.py: the grid barrier, the error flag, the cooperative launch, the co-residency check, the
config class; kernels/lstm_persistent.py's forward: its design).

Program p owns hidden units j in [p*U, p*U + U) of all four gates (the (S, KS, 4U) slice of recurrent_kernel^T,
held on chip for the whole launch), and the whole batch in one tile (B <= BLOCK_B: a larger batch runs per_step).
A row statistic needs the whole row, which no program holds, so each program publishes per-row partial statistics
of its columns and every program combines all of them. Step t, three grid barriers:

1. gather h_{t-1} (all of it, past L1), the product a = h_{t-1} @ R[:, its 4U columns] (one split-K dot), the
   partial statistics of a's rows over its 4U columns: (sum, M2) with M2 = sum of squared deviations from the
   program's own mean (two passes over registers, accumulator dtype: fp32 for 16-bit data); stored in ``stats``;
   barrier A;
2. combine the P partials of each row (Chan et al.: mean = sum_p sum_p / n, M2 = sum_p M2_p + (sum_p - n_p mean)^2
   / n_p, every term >= 0, so no cancellation, unlike the sum of squares' E[a^2] - mean^2; the same two floats per
   row either way), normalise its columns, the gates (i, g, f, o), c_t = f c_{t-1} + i g, and the partial (sum, M2)
   of c_t over its U units; stored; barrier B; then (off the path) a^, rstd (program 0), the gates;
3. combine c_t's partials, h~ = o tanh(LN(c_t) gamma_h + beta_h), zoneout (the mask's row or the keep weight),
   lengths (a finished row keeps c, outputs zeros: y[t] is h_{t-1} of the next step, as per_step), h_t into
   ``hbuf[t + 1]``; barrier C; c_t into ``cbuf``.

Barrier C cannot merge with the next step's A (A waits for the next product, which needs all of h_t), nor with B
(h_t needs c_t's statistics): three per step, in series. The stats buffer has one slot per phase: a program writes
step t+1's partials only after barrier C of step t, when every program has read step t's. The counter is
monotonic: barrier k of the launch waits for k * P arrivals. The cell state and h_{t-1} of the program's own units
stay in registers across steps (one batch tile); c_t is stored for the backward (``store``) or in two slots.

Saved for the backward exactly what kernels/layernorm.py's forward saves (a^ in the input dtype, the gates, rstd
and c_t in the accumulator dtype), so its per_step backward runs after this forward unchanged. The backward stays
per_step.

Interpreter: one program owns every unit (``_persistent.interpreter_config``, BLOCK_B the batch rounded up to a
power of two), so every barrier is trivial and the combination has one partial: the same source is tested for its
math; the many-program kernel is checked by the compile check (0 spills, sm_90a and sm_80). Not verified without a
GPU: co-residency at run time, the barriers under real concurrency, and speed (predicted: docs/PERFORMANCE.md).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _persistent as _p
from ._common import acc_torch_dtype, gate_act, split_gates4, tanh_of
from .layernorm import _zone, _zone_weight, _zoneout_meta
from .lstm_persistent import _gate_cols


@triton.jit
def _partial_stats(v, m, n):
    """Per row of the tile ``v`` (BB, N): the sum over the columns where ``m`` and the squared deviations from
    that partial's own mean (M2), ``n`` the number of such columns (two passes over registers)."""
    s = tl.sum(tl.where(m, v, 0.0), axis=1)
    d = tl.where(m, v - (s / n)[:, None], 0.0)
    return s, tl.sum(d * d, axis=1)


@triton.jit
def _publish(stats, phase, pid, s, m2, o_b, m_b, BLOCK_B: tl.constexpr, P_PAD: tl.constexpr):
    """Store this program's partial (sum, M2) of each row into stats[phase, 0 / 1, :, pid]."""
    p = stats + (phase * 2 * BLOCK_B + o_b) * P_PAD + pid
    tl.store(p, s, mask=m_b)
    tl.store(p + BLOCK_B * P_PAD, m2, mask=m_b)


@triton.jit
def _combine(stats, phase, nprog, width, U, n, o_b, P_PAD: tl.constexpr, BLOCK_B: tl.constexpr):
    """The mean and rstd of each row from the partials of all ``nprog`` programs in stats[phase] (Chan's
    combination, module docstring): program q covered width * min(U, H - q*U) of the row's ``n`` values. The
    programs run along each row (contiguous in memory, and within a warp: the sums are shuffles)."""
    o_q = tl.arange(0, P_PAD)
    m_q = o_q < nprog
    p = stats + (phase * 2 * BLOCK_B + o_b[:, None]) * P_PAD + o_q[None, :]
    s = tl.load(p, mask=m_q[None, :], other=0.0, cache_modifier=".cg")
    m2 = tl.load(p + BLOCK_B * P_PAD, mask=m_q[None, :], other=0.0, cache_modifier=".cg")
    n_q = width * tl.maximum(tl.minimum(U, n // width - o_q * U), 1)
    mean = tl.sum(s, axis=1) / n
    dev = s - n_q[None, :] * mean[:, None]
    var = tl.sum(m2 + tl.where(m_q[None, :], dev * dev * (1.0 / n_q)[None, :], 0.0), axis=1) / n
    return mean, 1.0 / tl.sqrt(var + 1e-5)


@triton.jit(do_not_specialize=["T", "B", "NSLOT", "spin_cap"])
def _lnlstm_fwd_persistent(
    xp,  # (T, B, 4H) the input projection with its layer norm and bias
    w,  # (4H, H) recurrent_kernel^T (K-contiguous rows: the shared-memory copy is read with ldmatrix)
    gamma_r, gamma_h, beta_h,  # (4H,), (H,), (H,)
    zmask,  # (T, B, H) zoneout mask (ZONEOUT 1)
    zkeep,  # (1,) accumulator dtype: 1 - p (ZONEOUT 2)
    lengths,  # (B,) int32 (HAS_LENGTHS)
    hbuf,  # (T+1, B, H) hbuf[0] = h0, hbuf[t+1] = y[t]
    cbuf,  # (NSLOT, B, H) accumulator dtype; slot 0 = c0, c_t in slot (t+1) % NSLOT
    gates,  # (T, B, 4H) i, g, f, o (STORE)
    a_hat,  # (T, B, 4H) the normalised recurrent pre-activation (STORE)
    rstd,  # (T, B) its rstd, accumulator dtype (STORE)
    stats,  # (2, 2, BLOCK_B, P_PAD) accumulator dtype: [phase (a, c), (sum, M2), row, program]
    counter,  # (1,) int32, zero at launch
    flag,  # (1,) int32 sticky error flag
    s_w,
    T, B, H, NSLOT, spin_cap,
    ZONEOUT: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    STORE: tl.constexpr,
    CAST_F32: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_B: tl.constexpr,  # the batch, one tile (B <= BLOCK_B)
    BLOCK_H: tl.constexpr,  # U: hidden units per program
    BLOCK_K: tl.constexpr,  # H_PAD
    SPLIT_K: tl.constexpr,  # S: K slices, one per warp
    FAST_TANH: tl.constexpr = False,  # tanh.approx for the activations (16-bit, compiled for a GPU only)
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    U: tl.constexpr = BLOCK_H
    S: tl.constexpr = SPLIT_K
    KS: tl.constexpr = BLOCK_K // SPLIT_K
    P_PAD: tl.constexpr = BLOCK_K // BLOCK_H  # >= cdiv(H, U) programs
    j0 = pid * U
    w3 = _p._w_units(w, s_w, 0, j0, H, S, KS, U, 4, 4, CAST_F32)  # loop-invariant: on chip for the launch
    o_j = j0 + tl.arange(0, U)
    m_j = o_j < H
    o_n, m_n, _ = _gate_cols(j0, H, U)
    is_g = (tl.arange(0, 4 * U) // U) == 1  # Haste's gate order i, g, f, o: the tanh block is the second
    y_r = tl.load(gamma_r + o_n, mask=m_n, other=0.0).to(ACC)
    y_h = tl.load(gamma_h + o_j, mask=m_j, other=0.0).to(ACC)
    b_h = tl.load(beta_h + o_j, mask=m_j, other=0.0).to(ACC)
    s_t = B * H
    o_b = tl.arange(0, BLOCK_B)
    m_b = o_b < B
    m_bn = m_b[:, None] & m_n[None, :]
    m_bj = m_b[:, None] & m_j[None, :]
    o_bn = o_b[:, None] * (4 * H) + o_n[None, :]
    o_bj = o_b[:, None] * H + o_j[None, :]
    n_own = tl.minimum(U, H - j0)  # this program's units (its partials cover 4 * n_own gate columns)
    if HAS_LENGTHS:
        lens = tl.load(lengths + o_b, mask=m_b, other=0)
    # this program's own state, in registers across steps: c_{t-1}, and h_{t-1} for zoneout
    c = tl.load(cbuf + o_bj, mask=m_bj, other=0.0).to(ACC)
    h = tl.load(hbuf + o_bj, mask=m_bj, other=0.0).to(ACC)
    b3 = o_b[None, :, None]
    kk = tl.arange(0, S)[:, None, None] * KS + tl.arange(0, KS)[None, None, :]
    m_h3 = (b3 < B) & (kk < H)
    alive = 1
    for t in tl.range(0, T, num_stages=1):
        t64 = tl.cast(t, tl.int64)
        # 1. the product of the own columns and their partial statistics
        b_h3 = tl.load(hbuf + t64 * s_t + b3 * H + kk, mask=m_h3, other=0.0, cache_modifier=".cg")
        a = _p._splitk_dot(b_h3, w3, CAST_F32, PRECISION, ACC)
        s_a, m2_a = _partial_stats(a, m_n[None, :], 4 * n_own)
        _publish(stats, 0, pid, s_a, m2_a, o_b, m_b, BLOCK_B, P_PAD)
        _p._arrive(counter)
        # while the others arrive (loaded here, not a step ahead: not live in registers across the product)
        x = tl.load(xp + t64 * s_t * 4 + o_bn, mask=m_bn, other=0.0)
        zw = _zone_weight(zmask, zkeep, t64 * s_t + o_bj, m_bj, ACC, ZONEOUT)
        alive = _p._wait(counter, flag, (3 * t + 1) * nprog, spin_cap, alive)
        # 2. the row statistics of a, the gates, c_t and its partial statistics
        mean_a, r_a = _combine(stats, 0, nprog, 4, U, 4 * H, o_b, P_PAD, BLOCK_B)
        n_a = (a - mean_a[:, None]) * r_a[:, None]
        g = gate_act(n_a * y_r[None, :] + x.to(ACC), is_g[None, :], FAST_TANH)
        b_i, b_g, b_f, b_o = split_gates4(g, BLOCK_B, U)
        c_new = b_f * c + b_i * b_g
        s_c, m2_c = _partial_stats(c_new, m_j[None, :], n_own)
        _publish(stats, 1, pid, s_c, m2_c, o_b, m_b, BLOCK_B, P_PAD)
        _p._arrive(counter)
        if STORE:  # while the others arrive
            tl.store(a_hat + t64 * s_t * 4 + o_bn, n_a.to(a_hat.dtype.element_ty), mask=m_bn)
            tl.store(gates + t64 * s_t * 4 + o_bn, g.to(gates.dtype.element_ty), mask=m_bn)
            tl.store(rstd + t64 * B + o_b, r_a, mask=m_b & (pid == 0))
        alive = _p._wait(counter, flag, (3 * t + 2) * nprog, spin_cap, alive)
        # 3. the statistics of c_t, h_t, zoneout, lengths
        mean_c, r_c = _combine(stats, 1, nprog, 1, U, H, o_b, P_PAD, BLOCK_B)
        nc = (c_new - mean_c[:, None]) * r_c[:, None] * y_h[None, :] + b_h[None, :]
        h_new = _zone(b_o * tanh_of(nc, FAST_TANH), h, zw, ZONEOUT)
        if HAS_LENGTHS:
            act = (t < lens)[:, None]
            h_new = tl.where(act, h_new, 0.0)
            c_new = tl.where(act, c_new, c)
        h_st = tl.where(alive != 0, h_new, float("nan")).to(hbuf.dtype.element_ty)
        c = tl.where(alive != 0, c_new, float("nan"))
        tl.store(hbuf + (t64 + 1) * s_t + o_bj, h_st, mask=m_bj)
        h = h_st.to(ACC)  # zoneout's h_{t-1} as stored (per_step reads it back)
        _p._arrive(counter)
        tl.store(cbuf + ((t64 + 1) % NSLOT) * s_t + o_bj, c, mask=m_bj)
        alive = _p._wait(counter, flag, (3 * t + 3) * nprog, spin_cap, alive)


# ----------------------------------------------------------------------------------------------
# Planning and launch
# ----------------------------------------------------------------------------------------------
# Launch shapes, per dtype group (``_persistent.PersistentConfig``; only the forward fields are used; ``pick_config``
# takes, at the smallest H_PAD >= H, the fewest units whose grid fits the SMs). 16-bit: 8 units on 8 warps at
# H_PAD 1024 (96 programs at H = 768, 128 at 1024), 16 units on 8 warps where 128 programs do not fit (an A100's 108
# SMs: H > 864), 8 units on 4 warps below. Each combination reads P x B partials per row statistic (the grid P^2 x B),
# so fewer programs cut that traffic for a wider product; the shapes with 16 units on 4 warps (predicted 5.42-8.08
# us a step at B = 16, H = 768 against 5.66-8.40 for 8 units / 8 warps) spilled 16-64 B in the variant that runs
# (no lengths, no zoneout) at H_PAD 1024, and are not used. fp32 keeps the plain forward's 4 units (its 16-warp
# shapes spill here). Each entry compiles with 0 spills for sm_90a and sm_80, in the heaviest variant and in the
# one a launch without lengths or zoneout runs (COMPILE_CHECK).
def _cfg(h_pad: int, units: int, warps: int) -> _p.PersistentConfig:
    return _p.PersistentConfig(H_PAD=h_pad, UNITS=units, BLOCK_B=16, fwd_warps=warps, bwd_warps=warps)


CONFIGS = {
    "16bit": [_cfg(1024, 8, 8), _cfg(1024, 16, 8), _cfg(512, 8, 4), _cfg(256, 8, 4), _cfg(128, 8, 4)],
    "fp32": [_cfg(512, 4, 8), _cfg(128, 4, 4)],  # 256 / 4 units / 8 warps spills 8 B on sm_80
    "fp64": [_cfg(128, 4, 8)],
}
ARCH_CONFIGS = {90: CONFIGS, 80: CONFIGS}


def decide(strategy: str, *, device_type: str, dtype: torch.dtype, H: int, B: int, sm_count: int = 0,
           interpret: bool | None = None, arch: int = 90):
    """Whether the LayerNorm LSTM forward runs persistent: ``(config, "")`` or ``(None, reason)``, pure function of
    its arguments. ``_persistent.decide_common``'s rules (cell "lnlstm": "auto" follows kernels/auto_strategy.py,
    which has no lnlstm rows, so "auto" runs per_step), plus: the whole batch in one tile (B <= 16 on CUDA)."""
    if strategy == "per_step":
        return None, "strategy='per_step'"
    interpret = _p.interpreting() if interpret is None else interpret
    cfg, why = _p.decide_common(strategy, device_type=device_type, dtype=dtype, H=H, B=B, sm_count=sm_count,
                                interpret=interpret, kind="fwd", configs=ARCH_CONFIGS[arch], cell="lnlstm",
                                arch=arch)
    if cfg is None:
        return None, why
    if interpret:  # one program, the batch in one tile
        return _p.interpreter_config(H, block_b=max(4, triton.next_power_of_2(B))), ""
    if B > cfg.BLOCK_B:
        return None, f"B={B} > {cfg.BLOCK_B}: the LayerNorm LSTM's persistent forward holds the batch in one tile"
    return cfg, ""


def plan(strategy: str, *, device: torch.device, dtype: torch.dtype, H: int, B: int):
    """``decide`` for a real device; logs the reason of a fallback at DEBUG level. A config or None (per_step)."""
    cfg, why = decide(strategy, device_type=device.type, dtype=dtype, H=H, B=B, sm_count=_p.sm_count_of(device),
                      arch=_p.arch_of(device))
    if cfg is None:
        _p.log_per_step("LayerNorm LSTM", "fwd", strategy, why)
    return cfg


def lnlstm_fwd_persistent(xp, h0, c0, rk, gamma_r, gamma_h, beta_h, zmask=None, zkeep=None, lengths=None, *,
                          store=True, cfg: _p.PersistentConfig, spin_cap: int = _p.SPIN_CAP):
    """The LayerNorm LSTM recurrence of one layer and direction in one launch: the arguments and results of
    ``layernorm.lnlstm_fwd_sequence`` (checked there), ``cfg`` from ``decide`` (B <= cfg.BLOCK_B).
    Raises ``_persistent.Fallback`` (before launching) or RuntimeError (barrier timeout)."""
    T, B, G4 = xp.shape
    H = G4 // 4
    acc = acc_torch_dtype(xp.dtype)
    w = rk.t().contiguous()  # (4H, H): each gate column of recurrent_kernel K-contiguous (ldmatrix reads it)
    hbuf, cbuf, nslot = _p.lstm_state_buffers(xp, h0, c0, store)
    gates = xp.new_empty(T, B, G4, dtype=acc) if store else None
    a_hat = xp.new_empty(T, B, G4) if store else None
    rstd = xp.new_empty(T, B, dtype=acc) if store else None
    stats = xp.new_empty(2, 2, cfg.BLOCK_B, cfg.H_PAD // cfg.UNITS, dtype=acc)  # P_PAD >= the programs
    _p._check_aligned(xp=xp, w=w, hbuf=hbuf, cbuf=cbuf, gates=gates, a_hat=a_hat, zmask=zmask, lengths=lengths)
    args = dict(xp=xp, w=w, gamma_r=gamma_r, gamma_h=gamma_h, beta_h=beta_h, zmask=zmask, zkeep=zkeep,
                lengths=lengths, hbuf=hbuf, cbuf=cbuf, gates=gates, a_hat=a_hat, rstd=rstd, stats=stats,
                s_w=w.stride(0), T=T, B=B, H=H, NSLOT=nslot, spin_cap=spin_cap, ZONEOUT=_zoneout_meta(zmask, zkeep),
                STORE=store)
    _p.run_persistent(_lnlstm_fwd_persistent, args, cfg=cfg, kind="fwd", like=xp, what="LayerNorm LSTM forward",
                      extra_meta=dict(FAST_TANH=_p.fast_tanh(xp.dtype)))
    return hbuf[1:], cbuf[T % nslot], (cbuf[1:] if store else None), gates, a_hat, rstd


# Static compile check (experiments/compile_check.py): the heaviest variant (zoneout by mask, lengths, the saved
# tensors stored) at every forward config of ``ARCH_CONFIGS``, aligned only (as the plain persistent kernels).
COMPILE_CHECK = _p.check_entries(
    _lnlstm_fwd_persistent, ARCH_CONFIGS, "fwd", aligns=("aligned",),
    args=dict(xp="x", w="x", gamma_r="x", gamma_h="x", beta_h="x", zmask="x", zkeep="acc", lengths="*i32", hbuf="x",
              cbuf="acc", gates="acc", a_hat="x", rstd="acc", stats="acc", counter="*i32", flag="*i32"),
    constexprs=dict(ZONEOUT=1, HAS_LENGTHS=True, STORE=True, CAST_F32=False, FAST_TANH=True))
