"""The headline timings: cuDNN against every fusedrnn strategy and variant on the headline grid, the most
important rows first, under a time budget. One sweep-format CSV row per measurement (``experiments.results``).

    python -m experiments.headline --out OUT/headline.csv --budget 180 [--peaks-from OUT/env.json] [--cells lstm,gru]

Grid (1 layer, unidirectional, I = H, T = 1024): B in {16, 1, 64, 256} x H in {1024, 768} x {bf16, fp16} x
{fwd, fwdbwd}, in that order of priority (B = 16 and 1 before 64 and 256). Per (B, H, dtype, pass): cuDNN
(torch.nn.LSTM, the comparison baseline of the speedups; its algorithm predicted and seen in the profiler), then each
fusedrnn strategy (``models.STRATEGIES`` without "auto") under each variant of ``VARIANTS``. Every row is
measured by ``experiments.sweep.run_job`` (do_bench medians with p20/p80, the first call's outputs and
gradients checked against cuDNN, the floor, peak memory, provenance), appended and fsynced at once.

Cells (``--cells``, default lstm,gru): every LSTM row above comes first; then the same grid, in the same order,
for the GRU: cuDNN's nn.GRU, then each strategy of ``models.GRU`` under "main" only (the variants are knobs of
the LSTM kernels). The GRU rows are the lowest priority: they run when the budget leaves time after the LSTM's.

A variant is a named set of environment variables set around its rows only (kernel knobs read at call
time); its rows carry ``strategy`` = "<strategy>@<variant>" ("main", the code as it is, keeps the bare
strategy name). ``--baseline DIR`` times another source tree instead (its ``kernels/`` and ``models/``
unpacked in DIR, e.g. the commit every change is held to), in this process only, as the variant
"baseline": run it as a second process on the same CSV (both trees register the same custom ops). This
baseline *commit* is not the comparison baseline (cuDNN) every row's speedup is against. A rerun with the CSV
in place skips the rows already there (resume), so a second call picks up where the budget stopped the first.

Without CUDA this is the CPU dry run: a tiny grid (B in {1, 2}, H = 16, T = 4) in Triton's interpreter
against torch.nn.LSTM on CPU; its rows say device=cpu and are no benchmark.

A row whose first call's outputs or gradients differ from the baseline's beyond the tolerance is a failed row
(``experiments.sweep``'s check, error ``WrongOutput``); the command then exits 1 (2 for bad arguments).
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # before anything imports triton, kernels or models
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

from . import backends as bk  # noqa: E402
from .grids import Config  # noqa: E402
from .measure import Peaks, cpu_peaks, measure_peaks  # noqa: E402
from .results import (  # noqa: E402
    append_row, baseline_ms, commit_of, failed, job_fields, key_of, provenance, read_rows, wrong_output,
)
from .sweep import Context, Job, run_job  # noqa: E402

# Variants: name -> environment variables set while that variant's rows run. The one table to extend for
# A/B runs of kernel knobs, e.g. "splitk2": {"FUSEDRNN_SOME_KNOB": "2"}. "main" is the code unchanged.
VARIANTS: dict[str, dict[str, str]] = {
    "main": {},
    "pdl": {"FUSEDRNN_PDL": "1"},  # per_step: programmatic dependent launch between the step kernels
}
# The strategies a variant's knob changes (default: all); the others would only repeat "main"'s rows.
VARIANT_STRATEGIES: dict[str, tuple[str, ...]] = {
    "pdl": ("per_step",),
}

BASELINE = "baseline"  # the variant name of --baseline rows

B_ORDER = (16, 1, 64, 256)
H_ORDER = (1024, 768)
DTYPE_ORDER = ("bf16", "fp16")
PASS_ORDER = ("fwd", "fwdbwd")
T_HEADLINE = 1024
CPU_GRID = dict(B=(1, 2), H=(16,), T=4, dtypes=("bf16", "fp16"))


def label(strategy: str, variant: str) -> str:
    """The CSV's strategy column for a (strategy, variant) pair."""
    return strategy if variant == "main" else f"{strategy}@{variant}"


def split_label(strategy_label: str) -> tuple[str, str]:
    """Inverse of ``label``: (strategy, variant)."""
    s, _, v = strategy_label.partition("@")
    return s, (v or "main")


@contextmanager
def environment(values: dict[str, str]):
    """Set ``values`` in os.environ for the block, then restore what was there."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


CELLS = ("lstm", "gru")


def plan(cuda: bool, variants: list[str], B=None, H=None, T=None, dtypes=None, passes=None,
         cells=CELLS) -> list[tuple[Job, str]]:
    """(job, variant) pairs in priority order: the LSTM's, then each other cell's of ``cells``; within a cell
    problem by problem (B, then H, dtype, pass), the reference first. Cells other than the LSTM run the variant
    "main" only."""
    if cuda:
        bs, hs, t, dts = B or B_ORDER, H or H_ORDER, T or T_HEADLINE, dtypes or DTYPE_ORDER
        ref = "cudnn"
    else:
        bs, hs, t, dts = B or CPU_GRID["B"], H or CPU_GRID["H"], T or CPU_GRID["T"], dtypes or CPU_GRID["dtypes"]
        ref = "torch_cpu"
    out = []
    for cell in sorted(cells, key=lambda c: c != "lstm"):
        strategies = bk.REGISTRY["fusedrnn"].strategies(cell)
        cell_variants = variants if cell == "lstm" else [v for v in variants if v in ("main", BASELINE)]
        for b in bs:
            for h in hs:
                cfg = Config(b, t, h, h, cell=cell)
                for dt in dts:
                    for ps in passes or PASS_ORDER:
                        out.append((Job(cfg, dt, ps, ref, ""), "main"))
                        for v in cell_variants:
                            for s in strategies:
                                if s in VARIANT_STRATEGIES.get(v, strategies):
                                    out.append((Job(cfg, dt, ps, "fusedrnn", s), v))
    return out


def _row_key(gpu: str, job: Job, variant: str) -> tuple:
    return key_of(job_fields(job, gpu, label(job.strategy, variant) if job.backend == "fusedrnn" else None))


def _peaks(path: Path | None, device: torch.device) -> Peaks:
    if path is not None and path.is_file():
        try:
            return Peaks(**json.loads(path.read_text())["peaks"])
        except (KeyError, TypeError, ValueError) as e:
            print(f"peaks in {path} unusable ({e}); measuring", file=sys.stderr)
    return measure_peaks(device) if device.type == "cuda" else cpu_peaks()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(out: Path, budget: float | None, variants: list[str], peaks_from: Path | None = None,
        warmup_ms: float = 25.0, rep_ms: float = 100.0, retry_errors: bool = False, **grid) -> int:
    """Measure the plan's rows not yet in ``out``; start none after ``budget`` seconds. Returns the number
    of rows written."""
    from .gpu_env import revision

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if os.environ.get(bk.IMPL_DIR_ENV):
        variants = [BASELINE]  # another tree's code, as it is
    unknown = [v for v in variants if v not in VARIANTS and v != BASELINE]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; declared: {sorted(VARIANTS)}")
    torch.backends.cuda.matmul.allow_tf32 = True  # cuDNN's default; the headline is fp16/bf16 anyway
    torch.backends.cudnn.allow_tf32 = True
    if not cuda and "results" in out.resolve().parts:
        raise ValueError(f"refusing to write CPU timings under results/ ({out}); use scratch/ or /tmp")
    t_start = time.perf_counter()
    prov = provenance(device)
    prov["commit"] = revision()
    other = os.environ.get(bk.IMPL_DIR_ENV)
    if other:  # the timed code is the other tree's: its REVISION file names it
        prov["commit"] = commit_of(other, git=False)  # never the git of the tree it sits in
    existing = read_rows(out)
    done = {key_of(r) for r in existing if not (retry_errors and failed(r))}
    todo = [(j, v) for j, v in plan(cuda, variants, **grid) if _row_key(prov["gpu"], j, v) not in done]
    print(f"headline on {prov['gpu']}: {len(todo)} rows to run ({len(existing)} already in {out}), budget "
          f"{budget if budget is not None else 'none'} s, variants {', '.join(variants)}", file=sys.stderr, flush=True)
    if not todo:
        return 0
    peaks = _peaks(peaks_from, device)
    baseline = bk.baseline_for(device)
    ctx = Context(device, peaks, prov, True, warmup_ms, rep_ms, 3, baseline,
                  baseline_ms(existing, baseline, prov["gpu"]))
    signal.signal(signal.SIGTERM, _raise_interrupt)
    return _measure(todo, ctx, out, budget, t_start)


def _measure(todo: list, ctx: Context, out: Path, budget: float | None, t_start: float) -> int:
    """Run and append the (job, variant) rows of ``todo`` in order, each variant's environment set around its
    rows, starting none after ``budget`` seconds from ``t_start``. Returns the number of rows written."""
    written = 0
    try:
        for job, variant in todo:
            el = time.perf_counter() - t_start
            if budget is not None and el > budget:
                print(f"time budget of {budget:.0f}s reached after {written} rows; {len(todo) - written} left "
                      "for a rerun (resume)", file=sys.stderr, flush=True)
                break
            t0 = time.perf_counter()
            with environment(VARIANTS.get(variant, {}) if job.backend == "fusedrnn" else {}):
                row = run_job(job, ctx)
            if job.backend == "fusedrnn":
                row["strategy"] = label(job.strategy, variant)
            append_row(out, row)
            written += 1
            what = f"{job.cfg.cell} {job.backend}{'/' + row['strategy'] if row['strategy'] else ''}"
            res = (f"ERROR {row['error'][:150]}" if row["error"] else
                   f"{row['ms_p50']:.4g} ms" + (f" x{row['speedup']:.3g}" if row.get("speedup") else ""))
            print(f"[{el:5.0f}s +{time.perf_counter() - t0:4.1f}s] {job.cfg.label} {job.dtype} {job.pass_} "
                  f"{what}: {res}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"interrupted after {written} rows; rerun to resume", file=sys.stderr, flush=True)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.headline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="CSV to append to (resumes from it)")
    p.add_argument("--budget", type=float, default=None, help="seconds: start no row after this")
    p.add_argument("--variants", default="all", help="comma list of VARIANTS names, or 'all' (default)")
    p.add_argument("--peaks-from", type=Path, default=None, help="env.json of experiments.gpu_env (its peaks)")
    p.add_argument("--B", default=None, help="comma list replacing the batch sizes (in priority order)")
    p.add_argument("--H", default=None, help="comma list replacing the hidden sizes")
    p.add_argument("--dtypes", default=None, help="comma list replacing the dtypes")
    p.add_argument("--cells", default=",".join(CELLS),
                   help="comma list of cells, the LSTM's rows first whatever the order (default lstm,gru)")
    p.add_argument("--rep-ms", type=float, default=100.0, help="do_bench measuring time per row (default 100)")
    p.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warm-up (default 25)")
    p.add_argument("--retry-errors", action="store_true", help="rerun rows whose stored row has an error")
    p.add_argument("--baseline", type=Path, default=None,
                   help="time the kernels/ and models/ of the source tree in this folder instead (variant "
                        "'baseline'; cuDNN rows already in the CSV are reused)")
    args = p.parse_args(argv)
    if args.baseline is not None:
        if not (args.baseline / "models" / "__init__.py").is_file():
            print(f"error: --baseline {args.baseline}: no models/ package there", file=sys.stderr)
            return 2
        os.environ[bk.IMPL_DIR_ENV] = str(args.baseline.resolve())
    variants = list(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]

    def ints(s):
        return tuple(int(v) for v in s.split(",")) if s else None

    cells = tuple(c for c in args.cells.split(",") if c)
    bad = [c for c in cells if c not in ("lstm", "gru", "rnn")]
    if bad:
        print(f"error: unknown cells {bad}; choose from lstm, gru, rnn", file=sys.stderr)
        return 2
    try:
        run(args.out, args.budget, variants, args.peaks_from, args.warmup_ms, args.rep_ms, args.retry_errors,
            B=ints(args.B), H=ints(args.H), dtypes=tuple(args.dtypes.split(",")) if args.dtypes else None,
            cells=cells)
        wrong = sum(wrong_output(r) for r in {key_of(r): r for r in read_rows(args.out)}.values())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if wrong:  # never a speedup: experiments.report shows them as "wrong"
        print(f"error: {wrong} row(s) in {args.out} failed the output check (error WrongOutput)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
