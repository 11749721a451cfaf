"""CUDA-graph capture of a launcher's time loop.

A Triton launch costs several microseconds of host time, more than one small recurrent step takes on an
H100. So on CUDA the per-step loop is captured once per (kernel family, shapes, dtypes, flags) and replayed.
Autotuning happens in the warm-up run, before capture. When the caller is itself capturing (e.g.
torch.compile's "reduce-overhead"), the loop runs inline and is captured by the caller's graph instead.

No whole-sequence copies where they can be avoided:
- Outputs are returned as views of the graph's own static buffers, without a clone. A graph is replayed
  only while nothing outside the cache still references one of its previous outputs (the storages' use
  counts are back to what the cache itself holds); otherwise another instance is captured for the same key
  (within the budget) or the loop runs eagerly. So a tensor handed out is never overwritten behind its
  holder's back, however long it is kept (saved for backward, returned to the user).
- An input that is another cached graph's static output (the forward's gates and c_seq handed to the
  backward) is read in place: the graph is captured on that address, which becomes part of the key. Other
  inputs are copied into the graph's static input buffers (e.g. xp forward and dy backward).

Memory bound: the cache holds at most ``budget()`` bytes of graph memory (static input buffers plus what the
capture allocated: outputs and the private pool's intermediates): by default a quarter of the device's
memory (20 GB on an 80 GB H100; 2 GiB when no CUDA device is visible), or what the environment variable
``FUSEDRNN_GRAPH_CACHE_MB`` or ``set_budget`` says. The least recently used instances are dropped first
(memory still held by a caller's tensors is released when they are); a loop larger than the whole budget
runs eagerly, uncaptured (one host launch per step). ``clear()`` drops everything.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, Sequence

import torch

DEFAULT_BUDGET_MB = 2048  # without a CUDA device
DEFAULT_BUDGET_FRACTION = 0.25  # of the device's total memory
_BUDGET: int | None = None  # bytes; None: from the environment / default


def budget() -> int:
    """Bytes of graph memory the cache may hold: ``set_budget``, else ``FUSEDRNN_GRAPH_CACHE_MB``, else
    ``DEFAULT_BUDGET_FRACTION`` of the current CUDA device's memory (``DEFAULT_BUDGET_MB`` without one)."""
    if _BUDGET is not None:
        return _BUDGET
    mb = os.environ.get("FUSEDRNN_GRAPH_CACHE_MB", "")
    if mb.strip():
        return int(float(mb) * 2**20)
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
                   * DEFAULT_BUDGET_FRACTION)
    return DEFAULT_BUDGET_MB * 2**20


def set_budget(nbytes: int | None) -> None:
    """Set the cache's byte budget (None: back to the environment / default); evicts down to it."""
    global _BUDGET
    if nbytes is not None and nbytes < 0:
        raise ValueError(f"budget must be >= 0 bytes, got {nbytes}")
    _BUDGET = None if nbytes is None else int(nbytes)
    _CACHE.shrink(budget())


class GraphCache:
    """Instances keyed by call signature, several per key, bounded by their total ``nbytes``.

    The policy is independent of CUDA (tested on the CPU with stand-in instances): ``make(limit)`` returns
    either an instance (with ``nbytes``, ``busy()`` and ``__call__(inputs)`` returning the outputs) to cache,
    or, when it decided not to capture (its estimate exceeds ``limit``), the outputs of an eager run wrapped
    in ``Uncached``."""

    def __init__(self):
        self._entries: "OrderedDict[tuple, list]" = OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(inst.nbytes for insts in self._entries.values() for inst in insts)

    def __len__(self) -> int:
        return sum(len(insts) for insts in self._entries.values())

    def instances(self, key) -> list:
        return list(self._entries.get(key, ()))

    def run(self, key, inputs, make: Callable, limit: int):
        """Replay an idle instance of ``key`` on ``inputs``, else ``make(limit)`` one and cache it if it fits
        in ``limit`` bytes (evicting the least recently used instances to make room)."""
        insts = self._entries.get(key)
        if insts:
            self._entries.move_to_end(key)
            for inst in insts:
                if not inst.busy():
                    return inst(inputs)
        made = make(limit)
        if isinstance(made, Uncached):
            return made.outputs
        if made.nbytes > limit:  # the capture overran the estimate: use it once, keep nothing
            return made(inputs)
        self.shrink(limit - made.nbytes)
        self._entries.setdefault(key, []).append(made)
        self._entries.move_to_end(key)
        return made(inputs)

    def shrink(self, limit: int) -> None:
        """Drop least recently used instances until at most ``limit`` bytes remain."""
        while self._entries and self.nbytes > limit:
            key, insts = next(iter(self._entries.items()))
            insts.pop(0)
            if not insts:
                del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


class Uncached:
    """``make()``'s answer when it ran the loop eagerly instead of capturing it."""

    def __init__(self, outputs):
        self.outputs = outputs


_CACHE = GraphCache()
# static output buffers of cached instances, by (data_ptr, shape, strides, dtype)
_STATIC_OUTPUTS: "dict[tuple, bool]" = {}


def _sig(t):
    if t is None:
        return None
    return (tuple(t.shape), t.stride(), t.dtype, t.device)


def _addr(t):
    return (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


def _storage_nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _uses(t) -> int:
    return _use_count(t.untyped_storage()._cdata)


def handout(outputs: Sequence) -> tuple:
    """The graph's outputs as new tensor objects over the same storage (views). A caller holding the very
    tensor objects the cache holds would add nothing to the storages' use counts, so ``busy`` could not see
    it and a replay would overwrite what the caller still reads; a view is one more use while it lives."""
    return tuple(None if o is None else o.view(o.shape) for o in outputs)


class _Captured:
    """One captured time loop: static input buffers (for inputs not read in place), the graph, its outputs."""

    def __init__(self, fn: Callable, inputs: Sequence, pinned: Sequence[bool], limit: int):
        dev = next(t for t in inputs if t is not None).device
        # warm-up on the caller's tensors: compiles and autotunes outside the capture, and gives the sizes
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            warm = fn(*inputs)
        torch.cuda.current_stream(dev).wait_stream(side)
        copied = [t for t, p in zip(inputs, pinned) if t is not None and not p]
        estimate = _storage_nbytes(copied) + _storage_nbytes(warm)
        self.warm = warm if estimate > limit else None
        if self.warm is not None:
            return
        del warm
        self.inputs = [t if (t is None or p) else t.clone() for t, p in zip(inputs, pinned)]
        reserved = torch.cuda.memory_reserved(dev)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)
        pool = torch.cuda.memory_reserved(dev) - reserved
        self.nbytes = _storage_nbytes(copied) + max(pool, _storage_nbytes(self.outputs))
        self.pinned = pinned
        outs = [o for o in self.outputs if o is not None]
        self._baseline = [(o, _uses(o)) for o in outs] if _use_count is not None else None
        self._addrs = [_addr(o) for o in outs]

    def busy(self) -> bool:
        """True while a previous call's outputs are referenced outside this instance."""
        if self._baseline is None:
            return False  # no use counts in this torch: outputs are cloned (see __call__)
        return any(_uses(o) > n for o, n in self._baseline)

    def __call__(self, inputs: Sequence):
        for s, x, p in zip(self.inputs, inputs, self.pinned):
            if s is not None and not p:
                s.copy_(x)
        self.graph.replay()
        if self._baseline is None:
            return tuple(None if o is None else o.clone() for o in self.outputs)
        return handout(self.outputs)


def run(name: str, fn: Callable, inputs: Sequence, flags: tuple = ()):
    """Run ``fn(*inputs)`` (which returns a tuple of tensors or None), through a cached CUDA graph
    when the inputs live on CUDA and nobody is capturing already."""
    first = next((t for t in inputs if t is not None), None)
    if (
        first is None
        or first.device.type != "cuda"
        or torch.cuda.is_current_stream_capturing()
    ):
        return fn(*inputs)
    pinned = [t is not None and _addr(t) in _STATIC_OUTPUTS for t in inputs]
    key = (name, flags, tuple(_sig(t) for t in inputs),
           tuple(_addr(t)[0] if p else None for t, p in zip(inputs, pinned)))
    def make(limit):
        cap = _Captured(fn, inputs, pinned, limit)
        if cap.warm is not None:
            return Uncached(cap.warm)
        for a in cap._addrs:
            _STATIC_OUTPUTS[a] = True
        return cap

    out = _CACHE.run(key, inputs, make, budget())
    _forget_dropped()
    return out


def _forget_dropped() -> None:
    live = {a for insts in _CACHE._entries.values() for inst in insts for a in inst._addrs}
    for a in [a for a in _STATIC_OUTPUTS if a not in live]:
        del _STATIC_OUTPUTS[a]


def clear() -> None:
    """Drop every captured graph and its static buffers."""
    _CACHE.clear()
    _STATIC_OUTPUTS.clear()
