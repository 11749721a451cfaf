"""Pure-PyTorch references of one layer and direction of each cell: the float64 test oracle and the
``backend="reference"`` path of the modules. Written for clarity, not speed; autograd does backward.

Dimensions: B batch, T steps, I input, H hidden, P projected hidden (P = H without proj_size).
``lengths`` (B,) int, optional: sequence b is active at step t iff t < lengths[b]; an inactive row keeps
its state and outputs zeros (the layout of a padded PackedSequence, longest first or not).
``resets`` (T, B) bool, optional: where resets[t, b] is set, row b's state entering step t is the zero state
(an episode restarts there; docs/MATH.md "Episode resets"); no gradient crosses such a step.
"""
from __future__ import annotations

import torch


def _bias(b_ih, b_hh):
    b = None
    for v in (b_ih, b_hh):
        if v is not None:
            b = v if b is None else b + v
    return b


def input_projection(x, w_ih, b_ih=None, b_hh=None):
    """Xp = x @ W_ih^T + b_ih + b_hh for all steps at once. x: (T, B, I) -> (T, B, G*H).

    The bias is the GEMM's own addend (``torch.addmm``: cuBLAS adds it in its epilogue, before rounding to the
    output dtype), not a second pass that reads and writes all of xp again."""
    b = _bias(b_ih, b_hh)
    x2 = x.reshape(-1, x.shape[-1])
    xp = torch.mm(x2, w_ih.t()) if b is None else torch.addmm(b, x2, w_ih.t())
    return xp.reshape(*x.shape[:-1], w_ih.shape[0])


def _active(lengths, t, like):
    """(B, 1) bool: the rows still active at step t; None without lengths (every row)."""
    if lengths is None:
        return None
    return (t < lengths).to(like.device).unsqueeze(1)


def _advance(act, new, old):
    """The states after one step: ``new`` on active rows, ``old`` on finished ones (``act`` from ``_active``)."""
    if act is None:
        return new
    return tuple(torch.where(act, n, o) for n, o in zip(new, old))


def restart(resets, t, states):
    """The states entering step t: zero on the rows whose sequence restarts at t (``resets`` (T, B) bool or None),
    unchanged elsewhere. ``masked_fill``: no gradient reaches the states a restart drops."""
    if resets is None:
        return states
    r = resets[t].to(states[0].device).unsqueeze(1)
    return tuple(s.masked_fill(r, 0) for s in states)


def _output(act, h_new):
    """One step's output: ``h_new`` on active rows, zeros on finished ones."""
    return h_new if act is None else torch.where(act, h_new, torch.zeros_like(h_new))


def lstm_layer_ref(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, lengths=None, resets=None):
    """One LSTM layer, one direction (forward in time).

    Args:
        x: (T, B, I); h0: (B, P); c0: (B, H); w_ih: (4H, I); w_hh: (4H, P); b_ih, b_hh: (4H,) or None;
        w_hr: (P, H) or None (proj_size); lengths: (B,) or None; resets: (T, B) bool or None.
    Returns:
        y (T, B, P), h_n (B, P), c_n (B, H).
    """
    # unbind, not xp[t]: the backward of each xp[t] would allocate a zero tensor of xp's full size (O(T^2))
    xs = input_projection(x, w_ih, b_ih, b_hh).unbind(0)
    h, c = h0, c0
    ys = []
    for t in range(x.shape[0]):
        h, c = restart(resets, t, (h, c))
        z = xs[t] + h @ w_hh.t()
        zi, zf, zg, zo = z.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        if w_hr is not None:
            h_new = h_new @ w_hr.t()
        act = _active(lengths, t, x)
        h, c = _advance(act, (h_new, c_new), (h, c))
        ys.append(_output(act, h_new))
    y = torch.stack(ys) if ys else x.new_zeros(0, x.shape[1], h0.shape[1])
    return y, h, c


def rnn_layer_ref(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", lengths=None, resets=None):
    """One Elman RNN layer, one direction. x: (T, B, I); h0: (B, H); resets (T, B) bool or None. Returns
    y (T, B, H), h_n (B, H)."""
    act_fn = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]
    xs = input_projection(x, w_ih, b_ih, b_hh).unbind(0)  # unbind: see lstm_layer_ref
    h = h0
    ys = []
    for t in range(x.shape[0]):
        (h,) = restart(resets, t, (h,))
        h_new = act_fn(xs[t] + h @ w_hh.t())
        act = _active(lengths, t, x)
        (h,) = _advance(act, (h_new,), (h,))
        ys.append(_output(act, h_new))
    y = torch.stack(ys) if ys else x.new_zeros(0, x.shape[1], h0.shape[1])
    return y, h


# The use-gate LSTM (gates N, i, f, V; docs/MATH.md): the test oracle and the backend="reference" path of
# models.UseGateLSTM.
def usegate_cell_ref(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_u=None, b_u=None):
    """One use-gate LSTM step. x: (B, I); h, c: (B, H); w_ih (4H, I), w_hh (4H, H) with rows N, i, f, V;
    w_u (H, H); biases (4H,) / (H,) or None. Returns (h', c')."""
    z = x @ w_ih.t() + h @ w_hh.t()
    for b in (b_ih, b_hh):
        if b is not None:
            z = z + b
    return _usegate_pointwise(z, c, w_u, b_u)


def _usegate_pointwise(z, c, w_u, b_u):
    zn, zi, zf, zv = z.chunk(4, dim=1)
    n, i, f, v = torch.tanh(zn), torch.sigmoid(zi), torch.sigmoid(zf), torch.sigmoid(zv)
    k = f * c
    a = k @ w_u.t()
    if b_u is not None:
        a = a + b_u
    u = torch.tanh(a)
    return u * v, k + n * i


def usegate_layer_ref(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_u=None, b_u=None, lengths=None, resets=None):
    """One use-gate LSTM layer, one direction (forward in time).

    Args:
        x: (T, B, I); h0, c0: (B, H); w_ih: (4H, I); w_hh: (4H, H) (rows N, i, f, V); b_ih, b_hh: (4H,) or None;
        w_u: (H, H); b_u: (H,) or None; lengths: (B,) or None (inactive rows keep state, output zeros);
        resets: (T, B) bool or None.
    Returns:
        y (T, B, H), h_n (B, H), c_n (B, H).
    """
    if w_u is None:
        raise TypeError("usegate_layer_ref: w_u (H, H) is required")
    xs = input_projection(x, w_ih, b_ih, b_hh).unbind(0)  # unbind: see lstm_layer_ref
    h, c = h0, c0
    ys = []
    for t in range(x.shape[0]):
        h, c = restart(resets, t, (h, c))
        h_new, c_new = _usegate_pointwise(xs[t] + h @ w_hh.t(), c, w_u, b_u)
        act = _active(lengths, t, x)
        h, c = _advance(act, (h_new, c_new), (h, c))
        ys.append(_output(act, h_new))
    y = torch.stack(ys) if ys else x.new_zeros(0, x.shape[1], h0.shape[1])
    return y, h, c


# The GRU (gates r, z, n stacked in W's rows in that order, exactly as torch.nn.GRU; docs/MATH.md). b_hn sits
# inside the reset gate's product, so only b_ih and the r, z blocks of b_hh can go into the input projection.
def gru_input_projection(x, w_ih, b_ih=None, b_hh=None):
    """Xp = x @ W_ih^T + b_ih + [b_hr, b_hz, 0] for all steps at once. x: (T, B, I) -> (T, B, 3H). b_hn is left
    out: it is added to the recurrent product inside the reset gate (``gru_layer_ref``)."""
    if b_hh is not None:
        H = b_hh.shape[0] // 3
        b_hh = torch.cat([b_hh[: 2 * H], b_hh.new_zeros(H)])
    return input_projection(x, w_ih, b_ih, b_hh)


def gru_pointwise(xp, hp, h, b_hn=None):
    """One GRU step from the input projection ``xp`` (B, 3H; ``gru_input_projection``), the recurrent product
    ``hp = h @ W_hh^T`` (B, 3H, no bias) and h_{t-1} (B, H). Returns (h_t, r, z, n, hn) with
    hn = hp_n + b_hn, the recurrent part of n's pre-activation that r multiplies."""
    xr, xz, xn = xp.chunk(3, dim=1)
    hr, hz, hn = hp.chunk(3, dim=1)
    if b_hn is not None:
        hn = hn + b_hn
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, r, z, n, hn


def gru_cell_ref(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step as torch.nn.GRUCell. x: (B, I); h: (B, H); w_ih (3H, I), w_hh (3H, H); biases (3H,) or None.
    Returns h'."""
    xp = gru_input_projection(x.unsqueeze(0), w_ih, b_ih, b_hh)[0]
    b_hn = None if b_hh is None else b_hh[2 * h.shape[1]:]
    return gru_pointwise(xp, h @ w_hh.t(), h, b_hn)[0]


def gru_layer_ref(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, resets=None):
    """One GRU layer, one direction (forward in time).

    Args:
        x: (T, B, I); h0: (B, H); w_ih: (3H, I); w_hh: (3H, H) (rows r, z, n); b_ih, b_hh: (3H,) or None;
        lengths: (B,) or None (inactive rows keep their state and output zeros); resets: (T, B) bool or None.
    Returns:
        y (T, B, H), h_n (B, H).
    """
    H = h0.shape[1]
    xs = gru_input_projection(x, w_ih, b_ih, b_hh).unbind(0)  # unbind: see lstm_layer_ref
    b_hn = None if b_hh is None else b_hh[2 * H:]
    h = h0
    ys = []
    for t in range(x.shape[0]):
        (h,) = restart(resets, t, (h,))
        h_new = gru_pointwise(xs[t], h @ w_hh.t(), h, b_hn)[0]
        act = _active(lengths, t, x)
        (h,) = _advance(act, (h_new,), (h,))
        ys.append(_output(act, h_new))
    y = torch.stack(ys) if ys else x.new_zeros(0, x.shape[1], H)
    return y, h
