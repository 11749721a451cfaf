"""Measurement: timing (median and p20/p80), hardware peaks, the memory/compute floor, FLOP counts, errors.

Dimensions: B batch, T steps, I input, H hidden, L layers, D directions.

On CUDA, kernels are timed with ``triton.testing.do_bench`` (it flushes L2 between calls); on CPU with a
perf_counter loop (the CPU path exists for the smoke grid only; its numbers are not benchmarks).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch

QUANTILES = (0.5, 0.2, 0.8)


def elem_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quantiles(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)

    def q(p):  # linear interpolation between order statistics
        pos = p * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return tuple(q(p) for p in QUANTILES)


def bench(fn, device: torch.device, *, warmup_ms: float = 25, rep_ms: float = 100, grad_to_none=None,
          min_reps: int = 3) -> tuple[float, float, float]:
    """Time ``fn()``. Returns milliseconds (p50, p20, p80).

    CUDA: ``triton.testing.do_bench(fn, warmup, rep, grad_to_none, quantiles)``. CPU: one warm-up call, then
    at least ``min_reps`` calls, more while they fit in ``rep_ms``; ``grad_to_none`` tensors get .grad = None
    before each call, as do_bench does.
    """
    if device.type == "cuda":
        import triton.testing

        r = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none,
                                    quantiles=list(QUANTILES))
        return tuple(float(v) for v in r)

    def clear():
        for t in grad_to_none or ():
            t.grad = None

    clear()
    t0 = time.perf_counter()
    fn()
    est = (time.perf_counter() - t0) * 1e3
    n = max(min_reps, min(1000, int(rep_ms / max(est, 1e-3))))
    samples = []
    for _ in range(n):
        clear()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return _quantiles(samples)


# --- hardware peaks ---------------------------------------------------------------------------------------------
@dataclass
class Peaks:
    """Measured peaks: bandwidths in GB/s, L2 size in bytes, matmul rates in TFLOP/s per dtype
    ("fp16", "bf16", "tf32", "fp32")."""

    hbm_gbs: float
    l2_gbs: float
    l2_bytes: int
    tflops_fp16: float
    tflops_bf16: float
    tflops_tf32: float
    tflops_fp32: float

    def as_row(self) -> dict:
        d = asdict(self)
        return {"peak_hbm_gbs": d["hbm_gbs"], "peak_l2_gbs": d["l2_gbs"], "l2_mb": d["l2_bytes"] / 2**20,
                **{f"peak_{k}": v for k, v in d.items() if k.startswith("tflops")}}

    def matmul_tflops(self, dtype: torch.dtype, tf32: bool) -> float:
        if dtype == torch.float16:
            return self.tflops_fp16
        if dtype == torch.bfloat16:
            return self.tflops_bf16
        return self.tflops_tf32 if (tf32 and dtype == torch.float32) else self.tflops_fp32


def _time_ms(fn, device: torch.device, iters: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean time of ``iters`` back-to-back calls (no cache flush)."""
    fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(iters):
                fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            out.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(out)


def _cpu_l2_bytes() -> int:
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as f:
            s = f.read().strip().upper()
        return int(s[:-1]) * (1024 if s.endswith("K") else 2**20) if s[-1] in "KM" else int(s)
    except (OSError, ValueError, IndexError):
        return 2**20


def cpu_peaks() -> Peaks:
    """The peaks of a CPU smoke run: only the L2 size (from sysfs; it sizes the rotating input sets), no
    bandwidth or matmul rate (NaN): at smoke sizes they are noise, so the sweep writes no floor on CPU."""
    nan = float("nan")
    return Peaks(nan, nan, _cpu_l2_bytes(), nan, nan, nan, nan)


def measure_peaks(device: torch.device) -> Peaks:
    """Measure HBM (DRAM) and L2 copy bandwidth and dense matmul rates on ``device`` (a few seconds on a
    GPU, under one on CPU, where sizes are small and the numbers only feed the smoke grid's columns)."""
    cuda = device.type == "cuda"
    if cuda:
        l2 = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20)
        big, n_mm, n_f32 = 2**30, 8192, 4096
    else:
        l2 = _cpu_l2_bytes()
        big, n_mm, n_f32 = 64 * 2**20, 128, 256

    def copy_gbs(nbytes: int, iters: int) -> float:
        src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
        dst = torch.empty_like(src)
        ms = _time_ms(lambda: dst.copy_(src), device, iters)
        return 2 * nbytes / (ms * 1e-3) / 1e9

    hbm = copy_gbs(big, 3)
    l2_gbs = copy_gbs(max(l2 // 4, 4096), 50)

    def mm_tflops(dtype: torch.dtype, n: int, tf32: bool = False) -> float:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            ms = _time_ms(lambda: a @ b, device, 5 if cuda else 2, repeats=3)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        return 2 * n**3 / (ms * 1e-3) / 1e12

    fp32 = mm_tflops(torch.float32, n_f32)
    return Peaks(hbm, l2_gbs, l2, mm_tflops(torch.float16, n_mm), mm_tflops(torch.bfloat16, n_mm),
                 mm_tflops(torch.float32, n_f32, tf32=True) if cuda else fp32, fp32)


# --- work and floor ---------------------------------------------------------------------------------------------
def _layer_inputs(cfg):
    """(layer input size) for each (layer, direction)."""
    return [cfg.I if layer == 0 else cfg.H * cfg.directions
            for layer in range(cfg.layers) for _ in range(cfg.directions)]


def _gates(cfg) -> int:
    from .grids import GATES

    return GATES[getattr(cfg, "cell", "lstm")]


def _head_size(cfg) -> int:
    """D, the units a recurrent product of ``cfg``'s cell reads: H / heads (H for a dense cell)."""
    return cfg.H // getattr(cfg, "heads", 1)


def rnn_flops(cfg, pass_: str) -> float:
    """Matmul FLOPs of ``cfg``'s cell with g gate blocks (``grids.GATES``: LSTM, sLSTM, LayerNorm LSTM 4, GRU 3,
    RNN 1) and heads of D = H / heads units (D = H dense): forward 2g*B*T*H*(D + I_l) per layer and direction
    (recurrent + input projection; 8*B*T*H*(H + I_l) for the dense LSTM); a training step counts 3x forward
    (backward = data + weight gradients). The FLOPs of the problem: a dense module run on the block-diagonal
    equivalent of heads does more."""
    g2, D = 2 * _gates(cfg), _head_size(cfg)
    fwd = sum(g2 * cfg.B * cfg.T * cfg.H * (D + i) for i in _layer_inputs(cfg))
    return fwd if pass_ == "fwd" else 3 * fwd


lstm_flops = rnn_flops  # the name from before the sweep had cells: the cell comes from cfg


def floor_ms(cfg, dtype: torch.dtype, pass_: str, peaks: Peaks, tf32: bool) -> float:
    """A lower bound on the time of one call, in ms.

    With g gate blocks (``grids.GATES``: LSTM 4, GRU 3, RNN 1) and heads of D = H / heads units (D = H dense),
    per step and per layer/direction: max(W_hh bytes / bandwidth, 2g*B*H*D / matmul peak), with L2 bandwidth when
    W_hh (gH x D) fits in L2 and HBM bandwidth otherwise: the recurrence must stream W_hh every step. Plus the
    input projection, a GEMM of
    2g*T*B*I*H FLOPs bounded by the matmul peak and by HBM traffic. A training step doubles the recurrent part
    (dh = dz @ W_hh streams W_hh again), adds two projection-sized GEMMs (dX, dW_ih) and the dW_hh GEMM
    (2g*T*B*H*D). (The GRU's saved gates are 4H wide; the bound counts the gH of the products only; the layer norms
    of the LayerNorm cells are not counted.)
    """
    e = elem_bytes(dtype)
    rate = peaks.matmul_tflops(dtype, tf32) * 1e12 / 1e3  # FLOP per ms
    hbm = peaks.hbm_gbs * 1e9 / 1e3  # bytes per ms
    B, T, H, g, D = cfg.B, cfg.T, cfg.H, _gates(cfg), _head_size(cfg)
    w_bytes = g * H * D * e
    bw = (peaks.l2_gbs if w_bytes <= peaks.l2_bytes else peaks.hbm_gbs) * 1e9 / 1e3
    step = max(w_bytes / bw, 2 * g * B * H * D / rate)

    def gemm(flops, nbytes):
        return max(flops / rate, nbytes / hbm)

    total = 0.0
    for i in _layer_inputs(cfg):
        proj = gemm(2 * g * T * B * i * H, (T * B * i + g * H * i + T * B * g * H) * e)
        if pass_ == "fwd":
            total += T * step + proj
        else:
            dw_hh = gemm(2 * g * T * B * H * D, (T * B * g * H + T * B * H + g * H * D) * e)
            total += 2 * T * step + 3 * proj + dw_hh
    return total


def max_rel_error(got, want) -> float:
    """max over tensor pairs of max|got - want| / max|want| (in float64); NaN/inf in ``got`` gives inf."""
    worst = 0.0
    for a, b in zip(got, want):
        if a is None or b is None:
            continue
        a, b = a.detach().double(), b.detach().double()
        if not torch.isfinite(a).all():
            return math.inf
        worst = max(worst, (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30))
    return worst
