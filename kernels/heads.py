"""Per-head whole-sequence kernels of the multi-head (block-diagonal) cells: LSTM, GRU, RNN (tanh, relu).

Dimensions: B batch, T steps, H hidden, NH heads, D = H / NH units per head, BD = max(16, next power of two >= D)
(constexpr BLOCK_D), BB the batch tile (BLOCK_B), G the cell's gates (LSTM 4, GRU 3, RNN 1) and NG the width of
the product in gate blocks (4 for the LSTM and the GRU, whose fourth block is masked; 1 for the RNN).

Why no grid barrier: head n's recurrent matrix W_n (the (G*D, D) block ``w_hh[n]``, docs/MATH.md "Multi-head
cells") sees only h_{t-1}[:, head n], so the program that owns head n of a batch tile needs nothing from any other
program for the whole sequence. Grid (NH, cdiv(B, BB)); each program

- loads W_n once, before the time loop (forward: W_n^T as one (BD, NG*BD) operand; backward: W_n as (NG*BD, BD));
  Triton keeps the loop-invariant dot operand in shared memory (one hoisted ``local_alloc``, ldmatrix per step);
- keeps h_{t-1} and the cell's states (LSTM: c) in registers across steps: nothing is read back from memory;
- forward step t: one ``tl.dot`` (BB, BD) x (BD, NG*BD) (every gate in one wide product, so the warps spread over
  the gates: see ``_common.gate_products``), xp[t] of its head, the cell's pointwise forward, y[t] and (with
  STORE) what the backward reads written;
- backward step t (t = T-1 .. 0): dh = dy[t] + dh_rec, the cell's pointwise backward, dz_t written, and
  dh_rec = dz_t (BB, NG*BD) @ W_n (NG*BD, BD) (+ the GRU's direct carry) for step t-1, in registers.
- episode resets (HAS_RESETS; docs/MATH.md "Episode resets"): one int8 flag per row and step. Forward: loaded a
  step ahead (beside xp), a restarting row's h_{t-1} and states are set to zero before the product. Backward: the
  flags predicate the prefetched loads of the states of step t-1 (zero on a restarting row), and read again at
  step t (an L1 hit) they drop the gradient to step t-1 (dh_rec, the state gradients) after the product; keeping
  the prefetched flags live instead spills 8 B in the sLSTM's 16-bit backward at BLOCK_D 128.

No atomics: the weight gradients are large GEMMs after the loop, over all steps at once, as for the dense cells
(``weight_grads``): dW_ih, db, dx from dz as for nn's layout, and dW_hh per head as one batched product
``dW_n = sum_t dz_t[:, head n]^T h_{t-1}[:, head n]`` (``heads_weight_grads``), deterministic. A dW accumulator
in registers (G*D*D fp32 per program) is what makes FlashRNN's backward spill at D = 64.

One skeleton for every cell: the time loops, loads, stores and products are shared; a cell is its pointwise
forward and backward (``_cell_fwd`` / ``_cell_bwd``, which dispatch on the constexpr CELL to the shared jit
helpers of kernels/_common.py) and its counts (``CELLS``). Strategies: the heads have no per-step variant; every
``strategy`` runs these kernels (a program owns its head for all steps, there is no barrier to avoid).

Scope: compile-checked (0 spills, ``mma_repeat`` 1, sm_90a and sm_80) for BD in 16..128 in 16-bit and 16..64 in fp32
(the sLSTM 16..32; W_n in shared memory: 4*BD^2 elements); not fp64 on a GPU (``MAX_BLOCK_D``). Elsewhere the layer runs
the dense fused kernels on the dense equivalent (models/heads_ops.py; the sLSTM: its reference), correct but without the
saving. The interpreter runs every dtype and head size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import (
    DTYPE_GROUPS,
    acc_torch_dtype,
    aligned16,
    carried_rows,
    check_resets,
    check_steps,
    dot_meta,
    dtype_group,
    finished_rows_bwd,
    gru_cell_bwd,
    gru_cell_fwd,
    interpreting,
    lstm_cell_bwd,
    lstm_cell_fwd,
    previous_outputs,
    sigmoid,
    tanh,
    weight_grads,
)
from .reference import gru_input_projection, input_projection

# constexpr CELL values
LSTM, GRU, RNN_TANH, RNN_RELU, SLSTM = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Cell:
    """What the skeleton needs to know of a cell: its id (constexpr CELL), its gates G (blocks of xp and of
    W_n's rows), NG (product width in gate blocks), NS (state tensors besides h, kept in the accumulator dtype),
    NSAVE (blocks of ``gates`` saved per step in the input dtype), NAUX (blocks saved per step in the
    accumulator dtype: the first states, then the cell's extra block), NPREV (states the backward reads at t-1
    and propagates a gradient through), NDZ (blocks of dz per step)."""
    id: int
    G: int
    NG: int
    NS: int
    NSAVE: int
    NAUX: int
    NPREV: int
    NDZ: int


CELLS = {
    "lstm": Cell(LSTM, G=4, NG=4, NS=1, NSAVE=4, NAUX=1, NPREV=1, NDZ=4),  # state c
    "gru": Cell(GRU, G=3, NG=4, NS=0, NSAVE=4, NAUX=0, NPREV=0, NDZ=4),
    "rnn_tanh": Cell(RNN_TANH, G=1, NG=1, NS=0, NSAVE=0, NAUX=0, NPREV=0, NDZ=1),
    "rnn_relu": Cell(RNN_RELU, G=1, NG=1, NS=0, NSAVE=0, NAUX=0, NPREV=0, NDZ=1),
    "slstm": Cell(SLSTM, G=4, NG=4, NS=3, NSAVE=4, NAUX=3, NPREV=2, NDZ=4),  # states c, n, m (m: no gradient)
}


# ----------------------------------------------------------------------------------------------
# The sLSTM cell's pointwise work (docs/MATH.md "sLSTM"): exponential input and forget gates with the stabiliser
# m, normaliser n. The stabiliser is a constant in the backward.
# ----------------------------------------------------------------------------------------------
@triton.jit
def _log1p_exp_neg(a):
    """log(1 + e^{-a}) for a >= 0, accurate where e^{-a} is tiny (log1p through the compensated form)."""
    e = tl.exp(-a)
    u = 1.0 + e
    return tl.log(u) - ((u - 1.0) - e) / u


@triton.jit
def slstm_cell_fwd(ri, rf, rz, ro, c_prev, n_prev, m_prev, lengths, t, o_b, m_b, HAS_LENGTHS: tl.constexpr):
    """From the pre-activations i~, f~, z~, o~ and the states c, n, m of step t-1: (i_t, f_t, tanh(z~),
    sigmoid(o~), c_t, n_t, m_t, h_t, sf) with sf = sigmoid(-f~) where f_t = exp(lfm - m_t) (its derivative
    factor), 0 where the min(1, .) binds (only where n_{t-1} = 0). A finished row keeps its states, outputs 0."""
    lfm = m_prev + tl.minimum(rf, 0.0) - _log1p_exp_neg(tl.abs(rf))  # m_{t-1} + logsigmoid(f~)
    m = tl.where(n_prev == 0.0, ri, tl.maximum(ri, lfm))
    b_i = tl.minimum(tl.exp(ri - m), 1.0)
    ef = lfm - m
    b_f = tl.minimum(tl.exp(ef), 1.0)
    b_z = tanh(rz)
    b_o = sigmoid(ro)
    c = b_f * c_prev + b_i * b_z
    n = tl.maximum(b_f * n_prev + b_i, 1.0)
    h = b_o * c / n
    sf = tl.where(ef <= 0.0, sigmoid(-rf), 0.0)
    if HAS_LENGTHS:
        m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
        c = tl.where(m_act, c, c_prev)
        n = tl.where(m_act, n, n_prev)
        m = tl.where(m_act, m, m_prev)
        h = tl.where(m_act, h, 0.0)
    return b_i, b_f, b_z, b_o, c, n, m, h, sf


@triton.jit
def slstm_cell_bwd(dh, b_i, b_f, b_z, b_o, c, n, sf, c_prev, n_prev, dc_in, dn_in, lengths, t, o_b, m_b,
                   HAS_LENGTHS: tl.constexpr):
    """Backward of one step given dh_t, the saved i_t, f_t, tanh(z~), sigmoid(o~), c_t, n_t, sf, the states of
    t-1 and the gradients dc_in, dn_in reaching c_t, n_t from step t+1: (di~, df~, dz~, do~, dc_{t-1}, dn_{t-1}).
    m_t is a constant; n_t = max(u, 1) passes the gradient where u = f n_{t-1} + i >= 1 (always, for n_0 = 0 or
    n_0 >= 1). A finished row gets no gate gradient and passes dc_in, dn_in through."""
    r = 1.0 / n
    dc = dc_in + dh * b_o * r
    dn = dn_in - dh * b_o * c * r * r
    do = dh * c * r * b_o * (1.0 - b_o)
    du = tl.where(b_f * n_prev + b_i >= 1.0, dn, 0.0)
    di = (dc * b_z + du) * b_i
    df = (dc * c_prev + du * n_prev) * b_f * sf
    dz = dc * b_i * (1.0 - b_z * b_z)
    dc_prev = dc * b_f
    dn_prev = du * b_f
    if HAS_LENGTHS:
        di, df, dz, do, dc_prev, m_act = finished_rows_bwd(di, df, dz, do, dc_prev, dc_in, lengths, t, o_b, m_b)
        dn_prev = tl.where(m_act, dn_prev, dn_in)
    return di, df, dz, do, dc_prev, dn_prev


# ----------------------------------------------------------------------------------------------
# The cells' pointwise work, dispatched on CELL (the math: kernels/_common.py and above; docs/MATH.md)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _cell_fwd(z0, z1, z2, z3, x0, x1, x2, x3, b_hn, h, s1, s2, s3, lengths, t, o_b, m_b,
              CELL: tl.constexpr, HAS_LENGTHS: tl.constexpr):
    """One step's pointwise forward from the products z_g (h_{t-1} @ W_g^T), xp[t]'s blocks x_g, h_{t-1} and the
    states s1, s2, s3 of step t-1. Returns (h_t, the states of step t, the four blocks saved in the input dtype,
    one more saved in the accumulator dtype)."""
    e = s1
    if CELL == 0:  # LSTM: gates i, f, g, o; s1 = c
        g0, g1, g2, g3, s1, h = lstm_cell_fwd(z0 + x0, z1 + x1, z2 + x2, z3 + x3, s1, lengths, t, o_b, m_b,
                                             HAS_LENGTHS)
    elif CELL == 1:  # GRU: r, z from z0, z1; hn = z2 + b_hn; saved r, z, n, hn
        g3 = z2 + b_hn
        g0, g1, g2, h = gru_cell_fwd(z0 + x0, z1 + x1, x2, g3, h, lengths, t, o_b, m_b, HAS_LENGTHS)
    elif CELL == 4:  # sLSTM: states c, n, m; saved i, f, tanh(z~), sigmoid(o~) and sf
        g0, g1, g2, g3, s1, s2, s3, h, e = slstm_cell_fwd(z0 + x0, z1 + x1, z2 + x2, z3 + x3, s1, s2, s3,
                                                          lengths, t, o_b, m_b, HAS_LENGTHS)
    else:  # RNN: the output is all the backward needs
        a = z0 + x0
        if CELL == 3:
            h = tl.where(a < 0.0, 0.0, a)  # NaN stays NaN as in torch.relu
        else:
            h = tanh(a)
        if HAS_LENGTHS:
            h = tl.where((t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None], h, 0.0)
        g0 = h
        g1 = h
        g2 = h
        g3 = h
    return h, s1, s2, s3, g0, g1, g2, g3, e


@triton.jit
def _cell_bwd(dh, g0, g1, g2, g3, a0, a1, a2, p0, p1, h_prev, h, ds1, ds2, lengths, t, o_b, m_b,
              CELL: tl.constexpr, HAS_LENGTHS: tl.constexpr):
    """One step's pointwise backward from dh (dy[t] + the recurrent part), the saved blocks g_k (input dtype) and
    a_k (accumulator dtype), the states p_k of step t-1, h_{t-1} (GRU), h_t (RNN) and the state gradients ds1, ds2
    reaching step t. Returns (dz0, dz1, dz2, dz3: stored, the recurrent product reads the first G; carry: the
    direct part of dh_{t-1}; ds1, ds2 of step t-1)."""
    carry = dh * 0.0
    if CELL == 0:
        dz0, dz1, dz2, dz3, ds1 = lstm_cell_bwd(dh, g0, g1, g2, g3, a0, p0, ds1, lengths, t, o_b, m_b,
                                                HAS_LENGTHS)
    elif CELL == 1:  # dg = [da_r, da_z, dhn, dn]
        dz0, dz1, dz2, dz3, carry = gru_cell_bwd(dh, g0, g1, g2, g3, h_prev, lengths, t, o_b, m_b, HAS_LENGTHS)
    elif CELL == 4:
        dz0, dz1, dz2, dz3, ds1, ds2 = slstm_cell_bwd(dh, g0, g1, g2, g3, a0, a1, a2, p0, p1, ds1, ds2, lengths,
                                                      t, o_b, m_b, HAS_LENGTHS)
    else:
        if CELL == 3:
            dz0 = tl.where(h <= 0.0, 0.0, dh)  # as torch's threshold_backward: NaN outputs pass dh
        else:
            dz0 = dh * (1.0 - h * h)
        if HAS_LENGTHS:
            dz0 = tl.where((t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None], dz0, 0.0)
        dz1 = dz0
        dz2 = dz0
        dz3 = dz0
    return dz0, dz1, dz2, dz3, carry, ds1, ds2


# ----------------------------------------------------------------------------------------------
# The skeleton
# ----------------------------------------------------------------------------------------------
@triton.jit
def _split4(acc, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """(BB, 4*BD) -> four (BB, BD) gate blocks (as ``_common.gate_products``)."""
    z = tl.reshape(tl.permute(tl.reshape(acc, (BLOCK_B, 4, BLOCK_D)), (0, 2, 1)), (BLOCK_B, BLOCK_D, 2, 2))
    z_even, z_odd = tl.split(z)
    z0, z2 = tl.split(z_even)
    z1, z3 = tl.split(z_odd)
    return z0, z1, z2, z3


@triton.jit
def _join4(z0, z1, z2, z3, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """The inverse of ``_split4``: four (BB, BD) blocks -> (BB, 4*BD), block g in columns g*BD .. g*BD + BD."""
    z = tl.join(tl.join(z0, z2), tl.join(z1, z3))  # (BB, BD, 2, 2): [a, b] = gate 2a + b
    return tl.reshape(tl.permute(tl.reshape(z, (BLOCK_B, BLOCK_D, 4)), (0, 2, 1)), (BLOCK_B, 4 * BLOCK_D))


@triton.jit
def _load_blocks(base, off, H, mask, zero, N: tl.constexpr, ACC: tl.constexpr):
    """Up to four (BB, BD) blocks at base + off + k*H (k < N), in ACC; ``zero`` (a zero block) for k >= N (``base``
    may then be None)."""
    b0 = zero
    b1 = zero
    b2 = zero
    b3 = zero
    if N > 0:
        p = base + off
        b0 = tl.load(p, mask=mask, other=0.0).to(ACC)
    if N > 1:
        b1 = tl.load(p + H, mask=mask, other=0.0).to(ACC)
    if N > 2:
        b2 = tl.load(p + 2 * H, mask=mask, other=0.0).to(ACC)
    if N > 3:
        b3 = tl.load(p + 3 * H, mask=mask, other=0.0).to(ACC)
    return b0, b1, b2, b3


@triton.jit
def _store_blocks(p, H, b0, b1, b2, b3, mask, N: tl.constexpr):
    """Store the first N of four (BB, BD) blocks at p + k*H, cast to p's element type."""
    ty = p.dtype.element_ty
    tl.store(p, b0.to(ty), mask=mask)
    if N > 1:
        tl.store(p + H, b1.to(ty), mask=mask)
    if N > 2:
        tl.store(p + 2 * H, b2.to(ty), mask=mask)
    if N > 3:
        tl.store(p + 3 * H, b3.to(ty), mask=mask)


@triton.jit
def _tile(B, D, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's head n, its batch rows o_b, its units o_a within the head, the masks, and the (BB, BD)
    offset of (row, unit n*D + a) in a (B, H)-strided row block without the row stride."""
    n = tl.program_id(0)
    o_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_a = tl.arange(0, BLOCK_D)
    m_b = o_b < B
    m_a = o_a < D
    return n, o_b, o_a, m_b, m_a, m_b[:, None] & m_a[None, :]


@triton.jit
def _fwd_loads(xp, t, T, B, H, o_b, col, m_ba, zero, G: tl.constexpr, ACC: tl.constexpr):
    """xp[t]'s G blocks of this program's rows and units (zeros past the last step: a prefetch)."""
    o_xp = tl.cast(t, tl.int64) * B * H * G + o_b[:, None] * (G * H) + col[None, :]
    return _load_blocks(xp, o_xp, H, m_ba & (t < T), zero, G, ACC)


@triton.jit(do_not_specialize=["T", "B"])
def _heads_fwd(
    xp,  # (T, B, G*H) input projection, biases included (GRU: b_hn excluded)
    w,  # (NH, G*D, D) per-head W_hh blocks
    b_hn,  # (H,) the GRU's b_hn (only if HAS_BHN)
    h0,  # (B, H)
    s0,  # (NS, B, H) initial states besides h (accumulator dtype; only if NS > 0)
    y,  # (T, B, H) output
    sn,  # (NS, B, H) final states besides h (accumulator dtype)
    gates,  # (T, B, NSAVE*H) saved for the backward (only if STORE)
    aux,  # (T, B, NAUX*H) accumulator dtype, saved for the backward (only if STORE): the states, then e
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (T, B) int8 reset mask (only if HAS_RESETS)
    T, B, H, D,
    CELL: tl.constexpr, G: tl.constexpr, NG: tl.constexpr, NS: tl.constexpr, NSAVE: tl.constexpr,
    NAUX: tl.constexpr, HAS_BHN: tl.constexpr, HAS_LENGTHS: tl.constexpr, HAS_RESETS: tl.constexpr,
    STORE: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n, o_b, o_a, m_b, m_a, m_ba = _tile(B, D, BLOCK_B, BLOCK_D)
    col = n * D + o_a
    o_bh = o_b[:, None] * H + col[None, :]  # (row, unit) in a (B, H) block
    s_t = B * H
    # W_n^T as (BD, NG*BD): [k, g*BD + a] = w[n, g*D + a, k]; loop-invariant (shared memory)
    o_c = tl.arange(0, NG * BLOCK_D)
    g_c = o_c // BLOCK_D
    a_c = o_c % BLOCK_D
    o_k = tl.arange(0, BLOCK_D)
    m_c = (g_c < G) & (a_c < D)
    p_w = w + n.to(tl.int64) * (G * D * D) + (g_c * D + a_c)[None, :] * D + o_k[:, None]
    w_t = tl.load(p_w, mask=(o_k < D)[:, None] & m_c[None, :], other=0.0)
    if CAST_F32:  # the interpreter's bf16 tl.dot is wrong (triton#11584)
        w_t = w_t.to(tl.float32)
    zero = tl.zeros((BLOCK_B, BLOCK_D), ACC)
    bhn = zero
    if HAS_BHN:
        bhn += tl.load(b_hn + col, mask=m_a, other=0.0).to(ACC)[None, :]
    h = tl.load(h0 + o_bh, mask=m_ba, other=0.0).to(ACC)
    s1, s2, s3, _ = _load_blocks(s0, o_bh, s_t, m_ba, zero, NS, ACC)
    x0, x1, x2, x3 = _fwd_loads(xp, 0, T, B, H, o_b, col, m_ba, zero, G, ACC)
    if HAS_RESETS:  # the rows whose state carries into step 0 (then each step's loaded one step ahead, as xp's)
        m_h = carried_rows(resets, o_b, m_b)[:, None]
    for t in tl.range(0, T, num_stages=1):
        t64 = tl.cast(t, tl.int64)
        if HAS_RESETS:  # a restarting row: every state entering step t is zero (a select: NaN never passes)
            h = tl.where(m_h, h, 0.0)
            s1 = tl.where(m_h, s1, 0.0)
            s2 = tl.where(m_h, s2, 0.0)
            s3 = tl.where(m_h, s3, 0.0)
        hd = h.to(y.dtype.element_ty)
        if CAST_F32:
            hd = hd.to(tl.float32)
        acc = tl.dot(hd, w_t, input_precision=PRECISION, out_dtype=ACC)
        if NG == 4:
            z0, z1, z2, z3 = _split4(acc, BLOCK_B, BLOCK_D)
        else:
            z0 = acc
            z1 = acc
            z2 = acc
            z3 = acc
        h, s1, s2, s3, g0, g1, g2, g3, e = _cell_fwd(z0, z1, z2, z3, x0, x1, x2, x3, bhn, h, s1, s2, s3, lengths,
                                                     t, o_b, m_b, CELL, HAS_LENGTHS)
        # xp[t+1] does not depend on the recurrence: its loads are in flight during the stores and the next dot
        x0, x1, x2, x3 = _fwd_loads(xp, t + 1, T, B, H, o_b, col, m_ba, zero, G, ACC)
        if HAS_RESETS:
            m_h = carried_rows(resets + (t64 + 1) * B, o_b, m_b & (t + 1 < T))[:, None]
        tl.store(y + t64 * s_t + o_bh, h.to(y.dtype.element_ty), mask=m_ba)
        if STORE:
            if NSAVE > 0:
                _store_blocks(gates + t64 * s_t * NSAVE + o_b[:, None] * (NSAVE * H) + col[None, :], H,
                              g0, g1, g2, g3, m_ba, NSAVE)
            if NAUX > 0:
                _store_blocks(aux + t64 * s_t * NAUX + o_b[:, None] * (NAUX * H) + col[None, :], H,
                              s1, s2, e, e, m_ba, NAUX)
    if NS > 0:
        _store_blocks(sn + o_bh, s_t, s1, s2, s3, s3, m_ba, NS)


@triton.jit
def _bwd_loads(dy, gates, aux, s0, h0, y, resets, t, B, H, o_b, m_b, col, o_bh, m_ba, zero,
               CELL: tl.constexpr, NSAVE: tl.constexpr, NAUX: tl.constexpr, NPREV: tl.constexpr,
               HAS_RESETS: tl.constexpr, ACC: tl.constexpr):
    """What step t's backward reads that does not depend on the recurrence (all zeros for t < 0: a prefetch past
    the first step): dy[t], the saved blocks of step t (gates, aux), the states of step t-1 (aux[t-1], or s0 at
    t = 0; zero on the rows restarting at t), h_{t-1} (GRU), h_t (RNN) and (HAS_RESETS) the (BB, 1) rows whose
    state carried into step t."""
    t64 = tl.cast(t, tl.int64)
    s_t = B * H
    m = m_ba & (t >= 0)
    m_prev = m
    if HAS_RESETS:  # a row restarting at t had zero states at t-1 in the forward: a predicated load reads 0
        m_prev = m & carried_rows(resets + t * B, o_b, m_b & (t >= 0))[:, None]
    b_dy = tl.load(dy + t64 * s_t + o_bh, mask=m, other=0.0).to(ACC)
    g0, g1, g2, g3 = _load_blocks(gates, t64 * s_t * NSAVE + o_b[:, None] * (NSAVE * H) + col[None, :], H, m, zero,
                                  NSAVE, ACC)
    o_aux = t64 * s_t * NAUX + o_b[:, None] * (NAUX * H) + col[None, :]
    a0, a1, a2, _ = _load_blocks(aux, o_aux, H, m, zero, NAUX, ACC)
    p0, p1, _, _ = _load_blocks(aux, o_aux - s_t * NAUX, H, m_prev & (t > 0), zero, NPREV, ACC)
    q0, q1, _, _ = _load_blocks(s0, o_bh, s_t, m_prev & (t == 0), zero, NPREV, ACC)
    h_prev = zero
    h = zero
    if CELL == 1:  # h_{t-1}
        h_prev = tl.load(y + (t64 - 1) * s_t + o_bh, mask=m_prev & (t > 0), other=0.0).to(ACC)
        h_prev += tl.load(h0 + o_bh, mask=m_prev & (t == 0), other=0.0).to(ACC)
    if CELL == 2 or CELL == 3:  # h_t
        h = tl.load(y + t64 * s_t + o_bh, mask=m, other=0.0).to(ACC)
    return b_dy, g0, g1, g2, g3, a0, a1, a2, p0 + q0, p1 + q1, h_prev, h


@triton.jit(do_not_specialize=["T", "B"])
def _heads_bwd(
    dy,  # (T, B, H) gradient of y (the gradient of h_n already added at each row's last step)
    w,  # (NH, G*D, D)
    gates,  # (T, B, NSAVE*H) as saved by the forward
    aux,  # (T, B, NAUX*H) accumulator dtype, as saved by the forward
    s0,  # (NS, B, H) initial states besides h (accumulator dtype)
    h0,  # (B, H)
    y,  # (T, B, H) the forward's output (h_{t-1} of the GRU, h_t of the RNN)
    dsn,  # (NS, B, H) gradient of the final states besides h (accumulator dtype; the first NPREV are read)
    dz,  # (T, B, NDZ*H) output: the gradient of the gate pre-activations (GRU: [da_r, da_z, dhn, dn])
    dh0,  # (B, H) output, accumulator dtype
    ds0,  # (NS, B, H) output, accumulator dtype (the first NPREV are written)
    lengths,  # (B,) int32 (only if HAS_LENGTHS)
    resets,  # (T, B) int8 reset mask (only if HAS_RESETS)
    T, B, H, D,
    CELL: tl.constexpr, G: tl.constexpr, NG: tl.constexpr, NS: tl.constexpr, NSAVE: tl.constexpr,
    NAUX: tl.constexpr, NPREV: tl.constexpr, NDZ: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    HAS_RESETS: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n, o_b, o_a, m_b, m_a, m_ba = _tile(B, D, BLOCK_B, BLOCK_D)
    col = n * D + o_a
    o_bh = o_b[:, None] * H + col[None, :]
    s_t = B * H
    # W_n as (NG*BD, BD): [g*BD + a, k] = w[n, g*D + a, k]; loop-invariant (shared memory)
    o_r = tl.arange(0, NG * BLOCK_D)
    g_r = o_r // BLOCK_D
    a_r = o_r % BLOCK_D
    o_k = tl.arange(0, BLOCK_D)
    m_r = (g_r < G) & (a_r < D)
    p_w = w + n.to(tl.int64) * (G * D * D) + (g_r * D + a_r)[:, None] * D + o_k[None, :]
    w_n = tl.load(p_w, mask=m_r[:, None] & (o_k < D)[None, :], other=0.0)
    if CAST_F32:
        w_n = w_n.to(tl.float32)
    zero = tl.zeros((BLOCK_B, BLOCK_D), ACC)
    ds1, ds2, _, _ = _load_blocks(dsn, o_bh, s_t, m_ba, zero, NPREV, ACC)
    dh_rec = zero
    l_dy, g0, g1, g2, g3, a0, a1, a2, p0, p1, h_prev, h = _bwd_loads(
        dy, gates, aux, s0, h0, y, resets, T - 1, B, H, o_b, m_b, col, o_bh, m_ba, zero, CELL, NSAVE, NAUX, NPREV,
        HAS_RESETS, ACC)
    for step in tl.range(0, T, num_stages=1):
        t = T - 1 - step
        t64 = tl.cast(t, tl.int64)
        if HAS_RESETS:  # the rows whose state carried into step t (again: an L1 hit, applied after the product)
            m_h = carried_rows(resets + t * B, o_b, m_b)[:, None]
        dz0, dz1, dz2, dz3, carry, ds1, ds2 = _cell_bwd(dh_rec + l_dy, g0, g1, g2, g3, a0, a1, a2, p0, p1, h_prev,
                                                        h, ds1, ds2, lengths, t, o_b, m_b, CELL, HAS_LENGTHS)
        # step t-1's inputs do not depend on the recurrence: in flight during the stores and the dot
        l_dy, g0, g1, g2, g3, a0, a1, a2, p0, p1, h_prev, h = _bwd_loads(
            dy, gates, aux, s0, h0, y, resets, t - 1, B, H, o_b, m_b, col, o_bh, m_ba, zero, CELL, NSAVE, NAUX,
            NPREV, HAS_RESETS, ACC)
        if CELL == 4:  # padded units and rows hold n = 0 (1 / n is not finite there): keep them out of the dot
            dz0 = tl.where(m_ba, dz0, 0.0)
            dz1 = tl.where(m_ba, dz1, 0.0)
            dz2 = tl.where(m_ba, dz2, 0.0)
            dz3 = tl.where(m_ba, dz3, 0.0)
        p_dz = dz + t64 * s_t * NDZ + o_b[:, None] * (NDZ * H) + col[None, :]
        _store_blocks(p_dz, H, dz0, dz1, dz2, dz3, m_ba, NDZ)
        # dh_{t-1} = dz_t (its first G blocks, in the input dtype as stored) @ W_n (+ the direct carry)
        ty = dz.dtype.element_ty
        if NG == 4:
            if G == 3:
                dz3 = zero  # the GRU's dn is not a gradient of the product (W_n's fourth block is masked)
            a = _join4(dz0.to(ty), dz1.to(ty), dz2.to(ty), dz3.to(ty), BLOCK_B, BLOCK_D)
        else:
            a = dz0.to(ty)
        if CAST_F32:
            a = a.to(tl.float32)
        dh_rec = carry + tl.dot(a, w_n, input_precision=PRECISION, out_dtype=ACC)
        if HAS_RESETS:  # no gradient crosses a restart: the dropped states of step t-1 get none
            dh_rec = tl.where(m_h, dh_rec, 0.0)
            ds1 = tl.where(m_h, ds1, 0.0)
            ds2 = tl.where(m_h, ds2, 0.0)
    tl.store(dh0 + o_bh, dh_rec, mask=m_ba)
    if NPREV > 0:
        _store_blocks(ds0 + o_bh, s_t, ds1, ds2, ds2, ds2, m_ba, NPREV)


# ----------------------------------------------------------------------------------------------
# Configs and launchers
# ----------------------------------------------------------------------------------------------
# Per dtype group: the largest BLOCK_D compile-checked (W_n in shared memory, 4*BD^2 elements; the sLSTM's fp32
# backward at 64 spills with every warp count), and the warps per pass and BLOCK_D. fp64 has none on a GPU: triton 3.6
# aborts on the backward's fp64 dot with K = 4*BD ("fp64 don't support largeK MMA"); fp64 heads run the dense kernels
# there (the sLSTM: the reference). The interpreter runs every dtype and size.
MAX_BLOCK_D = {"16bit": 128, "fp32": 64, "fp64": 0}
MAX_BLOCK_D_OF = {("slstm", "fp32"): 32}
# Warps from the static step-time model of docs/PERFORMANCE.md (fewest predicted cycles per step among the counts
# that compile with 0 spill and mma_repeat 1): the forward's wide product (16, 4*BD) spreads over more warps than
# the backward's (16, BD); the RNN's forward product is (16, BD) too, so it takes the backward's counts. fp32 ("ieee":
# FFMA dots) needs 16 warps for the forward at 64 and 4 at 32 to stay clear of spills.
WARPS = {
    "16bit": {"fwd": {16: 2, 32: 8, 64: 8, 128: 16}, "bwd": {16: 2, 32: 4, 64: 8, 128: 16}},
    "fp32": {"fwd": {16: 2, 32: 4, 64: 16}, "bwd": {16: 2, 32: 4, 64: 8}},
    "fp64": {"fwd": {16: 2, 32: 4, 64: 8, 128: 16}, "bwd": {16: 2, 32: 4, 64: 8, 128: 16}},  # the interpreter's
}
BLOCK_B = 16


def block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def max_block_d(cell: str, group: str) -> int:
    return MAX_BLOCK_D_OF.get((cell, group), MAX_BLOCK_D[group])


def warps(cell: str, group: str, kind: str, BD: int) -> int:
    return WARPS[group]["bwd" if CELLS[cell].NG == 1 else kind][BD]


def supported(dtype: torch.dtype, D: int, cell: str = "lstm") -> bool:
    """Whether the per-head kernels have a compile-checked config for ``cell``'s heads of D units in ``dtype``
    (always in the interpreter, which has no shared-memory limit and no spills)."""
    return interpreting() or (block_d(D) <= 128 and block_d(D) <= max_block_d(cell, dtype_group(dtype)))


def _alloc(like: torch.Tensor, *shape, dtype=None) -> torch.Tensor:
    """Every buffer a kernel writes (the tests replace this to fill them with NaN first)."""
    return like.new_empty(shape, dtype=dtype or like.dtype)


def _launch(kernel, kind: str, args: dict, cell: str, NH: int, D: int, B: int, like: torch.Tensor) -> None:
    BD = block_d(D)
    c = CELLS[cell]
    grid = (NH, triton.cdiv(B, BLOCK_B))
    kernel[grid](**args, CELL=c.id, G=c.G, NG=c.NG, NS=c.NS, NSAVE=c.NSAVE, NAUX=c.NAUX,
                 HAS_LENGTHS=args["lengths"] is not None, HAS_RESETS=args["resets"] is not None, **dot_meta(like),
                 BLOCK_B=BLOCK_B, BLOCK_D=BD,
                 num_warps=warps(cell, dtype_group(like.dtype), kind, BD), num_stages=1)


def heads_fwd(cell: str, xp, w_hh, h0, s0, b_hn=None, lengths=None, resets=None, *, store=True):
    """The forward recurrence of one layer and direction of a multi-head cell (``CELLS``) in one launch.

    Args: xp (T, B, G*H) with the biases (the GRU's without b_hn); w_hh (NH, G*D, D); h0 (B, H); s0 (NS, B, H)
    the other initial states (LSTM: c0) or None when NS = 0; b_hn (H,) or None (GRU); lengths (B,) int32 or None;
    resets (T, B) bool or None (every state entering step t is zero on the rows set at t, h0 and s0 included).
    Returns y (T, B, H), s_n (NS, B, H) in the accumulator dtype, gates (T, B, NSAVE*H) and aux (T, B, NAUX*H)
    (the last two None without ``store`` or when the cell saves none)."""
    c = CELLS[cell]
    T, B, GH = xp.shape
    check_steps(T)
    NH, _, D = w_hh.shape
    H = NH * D
    if GH != c.G * H or tuple(w_hh.shape) != (NH, c.G * D, D):
        raise RuntimeError(f"heads_fwd: xp {tuple(xp.shape)} and w_hh {tuple(w_hh.shape)} do not match a "
                           f"{cell} of {NH} heads of {D}")
    acc = acc_torch_dtype(xp.dtype)
    resets = check_resets(resets, T, B, xp.device)
    # only the aligned variant is compile-checked: every tensor contiguous from a 16-byte boundary (copied if not)
    xp, w_hh, h0, b_hn, lengths, resets = (aligned16(v) for v in (xp, w_hh, h0, b_hn, lengths, resets))
    s0 = aligned16(s0.to(acc)) if c.NS else None
    y = _alloc(xp, T, B, H)
    sn = _alloc(xp, max(c.NS, 1), B, H, dtype=acc)
    gates = _alloc(xp, T, B, c.NSAVE * H) if store and c.NSAVE else None
    aux = _alloc(xp, T, B, c.NAUX * H, dtype=acc) if store and c.NAUX else None
    args = dict(xp=xp, w=w_hh, b_hn=b_hn, h0=h0, s0=s0, y=y, sn=sn, gates=gates, aux=aux, lengths=lengths,
                resets=resets, T=T, B=B, H=H, D=D, HAS_BHN=b_hn is not None, STORE=store)
    _launch(_heads_fwd, "fwd", args, cell, NH, D, B, xp)
    return y, sn[:c.NS], gates, aux


def heads_bwd(cell: str, dy, w_hh, h0, s0, y, ds_n, gates, aux, lengths=None, resets=None):
    """The backward recurrence of one layer and direction (``heads_fwd``'s saved tensors). dy (T, B, H) with the
    gradient of h_n added at each row's last step; ds_n (NS, B, H) that of the other final states; lengths, resets
    as the forward's (no gradient crosses a restart: dh0, ds0 are zero on the rows restarting at t = 0).
    Returns dz (T, B, NDZ*H) (input dtype), dh0 (B, H) and ds0 (NS, B, H) (accumulator dtype)."""
    c = CELLS[cell]
    T, B, H = dy.shape
    NH, _, D = w_hh.shape
    acc = acc_torch_dtype(dy.dtype)
    resets = check_resets(resets, T, B, dy.device)
    dy, w_hh, h0, y, gates, aux, lengths, resets = (aligned16(v) for v in (dy, w_hh, h0, y, gates, aux, lengths,
                                                                            resets))
    s0 = aligned16(s0.to(acc)) if c.NS else None
    ds_n = aligned16(ds_n.to(acc)) if c.NS else None
    dz = _alloc(dy, T, B, c.NDZ * H)
    dh0 = _alloc(dy, B, H, dtype=acc)
    ds0 = _alloc(dy, max(c.NS, 1), B, H, dtype=acc)
    args = dict(dy=dy, w=w_hh, gates=gates, aux=aux, s0=s0, h0=h0, y=y, dsn=ds_n, dz=dz, dh0=dh0, ds0=ds0,
                lengths=lengths, resets=resets, T=T, B=B, H=H, D=D, NPREV=c.NPREV, NDZ=c.NDZ)
    _launch(_heads_bwd, "bwd", args, cell, NH, D, B, dy)
    ds0[c.NPREV:].zero_()  # the sLSTM's m_0: the stabiliser gets no gradient
    return dz, dh0, ds0[:c.NS]


def heads_weight_grads(dz_hh, h0, y, NH: int, lengths=None, resets=None):
    """dW_hh (NH, G*D, D) from dz_hh (T, B, G*H) (the gradient of the recurrent product, nn's column layout):
    ``dW[n, g*D + a, b] = sum_{t, batch} dz_hh[t, :, g*H + n*D + a] h_{t-1}[:, n*D + b]``, one batched GEMM over
    the heads (deterministic). h_{t-1} as ``_common.weight_grads`` forms it (zero past a row's length and where
    ``resets`` (T, B) bool restarts a row)."""
    T, B, GH = dz_hh.shape
    H = y.shape[2]
    G, D = GH // H, H // NH
    h_prev = previous_outputs(h0, y, lengths, resets).to(dz_hh.dtype)
    a = dz_hh.reshape(T * B, G, NH, D).permute(2, 1, 3, 0).reshape(NH, G * D, T * B)
    b = h_prev.reshape(T * B, NH, D).permute(1, 0, 2)
    return torch.bmm(a, b)


def heads_layer_fwd(cell: str, x, h0, s0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, resets=None, *,
                    store=True):
    """One layer and direction of a multi-head cell: the input projection of all steps (one GEMM, nn's layout)
    then ``heads_fwd``. x (T, B, I); w_ih (G*H, I); w_hh (NH, G*D, D); biases (G*H,) or None; resets (T, B) bool
    or None. Returns ``heads_fwd``'s (y, s_n, gates, aux)."""
    H = h0.shape[-1]
    if cell == "gru":  # b_hn sits inside the reset gate's product (docs/MATH.md)
        xp, b_hn = gru_input_projection(x, w_ih, b_ih, b_hh), (None if b_hh is None else b_hh[2 * H:])
    else:
        xp, b_hn = input_projection(x, w_ih, b_ih, b_hh), None
    return heads_fwd(cell, xp, w_hh, h0, s0, b_hn, lengths, resets, store=store)


def heads_layer_bwd(cell: str, dy, ds_n, x, h0, s0, y, w_ih, w_hh, gates, aux, lengths=None, resets=None, *,
                    has_bias=True):
    """Gradients of one layer from ``heads_layer_fwd``'s saved tensors: ``heads_bwd``, then the weight and input
    gradients as large GEMMs over all steps. Returns (dx, dh0, ds0, dW_ih, dW_hh, db_ih, db_hh) (biases None
    without ``has_bias``; the GRU's two bias gradients differ in the n block, the other cells' are equal)."""
    dz, dh0, ds0 = heads_bwd(cell, dy, w_hh, h0, s0, y, ds_n, gates, aux, lengths, resets)
    H = h0.shape[-1]
    dhp = dxp = dz
    if cell == "gru":  # dz = [da_r, da_z, dhn, dn]: xp's gradient leaves out dhn, the product's leaves out dn
        dhp, dxp = dz[..., :3 * H], torch.cat([dz[..., :2 * H], dz[..., 3 * H:]], -1)
    dx, _, dw_ih, _, db_ih = weight_grads(dxp, x, h0, y, w_ih, None, has_bias, lengths)
    dw_hh = heads_weight_grads(dhp, h0, y, w_hh.shape[0], lengths, resets)
    db_hh = db_ih
    if cell == "gru" and has_bias:
        db_hh = dhp.reshape(-1, 3 * H).sum(0, dtype=dh0.dtype).to(dy.dtype)
    return dx, dh0.to(dy.dtype), ds0, dw_ih, dw_hh, db_ih, db_hh


# Static compile check (experiments/compile_check.py): every cell (CELL is a constexpr: each is its own kernel)
# at every BLOCK_D of its dtype group, the heaviest variant (lengths, resets, stored tensors).
def _checks():
    out = []
    for name, c in CELLS.items():
        if name == "rnn_relu":
            continue  # the same code as rnn_tanh but for the activation
        for group in MAX_BLOCK_D:
            top = max_block_d(name, group)
            if not top:
                continue
            cfgs = {kind: [triton.Config(dict(BLOCK_B=BLOCK_B, BLOCK_D=bd), num_warps=warps(name, group, kind, bd),
                                         num_stages=1) for bd in (16, 32, 64, 128) if bd <= top]
                    for kind in ("fwd", "bwd")}
            cells = dict(CELL=c.id, G=c.G, NG=c.NG, NS=c.NS, NSAVE=c.NSAVE, NAUX=c.NAUX, HAS_LENGTHS=True,
                         HAS_RESETS=True, CAST_F32=False)
            common = dict(dtypes=DTYPE_GROUPS[group], aligns=("aligned",))
            out.append(dict(kernel=_heads_fwd, name=f"_heads_fwd[{name}]", configs=cfgs["fwd"], **common,
                            constexprs=dict(cells, HAS_BHN=c.id == GRU, STORE=True),
                            args=dict(xp="x", w="x", b_hn="x", h0="x", s0="acc", y="x", sn="acc", gates="x",
                                      aux="acc", lengths="*i32", resets="*i8")))
            out.append(dict(kernel=_heads_bwd, name=f"_heads_bwd[{name}]", configs=cfgs["bwd"], **common,
                            constexprs=dict(cells, NPREV=c.NPREV, NDZ=c.NDZ),
                            args=dict(dy="x", w="x", gates="x", aux="acc", s0="acc", h0="x", y="x", dsn="acc",
                                      dz="x", dh0="acc", ds0="acc", lengths="*i32", resets="*i8")))
    return out


COMPILE_CHECK = _checks
