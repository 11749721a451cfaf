"""experiments/tasks.py: the training loop gives the same losses through the fused kernels (the interpreter on
CPU) as through the reference; a tiny study writes its CSVs and PNGs and resumes; the data and the
gradient-norm probe are what the docstring says."""
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
               steps={"adding": 4, "copy": 4, "digits": 2}, batch=4, eval_every=2, eval_batch=8, copy_symbols=2,
               gradnorm_batch=4)


@pytest.mark.parametrize("model,task", [("rnn", "adding"), ("lstm", "adding"), ("usegate", "adding"),
                                        ("usegate", "copy")])
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
    res = run_study(TINY, out, backend="reference", device="cpu", jobs=1, progress=False)
    with open(res["curves"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CURVE_COLUMNS
    keys = {(r["model"], r["task"], r["T"]) for r in rows}
    assert keys == {(m, t, str(T)) for m in tasks.MODELS for t in TINY.lengths for T in TINY.lengths[t]}
    finals = [r for r in rows if int(r["step"]) == TINY.steps[r["task"]]]
    assert len(finals) == len(keys)
    assert all(r["setting"] == "tiny" and r["torch"] == torch.__version__ and r["commit"] for r in rows)
    assert all(0.0 <= float(r["eval_metric"]) <= 1.0 and float(r["eval_loss"]) > 0 for r in rows)
    with open(res["gradnorm"], newline="") as f:
        grads = list(csv.DictReader(f))
    assert list(grads[0]) == GRAD_COLUMNS
    T = max(TINY.lengths["adding"])
    for m in tasks.MODELS:
        for phase in ("init", "trained"):
            d = sorted(int(r["distance"]) for r in grads if r["model"] == m and r["phase"] == phase)
            assert d == list(range(T)), (m, phase)
    names = sorted(os.path.basename(p) for p in res["pngs"])
    assert names == ["curves_adding.png", "curves_copy.png", "curves_digits.png", "final_vs_T.png",
                     "gradnorm.png"]
    assert all(os.path.getsize(p) > 10_000 for p in res["pngs"])
    # a rerun finds every job done and appends nothing; --plot-only redraws from the CSVs
    size = os.path.getsize(res["curves"])
    run_study(TINY, out, backend="reference", device="cpu", jobs=1, progress=False)
    assert os.path.getsize(res["curves"]) == size
    for p in res["pngs"]:
        os.remove(p)
    assert tasks.main(["--plot-only", "--out", out]) == 0
    assert all(os.path.exists(p) for p in res["pngs"])


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
