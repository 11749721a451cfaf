"""Layer-normalised LSTM and GRU with zoneout, the cells of lmnt-com/haste's ``LayerNormLSTM`` / ``LayerNormGRU``
(the equations: docs/MATH.md, "LayerNorm LSTM and LayerNorm GRU"; the reference: kernels/layernorm_ref.py), with
torch.nn's multi-layer, bidirectional, batch_first and PackedSequence interface.

Per layer and direction the parameters keep Haste's names (with nn's ``_l{k}`` / ``_reverse`` suffixes), shapes,
gate order and initialisation, so a Haste checkpoint converts by renaming (``haste_state_dict``):

- LSTM (gates i, g, f, o): ``kernel`` (I, 4H), ``recurrent_kernel`` (H, 4H), ``bias`` (4H,), ``gamma`` (2, 4H),
  ``gamma_h`` (H,), ``beta_h`` (H,).
- GRU (gates z, r, g): ``kernel`` (I, 3H), ``recurrent_kernel`` (H, 3H), ``bias`` (3H,), ``recurrent_bias`` (3H,),
  ``gamma`` (2, 3H).

Differences from Haste: ``dropout`` is torch.nn's (on the outputs of every layer but the last, in training), not
Haste's DropConnect on the recurrent matrix; zoneout masks are drawn in training only (Haste also draws one, unused,
in eval); with a PackedSequence a finished row keeps its states and outputs zeros, as torch.nn does.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from ..kernels.layernorm_ref import ln_input_projection
from ._base import STRATEGIES, FusedRNNBase, check_triton_dtype, last_step, needs_grad, resolve_backend
from ._selfcheck import fused_ok
from .reference_op import run_reference

_LSTM_NAMES = ("kernel", "recurrent_kernel", "bias", "gamma", "gamma_h", "beta_h")
_GRU_NAMES = ("kernel", "recurrent_kernel", "bias", "recurrent_bias", "gamma")
_BIASES = ("bias", "recurrent_bias")


def _zoneout_arg(zmask):
    """The fused op's two zoneout arguments from the reference's one: (mask tensor or None, keep weight m)."""
    if zmask is None:
        return None, 1.0
    return (None, float(zmask)) if isinstance(zmask, float) else (zmask, 1.0)


def run_lnlstm_layer(x, h0, c0, weights, lengths, zmask, *, has_bias, backend, strategy):
    """One LayerNorm LSTM layer and direction. weights: [kernel, recurrent_kernel, (bias), gamma, gamma_h, beta_h];
    zmask as in kernels/layernorm_ref.py. Returns y (T, B, H), h_n, c_n (B, H)."""
    kernel, rk = weights[0], weights[1]
    bias = weights[2] if has_bias else None
    gamma, gamma_h, beta_h = weights[-3:]
    xp = ln_input_projection(x, kernel, gamma[0], bias)
    mask, keep = _zoneout_arg(zmask)
    flags = dict(has_bias=has_bias, strategy=strategy)
    if (resolve_backend(backend, x.device) == "reference" or x.shape[1] == 0
            or not fused_ok("LayerNormLSTM", _lnlstm_unmasked, (x, h0, c0, weights, lengths), flags)):
        return run_reference("lnlstm", xp, (h0, c0), (rk, gamma[1], gamma_h, beta_h, mask), lengths, keep)
    check_triton_dtype(x.dtype)
    from . import ops

    store = needs_grad(xp, h0, c0, rk, gamma, gamma_h, beta_h)
    y, c_n, *_ = ops.lnlstm_layer(xp, h0, c0, rk, gamma[1], gamma_h, beta_h, mask, keep, lengths, store, strategy)
    return y, last_step(y, lengths), c_n


def run_lngru_layer(x, h0, weights, lengths, zmask, *, has_bias, backend, strategy):
    """One LayerNorm GRU layer and direction. weights: [kernel, recurrent_kernel, (bias, recurrent_bias), gamma].
    Returns y (T, B, H), h_n (B, H), None."""
    kernel, rk, gamma = weights[0], weights[1], weights[-1]
    bias, rbias = (weights[2], weights[3]) if has_bias else (None, None)
    xp = ln_input_projection(x, kernel, gamma[0], bias)
    mask, keep = _zoneout_arg(zmask)
    flags = dict(has_bias=has_bias, strategy=strategy)
    if (resolve_backend(backend, x.device) == "reference" or x.shape[1] == 0
            or not fused_ok("LayerNormGRU", _lngru_unmasked, (x, h0, weights, lengths), flags)):
        return (*run_reference("lngru", xp, (h0,), (rk, gamma[1], rbias, mask), lengths, keep), None)
    check_triton_dtype(x.dtype)
    from . import ops

    store = needs_grad(xp, h0, rk, gamma, rbias)
    y, *_ = ops.lngru_layer(xp, h0, rk, gamma[1], rbias, mask, keep, lengths, store)
    return y, last_step(y, lengths), None


# The self-check on first use (models/_selfcheck.py) runs a layer without zoneout: the configuration it checks is
# the kernels' (cell, dtype, device, batch, weights, lengths); the zoneout mask is one more input of the same
# kernels, checked against the reference by tests/test_layernorm.py.
def _lnlstm_unmasked(x, h0, c0, weights, lengths, **kw):
    return run_lnlstm_layer(x, h0, c0, weights, lengths, None, **kw)


def _lngru_unmasked(x, h0, weights, lengths, **kw):
    return run_lngru_layer(x, h0, weights, lengths, None, **kw)


class _LayerNormRNN(FusedRNNBase):
    """What the two LayerNorm modules share: Haste's parameters in place of nn's, their initialisation, zoneout."""

    _gates = 4
    _names = _LSTM_NAMES
    _mode = "LSTM"
    _supports_resets = False  # no reset mask in the LayerNorm kernels yet: resets= is a NotImplementedError

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, zoneout: float = 0.0,
                 device=None, dtype=None, *, backend: str = "auto", strategy: str = "auto"):
        name = type(self).__name__
        if not isinstance(zoneout, (int, float)) or isinstance(zoneout, bool) or not 0.0 <= zoneout <= 1.0:
            raise ValueError(f"{name}: zoneout must be a number in [0, 1], got {zoneout!r}")
        self._haste_params = False  # reset_parameters waits until Haste's parameters exist
        super().__init__(self._mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, backend=backend, strategy=strategy)
        self.zoneout = float(zoneout)
        for n in self._flat_weights_names:  # nn's parameters, replaced by Haste's below
            delattr(self, n)
        factory = {"device": device, "dtype": dtype}
        GH, H = self._gates * hidden_size, hidden_size
        dirs = 2 if bidirectional else 1
        shapes = dict(recurrent_kernel=(H, GH), bias=(GH,), recurrent_bias=(GH,), gamma=(2, GH), gamma_h=(H,),
                      beta_h=(H,))
        self._all_weights = []
        for layer in range(num_layers):
            for d in range(dirs):
                suffix = f"_l{layer}" + ("_reverse" if d == 1 else "")
                names = []
                for n in self._names:
                    if n in _BIASES and not bias:
                        continue
                    shape = (input_size if layer == 0 else H * dirs, GH) if n == "kernel" else shapes[n]
                    setattr(self, n + suffix, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(n + suffix)
                self._all_weights.append(names)
        self._flat_weights_names = [n for names in self._all_weights for n in names]
        self._init_flat_weights()
        self._haste_params = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Haste's initialisation, per layer and direction: each gate block of ``kernel`` Xavier-uniform, each of
        ``recurrent_kernel`` orthogonal (in Haste's order, so the same seed gives Haste's values), biases zero (the
        LSTM's forget block ``forget_bias``), gains one, ``beta_h`` zero."""
        if not self._haste_params:
            return
        H = self.hidden_size
        with torch.no_grad():
            for names in self._all_weights:
                p = {n.rsplit("_l", 1)[0]: getattr(self, n) for n in names}
                for g in range(self._gates):
                    nn.init.xavier_uniform_(p["kernel"][:, g * H:(g + 1) * H])
                    nn.init.orthogonal_(p["recurrent_kernel"][:, g * H:(g + 1) * H])
                for n in _BIASES:
                    if n in p:
                        nn.init.zeros_(p[n])
                if "bias" in p and self._gates == 4:
                    nn.init.constant_(p["bias"][2 * H:3 * H], self.forget_bias)
                nn.init.ones_(p["gamma"])
                if "gamma_h" in p:
                    nn.init.ones_(p["gamma_h"])
                    nn.init.zeros_(p["beta_h"])

    def flatten_parameters(self) -> None:
        """No-op: these are not cuDNN's weights; the kernels read each parameter where it is."""
        return None

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", zoneout={self.zoneout}" if self.zoneout else "")

    def _zmask(self, x):
        """The zoneout argument of one layer and direction (kernels/layernorm_ref.py): a fresh mask in training,
        drawn as Haste draws it (``bernoulli_(1 - zoneout)`` on an (T, B, H) tensor of the input's dtype and device,
        torch's default generator), its expectation 1 - zoneout in eval, None without zoneout."""
        if not self.zoneout:
            return None
        if not self.training:
            return 1.0 - self.zoneout
        return x.new_empty(x.shape[0], x.shape[1], self.hidden_size).bernoulli_(1.0 - self.zoneout)


class LayerNormLSTM(_LayerNormRNN):
    """Multi-layer layer-normalised LSTM with zoneout: Haste's ``LayerNormLSTM`` cell (module docstring) with
    torch.nn.LSTM's interface.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype: as
            ``torch.nn.LSTM`` (no proj_size); ``bias=False`` drops ``bias`` (the layer norms keep their gains and
            ``beta_h``).
        zoneout: probability p that a unit of h keeps its previous value at a step (training; eval uses the
            expectation ``p * h_{t-1} + (1 - p) * h~``), as Haste.
        forget_bias: initial value of the forget gate's bias block (Haste's default 1.0).
        backend: "auto" (fused Triton kernels on CUDA, the PyTorch reference elsewhere), "triton" or "reference".
        strategy: "auto" or "per_step" (both run per_step), or "persistent": the forward in one launch per layer and
            direction (kernels/layernorm_persistent.py) where it fits (CUDA: B <= 16, the plain persistent LSTM's
            dtypes and H), else per_step with the reason at DEBUG level; the backward is per_step.

    Inputs: ``input`` (T, B, I) / (B, T, I) with batch_first / (T, I) unbatched / a PackedSequence, and optional
    ``(h_0, c_0)``, each (layers * directions, B, H). Returns ``output, (h_n, c_n)`` with nn.LSTM's shapes.
    Not an nn.LSTM: ``swap_rnns`` leaves it alone. ``haste_state_dict`` converts Haste's checkpoints.
    """

    _has_cell = True
    _autocast_kind = "gru"  # not on autocast's CPU lists: runs in the input's dtype there (CUDA: lower precision)
    _strategies = STRATEGIES

    def __init__(self, *args, forget_bias: float = 1.0, **kwargs):
        self.forget_bias = float(forget_bias)
        super().__init__(*args, **kwargs)

    def _layer(self, x, h0, c0, weights, lengths, resets=None):  # resets: always None (_supports_resets)
        return run_lnlstm_layer(x, h0, c0, weights, lengths, self._zmask(x), has_bias=self.bias,
                                backend=self.backend, strategy=self.strategy)


class LayerNormGRU(_LayerNormRNN):
    """Multi-layer layer-normalised GRU with zoneout: Haste's ``LayerNormGRU`` cell (module docstring) with
    torch.nn.GRU's interface. Arguments as ``LayerNormLSTM`` (no forget_bias); ``bias=False`` drops ``bias`` and
    ``recurrent_bias``. Inputs: ``input`` as nn.GRU, optional ``h_0`` (layers * directions, B, H). Returns
    ``output, h_n``."""

    _gates = 3
    _names = _GRU_NAMES
    _mode = "GRU"
    _autocast_kind = "gru"

    def _layer(self, x, h0, c0, weights, lengths, resets=None):  # resets: always None (_supports_resets)
        return run_lngru_layer(x, h0, weights, lengths, self._zmask(x), has_bias=self.bias, backend=self.backend,
                               strategy=self.strategy)


def haste_state_dict(state_dicts, bidirectional: bool = False) -> OrderedDict:
    """A ``LayerNormLSTM`` / ``LayerNormGRU`` state_dict from Haste's.

    Args:
        state_dicts: the ``state_dict()`` of one Haste ``LayerNormLSTM`` or ``LayerNormGRU`` (a one-layer,
            one-direction module), or a list of them in our layer order: layer 0, (layer 0 reverse,) layer 1, ...
            Haste's layers are one direction each; a stack of them (or two, run forwards and on the reversed
            input) is our ``num_layers`` (``bidirectional``) module.
        bidirectional: whether the list alternates forward and reverse directions.
    Returns:
        an OrderedDict for ``load_state_dict`` (the tensors themselves: Haste's layout is ours).

    ValueError when a dict is neither cell's set of names, the cells are mixed, or a bidirectional list has an odd
    length.
    """
    if isinstance(state_dicts, dict):
        state_dicts = [state_dicts]
    dirs = 2 if bidirectional else 1
    if len(state_dicts) % dirs:
        raise ValueError("haste_state_dict: a bidirectional list needs an even number of dicts, "
                         f"got {len(state_dicts)}")
    out = OrderedDict()
    kinds = set()
    for k, sd in enumerate(state_dicts):
        keys = set(sd)
        kind = next((names for names in (_LSTM_NAMES, _GRU_NAMES) if keys == set(names)), None)
        if kind is None:
            raise ValueError(f"haste_state_dict: dict {k} has keys {sorted(keys)}; expected Haste's LayerNormLSTM "
                             f"{list(_LSTM_NAMES)} or LayerNormGRU {list(_GRU_NAMES)}")
        kinds.add(kind)
        suffix = f"_l{k // dirs}" + ("_reverse" if k % dirs else "")
        for n in kind:
            out[n + suffix] = sd[n]
    if len(kinds) > 1:
        raise ValueError("haste_state_dict: the dicts mix LayerNormLSTM and LayerNormGRU layers")
    return out


__all__ = ["LayerNormLSTM", "LayerNormGRU", "haste_state_dict", "run_lnlstm_layer", "run_lngru_layer"]
