"""models.GRU / GRUCell (backend="triton": the fused kernels, in the interpreter on CPU) against torch.nn.GRU /
nn.GRUCell with copied weights: outputs, h_n and every gradient over awkward configs, fp32, fp16/bf16 against a
float64 oracle, both strategies, errors, state_dict, swap_rnns, the custom ops and torch.compile."""
import pytest
import torch
from torch import nn

import models
from models import GRU, GRUCell, swap_rnns

from .compare import H_STATE_CASES, Case, check_lowp_against_oracle, compare, make_inputs, run
from .helpers import DEVICE, DTYPES, assert_close, rand
from .test_cells import _grads

CASES = H_STATE_CASES


def _pair(case, dtype=torch.float64, strategy="auto"):
    kw = case.module_kwargs(False)
    ref = nn.GRU(case.I, case.H, **kw, dtype=dtype, device=DEVICE)
    ours = GRU(case.I, case.H, **kw, dtype=dtype, device=DEVICE, backend="triton", strategy=strategy)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fp64_matches_nn_gru(case):
    ours, ref = _pair(case)
    x, hx = make_inputs(case, False)
    compare(run(ours, case, x, hx), run(ref, case, x, hx), torch.float64, case.id)


@pytest.mark.parametrize("case", [Case("persistent_packed", packed="unsorted", B=4, T=5, H=32),
                                  Case("persistent_layers2_bidir", layers=2, bidirectional=True, T=3, H=16)],
                         ids=lambda c: c.id)
def test_fp64_persistent_strategy_matches_nn_gru(case):
    ours, ref = _pair(case, strategy="persistent")
    x, hx = make_inputs(case, False)
    compare(run(ours, case, x, hx), run(ref, case, x, hx), torch.float64, case.id)


def test_fp32_matches_nn_gru():
    case = Case("fp32", T=6, bidirectional=True, packed="unsorted", B=4)
    ours, ref = _pair(case, torch.float32)
    x, hx = make_inputs(case, False, torch.float32)
    compare(run(ours, case, x, hx), run(ref, case, x, hx), torch.float32, case.id)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_against_fp64_reference(dtype):
    case = Case("lowp", T=6, B=5, layers=2, bidirectional=True)
    check_lowp_against_oracle(GRU, case, DTYPES[dtype], dtype, seed=11, has_cell=False)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_cell_matches_nn_grucell(batched, with_state, bias):
    torch.manual_seed(3)
    B, I, H = 5, 6, 19
    ref = nn.GRUCell(I, H, bias=bias, dtype=torch.float64, device=DEVICE)
    ours = GRUCell(I, H, bias=bias, dtype=torch.float64, device=DEVICE, backend="triton")
    ours.load_state_dict(ref.state_dict())
    lead = (B,) if batched else ()
    x = rand(*lead, I, requires_grad=True)
    hx = [rand(*lead, H, scale=0.5, requires_grad=True)] if with_state else None
    want, got = _grads(ref, x, hx), _grads(ours, x, hx)
    for k in want:
        assert_close(got[k], want[k], torch.float64, k)


def test_gradcheck_and_gradgradcheck_fp64():
    torch.manual_seed(4)
    m = GRU(2, 3, dtype=torch.float64, backend="triton")  # T=3 (a middle step), B=2, tiny I, H: fewer evaluations
    x = rand(3, 2, 2, requires_grad=True)
    h0 = rand(1, 2, 3, requires_grad=True)
    fn = lambda x, h0: m(x, h0)[0]  # noqa: E731
    # a random projection of the Jacobian (fast mode), as every other cell's gradcheck: every gradient of the
    # kernels is compared whole against nn.GRU's in fp64 (test_fp64_matches_nn_gru, test_gru_kernels.py)
    assert torch.autograd.gradcheck(fn, (x, h0), fast_mode=True)
    # the double backward differentiates the reference math (create_graph=True): fast mode too, as the other
    # cells' gradgradchecks (tests/test_ops.py)
    assert torch.autograd.gradgradcheck(fn, (x, h0), fast_mode=True)


def test_opcheck_gru_ops():
    torch.manual_seed(5)
    T, B, I, H = 3, 2, 4, 6
    x, h0 = rand(T, B, I), rand(B, H)
    w_ih, w_hh, b_ih, b_hh = rand(3 * H, I), rand(3 * H, H), rand(3 * H), rand(3 * H)
    lengths = torch.tensor([3, 1], dtype=torch.int32)
    for args in [(x, h0, w_ih, w_hh, b_ih, b_hh, None, True, "per_step"),
                 (x, h0, w_ih, w_hh, None, None, lengths, False, "auto")]:
        torch.library.opcheck(models.ops.gru_layer, args, test_utils=("test_schema", "test_faketensor"))
    y, gates = models.ops.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, None, True, "per_step")
    args = (rand(T, B, H), x, h0, y, w_ih, w_hh, gates, None, True, "per_step")
    torch.library.opcheck(models.ops.gru_layer_bwd, args, test_utils=("test_schema", "test_faketensor"))


def test_errors_match_nn_gru():
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        GRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="strategy"):
        GRU(3, 4, strategy="bogus")
    ref, ours = nn.GRU(3, 4, dtype=torch.float64), GRU(3, 4, dtype=torch.float64, backend="triton")
    for bad in [(rand(2, 3, 5), None), (rand(2, 3, 3), rand(2, 3, 4)), (rand(2, 3, 3), rand(1, 2, 4))]:
        with pytest.raises(Exception) as want:
            ref(*bad)
        with pytest.raises(type(want.value)):
            ours(*bad)


def test_state_dict_loads_both_ways_and_swap_rnns_covers_gru():
    ref = nn.GRU(4, 6, num_layers=2, bidirectional=True, bias=False)
    ours = GRU(4, 6, num_layers=2, bidirectional=True, bias=False)
    assert list(ours.state_dict()) == list(ref.state_dict()) and ours.mode == "GRU"
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    model = nn.Sequential(nn.GRU(3, 4), nn.GRUCell(4, 4))
    params = [p for p in model.parameters()]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        swap_rnns(model, strategy="persistent")
    assert type(model[0]) is GRU and type(model[1]) is GRUCell
    assert [p for p in model.parameters()] == params and model[0].strategy == "persistent"


def test_compile_fullgraph_dynamic():
    torch.manual_seed(6)
    ref = nn.GRU(3, 8, dtype=torch.float64)
    ours = GRU(3, 8, dtype=torch.float64, backend="triton")
    ours.load_state_dict(ref.state_dict())
    fn = torch.compile(ours, fullgraph=True, dynamic=True, backend="aot_eager")
    for B, T in [(2, 3), (3, 4)]:
        x = rand(T, B, 3)
        y, h = fn(x)
        y_ref, h_ref = ref(x)
        assert_close(y, y_ref, torch.float64, "y")
        assert_close(h, h_ref, torch.float64, "h_n")
