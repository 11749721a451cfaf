"""Which dtype a recurrent module runs in under ``torch.autocast``, and which dtypes it returns, following the
rules torch.nn's modules get from autocast.

Autocast casts only *eligible* tensors: floating point and not float64 (float64 programs stay in float64).
Per device type, for an eligible input:

- CUDA: ``nn.LSTM`` / ``nn.RNN`` (padded or packed: cuDNN's RNN is autocast to the lower precision) and the
  cells (``lstm_cell``, ``rnn_tanh_cell``, ``rnn_relu_cell`` are on the lower-precision list) run in the
  autocast dtype and return it for every output.
- CPU: ``nn.RNN`` and ``nn.RNNCell`` are composed of ``linear``: autocast dtype. ``nn.GRU`` (padded or packed),
  ``nn.GRUCell`` and ``nn.LSTMCell`` are composed of ``linear`` (autocast dtype) and a state update that meets
  the state (h; the LSTMCell's c; without ``hx``, zeros of the input's dtype): every output in
  ``promote_types(autocast dtype, that state's dtype)``, e.g. bf16 for a bf16 input (what an autocast ``Linear``
  returns), fp32 for an fp32 input or state; the fused modules compute in that dtype. ``nn.LSTM`` on padded fp32
  input runs oneDNN's LSTM when oneDNN is available and enabled (``torch.backends.mkldnn``),
  which is on the lower-precision list: everything in the autocast dtype; otherwise (oneDNN off, a
  PackedSequence, another input dtype) it is composed as the GRU, the state met being c. With ``proj_size`` (padded or
  packed) it is composed of ``linear`` ops and a cell state kept in the input's dtype: output and h_n in the
  autocast dtype, c_n in the input's dtype.

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
                  proj: bool = False, state_dtype: Optional[torch.dtype] = None) -> Optional[AutocastPlan]:
    """None when autocast is off for ``device``'s type; else the plan for a module of ``kind`` ("lstm",
    "rnn", "gru", "lstm_cell", "rnn_cell", "gru_cell") given an input of ``dtype``. ``state_dtype``: the dtype
    of the state the update meets (GRU, GRUCell: h_0; LSTM, LSTMCell: c_0), None for the input's."""
    if not torch.is_autocast_enabled(device.type):
        return None
    if not autocast_eligible(dtype):
        return NO_CAST
    ac = torch.get_autocast_dtype(device.type)
    if device.type != "cpu" or kind in ("rnn", "rnn_cell"):
        return AutocastPlan(ac, ac, ac)
    state = dtype if state_dtype is None else state_dtype
    if kind == "lstm" and proj:
        return AutocastPlan(ac, ac, dtype)
    if kind == "lstm" and not packed and onednn_enabled() and dtype == torch.float32:
        return AutocastPlan(ac, ac, ac)  # oneDNN's LSTM
    out = torch.promote_types(ac, state)  # linear ops in ac meet the state
    return AutocastPlan(out, out, out)


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
