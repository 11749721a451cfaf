"""The reference path (``kernels/reference.py`` and the other ``*_ref`` functions) as one opaque op under
``torch.compile`` and ``torch.export``.

The references are Python time loops: traced by dynamo, a loop is unrolled at the traced sequence length, so
``torch.compile(dynamic=True)`` would build one graph per length. Under compile and export ``run_reference``
calls the custom op ``fusedrnn::reference_layer`` instead: its fake implementation gives the output shapes for
any length (y (T, B, P), final states shaped as the initial ones), so a new length does not recompile. Its
backward is the op ``fusedrnn::reference_layer_bwd``, the vector-Jacobian product of the same reference
(recomputed, with autograd switched back on inside the op's implementation); a backward with
``create_graph=True`` differentiates the reference itself (``ops.differentiable_vjp``), so double backward works
on the op as on the loop.

Eager mode runs the Python function itself (autograd through the loop: the same values and gradients as
before, and double backward). ``torch.jit.trace`` of the LSTM, GRU and RNN calls torch's own op before this one
(models/_export.py); ONNX export keeps the loop (ONNX has no translation of a custom op).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..kernels.layernorm_ref import lngru_recurrence_ref, lnlstm_recurrence_ref
from ..kernels.reference import gru_layer_ref, lstm_layer_ref, rnn_layer_ref, usegate_layer_ref
from ..kernels.slstm import slstm_layer_ref
from .ops import _EMPTY, _no_autocast, _none_if_empty, _or_empty, _zref, differentiable_vjp, double_backward_error

# cell -> f(x, states, weights, lengths, keep, resets) -> (y, *final states), one final state per initial state.
# weights (None where absent): lstm [w_ih, w_hh, b_ih, b_hh, w_hr]; gru, rnn_* [w_ih, w_hh, b_ih, b_hh];
# usegate [w_ih, w_hh, b_ih, b_hh, w_u, b_u]; slstm [w_ih, w_hh (NH, 4D, D), b_ih, b_hh]; lnlstm [recurrent_kernel,
# gamma_r, gamma_h, beta_h, zoneout mask]; lngru [recurrent_kernel, gamma_r, recurrent_bias, zoneout mask]; keep:
# the eval zoneout weight (models/ops.py, ``_zref``). states: lstm, usegate, lnlstm (h0, c0); slstm (h0, c0, n0, m0);
# the others (h0,). x is the layer input, for lnlstm / lngru the input projection. resets: (T, B) bool or None (the
# LayerNorm cells take none: models/layernorm.py refuses resets=).
REFERENCES = {
    "lstm": lambda x, s, w, lengths, keep, resets: lstm_layer_ref(x, *s, *w, lengths, resets),
    "gru": lambda x, s, w, lengths, keep, resets: gru_layer_ref(x, *s, *w, lengths, resets),
    "rnn_tanh": lambda x, s, w, lengths, keep, resets: rnn_layer_ref(x, *s, *w, "tanh", lengths, resets),
    "rnn_relu": lambda x, s, w, lengths, keep, resets: rnn_layer_ref(x, *s, *w, "relu", lengths, resets),
    "usegate": lambda x, s, w, lengths, keep, resets: usegate_layer_ref(x, *s, *w, lengths, resets),
    "slstm": lambda x, s, w, lengths, keep, resets: slstm_layer_ref(x, *s, *w, lengths, resets=resets),
    "lnlstm": lambda x, s, w, lengths, keep, resets: lnlstm_recurrence_ref(x, *s, *w[:4], _zref(w[4], keep),
                                                                           lengths),
    "lngru": lambda x, s, w, lengths, keep, resets: lngru_recurrence_ref(x, *s, *w[:3], _zref(w[3], keep),
                                                                         lengths),
}


def run_reference(cell: str, x: Tensor, states, weights, lengths: Optional[Tensor] = None, keep: float = 1.0,
                  resets: Optional[Tensor] = None):
    """One layer and direction of ``cell``'s reference (``REFERENCES``): the op under torch.compile / torch.export
    (one node for any sequence length), the Python function otherwise. Returns (y, *final states)."""
    if torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export():
        return tuple(reference_layer(cell, x, list(states), [_or_empty(w, x) for w in weights], lengths, keep,
                                     resets))
    return REFERENCES[cell](x, tuple(states), list(weights), lengths, keep, resets)


def _call(cell, x, states, weights, lengths, keep, resets):
    """The reference on the op's arguments (absent weights are empty tensors there)."""
    return REFERENCES[cell](x, tuple(states), [_none_if_empty(w) for w in weights], lengths, keep, resets)


def _outputs(results, inputs):
    """``results`` contiguous, as the fake implementations say (autograd may give a transposed gradient), and with
    a copy of each one sharing memory with an input or an earlier result (an op's outputs may not alias; e.g.
    autograd gives b_ih and b_hh, summed in the reference, the same gradient tensor)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t is not None and t.numel()}
    out = []
    for t in results:
        t = t.contiguous()
        if t.numel():
            if t.untyped_storage().data_ptr() in seen:
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
        out.append(t)
    return out


@torch.library.custom_op("fusedrnn::reference_layer", mutates_args=())
def reference_layer(
    cell: str, x: Tensor, states: list[Tensor], weights: list[Tensor], lengths: Optional[Tensor], keep: float,
    resets: Optional[Tensor],
) -> list[Tensor]:
    """One layer and direction of ``cell``'s reference (``REFERENCES``; absent weights as empty tensors).
    Returns [y (T, B, P), *final states] (each shaped as its initial state)."""
    with _no_autocast(x):
        return _outputs(_call(cell, x, states, weights, lengths, keep, resets),
                        [x, *states, *weights, lengths, resets])


@reference_layer.register_fake
def _(cell, x, states, weights, lengths, keep, resets):
    return [x.new_empty(x.shape[0], x.shape[1], states[0].shape[1]), *(s.new_empty(s.shape) for s in states)]


def _autograd_on():
    """Autograd back on inside an op's implementation, which runs with the autograd dispatch keys (and, below
    AOT dispatch, the view tracking autograd relies on) excluded."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor", "ADInplaceOrView"):
        exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@torch.library.custom_op("fusedrnn::reference_layer_bwd", mutates_args=())
def reference_layer_bwd(
    cell: str, grads: list[Tensor], x: Tensor, states: list[Tensor], weights: list[Tensor], lengths: Optional[Tensor],
    keep: float, need: list[bool], resets: Optional[Tensor],
) -> list[Tensor]:
    """Backward of ``reference_layer``: the gradients of [x, *states, *weights] where ``need`` says so (empty
    tensors elsewhere), given the outputs' gradients ``grads`` (empty for an output without one): autograd through
    the reference, recomputed."""
    ns = len(states)

    def ref(x, *sw):
        return _call(cell, x, sw[:ns], sw[ns:], lengths, keep, resets)

    inputs = [x, *states, *weights]
    with _autograd_on(), torch.enable_grad(), _no_autocast(x):
        leaves = [t.detach().requires_grad_(n) for t, n in zip(inputs, need)]
        result = differentiable_vjp(ref, leaves, need, [_none_if_empty(g) for g in grads], create_graph=False)
    return _outputs([x.new_empty(_EMPTY) if g is None else g for g in result], [*inputs, *grads, lengths, resets])


@reference_layer_bwd.register_fake
def _(cell, grads, x, states, weights, lengths, keep, need, resets):
    return [t.new_empty(t.shape) if n else x.new_empty(_EMPTY) for t, n in zip([x, *states, *weights], need)]


def _setup(ctx, inputs, output):
    cell, x, states, weights, lengths, keep, resets = inputs
    ctx.cell, ctx.keep, ctx.n_states = cell, keep, len(states)
    ctx.save_for_backward(x, *states, *weights, lengths, resets)


def _backward(ctx, grads):
    x, *rest, lengths, resets = ctx.saved_tensors
    ns = ctx.n_states
    states, weights = rest[:ns], rest[ns:]
    _, need_x, need_s, need_w = ctx.needs_input_grad[:4]
    need = [bool(need_x), *map(bool, need_s), *map(bool, need_w)]
    if torch.is_grad_enabled():  # create_graph=True: the reference itself, differentiable

        def ref(x, *sw):
            return _call(ctx.cell, x, sw[:ns], sw[ns:], lengths, ctx.keep, resets)

        g = differentiable_vjp(ref, (x, *states, *weights), need, grads)
    else:
        g = reference_layer_bwd(ctx.cell, [_or_empty(d, x) for d in grads], x, list(states), list(weights), lengths,
                                ctx.keep, need, resets)
        g = [d if n else None for d, n in zip(g, need)]
    return None, g[0], g[1:1 + ns], g[1 + ns:], None, None, None


reference_layer.register_autograd(_backward, setup_context=_setup)
reference_layer_bwd.register_autograd(double_backward_error)
