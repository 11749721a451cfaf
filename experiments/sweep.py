"""Benchmark sweep: fusedrnn against cuDNN and the other ways to run an LSTM, GRU or RNN, one CSV row per
measurement.

    python -m experiments.sweep --grid batch --dtypes fp16,bf16 --passes fwd,fwdbwd --out results/batch.csv
    python -m experiments.sweep --cell gru --grid batch ...   # models.GRU against nn.GRU (cuDNN); rnn: nn.RNN

``--cell`` (lstm, the default; gru; rnn = tanh; slstm; lnlstm; lngru) picks the recurrent cell and ``--heads N``
(lstm, gru, rnn, slstm) cuts its recurrence into N heads (block-diagonal W_hh, ``num_heads=N``); the rows carry
them in their ``cell`` and ``heads`` columns. The comparison baseline (the ``speedup_ref`` column, what
``max_rel_err`` and ``speedup`` are against) is the torch.nn module of the cell (nn.LSTM, nn.GRU, nn.RNN; with heads
its dense block-diagonal equivalent: the same function at a dense module's cost, so also the dense anchor of the
same H); the cells torch.nn lacks (slstm, lnlstm, lngru) are compared with their fusedrnn module's PyTorch reference
(backend ``reference``, a Python loop over the steps) and timed beside the dense torch.nn module of the plain cell
of the same shape (backend ``nn_dense``, strategy ``nn.LSTM`` or ``nn.GRU``: cuDNN on CUDA; another function, so its
rows have no ``max_rel_err``). See ``experiments/backends.py``.
Without CUDA the Triton kernels run in the interpreter, the default grid is ``smoke``, the baseline is that
torch.nn module on CPU (``torch_cpu``), output goes to scratch/, and the hardware peaks and the floor are not
measured (left empty): a check that everything runs, not a benchmark. See ``--help`` for grids and backends.

``--packed`` gives every backend its input as a PackedSequence of row lengths drawn uniformly from [ceil(T/2), T]
(``LENGTHS``); ``--resets P`` sets each (t, b) flag of a ``resets=`` mask with probability P (``RESETS``), both
drawn from generators seeded by the row's config (its ``inputs`` column says which). Only the backends that take them
run (``Backend.variable``: fusedrnn, and torch.nn's modules); torch.nn (cuDNN's rows, and the comparison baseline)
has no ``resets=``, so it runs what its users do today: every segment as its own sequence, all in one
PackedSequence (``backends.run_segments``), and the fusedrnn rows' ``max_rel_err`` is against that.

Every row's first call is compared with the baseline's outputs and gradients on the same inputs: a row whose
``max_rel_err`` is above its dtype's tolerance (``results.REL_ERR_TOL``) or not finite is recorded as failed
(its ``error`` says ``WrongOutput: ...``, it has no timings and no speedup) and the sweep exits 1.
Exit status (``EXIT_CODES``): 0 done, 1 rows of the grid failed the output check, 2 nothing could be run or
written (bad arguments, no backend runs here, the CSV locked, damaged, read-only or the disk full), 130
interrupted.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # before anything imports triton, kernels or models
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from torch import Tensor, nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

from . import backends as bk  # noqa: E402
from . import shard  # noqa: E402
from .cudnn_algo import classify_kernels, predict_for_pass, profiled_kernels  # noqa: E402
from .grids import CELLS, GRIDS, NN_CELL_OF, NN_MODULES, Config, grid_configs  # noqa: E402
from .measure import (  # noqa: E402
    Peaks, bench, cpu_peaks, elem_bytes, floor_ms, max_rel_error, measure_peaks, rnn_flops,
)
from .results import (  # noqa: E402
    WRONG_OUTPUT, CsvLocked, append_row, baseline_ms, failed, job_fields, key_of, lock_csv, os_error_line,
    problem_of, progress, provenance, read_rows, rel_err_tolerance, repair_csv, upgrade_csv, wrong_output,
)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
PASSES = ("fwd", "fwdbwd")
CPU_NOTE = ("No CUDA device: CPU smoke run. Triton kernels run in the interpreter and the baseline is "
            "{baseline}; these timings are NOT GPU benchmarks.")
STATES = ("x", "h0", "c0")  # the inputs that get gradients (c0: the cells with states beside h, bk.CELL_STATES)
NN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
MAX_INPUT_SETS = 4
LENGTHS = "lengths ~ uniform integers in [ceil(T/2), T]"  # --packed
RESETS = "resets[t, b] ~ Bernoulli({p:g})"  # --resets P
EXIT_CODES = ("exit status: 0 done; 1 rows of the grid failed the output check (error WrongOutput: max_rel_err "
              "above the dtype's tolerance); 2 nothing could be run or written (bad arguments, no backend runs "
              "here, the CSV locked, damaged, read-only or the disk full); 130 interrupted")


class WrongOutput(Exception):
    """The first call's outputs or gradients differ from the comparison baseline's beyond the tolerance."""


assert WrongOutput.__name__ == WRONG_OUTPUT


@dataclass(frozen=True)
class Job:
    """One row to measure."""

    cfg: Config
    dtype: str
    pass_: str
    backend: str
    strategy: str


@dataclass
class Context:
    """What every job of a run shares."""

    device: torch.device
    peaks: Peaks
    prov: dict
    tf32: bool
    warmup_ms: float
    rep_ms: float
    min_reps: int
    baseline: str  # the comparison baseline's backend name (cudnn, or torch_cpu on CPU)
    baseline_ms: dict = field(default_factory=dict)  # results.problem_of(row) -> the baseline's ms_p50


def _csv_list(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def _int_list(s: str) -> list[int]:
    return [int(p) for p in _csv_list(s)]


def build_parser() -> argparse.ArgumentParser:
    grids = "\n".join(f"  {k:<7} {v[3]}" for k, v in GRIDS.items())
    backs = "\n".join(f"  {b.name:<14} {b.notes} (devices: {', '.join(b.devices)})" for b in bk.REGISTRY.values())
    p = argparse.ArgumentParser(
        prog="python -m experiments.sweep",
        description="Time fusedrnn against cuDNN and other LSTM, GRU or RNN implementations; append one CSV row "
                    "per (backend, strategy, cell, config, dtype, pass). Reruns skip rows already in the CSV.",
        epilog=f"grids (I = H, 1 layer, unidirectional unless --layers/--bidirectional):\n{grids}\n\n"
               f"backends:\n{backs}\n\nWithout CUDA: grid 'smoke', output under scratch/, no peaks or floor, and the "
               f"timings are not GPU benchmarks.\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=sorted(GRIDS), help="named grid (default: batch on CUDA, smoke on CPU)")
    p.add_argument("--cell", choices=CELLS, default="lstm",
                   help="recurrent cell: lstm (default), gru, rnn (tanh): the baseline is torch.nn.LSTM / GRU / RNN "
                        "(cuDNN on CUDA) and fusedrnn runs models.LSTM / GRU / RNN; slstm, lnlstm, lngru: the "
                        "baseline is the PyTorch reference of models.SLSTM / LayerNormLSTM / LayerNormGRU, with the "
                        "dense nn.LSTM (nn.GRU for lngru) of the same shape timed beside it (backend nn_dense)")
    p.add_argument("--heads", type=int, default=1,
                   help="heads of the recurrence (lstm, gru, rnn, slstm; default 1 = dense): block-diagonal W_hh of "
                        "heads of H / N units; the torch.nn baseline runs the dense block-diagonal equivalent")
    p.add_argument("--B", type=_int_list, help="comma list replacing the grid's batch sizes")
    p.add_argument("--T", type=_int_list, help="comma list replacing the grid's sequence lengths")
    p.add_argument("--H", type=_int_list, help="comma list replacing the grid's hidden sizes (I = H)")
    p.add_argument("--dtypes", type=_csv_list, help="comma list of fp16,bf16,fp32,fp64 "
                   "(default fp16,bf16,fp32 on CUDA, fp32 on CPU)")
    p.add_argument("--passes", type=_csv_list, default=list(PASSES),
                   help="fwd (inference under no_grad) and/or fwdbwd (training step: forward, a loss over "
                        "outputs and final states, backward); default fwd,fwdbwd")
    p.add_argument("--packed", action="store_true",
                   help=f"variable lengths: the input as a PackedSequence, {LENGTHS}, seeded by the config")
    p.add_argument("--resets", type=float, default=0.0, metavar="P",
                   help="episode resets: a resets= mask (T, B), each flag set with probability P, seeded by the "
                        "config; torch.nn (cuDNN) runs every segment as its own sequence (default 0: none)")
    p.add_argument("--layers", type=int, default=1, help="stacked layers (default 1)")
    p.add_argument("--bidirectional", action="store_true", help="two directions")
    p.add_argument("--backends", type=_csv_list,
                   help="comma list from the registry (default: every available backend for the device, "
                        "torch_compile on CUDA only); when none of them runs here the sweep stops with exit 2")
    p.add_argument("--out", type=Path, help="CSV to append to (default results/GRID.csv on CUDA, "
                   "scratch/GRID.csv on CPU)")
    p.add_argument("--tf32", choices=("on", "off"), default="on",
                   help="allow TF32 for fp32 matmuls, set the same for cuDNN and cuBLAS (default on, cuDNN's "
                        "own default)")
    p.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warm-up (default 25)")
    p.add_argument("--rep-ms", type=float, default=100.0, help="do_bench measuring time per row (default 100)")
    p.add_argument("--min-reps", type=int, default=3, help="CPU timing: at least this many calls (default 3)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: start no new row after this (the rest waits for a rerun)")
    p.add_argument("--retry-errors", action="store_true",
                   help="rerun rows whose stored row failed (an error, or a wrong output)")
    p.add_argument("--shard", type=shard.parse_shard, default=None,
                   help="i/n: run every n-th configuration from the i-th (0-based); merge with experiments.shard")
    p.add_argument("--plot", action="store_true",
                   help="draw the plots from the CSV when done (python -m experiments.plot CSV): next to the CSV, "
                        "or under scratch/ for a CPU run")
    return p


def default_out(grid: str, device: torch.device) -> Path:
    """results/GRID.csv on CUDA; scratch/GRID.csv otherwise (CPU numbers never go to results/)."""
    return Path("results" if device.type == "cuda" else "scratch") / f"{grid}.csv"


def _under_results(path: Path) -> bool:
    return "results" in path.resolve().parts


def available_backends(names, device: torch.device, cell: str = "lstm",
                       variable: bool = False) -> tuple[list[str], list[str]]:
    """Split requested backend names (None: the device's defaults that implement ``cell``) into (usable, messages
    for the rest): a backend runs when it runs on the device and implements ``cell`` (and, ``variable``: for
    ``--packed`` or ``--resets``, takes them: ``Backend.variable``). The comparison baseline of ``cell`` on the
    device comes first. Unknown names raise ValueError."""
    if names is None:
        names = [b.name for b in bk.REGISTRY.values()
                 if device.type in b.default_on and device.type in b.devices and cell in b.cells]
    usable, skipped = [], []
    for n in names:
        if n not in bk.REGISTRY:
            raise ValueError(f"unknown backend {n!r}; known: {sorted(bk.REGISTRY)}")
        b = bk.REGISTRY[n]
        why = None if device.type in b.devices else f"runs on {', '.join(b.devices)} only"
        why = why or (None if cell in b.cells else f"implements {', '.join(b.cells)} only, not {cell}")
        why = why or (None if b.variable or not variable else "takes no PackedSequence or resets")
        why = why or b.unavailable()
        (skipped.append(f"skipping {n}: {why}") if why else usable.append(n))
    baseline = bk.baseline_for(device, cell)
    usable.sort(key=lambda n: n != baseline)
    return usable, skipped


def make_jobs(configs, dtypes, passes, backend_names) -> list[Job]:
    """Jobs ordered dtype, pass, config, backend (the comparison baseline first), one per strategy; a sweep cut short
    still leaves whole curves."""
    jobs = []
    for dt in dtypes:
        for ps in passes:
            for cfg in configs:
                for name in backend_names:
                    for strat in bk.REGISTRY[name].strategies(cfg.cell, cfg.heads):
                        jobs.append(Job(cfg, dt, ps, name, strat))
    return jobs


def _base_row(job: Job, ctx: Context) -> dict:
    cfg = job.cfg
    row = dict(ctx.prov)
    if ctx.device.type == "cuda":  # a CPU's peaks are noise at smoke sizes: no peaks and no floor there
        row.update(ctx.peaks.as_row())
        row["floor_ms"] = floor_ms(cfg, DTYPES[job.dtype], job.pass_, ctx.peaks, ctx.tf32)
    row.update(job_fields(job), speedup_ref=ctx.baseline, error="", inputs=_inputs_note(cfg))
    try:
        mode = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN_TANH"}[NN_CELL_OF[cfg.cell]]  # the cell's or its anchor's
        row["cudnn_algo"] = predict_for_pass(cfg, DTYPES[job.dtype], job.pass_, ctx.device, mode=mode)
    except Exception as e:  # noqa: BLE001 - never lose a row over a label
        row["cudnn_algo"] = f"unknown ({type(e).__name__})"
    return row


def _source_module(cfg: Config, dtype: torch.dtype, device: torch.device, train: bool) -> nn.Module:
    """The module whose weights every backend copies: torch.nn's of ``cfg``'s cell (nn.LSTM, nn.GRU, nn.RNN tanh;
    with heads, W_hh zero outside the heads' diagonal blocks and ``num_heads`` set), or for the cells torch.nn
    lacks the fusedrnn module (SLSTM with ``num_heads``, LayerNormLSTM, LayerNormGRU) with backend="reference"."""
    torch.manual_seed(zlib.crc32(cfg.label.encode()))
    if cfg.cell not in NN_CLASSES:
        kw = {"num_heads": cfg.heads} if cfg.cell == "slstm" else {}
        m = bk.fusedrnn_class(cfg.cell)(cfg.I, cfg.H, num_layers=cfg.layers, bidirectional=cfg.directions == 2,
                                        backend="reference", **kw)
        return m.to(device=device, dtype=dtype).train(train)
    m = NN_CLASSES[cfg.cell](cfg.I, cfg.H, cfg.layers, bidirectional=cfg.directions == 2)
    if cfg.heads > 1:
        D = cfg.H // cfg.heads
        with torch.no_grad():
            for name, w in m.named_parameters():
                if name.startswith("weight_hh"):  # W[g*H + n*D + a, n*D + b]: the heads' diagonal blocks
                    w.mul_(torch.block_diag(*[torch.ones(D, D)] * cfg.heads).repeat(w.shape[0] // cfg.H, 1))
        m.num_heads = cfg.heads
    return m.to(device=device, dtype=dtype).train(train)


def _other_states(cfg: Config, LD: int, device: torch.device, dtype: torch.dtype) -> Tensor | None:
    """The cell's states beside h (``bk.CELL_STATES``), random: c (LD, B, H); the sLSTM's (c, n, m) stacked, its
    normaliser n >= 1 as after any step."""
    k = bk.CELL_STATES.get(cfg.cell, 0)
    if not k:
        return None
    c = 0.5 * torch.randn(LD, cfg.B, cfg.H, device=device, dtype=dtype)
    if k == 1:
        return c
    n = 1 + torch.rand(LD, cfg.B, cfg.H, device=device, dtype=dtype)
    return torch.stack([c, n, 0.5 * torch.randn_like(c)])


def _inputs_note(cfg: Config) -> str:
    """The ``inputs`` column: padded, or how the lengths and the resets were drawn, with the seed."""
    parts = [f"packed, {LENGTHS}"] if cfg.packed else ["padded"]
    if cfg.resets_p:
        parts.append(RESETS.format(p=cfg.resets_p))
    return "; ".join(parts) + (f"; seed {_seed(cfg)}" if len(parts) > 1 or cfg.packed else "")


def _seed(cfg: Config) -> int:
    return zlib.crc32(cfg.label.encode())


def _variable_inputs(cfg: Config) -> tuple[Tensor | None, Tensor | None]:
    """(lengths (B,) or None, resets (T, B) bool or None) of ``cfg``, from a generator seeded by its label."""
    g = torch.Generator().manual_seed(_seed(cfg))
    lengths = torch.randint((cfg.T + 1) // 2, cfg.T + 1, (cfg.B,), generator=g) if cfg.packed else None
    resets = torch.rand(cfg.T, cfg.B, generator=g) < cfg.resets_p if cfg.resets_p else None
    return lengths, resets


def _input_sets(cfg: Config, dtype: torch.dtype, device: torch.device, n: int, train: bool) -> list[dict]:
    """``n`` sets of fresh random inputs (normal, never zeros) and, for training, output cotangents; c0 and
    its cotangent gc for the cells with states beside h only (``_other_states``). With ``cfg.packed``, x is the
    data (rows, I) of a PackedSequence whose other fields are under "packing"; with ``cfg.resets_p``, "resets"
    holds the mask, one flag per packed row with ``cfg.packed`` (``_variable_inputs``)."""
    LD, out = cfg.layers * cfg.directions, cfg.H * cfg.directions
    lengths, resets = _variable_inputs(cfg)
    packing = rows = None
    if lengths is not None:
        packing = pack_padded_sequence(torch.zeros(cfg.T, cfg.B, 1), lengths, enforce_sorted=False)
        rows = len(packing.data)
        packing = {k: None if v is None else v.to(device) for k, v in packing._asdict().items() if k != "data"}
        packing["batch_sizes"] = packing["batch_sizes"].cpu()
        if resets is not None:
            resets = pack_padded_sequence(resets[..., None], lengths, enforce_sorted=False).data[:, 0]
    sets = []
    for _ in range(n):
        xshape = (cfg.T, cfg.B, cfg.I) if rows is None else (rows, cfg.I)
        s = {"x": torch.randn(xshape, device=device, dtype=dtype),
             "h0": 0.5 * torch.randn(LD, cfg.B, cfg.H, device=device, dtype=dtype)}
        if packing is not None:
            s["packing"] = packing
        if resets is not None:
            s["resets"] = resets.to(device)
        c0 = _other_states(cfg, LD, device, dtype)
        if c0 is not None:
            s["c0"] = c0
        if train:
            for k in STATES:
                if k in s:
                    s[k].requires_grad_(True)
            s.update(gy=torch.randn(*xshape[:-1], out, device=device, dtype=dtype),
                     gh=torch.randn(LD, cfg.B, cfg.H, device=device, dtype=dtype))
            if c0 is not None:
                s["gc"] = torch.randn_like(c0)
        sets.append(s)
    return sets


def _n_sets(cfg: Config, dtype: torch.dtype, train: bool, l2_bytes: int) -> int:
    """Rotate input sets when one set fits in L2 (so a call never finds its inputs there from the last)."""
    LD = cfg.layers * cfg.directions
    states = 1 + bk.CELL_STATES.get(cfg.cell, 0)
    per = (cfg.T * cfg.B * cfg.I + states * LD * cfg.B * cfg.H) * elem_bytes(dtype)
    if train:
        per *= 2
    return 1 if per >= l2_bytes else min(MAX_INPUT_SETS, math.ceil(2 * l2_bytes / per))


def _forward(built: bk.Built, s: dict):
    """``built.run`` on the set ``s``: x as a PackedSequence with "packing" (y then its data), ``resets=`` with
    "resets"."""
    x = s["x"] if "packing" not in s else PackedSequence(s["x"], **s["packing"])
    kw = {"resets": s["resets"]} if "resets" in s else {}
    y, h, c = built.run(x, s["h0"], s.get("c0"), **kw)
    return (y.data if isinstance(y, PackedSequence) else y), h, c


def _call(built: bk.Built, s: dict, train: bool):
    """One call: (y, h_n, c_n or None); for training, then the backward of the outputs against the set's
    cotangents (c_n's for the LSTM only)."""
    if not train:
        with torch.no_grad():
            return _forward(built, s)
    y, h, c = _forward(built, s)
    outs, grads = (y, h), (s["gy"], s["gh"])
    if c is not None:
        outs, grads = (y, h, c), (*grads, s["gc"])
    torch.autograd.backward(outs, grads)
    return y, h, c


def _check_outputs(built: bk.Built, s: dict, train: bool, params: dict, heads: int = 1) -> list:
    """Run once on fresh leaf copies of ``s``; return outputs (y, h_n, c_n) (+ the gradients of x, h0, c0 and
    of the parameters, by name, a dense W_hh's in the ``heads``' layout: ``bk.head_blocks``); None where a cell has
    no such tensor (c_n, c0 of the GRU and the RNN)."""
    leaves = {k: (v.detach().clone().requires_grad_(train) if k in STATES else v) for k, v in s.items()}
    for p in params.values():
        p.grad = None
    out = list(_call(built, leaves, train))
    if train:
        out += [leaves[k].grad if k in leaves else None for k in STATES]
        out += [bk.head_blocks(n, params[n].grad, heads) for n in sorted(params)]
    return out


def run_job(job: Job, ctx: Context) -> dict:
    """Measure one job and return its CSV row. Any exception (OOM included) becomes the row's ``error``, and
    so does an output that failed the comparison with the baseline (``WrongOutput``: such a row is not timed);
    KeyboardInterrupt propagates."""
    row = _base_row(job, ctx)
    dev, dtype, train = ctx.device, DTYPES[job.dtype], job.pass_ == "fwdbwd"
    cuda = dev.type == "cuda"
    built = src = sets = None
    try:
        src = _source_module(job.cfg, dtype, dev, train)
        built = bk.REGISTRY[job.backend].build(src, job.strategy)
        sets = _input_sets(job.cfg, dtype, dev, _n_sets(job.cfg, dtype, train, ctx.peaks.l2_bytes), train)
        params = {n: p for n, p in built.params.items() if p.requires_grad}
        _first_call(row, job, ctx, src, built, sets[0], train, params)
        if job.backend in ("cudnn", "nn_dense") and cuda:  # cuDNN runs both: record what it ran
            names = profiled_kernels(lambda: _call(built, sets[0], train))
            rnn_names = [n for n in names if any(w in n.lower() for w in ("rnn", "lstm", "gru"))]
            row["cudnn_algo_seen"] = classify_kernels(names)
            row["cudnn_kernels"] = "|".join(n[:80] for n in rnn_names[:6])
        _timings(row, job, ctx, built, sets, train, params)
    except Exception as e:  # noqa: BLE001 - a failing backend must not stop the sweep
        oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
        msg = " ".join(str(e).split())[:300]
        row["error"] = ("OOM: " if oom else "") + f"{type(e).__name__}: {msg}"
    finally:
        del built, src, sets
        if cuda:
            bk.fusedrnn_models().clear_cuda_graphs()  # captured time loops hold static buffers of this config's size
            torch.cuda.empty_cache()
    return row


def _first_call(row: dict, job: Job, ctx: Context, src: nn.RNNBase, built: bk.Built, s: dict, train: bool,
                params: dict) -> None:
    """The first call (compilation, autotuning, graph capture): its seconds in ``compile_s``, and its outputs
    and gradients against the comparison baseline's on the same inputs in ``max_rel_err`` (none for an anchor:
    another function)."""
    cuda = ctx.device.type == "cuda"
    heads = job.cfg.heads
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    got = _check_outputs(built, s, train, params, heads)
    if cuda:
        torch.cuda.synchronize()
    row["compile_s"] = time.perf_counter() - t0
    if bk.REGISTRY[job.backend].anchor:
        return
    if job.backend == ctx.baseline:
        row["max_rel_err"] = 0.0
        return
    base = bk.REGISTRY[ctx.baseline].build(src, "")
    base_params = {n: p for n, p in base.params.items() if n in params}
    want = _check_outputs(base, s, train, base_params, heads)
    got = got[:6] + [bk.head_blocks(n, params[n].grad, heads) for n in sorted(base_params)] if train else got
    row["max_rel_err"] = err = max_rel_error(got, want)
    tol = rel_err_tolerance(job.dtype)
    if not err <= tol:
        raise WrongOutput(f"max_rel_err {err:.3g} against {ctx.baseline} is above the {job.dtype} tolerance "
                          f"{tol:g}: the outputs or gradients are wrong")


def _timings(row: dict, job: Job, ctx: Context, built: bk.Built, sets: list, train: bool, params: dict) -> None:
    """Median and p20/p80 over the rotating input sets, then peak memory (CUDA), throughput, floor fraction
    and the speedup against the comparison baseline of the same problem."""
    dev = ctx.device
    order = iter(range(10**12))

    def fn():
        return _call(built, sets[next(order) % len(sets)], train)

    grad_to_none = (list(params.values()) + [s[k] for s in sets for k in STATES if k in s]) if train else None
    p50, p20, p80 = bench(fn, dev, warmup_ms=ctx.warmup_ms, rep_ms=ctx.rep_ms, grad_to_none=grad_to_none,
                          min_reps=ctx.min_reps)
    if dev.type == "cuda":
        # one call on its own: do_bench's 256 MB L2-flush buffer must not count
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        row["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    row.update(ms_p50=p50, ms_p20=p20, ms_p80=p80)
    tokens = sets[0]["x"].shape[0] if job.cfg.packed else job.cfg.B * job.cfg.T  # packed: the rows run
    row["tokens_per_s"] = tokens / (p50 * 1e-3)
    row["tflops"] = rnn_flops(job.cfg, job.pass_) * tokens / (job.cfg.B * job.cfg.T) / (p50 * 1e-3) / 1e12
    if row.get("floor_ms"):
        row["frac_floor"] = row["floor_ms"] / p50
    key = problem_of(row)
    if job.backend == ctx.baseline:
        ctx.baseline_ms[key] = p50
    if key in ctx.baseline_ms:
        row["speedup"] = ctx.baseline_ms[key] / p50


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    """Run the sweep. Returns the process exit code (``EXIT_CODES``: 0 done or out of time budget, 1 rows of
    the grid failed the output check, 2 nothing could be run or written, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        base = (f"torch.{NN_MODULES[args.cell]} on CPU" if args.cell in NN_CLASSES else
                f"the PyTorch reference of models.{bk.FUSEDRNN_CLASSES[args.cell]} (backend 'reference'; "
                f"{NN_MODULES[args.cell]} of the same shape timed beside it)")
        print(CPU_NOTE.format(baseline=base), file=sys.stderr)
    grid = args.grid or ("batch" if cuda else "smoke")
    if not cuda and args.grid is None:
        print("No --grid given: running the 'smoke' grid.", file=sys.stderr)
    out = args.out or default_out(grid, device)
    if not cuda and _under_results(out):
        print(f"error: refusing to write CPU timings under results/ ({out}); use scratch/", file=sys.stderr)
        return 2
    dtypes = args.dtypes or (["fp16", "bf16", "fp32"] if cuda else ["fp32"])
    for d in dtypes:
        if d not in DTYPES:
            print(f"error: unknown dtype {d!r}; choose from {list(DTYPES)}", file=sys.stderr)
            return 2
    for ps in args.passes:
        if ps not in PASSES:
            print(f"error: unknown pass {ps!r}; choose from {list(PASSES)}", file=sys.stderr)
            return 2
    try:
        names, skipped = available_backends(args.backends, device, args.cell, args.packed or bool(args.resets))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in skipped:
        print(s, file=sys.stderr)
    if not names:
        print(f"error: no backend to run on {device.type}: {'; '.join(skipped)} (without --backends, every "
              "backend that runs here is used)", file=sys.stderr)
        return 2

    tf32 = args.tf32 == "on"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32

    try:
        configs = grid_configs(grid, B=args.B, T=args.T, H=args.H, layers=args.layers,
                               bidirectional=args.bidirectional, cell=args.cell, heads=args.heads,
                               packed=args.packed, resets_p=args.resets)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    jobs = shard.select(make_jobs(configs, dtypes, args.passes, names), args.shard)
    try:
        with lock_csv(out):  # one sweep at a time per CSV: the second one refuses
            return _run(args, out, grid, device, jobs, names, tf32)
    except CsvLocked as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the CSV or its folder cannot be created, read or written; a full disk
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2


def _run(args, out, grid, device, jobs, names, tf32) -> int:
    """The sweep proper, holding the CSV's lock: set damaged records aside, skip done rows, measure the rest
    and append them one at a time; then the exit status of the grid's rows (``_verdict``)."""
    try:
        note = repair_csv(out)
        existing = read_rows(out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder or CSV, a full disk: the damaged records stay where they are
        print(f"error: {out} holds incomplete or malformed records that could not be set aside: "
              f"{os_error_line(e)}", file=sys.stderr)
        return 2
    if note:
        print(f"warning: {note}", file=sys.stderr)
    gpu = provenance(device)["gpu"] if existing else None
    done = {key_of(r) for r in existing if not (args.retry_errors and failed(r))}
    baseline = bk.baseline_for(device, args.cell)
    todo = [j for j in jobs if key_of(job_fields(j, str(gpu))) not in done]
    print(f"sweep '{grid}' on {device.type}: {len(jobs)} rows in the grid, {len(jobs) - len(todo)} already in "
          f"{out}, {len(todo)} to run; backends {', '.join(names)}", file=sys.stderr)
    if not todo:
        return _finish(args, out, jobs, gpu)
    if not os.access(out, os.W_OK):
        print(f"error: {out} is read-only: {len(todo)} rows to run cannot be written; make it writable or give "
              "another --out", file=sys.stderr)
        return 2
    upgraded = upgrade_csv(out)
    if upgraded:
        print(upgraded, file=sys.stderr)

    signal.signal(signal.SIGTERM, _raise_interrupt)
    t_start = time.perf_counter()
    if device.type == "cuda":
        peaks = measure_peaks(device)
        print(f"peaks: HBM {peaks.hbm_gbs:.3g} GB/s, L2 {peaks.l2_gbs:.3g} GB/s ({peaks.l2_bytes / 2**20:.3g} MB), "
              f"fp16 {peaks.tflops_fp16:.3g} / bf16 {peaks.tflops_bf16:.3g} / tf32 {peaks.tflops_tf32:.3g} / "
              f"fp32 {peaks.tflops_fp32:.3g} TFLOP/s", file=sys.stderr)
    else:
        peaks = cpu_peaks()
        print("peaks and floor: not measured on CPU (noise at these sizes); those columns stay empty",
              file=sys.stderr)
    prov = provenance(device)
    ctx = Context(device, peaks, prov, tf32, args.warmup_ms, args.rep_ms, args.min_reps, baseline,
                  baseline_ms(existing, baseline, prov["gpu"]))

    if _measure(todo, ctx, out, grid, args.time_budget, t_start) == "interrupted":
        return 130
    return _finish(args, out, jobs, prov["gpu"])


def _measure(todo: list, ctx: Context, out: Path, grid: str, time_budget: float | None, t_start: float) -> str:
    """Run and append the rows of ``todo`` one at a time, starting none after ``time_budget`` seconds from
    ``t_start``. Returns "done" (all rows or out of time) or "interrupted" (Ctrl-C or SIGTERM; the rows so far
    stay)."""
    bar = progress(len(todo), desc=f"sweep {grid}")
    written = errors = wrong = 0
    try:
        for job in todo:
            if time_budget is not None and time.perf_counter() - t_start > time_budget:
                print(f"\ntime budget of {time_budget:.0f}s reached after {written} rows; rerun the same "
                      "command to resume", file=sys.stderr)
                break
            bar.set_postfix_str(f"{job.backend}{'/' + job.strategy if job.strategy else ''} {job.cfg.label} "
                                f"{job.dtype} {job.pass_}")
            row = run_job(job, ctx)
            append_row(out, row)
            written += 1
            wrong += wrong_output(row)
            errors += bool(row["error"]) and not wrong_output(row)
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        print(f"\ninterrupted: {written} rows written to {out}; rerun the same command to resume",
              file=sys.stderr)
        return "interrupted"
    finally:
        bar.close()
    print(f"wrote {written} rows ({errors} with errors, {wrong} with wrong outputs) to {out}", file=sys.stderr)
    return "done"


def _verdict(out: Path, jobs: list, gpu) -> int:
    """1 when the last stored row of any job of the grid failed the output check (saying which), else 0."""
    keys = {key_of(job_fields(j, str(gpu))) for j in jobs}
    last = {key_of(r): r for r in read_rows(out)}
    bad = [r for k, r in last.items() if k in keys and wrong_output(r)]
    if not bad:
        return 0
    print(f"error: {len(bad)} row(s) of this grid failed the output check (their outputs or gradients differ "
          f"from {bad[0]['speedup_ref'] or 'the baseline'}'s beyond the dtype's tolerance; error column "
          f"{WRONG_OUTPUT}), e.g. {bad[0]['backend']}/{bad[0]['strategy']} {bad[0]['cell']} B={bad[0]['B']} "
          f"T={bad[0]['T']} H={bad[0]['H']} {bad[0]['dtype']} {bad[0]['pass']}: max_rel_err {bad[0]['max_rel_err']}. "
          "They are never plotted or tabulated; after a fix, rerun with --retry-errors", file=sys.stderr)
    return 1


def _finish(args, out, jobs, gpu) -> int:
    """After a completed sweep: the plots when ``--plot`` was given, then the exit status (``_verdict``)."""
    verdict = _verdict(out, jobs, gpu)
    if args.plot:
        from . import plot

        rc = plot.main([str(out)])
        if rc:
            return rc
    return verdict


if __name__ == "__main__":
    sys.exit(main())
