"""Fused GRU kernels: one launch per time step forward and backward, gates r, z, n as in torch.nn.GRU.

Dimensions: B batch, T steps, I input, H hidden, K = H (forward dot depth) or 3H (backward dot depth), G = 3
gates stacked along W's rows in the order r, z, n.

Split of the work (the math: docs/MATH.md, "GRU"):
- ``xp = x @ W_ih^T + b_ih + [b_hr, b_hz, 0]`` for all steps at once (``reference.gru_input_projection``);
  b_hn stays out, it is inside the reset gate's product.
- forward step t (``_gru_fwd_step``): a program owns a tile of hidden units j and a tile of the batch; it
  computes ``h_{t-1} @ W_hh[g*H + j, :]^T`` for the three gates of *its* units (one ``tl.dot`` four gate blocks
  wide, the fourth masked: ``_common.gate_products``), adds xp[t] and b_hn, runs ``_common.gru_cell_fwd`` in
  registers and writes h_t and the saved gates [r, z, n, hn] (B, 4H).
- backward step t (``_gru_bwd_step``): ``dh_t = dy_t + q_t + dg_{t+1}[:, :3H] @ W_hh`` for its tile of units
  over all 3H rows (no atomics, fixed reduction order), then ``_common.gru_cell_bwd``, writing
  dg_t = [da_r, da_z, dhn, dn] (B, 4H) and the carry q_{t-1} = dh_t * z_t (accumulator dtype, ping-pong).
- weight and input gradients after the loop as large GEMMs over all steps (``_common.weight_grads``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _graphs
from . import gru_persistent as _persistent
from ._common import (
    TileConfig, acc_torch_dtype, carried_rows, check_dtype, check_resets, check_steps, check_strategy, check_tensor,
    dot_precision, dot_rows_split, gate_products, gru_cell_bwd, gru_cell_fwd, row_stride, rowmajor, step_kernel,
    step_kernel_checks, step_resets, store_blocks, tile_offsets, wait_prior_step, weight_grads,
)
from .reference import gru_input_projection

# Only configs that compile with 0 spills for sm_90a and sm_80 in both alignments are listed, per dtype group
# (experiments/compile_check.py checks every entry; results/compile_table.csv). The rules of kernels/lstm.py's lists
# hold here: the forward's product is one dot of N = 4 * BLOCK_H (as the LSTM's), whose warps fit that result
# (no replicated MMA work); num_stages >= 3 but for the wide two-stage tiles (forward 16x16x256, here only: the LSTM's
# spills unaligned; backward 16x16x512 on 8 warps); 64/128-row tiles are wgmma on sm_90a; backward tiles under 64 rows
# split K into chunks of 16 over the warps (``_common.dot_rows_split``), so there num_warps <= BLOCK_K / 16.
FWD_CONFIGS = {
    "16bit": [
        TileConfig(B=16, H=16, K=64, warps=4, stages=4), TileConfig(B=16, H=16, K=128, warps=4, stages=3),
        TileConfig(B=16, H=64, K=32, warps=8, stages=3), TileConfig(B=32, H=32, K=64, warps=8, stages=3),
        TileConfig(B=64, H=32, K=32, warps=8, stages=3), TileConfig(B=128, H=16, K=32, warps=8, stages=3),
        TileConfig(B=16, H=16, K=256, warps=4, stages=2),
    ],
    "fp32": [
        TileConfig(B=16, H=16, K=32, warps=4, stages=3), TileConfig(B=16, H=32, K=16, warps=4, stages=3),
        TileConfig(B=64, H=32, K=16, warps=8, stages=3),
    ],
    "fp64": [TileConfig(B=16, H=16, K=32, warps=4, stages=3), TileConfig(B=16, H=32, K=16, warps=4, stages=3)],
}
BWD_CONFIGS = {
    "16bit": [
        TileConfig(B=16, H=16, K=128, warps=4, stages=3), TileConfig(B=16, H=16, K=256, warps=4, stages=3),
        TileConfig(B=16, H=16, K=128, warps=2, stages=3), TileConfig(B=16, H=32, K=128, warps=4, stages=3),
        TileConfig(B=64, H=32, K=64, warps=8, stages=3), TileConfig(B=16, H=16, K=512, warps=8, stages=2),
    ],
    "fp32": [
        TileConfig(B=16, H=16, K=128, warps=4, stages=3), TileConfig(B=16, H=16, K=64, warps=4, stages=3),
        TileConfig(B=64, H=32, K=64, warps=8, stages=3), TileConfig(B=64, H=32, K=32, warps=8, stages=3),
    ],
    # not the LSTM's (16, 16, 128): it spills 8 B for sm_80 (unaligned); (16, 32, 64) spills 40 B on sm_90a
    "fp64": [TileConfig(B=16, H=16, K=64, warps=4, stages=3), TileConfig(B=16, H=16, K=32, warps=2, stages=3)],
}


@step_kernel(
    configs=FWD_CONFIGS,
    optional=dict(HAS_BIAS="b_hn", HAS_LENGTHS="lengths", STORE_GATES="gates", HAS_RESETS="resets"),
    args=dict(xp="x", h_prev="x", w="x", b_hn="x", h_out="x", gates="x", lengths="*i32", resets="*i8"),
)
@triton.jit(do_not_specialize=["t"])
def _gru_fwd_step(
    xp,  # (B, 3H) xp[t], row stride s_xp
    h_prev,  # (B, H) h_{t-1}
    w,  # (3H, H) W_hh
    b_hn,  # (H,) the n block of b_hh (only if HAS_BIAS)
    h_out,  # (B, H) h_t
    gates,  # (B, 4H) r, z, n, hn (only if STORE_GATES)
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (B,) int8 row t of the reset mask (only if HAS_RESETS)
    s_xp, s_hp, s_w, s_ho, s_g,
    t, B, H, K,
    HAS_BIAS: tl.constexpr, HAS_LENGTHS: tl.constexpr, STORE_GATES: tl.constexpr, HAS_RESETS: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, PDL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)

    # The epilogue's inputs that do not depend on the previous step are loaded before the K loop, so that their
    # latency overlaps it (kept in the input dtype until used).
    p_x = xp + o_b[:, None] * s_xp + o_j[None, :]
    b_xr = tl.load(p_x, mask=m_bj, other=0.0)
    b_xz = tl.load(p_x + H, mask=m_bj, other=0.0)
    b_xn = tl.load(p_x + 2 * H, mask=m_bj, other=0.0)
    if HAS_BIAS:
        b_b = tl.load(b_hn + o_j, mask=m_j, other=0.0)
    if HAS_RESETS:  # the rows whose h_{t-1} carries into step t: loaded before the K loop, applied after it
        m_h = carried_rows(resets, o_b, m_b)[:, None]
    wait_prior_step(PDL)  # h_{t-1} comes from the previous step
    b_hp = tl.load(h_prev + o_b[:, None] * s_hp + o_j[None, :], mask=m_bj, other=0.0)

    # h_{t-1} @ W_hh[g*H + j, :]^T for the three gates of this program's units (the fourth block is masked)
    b_ar, b_az, b_hn, _ = gate_products(h_prev, s_hp, w, s_w, o_b, m_b, o_j, m_j, H, K, CAST_F32, PRECISION, ACC,
                                        BLOCK_B, BLOCK_H, BLOCK_K, 3)
    if HAS_RESETS:  # a restarting row: h_{t-1} = 0 (a select: its old state never reaches the result)
        b_ar = tl.where(m_h, b_ar, 0.0)
        b_az = tl.where(m_h, b_az, 0.0)
        b_hn = tl.where(m_h, b_hn, 0.0)
        b_hp = tl.where(m_h, b_hp, 0.0)
    b_ar += b_xr.to(ACC)
    b_az += b_xz.to(ACC)
    if HAS_BIAS:
        b_hn += b_b.to(ACC)[None, :]
    b_r, b_z, b_n, b_h = gru_cell_fwd(b_ar, b_az, b_xn.to(ACC), b_hn, b_hp.to(ACC), lengths, t, o_b, m_b,
                                      HAS_LENGTHS)
    tl.store(h_out + o_b[:, None] * s_ho + o_j[None, :], b_h.to(h_out.dtype.element_ty), mask=m_bj)
    if STORE_GATES:
        store_blocks(gates + o_b[:, None] * s_g + o_j[None, :], H, b_r, b_z, b_n, b_hn, m_bj)


@step_kernel(
    configs=BWD_CONFIGS,
    key=("B", "H", "K", "HAS_NEXT"),
    optional=dict(HAS_NEXT="dg_next", HAS_LENGTHS="lengths", HAS_RESETS="resets"),
    args=dict(dg_next="x", w="x", dy="x", gates="x", h_prev="x", q_in="acc", q_out="acc", dg="x", lengths="*i32",
              resets="*i8", resets_next="*i8"),
)
@triton.jit(do_not_specialize=["t"])
def _gru_bwd_step(
    dg_next,  # (B, 4H) dg_{t+1}, row stride s_dgn; its first 3H columns are read (only if HAS_NEXT)
    w,  # (3H, H) W_hh
    dy,  # (B, H) dy_t
    gates,  # (B, 4H) r, z, n, hn of step t
    h_prev,  # (B, H) h_{t-1}
    q_in,  # (B, H) the carry dh_{t+1} * z_{t+1} from step t+1, accumulator dtype (only if HAS_NEXT)
    q_out,  # (B, H) the carry dh_t * z_t for step t-1, accumulator dtype
    dg,  # (B, 4H) dg_t = [da_r, da_z, dhn, dn], output
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (B,) int8 rows t (only if HAS_RESETS)
    resets_next,  # and t+1 (only if HAS_RESETS and HAS_NEXT) of the reset mask
    s_dgn, s_w, s_dy, s_g, s_hp, s_qi, s_qo, s_dg,
    t, B, H, K,
    HAS_NEXT: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_RESETS: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr, PDL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    o_b, o_j, m_b, m_j, m_bj = tile_offsets(B, H, BLOCK_B, BLOCK_H)

    # The epilogue's inputs that the previous step does not write: loads issued before the K loop.
    b_dy = tl.load(dy + o_b[:, None] * s_dy + o_j[None, :], mask=m_bj, other=0.0)
    p_g = gates + o_b[:, None] * s_g + o_j[None, :]
    b_r = tl.load(p_g, mask=m_bj, other=0.0)
    b_z = tl.load(p_g + H, mask=m_bj, other=0.0)
    b_n = tl.load(p_g + 2 * H, mask=m_bj, other=0.0)
    b_hn = tl.load(p_g + 3 * H, mask=m_bj, other=0.0)
    b_hp = tl.load(h_prev + o_b[:, None] * s_hp + o_j[None, :], mask=m_bj, other=0.0)
    # resets (loaded before the K loop, applied after it): a row restarting at t had h_{t-1} = 0 and passes no
    # gradient (no carry) to step t-1; one restarting at t+1 takes none from dg_{t+1} (its carry came as 0)
    if HAS_RESETS:
        m_h = carried_rows(resets, o_b, m_b)[:, None]
        if HAS_NEXT:
            m_n = carried_rows(resets_next, o_b, m_b)[:, None]
    wait_prior_step(PDL)  # dg_{t+1} and q come from the previous step

    # dh_t[b, j] = dy_t + q + sum_k dg_{t+1}[b, k] W_hh[k, j] over the K = 3H rows of the recurrent product:
    # the full row is read, so no cross-program reduction is needed.
    if HAS_NEXT:
        b_q = tl.load(q_in + o_b[:, None] * s_qi + o_j[None, :], mask=m_bj, other=0.0)
        b_dh = dot_rows_split(dg_next, s_dgn, w, s_w, o_b, m_b, o_j, m_j, K, CAST_F32, PRECISION, ACC,
                              BLOCK_B, BLOCK_H, BLOCK_K)
        if HAS_RESETS:
            b_dh = tl.where(m_n, b_dh, 0.0)
        b_dh += b_q
    else:
        b_dh = tl.zeros((BLOCK_B, BLOCK_H), ACC)
    b_dh += b_dy.to(ACC)
    b_hp = b_hp.to(ACC)
    if HAS_RESETS:
        b_hp = tl.where(m_h, b_hp, 0.0)

    b_dar, b_daz, b_dhn, b_dn, b_c = gru_cell_bwd(b_dh, b_r.to(ACC), b_z.to(ACC), b_n.to(ACC), b_hn.to(ACC),
                                                  b_hp, lengths, t, o_b, m_b, HAS_LENGTHS)
    if HAS_RESETS:
        b_c = tl.where(m_h, b_c, 0.0)
    tl.store(q_out + o_b[:, None] * s_qo + o_j[None, :], b_c, mask=m_bj)
    store_blocks(dg + o_b[:, None] * s_dg + o_j[None, :], H, b_dar, b_daz, b_dhn, b_dn, m_bj)


def gru_fwd_step(xp_t, h_prev, w_hh, h_out, b_hn=None, gates=None, lengths=None, t=0, resets_t=None):
    """One fused forward step (launcher). Shapes: xp_t (B, 3H); h_prev (B, H); w_hh (3H, H); b_hn (H,) or None;
    outputs h_out (B, H) and gates (B, 4H) or None (r, z, n, hn). lengths (B,) int32 or None with step index t;
    resets_t (B,) int8 (row t of the reset mask) or None. Writes the outputs in place."""
    B, H = h_prev.shape
    _gru_fwd_step.launch(
        xp=xp_t, h_prev=h_prev, w=w_hh, b_hn=b_hn, h_out=h_out, gates=gates, lengths=lengths, resets=resets_t,
        s_xp=xp_t.stride(0), s_hp=h_prev.stride(0), s_w=w_hh.stride(0), s_ho=h_out.stride(0), s_g=row_stride(gates),
        t=t, B=B, H=H, K=H, chained=t > 0,
    )


def gru_bwd_step(dg_next, w_hh, dy_t, gates_t, h_prev, q_in, q_out, dg_t, lengths=None, t=0, resets=None):
    """One fused backward step (launcher). dg_next (B, 4H) and q_in (B, H, accumulator dtype) are None at
    t = T-1 (no later step); dy_t (B, H); gates_t (B, 4H) as the forward saved them; h_prev (B, H) h_{t-1}.
    resets: the whole (T, B) int8 reset mask or None. Writes dg_t (B, 4H) and q_out (B, H, accumulator dtype) in
    place."""
    if (dg_next is None) != (q_in is None):
        raise ValueError("gru_bwd_step: dg_next and q_in are both given (t < T-1) or both None (t = T-1)")
    B, H = h_prev.shape
    _gru_bwd_step.launch(
        dg_next=dg_next, w=w_hh, dy=dy_t, gates=gates_t, h_prev=h_prev, q_in=q_in, q_out=q_out, dg=dg_t,
        lengths=lengths, **step_resets(resets, t, dg_next is not None),
        s_dgn=row_stride(dg_next), s_w=w_hh.stride(0), s_dy=dy_t.stride(0), s_g=gates_t.stride(0),
        s_hp=h_prev.stride(0), s_qi=row_stride(q_in), s_qo=q_out.stride(0), s_dg=dg_t.stride(0),
        t=t, B=B, H=H, K=3 * H, chained=dg_next is not None,
    )


STRATEGIES = ("auto", "per_step", "persistent")


def _persistent_plan(strategy, x, H, B, kind):
    """The persistent config for this layer, or None for per_step (kernels/gru_persistent.py decides and logs
    why at DEBUG level on the "fusedrnn" logger)."""
    if strategy == "per_step":
        return None
    return _persistent.plan(strategy, device=x.device, dtype=x.dtype, H=H, B=B, kind=kind)


def _hidden(G3: int, what: str) -> int:
    if G3 % 3:
        raise RuntimeError(f"{what}: the last dimension ({G3}) must be 3 * hidden_size (gates r, z, n)")
    return G3 // 3


def _fwd_loop(xp, w_hh, b_hn, h0, lengths, resets, store):
    T, B, G3 = xp.shape
    H = G3 // 3
    y = xp.new_empty(T, B, H)
    gates = xp.new_empty(T, B, 4 * H) if store else None
    for t in range(T):
        gru_fwd_step(xp[t], h0 if t == 0 else y[t - 1], w_hh, y[t], b_hn, gates[t] if store else None, lengths, t,
                     resets[t] if resets is not None else None)
    return y, gates


def gru_fwd_sequence(xp, w_hh, b_hn, h0, lengths=None, resets=None, *, store=True, strategy="auto"):
    """Run the GRU recurrence over all T steps: one fused launch per step (CUDA-graph replayed on a GPU) or one
    persistent launch for the whole sequence (``strategy``).

    Args:
        xp: (T, B, 3H) input projection, b_ih and b_hr, b_hz included (``reference.gru_input_projection``).
        w_hh: (3H, H); b_hn: (H,) the n block of b_hh, or None; h0: (B, H); lengths: (B,) int32 or None;
        resets: (T, B) bool or None (the state entering step t is zero on the rows set at t).
        store: keep the gates backward needs; False under no_grad.
        strategy: "per_step", "persistent" (kernels/gru_persistent.py; falls back to per_step where it does not
            apply, the reason logged at DEBUG level on the "fusedrnn" logger) or "auto".
    Returns:
        y (T, B, H) (zeros where a sequence has ended) and gates (T, B, 4H) [r, z, n, hn], None when not ``store``.
    """
    check_strategy(strategy, STRATEGIES)
    check_dtype("xp", xp.dtype)
    T, B, G3 = xp.shape
    check_steps(T)
    H = _hidden(G3, "xp")
    dev, dt = xp.device, xp.dtype
    check_tensor("w_hh", w_hh, (G3, H), dt, dev)
    check_tensor("h0", h0, (B, H), dt, dev)
    if b_hn is not None:
        check_tensor("b_hn", b_hn, (H,), dt, dev)
        b_hn = b_hn.contiguous()
    if lengths is not None:
        check_tensor("lengths", lengths, (B,), torch.int32, dev)
    resets = check_resets(resets, T, B, dev)
    xp, w_hh, h0 = rowmajor(xp), rowmajor(w_hh), rowmajor(h0)
    cfg = _persistent_plan(strategy, xp, H, B, "fwd")
    if cfg is not None:
        try:
            return _persistent.gru_fwd_persistent(xp, w_hh, b_hn, h0, lengths, store=store, cfg=cfg, resets=resets)
        except _persistent.Fallback as e:
            _persistent.log_fallback(strategy, e)
    return _graphs.run(
        "gru_fwd", lambda *a: _fwd_loop(*a, store), (xp, w_hh, b_hn, h0, lengths, resets),
        flags=(store, dot_precision(dt, dev)),
    )


def _bwd_loop(dy, w_hh, h0, y, gates, lengths, resets):
    T, B, H = dy.shape
    dg = gates.new_empty(T, B, 4 * H)
    q = dy.new_empty(2, B, H, dtype=acc_torch_dtype(dy.dtype))
    for t in range(T - 1, -1, -1):
        nxt = t < T - 1
        gru_bwd_step(dg[t + 1] if nxt else None, w_hh, dy[t], gates[t], h0 if t == 0 else y[t - 1],
                     q[(t + 1) % 2] if nxt else None, q[t % 2], dg[t], lengths, t, resets)
    return dg, q[0]


def gru_bwd_sequence(dy, w_hh, h0, y, gates, lengths=None, resets=None, *, strategy="auto"):
    """Backward through time, one fused launch per step (CUDA-graph replayed on a GPU) or one persistent launch
    (``strategy`` as for ``gru_fwd_sequence``; either backward follows either forward).

    Args:
        dy: (T, B, H) gradient of y (the gradient of h_n must already be added at each row's last step);
        w_hh (3H, H); h0 (B, H); y, gates: as ``gru_fwd_sequence`` returned them; lengths, resets as forward.
    Returns:
        dg (T, B, 4H) [da_r, da_z, dhn, dn] per step and q0 (B, H), the accumulator-dtype carry dh_0 * z_0:
        dh0 = q0 + dg[0, :, :3H] @ W_hh.
    """
    check_strategy(strategy, STRATEGIES)
    check_dtype("dy", dy.dtype)
    T, B, H = dy.shape
    check_steps(T)
    dev, dt = dy.device, dy.dtype
    check_tensor("w_hh", w_hh, (3 * H, H), dt, dev)
    check_tensor("h0", h0, (B, H), dt, dev)
    check_tensor("y", y, (T, B, H), dt, dev)
    check_tensor("gates", gates, (T, B, 4 * H), dt, dev)
    if lengths is not None:
        check_tensor("lengths", lengths, (B,), torch.int32, dev)
    resets = check_resets(resets, T, B, dev)
    dy, w_hh, h0, y, gates = rowmajor(dy), rowmajor(w_hh), rowmajor(h0), rowmajor(y), rowmajor(gates)
    cfg = _persistent_plan(strategy, dy, H, B, "bwd")
    if cfg is not None:
        try:
            return _persistent.gru_bwd_persistent(dy, w_hh, h0, y, gates, lengths, cfg=cfg, resets=resets)
        except _persistent.Fallback as e:
            _persistent.log_fallback(strategy, e)
    return _graphs.run(
        "gru_bwd", _bwd_loop, (dy, w_hh, h0, y, gates, lengths, resets), flags=(dot_precision(dt, dev),),
    )


def _b_hn(b_hh, H):
    return None if b_hh is None else b_hh[2 * H:]


def gru_layer_fwd(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, resets=None, *, store=True,
                  strategy="auto"):
    """One GRU layer and direction, forward in time: the input projection for all steps (one GEMM) then the
    fused recurrence. x: (T, B, I); h0 (B, H); w_ih (3H, I); w_hh (3H, H); biases (3H,) or None.
    Returns y (T, B, H) and gates (T, B, 4H) or None (``gru_fwd_sequence``)."""
    xp = gru_input_projection(x, w_ih, b_ih, b_hh)
    return gru_fwd_sequence(xp, w_hh, _b_hn(b_hh, h0.shape[-1]), h0, lengths, resets, store=store,
                            strategy=strategy)


def gru_layer_bwd(dy, x, h0, y, w_ih, w_hh, gates, lengths=None, resets=None, *, has_bias=True, strategy="auto"):
    """Gradients of one GRU layer from the saved forward state: the fused backward recurrence, then the weight
    and input gradients as large GEMMs over all steps (docs/MATH.md): dW_hh, db_hh from dg[..., :3H] (the
    gradient of h_{t-1} W_hh^T), dW_ih, db_ih, dx from [da_r, da_z, dn] (that of xp).

    Returns (dx (T, B, I), dh0 (B, H), dW_ih (3H, I), dW_hh (3H, H), db_ih (3H,) or None, db_hh (3H,) or None).
    """
    dg, q0 = gru_bwd_sequence(dy, w_hh, h0, y, gates, lengths, resets, strategy=strategy)
    H = h0.shape[-1]
    dhp = dg[..., :3 * H]
    dxp = torch.cat([dg[..., :2 * H], dg[..., 3 * H:]], -1)
    dx, dh0, dw_ih, dw_hh, db_hh = weight_grads(dhp, x, h0, y, w_ih, w_hh, has_bias, lengths, dz_ih=dxp,
                                                  resets=resets)
    dh0 = (q0 + dh0.to(q0.dtype)).to(dy.dtype)
    db_ih = dxp.reshape(-1, 3 * H).sum(0, dtype=q0.dtype).to(dy.dtype) if has_bias else None
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh


__all__ = [
    "STRATEGIES", "gru_fwd_step", "gru_bwd_step", "gru_fwd_sequence", "gru_bwd_sequence", "gru_layer_fwd",
    "gru_layer_bwd",
]


# Static compile check (experiments/compile_check.py): the heaviest variant of each step kernel, as declared above.
COMPILE_CHECK = step_kernel_checks(__name__)
