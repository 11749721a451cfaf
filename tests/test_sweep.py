"""The sweep CLI on CPU: the smoke grid writes every column, reruns add nothing, a failing backend leaves an
error row and the sweep completes, a wrong output is a failed row and exit 1, Ctrl-C keeps finished rows, a
damaged last record is set aside and measured again, a second sweep on a CSV being written refuses, rewrites
are atomic and a read-only CSV or a full disk give one-line errors; the cuDNN-algorithm mirror and the floor."""
from __future__ import annotations

import csv
import errno
import io
import os
import resource
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from experiments import backends as bk
from experiments import sweep
from experiments.cudnn_algo import PERSIST, SMALL_H, STANDARD, classify_kernels, predict_algo
from experiments.grids import Config, grid_configs
from experiments.measure import Peaks, floor_ms, lstm_flops, rnn_flops
from experiments.results import (
    ADDED, ALWAYS, COLUMNS, CPU_EMPTY, LEGACY_COLUMNS, CsvLocked, append_row, key_of, lock_csv, read_rows, repair_csv,
    scan_csv, upgrade_csv,
)

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-path sweep (the GPU path runs in gpu_run.sh)")


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@cpu_only
def test_smoke_sweep_every_column_and_rerun_adds_nothing(tmp_path, capsys):
    out = tmp_path / "smoke.csv"
    # the smoke grid at T 4 (the README's main command runs T 8: .ci/fresh_env_main.sh runs it as written)
    argv = ["--grid", "smoke", "--T", "4", "--out", str(out), "--min-reps", "1", "--rep-ms", "1"]
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
        assert float(r["tokens_per_s"]) == pytest.approx(int(r["B"]) * 4 / (float(r["ms_p50"]) * 1e-3), rel=1e-4)
        if r["backend"] == "torch_cpu":
            assert float(r["speedup"]) == 1.0
    assert {r["strategy"] for r in rows if r["backend"] == "fusedrnn"} == set(strategies)
    assert {r["cell"] for r in rows} == {"lstm"}
    capsys.readouterr()

    assert sweep.main(argv) == 0
    assert len(_rows(out)[1]) == len(rows)
    assert "0 to run" in capsys.readouterr().err

    # --plot: nothing left to run, the figures are drawn next to the CSV; none of a floor a CPU does not
    # measure, nor a heatmap of one H
    assert sweep.main(argv + ["--plot"]) == 0
    assert len(_rows(out)[1]) == len(rows)
    assert (tmp_path / "ms_vs_B_fp32_fwdbwd.png").stat().st_size > 1000
    assert not list(tmp_path.glob("floor_fraction_*")) and not list(tmp_path.glob("heatmap_*"))


@cpu_only
@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_smoke_sweep_of_another_cell(tmp_path, capsys, cell):
    """``--cell gru`` / ``--cell rnn``: the baseline is nn.GRU / nn.RNN on CPU, fusedrnn runs models.GRU / RNN in
    the interpreter (every strategy the module takes), outputs and gradients match the baseline's, the rows say
    their cell, and the same CSV then takes the LSTM's rows beside them (the cell is part of the key)."""
    out = tmp_path / f"{cell}.csv"
    argv = ["--cell", cell, "--grid", "smoke", "--B", "4", "--T", "4", "--out", str(out), "--min-reps", "1",
            "--rep-ms", "1"]
    assert sweep.main(argv) == 0
    assert f"torch.nn.{cell.upper()} on CPU" in capsys.readouterr().err
    header, rows = _rows(out)
    assert header == COLUMNS
    strategies = bk.REGISTRY["fusedrnn"].strategies(cell)
    assert strategies == (("per_step", "persistent") if cell == "gru" else ("per_step",))
    assert len(rows) == 2 * (2 + len(strategies))  # (fwd, fwdbwd) x (torch_cpu, torch_loop, fusedrnn/...)
    assert {r["cell"] for r in rows} == {cell}
    for r in rows:
        assert r["error"] == "", r["error"]
        assert float(r["max_rel_err"]) < 1e-4, (r["backend"], r["strategy"], r["pass"], r["max_rel_err"])
        assert r["speedup_ref"] == "torch_cpu" and float(r["speedup"]) > 0
    g = {"gru": 3, "rnn": 1}[cell]
    r0 = rows[0]
    assert float(r0["tflops"]) == pytest.approx(2 * g * 4 * 4 * 32 * 64 / (float(r0["ms_p50"]) * 1e-3) / 1e12,
                                                rel=1e-4)
    # the LSTM's rows of the same problem are other rows; a rerun of either adds nothing
    lstm = ["--grid", "smoke", "--B", "4", "--T", "4", "--passes", "fwd", "--backends", "torch_cpu", "--out", str(out),
            "--min-reps", "1", "--rep-ms", "1"]
    assert sweep.main(lstm) == 0 and sweep.main(lstm) == 0 and sweep.main(argv) == 0
    _, after = _rows(out)
    assert len(after) == len(rows) + 1 and after[-1]["cell"] == "lstm"


@cpu_only
@pytest.mark.parametrize("cell, heads", [("slstm", 2), ("lnlstm", 1), ("lngru", 1), ("lstm", 2), ("gru", 2),
                                         ("rnn", 2)])
def test_smoke_sweep_of_the_cells_torch_nn_lacks_and_of_heads(tmp_path, capsys, cell, heads):
    """``--cell slstm|lnlstm|lngru`` and ``--heads``: the sLSTM and the LayerNorm cells are compared with their
    fusedrnn module's PyTorch reference (backend reference, the speedup_ref of every row) and timed beside the dense
    nn.LSTM / nn.GRU of the same shape (nn_dense: strategy names the module, no max_rel_err); heads of the LSTM,
    GRU and RNN are compared with torch.nn's module on the dense block-diagonal equivalent, gradients of W_hh
    included (``head_blocks``); the rows carry cell and heads, and the FLOPs count the heads' D, not H."""
    out = tmp_path / f"{cell}.csv"
    argv = ["--cell", cell, "--heads", str(heads), "--grid", "smoke", "--B", "1", "--T", "3", "--H", "16",
            "--passes", "fwdbwd", "--out", str(out), "--min-reps", "1", "--rep-ms", "1"]
    assert sweep.main(argv) == 0
    header, rows = _rows(out)
    assert header == COLUMNS and {(r["cell"], r["heads"]) for r in rows} == {(cell, str(heads))}
    by = {r["backend"]: r for r in rows}
    nn_cell = cell in sweep.NN_CLASSES
    assert list(by) == (["torch_cpu", "fusedrnn", "torch_loop"] if nn_cell else ["reference", "nn_dense", "fusedrnn"])
    for r in rows:
        assert r["error"] == "", r["error"]
        assert r["speedup_ref"] == ("torch_cpu" if nn_cell else "reference") and float(r["speedup"]) > 0
        if r["backend"] != "nn_dense":
            assert float(r["max_rel_err"]) < 1e-4, (r["backend"], r["max_rel_err"])
    # the LayerNorm LSTM's rows: per_step and its persistent forward; the LayerNorm GRU per_step only
    want = {"lnlstm": ["per_step", "persistent"], "lngru": ["per_step"]}.get(cell, ["auto"])
    assert [r["strategy"] for r in rows if r["backend"] == "fusedrnn"] == want
    if not nn_cell:
        assert by["nn_dense"]["max_rel_err"] == "" and by["nn_dense"]["strategy"] == ("nn.GRU" if cell == "lngru"
                                                                                     else "nn.LSTM")
    g = {"lstm": 4, "gru": 3, "rnn": 1, "slstm": 4, "lnlstm": 4, "lngru": 3}[cell]
    r = by["fusedrnn"]
    assert float(r["tflops"]) == pytest.approx(3 * 2 * g * 1 * 3 * 16 * (16 // heads + 16)
                                               / (float(r["ms_p50"]) * 1e-3) / 1e12, rel=1e-4)
    assert sweep.main(argv) == 0 and len(_rows(out)[1]) == len(rows)  # the heads and the cell are in the key
    capsys.readouterr()
    assert sweep.main(["--cell", "lngru", "--heads", "2", "--out", str(tmp_path / "x.csv")]) == 2
    assert "the lngru cell has no heads" in capsys.readouterr().err


def test_head_blocks_is_the_gradient_of_the_heads():
    """The gradient of the dense block-diagonal W_hh, restricted to the blocks, is the heads' gradient; other
    parameters and dense problems pass through."""
    from fusedrnn import heads_to_dense

    torch.manual_seed(0)
    w = torch.randn(3, 4 * 5, 5, dtype=torch.float64, requires_grad=True)
    dense = heads_to_dense(w).detach().requires_grad_(True)
    x = torch.randn(7, 15, dtype=torch.float64)
    (x @ heads_to_dense(w).t()).sin().sum().backward()
    (x @ dense.t()).sin().sum().backward()
    assert torch.equal(bk.head_blocks("weight_hh_l0_reverse", dense.grad, 3), w.grad)
    assert bk.head_blocks("weight_ih_l0", dense.grad, 3) is dense.grad
    assert bk.head_blocks("weight_hh_l0", dense.grad, 1) is dense.grad


def test_backends_run_every_cell_like_its_torch_module():
    """The eager backends on each cell's source module: outputs (c_n None but for the LSTM) and parameter
    names as the torch.nn module's."""
    torch.manual_seed(0)
    for cell, cls in sweep.NN_CLASSES.items():
        src = cls(5, 6, 2, bidirectional=True).double()
        assert bk.cell_of(src) == cell
        x, h0 = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 3, 6, dtype=torch.float64)
        c0 = torch.randn(4, 3, 6, dtype=torch.float64) if cell == "lstm" else None
        want = bk.REGISTRY["torch_cpu"].build(src, "").run(x, h0, c0)
        loop = bk.REGISTRY["torch_loop"].build(src, "")
        got = loop.run(x, h0, c0)
        assert set(loop.params) == {n for n, _ in src.named_parameters()}
        for a, b in zip(got, want):
            assert (a is None) == (b is None) == (cell != "lstm" and a is None)
            if a is not None:
                assert torch.allclose(a, b, atol=1e-12), cell
        assert (got[2] is None) == (cell != "lstm")


def test_a_backend_without_the_cell_is_skipped(monkeypatch):
    monkeypatch.setitem(bk.REGISTRY, "lstm_only", bk.Backend("lstm_only", _boom_build, devices=("cpu",),
                                                             default_on=(), cells=("lstm",)))
    usable, skipped = sweep.available_backends(["torch_cpu", "lstm_only"], torch.device("cpu"), "gru")
    assert usable == ["torch_cpu"] and "lstm_only" in skipped[0] and "not gru" in skipped[0]
    assert sweep.available_backends(["lstm_only"], torch.device("cpu"), "lstm")[0] == ["lstm_only"]
    assert bk.REGISTRY["flashrnn"].cells == ("lstm",)


@cpu_only
def test_a_csv_from_before_the_cell_column_reads_as_lstm_and_is_upgraded(tmp_path, capsys):
    out = tmp_path / "old.csv"
    assert _fast_sweep(out, "torch_cpu") == 0
    _, rows = _rows(out)
    with out.open("w", newline="") as f:  # the file as the sweep wrote it before the cell column
        w = csv.DictWriter(f, fieldnames=LEGACY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert scan_csv(out.read_bytes()).legacy
    old = read_rows(out)
    assert [r["cell"] for r in old] == ["lstm"] and [key_of(r) for r in old] == [key_of(r) for r in rows]
    capsys.readouterr()
    assert _fast_sweep(out) == 0  # torch_cpu's row is found (an LSTM row); torch_loop's is measured
    err = capsys.readouterr().err
    assert "1 to run" in err and "before the cell column" in err, err
    header, new = _rows(out)
    assert header == COLUMNS and [r["cell"] for r in new] == ["lstm", "lstm"]
    assert {k: v for k, v in new[0].items() if k != "cell"} == {k: v for k, v in rows[0].items() if k != "cell"}
    assert upgrade_csv(out) is None  # current already
    # a CSV from before the heads column (cell, no heads, nor the later columns) reads as dense rows and is upgraded
    # the same way
    later = list(ADDED)[1:]
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c for c in COLUMNS if c not in later], extrasaction="ignore")
        w.writeheader()
        w.writerows(new)
    assert scan_csv(out.read_bytes()).legacy == {c: ADDED[c] for c in later}
    assert [r["heads"] for r in read_rows(out)] == ["1", "1"]
    assert "before the heads column" in upgrade_csv(out) and _rows(out)[0] == COLUMNS
    # append_row upgrades a legacy file itself before writing a row with the cell column
    legacy = tmp_path / "legacy.csv"
    legacy.write_text(",".join(LEGACY_COLUMNS) + "\n")
    append_row(legacy, {"device": "cpu", "B": 1, "cell": "gru"})
    assert [r["cell"] for r in read_rows(legacy)] == ["gru"] and _rows(legacy)[0] == COLUMNS


def _ignoring_resets_build(ref, strategy):
    inner = bk._build_nn(ref, strategy)

    def run(x, h0, c0=None, *, resets=None):  # a backend that drops the resets: its rows must fail the check
        return inner.run(x, h0, c0)

    return bk.Built(run, inner.params)


@cpu_only
@pytest.mark.parametrize("extra", [["--resets", "0.3"], ["--packed"], ["--packed", "--resets", "0.3"]],
                         ids=["resets", "packed", "packed_resets"])
def test_sweep_with_resets_or_packed_input_against_nn_on_split_segments(tmp_path, monkeypatch, capsys, extra):
    out = tmp_path / "var.csv"
    argv = ["--grid", "smoke", "--B", "3", "--T", "4", "--H", "16", "--passes", "fwdbwd", "--min-reps", "1",
            "--rep-ms", "1", "--out", str(out), *extra]
    assert sweep.main(argv + ["--backends", "torch_cpu,fusedrnn,torch_loop"]) == 0
    assert "skipping torch_loop: takes no PackedSequence or resets" in capsys.readouterr().err
    header, rows = _rows(out)
    assert header == COLUMNS and {r["backend"] for r in rows} == {"torch_cpu", "fusedrnn"}
    packed, p = "--packed" in extra, float(extra[-1]) if "--resets" in extra else 0.0
    cfg = grid_configs("smoke", B=[3], T=[4], H=[16], packed=packed, resets_p=p)[0]
    lengths, resets = sweep._variable_inputs(cfg)
    assert (resets is None) == (not p) and (lengths is None) == (not packed)
    assert resets is None or 0 < resets.sum() < resets.numel()  # the mask splits rows, and not everywhere
    assert lengths is None or lengths.min() < 4  # some rows shorter than T
    for r in rows:
        assert r["error"] == "" and float(r["max_rel_err"]) < 1e-5, (r["backend"], r["error"], r["max_rel_err"])
        assert (r["packed"], float(r["resets_p"])) == (str(int(packed)), p)
        tokens = int(lengths.sum()) if packed else 3 * 4  # the rows a packed batch runs
        assert float(r["tokens_per_s"]) == pytest.approx(tokens / (float(r["ms_p50"]) * 1e-3), rel=1e-4)
        assert ("packed" in r["inputs"]) == packed and ("Bernoulli" in r["inputs"]) == bool(p) and "seed" in r["inputs"]
    assert sweep.main(argv + ["--backends", "torch_cpu,fusedrnn"]) == 0  # the new key columns resume
    assert "0 to run" in capsys.readouterr().err
    if p:  # a backend ignoring the resets fails the output check against torch.nn on split segments
        monkeypatch.setitem(bk.REGISTRY, "noresets", bk.Backend("noresets", _ignoring_resets_build, ("cpu",),
                                                                 variable=True))
        assert sweep.main(argv + ["--backends", "torch_cpu,noresets"]) == 1
        assert _rows(out)[1][-1]["error"].startswith("WrongOutput")


@cpu_only
def test_a_csv_from_before_the_packed_and_resets_columns_reads_as_padded_rows(tmp_path, capsys):
    out = tmp_path / "old.csv"
    assert _fast_sweep(out, "torch_cpu") == 0
    _, rows = _rows(out)
    later = ["packed", "resets_p", "inputs"]
    with out.open("w", newline="") as f:  # the file as the sweep wrote it before these columns
        w = csv.DictWriter(f, fieldnames=[c for c in COLUMNS if c not in later], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert scan_csv(out.read_bytes()).legacy == {"packed": "0", "resets_p": "0", "inputs": "padded"}
    assert [key_of(r) for r in read_rows(out)] == [key_of(r) for r in rows]
    assert _fast_sweep(out, "torch_cpu") == 0  # found: nothing to run
    assert "0 to run" in capsys.readouterr().err
    assert _fast_sweep(out, "torch_cpu", ["--resets", "0.5"]) == 0  # another problem: measured, the file upgraded
    header, new = _rows(out)
    assert header == COLUMNS and [(r["packed"], r["resets_p"]) for r in new] == [("0", "0"), ("0", "0.5")]


def test_run_segments_is_the_modules_resets_for_every_layer_and_direction():
    """backends.run_segments (what cuDNN's rows run for resets) against fusedrnn's reference modules' resets=, on
    padded and packed input, 2 layers, both directions, fp64."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from fusedrnn import models

    torch.manual_seed(0)
    T, B, I, H = 5, 3, 4, 6
    for cls in (torch.nn.LSTM, torch.nn.GRU):
        m = cls(I, H, 2, bidirectional=True).double()
        ours = getattr(models, cls.__name__)(I, H, num_layers=2, bidirectional=True, backend="reference").double()
        ours.load_state_dict(m.state_dict())
        x, h0 = torch.randn(T, B, I, dtype=torch.float64), torch.randn(4, B, H, dtype=torch.float64)
        c0 = torch.randn_like(h0) if cls is torch.nn.LSTM else None
        r = torch.rand(T, B) < 0.3
        r[0, 0] = r[2, 1] = True
        lengths = torch.tensor([5, 3, 4])
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        r_packed = pack_padded_sequence(r[..., None], lengths, enforce_sorted=False).data[:, 0]
        for xin, rin in ((x, r), (packed, r_packed)):
            y, h, c = bk.run_segments(m, xin, h0, c0, rin)
            want_y, want = ours(xin, h0 if c0 is None else (h0, c0), resets=rin)
            want = (want,) if c0 is None else want
            y, want_y = (y.data, want_y.data) if xin is packed else (y, want_y)
            torch.testing.assert_close(y, want_y, rtol=0, atol=1e-12)
            for a, b in zip((h, c), want):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
            assert not torch.allclose(y, m(xin, h0 if c0 is None else (h0, c0))[0].data if xin is packed else
                                      m(xin, h0 if c0 is None else (h0, c0))[0])  # the resets change the output


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
    assert sweep.main(argv) == 0  # errors are outcomes of a sweep (not applicable, out of memory): exit 0
    _, rows = _rows(out)
    by = {r["backend"]: r for r in rows}
    assert list(by) == ["torch_cpu", "boom", "badrun", "torch_loop"]  # reference first, then as given
    assert by["boom"]["error"] == "RuntimeError: deliberate failure for the test"
    assert by["badrun"]["error"] == "ValueError: bad run"
    assert by["boom"]["ms_p50"] == "" and by["boom"]["commit"] != "" and by["boom"]["dtype"] == "fp32"
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
    # no backend left to run: an error (exit 2) that says why, not a silent sweep of 0 rows
    capsys.readouterr()
    assert sweep.main(["--backends", "cudnn", "--out", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert "error: no backend to run on cpu: skipping cudnn: runs on cuda only" in err, err
    assert not (tmp_path / "none.csv").exists()


def test_grids():
    assert [c.B for c in grid_configs("batch")] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert {(c.T, c.H, c.I) for c in grid_configs("batch")} == {(1024, 1024, 1024)}
    assert [c.H for c in grid_configs("hidden")][0] == 128 and grid_configs("hidden")[-1].H == 2048
    assert [c.T for c in grid_configs("seq")][-1] == 4096
    assert len(grid_configs("full")) == 9 * 7
    c = grid_configs("batch", B=[8], layers=2, bidirectional=True)
    assert c == [Config(8, 1024, 1024, 1024, 2, 2)]
    assert c[0].cell == "lstm" and c[0].label == "B8-T1024-H1024-L2-bi"  # LSTM labels (weight seeds) as before
    g = grid_configs("smoke", cell="gru")
    assert {x.cell for x in g} == {"gru"} and g[0].label == "B1-T8-H32-gru"
    with pytest.raises(ValueError, match="unknown cell"):
        Config(1, 1, 1, 1, cell="lru")
    assert grid_configs("smoke", cell="slstm", heads=4)[0].label == "B1-T8-H32-slstm-h4"
    assert grid_configs("smoke", heads=2)[0].label == "B1-T8-H32-h2"
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        grid_configs("smoke", heads=3)
    with pytest.raises(ValueError, match="lnlstm cell has no heads"):
        Config(1, 1, 4, 4, cell="lnlstm", heads=2)


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
    # the GRU streams a 3H x H W_hh (6 MiB, L2) and does 3/4 of the LSTM's products; the RNN 1/4
    gru, rnn = Config(16, 1024, 1024, 1024, cell="gru"), Config(16, 1024, 1024, 1024, cell="rnn")
    assert rnn_flops(gru, "fwd") == 6 * 16 * 1024 * 1024 * 2048 and rnn_flops(rnn, "fwd") == 2 * 16 * 1024 * 1024 * 2048
    assert floor_ms(gru, torch.float16, "fwd", peaks, tf32=True) == pytest.approx(
        1024 * 6 * 2**20 / 1e10 + 6 * 1024 * 16 * 1024 * 1024 / 7e11, rel=1e-6)
    # 8 heads of 128: W_hh is 8 x (4*128 x 128), 1 MiB in fp16, and a step's product 2*4*B*H*128 FLOPs
    heads = Config(16, 1024, 1024, 1024, cell="slstm", heads=8)
    assert rnn_flops(heads, "fwd") == 8 * 16 * 1024 * 1024 * (128 + 1024)
    assert floor_ms(heads, torch.float16, "fwd", peaks, tf32=True) == pytest.approx(
        1024 * max(2**20 / 1e10, 8 * 16 * 1024 * 128 / 7e11) + 8 * 1024 * 16 * 1024 * 1024 / 7e11, rel=1e-6)


def test_strategy_fallback_becomes_an_error_not_a_mislabelled_row():
    import logging

    def run(x, h0, c0):
        logging.getLogger("fusedrnn").debug("fusedrnn: LSTM strategy=%r runs per_step: %s", "persistent", "H > 1024")
        return x, h0, c0

    with pytest.raises(RuntimeError, match="not applicable here.*H > 1024"):
        bk._no_fallback(run, "persistent")(1, 2, 3)
    assert bk._no_fallback(lambda x, h, c: (x, h, c), "persistent")(1, 2, 3) == (1, 2, 3)
    assert logging.getLogger("fusedrnn").level == logging.NOTSET


# --- the CSV: damaged records, the writers' lock ------------------------------------------------------------
_FAST = ["--grid", "smoke", "--B", "1", "--passes", "fwd", "--min-reps", "1", "--rep-ms", "1"]


def _fast_sweep(out, backends="torch_cpu,torch_loop", extra=()):
    return sweep.main(_FAST + ["--backends", backends, "--out", str(out), *extra])


def _cut_last_record(path, keep):
    """Cut the last record: ``keep(record bytes) -> bytes kept of it``."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[:start] + keep(data[start:]))
    return data[start:]


def _sound(path):
    """Every record parses as a full row with valid values, and pandas reads the file."""
    import pandas as pd

    header, rows = _rows(path)
    assert header == COLUMNS
    for r in rows:
        assert None not in r and None not in r.values(), r
        assert r["device"] == "cpu", r["device"]
        float(r["ms_p50"]), float(r["max_rel_err"])
    assert len(pd.read_csv(path)) == len(rows)
    return rows


@cpu_only
@pytest.mark.parametrize("how", ["half_no_newline", "three_bytes", "field_boundary_newline"])
def test_damaged_last_record_is_set_aside_and_measured_again(tmp_path, capsys, how):
    out = tmp_path / "s.csv"
    assert _fast_sweep(out) == 0
    before = _sound(out)
    keep = {"half_no_newline": lambda r: r[: len(r) // 2],
            "three_bytes": lambda r: r[:3],
            "field_boundary_newline": lambda r: r[: r.index(b",", len(r) // 2)] + b"\r\n"}[how]
    cut = _cut_last_record(out, keep)
    capsys.readouterr()
    assert _fast_sweep(out) == 0
    err = capsys.readouterr().err
    assert "set aside 1 incomplete or malformed record" in err and "1 to run" in err, err
    rows = _sound(out)
    assert [key_of(r) for r in rows] == [key_of(r) for r in before]  # the cut row measured again
    (side,) = tmp_path.glob("s.csv.damaged-*")
    assert side.read_bytes() == keep(cut) and str(side) in err
    # a resume with more points appends after a full line
    assert _fast_sweep(out, "torch_cpu,torch_loop", ["--B", "1,4"]) == 0
    assert len(_sound(out)) == 4


@cpu_only
def test_cut_inside_a_quoted_field_loses_no_later_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(bk.REGISTRY, "boom", bk.Backend("boom", _comma_boom_build, devices=("cpu",),
                                                        default_on=()))
    out = tmp_path / "q.csv"
    assert _fast_sweep(out, "torch_cpu,boom") == 0
    _, rows = _rows(out)
    assert rows[-1]["error"] == "RuntimeError: broken, with a comma"  # written quoted
    _cut_last_record(out, lambda r: r[: r.index(b'"') + 8])  # inside the quotes, no newline
    capsys.readouterr()
    assert _fast_sweep(out, "torch_cpu,boom") == 0
    assert "set aside 1" in capsys.readouterr().err
    _, rows = _rows(out)
    assert [r["backend"] for r in rows] == ["torch_cpu", "boom"]
    assert _fast_sweep(out, "torch_cpu,boom,torch_loop") == 0  # later rows are visible, every run converges
    _, rows = _rows(out)
    assert [r["backend"] for r in rows] == ["torch_cpu", "boom", "torch_loop"]
    capsys.readouterr()
    assert _fast_sweep(out, "torch_cpu,boom,torch_loop") == 0
    assert "0 to run" in capsys.readouterr().err


def _comma_boom_build(ref, strategy):
    raise RuntimeError("broken, with a comma")


def test_scan_keeps_rows_after_an_unclosed_quote_and_flags_glued_records(tmp_path):
    def row(**kw):
        base = {"device": "cpu", "gpu": "cpu (x86_64)", "B": 1, "T": 8, "H": 32, "I": 32, "layers": 1,
                "directions": 1, "dtype": "fp32", "pass": "fwd", "backend": "torch_cpu", "ms_p50": 0.25,
                "max_rel_err": 2.64368e-07, "error": ""}
        return {**base, **kw}

    p = tmp_path / "r.csv"
    append_row(p, row())
    with p.open("ab") as f:
        f.write(b'cpu,cpu (x86_64),4,8,32,32,1,1,fp32,fwd,boom,,"RuntimeError: bro\r\n')  # unclosed quote
    append_row(p, row(B=4))
    with p.open("ab") as f:
        f.write(b"cpu")  # a partial line: append_row must not glue the next row onto it
    append_row(p, row(B=16))
    data = p.read_bytes()
    scan = scan_csv(data)
    assert scan.header_ok and len(scan.good) == 3 and len(scan.bad) == 2
    assert [line for _, _, line, _ in scan.bad] == [3, 5]
    with pytest.raises(ValueError, match="2 incomplete or malformed"):
        read_rows(p)
    note = repair_csv(p)
    assert "set aside 2" in note
    assert [r["B"] for r in read_rows(p)] == ["1", "4", "16"]
    (side,) = tmp_path.glob("r.csv.damaged-*")
    assert side.read_bytes() == b'cpu,cpu (x86_64),4,8,32,32,1,1,fp32,fwd,boom,,"RuntimeError: bro\r\ncpu\n'
    assert repair_csv(p) is None  # clean now
    # a record glued onto a partial line by an older writer: 70 fields, or 44 with a nonsense value
    glued = data[: scan.header_end] + data[scan.good[0][0]:scan.good[0][1]]
    for junk in (b"cpu" + glued[scan.header_end:], glued[scan.header_end:-20] + glued[scan.header_end:]):
        assert len(scan_csv(glued + junk).bad) == 1, junk


def test_header_damage_and_non_utf8_are_refused(tmp_path):
    p = tmp_path / "h.csv"
    p.write_bytes(",".join(COLUMNS).encode()[:40])
    with pytest.raises(ValueError, match="header is damaged"):
        read_rows(p)
    with pytest.raises(ValueError, match="header is damaged"):
        repair_csv(p)
    q = tmp_path / "g.csv"
    append_row(q, {"device": "cpu", "B": 1})
    with q.open("ab") as f:
        f.write(b"\xff\xfe garbage\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_rows(q)


@cpu_only
def test_second_sweep_on_a_locked_csv_refuses(tmp_path, capsys):
    out = tmp_path / "l.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom experiments.results import lock_csv\n"
         f"with lock_csv({str(out)!r}):\n    print('locked', flush=True)\n    sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert _fast_sweep(out) == 2
        assert "being written by another sweep" in capsys.readouterr().err
        assert out.read_bytes() == b""
        with pytest.raises(CsvLocked):
            with lock_csv(out):
                pass
    finally:
        holder.communicate("", timeout=30)
    assert _fast_sweep(out) == 0  # the lock is gone with its holder
    assert len(_sound(out)) == 2


# --- wrong outputs, CPU columns ------------------------------------------------------------------------------------
def _nan_build(ref, strategy):
    """torch_cpu's runner, its output poisoned with NaN."""
    built = bk.REGISTRY["torch_cpu"].build(ref, strategy)

    def run(x, h0, c0):
        y, h, c = built.run(x, h0, c0)
        return y * float("nan"), h, c

    return bk.Built(run, built.params)


def _scaled_build(ref, strategy):
    """torch_cpu's runner, its output 1.5 times too large (finite, far off)."""
    built = bk.REGISTRY["torch_cpu"].build(ref, strategy)

    def run(x, h0, c0):
        y, h, c = built.run(x, h0, c0)
        return 1.5 * y, h, c

    return bk.Built(run, built.params)


@cpu_only
def test_a_wrong_output_is_a_failed_row_and_the_sweep_exits_1(tmp_path, monkeypatch, capsys):
    """A backend whose output differs from the baseline's (NaN, or finite but far off) writes a row that says
    WrongOutput, with max_rel_err and no timings or speedup; the summary counts it, the exit status is 1, and a
    rerun still exits 1 (it is done, not re-measured) until --retry-errors measures it again. A row from an older
    sweep with no error but max_rel_err inf counts the same. On CPU, no peaks and no floor are written."""
    for name, build in (("nanout", _nan_build), ("scaled", _scaled_build)):
        monkeypatch.setitem(bk.REGISTRY, name, bk.Backend(name, build, devices=("cpu",), default_on=()))
    out = tmp_path / "w.csv"
    assert _fast_sweep(out, "torch_cpu,nanout,scaled,torch_loop") == 1
    err = capsys.readouterr().err
    assert "wrote 4 rows (0 with errors, 2 with wrong outputs)" in err, err
    assert "error: 2 row(s) of this grid failed the output check" in err and "peaks:" not in err
    by = {r["backend"]: r for r in _rows(out)[1]}
    for name in ("nanout", "scaled"):
        r = by[name]
        assert r["error"].startswith("WrongOutput: max_rel_err") and "fp32 tolerance 0.1" in r["error"], r["error"]
        assert r["ms_p50"] == r["speedup"] == "" and float(r["max_rel_err"]) > 0.1
    assert by["nanout"]["max_rel_err"] == "inf" and float(by["scaled"]["max_rel_err"]) == pytest.approx(0.5)
    assert by["torch_loop"]["error"] == "" and float(by["torch_loop"]["speedup"]) > 0
    from experiments.results import PEAK_COLUMNS

    for r in by.values():  # a CPU run measures no peaks and no floor
        assert all(r[c] == "" for c in PEAK_COLUMNS), {c: r[c] for c in PEAK_COLUMNS}
    assert _fast_sweep(out, "torch_cpu,nanout,scaled,torch_loop") == 1
    assert "0 to run" in capsys.readouterr().err
    # an older sweep's row: no error, max_rel_err inf; it fails the run too, and --retry-errors measures it again
    old = tmp_path / "old.csv"
    for r in _rows(out)[1]:
        if r["backend"] in ("torch_cpu", "torch_loop"):
            append_row(old, {**r, "max_rel_err": "inf"} if r["backend"] == "torch_loop" else r)
    assert _fast_sweep(old) == 1
    assert _fast_sweep(old, extra=["--retry-errors"]) == 0
    assert len(_rows(old)[1]) == 3


# --- atomic rewrites, all-or-nothing appends, read-only files, full disk ---------------------------------------
@contextmanager
def _file_size_limit(nbytes):
    """Writes past ``nbytes`` in any file fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _legacy(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LEGACY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


@cpu_only
def test_a_full_disk_during_the_legacy_upgrade_loses_no_row(tmp_path, capsys):
    """The one-time rewrite of a CSV from before the cell column goes to a new file renamed over the old one:
    when the disk fills up mid-way, the old file is untouched and the sweep stops with a one-line error; with
    room again, it upgrades and resumes."""
    out = tmp_path / "old.csv"
    assert _fast_sweep(out, "torch_cpu") == 0
    _legacy(out, _rows(out)[1] * 3)  # three rows, one of them (after dedup) a key: the sweep has 1 to run
    before = out.read_bytes()
    capsys.readouterr()
    with _file_size_limit(len(before) + 10):  # the upgraded file needs ",lstm" (5 bytes) more per row
        assert _fast_sweep(out) == 2
    err = capsys.readouterr().err
    assert out.read_bytes() == before and not [p for p in tmp_path.iterdir() if p.name != "old.csv"]
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "File too large" in lines[0] and "free some space" in lines[0], err
    assert "Traceback" not in err
    assert _fast_sweep(out) == 0
    assert [r["cell"] for r in read_rows(out)] == ["lstm"] * 4 and _rows(out)[0] == COLUMNS


def test_a_failed_append_leaves_the_file_as_it_was(tmp_path):
    """A row that cannot be written whole (a full disk) is undone: no partial record stays behind."""
    p = tmp_path / "a.csv"
    append_row(p, {"device": "cpu", "B": 1, "error": "x" * 10})
    before = p.read_bytes()
    with _file_size_limit(len(before) + 20), pytest.raises(OSError) as e:
        append_row(p, {"device": "cpu", "B": 2, "error": "y" * 200})
    assert e.value.errno == errno.EFBIG
    assert p.read_bytes() == before


@contextmanager
def _read_only(*paths):
    """Simulate read-only files and folders, whoever runs the tests (root ignores permission bits): opening
    one of ``paths`` for writing, creating a file in one, or replacing one raises PermissionError, and
    os.access says they are not writable."""
    paths = {os.path.realpath(p) for p in paths}

    def blocked(path):
        path = os.path.realpath(path)
        return path in paths or os.path.dirname(path) in paths

    def denied(path):
        return PermissionError(errno.EACCES, "Permission denied", str(path))

    real_open, real_io_open, real_access, real_replace = os.open, io.open, os.access, os.replace

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND) and blocked(path):
            if not (flags & os.O_CREAT and os.path.exists(path) and not flags & (os.O_WRONLY | os.O_RDWR)):
                raise denied(path)
        return real_open(path, flags, *a, **k)

    def io_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and blocked(file):
            raise denied(file)
        return real_io_open(file, mode, *a, **k)

    def access(path, mode, *a, **k):
        return False if mode & os.W_OK and os.path.realpath(path) in paths else real_access(path, mode, *a, **k)

    def replace(src, dst, *a, **k):
        if blocked(dst):
            raise denied(dst)
        return real_replace(src, dst, *a, **k)

    patches = [(os, "open", os_open), (io, "open", io_open), (os, "access", access), (os, "replace", replace)]
    import builtins

    patches.append((builtins, "open", io_open))
    try:
        for mod, name, fn in patches:
            setattr(mod, name, fn)
        yield
    finally:
        for (mod, name, _), real in zip(patches, (real_open, real_io_open, real_access, real_replace,
                                                  real_io_open)):
            setattr(mod, name, real)


@cpu_only
def test_read_only_csv_is_checked_and_writes_give_one_line_errors(tmp_path, capsys):
    """A complete read-only CSV is locked and checked ("0 to run", exit 0); one with rows to run, a damaged one
    in a read-only folder, and a new CSV in a read-only folder stop with a one-line error (exit 2), the file
    untouched."""
    out = tmp_path / "r.csv"
    assert _fast_sweep(out) == 0
    before = out.read_bytes()
    capsys.readouterr()
    with _read_only(out, tmp_path):
        assert _fast_sweep(out) == 0
        assert "0 to run" in capsys.readouterr().err
        assert _fast_sweep(out, extra=["--B", "1,4"]) == 2
        err = capsys.readouterr().err
        assert "error: " in err and "is read-only: 2 rows to run cannot be written" in err, err
        assert _fast_sweep(tmp_path / "new.csv") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and "Permission denied" in err[-1] and "writable" in err[-1], err
    _cut_last_record(out, lambda r: r[:5])
    damaged = out.read_bytes()
    with _read_only(out, tmp_path):
        assert _fast_sweep(out) == 2
        err = capsys.readouterr().err
        assert "could not be set aside" in err and "Permission denied" in err and "Traceback" not in err, err
    assert out.read_bytes() == damaged and out.read_bytes() != before and len(list(tmp_path.iterdir())) == 1
