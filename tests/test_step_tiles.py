"""The per-step kernels under the tile shapes the GPU runs, in the interpreter: the forward's one wide gate dot
split into four gates, the backward's K cut into chunks of 16 (3-D dot, summed after the loop) and its 2-D
path for 64-row tiles, with K and the units not multiples of the tile. fp64 against nn.LSTM / nn.RNN
(forward outputs and every gradient) and against the smallest tiles, which take no chunking."""
import pytest
import torch

from kernels import _common
from kernels._common import TileConfig
from models import LSTM, RNN

TILES = [
    TileConfig(B=16, H=16, K=16, warps=4, stages=1),  # one chunk per K slice
    # 4 chunks per slice, K = 4H = 80 ends inside the second slice (LSTM)
    TileConfig(B=16, H=16, K=64, warps=4, stages=1),
    TileConfig(B=16, H=32, K=128, warps=4, stages=1),  # 8 chunks, one slice; one unit tile with masked units
    TileConfig(B=64, H=16, K=32, warps=4, stages=1),  # 64 rows: the backward's 2-D dot, most rows masked
]


def _run(model_cls, cfg, monkeypatch, **kw):
    monkeypatch.setattr(_common, "INTERPRETER_CONFIG", cfg)
    torch.manual_seed(0)
    ref = getattr(torch.nn, model_cls.__name__)(7, 20, dtype=torch.float64, **kw)
    ours = model_cls(7, 20, dtype=torch.float64, backend="triton", **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 7, dtype=torch.float64)
    outs = []
    for m in (ours, ref):
        xx = x.clone().requires_grad_(True)
        y, _ = m(xx)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append([y.detach(), xx.grad] + [p.grad for p in m.parameters()])
        m.zero_grad()
    return outs


@pytest.mark.parametrize("cfg", TILES, ids=lambda c: f"{c.B}x{c.H}x{c.K}")
@pytest.mark.parametrize("model_cls", [LSTM, RNN])
def test_step_tiles_match_nn(model_cls, cfg, monkeypatch):
    got, want = _run(model_cls, cfg, monkeypatch)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


def _lists():
    from kernels import gru, lstm, rnn
    for kind, kernel in (("fwd", lstm._lstm_fwd_step), ("bwd", lstm._lstm_bwd_step), ("fwd", rnn._rnn_fwd_step),
                         ("bwd", rnn._rnn_bwd_step), ("fwd", gru._gru_fwd_step), ("bwd", gru._gru_bwd_step)):
        for group, cfgs in kernel.configs.items():
            for c in cfgs:
                yield f"{kernel.__name__}.{group}", kind, c


def test_backward_tiles_give_every_warp_its_own_k_chunks():
    """Under 64 rows the backward's warps split the BLOCK_K/16 chunks of a K slice: more warps than chunks
    would repeat each other's MMA work."""
    bad = [(n, c) for n, kind, c in _lists() if kind == "bwd" and c.B < 64 and c.warps > c.K // 16]
    assert not bad


def test_k_loops_keep_a_slice_in_flight():
    """num_stages 2 drains every cp.async group at the top of each K iteration; the lists use 3 or more, but for
    the wide 16-row tiles (BLOCK_K >= 256: a few large round trips a step, predicted faster; kernels/lstm.py)."""
    assert not [(n, c) for n, _, c in _lists() if c.stages < 3 and not (c.stages == 2 and c.B == 16 and c.K >= 256)]


def test_programmatic_dependent_launch_is_opt_in_and_cuda_sm90_only(monkeypatch):
    monkeypatch.delenv("FUSEDRNN_PDL", raising=False)
    assert not _common.pdl_enabled(torch.device("cpu"))
    monkeypatch.setenv("FUSEDRNN_PDL", "1")
    assert not _common.pdl_enabled(torch.device("cpu"))  # the interpreter / CPU never
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: (8, 0))
    assert not _common.pdl_enabled(torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: (9, 0))
    assert _common.pdl_enabled(torch.device("cuda", 0))
    monkeypatch.setenv("FUSEDRNN_PDL", "0")
    assert not _common.pdl_enabled(torch.device("cuda", 0))
