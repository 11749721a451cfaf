"""fusedrnn: fused Triton kernels for LSTM and Elman RNN cells behind drop-in torch.nn modules.

Public API::

    from fusedrnn import (LSTM, RNN, GRU, LSTMCell, RNNCell, GRUCell, UseGateLSTM, swap_rnns, unswap_rnns,
                          clear_cuda_graphs)
    from fusedrnn import set_selfcheck, selfcheck_report, SelfCheckWarning, SelfCheckError
    from fusedrnn import LayerNormLSTM, LayerNormGRU, haste_state_dict  # lmnt-com/haste's cells, with zoneout
    from fusedrnn import SLSTM, heads_to_dense, dense_to_heads  # multi-head cells (num_heads=), xLSTM's sLSTM

``LSTM``, ``RNN``, ``GRU``, ``LSTMCell``, ``RNNCell``, ``GRUCell`` take torch.nn's constructor arguments plus
keyword-only ``backend`` ("auto", "triton", "reference") and ``strategy``; ``swap_rnns(model)`` swaps them into a
model, ``unswap_rnns(model)`` back.
``LSTM``, ``GRU`` and ``RNN`` also take ``num_heads`` (block-diagonal W_hh); ``heads_to_dense`` / ``dense_to_heads``
convert its per-head blocks to torch.nn's dense matrix and back. ``SLSTM`` is xLSTM's sLSTM on the same per-head
kernels; ``slstm_from_flashrnn`` / ``slstm_to_flashrnn`` / ``slstm_from_xlstm`` convert parameters.
Subpackages: ``fusedrnn.models`` (the modules and autograd ops), ``fusedrnn.kernels`` (Triton kernels and
pure-PyTorch references), ``fusedrnn.experiments`` (sweeps and plots). ``fusedrnn`` is the only top-level name
an installed copy adds, so a program's own ``models`` package does not collide with ours. Where no GPU is
visible and ``TRITON_INTERPRET`` is unset, importing fusedrnn sets it to 1 (Triton's interpreter: the only way
``backend="triton"`` runs on the CPU).

No GPU has run the fused kernels yet, and ``backend="auto"`` (the default) uses them on CUDA: the first call of each
configuration checks them against the pure-PyTorch reference and, on a mismatch, warns and uses the reference
(``set_selfcheck("warn" | "raise" | "off" | "auto")`` or ``FUSEDRNN_SELFCHECK``; ``backend="reference"`` is the
safe path).
"""
import os as _os

import torch as _torch

from ._layout import install as _install

if "TRITON_INTERPRET" not in _os.environ and _torch.cuda.device_count() == 0:
    # No GPU for Triton to compile for: its interpreter runs backend="triton" on the CPU. It must be on before
    # the kernels are decorated (the imports below). An explicit TRITON_INTERPRET (0 for the static compile
    # check, experiments/compile_check.py) is kept. device_count, not is_available: it does not initialise CUDA.
    _os.environ["TRITON_INTERPRET"] = "1"

_install(__path__[0])

from .models import (  # noqa: E402
    BACKENDS,
    GRU,
    LSTM,
    RNN,
    STRATEGIES,
    GRUCell,
    LayerNormGRU,
    LayerNormLSTM,
    LSTMCell,
    RNNCell,
    SLSTM,
    SelfCheckError,
    SelfCheckWarning,
    UseGateLSTM,
    clear_cuda_graphs,
    dense_to_heads,
    haste_state_dict,
    heads_to_dense,
    selfcheck_report,
    set_selfcheck,
    slstm_from_flashrnn,
    slstm_from_xlstm,
    slstm_to_flashrnn,
    swap_rnns,
    unswap_rnns,
)

__all__ = ["BACKENDS", "STRATEGIES", "LSTM", "RNN", "GRU", "LSTMCell", "RNNCell", "GRUCell", "UseGateLSTM", "swap_rnns",
           "unswap_rnns", "clear_cuda_graphs", "set_selfcheck", "selfcheck_report", "SelfCheckWarning",
           "SelfCheckError", "LayerNormLSTM", "LayerNormGRU", "haste_state_dict", "heads_to_dense",
           "dense_to_heads", "SLSTM", "slstm_from_flashrnn", "slstm_to_flashrnn", "slstm_from_xlstm"]
