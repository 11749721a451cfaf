"""Export paths other than torch.export / torch.compile (which trace the custom ops as they are).

- ``torch.onnx.export``: every backend resolves to the reference during export (``resolve_backend``), so
  the ONNX graph holds standard ops.
- ``torch.jit.trace`` (and the TorchScript ONNX exporter, which traces): the fused forward keeps its backward's
  tensors under tracing (``needs_grad``). The reference's Python time loop would be unrolled into a graph of
  the traced length, so under tracing the reference path of the LSTM, GRU and RNN calls torch's own op of the
  same function instead (``standard_layer``: ``torch.lstm`` / ``torch.gru`` / ``torch.rnn_tanh`` /
  ``torch.rnn_relu``, what torch.nn's modules call): one node that replays at any sequence length and exports as
  ONNX's LSTM / GRU / RNN op. Not for PackedSequence input (``lengths``), nor a projected LSTM under ONNX export
  (ONNX's LSTM has no projection), nor the use-gate LSTM (no torch op): those keep the loop.
- ``torch.jit.script``: not supported (the forward handles PackedSequence, hooks into custom ops and
  Triton launchers that TorchScript cannot compile); ``NoScript`` makes it fail at once, naming what works.
"""
from __future__ import annotations

import torch

_STANDARD_OPS = {"LSTM": torch.lstm, "GRU": torch.gru, "RNN_TANH": torch.rnn_tanh, "RNN_RELU": torch.rnn_relu}


def use_standard_op(lengths, proj: bool = False, resets=None) -> bool:
    """Whether the reference path runs torch's own op (``standard_layer``): under tracing, without lengths and
    without resets (torch's ops have neither)."""
    return (torch.jit.is_tracing() and lengths is None and resets is None
            and not (proj and torch.onnx.is_in_onnx_export()))


def standard_layer(mode: str, x, h0, c0, weights, has_bias: bool):
    """One layer and direction (x (T, B, I), h0 (B, P), c0 (B, H) or None, ``weights`` in nn's order) through
    torch's op for ``mode`` ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"), the function the reference computes.
    Returns (y (T, B, P), h_n (B, P), c_n (B, H) or None)."""
    hx = (h0.unsqueeze(0), c0.unsqueeze(0)) if c0 is not None else h0.unsqueeze(0)
    y, *states = _STANDARD_OPS[mode](x, hx, weights, has_bias, 1, 0.0, False, False, False)
    return y, states[0].squeeze(0), states[1].squeeze(0) if c0 is not None else None


class NoScript:
    """Mixin: ``torch.jit.script`` on the module, or on a model holding it, raises a clear RuntimeError."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"fusedrnn.{type(self).__name__} cannot be compiled by torch.jit.script (TorchScript cannot compile "
            "its custom ops and Triton launchers). Use torch.compile (fullgraph=True works), torch.export "
            "(then ONNX: torch.onnx.export) or torch.jit.trace; or script a model with torch.nn's modules "
            "(a fusedrnn state_dict loads into them unchanged)."
        )
