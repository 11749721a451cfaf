"""models.LSTMCell / RNNCell (one fused step) against torch.nn.LSTMCell / RNNCell."""
import pytest
import torch

from models import LSTMCell, RNNCell

from .helpers import DEVICE, assert_close, loss_of, rand


def _grads(cell, x, hx):
    for t in [x, *(hx or [])]:
        t.grad = None
    cell.zero_grad(set_to_none=True)
    out = cell(x, hx if hx is None or len(hx) > 1 else hx[0])
    outs = list(out) if isinstance(out, tuple) else [out]
    loss_of(outs).backward()
    res = {f"out{i}": o.detach() for i, o in enumerate(outs)}
    res["grad_x"] = x.grad.clone()
    for i, t in enumerate(hx or []):
        res[f"grad_h{i}"] = t.grad.clone()
    for n, p in cell.named_parameters():
        res["grad_" + n] = p.grad.clone()
    return res


@pytest.mark.parametrize("kind", ["lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_cell_matches_nn(kind, batched, with_state, bias):
    torch.manual_seed(1)
    B, I, H = 5, 6, 19
    dt = torch.float64
    if kind == "lstm":
        ref = torch.nn.LSTMCell(I, H, bias=bias, dtype=dt, device=DEVICE)
        ours = LSTMCell(I, H, bias=bias, dtype=dt, device=DEVICE, backend="triton")
        n_states = 2
    else:
        nl = kind.split("_")[1]
        ref = torch.nn.RNNCell(I, H, bias=bias, nonlinearity=nl, dtype=dt, device=DEVICE)
        ours = RNNCell(I, H, bias=bias, nonlinearity=nl, dtype=dt, device=DEVICE, backend="triton")
        n_states = 1
    ours.load_state_dict(ref.state_dict())
    lead = (B,) if batched else ()
    x = rand(*lead, I, requires_grad=True)
    hx = [rand(*lead, H, scale=0.5, requires_grad=True) for _ in range(n_states)] if with_state else None
    want = _grads(ref, x, hx)
    got = _grads(ours, x, hx)
    for k in want:
        assert_close(got[k], want[k], dt, k)


def test_cell_sequence_loop_fp32():
    """A user-written loop over LSTMCell steps gives nn.LSTMCell's trajectory in fp32."""
    torch.manual_seed(2)
    ref = torch.nn.LSTMCell(4, 24, device=DEVICE)
    ours = LSTMCell(4, 24, device=DEVICE, backend="triton")
    ours.load_state_dict(ref.state_dict())
    xs = rand(5, 3, 4, dtype=torch.float32)
    s_ref = s_ours = None
    for t in range(5):
        s_ref = ref(xs[t], s_ref)
        s_ours = ours(xs[t], s_ours)
    assert_close(s_ours[0].detach(), s_ref[0].detach(), torch.float32, "h")
    assert_close(s_ours[1].detach(), s_ref[1].detach(), torch.float32, "c")


def test_cell_errors_match_nn():
    ours, ref = LSTMCell(3, 4), torch.nn.LSTMCell(3, 4)
    for bad in [torch.randn(2, 5), torch.randn(2, 3, 3)]:
        with pytest.raises(Exception) as e_ref:
            ref(bad)
        with pytest.raises(type(e_ref.value)):
            ours(bad)
    with pytest.raises(RuntimeError, match="hidden"):
        ours(torch.randn(2, 3), (torch.randn(3, 4), torch.randn(2, 4)))
    with pytest.raises(ValueError, match="nonlinearity"):
        RNNCell(3, 4, nonlinearity="gelu")
