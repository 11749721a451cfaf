"""Replace torch.nn recurrent modules inside a user's model by the fused ones, weights kept."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ._base import PER_STEP_STRATEGIES, STRATEGIES, check_backend
from .lstm import LSTM, LSTMCell
from .rnn import RNN, RNNCell


def _config(m: nn.Module) -> tuple[type, dict]:
    if type(m) is nn.LSTM:
        return LSTM, dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                          bias=m.bias, batch_first=m.batch_first, dropout=m.dropout,
                          bidirectional=m.bidirectional, proj_size=m.proj_size)
    if type(m) is nn.RNN:
        return RNN, dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                         nonlinearity=m.nonlinearity, bias=m.bias, batch_first=m.batch_first,
                         dropout=m.dropout, bidirectional=m.bidirectional)
    if type(m) is nn.LSTMCell:
        return LSTMCell, dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)
    if type(m) is nn.RNNCell:
        return RNNCell, dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias,
                             nonlinearity=m.nonlinearity)
    raise TypeError(type(m).__name__)


SWAPPABLE = (nn.LSTM, nn.RNN, nn.LSTMCell, nn.RNNCell)
UNSWAPPABLE = (nn.GRU, nn.GRUCell)


def swap_rnns(model: nn.Module, backend: str = "auto", strategy: str = "auto") -> nn.Module:
    """Replace, in place, every ``nn.LSTM``, ``nn.RNN``, ``nn.LSTMCell`` and ``nn.RNNCell`` inside ``model``
    (the model itself included) by ``models.LSTM`` / ``RNN`` / ``LSTMCell`` / ``RNNCell`` with the same
    configuration, weights, device, dtype and train/eval mode. Warns about modules it cannot swap (GRU).

    Args:
        model: any nn.Module.
        backend, strategy: passed to the new modules. A strategy only the LSTM has ("persistent") is passed
            to the LSTMs only; the RNNs get "auto" (their kernels have no persistent variant).
    Returns:
        The model (a new module when ``model`` itself was an nn.LSTM/RNN/cell; otherwise the same object).
    """

    check_backend(backend, strategy, STRATEGIES)

    def convert(m: nn.Module) -> nn.Module:
        cls, cfg = _config(m)
        p = next(m.parameters())
        strat = strategy if strategy in PER_STEP_STRATEGIES or cls in (LSTM, LSTMCell) else "auto"
        new = cls(**cfg, device=p.device, dtype=p.dtype, backend=backend, strategy=strat)
        with torch.no_grad():
            new.load_state_dict(m.state_dict())
        for name, param in m.named_parameters():
            getattr(new, name).requires_grad_(param.requires_grad)
        new.train(m.training)
        return new

    if type(model) in SWAPPABLE:
        return convert(model)
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) in SWAPPABLE:
                setattr(parent, name, convert(child))
            elif isinstance(child, UNSWAPPABLE):
                warnings.warn(f"swap_rnns: {full} ({type(child).__name__}) has no fused kernel; left as it is",
                              stacklevel=2)
            elif isinstance(child, SWAPPABLE) and not isinstance(child, (LSTM, RNN, LSTMCell, RNNCell)):
                warnings.warn(f"swap_rnns: {full} is a subclass of {type(child).__mro__[1].__name__}; "
                              "left as it is (its forward may differ)", stacklevel=2)
    return model
