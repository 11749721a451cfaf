"""Autograd ops over the fused kernels: one layer, one direction, forward in time.

Each op is a ``torch.library.custom_op`` with a fake (meta) implementation and a registered autograd formula,
so it runs in eager mode, under ``torch.compile(fullgraph=True)`` (opaque to the compiler, dynamic shapes
through the fake impl) and under ``torch.autograd.gradcheck``. The forward op returns what backward needs;
with ``store=False`` (no grad needed) those outputs are empty and nothing is kept. Backward is itself an op.

Double backward: when backward runs with ``create_graph=True`` (gradient penalties, meta-learning,
``gradgradcheck``), the first backward is computed instead by differentiating the reference math
(``kernels/reference.py``) of the same layer, whose graph autograd can differentiate again; a plain backward
stays on the fused backward op.

B batch, T steps, I input, H hidden, P projected hidden (P = H without proj_size).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..kernels import gru as _gru
from ..kernels import layernorm as _ln
from ..kernels import lstm as _lstm
from ..kernels import rnn as _rnn
from ..kernels import usegate as _ug
from ..kernels._common import acc_torch_dtype
from ..kernels.layernorm_ref import lngru_recurrence_ref, lnlstm_recurrence_ref
from ..kernels.reference import gru_layer_ref, lstm_layer_ref, rnn_layer_ref
from ..kernels.usegate import usegate_layer_ref

_EMPTY = (0,)


def _no_autocast(t: Tensor):
    return torch.autocast(t.device.type, enabled=False)


def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    return like.new_empty(_EMPTY) if t is None else t


def _none_if_empty(t: Tensor) -> Optional[Tensor]:
    return None if t.numel() == 0 and t.dim() == 1 else t


def double_backward_error(*args, **kwargs):
    raise RuntimeError(
        "fusedrnn: the backward op itself has no derivative; a differentiable backward runs when "
        "torch.autograd.grad / backward is called with create_graph=True"
    )


def differentiable_vjp(ref_fn, inputs, needs_grad, outputs_grads, create_graph=True):
    """Backward with ``create_graph=True``: the vector-Jacobian product of ``ref_fn(*inputs)`` (a tuple of
    outputs matching ``outputs_grads``; None grads count as zero) with respect to the ``inputs`` flagged in
    ``needs_grad``, as a differentiable graph (``create_graph=False``: plain gradients). Returns one gradient (or
    None) per input."""
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs_grad)) if need and t is not None]
    with torch.enable_grad():
        outs = ref_fn(*inputs)
        pairs = [(o, g) for o, g in zip(outs, outputs_grads) if g is not None and o.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
                                    create_graph=create_graph, allow_unused=True) if pairs else [None] * len(wanted)
    result = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        result[i] = torch.zeros_like(inputs[i]) if g is None else g
    return result


# ------------------------------------------------------------------------------------------------- LSTM
@torch.library.custom_op("fusedrnn::lstm_layer", mutates_args=())
def lstm_layer(
    x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
    w_hr: Optional[Tensor], lengths: Optional[Tensor], store: bool, strategy: str, resets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One LSTM layer, forward in time. x (T, B, I), h0 (B, P), c0 (B, H), w_ih (4H, I), w_hh (4H, P),
    biases (4H,) or None, w_hr (P, H) or None, lengths (B,) int32 or None, resets (T, B) bool or None.
    Returns y (T, B, P), c_n (B, H), and for backward c_seq (T, B, H), gates (T, B, 4H), r_seq (T, B, H)
    (empty tensors when ``store`` is False or, for r_seq, without proj)."""
    with _no_autocast(x):
        y, c_n, c_seq, gates, r_seq = _lstm.lstm_layer_fwd(
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, resets, store=store, strategy=strategy
        )
    return (y, c_n.to(x.dtype, copy=True), _or_empty(c_seq, c_n), _or_empty(gates, x), _or_empty(r_seq, x))


@lstm_layer.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, store, strategy, resets=None):
    T, B, _ = x.shape
    H = c0.shape[1]
    P = h0.shape[1]
    acc = acc_torch_dtype(x.dtype)
    y = x.new_empty(T, B, P)
    c_n = x.new_empty(B, H)
    if store:
        c_seq = x.new_empty(T, B, H, dtype=acc)
        gates = x.new_empty(T, B, 4 * H)
        r_seq = x.new_empty(T, B, H) if w_hr is not None else x.new_empty(_EMPTY)
    else:
        c_seq, gates, r_seq = x.new_empty(_EMPTY, dtype=acc), x.new_empty(_EMPTY), x.new_empty(_EMPTY)
    return y, c_n, c_seq, gates, r_seq


@torch.library.custom_op("fusedrnn::lstm_layer_bwd", mutates_args=())
def lstm_layer_bwd(
    dy: Tensor, dc_n: Tensor, x: Tensor, h0: Tensor, c0: Tensor, y: Tensor, w_ih: Tensor, w_hh: Tensor,
    c_seq: Tensor, gates: Tensor, w_hr: Optional[Tensor], r_seq: Tensor, lengths: Optional[Tensor],
    has_bias: bool, strategy: str, resets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``lstm_layer``: returns dx, dh0, dc0, dW_ih, dW_hh, db (empty without bias), dW_hr
    (empty without proj)."""
    with _no_autocast(x):
        dx, dh0, dw_ih, dw_hh, db, dc0, dw_hr = _lstm.lstm_layer_bwd(
            dy, dc_n, x, h0, c0, y, w_ih, w_hh, c_seq, gates, w_hr, _none_if_empty(r_seq), lengths, resets,
            has_bias=has_bias, strategy=strategy,
        )
    return (dx, dh0.to(h0.dtype), dc0.to(c0.dtype), dw_ih, dw_hh, _or_empty(db, x), _or_empty(dw_hr, x))


@lstm_layer_bwd.register_fake
def _(dy, dc_n, x, h0, c0, y, w_ih, w_hh, c_seq, gates, w_hr, r_seq, lengths, has_bias, strategy, resets=None):
    db = x.new_empty(w_ih.shape[0]) if has_bias else x.new_empty(_EMPTY)
    dw_hr = torch.empty_like(w_hr) if w_hr is not None else x.new_empty(_EMPTY)
    return (torch.empty_like(x), torch.empty_like(h0), torch.empty_like(c0), torch.empty_like(w_ih),
            torch.empty_like(w_hh), db, dw_hr)


def _lstm_setup(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, store, strategy, resets = inputs
    y, c_n, c_seq, gates, r_seq = output
    if not store:
        ctx.stored = False
        return
    ctx.stored = True
    ctx.save_for_backward(x, h0, c0, y, w_ih, w_hh, c_seq, gates, w_hr, r_seq, lengths, resets, b_ih, b_hh)
    ctx.bias = (b_ih is not None, b_hh is not None)
    ctx.strategy = strategy


def _lstm_ref_outputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, resets):
    y, _, c_n = lstm_layer_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, resets)
    return y, c_n


def _lstm_backward(ctx, dy, dc_n, *unused):
    if not ctx.stored:
        raise RuntimeError("fusedrnn: lstm_layer ran with store=False (no grad was needed) and cannot backprop")
    x, h0, c0, y, w_ih, w_hh, c_seq, gates, w_hr, r_seq, lengths, resets, b_ih, b_hh = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, resets)
        grads = differentiable_vjp(_lstm_ref_outputs, inputs, ctx.needs_input_grad[:10], (dy, dc_n))
        return (*grads[:8], None, None, None, None)
    dy = torch.zeros_like(y) if dy is None else dy
    dc_n = torch.zeros_like(c0) if dc_n is None else dc_n
    dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr = lstm_layer_bwd(
        dy, dc_n, x, h0, c0, y, w_ih, w_hh, c_seq, gates, w_hr, r_seq, lengths, any(ctx.bias), ctx.strategy,
        resets=resets,
    )
    has_ih, has_hh = ctx.bias
    return (dx, dh0, dc0, dw_ih, dw_hh, db if has_ih else None, db if has_hh else None,
            dw_hr if w_hr is not None else None, None, None, None, None)


lstm_layer.register_autograd(_lstm_backward, setup_context=_lstm_setup)
lstm_layer_bwd.register_autograd(double_backward_error)


# -------------------------------------------------------------------------------------------------- RNN
@torch.library.custom_op("fusedrnn::rnn_layer", mutates_args=())
def rnn_layer(
    x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
    lengths: Optional[Tensor], nonlinearity: str, strategy: str, resets: Optional[Tensor] = None,
) -> Tensor:
    """One Elman RNN layer, forward in time. x (T, B, I), h0 (B, H), resets (T, B) bool or None. Returns
    y (T, B, H); backward needs only y, so nothing else is returned."""
    with _no_autocast(x):
        return _rnn.rnn_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, resets, nonlinearity=nonlinearity,
                                  strategy=strategy)


@rnn_layer.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity, strategy, resets=None):
    return x.new_empty(x.shape[0], x.shape[1], h0.shape[1])


@torch.library.custom_op("fusedrnn::rnn_layer_bwd", mutates_args=())
def rnn_layer_bwd(
    dy: Tensor, x: Tensor, h0: Tensor, y: Tensor, w_ih: Tensor, w_hh: Tensor, lengths: Optional[Tensor],
    has_bias: bool, nonlinearity: str, strategy: str,
    resets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``rnn_layer``: dx, dh0, dW_ih, dW_hh, db (empty without bias)."""
    with _no_autocast(x):
        dx, dh0, dw_ih, dw_hh, db = _rnn.rnn_layer_bwd(
            dy, x, h0, y, w_ih, w_hh, lengths, resets, has_bias=has_bias, nonlinearity=nonlinearity,
            strategy=strategy
        )
    return dx, dh0.to(h0.dtype), dw_ih, dw_hh, _or_empty(db, x)


@rnn_layer_bwd.register_fake
def _(dy, x, h0, y, w_ih, w_hh, lengths, has_bias, nonlinearity, strategy, resets=None):
    db = x.new_empty(w_ih.shape[0]) if has_bias else x.new_empty(_EMPTY)
    return torch.empty_like(x), torch.empty_like(h0), torch.empty_like(w_ih), torch.empty_like(w_hh), db


def _rnn_setup(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity, strategy, resets = inputs
    ctx.save_for_backward(x, h0, output, w_ih, w_hh, lengths, resets, b_ih, b_hh)
    ctx.bias = (b_ih is not None, b_hh is not None)
    ctx.nonlinearity = nonlinearity
    ctx.strategy = strategy


def _rnn_backward(ctx, dy):
    x, h0, y, w_ih, w_hh, lengths, resets, b_ih, b_hh = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True

        def ref(x, h0, w_ih, w_hh, b_ih, b_hh):
            return (rnn_layer_ref(x, h0, w_ih, w_hh, b_ih, b_hh, ctx.nonlinearity, lengths, resets)[0],)

        grads = differentiable_vjp(ref, (x, h0, w_ih, w_hh, b_ih, b_hh), ctx.needs_input_grad[:6], (dy,))
        return (*grads, None, None, None, None)
    dx, dh0, dw_ih, dw_hh, db = rnn_layer_bwd(
        dy, x, h0, y, w_ih, w_hh, lengths, any(ctx.bias), ctx.nonlinearity, ctx.strategy, resets=resets
    )
    has_ih, has_hh = ctx.bias
    return dx, dh0, dw_ih, dw_hh, db if has_ih else None, db if has_hh else None, None, None, None, None


rnn_layer.register_autograd(_rnn_backward, setup_context=_rnn_setup)
rnn_layer_bwd.register_autograd(double_backward_error)


# ------------------------------------------------------------------------------------------ use-gate LSTM
@torch.library.custom_op("fusedrnn::usegate_layer", mutates_args=())
def usegate_layer(
    x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
    w_u: Tensor, b_u: Optional[Tensor], lengths: Optional[Tensor], store: bool, strategy: str,
    resets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One use-gate LSTM layer, forward in time. x (T, B, I), h0, c0 (B, H), w_ih (4H, I), w_hh (4H, H),
    b_ih, b_hh (4H,) or None, w_u (H, H), b_u (H,) or None, lengths (B,) int32 or None, resets (T, B) bool or None.
    Returns y (T, B, H), c_n (B, H), and for backward c_seq (T, B, H) (accumulator dtype), gates (T, B, 4H),
    k_seq (T, B, H), u_seq (T, B, H) (empty tensors when ``store`` is False)."""
    with _no_autocast(x):
        y, c_n, c_seq, gates, k_seq, u_seq = _ug.usegate_layer_fwd(
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_u, b_u, lengths, resets, store=store, strategy=strategy
        )
    return (y, c_n.to(x.dtype, copy=True), _or_empty(c_seq, c_n), _or_empty(gates, x), _or_empty(k_seq, x),
            _or_empty(u_seq, x))


@usegate_layer.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_u, b_u, lengths, store, strategy, resets=None):
    T, B, _ = x.shape
    H = c0.shape[1]
    acc = acc_torch_dtype(x.dtype)
    y = x.new_empty(T, B, H)
    c_n = x.new_empty(B, H)
    if store:
        return (y, c_n, x.new_empty(T, B, H, dtype=acc), x.new_empty(T, B, 4 * H), x.new_empty(T, B, H),
                x.new_empty(T, B, H))
    return (y, c_n, x.new_empty(_EMPTY, dtype=acc), x.new_empty(_EMPTY), x.new_empty(_EMPTY),
            x.new_empty(_EMPTY))


@torch.library.custom_op("fusedrnn::usegate_layer_bwd", mutates_args=())
def usegate_layer_bwd(
    dy: Tensor, dc_n: Tensor, x: Tensor, h0: Tensor, c0: Tensor, y: Tensor, w_ih: Tensor, w_hh: Tensor,
    w_u: Tensor, c_seq: Tensor, gates: Tensor, k_seq: Tensor, u_seq: Tensor, lengths: Optional[Tensor],
    has_bias: bool, strategy: str, resets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``usegate_layer``: returns dx, dh0, dc0, dW_ih, dW_hh, db (the gradient of b_ih and of b_hh;
    empty without bias), dW_u, db_u (empty without bias)."""
    with _no_autocast(x):
        dx, dh0, dw_ih, dw_hh, db, dc0, dw_u, db_u = _ug.usegate_layer_bwd(
            dy, dc_n, x, h0, c0, y, w_ih, w_hh, w_u, c_seq, gates, k_seq, u_seq, lengths, resets,
            has_bias=has_bias, strategy=strategy,
        )
    return (dx, dh0.to(h0.dtype), dc0.to(c0.dtype), dw_ih, dw_hh, _or_empty(db, x), dw_u, _or_empty(db_u, x))


@usegate_layer_bwd.register_fake
def _(dy, dc_n, x, h0, c0, y, w_ih, w_hh, w_u, c_seq, gates, k_seq, u_seq, lengths, has_bias, strategy, resets=None):
    db = x.new_empty(w_ih.shape[0]) if has_bias else x.new_empty(_EMPTY)
    db_u = x.new_empty(w_u.shape[0]) if has_bias else x.new_empty(_EMPTY)
    return (torch.empty_like(x), torch.empty_like(h0), torch.empty_like(c0), torch.empty_like(w_ih),
            torch.empty_like(w_hh), db, torch.empty_like(w_u), db_u)


def _usegate_setup(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_u, b_u, lengths, store, strategy, resets = inputs
    y, c_n, c_seq, gates, k_seq, u_seq = output
    ctx.stored = bool(store)
    if not store:
        return
    ctx.save_for_backward(x, h0, c0, y, w_ih, w_hh, w_u, c_seq, gates, k_seq, u_seq, lengths, resets, b_ih, b_hh,
                          b_u)
    ctx.bias = (b_ih is not None, b_hh is not None, b_u is not None)
    ctx.strategy = strategy


def _usegate_ref_outputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_u, b_u, lengths, resets):
    y, _, c_n = usegate_layer_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_u, b_u, lengths, resets)
    return y, c_n


def _usegate_backward(ctx, dy, dc_n, *unused):
    if not ctx.stored:
        raise RuntimeError("fusedrnn: usegate_layer ran with store=False (no grad was needed) and cannot backprop")
    x, h0, c0, y, w_ih, w_hh, w_u, c_seq, gates, k_seq, u_seq, lengths, resets, b_ih, b_hh, b_u = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the reference math, differentiable (models/ops.py)
        inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_u, b_u, lengths, resets)
        grads = differentiable_vjp(_usegate_ref_outputs, inputs, ctx.needs_input_grad[:11], (dy, dc_n))
        return (*grads[:9], None, None, None, None)
    dy = torch.zeros_like(y) if dy is None else dy
    dc_n = torch.zeros_like(c0) if dc_n is None else dc_n
    has_ih, has_hh, has_u = ctx.bias
    dx, dh0, dc0, dw_ih, dw_hh, db, dw_u, db_u = usegate_layer_bwd(
        dy, dc_n, x, h0, c0, y, w_ih, w_hh, w_u, c_seq, gates, k_seq, u_seq, lengths,
        has_ih or has_hh or has_u, ctx.strategy, resets=resets,
    )
    db, db_u = _none_if_empty(db), _none_if_empty(db_u)
    return (dx, dh0, dc0, dw_ih, dw_hh, db if has_ih else None, db if has_hh else None, dw_u,
            db_u if has_u else None, None, None, None, None)


usegate_layer.register_autograd(_usegate_backward, setup_context=_usegate_setup)
usegate_layer_bwd.register_autograd(double_backward_error)


# -------------------------------------------------------------------------------------------------- GRU
@torch.library.custom_op("fusedrnn::gru_layer", mutates_args=())
def gru_layer(
    x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
    lengths: Optional[Tensor], store: bool, strategy: str, resets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """One GRU layer, forward in time. x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H), biases (3H,) or None,
    lengths (B,) int32 or None, resets (T, B) bool or None. Returns y (T, B, H) and, for backward, gates (T, B, 4H)
    = [r, z, n, hn] (empty when ``store`` is False)."""
    with _no_autocast(x):
        y, gates = _gru.gru_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, resets, store=store,
                                      strategy=strategy)
    return y, _or_empty(gates, x)


@gru_layer.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, store, strategy, resets=None):
    T, B, _ = x.shape
    H = h0.shape[1]
    return x.new_empty(T, B, H), (x.new_empty(T, B, 4 * H) if store else x.new_empty(_EMPTY))


@torch.library.custom_op("fusedrnn::gru_layer_bwd", mutates_args=())
def gru_layer_bwd(
    dy: Tensor, x: Tensor, h0: Tensor, y: Tensor, w_ih: Tensor, w_hh: Tensor, gates: Tensor,
    lengths: Optional[Tensor], has_bias: bool, strategy: str, resets: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``gru_layer``: dx, dh0, dW_ih, dW_hh, db_ih, db_hh (the two bias gradients differ in the n
    block; empty without bias)."""
    with _no_autocast(x):
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = _gru.gru_layer_bwd(
            dy, x, h0, y, w_ih, w_hh, gates, lengths, resets, has_bias=has_bias, strategy=strategy
        )
    return dx, dh0.to(h0.dtype), dw_ih, dw_hh, _or_empty(db_ih, x), _or_empty(db_hh, x)


@gru_layer_bwd.register_fake
def _(dy, x, h0, y, w_ih, w_hh, gates, lengths, has_bias, strategy, resets=None):
    db = x.new_empty(w_ih.shape[0]) if has_bias else x.new_empty(_EMPTY)
    return (torch.empty_like(x), torch.empty_like(h0), torch.empty_like(w_ih), torch.empty_like(w_hh), db,
            torch.empty_like(db))


def _gru_setup(ctx, inputs, output):
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, store, strategy, resets = inputs
    y, gates = output
    ctx.stored = bool(store)
    if not store:
        return
    ctx.save_for_backward(x, h0, y, w_ih, w_hh, gates, lengths, resets, b_ih, b_hh)
    ctx.bias = (b_ih is not None, b_hh is not None)
    ctx.strategy = strategy


def _gru_ref_outputs(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, resets):
    return (gru_layer_ref(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, resets)[0],)


def _gru_backward(ctx, dy, *unused):
    if not ctx.stored:
        raise RuntimeError("fusedrnn: gru_layer ran with store=False (no grad was needed) and cannot backprop")
    x, h0, y, w_ih, w_hh, gates, lengths, resets, b_ih, b_hh = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True
        inputs = (x, h0, w_ih, w_hh, b_ih, b_hh, lengths, resets)
        grads = differentiable_vjp(_gru_ref_outputs, inputs, ctx.needs_input_grad[:8], (dy,))
        return (*grads[:6], None, None, None, None)
    dy = torch.zeros_like(y) if dy is None else dy
    has_ih, has_hh = ctx.bias
    dx, dh0, dw_ih, dw_hh, db_ih, db_hh = gru_layer_bwd(
        dy, x, h0, y, w_ih, w_hh, gates, lengths, has_ih or has_hh, ctx.strategy, resets=resets
    )
    return (dx, dh0, dw_ih, dw_hh, db_ih if has_ih else None, db_hh if has_hh else None, None, None, None, None)


gru_layer.register_autograd(_gru_backward, setup_context=_gru_setup)
gru_layer_bwd.register_autograd(double_backward_error)


# ------------------------------------------------------------------------- LayerNorm LSTM / GRU (Haste's cells)
# The ops take the input projection Xp (its layer norm and bias computed by the module with autograd) and run the
# recurrence; zoneout is a mask (T, B, H) in training or the keep weight 1 - p in eval (``keep``; 1.0 and no mask:
# no zoneout). Kernels: kernels/layernorm.py; reference: kernels/layernorm_ref.py.
def _zkeep(zmask: Optional[Tensor], keep: float, like: Tensor) -> Optional[Tensor]:
    """The eval zoneout weight as the kernels read it, a (1,) accumulator-dtype tensor (exact in float64); None
    with a mask or without zoneout."""
    if zmask is not None or keep == 1.0:
        return None
    return torch.full((1,), keep, dtype=acc_torch_dtype(like.dtype), device=like.device)


def _zref(zmask: Optional[Tensor], keep: float):
    return zmask if zmask is not None else (None if keep == 1.0 else float(keep))


@torch.library.custom_op("fusedrnn::lnlstm_layer", mutates_args=())
def lnlstm_layer(
    xp: Tensor, h0: Tensor, c0: Tensor, rk: Tensor, gamma_r: Tensor, gamma_h: Tensor, beta_h: Tensor,
    zmask: Optional[Tensor], keep: float, lengths: Optional[Tensor], store: bool, strategy: str = "per_step",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The LayerNorm LSTM recurrence of one layer and direction: xp (T, B, 4H), h0, c0 (B, H), rk (H, 4H), gamma_r
    (4H,), gamma_h, beta_h (H,), zmask (T, B, H) or None, keep (1 - p in eval), lengths (B,) int32 or None,
    strategy of the forward ("persistent": kernels/layernorm_persistent.py where it fits; the backward is per_step).
    Returns y (T, B, H), c_n (B, H), and for backward c_seq (T, B, H) and gates (T, B, 4H) in the accumulator
    dtype, a_hat (T, B, 4H), rstd (T, B) (empty when ``store`` is False)."""
    with _no_autocast(xp):
        y, c_n, c_seq, gates, a_hat, rstd = _ln.lnlstm_fwd_sequence(
            xp, h0, c0, rk, gamma_r, gamma_h, beta_h, zmask, _zkeep(zmask, keep, xp), lengths, store=store,
            strategy=strategy)
    acc = c_n
    return (y, c_n.to(xp.dtype, copy=True), _or_empty(c_seq, acc), _or_empty(gates, acc), _or_empty(a_hat, xp),
            _or_empty(rstd, acc))


@lnlstm_layer.register_fake
def _(xp, h0, c0, rk, gamma_r, gamma_h, beta_h, zmask, keep, lengths, store, strategy="per_step"):
    T, B, G4 = xp.shape
    H = h0.shape[1]
    acc = acc_torch_dtype(xp.dtype)
    if not store:
        return (xp.new_empty(T, B, H), xp.new_empty(B, H), xp.new_empty(_EMPTY, dtype=acc),
                xp.new_empty(_EMPTY, dtype=acc), xp.new_empty(_EMPTY), xp.new_empty(_EMPTY, dtype=acc))
    return (xp.new_empty(T, B, H), xp.new_empty(B, H), xp.new_empty(T, B, H, dtype=acc),
            xp.new_empty(T, B, G4, dtype=acc), xp.new_empty(T, B, G4), xp.new_empty(T, B, dtype=acc))


@torch.library.custom_op("fusedrnn::lnlstm_layer_bwd", mutates_args=())
def lnlstm_layer_bwd(
    dy: Tensor, dc_n: Tensor, h0: Tensor, c0: Tensor, y: Tensor, rk: Tensor, gamma_r: Tensor, gamma_h: Tensor,
    beta_h: Tensor, c_seq: Tensor, gates: Tensor, a_hat: Tensor, rstd: Tensor, zmask: Optional[Tensor], keep: float,
    lengths: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``lnlstm_layer``: dxp, dh0, dc0, d_rk, dgamma_r, dgamma_h, dbeta_h."""
    with _no_autocast(dy):
        dxp, dh0, dc0, d_rk, dg_r, dg_h, db_h = _ln.lnlstm_layer_bwd(
            dy, dc_n, h0, c0, y, rk, gamma_r, gamma_h, beta_h, c_seq, gates, a_hat, rstd, zmask,
            _zkeep(zmask, keep, dy), lengths)
    return dxp, dh0, dc0.to(c0.dtype), d_rk, dg_r, dg_h, db_h


@lnlstm_layer_bwd.register_fake
def _(dy, dc_n, h0, c0, y, rk, gamma_r, gamma_h, beta_h, c_seq, gates, a_hat, rstd, zmask, keep, lengths):
    return (torch.empty_like(a_hat), torch.empty_like(h0), torch.empty_like(c0), torch.empty_like(rk),
            torch.empty_like(gamma_r), torch.empty_like(gamma_h), torch.empty_like(beta_h))


def _lnlstm_setup(ctx, inputs, output):
    xp, h0, c0, rk, gamma_r, gamma_h, beta_h, zmask, keep, lengths, store, _ = inputs
    y, c_n, c_seq, gates, a_hat, rstd = output
    ctx.stored = bool(store)
    if store:
        ctx.save_for_backward(xp, h0, c0, y, rk, gamma_r, gamma_h, beta_h, c_seq, gates, a_hat, rstd, zmask, lengths)
        ctx.keep = keep


def _lnlstm_backward(ctx, dy, dc_n, *unused):
    if not ctx.stored:
        raise RuntimeError("fusedrnn: lnlstm_layer ran with store=False (no grad was needed) and cannot backprop")
    xp, h0, c0, y, rk, gamma_r, gamma_h, beta_h, c_seq, gates, a_hat, rstd, zmask, lengths = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the reference math, differentiable

        def ref(xp, h0, c0, rk, gamma_r, gamma_h, beta_h):
            y, _, c_n = lnlstm_recurrence_ref(xp, h0, c0, rk, gamma_r, gamma_h, beta_h, _zref(zmask, ctx.keep),
                                              lengths)
            return y, c_n

        grads = differentiable_vjp(ref, (xp, h0, c0, rk, gamma_r, gamma_h, beta_h), ctx.needs_input_grad[:7],
                                   (dy, dc_n))
        return (*grads, None, None, None, None, None)
    dy = torch.zeros_like(y) if dy is None else dy
    dc_n = torch.zeros_like(c0) if dc_n is None else dc_n
    grads = lnlstm_layer_bwd(dy, dc_n, h0, c0, y, rk, gamma_r, gamma_h, beta_h, c_seq, gates, a_hat, rstd, zmask,
                             ctx.keep, lengths)
    return (*grads, None, None, None, None, None)


lnlstm_layer.register_autograd(_lnlstm_backward, setup_context=_lnlstm_setup)
lnlstm_layer_bwd.register_autograd(double_backward_error)


@torch.library.custom_op("fusedrnn::lngru_layer", mutates_args=())
def lngru_layer(
    xp: Tensor, h0: Tensor, rk: Tensor, gamma_r: Tensor, rbias: Optional[Tensor], zmask: Optional[Tensor],
    keep: float, lengths: Optional[Tensor], store: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The LayerNorm GRU recurrence of one layer and direction: xp (T, B, 3H), h0 (B, H), rk (H, 3H), gamma_r (3H,),
    rbias (3H,) recurrent_bias or None, zoneout and lengths as ``lnlstm_layer``. Returns y (T, B, H) and for
    backward gates (T, B, 4H), a_hat (T, B, 3H), rstd (T, B) (empty when ``store`` is False)."""
    with _no_autocast(xp):
        y, gates, a_hat, rstd = _ln.lngru_fwd_sequence(xp, h0, rk, gamma_r, rbias, zmask, _zkeep(zmask, keep, xp),
                                                       lengths, store=store)
    acc = acc_torch_dtype(xp.dtype)
    return y, _or_empty(gates, xp), _or_empty(a_hat, xp), _or_empty(rstd, xp.new_empty(0, dtype=acc))


@lngru_layer.register_fake
def _(xp, h0, rk, gamma_r, rbias, zmask, keep, lengths, store):
    T, B, G3 = xp.shape
    H = h0.shape[1]
    acc = acc_torch_dtype(xp.dtype)
    if not store:
        return xp.new_empty(T, B, H), xp.new_empty(_EMPTY), xp.new_empty(_EMPTY), xp.new_empty(_EMPTY, dtype=acc)
    return xp.new_empty(T, B, H), xp.new_empty(T, B, 4 * H), xp.new_empty(T, B, G3), xp.new_empty(T, B, dtype=acc)


@torch.library.custom_op("fusedrnn::lngru_layer_bwd", mutates_args=())
def lngru_layer_bwd(
    dy: Tensor, h0: Tensor, y: Tensor, rk: Tensor, gamma_r: Tensor, gates: Tensor, a_hat: Tensor, rstd: Tensor,
    zmask: Optional[Tensor], keep: float, lengths: Optional[Tensor], has_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``lngru_layer``: dxp, dh0, d_rk, dgamma_r, drecurrent_bias (empty without it)."""
    with _no_autocast(dy):
        dxp, dh0, d_rk, dg_r, db = _ln.lngru_layer_bwd(dy, h0, y, rk, gamma_r, gates, a_hat, rstd, zmask,
                                                       _zkeep(zmask, keep, dy), lengths, has_bias=has_bias)
    return dxp, dh0, d_rk, dg_r, _or_empty(db, dy)


@lngru_layer_bwd.register_fake
def _(dy, h0, y, rk, gamma_r, gates, a_hat, rstd, zmask, keep, lengths, has_bias):
    db = torch.empty_like(gamma_r) if has_bias else dy.new_empty(_EMPTY)
    return (a_hat.new_empty(a_hat.shape), torch.empty_like(h0), torch.empty_like(rk), torch.empty_like(gamma_r), db)


def _lngru_setup(ctx, inputs, output):
    xp, h0, rk, gamma_r, rbias, zmask, keep, lengths, store = inputs
    y, gates, a_hat, rstd = output
    ctx.stored = bool(store)
    if store:
        ctx.save_for_backward(xp, h0, y, rk, gamma_r, rbias, gates, a_hat, rstd, zmask, lengths)
        ctx.keep = keep


def _lngru_backward(ctx, dy, *unused):
    if not ctx.stored:
        raise RuntimeError("fusedrnn: lngru_layer ran with store=False (no grad was needed) and cannot backprop")
    xp, h0, y, rk, gamma_r, rbias, gates, a_hat, rstd, zmask, lengths = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True

        def ref(xp, h0, rk, gamma_r, rbias):
            return (lngru_recurrence_ref(xp, h0, rk, gamma_r, rbias, _zref(zmask, ctx.keep), lengths)[0],)

        grads = differentiable_vjp(ref, (xp, h0, rk, gamma_r, rbias), ctx.needs_input_grad[:5], (dy,))
        return (*grads, None, None, None, None)
    dy = torch.zeros_like(y) if dy is None else dy
    dxp, dh0, d_rk, dg_r, db = lngru_layer_bwd(dy, h0, y, rk, gamma_r, gates, a_hat, rstd, zmask, ctx.keep, lengths,
                                               rbias is not None)
    return dxp, dh0, d_rk, dg_r, (db if rbias is not None else None), None, None, None, None


lngru_layer.register_autograd(_lngru_backward, setup_context=_lngru_setup)
lngru_layer_bwd.register_autograd(double_backward_error)
