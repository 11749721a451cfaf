"""UseGateLSTM: the fused use-gate kernels (backend="triton"; the interpreter on CPU) against the
float64 reference (``kernels.usegate.usegate_layer_ref``), which is itself checked against the cell's
equations written out naively (README, "LSTM vs RNN, and the use-gate LSTM"). Every output (y, h_n, c_n)
and every gradient (all parameters, input, h0, c0) is compared with per-dtype tolerances (tests/helpers.py)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from kernels.usegate import usegate_cell_ref, usegate_layer_ref
from models import LSTM, UseGateLSTM, swap_rnns
from models.usegate import usegate_layer_op

from .helpers import DEVICE, DTYPES, assert_close, loss_of, rand


def _make(dtype, backend, seed=0, **kw):
    torch.manual_seed(seed)
    m = UseGateLSTM(kw.pop("I"), kw.pop("H"), dtype=torch.float64, device=DEVICE, backend=backend, **kw)
    with torch.no_grad():  # fresh values, no exact zeros
        for p in m.parameters():
            p.copy_(rand(*p.shape, scale=0.4))
    return m.to(dtype)


# id -> (module kwargs, input kind, T, B, with_state)
CONFIGS = {
    "B1-T3-H20-I7": (dict(I=7, H=20), "plain", 3, 1, True),
    "B5-T1-H20-I7": (dict(I=7, H=20), "plain", 1, 5, True),
    "B5-T4-H20-I7-noh0": (dict(I=7, H=20), "plain", 4, 5, False),
    "B3-T3-H12-I5-L2": (dict(I=5, H=12, num_layers=2), "plain", 3, 3, True),
    "B3-T3-H12-I5-bidir": (dict(I=5, H=12, bidirectional=True), "plain", 3, 3, True),
    "B5-T3-H20-I7-batch_first": (dict(I=7, H=20, batch_first=True), "plain", 3, 5, True),
    "B4-T4-H12-I5-packed_sorted-bidir": (dict(I=5, H=12, bidirectional=True), "packed_sorted", 4, 4, True),
    "B5-T4-H20-I7-packed_unsorted": (dict(I=7, H=20), "packed_unsorted", 4, 5, True),
    "T3-H20-I7-unbatched": (dict(I=7, H=20), "unbatched", 3, 1, True),
    "B5-T3-H20-I7-nobias": (dict(I=7, H=20, bias=False), "plain", 3, 5, True),
}


def _inputs(m, kind, T, B, with_state, dtype):
    """(input, hx, leaves): fresh random input (and state); ``leaves`` are the tensors whose gradients are
    compared."""
    dirs = 2 if m.bidirectional else 1
    I, H, L = m.input_size, m.hidden_size, m.num_layers
    x = rand(T, B, I, dtype=dtype, requires_grad=True)
    leaves = [x]
    hx = None
    if with_state:
        shape = (L * dirs, B, H) if kind != "unbatched" else (L * dirs, H)
        h0 = rand(*shape, dtype=dtype, requires_grad=True)
        c0 = rand(*shape, dtype=dtype, requires_grad=True)
        hx, leaves = (h0, c0), leaves + [h0, c0]
    if kind == "unbatched":
        return x[:, 0], hx, leaves
    if kind == "plain":
        return (x.transpose(0, 1) if m.batch_first else x), hx, leaves
    lengths = torch.tensor([T, T - 1, T - 1, 2, 1][:B]) if kind == "packed_sorted" else \
        torch.tensor([2, T, 1, T - 1, 3][:B])
    return pack_padded_sequence(x, lengths, enforce_sorted=kind == "packed_sorted"), hx, leaves


def _outputs(out):
    y, (h, c) = out
    if isinstance(y, torch.nn.utils.rnn.PackedSequence):
        y = y.data
    return [y, h, c]


def _run(m, inp, hx, leaves):
    outs = _outputs(m(inp, hx))
    params = list(m.parameters())
    grads = torch.autograd.grad(loss_of(outs), leaves + params)
    names = ["x", "h0", "c0"][: len(leaves)] + [n for n, _ in m.named_parameters()]
    return outs, dict(zip(names, grads))


def _compare(dtype, cfg, kind, T, B, with_state, seed=0):
    torch.manual_seed(seed + 1)
    fused = _make(torch.float64, "triton", seed, **dict(cfg))
    inp64, hx64, leaves64 = _inputs(fused, kind, T, B, with_state, torch.float64)
    # the low-precision run sees the rounded inputs and weights; the reference gets them back in fp64
    fused = fused.to(dtype)
    ref = _make(torch.float64, "reference", seed, **dict(cfg))
    ref.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})

    def cast(leaves, dt):
        return [v.detach().to(dtype).to(dt).requires_grad_() for v in leaves]

    lo_leaves, ref_leaves = cast(leaves64, dtype), cast(leaves64, torch.float64)
    inp_lo, hx_lo, _ = _rebuild(fused, kind, T, B, lo_leaves, inp64)
    inp_ref, hx_ref, _ = _rebuild(ref, kind, T, B, ref_leaves, inp64)
    outs, grads = _run(fused, inp_lo, hx_lo, lo_leaves)
    routs, rgrads = _run(ref, inp_ref, hx_ref, ref_leaves)
    for what, a, b in zip(("y", "h_n", "c_n"), outs, routs):
        assert a.dtype == dtype
        assert_close(a, b, dtype, what)
    assert set(grads) == set(rgrads)
    for name in rgrads:
        assert grads[name].dtype == dtype, name
        assert_close(grads[name], rgrads[name], dtype, f"grad {name}")


def _rebuild(m, kind, T, B, leaves, like):
    """The same input structure as ``_inputs`` around new leaves (for a second module)."""
    x = leaves[0]
    hx = (leaves[1], leaves[2]) if len(leaves) == 3 else None
    if kind == "unbatched":
        return x[:, 0], hx, leaves
    if kind == "plain":
        return (x.transpose(0, 1) if m.batch_first else x), hx, leaves
    # the same lengths as the original PackedSequence
    from torch.nn.utils.rnn import pad_packed_sequence

    _, lengths = pad_packed_sequence(like)
    lengths = lengths[like.unsorted_indices] if like.unsorted_indices is not None else lengths
    return pack_padded_sequence(x, lengths, enforce_sorted=kind == "packed_sorted"), hx, leaves


@pytest.mark.parametrize("cfg_id", list(CONFIGS))
def test_fp64_matches_reference(cfg_id):
    cfg, kind, T, B, with_state = CONFIGS[cfg_id]
    _compare(torch.float64, cfg, kind, T, B, with_state)


@pytest.mark.parametrize("dtype_name", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("cfg_id", ["B5-T4-H20-I7-noh0", "B4-T4-H12-I5-packed_sorted-bidir"])
def test_low_precision_matches_reference(cfg_id, dtype_name):
    cfg, kind, T, B, with_state = CONFIGS[cfg_id]
    _compare(DTYPES[dtype_name], cfg, kind, T, B, with_state, seed=3)


# ---------------------------------------------------------------------------------------------- oracle
def _naive(x, h, c, W, b, W_u, b_u):
    """The cell's equations (STM/LTM notation) with [STM_{t-1}, E_t] concatenated; W (4H, H + I) rows N, i, f, V."""
    H = h.shape[1]
    ys = []
    for t in range(x.shape[0]):
        se = torch.cat([h, x[t]], dim=1)
        W_n, W_i, W_f, W_v = W[:H], W[H:2 * H], W[2 * H:3 * H], W[3 * H:]
        b_n, b_i, b_f, b_v = b[:H], b[H:2 * H], b[2 * H:3 * H], b[3 * H:]
        N = torch.tanh(se @ W_n.t() + b_n)
        i = torch.sigmoid(se @ W_i.t() + b_i)
        f = torch.sigmoid(se @ W_f.t() + b_f)
        ltm = c * f + N * i
        U = torch.tanh((c * f) @ W_u.t() + b_u)
        V = torch.sigmoid(se @ W_v.t() + b_v)
        h, c = U * V, ltm
        ys.append(h)
    return torch.stack(ys), h, c


def test_reference_is_the_stm_ltm_cell():
    T, B, I, H = 5, 3, 4, 6
    x, h0, c0 = rand(T, B, I), rand(B, H), rand(B, H)
    w_ih, w_hh, b_ih, b_hh = rand(4 * H, I), rand(4 * H, H), rand(4 * H), rand(4 * H)
    w_u, b_u = rand(H, H), rand(H)
    y, h, c = usegate_layer_ref(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_u, b_u)
    ny, nh, nc = _naive(x, h0, c0, torch.cat([w_hh, w_ih], 1), b_ih + b_hh, w_u, b_u)
    for a, b in ((y, ny), (h, nh), (c, nc)):
        assert_close(a, b, torch.float64)
    # one step of the cell function is the first step of the layer
    h1, c1 = usegate_cell_ref(x[0], h0, c0, w_ih, w_hh, b_ih, b_hh, w_u, b_u)
    assert_close(h1, y[0], torch.float64)
    assert_close(c1, _naive(x[:1], h0, c0, torch.cat([w_hh, w_ih], 1), b_ih + b_hh, w_u, b_u)[2], torch.float64)


# ------------------------------------------------------------------------------------------- autograd
def _op_args(T=2, B=2, I=3, H=4, requires_grad=True, lengths=None):
    g = dict(requires_grad=requires_grad)
    return (rand(T, B, I, **g), rand(B, H, **g), rand(B, H, **g), rand(4 * H, I, scale=0.5, **g),
            rand(4 * H, H, scale=0.5, **g), rand(4 * H, **g), rand(4 * H, **g), rand(H, H, scale=0.5, **g),
            rand(H, **g), lengths)


def test_gradcheck_triton_fp64():
    args = _op_args(lengths=torch.tensor([2, 1], dtype=torch.int32, device=DEVICE))

    def f(*a):
        y, c_n, *_ = usegate_layer_op(*a, True, "auto")
        return y, c_n

    assert torch.autograd.gradcheck(f, args, fast_mode=True, atol=1e-8, rtol=1e-6)


def test_opcheck():
    args = _op_args(requires_grad=True)
    torch.library.opcheck(usegate_layer_op, args + (True, "auto"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    no_grad = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(usegate_layer_op, no_grad + (False, "auto"), test_utils=("test_faketensor",))


def test_gradgradcheck_triton_fp64():
    """Gradients of gradients through the fused op (create_graph=True differentiates the reference math)."""
    args = _op_args(T=2, B=2, I=2, H=3, lengths=torch.tensor([2, 1], dtype=torch.int32, device=DEVICE))

    def f(*a):
        y, c_n, *_ = usegate_layer_op(*a, True, "auto")
        return y, c_n

    assert torch.autograd.gradgradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def test_no_grad_stores_nothing_and_matches():
    m = _make(torch.float64, "triton", I=3, H=4)
    x = rand(3, 2, 3)
    with torch.no_grad():
        y, (h, c) = m(x)
    ref = _make(torch.float64, "reference", I=3, H=4)
    ry, (rh, rc) = ref(x)
    for a, b in ((y, ry), (h, rh), (c, rc)):
        assert_close(a, b, torch.float64)


# --------------------------------------------------------------------------------------------- module
def test_parameters_names_shapes_and_init():
    H, I = 20, 7
    m = UseGateLSTM(I, H, num_layers=2, bidirectional=True)
    sd = m.state_dict()
    for k in range(2):
        for s in ("", "_reverse"):
            In = I if k == 0 else 2 * H
            assert sd[f"weight_ih_l{k}{s}"].shape == (4 * H, In)
            assert sd[f"weight_hh_l{k}{s}"].shape == (4 * H, H)
            assert sd[f"bias_ih_l{k}{s}"].shape == (4 * H,)
            assert sd[f"bias_hh_l{k}{s}"].shape == (4 * H,)
            assert sd[f"weight_u_l{k}{s}"].shape == (H, H)
            assert sd[f"bias_u_l{k}{s}"].shape == (H,)
    assert len(sd) == 24 and len(list(m.parameters())) == 24
    bound = 1 / H ** 0.5
    for name, p in m.named_parameters():
        assert p.abs().max() <= bound and p.std() > bound / 3, name  # uniform(-1/sqrt(H), 1/sqrt(H)), not zeros
    nb = UseGateLSTM(I, H, bias=False, bidirectional=True)
    assert sorted(nb.state_dict()) == sorted(["weight_ih_l0", "weight_hh_l0", "weight_u_l0", "weight_ih_l0_reverse",
                                              "weight_hh_l0_reverse", "weight_u_l0_reverse"])
    # round trip through a state_dict, and the module moves with .to() (W_u included)
    m2 = UseGateLSTM(I, H, num_layers=2, bidirectional=True)
    m2.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))
    m2.double()
    assert all(p.dtype == torch.float64 for p in m2.parameters())
    assert all(w.dtype == torch.float64 for w in m2._flat_weights)


def test_proj_size_raises():
    with pytest.raises(ValueError, match="proj_size"):
        UseGateLSTM(4, 8, proj_size=2)


def test_swap_rnns_leaves_usegate_alone():
    net = nn.Sequential(nn.LSTM(3, 4), UseGateLSTM(4, 5))
    ug = net[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = swap_rnns(net)
    assert type(out[0]) is LSTM and out[1] is ug


def test_pickle_roundtrip(tmp_path):
    m = _make(torch.float64, "reference", I=3, H=4, num_layers=2)
    torch.save(m, tmp_path / "m.pt")
    m2 = torch.load(tmp_path / "m.pt", weights_only=False)
    x = rand(3, 2, 3)
    assert torch.equal(m(x)[0], m2(x)[0])


def _exc_type(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return type(e)
    return None


BAD = {
    "rank4": lambda: (torch.randn(2, 3, 4, 5), None),
    "rank1": lambda: (torch.randn(4), None),
    "feature_size": lambda: (torch.randn(3, 2, 5), None),
    "h0_shape": lambda: (torch.randn(3, 2, 4), (torch.randn(1, 3, 6), torch.randn(1, 2, 6))),
    "c0_shape": lambda: (torch.randn(3, 2, 4), (torch.randn(1, 2, 6), torch.randn(2, 2, 6))),
    "h0_rank": lambda: (torch.randn(3, 2, 4), (torch.randn(2, 6), torch.randn(2, 6))),
    "input_dtype": lambda: (torch.randn(3, 2, 4, dtype=torch.float64), None),
    "h0_dtype": lambda: (torch.randn(3, 2, 4), (torch.randn(1, 2, 6, dtype=torch.float64), torch.randn(1, 2, 6))),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_like_nn_lstm(case):
    torch.manual_seed(0)
    x, hx = BAD[case]()
    expected = _exc_type(lambda: nn.LSTM(4, 6)(x, hx))
    assert expected is not None
    for backend in ("reference", "triton"):
        m = UseGateLSTM(4, 6, backend=backend)
        with pytest.raises(expected):
            m(x, hx)


def test_triton_rejects_unsupported_dtype():
    m = UseGateLSTM(3, 4, backend="triton").to(torch.complex64)
    with pytest.raises(RuntimeError, match="does not support dtype"):
        m(torch.randn(2, 1, 3, dtype=torch.complex64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuDNN flatten only runs on CUDA")
def test_cuda_flatten_is_a_noop():
    m = UseGateLSTM(3, 4).cuda()
    ptrs = [p.data_ptr() for p in m.parameters()]
    m.flatten_parameters()
    assert ptrs == [p.data_ptr() for p in m.parameters()]
