"""Fused LSTM kernels: one launch per time step forward and backward, gates i, f, g, o as in torch.nn.LSTM.

Dimensions: B batch, T steps, I input, H hidden, P projected hidden (P = H without proj_size), K = P (forward
dot depth) or 4H (backward dot depth), G = 4 gates stacked along W's rows in the order i, f, g, o.

Split of the work (the math: docs/MATH.md):
- ``xp = x @ W_ih^T + b_ih + b_hh`` for all steps at once (one large GEMM, done by the caller / layer fn).
- forward step t (``_lstm_fwd_step``): a program owns a tile of hidden units j and a tile of the batch; it
  computes the four gate pre-activations of *its* units, ``h_{t-1} @ W_hh[g*H + j, :]^T`` by ``tl.dot`` over
  K tiles with fp32 accumulation (fp64 for fp64), adds ``xp[t]``, applies the activations and the cell
  update in registers, and writes h_t (or r_t with proj_size), c_t and the gates once.
- backward step t (``_lstm_bwd_step``): ``dh_t = dz_{t+1} @ W_hh`` for its tile of units over all 4H rows
  (no atomics, fixed reduction order, deterministic), plus dy_t, then the pointwise work of step t, writing
  dz_t and dc_{t-1}.
- weight gradients after the loop as large GEMMs over all steps.
With proj_size the whole r_t row (resp. dh_t row) is needed by h_t = r_t @ W_hr^T (resp. dr = dh @ W_hr), so
that product is a second launch per step (cuBLAS), and the backward step receives dr instead of computing dh.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _graphs
from . import lstm_persistent as _persistent
from ._common import (
    TileConfig, acc_torch_dtype, carried_rows, check_dtype, check_resets, check_steps, check_strategy, check_tensor,
    dot_precision, dot_rows_split, gate_products, lstm_cell_bwd, lstm_cell_fwd, row_stride, rowmajor, step_kernel,
    step_kernel_checks, step_resets, store_blocks, tile_offsets, wait_prior_step, weight_grads,
)
from .reference import input_projection

# Only configs that compile with 0 spills for sm_90a and sm_80 in both alignments are listed, per dtype group
# (experiments/compile_check.py checks every entry; results/compile_table.csv).
# Rules of the 16-bit lists (read from the compiled TTGIR / SASS, sm_90a):
# - no replicated MMA work: the forward's gate product is one dot of N = 4 * BLOCK_H, and every entry's warps
#   fit its (BLOCK_B, 4 * BLOCK_H) (forward) or (BLOCK_B, BLOCK_H) (backward) result: #mma warpsPerCTA x
#   instrShape never exceeds the result shape;
# - num_stages >= 3, so the K loop waits for one K slice while the next ones are in flight (num_stages = 2
#   compiles to a full cp.async drain, ``DEPBAR.LE SB0, 0x0``, at the top of every iteration); except the
#   backward's (16, 16, 512) on 8 warps, two stages: with 6-8 K slices a step, fewer and larger round trips are
#   predicted faster (experiments/predict.py, B = 16, bf16, us a step: H 768 4.71-6.59 -> 4.11-5.82, H 1024
#   5.59-7.65 -> 4.67-6.51; on 4 warps it spills unaligned, as the forward's (16, 16, 256) two-stage tile does);
#   on a GPU the autotuner measures it beside the others;
# - 64- and 128-row tiles compile to wgmma (HGMMA) on sm_90a; ``prune_by_batch`` offers them only from B > 32
#   and B > 64 on.
FWD_CONFIGS = {
    "16bit": [
        TileConfig(B=16, H=16, K=64, warps=4, stages=4), TileConfig(B=16, H=16, K=128, warps=4, stages=3),
        TileConfig(B=16, H=64, K=32, warps=8, stages=3), TileConfig(B=32, H=32, K=64, warps=8, stages=3),
        TileConfig(B=64, H=32, K=32, warps=8, stages=3), TileConfig(B=128, H=16, K=32, warps=8, stages=3),
    ],
    "fp32": [
        TileConfig(B=16, H=16, K=32, warps=4, stages=3), TileConfig(B=16, H=32, K=16, warps=4, stages=3),
        TileConfig(B=64, H=32, K=16, warps=8, stages=3),
    ],
    "fp64": [TileConfig(B=16, H=16, K=32, warps=4, stages=3), TileConfig(B=16, H=32, K=16, warps=4, stages=3)],
}
# Backward tiles under 64 rows cut each K slice into BLOCK_K / 16 chunks (``_common.dot_rows_split``) whose
# warps must not outnumber the chunks: num_warps <= BLOCK_K / 16.
BWD_CONFIGS = {
    "16bit": [
        TileConfig(B=16, H=16, K=128, warps=4, stages=3), TileConfig(B=16, H=16, K=256, warps=4, stages=3),
        TileConfig(B=16, H=16, K=128, warps=2, stages=3), TileConfig(B=16, H=32, K=128, warps=4, stages=3),
        TileConfig(B=64, H=32, K=64, warps=8, stages=3), TileConfig(B=16, H=16, K=512, warps=8, stages=2),
    ],
    # no (B=16, H=16, K=256) tile: it spills for tf32 (sm_90a, unaligned) in the PDL variant
    "fp32": [
        TileConfig(B=16, H=16, K=128, warps=4, stages=3), TileConfig(B=16, H=16, K=64, warps=4, stages=3),
        TileConfig(B=64, H=32, K=64, warps=8, stages=3), TileConfig(B=64, H=32, K=32, warps=8, stages=3),
    ],
    "fp64": [TileConfig(B=16, H=16, K=64, warps=4, stages=3), TileConfig(B=16, H=16, K=128, warps=4, stages=3)],
}


@step_kernel(
    configs=FWD_CONFIGS,
    optional=dict(HAS_LENGTHS="lengths", STORE_GATES="gates", HAS_RESETS="resets"),
    args=dict(xp="x", h_prev="x", c_prev="acc", w="x", r_out="x", c_out="acc", gates="x", lengths="*i32",
              resets="*i8"),
)
@triton.jit(do_not_specialize=["t"])
def _lstm_fwd_step(
    xp,  # (B, 4H) xp[t], row stride s_xp
    h_prev,  # (B, K) h_{t-1}
    c_prev,  # (B, H) c_{t-1}
    w,  # (4H, K) W_hh
    r_out,  # (B, H) h_t (or r_t with proj_size)
    c_out,  # (B, H) c_t, accumulator dtype
    gates,  # (B, 4H) activated i, f, g, o (only if STORE_GATES)
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (B,) int8 row t of the reset mask (only if HAS_RESETS)
    s_xp, s_hp, s_cp, s_w, s_r, s_co, s_g,
    t, B, H, K,
    HAS_LENGTHS: tl.constexpr, STORE_GATES: tl.constexpr, HAS_RESETS: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, PDL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)

    # The epilogue's inputs do not depend on the product: their loads are issued before the K loop so that
    # their HBM latency overlaps it (kept in the input dtype until used, a few registers per thread).
    p_x = xp + o_b[:, None] * s_xp + o_j[None, :]
    b_xi = tl.load(p_x, mask=m_bj, other=0.0)
    b_xf = tl.load(p_x + H, mask=m_bj, other=0.0)
    b_xg = tl.load(p_x + 2 * H, mask=m_bj, other=0.0)
    b_xo = tl.load(p_x + 3 * H, mask=m_bj, other=0.0)
    if HAS_RESETS:  # the rows whose state carries into step t: loaded before the K loop, applied after it
        m_h = carried_rows(resets, o_b, m_b)[:, None]
    wait_prior_step(PDL)  # h_{t-1}, c_{t-1} come from the previous step
    b_cp = tl.load(c_prev + o_b[:, None] * s_cp + o_j[None, :], mask=m_bj, other=0.0)

    # h_{t-1} @ W_hh[g*H + j, :]^T for the four gates of this program's units
    b_zi, b_zf, b_zg, b_zo = gate_products(h_prev, s_hp, w, s_w, o_b, m_b, o_j, m_j, H, K, CAST_F32, PRECISION,
                                           ACC, BLOCK_B, BLOCK_H, BLOCK_K)
    if HAS_RESETS:  # a restarting row: h_{t-1} = c_{t-1} = 0 (a select: its old state never reaches the result)
        b_zi = tl.where(m_h, b_zi, 0.0)
        b_zf = tl.where(m_h, b_zf, 0.0)
        b_zg = tl.where(m_h, b_zg, 0.0)
        b_zo = tl.where(m_h, b_zo, 0.0)
        b_cp = tl.where(m_h, b_cp, 0.0)
    b_zi += b_xi.to(ACC)
    b_zf += b_xf.to(ACC)
    b_zg += b_xg.to(ACC)
    b_zo += b_xo.to(ACC)
    b_cp = b_cp.to(ACC)
    b_i, b_f, b_g, b_o, b_c, b_r = lstm_cell_fwd(b_zi, b_zf, b_zg, b_zo, b_cp, lengths, t, o_b, m_b, HAS_LENGTHS)
    tl.store(c_out + o_b[:, None] * s_co + o_j[None, :], b_c, mask=m_bj)
    tl.store(r_out + o_b[:, None] * s_r + o_j[None, :], b_r.to(r_out.dtype.element_ty), mask=m_bj)
    if STORE_GATES:
        store_blocks(gates + o_b[:, None] * s_g + o_j[None, :], H, b_i, b_f, b_g, b_o, m_bj)


# resets_drop: the configs that spill 8-40 B with a reset mask (docs/PERFORMANCE.md, "Episode resets"); a launch
# with a mask autotunes over the others
@step_kernel(
    configs=BWD_CONFIGS,
    key=("B", "H", "K", "HAS_NEXT"),
    optional=dict(HAS_NEXT="dz_next", HAS_LENGTHS="lengths", HAS_RESETS="resets"),
    heaviest=dict(DR_GIVEN=False),
    resets_drop={"fp32": [TileConfig(B=64, H=32, K=64, warps=8, stages=3)]},
    args=dict(dz_next="x", w="x", dy="x", gates="x", c_cur="acc", c_prev="acc", dc_in="acc", dc_out="acc",
              dz="x", lengths="*i32", resets="*i8", resets_next="*i8"),
)
@triton.jit(do_not_specialize=["t"])
def _lstm_bwd_step(
    dz_next,  # (B, 4H) dz_{t+1} (only if HAS_NEXT)
    w,  # (4H, K) W_hh
    dy,  # (B, H) dy_t; with DR_GIVEN: dr_t = (dy_t + dz_{t+1} @ W_hh) @ W_hr, computed outside
    gates,  # (B, 4H) i, f, g, o of step t
    c_cur,  # (B, H) c_t
    c_prev,  # (B, H) c_{t-1}
    dc_in,  # (B, H) gradient reaching c_t from step t+1 (dc_n at t = T-1)
    dc_out,  # (B, H) gradient reaching c_{t-1}
    dz,  # (B, 4H) dz_t, output
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (B,) int8 rows t (only if HAS_RESETS)
    resets_next,  # and t+1 (only if HAS_RESETS and HAS_NEXT) of the reset mask
    s_dzn, s_w, s_dy, s_g, s_cc, s_cp, s_dci, s_dco, s_dz,
    t, B, H, K,
    HAS_NEXT: tl.constexpr, DR_GIVEN: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_RESETS: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, PDL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)

    # The epilogue's inputs do not depend on the product: loads issued before the K loop (see the forward).
    b_dy = tl.load(dy + o_b[:, None] * s_dy + o_j[None, :], mask=m_bj, other=0.0)
    p_g = gates + o_b[:, None] * s_g + o_j[None, :]
    b_i = tl.load(p_g, mask=m_bj, other=0.0)
    b_f = tl.load(p_g + H, mask=m_bj, other=0.0)
    b_g = tl.load(p_g + 2 * H, mask=m_bj, other=0.0)
    b_o = tl.load(p_g + 3 * H, mask=m_bj, other=0.0)
    b_c = tl.load(c_cur + o_b[:, None] * s_cc + o_j[None, :], mask=m_bj, other=0.0)
    b_cp = tl.load(c_prev + o_b[:, None] * s_cp + o_j[None, :], mask=m_bj, other=0.0)
    # resets (loaded before the K loop, applied after it): a row restarting at t had c_{t-1} = 0 and passes no
    # gradient to step t-1; one restarting at t+1 takes none from dz_{t+1} (its dc came as 0 from step t+1)
    if HAS_RESETS:
        m_h = carried_rows(resets, o_b, m_b)[:, None]
        if HAS_NEXT:
            m_n = carried_rows(resets_next, o_b, m_b)[:, None]
    wait_prior_step(PDL)  # dz_{t+1} and dc come from the previous step
    b_dcin = tl.load(dc_in + o_b[:, None] * s_dci + o_j[None, :], mask=m_bj, other=0.0)

    # dh_t[b, j] = sum_k dz_{t+1}[b, k] W_hh[k, j] over all K = 4H gate rows: the full dz row is read,
    # so no cross-program reduction is needed.
    if HAS_NEXT and not DR_GIVEN:
        b_dh = dot_rows_split(dz_next, s_dzn, w, s_w, o_b, m_b, o_j, m_j, K, CAST_F32, PRECISION, ACC,
                              BLOCK_B, BLOCK_H, BLOCK_K)
        if HAS_RESETS:
            b_dh = tl.where(m_n, b_dh, 0.0)
    else:
        b_dh = tl.zeros((BLOCK_B, BLOCK_H), ACC)
    b_dh += b_dy.to(ACC)
    b_i = b_i.to(ACC)
    b_f = b_f.to(ACC)
    b_g = b_g.to(ACC)
    b_o = b_o.to(ACC)
    b_c = b_c.to(ACC)
    b_cp = b_cp.to(ACC)
    if HAS_RESETS:
        b_cp = tl.where(m_h, b_cp, 0.0)
    b_dcin = b_dcin.to(ACC)

    b_dzi, b_dzf, b_dzg, b_dzo, b_dcp = lstm_cell_bwd(b_dh, b_i, b_f, b_g, b_o, b_c, b_cp, b_dcin, lengths, t, o_b,
                                                      m_b, HAS_LENGTHS)
    if HAS_RESETS:
        b_dcp = tl.where(m_h, b_dcp, 0.0)
    tl.store(dc_out + o_b[:, None] * s_dco + o_j[None, :], b_dcp, mask=m_bj)
    store_blocks(dz + o_b[:, None] * s_dz + o_j[None, :], H, b_dzi, b_dzf, b_dzg, b_dzo, m_bj)


def lstm_fwd_step(xp_t, h_prev, c_prev, w_hh, r_out, c_out, gates=None, lengths=None, t=0, resets_t=None):
    """One fused forward step (launcher). Shapes: xp_t (B, 4H); h_prev (B, K); c_prev (B, H);
    w_hh (4H, K); outputs r_out (B, H) in the input dtype, c_out (B, H) in the accumulator dtype,
    gates (B, 4H) or None. lengths (B,) int32 or None with step index t; resets_t (B,) int8 (row t of the reset
    mask) or None. Writes the outputs in place."""
    B, G4 = xp_t.shape
    _lstm_fwd_step.launch(
        xp=xp_t, h_prev=h_prev, c_prev=c_prev, w=w_hh, r_out=r_out, c_out=c_out, gates=gates, lengths=lengths,
        resets=resets_t,
        s_xp=xp_t.stride(0), s_hp=h_prev.stride(0), s_cp=c_prev.stride(0), s_w=w_hh.stride(0),
        s_r=r_out.stride(0), s_co=c_out.stride(0), s_g=row_stride(gates),
        t=t, B=B, H=G4 // 4, K=h_prev.shape[1], chained=t > 0,
    )


def lstm_bwd_step(dz_next, w_hh, dy_t, gates_t, c_t, c_prev, dc_in, dc_out, dz_t, lengths=None, t=0, dr_given=False,
                  resets=None):
    """One fused backward step (launcher). dz_next (B, 4H) or None at t = T-1; dy_t (B, H) (or dr_t when
    ``dr_given``); resets: the whole (T, B) int8 reset mask or None; writes dz_t (B, 4H) and dc_out (B, H) in
    place."""
    B, G4 = gates_t.shape
    _lstm_bwd_step.launch(
        dz_next=dz_next, w=w_hh, dy=dy_t, gates=gates_t, c_cur=c_t, c_prev=c_prev, dc_in=dc_in, dc_out=dc_out,
        dz=dz_t, lengths=lengths, **step_resets(resets, t, dz_next is not None),
        s_dzn=row_stride(dz_next), s_w=w_hh.stride(0), s_dy=dy_t.stride(0), s_g=gates_t.stride(0),
        s_cc=c_t.stride(0), s_cp=c_prev.stride(0), s_dci=dc_in.stride(0), s_dco=dc_out.stride(0),
        s_dz=dz_t.stride(0),
        t=t, B=B, H=G4 // 4, K=G4, DR_GIVEN=dr_given,
        # with proj_size dr_t (read before the wait) comes from the cuBLAS GEMM launched just before
        chained=dz_next is not None and not dr_given,
    )


STRATEGIES = ("auto", "per_step", "persistent")


def _persistent_plan(strategy, x, H, B, has_proj, kind):
    """The persistent config for this layer, or None for per_step (kernels/lstm_persistent.py decides and
    logs why at DEBUG level on the "fusedrnn" logger)."""
    if strategy == "per_step":
        return None
    return _persistent.plan(strategy, device=x.device, dtype=x.dtype, H=H, B=B, has_proj=has_proj, kind=kind)


def _fwd_loop(xp, w_hh, h0, c0, w_hr, lengths, resets, store):
    T, B, G4 = xp.shape
    H = G4 // 4
    P = h0.shape[1]
    acc = acc_torch_dtype(xp.dtype)
    y = xp.new_empty(T, B, P)
    c_seq = xp.new_empty(T if store else 2, B, H, dtype=acc)
    gates = xp.new_empty(T, B, G4) if store else None
    r_seq = xp.new_empty(T if store else 1, B, H) if w_hr is not None else None
    for t in range(T):
        h_prev = h0 if t == 0 else y[t - 1]
        c_prev = c0 if t == 0 else c_seq[(t - 1) if store else (t - 1) % 2]
        c_out = c_seq[t if store else t % 2]
        r_out = y[t] if w_hr is None else r_seq[t if store else 0]
        lstm_fwd_step(xp[t], h_prev, c_prev, w_hh, r_out, c_out, gates[t] if store else None, lengths, t,
                      resets[t] if resets is not None else None)
        if w_hr is not None:
            torch.mm(r_out, w_hr.t(), out=y[t])
    c_n = c_seq[(T - 1) if store else (T - 1) % 2]
    return y, c_n, c_seq if store else None, gates, r_seq if store else None


def lstm_fwd_sequence(xp, w_hh, h0, c0, w_hr=None, lengths=None, resets=None, *, store=True, strategy="auto"):
    """Run the recurrence over all T steps: one fused launch per step (CUDA-graph replayed on a GPU) or one
    persistent launch for the whole sequence (``strategy``).

    Args:
        xp: (T, B, 4H) input projection, biases included (``reference.input_projection``).
        w_hh: (4H, P); h0: (B, P); c0: (B, H); w_hr: (P, H) or None; lengths: (B,) int32 or None;
        resets: (T, B) bool or None (the state entering step t is zero on the rows set at t).
        store: keep what backward needs (gates, every c_t, every r_t with proj); False under no_grad.
        strategy: "per_step" (one fused launch per step, CUDA-graph replayed), "persistent" (one launch for
            the whole sequence, W_hh on chip: kernels/lstm_persistent.py; falls back to per_step where it
            does not apply, e.g. with proj_size, the reason logged at DEBUG level on the "fusedrnn" logger), or
            "auto" (persistent where it fits on CUDA, else per_step; per_step in the interpreter).
    Returns:
        y (T, B, P), c_n (B, H) in the accumulator dtype, and c_seq (T, B, H), gates (T, B, 4H),
        r_seq (T, B, H) or None -- the last three None when not ``store``.
    """
    check_strategy(strategy, STRATEGIES)
    check_dtype("xp", xp.dtype)
    T, B, G4 = xp.shape
    check_steps(T)
    H = G4 // 4
    P = w_hr.shape[0] if w_hr is not None else H
    dev, dt = xp.device, xp.dtype
    check_tensor("w_hh", w_hh, (G4, P), dt, dev)
    check_tensor("h0", h0, (B, P), dt, dev)
    check_tensor("c0", c0, (B, H), dt, dev)
    if w_hr is not None:
        check_tensor("w_hr", w_hr, (P, H), dt, dev)
    if lengths is not None:
        check_tensor("lengths", lengths, (B,), torch.int32, dev)
    resets = check_resets(resets, T, B, dev)
    xp, w_hh, h0, c0 = rowmajor(xp), rowmajor(w_hh), rowmajor(h0), rowmajor(c0)
    w_hr = rowmajor(w_hr) if w_hr is not None else None
    cfg = _persistent_plan(strategy, xp, H, B, w_hr is not None, "fwd")
    if cfg is not None:
        try:
            return _persistent.lstm_fwd_persistent(xp, w_hh, h0, c0, lengths, store=store, cfg=cfg, resets=resets)
        except _persistent.Fallback as e:
            _persistent.log_fallback(strategy, e)
    return _graphs.run(
        "lstm_fwd",
        lambda *a: _fwd_loop(*a, store),
        (xp, w_hh, h0, c0, w_hr, lengths, resets),
        flags=(store, dot_precision(dt, dev)),
    )


def _bwd_loop(dy, dc_n, w_hh, w_hr, c0, c_seq, gates, r_seq, lengths, resets):
    T, B, P = dy.shape
    G4 = gates.shape[2]
    H = G4 // 4
    acc = acc_torch_dtype(dy.dtype)
    dz = gates.new_empty(T, B, G4)
    dc = dy.new_empty(2, B, H, dtype=acc)
    dh_seq = dy.new_empty(T, B, P) if w_hr is not None else None
    dr = dy.new_empty(B, H) if w_hr is not None else None
    dc_in = dc_n
    for t in range(T - 1, -1, -1):
        dz_next = dz[t + 1] if t < T - 1 else None
        c_prev = c0 if t == 0 else c_seq[t - 1]
        if w_hr is None:
            dy_t = dy[t]
        else:
            if dz_next is None:
                dh_seq[t].copy_(dy[t])
            else:
                # the rows restarting at t+1 take no gradient from dz_{t+1} (the kernel masks its own product)
                dzn = dz_next if resets is None else dz_next.masked_fill(resets[t + 1].bool().unsqueeze(1), 0)
                torch.addmm(dy[t], dzn, w_hh, out=dh_seq[t])
            torch.mm(dh_seq[t], w_hr, out=dr)
            dy_t = dr
        lstm_bwd_step(dz_next, w_hh, dy_t, gates[t], c_seq[t], c_prev, dc_in, dc[t % 2], dz[t], lengths, t,
                      dr_given=w_hr is not None, resets=resets)
        dc_in = dc[t % 2]
    return dz, dc_in, dh_seq


def lstm_bwd_sequence(dy, dc_n, w_hh, c0, c_seq, gates, w_hr=None, r_seq=None, lengths=None, resets=None, *,
                      strategy="auto"):
    """Backward through time, one fused launch per step (CUDA-graph replayed on a GPU) or one persistent
    launch (``strategy`` as for ``lstm_fwd_sequence``; either backward follows either forward).

    Args:
        dy: (T, B, P) gradient of y (the gradient of h_n must already be added at its step);
        dc_n: (B, H) gradient of c_n (accumulator dtype or the input dtype); w_hh (4H, P); c0 (B, H);
        c_seq, gates, r_seq: as saved by ``lstm_fwd_sequence``; w_hr (P, H) or None; lengths, resets as forward.
    Returns:
        dz (T, B, 4H) gate pre-activation gradients, dc0 (B, H) in the accumulator dtype, and dh_seq
        (T, B, P) the gradient of every h_t (only with proj_size, for dW_hr; else None).
    """
    check_strategy(strategy, STRATEGIES)
    dy, w_hh, c0 = rowmajor(dy), rowmajor(w_hh), rowmajor(c0)
    dc_n = rowmajor(dc_n.to(acc_torch_dtype(dy.dtype)))
    T, B, _ = dy.shape
    resets = check_resets(resets, T, B, dy.device)
    cfg = _persistent_plan(strategy, dy, gates.shape[2] // 4, B, w_hr is not None, "bwd")
    if cfg is not None:
        try:
            return _persistent.lstm_bwd_persistent(dy, dc_n, w_hh, c0, c_seq, gates, lengths, cfg=cfg, resets=resets)
        except _persistent.Fallback as e:
            _persistent.log_fallback(strategy, e)
    return _graphs.run(
        "lstm_bwd",
        _bwd_loop,
        (dy, dc_n, w_hh, w_hr, c0, c_seq, gates, r_seq, lengths, resets),
        flags=(dot_precision(dy.dtype, dy.device),),
    )


def lstm_layer_fwd(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None, resets=None, *,
                   store=True, strategy="auto"):
    """One LSTM layer and direction, forward in time: the input projection for all steps (one GEMM) then
    the fused recurrence. x: (T, B, I). Returns y (T, B, P), c_n (B, H) (accumulator dtype) and the saved
    tensors (c_seq, gates, r_seq) of ``lstm_fwd_sequence``."""
    xp = input_projection(x, w_ih, b_ih, b_hh)
    return lstm_fwd_sequence(xp, w_hh, h0, c0, w_hr, lengths, resets, store=store, strategy=strategy)


def lstm_layer_bwd(dy, dc_n, x, h0, c0, y, w_ih, w_hh, c_seq, gates, w_hr=None, r_seq=None, lengths=None,
                   resets=None, *, has_bias=True, strategy="auto"):
    """Gradients of one LSTM layer from the saved forward state: the fused backward recurrence, then the
    weight and input gradients as large GEMMs over all steps (docs/MATH.md).

    Returns (dx (T, B, I), dh0 (B, P), dW_ih (4H, I), dW_hh (4H, P), db (4H,) or None, dc0 (B, H) in the
    accumulator dtype, dW_hr (P, H) or None).
    """
    dz, dc0, dh_seq = lstm_bwd_sequence(dy, dc_n, w_hh, c0, c_seq, gates, w_hr, r_seq, lengths, resets,
                                        strategy=strategy)
    return weight_grads(dz, x, h0, y, w_ih, w_hh, has_bias, resets=resets) + (dc0, _proj_grad(dh_seq, r_seq))


def _proj_grad(dh_seq, r_seq):
    if dh_seq is None:
        return None
    P, H = dh_seq.shape[2], r_seq.shape[2]
    return dh_seq.reshape(-1, P).t() @ r_seq.reshape(-1, H)


# Static compile check (experiments/compile_check.py): the heaviest variant of each step kernel, as declared above.
# The t = 0 launches pass c0 in the input dtype as c_prev, a lighter load than the checked accumulator dtype.
COMPILE_CHECK = step_kernel_checks(__name__)
