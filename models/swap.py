"""Replace torch.nn recurrent modules inside a user's model by the fused ones, changing nothing but the kernels
(``swap_rnns``), and back (``unswap_rnns``).

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

_FUSED_OF = {nn.LSTM: LSTM, nn.RNN: RNN, nn.GRU: GRU, nn.LSTMCell: LSTMCell, nn.RNNCell: RNNCell, nn.GRUCell: GRUCell}
_NN_OF = {fused: torch_nn for torch_nn, fused in _FUSED_OF.items()}


def _config(m: nn.Module) -> dict:
    """The constructor arguments of a recurrent module of ``_FUSED_OF`` or ``_NN_OF`` (the same in both)."""
    cfg = dict(input_size=m.input_size, hidden_size=m.hidden_size, bias=m.bias)
    if isinstance(m, nn.RNNBase):
        cfg.update(num_layers=m.num_layers, batch_first=m.batch_first, dropout=m.dropout,
                   bidirectional=m.bidirectional)
        if m.mode == "LSTM":
            cfg["proj_size"] = m.proj_size
    if type(m) in (nn.RNN, RNN, nn.RNNCell, RNNCell):
        cfg["nonlinearity"] = m.nonlinearity
    return cfg


SWAPPABLE = tuple(_FUSED_OF)
# nn.Module's per-module hook state: shared with the new module (the same dict objects, so the handles the
# user holds still remove their hooks)
_HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook",
    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
)


def _convert(m: nn.Module, backend: str, strategy: str) -> nn.Module:
    cls = _FUSED_OF[type(m)]
    strat = strategy if strategy in PER_STEP_STRATEGIES or cls in (LSTM, LSTMCell, GRU, GRUCell) else "auto"
    # meta device: the constructor's reset_parameters() allocates nothing and draws no random number
    return _take_over(m, cls(**_config(m), device="meta", backend=backend, strategy=strat))


def _take_over(m: nn.Module, new: nn.Module, skip=()) -> nn.Module:
    """``new`` (built on the meta device) with ``m``'s Parameter objects, buffers, submodules, hooks, mode and
    the attributes set on ``m`` that ``new`` lacks, except those named in ``skip``."""
    if list(new._parameters) != list(m._parameters):
        raise RuntimeError(f"swap_rnns: parameters of {type(m).__name__} ({list(m._parameters)}) do not match "
                           f"{type(new).__name__}'s ({list(new._parameters)})")
    new._parameters = m._parameters  # the same Parameter objects, in the same order
    new._buffers = m._buffers
    new._non_persistent_buffers_set = m._non_persistent_buffers_set
    new._modules = m._modules
    for name in _HOOK_DICTS:
        if name in m.__dict__:
            setattr(new, name, m.__dict__[name])
    # attributes the user set on the old module (nn's own are the same in both)
    for name, value in m.__dict__.items():
        if name not in new.__dict__ and name not in skip:
            new.__dict__[name] = value
    new.training = m.training
    if isinstance(new, nn.RNNBase):
        new._init_flat_weights()
    return new


def _replace_all(model: nn.Module, convert, own: tuple, leave: tuple, why) -> nn.Module:
    """Replace, in place, every module of a type in ``own`` inside ``model`` (itself included) by
    ``convert(module)``, one replacement per module object; warn once about each other instance of ``leave``
    (``why(full name, module)``: the warning)."""
    if type(model) in own:
        return convert(model)
    done: dict[int, nn.Module] = {}  # id(old module) -> its replacement, for modules used more than once
    warned: set[int] = set()
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if type(child) in own:
                if id(child) not in done:
                    done[id(child)] = convert(child)
                parent._modules[name] = done[id(child)]
            elif isinstance(child, leave) and id(child) not in warned:
                warned.add(id(child))
                warnings.warn(why(f"{parent_name}.{name}" if parent_name else name, child), stacklevel=3)
    return model


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
    return _replace_all(model, lambda m: _convert(m, backend, strategy), SWAPPABLE, SWAPPABLE,
                        lambda full, m: f"swap_rnns: {full} is a subclass of {type(m).__mro__[1].__name__}; left "
                                        "as it is (its forward may differ)")


def unswap_rnns(model: nn.Module) -> nn.Module:
    """Undo ``swap_rnns``: replace, in place, every ``fusedrnn.LSTM`` / ``RNN`` / ``GRU`` / ``LSTMCell`` /
    ``RNNCell`` / ``GRUCell`` inside ``model`` (the model itself included) by the torch.nn module of the same
    configuration, holding the same Parameter objects, buffers, hooks, mode and user attributes (not
    ``backend`` / ``strategy``). For a whole-model checkpoint (``torch.save(model)``) or an export that must
    load or run where fusedrnn is not installed; ``swap_rnns`` swaps back. ``UseGateLSTM`` has no torch.nn
    counterpart: it is left as it is, with a warning.

    Returns the model (a new module when ``model`` itself was one of ours; otherwise the same object).
    """
    from .usegate import UseGateLSTM

    def convert(m):
        return _take_over(m, _NN_OF[type(m)](**_config(m), device="meta"), skip=("backend", "strategy"))

    return _replace_all(model, convert, tuple(_NN_OF), (UseGateLSTM,),
                        lambda full, m: f"unswap_rnns: {full} is a UseGateLSTM, which has no torch.nn counterpart; "
                                        "left as it is")
