"""Fused use-gate LSTM kernels: two launches per time step forward and two backward, gates N, i, f, V.

Dimensions: B batch, T steps, I input, H hidden, K = dot depth (H for W_hh's and W_u's columns forward, 4H
backward through W_hh, H backward through W_u), G = 4 gates stacked along W's rows in the order N, i, f, V.

The cell (docs/MATH.md), with ``z_t = xp_t + h_{t-1} @ W_hh^T``:
    n = tanh(z_N), i = s(z_i), f = s(z_f), v = s(z_V)
    k_t = f * c_{t-1}                     (the kept memory)
    c_t = k_t + n * i                     (remember gate)
    u_t = tanh(k_t @ W_u^T + b_u)         (use gate)
    h_t = u_t * v
Unlike the LSTM (h_t = o * tanh(c_t), pointwise in each unit), h_t needs ``k_t @ W_u^T``: a second
product inside each step, over the *whole* row of k_t (all H units). Likewise backward,
``dk = dc + dzu @ W_u`` needs the whole row of ``dzu = dh * v * (1 - u^2)``.

Split of the work, and why two launches per step:
- ``xp = x @ W_ih^T + b_ih + b_hh`` for all steps at once (one large GEMM).
- forward step t, launch A (``_usegate_fwd_gates``): a program owns a tile of hidden units j and a tile of the
  batch, computes its four gate pre-activations (``tl.dot`` over K tiles of h_{t-1}, fp32 accumulation, fp64
  for fp64), the activations, k_t and c_t in registers; writes gates, k_t, c_t.
- forward step t, launch B (``_usegate_fwd_use``): same tiling; ``k_t @ W_u[j, :]^T`` over K tiles of the
  full k_t row that launch A just wrote, + b_u, tanh, times v; writes h_t (= y[t]) and u_t.
- backward step t, launch A (``_usegate_bwd_gates``): ``dh_t = dy_t + dz_{t+1} @ W_hh`` for its units over
  all 4H rows of dz_{t+1}; then dzu, dz_N, dz_i, dz_V, all pointwise given dc_t (from step t+1). Writes dzu_t
  and those three gate blocks of dz_t.
- backward step t, launch B (``_usegate_bwd_use``): ``dk = dc_t + dzu_t @ W_u`` over the full dzu_t row,
  then dz_f = dk * c_{t-1} * f(1-f) and dc_{t-1} = dk * f. Writes the f block of dz_t and dc_{t-1}.
- weight gradients after the loop as large GEMMs: W_ih, W_hh, biases, x and h0 through
  ``_common.weight_grads``; ``dW_u = sum_t dzu_t^T @ k_t``, ``db_u = sum_t sum_batch dzu_t``.
A program of launch B cannot start before every program of launch A has written its part of the k_t
(dzu_t) row, and launch A of the next step needs the whole h_t (dz_t) row of launch B: within one launch
there is no grid-wide ordering without a barrier (which deadlocks in the interpreter and needs all programs
co-resident on the GPU), so the kernel boundary is the barrier. The other way out, a program that owns whole
rows of a batch tile (BLOCK_H = H, one launch per step), leaves only cdiv(B, BLOCK_B) programs for 132 SMs
(1 program at B <= 16) and needs 4 accumulators of BLOCK_B x H in registers (spills past H ~ 64); two launches
keep cdiv(H, BLOCK_H) * cdiv(B, BLOCK_B) programs per launch, and on CUDA the launch cost is hidden by the
CUDA graph of the time loop (``_graphs.run``). No atomics anywhere: reductions have a fixed order.

Saved for backward (``store=True``): gates (n, i, f, v) (T, B, 4H) and k_t, u_t (T, B, H) in the input dtype,
c_t (T, B, H) in the accumulator dtype (backward reads c_{t-1}). ``lengths``: an inactive row keeps c, outputs
zeros, and gets zero k_t, u_t and zero gradients (dc passes through unchanged), as ``kernels/reference.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _graphs
from ._common import (
    TileConfig, acc_torch_dtype, carried_rows, check_dtype, check_resets, check_steps, check_strategy, check_tensor,
    dot_precision, dot_rows, gate_products, row_stride, rowmajor, sigmoid, step_kernel, step_kernel_checks,
    step_resets, store_blocks, tanh, tile_offsets, weight_grads,
)
from .reference import input_projection, usegate_cell_ref, usegate_layer_ref  # noqa: F401  (public here)


def _without(configs: list, *drop: TileConfig) -> list:
    return [c for c in configs if c not in drop]


# Only configs that compile with 0 spills (no stack bytes) for sm_90a and sm_80, fp16/bf16/fp32/tf32/fp64,
# aligned and unaligned, are listed (experiments/compile_check.py checks every entry; results/compile_table.csv).
# Launch A forward holds four gate accumulators (as the LSTM forward step) and does its gate product as one dot
# over the four gate blocks (``_common.gate_products``), so its tiles are the smallest: BLOCK_K <= 32, and the
# (B=16, H=64, K=16) tile with one stage only and not for fp32. The other three kernels hold one accumulator.
_FWD_ALL = [
    TileConfig(B=16, H=16, K=32, warps=4, stages=2), TileConfig(B=16, H=32, K=16, warps=4, stages=2),
    TileConfig(B=16, H=32, K=32, warps=4, stages=3), TileConfig(B=16, H=32, K=32, warps=8, stages=2),
    TileConfig(B=16, H=64, K=16, warps=8, stages=1), TileConfig(B=32, H=32, K=16, warps=8, stages=2),
]
FWD_CONFIGS = {
    "16bit": _FWD_ALL,
    "fp32": _without(_FWD_ALL, TileConfig(B=16, H=64, K=16, warps=8, stages=1)),
    "fp64": _FWD_ALL,
}
# the one-accumulator kernels share their wide tiles
_WIDE = [TileConfig(B=16, H=128, K=64, warps=8, stages=2), TileConfig(B=32, H=64, K=64, warps=8, stages=2)]
FWD_USE_CONFIGS = [
    TileConfig(B=16, H=32, K=64, warps=4, stages=2), TileConfig(B=16, H=64, K=32, warps=4, stages=3), *_WIDE,
    TileConfig(B=64, H=64, K=32, warps=8, stages=2),
]
_BWD = [
    TileConfig(B=16, H=32, K=64, warps=4, stages=2), TileConfig(B=16, H=64, K=64, warps=4, stages=3), *_WIDE,
    TileConfig(B=64, H=32, K=32, warps=8, stages=2),
]
_BWD_USE = [TileConfig(B=16, H=32, K=32, warps=4, stages=3), *_BWD[1:]]
# fp64 leaves out the shapes that spill 8 B in the variant a launch without lengths runs (the compile check's
# "+launch" entries): the gates' (32, 64, 64) on sm_80, the use product's (16, 32, 32) on sm_90a and (64, 32, 32) on
# sm_80
BWD_CONFIGS = {"16bit": _BWD, "fp32": _BWD, "fp64": _without(_BWD, _WIDE[1])}
BWD_USE_CONFIGS = {"16bit": _BWD_USE, "fp32": _BWD_USE,
                   "fp64": _without(_BWD_USE, _BWD_USE[0], TileConfig(B=64, H=32, K=32, warps=8, stages=2))}


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@step_kernel(
    configs=FWD_CONFIGS,
    optional=dict(HAS_LENGTHS="lengths", HAS_RESETS="resets"),
    args=dict(xp="x", h_prev="x", c_prev="acc", w="x", c_out="acc", k_out="x", gates="x", lengths="*i32",
              resets="*i8"),
)
@triton.jit(do_not_specialize=["t"])
def _usegate_fwd_gates(
    xp,  # (B, 4H) xp[t], row stride s_xp
    h_prev,  # (B, K) h_{t-1}
    c_prev,  # (B, H) c_{t-1}, accumulator dtype (or input dtype for c0)
    w,  # (4H, K) W_hh, rows N, i, f, V
    c_out,  # (B, H) c_t, accumulator dtype
    k_out,  # (B, H) k_t = f * c_{t-1}, input dtype (the operand of launch B's dot)
    gates,  # (B, 4H) activated n, i, f, v
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (B,) int8 row t of the reset mask (only if HAS_RESETS)
    s_xp, s_hp, s_cp, s_w, s_co, s_k, s_g,
    t, B, H, K,
    HAS_LENGTHS: tl.constexpr, HAS_RESETS: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)
    if HAS_RESETS:  # the rows whose h_{t-1}, c_{t-1} carry into step t: loaded before the K loop, applied after it
        m_h = carried_rows(resets, o_b, m_b)[:, None]

    # h_{t-1} @ W_hh[g*H + j, :]^T for the gates N, i, f, V of this program's units
    b_zn, b_zi, b_zf, b_zv = gate_products(h_prev, s_hp, w, s_w, o_b, m_b, o_j, m_j, H, K, CAST_F32, PRECISION,
                                           ACC, BLOCK_B, BLOCK_H, BLOCK_K)
    if HAS_RESETS:  # a restarting row: h_{t-1} = c_{t-1} = 0 (a select: its old state never reaches the result)
        b_zn = tl.where(m_h, b_zn, 0.0)
        b_zi = tl.where(m_h, b_zi, 0.0)
        b_zf = tl.where(m_h, b_zf, 0.0)
        b_zv = tl.where(m_h, b_zv, 0.0)

    p_x = xp + o_b[:, None] * s_xp + o_j[None, :]
    b_n = tanh(b_zn + tl.load(p_x, mask=m_bj, other=0.0).to(ACC))
    b_i = sigmoid(b_zi + tl.load(p_x + H, mask=m_bj, other=0.0).to(ACC))
    b_f = sigmoid(b_zf + tl.load(p_x + 2 * H, mask=m_bj, other=0.0).to(ACC))
    b_v = sigmoid(b_zv + tl.load(p_x + 3 * H, mask=m_bj, other=0.0).to(ACC))
    b_cp = tl.load(c_prev + o_b[:, None] * s_cp + o_j[None, :], mask=m_bj, other=0.0).to(ACC)
    if HAS_RESETS:
        b_cp = tl.where(m_h, b_cp, 0.0)
    b_k = b_f * b_cp
    b_c = b_k + b_n * b_i
    if HAS_LENGTHS:
        # finished sequences keep their cell state; their k_t is zeroed so launch B and dW_u ignore them
        m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
        b_c = tl.where(m_act, b_c, b_cp)
        b_k = tl.where(m_act, b_k, 0.0)
    tl.store(c_out + o_b[:, None] * s_co + o_j[None, :], b_c, mask=m_bj)
    tl.store(k_out + o_b[:, None] * s_k + o_j[None, :], b_k.to(k_out.dtype.element_ty), mask=m_bj)
    store_blocks(gates + o_b[:, None] * s_g + o_j[None, :], H, b_n, b_i, b_f, b_v, m_bj)


@step_kernel(
    configs=FWD_USE_CONFIGS,
    optional=dict(HAS_BIAS="bias", STORE_U="u_out", HAS_LENGTHS="lengths"),
    args=dict(k="x", w="x", bias="x", gates="x", h_out="x", u_out="x", lengths="*i32"),
)
@triton.jit(do_not_specialize=["t"])
def _usegate_fwd_use(
    k,  # (B, K) k_t, the full row written by launch A
    w,  # (H, K) W_u
    bias,  # (H,) b_u (only if HAS_BIAS)
    gates,  # (B, 4H) n, i, f, v of step t (v read here)
    h_out,  # (B, H) h_t
    u_out,  # (B, H) u_t (only if STORE_U)
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    s_k, s_w, s_g, s_h, s_u,
    t, B, H, K,
    HAS_BIAS: tl.constexpr, STORE_U: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)

    # k_t @ W_u[j, :]^T over the full k_t row
    b_a = dot_rows(k, s_k, w, s_w, 0, o_b, m_b, o_j, m_j, K, True, CAST_F32, PRECISION, ACC,
                   BLOCK_B, BLOCK_H, BLOCK_K)
    if HAS_BIAS:
        b_a += tl.load(bias + o_j, mask=m_j, other=0.0).to(ACC)[None, :]
    b_u = tanh(b_a)
    b_v = tl.load(gates + o_b[:, None] * s_g + 3 * H + o_j[None, :], mask=m_bj, other=0.0).to(ACC)
    b_h = b_u * b_v
    if HAS_LENGTHS:
        m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
        b_h = tl.where(m_act, b_h, 0.0)
        b_u = tl.where(m_act, b_u, 0.0)
    tl.store(h_out + o_b[:, None] * s_h + o_j[None, :], b_h.to(h_out.dtype.element_ty), mask=m_bj)
    if STORE_U:
        tl.store(u_out + o_b[:, None] * s_u + o_j[None, :], b_u.to(u_out.dtype.element_ty), mask=m_bj)


# resets_drop: the configs that spill 8-40 B with a reset mask (docs/PERFORMANCE.md, "Episode resets"); a launch
# with a mask autotunes over the others
@step_kernel(
    configs=BWD_CONFIGS,
    key=("B", "H", "K", "HAS_NEXT"),
    optional=dict(HAS_NEXT="dz_next", HAS_LENGTHS="lengths", HAS_RESETS="resets_next"),
    resets_drop={"fp64": [TileConfig(B=16, H=32, K=64, warps=4, stages=2)]},
    args=dict(dz_next="x", w="x", dy="x", gates="x", u="x", dc_in="acc", dz="x", dzu="x", lengths="*i32",
              resets_next="*i8"),
)
@triton.jit(do_not_specialize=["t"])
def _usegate_bwd_gates(
    dz_next,  # (B, 4H) dz_{t+1} (only if HAS_NEXT)
    w,  # (4H, H) W_hh
    dy,  # (B, H) dy_t
    gates,  # (B, 4H) n, i, f, v of step t
    u,  # (B, H) u_t
    dc_in,  # (B, H) gradient reaching c_t from step t+1 (dc_n at t = T-1), accumulator dtype
    dz,  # (B, 4H) dz_t, output: blocks N, i, V here (f in launch B)
    dzu,  # (B, H) dzu_t, output (the operand of launch B's dot and of dW_u)
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets_next,  # (B,) int8 row t+1 of the reset mask (only if HAS_RESETS, which needs HAS_NEXT)
    s_dzn, s_w, s_dy, s_g, s_u, s_dci, s_dz, s_dzu,
    t, B, H, K,
    HAS_NEXT: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_RESETS: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)

    # dh_t[b, j] = sum_k dz_{t+1}[b, k] W_hh[k, j] over all K = 4H gate rows (full dz rows, no atomics); the rows
    # restarting at t+1 take nothing (their dc_in came as 0 from step t+1)
    if HAS_RESETS:
        m_n = carried_rows(resets_next, o_b, m_b)[:, None]
    if HAS_NEXT:
        b_dh = dot_rows(dz_next, s_dzn, w, s_w, 0, o_b, m_b, o_j, m_j, K, False, CAST_F32, PRECISION, ACC,
                        BLOCK_B, BLOCK_H, BLOCK_K)
        if HAS_RESETS:
            b_dh = tl.where(m_n, b_dh, 0.0)
    else:
        b_dh = tl.zeros((BLOCK_B, BLOCK_H), ACC)
    b_dh += tl.load(dy + o_b[:, None] * s_dy + o_j[None, :], mask=m_bj, other=0.0).to(ACC)

    p_g = gates + o_b[:, None] * s_g + o_j[None, :]
    b_n = tl.load(p_g, mask=m_bj, other=0.0).to(ACC)
    b_i = tl.load(p_g + H, mask=m_bj, other=0.0).to(ACC)
    b_v = tl.load(p_g + 3 * H, mask=m_bj, other=0.0).to(ACC)
    b_u = tl.load(u + o_b[:, None] * s_u + o_j[None, :], mask=m_bj, other=0.0).to(ACC)
    b_dc = tl.load(dc_in + o_b[:, None] * s_dci + o_j[None, :], mask=m_bj, other=0.0).to(ACC)

    b_dzu = b_dh * b_v * (1.0 - b_u * b_u)
    b_dzn = b_dc * b_i * (1.0 - b_n * b_n)
    b_dzi = b_dc * b_n * b_i * (1.0 - b_i)
    b_dzv = b_dh * b_u * b_v * (1.0 - b_v)
    if HAS_LENGTHS:
        # a finished sequence did not move at step t: no gate gradient (dc passes through in launch B)
        m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
        b_dzu = tl.where(m_act, b_dzu, 0.0)
        b_dzn = tl.where(m_act, b_dzn, 0.0)
        b_dzi = tl.where(m_act, b_dzi, 0.0)
        b_dzv = tl.where(m_act, b_dzv, 0.0)
    tl.store(dzu + o_b[:, None] * s_dzu + o_j[None, :], b_dzu.to(dzu.dtype.element_ty), mask=m_bj)
    p_dz = dz + o_b[:, None] * s_dz + o_j[None, :]
    dty = dz.dtype.element_ty
    tl.store(p_dz, b_dzn.to(dty), mask=m_bj)
    tl.store(p_dz + H, b_dzi.to(dty), mask=m_bj)
    tl.store(p_dz + 3 * H, b_dzv.to(dty), mask=m_bj)


# resets_drop: the configs that spill 8-40 B with a reset mask (docs/PERFORMANCE.md, "Episode resets"); a launch
# with a mask autotunes over the others
@step_kernel(
    configs=BWD_USE_CONFIGS,
    optional=dict(HAS_LENGTHS="lengths", HAS_RESETS="resets"),
    resets_drop={"16bit": [TileConfig(B=16, H=128, K=64, warps=8, stages=2)]},
    args=dict(dzu="x", w="x", gates="x", c_prev="acc", dc_in="acc", dc_out="acc", dz="x", lengths="*i32",
              resets="*i8"),
)
@triton.jit(do_not_specialize=["t"])
def _usegate_bwd_use(
    dzu,  # (B, K) dzu_t, the full row written by launch A
    w,  # (K, H) W_u
    gates,  # (B, 4H) n, i, f, v of step t (f read here)
    c_prev,  # (B, H) c_{t-1}
    dc_in,  # (B, H) gradient reaching c_t from step t+1
    dc_out,  # (B, H) gradient reaching c_{t-1}, accumulator dtype
    dz,  # (B, 4H) dz_t, output: block f
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (B,) int8 row t of the reset mask (only if HAS_RESETS): c_{t-1} was zero, no gradient reaches it
    s_dzu, s_w, s_g, s_cp, s_dci, s_dco, s_dz,
    t, B, H, K,
    HAS_LENGTHS: tl.constexpr, HAS_RESETS: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)

    if HAS_RESETS:  # loaded before the product, applied after it
        m_h = carried_rows(resets, o_b, m_b)[:, None]
    # dk[b, j] = dc[b, j] + sum_m dzu[b, m] W_u[m, j]
    b_dk = dot_rows(dzu, s_dzu, w, s_w, 0, o_b, m_b, o_j, m_j, K, False, CAST_F32, PRECISION, ACC,
                    BLOCK_B, BLOCK_H, BLOCK_K)
    b_dc = tl.load(dc_in + o_b[:, None] * s_dci + o_j[None, :], mask=m_bj, other=0.0).to(ACC)
    b_dk += b_dc
    b_f = tl.load(gates + o_b[:, None] * s_g + 2 * H + o_j[None, :], mask=m_bj, other=0.0).to(ACC)
    b_cp = tl.load(c_prev + o_b[:, None] * s_cp + o_j[None, :], mask=m_bj, other=0.0).to(ACC)
    if HAS_RESETS:
        b_cp = tl.where(m_h, b_cp, 0.0)
    b_dzf = b_dk * b_cp * b_f * (1.0 - b_f)
    b_dcp = b_dk * b_f
    if HAS_LENGTHS:
        m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
        b_dzf = tl.where(m_act, b_dzf, 0.0)
        b_dcp = tl.where(m_act, b_dcp, b_dc)
    if HAS_RESETS:
        b_dcp = tl.where(m_h, b_dcp, 0.0)
    tl.store(dc_out + o_b[:, None] * s_dco + o_j[None, :], b_dcp, mask=m_bj)
    tl.store(dz + o_b[:, None] * s_dz + 2 * H + o_j[None, :], b_dzf.to(dz.dtype.element_ty), mask=m_bj)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------
def usegate_fwd_gates_step(xp_t, h_prev, c_prev, w_hh, c_out, k_out, gates, lengths=None, t=0, resets_t=None):
    """Forward launch A of step t. Shapes: xp_t (B, 4H); h_prev (B, H); c_prev (B, H); w_hh (4H, H);
    outputs c_out (B, H) in the accumulator dtype, k_out (B, H) and gates (B, 4H) in the input dtype.
    lengths (B,) int32 or None with step index t; resets_t (B,) int8 (row t of the reset mask) or None. Writes
    the outputs in place."""
    B, G4 = xp_t.shape
    _usegate_fwd_gates.launch(
        xp=xp_t, h_prev=h_prev, c_prev=c_prev, w=w_hh, c_out=c_out, k_out=k_out, gates=gates, lengths=lengths,
        resets=resets_t,
        s_xp=xp_t.stride(0), s_hp=h_prev.stride(0), s_cp=c_prev.stride(0), s_w=w_hh.stride(0),
        s_co=c_out.stride(0), s_k=k_out.stride(0), s_g=gates.stride(0),
        t=t, B=B, H=G4 // 4, K=h_prev.shape[1],
    )


def usegate_fwd_use_step(k_t, w_u, b_u, gates_t, h_out, u_out=None, lengths=None, t=0):
    """Forward launch B of step t: h_out (B, H) <- tanh(k_t @ w_u^T + b_u) * v, and u_out (B, H) <- the tanh
    when given. k_t (B, H); w_u (H, H); b_u (H,) or None; gates_t (B, 4H). Writes in place."""
    B, H = k_t.shape
    _usegate_fwd_use.launch(
        k=k_t, w=w_u, bias=b_u, gates=gates_t, h_out=h_out, u_out=u_out, lengths=lengths,
        s_k=k_t.stride(0), s_w=w_u.stride(0), s_g=gates_t.stride(0), s_h=h_out.stride(0), s_u=row_stride(u_out),
        t=t, B=B, H=H, K=H,
    )


def usegate_bwd_gates_step(dz_next, w_hh, dy_t, gates_t, u_t, dc_in, dz_t, dzu_t, lengths=None, t=0, resets=None):
    """Backward launch A of step t. dz_next (B, 4H) or None at t = T-1; dy_t (B, H); u_t (B, H); dc_in (B, H)
    accumulator dtype; resets the whole (T, B) int8 reset mask or None. Writes dzu_t (B, H) and the N, i, V
    blocks of dz_t (B, 4H) in place."""
    B, G4 = gates_t.shape
    _usegate_bwd_gates.launch(
        dz_next=dz_next, w=w_hh, dy=dy_t, gates=gates_t, u=u_t, dc_in=dc_in, dz=dz_t, dzu=dzu_t, lengths=lengths,
        resets_next=step_resets(resets, t, dz_next is not None)["resets_next"],
        s_dzn=row_stride(dz_next), s_w=w_hh.stride(0), s_dy=dy_t.stride(0), s_g=gates_t.stride(0),
        s_u=u_t.stride(0), s_dci=dc_in.stride(0), s_dz=dz_t.stride(0), s_dzu=dzu_t.stride(0),
        t=t, B=B, H=G4 // 4, K=G4,
    )


def usegate_bwd_use_step(dzu_t, w_u, gates_t, c_prev, dc_in, dc_out, dz_t, lengths=None, t=0, resets_t=None):
    """Backward launch B of step t: dk = dc_in + dzu_t @ w_u; writes the f block of dz_t (B, 4H) and
    dc_out (B, H) (accumulator dtype) in place; resets_t (B,) int8 (row t of the reset mask) or None."""
    B, H = dzu_t.shape
    _usegate_bwd_use.launch(
        dzu=dzu_t, w=w_u, gates=gates_t, c_prev=c_prev, dc_in=dc_in, dc_out=dc_out, dz=dz_t, lengths=lengths,
        resets=resets_t,
        s_dzu=dzu_t.stride(0), s_w=w_u.stride(0), s_g=gates_t.stride(0), s_cp=c_prev.stride(0),
        s_dci=dc_in.stride(0), s_dco=dc_out.stride(0), s_dz=dz_t.stride(0),
        t=t, B=B, H=H, K=H,
    )


def _fwd_loop(xp, w_hh, w_u, b_u, h0, c0, lengths, resets, store):
    T, B, G4 = xp.shape
    H = G4 // 4
    acc = acc_torch_dtype(xp.dtype)
    n = T if store else 1
    y = xp.new_empty(T, B, H)
    c_seq = xp.new_empty(T if store else 2, B, H, dtype=acc)
    gates = xp.new_empty(n, B, G4)
    k_seq = xp.new_empty(n, B, H)
    u_seq = xp.new_empty(T, B, H) if store else None
    for t in range(T):
        s = t if store else 0
        h_prev = h0 if t == 0 else y[t - 1]
        c_prev = c0 if t == 0 else c_seq[(t - 1) if store else (t - 1) % 2]
        c_out = c_seq[t if store else t % 2]
        usegate_fwd_gates_step(xp[t], h_prev, c_prev, w_hh, c_out, k_seq[s], gates[s], lengths, t,
                               resets[t] if resets is not None else None)
        usegate_fwd_use_step(k_seq[s], w_u, b_u, gates[s], y[t], u_seq[t] if store else None, lengths, t)
    c_n = c_seq[(T - 1) if store else (T - 1) % 2]
    if not store:
        return y, c_n, None, None, None, None
    return y, c_n, c_seq, gates, k_seq, u_seq


def usegate_fwd_sequence(xp, w_hh, w_u, b_u, h0, c0, lengths=None, resets=None, *, store=True, strategy="auto"):
    """Run the use-gate recurrence over all T steps, two fused launches per step (CUDA-graph replayed on a GPU).

    Args:
        xp: (T, B, 4H) input projection, biases included (``reference.input_projection``).
        w_hh: (4H, H); w_u: (H, H); b_u: (H,) or None; h0, c0: (B, H); lengths: (B,) int32 or None;
        resets: (T, B) bool or None (the state entering step t is zero on the rows set at t).
        store: keep what backward needs (every c_t, gates, k_t, u_t); False under no_grad.
        strategy: "auto" or "per_step" (the only strategy of this cell).
    Returns:
        y (T, B, H), c_n (B, H) in the accumulator dtype, and c_seq (T, B, H) (accumulator dtype),
        gates (T, B, 4H), k_seq (T, B, H), u_seq (T, B, H) -- the last four None when not ``store``.
    """
    check_strategy(strategy)
    check_dtype("xp", xp.dtype)
    if xp.dim() != 3 or xp.shape[2] % 4 != 0:
        raise RuntimeError(f"xp: expected shape (T, B, 4H), got {tuple(xp.shape)}")
    T, B, G4 = xp.shape
    check_steps(T)
    H = G4 // 4
    dev, dt = xp.device, xp.dtype
    check_tensor("w_hh", w_hh, (G4, H), dt, dev)
    check_tensor("w_u", w_u, (H, H), dt, dev)
    if b_u is not None:
        check_tensor("b_u", b_u, (H,), dt, dev)
    check_tensor("h0", h0, (B, H), dt, dev)
    check_tensor("c0", c0, (B, H), dt, dev)
    if lengths is not None:
        check_tensor("lengths", lengths, (B,), torch.int32, dev)
    resets = check_resets(resets, T, B, dev)
    xp, w_hh, w_u, h0, c0 = rowmajor(xp), rowmajor(w_hh), rowmajor(w_u), rowmajor(h0), rowmajor(c0)
    b_u = b_u.contiguous() if b_u is not None else None
    return _graphs.run(
        "usegate_fwd",
        lambda *a: _fwd_loop(*a, store),
        (xp, w_hh, w_u, b_u, h0, c0, lengths, resets),
        flags=(store, dot_precision(dt, dev)),
    )


def _bwd_loop(dy, dc_n, w_hh, w_u, c0, c_seq, gates, u_seq, lengths, resets):
    T, B, H = dy.shape
    G4 = gates.shape[2]
    acc = acc_torch_dtype(dy.dtype)
    dz = gates.new_empty(T, B, G4)
    dzu = gates.new_empty(T, B, H)
    dc = dy.new_empty(2, B, H, dtype=acc)
    dc_in = dc_n
    for t in range(T - 1, -1, -1):
        dz_next = dz[t + 1] if t < T - 1 else None
        c_prev = c0 if t == 0 else c_seq[t - 1]
        usegate_bwd_gates_step(dz_next, w_hh, dy[t], gates[t], u_seq[t], dc_in, dz[t], dzu[t], lengths, t, resets)
        usegate_bwd_use_step(dzu[t], w_u, gates[t], c_prev, dc_in, dc[t % 2], dz[t], lengths, t,
                             resets[t] if resets is not None else None)
        dc_in = dc[t % 2]
    return dz, dzu, dc_in


def usegate_bwd_sequence(dy, dc_n, w_hh, w_u, c0, c_seq, gates, u_seq, lengths=None, resets=None, *,
                         strategy="auto"):
    """Backward through time, two fused launches per step (CUDA-graph replayed on a GPU).

    Args:
        dy: (T, B, H) gradient of y (the gradient of h_n must already be added at its step);
        dc_n: (B, H) gradient of c_n; w_hh (4H, H); w_u (H, H); c0 (B, H);
        c_seq, gates, u_seq: as saved by ``usegate_fwd_sequence``; lengths, resets as forward.
    Returns:
        dz (T, B, 4H) gate pre-activation gradients, dzu (T, B, H) the gradient of the use gate's
        pre-activation, dc0 (B, H) in the accumulator dtype.
    """
    check_strategy(strategy)
    T, B, H = dy.shape
    dt, dev = dy.dtype, dy.device
    check_dtype("dy", dt)
    check_tensor("w_hh", w_hh, (4 * H, H), dt, dev)
    check_tensor("w_u", w_u, (H, H), dt, dev)
    check_tensor("gates", gates, (T, B, 4 * H), dt, dev)
    check_tensor("u_seq", u_seq, (T, B, H), dt, dev)
    check_tensor("c_seq", c_seq, (T, B, H), acc_torch_dtype(dt), dev)
    check_tensor("c0", c0, (B, H), dt, dev)
    if lengths is not None:
        check_tensor("lengths", lengths, (B,), torch.int32, dev)
    resets = check_resets(resets, T, B, dev)
    dy, w_hh, w_u, c0 = rowmajor(dy), rowmajor(w_hh), rowmajor(w_u), rowmajor(c0)
    dc_n = rowmajor(dc_n.to(acc_torch_dtype(dt)))
    return _graphs.run(
        "usegate_bwd",
        _bwd_loop,
        (dy, dc_n, w_hh, w_u, c0, c_seq, gates, u_seq, lengths, resets),
        flags=(dot_precision(dt, dev),),
    )


def usegate_layer_fwd(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_u=None, b_u=None, lengths=None, resets=None,
                      *, store=True, strategy="auto"):
    """One use-gate LSTM layer and direction, forward in time: the input projection for all steps (one GEMM),
    then the fused recurrence.

    Args:
        x: (T, B, I); h0, c0: (B, H); w_ih: (4H, I), w_hh: (4H, H) (rows N, i, f, V); b_ih, b_hh: (4H,) or None;
        w_u: (H, H); b_u: (H,) or None; lengths: (B,) int32 or None; resets: (T, B) bool or None.
    Returns:
        y (T, B, H), c_n (B, H) (accumulator dtype) and the saved tensors (c_seq, gates, k_seq, u_seq) of
        ``usegate_fwd_sequence`` (None when not ``store``). h_n is y at each row's last active step.
    """
    if w_u is None:
        raise TypeError("usegate_layer_fwd: w_u (H, H) is required")
    check_dtype("x", x.dtype)
    if x.dim() != 3:
        raise RuntimeError(f"x: expected shape (T, B, I), got {tuple(x.shape)}")
    check_tensor("w_ih", w_ih, (w_hh.shape[0], x.shape[2]), x.dtype, x.device)
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            check_tensor(name, b, (w_hh.shape[0],), x.dtype, x.device)
    xp = input_projection(x, w_ih, b_ih, b_hh)
    return usegate_fwd_sequence(xp, w_hh, w_u, b_u, h0, c0, lengths, resets, store=store, strategy=strategy)


def usegate_layer_bwd(dy, dc_n, x, h0, c0, y, w_ih, w_hh, w_u, c_seq, gates, k_seq, u_seq, lengths=None,
                      resets=None, *, has_bias=True, strategy="auto"):
    """Gradients of one use-gate LSTM layer from the saved forward state: the fused backward recurrence, then
    the weight and input gradients as large GEMMs over all steps (docs/MATH.md).

    Args:
        dy: (T, B, H) gradient of y with the gradient of h_n added at each row's last active step;
        dc_n: (B, H); x, h0, c0, y and the weights as forward; c_seq, gates, k_seq, u_seq as saved by forward.
    Returns:
        (dx (T, B, I), dh0 (B, H), dW_ih (4H, I), dW_hh (4H, H), db (4H,) or None (the gradient of b_ih and of
        b_hh), dc0 (B, H) in the accumulator dtype, dW_u (H, H), db_u (H,) or None).
    """
    T, B, H = dy.shape
    check_tensor("k_seq", k_seq, (T, B, H), dy.dtype, dy.device)
    dz, dzu, dc0 = usegate_bwd_sequence(dy, dc_n, w_hh, w_u, c0, c_seq, gates, u_seq, lengths, resets,
                                        strategy=strategy)
    dzu2 = dzu.reshape(T * B, H)
    dw_u = dzu2.t() @ k_seq.reshape(T * B, H)
    db_u = dzu2.sum(0, dtype=acc_torch_dtype(dzu2.dtype)).to(dzu2.dtype) if has_bias else None
    return weight_grads(dz, x, h0, y, w_ih, w_hh, has_bias, resets=resets) + (dc0, dw_u, db_u)


# Static compile check (experiments/compile_check.py): the heaviest variant of each step kernel, as declared above.
# The t = 0 launch A passes c0 in the input dtype as c_prev, a lighter load than the checked accumulator dtype.
COMPILE_CHECK = step_kernel_checks(__name__)


__all__ = [
    "FWD_CONFIGS", "FWD_USE_CONFIGS", "BWD_CONFIGS", "BWD_USE_CONFIGS",
    "usegate_cell_ref", "usegate_layer_ref",
    "usegate_fwd_gates_step", "usegate_fwd_use_step", "usegate_bwd_gates_step", "usegate_bwd_use_step",
    "usegate_fwd_sequence", "usegate_bwd_sequence", "usegate_layer_fwd", "usegate_layer_bwd", "COMPILE_CHECK",
]
