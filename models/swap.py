"""Replace torch.nn recurrent modules inside a user's model by the fused ones, changing nothing but the kernels.

The new module is built on the meta device (no initialisation, no draw from any RNG), then takes over the old
module's own Parameter objects, buffers, hooks and extra attributes, so that tied weights, optimizers and
parameter hooks created before the swap keep working, and a seeded program draws the same random numbers.
"""
from __future__ import annotations

import warnings

from torch import nn

from ._base import PER_STEP_STRATEGIES, STRATEGIES, check_backend
from .gru import GRU, GRUCell
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
    if type(m) is nn.GRU:
        return GRU, dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                         bias=m.bias, batch_first=m.batch_first, dropout=m.dropout, bidirectional=m.bidirectional)
    if type(m) is nn.GRUCell:
        return GRUCell, dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)
    if type(m) is nn.LSTMCell:
        return LSTMCell, dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)
    if type(m) is nn.RNNCell:
        return RNNCell, dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias,
                             nonlinearity=m.nonlinearity)
    raise TypeError(type(m).__name__)


SWAPPABLE = (nn.LSTM, nn.RNN, nn.GRU, nn.LSTMCell, nn.RNNCell, nn.GRUCell)
# nn.Module's per-module hook state: shared with the new module (the same dict objects, so the handles the
# user holds still remove their hooks)
_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook",
    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


def _convert(m: nn.Module, backend: str, strategy: str) -> nn.Module:
    cls, cfg = _config(m)
    strat = strategy if strategy in PER_STEP_STRATEGIES or cls in (LSTM, LSTMCell, GRU, GRUCell) else "auto"
    # meta device: the constructor's reset_parameters() allocates nothing and draws no random number
    new = cls(**cfg, device="meta", backend=backend, strategy=strat)
    if list(new._parameters) != list(m._parameters):
        raise RuntimeError(f"swap_rnns: parameters of {type(m).__name__} ({list(m._parameters)}) do not match "
                           f"{cls.__name__}'s ({list(new._parameters)})")
    new._parameters = m._parameters  # the same Parameter objects, in the same order
    new._buffers = m._buffers
    new._non_persistent_buffers_set = m._non_persistent_buffers_set
    new._modules = m._modules
    for name in _HOOK_DICTS:
        if name in m.__dict__:
            setattr(new, name, m.__dict__[name])
    # attributes the user set on the old module (nn's own are the same in both)
    for name, value in m.__dict__.items():
        if name not in new.__dict__:
            new.__dict__[name] = value
    new.training = m.training
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()
    return new


def swap_rnns(model: nn.Module, backend: str = "auto", strategy: str = "auto") -> nn.Module:
    """Replace, in place, every ``nn.LSTM``, ``nn.RNN``, ``nn.GRU``, ``nn.LSTMCell``, ``nn.RNNCell`` and ``nn.GRUCell``
    inside ``model`` (the model itself included) by ``fusedrnn.LSTM`` / ``RNN`` / ``GRU`` / ``LSTMCell`` / ``RNNCell`` /
    ``GRUCell`` with the same
    configuration, changing nothing but the kernels:

    - the new module holds the old module's **Parameter objects** (not copies): tied weights, optimizers
      built before the swap, parameter hooks, ``requires_grad``, device and dtype are kept;
    - no random number is drawn (the new modules are built on the meta device), so a seeded program's
      dropout masks and shuffles are those it draws without the swap;
    - a module used in several places is replaced by one new module, used in the same places;
    - the module's forward / backward / state_dict hooks, its train/eval mode and attributes the user set on
      it move over.

    Warns about modules it cannot swap (subclasses of the nn classes).

    Args:
        model: any nn.Module.
        backend, strategy: passed to the new modules. A strategy only the LSTM and GRU have ("persistent") is
            passed to those only; the RNNs get "auto" (their kernels have no persistent variant).
    Returns:
        The model (a new module when ``model`` itself was an nn.LSTM/RNN/cell; otherwise the same object).
        The old recurrent modules must not be used afterwards: their parameters now belong to the new ones.
    """

    check_backend(backend, strategy, STRATEGIES)
    if type(model) in SWAPPABLE:
        return _convert(model, backend, strategy)
    done: dict[int, nn.Module] = {}  # id(old module) -> its replacement, for modules used more than once
    warned: set[int] = set()
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) in SWAPPABLE:
                if id(child) not in done:
                    done[id(child)] = _convert(child, backend, strategy)
                parent._modules[name] = done[id(child)]
            elif id(child) in warned:
                continue
            elif isinstance(child, SWAPPABLE) and not isinstance(child, (LSTM, RNN, GRU, LSTMCell, RNNCell, GRUCell)):
                warned.add(id(child))
                warnings.warn(f"swap_rnns: {full} is a subclass of {type(child).__mro__[1].__name__}; "
                              "left as it is (its forward may differ)", stacklevel=2)
    return model
