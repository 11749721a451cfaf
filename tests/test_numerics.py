"""Numerics at the edges, against torch.nn: the kernels' activations keep their relative accuracy for tiny
arguments (small-init networks, near-zero inputs), in every dtype; the ReLU RNN propagates NaN as torch.nn
does, and a finished packed sequence contributes nothing to the weight gradients, NaN included."""
import math

import pytest
import torch
import triton
import triton.language as tl
from torch.nn.utils.rnn import pack_padded_sequence

from kernels import _common
from models import LSTM, RNN

from .helpers import DEVICE, DTYPES


@triton.jit
def _activations_kernel(x, t_out, s_out, n, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # as the step kernels do: load in the storage dtype, compute in the accumulator dtype, store back
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_x = tl.load(x + o, mask=m, other=0.0).to(ACC)
    tl.store(t_out + o, _common.tanh(b_x).to(t_out.dtype.element_ty), mask=m)
    tl.store(s_out + o, _common.sigmoid(b_x).to(s_out.dtype.element_ty), mask=m)


def _activations(x):
    t, s = torch.empty_like(x), torch.empty_like(x)
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    _activations_kernel[(triton.cdiv(x.numel(), 128),)](x, t, s, x.numel(), ACC=acc, BLOCK=128)
    return t, s


# smallest magnitude tried (about the dtype's smallest normal), largest, per-element relative tolerance
# against the float64 value rounded to the dtype (a few ulp; 16-bit: one rounding of the fp32 result)
_RANGE = {
    "fp64": (1e-300, 40.0, 4e-15),
    "fp32": (1e-37, 20.0, 2e-6),
    "bf16": (1e-37, 20.0, 2 ** -7),
    "fp16": (1e-4, 10.0, 2 ** -10),
}


def _rel_err(got, want):
    got, want = got.double(), want.double()
    return ((got - want).abs() / want.abs().clamp_min(torch.finfo(torch.float64).tiny)).max().item()


@pytest.mark.parametrize("name", list(_RANGE))
def test_activations_relative_accuracy(name):
    dtype = DTYPES[name]
    lo, hi, tol = _RANGE[name]
    torch.manual_seed(0)
    mag = torch.logspace(math.log10(lo), math.log10(hi), 3000, dtype=torch.float64)
    mag = mag * (1 + 0.01 * torch.rand_like(mag))  # off the grid
    x = torch.cat([mag, -mag]).to(dtype)
    t, s = _activations(x.to(DEVICE))
    xd = x.double()
    want_t = torch.tanh(xd).to(dtype)
    want_s = torch.sigmoid(xd).to(dtype)
    assert _rel_err(t.cpu(), want_t) <= tol, f"tanh: max rel err {_rel_err(t.cpu(), want_t):.3g}"
    keep = want_s.abs() > torch.finfo(dtype).tiny  # sigmoid of large negative x underflows in the dtype
    err_s = _rel_err(s.cpu()[keep], want_s[keep])
    assert err_s <= tol, f"sigmoid: max rel err {err_s:.3g}"
    # odd / symmetric and exact at the ends
    assert torch.equal(t.cpu()[: len(mag)], -t.cpu()[len(mag):])
    special = torch.tensor([0.0, float("inf"), float("-inf"), float("nan")], dtype=dtype)
    t, s = _activations(special.to(DEVICE))
    assert t.cpu()[:3].tolist() == [0.0, 1.0, -1.0] and t.cpu()[3].isnan()
    assert s.cpu()[:3].tolist() == [0.5, 1.0, 0.0] and s.cpu()[3].isnan()


def _twins(cls_ref, cls, *args, dtype=torch.float64, weight_scale=1.0, **kw):
    torch.manual_seed(0)
    ref = cls_ref(*args, **kw).to(dtype)
    ours = cls(*args, backend="triton", **kw).to(dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(weight_scale)
    ours.load_state_dict(ref.state_dict())
    return ref.to(DEVICE), ours.to(DEVICE)


def _elementwise_rel(got, want):
    return ((got.double() - want.double()).abs() / want.double().abs()).max().item()


@pytest.mark.parametrize("dtype,scale,tol", [(torch.float32, 1e-6, 1e-4), (torch.float64, 1e-9, 1e-9)])
def test_rnn_tanh_tiny_inputs_match_nn(dtype, scale, tol):
    ref, ours = _twins(torch.nn.RNN, RNN, 3, 6, bias=False, dtype=dtype)
    torch.manual_seed(1)
    x = (torch.randn(5, 2, 3, dtype=torch.float64) * scale).to(dtype=dtype, device=DEVICE)
    with torch.no_grad():
        want, got = ref(x)[0], ours(x)[0]
    assert _elementwise_rel(got, want) <= tol


def test_lstm_tiny_inputs_match_nn():
    ref, ours = _twins(torch.nn.LSTM, LSTM, 3, 6, dtype=torch.float32)
    with torch.no_grad():
        for m in (ref, ours):
            m.bias_ih_l0.zero_()
            m.bias_hh_l0.zero_()
    torch.manual_seed(1)
    x = (torch.randn(4, 2, 3) * 1e-5).to(DEVICE)
    with torch.no_grad():
        (y_ref, (_, c_ref)), (y, (_, c)) = ref(x), ours(x)
    assert _elementwise_rel(y, y_ref) <= 1e-4
    assert _elementwise_rel(c, c_ref) <= 1e-4


def test_rnn_tanh_bf16_tiny_inputs():
    """bf16 keeps fp32's exponent range: a tiny activation must come out with bf16's relative precision
    (checked against float64 on the same rounded weights and inputs; one step, so that the only roundings
    are the bf16 input projection's and the output's)."""
    ref, ours = _twins(torch.nn.RNN, RNN, 3, 6, bias=False, dtype=torch.bfloat16)
    ref = ref.double()
    torch.manual_seed(1)
    x = (torch.randn(1, 4, 3, dtype=torch.float64) * 1e-7).to(dtype=torch.bfloat16, device=DEVICE)
    with torch.no_grad():
        want, got = ref(x.double())[0], ours(x)[0]
    assert _elementwise_rel(got, want) <= 1e-2


def _same_nan_and_close(got, want, what):
    assert torch.equal(got.isnan(), want.isnan()), f"{what}: NaN pattern {got.isnan().sum()} vs {want.isnan().sum()}"
    fin = ~want.isnan()
    assert torch.allclose(got[fin], want[fin], rtol=1e-10, atol=1e-12), f"{what}: values differ"


@pytest.mark.parametrize("where", ["x", "h0", "w_hh"])
def test_relu_rnn_nan_gradients_match_nn(where):
    ref, ours = _twins(torch.nn.RNN, RNN, 2, 3, nonlinearity="relu")
    torch.manual_seed(2)
    x = torch.randn(3, 2, 2, dtype=torch.float64, device=DEVICE)
    h0 = torch.randn(1, 2, 3, dtype=torch.float64, device=DEVICE)
    if where == "x":
        x[1, 1, 0] = float("nan")
    elif where == "h0":
        h0[0, 0, 1] = float("nan")
    else:
        with torch.no_grad():
            for m in (ref, ours):
                m.weight_hh_l0[1, 2] = float("nan")
    grads = []
    for m in (ref, ours):
        xx, hh = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        out, h_n = m(xx, hh)
        (out.sum() + h_n.sum()).backward()
        grads.append({"out": out.detach(), "x": xx.grad, "h0": hh.grad,
                      **{n: p.grad for n, p in m.named_parameters()}})
    for k in grads[0]:
        _same_nan_and_close(grads[1][k], grads[0][k], k)


def test_packed_relu_rnn_finished_row_nan_stays_out_of_weight_grads():
    ref, ours = _twins(torch.nn.RNN, RNN, 2, 3, nonlinearity="relu")
    torch.manual_seed(3)
    x = torch.randn(3, 2, 2, dtype=torch.float64, device=DEVICE)
    x[0, 1, 0] = float("nan")  # the last step of the length-1 sequence
    grads = []
    for m in (ref, ours):
        m.zero_grad()
        m(pack_padded_sequence(x, torch.tensor([3, 1])))[0].data.sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert not grads[0]["weight_hh_l0"].isnan().any()
    for k in grads[0]:
        _same_nan_and_close(grads[1][k], grads[0][k], k)
