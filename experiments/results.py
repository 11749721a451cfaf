"""The sweep's long-format CSV: columns, append-only writing, resume keys, integrity checks, the writer's
lock, and the provenance of a run.

One row per (backend, strategy, cell, config, dtype, pass) on one device. The ``cell`` column ("lstm", "gru",
"rnn") came after the first CSVs: a file with the earlier header (``LEGACY_COLUMNS``, no ``cell``) is read as
LSTM rows, and the first append to it rewrites it in this version's columns (``upgrade_csv``). Rows are
appended and flushed one at a time, so an interrupted sweep loses at most the row in flight; a rerun skips
every key already in the file.
A record that is incomplete or malformed (a crash of the machine or a full disk mid-write, a truncated copy)
is never taken for a finished row: ``scan_csv`` finds it, ``repair_csv`` moves its bytes to a side file and
drops it from the CSV (the sweep then measures that row again), and ``read_rows`` refuses a damaged file.
One sweep at a time writes a CSV: ``lock_csv`` holds an advisory ``fcntl.flock`` on it.
"""
from __future__ import annotations

import csv
import datetime
import io
import os
import platform
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# a row's problem: the cell of a speedup (the comparison baseline and every backend share it)
PROBLEM = ("cell", "B", "T", "H", "I", "layers", "directions", "dtype", "pass")
# the resume key: one row per GPU, problem, backend and strategy
KEY = ("gpu", *PROBLEM, "backend", "strategy")
# the cell of a row written before the column existed
LEGACY_CELL = "lstm"

COLUMNS = [
    # what was run
    "device", "gpu", "cell", "B", "T", "H", "I", "layers", "directions", "dtype", "pass", "backend", "strategy",
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

# the columns of a CSV written before the cell column (every row an LSTM's)
LEGACY_COLUMNS = [c for c in COLUMNS if c != "cell"]

# left empty on CPU rows (no CUDA, no cuDNN, no CUDA allocator)
CPU_EMPTY = {"cudnn_algo_seen", "cudnn_kernels", "peak_mb", "cuda", "cudnn"}
# filled on every row, error rows included
ALWAYS = [c for c in COLUMNS if c not in CPU_EMPTY and c not in {
    "ms_p50", "ms_p20", "ms_p80", "compile_s", "tokens_per_s", "tflops", "speedup", "frac_floor",
    "max_rel_err", "error", "strategy"}]


# value checks that catch a record glued from two (a row appended onto a partial line)
INT_COLUMNS = ("B", "T", "H", "I", "layers", "directions")
FLOAT_COLUMNS = ("ms_p50", "ms_p20", "ms_p80", "compile_s", "tokens_per_s", "tflops", "speedup", "peak_mb",
                 "floor_ms", "frac_floor", "max_rel_err", "peak_hbm_gbs", "peak_l2_gbs", "l2_mb",
                 "peak_tflops_fp16", "peak_tflops_bf16", "peak_tflops_tf32", "peak_tflops_fp32")
DEVICES = ("cpu", "cuda")
CELLS = ("lstm", "gru", "rnn")


def _value(row: dict, k: str) -> str:
    return str(row.get("cell") or LEGACY_CELL) if k == "cell" else str(row[k])


def key_of(row: dict) -> tuple[str, ...]:
    """The resume key of a row (values as the strings the CSV holds; no or an empty cell reads as lstm)."""
    return tuple(_value(row, k) for k in KEY)


def problem_of(row: dict) -> tuple[str, ...]:
    """The ``PROBLEM`` part of a row's key (values as the strings the CSV holds)."""
    return tuple(_value(row, k) for k in PROBLEM)


def job_fields(job, gpu: str | None = None, strategy: str | None = None) -> dict:
    """The key columns of the row a sweep job (``grids.Job``) writes, ``gpu`` included when given;
    ``strategy`` replaces the job's (a headline variant's label)."""
    c = job.cfg
    row = {"cell": getattr(c, "cell", LEGACY_CELL), "B": c.B, "T": c.T, "H": c.H, "I": c.I, "layers": c.layers,
           "directions": c.directions, "dtype": job.dtype, "pass": job.pass_, "backend": job.backend,
           "strategy": job.strategy if strategy is None else strategy}
    if gpu is not None:
        row["gpu"] = gpu
    return row


def baseline_ms(rows: list[dict], baseline: str, gpu: str) -> dict:
    """{problem: ms_p50} of the comparison baseline's finished rows on ``gpu`` (for the speedups of a resumed
    run)."""
    return {problem_of(r): float(r["ms_p50"]) for r in rows
            if r["backend"] == baseline and not r["error"] and r["gpu"] == gpu and r["ms_p50"]}


@dataclass
class Scan:
    """What ``scan_csv`` found: the header's verdict, the byte spans (start, end) of the good records after
    the header, and the bad ones as (start, end, line number, reason); ``legacy`` when the header is the one
    from before the cell column (``LEGACY_COLUMNS``)."""

    header_ok: bool = True
    legacy: bool = False
    header_end: int = 0
    good: list = field(default_factory=list)
    bad: list = field(default_factory=list)


def _physical_lines(data: bytes, start: int):
    """(start, end) of each line from ``start``, the newline included (the last one may lack it)."""
    while start < len(data):
        nl = data.find(b"\n", start)
        end = len(data) if nl < 0 else nl + 1
        yield start, end
        start = end


def _next_record(data: bytes, start: int) -> int:
    """End of the CSV record starting at ``start``: the first newline outside quotes (quotes inside a field
    are doubled, so the parity of the quote count says whether a newline is inside one), or the end of data."""
    quotes = 0
    for s, e in _physical_lines(data, start):
        quotes += data.count(b'"', s, e)
        if quotes % 2 == 0 and data[e - 1:e] == b"\n":
            return e
    return len(data)


def _record_problem(raw: bytes, columns: list[str] = COLUMNS) -> str | None:
    """Why ``raw`` (one record, its newline included) is not a finished row, or None when it is."""
    if not raw.endswith(b"\n"):
        return "incomplete (no end of line)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as e:
        return f"not CSV ({e})"
    if len(rows) != 1:
        return "not one CSV record"
    if len(rows[0]) != len(columns):
        return f"{len(rows[0])} fields instead of {len(columns)}"
    row = dict(zip(columns, rows[0]))
    if row["device"] not in DEVICES and row["device"] != "":
        return f"device {row['device']!r}"
    if row.get("cell", LEGACY_CELL) not in CELLS:
        return f"cell {row['cell']!r}"
    for c in INT_COLUMNS:
        if row[c] and not row[c].isdigit():
            return f"{c} {row[c]!r} is not an integer"
    for c in FLOAT_COLUMNS:
        if row[c]:
            try:
                float(row[c])
            except ValueError:
                return f"{c} {row[c]!r} is not a number"
    return None


def scan_csv(data: bytes) -> Scan:
    """Check a sweep CSV's bytes record by record. A bad record that spans several lines (an unclosed quote
    swallowing later rows) counts as its first line only, and the scan goes on at the next line, so the
    finished rows after it are kept."""
    scan = Scan()
    if not data:
        return scan
    header_end = _next_record(data, 0)
    header = data[:header_end]
    scan.header_end = header_end
    def is_header(cols):
        return header in ((",".join(cols) + "\r\n").encode(), (",".join(cols) + "\n").encode())

    scan.legacy = is_header(LEGACY_COLUMNS)
    scan.header_ok = scan.legacy or is_header(COLUMNS)
    columns = LEGACY_COLUMNS if scan.legacy else COLUMNS
    pos = header_end
    while pos < len(data):
        end = _next_record(data, pos)
        problem = _record_problem(data[pos:end], columns)
        if problem is None:
            scan.good.append((pos, end))
        else:
            first_line_end = next(_physical_lines(data, pos))[1]
            if first_line_end < end:  # resynchronize on the next line
                end = first_line_end
                problem = _record_problem(data[pos:end], columns) or problem
            scan.bad.append((pos, end, data.count(b"\n", 0, pos) + 1, problem))
        pos = end
    return scan


def _bad_summary(scan: Scan, limit: int = 3) -> str:
    parts = [f"line {line}: {why}" for _, _, line, why in scan.bad[:limit]]
    more = len(scan.bad) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _header_error(p: Path) -> ValueError:
    return ValueError(f"{p}: the header is damaged or its columns differ from this version's; "
                      "write to a new --out file")


def read_rows(path: str | os.PathLike) -> list[dict]:
    """All rows of ``path`` as dicts of strings ([] when the file does not exist or is empty); the rows of a
    file from before the cell column get cell = "lstm". Raises ValueError when the header is neither this
    version's nor that earlier one (write to a new file instead of mixing) or a record is incomplete or
    malformed (``repair_csv`` sets such records aside)."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return []
    data = p.read_bytes()
    scan = scan_csv(data)
    if not scan.header_ok:
        raise _header_error(p)
    if scan.bad:
        raise ValueError(f"{p}: {len(scan.bad)} incomplete or malformed record(s) ({_bad_summary(scan)}); "
                         "rerun the sweep on this file to set them aside and measure those rows again")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    if scan.legacy:
        rows = [{c: (LEGACY_CELL if c == "cell" else r[c]) for c in COLUMNS} for r in rows]
    return rows


def _csv_text(rows: list[dict]) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _overwrite(f, data: bytes) -> None:
    """Replace everything in the open file ``f`` by ``data``, in place (the same file, so a lock on it holds),
    fsynced."""
    f.seek(0)
    f.write(data)
    f.truncate()
    f.flush()
    os.fsync(f.fileno())


def upgrade_csv(path: str | os.PathLike) -> str | None:
    """Rewrite a CSV from before the cell column in this version's columns, every row with cell = "lstm",
    in place (same file, so a lock on it holds), fsynced. Returns a message saying so, or None when the file
    is missing, empty or already current. Raises ValueError as ``read_rows`` does (repair first). Call it
    holding ``lock_csv``, or where no sweep writes the file."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return None
    with p.open("r+b") as f:
        data = f.read()
        scan = scan_csv(data)
        if not scan.legacy:
            return None
        rows = read_rows(p)
        _overwrite(f, _csv_text(rows))
    return f"{p}: rewrote {len(rows)} row(s) from before the cell column with the column added (cell = lstm)"


def repair_csv(path: str | os.PathLike) -> str | None:
    """Set the incomplete or malformed records of ``path`` aside: their bytes go to a new file beside it,
    ``<name>.damaged-<UTC time>``, and the CSV is rewritten in place (same file, so a lock on it holds) with
    the header and the good records only, fsynced. Returns a message saying so, or None when nothing was
    wrong. Raises ValueError for a damaged or foreign header (nothing is changed then). Call it holding
    ``lock_csv``."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return None
    with p.open("r+b") as f:
        data = f.read()
        scan = scan_csv(data)
        if not scan.header_ok:
            raise _header_error(p)
        if not scan.bad:
            return None
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        side = p.with_name(f"{p.name}.damaged-{stamp}")
        n = 1
        while side.exists():
            n += 1
            side = p.with_name(f"{p.name}.damaged-{stamp}-{n}")
        with side.open("xb") as g:
            for s, e, _, _ in scan.bad:
                g.write(data[s:e])
            g.flush()
            os.fsync(g.fileno())
        _overwrite(f, data[:scan.header_end] + b"".join(data[s:e] for s, e in scan.good))
    return (f"{p}: set aside {len(scan.bad)} incomplete or malformed record(s) ({_bad_summary(scan)}); their "
            f"bytes are in {side}; those rows will be measured again")


class CsvLocked(RuntimeError):
    """Another process holds the sweep lock on this CSV."""


@contextmanager
def lock_csv(path: str | os.PathLike):
    """Hold an exclusive advisory lock (``fcntl.flock``) on the CSV itself, creating it (empty) when missing,
    for the whole read-measure-append span of a sweep. Raises CsvLocked at once when another process holds
    it: two sweeps never both append to one file. Without fcntl (not POSIX), no lock is taken."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with p.open("ab") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CsvLocked(f"{p} is being written by another sweep (its fcntl lock is held); wait for that "
                            "sweep to finish, then rerun this command to resume, or give another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one row (missing columns empty; no cell: lstm), writing the header first into a new file;
    flushed and fsynced so that a kill after this call keeps the row. A file from before the cell column is
    first rewritten with it (``upgrade_csv``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise KeyError(f"unknown CSV columns {sorted(unknown)}")
    row = dict(row)
    row["cell"] = row.get("cell") or LEGACY_CELL
    if p.exists() and p.stat().st_size:
        with p.open("rb") as f:
            first = f.readline()
        if first.rstrip(b"\r\n") == ",".join(LEGACY_COLUMNS).encode():
            upgrade_csv(p)
    with p.open("a+b") as raw:
        raw.seek(0, os.SEEK_END)
        size = raw.tell()
        if size:
            raw.seek(size - 1)
            if raw.read(1) != b"\n":  # never glue a row onto a partial line: it stays a separate bad record
                raw.write(b"\n")
        f = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if size == 0:
            w.writeheader()
        w.writerow({c: _fmt(row.get(c)) for c in COLUMNS})
        f.flush()
        os.fsync(f.fileno())
        f.detach()


ROOT = Path(__file__).resolve().parent.parent


def commit_of(tree: str | os.PathLike = ROOT, *, revision: bool = True, git: bool = True,
              short: bool = False) -> str:
    """The commit a source tree holds: with ``revision``, the first word of ``tree``/REVISION when that file
    exists (a tree copied without .git carries it: ``git rev-parse HEAD > REVISION``); else, with ``git``,
    HEAD of the repository around ``tree`` (abbreviated with ``short``), "+dirty" when tracked files other than
    outputs (``results/``, ``scratch/``: what a run itself writes) changed; "unknown" when neither says."""
    tree = Path(tree)
    rev = tree / "REVISION"
    if revision and rev.is_file() and rev.read_text().split():
        return rev.read_text().split()[0]
    if not git:
        return "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=tree,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(top,exclude)results", ":(top,exclude)scratch"], cwd=tree,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + ("+dirty" if sha and dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_commit() -> str:
    """The commit column of a sweep row: git's HEAD of this repository (``commit_of`` without REVISION;
    ``experiments.gpu_sweep`` swaps in ``gpu_env.revision``, which reads REVISION first)."""
    return commit_of(revision=False)


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine() or 'unknown'})"


def provenance(device) -> dict:
    """Columns describing where and with what a run happened."""
    import torch

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
    """A progress bar with an ETA on stderr (tqdm, a dependency of the package), one step per row."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="row", dynamic_ncols=True)
