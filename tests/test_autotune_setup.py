"""The GPU launch path of the step kernels, checked without a GPU: config pruning sees the batch size however
the launcher passes it, and backward kernels are tuned per HAS_NEXT (the first backward step has no product)."""
import pytest
import triton

from kernels import lstm, rnn, usegate
from kernels._common import DTYPE_GROUPS, TileConfig, prune_by_batch


CONFIGS = [TileConfig(B=b, H=32, K=64, warps=4, stages=2).as_triton() for b in (16, 32, 64)]


@pytest.mark.parametrize("B,kept", [(1, [16]), (16, [16]), (20, [16, 32]), (64, [16, 32, 64]), (500, [16, 32, 64])])
def test_prune_by_batch_reads_keyword_or_positional_B(B, kept):
    # triton's Autotuner.run passes positional args as named_args and keyword args (ours) as **kwargs
    by_kw = prune_by_batch(CONFIGS, {}, B=B, H=64, K=64)
    by_pos = prune_by_batch(CONFIGS, {"B": B, "H": 64})
    assert [c.kwargs["BLOCK_B"] for c in by_kw] == kept == [c.kwargs["BLOCK_B"] for c in by_pos]


@pytest.mark.parametrize("kernel", [lstm._lstm_bwd_step, rnn._rnn_bwd_step, usegate._usegate_bwd_gates],
                         ids=["lstm", "rnn", "usegate"])
def test_backward_autotuners_key_on_has_next(kernel):
    assert set(kernel.autotuners) == set(DTYPE_GROUPS)
    for group, t in kernel.autotuners.items():
        assert isinstance(t, triton.runtime.autotuner.Autotuner)
        assert list(t.keys) == ["B", "H", "K", "HAS_NEXT"], group
        assert all(k in t.arg_names for k in t.keys)


def test_forward_autotuners_key_on_sizes():
    for t in list(lstm._lstm_fwd_step.autotuners.values()) + list(rnn._rnn_fwd_step.autotuners.values()):
        assert list(t.keys) == ["B", "H", "K"]
        assert all(k in t.arg_names for k in t.keys)


def test_fixed_config_without_autotuning_is_a_listed_config():
    from kernels._common import fixed_config

    t = lstm._lstm_fwd_step.autotuners["16bit"]
    c = fixed_config(t, dict(B=3, H=64, K=64))
    assert c in t.configs and c.kwargs["BLOCK_B"] == 16
    t64 = lstm._lstm_bwd_step.autotuners["fp64"]
    assert fixed_config(t64, dict(B=100, H=8, K=32)) in t64.configs


def test_optional_flags_are_set_before_the_autotuner_reads_its_key():
    """The heuristics that derive HAS_*/STORE_* from None arguments wrap the autotuner (not the other way
    round), so a backward's HAS_NEXT is in the arguments when the autotuner builds its key."""
    for group, t in lstm._lstm_bwd_step.tuned.items():
        assert isinstance(t, triton.runtime.autotuner.Heuristics), group
        assert t.fn is lstm._lstm_bwd_step.autotuners[group]
        assert t.values["HAS_NEXT"]({"dz_next": None}) is False
        assert t.values["HAS_NEXT"]({"dz_next": object()}) is True
    assert set(usegate._usegate_fwd_use.plain.values) == {"HAS_BIAS", "STORE_U", "HAS_LENGTHS"}


class _Recorder:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __getitem__(self, grid):
        return lambda **kw: self.calls.append((self.name, grid, kw))


@pytest.mark.parametrize("autotune", ["1", "0"])
@pytest.mark.parametrize("chained", [False, True])
def test_gpu_launch_path(monkeypatch, autotune, chained):
    """What a step launch does on a GPU, checked without one: the autotuner of w's dtype group (or, with
    FUSEDRNN_AUTOTUNE=0, the plain kernel at the group's first config that fits the batch), the constexprs
    derived from w, and PDL (launch_pdl) only for a chained launch with FUSEDRNN_PDL on."""
    import torch
    import triton.language as tl

    from kernels import _common

    kernel = lstm._lstm_fwd_step
    calls = []
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.setattr(_common, "pdl_enabled", lambda device: True)
    monkeypatch.setattr(kernel, "plain", _Recorder("plain", calls))
    monkeypatch.setattr(kernel, "tuned", {g: _Recorder(g, calls) for g in DTYPE_GROUPS})
    monkeypatch.setenv("FUSEDRNN_AUTOTUNE", autotune)
    w = torch.zeros(8, 4, dtype=torch.float64)
    kernel.launch(w=w, gates=None, B=40, H=20, chained=chained)
    ((name, grid, kw),) = calls
    assert kw["CAST_F32"] is False and kw["PRECISION"] == "ieee" and kw["ACC"] == tl.float64
    assert kw["PDL"] is chained and kw.get("launch_pdl", False) is chained
    if autotune == "1":
        assert name == "fp64" and grid(dict(BLOCK_B=16, BLOCK_H=16)) == (2, 3)
    else:
        first = kernel.configs["fp64"][0]
        assert name == "plain" and grid == (triton.cdiv(20, first.H), triton.cdiv(40, first.B))
        assert (kw["BLOCK_B"], kw["BLOCK_H"], kw["BLOCK_K"], kw["num_warps"], kw["num_stages"]) == (
            first.B, first.H, first.K, first.warps, first.stages)
    calls.clear()
    monkeypatch.setattr(usegate._usegate_fwd_use, "tuned", {g: _Recorder(g, calls) for g in DTYPE_GROUPS})
    monkeypatch.setattr(usegate._usegate_fwd_use, "plain", _Recorder("plain", calls))
    usegate._usegate_fwd_use.launch(w=w, B=4, H=4, chained=chained)
    assert "PDL" not in calls[0][2] and "launch_pdl" not in calls[0][2]  # a kernel without PDL


def test_undeclared_constexpr_is_an_error():
    """A constexpr that is neither a tile size, derived from w, an optional input's flag nor given a heaviest
    value cannot be declared: adding a flag means declaring it next to the kernel."""
    import triton.language as tl

    from kernels._common import StepKernel

    @triton.jit
    def _k(w, lengths, B, H, K, HAS_LENGTHS: tl.constexpr, NEW_FLAG: tl.constexpr, BLOCK_B: tl.constexpr,
           BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
        pass

    cfg = [TileConfig(B=16, H=16, K=16, warps=4, stages=1)]
    with pytest.raises(TypeError, match="NEW_FLAG"):
        StepKernel(_k, configs=cfg, args=dict(w="x"), optional=dict(HAS_LENGTHS="lengths"))
    with pytest.raises(TypeError, match="nolengths"):
        StepKernel(_k, configs=cfg, args=dict(w="x"), optional=dict(HAS_LENGTHS="nolengths"),
                   heaviest=dict(NEW_FLAG=False))
