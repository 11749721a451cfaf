"""CUDA-graph capture of a launcher's time loop.

A Triton launch costs several microseconds of host time, more than one small recurrent step takes on an
H100. So on CUDA the per-step loop is captured once per (kernel family, shapes, dtypes, flags) and
replayed: inputs are copied into the graph's static buffers, the graph is replayed, the outputs cloned out
(the static buffers are reused by the next call). Autotuning happens in the warm-up run, before capture.
When the caller is itself capturing (e.g. torch.compile's "reduce-overhead"), the loop runs inline and is
captured by the caller's graph instead.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch

_MAX_GRAPHS = 16
_CACHE: "OrderedDict[tuple, _Captured]" = OrderedDict()
_ENABLED = True


def set_enabled(flag: bool) -> None:
    """Turn CUDA-graph capture of the time loops on or off (on by default; debugging aid)."""
    global _ENABLED
    _ENABLED = bool(flag)


def _sig(t):
    if t is None:
        return None
    return (tuple(t.shape), t.dtype, t.device)


class _Captured:
    def __init__(self, fn: Callable, inputs: Sequence):
        self.inputs = [None if t is None else t.clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*self.inputs)  # warm-up: compiles and autotunes outside the capture
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def __call__(self, inputs: Sequence):
        for s, x in zip(self.inputs, inputs):
            if s is not None:
                s.copy_(x)
        self.graph.replay()
        return tuple(None if o is None else o.clone() for o in self.outputs)


def run(name: str, fn: Callable, inputs: Sequence, flags: tuple = ()):
    """Run ``fn(*inputs)`` (which returns a tuple of tensors or None), through a cached CUDA graph
    when the inputs live on CUDA, capture is enabled, and nobody is capturing already."""
    first = next((t for t in inputs if t is not None), None)
    if (
        not _ENABLED
        or first is None
        or first.device.type != "cuda"
        or torch.cuda.is_current_stream_capturing()
    ):
        return fn(*inputs)
    key = (name, flags, tuple(_sig(t) for t in inputs))
    cap = _CACHE.get(key)
    if cap is None:
        cap = _Captured(fn, inputs)
        _CACHE[key] = cap
        while len(_CACHE) > _MAX_GRAPHS:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return cap(inputs)


def clear() -> None:
    """Drop every captured graph and its static buffers."""
    _CACHE.clear()
