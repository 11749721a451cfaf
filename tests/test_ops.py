"""The autograd custom ops: gradcheck, torch.library.opcheck, no-grad inference, double backward,
autocast, and torch.compile(fullgraph=True) with dynamic shapes."""
import pytest
import torch

import models
from models import LSTM, RNN, ops

from .helpers import DEVICE, assert_close, rand


def _lstm_args(T=3, B=2, I=3, H=4, P=0, bias=True, lengths=None, store=True, dtype=torch.float64):
    P = P or H
    g = lambda *s: rand(*s, dtype=dtype, scale=0.5, requires_grad=True)  # noqa: E731
    x, h0, c0 = g(T, B, I), g(B, P), g(B, H)
    w_ih, w_hh = g(4 * H, I), g(4 * H, P)
    b_ih, b_hh = (g(4 * H), g(4 * H)) if bias else (None, None)
    w_hr = g(P, H) if P != H else None
    return (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, store, "auto")


def _rnn_args(T=3, B=2, I=3, H=4, bias=True, lengths=None, nonlinearity="tanh"):
    g = lambda *s: rand(*s, scale=0.5, requires_grad=True)  # noqa: E731
    x, h0, w_ih, w_hh = g(T, B, I), g(B, H), g(H, I), g(H, H)
    b_ih, b_hh = (g(H), g(H)) if bias else (None, None)
    return (x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity, "auto")


LENS = torch.tensor([3, 1], dtype=torch.int32, device=DEVICE)


# no "plain" variant: "lengths" is it (bias, no projection) with its first row at full length, plus a shorter row
@pytest.mark.parametrize("variant", ["proj", "no_bias", "lengths"])
def test_lstm_gradcheck(variant):
    torch.manual_seed(0)
    args = _lstm_args(P=3 if variant == "proj" else 0, bias=variant != "no_bias",
                      lengths=LENS if variant == "lengths" else None)

    def f(*a):
        y, c_n, *_ = ops.lstm_layer(*a)
        return y, c_n

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


@pytest.mark.parametrize("variant", ["tanh", "relu", "lengths_no_bias"])
def test_rnn_gradcheck(variant):
    torch.manual_seed(1)
    args = _rnn_args(bias=variant != "lengths_no_bias", lengths=LENS if variant.startswith("lengths") else None,
                     nonlinearity="relu" if variant == "relu" else "tanh")
    assert torch.autograd.gradcheck(ops.rnn_layer, args, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


@pytest.mark.parametrize("store", [True, False])
def test_lstm_opcheck(store):
    torch.manual_seed(2)
    args = _lstm_args(P=3, store=store)
    if not store:
        args = tuple(a.detach().requires_grad_(False) if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(ops.lstm_layer, args)


def test_rnn_opcheck():
    torch.manual_seed(3)
    torch.library.opcheck(ops.rnn_layer, _rnn_args(lengths=LENS))


def test_backward_ops_opcheck():
    torch.manual_seed(4)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, _, _, _ = _lstm_args(P=3)
    with torch.no_grad():
        y, c_n, c_seq, gates, r_seq = ops.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, None, True, "auto")
    dy, dc = rand(*y.shape), rand(*c_n.shape)
    d = lambda t: t.detach()  # noqa: E731
    torch.library.opcheck(ops.lstm_layer_bwd, (dy, dc, d(x), d(h0), d(c0), y, d(w_ih), d(w_hh), c_seq, gates,
                                                d(w_hr), r_seq, None, True, "auto"))
    xr, hr, wi, wh, bi, bh, _, _, _ = _rnn_args()
    with torch.no_grad():
        yr = ops.rnn_layer(xr, hr, wi, wh, bi, bh, None, "tanh", "auto")
    torch.library.opcheck(ops.rnn_layer_bwd, (rand(*yr.shape), d(xr), d(hr), yr, d(wi), d(wh), None, True, "tanh",
                                               "auto"))


def test_no_grad_saves_nothing_and_matches():
    torch.manual_seed(5)
    m = LSTM(3, 5, dtype=torch.float64, backend="triton", device=DEVICE)
    x = rand(4, 2, 3)
    with torch.no_grad():
        y0, (h0, c0) = m(x)
        _, _, c_seq, gates, r_seq = ops.lstm_layer(x, h0[0] * 0 + 0.1, c0[0] * 0 + 0.1, m.weight_ih_l0, m.weight_hh_l0,
                                                   m.bias_ih_l0, m.bias_hh_l0, None, None, False, "auto")
    assert c_seq.numel() == 0 and gates.numel() == 0 and r_seq.numel() == 0
    y1, (h1, c1) = m(x)
    assert y1.requires_grad and torch.equal(y0, y1.detach()) and torch.equal(c0, c1.detach())


@pytest.mark.parametrize("variant", ["proj", "lengths"])  # "lengths" covers plain (see test_lstm_gradcheck)
def test_lstm_gradgradcheck(variant):
    """Gradients of gradients through the fused op (create_graph=True differentiates the reference math)."""
    torch.manual_seed(2)
    args = _lstm_args(T=3, B=2, I=2, H=3, P=2 if variant == "proj" else 0,
                      lengths=LENS if variant == "lengths" else None)

    def f(*a):
        y, c_n, *_ = ops.lstm_layer(*a)
        return y, c_n

    assert torch.autograd.gradgradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


@pytest.mark.parametrize("variant", ["tanh", "relu_lengths"])
def test_rnn_gradgradcheck(variant):
    torch.manual_seed(3)
    args = _rnn_args(T=3, B=2, I=2, H=3, lengths=LENS if "lengths" in variant else None,
                     nonlinearity="relu" if "relu" in variant else "tanh")
    assert torch.autograd.gradgradcheck(ops.rnn_layer, args, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def test_gradient_penalty_matches_the_reference_module():
    """A gradient penalty (the norm of d loss / d x, backpropagated into the weights) on backend="triton"
    gives the reference backend's weight gradients; a plain backward still runs the fused backward op."""
    torch.manual_seed(4)
    fused = LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, backend="triton", device=DEVICE)
    ref = LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, backend="reference", device=DEVICE)
    ref.load_state_dict(fused.state_dict())
    x = rand(4, 2, 3, requires_grad=True)
    grads = []
    for m in (fused, ref):
        y, (h, c) = m(x)
        (gx,) = torch.autograd.grad((y ** 2).sum() + c.sum(), x, create_graph=True)
        grads.append(torch.autograd.grad((gx ** 2).sum(), list(m.parameters())))
    for g, w in zip(*grads):
        assert_close(g, w, torch.float64)


def test_autocast_runs_in_autocast_dtype():
    """Under autocast the fused LSTM runs in the autocast dtype, as nn.LSTM does on CUDA."""
    dt = torch.bfloat16
    torch.manual_seed(6)
    m = LSTM(4, 16, backend="triton", device=DEVICE)
    x = rand(3, 2, 4, dtype=torch.float32)
    with torch.autocast(DEVICE.type, dtype=dt):
        y, (h, c) = m(x)
    assert y.dtype == dt and h.dtype == dt and c.dtype == dt
    oracle = LSTM(4, 16, backend="reference", dtype=torch.float64, device=DEVICE)
    oracle.load_state_dict({k: v.to(dt).double() for k, v in m.state_dict().items()})
    y_ref, _ = oracle(x.to(dt).double())
    assert_close(y.detach(), y_ref.detach(), dt, "autocast y")


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = LSTM(3, 8, num_layers=2, bidirectional=True, batch_first=True, backend="triton",
                        dtype=torch.float64, device=DEVICE)
        self.cell = models.RNNCell(16, 5, backend="triton", dtype=torch.float64, device=DEVICE)
        self.head = torch.nn.Linear(5, 2, dtype=torch.float64, device=DEVICE)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(self.cell(y[:, -1])) + c.sum()


def test_torch_compile_fullgraph_dynamic_no_recompile():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(7)
    model = _Model()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    # sizes all distinct from each other and from I = 3: equal sizes share one symbol (duck sizing); short T (the
    # interpreter's time goes by steps), B over T so that each size is its own symbol
    frames = []
    for B, T in [(6, 2), (7, 4), (8, 5)]:
        x = rand(B, T, 3, requires_grad=True)
        out = compiled(x)
        frames.append(counter.frame_count)
        out.sum().backward()
        g_compiled = x.grad.clone()
        x.grad = None
        ref = model(x)
        ref.sum().backward()
        assert_close(out.detach(), ref.detach(), torch.float64, f"compiled out B{B} T{T}")
        assert_close(g_compiled, x.grad, torch.float64, f"compiled grad B{B} T{T}")
    assert frames[0] >= 1 and frames[1:] == frames[:1] * 2, f"recompiled for a new B or T: frames {frames}"


def test_torch_compile_inductor_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(8)
    m = RNN(3, 6, backend="triton", dtype=torch.float64, device=DEVICE)
    x = rand(4, 2, 3, requires_grad=True)
    y, h = torch.compile(m, fullgraph=True)(x)
    y_e, h_e = m(x)
    assert_close(y.detach(), y_e.detach(), torch.float64, "inductor y")
    assert_close(h.detach(), h_e.detach(), torch.float64, "inductor h")


# the ops whose opcheck lives here (the LSTM's, the RNN's above; the GRU's and the use-gate LSTM's in their files)
CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")
LENS2 = torch.tensor([2, 1], dtype=torch.int32, device=DEVICE)


def _d(t):
    return t.detach() if isinstance(t, torch.Tensor) else t


@pytest.mark.parametrize("cell", ["lstm", "gru", "slstm"])
def test_heads_ops_opcheck(cell):
    """fusedrnn::heads_layer and its backward (the per-head kernels; in the interpreter on CPU): two heads of 4,
    packed lengths, the sLSTM's three states; the GRU and the sLSTM with a reset mask (an input without gradient)."""
    from kernels.heads import CELLS as HEAD_CELLS
    from models.heads_ops import heads_layer_bwd_op, heads_layer_op
    from models.ops import _EMPTY

    torch.manual_seed(5)
    c = HEAD_CELLS[cell]
    T, B, I, NH, D = 2, 2, 3, 2, 4
    H = NH * D
    g = lambda *s: rand(*s, scale=0.5, requires_grad=True)  # noqa: E731
    x, h0, w_ih, w_hh, b_ih, b_hh = g(T, B, I), g(B, H), g(c.G * H, I), g(NH, c.G * D, D), g(c.G * H), g(c.G * H)
    s0 = {0: x.new_empty(_EMPTY), 1: g(1, B, H)}.get(c.NS)
    if cell == "slstm":  # c, n >= 1, m
        s0 = torch.stack([rand(B, H), 1 + rand(B, H).abs(), rand(B, H)]).requires_grad_(True)
    resets = None if cell == "lstm" else torch.tensor([[True, False], [False, True]], device=DEVICE)
    args = (cell, x, h0, s0, w_ih, w_hh, b_ih, b_hh, LENS2, True, resets)
    torch.library.opcheck(heads_layer_op, args, test_utils=CHECKS)
    with torch.no_grad():
        y, s_n, gates, aux = heads_layer_op(*args)
    torch.library.opcheck(heads_layer_bwd_op, (cell, rand(*y.shape), rand(*s_n.shape), _d(x), _d(h0), _d(s0), y,
                                               _d(w_ih), _d(w_hh), gates, aux, LENS2, True, resets),
                          test_utils=CHECKS)


def test_layernorm_ops_opcheck():
    """fusedrnn::lnlstm_layer, lngru_layer and their backwards, with a zoneout mask and packed lengths."""
    torch.manual_seed(6)
    T, B, H = 2, 2, 4
    g = lambda *s: rand(*s, scale=0.5, requires_grad=True)  # noqa: E731
    zmask = torch.bernoulli(torch.full((T, B, H), 0.5, dtype=torch.float64, device=DEVICE))
    lstm = (g(T, B, 4 * H), g(B, H), g(B, H), g(H, 4 * H), g(4 * H), g(H), g(H), zmask, 1.0, LENS2, True)
    torch.library.opcheck(ops.lnlstm_layer, lstm, test_utils=CHECKS)
    with torch.no_grad():
        y, c_n, c_seq, gates, a_hat, rstd = ops.lnlstm_layer(*lstm)
    xp, h0, c0, rk, g_r, g_h, b_h = (_d(a) for a in lstm[:7])
    torch.library.opcheck(ops.lnlstm_layer_bwd, (rand(*y.shape), rand(*c_n.shape), h0, c0, y, rk, g_r, g_h, b_h,
                                                 c_seq, gates, a_hat, rstd, zmask, 1.0, LENS2), test_utils=CHECKS)
    gru = (g(T, B, 3 * H), g(B, H), g(H, 3 * H), g(3 * H), g(3 * H), zmask, 1.0, LENS2, True)
    torch.library.opcheck(ops.lngru_layer, gru, test_utils=CHECKS)
    with torch.no_grad():
        y, gates, a_hat, rstd = ops.lngru_layer(*gru)
    torch.library.opcheck(ops.lngru_layer_bwd, (rand(*y.shape), _d(gru[1]), y, _d(gru[2]), _d(gru[3]), gates, a_hat,
                                                rstd, zmask, 1.0, LENS2, True), test_utils=CHECKS)


def test_pad_packed_opcheck():
    """fusedrnn::pad_packed (a PackedSequence's data to the padded layout; its batch is a data-dependent size)."""
    from models._packed import pad_packed

    data = rand(5, 3, requires_grad=True)
    torch.library.opcheck(pad_packed, (data, torch.tensor([3, 2])), test_utils=CHECKS)
