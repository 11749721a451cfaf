"""Drop-in Elman RNN modules on the fused kernels: ``RNN`` (as torch.nn.RNN) and ``RNNCell``.

No GPU has run the fused kernels yet, and ``backend="auto"`` (the default) runs them on CUDA: the first call of
each configuration compares them with the reference and, on a mismatch, warns and serves that configuration
with the reference (models/_selfcheck.py; ``FUSEDRNN_SELFCHECK``). ``backend="reference"`` is the safe path."""
from __future__ import annotations

from torch import Tensor, nn

from . import ops
from ._base import FusedRNNBase, check_backend, check_triton_dtype, last_step, resolve_backend
from ._cell import cell_forward
from ._export import NoScript, standard_layer, use_standard_op
from ._selfcheck import fused_ok
from .reference_op import run_reference


def _check_nonlinearity(nonlinearity: str) -> str:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return nonlinearity


def run_rnn_layer(x, h0, weights, lengths, *, has_bias, nonlinearity, backend, strategy, resets=None):
    """One RNN layer and direction through the chosen backend; resets (T, B) bool or None. Returns y (T, B, H),
    h_n (B, H), None."""
    w_ih, w_hh = weights[0], weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if has_bias else (None, None)
    flags = dict(has_bias=has_bias, nonlinearity=nonlinearity, strategy=strategy)
    if (resolve_backend(backend, x.device) == "reference" or x.shape[1] == 0
            or not fused_ok("RNN", run_rnn_layer, (x, h0, weights, lengths), flags, resets)):
        if use_standard_op(lengths, resets=resets):  # tracing: one node for any length (models/_export.py)
            return standard_layer(f"RNN_{nonlinearity.upper()}", x, h0, None, weights, has_bias)
        y, h_n = run_reference(f"rnn_{nonlinearity}", x, (h0,), (w_ih, w_hh, b_ih, b_hh), lengths,
                               resets=resets)
        return y, h_n, None
    check_triton_dtype(x.dtype)
    y = ops.rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity, strategy, resets=resets)
    return y, last_step(y, lengths), None


class RNN(FusedRNNBase):
    """Multi-layer Elman RNN (tanh or relu) with the constructor, parameters, inputs and outputs of
    ``torch.nn.RNN``, plus keyword-only ``backend``, ``strategy`` and ``num_heads`` (see ``models.LSTM``; weight_hh_l{k}
    of shape (num_heads, D, D)).

    Inputs: ``input`` (T, B, I) / batch_first / unbatched / PackedSequence, optional ``h_0``
    (layers * directions, B, H), ``resets`` (by keyword; episode resets: ``FusedRNNBase.forward``). Returns
    ``output, h_n``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, backend: str = "auto", strategy: str = "auto", num_heads: int = 1,
                 **kwargs):
        if "proj_size" in kwargs:  # nn.RNN's check and message, whatever the value
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"RNN.__init__() got an unexpected keyword argument {next(iter(kwargs))!r}")
        mode = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}[_check_nonlinearity(nonlinearity)]
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, backend=backend, strategy=strategy, num_heads=num_heads)
        self.nonlinearity = nonlinearity

    def _layer(self, x, h0, c0, weights, lengths, resets=None):
        return run_rnn_layer(x, h0, weights, lengths, has_bias=self.bias, nonlinearity=self.nonlinearity,
                             backend=self.backend, strategy=self.strategy, resets=resets)


class RNNCell(NoScript, nn.RNNCellBase):
    """One Elman RNN step with the constructor, parameters, inputs and outputs of ``torch.nn.RNNCell``, on
    the fused kernels. ``backend``/``strategy`` as for ``models.LSTM``. Returns ``h_1``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None, *, backend: str = "auto", strategy: str = "auto"):
        check_backend(backend, strategy)
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype)
        self.nonlinearity = _check_nonlinearity(nonlinearity)
        self.backend = backend
        self.strategy = strategy

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        def step(x, states, weights):
            y, h, _ = run_rnn_layer(x, states[0], weights, None, has_bias=self.bias, nonlinearity=self.nonlinearity,
                                backend=self.backend, strategy=self.strategy)
            return (h,)

        return cell_forward(self, "RNNCell", input, hx, 1, step, kind="rnn_cell")
