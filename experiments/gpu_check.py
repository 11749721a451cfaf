"""The CUDA correctness subset of the first GPU run: a few minutes of checks, one CSV row each.

    python -m experiments.gpu_check --out OUT/correctness.csv [--failures OUT/failures.log] [--workers 4]
        [--time-limit 150] [--only SUBSTRING ...] [--list]

Each check runs a fused module (or cell) and its baseline on fresh random inputs (the seed is in the row),
forward and backward, and compares every output and gradient: fp32 against torch.nn with TF32 off (max
relative error, bound ``tests.helpers.MAXREL_TOL``), fp16/bf16 against a float64 oracle on the same rounded
weights and inputs (relative RMS, bound ``max(RELRMS_TOL, 1.5 x PyTorch's own error in that dtype)``, as
``tests.compare.compare_lowp``). Inference checks (no_grad, where the kernels store nothing for backward)
compare the outputs only. Memory is poisoned: ``torch.use_deterministic_algorithms(True, warn_only=True)``
with ``torch.utils.deterministic.fill_uninitialized_memory`` makes every ``torch.empty`` NaN, so an element a
kernel never writes stays NaN and fails the check; the first check ("poison") proves that this is on.

A failing check writes its row (status "fail", the error text, the traceback in the failures log) and the
next one runs. Rows: name, status (pass / fail / skip / timeout), max_err, bound, metric, seconds, seed,
device, error. On CUDA the checks are spread over ``--workers`` processes by group: Triton's JIT compiles
are per process and dtype, so groups compile in parallel, and without MPS the processes' kernels share the
GPU by time slices, never SMs, so a persistent kernel still has every SM to itself. The main process stops
the workers at ``--time-limit`` and writes a "timeout" row for each check that did not finish. The
two-stream check runs in its own subprocess with a timeout, so a hang becomes a failing row. A failing check
is reproduced with ``--only NAME --seed SEED --workers 1`` (the row's seed).

Without CUDA every check runs on tiny shapes in Triton's interpreter (the CPU dry run of the GPU script);
the stream and graph checks then run their CPU stand-ins or are skipped.

On CUDA the modules' first-use self-check (models/_selfcheck.py) runs in mode "raise" (unless
``FUSEDRNN_SELFCHECK`` says otherwise): a configuration it finds wrong fails its check with a ``SelfCheckError``
instead of being served by the reference, so every row still measures the kernels, and a passing row also shows
that the self-check passes on this GPU (its bounds hold on hardware). On CPU it stays off, as in the tests.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # before anything imports triton, kernels or models
    os.environ.setdefault("TRITON_INTERPRET", "1")
# deterministic mode (the poisoning below) warns on every cuBLAS call without a fixed workspace
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
# the checks test the kernels: on CUDA the first-use self-check (models/_selfcheck.py) raises on a mismatch instead
# of serving the reference (a failing row either way, and a passing row shows it passes on this GPU)
if torch.cuda.is_available():
    os.environ.setdefault("FUSEDRNN_SELFCHECK", "raise")

import argparse  # noqa: E402
import csv  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["name", "status", "max_err", "bound", "metric", "seconds", "seed", "device", "error"]
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
STREAMS_TIMEOUT_S = 120
# the same kernel on the same inputs twice (concurrently, or replayed from a graph): equal up to rounding
SAME_TOL = 1e-2


class Skip(Exception):
    """A check that does not apply here (its row says why)."""


@dataclass(frozen=True)
class Check:
    """One named check; ``fn(seed)`` returns [(entry, error, bound, metric)] and raises on failure."""

    name: str
    group: str
    fn: Callable[[int], list]


# --------------------------------------------------------------------------------------------- poisoning
@contextmanager
def poisoned():
    """Every torch.empty / new_empty / empty_like in the block comes back NaN-filled (ints: their max)."""
    import torch.utils.deterministic as det

    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = old_fill
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def _check_poison(seed: int) -> list:
    a = torch.empty(1000, device=DEVICE, dtype=torch.bfloat16)
    b = torch.zeros(10, device=DEVICE).new_empty(37, 5)
    frac = min(a.isnan().float().mean().item(), b.isnan().float().mean().item())
    if frac != 1.0:
        raise AssertionError(f"only {frac:.0%} of a fresh torch.empty is NaN: outputs are not poisoned")
    return [("empty_is_nan", 0.0, 0.0, "nan_fraction_missing")]


# --------------------------------------------------------------------------------------------- comparing
def _metrics(got: dict, want: dict, dtype, plain: dict | None = None) -> list:
    """[(entry, error, bound, metric)] for every entry of ``want``: max relative error for fp32/fp64 (against
    torch.nn), relative RMS for fp16/bf16 (against the float64 oracle; ``plain`` is PyTorch's own result in
    that dtype, whose error widens the bound of ill-conditioned entries as compare_lowp does)."""
    from tests.helpers import MAXREL_TOL, RELRMS_TOL, max_rel, rel_rms

    if set(got) != set(want):
        raise AssertionError(f"entries differ: {sorted(set(got) ^ set(want))}")
    rows = []
    for k in sorted(want):
        a, b = got[k], want[k]
        if a.shape != b.shape:
            raise AssertionError(f"{k}: shape {tuple(a.shape)} != {tuple(b.shape)}")
        if a.dtype != dtype:
            raise AssertionError(f"{k}: dtype {a.dtype}, expected {dtype}")
        if not torch.isfinite(a.double()).all():
            n = (~torch.isfinite(a.double())).sum().item()
            rows.append((k, math.inf, 0.0, f"{n} non-finite elements"))
            continue
        if dtype in MAXREL_TOL:
            rows.append((k, max_rel(a, b), MAXREL_TOL[dtype], "max_rel"))
        else:
            bound = RELRMS_TOL[dtype]
            if plain is not None:
                bound = max(bound, 1.5 * rel_rms(plain[k], b))
            rows.append((k, rel_rms(a, b), bound, "rel_rms"))
    return rows


def _planned(dtype, H: int, B: int, kind: str = "lstm") -> bool:
    """Whether the persistent strategy applies to this problem on this device (``lstm_persistent.plan``, or
    ``gru_persistent.plan`` for ``kind`` "gru")."""
    if kind == "gru":
        from kernels import gru_persistent as G

        return G.plan("persistent", device=DEVICE, dtype=dtype, H=H, B=B) is not None
    from kernels import lstm_persistent as P

    return P.plan("persistent", device=DEVICE, dtype=dtype, H=H, B=B, has_proj=False) is not None


@contextmanager
def _no_fallback(strategy: str, planned: bool = False):
    """For strategy "persistent": a fallback to per_step is a skip where the plan says persistent does not
    apply (out of scope), and a failure where it says it does (the launch refused, e.g. not co-resident)."""
    from experiments.backends import fallback_reasons

    with fallback_reasons() as reasons:
        yield
    if strategy == "persistent" and reasons:
        if planned:
            raise AssertionError(f"persistent applies here by plan but fell back at launch: {reasons[0]}")
        raise Skip(f"persistent does not apply here: {reasons[0]}")


# ------------------------------------------------------------------------------------------------ shapes
def _case(shape: str):
    """The two shapes of the subset: "small" (B=5, H=100, I=60, packed unsorted, bidirectional, 2 layers)
    and "big" (B=16, H=I=1024, T=64); tiny stand-ins without CUDA."""
    from tests.compare import Case

    if shape == "small":
        return (Case("small", T=12, B=5, I=60, H=100, layers=2, bidirectional=True, packed="unsorted") if CUDA
                else Case("small", T=4, B=3, I=5, H=12, layers=2, bidirectional=True, packed="unsorted"))
    return Case("big", T=64, B=16, I=1024, H=1024) if CUDA else Case("big", T=3, B=2, I=16, H=16)


DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _seeded_weights(m, seed: int):
    """torch.nn's own initialisation, drawn from ``seed``."""
    torch.manual_seed(seed)
    m.reset_parameters()
    return m


def _module_pair(kind: str, case, dtype, strategy: str, seed: int):
    """(ours, baseline-in-float64-or-torch.nn, plain-in-dtype or None) for a sequence module kind."""
    import models

    kw = case.module_kwargs(kind == "lstm")
    if kind == "lstm":
        ours = models.LSTM(case.I, case.H, **kw, device=DEVICE, backend="triton", strategy=strategy)
        ref_cls, ref_kw = models.LSTM, {}
        nn_twin = lambda: torch.nn.LSTM(case.I, case.H, **kw, device=DEVICE)  # noqa: E731
    elif kind.startswith("rnn_"):
        nl = kind.split("_")[1]
        ours = models.RNN(case.I, case.H, nonlinearity=nl, **kw, device=DEVICE, backend="triton")
        ref_cls, ref_kw = models.RNN, {"nonlinearity": nl}
        nn_twin = lambda: torch.nn.RNN(case.I, case.H, nonlinearity=nl, **kw, device=DEVICE)  # noqa: E731
    elif kind == "gru":
        ours = models.GRU(case.I, case.H, **kw, device=DEVICE, backend="triton", strategy=strategy)
        ref_cls, ref_kw = models.GRU, {}
        nn_twin = lambda: torch.nn.GRU(case.I, case.H, **kw, device=DEVICE)  # noqa: E731
    elif kind == "usegate":
        ours = models.UseGateLSTM(case.I, case.H, **kw, device=DEVICE, backend="triton")
        ref_cls, ref_kw, nn_twin = models.UseGateLSTM, {}, None
    else:
        raise ValueError(kind)
    _seeded_weights(ours, seed)
    ours = ours.to(dtype)
    if dtype == torch.float32 and nn_twin is not None:
        twin = nn_twin()
        twin.load_state_dict(ours.state_dict())
        return ours, twin.to(dtype), None
    oracle = ref_cls(case.I, case.H, **ref_kw, **kw, device=DEVICE, dtype=torch.float64, backend="reference")
    oracle.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    plain = None
    if dtype != torch.float32:
        plain = ref_cls(case.I, case.H, **ref_kw, **kw, device=DEVICE, backend="reference").to(dtype)
        plain.load_state_dict(ours.state_dict())
    return ours, oracle, plain


def _forward_only(module, case, x, hx):
    """Outputs of one no_grad call (the inference path: nothing stored for backward)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lengths = case.lengths()
    inp = x.detach()
    if lengths is not None:
        inp = pack_padded_sequence(inp, torch.tensor(lengths), batch_first=case.batch_first,
                                   enforce_sorted=case.packed == "sorted")
    hx = None if hx is None else (tuple(t.detach() for t in hx) if isinstance(hx, tuple) else hx.detach())
    with torch.no_grad():
        out, hn = module(inp) if hx is None else module(inp, hx)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=case.batch_first, total_length=case.T)
    states = list(hn) if isinstance(hn, tuple) else [hn]
    return {"out": out, **{n: s for n, s in zip(("h_n", "c_n"), states)}}


def _sequence_check(kind: str, strategy: str, dtype_name: str, shape: str, infer: bool):
    def fn(seed: int) -> list:
        from tests.compare import make_inputs, recast, run

        dtype = DT[dtype_name]
        case = _case(shape)
        planned = kind in ("lstm", "gru") and strategy == "persistent" and _planned(dtype, case.H, case.B, kind)
        with _no_fallback(strategy, planned):
            ours, base, plain = _module_pair(kind, case, dtype, strategy, seed)
            x, hx = make_inputs(case, kind in ("lstm", "usegate"), dtype, DEVICE, seed)
            go = _forward_only if infer else run
            got = go(ours, case, x, hx)
        if base.weight_ih_l0.dtype == torch.float64:
            want = go(base, case, *recast(x, hx, torch.float64))
            pl = go(plain, case, *recast(x, hx, dtype)) if plain is not None else None
        else:
            want, pl = go(base, case, x, hx), None
        return _metrics(got, want, dtype, pl)

    return fn


def _cell_check(kind: str, dtype_name: str):
    def fn(seed: int) -> list:
        import models
        from tests.helpers import loss_of, rand

        dtype = DT[dtype_name]
        B, I, H = (5, 60, 100) if CUDA else (3, 5, 12)
        if kind == "lstm":
            ours = models.LSTMCell(I, H, device=DEVICE, backend="triton")
            twin_cls, twin_kw, n_states = torch.nn.LSTMCell, {}, 2
        elif kind == "gru":
            ours = models.GRUCell(I, H, device=DEVICE, backend="triton")
            twin_cls, twin_kw, n_states = torch.nn.GRUCell, {}, 1
        else:
            nl = kind.split("_")[1]
            ours = models.RNNCell(I, H, nonlinearity=nl, device=DEVICE, backend="triton")
            twin_cls, twin_kw, n_states = torch.nn.RNNCell, {"nonlinearity": nl}, 1
        _seeded_weights(ours, seed)
        ours = ours.to(dtype)
        twin_dt = dtype if dtype == torch.float32 else torch.float64
        twin = twin_cls(I, H, **twin_kw, device=DEVICE, dtype=twin_dt)
        twin.load_state_dict({k: v.to(twin_dt) for k, v in ours.state_dict().items()})
        torch.manual_seed(seed + 1)
        x = rand(B, I, dtype=dtype)
        hx = [rand(B, H, dtype=dtype, scale=0.5) for _ in range(n_states)]

        def grads(cell, dt):
            xs = x.detach().to(dt).requires_grad_(True)
            hs = [h.detach().to(dt).requires_grad_(True) for h in hx]
            cell.zero_grad(set_to_none=True)
            out = cell(xs, tuple(hs) if n_states == 2 else hs[0])
            outs = list(out) if isinstance(out, tuple) else [out]
            loss_of(outs).backward()
            res = {f"out{i}": o.detach() for i, o in enumerate(outs)}
            res["grad_x"] = xs.grad
            res.update({f"grad_h{i}": h.grad for i, h in enumerate(hs)})
            res.update({"grad_" + n: p.grad for n, p in cell.named_parameters()})
            return res

        got = grads(ours, dtype)
        want = grads(twin, twin_dt)
        plain = None
        if dtype != torch.float32:
            twin_lo = twin_cls(I, H, **twin_kw, device=DEVICE, dtype=dtype)
            twin_lo.load_state_dict(ours.state_dict())
            plain = grads(twin_lo, dtype)
        return _metrics(got, want, dtype, plain)

    return fn


# ------------------------------------------------------------------- episode resets, multi-head, sLSTM, LayerNorm
# The kernels tests/test_resets.py, test_heads.py, test_slstm.py and test_layernorm*.py check in the interpreter,
# here on the GPU: each module with backend="triton" against its own reference backend in float64 (the oracle those
# tests check against torch.nn run segment by segment, or against the published equations), same weights, inputs
# and reset mask.
def _fwd_bwd(module, x, **kwargs) -> dict:
    """Forward + backward of ``module`` on ``x`` (a fresh leaf) from the zero state, ``kwargs`` passed to its
    call: ``tests.compare.run``'s output, final states and gradients."""
    from tests.compare import run

    return run(module, None, x.detach().requires_grad_(True), None, **kwargs)


def _reset_mask(T: int, B: int, seed: int) -> torch.Tensor:
    """3% of the (step, row) flags set (issue 23's rate), plus row 0 at t = 0 (the given state replaced) and the
    last row at the last step (a one-step segment)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(T, B, generator=g) < 0.03
    r[0, 0] = r[T - 1, B - 1] = True
    return r.to(DEVICE)


def _oracle_check(make, dtype_name: str, shape: tuple, resets: bool = False, strategy: str = "auto",
                  plan_kind: str = ""):
    """``make(backend, strategy)`` (a module, ``shape`` = (T, B, I) of its input) with backend "triton" in
    ``dtype_name`` against backend "reference" in float64, forward and backward; ``resets``: with a reset mask.
    ``plan_kind`` "lstm" / "gru": strategy "persistent" must not fall back where that cell's plan applies."""
    def fn(seed: int) -> list:
        from tests.helpers import rand

        dtype = DT[dtype_name]
        T, B, I = shape
        torch.manual_seed(seed)
        ours = make("triton", strategy).to(DEVICE)
        ours = ours.to(dtype)
        oracle = make("reference", "auto").to(device=DEVICE, dtype=torch.float64)
        oracle.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
        x = rand(T, B, I, dtype=dtype)
        kw = {"resets": _reset_mask(T, B, seed)} if resets else {}
        planned = bool(plan_kind) and strategy == "persistent" and _planned(dtype, ours.hidden_size, B, plan_kind)
        with _no_fallback(strategy, planned):
            got = _fwd_bwd(ours, x, **kw)
        want = _fwd_bwd(oracle, x.double(), **kw)
        plain = None
        if dtype != torch.float32:
            twin = make("reference", "auto").to(DEVICE).to(dtype)
            twin.load_state_dict(ours.state_dict())
            plain = _fwd_bwd(twin, x, **kw)
        return _metrics(got, want, dtype, plain)

    return fn


def _extra_checks() -> list:
    """Episode resets (LSTM / GRU per_step and persistent, RNN, use-gate LSTM, sLSTM), the multi-head LSTM / GRU and
    the sLSTM, the LayerNorm LSTM (per_step and persistent forward) and GRU. Shapes: pytorch/rl's H = 256 with two
    bidirectional layers for the resets, 8 heads of 32 units, H = 256 for the LayerNorm cells; tiny without CUDA."""
    import models

    T, B, I, H = (48, 32, 64, 256) if CUDA else (5, 3, 4, 16)
    heads = 8 if CUDA else 2

    def seq(cls, **kw):
        return lambda backend, strategy: cls(I, H, backend=backend, strategy=strategy, **kw)

    two_bidir = dict(num_layers=2, bidirectional=True)
    checks = []
    for cell, cls in (("lstm", models.LSTM), ("gru", models.GRU)):
        for strategy in ("per_step", "persistent"):
            for dt in ("bf16", "fp32"):
                checks.append(Check(f"resets/{cell}/{strategy}/{dt}/fwdbwd", "resets",
                                    _oracle_check(seq(cls, **two_bidir), dt, (T, B, I), True, strategy, cell)))
    checks += [
        Check("resets/rnn_tanh/per_step/bf16/fwdbwd", "resets",
              _oracle_check(seq(models.RNN, **two_bidir), "bf16", (T, B, I), True, "per_step")),
        Check("resets/usegate/per_step/bf16/fwdbwd", "resets",
              _oracle_check(lambda b, s: models.UseGateLSTM(I, H, backend=b, **two_bidir), "bf16", (T, B, I), True)),
        Check("resets/slstm/bf16/fwdbwd", "heads",
              _oracle_check(lambda b, s: models.SLSTM(I, H, num_heads=heads, backend=b), "bf16", (T, B, I), True)),
        Check("heads/lstm/bf16/fwdbwd", "heads",
              _oracle_check(seq(models.LSTM, num_heads=heads), "bf16", (T, B, I))),
        Check("heads/gru/fp32/fwdbwd", "heads", _oracle_check(seq(models.GRU, num_heads=heads), "fp32", (T, B, I))),
        Check("heads/slstm/fp16/fwdbwd", "heads",
              _oracle_check(lambda b, s: models.SLSTM(I, H, num_heads=heads, backend=b), "fp16", (T, B, I))),
        *[Check(f"layernorm/lnlstm/{st}/{dt}/fwdbwd", "layernorm",
                _oracle_check(seq(models.LayerNormLSTM), dt, (T, 16 if CUDA else B, I), strategy=st))
          for st in ("per_step", "persistent") for dt in ("bf16", "fp32")],
        Check("layernorm/lngru/per_step/bf16/fwdbwd", "layernorm",
              _oracle_check(seq(models.LayerNormGRU), "bf16", (T, 16 if CUDA else B, I), strategy="per_step")),
    ]
    return checks


def _graph_check(seed: int) -> list:
    """The persistent forward captured in a user's CUDA graph and replayed on new inputs: equal to the
    eager persistent call on the same inputs, and within bound of the float64 oracle."""
    if not CUDA:
        raise Skip("no CUDA: graph capture needs a GPU")
    import models
    from tests.helpers import RELRMS_TOL, max_rel, rel_rms

    case = _case("big")
    dtype = torch.bfloat16
    with _no_fallback("persistent", _planned(dtype, case.H, case.B)):
        m, oracle, _ = _module_pair("lstm", case, dtype, "persistent", seed)
        g = torch.Generator(device=DEVICE).manual_seed(seed)

        def inputs():
            return (torch.randn(case.T, case.B, case.I, device=DEVICE, generator=g).to(dtype),
                    (0.5 * torch.randn(1, case.B, case.H, device=DEVICE, generator=g)).to(dtype),
                    (0.5 * torch.randn(1, case.B, case.H, device=DEVICE, generator=g)).to(dtype))

        sx, sh, sc = inputs()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(2):
                m(sx, (sh, sc))
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            gy, (gh, gc) = m(sx, (sh, sc))
        x, h0, c0 = inputs()
        sx.copy_(x), sh.copy_(h0), sc.copy_(c0)
        for t in (gy, gh, gc):
            t.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        with torch.no_grad():
            ey, (eh, ec) = m(x, (h0, c0))
            oy, (oh, oc) = oracle(x.double(), (h0.double(), c0.double()))
    rows = []
    for name, a, e, o in (("out", gy, ey, oy), ("h_n", gh, eh, oh), ("c_n", gc, ec, oc)):
        if not torch.isfinite(a.float()).all():
            rows.append((f"{name} replay", math.inf, 0.0, "non-finite after replay"))
            continue
        rows.append((f"{name} replay vs eager", max_rel(a, e), SAME_TOL, "max_rel"))
        rows.append((f"{name} replay vs fp64", rel_rms(a, o), RELRMS_TOL[dtype], "rel_rms"))
    models.clear_cuda_graphs()
    return rows


def _streams_check(seed: int) -> list:
    """Two persistent launches (forward, then backward) in flight at once on two streams, in a subprocess
    with a timeout: they must finish with the results of one-at-a-time launches, or raise (barrier timeout);
    a hang fails the check."""
    cmd = [sys.executable, "-m", "experiments.gpu_check", "--streams-child", str(seed)]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=STREAMS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"two concurrent persistent launches hung: killed after {STREAMS_TIMEOUT_S} s")
    last = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode != 0 or not last.startswith("RESULT "):
        raise AssertionError(f"streams child exit {r.returncode}: {' '.join(r.stderr.split())[-600:]}")
    outcome, err = last.split()[1], float(last.split()[2])
    if outcome == "raised":
        return [("raised a barrier timeout (allowed)", 0.0, 0.0, f"{time.perf_counter() - t0:.1f}s")]
    return [("concurrent vs one-at-a-time", err, SAME_TOL, "max_rel")]


def streams_child(seed: int) -> int:
    """Body of the two-stream check (see ``_streams_check``); prints "RESULT finished|raised MAXDIFF"."""
    with poisoned():
        return _streams_body(seed)


def _streams_body(seed: int) -> int:
    from kernels import lstm_persistent as P

    dtype = torch.bfloat16 if CUDA else torch.float32
    T, B, H = (256, 16, 1024) if CUDA else (3, 2, 8)
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def r(*s, scale=1.0):
        return (scale * torch.randn(*s, device=DEVICE, generator=g)).to(dtype)

    cfg = (P.plan("persistent", device=DEVICE, dtype=dtype, H=H, B=B, has_proj=False) if CUDA
           else P.interpreter_config(H))
    if cfg is None:
        print("persistent does not apply", file=sys.stderr)
        return 3
    w = r(4 * H, H, scale=1 / math.sqrt(H))
    probs = [(r(T, B, 4 * H), r(B, H, scale=0.5), r(B, H, scale=0.5)) for _ in range(2)]
    dys = [(r(T, B, H), r(B, H).float()) for _ in range(2)]

    def fwd(p):
        return P.lstm_fwd_persistent(p[0], w, p[1], p[2], None, store=True, cfg=cfg)

    def bwd(f, p, d):
        return P.lstm_bwd_persistent(d[0], d[1], w, p[2], f[2], f[3], None, cfg=cfg)

    alone_f = [fwd(p) for p in probs]
    alone_b = [bwd(f, p, d) for f, p, d in zip(alone_f, probs, dys)]
    from kernels import _persistent as S  # where the launchers read check_flag

    flags = []
    real_check = S.check_flag
    S.check_flag = lambda flag, what: flags.append((flag, what))  # read after both launches, not in between
    try:
        both_f, both_b = _on_two_streams(probs, dys, fwd, bwd)
    finally:
        S.check_flag = real_check
    if len(flags) != 4:  # a flag read between the launches would serialize them: then this check proves nothing
        raise AssertionError(f"the timeout flag was deferred for {len(flags)} of the 4 launches, not all")
    try:
        for flag, what in flags:
            real_check(flag, what)
    except RuntimeError as e:
        print(f"raised: {e}", file=sys.stderr)
        print("RESULT raised 0")
        return 0
    print(f"RESULT finished {_max_diff(alone_f + alone_b, both_f + both_b):.6g}")
    return 0


def _on_two_streams(probs, dys, fwd, bwd):
    """The two problems' forwards in flight at once (one stream each), then their backwards likewise."""
    streams = [torch.cuda.Stream() for _ in range(2)] if CUDA else [None, None]
    if CUDA:
        torch.cuda.synchronize()

    def on(s):
        return torch.cuda.stream(s) if s is not None else _null()

    both_f, both_b = [], []
    for s, p in zip(streams, probs):
        with on(s):
            both_f.append(fwd(p))
    if CUDA:
        torch.cuda.synchronize()
    for s, f, p, d in zip(streams, both_f, probs, dys):
        with on(s):
            both_b.append(bwd(f, p, d))
    if CUDA:
        torch.cuda.synchronize()
    return both_f, both_b


def _max_diff(alone: list, both: list) -> float:
    """Largest max-relative difference between the outputs run alone and in flight together (inf for any
    non-finite output)."""
    from tests.helpers import max_rel

    diff = 0.0
    for a, b in zip(alone, both):
        for x, y in zip(a, b):
            if x is not None:
                diff = max(diff, max_rel(y, x) if torch.isfinite(y.double()).all() else math.inf)
    return diff


@contextmanager
def _null():
    yield


def _fast_tanh_check(dtype_name: str):
    """The 16-bit persistent forward uses ``tanh.approx.f32`` (docs/MATH.md, "tanh.approx"): one step from fresh
    inputs spread over the activations' range, every output (h, c, the gates) against the float64 reference on
    the same rounded inputs, element by element, within the bound stated there (the approximation through the
    cell, the fp32 dot's rounding, the output's rounding). GPU only: the interpreter keeps the exact path."""
    def fn(seed: int) -> list:
        if not CUDA:
            raise Skip("no CUDA: tanh.approx runs in compiled kernels only (the interpreter keeps the exact path)")
        from kernels import _persistent as S
        from kernels import lstm_persistent as P

        dtype = DT[dtype_name]
        B, H = 16, 1024
        if not S.fast_tanh(dtype):
            raise AssertionError(f"the persistent forward does not use tanh.approx for {dtype_name}")
        cfg = P.plan("persistent", device=DEVICE, dtype=dtype, H=H, B=B, has_proj=False)
        if cfg is None:
            raise Skip(f"persistent does not apply to {dtype_name} H={H} B={B} here")
        g = torch.Generator(device=DEVICE).manual_seed(seed)

        def r(*shape, scale):
            return (scale * torch.randn(*shape, device=DEVICE, generator=g)).to(dtype)

        xp, w, h0, c0 = r(1, B, 4 * H, scale=3.0), r(4 * H, H, scale=H ** -0.5), r(B, H, scale=1.0), r(B, H, scale=2.0)
        y, c_n, _, gates, _ = P.lstm_fwd_persistent(xp, w, h0, c0, None, store=True, cfg=cfg)
        x64, w64, h64, c64 = (v.double() for v in (xp[0], w, h0, c0))
        zi, zf, zg, zo = (x64 + h64 @ w64.t()).chunk(4, 1)
        i, f, gg, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg), torch.sigmoid(zo)
        c = f * c64 + i * gg
        h = o * torch.tanh(c)
        # fp32 accumulation of the dot (exact 16-bit products): |dz| <= 2 (H + 1) 2^-24 (|h| @ |W|^T + |xp|), twice
        # the round-to-nearest bound (the tensor cores' accumulation does not round to nearest)
        dz = (2 * (H + 1) * 2.0 ** -24 * (h64.abs() @ w64.abs().t() + x64.abs())).chunk(4, 1)
        e_sig = [2.0 ** -12 + d / 4 for d in (dz[0], dz[1], dz[3])]  # i, f, o
        e_g = 2.0 ** -11 + dz[2]
        e_c = c64.abs() * e_sig[1] + e_sig[0] + e_g + 2.0 ** -21 * (c.abs() + 1)  # + the cell's fp32 rounding
        e_h = e_sig[2] + 2.0 ** -11 + e_c
        half_ulp = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[dtype]  # relative: the output rounding
        rows = []
        for name, got, want, bound in (
                ("h", y[0], h, e_h + half_ulp * h.abs()), ("c", c_n, c, e_c),
                ("i", gates[0, :, :H], i, e_sig[0] + half_ulp * i),
                ("f", gates[0, :, H:2 * H], f, e_sig[1] + half_ulp * f),
                ("g", gates[0, :, 2 * H:3 * H], gg, e_g + half_ulp * gg.abs()),
                ("o", gates[0, :, 3 * H:], o, e_sig[2] + half_ulp * o)):
            ratio = ((got.double() - want).abs() / bound).max().item()
            rows.append((name, ratio if math.isfinite(ratio) else math.inf, 1.0, "max |err| / stated bound"))
        return rows
    return fn


# -------------------------------------------------------------------------------------------- the checks
def all_checks() -> list[Check]:
    """Every check, in the order one process runs them (each group compiles its own kernels)."""
    checks = [Check("poison", "misc", _check_poison)]
    for dt in ("bf16", "fp16", "fp32"):
        for shape in ("small", "big"):
            for strategy in ("per_step", "persistent"):
                for infer in (False, True):
                    name = f"lstm/{strategy}/{dt}/{shape}/{'fwd' if infer else 'fwdbwd'}"
                    group = f"lstm-{dt}-{strategy}"
                    checks.append(Check(name, group, _sequence_check("lstm", strategy, dt, shape, infer)))
    checks += [
        Check("rnn_tanh/fp32/small/fwdbwd", "rnn", _sequence_check("rnn_tanh", "per_step", "fp32", "small", False)),
        Check("rnn_relu/fp32/small/fwdbwd", "rnn", _sequence_check("rnn_relu", "per_step", "fp32", "small", False)),
        Check("rnn_tanh/fp32/big/fwdbwd", "rnn", _sequence_check("rnn_tanh", "per_step", "fp32", "big", False)),
        Check("rnn_tanh/bf16/small/fwdbwd", "rnn", _sequence_check("rnn_tanh", "per_step", "bf16", "small", False)),
        Check("rnn_relu/fp16/small/fwd", "rnn", _sequence_check("rnn_relu", "per_step", "fp16", "small", True)),
        Check("usegate/fp32/small/fwdbwd", "usegate", _sequence_check("usegate", "per_step", "fp32", "small", False)),
        Check("usegate/bf16/small/fwdbwd", "usegate", _sequence_check("usegate", "per_step", "bf16", "small", False)),
        Check("usegate/bf16/big/fwdbwd", "usegate", _sequence_check("usegate", "per_step", "bf16", "big", False)),
        Check("usegate/fp16/big/fwd", "usegate", _sequence_check("usegate", "per_step", "fp16", "big", True)),
        *[Check(f"gru/{st}/{dt}/{shape}/{'fwd' if infer else 'fwdbwd'}", "gru",
                _sequence_check("gru", st, dt, shape, infer))
          for st, dt, shape, infer in (("per_step", "fp32", "small", False), ("per_step", "bf16", "small", False),
                                       ("per_step", "bf16", "big", False), ("persistent", "bf16", "big", False),
                                       ("persistent", "fp16", "big", True), ("per_step", "fp16", "big", True))],
        Check("cell/gru/fp32", "gru", _cell_check("gru", "fp32")),
        Check("cell/lstm/fp32", "cells", _cell_check("lstm", "fp32")),
        Check("cell/rnn_tanh/fp32", "cells", _cell_check("rnn_tanh", "fp32")),
        Check("cell/rnn_relu/fp32", "cells", _cell_check("rnn_relu", "fp32")),
        Check("cell/lstm/bf16", "cells", _cell_check("lstm", "bf16")),
        Check("persistent/cuda_graph_replay/bf16/big", "lstm-bf16-persistent", _graph_check),
        Check("persistent/tanh_approx_bound/bf16", "lstm-bf16-persistent", _fast_tanh_check("bf16")),
        Check("persistent/tanh_approx_bound/fp16", "lstm-fp16-persistent", _fast_tanh_check("fp16")),
        Check("persistent/two_streams/bf16", "streams", _streams_check),
        *_extra_checks(),
    ]
    return checks


# workers on CUDA: the groups of each process (the two-stream check waits on its own subprocess, so it gets
# a worker of its own rather than delaying a group behind it)
SHARDS = [[f"lstm-{dt}-{s}"] for dt in ("bf16", "fp16", "fp32") for s in ("per_step", "persistent")] + [
    ["usegate"], ["gru"], ["rnn", "cells", "misc"], ["streams"], ["resets"], ["heads", "layernorm"]]


def shard_of(group: str, n: int) -> int:
    for i, groups in enumerate(SHARDS):
        if group in groups:
            return i % n
    return 0


# ----------------------------------------------------------------------------------------------- running
def _line(values: list) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def append_line(path: Path, text: str) -> None:
    """One write on an O_APPEND descriptor, then fsync: rows from several processes never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_header(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.stat().st_size == 0:
        append_line(path, _line(COLUMNS))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_one(check: Check, out: Path, failures: Path | None, seed: int) -> dict:
    """Run one check and append its row; never raises (KeyboardInterrupt aside)."""
    import models

    t0 = time.perf_counter()
    row = dict(name=check.name, status="pass", max_err="", bound="", metric="", seed=seed,
               device=torch.cuda.get_device_name() if CUDA else "cpu (interpreter)", error="")
    try:
        if CUDA:
            models.clear_cuda_graphs()  # fresh (poisoned) static buffers
        with poisoned():
            entries = check.fn(seed)
        if CUDA:
            torch.cuda.synchronize()
        worst = max(entries, key=lambda e: (e[1] / e[2]) if e[2] > 0 else (math.inf if e[1] > 0 else 0.0))
        row.update(max_err=worst[1], bound=worst[2], metric=f"{worst[3]} ({worst[0]})")
        bad = [e for e in entries if not (e[1] <= e[2])]
        if bad:
            row["status"] = "fail"
            row["error"] = "; ".join(f"{e[0]}: {e[1]:.3g} > {e[2]:.3g} ({e[3]})" for e in bad[:4])
            if failures is not None:
                lines = "\n".join(f"  {e[0]}: {e[1]:.4g} > bound {e[2]:.4g} ({e[3]})" for e in bad)
                append_line(failures, f"___ {check.name} (seed {seed}) ___\n{lines}\n\n")
    except Skip as e:
        row.update(status="skip", error=" ".join(str(e).split())[:300])
    except Exception as e:  # noqa: BLE001 - a failing check must not stop the run
        row.update(status="fail", error=f"{type(e).__name__}: {' '.join(str(e).split())[:400]}")
        if failures is not None:
            append_line(failures, f"___ {check.name} (seed {seed}) ___\n{traceback.format_exc()}\n")
    row["seconds"] = time.perf_counter() - t0
    append_line(out, _line([_fmt(row[c]) for c in COLUMNS]))
    print(f"[{row['seconds']:6.1f}s] {row['status']:<5} {check.name}"
          f"{'  ' + row['error'][:160] if row['error'] else ''}", flush=True)
    return row


def run_checks(checks: list[Check], out: Path, failures: Path | None = None, base_seed: int | None = None,
               deadline: float | None = None) -> list[dict]:
    """Run ``checks`` in order in this process, one row each; stops starting checks after ``deadline``
    (a time.time() value)."""
    write_header(out)
    base = base_seed if base_seed is not None else int.from_bytes(os.urandom(3), "little")
    rows = []
    for i, c in enumerate(checks):
        if deadline is not None and time.time() > deadline:
            break
        rows.append(run_one(c, out, failures, base + 101 * i))
    import models

    for e in models.selfcheck_report():  # the self-check's margins on this device (in the log of the GPU run)
        w = e["worst"]
        print(f"self-check {e['status']}: {e['config']}" + (f"; worst {w[0]}: {w[1]:.3g} (bound {w[2]:.3g})"
                                                            if w else ""), flush=True)
    return rows


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _select(checks, only):
    if not only:
        return checks
    return [c for c in checks if any(s in c.name for s in only)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("scratch/correctness.csv"), help="CSV to append rows to")
    p.add_argument("--failures", type=Path, default=None, help="log of the failing checks' tracebacks")
    p.add_argument("--only", nargs="*", default=None, help="run the checks whose name contains any of these")
    p.add_argument("--workers", type=int, default=len(SHARDS) if CUDA else 1,
                   help=f"processes (default: {len(SHARDS)} on CUDA, 1 on CPU)")
    p.add_argument("--time-limit", type=float, default=150.0, help="seconds until unfinished checks are stopped")
    p.add_argument("--seed", type=int, default=None, help="base seed (default: random, written per row)")
    p.add_argument("--list", action="store_true", help="print the check names and exit")
    p.add_argument("--shard", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--streams-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.streams_child is not None:
        return streams_child(args.streams_child)
    if CUDA:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 is compared with TF32 off, both sides
        torch.backends.cudnn.allow_tf32 = False
    checks = _select(all_checks(), args.only)
    if args.list:
        for c in checks:
            print(f"{c.group:<10} {c.name}")
        return 0
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "little")
    if args.shard is not None:  # a worker
        mine = [c for c in checks if shard_of(c.group, args.workers) == args.shard]
        run_checks(mine, args.out, args.failures, seed + 7919 * args.shard, args.deadline)
        return 0
    write_header(args.out)
    deadline = time.time() + args.time_limit
    n = max(1, min(args.workers, len(SHARDS)))
    print(f"{len(checks)} checks on {DEVICE.type} in {n} process(es), time limit {args.time_limit:.0f}s, "
          f"seed {seed}", flush=True)
    if n == 1:
        run_checks(checks, args.out, args.failures, seed, deadline - 5)
    else:
        _run_workers(args, n, seed, deadline)
    return _summary(args, checks)


def _run_workers(args, n: int, seed: int, deadline: float) -> None:
    """The checks in ``n`` worker processes (one shard each), ended at the deadline or with us."""
    procs = []

    def stop(signum=None, frame=None):  # workers run in their own sessions: end them with us
        for pr in procs:
            if pr.poll() is None:
                os.killpg(pr.pid, signal.SIGKILL)
                pr.wait()
        if signum is not None:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    for k in range(n):
        cmd = [sys.executable, "-m", "experiments.gpu_check", "--out", str(args.out), "--workers", str(n),
               "--shard", str(k), "--seed", str(seed), "--deadline", str(deadline - 10)]
        if args.failures:
            cmd += ["--failures", str(args.failures)]
        if args.only:
            cmd += ["--only", *args.only]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, start_new_session=True))
    for pr in procs:
        try:
            pr.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    stop()


def _summary(args, checks) -> int:
    """A timeout row for every check without a row, the counts and the failures printed; exit 0 when none
    failed or timed out, else 1."""
    rows = read_rows(args.out)
    done = {r["name"] for r in rows}
    for c in checks:
        if c.name not in done:
            row = dict(name=c.name, status="timeout", max_err="", bound="", metric="", seconds="", seed="",
                       device=DEVICE.type, error=f"not finished within the {args.time_limit:.0f} s time limit")
            append_line(args.out, _line([row[k] for k in COLUMNS]))
    rows = read_rows(args.out)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("pass", "fail", "skip", "timeout")}
    print("correctness: " + ", ".join(f"{v} {k}" for k, v in counts.items()), flush=True)
    for r in rows:
        if r["status"] in ("fail", "timeout"):
            print(f"  {r['status']}: {r['name']}: {r['error'][:200]}", flush=True)
    return 0 if counts["fail"] == counts["timeout"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
