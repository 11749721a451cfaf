"""Pure-PyTorch references of the layer-normalised LSTM and GRU with zoneout, the cells of lmnt-com/haste's
``LayerNormLSTM`` / ``LayerNormGRU`` (docs/MATH.md, "LayerNorm LSTM / GRU"): the float64 oracle of the tests,
the ``backend="reference"`` path of ``models.LayerNormLSTM`` / ``LayerNormGRU``, and the documented backward
(``*_recurrence_vjp``) whose steps the fused kernels follow.

Parameters keep Haste's layout: ``kernel`` (I, G*H) and ``recurrent_kernel`` (H, G*H) multiply from the right
(``x @ kernel``), gate blocks along the columns, LSTM order i, g, f, o and GRU order z, r, g. ``gamma`` (2, G*H) holds
the gains of the input and the recurrent layer norms; the LSTM adds ``gamma_h``, ``beta_h`` (H,), the layer norm of
the cell state, the GRU a ``recurrent_bias`` (G*H,) added after the recurrent layer norm.

Zoneout (``zmask``): None (none), a (T, B, H) tensor m (training: 1 keeps the new state, 0 the previous one, drawn
by the module) or a float m = 1 - p (evaluation: the expectation); ``h_t = h_{t-1} + m * (h~_t - h_{t-1})``.
``lengths`` (B,), optional: row b is active at step t iff t < lengths[b]; a finished row keeps its states and
outputs zeros.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LN_EPS = 1e-5  # Haste's (and F.layer_norm's default) epsilon, added to the biased variance


def layer_norm_rows(a, gamma, beta=None):
    """Layer norm over the last dimension: ``(a - mean) * rstd * gamma (+ beta)`` with the biased variance.
    Returns (y, a_hat, rstd) with a_hat = (a - mean) * rstd and rstd (rows, 1)."""
    mean = a.mean(-1, keepdim=True)
    d = a - mean
    rstd = torch.rsqrt((d * d).mean(-1, keepdim=True) + LN_EPS)
    a_hat = d * rstd
    y = a_hat * gamma
    return (y if beta is None else y + beta), a_hat, rstd


def layer_norm_vjp(dy, a_hat, rstd, gamma):
    """Gradient of ``layer_norm_rows``'s input from that of its output: with g = dy * gamma,
    ``rstd * (g - mean(g) - a_hat * mean(g * a_hat))``, the two means over the row."""
    g = dy * gamma
    return rstd * (g - g.mean(-1, keepdim=True) - a_hat * (g * a_hat).mean(-1, keepdim=True))


def ln_input_projection(x, kernel, gamma_x, bias=None):
    """``LN(x @ kernel) * gamma_x (+ bias)`` for all steps at once. x (T, B, I) -> (T, B, G*H). torch's layer norm
    (its statistics in fp32 for 16-bit data; the same formula as ``layer_norm_rows``)."""
    a = x @ kernel
    xp = F.layer_norm(a, (a.shape[-1],), weight=gamma_x, eps=LN_EPS)
    return xp if bias is None else xp + bias


def _mask_at(zmask, t):
    return zmask if isinstance(zmask, float) else zmask[t]


def _zoneout(zmask, t, h_new, h_prev):
    return h_new if zmask is None else h_prev + _mask_at(zmask, t) * (h_new - h_prev)


def _active(lengths, t, like):
    return None if lengths is None else (t < lengths).to(like.device).unsqueeze(1)


def _keep(act, new, old):
    return new if act is None else torch.where(act, new, old)


def _out(act, h):
    return h if act is None else torch.where(act, h, torch.zeros_like(h))


# ------------------------------------------------------------------------------------------- LayerNorm LSTM
def lnlstm_step(xp_t, h, c, recurrent_kernel, gamma_r, gamma_h, beta_h):
    """One step before zoneout: returns (h~, c_t, gates (i, g, f, o), a_hat, rstd_a, c_hat, rstd_c)."""
    _, a_hat, rstd_a = layer_norm_rows(h @ recurrent_kernel, gamma_r)
    v = a_hat * gamma_r + xp_t
    vi, vg, vf, vo = v.chunk(4, dim=-1)
    i, g, f, o = torch.sigmoid(vi), torch.tanh(vg), torch.sigmoid(vf), torch.sigmoid(vo)
    c_new = f * c + i * g
    n, c_hat, rstd_c = layer_norm_rows(c_new, gamma_h, beta_h)
    return o * torch.tanh(n), c_new, (i, g, f, o), a_hat, rstd_a, c_hat, rstd_c


def lnlstm_recurrence_ref(xp, h0, c0, recurrent_kernel, gamma_r, gamma_h, beta_h, zmask=None, lengths=None):
    """The recurrence of one LayerNorm LSTM layer and direction from its input projection ``xp`` (T, B, 4H;
    ``ln_input_projection`` with the bias). h0, c0 (B, H); recurrent_kernel (H, 4H); gamma_r (4H,) (Haste's
    gamma[1]); gamma_h, beta_h (H,). Returns y (T, B, H), h_n, c_n (B, H)."""
    h, c = h0, c0
    ys = []
    for t in range(xp.shape[0]):
        h_new, c_new = lnlstm_step(xp[t], h, c, recurrent_kernel, gamma_r, gamma_h, beta_h)[:2]
        h_new = _zoneout(zmask, t, h_new, h)
        act = _active(lengths, t, xp)
        h, c = _keep(act, h_new, h), _keep(act, c_new, c)
        ys.append(_out(act, h_new))
    return torch.stack(ys), h, c


def lnlstm_layer_ref(x, h0, c0, kernel, recurrent_kernel, bias, gamma, gamma_h, beta_h, zmask=None, lengths=None):
    """One LayerNorm LSTM layer and direction in Haste's parameter layout (module docstring): x (T, B, I),
    kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,) or None, gamma (2, 4H), gamma_h, beta_h (H,).
    Returns y (T, B, H), h_n, c_n (B, H)."""
    xp = ln_input_projection(x, kernel, gamma[0], bias)
    return lnlstm_recurrence_ref(xp, h0, c0, recurrent_kernel, gamma[1], gamma_h, beta_h, zmask, lengths)


def _h_prev_seq(h0, y, lengths):
    """h_{t-1} of every step (T, B, H), zero where the row has finished (its gradients are zero there, and a
    zero times a non-finite output would poison the weight gradient)."""
    h_prev = torch.cat([h0.unsqueeze(0), y[:-1]], 0)
    if lengths is not None:
        t = torch.arange(y.shape[0], device=y.device).unsqueeze(1)
        h_prev = h_prev.masked_fill((t >= lengths.to(y.device, t.dtype).unsqueeze(0)).unsqueeze(2), 0)
    return h_prev


def recurrent_grads(da, h0, y, recurrent_kernel, q0, lengths=None):
    """After the backward loop, for either cell: dR = sum_t h_{t-1}^T @ da_t (H, G*H) and
    dh0 = q0 + da_0 @ R^T (q0: the direct part of dh0, zoneout's and the GRU's; None for zero)."""
    T, B, GH = da.shape
    h_prev = _h_prev_seq(h0, y, lengths).to(da.dtype)
    d_r = h_prev.reshape(T * B, -1).t() @ da.reshape(T * B, GH)
    dh0 = da[0] @ recurrent_kernel.to(da.dtype).t()
    return d_r, (dh0 if q0 is None else dh0 + q0.to(dh0.dtype))


def lnlstm_cell_state_norm(c_seq):
    """(c_hat, rstd_c) of every saved cell state (T, B, H), as the forward normalised it."""
    return layer_norm_rows(c_seq, 1.0)[1:]


def lnlstm_recurrence_vjp(dy, dc_n, xp, h0, c0, recurrent_kernel, gamma_r, gamma_h, beta_h, zmask=None,
                          lengths=None):
    """The documented backward of ``lnlstm_recurrence_ref`` (docs/MATH.md), step by step. ``dy`` (T, B, H) is the
    gradient of y with that of h_n already added at each row's last step; dc_n (B, H).
    Returns (dxp, dh0, dc0, d_recurrent_kernel, dgamma_r, dgamma_h, dbeta_h)."""
    T, B, H = dy.shape
    fwd, h, c = [], h0, c0
    for t in range(T):  # the forward again, keeping what each backward step reads
        s = lnlstm_step(xp[t], h, c, recurrent_kernel, gamma_r, gamma_h, beta_h)
        fwd.append((h, c) + s)
        act = _active(lengths, t, xp)
        h, c = _keep(act, _zoneout(zmask, t, s[0], h), h), _keep(act, s[1], c)
    dv, da, dn = [None] * T, [None] * T, [None] * T
    q = torch.zeros_like(h0)
    dc = dc_n
    da_next = None
    for t in range(T - 1, -1, -1):
        h_prev, c_prev, _, c_t, (i, g, f, o), a_hat, rstd_a, c_hat, rstd_c = fwd[t]
        dh = dy[t] + q if da_next is None else dy[t] + q + da_next @ recurrent_kernel.t()
        m = None if zmask is None else _mask_at(zmask, t)
        dht = dh if m is None else m * dh
        tn = torch.tanh(c_hat * gamma_h + beta_h)
        do = dht * tn
        dn_t = dht * o * (1 - tn * tn)
        dct = dc + layer_norm_vjp(dn_t, c_hat, rstd_c, gamma_h)
        dv_t = torch.cat([dct * g * i * (1 - i), dct * i * (1 - g * g), dct * c_prev * f * (1 - f),
                          do * o * (1 - o)], -1)
        da_t = layer_norm_vjp(dv_t, a_hat, rstd_a, gamma_r)
        q_t = torch.zeros_like(dh) if m is None else (1 - m) * dh
        dc_prev = dct * f
        act = _active(lengths, t, xp)
        if act is not None:
            dv_t, da_t, dn_t = (torch.where(act, v, 0.0) for v in (dv_t, da_t, dn_t))
            q_t, dc_prev = torch.where(act, q_t, 0.0), torch.where(act, dc_prev, dc)
        dv[t], da[t], dn[t] = dv_t, da_t, dn_t
        q, dc, da_next = q_t, dc_prev, da_t
    dv, da, dn = torch.stack(dv), torch.stack(da), torch.stack(dn)
    y = torch.stack([_out(_active(lengths, t, xp), _zoneout(zmask, t, fwd[t][2], fwd[t][0])) for t in range(T)])
    d_r, dh0 = recurrent_grads(da, h0, y, recurrent_kernel, q, lengths)
    a_hat = torch.stack([s[5] for s in fwd])
    c_hat = torch.stack([s[7] for s in fwd])
    return (dv, dh0, dc, d_r, (dv * a_hat).sum((0, 1)), (dn * c_hat).sum((0, 1)), dn.sum((0, 1)))


# -------------------------------------------------------------------------------------------- LayerNorm GRU
def lngru_step(xp_t, h, recurrent_kernel, gamma_r, recurrent_bias):
    """One step before zoneout: returns (h~, z, r, g, rh_g, a_hat, rstd) with rh = LN(h R) gamma_r + b_r."""
    rh, a_hat, rstd = layer_norm_rows(h @ recurrent_kernel, gamma_r)
    if recurrent_bias is not None:
        rh = rh + recurrent_bias
    xz, xr, xg = xp_t.chunk(3, dim=-1)
    hz, hr, hg = rh.chunk(3, dim=-1)
    z = torch.sigmoid(xz + hz)
    r = torch.sigmoid(xr + hr)
    g = torch.tanh(xg + r * hg)
    return g + z * (h - g), z, r, g, hg, a_hat, rstd


def lngru_recurrence_ref(xp, h0, recurrent_kernel, gamma_r, recurrent_bias=None, zmask=None, lengths=None):
    """The recurrence of one LayerNorm GRU layer and direction from ``xp`` (T, B, 3H; ``ln_input_projection``
    with ``bias``). h0 (B, H); recurrent_kernel (H, 3H); gamma_r (3H,) (Haste's gamma[1]); recurrent_bias (3H,)
    or None. Returns y (T, B, H), h_n (B, H)."""
    h = h0
    ys = []
    for t in range(xp.shape[0]):
        h_new = _zoneout(zmask, t, lngru_step(xp[t], h, recurrent_kernel, gamma_r, recurrent_bias)[0], h)
        act = _active(lengths, t, xp)
        h = _keep(act, h_new, h)
        ys.append(_out(act, h_new))
    return torch.stack(ys), h


def lngru_layer_ref(x, h0, kernel, recurrent_kernel, bias, recurrent_bias, gamma, zmask=None, lengths=None):
    """One LayerNorm GRU layer and direction in Haste's layout: x (T, B, I), kernel (I, 3H), recurrent_kernel
    (H, 3H), bias and recurrent_bias (3H,) or None, gamma (2, 3H). Returns y (T, B, H), h_n (B, H)."""
    xp = ln_input_projection(x, kernel, gamma[0], bias)
    return lngru_recurrence_ref(xp, h0, recurrent_kernel, gamma[1], recurrent_bias, zmask, lengths)


def lngru_recurrence_vjp(dy, xp, h0, recurrent_kernel, gamma_r, recurrent_bias=None, zmask=None, lengths=None):
    """The documented backward of ``lngru_recurrence_ref`` (docs/MATH.md), step by step; ``dy`` as for
    ``lnlstm_recurrence_vjp``. Returns (dxp, dh0, d_recurrent_kernel, dgamma_r, drecurrent_bias)."""
    T, B, H = dy.shape
    fwd, h = [], h0
    for t in range(T):
        s = lngru_step(xp[t], h, recurrent_kernel, gamma_r, recurrent_bias)
        fwd.append((h,) + s)
        h = _keep(_active(lengths, t, xp), _zoneout(zmask, t, s[0], h), h)
    dxp, da, drh = [None] * T, [None] * T, [None] * T
    q = torch.zeros_like(h0)
    da_next = None
    for t in range(T - 1, -1, -1):
        h_prev, _, z, r, g, hg, a_hat, rstd = fwd[t]
        dh = dy[t] + q if da_next is None else dy[t] + q + da_next @ recurrent_kernel.t()
        m = None if zmask is None else _mask_at(zmask, t)
        dht = dh if m is None else m * dh
        dg = dht * (1 - z) * (1 - g * g)
        dz = dht * (h_prev - g) * z * (1 - z)
        dr = dg * hg * r * (1 - r)
        drh_t = torch.cat([dz, dr, dg * r], -1)
        dxp_t = torch.cat([dz, dr, dg], -1)
        da_t = layer_norm_vjp(drh_t, a_hat, rstd, gamma_r)
        q_t = dht * z if m is None else (1 - m) * dh + dht * z
        act = _active(lengths, t, xp)
        if act is not None:
            dxp_t, da_t, drh_t, q_t = (torch.where(act, v, 0.0) for v in (dxp_t, da_t, drh_t, q_t))
        dxp[t], da[t], drh[t] = dxp_t, da_t, drh_t
        q, da_next = q_t, da_t
    dxp, da, drh = torch.stack(dxp), torch.stack(da), torch.stack(drh)
    y = torch.stack([_out(_active(lengths, t, xp), _zoneout(zmask, t, fwd[t][1], fwd[t][0])) for t in range(T)])
    d_r, dh0 = recurrent_grads(da, h0, y, recurrent_kernel, q, lengths)
    a_hat = torch.stack([s[6] for s in fwd])
    db_r = drh.sum((0, 1)) if recurrent_bias is not None else None
    return dxp, dh0, d_r, (drh * a_hat).sum((0, 1)), db_r
