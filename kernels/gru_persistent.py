"""Persistent GRU kernels: placeholder until the whole-sequence kernels land. ``plan`` always chooses
per_step (None), so ``kernels.gru`` runs its per-step kernels for every strategy."""
from __future__ import annotations

from .lstm_persistent import Fallback, log_fallback

__all__ = ["Fallback", "log_fallback", "plan"]


def plan(strategy, *, device, dtype, H, B, kind="fwd"):
    """No persistent GRU kernel yet: per_step (None)."""
    return None
