"""models.RNN (backend="triton") against torch.nn.RNN with copied weights, tanh and relu: outputs, h_n and
every gradient over the awkward-size grid, and fp32/fp16/bf16."""
import pytest
import torch

from models import RNN

from .compare import H_STATE_CASES, Case, check_lowp_against_oracle, compare, make_inputs, run
from .helpers import DEVICE, DTYPES, assert_close, loss_of, rand

CASES = H_STATE_CASES


def _pair(case, nonlinearity, dtype=torch.float64):
    kw = case.module_kwargs(False)
    ref = torch.nn.RNN(case.I, case.H, nonlinearity=nonlinearity, **kw, dtype=dtype, device=DEVICE)
    ours = RNN(case.I, case.H, nonlinearity=nonlinearity, **kw, dtype=dtype, device=DEVICE, backend="triton")
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fp64_matches_nn_rnn(case, nonlinearity):
    ours, ref = _pair(case, nonlinearity)
    x, hx = make_inputs(case, False)
    compare(run(ours, case, x, hx), run(ref, case, x, hx), torch.float64, f"{case.id} {nonlinearity}")


@pytest.mark.slow
def test_fp64_long_sequence_matches_nn_rnn():
    case = Case("T63", T=63, B=3, H=24, I=6)  # one layer: the short cases have two
    ours, ref = _pair(case, "tanh")
    x, hx = make_inputs(case, False)
    compare(run(ours, case, x, hx), run(ref, case, x, hx), torch.float64, case.id)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_fp32_matches_nn_rnn(nonlinearity):
    case = Case("fp32", T=6, bidirectional=True, packed="unsorted", B=4)
    ours, ref = _pair(case, nonlinearity, torch.float32)
    x, hx = make_inputs(case, False, torch.float32)
    compare(run(ours, case, x, hx), run(ref, case, x, hx), torch.float32, case.id)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_tanh_against_fp64_reference(dtype):
    case = Case("lowp", T=6, B=5, layers=2, bidirectional=True)
    check_lowp_against_oracle(RNN, case, DTYPES[dtype], dtype, seed=11, has_cell=False)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_relu_against_fp64_reference(dtype):
    """ReLU in fp16/bf16. A pre-activation within rounding of 0 may land on the other side of 0 in any
    low-precision implementation, which flips that unit's derivative and moves the gradients by O(1) there
    (seen here: |z| = 0.0019 in fp64, <= 0 in bf16). So the outputs are checked against the float64
    reference, and the gradients against a float64 recurrence that uses the kernel's own activation
    pattern (h_t = z_t * [y_t > 0]): same function wherever the patterns agree, and well conditioned."""
    dt = DTYPES[dtype]
    torch.manual_seed(13)
    T, B, I, H = 6, 5, 7, 20
    ours = RNN(I, H, nonlinearity="relu", device=DEVICE, backend="triton").to(dt)
    x = rand(T, B, I, dtype=dt, requires_grad=True)
    h0 = rand(1, B, H, dtype=dt, scale=0.5, requires_grad=True)
    y, h_n = ours(x, h0)
    loss_of([y, h_n]).backward()
    got = {"out": y.detach(), "h_n": h_n.detach(), "grad_x": x.grad, "grad_h0": h0.grad}
    got.update({"grad_" + n: p.grad for n, p in ours.named_parameters()})

    w = {n: p.detach().double().requires_grad_(True) for n, p in ours.named_parameters()}
    x64, h64 = x.detach().double().requires_grad_(True), h0.detach().double().requires_grad_(True)
    oracle = RNN(I, H, nonlinearity="relu", device=DEVICE, dtype=torch.float64, backend="reference")
    oracle.load_state_dict({k: v.detach() for k, v in w.items()})
    with torch.no_grad():
        y_ref, h_ref = oracle(x64, h64)
    assert_close(y, y_ref, dt, "out")
    assert_close(h_n, h_ref, dt, "h_n")

    mask = (y.detach() > 0).double()
    h, ys = h64[0], []
    for t in range(T):
        z = x64[t] @ w["weight_ih_l0"].t() + w["bias_ih_l0"] + w["bias_hh_l0"] + h @ w["weight_hh_l0"].t()
        h = z * mask[t]
        ys.append(h)
    y64 = torch.stack(ys)
    loss_of([y64, h.unsqueeze(0)]).backward()
    want = {"grad_x": x64.grad, "grad_h0": h64.grad}
    want.update({"grad_" + n: p.grad for n, p in w.items()})
    for k, v in want.items():
        assert got[k].dtype == dt
        assert_close(got[k], v, dt, k)


def test_state_dict_loads_both_ways():
    ref = torch.nn.RNN(4, 6, num_layers=2, nonlinearity="relu", bidirectional=True, bias=False)
    ours = RNN(4, 6, num_layers=2, nonlinearity="relu", bidirectional=True, bias=False)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    assert ours.mode == "RNN_RELU" and ours.nonlinearity == "relu"
