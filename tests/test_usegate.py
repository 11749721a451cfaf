"""UseGateLSTM: the fused use-gate kernels (backend="triton"; the interpreter on CPU) against the
float64 reference (``kernels.usegate.usegate_layer_ref``), which is itself checked against the cell's
equations written out naively (README, "LSTM vs RNN, and the use-gate LSTM"). Every output (y, h_n, c_n)
and every gradient (all parameters, input, h0, c0) is compared with per-dtype tolerances (tests/helpers.py)."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from kernels.usegate import usegate_cell_ref, usegate_layer_ref
from models import LSTM, UseGateLSTM, swap_rnns
from models.ops import usegate_layer

from .compare import Case, compare, make_inputs, recast, run
from .helpers import DEVICE, DTYPES, assert_close, rand


def _make(case: Case, backend: str, seed=0) -> UseGateLSTM:
    """A float64 UseGateLSTM for ``case`` with fresh random parameters (no exact zeros)."""
    torch.manual_seed(seed)
    m = UseGateLSTM(case.I, case.H, **case.module_kwargs(lstm=False), dtype=torch.float64, device=DEVICE,
                    backend=backend)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(rand(*p.shape, scale=0.4))
    return m


CASES = [
    Case("B1-T3-H20-I7", T=3, B=1),
    Case("B5-T1-H20-I7", T=1, B=5),
    Case("B5-T4-H20-I7-noh0", T=4, B=5, h0=False),
    Case("B3-T3-H12-I5-L2", T=3, B=3, I=5, H=12, layers=2),
    Case("B3-T3-H12-I5-bidir", T=3, B=3, I=5, H=12, bidirectional=True),
    Case("B5-T3-H20-I7-batch_first", T=3, B=5, batch_first=True),
    Case("B4-T4-H12-I5-packed_sorted-bidir", T=4, B=4, I=5, H=12, bidirectional=True, packed="sorted"),
    Case("B5-T4-H20-I7-packed_unsorted", T=4, B=5, packed="unsorted"),
    Case("T3-H20-I7-unbatched", T=3, unbatched=True),
    Case("B5-T3-H20-I7-nobias", T=3, B=5, bias=False),
]
BY_ID = {c.id: c for c in CASES}


def _compare(case: Case, dtype, seed=0):
    """The fused module in ``dtype`` against the float64 reference on the same (rounded) weights and inputs:
    outputs, final states and every gradient (tests/compare.py)."""
    fused = _make(case, "triton", seed).to(dtype)
    ref = _make(case, "reference", seed)
    ref.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})
    x, hx = make_inputs(case, True, dtype, seed=seed + 1)
    got = run(fused, case, x, hx)
    for name, v in got.items():
        assert v.dtype == dtype, f"{case.id} {name}: dtype {v.dtype}, expected {dtype}"
    compare(got, run(ref, case, *recast(x, hx, torch.float64)), dtype, case.id)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fp64_matches_reference(case):
    _compare(case, torch.float64)


@pytest.mark.parametrize("dtype_name", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("cfg_id", ["B5-T4-H20-I7-noh0", "B4-T4-H12-I5-packed_sorted-bidir"])
def test_low_precision_matches_reference(cfg_id, dtype_name):
    _compare(BY_ID[cfg_id], DTYPES[dtype_name], seed=3)


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
        y, c_n, *_ = usegate_layer(*a, True, "auto")
        return y, c_n

    assert torch.autograd.gradcheck(f, args, fast_mode=True, atol=1e-8, rtol=1e-6)


def test_opcheck():
    args = _op_args(requires_grad=True)
    torch.library.opcheck(usegate_layer, args + (True, "auto"),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    no_grad = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(usegate_layer, no_grad + (False, "auto"), test_utils=("test_faketensor",))


def test_gradgradcheck_triton_fp64():
    """Gradients of gradients through the fused op (create_graph=True differentiates the reference math)."""
    args = _op_args(T=2, B=2, I=2, H=3, lengths=torch.tensor([2, 1], dtype=torch.int32, device=DEVICE))

    def f(*a):
        y, c_n, *_ = usegate_layer(*a, True, "auto")
        return y, c_n

    assert torch.autograd.gradgradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)


def test_no_grad_stores_nothing_and_matches(monkeypatch):
    """Without grad the module runs the op with store=False, which returns empty tensors where backward's
    saved state would be; with grad the same call keeps them, and the outputs are the same."""
    import models.usegate as mu

    stored = []
    op = usegate_layer

    def recording(*args, **kwargs):
        out = op(*args, **kwargs)
        stored.append([t.numel() for t in out[2:]])  # c_seq, gates, k_seq, u_seq
        return out

    monkeypatch.setattr(mu, "usegate_layer", recording)
    case = Case("nograd", T=3, B=2, I=3, H=4)
    m = _make(case, "triton")
    x = rand(3, 2, 3)
    with torch.no_grad():
        y, (h, c) = m(x)
    assert stored == [[0, 0, 0, 0]]
    y1, (h1, c1) = m(x)
    assert len(stored) == 2 and all(n > 0 for n in stored[1])
    assert y1.requires_grad and torch.equal(y, y1.detach()) and torch.equal(c, c1.detach())
    ry, (rh, rc) = _make(case, "reference")(x)
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
    m = _make(Case("pickle", I=3, H=4, layers=2), "reference")
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
