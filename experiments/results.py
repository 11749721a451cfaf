"""The sweep's long-format CSV (columns, resume keys, provenance of a run) and the append-only CSV machinery it
shares with the study's CSVs (``experiments.tasks``): integrity checks, repair, atomic rewrites and the writers'
lock, for any ``Schema``.

One row per (backend, strategy, cell, heads, packed, resets_p, config, dtype, pass) on one device. The ``cell``
column ("lstm", "gru", "rnn", then "slstm", "lnlstm", "lngru") and the ``heads`` column (the cell's heads, 1
dense) came after the first CSVs (``ADDED``, in that order), then ``packed`` (1: a PackedSequence input,
``--packed``), ``resets_p`` (the probability of each reset flag, ``--resets``) and ``inputs`` (how the lengths and
resets were drawn, their seed): a file with an earlier header (``LEGACY_COLUMNS``, none of them; or a prefix of
them) is read with the missing columns filled (cell "lstm", heads 1, packed 0, resets_p 0, inputs "padded"), and
the first append to it rewrites it in this version's columns (``upgrade_csv``). Rows are appended and fsynced as
they are made (all of an append or none of it), so an interrupted run loses at most the row in flight; a rerun
skips every key already in the file. A row whose output failed the comparison with
the baseline is a failed row (``wrong_output``), like a row with an error.
A record that is incomplete or malformed (a crash of the machine mid-write, a truncated copy) is never taken
for a finished row: ``scan_csv`` finds it, ``repair_csv`` moves its bytes to a side file and drops it from the
CSV (the run then measures that row again), and ``read_rows`` refuses a damaged file. Every rewrite
(``repair_csv``, ``upgrade_csv``) writes a new file and renames it over the old one (``replace_file``): a full
disk or a crash leaves one or the other. One run at a time writes a CSV: ``lock_csv`` holds an advisory
``fcntl.flock`` on it.
"""
from __future__ import annotations

import csv
import datetime
import errno
import io
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

# a row's problem: the cell of a speedup (the comparison baseline and every backend share it)
PROBLEM = ("cell", "heads", "packed", "resets_p", "B", "T", "H", "I", "layers", "directions", "dtype", "pass")
# the resume key: one row per GPU, problem, backend and strategy
KEY = ("gpu", *PROBLEM, "backend", "strategy")
# the cell of a row written before the column existed
LEGACY_CELL = "lstm"
# the columns added after the first CSVs, in the order they came, each with the value of a row written before it
ADDED = {"cell": LEGACY_CELL, "heads": "1", "packed": "0", "resets_p": "0", "inputs": "padded"}

COLUMNS = [
    # what was run
    "device", "gpu", "cell", "heads", "packed", "resets_p", "B", "T", "H", "I", "layers", "directions", "dtype",
    "pass", "backend", "strategy", "inputs",
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

# the columns of a CSV written before the cell column (every row a dense LSTM's)
LEGACY_COLUMNS = [c for c in COLUMNS if c not in ADDED]

# the hardware peaks and the floor built on them: measured on a GPU only (a CPU's are noise at smoke sizes)
PEAK_COLUMNS = {"peak_hbm_gbs", "peak_l2_gbs", "l2_mb", "peak_tflops_fp16", "peak_tflops_bf16", "peak_tflops_tf32",
                "peak_tflops_fp32", "floor_ms", "frac_floor"}
# left empty on CPU rows (no CUDA, no cuDNN, no CUDA allocator, no peaks)
CPU_EMPTY = {"cudnn_algo_seen", "cudnn_kernels", "peak_mb", "cuda", "cudnn"} | PEAK_COLUMNS
# filled on every row, error rows included
ALWAYS = [c for c in COLUMNS if c not in CPU_EMPTY and c not in {
    "ms_p50", "ms_p20", "ms_p80", "compile_s", "tokens_per_s", "tflops", "speedup", "frac_floor",
    "max_rel_err", "error", "strategy"}]


# value checks that catch a record glued from two (a row appended onto a partial line)
INT_COLUMNS = ("heads", "packed", "B", "T", "H", "I", "layers", "directions")
FLOAT_COLUMNS = ("resets_p", "ms_p50", "ms_p20", "ms_p80", "compile_s", "tokens_per_s", "tflops", "speedup", "peak_mb",
                 "floor_ms", "frac_floor", "max_rel_err", "peak_hbm_gbs", "peak_l2_gbs", "l2_mb",
                 "peak_tflops_fp16", "peak_tflops_bf16", "peak_tflops_tf32", "peak_tflops_fp32")
DEVICES = ("cpu", "cuda")
CELLS = ("lstm", "gru", "rnn", "slstm", "lnlstm", "lngru")


@dataclass(frozen=True)
class Schema:
    """One kind of append-only CSV: its columns, those that must hold integers or numbers when not empty, the
    values some columns may take (checks that catch a record glued from two), the columns added after its first
    files (``legacy_fill``: column -> the value of a row written before it, in the order they came: every earlier
    header, ``legacy_headers``, is still read), and how floats are written (``float_digits`` significant digits, or
    None for Python's exact repr)."""

    name: str
    columns: tuple
    ints: tuple = ()
    floats: tuple = ()
    choices: dict = field(default_factory=dict)
    legacy_fill: dict = field(default_factory=dict)
    float_digits: int | None = 6

    def legacy_headers(self) -> dict:
        """{earlier header (tuple of columns): {missing column: its value}}, from the first files' header (none of
        ``legacy_fill``'s columns) to the one before the last column was added."""
        added = list(self.legacy_fill)
        out = {}
        for k in range(len(added)):
            missing = added[k:]
            out[tuple(c for c in self.columns if c not in missing)] = {c: self.legacy_fill[c] for c in missing}
        return out


SWEEP = Schema("sweep", tuple(COLUMNS), INT_COLUMNS, FLOAT_COLUMNS,
               choices={"device": DEVICES + ("",), "cell": CELLS}, legacy_fill=ADDED)

# --- whether a row's output was right --------------------------------------------------------------------------
WRONG_OUTPUT = "WrongOutput"  # the error column of a row whose first call's output failed the comparison
# max_rel_err (max |ours - baseline| / max |baseline| over outputs and gradients) above which a row is wrong:
# a sanity bound far above rounding (fp16, bf16 and TF32 differ by about 1e-3 to 1e-2 at T = 1024) and far
# below a broken kernel (order 1, or inf for NaN or inf outputs)
REL_ERR_TOL = {"fp64": 1e-6, "fp32": 0.1, "fp16": 0.1, "bf16": 0.1}


def rel_err_tolerance(dtype: str) -> float:
    """The largest ``max_rel_err`` a row of ``dtype`` may have (``REL_ERR_TOL``; 0.1 for a dtype not in it)."""
    return REL_ERR_TOL.get(dtype, 0.1)


def wrong_output(row: dict) -> bool:
    """True when the row's output failed the comparison with the baseline: its error says so (``WRONG_OUTPUT``),
    or (a row written before the sweep checked it) it has no error and its ``max_rel_err`` is not finite or
    above the dtype's tolerance."""
    err = row.get("error") or ""
    if err:
        return err.startswith(WRONG_OUTPUT)
    try:
        e = float(row.get("max_rel_err") or 0.0)
    except ValueError:
        return True
    return not e <= rel_err_tolerance(str(row.get("dtype", "")))  # NaN and inf are wrong


def failed(row: dict) -> bool:
    """True for a row that is no measurement: an error, or a wrong output (``wrong_output``)."""
    return bool(row.get("error")) or wrong_output(row)


def _value(row: dict, k: str) -> str:
    return str(row.get(k) or ADDED[k]) if k in ADDED else str(row[k])


def key_of(row: dict) -> tuple[str, ...]:
    """The resume key of a row (values as the strings the CSV holds; no or an empty cell reads as lstm, no or
    empty heads as 1)."""
    return tuple(_value(row, k) for k in KEY)


def problem_of(row: dict) -> tuple[str, ...]:
    """The ``PROBLEM`` part of a row's key (values as the strings the CSV holds)."""
    return tuple(_value(row, k) for k in PROBLEM)


def job_fields(job, gpu: str | None = None, strategy: str | None = None) -> dict:
    """The key columns of the row a sweep job (``grids.Job``) writes, ``gpu`` included when given;
    ``strategy`` replaces the job's (a headline variant's label)."""
    c = job.cfg
    row = {"cell": getattr(c, "cell", LEGACY_CELL), "heads": getattr(c, "heads", 1),
           "packed": int(getattr(c, "packed", False)), "resets_p": f"{getattr(c, 'resets_p', 0.0):g}",
           "B": c.B, "T": c.T, "H": c.H, "I": c.I, "layers": c.layers, "directions": c.directions, "dtype": job.dtype,
           "pass": job.pass_, "backend": job.backend,
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
    the header, and the bad ones as (start, end, line number, reason); ``legacy``, when the header is one of the
    schema's earlier ones (the sweep's from before the cell or the heads column), the columns it lacks and their
    values ({} for the current header)."""

    header_ok: bool = True
    legacy: dict = field(default_factory=dict)
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


def _record_problem(raw: bytes, columns, schema: Schema) -> str | None:
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
    for c, allowed in schema.choices.items():
        if c in row and row[c] not in allowed:
            return f"{c} {row[c]!r}"
    for c in schema.ints:
        if row.get(c) and not row[c].isdigit():
            return f"{c} {row[c]!r} is not an integer"
    for c in schema.floats:
        if row.get(c):
            try:
                float(row[c])
            except ValueError:
                return f"{c} {row[c]!r} is not a number"
    return None


def scan_csv(data: bytes, schema: Schema = SWEEP) -> Scan:
    """Check a CSV's bytes record by record against ``schema``. A bad record that spans several lines (an
    unclosed quote swallowing later rows) counts as its first line only, and the scan goes on at the next
    line, so the finished rows after it are kept."""
    scan = Scan()
    if not data:
        return scan
    header_end = _next_record(data, 0)
    header = data[:header_end]
    scan.header_end = header_end

    def is_header(cols):
        return cols is not None and header in ((",".join(cols) + "\r\n").encode(), (",".join(cols) + "\n").encode())

    columns = schema.columns
    for old, fill in schema.legacy_headers().items():
        if is_header(old):
            scan.legacy, columns = fill, old
    scan.header_ok = bool(scan.legacy) or is_header(schema.columns)
    pos = header_end
    while pos < len(data):
        end = _next_record(data, pos)
        problem = _record_problem(data[pos:end], columns, schema)
        if problem is None:
            scan.good.append((pos, end))
        else:
            first_line_end = next(_physical_lines(data, pos))[1]
            if first_line_end < end:  # resynchronize on the next line
                end = first_line_end
                problem = _record_problem(data[pos:end], columns, schema) or problem
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


def read_rows(path: str | os.PathLike, schema: Schema = SWEEP) -> list[dict]:
    """All rows of ``path`` as dicts of strings ([] when the file does not exist or is empty); the rows of a
    file with one of the schema's earlier headers get the missing columns' ``legacy_fill`` (the sweep's: cell =
    "lstm", heads = 1). Raises ValueError
    when the header is neither (write to a new file instead of mixing) or a record is incomplete or
    malformed (``repair_csv`` sets such records aside)."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return []
    data = p.read_bytes()
    scan = scan_csv(data, schema)
    if not scan.header_ok:
        raise _header_error(p)
    if scan.bad:
        raise ValueError(f"{p}: {len(scan.bad)} incomplete or malformed record(s) ({_bad_summary(scan)}); "
                         f"rerun the {schema.name} on this file to set them aside and run those rows again")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    if scan.legacy:
        rows = [{c: scan.legacy[c] if c in scan.legacy else r[c] for c in schema.columns} for r in rows]
    return rows


def _fmt(v, digits: int | None = 6) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and digits is not None:
        return f"{v:.{digits}g}"
    return str(v)


def _csv_text(rows: list[dict], schema: Schema, header: bool = True) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(schema.columns))
    if header:
        w.writeheader()
    w.writerows({c: _fmt(r.get(c), schema.float_digits) for c in schema.columns} for r in rows)
    return buf.getvalue().encode("utf-8")


# --- writing: atomic replacement, all-or-nothing appends, the writers' lock ---------------------------------------
# os.path.realpath of a CSV -> the descriptor holding this process's lock on it (``lock_csv``)
_LOCKS: dict[str, int] = {}


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - a folder that cannot be opened (not POSIX)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def replace_file(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path``'s content by ``data`` atomically: a temporary file beside it is written and fsynced,
    then renamed over it, so a full disk or a crash leaves the old file or the new one, never a mix. The
    file keeps its permission bits. When this process holds ``lock_csv`` on ``path``, the new file is
    locked before the rename and the lock moves to it (another writer never finds it unlocked). A symbolic
    link is followed (the file it names is replaced)."""
    p = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, os.stat(p).st_mode & 0o7777)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        held = _LOCKS.get(os.path.realpath(p))
        if held is not None:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new inode: nobody else can hold it
        os.replace(tmp, p)
    except BaseException:
        os.close(fd)
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(p.parent)
    if held is not None:
        _LOCKS[os.path.realpath(p)] = fd
        os.close(held)  # releases the lock on the replaced file
    else:
        os.close(fd)


def discard_file(path: str | os.PathLike) -> None:
    """Delete ``path``; a CSV this process holds ``lock_csv`` on is emptied instead (atomically), so the lock
    still guards it."""
    p = Path(path)
    if os.path.realpath(p) in _LOCKS:
        replace_file(p, b"")
    else:
        p.unlink()


def upgrade_csv(path: str | os.PathLike, schema: Schema = SWEEP) -> str | None:
    """Rewrite a CSV with one of the schema's earlier headers (the sweep's from before the cell, heads, packed,
    resets_p or inputs column) in this version's columns, the missing ones filled (``ADDED``), atomically
    (``replace_file``). Returns a message saying so, or None when the file is missing, empty or already current.
    Raises ValueError as ``read_rows`` does (repair first). Call it holding ``lock_csv``, or where nothing writes
    the file."""
    p = Path(path)
    if not schema.legacy_fill or not p.exists() or p.stat().st_size == 0:
        return None
    missing = scan_csv(p.read_bytes(), schema).legacy
    if not missing:
        return None
    rows = read_rows(p, schema)
    replace_file(p, _csv_text(rows, schema))
    return (f"{p}: rewrote {len(rows)} row(s) from before the {next(iter(missing))} column with the "
            f"column{'s' if len(missing) > 1 else ''} {', '.join(missing)} added "
            f"({', '.join(f'{k} = {v}' for k, v in missing.items())})")


def repair_csv(path: str | os.PathLike, schema: Schema = SWEEP) -> str | None:
    """Set the incomplete or malformed records of ``path`` aside: their bytes go to a new file beside it,
    ``<name>.damaged-<UTC time>``, and the CSV is replaced (atomically, ``replace_file``) by its header and
    good records. Returns a message saying so, or None when nothing was wrong. Raises ValueError for a damaged
    or foreign header (nothing is changed then). Call it holding ``lock_csv``."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return None
    data = p.read_bytes()
    scan = scan_csv(data, schema)
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
    g = side.open("xb")
    try:
        with g:
            for s, e, _, _ in scan.bad:
                g.write(data[s:e])
            g.flush()
            os.fsync(g.fileno())
    except OSError:
        with suppress(OSError):
            side.unlink()  # ours (created above), never complete
        raise
    replace_file(p, data[:scan.header_end] + b"".join(data[s:e] for s, e in scan.good))
    return (f"{p}: set aside {len(scan.bad)} incomplete or malformed record(s) ({_bad_summary(scan)}); their "
            f"bytes are in {side}; those rows will be run again")


class CsvLocked(RuntimeError):
    """Another process holds the writers' lock on this CSV."""


@contextmanager
def lock_csv(path: str | os.PathLike, who: str = "sweep"):
    """Hold an exclusive advisory lock (``fcntl.flock``) on the CSV, creating it (empty) when missing, for
    the whole read-run-append span of a run (``who`` names the kind of run in messages). Raises CsvLocked at
    once when another process holds it: two runs never both append to one file. The lock is taken on a
    read-only descriptor, so a read-only CSV can be locked and checked; a lock taken on a file that was
    replaced meanwhile (``replace_file``) is dropped and taken again on the new one. Raises OSError when the
    file cannot be created. Without fcntl (not POSIX), no lock is taken."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    key = os.path.realpath(p)
    while True:
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            fd = os.open(p, os.O_RDONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CsvLocked(f"{p} is being written by another {who} (its fcntl lock is held); wait for that "
                            f"{who} to finish, then rerun this command to resume, or give another --out") from None
        try:
            st = os.stat(p)
            current = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # it was replaced (or removed) while we waited: lock what the name holds now
    _LOCKS[key] = fd
    try:
        yield
    finally:
        os.close(_LOCKS.pop(key))


def append_rows(path: str | os.PathLike, rows: list[dict], schema: Schema = SWEEP) -> None:
    """Append ``rows`` (missing columns empty), writing the header first into a new or empty file, in one
    write, fsynced: a kill after this call keeps them, and a write that fails (a full disk) is undone, so the
    file never keeps part of them. Columns the schema does not know raise KeyError. A file with the schema's
    earlier header is first rewritten in its columns (``upgrade_csv``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    unknown = set().union(*rows) - set(schema.columns) if rows else set()
    if unknown:
        raise KeyError(f"unknown CSV columns {sorted(unknown)}")
    if schema.legacy_fill and p.exists() and p.stat().st_size:
        with p.open("rb") as f:
            first = f.readline()
        if first.rstrip(b"\r\n") in {",".join(h).encode() for h in schema.legacy_headers()}:
            upgrade_csv(p, schema)
    with p.open("ab", buffering=0) as f:  # unbuffered: a failed write can be undone at once
        size = f.seek(0, os.SEEK_END)
        data = _csv_text(rows, schema, header=size == 0)
        if size:
            with p.open("rb") as r:
                r.seek(size - 1)
                if r.read(1) != b"\n":  # never glue a row onto a partial line: it stays a separate bad record
                    data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
            os.fsync(f.fileno())
        except OSError:
            with suppress(OSError):  # undo the part written (a truncate frees space on a full disk)
                os.ftruncate(f.fileno(), size)
                os.fsync(f.fileno())
            raise


def append_row(path: str | os.PathLike, row: dict) -> None:
    """Append one sweep row (``append_rows``; no cell: lstm; no heads: 1)."""
    append_rows(path, [{**row, **{c: row.get(c) or v for c, v in ADDED.items()}}])


def os_error_line(e: OSError) -> str:
    """A one-line message for a file that could not be read or written, with what to do."""
    where = f"{e.filename}: " if e.filename else ""
    what = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        todo = "free some space, then rerun the same command to resume (rows already written are kept)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        todo = "make it writable or give another --out"
    else:
        todo = "rerun the same command to resume once it is fixed"
    return f"{where}{what}; {todo}"


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
