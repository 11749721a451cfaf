"""The use-gate LSTM module ``UseGateLSTM`` (its custom ops are in ``models/ops.py``, its kernels in
``kernels/usegate.py``).

The cell, per layer and direction, gates stacked along W's rows in the order N, i, f, V (docs/MATH.md)::

    z_t = x_t @ W_ih^T + b_ih + h_{t-1} @ W_hh^T + b_hh
    n = tanh(z_N), i = s(z_i), f = s(z_f), v = s(z_V)
    k_t = f * c_{t-1}                       (forget gate: the kept long-term memory)
    c_t = k_t + n * i                       (remember gate; learn gate n * i)
    u_t = tanh(k_t @ W_u^T + b_u)           (use gate: reads the kept memory through its own matrix)
    h_t = u_t * v

Ops: ``fusedrnn::usegate_layer`` (forward, returns what backward needs) and ``fusedrnn::usegate_layer_bwd``
(``models/ops.py``).

No GPU has run the fused kernels yet, and ``backend="auto"`` (the default) runs them on CUDA: the first call of
each configuration compares them with the reference and, on a mismatch, warns and serves that configuration
with the reference (models/_selfcheck.py; ``FUSEDRNN_SELFCHECK``). ``backend="reference"`` is the safe path.

B batch, T steps, I input, H hidden.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._base import FusedRNNBase, check_triton_dtype, last_step, needs_grad, resolve_backend
from ._selfcheck import fused_ok
from .ops import usegate_layer, usegate_layer_bwd
from .reference_op import run_reference


# ---------------------------------------------------------------------------------------------- module
def run_usegate_layer(x, h0, c0, weights, lengths, *, has_bias, backend, strategy, resets=None):
    """One use-gate LSTM layer and direction through the chosen backend.

    Args:
        x: (T, B, I) time-major; h0, c0: (B, H); weights: [w_ih, w_hh, (b_ih, b_hh), w_u, (b_u)] as in
            ``UseGateLSTM._all_weights``; lengths: (B,) int32 or None; resets: (T, B) bool or None.
    Returns:
        y (T, B, H), h_n (B, H), c_n (B, H).
    """
    if has_bias:
        w_ih, w_hh, b_ih, b_hh, w_u, b_u = weights
    else:
        (w_ih, w_hh, w_u), b_ih, b_hh, b_u = weights, None, None, None
    flags = dict(has_bias=has_bias, strategy=strategy)
    if (resolve_backend(backend, x.device) == "reference" or x.shape[1] == 0
            or not fused_ok("UseGateLSTM", run_usegate_layer, (x, h0, c0, weights, lengths), flags,
                            resets)):
        return run_reference("usegate", x, (h0, c0), (w_ih, w_hh, b_ih, b_hh, w_u, b_u), lengths, resets=resets)
    check_triton_dtype(x.dtype)
    store = needs_grad(x, h0, c0, *weights)
    y, c_n, *_ = usegate_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_u, b_u, lengths, store, strategy,
                                 resets=resets)
    if store and x.shape[0] == 1 and not needs_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        # one step: c_1 does not depend on the use gate (w_u, b_u act on h_1 only), so when those are the only
        # inputs that require grad, c_n must not require it (as the reference); its gradient would be zero
        c_n = c_n.detach()
    return y, last_step(y, lengths), c_n


class UseGateLSTM(FusedRNNBase):
    """Multi-layer use-gate LSTM (module docstring) with the constructor, inputs and outputs of
    ``torch.nn.LSTM``, except ``proj_size`` (must be 0).

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype: as
            ``torch.nn.LSTM``.
        proj_size: only 0 is accepted (ValueError otherwise): the use gate's W_u reads the cell, there is no
            projection.
        backend: "auto" (fused Triton kernels on CUDA, the PyTorch reference elsewhere), "triton" (on CPU the
            Triton interpreter: slow, for tests) or "reference" (pure PyTorch, float64-capable).
        strategy: recurrence strategy of the triton backend: "auto" or "per_step".

    Parameters, per layer k (and with suffix ``_reverse`` for the reverse direction): ``weight_ih_l{k}``
    (4H, I or 2H), ``weight_hh_l{k}`` (4H, H), rows N, i, f, V; ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,);
    ``weight_u_l{k}`` (H, H), ``bias_u_l{k}`` (H,). ``bias=False`` drops every bias. All are initialised
    uniform(-1/sqrt(H), 1/sqrt(H)) like ``torch.nn.LSTM``.

    Inputs: ``input`` (T, B, I) / (B, T, I) with batch_first / (T, I) unbatched / a PackedSequence, and
    optional ``(h_0, c_0)``, each (layers * directions, B, H); ``resets`` (by keyword; episode resets:
    ``FusedRNNBase.forward``). Returns ``output, (h_n, c_n)`` with nn.LSTM's shapes. Not an ``nn.LSTM``:
    ``models.swap_rnns`` leaves it alone.
    """

    _has_cell = True
    _autocast_kind = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, backend: str = "auto", strategy: str = "auto"):
        if proj_size != 0:
            raise ValueError("UseGateLSTM does not support proj_size (its use gate reads the cell through W_u); "
                             f"got proj_size={proj_size}")
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device=device, dtype=dtype, backend=backend, strategy=strategy)
        factory = {"device": device, "dtype": dtype}
        H = hidden_size
        dirs = 2 if bidirectional else 1
        for layer in range(num_layers):
            for d in range(dirs):
                suffix = "_reverse" if d == 1 else ""
                names = [f"weight_u_l{layer}{suffix}"] + ([f"bias_u_l{layer}{suffix}"] if bias else [])
                shapes = [(H, H), (H,)]
                for name, shape in zip(names, shapes):
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                self._all_weights[layer * dirs + d] = list(self._all_weights[layer * dirs + d]) + names
        self._flat_weights_names = [n for names in self._all_weights for n in names]
        # parameters (and state_dict) in per-layer order: weight_ih, weight_hh, biases, weight_u, bias_u
        for name in self._flat_weights_names:
            self._parameters[name] = self._parameters.pop(name)
        self._init_flat_weights()
        self._init_use_gate()

    def _init_use_gate(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for names in self._all_weights:
                for name in names:
                    if "_u_" in name:
                        nn.init.uniform_(getattr(self, name), -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op: cuDNN's flat weight buffer has no place for W_u, and the fused kernels read each parameter
        where it is."""
        return None

    def _layer(self, x, h0, c0, weights, lengths, resets=None):
        return run_usegate_layer(x, h0, c0, weights, lengths, has_bias=self.bias, backend=self.backend,
                                 strategy=self.strategy, resets=resets)


__all__ = ["UseGateLSTM", "run_usegate_layer", "usegate_layer", "usegate_layer_bwd"]
