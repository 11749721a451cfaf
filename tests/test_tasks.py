"""experiments/tasks.py: the training loop gives the same losses through the fused kernels (the interpreter on
CPU) as through the reference; a tiny study writes its CSVs, PNGs (mean and min-max spread over seeds) and
PROVENANCE.md, resumes, and refuses rows of another setting; a damaged CSV is repaired, a second study on the
folder refuses, --fresh keeps committed files; the plots of a subset fit and name only what ran; the data and the
gradient-norm probe are what the docstring says."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from experiments import tasks
from experiments.tasks import (
    CURVE_COLUMNS,
    GRAD_COLUMNS,
    SMOKE,
    Job,
    adding_batch,
    build_model,
    copy_batch,
    gradient_norms,
    run_study,
    train_job,
)

from .helpers import DEVICE

TINY = replace(SMOKE, name="tiny", lengths={"adding": (4, 6), "copy": (3,), "digits": (64,)}, hidden=8,
               steps={"adding": {4: 4, 6: 6}, "copy": 4, "digits": 2}, batch=4, eval_every=2, eval_batch=8,
               copy_symbols=2, gradnorm_batch=4, seeds=(0, 1))


HERE = tasks.MODELS  # the tiny study runs every model of the study
ROOT = Path(__file__).resolve().parent.parent


def test_the_smoke_setting_is_the_cpu_study():
    """Six cells, at least 3 seeds, the adding problem up to T >= 100 (where the RNN fails and the gated
    cells learn within the setting's steps), longer sequences training longer."""
    assert tasks.MODELS == ("rnn", "lstm", "usegate", "gru", "lnlstm", "slstm")
    assert tasks.MODEL_LABELS["gru"] == "GRU" and tasks.MODEL_LABELS["slstm"] == "sLSTM"
    assert len(SMOKE.seeds) >= 3 and len(tasks.FULL.seeds) >= 3
    assert max(SMOKE.lengths["adding"]) >= 100
    steps = [SMOKE.steps_for("adding", T) for T in SMOKE.lengths["adding"]]
    assert steps == sorted(steps) and SMOKE.steps_for("copy", 10) == SMOKE.steps["copy"]


# the copy task once (its data and loss do not depend on the cell): the use-gate LSTM
@pytest.mark.parametrize("model,task", [("rnn", "adding"), ("lstm", "adding"), ("usegate", "adding"),
                                        ("usegate", "copy"), ("gru", "adding"), ("slstm", "adding")])
def test_triton_backend_trains_like_reference(model, task):
    s = replace(TINY, steps={task: 3}, eval_every=1, eval_batch=4, lr=1e-2)
    job = Job(model, task, 4 if task == "adding" else 3, seed=0)
    got, _ = train_job(job, s, backend="triton", device=DEVICE, dtype=torch.float64)
    ref, _ = train_job(job, s, backend="reference", device=DEVICE, dtype=torch.float64)
    assert [r["step"] for r in got] == [1, 2, 3]
    for a, b in zip(got, ref):
        for k in ("train_loss", "eval_loss", "eval_metric"):
            assert abs(a[k] - b[k]) <= 1e-10 * max(abs(b[k]), 1e-3), (k, a[k], b[k])
    # it did train: the loss moved
    assert got[0]["train_loss"] != got[-1]["train_loss"]


def test_tiny_study_writes_csv_and_pngs_and_resumes(tmp_path):
    out = str(tmp_path / "study")
    res = run_study(TINY, out, backend="reference", device="cpu", jobs=1, progress=False, models=HERE,
                    command="python -m experiments.tasks --tiny")
    with open(res["curves"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CURVE_COLUMNS
    keys = {(r["model"], r["task"], r["T"], r["seed"]) for r in rows}
    assert keys == {(m, t, str(T), str(sd)) for m in HERE for t in TINY.lengths for T in TINY.lengths[t]
                    for sd in TINY.seeds}
    finals = [r for r in rows if int(r["step"]) == TINY.steps_for(r["task"], int(r["T"]))]
    assert len(finals) == len(keys)
    assert {int(r["step"]) for r in finals if r["task"] == "adding" and r["T"] == "6"} == {6}
    assert all(r["setting"] == "tiny" and r["torch"] == torch.__version__ and r["commit"] for r in rows)
    assert all(0.0 <= float(r["eval_metric"]) <= 1.0 and float(r["eval_loss"]) > 0 for r in rows)
    with open(res["gradnorm"], newline="") as f:
        grads = list(csv.DictReader(f))
    assert list(grads[0]) == GRAD_COLUMNS
    T = max(TINY.lengths["adding"])
    for m in HERE:
        for phase in ("init", "trained"):
            for sd in TINY.seeds:  # every seed, so that the plot can draw the spread
                d = sorted(int(r["distance"]) for r in grads
                           if r["model"] == m and r["phase"] == phase and r["seed"] == str(sd))
                assert d == list(range(T)), (m, phase, sd)
    prov = open(res["provenance"]).read()
    for text in ("python -m experiments.tasks --tiny", "setting **tiny**", "adding problem, T 4 / 6 (steps T 4: 4, "
                 "T 6: 6)", "seeds 0, 1", "min-max over seeds", f"torch {torch.__version__}",
                 f"{len(keys)} jobs trained"):
        assert text in prov, text
    names = sorted(os.path.basename(p) for p in res["pngs"])
    assert names == ["curves_adding.png", "curves_copy.png", "curves_digits.png", "final_vs_T.png",
                     "gradnorm.png"]
    assert all(os.path.getsize(p) > 10_000 for p in res["pngs"])
    # a rerun finds every job done and appends nothing, and keeps PROVENANCE.md (the run that trained);
    # --plot-only redraws from the CSVs
    size, prov_text = os.path.getsize(res["curves"]), open(res["provenance"]).read()
    assert run_study(TINY, out, backend="reference", device="cpu", jobs=1, progress=False, models=HERE)["todo"] == 0
    assert os.path.getsize(res["curves"]) == size and open(res["provenance"]).read() == prov_text
    for p in res["pngs"]:
        os.remove(p)
    assert tasks.main(["--plot-only", "--out", out]) == 0
    assert all(os.path.exists(p) for p in res["pngs"])
    # rows of another setting are refused, not mixed in; clear_study (--fresh) deletes the study files only
    with pytest.raises(ValueError, match="another setting.*hidden 8"):
        run_study(replace(TINY, hidden=16), out, backend="reference", device="cpu", progress=False, models=HERE)
    with pytest.raises(ValueError, match="adding T=6 logged to step 6"):
        run_study(replace(TINY, steps={**TINY.steps, "adding": 5}), out, backend="reference", device="cpu",
                  progress=False, models=HERE)
    open(os.path.join(out, "notes.txt"), "w").close()
    gone = tasks.clear_study(out)
    assert "curves.csv" in gone and "PROVENANCE.md" in gone and os.listdir(out) == ["notes.txt"]


def test_every_plot_draws_the_spread_over_seeds(tmp_path, monkeypatch):
    """Each curve, final score and gradient norm is the mean over seeds with the min-max range drawn: the
    figures are inspected before they are saved."""
    import math

    figs = {}

    def keep(fig, out, name, title):
        figs[name] = (fig, title)
        return os.path.join(out, name)

    monkeypatch.setattr(tasks, "_save", keep)
    rows, grows = [], []
    for seed, acc in ((0, 0.2), (1, 0.6), (2, 1.0)):
        for step in (10, 20):
            rows.append(dict(model="lstm", task="adding", T=5, seed=seed, step=step, train_loss=0.1,
                             eval_loss=0.1 * (seed + 1), eval_metric=acc * step / 20, setting="x", hidden=8,
                             commit="c"))
        for dist in range(3):
            grows.append(dict(model="lstm", task="adding", T=3, seed=seed, phase="init", distance=dist,
                              grad_norm=math.exp(-dist * (seed + 1))))
    from experiments.results import append_rows

    append_rows(tmp_path / "curves.csv", rows, tasks.CURVES)  # the other columns empty
    append_rows(tmp_path / "gradnorm.csv", grows, tasks.GRADS)
    tasks.plot(str(tmp_path))
    assert sorted(figs) == ["curves_adding.png", "final_vs_T.png", "gradnorm.png"]
    for name, (fig, title) in figs.items():
        assert "mean of 3 seeds" in title and "min-max over seeds" in title, title
    ax_loss, ax_acc = figs["curves_adding.png"][0].axes[:2]
    for ax in (ax_loss, ax_acc):
        (band,) = ax.collections  # the min-max band of the one model
        ys = band.get_paths()[0].vertices[:, 1]
        assert ys.max() > ys.min()
    (line,) = [ln for ln in ax_acc.get_lines() if ln.get_label() == "LSTM"]
    assert list(line.get_ydata()) == pytest.approx([0.3, 0.6])  # the mean over seeds
    (bars,) = figs["final_vs_T.png"][0].axes[0].containers
    lo, hi = bars.lines[2][0].get_segments()[0][:, 1]  # (data line, caps, bar segments)
    assert (lo, hi) == pytest.approx((0.2, 1.0))  # min-max, not a std
    ax_g = figs["gradnorm.png"][0].axes[0]
    assert len(ax_g.collections) == 1
    ys = ax_g.collections[0].get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(math.exp(-6)) and max(ys) == pytest.approx(1.0)


def test_reproducible():
    s = replace(TINY, steps={"copy": 3}, eval_every=3)
    a, _ = train_job(Job("lstm", "copy", 3, 1), s, backend="reference")
    b, _ = train_job(Job("lstm", "copy", 3, 1), s, backend="reference")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


def test_adding_and_copy_data():
    g = torch.Generator().manual_seed(0)
    x, y = adding_batch(7, 10, g)
    assert x.shape == (10, 7, 2) and y.shape == (7, 1)
    marks = x[:, :, 1]
    assert torch.equal(marks.sum(0), torch.full((7,), 2.0))
    assert torch.equal(marks[:5].sum(0), torch.ones(7))  # one marker in each half
    assert torch.allclose((x[:, :, 0] * marks).sum(0), y[:, 0])
    x, y = copy_batch(3, 6, g, symbols=4)
    assert x.shape == (6 + 8, 3) and y.shape == (4, 3)
    assert torch.equal(x[:4] - 1, y) and (x[4:9] == 0).all() and (x[9] == 9).all() and (x[10:] == 0).all()


def test_forget_bias_init():
    for model, lo in (("lstm", 1), ("usegate", 2)):
        m = build_model(Job(model, "adding", 5, 0), TINY, "reference", "cpu", torch.float32)
        H = TINY.hidden
        assert torch.equal(m.rnn.bias_ih_l0[lo * H:(lo + 1) * H], torch.ones(H))
        assert torch.equal(m.rnn.bias_hh_l0[lo * H:(lo + 1) * H], torch.zeros(H))
        assert (m.rnn.bias_ih_l0[:lo * H] != 1).all()


def test_the_gru_keeps_torchs_default_init():
    """No forget gate to bias: every GRU bias stays torch's uniform(-1/sqrt(H), 1/sqrt(H))."""
    m = build_model(Job("gru", "adding", 5, 0), TINY, "reference", "cpu", torch.float32)
    assert isinstance(m.rnn, tasks._models().GRU) and m.rnn.backend == "reference"
    bound = TINY.hidden ** -0.5
    for name in ("bias_ih_l0", "bias_hh_l0"):
        b = getattr(m.rnn, name)
        assert b.shape == (3 * TINY.hidden,) and (b.abs() <= bound).all() and b.std() > bound / 4, name


def test_gradient_norms_are_total_gradients():
    """The probe's ||dL/dh_t|| follows the RNN's chain rule dL/dh_t = (dL/dh_{t+1} * (1 - h_{t+1}^2)) W_hh: the
    gradient through the recurrence, not only the direct one (which is zero for t < T-1)."""
    s = replace(TINY, gradnorm_batch=1)
    job = Job("rnn", "adding", 6, 0)
    m = build_model(job, s, "reference", "cpu", torch.float64)
    rows = gradient_norms(m, job, s, "init", "cpu", torch.float64)
    norms = {r["distance"]: r["grad_norm"] for r in rows}
    assert all(v > 0 for v in norms.values())
    # recompute by hand on the same batch
    gen = torch.Generator().manual_seed(tasks._seed("gradnorm", "adding", 6, 0))
    x, y = adding_batch(1, 6, gen)
    x, y = x.double(), y.double()
    W, U = m.rnn.weight_hh_l0, m.rnn.weight_ih_l0
    b = m.rnn.bias_ih_l0 + m.rnn.bias_hh_l0
    hs, h = [], torch.zeros(1, 8, dtype=torch.float64)
    for t in range(6):
        h = torch.tanh(x[t] @ U.t() + h @ W.t() + b)
        hs.append(h)
    pred = m.head(hs[-1])
    (g,) = torch.autograd.grad(torch.nn.functional.mse_loss(pred, y), hs[-1])
    for t in range(5, -1, -1):
        assert abs(g.norm().item() - norms[5 - t]) <= 1e-10 * norms[5 - t]
        g = (g * (1 - hs[t] ** 2)) @ W if t > 0 else g


# --- the study's CSVs: damage, the lock, --fresh, read-only -------------------------------------------------------
SMALL = replace(TINY, name="small", lengths={"adding": (4,)}, steps={"adding": 2}, eval_every=2, seeds=(0, 1))


def _small_study(out, **kw):
    return run_study(SMALL, str(out), backend="reference", device="cpu", progress=False, models=("rnn",),
                     tasks=("adding",), **kw)


def test_a_cut_last_line_is_set_aside_and_its_job_trained_again(tmp_path, monkeypatch, capsys):
    """A curves.csv whose last line is cut (a truncated copy, a crash) is repaired like the sweep's CSV: the
    fragment goes to a side file, that job is trained again, and nothing claims another setting."""
    monkeypatch.setattr(tasks, "plot", lambda out: [])
    _small_study(tmp_path)
    curves = tmp_path / "curves.csv"
    with open(curves, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["seed"] for r in rows} == {"0", "1"}
    data = curves.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    curves.write_bytes(data[: last + (len(data) - last) // 2])  # inside the last row, no end of line
    capsys.readouterr()
    res = _small_study(tmp_path)
    err = capsys.readouterr().err
    assert res["todo"] == 1 and "set aside 1 incomplete or malformed record(s)" in err, err
    assert [(r["seed"], r["step"]) for r in tasks.study_rows(curves)] == [(r["seed"], "2") for r in rows]
    (side,) = tmp_path.glob("curves.csv.damaged-*")
    assert side.read_bytes() == data[last: last + (len(data) - last) // 2]
    # the retrained job's gradient norms were written a second time: the last copy counts, once
    grads = tasks.study_rows(tmp_path / "gradnorm.csv", tasks.GRADS)
    assert len(grads) == 2 * 2 * 4  # seeds x phases x distances
    assert _small_study(tmp_path)["todo"] == 0


def test_a_second_study_on_the_same_folder_refuses(tmp_path, capsys):
    """One study at a time writes a folder: while another process holds the lock, a run stops at once."""
    out = tmp_path / "s"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom experiments.results import lock_csv\n"
         f"with lock_csv({str(out / 'curves.csv')!r}):\n    print('locked', flush=True)\n    sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert tasks.main(["--smoke", "--models", "rnn", "--tasks", "adding", "--seeds", "1", "--steps", "2",
                           "--out", str(out)]) == 2
        assert "being written by another study" in capsys.readouterr().err
        assert os.listdir(out) == ["curves.csv"] and (out / "curves.csv").read_bytes() == b""
    finally:
        holder.communicate("", timeout=30)


def test_fresh_never_deletes_committed_results_without_a_second_flag(tmp_path, monkeypatch, capsys):
    """--fresh on a folder whose study files git tracks deletes nothing and says how to go on; with
    --overwrite-committed it deletes them. The documented study command writes under scratch/."""
    monkeypatch.setattr(tasks, "plot", lambda out: [])
    out = tmp_path / "study"
    _small_study(out)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(git + ["add", "study/curves.csv", "study/PROVENANCE.md"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-qm", "study"], cwd=tmp_path, check=True)
    before = sorted(os.listdir(out))
    argv = ["--smoke", "--models", "rnn", "--tasks", "adding", "--seeds", "1", "--steps", "2", "--out", str(out),
            "--fresh"]
    capsys.readouterr()
    assert tasks.main(argv) == 2
    err = capsys.readouterr().err
    assert "committed to git (PROVENANCE.md, curves.csv)" in err and "--overwrite-committed" in err, err
    assert sorted(os.listdir(out)) == before and len(tasks.study_rows(out / "curves.csv")) == 2
    assert tasks.main(["--overwrite-committed", "--out", str(out)]) == 2  # only with --fresh
    assert "goes with --fresh" in capsys.readouterr().err
    assert tasks.clear_study(str(out), overwrite_committed=True) == ["PROVENANCE.md", "curves.csv", "gradnorm.csv"]
    readme = (ROOT / "README.md").read_text()
    assert "python -m experiments.tasks --smoke --out scratch/tasks_smoke" in readme
    assert "--fresh --out results/" not in readme and "--fresh --out results/" not in tasks.__doc__


def test_a_complete_read_only_study_is_checked(tmp_path, monkeypatch, capsys):
    """A complete study in a folder that cannot be written: 0 jobs to run, nothing written, no error; with jobs
    to run, a one-line error (exit 2)."""
    from .test_sweep import _read_only

    monkeypatch.setattr(tasks, "plot", lambda out: [])
    out = tmp_path / "study"
    _small_study(out)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["--models", "rnn", "--tasks", "adding", "--out", str(out)]
    monkeypatch.setattr(tasks, "SMOKE", SMALL)
    capsys.readouterr()
    with _read_only(out, *out.iterdir()):
        assert tasks.main(["--smoke", *argv]) == 0
        assert "0 jobs run" in capsys.readouterr().out
        assert tasks.main(["--smoke", "--seeds", "3", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "read-only: 1 job(s) to run" in err[0], err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files


def _fits(fig):
    """The figure's titles, axis labels and legend texts lie inside it, as saved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the figure was closed once saved
    canvas.draw()
    r = canvas.get_renderer()
    box = fig.bbox
    texts = [fig._suptitle]
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        texts += ax.get_legend().get_texts() if ax.get_legend() else []
    texts = [t for t in texts if t is not None and t.get_visible() and t.get_text()]
    out = []
    for t in texts:
        b = t.get_window_extent(r)
        if b.x0 < box.x0 - 1 or b.x1 > box.x1 + 1 or b.y0 < box.y0 - 1 or b.y1 > box.y1 + 1:
            out.append(t.get_text())
    return out


def test_the_plots_of_a_subset_fit_and_name_only_what_ran(tmp_path, monkeypatch):
    """One task, one T, two models, one seed: no text is cut off, the titles name neither the use-gate LSTM nor
    the GRU, and say "one seed" (no spread), never "1 seeds"."""
    figs = {}
    real_save = tasks._save

    def keep(fig, out, name, title):
        path = real_save(fig, out, name, title)
        figs[name] = (fig, " ".join(fig._suptitle.get_text().split()))  # lines wrapped to the figure's width
        return path

    monkeypatch.setattr(tasks, "_save", keep)
    rows = [dict(model=m, task="adding", T=50, seq_len=50, seed=0, step=step, train_loss=0.1, eval_loss=0.1,
                 eval_metric=0.5, metric_name="accuracy", hidden=64, batch=64, lr=0.01, forget_bias=1.0,
                 backend="auto", dtype="float32", setting="smoke", wall_s=1.0, commit="c80c6c5", torch="2.13",
                 date="2026-12-02 17:12", cpu="x", device="cpu") for m in ("rnn", "lstm") for step in (50, 100)]
    with open(tmp_path / "curves.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tasks.plot(str(tmp_path))
    assert sorted(figs) == ["curves_adding.png", "final_vs_T.png"]
    for name, (fig, title) in figs.items():
        assert _fits(fig) == [], name
        assert "1 seeds" not in title and "one seed" in title and "min-max" not in title, title
        assert "use-gate" not in title and "GRU" not in title, title
        assert "forget-gate bias 1 (LSTM)" in title and "RNN (tanh)" in title, title
        assert not any("min-max" in ax.get_ylabel() for ax in fig.axes), name


def test_a_time_budget_stops_the_study_and_the_provenance_keeps_every_run(tmp_path):
    """--time-budget: no job is started after it, the provenance says how many were left, and a rerun's
    PROVENANCE.md keeps the earlier runs' command and count lines."""
    out = str(tmp_path / "study")
    s = replace(TINY, lengths={"adding": (4,)}, seeds=(0,))
    res = run_study(s, out, backend="reference", device="cpu", jobs=1, progress=False, models=("rnn", "slstm"),
                    tasks=("adding",), time_budget=0.0, command="first")
    assert res["todo"] == 0 and tasks.study_rows(res["curves"]) == []
    first = open(res["provenance"]).read()
    assert "0 jobs trained" in first and "stopped by its time budget with 2 jobs left untrained" in first
    res = run_study(s, out, backend="reference", device="cpu", jobs=1, progress=False, models=("rnn", "slstm"),
                    tasks=("adding",), command="second")
    text = open(res["provenance"]).read()
    assert res["todo"] == 2 and "- command: `second`" in text and "2 jobs trained" in text
    assert text.count(tasks.EARLIER) == 1 and "- command: `first`, from the repository root; this invocation: 0" in text
