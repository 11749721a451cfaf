"""The GPU run's pieces on CPU: the correctness subset's CLI and runner (experiments/gpu_check.py) on a tiny
check in the interpreter, its poisoning, and the headline driver's order, variants and resume
(experiments/headline.py, with the measurement replaced by a stub)."""
from __future__ import annotations

import csv
import inspect
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments import gpu_check as G
from experiments import headline as HL

ROOT = Path(__file__).resolve().parent.parent


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_correctness_cli_runs_a_tiny_check(tmp_path):
    """The CLI the GPU script calls, on the poison self-check and one LSTM check (tiny shapes on CPU)."""
    out, fails = tmp_path / "correctness.csv", tmp_path / "failures.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "experiments.gpu_check", "--out", str(out), "--failures", str(fails),
                        "--only", "poison", "lstm/persistent/fp32/big/fwdbwd", "--workers", "1", "--seed", "5"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = _rows(out)
    assert list(rows[0]) == G.COLUMNS
    assert [(x["name"], x["status"]) for x in rows] == [("poison", "pass"), ("lstm/persistent/fp32/big/fwdbwd", "pass")]
    lstm = rows[1]
    assert 0 < float(lstm["max_err"]) <= float(lstm["bound"]) == 2e-5 and lstm["metric"].startswith("max_rel")
    assert lstm["seed"] == "106" and not fails.exists()
    assert "correctness: 2 pass, 0 fail, 0 skip, 0 timeout" in r.stdout


def test_an_unwritten_output_fails_its_check(tmp_path, monkeypatch):
    """Poisoning at work: a forward that skips its last step leaves NaN in y[T-1] and h_n, and the check
    fails with the count of non-finite elements instead of passing on stale memory."""
    from kernels import lstm as L

    real = L.lstm_fwd_step
    sig = inspect.signature(real)

    def skip_last(*a, **k):
        if sig.bind(*a, **k).arguments.get("t") == G._case("big").T - 1:
            return None
        return real(*a, **k)

    monkeypatch.setattr(L, "lstm_fwd_step", skip_last)
    check = next(c for c in G.all_checks() if c.name == "lstm/per_step/fp32/big/fwd")
    row = G.run_one(check, tmp_path / "c.csv", tmp_path / "f.log", seed=3)
    assert row["status"] == "fail" and "non-finite" in row["error"], row
    assert "out" in (tmp_path / "f.log").read_text()


def test_failing_checks_are_recorded_and_the_next_one_runs(tmp_path):
    def boom(seed):
        raise RuntimeError("kernel exploded")

    def off_by_much(seed):
        return [("out", 0.5, 1e-5, "max_rel"), ("h_n", math.inf, 0.0, "3 non-finite elements")]

    def fine(seed):
        assert torch.are_deterministic_algorithms_enabled()  # poisoned while a check runs
        return [("out", 1e-7, 2e-5, "max_rel")]

    def skipped(seed):
        raise G.Skip("not here")

    checks = [G.Check("boom", "g", boom), G.Check("bad", "g", off_by_much), G.Check("skipped", "g", skipped),
              G.Check("fine", "g", fine)]
    out, fails = tmp_path / "c.csv", tmp_path / "f.log"
    G.run_checks(checks, out, fails, base_seed=10)
    assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards
    rows = {r["name"]: r for r in _rows(out)}
    assert [rows[n]["status"] for n in ("boom", "bad", "skipped", "fine")] == ["fail", "fail", "skip", "pass"]
    assert rows["boom"]["error"] == "RuntimeError: kernel exploded"
    assert "out: 0.5 > 1e-05" in rows["bad"]["error"] and "h_n: inf" in rows["bad"]["error"]
    assert [rows[n]["seed"] for n in ("boom", "bad", "skipped", "fine")] == ["10", "111", "212", "313"]
    log = fails.read_text()
    assert "Traceback" in log and "kernel exploded" in log and "___ bad (seed 111) ___" in log


def test_checks_past_the_time_limit_get_timeout_rows(tmp_path):
    out = tmp_path / "c.csv"
    assert G.main(["--out", str(out), "--only", "cell/", "--time-limit", "0", "--workers", "1"]) == 1
    rows = _rows(out)
    assert {r["name"] for r in rows} == {c.name for c in G.all_checks() if "cell/" in c.name}
    assert {r["status"] for r in rows} == {"timeout"}


# ------------------------------------------------------------------------------------------ headline
def test_headline_plan_puts_the_important_rows_first():
    everything = HL.plan(True, ["main", "pdl"])
    gru_rows = [(j, v) for j, v in everything if j.cfg.cell == "gru"]
    jobs = everything[: len(everything) - len(gru_rows)]
    # the GRU's rows come after every LSTM row, variant "main" only, the same grid in the same order
    assert {j.cfg.cell for j, _ in jobs} == {"lstm"} and everything[len(jobs):] == gru_rows
    gru_strategies = HL.bk.REGISTRY["fusedrnn"].strategies("gru")
    assert len(gru_rows) == 4 * 2 * 2 * 2 * (1 + len(gru_strategies))
    assert {v for _, v in gru_rows} == {"main"} and {v for _, v in jobs} == {"main", "pdl"}
    g0 = gru_rows[0][0]
    assert (g0.backend, g0.cfg.B, g0.cfg.H, g0.dtype, g0.pass_) == ("cudnn", 16, 1024, "bf16", "fwd")
    assert [j.backend for j, _ in gru_rows[: 1 + len(gru_strategies)]] == ["cudnn"] + ["fusedrnn"] * len(gru_strategies)
    assert HL.plan(True, ["main"], cells=("gru", "lstm"))[0][0].cfg.cell == "lstm"  # the LSTM first anyway
    assert {j.cfg.cell for j, _ in HL.plan(True, ["main"], cells=("lstm",))} == {"lstm"}

    jobs = HL.plan(True, ["main"], cells=("lstm",))
    strategies = HL.bk.REGISTRY["fusedrnn"].strategies()
    assert len(jobs) == 4 * 2 * 2 * 2 * (1 + len(strategies))
    first = jobs[0][0]
    assert (first.backend, first.cfg.B, first.cfg.H, first.cfg.T, first.dtype, first.pass_) == \
        ("cudnn", 16, 1024, 1024, "bf16", "fwd")
    bs = [j.cfg.B for j, _ in jobs]
    assert max(i for i, b in enumerate(bs) if b in (16, 1)) < min(i for i, b in enumerate(bs) if b in (64, 256))
    cell = jobs[: 1 + len(strategies)]
    assert [j.backend for j, _ in cell] == ["cudnn"] + ["fusedrnn"] * len(strategies)
    assert {j.strategy for j, _ in cell[1:]} == set(strategies) >= {"per_step", "persistent"}


def test_headline_variants_resume_and_labels(tmp_path, monkeypatch):
    """Each variant's environment is set around its fusedrnn rows only, its rows are labelled
    strategy@variant, the GRU's rows follow the LSTM's (variant main only, cell column gru), and a rerun skips
    every row already in the CSV."""
    from experiments import sweep

    monkeypatch.setattr(HL, "VARIANTS", {"main": {}, "knob": {"FUSEDRNN_TEST_KNOB": "7"}})
    monkeypatch.delenv("FUSEDRNN_TEST_KNOB", raising=False)
    seen = []

    def fake_run_job(job, ctx):
        seen.append((job.backend, job.strategy, os.environ.get("FUSEDRNN_TEST_KNOB")))
        row = sweep._base_row(job, ctx)
        row.update(ms_p50=1.0, ms_p20=0.9, ms_p80=1.1)
        return row

    monkeypatch.setattr(HL, "run_job", fake_run_job)
    peaks = tmp_path / "env.json"
    peaks.write_text('{"peaks": {"hbm_gbs": 1, "l2_gbs": 2, "l2_bytes": 1048576, "tflops_fp16": 1, '
                     '"tflops_bf16": 1, "tflops_tf32": 1, "tflops_fp32": 1}}')
    out = tmp_path / "headline.csv"
    grid = dict(B=(1,), H=(16,), dtypes=("bf16",), passes=("fwd",))
    gru = list(HL.bk.REGISTRY["fusedrnn"].strategies("gru"))
    assert HL.run(out, None, ["main", "knob"], peaks, **grid) == 5 + 1 + len(gru)
    assert os.environ.get("FUSEDRNN_TEST_KNOB") is None
    assert seen == [("torch_cpu", "", None), ("fusedrnn", "per_step", None), ("fusedrnn", "persistent", None),
                    ("fusedrnn", "per_step", "7"), ("fusedrnn", "persistent", "7"),
                    ("torch_cpu", "", None)] + [("fusedrnn", s, None) for s in gru]
    rows = _rows(out)
    labels = [r["strategy"] for r in rows]
    assert labels == ["", "per_step", "persistent", "per_step@knob", "persistent@knob", ""] + gru
    assert [r["cell"] for r in rows] == ["lstm"] * 5 + ["gru"] * (1 + len(gru))
    assert HL.split_label("per_step@knob") == ("per_step", "knob")
    assert HL.split_label("persistent") == ("persistent", "main")
    assert HL.run(out, None, ["main", "knob"], peaks, **grid) == 0  # resume: nothing left
    with pytest.raises(ValueError, match="unknown variants"):
        HL.run(out, None, ["nope"], peaks, **grid)


def test_a_persistent_fallback_is_a_skip_out_of_scope_and_a_failure_in_scope():
    import logging

    log = logging.getLogger("fusedrnn")
    with pytest.raises(G.Skip, match="does not apply"):
        with G._no_fallback("persistent", planned=False):
            log.debug("fusedrnn: LSTM strategy=%r runs per_step: %s", "persistent", "H too large")
    with pytest.raises(AssertionError, match="by plan but fell back"):
        with G._no_fallback("persistent", planned=True):
            log.debug("fusedrnn: LSTM strategy=%r runs per_step: %s", "persistent", "not co-resident")
    with G._no_fallback("persistent", planned=True):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for CPU timings")
def test_headline_refuses_cpu_timings_under_results():
    with pytest.raises(ValueError, match="refusing"):
        HL.run(ROOT / "results" / "headline.csv", None, ["main"])


def test_the_two_stream_check_defers_every_timeout_read(capsys):
    """The two-stream check reads the persistent launches' timeout flag only after all four are in flight (a read
    in between would wait for the first launch and serialize the streams): its body raises when fewer than four
    reads were deferred, else prints its RESULT line."""
    assert G._streams_body(3) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("RESULT finished")


def test_all_stage_runs_quick_then_more_in_one_folder(tmp_path):
    """``gpu_run.sh OUT all`` (an own GPU, docs/GPU_RUN.md): quick, then more resuming the headline from OUT
    itself, each with its own log. A stub interpreter stands in for Python (it records its arguments, says there
    is no GPU and appends a row to each --out file), so only the script's order and folders are tested."""
    stub, calls = tmp_path / "py", tmp_path / "calls.txt"
    stub.write_text('#!/bin/sh\n[ "$1" = -c ] && exit 1\necho "$*" >> "' + str(calls) + '"\nprev=\n'
                    'for a in "$@"; do [ "$prev" = --out ] && echo row >> "$a"; prev=$a; done\nexit 0\n')
    stub.chmod(0o755)
    out = tmp_path / "out"
    r = subprocess.run(["bash", "experiments/gpu_run.sh", str(out), "all", "200"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PYTHON=str(stub)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "same file" not in r.stdout + r.stderr
    mods = [line.split()[1] for line in calls.read_text().splitlines() if line.startswith("-m ")]
    assert mods[:2] == ["experiments.gpu_env", "experiments.gpu_check"]
    order = [mods.index(m) for m in ("experiments.gpu_check", "experiments.headline", "experiments.gpu_sweep")]
    assert order == sorted(order)
    assert {"quick.log", "more.log", "all.log", "headline.csv", "env.json"} <= {f.name for f in out.iterdir()}
    assert f"resuming from {out}/headline.csv" in (out / "more.log").read_text()
    # the multi-head rows (the CPU stand-ins of 24 and 12 heads), LSTM and sLSTM, into hidden.csv
    sweeps = [line.split() for line in calls.read_text().splitlines() if line.startswith("-m experiments.sweep ")]
    heads = [a for a in sweeps if "--heads" in a]
    assert [(a[a.index("--cell") + 1], a[a.index("--heads") + 1]) for a in heads] == \
        [("lstm", "2"), ("slstm", "2"), ("lstm", "1"), ("slstm", "1")]
    # then the episode-reset rows (issue 23): padded, a 3% reset mask, packed lengths, the same shape each time
    resets = [a for a in sweeps if "--heads" not in a]
    assert [[x for x in a if x in ("--resets", "0.03", "--packed")] for a in resets] == \
        [[], ["--resets", "0.03"], ["--packed"]]
    assert len({tuple(a[a.index("--B"):a.index("--passes") + 2]) for a in resets}) == 1
    assert all(a[a.index("--out") + 1] == f"{out}/hidden.csv" for a in sweeps)


def test_reset_check_passes_and_catches_an_ignored_mask(tmp_path, monkeypatch):
    """The subset's episode-reset rows (fused module with a mask against the float64 reference with the same mask):
    one runs in the interpreter and passes; with the fused module's mask dropped it fails. Every group of a check
    has a worker."""
    import models

    assert {c.group for c in G.all_checks()} <= {g for shard in G.SHARDS for g in shard}
    check = next(c for c in G.all_checks() if c.name == "resets/rnn_tanh/per_step/bf16/fwdbwd")
    row = G.run_one(check, tmp_path / "c.csv", None, seed=7)
    assert row["status"] == "pass", row
    real = models.RNN.forward

    def mask_dropped(self, input, hx=None, resets=None):
        return real(self, input, hx, resets=None if self.backend == "triton" else resets)

    monkeypatch.setattr(models.RNN, "forward", mask_dropped)
    row = G.run_one(check, tmp_path / "c.csv", None, seed=7)
    assert row["status"] == "fail", row
