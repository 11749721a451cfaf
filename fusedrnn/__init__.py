"""fusedrnn: fused Triton kernels for LSTM and Elman RNN cells behind drop-in torch.nn modules.

Public API::

    from fusedrnn import LSTM, RNN, GRU, LSTMCell, RNNCell, GRUCell, UseGateLSTM, swap_rnns, clear_cuda_graphs

``LSTM``, ``RNN``, ``GRU``, ``LSTMCell``, ``RNNCell``, ``GRUCell`` take torch.nn's constructor arguments plus keyword-only
``backend`` ("auto", "triton", "reference") and ``strategy``; ``swap_rnns(model)`` swaps them into a model.
``LSTM``, ``GRU`` and ``RNN`` also take ``num_heads`` (block-diagonal W_hh); ``heads_to_dense`` / ``dense_to_heads``
convert its per-head blocks to torch.nn's dense matrix and back. ``SLSTM`` is xLSTM's sLSTM on the same per-head
kernels; ``slstm_from_flashrnn`` / ``slstm_to_flashrnn`` / ``slstm_from_xlstm`` convert parameters.
Subpackages: ``fusedrnn.models`` (the modules and autograd ops), ``fusedrnn.kernels`` (Triton kernels and
pure-PyTorch references), ``fusedrnn.experiments`` (sweeps and plots). ``fusedrnn`` is the only top-level name
an installed copy adds, so a program's own ``models`` package does not collide with ours.
"""
from ._layout import install as _install

_install(__path__[0])

from .models import (  # noqa: E402
    BACKENDS,
    GRU,
    LSTM,
    RNN,
    STRATEGIES,
    GRUCell,
    LSTMCell,
    RNNCell,
    SLSTM,
    UseGateLSTM,
    clear_cuda_graphs,
    dense_to_heads,
    heads_to_dense,
    slstm_from_flashrnn,
    slstm_from_xlstm,
    slstm_to_flashrnn,
    swap_rnns,
)

__all__ = ["BACKENDS", "STRATEGIES", "LSTM", "RNN", "GRU", "LSTMCell", "RNNCell", "GRUCell", "UseGateLSTM", "swap_rnns",
           "clear_cuda_graphs", "heads_to_dense", "dense_to_heads", "SLSTM", "slstm_from_flashrnn", "slstm_to_flashrnn",
           "slstm_from_xlstm"]
