"""Split a sweep across GPUs or processes, and merge the shards' CSVs.

    # one process per GPU (or torchrun: each rank takes --shard $LOCAL_RANK/$WORLD_SIZE)
    CUDA_VISIBLE_DEVICES=0 python -m experiments.sweep --grid batch --shard 0/2 --out scratch/batch.0.csv &
    CUDA_VISIBLE_DEVICES=1 python -m experiments.sweep --grid batch --shard 1/2 --out scratch/batch.1.csv &
    wait
    python -m experiments.shard merge results/batch.csv scratch/batch.0.csv scratch/batch.1.csv

Shard ``i/n`` (0 <= i < n) takes every n-th *configuration* of the grid in grid order (a configuration is
B, T, H, I, layers, directions, dtype and pass), with all its backends and strategies, so each shard's rows
hold their own reference row (speedup vs cuDNN) and the assignment does not change when a shard resumes.
The merge keeps every row's own provenance columns (GPU, commit, date, versions), drops exact repeats of a
resume key (GPU, config, backend, strategy) keeping a row without an error over one with an error, and
writes the result in the shards' order.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .results import COLUMNS, append_rows, job_fields, key_of, os_error_line, problem_of, read_rows


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), 0 <= i < n (argparse type: ArgumentTypeError otherwise)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n with integers, e.g. 0/2; got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard i/n needs n >= 1 and 0 <= i < n; got {text!r}")
    return i, n


def config_key(job) -> tuple:
    """A job's problem (``results.PROBLEM``): the shard unit, so a problem's backends stay together."""
    return problem_of(job_fields(job))


def select(jobs: list, shard: tuple[int, int] | None) -> list:
    """The jobs of shard ``(i, n)`` (all of them for None): every n-th configuration, in grid order."""
    if shard is None:
        return jobs
    i, n = shard
    order: dict[tuple, int] = {}
    for j in jobs:
        order.setdefault(config_key(j), len(order))
    return [j for j in jobs if order[config_key(j)] % n == i]


def merge(out: str | Path, shards: list[str | Path]) -> tuple[int, int]:
    """Write the rows of ``shards`` into ``out`` (a new file), de-duplicated by resume key. Returns
    (rows written, repeats dropped)."""
    out = Path(out)
    if out.exists() and out.stat().st_size > 0:
        raise FileExistsError(f"{out} exists; merge writes a new file")
    kept: dict[tuple, dict] = {}
    dropped = 0
    for path in shards:
        for row in read_rows(path):  # ValueError for a CSV of another version's columns
            key = key_of(row)
            if key in kept:
                dropped += 1
                if kept[key]["error"] and not row["error"]:
                    kept[key] = row
                continue
            kept[key] = row
    # one all-or-nothing write: a full disk leaves no partial merge behind (a rerun would refuse it)
    append_rows(out, [{c: row[c] for c in COLUMNS} for row in kept.values()])
    return len(kept), dropped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.shard", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge shard CSVs into a new CSV")
    m.add_argument("out", type=Path)
    m.add_argument("shards", type=Path, nargs="+")
    args = p.parse_args(argv)
    try:
        n, dropped = merge(args.out, args.shards)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a shard that cannot be read, a folder that cannot be written, a full disk
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {n} rows to {args.out} ({dropped} repeated rows dropped)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
