"""The sLSTM cell of xLSTM (Beck et al., 2024) as FlashRNN implements it: the float64 reference of one layer and
direction (``backend="reference"`` of ``models.SLSTM`` and the oracle of the per-head kernels' ``"slstm"`` cell in
kernels/heads.py). Equations and the vector-Jacobian product: docs/MATH.md "sLSTM".

Gates (i, f, z, o), stacked like nn's: row g*H + n*D + d of W_ih and of the biases; the recurrent matrix is per
head, w_hh (NH, 4*D, D) with head n's rows g*D + d (kernels/heads.py). States (h, c, n, m), each (B, H).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import _active, _advance, _output, input_projection, restart


def heads_product(h, w_hh):
    """h_{t-1} @ W^T for the block-diagonal W of per-head blocks w_hh (NH, G*D, D), in nn's gate-major column
    order (B, G*H): column g*H + n*D + a is sum_b w_hh[n, g*D + a, b] h[:, n*D + b]."""
    NH, GD, D = w_hh.shape
    B = h.shape[0]
    rec = torch.einsum("bnk,nek->bne", h.reshape(B, NH, D), w_hh)  # (B, NH, G*D)
    return rec.reshape(B, NH, GD // D, D).transpose(1, 2).reshape(B, -1)


def slstm_pointwise(raw, c, n, m, detach_m=True):
    """One sLSTM step from the pre-activations raw (B, 4H) = [i~, f~, z~, o~] and the states of step t-1.
    Returns (h, c, n, m) of step t. The stabiliser m (of step t-1 and of step t) is detached (a constant for
    autograd: m_0 gets no gradient) unless ``detach_m`` is False. The min(1, .) of the gates and the max(., 1) of
    n are clamps, whose gradient passes at equality (i_t = 1 and n_t = 1 are reached exactly, at every step where
    m_t = i~ and at the first step)."""
    ir, fr, zr, orr = raw.chunk(4, dim=1)
    if detach_m:
        m = m.detach()
    lfm = m + F.logsigmoid(fr)
    m_new = torch.where(n == 0, ir, torch.maximum(ir, lfm))
    if detach_m:
        m_new = m_new.detach()
    i = torch.exp(ir - m_new).clamp(max=1.0)
    f = torch.exp(lfm - m_new).clamp(max=1.0)
    c_new = f * c + i * torch.tanh(zr)
    n_new = (f * n + i).clamp(min=1.0)
    h_new = torch.sigmoid(orr) * c_new / n_new
    return h_new, c_new, n_new, m_new


def slstm_layer_ref(x, h0, c0, n0, m0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, detach_m=True, resets=None):
    """One sLSTM layer, one direction (forward in time).

    Args:
        x: (T, B, I); h0, c0, n0, m0: (B, H); w_ih: (4H, I); w_hh: (NH, 4D, D); b_ih, b_hh: (4H,) or None;
        lengths: (B,) or None (a finished row keeps its states and outputs zeros); resets: (T, B) bool or None
            (h, c, n, m all restart from zero where set).
    Returns:
        y (T, B, H) and the final states h_n, c_n, n_n, m_n (B, H).
    """
    xs = input_projection(x, w_ih, b_ih, b_hh).unbind(0)
    states = (h0, c0, n0, m0)
    ys = []
    for t in range(x.shape[0]):
        states = restart(resets, t, states)
        new = slstm_pointwise(xs[t] + heads_product(states[0], w_hh), *states[1:], detach_m=detach_m)
        act = _active(lengths, t, x)
        states = _advance(act, new, states)
        ys.append(_output(act, new[0]))
    return (torch.stack(ys), *states)
