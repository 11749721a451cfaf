"""Which cuDNN RNN algorithm torch.nn.LSTM runs: PyTorch's own choice mirrored in Python, and a check of it
from the kernel names that torch.profiler records.

The prediction follows ``get_algo`` in PyTorch's aten/src/ATen/native/cudnn/RNN.cpp (cuDNN >= 8.2.1):
1. proj_size != 0 or packed input: STANDARD.
2. any dtype but fp64, on sm_60+: PERSIST_STATIC_SMALL_H when H <= 192 (LSTM/GRU) / 384 (RNN) forward,
   H <= 128 / 256 backward.
3. fp16 only: PERSIST_STATIC when 1 layer, unidirectional, H <= 1024, H % 128 == 0, I % 128 == 0, and the
   device heuristic agrees: on sm_80+ with >= 98 SMs (sm_86 excluded) B % 8 == 0 and B <= 128 for LSTM
   (RNN: also B < 96 or H < 896; GRU never); on Volta (sm_70) a table of B and T; never on Turing.
4. otherwise STANDARD.
Forward and backward are chosen separately, so a training step can run one algorithm each way.
"""
from __future__ import annotations

import torch

STANDARD = "standard"
PERSIST = "persist_static"
SMALL_H = "persist_small_h"


def _persist_device_ok(mode: str, B: int, T: int, H: int, capability: tuple[int, int], sm_count: int) -> bool:
    major, minor = capability
    if major == 7:
        if minor == 5:
            return False
        return ((B % 16 == 0 and B not in (80, 112)) or B == 8) and (
            (T >= 40 and B <= 128) or (T >= 20 and B <= 96) or (T >= 10 and B <= 32)
        )
    if major >= 8 and sm_count >= 98:
        if minor == 6:
            return False
        if mode == "GRU":
            return False
        if mode == "LSTM":
            return B % 8 == 0 and B <= 128
        return B % 8 == 0 and B <= 128 and (B < 96 or H < 896)
    return False


def predict_algo(*, B: int, T: int, H: int, I: int, layers: int = 1, directions: int = 1,
                 dtype: torch.dtype = torch.float16, forward: bool = True, mode: str = "LSTM",
                 packed: bool = False, proj_size: int = 0, capability: tuple[int, int] = (9, 0),
                 sm_count: int = 132, cudnn_version: int | None = 90000) -> str:
    """PyTorch's cuDNN RNN algorithm for one call (see the module docstring).

    Args:
        B, T, H, I, layers, directions: the problem; mode: "LSTM", "GRU", "RNN_TANH" or "RNN_RELU".
        dtype: input dtype; forward: False for the backward pass (backward data / weights).
        capability, sm_count: the device's (major, minor) and multiprocessor count.
        cudnn_version: torch.backends.cudnn.version() (SMALL_H needs >= 8201); None when unknown (assumed new).
    Returns: "standard", "persist_static" or "persist_small_h".
    """
    if proj_size != 0 or packed:
        return STANDARD
    small_h_ok = cudnn_version is None or cudnn_version >= 8201
    if dtype != torch.float64 and small_h_ok and capability[0] >= 6:
        rnn = mode in ("RNN_TANH", "RNN_RELU")
        limit = (384 if rnn else 192) if forward else (256 if rnn else 128)
        if H <= limit:
            return SMALL_H
    if dtype == torch.float16:
        common = layers == 1 and H <= 1024 and directions == 1 and H % 128 == 0 and I % 128 == 0
        if common and _persist_device_ok(mode, B, T, H, capability, sm_count):
            return PERSIST
    return STANDARD


def predict_for_pass(cfg, dtype: torch.dtype, pass_: str, device: torch.device, mode: str = "LSTM") -> str:
    """The algorithm(s) cuDNN runs for ``cfg`` (a ``mode`` module: "LSTM", "GRU", "RNN_TANH") on ``device``:
    one name for "fwd", "FWD/BWD" for "fwdbwd" (e.g. "persist_small_h/standard"). "n/a (cpu)" off CUDA."""
    if device.type != "cuda":
        return "n/a (cpu)"
    props = torch.cuda.get_device_properties(device)
    kw = dict(B=cfg.B, T=cfg.T, H=cfg.H, I=cfg.I, layers=cfg.layers, directions=cfg.directions, dtype=dtype,
              capability=(props.major, props.minor), sm_count=props.multi_processor_count,
              cudnn_version=torch.backends.cudnn.version(), mode=mode)
    fwd = predict_algo(forward=True, **kw)
    if pass_ == "fwd":
        return fwd
    return f"{fwd}/{predict_algo(forward=False, **kw)}"


def classify_kernels(names) -> str:
    """Guess the algorithm from cuDNN kernel names. Persistent kernels carry "persist" in their names; the
    small-H variant is taken to say "small" too. This pattern is a best guess, so the names themselves are
    recorded beside the guess (column cudnn_kernels). Returns SMALL_H, PERSIST, STANDARD or "unknown"."""
    low = [n.lower() for n in names]
    rnn = [n for n in low if "rnn" in n or "lstm" in n or "gru" in n]
    if any("small" in n for n in rnn):
        return SMALL_H
    if any("persist" in n for n in rnn):
        return PERSIST
    if rnn:
        return STANDARD
    return "unknown"


def profiled_kernels(fn) -> list[str]:
    """Names of the CUDA kernels launched by one call of ``fn`` (torch.profiler), distinct, in order."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    seen: list[str] = []
    for ev in prof.events():
        dev_type = getattr(ev, "device_type", None)
        if dev_type is not None and "CUDA" not in str(dev_type):
            continue
        if ev.name not in seen:
            seen.append(ev.name)
    return seen
