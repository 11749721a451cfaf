"""Drop-in LSTM modules on the fused kernels: ``LSTM`` (as torch.nn.LSTM) and ``LSTMCell`` (as nn.LSTMCell).

No GPU has run the fused kernels yet, and ``backend="auto"`` (the default) runs them on CUDA: the first call of
each configuration compares them with the reference and, on a mismatch, warns and serves that configuration
with the reference (models/_selfcheck.py; ``FUSEDRNN_SELFCHECK``). ``backend="reference"`` is the safe path."""
from __future__ import annotations

from torch import Tensor, nn

from . import ops
from ._base import (
    STRATEGIES,
    FusedRNNBase,
    check_backend,
    check_triton_dtype,
    last_step,
    needs_grad,
    resolve_backend,
)
from ._cell import cell_forward
from ._export import NoScript, standard_layer, use_standard_op
from ._selfcheck import fused_ok
from .reference_op import run_reference


def run_lstm_layer(x, h0, c0, weights, lengths, *, has_bias, proj, backend, strategy, resets=None):
    """One LSTM layer and direction through the chosen backend. weights: [w_ih, w_hh, (b_ih, b_hh), (w_hr)];
    resets (T, B) bool or None. Returns y (T, B, P), h_n (B, P), c_n (B, H)."""
    w_ih, w_hh = weights[0], weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if has_bias else (None, None)
    w_hr = weights[-1] if proj else None
    flags = dict(has_bias=has_bias, proj=proj, strategy=strategy)
    if (resolve_backend(backend, x.device) == "reference" or x.shape[1] == 0
            or not fused_ok("LSTM", run_lstm_layer, (x, h0, c0, weights, lengths), flags, resets)):
        if use_standard_op(lengths, proj, resets):  # tracing: one node for any length (models/_export.py)
            return standard_layer("LSTM", x, h0, c0, weights, has_bias)
        return run_reference("lstm", x, (h0, c0), (w_ih, w_hh, b_ih, b_hh, w_hr), lengths, resets=resets)
    check_triton_dtype(x.dtype)
    store = needs_grad(x, h0, c0, *weights)
    y, c_n, *_ = ops.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, store, strategy, resets=resets)
    if store and x.shape[0] == 1 and not needs_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        # one step: c_1 does not depend on w_hr (it acts on h_1 only), so when w_hr is the only input that
        # requires grad, c_n must not require it either (as in torch.nn); its gradient would be zero anyway
        c_n = c_n.detach()
    return y, last_step(y, lengths), c_n


class LSTM(FusedRNNBase):
    """Multi-layer LSTM with the constructor, parameters, inputs and outputs of ``torch.nn.LSTM``.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, device,
            dtype: exactly as ``torch.nn.LSTM``; a ``torch.nn.LSTM`` state_dict loads unchanged.
        backend: "auto" (fused Triton kernels on CUDA, the PyTorch reference elsewhere), "triton" (on CPU the
            Triton interpreter: slow, for tests) or "reference" (pure PyTorch, float64-capable).
        num_heads: keyword-only, default 1. Above 1 the recurrence is block-diagonal: H is cut into num_heads heads of
            D = H / num_heads units, weight_hh_l{k} has shape (num_heads, 4*D, D) (models/heads.py); no proj_size.
        strategy: recurrence strategy of the triton backend: "per_step" (one fused launch per step),
            "persistent" (one launch per layer and direction for the whole sequence, W_hh held on chip; see
            kernels/lstm_persistent.py; where it does not apply, e.g. proj_size, fp64 on a GPU or H too large, it
            runs per_step and says why at DEBUG level on the "fusedrnn" logger) or "auto" (persistent where it
            fits on CUDA, else per_step).

    Inputs: ``input`` (T, B, I) / (B, T, I) with batch_first / (T, I) unbatched / a PackedSequence, and
    optional ``(h_0, c_0)`` of shapes (layers * directions, B, P) and (layers * directions, B, H); by keyword,
    ``resets``, episode resets (a bool mask: ``FusedRNNBase.forward``).
    Returns: ``output, (h_n, c_n)`` with nn.LSTM's shapes.
    """

    _has_cell = True
    _autocast_kind = "lstm"
    _strategies = STRATEGIES

    def __init__(self, *args, backend: str = "auto", strategy: str = "auto", **kwargs):
        super().__init__("LSTM", *args, backend=backend, strategy=strategy, **kwargs)

    def _layer(self, x, h0, c0, weights, lengths, resets=None):
        return run_lstm_layer(x, h0, c0, weights, lengths, has_bias=self.bias, proj=self.proj_size > 0,
                              backend=self.backend, strategy=self.strategy, resets=resets)


class LSTMCell(NoScript, nn.RNNCellBase):
    """One LSTM step with the constructor, parameters, inputs and outputs of ``torch.nn.LSTMCell``, on the
    fused kernels (a sequence of length 1). ``backend``/``strategy`` as for ``LSTM``.

    Inputs: ``input`` (B, I) or (I,), optional ``(h_0, c_0)`` each (B, H) or (H,). Returns ``(h_1, c_1)``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 backend: str = "auto", strategy: str = "auto"):
        check_backend(backend, strategy, STRATEGIES)
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)
        self.backend = backend
        self.strategy = strategy

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        def step(x, states, weights):
            y, h, c = run_lstm_layer(x, states[0], states[1], weights, None, has_bias=self.bias, proj=False,
                                 backend=self.backend, strategy=self.strategy)
            return h, c

        return cell_forward(self, "LSTMCell", input, hx, 2, step, kind="lstm_cell")
