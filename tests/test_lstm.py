"""models.LSTM (backend="triton": on CPU the Triton interpreter) against torch.nn.LSTM with copied weights:
outputs, h_n, c_n and every gradient, over a grid of awkward configurations and every dtype."""
import pytest
import torch

from models import LSTM

from .compare import Case, check_lowp_against_oracle, compare, make_inputs, run
from .helpers import DEVICE, DTYPES

# Each feature in at least one case; the combined cases stand in for the single ones (two layers:
# layers2_bidir_proj and noncontiguous_batch_first_2layers; bidirectional: packed_unsorted_bidir,
# unbatched_no_h0_bidir; batch_first: noncontiguous_batch_first_2layers; no h_0: packed_unsorted_proj_no_h0,
# unbatched_no_h0_bidir), as the interpreter's time goes by steps and layers.
CASES = [
    Case("base"),
    Case("B1", B=1),
    Case("B17_prime_2tiles", B=17, T=3),
    Case("T1", T=1),
    Case("H33_3tiles_I_ne_H", H=33, I=5, T=3),
    Case("I_eq_H", I=20),
    Case("layers2_bidir_proj", layers=2, bidirectional=True, proj=6, T=4),
    Case("proj", proj=11),
    Case("no_bias", bias=False),
    Case("packed_sorted", packed="sorted", B=4, T=6),
    Case("packed_unsorted_bidir", packed="unsorted", B=5, T=6, bidirectional=True),
    Case("packed_unsorted_proj_no_h0", packed="unsorted", B=4, T=5, proj=7, h0=False),
    Case("unbatched", unbatched=True),
    Case("unbatched_no_h0_bidir", unbatched=True, h0=False, bidirectional=True),
    Case("noncontiguous_input", noncontig=True),
    Case("noncontiguous_batch_first_2layers", noncontig=True, batch_first=True, layers=2),
]
SLOW_CASES = [
    # long in T (40 steps, 4-10x the other cases'), tiny in H (one unit tile: half the interpreter's work of H=17;
    # H33 covers several tiles); one layer (two layers are the short cases' and the half-precision cases')
    Case("T40_bidir", T=40, B=2, H=5, I=3, bidirectional=True),
]


def _pair(case: Case, dtype=torch.float64, device=DEVICE):
    ref = torch.nn.LSTM(case.I, case.H, **case.module_kwargs(True), dtype=dtype, device=device)
    ours = LSTM(case.I, case.H, **case.module_kwargs(True), dtype=dtype, device=device, backend="triton")
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _check_against_nn(case, dtype):
    ours, ref = _pair(case, dtype)
    x, hx = make_inputs(case, True, dtype)
    want = run(ref, case, x, hx)
    got = run(ours, case, x, hx)
    compare(got, want, dtype, case.id)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fp64_matches_nn_lstm(case):
    _check_against_nn(case, torch.float64)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=lambda c: c.id)
def test_fp64_long_sequence_matches_nn_lstm(case):
    _check_against_nn(case, torch.float64)


FP32_CASES = [Case("fp32_base", T=6), Case("fp32_bidir_proj_packed", packed="unsorted", bidirectional=True,
                                           proj=5, B=4, T=6)]


@pytest.mark.parametrize("case", FP32_CASES, ids=lambda c: c.id)
def test_fp32_matches_nn_lstm(case):
    _check_against_nn(case, torch.float32)


LOWP_CASES = [Case("lowp_base", T=6, B=5), Case("lowp_2layers_bidir_packed", layers=2, bidirectional=True,
                                              packed="unsorted", B=4, T=5, proj=9)]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("case", LOWP_CASES, ids=lambda c: c.id)
def test_half_precision_against_fp64_reference(case, dtype):
    """fp16/bf16 kernels against the float64 reference run on the same (rounded) weights and inputs."""
    check_lowp_against_oracle(LSTM, case, DTYPES[dtype], f"{case.id} {dtype}")


def test_reference_backend_matches_nn_lstm():
    """The oracle itself is checked against torch.nn.LSTM."""
    case = Case("ref", layers=2, bidirectional=True, proj=4, packed="unsorted", B=4, T=6)
    ref = torch.nn.LSTM(case.I, case.H, **case.module_kwargs(True), dtype=torch.float64, device=DEVICE)
    oracle = LSTM(case.I, case.H, **case.module_kwargs(True), dtype=torch.float64, device=DEVICE,
                  backend="reference")
    oracle.load_state_dict(ref.state_dict())
    x, hx = make_inputs(case, True)
    compare(run(oracle, case, x, hx), run(ref, case, x, hx), torch.float64, "reference")


def test_state_dict_round_trip_and_parameter_names():
    ref = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    ours = LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    back = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    back.load_state_dict(ours.state_dict())
    for (n, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    # default init has nn.LSTM's range: U(-1/sqrt(H), 1/sqrt(H))
    bound = 6 ** -0.5
    for n, p in ours.named_parameters():
        assert p.abs().max() <= bound and p.abs().max() > 0.5 * bound, n


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(3)
    m = LSTM(3, 8, num_layers=2, dropout=0.5, dtype=torch.float64, backend="reference")
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    m.eval()
    y1, _ = m(x)
    y2, _ = m(x)
    assert torch.equal(y1, y2)
    m.train()
    y3, _ = m(x)
    assert not torch.allclose(y1, y3)
    ref = torch.nn.LSTM(3, 8, num_layers=2, dropout=0.5, dtype=torch.float64).eval()
    ref.load_state_dict(m.state_dict())
    assert torch.allclose(ref(x)[0], y1, rtol=0, atol=1e-12)


def test_triton_dropout_draws_the_twins_masks():
    """Training-mode dropout between layers on the fused path: with the same seed it draws the same masks as
    torch.nn.LSTM on CPU (on CUDA, where cuDNN draws its own, as our reference backend), so outputs, final
    states and every gradient match; eval mode and another seed give other outputs."""
    case = Case("dropout", T=3, B=2, I=3, H=16, layers=2, extra=dict(dropout=0.6))
    kw = dict(**case.module_kwargs(True), dtype=torch.float64, device=DEVICE)
    m = LSTM(case.I, case.H, backend="triton", **kw).train()
    if DEVICE.type == "cpu":
        twin = torch.nn.LSTM(case.I, case.H, **kw).train()
    else:
        twin = LSTM(case.I, case.H, backend="reference", **kw).train()
    twin.load_state_dict(m.state_dict())
    x, hx = make_inputs(case, True)

    def seeded(module, seed=4):
        torch.manual_seed(seed)
        return run(module, case, x, hx)

    got = seeded(m)
    compare(got, seeded(twin), torch.float64, "dropout")
    assert not torch.allclose(seeded(m, seed=5)["out"], got["out"])  # another mask
    m.eval()
    assert not torch.allclose(m(x, hx)[0], got["out"])
