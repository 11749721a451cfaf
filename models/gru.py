"""Drop-in GRU modules on the fused kernels: ``GRU`` (as torch.nn.GRU) and ``GRUCell`` (as nn.GRUCell).

No GPU has run the fused kernels yet, and ``backend="auto"`` (the default) runs them on CUDA: the first call of
each configuration compares them with the reference and, on a mismatch, warns and serves that configuration
with the reference (models/_selfcheck.py; ``FUSEDRNN_SELFCHECK``). ``backend="reference"`` is the safe path."""
from __future__ import annotations

from torch import Tensor, nn

from ..kernels.gru import STRATEGIES

from . import ops
from ._base import FusedRNNBase, check_backend, check_triton_dtype, last_step, needs_grad, resolve_backend
from ._cell import cell_forward
from ._export import NoScript, standard_layer, use_standard_op
from ._selfcheck import fused_ok
from .reference_op import run_reference


def run_gru_layer(x, h0, weights, lengths, *, has_bias, backend, strategy, resets=None):
    """One GRU layer and direction through the chosen backend. weights: [w_ih, w_hh, (b_ih, b_hh)]; resets (T, B)
    bool or None. Returns y (T, B, H), h_n (B, H), None."""
    w_ih, w_hh = weights[0], weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if has_bias else (None, None)
    flags = dict(has_bias=has_bias, strategy=strategy)
    if (resolve_backend(backend, x.device) == "reference" or x.shape[1] == 0
            or not fused_ok("GRU", run_gru_layer, (x, h0, weights, lengths), flags, resets)):
        if use_standard_op(lengths, resets=resets):  # tracing: one node for any length (models/_export.py)
            return standard_layer("GRU", x, h0, None, weights, has_bias)
        y, h_n = run_reference("gru", x, (h0,), (w_ih, w_hh, b_ih, b_hh), lengths, resets=resets)
        return y, h_n, None
    check_triton_dtype(x.dtype)
    store = needs_grad(x, h0, *weights)
    y, _ = ops.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, store, strategy, resets=resets)
    return y, last_step(y, lengths), None


class GRU(FusedRNNBase):
    """Multi-layer GRU with the constructor, parameters, inputs and outputs of ``torch.nn.GRU`` (gates r, z, n;
    a ``torch.nn.GRU`` state_dict loads unchanged), plus keyword-only ``backend`` and ``strategy`` as for
    ``models.LSTM`` ("persistent": kernels/gru_persistent.py, falling back to per_step where it does not apply), and
    ``num_heads`` (keyword-only, default 1: block-diagonal W_hh, weight_hh_l{k} of shape (num_heads, 3*D, D); see
    models/heads.py).

    Inputs: ``input`` (T, B, I) / batch_first / unbatched / PackedSequence, optional ``h_0``
    (layers * directions, B, H), ``resets`` (by keyword; episode resets: ``FusedRNNBase.forward``). Returns
    ``output, h_n``.
    """

    _strategies = STRATEGIES
    _autocast_kind = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, backend: str = "auto", strategy: str = "auto", num_heads: int = 1,
                 **kwargs):
        if "proj_size" in kwargs:  # nn.GRU's check and message, whatever the value
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"GRU.__init__() got an unexpected keyword argument {next(iter(kwargs))!r}")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, backend=backend, strategy=strategy, num_heads=num_heads)

    def _layer(self, x, h0, c0, weights, lengths, resets=None):
        return run_gru_layer(x, h0, weights, lengths, has_bias=self.bias, backend=self.backend,
                             strategy=self.strategy, resets=resets)


class GRUCell(NoScript, nn.RNNCellBase):
    """One GRU step with the constructor, parameters, inputs and outputs of ``torch.nn.GRUCell``, on the fused
    kernels. ``backend``/``strategy`` as for ``models.GRU``. Returns ``h_1``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 backend: str = "auto", strategy: str = "auto"):
        check_backend(backend, strategy, STRATEGIES)
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)
        self.backend = backend
        self.strategy = strategy

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        def step(x, states, weights):
            _, h, _ = run_gru_layer(x, states[0], weights, None, has_bias=self.bias, backend=self.backend,
                                    strategy=self.strategy)
            return (h,)

        return cell_forward(self, "GRUCell", input, hx, 1, step, kind="gru_cell")
