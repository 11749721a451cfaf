"""Fused Elman RNN kernels (tanh or relu), one launch per time step forward and backward.

Dimensions: B batch, T steps, I input, H hidden, K = H (dot depth), G = 1.

Same split as kernels/lstm.py: ``xp = x @ W_ih^T + b_ih + b_hh`` for all steps at once; a forward step
where each program computes ``h_{t-1} @ W_hh[j, :]^T`` for its tile of units (``tl.dot`` over K tiles, fp32
accumulation, fp64 for fp64), adds xp[t] and applies the nonlinearity in registers; a backward step that
computes ``dh_t = dz_{t+1} @ W_hh`` for its units (full dz rows, no atomics), adds dy_t and multiplies by
the nonlinearity's derivative; weight gradients after the loop. Backward needs only the outputs h_t.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _graphs
from ._common import (
    TileConfig, carried_rows, check_dtype, check_resets, check_steps, check_strategy, check_tensor, dot_precision,
    dot_rows, dot_rows_split, row_stride, rowmajor, step_kernel, step_kernel_checks, step_resets, tanh, tile_offsets,
    wait_prior_step, weight_grads,
)
from .reference import input_projection

NONLINEARITIES = ("tanh", "relu")

# Only configs that compile with 0 spills for sm_90a and sm_80 in both alignments are listed, per dtype group
# (experiments/compile_check.py checks every entry; results/compile_table.csv).
# As in kernels/lstm.py: the warps fit the (BLOCK_B, BLOCK_H) result (no replicated MMA work), num_stages >= 3
# (a K slice in flight while the current one is multiplied), 64/128-row tiles are wgmma on sm_90a; backward
# tiles under 64 rows split K into chunks of 16 over the warps (``_common.dot_rows_split``), so there
# num_warps <= BLOCK_K / 16.
FWD_CONFIGS = {
    "16bit": [
        TileConfig(B=16, H=16, K=128, warps=2, stages=3), TileConfig(B=16, H=32, K=128, warps=4, stages=3),
        TileConfig(B=16, H=64, K=64, warps=4, stages=4), TileConfig(B=16, H=128, K=64, warps=8, stages=3),
        TileConfig(B=32, H=64, K=64, warps=8, stages=3), TileConfig(B=64, H=64, K=32, warps=8, stages=3),
        TileConfig(B=128, H=64, K=32, warps=8, stages=3),
    ],
    "fp32": [
        TileConfig(B=16, H=32, K=128, warps=4, stages=3), TileConfig(B=16, H=128, K=64, warps=8, stages=3),
        TileConfig(B=32, H=64, K=64, warps=8, stages=3), TileConfig(B=64, H=64, K=32, warps=8, stages=3),
    ],
    "fp64": [
        TileConfig(B=16, H=32, K=64, warps=4, stages=3), TileConfig(B=32, H=64, K=64, warps=8, stages=3),
        TileConfig(B=64, H=32, K=32, warps=8, stages=3),
    ],
}
_BWD = [
    TileConfig(B=16, H=16, K=128, warps=4, stages=3), TileConfig(B=16, H=16, K=64, warps=4, stages=3),
    TileConfig(B=16, H=32, K=128, warps=4, stages=3), TileConfig(B=64, H=32, K=64, warps=8, stages=3),
]
BWD_CONFIGS = {
    "16bit": _BWD + [TileConfig(B=16, H=16, K=128, warps=2, stages=3)],
    "fp32": _BWD + [TileConfig(B=16, H=16, K=128, warps=2, stages=3)],
    "fp64": _BWD[:3],
}


# resets_drop: the configs that spill 8-40 B with a reset mask (docs/PERFORMANCE.md, "Episode resets"); a launch
# with a mask autotunes over the others
@step_kernel(
    configs=FWD_CONFIGS,
    optional=dict(HAS_LENGTHS="lengths", HAS_RESETS="resets"),
    heaviest=dict(RELU=False),
    resets_drop={"16bit": [TileConfig(B=64, H=64, K=32, warps=8, stages=3)]},
    args=dict(xp="x", h_prev="x", w="x", h_out="x", lengths="*i32", resets="*i8"),
)
@triton.jit(do_not_specialize=["t"])
def _rnn_fwd_step(
    xp,  # (B, H) xp[t]
    h_prev,  # (B, H) h_{t-1}
    w,  # (H, H) W_hh
    h_out,  # (B, H) h_t
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (B,) int8 row t of the reset mask (only if HAS_RESETS)
    s_xp, s_hp, s_w, s_ho,
    t, B, H, K,
    RELU: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_RESETS: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, PDL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)

    # xp[t] does not depend on the product: its load is issued before the K loop to overlap it.
    b_x = tl.load(xp + o_b[:, None] * s_xp + o_j[None, :], mask=m_bj, other=0.0)
    wait_prior_step(PDL)  # h_{t-1} comes from the previous step
    # h_{t-1} @ W_hh[j, :]^T
    b_z = dot_rows(h_prev, s_hp, w, s_w, 0, o_b, m_b, o_j, m_j, K, True, CAST_F32, PRECISION, ACC,
                   BLOCK_B, BLOCK_H, BLOCK_K)
    if HAS_RESETS:  # a restarting row: h_{t-1} = 0 (the flags read after the loop: held across it, fp32's
        # unaligned 16 x 32 x 128 tile spills 16 B on sm_90a)
        b_z = tl.where(carried_rows(resets, o_b, m_b)[:, None], b_z, 0.0)
    b_z += b_x.to(ACC)
    if RELU:
        b_hn = tl.where(b_z < 0.0, 0.0, b_z)  # NaN stays NaN as in torch.relu (a GPU max drops it)
    else:
        b_hn = tanh(b_z)
    if HAS_LENGTHS:
        m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
        b_hn = tl.where(m_act, b_hn, 0.0)
    tl.store(h_out + o_b[:, None] * s_ho + o_j[None, :], b_hn.to(h_out.dtype.element_ty), mask=m_bj)


# resets_drop: the configs that spill 8-40 B with a reset mask (docs/PERFORMANCE.md, "Episode resets"); a launch
# with a mask autotunes over the others
@step_kernel(
    configs=BWD_CONFIGS,
    key=("B", "H", "K", "HAS_NEXT"),
    optional=dict(HAS_NEXT="dz_next", HAS_LENGTHS="lengths", HAS_RESETS="resets_next"),
    heaviest=dict(RELU=False),
    resets_drop={"fp32": [TileConfig(B=16, H=32, K=128, warps=4, stages=3), TileConfig(B=16, H=16, K=128, warps=2,
                                                                                      stages=3)],
                 "fp64": [TileConfig(B=16, H=16, K=128, warps=4, stages=3)]},
    args=dict(dz_next="x", w="x", dy="x", h="x", dz="x", lengths="*i32", resets_next="*i8"),
)
@triton.jit(do_not_specialize=["t"])
def _rnn_bwd_step(
    dz_next,  # (B, H) dz_{t+1} (only if HAS_NEXT)
    w,  # (H, H) W_hh
    dy,  # (B, H) dy_t
    h,  # (B, H) h_t
    dz,  # (B, H) dz_t, output
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets_next,  # (B,) int8 row t+1 of the reset mask (only if HAS_RESETS, which needs HAS_NEXT)
    s_dzn, s_w, s_dy, s_h, s_dz,
    t, B, H, K,
    RELU: tl.constexpr, HAS_NEXT: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_RESETS: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, PDL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)

    # dy_t and h_t do not depend on the product: loads issued before the K loop to overlap it.
    b_dy = tl.load(dy + o_b[:, None] * s_dy + o_j[None, :], mask=m_bj, other=0.0)
    b_h = tl.load(h + o_b[:, None] * s_h + o_j[None, :], mask=m_bj, other=0.0)
    if HAS_RESETS:  # the rows of dz_{t+1} whose gradient reaches h_t: not those restarting at t+1
        m_n = carried_rows(resets_next, o_b, m_b)[:, None]
    wait_prior_step(PDL)  # dz_{t+1} comes from the previous step
    if HAS_NEXT:  # dz_{t+1} @ W_hh[:, j] over the full dz rows
        b_dh = dot_rows_split(dz_next, s_dzn, w, s_w, o_b, m_b, o_j, m_j, K, CAST_F32, PRECISION, ACC,
                              BLOCK_B, BLOCK_H, BLOCK_K)
        if HAS_RESETS:
            b_dh = tl.where(m_n, b_dh, 0.0)
    else:
        b_dh = tl.zeros((BLOCK_B, BLOCK_H), ACC)
    b_dh += b_dy.to(ACC)
    b_h = b_h.to(ACC)
    if RELU:
        b_dz = tl.where(b_h <= 0.0, 0.0, b_dh)  # as torch's threshold_backward: NaN outputs pass dh
    else:
        b_dz = b_dh * (1.0 - b_h * b_h)
    if HAS_LENGTHS:
        m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
        b_dz = tl.where(m_act, b_dz, 0.0)
    tl.store(dz + o_b[:, None] * s_dz + o_j[None, :], b_dz.to(dz.dtype.element_ty), mask=m_bj)


def rnn_fwd_step(xp_t, h_prev, w_hh, h_out, nonlinearity="tanh", lengths=None, t=0, resets_t=None):
    """One fused forward step (launcher): h_out (B, H) <- act(xp_t + h_prev @ w_hh^T), in place (h_prev's rows
    set in resets_t, (B,) int8 or None, count as zero)."""
    B, H = xp_t.shape
    _rnn_fwd_step.launch(
        xp=xp_t, h_prev=h_prev, w=w_hh, h_out=h_out, lengths=lengths, resets=resets_t,
        s_xp=xp_t.stride(0), s_hp=h_prev.stride(0), s_w=w_hh.stride(0), s_ho=h_out.stride(0),
        t=t, B=B, H=H, K=H, RELU=nonlinearity == "relu", chained=t > 0,
    )


def rnn_bwd_step(dz_next, w_hh, dy_t, h_t, dz_t, nonlinearity="tanh", lengths=None, t=0, resets=None):
    """One fused backward step (launcher): dz_t (B, H) <- (dy_t + dz_next @ w_hh) * act'(h_t), in place; the
    rows restarting at t+1 (``resets``, the (T, B) int8 mask, or None) take nothing from dz_next."""
    B, H = h_t.shape
    _rnn_bwd_step.launch(
        dz_next=dz_next, w=w_hh, dy=dy_t, h=h_t, dz=dz_t, lengths=lengths,
        resets_next=step_resets(resets, t, dz_next is not None)["resets_next"],
        s_dzn=row_stride(dz_next), s_w=w_hh.stride(0), s_dy=dy_t.stride(0), s_h=h_t.stride(0),
        s_dz=dz_t.stride(0),
        t=t, B=B, H=H, K=H, RELU=nonlinearity == "relu", chained=dz_next is not None,
    )


def _check_args(nonlinearity, strategy):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    check_strategy(strategy)


def _fwd_loop(xp, w_hh, h0, lengths, resets, nonlinearity):
    T = xp.shape[0]
    y = torch.empty_like(xp)
    for t in range(T):
        rnn_fwd_step(xp[t], h0 if t == 0 else y[t - 1], w_hh, y[t], nonlinearity, lengths, t,
                     resets[t] if resets is not None else None)
    return (y,)


def rnn_fwd_sequence(xp, w_hh, h0, lengths=None, resets=None, *, nonlinearity="tanh", strategy="auto"):
    """Run the RNN recurrence over all T steps, one fused launch per step (CUDA-graph replayed on a GPU).

    Args:
        xp: (T, B, H) input projection, biases included; w_hh: (H, H); h0: (B, H); lengths (B,) int32 or None;
        resets (T, B) bool or None.
    Returns:
        y (T, B, H): every h_t (zeros where a sequence has ended). Backward needs nothing else.
    """
    _check_args(nonlinearity, strategy)
    check_dtype("xp", xp.dtype)
    T, B, H = xp.shape
    check_steps(T)
    check_tensor("w_hh", w_hh, (H, H), xp.dtype, xp.device)
    check_tensor("h0", h0, (B, H), xp.dtype, xp.device)
    if lengths is not None:
        check_tensor("lengths", lengths, (B,), torch.int32, xp.device)
    resets = check_resets(resets, T, B, xp.device)
    xp, w_hh, h0 = rowmajor(xp), rowmajor(w_hh), rowmajor(h0)
    (y,) = _graphs.run(
        "rnn_fwd", lambda *a: _fwd_loop(*a, nonlinearity), (xp, w_hh, h0, lengths, resets),
        flags=(nonlinearity, dot_precision(xp.dtype, xp.device)),
    )
    return y


def _bwd_loop(dy, w_hh, y, lengths, resets, nonlinearity):
    T = dy.shape[0]
    dz = torch.empty_like(dy)
    for t in range(T - 1, -1, -1):
        rnn_bwd_step(dz[t + 1] if t < T - 1 else None, w_hh, dy[t], y[t], dz[t], nonlinearity, lengths, t, resets)
    return (dz,)


def rnn_bwd_sequence(dy, w_hh, y, lengths=None, resets=None, *, nonlinearity="tanh", strategy="auto"):
    """Backward through time. dy (T, B, H) with the gradient of h_n already added at its step; y the
    forward output; resets as forward. Returns dz (T, B, H), the gradient of the pre-activations."""
    _check_args(nonlinearity, strategy)
    resets = check_resets(resets, dy.shape[0], dy.shape[1], dy.device)
    dy, w_hh = rowmajor(dy), rowmajor(w_hh)
    (dz,) = _graphs.run(
        "rnn_bwd", lambda *a: _bwd_loop(*a, nonlinearity), (dy, w_hh, y, lengths, resets),
        flags=(nonlinearity, dot_precision(dy.dtype, dy.device)),
    )
    return dz


def rnn_layer_fwd(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, resets=None, *, nonlinearity="tanh",
                  strategy="auto"):
    """One RNN layer and direction: input projection (one GEMM) then the fused recurrence.
    x (T, B, I), h0 (B, H), resets (T, B) bool or None. Returns y (T, B, H)."""
    xp = input_projection(x, w_ih, b_ih, b_hh)
    return rnn_fwd_sequence(xp, w_hh, h0, lengths, resets, nonlinearity=nonlinearity, strategy=strategy)


def rnn_layer_bwd(dy, x, h0, y, w_ih, w_hh, lengths=None, resets=None, *, has_bias=True, nonlinearity="tanh",
                  strategy="auto"):
    """Gradients of one RNN layer: fused backward recurrence, then the weight GEMMs.
    Returns (dx, dh0, dW_ih, dW_hh, db or None)."""
    dz = rnn_bwd_sequence(dy, w_hh, y, lengths, resets, nonlinearity=nonlinearity, strategy=strategy)
    return weight_grads(dz, x, h0, y, w_ih, w_hh, has_bias, lengths, resets=resets)


__all__ = [
    "rnn_fwd_step", "rnn_bwd_step", "rnn_fwd_sequence", "rnn_bwd_sequence", "rnn_layer_fwd", "rnn_layer_bwd",
]


# Static compile check (experiments/compile_check.py): the heaviest variant of each step kernel, as declared above.
COMPILE_CHECK = step_kernel_checks(__name__)
