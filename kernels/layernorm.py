"""Fused kernels of the LayerNorm LSTM and GRU with zoneout (Haste's cells; the math: docs/MATH.md, "LayerNorm LSTM
and LayerNorm GRU"; the reference: kernels/layernorm_ref.py).

A step needs statistics over whole rows: the recurrent pre-activation ``a_t = h_{t-1} @ R`` is normalised over its
G*H columns before any gate can be activated, and the LSTM's cell state over its H units before h_t. A program that
owns a tile of units (the plain cells' step) never sees a whole row, so each step is two launches:

1. the product (``_ln_product``, a step kernel: programs over tiles of columns and batch rows, as the plain cells'
   backward product, ``_common.dot_rows_split``), written in the accumulator dtype: forward
   ``a_t = h_{t-1} @ R`` (B x G*H), backward ``p = da_{t+1} @ R^T`` (B x H);
2. the row step (``_lnlstm_fwd_rows`` and the three others): one program per batch row holding the whole row in
   registers (BLOCK_H = H rounded up to a power of two): both row statistics from registers in two passes (mean,
   then the centred variance; fp32 for 16-bit data), the normalisation, the gates, the cell and zoneout, and the
   same backward with the layer norms' VJPs.

The second launch adds a dependent launch per step, but it moves no weights: a row program reads and writes
O(G*H) elements. On a GPU both loops are captured in CUDA graphs. The weight gradients are GEMMs after the loop
(``layernorm_ref.recurrent_grads``). Saved for the backward: the gates (LSTM i, g, f, o; GRU z, r, g, rh_g), the
normalised recurrent pre-activation a^ and its rstd, the LSTM's c_t (accumulator dtype; its statistics are
recomputed by the backward row program).

Programmatic dependent launch (opt-in, ``FUSEDRNN_PDL=1``: ``_common.pdl_enabled``) chains both launches of every
step: each kernel calls ``wait_prior_step`` (wait for the previous launch to finish, then let the next one start),
and every launch but a loop's first (the forward's product at t = 0, the backward's row program at t = T-1, which
follows other kernels) is made with ``launch_pdl``. What may be read before the wait:

- the product reads W and ``a`` (h_{t-1}, or da_{t+1}: the previous row program's output), both in its K loop: it
  waits first;
- a row program is launched by its step's product, which lets it start only after its own wait returned, that is
  after the previous row program had finished (the forward's first product, launched without PDL, only once it
  has finished itself): so everything that row program wrote (h_{t-1}, c_{t-1}, dc and the
  zoneout carry) is complete when this one starts, as are the loop's inputs (xp[t], the gains, the zoneout mask,
  lengths; in the backward dy[t] and the forward's saved gates, a^, rstd, c). All of these are loaded before the
  wait; only the product's output (``a``, ``p``) after it. Except the GRU's forward row program, which waits first:
  its loads held through the row reduction spilled at 2048 lanes (fp16, unaligned).
- every store comes after the wait. No write-after-read hazard on the reused buffers: the product of step t+1
  overwrites ``a`` / ``p``, which the row program of step t reads, only after its own wait, i.e. after that row
  program has finished; a row program overwrites the ping-pong buffers (c, dc, the carry) that the previous row
  program read, and that one has finished before this one starts.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _graphs
from ._common import (
    TileConfig, acc_torch_dtype, check_dtype, check_steps, check_tensor, compile_check_entries, dot_meta, dot_precision,
    dot_rows_split, dtype_group, pdl_enabled, pdl_launch_kwargs, row_stride, rowmajor, sigmoid, step_kernel,
    step_kernel_checks, tanh, tile_offsets, wait_prior_step,
)
from .layernorm_ref import layer_norm_rows, recurrent_grads

# The row programs hold whole rows in registers: the largest hidden size per dtype group whose row block compiles
# without spills (fp64 at 2048 lanes spills 40-280 B on sm_90a with 16 warps, the most a block may have at 128
# registers a thread).
MAX_HIDDEN = {"16bit": 2048, "fp32": 2048, "fp64": 1024}

# Product tiles: backward-style dot (``dot_rows_split``: num_warps <= BLOCK_K / 16 under 64 rows); only configs that
# compile with 0 spills for sm_90a and sm_80 (experiments/compile_check.py). The two-stage tiles are predicted the
# fastest at B = 16, H = 768 (experiments/predict.py, us a step with the graph gap, bf16: forward 16x32x256 2.48-3.93
# against 2.85-4.32 for 16x32x128 / 3 stages, backward (K = 4H) 16x16x512 3.43-5.49 against 4.09-5.82 for
# 16x16x256 / 3; fp32: forward 16x16x128 4.28-6.22 against 4.73-6.79, backward 16x16x256 / 8 warps 9.44-11.82 against
# 10.79-13.80): one K slice fewer in flight costs less than the deeper prologue at 2-6 slices a step.
PRODUCT_CONFIGS = {
    "16bit": [TileConfig(B=16, H=16, K=256, warps=4, stages=3), TileConfig(B=16, H=32, K=128, warps=4, stages=3),
              TileConfig(B=16, H=64, K=64, warps=4, stages=3), TileConfig(B=64, H=64, K=64, warps=8, stages=3),
              TileConfig(B=16, H=32, K=256, warps=4, stages=2), TileConfig(B=16, H=16, K=512, warps=4, stages=2)],
    "fp32": [TileConfig(B=16, H=16, K=128, warps=4, stages=3), TileConfig(B=16, H=32, K=64, warps=4, stages=3),
             TileConfig(B=64, H=32, K=32, warps=8, stages=3), TileConfig(B=16, H=16, K=128, warps=4, stages=2),
             TileConfig(B=16, H=16, K=256, warps=8, stages=2)],
    # (16, 16, 32, 2 warps) spills 8 B for sm_80 (unaligned), (16, 32, 32, 2 warps) 8 B for sm_90a (aligned)
    "fp64": [TileConfig(B=16, H=16, K=64, warps=4, stages=3)],
}


def _row_warps(block_h: int, group: str) -> int:
    """One warp per 64 lanes up to 512 lanes, per 128 above (8 warps at 1024, 16 at 2048: four values of each row
    vector per thread at 1024; the backward row program keeps about 15 such vectors live); fp64 one per 32 lanes, at
    most 16 (with 4 warps at 256 lanes the LSTM's forward row program spilled 8 B on sm_80). At 1024 lanes 8 warps
    are predicted faster than 16 for all four row programs, 16-bit and fp32 (B = 16, H = 768, bf16, PDL: LSTM
    forward 6.25 -> 6.06 us a step, backward 7.91 -> 7.66; GRU 5.33 -> 5.30, 5.98 -> 5.76): fewer warps to combine
    in each block reduction; at 512 lanes 8 and 4 are within 4% of each other, at 256 4 is fastest."""
    if group == "fp64":
        return max(1, min(16, block_h // 32))
    return max(1, min(16, block_h // 64 if block_h <= 512 else block_h // 128))


# the BLOCK_H the compile check covers per dtype group: the smallest and largest warps, the anchor (H = 768) and the
# largest allowed; the blocks between run with the warps of one of these
ROW_CONFIGS = {g: [triton.Config({"BLOCK_H": n}, num_warps=_row_warps(n, g), num_stages=1)
                   for n in (256, 1024, 2048) if n <= MAX_HIDDEN[g]] for g in MAX_HIDDEN}


@step_kernel(configs=PRODUCT_CONFIGS, args=dict(a="x", w="x", out="acc"))
@triton.jit
def _ln_product(
    a,  # (B, K) h_{t-1} (forward) or da_{t+1} (backward)
    w,  # (K, H) R (forward, H = G * hidden) or R^T (backward, H = hidden), row-major
    out,  # (B, H) a @ w, accumulator dtype
    s_a, s_w, s_o,
    B, H, K,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, PDL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)
    wait_prior_step(PDL)  # a is the previous row program's output, and that program reads ``out`` (docstring)
    acc = dot_rows_split(a, s_a, w, s_w, o_b, m_b, o_j, m_j, K, CAST_F32, PRECISION, ACC, BLOCK_B, BLOCK_H, BLOCK_K)
    tl.store(out + o_b[:, None] * s_o + o_j[None, :], acc, mask=m_bj)


# ----------------------------------------------------------------------------------------------
# Row helpers: a row of G blocks of H values (1-D, BLOCK_H lanes each, lanes >= H masked by ``m``).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _row_norm(a0, a1, a2, a3, m, n, GATES: tl.constexpr):
    """Layer-norm statistics of a row of GATES blocks (1, 3 or 4; the unused blocks are ignored) of ``n`` values in
    all: returns the normalised blocks (zero past H and in unused blocks) and rstd. Two passes over registers, each
    one block-wide reduction (the blocks are added lane by lane first)."""
    tot = tl.where(m, a0, 0.0)
    if GATES >= 3:
        tot += tl.where(m, a1, 0.0) + tl.where(m, a2, 0.0)
    if GATES == 4:
        tot += tl.where(m, a3, 0.0)
    mean = tl.sum(tot, 0) / n
    d0 = tl.where(m, a0 - mean, 0.0)
    sq = d0 * d0
    d1 = tl.zeros_like(d0)
    d2 = tl.zeros_like(d0)
    d3 = tl.zeros_like(d0)
    if GATES >= 3:
        d1 = tl.where(m, a1 - mean, 0.0)
        d2 = tl.where(m, a2 - mean, 0.0)
        sq += d1 * d1 + d2 * d2
    if GATES == 4:
        d3 = tl.where(m, a3 - mean, 0.0)
        sq += d3 * d3
    rstd = 1.0 / tl.sqrt(tl.sum(sq, 0) / n + 1e-5)
    return d0 * rstd, d1 * rstd, d2 * rstd, d3 * rstd, rstd


@triton.jit
def _row_norm_vjp(g0, g1, g2, g3, h0, h1, h2, h3, rstd, n, GATES: tl.constexpr):
    """The layer norm's input gradient from g = dY * gamma and the normalised row h (zero past H):
    rstd * (g - mean(g) - h * mean(g * h)), per block; two block-wide reductions."""
    s = g0
    sh = g0 * h0
    if GATES >= 3:
        s += g1 + g2
        sh += g1 * h1 + g2 * h2
    if GATES == 4:
        s += g3
        sh += g3 * h3
    mg = tl.sum(s, 0) / n
    mh = tl.sum(sh, 0) / n
    return (rstd * (g0 - mg - h0 * mh), rstd * (g1 - mg - h1 * mh), rstd * (g2 - mg - h2 * mh),
            rstd * (g3 - mg - h3 * mh))


@triton.jit
def _zone(h_new, h_prev, k, ZONEOUT: tl.constexpr):
    """Zoneout of one row with its weight ``k`` (``_zone_weight``); none when ZONEOUT is 0."""
    if ZONEOUT != 0:
        h_new = h_prev + k * (h_new - h_prev)
    return h_new


@triton.jit
def _zone_weight(zmask, zkeep, p_m, m, ACC: tl.constexpr, ZONEOUT: tl.constexpr):
    """The zoneout weight m of one row: 0 none (1), 1 the mask row at ``p_m`` (training), 2 the scalar keep
    weight (eval)."""
    if ZONEOUT == 1:
        k = tl.load(zmask + p_m, mask=m, other=0.0).to(ACC)
    elif ZONEOUT == 2:
        k = tl.load(zkeep).to(ACC)
    else:
        k = 1.0
    return k


@triton.jit
def _bwd_inputs(dy, q_in, zmask, zkeep, b, s_dy, s_qi, s_m, o, m, ACC: tl.constexpr, HAS_NEXT: tl.constexpr,
                HAS_CARRY: tl.constexpr, ZONEOUT: tl.constexpr):
    """A backward row program's loads that come before the wait (module docstring): dy_t, the carry to h_t from
    step t+1 (zeros, never added, where there is none) and the zoneout weight."""
    dy_t = tl.load(dy + b * s_dy + o, mask=m, other=0.0).to(ACC)
    if HAS_NEXT and HAS_CARRY:
        q = tl.load(q_in + b * s_qi + o, mask=m, other=0.0)
    else:
        q = tl.zeros_like(dy_t)
    return dy_t, q, _zone_weight(zmask, zkeep, b * s_m + o, m, ACC, ZONEOUT)


@triton.jit
def _dh_in(dy, p, q, b, s_p, o, m, HAS_NEXT: tl.constexpr, HAS_CARRY: tl.constexpr):
    """The gradient reaching h_t: dy_t (loaded), plus (before the last step) da_{t+1} @ R^T and the carry ``q``
    (``_bwd_inputs``)."""
    dh = dy
    if HAS_NEXT:
        dh += tl.load(p + b * s_p + o, mask=m, other=0.0)
        if HAS_CARRY:
            dh += q
    return dh


@triton.jit
def _active(lengths, b, t, HAS_LENGTHS: tl.constexpr):
    if HAS_LENGTHS:
        act = t < tl.load(lengths + b)
    else:
        act = True
    return act


@triton.jit
def _load4(p, H, m, ACC: tl.constexpr):
    return (tl.load(p, mask=m, other=0.0).to(ACC), tl.load(p + H, mask=m, other=0.0).to(ACC),
            tl.load(p + 2 * H, mask=m, other=0.0).to(ACC), tl.load(p + 3 * H, mask=m, other=0.0).to(ACC))


@triton.jit
def _store4(p, H, v0, v1, v2, v3, m):
    ty = p.dtype.element_ty
    tl.store(p, v0.to(ty), mask=m)
    tl.store(p + H, v1.to(ty), mask=m)
    tl.store(p + 2 * H, v2.to(ty), mask=m)
    tl.store(p + 3 * H, v3.to(ty), mask=m)


# ----------------------------------------------------------------------------------------------
# LayerNorm LSTM (gates i, g, f, o)
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["t"])
def _lnlstm_fwd_rows(
    a,  # (B, 4H) h_{t-1} @ R, accumulator dtype
    xp,  # (B, 4H) Xp_t
    h_prev,  # (B, H) h_{t-1}
    c_prev,  # (B, H) c_{t-1}
    gamma_r, gamma_h, beta_h,  # (4H,), (H,), (H,)
    zmask,  # (B, H) zoneout mask of step t (ZONEOUT 1)
    zkeep,  # (1,) accumulator dtype: 1 - p (ZONEOUT 2)
    lengths,  # (B,) int32 (HAS_LENGTHS)
    h_out,  # (B, H) h_t (zeros on finished rows)
    c_out,  # (B, H) c_t, accumulator dtype
    gates,  # (B, 4H) i, g, f, o (STORE)
    a_hat,  # (B, 4H) normalised a (STORE)
    rstd,  # (B,) its rstd, accumulator dtype (STORE)
    s_a, s_x, s_hp, s_cp, s_m, s_ho, s_co, s_g, s_ah,
    t, H,
    ZONEOUT: tl.constexpr, HAS_LENGTHS: tl.constexpr, STORE: tl.constexpr, ACC: tl.constexpr, PDL: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    b = tl.program_id(0)
    o = tl.arange(0, BLOCK_H)
    m = o < H
    # before the wait: all but the product (module docstring), kept in the input dtype until used
    ty = xp.dtype.element_ty
    x_i, x_g, x_f, x_o = _load4(xp + b * s_x + o, H, m, ty)
    y_i, y_g, y_f, y_o = _load4(gamma_r + o, H, m, ty)
    cp = tl.load(c_prev + b * s_cp + o, mask=m, other=0.0).to(ACC)
    y_h = tl.load(gamma_h + o, mask=m, other=0.0)
    b_h = tl.load(beta_h + o, mask=m, other=0.0)
    hp = tl.load(h_prev + b * s_hp + o, mask=m, other=0.0)
    zw = _zone_weight(zmask, zkeep, b * s_m + o, m, ACC, ZONEOUT)
    act = _active(lengths, b, t, HAS_LENGTHS)
    wait_prior_step(PDL)  # a_t comes from this step's product
    a_i, a_g, a_f, a_o = _load4(a + b * s_a + o, H, m, ACC)
    n_i, n_g, n_f, n_o, r_a = _row_norm(a_i, a_g, a_f, a_o, m, 4 * H, 4)
    b_i = sigmoid(n_i * y_i.to(ACC) + x_i.to(ACC))
    b_g = tanh(n_g * y_g.to(ACC) + x_g.to(ACC))
    b_f = sigmoid(n_f * y_f.to(ACC) + x_f.to(ACC))
    b_o = sigmoid(n_o * y_o.to(ACC) + x_o.to(ACC))
    c = b_f * cp + b_i * b_g
    if STORE:  # stored as soon as they are final: fewer live registers across the cell's row statistics
        _store4(a_hat + b * s_ah + o, H, n_i, n_g, n_f, n_o, m)
        tl.store(rstd + b, r_a)
        _store4(gates + b * s_g + o, H, b_i, b_g, b_f, b_o, m)
    c_hat, _, _, _, _ = _row_norm(c, c, c, c, m, H, 1)
    nc = c_hat * y_h.to(ACC) + b_h.to(ACC)
    h = _zone(b_o * tanh(nc), hp.to(ACC), zw, ZONEOUT)
    tl.store(h_out + b * s_ho + o, tl.where(act, h, 0.0).to(h_out.dtype.element_ty), mask=m)
    tl.store(c_out + b * s_co + o, tl.where(act, c, cp).to(c_out.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["t"])
def _lnlstm_bwd_rows(
    p,  # (B, H) da_{t+1} @ R^T, accumulator dtype (HAS_NEXT)
    q_in,  # (B, H) zoneout's carry (1 - m_{t+1}) dh_{t+1}, accumulator dtype (HAS_NEXT and ZONEOUT)
    dy,  # (B, H) dy_t
    gates,  # (B, 4H) i, g, f, o of step t
    a_hat,  # (B, 4H)
    rstd,  # (B,) accumulator dtype
    c_cur,  # (B, H) c_t, accumulator dtype
    c_prev,  # (B, H) c_{t-1}
    dc_in,  # (B, H) gradient reaching c_t from step t+1, accumulator dtype
    gamma_r, gamma_h, beta_h,
    zmask, zkeep, lengths,
    dv,  # (B, 4H) gradient of Xp_t (and of the normalised gates' pre-activation v)
    da,  # (B, 4H) gradient of a_t
    dn,  # (B, H) gradient of n_t = LN(c_t) * gamma_h + beta_h
    dc_out,  # (B, H) gradient reaching c_{t-1}, accumulator dtype
    q_out,  # (B, H) carry for step t-1, accumulator dtype (ZONEOUT)
    s_p, s_qi, s_dy, s_g, s_ah, s_cc, s_cp, s_dci, s_m, s_dv, s_da, s_dn, s_dco, s_qo,
    t, H,
    HAS_NEXT: tl.constexpr, ZONEOUT: tl.constexpr, HAS_LENGTHS: tl.constexpr, ACC: tl.constexpr,
    PDL: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b = tl.program_id(0)
    o = tl.arange(0, BLOCK_H)
    m = o < H
    # before the wait: all but the product (module docstring)
    dy_t, qc, zw = _bwd_inputs(dy, q_in, zmask, zkeep, b, s_dy, s_qi, s_m, o, m, ACC, HAS_NEXT, ZONEOUT != 0, ZONEOUT)
    b_i, b_g, b_f, b_o = _load4(gates + b * s_g + o, H, m, ACC)
    c = tl.load(c_cur + b * s_cc + o, mask=m, other=0.0).to(ACC)
    y_h = tl.load(gamma_h + o, mask=m, other=0.0).to(ACC)
    b_h = tl.load(beta_h + o, mask=m, other=0.0).to(ACC)
    dcin = tl.load(dc_in + b * s_dci + o, mask=m, other=0.0)
    cp = tl.load(c_prev + b * s_cp + o, mask=m, other=0.0).to(ACC)
    n_i, n_g, n_f, n_o = _load4(a_hat + b * s_ah + o, H, m, ACC)
    y_i, y_g, y_f, y_o = _load4(gamma_r + o, H, m, ACC)
    r_a = tl.load(rstd + b).to(ACC)
    act = _active(lengths, b, t, HAS_LENGTHS)
    c_hat, _, _, _, r_c = _row_norm(c, c, c, c, m, H, 1)  # the statistics of c_t, also while the product runs
    tn = tanh(c_hat * y_h + b_h)
    wait_prior_step(PDL)  # p comes from this step's product
    dh = _dh_in(dy_t, p, qc, b, s_p, o, m, HAS_NEXT, ZONEOUT != 0)
    dht = dh * zw
    d_o = dht * tn
    d_n = dht * b_o * (1.0 - tn * tn)
    gc, _, _, _ = _row_norm_vjp(d_n * y_h, c, c, c, c_hat, c, c, c, r_c, H, 1)
    dc = dcin + gc
    v_i = dc * b_g * b_i * (1.0 - b_i)
    v_g = dc * b_i * (1.0 - b_g * b_g)
    v_f = dc * cp * b_f * (1.0 - b_f)
    v_o = d_o * b_o * (1.0 - b_o)
    da_i, da_g, da_f, da_o = _row_norm_vjp(v_i * y_i, v_g * y_g, v_f * y_f, v_o * y_o, n_i, n_g, n_f, n_o, r_a,
                                           4 * H, 4)
    zero = tl.zeros_like(dh)
    _store4(dv + b * s_dv + o, H, tl.where(act, v_i, zero), tl.where(act, v_g, zero), tl.where(act, v_f, zero),
            tl.where(act, v_o, zero), m)
    _store4(da + b * s_da + o, H, tl.where(act, da_i, zero), tl.where(act, da_g, zero), tl.where(act, da_f, zero),
            tl.where(act, da_o, zero), m)
    tl.store(dn + b * s_dn + o, tl.where(act, d_n, zero).to(dn.dtype.element_ty), mask=m)
    tl.store(dc_out + b * s_dco + o, tl.where(act, dc * b_f, dcin), mask=m)
    if ZONEOUT != 0:
        tl.store(q_out + b * s_qo + o, tl.where(act, (1.0 - zw) * dh, zero), mask=m)


# ----------------------------------------------------------------------------------------------
# LayerNorm GRU (gates z, r, g)
# ----------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["t"])
def _lngru_fwd_rows(
    a,  # (B, 3H) h_{t-1} @ R, accumulator dtype
    xp,  # (B, 3H) Xp_t
    h_prev,  # (B, H)
    gamma_r,  # (3H,)
    rbias,  # (3H,) recurrent_bias (HAS_BIAS)
    zmask, zkeep, lengths,
    h_out,  # (B, H)
    gates,  # (B, 4H) z, r, g, rh_g (STORE)
    a_hat,  # (B, 3H) (STORE)
    rstd,  # (B,) accumulator dtype (STORE)
    s_a, s_x, s_hp, s_m, s_ho, s_g, s_ah,
    t, H,
    HAS_BIAS: tl.constexpr, ZONEOUT: tl.constexpr, HAS_LENGTHS: tl.constexpr, STORE: tl.constexpr,
    ACC: tl.constexpr, PDL: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b = tl.program_id(0)
    o = tl.arange(0, BLOCK_H)
    m = o < H
    # the wait first and every load after it, in the order of use: with the loads that do not read the product
    # issued before the wait (as the other row programs do) the 2048-lane fp16 unaligned block kept them live through
    # the row reduction and spilled 24-32 B (sm_80 / sm_90a); this program gives up that overlap under PDL
    wait_prior_step(PDL)  # a_t comes from this step's product
    p_a = a + b * s_a + o
    a_z = tl.load(p_a, mask=m, other=0.0).to(ACC)
    a_r = tl.load(p_a + H, mask=m, other=0.0).to(ACC)
    a_g = tl.load(p_a + 2 * H, mask=m, other=0.0).to(ACC)
    n_z, n_r, n_g, _, r_a = _row_norm(a_z, a_r, a_g, a_g, m, 3 * H, 3)
    rh_z = n_z * tl.load(gamma_r + o, mask=m, other=0.0).to(ACC)
    rh_r = n_r * tl.load(gamma_r + H + o, mask=m, other=0.0).to(ACC)
    rh_g = n_g * tl.load(gamma_r + 2 * H + o, mask=m, other=0.0).to(ACC)
    if HAS_BIAS:
        rh_z += tl.load(rbias + o, mask=m, other=0.0).to(ACC)
        rh_r += tl.load(rbias + H + o, mask=m, other=0.0).to(ACC)
        rh_g += tl.load(rbias + 2 * H + o, mask=m, other=0.0).to(ACC)
    p_x = xp + b * s_x + o
    b_z = sigmoid(tl.load(p_x, mask=m, other=0.0).to(ACC) + rh_z)
    b_r = sigmoid(tl.load(p_x + H, mask=m, other=0.0).to(ACC) + rh_r)
    b_g = tanh(tl.load(p_x + 2 * H, mask=m, other=0.0).to(ACC) + b_r * rh_g)
    hp = tl.load(h_prev + b * s_hp + o, mask=m, other=0.0).to(ACC)
    zw = _zone_weight(zmask, zkeep, b * s_m + o, m, ACC, ZONEOUT)
    h = _zone(b_g + b_z * (hp - b_g), hp, zw, ZONEOUT)
    act = _active(lengths, b, t, HAS_LENGTHS)
    tl.store(h_out + b * s_ho + o, tl.where(act, h, 0.0).to(h_out.dtype.element_ty), mask=m)
    if STORE:
        _store4(gates + b * s_g + o, H, b_z, b_r, b_g, rh_g, m)
        p_n = a_hat + b * s_ah + o
        ty = a_hat.dtype.element_ty
        tl.store(p_n, n_z.to(ty), mask=m)
        tl.store(p_n + H, n_r.to(ty), mask=m)
        tl.store(p_n + 2 * H, n_g.to(ty), mask=m)
        tl.store(rstd + b, r_a)


@triton.jit(do_not_specialize=["t"])
def _lngru_bwd_rows(
    p,  # (B, H) da_{t+1} @ R^T, accumulator dtype (HAS_NEXT)
    q_in,  # (B, H) carry from step t+1, accumulator dtype (HAS_NEXT)
    dy,  # (B, H)
    gates,  # (B, 4H) z, r, g, rh_g of step t
    a_hat,  # (B, 3H)
    rstd,  # (B,) accumulator dtype
    h_prev,  # (B, H)
    gamma_r,  # (3H,)
    zmask, zkeep, lengths,
    dxp,  # (B, 3H) gradient of Xp_t: [dz, dr, dg]
    da,  # (B, 3H) gradient of a_t
    q_out,  # (B, H) carry for step t-1, accumulator dtype
    s_p, s_qi, s_dy, s_g, s_ah, s_hp, s_m, s_dx, s_da, s_qo,
    t, H,
    HAS_NEXT: tl.constexpr, ZONEOUT: tl.constexpr, HAS_LENGTHS: tl.constexpr, ACC: tl.constexpr,
    PDL: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b = tl.program_id(0)
    o = tl.arange(0, BLOCK_H)
    m = o < H
    # before the wait: all but the product (module docstring)
    dy_t, qc, zw = _bwd_inputs(dy, q_in, zmask, zkeep, b, s_dy, s_qi, s_m, o, m, ACC, HAS_NEXT, True, ZONEOUT)
    b_z, b_r, b_g, rh_g = _load4(gates + b * s_g + o, H, m, ACC)
    hp = tl.load(h_prev + b * s_hp + o, mask=m, other=0.0).to(ACC)
    p_n = a_hat + b * s_ah + o
    n_z = tl.load(p_n, mask=m, other=0.0).to(ACC)
    n_r = tl.load(p_n + H, mask=m, other=0.0).to(ACC)
    n_g = tl.load(p_n + 2 * H, mask=m, other=0.0).to(ACC)
    y_z = tl.load(gamma_r + o, mask=m, other=0.0).to(ACC)
    y_r = tl.load(gamma_r + H + o, mask=m, other=0.0).to(ACC)
    y_g = tl.load(gamma_r + 2 * H + o, mask=m, other=0.0).to(ACC)
    r_a = tl.load(rstd + b).to(ACC)
    act = _active(lengths, b, t, HAS_LENGTHS)
    wait_prior_step(PDL)  # p comes from this step's product
    dh = _dh_in(dy_t, p, qc, b, s_p, o, m, HAS_NEXT, True)
    dht = dh * zw
    d_g = dht * (1.0 - b_z) * (1.0 - b_g * b_g)
    d_z = dht * (hp - b_g) * b_z * (1.0 - b_z)
    d_r = d_g * rh_g * b_r * (1.0 - b_r)
    da_z, da_r, da_g, _ = _row_norm_vjp(d_z * y_z, d_r * y_r, d_g * b_r * y_g, d_g, n_z, n_r, n_g, n_g, r_a, 3 * H, 3)
    q = (1.0 - zw) * dh + dht * b_z
    zero = tl.zeros_like(dh)
    ty = dxp.dtype.element_ty
    p_dx = dxp + b * s_dx + o
    tl.store(p_dx, tl.where(act, d_z, zero).to(ty), mask=m)
    tl.store(p_dx + H, tl.where(act, d_r, zero).to(ty), mask=m)
    tl.store(p_dx + 2 * H, tl.where(act, d_g, zero).to(ty), mask=m)
    p_da = da + b * s_da + o
    tl.store(p_da, tl.where(act, da_z, zero).to(ty), mask=m)
    tl.store(p_da + H, tl.where(act, da_r, zero).to(ty), mask=m)
    tl.store(p_da + 2 * H, tl.where(act, da_g, zero).to(ty), mask=m)
    tl.store(q_out + b * s_qo + o, tl.where(act, q, zero), mask=m)


# ----------------------------------------------------------------------------------------------
# Launchers and time loops
# ----------------------------------------------------------------------------------------------
def row_config(H: int, group: str) -> dict:
    """The row programs' block (the whole row padded to a power of two) and warps for hidden size H and dtype group
    (``DTYPE_GROUPS``)."""
    block = max(16, triton.next_power_of_2(H))
    return dict(BLOCK_H=block, num_warps=_row_warps(block, group), num_stages=1)


def _row_meta(H: int, t: torch.Tensor) -> dict:
    """``row_config`` for ``t``'s dtype, and the accumulator constexpr."""
    return dict(row_config(H, dtype_group(t.dtype)), ACC=dot_meta(t)["ACC"])


def ln_product(a, w, out, chained=False):
    """out (B, N) = a (B, K) @ w (K, N), w row-major, out in the accumulator dtype (one step's product).
    ``chained``: the previous launch is this loop's previous row program (PDL, module docstring)."""
    B, K = a.shape
    _ln_product.launch(a=a, w=w, out=out, s_a=a.stride(0), s_w=w.stride(0), s_o=out.stride(0), B=B, H=w.shape[1],
                       K=K, chained=chained)


def _row_pdl(pdl: bool) -> dict:
    """A row program's PDL constexpr and launch keyword."""
    return dict(PDL=pdl, **pdl_launch_kwargs(pdl))


def _zoneout_meta(zmask, zkeep) -> int:
    return 1 if zmask is not None else (2 if zkeep is not None else 0)


def _check_common(name, xp, h0, rk, G, zmask, zkeep, lengths):
    check_dtype(name, xp.dtype)
    T, B, GH = xp.shape
    check_steps(T)
    H = h0.shape[-1]
    dev, dt = xp.device, xp.dtype
    if GH != G * H:
        raise RuntimeError(f"{name}: the last dimension ({GH}) must be {G} * hidden_size ({H})")
    limit = MAX_HIDDEN[dtype_group(dt)]
    if H > limit:
        raise RuntimeError(f"fusedrnn LayerNorm kernels: hidden_size {H} > {limit} for {dt} (a row program holds "
                           "the whole row); use backend='reference'")
    check_tensor("h0", h0, (B, H), dt, dev)
    check_tensor("recurrent_kernel", rk, (H, GH), dt, dev)
    if zmask is not None:
        check_tensor("zmask", zmask, (T, B, H), dt, dev)
    if zkeep is not None:
        check_tensor("zkeep", zkeep, (1,), acc_torch_dtype(dt), dev)
    if lengths is not None:
        check_tensor("lengths", lengths, (B,), torch.int32, dev)
    return T, B, H


def _fwd_lstm_loop(xp, h0, c0, rk, gamma_r, gamma_h, beta_h, zmask, zkeep, lengths, store):
    T, B, G4 = xp.shape
    H = G4 // 4
    acc = acc_torch_dtype(xp.dtype)
    a = xp.new_empty(B, G4, dtype=acc)
    y = xp.new_empty(T, B, H)
    c_seq = xp.new_empty(T if store else 2, B, H, dtype=acc)
    gates = xp.new_empty(T, B, G4, dtype=acc) if store else None  # accumulator dtype: the backward's layer norms
    a_hat = xp.new_empty(T, B, G4) if store else None
    rstd = xp.new_empty(T, B, dtype=acc) if store else None
    meta = dict(_row_meta(H, xp), ZONEOUT=_zoneout_meta(zmask, zkeep), HAS_LENGTHS=lengths is not None,
                STORE=store, **_row_pdl(pdl_enabled(xp.device)))
    for t in range(T):
        h_prev = h0 if t == 0 else y[t - 1]
        c_prev = c0 if t == 0 else c_seq[(t - 1) if store else (t - 1) % 2]
        c_out = c_seq[t if store else t % 2]
        ln_product(h_prev, rk, a, chained=t > 0)
        _lnlstm_fwd_rows[(B,)](
            a, xp[t], h_prev, c_prev, gamma_r, gamma_h, beta_h, zmask[t] if zmask is not None else None, zkeep,
            lengths, y[t], c_out, gates[t] if store else None, a_hat[t] if store else None,
            rstd[t] if store else None,
            a.stride(0), xp.stride(1), h_prev.stride(0), c_prev.stride(0), row_stride(zmask[t] if zmask is not None
                                                                                      else None),
            y.stride(1), c_out.stride(0), gates.stride(1) if store else 0, a_hat.stride(1) if store else 0,
            t, H, **meta)
    c_n = c_seq[(T - 1) if store else (T - 1) % 2]
    return y, c_n, c_seq if store else None, gates, a_hat, rstd


def lnlstm_fwd_sequence(xp, h0, c0, rk, gamma_r, gamma_h, beta_h, zmask=None, zkeep=None, lengths=None, *,
                        store=True, strategy="per_step"):
    """The LayerNorm LSTM recurrence over T steps, two launches per step (module docstring), or with
    ``strategy="persistent"`` one launch for the whole sequence (kernels/layernorm_persistent.py) where it fits,
    else per_step with the reason logged at DEBUG level ("auto": per_step, no prediction favours persistent yet).

    Args:
        xp (T, B, 4H) the input projection with its layer norm and bias; h0, c0 (B, H); rk (H, 4H) Haste's
        recurrent_kernel; gamma_r (4H,), gamma_h, beta_h (H,); zmask (T, B, H) zoneout mask (training) or zkeep
        (1,) accumulator dtype, 1 - p (eval), or neither; lengths (B,) int32 or None; store: keep what the
        backward reads.
    Returns:
        y (T, B, H), c_n (B, H) accumulator dtype, and c_seq (T, B, H), gates (T, B, 4H) (accumulator dtype:
        in 16-bit the backward's layer norms lost 1.7x in gradient accuracy to their rounding), a_hat (T, B, 4H),
        rstd (T, B) (None when not ``store``).
    """
    T, B, H = _check_common("xp", xp, h0, rk, 4, zmask, zkeep, lengths)
    for n, v, s in (("c0", c0, (B, H)), ("gamma_r", gamma_r, (4 * H,)), ("gamma_h", gamma_h, (H,)),
                    ("beta_h", beta_h, (H,))):
        check_tensor(n, v, s, xp.dtype, xp.device)
    xp, h0, c0, rk = rowmajor(xp), rowmajor(h0), rowmajor(c0), rk.contiguous()
    gamma_r, gamma_h, beta_h = gamma_r.contiguous(), gamma_h.contiguous(), beta_h.contiguous()
    zmask = zmask.contiguous() if zmask is not None else None
    if strategy != "per_step":
        from . import layernorm_persistent as _lp

        cfg = _lp.plan(strategy, device=xp.device, dtype=xp.dtype, H=H, B=B)
        if cfg is not None:
            try:
                return _lp.lnlstm_fwd_persistent(xp, h0, c0, rk, gamma_r, gamma_h, beta_h, zmask, zkeep, lengths,
                                                 store=store, cfg=cfg)
            except _lp._p.Fallback as e:
                _lp._p.log_fallback(strategy, e, "LayerNorm LSTM")
    return _graphs.run("lnlstm_fwd", lambda *args: _fwd_lstm_loop(*args, store),
                       (xp, h0, c0, rk, gamma_r, gamma_h, beta_h, zmask, zkeep, lengths),
                       flags=(store, dot_precision(xp.dtype, xp.device)))


def _bwd_lstm_loop(dy, dc_n, c0, rk, gamma_r, gamma_h, beta_h, c_seq, gates, a_hat, rstd, zmask, zkeep, lengths):
    T, B, H = dy.shape
    acc = acc_torch_dtype(dy.dtype)
    rk_t = rk.t().contiguous()
    p = dy.new_empty(B, H, dtype=acc)
    dv = dy.new_empty(T, B, 4 * H)
    da = dy.new_empty(T, B, 4 * H)
    dn = dy.new_empty(T, B, H)
    dc = dy.new_empty(2, B, H, dtype=acc)
    zo = _zoneout_meta(zmask, zkeep)
    q = dy.new_empty(2, B, H, dtype=acc) if zo else None
    meta = dict(_row_meta(H, dy), ZONEOUT=zo, HAS_LENGTHS=lengths is not None)
    pdl = pdl_enabled(dy.device)
    dc_in = dc_n
    for t in range(T - 1, -1, -1):
        nxt = t < T - 1
        if nxt:  # follows the row program of step t+1
            ln_product(da[t + 1], rk_t, p, chained=True)
        c_prev = c0 if t == 0 else c_seq[t - 1]
        q_in = q[(t + 1) % 2] if zo and nxt else None
        q_out = q[t % 2] if zo else None
        zm = zmask[t] if zmask is not None else None
        _lnlstm_bwd_rows[(B,)](
            p if nxt else None, q_in, dy[t], gates[t], a_hat[t], rstd[t], c_seq[t], c_prev, dc_in,
            gamma_r, gamma_h, beta_h, zm, zkeep, lengths, dv[t], da[t], dn[t], dc[t % 2], q_out,
            p.stride(0), row_stride(q_in), dy.stride(1), gates.stride(1), a_hat.stride(1), c_seq.stride(1),
            c_prev.stride(0), dc_in.stride(0), row_stride(zm), dv.stride(1), da.stride(1), dn.stride(1),
            dc.stride(1), row_stride(q_out), t, H, HAS_NEXT=nxt, **meta, **_row_pdl(pdl and nxt))
        dc_in = dc[t % 2]
    return dv, da, dn, dc_in, (q[0] if zo else None)


def lnlstm_layer_bwd(dy, dc_n, h0, c0, y, rk, gamma_r, gamma_h, beta_h, c_seq, gates, a_hat, rstd, zmask=None,
                     zkeep=None, lengths=None):
    """Gradients of ``lnlstm_fwd_sequence``'s inputs from those of y (the gradient of h_n added at each row's last
    step) and c_n: the backward loop (two launches per step), then the parameter gradients as reductions and GEMMs
    over all steps (docs/MATH.md). Returns (dxp, dh0, dc0, d_rk, dgamma_r, dgamma_h, dbeta_h)."""
    T, B, H = dy.shape
    dev, dt = dy.device, dy.dtype
    check_tensor("y", y, (T, B, H), dt, dev)
    check_tensor("gates", gates, (T, B, 4 * H), acc_torch_dtype(dt), dev)
    acc = acc_torch_dtype(dt)
    dy, dc_n = rowmajor(dy), rowmajor(dc_n.to(acc))
    dv, da, dn, dc0, q0 = _graphs.run(
        "lnlstm_bwd", _bwd_lstm_loop,
        (dy, dc_n, rowmajor(c0), rk.contiguous(), gamma_r.contiguous(), gamma_h.contiguous(), beta_h.contiguous(),
         c_seq, gates, a_hat, rstd, zmask.contiguous() if zmask is not None else None, zkeep, lengths),
        flags=(dot_precision(dt, dev),))
    d_rk, dh0 = recurrent_grads(da, h0, y, rk, q0, lengths)
    c_hat = layer_norm_rows(c_seq, 1.0)[1]
    sum_tb = lambda v: v.sum((0, 1), dtype=acc).to(dt)  # noqa: E731
    return (dv, dh0.to(dt), dc0, d_rk.to(dt), sum_tb(dv.to(acc) * a_hat), sum_tb(dn.to(acc) * c_hat), sum_tb(dn))


def _fwd_gru_loop(xp, h0, rk, gamma_r, rbias, zmask, zkeep, lengths, store):
    T, B, G3 = xp.shape
    H = G3 // 3
    acc = acc_torch_dtype(xp.dtype)
    a = xp.new_empty(B, G3, dtype=acc)
    y = xp.new_empty(T, B, H)
    gates = xp.new_empty(T, B, 4 * H) if store else None
    a_hat = xp.new_empty(T, B, G3) if store else None
    rstd = xp.new_empty(T, B, dtype=acc) if store else None
    meta = dict(_row_meta(H, xp), HAS_BIAS=rbias is not None, ZONEOUT=_zoneout_meta(zmask, zkeep),
                HAS_LENGTHS=lengths is not None, STORE=store, **_row_pdl(pdl_enabled(xp.device)))
    for t in range(T):
        h_prev = h0 if t == 0 else y[t - 1]
        zm = zmask[t] if zmask is not None else None
        ln_product(h_prev, rk, a, chained=t > 0)
        _lngru_fwd_rows[(B,)](
            a, xp[t], h_prev, gamma_r, rbias, zm, zkeep, lengths, y[t], gates[t] if store else None,
            a_hat[t] if store else None, rstd[t] if store else None,
            a.stride(0), xp.stride(1), h_prev.stride(0), row_stride(zm), y.stride(1),
            gates.stride(1) if store else 0, a_hat.stride(1) if store else 0, t, H, **meta)
    return y, gates, a_hat, rstd


def lngru_fwd_sequence(xp, h0, rk, gamma_r, rbias=None, zmask=None, zkeep=None, lengths=None, *, store=True):
    """The LayerNorm GRU recurrence over T steps, two launches per step. xp (T, B, 3H) with the input layer norm
    and ``bias``; rk (H, 3H); gamma_r (3H,); rbias (3H,) recurrent_bias or None; zoneout, lengths, store as
    ``lnlstm_fwd_sequence``. Returns y (T, B, H) and gates (T, B, 4H) [z, r, g, rh_g], a_hat (T, B, 3H), rstd
    (T, B) (None when not ``store``)."""
    T, B, H = _check_common("xp", xp, h0, rk, 3, zmask, zkeep, lengths)
    check_tensor("gamma_r", gamma_r, (3 * H,), xp.dtype, xp.device)
    if rbias is not None:
        check_tensor("recurrent_bias", rbias, (3 * H,), xp.dtype, xp.device)
        rbias = rbias.contiguous()
    xp, h0, rk, gamma_r = rowmajor(xp), rowmajor(h0), rk.contiguous(), gamma_r.contiguous()
    zmask = zmask.contiguous() if zmask is not None else None
    return _graphs.run("lngru_fwd", lambda *args: _fwd_gru_loop(*args, store),
                       (xp, h0, rk, gamma_r, rbias, zmask, zkeep, lengths),
                       flags=(store, dot_precision(xp.dtype, xp.device)))


def _bwd_gru_loop(dy, h0, y, rk, gamma_r, gates, a_hat, rstd, zmask, zkeep, lengths):
    T, B, H = dy.shape
    acc = acc_torch_dtype(dy.dtype)
    rk_t = rk.t().contiguous()
    p = dy.new_empty(B, H, dtype=acc)
    dxp = dy.new_empty(T, B, 3 * H)
    da = dy.new_empty(T, B, 3 * H)
    q = dy.new_empty(2, B, H, dtype=acc)
    meta = dict(_row_meta(H, dy), ZONEOUT=_zoneout_meta(zmask, zkeep), HAS_LENGTHS=lengths is not None)
    pdl = pdl_enabled(dy.device)
    for t in range(T - 1, -1, -1):
        nxt = t < T - 1
        if nxt:  # follows the row program of step t+1
            ln_product(da[t + 1], rk_t, p, chained=True)
        h_prev = h0 if t == 0 else y[t - 1]
        zm = zmask[t] if zmask is not None else None
        q_in = q[(t + 1) % 2] if nxt else None
        _lngru_bwd_rows[(B,)](
            p if nxt else None, q_in, dy[t], gates[t], a_hat[t], rstd[t], h_prev, gamma_r, zm, zkeep, lengths,
            dxp[t], da[t], q[t % 2],
            p.stride(0), row_stride(q_in), dy.stride(1), gates.stride(1), a_hat.stride(1), h_prev.stride(0),
            row_stride(zm), dxp.stride(1), da.stride(1), q.stride(1), t, H, HAS_NEXT=nxt, **meta,
            **_row_pdl(pdl and nxt))
    return dxp, da, q[0]


def lngru_layer_bwd(dy, h0, y, rk, gamma_r, gates, a_hat, rstd, zmask=None, zkeep=None, lengths=None, *,
                    has_bias=True):
    """Gradients of ``lngru_fwd_sequence``'s inputs from that of y (the gradient of h_n added at each row's last
    step). Returns (dxp, dh0, d_rk, dgamma_r, drecurrent_bias or None)."""
    T, B, H = dy.shape
    dev, dt = dy.device, dy.dtype
    check_tensor("y", y, (T, B, H), dt, dev)
    check_tensor("gates", gates, (T, B, 4 * H), dt, dev)
    acc = acc_torch_dtype(dt)
    dxp, da, q0 = _graphs.run(
        "lngru_bwd", _bwd_gru_loop,
        (rowmajor(dy), rowmajor(h0), rowmajor(y), rk.contiguous(), gamma_r.contiguous(), gates, a_hat, rstd,
         zmask.contiguous() if zmask is not None else None, zkeep, lengths),
        flags=(dot_precision(dt, dev),))
    d_rk, dh0 = recurrent_grads(da, h0, y, rk, q0, lengths)
    drh = torch.cat([dxp[..., :2 * H], dxp[..., 2 * H:] * gates[..., H:2 * H]], -1).to(acc)
    db = drh.sum((0, 1)).to(dt) if has_bias else None
    return dxp, dh0.to(dt), d_rk.to(dt), (drh * a_hat).sum((0, 1)).to(dt), db


__all__ = ["MAX_HIDDEN", "ln_product", "lnlstm_fwd_sequence", "lnlstm_layer_bwd", "lngru_fwd_sequence",
           "lngru_layer_bwd"]


def _row_entries():
    """COMPILE_CHECK entries of the row kernels: every optional input present, zoneout by mask, every block size of
    ROW_BLOCKS (each with the warps its launcher gives it)."""
    rows = dict(
        _lnlstm_fwd_rows=(_lnlstm_fwd_rows, dict(a="acc", xp="x", h_prev="x", c_prev="acc", gamma_r="x", gamma_h="x",
                                                 beta_h="x", zmask="x", zkeep="acc", lengths="*i32", h_out="x",
                                                 c_out="acc", gates="acc", a_hat="x", rstd="acc"),
                          dict(ZONEOUT=1, HAS_LENGTHS=True, STORE=True, PDL=False)),
        _lnlstm_bwd_rows=(_lnlstm_bwd_rows, dict(p="acc", q_in="acc", dy="x", gates="acc", a_hat="x", rstd="acc",
                                                 c_cur="acc", c_prev="acc", dc_in="acc", gamma_r="x", gamma_h="x",
                                                 beta_h="x", zmask="x", zkeep="acc", lengths="*i32", dv="x", da="x",
                                                 dn="x", dc_out="acc", q_out="acc"),
                          dict(HAS_NEXT=True, ZONEOUT=1, HAS_LENGTHS=True, PDL=False)),
        _lngru_fwd_rows=(_lngru_fwd_rows, dict(a="acc", xp="x", h_prev="x", gamma_r="x", rbias="x", zmask="x",
                                               zkeep="acc", lengths="*i32", h_out="x", gates="x", a_hat="x",
                                               rstd="acc"),
                         dict(HAS_BIAS=True, ZONEOUT=1, HAS_LENGTHS=True, STORE=True, PDL=False)),
        _lngru_bwd_rows=(_lngru_bwd_rows, dict(p="acc", q_in="acc", dy="x", gates="x", a_hat="x", rstd="acc",
                                               h_prev="x", gamma_r="x", zmask="x", zkeep="acc", lengths="*i32",
                                               dxp="x", da="x", q_out="acc"),
                         dict(HAS_NEXT=True, ZONEOUT=1, HAS_LENGTHS=True, PDL=False)),
    )
    out = []
    for kernel, args, consts in rows.values():
        out += compile_check_entries(kernel, ROW_CONFIGS, args=args, constexprs=consts)
    return out


# Static compile check (experiments/compile_check.py): the product as declared above, the row kernels' heaviest
# variants.
COMPILE_CHECK = step_kernel_checks(__name__) + _row_entries()
