"""Autograd op over the per-head kernels (kernels/heads.py): one layer of a multi-head cell, one direction,
forward in time, as the ops of models/ops.py (custom op, fake implementation, registered autograd; backward with
``create_graph=True`` differentiates the reference math on the dense equivalent).

Layers whose heads have no compile-checked per-head config (``kernels.heads.supported``) run the dense fused ops on
``heads_to_dense(w_hh)`` instead (autograd takes the gradient back to the blocks).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..kernels import heads as _k
from ..kernels._common import acc_torch_dtype
from . import ops
from .ops import _EMPTY, _none_if_empty, _no_autocast, _or_empty, differentiable_vjp, double_backward_error


@torch.library.custom_op("fusedrnn::heads_layer", mutates_args=())
def heads_layer_op(
    cell: str, x: Tensor, h0: Tensor, s0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
    b_hh: Optional[Tensor], lengths: Optional[Tensor], store: bool, resets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer of a multi-head ``cell`` (kernels.heads.CELLS). x (T, B, I), h0 (B, H), s0 (NS, B, H) the other
    initial states (empty when NS = 0), w_ih (G*H, I), w_hh (NH, G*D, D), biases (G*H,) or None, resets (T, B) bool
    or None. Returns y (T, B, H), s_n (NS, B, H) (input dtype) and for backward gates, aux (empty without
    ``store``)."""
    with _no_autocast(x):
        y, s_n, gates, aux = _k.heads_layer_fwd(cell, x, h0, _none_if_empty(s0), w_ih, w_hh, b_ih, b_hh, lengths,
                                                resets, store=store)
    return y, s_n.to(x.dtype, copy=True), _or_empty(gates, x), _or_empty(aux, s_n)


@heads_layer_op.register_fake
def _(cell, x, h0, s0, w_ih, w_hh, b_ih, b_hh, lengths, store, resets=None):
    c = _k.CELLS[cell]
    T, B, _ = x.shape
    H = h0.shape[1]
    acc = acc_torch_dtype(x.dtype)
    gates = x.new_empty(T, B, c.NSAVE * H) if store and c.NSAVE else x.new_empty(_EMPTY)
    aux = x.new_empty(T, B, c.NAUX * H, dtype=acc) if store and c.NAUX else x.new_empty(_EMPTY, dtype=acc)
    return x.new_empty(T, B, H), x.new_empty(c.NS, B, H), gates, aux


@torch.library.custom_op("fusedrnn::heads_layer_bwd", mutates_args=())
def heads_layer_bwd_op(
    cell: str, dy: Tensor, ds_n: Tensor, x: Tensor, h0: Tensor, s0: Tensor, y: Tensor, w_ih: Tensor, w_hh: Tensor,
    gates: Tensor, aux: Tensor, lengths: Optional[Tensor], has_bias: bool, resets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``heads_layer_op``: dx, dh0, ds0, dW_ih, dW_hh, db_ih, db_hh (the biases' empty without bias)."""
    with _no_autocast(x):
        dx, dh0, ds0, dw_ih, dw_hh, db_ih, db_hh = _k.heads_layer_bwd(
            cell, dy, _none_if_empty(ds_n), x, h0, _none_if_empty(s0), y, w_ih, w_hh, _none_if_empty(gates),
            _none_if_empty(aux), lengths, resets, has_bias=has_bias)
    if db_hh is db_ih and db_ih is not None:  # outputs of an op may not alias each other
        db_hh = db_ih.clone()
    return dx, dh0.to(h0.dtype), ds0.to(x.dtype), dw_ih, dw_hh, _or_empty(db_ih, x), _or_empty(db_hh, x)


@heads_layer_bwd_op.register_fake
def _(cell, dy, ds_n, x, h0, s0, y, w_ih, w_hh, gates, aux, lengths, has_bias, resets=None):
    db = x.new_empty(w_ih.shape[0]) if has_bias else x.new_empty(_EMPTY)
    NS = _k.CELLS[cell].NS
    return (torch.empty_like(x), torch.empty_like(h0), x.new_empty(NS, *h0.shape), torch.empty_like(w_ih),
            torch.empty_like(w_hh), db, torch.empty_like(db))


def _setup(ctx, inputs, output):
    cell, x, h0, s0, w_ih, w_hh, b_ih, b_hh, lengths, store, resets = inputs
    y, s_n, gates, aux = output
    ctx.stored = bool(store)
    ctx.cell = cell
    ctx.bias = (b_ih is not None, b_hh is not None)
    if store:
        ctx.save_for_backward(x, h0, s0, y, w_ih, w_hh, gates, aux, lengths, resets, b_ih, b_hh)


def _backward(ctx, dy, ds_n, *unused):
    if not ctx.stored:
        raise RuntimeError("fusedrnn: heads_layer ran with store=False (no grad was needed) and cannot backprop")
    x, h0, s0, y, w_ih, w_hh, gates, aux, lengths, resets, b_ih, b_hh = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the reference math on the dense equivalent
        from .heads import reference_layer

        def ref(x, h0, s0, w_ih, w_hh, b_ih, b_hh, lengths):
            return reference_layer(ctx.cell, x, h0, s0, w_ih, w_hh, b_ih, b_hh, lengths, resets)

        inputs = (x, h0, s0, w_ih, w_hh, b_ih, b_hh, lengths)
        grads = differentiable_vjp(ref, inputs, ctx.needs_input_grad[1:9], (dy, ds_n))
        return (None, *grads[:7], None, None, None)
    dy = torch.zeros_like(y) if dy is None else dy
    ds_n = torch.zeros_like(s0) if ds_n is None else ds_n
    has_ih, has_hh = ctx.bias
    dx, dh0, ds0, dw_ih, dw_hh, db_ih, db_hh = heads_layer_bwd_op(
        ctx.cell, dy, ds_n, x, h0, s0, y, w_ih, w_hh, gates, aux, lengths, has_ih or has_hh, resets=resets)
    return (None, dx, dh0, ds0 if s0.numel() else None, dw_ih, dw_hh, db_ih if has_ih else None,
            db_hh if has_hh else None, None, None, None)


heads_layer_op.register_autograd(_backward, setup_context=_setup)
heads_layer_bwd_op.register_autograd(double_backward_error)


def heads_layer(cell: str, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, store: bool, strategy: str, resets=None):
    """One layer of a multi-head cell on the triton backend; resets (T, B) bool or None. Returns y (T, B, H) and
    c_n (LSTM) or None. Heads without a per-head config run the dense fused op on the dense equivalent (module
    docstring)."""
    NH, _, D = w_hh.shape
    if not _k.supported(x.dtype, D, cell):
        from .heads import heads_to_dense

        w = heads_to_dense(w_hh)
        if cell == "lstm":
            y, c_n, *_ = ops.lstm_layer(x, h0, c0, w_ih, w, b_ih, b_hh, None, lengths, store, strategy, resets=resets)
            return y, c_n
        if cell == "gru":
            return ops.gru_layer(x, h0, w_ih, w, b_ih, b_hh, lengths, store, strategy, resets=resets)[0], None
        return ops.rnn_layer(x, h0, w_ih, w, b_ih, b_hh, lengths, cell[4:], strategy, resets=resets), None
    s0 = c0.unsqueeze(0) if c0 is not None else x.new_empty(_EMPTY)
    y, s_n, *_ = heads_layer_op(cell, x, h0, s0, w_ih, w_hh, b_ih, b_hh, lengths, store, resets)
    return y, (s_n[0] if c0 is not None else None)
