"""The first-use self-check (models/_selfcheck.py), forced on in the CPU interpreter: a correct kernel passes
silently and is checked once per configuration; a broken kernel (the kernel layer's function monkeypatched to
return wrong values, NaN, or to raise) warns once and the module's results are the reference's, bit for bit;
"raise" raises; "off" (and "auto" on CPU) checks nothing; tracing and compiling skip it. Also: the README's
"Use it in your model" snippet runs as written."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusedrnn
from kernels import gru as KG
from kernels import heads as KH
from kernels import layernorm as KLN
from kernels import lstm as KL
from kernels import rnn as KR
from kernels import usegate as KU
from models import _selfcheck as S

from .helpers import DEVICE, assert_close, loss_of, rand

ROOT = Path(__file__).resolve().parent.parent
T, B, I, H = 3, 2, 3, 8


@pytest.fixture
def set_mode():
    S.forget()
    yield S.set_selfcheck
    S.set_selfcheck(None)
    S.forget()


def _counted(monkeypatch, module, name, calls, change=None):
    """Replace ``module.name`` by a wrapper that counts its calls in ``calls[name]`` and applies ``change`` to
    the real result (or raises, for change="raise")."""
    real = getattr(module, name)

    def wrapper(*a, **k):
        calls[name] = calls.get(name, 0) + 1
        if change == "raise":
            raise RuntimeError("kernel exploded")
        out = real(*a, **k)
        return change(out) if change is not None else out

    monkeypatch.setattr(module, name, wrapper)


def _wrong_y(out):
    """The forward's y (first output) shifted: a wrong result of the right shape."""
    (out[0] if isinstance(out, tuple) else out).add_(0.5)
    return out


def _nan_y(out):
    out[0].fill_(float("nan"))
    return out


def _wrong_dw_hh(out):
    """The backward's dW_hh (fourth output of every cell's layer backward) scaled."""
    out[3].mul_(1.5)
    return out


def _pair(cell: str, **kw):
    torch.manual_seed(0)
    ours = getattr(fusedrnn, cell)(I, H, backend="triton", **kw)
    ref = getattr(fusedrnn, cell)(I, H, backend="reference", **kw)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _run(module, x, lengths=None):
    """Outputs and every gradient of one call with a loss over all outputs."""
    x = x.detach().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    out, hn = module(inp)
    out = out.data if lengths is not None else out
    outs = [out, *(hn if isinstance(hn, tuple) else (hn,))]
    loss_of(outs).backward()
    return [o.detach() for o in outs] + [x.grad] + [p.grad for p in module.parameters()]


def _selfcheck_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, S.SelfCheckWarning)]


def test_modes_default_to_cuda_only_and_reject_unknown_values(set_mode, monkeypatch):
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.delenv(S.ENV, raising=False)
    assert S.mode() == "auto" and S.active_mode(cuda) == "warn" and S.active_mode(cpu) is None
    for env, want in (("raise", "raise"), ("warn", "warn"), (" OFF ", None)):
        monkeypatch.setenv(S.ENV, env)
        assert S.active_mode(cuda) == S.active_mode(cpu) == want
    monkeypatch.setenv(S.ENV, "on")
    with pytest.raises(ValueError, match="FUSEDRNN_SELFCHECK must be one of"):
        S.mode()
    set_mode("off")  # the Python-level switch wins over the environment
    assert S.active_mode(cuda) is None
    with pytest.raises(ValueError, match="mode must be one of"):
        set_mode("yes")


def test_a_correct_kernel_passes_silently_once_per_configuration(set_mode, monkeypatch):
    """Checked at the first call of each configuration (here: training, then inference), silently, with the
    fused path serving every call; the global RNG is not touched."""
    calls = {}
    _counted(monkeypatch, KL, "lstm_layer_fwd", calls)
    _counted(monkeypatch, KL, "lstm_layer_bwd", calls)
    ours, ref = _pair("LSTM")
    x = rand(T, B, I, dtype=torch.float32)
    set_mode("warn")
    rng = torch.get_rng_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _run(ours, x)
        assert calls == {"lstm_layer_fwd": 2, "lstm_layer_bwd": 2}  # the check's call, then the module's
        ours(x)  # the same configuration: no check
        assert calls == {"lstm_layer_fwd": 3, "lstm_layer_bwd": 2}
        with torch.no_grad():  # another one (inference): checked once
            out, _ = ours(x)
            ours(x)
    assert calls == {"lstm_layer_fwd": 6, "lstm_layer_bwd": 2}
    assert _selfcheck_warnings(caught) == []
    assert torch.equal(torch.get_rng_state(), rng)
    report = S.selfcheck_report()
    assert [e["status"] for e in report] == ["pass", "pass"]
    assert "forward+backward" in report[0]["config"] and report[1]["config"].endswith("forward)")
    assert all(0 < e["worst"][1] <= e["worst"][2] == S.TOLERANCES[torch.float32] for e in report)
    for a, b in zip(got, _run(ref, x)):
        assert_close(a, b, torch.float32)
    assert_close(out, got[0], torch.float32)


# (cell, kernel-layer module, function, what goes wrong, what the warning names)
BROKEN = [
    ("LSTM", KL, "lstm_layer_fwd", _wrong_y, "output"),
    ("GRU", KG, "gru_layer_bwd", _wrong_dw_hh, "grad weights[1]"),
    ("RNN", KR, "rnn_layer_fwd", "raise", "RuntimeError: kernel exploded"),
    ("UseGateLSTM", KU, "usegate_layer_fwd", _nan_y, "output inf"),
    ("LayerNormLSTM", KLN, "lnlstm_fwd_sequence", _wrong_y, "output"),
    ("SLSTM", KH, "heads_layer_fwd", _wrong_y, "output"),
]


@pytest.mark.parametrize("cell,module,name,change,names", BROKEN, ids=[f"{c[0]}-{c[2]}" for c in BROKEN])
def test_a_broken_kernel_warns_once_and_the_reference_serves(set_mode, monkeypatch, cell, module, name, change,
                                                            names):
    calls = {}
    _counted(monkeypatch, module, name, calls, change)
    ours, ref = _pair(cell)
    x = rand(T, 3, I, dtype=torch.float32)
    lengths = [3, 1, 2] if cell == "LSTM" else None  # packed: the check runs with lengths too
    set_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = _run(ours, x, lengths)
        second = _run(ours, x, lengths)
    assert calls == {name: 1}  # only the check ran the broken kernel
    (msg,) = _selfcheck_warnings(caught)
    assert f"fused {cell} layer" in msg and "torch.float32, cpu, B=3" in msg and names in msg, msg
    assert "reference path serves this configuration" in msg and "FUSEDRNN_SELFCHECK=raise" in msg
    want = _run(ref, x, lengths)
    for got in (first, second):
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    (entry,) = S.selfcheck_report()
    assert entry["status"] == "fail" and entry["error"] in msg


def test_raise_mode_raises_at_every_call(set_mode, monkeypatch):
    calls = {}
    _counted(monkeypatch, KR, "rnn_layer_fwd", calls, _wrong_y)
    ours, _ = _pair("RNN")
    x = rand(T, B, I, dtype=torch.float32)
    set_mode("raise")
    for _ in range(2):
        with pytest.raises(S.SelfCheckError, match=r"fused RNN layer .*torch\.float32, cpu.* output [0-9.]+ > 0\.0001"):
            ours(x)
    assert calls == {"rnn_layer_fwd": 1}


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_off_and_auto_on_cpu_check_nothing(set_mode, monkeypatch, mode):
    """Off (and "auto" on CPU) the broken kernel's result comes through: nothing compared it."""
    _counted(monkeypatch, KR, "rnn_layer_fwd", {}, _wrong_y)
    ours, ref = _pair("RNN")
    x = rand(T, B, I, dtype=torch.float32)
    set_mode(mode)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        out, _ = ours(x)
    assert_close(out, ref(x)[0] + 0.5, torch.float32)
    assert S.selfcheck_report() == [] and _selfcheck_warnings(caught) == []


def test_no_check_while_tracing_or_compiling(set_mode, monkeypatch):
    """Under torch.jit.trace and torch.compile (dynamo says it is compiling) the check neither runs nor
    applies: even mode "raise" with a broken kernel lets the fused op through."""
    calls = {}
    _counted(monkeypatch, KR, "rnn_layer_fwd", calls, _wrong_y)
    ours, _ = _pair("RNN")
    x = rand(T, B, I, dtype=torch.float32)
    set_mode("raise")
    with torch.no_grad():
        torch.jit.trace(ours, (x,), check_trace=False)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        ours(x)
    assert calls == {"rnn_layer_fwd": 2} and S.selfcheck_report() == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernels on a GPU")
@pytest.mark.parametrize("cell,dtype,strategy", [
    ("LSTM", torch.bfloat16, "persistent"), ("LSTM", torch.float16, "per_step"), ("LSTM", torch.float32, "auto"),
    ("GRU", torch.bfloat16, "persistent"), ("GRU", torch.float32, "per_step"), ("RNN", torch.float16, "auto"),
    ("UseGateLSTM", torch.bfloat16, "auto")])
def test_the_check_passes_on_the_gpu(set_mode, cell, dtype, strategy):
    """On CUDA, the self-check's bounds hold for the real kernels (a failure here means the kernel or the bound is
    wrong: the message has the error)."""
    torch.manual_seed(0)
    m = getattr(fusedrnn, cell)(256, 256, num_layers=2, strategy=strategy, device=DEVICE, dtype=dtype)
    set_mode("raise")
    x = torch.randn(32, 8, 256, device=DEVICE, dtype=dtype, requires_grad=True)
    out, _ = m(x)
    out.float().square().sum().backward()
    with torch.no_grad():
        m(x)
    report = S.selfcheck_report()
    assert len(report) == 4 and {e["status"] for e in report} == {"pass"}, report


# ------------------------------------------------------------------------------------------------ README
def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end >= 0 else len(text)]


def test_readme_snippet_runs_as_written():
    """The first code block of "Use it in your model" runs on CPU as written (the default mode: no check there)."""
    section = _section((ROOT / "README.md").read_text(), "## Use it in your model")
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md: Use it in your model", "exec"), {"__name__": "readme_snippet"})


def test_readme_says_the_kernels_are_unverified_where_a_user_decides():
    text = (ROOT / "README.md").read_text()
    first_screen = "\n".join(text.splitlines()[:30])
    assert "No GPU has run" in first_screen and "FUSEDRNN_SELFCHECK" in first_screen
    section = _section(text, "## Use it in your model")
    assert "No GPU has run" in section and 'backend="reference"' in section
