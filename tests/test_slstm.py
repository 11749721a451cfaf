"""The sLSTM (models/slstm.py, kernels/slstm.py, the "slstm" cell of kernels/heads.py): the fp64 reference against
autograd and against the unstabilised equations of the xLSTM paper, the per-head kernels against the reference (fp64
1e-10, every gradient; fp32/fp16/bf16 with NaN-poisoned outputs), saturated inputs, and the FlashRNN and xLSTM
parameter conversions on synthetic tensors."""
import pytest
import torch
import torch.nn.functional as F

from fusedrnn import SLSTM, slstm_from_flashrnn, slstm_from_xlstm, slstm_to_flashrnn
from fusedrnn.kernels.slstm import heads_product, slstm_layer_ref

from .helpers import DEVICE, assert_close, loss_of, rand
from .test_heads import poisoned  # noqa: F401 (fixture)

F64 = torch.float64


def slstm_vjp(x, s0, w_ih, w_hh, b, dy, ds_n):
    """docs/MATH.md's sLSTM backward, transcribed step by step (no autograd): returns dx, dW_ih, dW_hh, db, dh0,
    dc0, dn0 for the loss sum(y * dy) + sum(states_n * ds_n). s0 = (h0, c0, n0, m0); no lengths."""
    T, B, _ = x.shape
    NH, _, D = w_hh.shape
    H = NH * D
    xs = x @ w_ih.t() + b
    h, c, n, m = s0
    saved = []
    for t in range(T):  # forward, keeping what the backward reads
        ir, fr, zr, orr = (xs[t] + heads_product(h, w_hh)).chunk(4, 1)
        lfm = m + F.logsigmoid(fr)
        m_new = torch.where(n == 0, ir, torch.maximum(ir, lfm))
        i, f = torch.exp(ir - m_new).clamp(max=1), torch.exp(lfm - m_new).clamp(max=1)
        sf = torch.where(lfm - m_new <= 0, torch.sigmoid(-fr), torch.zeros_like(fr))
        z, o = torch.tanh(zr), torch.sigmoid(orr)
        c_new, n_new = f * c + i * z, (f * n + i).clamp(min=1)
        saved.append((h, c, n, i, f, sf, z, o, c_new, n_new))
        h, c, n, m = o * c_new / n_new, c_new, n_new, m_new
    dh, dc, dn = ds_n[0].clone(), ds_n[1].clone(), ds_n[2].clone()
    dzs = [None] * T
    for t in reversed(range(T)):
        h_p, c_p, n_p, i, f, sf, z, o, c_t, n_t = saved[t]
        dh = dh + dy[t]
        dc = dc + dh * o / n_t
        dn = dn - dh * o * c_t / n_t ** 2
        do = dh * c_t / n_t * o * (1 - o)
        du = torch.where(f * n_p + i >= 1, dn, torch.zeros_like(dn))
        di = (dc * z + du) * i
        df = (dc * c_p + du * n_p) * f * sf
        dz = dc * i * (1 - z * z)
        dzs[t] = torch.cat([di, df, dz, do], 1)
        dc, dn = dc * f, du * f
        dh = heads_product_t(dzs[t], w_hh)
    dZ = torch.stack(dzs)  # (T, B, 4H)
    h_prev = torch.stack([saved[t][0] for t in range(T)])
    dw_hh = torch.einsum("mgna,mnb->ngab", dZ.reshape(-1, 4, NH, D), h_prev.reshape(-1, NH, D)).reshape(NH, 4 * D, D)
    return (dZ @ w_ih, dZ.reshape(-1, 4 * H).t() @ x.reshape(T * B, -1), dw_hh, dZ.sum((0, 1)), dh, dc, dn)


def heads_product_t(dz, w_hh):
    """dz (B, 4H) @ W for the block-diagonal W of w_hh: the gradient of h_{t-1} through heads_product."""
    NH, GD, D = w_hh.shape
    B = dz.shape[0]
    return torch.einsum("bne,nek->bnk", dz.reshape(B, 4, NH, D).transpose(1, 2).reshape(B, NH, GD), w_hh).reshape(B, -1)


def _params(I, H, NH, dtype=F64, scale=0.5):
    D = H // NH
    return (rand(4 * H, I, dtype=dtype, scale=scale), rand(NH, 4 * D, D, dtype=dtype, scale=scale),
            rand(4 * H, dtype=dtype, scale=scale), rand(4 * H, dtype=dtype, scale=scale))


@pytest.mark.parametrize("init", ["zeros", "given"])
def test_reference_vjp_matches_autograd(init):
    """The backward written in docs/MATH.md equals autograd of the reference (m detached) in fp64."""
    T, B, I, H, NH = 6, 3, 4, 8, 2
    torch.manual_seed(0)
    w_ih, w_hh, b_ih, b_hh = (p.requires_grad_(True) for p in _params(I, H, NH))
    x = rand(T, B, I, requires_grad=True)
    if init == "zeros":
        s0 = [torch.zeros(B, H, dtype=F64, device=DEVICE, requires_grad=True) for _ in range(4)]
    else:  # n_0 >= 1 (a state carried over from an earlier call)
        s0 = [rand(B, H, requires_grad=True), rand(B, H, requires_grad=True),
              (1 + rand(B, H).abs()).requires_grad_(True), rand(B, H, requires_grad=True)]
    y, *s_n = slstm_layer_ref(x, *s0, w_ih, w_hh, b_ih, b_hh)
    dy, ds = rand(*y.shape), [rand(B, H) for _ in range(3)]
    loss = (y * dy).sum() + sum((s * d).sum() for s, d in zip(s_n[1:], ds)) + (s_n[0] * 0).sum()
    want = torch.autograd.grad(loss, [x, w_ih, w_hh, b_ih, *s0[:3]])
    got = slstm_vjp(x.detach(), [s.detach() for s in s0], w_ih.detach(), w_hh.detach(), (b_ih + b_hh).detach(), dy,
                    [torch.zeros_like(ds[0])] + ds[:2])
    # the vjp's ds_n is (dh_n, dc_n, dn_n); h_n's gradient was taken through y above (zero weight here)
    for name, a, b in zip(["x", "w_ih", "w_hh", "b", "h0", "c0", "n0"], got, want):
        assert_close(a, b, F64, f"vjp {init} {name}")


def test_reference_matches_unstabilised_equations():
    """With zero initial states the stabiliser cancels: h_t equals the xLSTM paper's unstabilised sLSTM
    (i' = exp(i~), f' = sigmoid(f~), c' = f' c' + i' z, n' = f' n' + i', h = o c' / n'), and the gradients with m
    detached equal the gradients of the whole function (m not detached)."""
    T, B, I, H, NH = 8, 2, 3, 6, 3
    torch.manual_seed(1)
    w_ih, w_hh, b_ih, b_hh = (p.requires_grad_(True) for p in _params(I, H, NH))
    x = rand(T, B, I)
    zeros = [torch.zeros(B, H, dtype=F64, device=DEVICE) for _ in range(4)]
    y, *_ = slstm_layer_ref(x, *zeros, w_ih, w_hh, b_ih, b_hh)
    h, c, n = zeros[:3]
    xs = x @ w_ih.t() + b_ih + b_hh
    for t in range(T):
        ir, fr, zr, orr = (xs[t] + heads_product(h, w_hh)).chunk(4, 1)
        c = torch.sigmoid(fr) * c + torch.exp(ir) * torch.tanh(zr)
        n = torch.sigmoid(fr) * n + torch.exp(ir)
        h = torch.sigmoid(orr) * c / n
        assert_close(y[t], h, F64, f"unstabilised h_{t}")
    params = [w_ih, w_hh, b_ih]
    g_detached = torch.autograd.grad(loss_of([y]), params)
    y_full, *_ = slstm_layer_ref(x, *zeros, w_ih, w_hh, b_ih, b_hh, detach_m=False)
    for a, b in zip(g_detached, torch.autograd.grad(loss_of([y_full]), params)):
        assert_close(a, b, F64, "detached m vs full autograd")


def _module_pair(I, H, NH, dtype=F64, **kw):
    torch.manual_seed(0)
    ours = SLSTM(I, H, NH, backend="triton", **kw).to(device=DEVICE, dtype=dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(rand(*p.shape, dtype=dtype, scale=0.5))
    ref = SLSTM(I, H, NH, backend="reference", **kw).to(device=DEVICE, dtype=F64)
    ref.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    return ours, ref


def _run(m, x, state, lengths=None):
    m.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    st = None if state is None else tuple(s.detach().clone().requires_grad_(True) for s in state)
    inp = x
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, s_n = m(inp, st)
    if lengths is not None:
        out = torch.nn.utils.rnn.pad_packed_sequence(out)[0]
    loss_of([out, *s_n[:3]]).backward()
    res = dict(out=out, **{f"state{i}": s for i, s in enumerate(s_n)}, x=x.grad,
               **{n: p.grad for n, p in m.named_parameters()})
    if st is not None:
        res.update({f"grad_s0[{i}]": s.grad for i, s in enumerate(st[:3])})
    return res


@pytest.mark.parametrize("case", ["zeros", "state_packed"])
def test_kernels_match_reference_fp64(case, poisoned):  # noqa: F811
    """The kernels against the fp64 reference to 1e-10: outputs, the four final states, every gradient (initial
    states included); D = 6 (padded to 16); zero states (n_0 = 0: the first step's m = i~), or given states
    (n_0 >= 1) with packed input of unequal lengths."""
    T, B, I, H, NH = 4, 3, 4, 12, 2
    ours, ref = _module_pair(I, H, NH)
    state, lengths = None, None
    if case != "zeros":
        state = (rand(1, B, H), rand(1, B, H), 1 + rand(1, B, H).abs(), rand(1, B, H))
        lengths = torch.tensor([3, 4, 2])
    x = rand(T, B, I)
    got, want = _run(ours, x, state, lengths), _run(ref, x, state, lengths)
    assert set(got) == set(want)
    for k in want:
        assert_close(got[k], want[k], F64, f"slstm {case} {k}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernels_dtypes(dtype, poisoned):  # noqa: F811
    """fp32 (max-rel 2e-5) and bf16 (relative RMS, or 1.5x the reference's own error in bf16) against the fp64
    reference on the same rounded parameters and inputs."""
    from .compare import compare_lowp

    T, B, I, H, NH = 4, 4, 8, 32, 2
    ours, ref = _module_pair(I, H, NH, dtype=dtype)
    plain = SLSTM(I, H, NH, backend="reference").to(device=DEVICE, dtype=dtype)
    plain.load_state_dict(ours.state_dict())
    x = rand(T, B, I, dtype=dtype)
    got, want = _run(ours, x, None), _run(ref, x.double(), None)
    if dtype == torch.float32:
        for k in want:
            assert_close(got[k], want[k], dtype, f"slstm fp32 {k}")
    else:
        compare_lowp(got, want, _run(plain, x, None), dtype, "slstm bf16")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp64", "fp32", "fp16", "bf16"])
def test_saturated_inputs_stay_finite(dtype):
    """Inputs scaled by 60 (gates pinned at their limits, the stabiliser far from 0: exp(i~) alone overflows fp16):
    outputs, states and every gradient finite in every dtype, over 200 steps on a GPU; the interpreter runs 6 steps
    (its cost is per step: the exponents and the stabiliser are exercised from the first step; n grows by at most 1
    per step)."""
    T = 200 if torch.cuda.is_available() else 6
    B, I, H = 2, 4, 16
    torch.manual_seed(2)
    m = SLSTM(I, H, 1, backend="triton").to(device=DEVICE, dtype=dtype)
    x = (rand(T, B, I) * 60).to(dtype).requires_grad_(True)
    y, states = m(x)
    loss_of([y, *states[:3]]).backward()
    for name, t in [("y", y), ("h", states[0]), ("c", states[1]), ("n", states[2]), ("m", states[3]),
                    ("dx", x.grad), *((n, p.grad) for n, p in m.named_parameters())]:
        assert torch.isfinite(t.double()).all(), f"{dtype} {name} not finite"
    assert states[3].double().abs().max() > 20  # the stabiliser is far from 0: the inputs did saturate the gates


def test_flashrnn_conversion():
    """FlashRNN's R (4, NH, D, D), b (4, NH, D) and input Wx (B, T, 4, NH, D), run through FlashRNN's published
    equations (raw_g = Wx_g + h @ R[g, n]^T + b[g, n] per head), equal SLSTM with the converted parameters and
    weight_ih = I (its input is Wx flattened); the inverse conversion gives R, b back."""
    B, T, NH, D = 2, 5, 3, 4
    H = NH * D
    torch.manual_seed(3)
    R, b, Wx = rand(4, NH, D, D, scale=0.5), rand(4, NH, D), rand(B, T, 4, NH, D)
    h, c, n, m = (torch.zeros(B, NH, D, dtype=F64, device=DEVICE) for _ in range(4))
    hs = []
    for t in range(T):
        raw = Wx[:, t] + torch.einsum("gnij,bnj->bgni", R, h) + b[None]
        ir, fr, zr, orr = raw.unbind(1)
        lfm = m + F.logsigmoid(fr)
        m = torch.where(n == 0, ir, torch.maximum(ir, lfm))
        i, f = torch.exp(ir - m), torch.exp(lfm - m)
        c = f * c + i * torch.tanh(zr)
        n = torch.clamp(f * n + i, min=1.0)
        h = torch.sigmoid(orr) * c / n
        hs.append(h.reshape(B, H))
    w_hh, bias = slstm_from_flashrnn(R, b)
    mod = SLSTM(4 * H, H, NH, batch_first=True, backend="reference").to(device=DEVICE, dtype=F64)
    mod.load_state_dict({"weight_ih_l0": torch.eye(4 * H, dtype=F64), "weight_hh_l0": w_hh, "bias_ih_l0": bias,
                         "bias_hh_l0": torch.zeros_like(bias)})
    y, (h_n, c_n, n_n, m_n) = mod(Wx.reshape(B, T, 4 * H))
    assert_close(y, torch.stack(hs, 1), F64, "flashrnn h")
    assert_close(c_n[0], c.reshape(B, H), F64, "flashrnn c")
    assert_close(m_n[0], m.reshape(B, H), F64, "flashrnn m")
    R2, b2 = slstm_to_flashrnn(w_hh, bias)
    assert torch.equal(R2, R) and torch.equal(b2, b)


@pytest.mark.parametrize("backend", ["cuda", "vanilla"])
def test_xlstm_conversion(backend):
    """A synthetic state_dict of xLSTM's sLSTMLayer (conv1d_kernel_size=0) in each cell backend's layout, run the
    way sLSTMLayer.forward runs it (head-wise gate maps, i from fgate and f from igate; the vanilla recurrence
    R (NH, 4D, D), bias index g*H + n*D + d), equals SLSTM with the converted parameters."""
    B, T, NH, D = 2, 4, 2, 3
    E = NH * D
    torch.manual_seed(4)
    gates = {g: rand(NH, D, D, scale=0.5) for g in "ifzo"}
    r_int, b_int = rand(NH, 4 * D, D, scale=0.5), rand(4 * E)  # vanilla (= ours) layout
    if backend == "vanilla":
        r_sd, b_sd = r_int, b_int
    else:  # cuda: [n, b, g*D + a] and bias index n*4D + g*D + d
        r_sd = r_int.transpose(1, 2).contiguous()
        b_sd = b_int.reshape(4, NH, D).transpose(0, 1).reshape(-1)
    sd = {f"{g}gate.weight": w for g, w in gates.items()}
    sd.update({"slstm_cell._recurrent_kernel_": r_sd, "slstm_cell._bias_": b_sd})
    x = rand(B, T, E)

    def headwise(w, v):  # (B, T, E) -> (B, T, E), per head v[n] @ w[n]^T
        return torch.einsum("btnd,nod->btno", v.reshape(B, T, NH, D), w).reshape(B, T, E)

    pre = torch.cat([headwise(gates["f"], x), headwise(gates["i"], x), headwise(gates["z"], x),
                     headwise(gates["o"], x)], -1) + b_int
    zeros = [torch.zeros(B, E, dtype=F64, device=DEVICE) for _ in range(4)]
    ident = torch.eye(4 * E, dtype=F64)
    want = slstm_layer_ref(pre.transpose(0, 1), *zeros, ident, r_int)[0].transpose(0, 1)
    mod = SLSTM(E, E, NH, batch_first=True, backend="reference").to(device=DEVICE, dtype=F64)
    mod.load_state_dict(slstm_from_xlstm(sd, NH, backend=backend))
    assert_close(mod(x)[0], want, F64, f"xlstm {backend}")
    with pytest.raises(ValueError, match="causal convolution"):
        slstm_from_xlstm({**sd, "conv1d.conv.weight": rand(E, 1, 4)}, NH)
    with pytest.raises(ValueError, match="expected"):
        slstm_from_xlstm(sd, NH, backend="vanilla" if backend == "cuda" else "cuda")


def test_module_interface_and_errors():
    m = SLSTM(3, 8, 4, num_layers=2, dropout=0.0)
    sd = m.state_dict()
    assert tuple(sd["weight_hh_l1"].shape) == (4, 8, 2) and tuple(sd["weight_ih_l1"].shape) == (32, 8)
    assert tuple(SLSTM(3, 8).weight_hh_l0.shape) == (1, 32, 8)
    y, states = m(torch.randn(5, 3))  # unbatched
    assert y.shape == (5, 8) and len(states) == 4 and states[3].shape == (2, 8)
    bi = SLSTM(3, 8, 2, bidirectional=True, batch_first=True)
    y, states = bi(torch.randn(2, 5, 3))
    assert y.shape == (2, 5, 16) and all(s.shape == (2, 2, 8) for s in states)
    assert torch.equal(y[:, -1, :8], states[0][0]) and torch.equal(y[:, 0, 8:], states[0][1])
    with pytest.raises(ValueError, match="divisible"):
        SLSTM(3, 10, 4)
    with pytest.raises(ValueError, match="tuple"):
        m(torch.randn(5, 2, 3), torch.zeros(2, 2, 8))
    with pytest.raises(RuntimeError, match="n_0 of shape"):
        m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 8),) * 2 + (torch.zeros(1, 2, 8),) + (torch.zeros(2, 2, 8),))
