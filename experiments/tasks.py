"""RNN vs LSTM vs use-gate LSTM vs GRU vs LayerNorm LSTM vs sLSTM on tasks that need long memory.

    python -m experiments.tasks --smoke --out scratch/tasks_smoke  # CPU setting, ~7 min on 2 idle cores (4 models)
    python -m experiments.tasks                          # full setting, meant for a GPU (out: scratch/tasks)
    python -m experiments.tasks --plot-only --out DIR    # redraw the PNGs from DIR's CSVs

Models: input -> recurrent layer (``models.RNN`` tanh, ``models.LSTM``, ``models.UseGateLSTM``, ``models.GRU``,
``models.LayerNormLSTM`` (Haste's cell, no zoneout) or ``models.SLSTM`` (xLSTM's sLSTM, one head), one layer,
``hidden`` units, the same ``backend`` for all) -> linear head. Continuous inputs (adding, digits) enter the
recurrent layer directly (its W_ih is the linear input layer); the copy task's tokens go through an
``nn.Embedding`` first.

Initialisation: torch's default uniform(-1/sqrt(H), 1/sqrt(H)) for every weight and bias (the LayerNorm LSTM:
Haste's, ``LayerNormLSTM.reset_parameters``), then the **forget-gate bias is set to 1.0** in the four gated cells
with a forget gate (``GATED``): ``bias_ih``'s f block = 1.0 and ``bias_hh``'s f block = 0.0 (rows H:2H of the
LSTM's i, f, g, o and of the sLSTM's i, f, z, o; rows 2H:3H of the use-gate LSTM's N, i, f, V; the LayerNorm
LSTM's one ``bias``, rows 2H:3H of Haste's i, g, f, o, = 1.0, Haste's own default). The RNN has no forget gate and
keeps the default. **The GRU has no forget gate to bias either**: its update gate z (h' = (1 - z) n + z h) plays
that part and keeps torch's default init (its bias near 0, so z ~ 0.5 at the start), as nn.GRU's does. The copy
task depends on the LSTMs' bias: with f ~ s(0) = 0.5 the memory halves at every step. Training: Adam,
gradient-norm clipping at 1.0, fixed seeds (the data stream of a (task, T, seed) is shared by the models).

Tasks (``T`` is the length that grows):
- ``adding`` (Hochreiter & Schmidhuber 1997): T steps of (value ~ U[0, 1], marker); one marker in each half;
  target the sum of the two marked values; MSE loss on the last step's output. Metric: accuracy = fraction
  with |error| < 0.04. Predicting 1.0 always gives MSE 1/6 ~ 0.167 (chance accuracy ~ 0.06).
- ``copy`` (copy-memory, Arjovsky et al. 2016): S symbols from an alphabet of 8, T-1 blanks, a delimiter, S
  blanks (length T + 2S); the last S outputs must reproduce the S symbols. Cross-entropy on those S outputs;
  metric: symbol accuracy (chance 1/8).
- ``digits``: scikit-learn's 8x8 handwritten digits (shipped with scikit-learn, no download), read one pixel
  per step (T = 64), or bilinearly upsampled to s x s (T = s^2) for longer sequences; classification from the
  last step; metric: accuracy on a fixed held-out 20 % split (chance 0.1).

Seeds: every (model, task, T) is trained from ``len(seeds)`` seeds (3 in both settings; each seed its own
init and data stream). Every plotted point is the mean over the seeds, and every plot draws their spread as the
**min-max range** (a band for curves and gradient norms, an error bar for final_vs_T).

The picture the study is about: ``||dL/dh_t||`` against the distance T-1-t from the loss (adding task, largest T,
every seed), at initialisation and after training, per model. The fused op does not expose the inner h_t, so
this runs the model one step at a time with ``backend="reference"`` and retains the gradient of each h_t.

Outputs in ``--out``: ``curves.csv`` (long format: one row per model, task, T, seed, step, with train loss, eval
loss, eval metric, setting and provenance), ``gradnorm.csv``, PNGs drawn from those CSVs only
(``curves_<task>.png``, ``final_vs_T.png``, ``gradnorm.png``) and ``PROVENANCE.md`` (the command, setting,
machine, versions and wall time of the run; left as it is by a rerun that trains nothing). A rerun skips
(model, task, T, seed) jobs that are already complete in ``curves.csv``; rows of another setting (name, hidden
size, batch, lr or steps) in the folder are refused: ``--fresh`` deletes the folder's study files first, and
refuses files committed to git (``results/tasks_smoke`` is) unless ``--overwrite-committed`` is given too.

The CSVs are the sweep's kind (``experiments.results``, schemas ``CURVES`` and ``GRADS``): each job's rows are
appended in one fsynced write (all or none), one study at a time writes a folder (a lock on ``curves.csv``), a
damaged record (a truncated copy, a crash mid-write) is set aside to ``<csv>.damaged-<UTC time>`` and its job
trained again, and the rows of a job written twice keep the last copy. A read-only folder, a full disk or a
damaged file give one-line errors; a complete read-only study can still be checked (0 jobs to run).

``--backend``: "auto" (our kernels on a GPU, the PyTorch reference on CPU: the Triton interpreter is far too slow
to train with), "triton" (on CPU: the interpreter, switched on here before ``models`` is imported) or
"reference".
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import subprocess
import sys
import textwrap
import time
import zlib
from dataclasses import dataclass, replace

import torch
from torch import nn

from .results import (
    CsvLocked, Schema, append_rows, commit_of, discard_file, lock_csv, os_error_line, read_rows, repair_csv,
)

MODELS = ("rnn", "lstm", "usegate", "gru", "lnlstm", "slstm")
# the models with a forget gate, whose f block of the bias starts at FORGET_BIAS
GATED = ("lstm", "usegate", "lnlstm", "slstm")
MODEL_LABELS = {"rnn": "RNN (tanh)", "lstm": "LSTM", "usegate": "use-gate LSTM", "gru": "GRU",
                "lnlstm": "LayerNorm LSTM", "slstm": "sLSTM"}
# the fusedrnn module of each model, looked up when a model is built
MODEL_CLASSES = {"rnn": "RNN", "lstm": "LSTM", "usegate": "UseGateLSTM", "gru": "GRU", "lnlstm": "LayerNormLSTM",
                 "slstm": "SLSTM"}
TASKS = ("adding", "copy", "digits")
FORGET_BIAS = 1.0
COPY_ALPHABET = 8
ADDING_TOL = 0.04
CURVE_COLUMNS = [
    "model", "task", "T", "seq_len", "seed", "step", "train_loss", "eval_loss", "eval_metric", "metric_name",
    "hidden", "batch", "lr", "forget_bias", "backend", "dtype", "setting", "wall_s", "commit", "torch", "date",
    "cpu", "device",
]
SPREAD = "min-max over seeds"
GRAD_COLUMNS = ["model", "task", "T", "seed", "phase", "distance", "grad_norm", "setting", "commit", "date"]
PHASES = ("init", "trained")
# the two CSVs' schemas (checks that catch a damaged or glued record; floats written exactly)
CURVES = Schema("study", tuple(CURVE_COLUMNS), ints=("T", "seq_len", "seed", "step", "hidden", "batch"),
                floats=("train_loss", "eval_loss", "eval_metric", "lr", "forget_bias", "wall_s"),
                choices={"model": MODELS, "task": TASKS}, float_digits=None)
GRADS = Schema("study", tuple(GRAD_COLUMNS), ints=("T", "seed", "distance"), floats=("grad_norm",),
               choices={"model": MODELS, "task": TASKS, "phase": PHASES}, float_digits=None)
# what makes a row unique: a job's row written twice (a job trained again after a crash) keeps the last copy
CURVE_KEY = ("model", "task", "T", "seed", "step")
GRAD_KEY = ("model", "task", "T", "seed", "phase", "distance")


# ------------------------------------------------------------------------------------------------ setting
@dataclass(frozen=True)
class Setting:
    """One study: the grid of tasks and lengths, model size, optimisation and seeds."""

    name: str
    lengths: dict  # task -> tuple of T
    hidden: int
    steps: dict  # task -> training steps, an int or {T: steps} (longer sequences train longer)
    batch: int = 64
    lr: float = 3e-3
    seeds: tuple = (0,)
    eval_every: int = 25
    eval_batch: int = 512
    copy_symbols: int = 5
    clip: float = 1.0
    gradnorm_task: str = "adding"
    gradnorm_batch: int = 64

    def steps_for(self, task: str, T: int) -> int:
        """Training steps of (task, T)."""
        v = self.steps[task]
        return int(v[int(T)]) if isinstance(v, dict) else int(v)


# The smoke setting is the CPU study: 2 idle cores, reference backend, one process per core, about 7 minutes.
# Measured single jobs (1 thread, adding T = 100, 2000 steps, hidden 64, batch 64): RNN ~42 s, LSTM ~140 s,
# GRU ~125-140 s, use-gate LSTM ~165 s; cost is about linear in T. Lengths and steps are where the contrast shows
# at lr 1e-2: in one-seed runs the RNN got part of the way at T = 10 (0.45 accuracy) and stayed at chance from
# T = 20 on (T = 100: 0.06 after 2000 steps), while at T = 100 the LSTM sat on the predict-the-mean plateau for
# ~1000-1250 steps and then solved it (0.92-0.99 by step 2000, two seeds), the use-gate LSTM left it at ~1000
# (0.98 and 0.80 by step 2000) and the GRU at ~250-500 (1.00). So T = 100 gets 2000 steps, shorter T fewer
# (shorter plateaus).
# Copy and digits are one point each (copy at delay 10, digits pixel by pixel).
SMOKE = Setting(
    name="smoke",
    lengths={"adding": (10, 20, 50, 100), "copy": (10,), "digits": (64,)},
    hidden=64,
    steps={"adding": {10: 800, 20: 800, 50: 1200, 100: 2000}, "copy": 600, "digits": 300},
    lr=1e-2,
    seeds=(0, 1, 2),
    eval_every=50,
    eval_batch=256,
)
# Full setting, sized for a GPU (backend "auto" = the fused kernels).
FULL = Setting(
    name="full",
    lengths={"adding": (10, 20, 50, 100, 200, 400, 750), "copy": (10, 20, 50, 100, 200), "digits": (64, 256)},
    hidden=128,
    steps={"adding": 6000, "copy": 6000, "digits": 3000},
    batch=128,
    lr=3e-3,
    seeds=(0, 1, 2),
    eval_every=100,
    copy_symbols=10,
)


# --------------------------------------------------------------------------------------------- backends
def setup_backend(backend: str) -> None:
    """Switch Triton's interpreter on when the triton backend is wanted without a GPU. Must run before
    ``models`` (hence ``kernels``) is imported: the kernels are decorated at import."""
    if backend == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _models():
    from fusedrnn import models  # imported late: see setup_backend

    return models


def _seed(*parts) -> int:
    """A deterministic seed from labels (Python's hash() is salted per process)."""
    return zlib.crc32("/".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------------------------------------- data
def adding_batch(batch: int, T: int, gen: torch.Generator):
    """x (T, B, 2) = (value, marker), y (B, 1): the sum of the two marked values."""
    vals = torch.rand(T, batch, generator=gen)
    half = max(T // 2, 1)
    first = torch.randint(0, half, (batch,), generator=gen)
    second = torch.randint(half, T, (batch,), generator=gen) if T > 1 else first
    marks = torch.zeros(T, batch)
    b = torch.arange(batch)
    marks[first, b] = 1.0
    marks[second, b] = 1.0
    y = (vals * marks).sum(0, keepdim=True).t()
    return torch.stack([vals, marks], dim=2), y


def copy_batch(batch: int, T: int, gen: torch.Generator, symbols: int):
    """x (T + 2S, B) tokens: S symbols in 1..8, T-1 blanks (0), a delimiter (9), S blanks. y (S, B) in 0..7."""
    seq = torch.randint(1, COPY_ALPHABET + 1, (symbols, batch), generator=gen)
    x = torch.zeros(T + 2 * symbols, batch, dtype=torch.long)
    x[:symbols] = seq
    x[symbols + T - 1] = COPY_ALPHABET + 1
    return x, seq - 1


class Digits:
    """scikit-learn's 8x8 digits as pixel sequences: a fixed 80/20 split, optional bilinear upsampling."""

    def __init__(self, T: int, split_seed: int = 0):
        from sklearn.datasets import load_digits

        side = int(round(math.sqrt(T)))
        if side * side != T or side < 8:
            raise ValueError(f"digits: T must be a square >= 64 (s x s pixels), got {T}")
        d = load_digits()
        img = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
        if side != 8:
            img = nn.functional.interpolate(img, size=(side, side), mode="bilinear", align_corners=False)
        x = img.reshape(len(img), T).t().unsqueeze(2).contiguous()  # (T, N, 1)
        y = torch.tensor(d.target, dtype=torch.long)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
        n_test = len(y) // 5
        self.test_idx, self.train_idx = perm[:n_test], perm[n_test:]
        self.x, self.y = x, y

    def train_batch(self, batch: int, gen: torch.Generator):
        idx = self.train_idx[torch.randint(0, len(self.train_idx), (batch,), generator=gen)]
        return self.x[:, idx], self.y[idx]

    def test_set(self):
        return self.x[:, self.test_idx], self.y[self.test_idx]


# ------------------------------------------------------------------------------------------------ model
class SeqModel(nn.Module):
    """input (embedding for tokens) -> one recurrent layer -> linear head on the last ``n_out_steps`` outputs.

    Args:
        kind: "rnn", "lstm" or "usegate"; task: "adding", "copy" or "digits"; hidden: H;
        backend: the recurrent layer's backend; copy_symbols: S for the copy task.
    """

    def __init__(self, kind: str, task: str, hidden: int, backend: str = "auto", copy_symbols: int = 5):
        super().__init__()
        m = _models()
        self.task = task
        if task == "copy":
            self.embed = nn.Embedding(COPY_ALPHABET + 2, hidden)
            in_size, n_out, self.n_out_steps = hidden, COPY_ALPHABET, copy_symbols
        else:
            self.embed = None
            in_size = 2 if task == "adding" else 1
            n_out, self.n_out_steps = (1 if task == "adding" else 10), 1
        cls = getattr(m, MODEL_CLASSES[kind])
        self.rnn = cls(in_size, hidden, backend=backend)
        self.head = nn.Linear(hidden, n_out)
        set_forget_bias(self.rnn, kind, FORGET_BIAS)

    def forward(self, x):
        """x: (T, B, features) or (T, B) tokens. Returns (B, n_out) or (S, B, n_out) for the copy task."""
        if self.embed is not None:
            x = self.embed(x)
        y, _ = self.rnn(x)
        out = self.head(y[-self.n_out_steps:])
        return out if self.task == "copy" else out[0]


def set_forget_bias(rnn: nn.Module, kind: str, value: float) -> None:
    """Forget-gate bias of every layer: bias_ih's f block = ``value``, bias_hh's f block = 0 (sum = value).
    The f block is rows H:2H for the LSTM (i, f, g, o) and the sLSTM (i, f, z, o), 2H:3H for the use-gate LSTM
    (N, i, f, V). The LayerNorm LSTM has one bias per layer (Haste's, gates i, g, f, o): its f block 2H:3H =
    ``value``."""
    if kind in ("rnn", "gru") or not rnn.bias:
        return
    H = rnn.hidden_size
    if kind == "lnlstm":
        with torch.no_grad():
            for name, p in rnn.named_parameters():
                if name.startswith("bias_l"):
                    p[2 * H:3 * H] = value
        return
    lo = {"lstm": H, "slstm": H, "usegate": 2 * H}[kind]
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name.startswith("bias_ih"):
                p[lo:lo + H] = value
            elif name.startswith("bias_hh"):
                p[lo:lo + H] = 0.0


def loss_and_metric(task: str, out, y):
    """(loss, metric) of a batch: MSE / |err| < 0.04 accuracy for adding, cross-entropy / accuracy else."""
    if task == "adding":
        return nn.functional.mse_loss(out, y), ((out - y).abs() < ADDING_TOL).float().mean()
    logits = out.reshape(-1, out.shape[-1])
    target = y.reshape(-1)
    return nn.functional.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean()


def _seq_len(task, T, s: Setting):
    return T + 2 * s.copy_symbols if task == "copy" else T


class TaskData:
    """Training batches from a seeded stream and a fixed evaluation set, for one (task, T, seed)."""

    def __init__(self, task: str, T: int, seed: int, s: Setting, device, dtype, with_eval: bool = True):
        self.task, self.T, self.s, self.device, self.dtype = task, T, s, device, dtype
        self.gen = torch.Generator().manual_seed(_seed("data", task, T, seed))
        if task == "digits":
            self.digits = Digits(T)
        if not with_eval:  # batches only (the gradient-norm probe draws its own)
            return
        if task == "digits":
            self.eval = self._to(*self.digits.test_set())
        else:
            self.eval = self._to(*self._make(s.eval_batch, torch.Generator().manual_seed(_seed("eval", task, T))))

    def _make(self, batch, gen):
        if self.task == "adding":
            return adding_batch(batch, self.T, gen)
        if self.task == "copy":
            return copy_batch(batch, self.T, gen, self.s.copy_symbols)
        return self.digits.train_batch(batch, gen)

    def _to(self, x, y):
        x = x.to(self.device)
        if x.is_floating_point():
            x = x.to(self.dtype)
        y = y.to(self.device)
        return x, (y.to(self.dtype) if y.is_floating_point() else y)

    def batch(self):
        return self._to(*self._make(self.s.batch, self.gen))


# ------------------------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    model: str
    task: str
    T: int
    seed: int
    gradnorm: bool = False  # also compute ||dL/dh_t|| at init and after training


def build_model(job: Job, s: Setting, backend: str, device, dtype) -> SeqModel:
    torch.manual_seed(_seed("init", job.model, job.task, job.T, job.seed))
    return SeqModel(job.model, job.task, s.hidden, backend=backend, copy_symbols=s.copy_symbols).to(device, dtype)


def train_job(job: Job, s: Setting, backend: str = "auto", device="cpu", dtype=torch.float32,
              steps: int | None = None, provenance: dict | None = None):
    """Train one model on one task and length.

    Args:
        job: model, task, T, seed (and whether to record gradient norms); s: the setting;
        backend: the recurrent layer's backend; device, dtype: where and in what precision to train;
        steps: override of ``s.steps_for(task, T)``; provenance: extra columns copied into every row.
    Returns:
        (curve rows, gradnorm rows): lists of dicts with CURVE_COLUMNS / GRAD_COLUMNS keys.
    """
    device = torch.device(device)
    steps = s.steps_for(job.task, job.T) if steps is None else steps
    data = TaskData(job.task, job.T, job.seed, s, device, dtype)
    model = build_model(job, s, backend, device, dtype)
    grad_rows = []
    if job.gradnorm:
        grad_rows += gradient_norms(model, job, s, "init", device, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    prov = dict(provenance or {})
    base = dict(model=job.model, task=job.task, T=job.T, seq_len=_seq_len(job.task, job.T, s), seed=job.seed,
                metric_name="accuracy", hidden=s.hidden, batch=s.batch, lr=s.lr, forget_bias=FORGET_BIAS,
                backend=backend, dtype=str(dtype).replace("torch.", ""), setting=s.name, **prov)
    rows = []
    t0 = time.perf_counter()
    train_losses = []
    for step in range(1, steps + 1):
        model.train()
        x, y = data.batch()
        loss, _ = loss_and_metric(job.task, model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.clip:
            nn.utils.clip_grad_norm_(model.parameters(), s.clip)
        opt.step()
        train_losses.append(loss.item())
        if step % s.eval_every == 0 or step == steps:
            ev_loss, ev_metric = evaluate(model, job.task, data.eval)
            rows.append(dict(base, step=step, train_loss=sum(train_losses) / len(train_losses), eval_loss=ev_loss,
                             eval_metric=ev_metric, wall_s=round(time.perf_counter() - t0, 3)))
            train_losses = []
    if job.gradnorm:
        grad_rows += gradient_norms(model, job, s, "trained", device, dtype)
    for r in grad_rows:
        r.update(setting=s.name, commit=prov.get("commit", ""), date=prov.get("date", ""))
    return rows, grad_rows


@torch.no_grad()
def evaluate(model: SeqModel, task: str, eval_set):
    """(loss, metric) on the fixed evaluation set, in chunks of 512."""
    model.eval()
    x, y = eval_set
    n = y.shape[-1] if task == "copy" else y.shape[0]
    tot_loss = tot_metric = 0.0
    for i in range(0, n, 512):
        xs = x[:, i:i + 512]
        ys = y[:, i:i + 512] if task == "copy" else y[i:i + 512]
        loss, metric = loss_and_metric(task, model(xs), ys)
        w = xs.shape[1]
        tot_loss += loss.item() * w
        tot_metric += metric.item() * w
    return tot_loss / n, tot_metric / n


def gradient_norms(model: SeqModel, job: Job, s: Setting, phase: str, device, dtype):
    """||dL/dh_t|| (mean over a batch of the per-sample L2 norm) for every t, by distance T-1-t from the loss.

    The recurrent layer runs one step at a time with ``backend="reference"`` (the fused op does not expose
    the inner h_t), each h_t retaining its gradient; the loss is the task's loss on a fresh batch."""
    rnn = model.rnn
    old_backend = rnn.backend
    rnn.backend = "reference"
    try:
        gen = torch.Generator().manual_seed(_seed("gradnorm", job.task, job.T, job.seed))
        data = TaskData(job.task, job.T, job.seed, s, device, dtype, with_eval=False)
        x, y = data._to(*data._make(s.gradnorm_batch, gen))
        model.eval()
        xe = model.embed(x) if model.embed is not None else x
        # h_t is the h of the state handed to step t+1 (not the output tensor, a copy in another graph node),
        # so its gradient is the total one: through the head and through every later step.
        state, hs = None, []
        for t in range(xe.shape[0]):
            _, state = rnn(xe[t:t + 1], state)
            h = state[0] if isinstance(state, tuple) else state  # (1, B, H)
            h.retain_grad()
            hs.append(h)
        ys = torch.cat(hs[-model.n_out_steps:], 0)
        pred = model.head(ys)
        pred = pred if job.task == "copy" else pred[0]
        loss, _ = loss_and_metric(job.task, pred, y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        T = len(hs)
        rows = [dict(model=job.model, task=job.task, T=job.T, seed=job.seed, phase=phase, distance=T - 1 - t,
                     grad_norm=hs[t].grad[0].norm(dim=1).mean().item()) for t in range(T)]
        model.zero_grad(set_to_none=True)
        return rows
    finally:
        rnn.backend = old_backend


# ------------------------------------------------------------------------------------------ provenance
def provenance(device) -> dict:
    """Columns that say where and how a row was produced (the commit as ``results.commit_of`` reads it,
    abbreviated; the date in UTC)."""
    commit = commit_of(short=True)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = f"{names[0]} x{os.cpu_count()}" if names else cpu
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.device(device).type == "cuda" else "cpu"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    return dict(commit=commit, torch=torch.__version__, date=date, cpu=cpu, device=dev)


# ------------------------------------------------------------------------------------------------- CSV
def study_rows(path, schema: Schema = CURVES) -> list[dict]:
    """The rows of a study CSV (``CURVES`` or ``GRADS``; [] when missing), the last copy of a repeated row
    (``CURVE_KEY`` / ``GRAD_KEY``) kept, in file order. Raises ValueError for a damaged file (a run repairs it)."""
    key = CURVE_KEY if schema is CURVES else GRAD_KEY
    last = {tuple(r[k] for k in key): r for r in read_rows(path, schema)}
    return list(last.values())


def done_jobs(curves_csv: str, grad_csv: str, s: Setting) -> dict[str, set]:
    """The (model, task, T, seed) of jobs already in the CSVs: ``"finals"``, those whose final step is logged;
    ``"grads"``, those whose trained gradient norms are (for the jobs that record them)."""
    finals = {(r["model"], r["task"], int(r["T"]), int(r["seed"])) for r in study_rows(curves_csv)
              if r["setting"] == s.name and int(r["step"]) == s.steps_for(r["task"], int(r["T"]))}
    grads = {(r["model"], r["task"], int(r["T"]), int(r["seed"])) for r in study_rows(grad_csv, GRADS)
             if r["setting"] == s.name and r["phase"] == "trained"}
    return {"finals": finals, "grads": grads}


def make_jobs(s: Setting, models=MODELS, tasks=TASKS) -> list[Job]:
    """Every (model, task, T, seed); the gradient-norm picture rides on the gradnorm task's largest T (every
    seed)."""
    jobs = []
    for task in tasks:
        for T in s.lengths[task]:
            for seed in s.seeds:
                for model in models:
                    gn = task == s.gradnorm_task and T == max(s.lengths[task])
                    jobs.append(Job(model, task, T, seed, gn))
    # longest first: a better balanced process pool
    return sorted(jobs, key=lambda j: -_seq_len(j.task, j.T, s) * s.steps_for(j.task, j.T))


def _worker(args):
    job, s, backend, device, dtype, prov, threads = args
    torch.set_num_threads(threads)
    setup_backend(backend)
    return job, train_job(job, s, backend, device, dtype, provenance=prov)


STUDY_FILES = ("curves.csv", "gradnorm.csv", "final_vs_T.png", "gradnorm.png", "PROVENANCE.md")


def committed_files(folder: str, names: list[str]) -> list[str]:
    """Those of ``names`` (files in ``folder``) that git tracks; [] outside a git repository or without git."""
    if not names:
        return []
    try:
        res = subprocess.run(["git", "ls-files", "-z", "--", *names], cwd=folder, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    tracked = {os.path.basename(n) for n in res.stdout.split("\0") if n} if res.returncode == 0 else set()
    return [n for n in names if n in tracked]


def clear_study(out: str, overwrite_committed: bool = False) -> list[str]:
    """Delete the study's files in ``out`` (CSVs, PNGs, PROVENANCE.md; nothing else; a CSV this process holds
    the lock on is emptied instead). Returns what went. Raises ValueError, deleting nothing, when git tracks
    any of them (a committed study) unless ``overwrite_committed``."""
    if not os.path.isdir(out):
        return []
    names = [n for n in sorted(os.listdir(out))
             if n in STUDY_FILES or (n.startswith("curves_") and n.endswith(".png"))]
    committed = committed_files(out, names)
    if committed and not overwrite_committed:
        raise ValueError(f"--fresh: {out} holds study files committed to git ({', '.join(committed)}); refusing "
                         "to delete them: give another --out (e.g. under scratch/), or add --overwrite-committed "
                         f"(`git checkout -- {out}` brings them back)")
    for name in names:
        discard_file(os.path.join(out, name))
    return names


def stale_rows(curves_csv: str, s: Setting) -> list[str]:
    """Why rows already in ``curves_csv`` cannot sit beside this setting's (another setting name, hidden size,
    batch, lr, or a (task, T) whose last logged step is past this setting's steps); [] when they can."""
    why = set()
    for r in study_rows(curves_csv):
        if r["setting"] != s.name:
            why.add(f"setting {r['setting']!r}")
            continue
        for col, want in (("hidden", s.hidden), ("batch", s.batch), ("lr", s.lr)):
            if float(r[col]) != float(want):
                why.add(f"{col} {r[col]} (this setting: {want})")
        task, T = r["task"], int(r["T"])
        if task in s.steps and int(r["step"]) > s.steps_for(task, T):
            why.add(f"{task} T={T} logged to step {r['step']} (this setting: {s.steps_for(task, T)})")
    return sorted(why)


def run_study(s: Setting, out: str, backend: str = "auto", device=None, dtype=torch.float32, jobs: int = 1,
              models=MODELS, tasks=TASKS, progress: bool = True, command: str | None = None, fresh: bool = False,
              overwrite_committed: bool = False, time_budget: float | None = None) -> dict:
    """Train every job of the setting (skipping complete ones), append to ``out``/curves.csv and gradnorm.csv,
    then draw the plots and write ``out``/PROVENANCE.md (``command``: the command line it names; kept as it is
    when no job ran). With ``time_budget`` (seconds), the jobs run shortest first and none is started, or waited
    for, after the budget: the jobs still running then are dropped (a rerun trains them). Holds the study's lock
    (on curves.csv) throughout; with ``fresh`` first deletes the folder's study files (``clear_study``), saying so
    on stderr. Damaged records are set aside first (``results.repair_csv``), with a warning on stderr. Returns
    {"curves": path, "gradnorm": path, "pngs": [paths], "provenance": path, "seconds": wall, "cleared": [names],
    "todo": number of jobs run}. Raises ValueError when ``out`` holds rows of another setting (``stale_rows``), a
    committed study for ``fresh``, or a damaged header; CsvLocked when another study writes ``out``; OSError when
    a file cannot be written."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.makedirs(out, exist_ok=True)
    curves_csv = os.path.join(out, "curves.csv")
    with lock_csv(curves_csv, who="study"):
        return _run_locked(s, out, backend, device, dtype, jobs, models, tasks, progress, command, fresh,
                           overwrite_committed, time_budget)


def _run_locked(s, out, backend, device, dtype, jobs, models, tasks, progress, command, fresh,
                overwrite_committed, time_budget=None) -> dict:
    """``run_study`` holding the study's lock."""
    curves_csv, grad_csv = os.path.join(out, "curves.csv"), os.path.join(out, "gradnorm.csv")
    cleared = clear_study(out, overwrite_committed) if fresh else []
    if cleared:
        print(f"--fresh: deleted {', '.join(cleared)} in {out}", file=sys.stderr)
    for path, schema in ((curves_csv, CURVES), (grad_csv, GRADS)):
        note = repair_csv(path, schema)
        if note:
            print(f"warning: {note}", file=sys.stderr)
    stale = stale_rows(curves_csv, s)
    if stale:
        raise ValueError(f"{curves_csv} holds rows of another setting ({'; '.join(stale[:3])}): give another "
                         "--out, or --fresh to delete the folder's study files first")
    done = done_jobs(curves_csv, grad_csv, s)
    todo = [j for j in make_jobs(s, models, tasks)
            if (j.model, j.task, j.T, j.seed) not in done["finals"]
            or (j.gradnorm and (j.model, j.task, j.T, j.seed) not in done["grads"])]
    if todo and not all(os.access(p, os.W_OK) for p in (out, curves_csv)):
        raise PermissionError(13, f"read-only: {len(todo)} job(s) to run cannot be written", out)
    if time_budget is not None:  # the most jobs in the time: shortest first
        todo.reverse()
    prov = provenance(device)
    t0 = time.perf_counter()
    bar = _progress(len(todo), progress)
    threads = torch.get_num_threads()
    n_run = 0
    if jobs > 1 and device.type == "cpu" and len(todo) > 1:
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // jobs)
        with mp.get_context("spawn").Pool(jobs) as pool:  # leaving it terminates the jobs still running
            it = pool.imap_unordered(_worker, [(j, s, backend, device, dtype, prov, threads) for j in todo])
            for _ in todo:
                left = None if time_budget is None else time_budget - (time.perf_counter() - t0)
                try:
                    job, (rows, grows) = it.next(timeout=left if left is None else max(left, 0.0))
                except mp.TimeoutError:
                    break
                _append_job(curves_csv, grad_csv, rows, grows)
                bar(job, rows)
                n_run += 1
    else:
        for job in todo:
            if time_budget is not None and time.perf_counter() - t0 > time_budget:
                break
            rows, grows = train_job(job, s, backend, device, dtype, provenance=prov)
            _append_job(curves_csv, grad_csv, rows, grows)
            bar(job, rows)
            n_run += 1
    bar.close()
    if n_run < len(todo):
        print(f"time budget of {time_budget:.0f} s reached: {n_run} of {len(todo)} jobs trained; rerun the same "
              "command to train the rest", file=sys.stderr)
    writable = os.access(out, os.W_OK)  # a read-only study is checked, not redrawn
    pngs = plot(out) if writable else []
    seconds = time.perf_counter() - t0
    prov_md = os.path.join(out, "PROVENANCE.md")
    if writable and (todo or not os.path.exists(prov_md)):
        prov_md = write_provenance(out, s, backend=backend, device=device, dtype=dtype, jobs=jobs, threads=threads,
                                   n_run=n_run, n_left=len(todo) - n_run, seconds=seconds, command=command, prov=prov,
                                   models=models, tasks=tasks)
    return dict(curves=curves_csv, gradnorm=grad_csv, pngs=pngs, provenance=prov_md, seconds=seconds,
                cleared=cleared, todo=n_run)


def _append_job(curves_csv: str, grad_csv: str, rows: list[dict], grows: list[dict]) -> None:
    """One job's rows: its gradient norms, then its curve (whose final step marks the job complete)."""
    if grows:
        append_rows(grad_csv, grows, GRADS)
    append_rows(curves_csv, rows, CURVES)


def describe_setting(s: Setting, tasks=TASKS) -> list[str]:
    """One line per task of the setting: its lengths and steps, in words."""
    out = []
    for task in tasks:
        if task not in s.lengths:
            continue
        Ts = s.lengths[task]
        steps = (", ".join(f"T {T}: {s.steps_for(task, T)}" for T in Ts) if isinstance(s.steps[task], dict)
                 else f"{s.steps[task]} each")
        what = {"adding": "adding problem, T", "copy": f"copy-memory ({s.copy_symbols} symbols of "
                f"{COPY_ALPHABET}), delay T", "digits": "sklearn digits pixel by pixel, T"}[task]
        out.append(f"{what} {' / '.join(map(str, Ts))} (steps {steps})")
    return out


def write_provenance(out: str, s: Setting, *, backend, device, dtype, jobs, threads, n_run, seconds, command,
                     prov, models=MODELS, tasks=TASKS, n_left: int = 0) -> str:
    """Write ``out``/PROVENANCE.md: the command, setting, machine, versions, this invocation's wall time, and
    the commits and dates found in the CSV rows. Returns its path."""
    try:
        import triton

        triton_v = triton.__version__
    except ImportError:
        triton_v = "not installed"
    rows = study_rows(os.path.join(out, "curves.csv"))
    commits = sorted({r["commit"] for r in rows}) or [prov["commit"]]
    dates = sorted({r["date"] for r in rows}) or [prov["date"]]
    dev = str(prov["device"])
    lines = [
        f"# {out}: provenance", "",
        "Written by `experiments/tasks.py` at the end of the run (the CSV rows carry commit, torch, date, cpu and "
        "setting too).", "",
        f"- command: `{command or 'experiments.tasks.run_study(...)'}`, from the repository root.",
        f"- backend \"{backend}\" on {device.type}"
        + (" (\"auto\" = the PyTorch reference on CPU, the fused kernels on CUDA)" if backend == "auto" else "")
        + f"; {jobs} worker process{'es' if jobs != 1 else ''}, {threads} thread{'s' if threads != 1 else ''} "
        f"each; {str(dtype).replace('torch.', '')}.",
        f"- setting **{s.name}** (experiments/tasks.py): " + "; ".join(describe_setting(s, tasks)) + f"; hidden "
        f"{s.hidden}, batch {s.batch}, Adam lr {s.lr:g}, gradient clipping {s.clip:g}, seeds "
        f"{', '.join(map(str, s.seeds))}, eval every {s.eval_every} steps on {s.eval_batch} fixed sequences "
        "(digits: the held-out 20 %).",
        f"- models: {', '.join(MODEL_LABELS[m] for m in models)}. Forget-gate bias {FORGET_BIAS:g} in the "
        f"{', '.join(MODEL_LABELS[m] for m in GATED if m in models) or '(none here)'} (the f block of the bias: "
        "bias_ih's 1 and bias_hh's 0, the LayerNorm LSTM's one bias 1); the RNN and the GRU have no forget gate "
        "(the GRU's update gate keeps the default init); everything else torch's default "
        "uniform(-1/sqrt(H), 1/sqrt(H)) (the LayerNorm LSTM: Haste's initialisation).",
        f"- spread in every plot: {SPREAD} (band or error bar) around the mean over seeds.",
        f"- machine: {prov['cpu']}, {os.cpu_count()} logical CPUs, device {dev}; torch {torch.__version__}, "
        f"triton {triton_v}, Python {platform.python_version()}.",
        f"- this invocation: {n_run} job{'s' if n_run != 1 else ''} trained in {seconds:.0f} s wall "
        f"({seconds / 60:.1f} min), started {prov['date']} UTC, finished "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC"
        + (f"; stopped by its time budget with {n_left} job{'s' if n_left != 1 else ''} left untrained (a rerun "
           "of the command trains them)." if n_left else "."),
        f"- rows from commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}, dates {dates[0]} to "
        f"{dates[-1]} UTC.",
        "- the PNGs are drawn from the CSVs only: `python -m experiments.tasks --plot-only --out "
        f"{out}` redraws them.",
    ]
    path = os.path.join(out, "PROVENANCE.md")
    lines += earlier_invocations(path)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


EARLIER = "Earlier invocations on this folder (a resumed study keeps their rows; newest first):"


def earlier_invocations(path: str) -> list[str]:
    """The lines that keep the record of the earlier runs of a folder when its PROVENANCE.md (``path``) is written
    again by a resumed study: each earlier file's command and "this invocation" lines, then the runs it had kept
    itself; [] when there was none."""
    try:
        with open(path) as f:
            old = f.read().splitlines()
    except OSError:
        return []
    cut = old.index(EARLIER) if EARLIER in old else len(old)
    runs = [ln[len("- "):].rstrip(".") for ln in old[:cut] if ln.startswith(("- command:", "- this invocation:"))]
    kept = old[cut + 1:]
    mine = ["- " + "; ".join(runs)] if runs else []
    return ["", EARLIER, ""] + mine + [ln for ln in kept if ln.strip()] if mine or kept else []


class _progress:
    """A progress bar on stderr, one step per job (none when not ``enabled`` or nothing to do): call it with
    (job, rows) after each job, ``close()`` at the end."""

    def __init__(self, total, enabled):
        from tqdm import tqdm

        self.pbar = tqdm(total=total, desc="tasks", file=sys.stderr) if (enabled and total) else None

    def __call__(self, job, rows):
        if self.pbar is not None:
            last = rows[-1]
            self.pbar.set_postfix_str(f"{job.model} {job.task} T={job.T}: loss {last['eval_loss']:.3g} "
                                      f"acc {last['eval_metric']:.3f}")
            self.pbar.update(1)

    def close(self):
        if self.pbar is not None:
            self.pbar.close()


# ------------------------------------------------------------------------------------------------ plots
def _frame(rows, keys_int=("T", "seed", "step"), keys_float=("train_loss", "eval_loss", "eval_metric")):
    import pandas as pd

    df = pd.DataFrame(rows)
    for k in keys_int:
        if k in df:
            df[k] = df[k].astype(int)
    for k in keys_float:
        if k in df:
            df[k] = df[k].astype(float)
    return df


CHANCE = {"adding": (1 / 6, None), "copy": (math.log(COPY_ALPHABET), 1 / COPY_ALPHABET), "digits": (math.log(10), 0.1)}
COLORS = {"rnn": "tab:red", "lstm": "tab:blue", "usegate": "tab:green", "gru": "tab:purple", "lnlstm": "tab:orange",
          "slstm": "tab:brown"}


def _subtitle(df, models) -> str:
    """The figures' second title lines: setting, hidden size, the forget-gate bias of the models drawn, seeds
    (their spread only when there are several) and commit."""
    setting = ", ".join(sorted(df["setting"].unique()))
    hidden = ", ".join(str(h) for h in sorted(df["hidden"].astype(int).unique()))
    gated = [MODEL_LABELS[m] for m in models if m in GATED]
    plain = [MODEL_LABELS[m] for m in models if m in ("rnn", "gru")]
    bias = ", ".join(([f"forget-gate bias {FORGET_BIAS:g} ({', '.join(gated)})"] if gated else [])
                     + ([f"no forget gate in {', '.join(plain)}"] if plain else []))
    n_seeds = df.groupby(["model", "task", "T"])["seed"].nunique()
    lo, hi = int(n_seeds.min()), int(n_seeds.max())
    if hi == 1:
        seeds = "lines: one seed (no spread to draw)"
    else:
        seeds = f"lines: mean of {lo if lo == hi else f'{lo}-{hi}'} seeds, shading / bars: {SPREAD}"
    return f"{setting} setting, hidden {hidden}, {bias}\n{seeds}, commit {df['commit'].iloc[-1]}"


def _save(fig, out: str, name: str, title: str) -> str:
    """Title (each line wrapped to the figure's width), lay out so that no text is cut, write ``out/name`` and
    close the figure; returns the path."""
    import matplotlib.pyplot as plt

    width = max(20, int(fig.get_figwidth() * 13))  # characters of 9-point text per line
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.split("\n")), fontsize=9)
    fig.set_layout_engine("constrained")
    p = os.path.join(out, name)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p


def plot(out: str) -> list[str]:
    """Draw every PNG of a study from ``out``/curves.csv and gradnorm.csv (nothing else). Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = study_rows(os.path.join(out, "curves.csv"))
    if not rows:
        return []
    df = _frame(rows)
    models = [m for m in MODEL_LABELS if m in set(df["model"])]
    tasks = [t for t in TASKS if t in set(df["task"])]
    sub = _subtitle(df, models)
    paths = [_plot_curves(plt, df[df["task"] == task], task, models, out, sub) for task in tasks]
    paths.append(_plot_final_vs_T(plt, df, tasks, models, out, sub))
    grows = study_rows(os.path.join(out, "gradnorm.csv"), GRADS)
    if grows:
        paths.append(_plot_gradnorm(plt, _frame(grows, keys_int=("T", "seed", "distance"),
                                                keys_float=("grad_norm",)), models, out, sub))
    return paths


def _plot_curves(plt, d, task: str, models, out: str, sub: str) -> str:
    """curves_<task>.png: eval loss (top) and accuracy (bottom) against the training step, one column per T;
    per model the mean over seeds and the min-max band."""
    Ts = sorted(d["T"].unique())
    fig, axes = plt.subplots(2, len(Ts), figsize=(3.6 * len(Ts) + 0.6, 6), squeeze=False, sharex="col")
    for c, T in enumerate(Ts):
        for m in models:
            g = d[(d["T"] == T) & (d["model"] == m)].groupby("step")
            if not len(g):
                continue
            for r, col in enumerate(("eval_loss", "eval_metric")):
                mean, lo, hi = g[col].mean(), g[col].min(), g[col].max()
                ax = axes[r, c]
                ax.plot(mean.index, mean.values, color=COLORS[m], label=MODEL_LABELS[m])
                ax.fill_between(mean.index, lo.values, hi.values, color=COLORS[m], alpha=0.2, lw=0)
        loss_ref, acc_ref = CHANCE[task]
        axes[0, c].axhline(loss_ref, color="gray", ls="--", lw=0.8, label="predict-the-mean / chance")
        if acc_ref is not None:
            axes[1, c].axhline(acc_ref, color="gray", ls="--", lw=0.8)
        axes[0, c].set_title(f"{task}, T = {T}")
        axes[0, c].set_yscale("log")
        axes[1, c].set_ylim(-0.02, 1.02)
        axes[1, c].set_xlabel("training step")
    axes[0, 0].set_ylabel("eval loss" + (" (MSE)" if task == "adding" else " (cross-entropy)"))
    axes[1, 0].set_ylabel("eval accuracy" + (f" (|err| < {ADDING_TOL})" if task == "adding" else ""))
    axes[0, 0].legend(fontsize=8)
    return _save(fig, out, f"curves_{task}.png", f"{task}: learning curves\n{sub}")


def _plot_final_vs_T(plt, df, tasks, models, out: str, sub: str) -> str:
    """final_vs_T.png: the accuracy at each run's last step against T, one panel per task: per model the mean
    over seeds with min-max error bars."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.0, 4 * len(tasks)), 3.8), squeeze=False)
    for c, task in enumerate(tasks):
        d = df[df["task"] == task]
        final = d[d["step"] == d.groupby(["model", "T", "seed"])["step"].transform("max")]
        ax = axes[0, c]
        for m in models:
            g = final[final["model"] == m].groupby("T")["eval_metric"]
            if not len(g):
                continue
            mean, lo, hi = g.mean(), g.min(), g.max()
            ax.errorbar(mean.index, mean.values, yerr=[mean.values - lo.values, hi.values - mean.values],
                        marker="o", capsize=3, color=COLORS[m], label=MODEL_LABELS[m])
        if CHANCE[task][1] is not None:
            ax.axhline(CHANCE[task][1], color="gray", ls="--", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sorted(d["T"].unique()))
        ax.set_xticklabels([str(t) for t in sorted(d["T"].unique())])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("T" + (" (delay)" if task == "copy" else " (sequence length)"))
        ax.set_title(task)
        ax.set_ylabel("final eval accuracy" + (" (mean, bars min-max)" if df["seed"].nunique() > 1 else ""))
    axes[0, 0].legend(fontsize=8)
    return _save(fig, out, "final_vs_T.png", f"final score vs sequence length\n{sub}")


def _plot_gradnorm(plt, g, models, out: str, sub: str) -> str:
    """gradnorm.png: ||dL/dh_t|| against the distance from the loss, at initialisation and after training; per
    model the mean over seeds and the min-max band."""
    phases = [ph for ph in ("init", "trained") if ph in set(g["phase"])]
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.8), squeeze=False, sharey=True)
    for c, ph in enumerate(phases):
        ax = axes[0, c]
        for m in models:
            d = g[(g["phase"] == ph) & (g["model"] == m)].groupby("distance")["grad_norm"]
            if not len(d):
                continue
            mean, lo, hi = d.mean(), d.min(), d.max()
            ax.semilogy(mean.index, mean.values, color=COLORS[m], label=MODEL_LABELS[m])
            ax.fill_between(mean.index, lo.values, hi.values, color=COLORS[m], alpha=0.2, lw=0)
        task, T = g["task"].iloc[0], int(g["T"].max())
        ax.set_title(f"{'at initialisation' if ph == 'init' else 'after training'} ({task}, T = {T})")
        ax.set_xlabel("distance from the loss, T-1-t (steps)")
    axes[0, 0].set_ylabel("||dL/dh_t|| (mean over batch, then seeds;\n0 = underflow, not drawn)")
    axes[0, 0].legend(fontsize=8)
    return _save(fig, out, "gradnorm.png", f"gradient reaching h_t from the loss at the last step\n{sub}")


# -------------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the CPU setting (adding T 10/20/50/100, copy 10, "
                   "digits 64; hidden 64; 3 seeds; ~7 min on 2 idle cores)")
    p.add_argument("--fresh", action="store_true", help="delete the study files in --out first (CSVs, PNGs, "
                   "PROVENANCE.md) instead of resuming; refused for files committed to git")
    p.add_argument("--overwrite-committed", action="store_true",
                   help="with --fresh: delete study files even when git tracks them (a committed study)")
    p.add_argument("--out", default=None, help="output folder (default scratch/tasks_smoke with --smoke, else "
                   "scratch/tasks; the committed CPU study is results/tasks_smoke)")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "reference"),
                   help="recurrent implementation: auto = triton on CUDA, reference on CPU")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16", "float16"))
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODEL_LABELS))
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ",".join(TASKS))
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the setting's)")
    p.add_argument("--steps", type=int, default=None, help="training steps for every task (default: setting's)")
    p.add_argument("--hidden", type=int, default=None, help="hidden size (default: the setting's)")
    p.add_argument("--jobs", type=int, default=None, help="parallel CPU processes (default: cores, CPU only)")
    p.add_argument("--plot-only", action="store_true", help="only redraw the PNGs from the CSVs in --out")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: run the jobs shortest first and stop after this (the jobs still running are "
                        "dropped; a rerun trains what is left); the plots and PROVENANCE.md are written all the same")
    a = p.parse_args(argv)

    s = SMOKE if a.smoke else FULL
    if a.seeds is not None:
        s = replace(s, seeds=tuple(range(a.seeds)))
    if a.steps is not None:
        s = replace(s, steps={k: a.steps for k in s.steps})
    if len(s.seeds) < 3:
        print(f"note: {len(s.seeds)} seed(s): the study's points are meant as means of at least 3", file=sys.stderr)
    if a.hidden is not None:
        s = replace(s, hidden=a.hidden)
    out = a.out or os.path.join("scratch", "tasks_smoke" if a.smoke else "tasks")
    if a.overwrite_committed and not a.fresh:
        print("error: --overwrite-committed goes with --fresh", file=sys.stderr)
        return 2
    if a.plot_only:
        try:
            paths = plot(out)
        except (ValueError, OSError) as e:
            print(f"error: {os_error_line(e) if isinstance(e, OSError) else e}", file=sys.stderr)
            return 2
        for path in paths:
            print(path)
        return 0
    if "digits" in a.tasks.split(","):
        try:
            import sklearn.datasets  # noqa: F401  (the digits data set ships with scikit-learn)
        except ImportError:
            print("error: the digits task needs scikit-learn: pip install scikit-learn (or the study extra, "
                  "pip install 'fusedrnn[study]'), or leave it out: --tasks adding,copy", file=sys.stderr)
            return 2
    setup_backend(a.backend)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    jobs = a.jobs if a.jobs is not None else (os.cpu_count() or 1 if device.type == "cpu" else 1)
    if a.backend == "triton" and device.type == "cpu":
        jobs = 1  # the interpreter: one process
    command = "PYTHONPATH=. python -m experiments.tasks " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        res = run_study(s, out, backend=a.backend, device=device, dtype=getattr(torch, a.dtype), jobs=jobs,
                        models=tuple(a.models.split(",")), tasks=tuple(a.tasks.split(",")), command=command,
                        fresh=a.fresh, overwrite_committed=a.overwrite_committed, time_budget=a.time_budget)
    except (ValueError, CsvLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder or CSV, a full disk: the jobs written so far are kept
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    print(f"{res['todo']} jobs run; {res['curves']}, {res['gradnorm']}, {len(res['pngs'])} PNGs and "
          f"{res['provenance']} in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
