"""The GPU launch path's autotuner setup, checked without a GPU: config pruning sees the batch size however
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
