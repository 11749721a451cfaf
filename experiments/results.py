"""The sweep's long-format CSV: columns, append-only writing, resume keys, and the provenance of a run.

One row per (backend, strategy, config, dtype, pass) on one device. Rows are appended and flushed one at a
time, so an interrupted sweep loses at most the row in flight; a rerun skips every key already in the file.
"""
from __future__ import annotations

import csv
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

KEY = ("gpu", "B", "T", "H", "I", "layers", "directions", "dtype", "pass", "backend", "strategy")

COLUMNS = [
    # what was run
    "device", "gpu", "B", "T", "H", "I", "layers", "directions", "dtype", "pass", "backend", "strategy",
    "cudnn_algo", "cudnn_algo_seen", "cudnn_kernels",
    # measurements
    "ms_p50", "ms_p20", "ms_p80", "compile_s", "tokens_per_s", "tflops", "speedup", "speedup_ref",
    "peak_mb", "floor_ms", "frac_floor", "max_rel_err", "error",
    # peaks measured at the start of the run
    "peak_hbm_gbs", "peak_l2_gbs", "l2_mb", "peak_tflops_fp16", "peak_tflops_bf16", "peak_tflops_tf32",
    "peak_tflops_fp32",
    # provenance
    "cuda", "cudnn", "torch", "triton", "python", "tf32_matmul", "tf32_cudnn", "commit", "date",
]

# left empty on CPU rows (no CUDA, no cuDNN, no CUDA allocator)
CPU_EMPTY = {"cudnn_algo_seen", "cudnn_kernels", "peak_mb", "cuda", "cudnn"}
# filled on every row, error rows included
ALWAYS = [c for c in COLUMNS if c not in CPU_EMPTY and c not in {
    "ms_p50", "ms_p20", "ms_p80", "compile_s", "tokens_per_s", "tflops", "speedup", "frac_floor",
    "max_rel_err", "error", "strategy"}]


def key_of(row: dict) -> tuple[str, ...]:
    """The resume key of a row (values as the strings the CSV holds)."""
    return tuple(str(row[k]) for k in KEY)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """All rows of ``path`` as dicts of strings ([] when the file does not exist or is empty). Raises
    ValueError when the header is not this version's (write to a new file instead of mixing)."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return []
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise ValueError(f"{p}: columns differ from this version's; write to a new --out file")
        return list(reader)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row (missing columns empty), writing the header first into a new file; flushed and
    fsynced so that a kill after this call keeps the row."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists() or p.stat().st_size == 0
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown CSV columns {sorted(unknown)}")
    with p.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow({c: _fmt(row.get(c)) for c in COLUMNS})
        f.flush()
        os.fsync(f.fileno())


def git_commit() -> str:
    """HEAD's commit of the repository holding this file, "+dirty" when tracked files changed; "unknown"
    outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("+dirty" if sha and dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine() or 'unknown'})"


def provenance(device: torch.device) -> dict:
    """Columns describing where and with what a run happened."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "gpu": device_name(device),
        "cuda": (torch.version.cuda or "") if cuda else "",
        "cudnn": (torch.backends.cudnn.version() or "") if cuda else "",
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "tf32_matmul": int(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": int(torch.backends.cudnn.allow_tf32),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def progress(total: int, desc: str = "sweep"):
    """A progress bar with an ETA: tqdm when installed, else a plain line printer on stderr. The returned
    object has ``update(n=1)``, ``set_postfix_str(s)`` and ``close()``."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True)
    except ImportError:
        return _Printer(total, desc)


class _Printer:
    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.t0, self.note = total, desc, 0, datetime.datetime.now(), ""

    def set_postfix_str(self, s: str) -> None:
        self.note = s

    def update(self, n: int = 1) -> None:
        self.n += n
        el = (datetime.datetime.now() - self.t0).total_seconds()
        eta = el / self.n * (self.total - self.n) if self.n else float("nan")
        print(f"{self.desc}: {self.n}/{self.total} elapsed {el:.0f}s ETA {eta:.0f}s {self.note}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        pass
