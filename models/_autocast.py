"""Which dtype a recurrent module runs in under ``torch.autocast``, and which dtypes it returns, following the
rules torch.nn's modules get from autocast.

Autocast casts only *eligible* tensors: floating point and not float64 (float64 programs stay in float64).
Per device type, for an eligible input:

- CUDA: ``nn.LSTM`` / ``nn.RNN`` (padded or packed: cuDNN's RNN is autocast to the lower precision) and the
  cells (``lstm_cell``, ``rnn_tanh_cell``, ``rnn_relu_cell`` are on the lower-precision list) run in the
  autocast dtype and return it for every output.
- CPU: ``nn.LSTM`` on padded input runs oneDNN's LSTM when oneDNN is available and enabled
  (``torch.backends.mkldnn``); that LSTM is on the lower-precision list: everything in the autocast dtype. With
  oneDNN disabled, and on a PackedSequence, it is not cast at all. With ``proj_size`` (padded or packed) it is
  composed of ``linear`` ops (lower precision) and a cell state kept in the input's dtype: output and h_n come out
  in the autocast dtype, c_n in the input's dtype. ``nn.RNN`` and ``nn.RNNCell`` are composed of ``linear``: autocast
  dtype. ``nn.LSTMCell``'s state update meets the input-dtype cell state: both outputs in the input's dtype
  (the fused LSTMCell computes in that dtype). ``nn.GRU`` (padded or packed) and ``nn.GRUCell`` are not cast:
  every output in the input's dtype.

The fused modules compute in ``run`` (None: no cast, autocast off inside) and cast their outputs to ``h``
(output and h_n) and ``c`` (c_n).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class AutocastPlan(NamedTuple):
    run: Optional[torch.dtype]  # dtype of the computation; None: the input's dtype, nothing cast
    h: Optional[torch.dtype]  # dtype of output and h_n (None: as computed)
    c: Optional[torch.dtype]  # dtype of c_n (None: as computed)


NO_CAST = AutocastPlan(None, None, None)


def autocast_eligible(dtype: torch.dtype) -> bool:
    """torch's rule: autocast casts floating-point tensors other than float64."""
    return dtype.is_floating_point and dtype != torch.float64


def autocast_plan(kind: str, device: torch.device, dtype: torch.dtype, *, packed: bool = False,
                  proj: bool = False) -> Optional[AutocastPlan]:
    """None when autocast is off for ``device``'s type; else the plan for a module of ``kind`` ("lstm",
    "rnn", "gru", "lstm_cell", "rnn_cell", "gru_cell") given an input of ``dtype``."""
    if not torch.is_autocast_enabled(device.type):
        return None
    if not autocast_eligible(dtype):
        return NO_CAST
    ac = torch.get_autocast_dtype(device.type)
    if device.type != "cpu" or kind in ("rnn", "rnn_cell"):
        return AutocastPlan(ac, ac, ac)
    if kind in ("lstm_cell", "gru", "gru_cell"):
        return NO_CAST  # nn's outputs come out in the input's dtype; the fused module computes in it
    if proj:
        return AutocastPlan(ac, ac, dtype)
    return AutocastPlan(ac, ac, ac) if not packed and onednn_enabled() else NO_CAST


def onednn_enabled() -> bool:
    """Whether torch's CPU LSTM would take its oneDNN path (available and not switched off with
    ``torch.backends.mkldnn.flags(enabled=False)``)."""
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def cast_outputs(plan: AutocastPlan, output, hidden):
    """``output`` and h_n (``hidden`` or ``hidden[0]``) to ``plan.h``, c_n (``hidden[1]``) to ``plan.c``."""
    def to(t, dtype):
        return t if dtype is None or t.dtype == dtype else t.to(dtype)

    if isinstance(hidden, tuple):
        return to(output, plan.h), (to(hidden[0], plan.h), to(hidden[1], plan.c))
    return to(output, plan.h), to(hidden, plan.h)
