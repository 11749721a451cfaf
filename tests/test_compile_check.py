"""Static performance check without a GPU: every step kernel, for every tile config its autotuner may pick,
in every dtype, compiles for sm_90a and sm_80 (aligned and unaligned arguments) with 0 bytes of spill and
shared memory within the chip's limit. Runs ``python -m kernels.compile_check`` in a fresh process (the real
compiler: the test session's kernels are decorated by the interpreter)."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    out = tmp_path_factory.mktemp("cc") / "cc.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.compile_check", "--quiet", "--jobs", str(min(4, os.cpu_count() or 1)),
         "--csv", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    rows = list(csv.DictReader(open(out))) if out.exists() else []
    return proc, rows


def test_every_config_compiles_without_spills(table):
    proc, rows = table
    bad = [r for r in rows if r["status"] != "OK"]
    assert proc.returncode == 0 and not bad, (
        "compile check failed:\n" + "\n".join(
            f"{r['kernel']} {r['arch']} {r['dtype']} {r['align']} {r['BLOCK_B']}x{r['BLOCK_H']}x{r['BLOCK_K']} "
            f"w{r['num_warps']}: {r['status']} spill={r['spill_bytes']} smem={r['shared_bytes']} {r['error']}"
            for r in bad) + proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    for r in rows:
        assert r["triton"] and r["commit"] and r["date"], "row without provenance"
        assert int(r["spill_bytes"]) == 0 and int(r["shared_bytes"]) <= int(r["shared_limit"])
        assert 0 < int(r["registers"]) <= 255


def test_table_covers_every_kernel_arch_dtype(table):
    from kernels import compile_check as cc

    _, rows = table
    seen = {(r["kernel"], r["arch"], r["dtype"], r["align"]) for r in rows}
    kernels = {r["kernel"] for r in rows}
    assert {"_lstm_fwd_step", "_lstm_bwd_step", "_rnn_fwd_step", "_rnn_bwd_step"} <= kernels
    for k in kernels:
        for arch in cc.ARCHS.values():
            for dt in cc.DTYPES:
                for al in cc.ALIGNS:
                    assert (k, arch, dt, al) in seen, f"missing {k} {arch} {dt} {al}"


def test_every_autotune_config_is_checked(table):
    """The configs the autotuners hold are exactly the ones compiled (per dtype group)."""
    import importlib

    from kernels._common import DTYPE_GROUPS, per_group

    _, rows = table
    compiled = {(r["kernel"], r["dtype"], int(r["BLOCK_B"]), int(r["BLOCK_H"]), int(r["BLOCK_K"]),
                 int(r["num_warps"]), int(r["num_stages"])) for r in rows}
    n = 0
    for mod_name in ("kernels.lstm", "kernels.rnn"):
        mod = importlib.import_module(mod_name)
        for kind in ("fwd", "bwd"):
            kname = f"_{mod_name.split('.')[1]}_{kind}_step"
            for g, cfgs in per_group(getattr(mod, f"{kind.upper()}_CONFIGS")).items():
                for c in cfgs:
                    for dt in DTYPE_GROUPS[g]:
                        n += 1
                        assert (kname, dt, c.BLOCK_B, c.BLOCK_H, c.BLOCK_K, c.num_warps, c.num_stages) in compiled
    assert n > 20
