"""The CUDA-graph cache's policy (kernels/_graphs.py), as pure Python with stand-in instances: byte budget,
least-recently-used eviction, no replay while a previous output is held, eager run when too large."""
import pytest
import torch

from kernels import _graphs
from kernels._graphs import GraphCache, Uncached

MB = 2**20


class Fake:
    """A captured loop: ``nbytes`` of graph memory, busy while its caller holds the last outputs."""

    def __init__(self, nbytes, log):
        self.nbytes = nbytes
        self.held = False
        self.replays = 0
        log.append(self)

    def busy(self):
        return self.held

    def __call__(self, inputs):
        self.replays += 1
        self.held = True
        return ("out", id(self), inputs)


def maker(nbytes, log):
    def make(limit):
        if nbytes > limit:  # what _Captured does when its estimate exceeds the limit
            return Uncached(("eager",))
        return Fake(nbytes, log)
    return make


def test_idle_instance_is_replayed_not_recaptured():
    cache, log = GraphCache(), []
    out1 = cache.run("k", 1, maker(10 * MB, log), 100 * MB)
    log[0].held = False  # the caller dropped its outputs
    out2 = cache.run("k", 2, maker(10 * MB, log), 100 * MB)
    assert len(log) == 1 and log[0].replays == 2
    assert out1[1] == out2[1] and out2[2] == 2


def test_held_outputs_are_never_overwritten_a_second_instance_is_made():
    cache, log = GraphCache(), []
    out1 = cache.run("k", 1, maker(10 * MB, log), 100 * MB)
    out2 = cache.run("k", 2, maker(10 * MB, log), 100 * MB)  # out1 still held
    assert len(log) == 2 and out1[1] != out2[1]
    assert log[0].replays == 1 and len(cache) == 2 and cache.nbytes == 20 * MB
    log[0].held = False
    out3 = cache.run("k", 3, maker(10 * MB, log), 100 * MB)
    assert out3[1] == out1[1] and len(log) == 2


def test_budget_in_bytes_evicts_least_recently_used():
    cache, log = GraphCache(), []
    for key in ("a", "b", "c"):
        cache.run(key, 0, maker(40 * MB, log), 100 * MB)
        log[-1].held = False
        assert cache.nbytes <= 100 * MB
    assert cache.instances("a") == [] and len(cache) == 2  # "a" was the oldest
    cache.run("b", 0, maker(40 * MB, log), 100 * MB)  # "b" becomes the most recent
    log[1].held = False
    cache.run("d", 0, maker(40 * MB, log), 100 * MB)
    assert cache.instances("c") == [] and len(cache.instances("b")) == 1
    assert cache.nbytes == 80 * MB


def test_loop_larger_than_the_budget_runs_eagerly_and_is_not_cached():
    cache, log = GraphCache(), []
    assert cache.run("big", 0, maker(200 * MB, log), 100 * MB) == ("eager",)
    assert len(cache) == 0 and cache.nbytes == 0 and log == []


def test_capture_that_overruns_its_estimate_is_used_once_and_dropped():
    cache, log = GraphCache(), []

    def make(limit):
        return Fake(150 * MB, log)  # the estimate said it fits, the capture measured more

    out = cache.run("k", 7, make, 100 * MB)
    assert out[2] == 7 and log[0].replays == 1 and len(cache) == 0


def test_shrink_and_clear():
    cache, log = GraphCache(), []
    for key in ("a", "b"):
        cache.run(key, 0, maker(30 * MB, log), 100 * MB)
    cache.shrink(30 * MB)
    assert len(cache) == 1 and cache.instances("b")
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


class _Props:
    total_memory = 80 * 2**30


def test_budget_from_environment_and_setter(monkeypatch):
    monkeypatch.setattr(_graphs, "_BUDGET", None)
    monkeypatch.delenv("FUSEDRNN_GRAPH_CACHE_MB", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _graphs.budget() == _graphs.DEFAULT_BUDGET_MB * MB
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: _Props())
    assert _graphs.budget() == 20 * 2**30  # a quarter of an 80 GB device
    monkeypatch.setenv("FUSEDRNN_GRAPH_CACHE_MB", "64")
    assert _graphs.budget() == 64 * MB
    _graphs.set_budget(5 * MB)
    assert _graphs.budget() == 5 * MB
    _graphs.set_budget(None)
    assert _graphs.budget() == 64 * MB
    with pytest.raises(ValueError):
        _graphs.set_budget(-1)


def test_cpu_inputs_run_the_loop_directly():
    calls = []

    def fn(a, b):
        calls.append(1)
        return (a + 1, None)

    x = torch.zeros(3)
    out = _graphs.run("cpu", fn, (x, None))
    assert calls == [1] and torch.equal(out[0], torch.ones(3)) and len(_graphs._CACHE) == 0


@pytest.mark.skipif(_graphs._use_count is None, reason="this torch has no storage use counts (outputs are cloned)")
def test_handed_out_outputs_count_as_uses_while_held():
    """What a replay returns must count as a use of the graph's storage while the caller holds it: the very
    tensor objects the cache keeps would not (same TensorImpl), and busy() would let a replay overwrite them."""
    kept = (torch.randn(3, 4), None, torch.randn(2))
    base = [_graphs._uses(o) for o in kept if o is not None]
    out = _graphs.handout(kept)
    assert out[1] is None and all(a is not b for a, b in zip(out, kept) if a is not None)
    assert all(torch.equal(a, b) for a, b in zip(out, kept) if a is not None)
    assert [_graphs._uses(o) for o in kept if o is not None] == [n + 1 for n in base]
    same = kept[0]  # the same object: invisible to the use count
    assert _graphs._uses(kept[0]) == base[0] + 1 and same is kept[0]
    del out
    assert [_graphs._uses(o) for o in kept if o is not None] == base
