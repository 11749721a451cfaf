"""Shared forward of the single-step cell modules (LSTMCell, RNNCell, GRUCell): input/state checks as torch.nn's,
unbatched handling, autocast (models/_autocast.py), then one step of the layer function on a length-1 sequence.

The step runs through the layer function, so a cell has the layer's backends and its self-check on first
use (models/_selfcheck.py): no GPU has run the fused kernels yet, and ``backend="auto"`` runs them on CUDA."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from ._autocast import autocast_plan


def cell_forward(cell, name: str, input, hx, n_states: int, step, kind: str):
    """Run ``step(x (1, B, I), states [(B, H)] * n_states, weights) -> tuple of (B, H)`` with torch.nn's
    cell semantics. ``kind`` names the autocast rules the cell follows (models/_autocast.py: "lstm_cell",
    "rnn_cell", "gru_cell"). Returns the tuple (LSTMCell) or its only element (RNNCell, GRUCell)."""
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    is_batched = input.dim() == 2
    states = _given_states(name, hx, n_states, is_batched)
    if not is_batched:
        input = input.unsqueeze(0)
    if input.shape[1] != cell.input_size:
        raise RuntimeError(
            f"input has inconsistent input_size: got {input.shape[1]} expected {cell.input_size}"
        )
    states = _batched_states(cell, name, input, states, n_states, is_batched)
    weights = [cell.weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if cell.bias else [])
    plan = autocast_plan(kind, input.device, input.dtype, state_dtype=states[-1].dtype)  # h; LSTMCell: c
    ac = plan is not None
    if ac and plan.run is not None:
        input = input.to(plan.run)
        states = tuple(s.to(plan.run) for s in states)
        weights = [w.to(plan.run) for w in weights]
    else:
        _check_dtypes(cell, name, input, states, weights)
    with torch.autocast(input.device.type, enabled=False) if ac else nullcontext():
        out = step(input.unsqueeze(0), states, weights)
    if ac and plan.h is not None:
        out = tuple(o.to(plan.h) for o in out)
    if not is_batched:
        out = tuple(o.squeeze(0) for o in out)
    return out if n_states > 1 else out[0]


def _given_states(name: str, hx, n_states: int, is_batched: bool):
    """``hx`` as a tuple of ``n_states`` tensors of 1 or 2 dimensions (None without ``hx``), read and checked
    as torch.nn's cells do, with their exception types."""
    if hx is None:
        return None
    if n_states == 1:
        states = (hx,)
    elif not is_batched:
        # torch.nn.LSTMCell on unbatched input checks every element of hx, then reads hx[0] and hx[1]: one
        # (2, H) tensor works too
        for i, s in enumerate(hx):
            _check_state_dim(name, f"hx[{i}]", s)
        return hx[0], hx[1]
    else:
        # batched, torch.nn.LSTMCell takes a tuple (or list) of exactly two tensors
        if not isinstance(hx, (tuple, list)):
            raise TypeError(f"{name}: hx must be a tuple of Tensors (h_0, c_0), not {type(hx).__name__}")
        if len(hx) != n_states:
            raise RuntimeError(f"{name} expects two hidden states (h_0, c_0), got {len(hx)}")
        states = tuple(hx)
    for i, s in enumerate(states):
        _check_state_dim(name, f"hx[{i}]" if n_states > 1 else "hidden", s)
    return states


def _check_state_dim(name: str, what: str, s) -> None:
    if s.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.dim()}D instead")


def _batched_states(cell, name: str, input, states, n_states: int, is_batched: bool):
    """The states as (B, H) tensors matching the (batched) ``input``: zeros without ``states``."""
    B = input.shape[0]
    if states is None:
        z = torch.zeros(B, cell.hidden_size, dtype=input.dtype, device=input.device)
        return (z,) * n_states
    states = tuple(s if is_batched else s.unsqueeze(0) for s in states)
    for i, s in enumerate(states):
        # torch.nn's checks and wording, batch size first
        if s.shape[0] != B:
            raise RuntimeError(f"Input batch size {B} doesn't match hidden{i} batch size {s.shape[0]}")
        if s.shape[1] != cell.hidden_size:
            raise RuntimeError(
                f"hidden{i} has inconsistent hidden_size: got {s.shape[1]}, expected {cell.hidden_size}"
            )
        if s.device != input.device:
            raise RuntimeError(f"{name}: input on {input.device} but hidden state {i} on {s.device}")
    return states


def _check_dtypes(cell, name: str, input, states, weights) -> None:
    """Outside autocast every state and parameter must have the input's dtype."""
    for i, s in enumerate(states):
        if s.dtype != input.dtype:
            raise RuntimeError(f"{name}: hidden state {i} has dtype {s.dtype}, expected {input.dtype}")
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if cell.bias else [])
    for n, w in zip(names, weights):
        if w.dtype != input.dtype:
            raise RuntimeError(f"{name}: input dtype ({input.dtype}) does not match {n} dtype ({w.dtype})")
