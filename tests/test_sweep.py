"""The sweep CLI on CPU: the smoke grid writes every column, reruns add nothing, a failing backend leaves an
error row and the sweep completes, Ctrl-C keeps finished rows; the cuDNN-algorithm mirror and the floor."""
from __future__ import annotations

import csv

import pytest
import torch

from experiments import backends as bk
from experiments import sweep
from experiments.cudnn_algo import PERSIST, SMALL_H, STANDARD, classify_kernels, predict_algo
from experiments.grids import Config, grid_configs
from experiments.measure import Peaks, floor_ms, lstm_flops
from experiments.results import ALWAYS, COLUMNS, CPU_EMPTY

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-path sweep (the GPU path runs in gpu_run.sh)")


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@cpu_only
def test_smoke_sweep_every_column_and_rerun_adds_nothing(tmp_path, capsys):
    out = tmp_path / "smoke.csv"
    argv = ["--grid", "smoke", "--out", str(out), "--min-reps", "1", "--rep-ms", "1"]
    assert sweep.main(argv) == 0
    header, rows = _rows(out)
    assert header == COLUMNS
    strategies = bk.REGISTRY["fusedrnn"].strategies()
    n_backends = 2 + len(strategies)  # torch_cpu, torch_loop, fusedrnn per strategy
    assert len(rows) == len(grid_configs("smoke")) * 2 * n_backends  # x (fwd, fwdbwd)
    assert {r["backend"] for r in rows} == {"torch_cpu", "fusedrnn", "torch_loop"}
    assert {r["pass"] for r in rows} == {"fwd", "fwdbwd"}
    for r in rows:
        assert r["error"] == "", r["error"]
        for c in COLUMNS:
            if c in CPU_EMPTY or c == "error" or (c == "strategy" and r["backend"] != "fusedrnn"):
                continue
            assert r[c] != "", f"{r['backend']} {r['pass']}: empty column {c}"
        assert r["device"] == "cpu" and r["cudnn_algo"] == "n/a (cpu)" and r["speedup_ref"] == "torch_cpu"
        assert float(r["ms_p20"]) <= float(r["ms_p50"]) <= float(r["ms_p80"])
        assert float(r["max_rel_err"]) < 1e-4, (r["backend"], r["pass"], r["max_rel_err"])
        assert float(r["tokens_per_s"]) == pytest.approx(int(r["B"]) * 8 / (float(r["ms_p50"]) * 1e-3), rel=1e-4)
        if r["backend"] == "torch_cpu":
            assert float(r["speedup"]) == 1.0
    assert {r["strategy"] for r in rows if r["backend"] == "fusedrnn"} == set(strategies)
    capsys.readouterr()

    assert sweep.main(argv) == 0
    assert len(_rows(out)[1]) == len(rows)
    assert "0 to run" in capsys.readouterr().err

    # --plot: nothing left to run, the figures are drawn next to the CSV
    assert sweep.main(argv + ["--plot"]) == 0
    assert len(_rows(out)[1]) == len(rows)
    for name in ("heatmap_speedup_fp32_fwd.png", "ms_vs_B_fp32_fwdbwd.png", "floor_fraction_fp32_fwd.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def _boom_build(ref, strategy):
    raise RuntimeError("deliberate failure for the test")


def _bad_run_build(ref, strategy):
    def run(x, h0, c0):
        raise ValueError("bad run")

    return bk.Built(run, {})


@cpu_only
def test_failing_backend_writes_error_row_and_sweep_completes(tmp_path, monkeypatch):
    monkeypatch.setitem(bk.REGISTRY, "boom", bk.Backend("boom", _boom_build, devices=("cpu",), default_on=()))
    monkeypatch.setitem(bk.REGISTRY, "badrun", bk.Backend("badrun", _bad_run_build, devices=("cpu",),
                                                          default_on=()))
    out = tmp_path / "err.csv"
    argv = ["--grid", "smoke", "--B", "1", "--passes", "fwd", "--backends", "boom,torch_cpu,badrun,torch_loop",
            "--out", str(out), "--min-reps", "1", "--rep-ms", "1"]
    assert sweep.main(argv) == 0
    _, rows = _rows(out)
    by = {r["backend"]: r for r in rows}
    assert list(by) == ["torch_cpu", "boom", "badrun", "torch_loop"]  # reference first, then as given
    assert by["boom"]["error"] == "RuntimeError: deliberate failure for the test"
    assert by["badrun"]["error"] == "ValueError: bad run"
    assert by["boom"]["ms_p50"] == "" and by["boom"]["commit"] != "" and by["boom"]["floor_ms"] != ""
    assert by["torch_loop"]["error"] == "" and float(by["torch_loop"]["ms_p50"]) > 0
    for r in rows:
        for c in ALWAYS:
            assert r[c] != "", f"{r['backend']}: empty {c}"

    # a rerun skips error rows too, unless asked to retry them
    assert sweep.main(argv) == 0
    assert len(_rows(out)[1]) == 4
    assert sweep.main(argv + ["--retry-errors"]) == 0
    assert len(_rows(out)[1]) == 6


@cpu_only
def test_interrupt_keeps_finished_rows(tmp_path, monkeypatch):
    def interrupt(ref, strategy):
        raise KeyboardInterrupt

    monkeypatch.setitem(bk.REGISTRY, "ctrlc", bk.Backend("ctrlc", interrupt, devices=("cpu",), default_on=()))
    out = tmp_path / "int.csv"
    argv = ["--grid", "smoke", "--B", "1", "--passes", "fwd", "--backends", "torch_cpu,ctrlc",
            "--out", str(out), "--min-reps", "1", "--rep-ms", "1"]
    assert sweep.main(argv) == 130
    header, rows = _rows(out)
    assert header == COLUMNS and [r["backend"] for r in rows] == ["torch_cpu"]


@cpu_only
def test_cli_help_and_cpu_defaults(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("--grid", "--dtypes", "--passes", "--layers", "--bidirectional", "--backends", "--out",
                 "batch", "hidden", "seq", "full", "smoke", "cudnn", "fusedrnn", "torch_loop", "torch_compile",
                 "flashrnn"):
        assert word in text
    assert str(sweep.default_out("smoke", torch.device("cpu"))) == "scratch/smoke.csv"
    assert str(sweep.default_out("batch", torch.device("cuda"))) == "results/batch.csv"
    assert sweep.main(["--out", str(tmp_path / "results" / "x.csv")]) == 2  # CPU numbers never in results/
    assert "refusing" in capsys.readouterr().err
    usable, skipped = sweep.available_backends(None, torch.device("cpu"))
    assert usable == ["torch_cpu", "fusedrnn", "torch_loop"]
    usable, skipped = sweep.available_backends(["cudnn", "torch_loop"], torch.device("cpu"))
    assert usable == ["torch_loop"] and "cudnn" in skipped[0]


def test_grids():
    assert [c.B for c in grid_configs("batch")] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert {(c.T, c.H, c.I) for c in grid_configs("batch")} == {(1024, 1024, 1024)}
    assert [c.H for c in grid_configs("hidden")][0] == 128 and grid_configs("hidden")[-1].H == 2048
    assert [c.T for c in grid_configs("seq")][-1] == 4096
    assert len(grid_configs("full")) == 9 * 7
    c = grid_configs("batch", B=[8], layers=2, bidirectional=True)
    assert c == [Config(8, 1024, 1024, 1024, 2, 2)]


@pytest.mark.parametrize("kw, fwd, bwd", [
    (dict(H=128, dtype=torch.float16), SMALL_H, SMALL_H),
    (dict(H=192, dtype=torch.bfloat16), SMALL_H, STANDARD),
    (dict(H=128, dtype=torch.float64), STANDARD, STANDARD),
    (dict(H=1024, dtype=torch.float16), PERSIST, PERSIST),
    (dict(H=1024, dtype=torch.float16, B=136), STANDARD, STANDARD),  # B > 128
    (dict(H=1024, dtype=torch.float16, B=12), STANDARD, STANDARD),  # B % 8
    (dict(H=1024, dtype=torch.bfloat16), STANDARD, STANDARD),  # persistent is fp16 only
    (dict(H=1024, dtype=torch.float16, capability=(8, 6)), STANDARD, STANDARD),
    (dict(H=1024, dtype=torch.float16, sm_count=84), STANDARD, STANDARD),
    (dict(H=1024, dtype=torch.float16, layers=2), STANDARD, STANDARD),
    (dict(H=1024, dtype=torch.float16, directions=2), STANDARD, STANDARD),
    (dict(H=1152, dtype=torch.float16), STANDARD, STANDARD),
    (dict(H=128, dtype=torch.float16, proj_size=64), STANDARD, STANDARD),
    (dict(H=128, dtype=torch.float16, packed=True), STANDARD, STANDARD),
    (dict(H=256, dtype=torch.float16, mode="RNN_TANH"), SMALL_H, SMALL_H),
])
def test_predict_cudnn_algo(kw, fwd, bwd):
    base = dict(B=16, T=1024, H=kw["H"], I=kw["H"])
    base.update(kw)
    assert predict_algo(forward=True, **base) == fwd
    assert predict_algo(forward=False, **base) == bwd


def test_classify_kernels():
    assert classify_kernels(["void RNN_blockPersist_fp_LSTM<__half>", "gemm"]) == PERSIST
    assert classify_kernels(["sm90_xmma_gemm", "void elemWiseRNNcell<float>"]) == STANDARD
    assert classify_kernels(["gemm"]) == "unknown"


def test_floor_and_flops():
    peaks = Peaks(hbm_gbs=4000, l2_gbs=10000, l2_bytes=50 * 2**20, tflops_fp16=700, tflops_bf16=700,
                  tflops_tf32=350, tflops_fp32=50)
    small, big = Config(16, 1024, 1024, 1024), Config(16, 1024, 4096, 4096)
    f = floor_ms(small, torch.float16, "fwd", peaks, tf32=True)
    # W_hh = 8 MiB fits in L2: 1024 steps x 8 MiB / 10 TB/s, plus the projection GEMM at 700 TFLOP/s
    assert f == pytest.approx(1024 * 8 * 2**20 / 1e10 + 8 * 1024 * 16 * 1024 * 1024 / 7e11, rel=1e-6)
    fb = floor_ms(big, torch.float16, "fwd", peaks, tf32=True)  # 128 MB: HBM
    # W_hh = 128 MiB streams from HBM every step (4 TB/s), plus the projection GEMM
    assert fb == pytest.approx(1024 * 4 * 4096 * 4096 * 2 / 4e9 + 8 * 1024 * 16 * 4096 * 4096 / 7e11, rel=1e-6)
    assert floor_ms(small, torch.float16, "fwdbwd", peaks, True) > 2 * f
    assert lstm_flops(small, "fwd") == 8 * 16 * 1024 * 1024 * 2048
    assert lstm_flops(small, "fwdbwd") == 3 * lstm_flops(small, "fwd")


def test_strategy_fallback_becomes_an_error_not_a_mislabelled_row():
    import logging

    def run(x, h0, c0):
        logging.getLogger("fusedrnn").debug("fusedrnn: LSTM strategy=%r runs per_step: %s", "persistent", "H > 1024")
        return x, h0, c0

    with pytest.raises(RuntimeError, match="not applicable here.*H > 1024"):
        bk._no_fallback(run, "persistent")(1, 2, 3)
    assert bk._no_fallback(lambda x, h, c: (x, h, c), "persistent")(1, 2, 3) == (1, 2, 3)
    assert logging.getLogger("fusedrnn").level == logging.NOTSET
