"""fusedrnn modules: drop-in replacements for torch.nn's recurrent modules on fused Triton kernels.

``LSTM``, ``RNN``, ``GRU``, ``LSTMCell``, ``RNNCell``, ``GRUCell`` take torch.nn's constructor arguments plus
keyword-only ``backend`` ("auto", "triton", "reference") and ``strategy``; ``swap_rnns(model)`` swaps them into a
model, ``unswap_rnns(model)`` back.
``UseGateLSTM`` is the use-gate LSTM, with nn.LSTM's interface but its own cell; ``LayerNormLSTM`` / ``LayerNormGRU``
are lmnt-com/haste's layer-normalised cells with zoneout (``haste_state_dict`` converts Haste's checkpoints).
``LSTM``, ``GRU`` and ``RNN`` also take ``num_heads`` (block-diagonal W_hh); ``heads_to_dense`` / ``dense_to_heads``
convert its per-head blocks to torch.nn's dense matrix and back. ``SLSTM`` is xLSTM's sLSTM on the same per-head
kernels; ``slstm_from_flashrnn`` / ``slstm_to_flashrnn`` / ``slstm_from_xlstm`` convert parameters.
On CUDA each time loop is captured in a CUDA graph per shape (a small LRU cache); ``clear_cuda_graphs()`` frees them.
No GPU has run the kernels yet: on CUDA the first call of each configuration compares them with the reference and
falls back to it on a mismatch (``set_selfcheck``, ``selfcheck_report``; models/_selfcheck.py).

This package is ``fusedrnn.models`` (import the public names from ``fusedrnn``). In a source checkout the folder
is also importable as ``models``; that name is then the same module object (see ``fusedrnn/_layout.py``).
"""
if __name__ != "fusedrnn.models":
    import importlib as _importlib
    import sys as _sys

    _sys.modules[__name__] = _importlib.import_module("fusedrnn.models")
else:
    import torch

    from . import ops  # noqa: F401  (registers the fusedrnn:: custom ops)
    from ..kernels._graphs import clear as clear_cuda_graphs
    from ._base import BACKENDS, STRATEGIES
    from ._selfcheck import SelfCheckError, SelfCheckWarning, selfcheck_report, set_selfcheck
    from .gru import GRU, GRUCell
    from .heads import dense_to_heads, heads_to_dense
    from .layernorm import LayerNormGRU, LayerNormLSTM, haste_state_dict
    from .lstm import LSTM, LSTMCell
    from .rnn import RNN, RNNCell
    from .slstm import SLSTM, slstm_from_flashrnn, slstm_from_xlstm, slstm_to_flashrnn
    from .swap import swap_rnns, unswap_rnns
    from .usegate import UseGateLSTM

    # whole-model checkpoints (torch.save(model)) reload under torch.load's default weights_only=True, as nn's do
    torch.serialization.add_safe_globals([LSTM, RNN, GRU, LSTMCell, RNNCell, GRUCell, UseGateLSTM, LayerNormLSTM,
                                           LayerNormGRU, SLSTM])

    __all__ = ["BACKENDS", "STRATEGIES", "LSTM", "RNN", "GRU", "LSTMCell", "RNNCell", "GRUCell", "UseGateLSTM",
               "swap_rnns", "unswap_rnns", "clear_cuda_graphs", "set_selfcheck", "selfcheck_report",
               "SelfCheckWarning", "SelfCheckError", "LayerNormLSTM", "LayerNormGRU", "haste_state_dict",
               "heads_to_dense", "dense_to_heads", "SLSTM", "slstm_from_flashrnn", "slstm_to_flashrnn",
               "slstm_from_xlstm"]
