"""experiments/tasks.py: the training loop gives the same losses through the fused kernels (the interpreter on
CPU) as through the reference; a tiny study writes its CSVs, PNGs (mean and min-max spread over seeds) and
PROVENANCE.md, resumes, and refuses rows of another setting; the data and the gradient-norm probe are what the
docstring says."""
from __future__ import annotations

import csv
import os
from dataclasses import replace

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


def test_the_smoke_setting_is_the_cpu_study():
    """Four cells, at least 3 seeds, the adding problem up to T >= 100 (where the RNN fails and the gated
    cells learn within the setting's steps), longer sequences training longer."""
    assert tasks.MODELS == ("rnn", "lstm", "usegate", "gru") and tasks.MODEL_LABELS["gru"] == "GRU"
    assert len(SMOKE.seeds) >= 3 and len(tasks.FULL.seeds) >= 3
    assert max(SMOKE.lengths["adding"]) >= 100
    steps = [SMOKE.steps_for("adding", T) for T in SMOKE.lengths["adding"]]
    assert steps == sorted(steps) and SMOKE.steps_for("copy", 10) == SMOKE.steps["copy"]


@pytest.mark.parametrize("model,task", [("rnn", "adding"), ("lstm", "adding"), ("usegate", "adding"),
                                        ("usegate", "copy"), ("gru", "adding"), ("gru", "copy")])
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
    # a rerun finds every job done and appends nothing; --plot-only redraws from the CSVs
    size = os.path.getsize(res["curves"])
    run_study(TINY, out, backend="reference", device="cpu", jobs=1, progress=False, models=HERE)
    assert os.path.getsize(res["curves"]) == size
    assert "0 jobs trained" in open(res["provenance"]).read()
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
    for name, rs, cols in (("curves.csv", rows, list(rows[0])), ("gradnorm.csv", grows, list(grows[0]))):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rs)
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
