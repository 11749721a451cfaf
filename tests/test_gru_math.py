"""The GRU equations of docs/MATH.md, written out in PyTorch over a whole sequence, against autograd of the
reference layer (and the reference against torch.nn.GRU) in float64: every gradient, packed lengths included."""
import pytest
import torch

from kernels.reference import gru_input_projection, gru_layer_ref

from .helpers import rand

D = torch.float64


def _documented_backward(x, h0, w_ih, w_hh, b_ih, b_hh, y, dy, lengths):
    """The backward of docs/MATH.md step by step: returns dx, dh0, dW_ih, dW_hh, db_ih, db_hh."""
    T, B, _ = x.shape
    H = h0.shape[1]
    xp = gru_input_projection(x, w_ih, b_ih, b_hh)
    b_hn = b_hh[2 * H:]
    q = torch.zeros(B, H, dtype=D)
    dg_next = None
    dgs = [None] * T
    for t in range(T - 1, -1, -1):
        h_prev = h0 if t == 0 else y[t - 1]
        hp = h_prev @ w_hh.t()
        r = torch.sigmoid(xp[t, :, :H] + hp[:, :H])
        z = torch.sigmoid(xp[t, :, H:2 * H] + hp[:, H:2 * H])
        hn = hp[:, 2 * H:] + b_hn
        n = torch.tanh(xp[t, :, 2 * H:] + r * hn)
        dh = dy[t] + q
        if dg_next is not None:
            dh = dh + dg_next[:, :3 * H] @ w_hh
        dn = dh * (1 - z) * (1 - n * n)
        da_z = dh * (h_prev - n) * z * (1 - z)
        dhn = dn * r
        da_r = dn * hn * r * (1 - r)
        q = dh * z
        dg = torch.cat([da_r, da_z, dhn, dn], 1)
        act = (t < lengths).unsqueeze(1)
        dg, q = torch.where(act, dg, 0.0), torch.where(act, q, 0.0)
        dgs[t] = dg_next = dg
    dg = torch.stack(dgs)
    dhp, dxp = dg[..., :3 * H], torch.cat([dg[..., :2 * H], dg[..., 3 * H:]], -1)
    h_prev = torch.cat([h0.unsqueeze(0), y[:-1]])
    dw_hh = torch.einsum("tbk,tbj->kj", dhp, h_prev)
    dw_ih = torch.einsum("tbk,tbi->ki", dxp, x)
    return dxp @ w_ih, q + dhp[0] @ w_hh, dw_ih, dw_hh, dxp.sum((0, 1)), dhp.sum((0, 1))


@pytest.mark.parametrize("lengths", [None, [6, 3, 1, 6]])
def test_documented_gru_backward_matches_autograd(lengths):
    torch.manual_seed(0)
    T, B, I, H = 6, 4, 3, 5
    gru = torch.nn.GRU(I, H, dtype=D)
    x, h0 = rand(T, B, I, requires_grad=True), rand(B, H, requires_grad=True)
    params = [gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0]
    lens = torch.tensor(lengths if lengths is not None else [T] * B)
    y, h_n = gru_layer_ref(x, h0, *params, lengths=None if lengths is None else lens)
    if lengths is None:  # the reference is torch.nn.GRU
        y_nn, h_nn = gru(x, h0.unsqueeze(0))
        torch.testing.assert_close(y, y_nn, rtol=0, atol=1e-13)
        torch.testing.assert_close(h_n, h_nn[0], rtol=0, atol=1e-13)
    dy = rand(T, B, H)
    auto = torch.autograd.grad(y, [x, h0, *params], dy)
    got = _documented_backward(x.detach(), h0.detach(), params[0].detach(), params[1].detach(),
                               params[2].detach(), params[3].detach(), y.detach(), dy, lens)
    for name, a, g in zip(("dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh"), auto, got):
        torch.testing.assert_close(g, a, rtol=1e-12, atol=1e-12, msg=name)
