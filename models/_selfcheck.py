"""Self-check on first use: the fused kernels are compared with the reference before they serve a configuration.

No GPU has run these kernels yet (README, "Status and limits"), while ``backend="auto"`` puts them into every
CUDA model. So the first call of each configuration in a process first runs the same layer function twice on
a small random input of that configuration, through the fused kernels and through the pure-PyTorch
reference (``kernels/reference.py``), and compares the results. A configuration is (cell, strategy, dtype,
device, batch size, the layer's weight shapes, bias / proj_size / nonlinearity, whether sequence lengths are
given, whether episode resets are given, and the pass: "fwd" when no gradient is needed, "fwdbwd" otherwise). The
batch size is part of it because it selects the kernels' tiles (their autotune key) and, under ``strategy="auto"``,
per_step or persistent; the check's input keeps the call's batch and weights (the same kernels, configs and alignment)
and takes ``min(T, STEPS)`` steps of fresh random values from a private generator (the global RNG is not
touched).

Work per configuration: one fused forward on that small input (and, for "fwdbwd", one fused backward), the
reference forward (and autograd backward) on the same values in a wider dtype (float64 for fp32/fp64 inputs,
float32 for fp16/bf16), and one host synchronization to read the errors. Each output and gradient is
compared by ``max |fused - reference| / max |reference|`` against ``TOLERANCES`` (fp32 with TF32 on:
``TF32_TOLERANCE``); a non-finite element where the reference is finite fails too.

Verdicts, per configuration, for the rest of the process:
- pass: the fused kernels serve it (no further check);
- fail (a mismatch, or an exception from the fused path): in mode "warn" one ``SelfCheckWarning`` names the
  configuration and the error, and the reference path serves that configuration from then on; in mode
  "raise" every call of it raises ``SelfCheckError``.

Modes (``set_selfcheck(mode)``, else the environment variable ``FUSEDRNN_SELFCHECK``): "auto" (default: "warn"
on CUDA, where the kernels are unverified, and off on CPU, where the Triton interpreter runs what the test suite
checks), "warn" and "raise" (on every device, the interpreter included), "off".

Never while tracing or capturing: under ``torch.compile`` / ``torch.export`` (dynamo or a fake / proxy
dispatch mode), ``torch.jit.trace``, functorch transforms (vmap, grad) and CUDA-graph capture the check neither
runs nor applies, so the fused ops stay in the graph and compiled code is unchanged whatever an eager call found
(one eager call before compiling checks the configurations; after a failure, compile with the reference backend).
"""
from __future__ import annotations

import os
import threading
import warnings
from contextlib import nullcontext

import torch

from ..kernels._common import SUPPORTED_DTYPES, dot_precision

MODES = ("auto", "warn", "raise", "off")
ENV = "FUSEDRNN_SELFCHECK"
STEPS = 4  # time steps of the check's input (fewer when the call has fewer)
TOLERANCES = {torch.float64: 1e-8, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
TF32_TOLERANCE = 2e-2  # fp32 inputs whose dots run in TF32 (torch.backends.cudnn.allow_tf32 on CUDA)
_FLOOR = 1e-3  # denominator floor of the relative error: entries of tiny magnitude are compared absolutely
_SEED = 20240601


class SelfCheckWarning(RuntimeWarning):
    """A configuration failed the self-check; the reference path serves it from now on."""


class SelfCheckError(RuntimeError):
    """A configuration failed the self-check in mode "raise"."""


_mode: str | None = None  # set_selfcheck's; None: the environment's
_verdicts: dict = {}  # configuration key -> report entry (dict)
_lock = threading.RLock()
_local = threading.local()  # .busy: this thread is running a check (its own calls pass through)


def set_selfcheck(mode: str | None) -> None:
    """Set the self-check mode of this process: "auto", "warn", "raise" or "off" (see models/_selfcheck.py);
    None goes back to the environment variable ``FUSEDRNN_SELFCHECK`` (default "auto"). Verdicts already
    reached are kept; ``forget()`` drops them."""
    global _mode
    if mode is not None:
        _check_mode(mode, "mode")
    _mode = mode


def mode() -> str:
    """The current mode: ``set_selfcheck``'s, else ``FUSEDRNN_SELFCHECK``'s, else "auto"."""
    if _mode is not None:
        return _mode
    return _check_mode(os.environ.get(ENV, "").strip().lower() or "auto", ENV)


def _check_mode(m: str, what: str) -> str:
    if m not in MODES:
        raise ValueError(f"{what} must be one of {MODES}, got {m!r}")
    return m


def active_mode(device: torch.device) -> str | None:
    """"warn" or "raise" where the check runs on ``device`` in the current mode, else None."""
    m = mode()
    if m == "auto":
        return "warn" if device.type == "cuda" else None
    return None if m == "off" else m


def selfcheck_report() -> list[dict]:
    """One entry per configuration checked in this process, in order: ``config`` (its description),
    ``status`` ("pass" or "fail"), ``worst`` ((name, error, bound) of the entry nearest its bound, or None when
    the fused path raised), ``error`` (the failure's text, "" on a pass)."""
    with _lock:
        return [dict(v) for v in _verdicts.values()]


def forget() -> None:
    """Drop every verdict: the next call of each configuration is checked again."""
    with _lock:
        _verdicts.clear()


def _tracing(x: torch.Tensor) -> bool:
    """Whether this call is being traced, compiled or captured (then the check neither runs nor applies)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    if torch._C._len_torch_dispatch_stack() > 0:  # fake / proxy / functional modes: export, make_fx
        return True
    functorch = getattr(torch._C, "_are_functorch_transforms_active", None)
    if functorch is not None and functorch():
        return True
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def fused_ok(cell: str, run, args: tuple, flags: dict, resets=None) -> bool:
    """Whether the fused kernels may serve this layer call: the self-check of its configuration, run at its
    first call (module docstring). ``run(x, *states, weights, lengths, backend=..., **flags)`` is the cell's
    layer function (``run_lstm_layer`` ...), ``args`` = (x, *states, weights, lengths) the call's arguments,
    ``flags`` its keyword arguments other than ``backend``; ``resets`` the call's reset mask or None (a call with
    one is its own configuration, checked with random resets passed as ``run(..., resets=)``). Returns False
    where the reference must serve it; raises ``SelfCheckError`` in mode "raise"."""
    x = args[0]
    if _tracing(x) or getattr(_local, "busy", False) or x.dtype not in SUPPORTED_DTYPES:  # tracing first (dynamo)
        return True
    m = active_mode(x.device)
    if m is None:
        return True
    key = _key(cell, args, flags) + (resets is not None,)
    with _lock:
        verdict = _verdicts.get(key)
        if verdict is None:
            verdict = _run_check(cell, run, args, flags, resets is not None)
            _verdicts[key] = verdict
            if verdict["status"] == "fail" and m == "warn":
                warnings.warn(verdict["error"] + f" The reference path serves this configuration from now on "
                              f"({ENV}=raise makes this an error, {ENV}=off skips the check).",
                              SelfCheckWarning, stacklevel=2)
    if verdict["status"] == "pass":
        return True
    if m == "raise":
        raise SelfCheckError(verdict["error"] + f" ({ENV}=warn runs the reference path instead, {ENV}=off skips "
                             "the check.)")
    return False


def _grad(args) -> bool:
    from ._base import needs_grad

    x, *states, weights, _ = args
    return needs_grad(x, *states, *weights)


def _key(cell: str, args, flags: dict) -> tuple:
    x, *states, weights, lengths = args
    return (cell, x.dtype, str(x.device), x.shape[1], tuple(tuple(w.shape) for w in weights),
            tuple(sorted(flags.items())), lengths is not None, "fwdbwd" if _grad(args) else "fwd")


def _describe(cell: str, args, flags: dict, resets: bool = False) -> str:
    x, *states, weights, lengths = args
    sizes = "x".join(str(s) for s in weights[1].shape)
    opts = ", ".join(f"{k}={v!r}" for k, v in sorted(flags.items()))
    return (f"{cell} layer ({opts}, {x.dtype}, {x.device}, B={x.shape[1]}, I={x.shape[2]}, W_hh {sizes}"
            f"{', lengths' if lengths is not None else ''}{', resets' if resets else ''}, "
            f"{'forward+backward' if _grad(args) else 'forward'})")


def _run_check(cell: str, run, args, flags: dict, resets: bool = False) -> dict:
    """The check itself: returns the report entry."""
    x, *states, weights, lengths = args
    what = _describe(cell, args, flags, resets)
    grad = _grad(args)
    inputs = _small_inputs(args, resets)
    wide = torch.float64 if x.dtype in (torch.float32, torch.float64) else torch.float32
    ac = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else nullcontext()
    _local.busy = True
    try:
        with ac:
            want = _outputs(run, inputs, flags, "reference", grad, wide)
            try:
                got = _outputs(run, inputs, flags, "triton", grad, None)
                worst, bad = _compare(got, want, x.dtype, x.device)
            except Exception as e:  # noqa: BLE001 - any failure of the fused path is a failed check
                err = " ".join(f"{type(e).__name__}: {e}".split())[:600]
                return dict(config=what, status="fail", worst=None,
                            error=f"fusedrnn self-check: the fused {what} raised {err}.")
    finally:
        _local.busy = False
    if bad:
        listed = "; ".join(f"{n} {e:.3g} > {b:.3g}" for n, e, b in bad[:4])
        return dict(config=what, status="fail", worst=worst,
                    error=f"fusedrnn self-check: the fused {what} disagrees with the reference "
                          f"(max |error| / max |reference|: {listed}).")
    return dict(config=what, status="pass", worst=worst, error="")


def _small_inputs(args, resets: bool = False):
    """The check's input: min(T, STEPS) steps of random x, random states and sorted random lengths (the
    longest = the steps), the call's own weights (detached), with ``resets`` a random (T, B) reset mask (row 0
    restarting at t = 0 and at the last step, the other rows at random), from a private generator."""
    x, *states, weights, lengths = args
    T, B = min(x.shape[0], STEPS), x.shape[1]
    g = torch.Generator().manual_seed(_SEED)

    def rand(shape, scale=1.0):
        t = torch.randn(shape, generator=g, dtype=torch.float64) * scale
        return t.to(device=x.device, dtype=x.dtype)

    xs = rand((T, B, x.shape[2]))
    ss = [rand(tuple(s.shape), 0.5) for s in states]
    ls = None
    if lengths is not None:
        ls = torch.randint(1, T + 1, (B,), generator=g).sort(descending=True).values
        ls[0] = T
        ls = ls.to(device=lengths.device, dtype=lengths.dtype)
    rs = None
    if resets:
        rs = torch.rand((T, B), generator=g) < 0.3
        rs[0, 0] = rs[T - 1, 0] = True
        rs = rs.to(x.device)
    return xs, ss, [w.detach() for w in weights], ls, rs


def _outputs(run, inputs, flags, backend, grad: bool, wide):
    """{name: tensor} of one run of the layer function: its outputs and, with ``grad``, the gradients of a
    random projection of them with respect to every input (autograd; ``wide``: in that dtype)."""
    xs, ss, ws, ls, rs = inputs
    cast = (lambda t: t.to(wide)) if wide is not None else (lambda t: t)
    leaves = [cast(t).detach().requires_grad_(grad) for t in (xs, *ss, *ws)]
    x, states, weights = leaves[0], leaves[1:1 + len(ss)], leaves[1 + len(ss):]
    with torch.enable_grad() if grad else torch.no_grad():
        y, _, c_n = run(x, *states, weights, ls, backend=backend, **flags, **({} if rs is None else {"resets": rs}))
        outs = {"output": y, **({"c_n": c_n} if c_n is not None else {})}
        res = {k: v.detach() for k, v in outs.items()}
        if grad:
            gen = torch.Generator().manual_seed(_SEED + 1)  # the same projection for both backends
            proj = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs.values()]
            dl = torch.autograd.grad(list(outs.values()), leaves, proj, allow_unused=True)
            names = ["grad x"] + [f"grad state {i}" for i in range(len(ss))] + \
                [f"grad weights[{i}]" for i in range(len(ws))]
            res.update({n: d for n, d in zip(names, dl) if d is not None})
    return res


def _compare(got: dict, want: dict, dtype, device):
    """(worst entry (name, error, bound), [entries over their bound]); the errors are read in one host sync."""
    bound = TF32_TOLERANCE if dot_precision(dtype, device) == "tf32" else TOLERANCES[dtype]
    if set(got) != set(want):
        raise RuntimeError(f"outputs differ: {sorted(set(got) ^ set(want))}")
    names, errs = [], []
    for name, r in want.items():
        f = got[name].to(r.dtype)
        if f.shape != r.shape:
            raise RuntimeError(f"{name}: shape {tuple(f.shape)}, expected {tuple(r.shape)}")
        if r.numel() == 0:
            continue
        finite = torch.isfinite(r)
        scale = torch.where(finite, r.abs(), 0).amax().clamp_min(_FLOOR)
        err = torch.where(finite, (f - r).abs(), 0).amax() / scale
        lost = (finite & ~torch.isfinite(f)).any()  # a NaN or inf the reference does not have
        names.append(name)
        errs.append(torch.where(lost, torch.full_like(err, float("inf")), err))
    rows = [(n, e, bound) for n, e in zip(names, torch.stack(errs).tolist())] if errs else []
    worst = max(rows, key=lambda e: e[1]) if rows else None
    return worst, [e for e in rows if not e[1] <= e[2]]
