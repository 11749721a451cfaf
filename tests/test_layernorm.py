"""LayerNorm LSTM / GRU with zoneout (Haste's cells): the float64 reference against Haste's equations transcribed
here, the documented backward (docs/MATH.md) against autograd."""
import pytest
import torch
import torch.nn.functional as F

import fusedrnn
from experiments.gpu_check import poisoned
from models import ops

from kernels.layernorm_ref import (
    ln_input_projection, lngru_layer_ref, lngru_recurrence_ref, lngru_recurrence_vjp, lnlstm_layer_ref,
    lnlstm_recurrence_ref, lnlstm_recurrence_vjp,
)

from .helpers import assert_close, loss_of, rand

D = torch.float64
T, B, I, H = 5, 3, 4, 6
LENGTHS = [5, 2, 4]


def _haste_lstm(x, h0, c0, kernel, recurrent_kernel, bias, gamma, gamma_h, beta_h, training, p, mask):
    """Haste's LayerNormLSTM equations (its CPU path), transcribed: gates i, g, f, o; returns y, h_n, c_n."""
    n = recurrent_kernel.shape[0]
    wx = F.layer_norm(x @ kernel, (4 * n,), weight=gamma[0])
    hs, cs = [h0], [c0]
    for t in range(x.shape[0]):
        v = F.layer_norm(hs[-1] @ recurrent_kernel, (4 * n,), weight=gamma[1]) + wx[t] + bias
        gi, gg, gf, go = v.chunk(4, 1)
        cs.append(torch.sigmoid(gf) * cs[-1] + torch.sigmoid(gi) * torch.tanh(gg))
        h_new = torch.sigmoid(go) * torch.tanh(F.layer_norm(cs[-1], (n,), weight=gamma_h, bias=beta_h))
        if p:
            h_new = (h_new - hs[-1]) * mask[t] + hs[-1] if training else p * hs[-1] + (1 - p) * h_new
        hs.append(h_new)
    return torch.stack(hs[1:]), hs[-1], cs[-1]


def _haste_gru(x, h0, kernel, recurrent_kernel, bias, recurrent_bias, gamma, training, p, mask):
    """Haste's LayerNormGRU equations, transcribed: gates z, r, g; returns y, h_n."""
    n = recurrent_kernel.shape[0]
    wx = F.layer_norm(x @ kernel, (3 * n,), weight=gamma[0]) + bias
    hs = [h0]
    for t in range(x.shape[0]):
        rh = F.layer_norm(hs[-1] @ recurrent_kernel, (3 * n,), weight=gamma[1]) + recurrent_bias
        xz, xr, xg = wx[t].chunk(3, 1)
        hz, hr, hg = rh.chunk(3, 1)
        z = torch.sigmoid(xz + hz)
        r = torch.sigmoid(xr + hr)
        h_new = z * hs[-1] + (1 - z) * torch.tanh(xg + r * hg)
        if p:
            h_new = (h_new - hs[-1]) * mask[t] + hs[-1] if training else p * hs[-1] + (1 - p) * h_new
        hs.append(h_new)
    return torch.stack(hs[1:]), hs[-1]


def lstm_params(h=H, i=I, dtype=D):
    """Random Haste-shaped LayerNorm LSTM parameters (gains and biases away from their 1 / 0 init)."""
    return [rand(i, 4 * h, scale=0.5, dtype=dtype), rand(h, 4 * h, scale=0.5, dtype=dtype), rand(4 * h, dtype=dtype),
            1 + rand(2, 4 * h, scale=0.2, dtype=dtype), 1 + rand(h, scale=0.2, dtype=dtype), rand(h, dtype=dtype)]


def gru_params(h=H, i=I, dtype=D):
    return [rand(i, 3 * h, scale=0.5, dtype=dtype), rand(h, 3 * h, scale=0.5, dtype=dtype), rand(3 * h, dtype=dtype),
            rand(3 * h, dtype=dtype), 1 + rand(2, 3 * h, scale=0.2, dtype=dtype)]


def fixed_mask(p=0.4, seed=3, shape=(T, B, H)):
    return torch.empty(shape, dtype=D).bernoulli_(1 - p, generator=torch.Generator().manual_seed(seed))


ZONEOUT = [("off", False, 0.0), ("train", True, 0.4), ("eval", False, 0.4)]


def _zmask(training, p):
    """The reference's zoneout argument for Haste's (training, p): its mask, its expectation, or none."""
    if not p:
        return None
    return fixed_mask(p) if training else 1.0 - p


def _grads(outs, inputs):
    return torch.autograd.grad(loss_of(outs), inputs)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("name,training,p", ZONEOUT)
def test_reference_is_haste(kind, name, training, p):
    torch.manual_seed(0)
    x, h0, c0 = rand(T, B, I), rand(B, H), rand(B, H)
    inputs = ([x, h0, c0] + lstm_params()) if kind == "lstm" else ([x, h0] + gru_params())
    for v in inputs:
        v.requires_grad_(True)
    ref, haste = (lnlstm_layer_ref, _haste_lstm) if kind == "lstm" else (lngru_layer_ref, _haste_gru)
    ours = ref(*inputs, zmask=_zmask(training, p))
    theirs = haste(*inputs, training, p, fixed_mask(p) if p else None)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for a, b in zip(_grads(ours, inputs), _grads(theirs, inputs)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _folded_dy(dy, dh_n, lengths):
    """dy with the gradient of h_n added at each row's last step (what the backward loops take)."""
    dy = dy.clone()
    last = (torch.tensor(lengths) - 1) if lengths is not None else torch.full((dy.shape[1],), dy.shape[0] - 1)
    dy[last, torch.arange(dy.shape[1])] += dh_n
    return dy


@pytest.mark.parametrize("lengths", [None, LENGTHS])
@pytest.mark.parametrize("name,training,p", ZONEOUT)
def test_lstm_documented_backward_matches_autograd(name, training, p, lengths):
    torch.manual_seed(2)
    lens = None if lengths is None else torch.tensor(lengths)
    kernel, rk, bias, gamma, gamma_h, beta_h = lstm_params()
    xp = ln_input_projection(rand(T, B, I), kernel, gamma[0], bias).requires_grad_(True)
    inputs = [xp, rand(B, H, requires_grad=True), rand(B, H, requires_grad=True), rk.requires_grad_(True),
              gamma[1].clone().requires_grad_(True), gamma_h.requires_grad_(True), beta_h.requires_grad_(True)]
    zm = _zmask(training, p)
    y, h_n, c_n = lnlstm_recurrence_ref(*inputs, zmask=zm, lengths=lens)
    dy, dh_n, dc_n = rand(T, B, H), rand(B, H), rand(B, H)
    want = torch.autograd.grad((y, h_n, c_n), inputs, (dy, dh_n, dc_n))
    with torch.no_grad():
        got = lnlstm_recurrence_vjp(_folded_dy(dy, dh_n, lengths), dc_n, *inputs, zmask=zm, lengths=lens)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("lengths", [None, LENGTHS])
@pytest.mark.parametrize("name,training,p", ZONEOUT)
def test_gru_documented_backward_matches_autograd(name, training, p, lengths):
    torch.manual_seed(3)
    lens = None if lengths is None else torch.tensor(lengths)
    kernel, rk, bias, rbias, gamma = gru_params()
    xp = ln_input_projection(rand(T, B, I), kernel, gamma[0], bias).requires_grad_(True)
    inputs = [xp, rand(B, H, requires_grad=True), rk.requires_grad_(True), gamma[1].clone().requires_grad_(True),
              rbias.requires_grad_(True)]
    zm = _zmask(training, p)
    y, h_n = lngru_recurrence_ref(*inputs, zmask=zm, lengths=lens)
    dy, dh_n = rand(T, B, H), rand(B, H)
    want = torch.autograd.grad((y, h_n), inputs, (dy, dh_n))
    with torch.no_grad():
        got = lngru_recurrence_vjp(_folded_dy(dy, dh_n, lengths), *inputs, zmask=zm, lengths=lens)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------ modules
def _haste_init(kind, i, h, dtype=D):
    """Haste's reset_parameters transcribed, on fresh tensors: returns its state_dict."""
    G = 4 if kind == "lstm" else 3
    kernel, rk = torch.empty(i, G * h, dtype=dtype), torch.empty(h, G * h, dtype=dtype)
    for g in range(G):
        torch.nn.init.xavier_uniform_(kernel[:, g * h:(g + 1) * h])
        torch.nn.init.orthogonal_(rk[:, g * h:(g + 1) * h])
    bias = torch.zeros(G * h, dtype=dtype)
    if kind == "lstm":
        bias[2 * h:3 * h] = 1.0
        return dict(kernel=kernel, recurrent_kernel=rk, bias=bias, gamma=torch.ones(2, G * h, dtype=dtype),
                    gamma_h=torch.ones(h, dtype=dtype), beta_h=torch.zeros(h, dtype=dtype))
    return dict(kernel=kernel, recurrent_kernel=rk, bias=bias, recurrent_bias=torch.zeros(G * h, dtype=dtype),
                gamma=torch.ones(2, G * h, dtype=dtype))


def _module(kind, **kw):
    cls = fusedrnn.LayerNormLSTM if kind == "lstm" else fusedrnn.LayerNormGRU
    return cls(I, H, dtype=D, **kw)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_init_is_haste_for_the_same_seed(kind):
    torch.manual_seed(7)
    m = _module(kind)
    torch.manual_seed(7)
    want = _haste_init(kind, I, H)
    got = m.state_dict()
    assert list(got) == [k + "_l0" for k in want]
    for k, v in want.items():
        assert torch.equal(got[k + "_l0"], v), k


def _haste_forward(kind, sd, x, h0, c0, training, p, mask):
    if kind == "lstm":
        y, h_n, c_n = _haste_lstm(x, h0, c0, *sd.values(), training, p, mask)
        return y, h_n, c_n
    return _haste_gru(x, h0, *sd.values(), training, p, mask)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("name,training,p", ZONEOUT)
def test_module_is_haste_and_draws_its_masks(kind, name, training, p):
    """Haste's state_dict converted and loaded; training draws the mask Haste draws from the same seed."""
    torch.manual_seed(4)
    sd = dict(zip(_haste_init(kind, I, H), (lstm_params() if kind == "lstm" else gru_params())))
    hp = [v.requires_grad_(True) for v in sd.values()]
    m = _module(kind, zoneout=p, backend="reference")
    m.load_state_dict(fusedrnn.haste_state_dict(sd))
    m.train(training)
    x, h0, c0 = rand(T, B, I, requires_grad=True), rand(1, B, H), rand(1, B, H)
    torch.manual_seed(11)
    out = m(x, (h0, c0) if kind == "lstm" else h0)
    ours = (out[0], *out[1]) if kind == "lstm" else out
    torch.manual_seed(11)
    mask = x.new_empty(T, B, H).bernoulli_(1 - p) if p else None  # Haste's _get_zoneout_mask
    haste = _haste_forward(kind, sd, x, h0[0], c0[0], training, p, mask)
    for a, b in zip(ours, haste):
        torch.testing.assert_close(a.reshape(b.shape), b, rtol=0, atol=1e-10)
    params = list(m.parameters())
    for a, b in zip(_grads([o.reshape(h.shape) for o, h in zip(ours, haste)], [x] + params), _grads(haste, [x] + hp)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_haste_state_dict_stacks_layers_and_rejects_others():
    sds = [_haste_init("lstm", I if k < 2 else 2 * H, H) for k in range(4)]
    m = fusedrnn.LayerNormLSTM(I, H, num_layers=2, bidirectional=True, dtype=D)
    m.load_state_dict(fusedrnn.haste_state_dict(sds, bidirectional=True))
    assert torch.equal(m.kernel_l1_reverse, sds[3]["kernel"]) and torch.equal(m.gamma_h_l0, sds[0]["gamma_h"])
    with pytest.raises(ValueError, match="LayerNormGRU"):
        fusedrnn.haste_state_dict({"kernel": sds[0]["kernel"]})
    with pytest.raises(ValueError, match="mix"):
        fusedrnn.haste_state_dict([sds[0], _haste_init("gru", I, H)])
    with pytest.raises(ValueError, match="even"):
        fusedrnn.haste_state_dict(sds[:3], bidirectional=True)


def test_module_arguments_and_swap():
    with pytest.raises(ValueError, match="zoneout"):
        fusedrnn.LayerNormGRU(I, H, zoneout=1.5)
    with pytest.raises(ValueError, match="strategy"):  # the LayerNorm LSTM's forward has one, the GRU none
        fusedrnn.LayerNormGRU(I, H, strategy="persistent")
    fusedrnn.LayerNormLSTM(I, H, strategy="persistent")
    model = torch.nn.Sequential(fusedrnn.LayerNormLSTM(I, H), fusedrnn.LayerNormGRU(H, H), torch.nn.LSTM(H, H))
    swapped = fusedrnn.swap_rnns(model)
    assert type(swapped[0]) is fusedrnn.LayerNormLSTM and swapped[0] is model[0]
    assert type(swapped[1]) is fusedrnn.LayerNormGRU and type(swapped[2]) is fusedrnn.LSTM


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_module_gradcheck(kind):
    """Tiny two-layer bidirectional modules, zoneout in training (the mask re-drawn from one seed) and eval
    (gradcheck's fast mode: a random projection of the Jacobian)."""
    torch.manual_seed(5)
    m = (fusedrnn.LayerNormLSTM if kind == "lstm" else fusedrnn.LayerNormGRU)(
        2, 2, num_layers=2, bidirectional=True, zoneout=0.3, dtype=D, backend="reference")
    x = rand(2, 2, 2, requires_grad=True)
    params = list(m.parameters())

    def f(x, *ps):
        torch.manual_seed(9)
        out = torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], ps)), (x,))
        return out[0], (out[1] if kind == "gru" else out[1][1])

    for training in (True, False):
        m.train(training)
        assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)


# ------------------------------------------------------------------------------------------------ kernels
def _packed(x, lengths):
    return torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_module_triton_matches_reference_fp64(kind):
    """backend="triton" (the kernels in the interpreter, every allocation NaN-poisoned) against the reference:
    training with zoneout (the same seeded masks), a PackedSequence, outputs and every gradient to 1e-10."""
    torch.manual_seed(6)
    ref = _module(kind, zoneout=0.3, backend="reference", bidirectional=kind == "gru")
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tri = _module(kind, zoneout=0.3, backend="triton", bidirectional=kind == "gru")
    tri.load_state_dict(ref.state_dict())
    x = rand(2, 2, I, requires_grad=True)
    res = []
    for m in (ref, tri):
        torch.manual_seed(8)
        with poisoned():
            out, hid = m(_packed(x, [2, 1]))
        flat = [torch.nn.utils.rnn.pad_packed_sequence(out)[0]] + list(hid if kind == "lstm" else (hid,))
        res.append((flat, _grads(flat, [x] + list(m.parameters()))))
    for a, b in zip(res[1][0] + list(res[1][1]), res[0][0] + list(res[0][1])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _op_run(kind, xp, h0, c0, params, zmask, keep, lengths):
    """The op (fused forward and backward, allocations poisoned) and the float64 reference on the same values:
    returns (ours, reference) lists of outputs then gradients of loss_of(outputs)."""
    res = []
    for fused in (True, False):
        leaves = [v.detach().clone().requires_grad_(True) for v in (xp, h0, c0, *params) if v is not None]
        if not fused:
            leaves = [v.detach().double().requires_grad_(True) for v in leaves]
        zm = None if zmask is None else zmask.to(leaves[0].dtype)
        with poisoned():
            if kind == "lstm":
                if fused:
                    y, c_n = ops.lnlstm_layer(*leaves, zm, keep, lengths, True)[:2]
                else:
                    y, _, c_n = lnlstm_recurrence_ref(*leaves, zmask=zm if zm is not None else keep, lengths=lengths)
                outs = [y, c_n]
            else:
                if fused:
                    y = ops.lngru_layer(*leaves, zm, keep, lengths, True)[0]
                else:
                    y = lngru_recurrence_ref(*leaves, zmask=zm if zm is not None else keep, lengths=lengths)[0]
                outs = [y]
            res.append(outs + list(_grads(outs, leaves)))
    return res


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp64", "fp32", "bf16", "fp16"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_kernels_every_dtype(kind, dtype):
    """The ops in every dtype against the float64 reference on the same rounded values (fp64 1e-10, fp32 max-rel
    2e-5, fp16 / bf16 relative RMS): H = 20 (rows padded to 32 lanes); fp64 / fp32 with eval zoneout (the keep
    weight), fp16 / bf16 with a mask and lengths."""
    torch.manual_seed(9)
    Tk, Bk, Hk = 2, 2, 20
    G = 4 if kind == "lstm" else 3
    xp, h0 = rand(Tk, Bk, G * Hk, dtype=dtype), rand(Bk, Hk, scale=0.5, dtype=dtype)
    c0 = rand(Bk, Hk, scale=0.5, dtype=dtype) if kind == "lstm" else None
    rk, gamma_r = rand(Hk, G * Hk, scale=0.3, dtype=dtype), 1 + rand(G * Hk, scale=0.2, dtype=dtype)
    extra = ([1 + rand(Hk, scale=0.2, dtype=dtype), rand(Hk, dtype=dtype)] if kind == "lstm"
             else [rand(G * Hk, dtype=dtype)])
    lowp = dtype in (torch.float16, torch.bfloat16)
    zmask = fixed_mask(0.3, shape=(Tk, Bk, Hk)) if lowp else None
    lengths = torch.tensor([2, 1], dtype=torch.int32) if lowp else None
    ours, ref = _op_run(kind, xp, h0, c0, [rk, gamma_r] + extra, zmask, 0.6, lengths)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert a.dtype == dtype
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        else:
            assert_close(a, b, dtype, f"{kind} {dtype} entry {k}")


def test_kernel_arguments_are_checked():
    from kernels import layernorm as ln

    H = ln.MAX_HIDDEN["fp64"] + 1
    xp, h0 = torch.zeros(1, 1, 4 * H, dtype=D), torch.zeros(1, H, dtype=D)
    with pytest.raises(RuntimeError, match="hidden_size 1025 > 1024"):
        ln.lnlstm_fwd_sequence(xp, h0, h0, torch.zeros(H, 4 * H, dtype=D), *torch.zeros(3, 4 * H, dtype=D)[:1],
                               h0[0], h0[0])
    with pytest.raises(RuntimeError, match="3 \\* hidden_size"):
        ln.lngru_fwd_sequence(torch.zeros(2, 1, 8, dtype=D), torch.zeros(1, 4, dtype=D),
                              torch.zeros(4, 12, dtype=D), torch.ones(12, dtype=D))
    with pytest.raises(RuntimeError, match="recurrent_kernel: expected shape"):
        ln.lngru_fwd_sequence(torch.zeros(2, 1, 12, dtype=D), torch.zeros(1, 4, dtype=D),
                              torch.zeros(12, 4, dtype=D), torch.ones(12, dtype=D))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_loops_chain_the_launches_under_pdl(kind, monkeypatch):
    """With PDL on (faked: the interpreter never runs it), every product but the forward's first is chained, and
    every row program runs with PDL and launch_pdl but the backward's first (no product before it): the launch
    sequence only, the kernels replaced by recorders."""
    from kernels import layernorm as ln

    calls = []

    class Rows:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kw: calls.append((self.name, kw["PDL"], kw.get("launch_pdl", False)))

    monkeypatch.setattr(ln, "pdl_enabled", lambda device: True)
    monkeypatch.setattr(ln._ln_product, "launch", lambda chained=False, **kw: calls.append(("product", chained)))
    names = [f"_ln{kind}_fwd_rows", f"_ln{kind}_bwd_rows"]
    for n in names:
        monkeypatch.setattr(ln, n, Rows(n))
    Tk, Bk, Hk, G = 3, 2, 4, 4 if kind == "lstm" else 3
    z = lambda *s: torch.ones(*s, dtype=D)  # noqa: E731
    if kind == "lstm":
        ln._fwd_lstm_loop(z(Tk, Bk, G * Hk), z(Bk, Hk), z(Bk, Hk), z(Hk, G * Hk), z(G * Hk), z(Hk), z(Hk), None,
                          None, None, True)
        ln._bwd_lstm_loop(z(Tk, Bk, Hk), z(Bk, Hk), z(Bk, Hk), z(Hk, G * Hk), z(G * Hk), z(Hk), z(Hk),
                          z(Tk, Bk, Hk), z(Tk, Bk, G * Hk), z(Tk, Bk, G * Hk), z(Tk, Bk), None, None, None)
    else:
        ln._fwd_gru_loop(z(Tk, Bk, G * Hk), z(Bk, Hk), z(Hk, G * Hk), z(G * Hk), None, None, None, None, True)
        ln._bwd_gru_loop(z(Tk, Bk, Hk), z(Bk, Hk), z(Tk, Bk, Hk), z(Hk, G * Hk), z(G * Hk), z(Tk, Bk, 4 * Hk),
                         z(Tk, Bk, G * Hk), z(Tk, Bk), None, None, None)
    fwd = [("product", False), (names[0], True, True)] + [("product", True), (names[0], True, True)] * (Tk - 1)
    bwd = [(names[1], False, False)] + [("product", True), (names[1], True, True)] * (Tk - 1)
    assert calls == fwd + bwd


def test_the_study_builds_the_layernorm_lstm():
    """experiments.tasks --models lnlstm: the model builds with the study's forget-gate bias and runs (reference)."""
    from experiments import tasks

    m = tasks.build_model(tasks.Job("lnlstm", "adding", 4, 0), tasks.SMOKE, "reference", "cpu", torch.float32)
    assert isinstance(m.rnn, fusedrnn.LayerNormLSTM)
    h = m.rnn.hidden_size
    assert torch.equal(m.rnn.bias_l0[2 * h:3 * h], torch.full((h,), tasks.FORGET_BIAS))
    m(torch.randn(4, 2, 2)).sum().backward()
    assert m.rnn.recurrent_kernel_l0.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_double_backward_through_the_op(kind):
    """create_graph=True on the fused op differentiates the reference math: a gradient penalty's gradients equal
    the reference backend's (training, zoneout masks from one seed)."""
    res = []
    for backend in ("reference", "triton"):
        torch.manual_seed(0)
        m = _module(kind, zoneout=0.2, backend=backend)
        x = rand(2, 1, I, requires_grad=True)
        torch.manual_seed(1)
        (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
        res.append(torch.autograd.grad(g.pow(2).sum(), [x] + list(m.parameters())))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_lnlstm_bf16_gradients_as_accurate_as_pytorch_in_bf16():
    """The LayerNorm LSTM saves its gates in the accumulator dtype. Saved in bf16, the backward's layer norms
    amplified their rounding: at this seed every gradient was 1.05-1.29x less accurate than PyTorch computing the
    same cell in bf16 (relative RMS against float64), at 8 seeds 0.3-1.3x; in fp32 0.2-0.6x, here 0.4-0.5x."""
    from experiments.gpu_check import _fwd_bwd

    from .helpers import rel_rms

    T, B, I, H = 8, 4, 16, 32
    torch.manual_seed(6)
    ours = fusedrnn.LayerNormLSTM(I, H, backend="triton", strategy="per_step").to(torch.bfloat16)
    oracle = fusedrnn.LayerNormLSTM(I, H, backend="reference").double()
    oracle.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    plain = fusedrnn.LayerNormLSTM(I, H, backend="reference").to(torch.bfloat16)
    plain.load_state_dict(ours.state_dict())
    x = rand(T, B, I, dtype=torch.bfloat16)
    got, want, pt = _fwd_bwd(ours, x), _fwd_bwd(oracle, x.double()), _fwd_bwd(plain, x)
    for k in ("grad_x", "grad_kernel_l0", "grad_recurrent_kernel_l0", "grad_gamma_l0"):
        assert rel_rms(got[k], want[k]) <= rel_rms(pt[k], want[k]), k
