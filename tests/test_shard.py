"""The sweep split across processes: ``--shard i/n`` runs disjoint parts of the grid (every backend of a
configuration in the same shard), and ``experiments.shard merge`` joins the shard CSVs, de-duplicated, each
row with its own provenance."""
from __future__ import annotations

import argparse
import csv

import pytest
import torch

from experiments import shard, sweep
from experiments.results import COLUMNS, KEY, append_row, key_of, read_rows

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-path sweep (the GPU path runs in gpu_run.sh)")
CONFIG = ("B", "T", "H", "I", "layers", "directions", "dtype", "pass")


def test_parse_shard():
    assert shard.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "1/0", "a/2", "1", "1/2/3"):
        with pytest.raises(argparse.ArgumentTypeError):
            shard.parse_shard(bad)


@cpu_only
def test_two_shards_cover_the_grid_once_and_merge(tmp_path, capsys):
    # the smoke grid's configurations (B in {1, 4}) at T=2, H=16: sharding does not depend on the sizes
    base = ["--grid", "smoke", "--T", "2", "--H", "16", "--backends", "torch_cpu,fusedrnn", "--min-reps", "1",
            "--rep-ms", "1"]
    paths = [tmp_path / f"smoke.{i}.csv" for i in range(2)]
    for i, path in enumerate(paths):
        assert sweep.main(base + ["--shard", f"{i}/2", "--out", str(path)]) == 0
    assert sweep.main(base + ["--shard", "0/2", "--out", str(paths[0])]) == 0  # a resumed shard adds nothing
    assert "0 to run" in capsys.readouterr().err
    shards = [read_rows(p) for p in paths]
    keys = [{key_of(r) for r in rows} for rows in shards]
    configs = [{tuple(r[c] for c in CONFIG) for r in rows} for rows in shards]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert not configs[0] & configs[1]  # a configuration lives in one shard, with all its backends
    for rows in shards:
        assert all(r["error"] == "" for r in rows), [r["error"] for r in rows]
        assert {r["backend"] for r in rows} == {"torch_cpu", "fusedrnn"}
        assert all(r["speedup"] != "" for r in rows)  # the reference row of each config is in the same shard

    # the same grid unsharded has exactly the union of the shards' keys
    whole = tmp_path / "whole.csv"
    assert sweep.main(base + ["--out", str(whole), "--passes", "fwd"]) == 0
    fwd_keys = {key_of(r) for r in read_rows(whole)}
    assert fwd_keys == {k for k in keys[0] | keys[1] if k[KEY.index("pass")] == "fwd"}

    # merge: repeats dropped (a row without an error wins), provenance kept as written by each shard
    failed = tmp_path / "failed.csv"
    first = dict(shards[1][0], error="RuntimeError: an earlier failed attempt")
    append_row(failed, first)
    merged = tmp_path / "merged.csv"
    assert shard.main(["merge", str(merged), str(failed), str(paths[0]), str(paths[1]), str(paths[0])]) == 0
    rows = read_rows(merged)
    assert len(rows) == len(keys[0] | keys[1])
    by_key = {key_of(r): r for r in rows}
    assert by_key[key_of(first)]["error"] == ""
    for r in shards[0] + shards[1]:
        assert by_key[key_of(r)] == r  # every column, provenance included (gpu, commit, date, versions)
    with open(merged, newline="") as f:
        assert csv.DictReader(f).fieldnames == COLUMNS
    assert shard.main(["merge", str(merged), str(paths[0])]) == 2  # never over an existing file


def test_merge_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, capsys):
    """A merge whose write fails (here a file-size limit, as a full disk) exits 2 with one line saying what to do
    and leaves no partial output behind (a rerun would refuse an existing file); with room, it merges."""
    import resource

    shard_csv = tmp_path / "s0.csv"
    rows = [{c: "" for c in COLUMNS} | dict(gpu="cpu", device="cpu", backend="torch_cpu", strategy="", B=str(b),
                                            T="2", H="16", I="16", layers="1", directions="1", dtype="float32",
                                            cell="lstm", ms_p50="1.5", commit="abc") | {"pass": "fwd"}
            for b in (1, 2, 3)]
    for r in rows:
        append_row(shard_csv, r)
    out = tmp_path / "merged.csv"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, hard))  # less than the merged file needs
    try:
        rc = shard.main(["merge", str(out), str(shard_csv)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "free some space" in err[0], err
    assert not out.exists() or out.stat().st_size == 0
    assert shard.main(["merge", str(out), str(shard_csv)]) == 0
    assert len(read_rows(out)) == 3
