"""Multi-head (block-diagonal) recurrences: ``num_heads=`` of ``LSTM``, ``GRU`` and ``RNN``.

The hidden state of H units is cut into NH heads of D = H / NH units, and each head's recurrent matrix sees only
its own head: the dense W_hh (G*H, H) of torch.nn is block-diagonal within every gate block. Only the blocks are
parameters: ``weight_hh_l{k}[_reverse]`` has shape (NH, G*D, D) (G = 4 LSTM, 3 GRU, 1 RNN), each head's rows
gate-major as nn's, and the dense equivalent is

    W[g*H + n*D + a, n*D + b] = weight_hh[n, g*D + a, b]        (zero outside the diagonal blocks)

(``heads_to_dense``; ``dense_to_heads`` is its inverse for block-diagonal matrices). Everything else (weight_ih,
the biases, layers, directions, dropout, packed input, h_0) is exactly nn's, so a module with heads computes what
torch.nn's module computes with the dense equivalent loaded.

Backends: "reference" runs the cell's PyTorch reference on the dense equivalent (autograd differentiates through
``heads_to_dense``); "triton" runs the per-head whole-sequence kernels of kernels/heads.py (every strategy: a
program owns one head of one batch tile for the whole sequence, so there is no per-step variant to choose).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._selfcheck import fused_ok
from .reference_op import run_reference
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def heads_to_dense(weight_hh: Tensor) -> Tensor:
    """The dense (G*H, H) recurrent matrix equivalent to per-head blocks ``weight_hh`` (NH, G*D, D):
    ``W[g*H + n*D + a, n*D + b] = weight_hh[n, g*D + a, b]``, zero elsewhere. Differentiable; the result loads
    into torch.nn's ``weight_hh_l{k}`` (with weight_ih and the biases unchanged)."""
    if not isinstance(weight_hh, Tensor) or weight_hh.dim() != 3 or weight_hh.shape[1] % max(weight_hh.shape[2], 1):
        shape = tuple(weight_hh.shape) if isinstance(weight_hh, Tensor) else type(weight_hh).__name__
        raise ValueError(f"heads_to_dense: weight_hh must have shape (num_heads, G*D, D), got {shape}")
    NH, GD, D = weight_hh.shape
    G = GD // D
    blocks = weight_hh.reshape(NH, G, D, D)
    idx = torch.arange(NH, device=weight_hh.device)
    dense = weight_hh.new_zeros(G, NH, D, NH, D)
    # advanced indices separated by a slice go first: dense[:, idx, :, idx, :] has shape (NH, G, D, D)
    dense[:, idx, :, idx, :] = blocks
    return dense.reshape(G * NH * D, NH * D)


def diagonal_blocks(weight: Tensor, num_heads: int) -> Tensor:
    """The diagonal blocks (NH, G*D, D) of a dense (G*H, H) matrix, whatever lies off them (e.g. the dense
    equivalent's gradient in the heads' layout); ``dense_to_heads`` checks that nothing does."""
    H = weight.shape[1]
    G, D = weight.shape[0] // H, H // num_heads
    idx = torch.arange(num_heads, device=weight.device)
    return weight.reshape(G, num_heads, D, num_heads, D)[:, idx, :, idx, :].reshape(num_heads, G * D, D)


def dense_to_heads(weight: Tensor, num_heads: int) -> Tensor:
    """The per-head blocks (NH, G*D, D) of a dense block-diagonal recurrent matrix ``weight`` (G*H, H), the
    inverse of ``heads_to_dense``. ValueError when the shape does not fit ``num_heads`` or an entry outside the
    diagonal blocks is not zero (the matrix is not a ``num_heads``-head recurrence)."""
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] == 0 or weight.shape[0] % weight.shape[1]:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"dense_to_heads: weight must have shape (G*H, H), got {shape}")
    H = weight.shape[1]
    if not isinstance(num_heads, int) or num_heads < 1 or H % num_heads:
        raise ValueError(f"dense_to_heads: num_heads must be a positive divisor of H={H}, got {num_heads!r}")
    G, NH, D = weight.shape[0] // H, num_heads, H // num_heads
    w5 = weight.reshape(G, NH, D, NH, D)
    idx = torch.arange(NH, device=weight.device)
    off = w5.clone()
    off[:, idx, :, idx, :] = 0
    if bool((off != 0).any()):
        g, n, a, m, b = (int(i) for i in (off != 0).nonzero()[0])
        raise ValueError(f"dense_to_heads: weight is not block-diagonal with {NH} heads: entry "
                         f"[{g * H + n * D + a}, {m * D + b}] (gate {g}, head {n}'s row, head {m}'s column) is "
                         f"{off[g, n, a, m, b].item()!r}")
    return diagonal_blocks(weight, NH).contiguous()


def check_num_heads(num_heads, hidden_size: int, proj_size: int = 0) -> int:
    """ValueError unless ``num_heads`` is a positive int dividing ``hidden_size`` (and, above 1, without
    proj_size)."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if num_heads > 1 and proj_size:
        raise ValueError(f"proj_size ({proj_size}) is not supported with num_heads > 1 (a projection mixes the "
                         "heads)")
    return num_heads


def setup_heads(module: nn.RNNBase, num_heads: int) -> None:
    """Replace every ``weight_hh_l{k}[_reverse]`` of a freshly built module by per-head blocks (NH, G*D, D),
    initialised as nn initialises every weight: uniform in +-1/sqrt(hidden_size). Parameter order (and so
    the state_dict's) is unchanged."""
    H, NH = module.hidden_size, num_heads
    D = H // NH
    G = GATES[module.mode.lower()]
    stdv = 1.0 / math.sqrt(H) if H > 0 else 0.0
    for names in module._all_weights:
        name = names[1]
        old = getattr(module, name)
        w = nn.Parameter(torch.empty(NH, G * D, D, device=old.device, dtype=old.dtype))
        with torch.no_grad():
            nn.init.uniform_(w, -stdv, stdv)
        setattr(module, name, w)  # nn.RNNBase.__setattr__ keeps _flat_weights in step


def run_heads_layer(cell: str, x, h0, c0, weights, lengths, *, has_bias: bool, backend: str, strategy: str,
                    resets=None):
    """One layer and direction of a multi-head cell ("lstm", "gru", "rnn_tanh", "rnn_relu"). weights:
    [w_ih (G*H, I), w_hh (NH, G*D, D), (b_ih, b_hh)]; resets (T, B) bool or None (the state entering step t is
    zero on the rows set at t; one flag per row and step in the per-head kernels). Returns y (T, B, H), h_n (B, H),
    c_n (B, H) or None."""
    from ._base import check_triton_dtype, last_step, needs_grad, resolve_backend  # _base imports this module

    w_ih, w_hh = weights[0], weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if has_bias else (None, None)
    states = (h0, c0) if c0 is not None else (h0,)
    if (resolve_backend(backend, x.device) == "reference" or x.shape[1] == 0
            or not fused_ok(f"{cell} multi-head", _HEADS_RUN[len(states)], (x, *states, weights, lengths),
                            dict(cell=cell, has_bias=has_bias, strategy=strategy), resets)):
        return _reference(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, resets)
    check_triton_dtype(x.dtype)
    from .heads_ops import heads_layer

    y, c_n = heads_layer(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, needs_grad(x, h0, c0, *weights),
                         strategy, resets)
    return y, last_step(y, lengths), c_n


# run_heads_layer as the self-check calls a layer function: (x, *states, weights, lengths, **flags), flags with cell
def _run_h(x, h0, weights, lengths, cell, **kw):
    return run_heads_layer(cell, x, h0, None, weights, lengths, **kw)


def _run_hc(x, h0, c0, weights, lengths, cell, **kw):
    return run_heads_layer(cell, x, h0, c0, weights, lengths, **kw)


_HEADS_RUN = {1: _run_h, 2: _run_hc}


def _reference(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, resets=None):
    """The cell's PyTorch reference on the dense equivalent: (y, h_n, c_n or None)."""
    w = heads_to_dense(w_hh)
    if cell == "lstm":
        return run_reference("lstm", x, (h0, c0), (w_ih, w, b_ih, b_hh, None), lengths, resets=resets)
    y, h_n = run_reference(cell, x, (h0,), (w_ih, w, b_ih, b_hh), lengths, resets=resets)
    return y, h_n, None


def reference_layer(cell, x, h0, s0, w_ih, w_hh, b_ih, b_hh, lengths, resets=None):
    """``_reference`` with the outputs of the op ``fusedrnn::heads_layer``: (y, s_n (NS, B, H)); s0 (NS, B, H)."""
    if cell == "slstm":
        from ..kernels.slstm import slstm_layer_ref

        y, _, *s_n = slstm_layer_ref(x, h0, *s0.unbind(0), w_ih, w_hh, b_ih, b_hh, lengths, resets=resets)
        return y, torch.stack(s_n)
    c0 = s0[0] if s0.numel() else None
    y, _, c_n = _reference(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, resets)
    return y, (c_n.unsqueeze(0) if c_n is not None else s0)


__all__ = ["heads_to_dense", "dense_to_heads", "check_num_heads", "setup_heads", "run_heads_layer", "reference_layer"]
