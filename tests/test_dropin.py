"""Drop-in behaviour in real programs: constructor errors as torch.nn's, whole-model checkpoints loaded with
``weights_only=True``, autocast following torch's casting rules, and the public ``fusedrnn`` import name."""
import io
import warnings

import pytest
import torch
from torch import nn

from fusedrnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, UseGateLSTM

from .helpers import DEVICE, assert_close, rand

CPU = torch.device("cpu")
# the triton backend on CPU tensors needs the interpreter, which conftest switches on only without CUDA
cpu_triton = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors on the triton backend need the "
                                "interpreter (no CUDA)")


@pytest.mark.parametrize("proj_size", [0, 3])
def test_rnn_rejects_proj_size_as_nn(proj_size):
    with pytest.raises(ValueError) as want:
        nn.RNN(3, 4, proj_size=proj_size)
    with pytest.raises(ValueError) as got:
        RNN(3, 4, proj_size=proj_size)
    assert str(got.value) == str(want.value)
    with pytest.raises(TypeError) as want:
        nn.RNNCell(3, 4, proj_size=proj_size)
    with pytest.raises(TypeError) as got:
        RNNCell(3, 4, proj_size=proj_size)
    assert str(got.value) == str(want.value)
    with pytest.raises(TypeError, match="unexpected keyword argument 'projsize'"):
        RNN(3, 4, projsize=2)


def test_whole_model_checkpoint_loads_with_weights_only():
    torch.manual_seed(0)
    model = nn.Sequential(LSTM(3, 4, num_layers=2, bidirectional=True, backend="reference"),
                          RNN(3, 4, nonlinearity="relu"), LSTMCell(3, 4), RNNCell(3, 4), UseGateLSTM(3, 4))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([nn.Sequential]):  # what a program lists for its own nn modules
        back = torch.load(buf, weights_only=True)
    assert [type(m) for m in back] == [type(m) for m in model]
    assert back[0].backend == "reference" and back[1].nonlinearity == "relu"
    x = rand(5, 2, 3, dtype=torch.float32, device=CPU)
    for a, b in ((model[0](x)[0], back[0](x)[0]), (model[2](x[0])[0], back[2](x[0])[0])):
        assert torch.equal(a, b)


# --- autocast: torch's casting rules ------------------------------------------------------------------------
def _dtypes(o):
    if isinstance(o, torch.nn.utils.rnn.PackedSequence):
        return ("packed", o.data.dtype)
    if isinstance(o, torch.Tensor):
        return o.dtype
    return tuple(_dtypes(t) for t in o)


def _flat(o):
    if isinstance(o, torch.nn.utils.rnn.PackedSequence):
        return [o.data]
    if isinstance(o, torch.Tensor):
        return [o]
    return [t for x in o for t in _flat(x)]


AUTOCAST_CASES = [
    pytest.param(kind, kw, packed, id=f"{name}-{'packed' if packed else 'padded'}")
    for name, kind, kw in [("lstm", "lstm", {}), ("lstm-proj", "lstm", dict(proj_size=2)), ("rnn", "rnn", {}),
                           ("gru", "gru", {})]
    for packed in (False, True)
] + [pytest.param(cell, {}, False, id=cell) for cell in ("lstm_cell", "rnn_cell", "gru_cell")]

NN_PAIRS = {"lstm": (nn.LSTM, LSTM), "rnn": (nn.RNN, RNN), "gru": (nn.GRU, GRU), "lstm_cell": (nn.LSTMCell, LSTMCell),
            "rnn_cell": (nn.RNNCell, RNNCell), "gru_cell": (nn.GRUCell, GRUCell)}


def _pair(kind, dtype, backend, **kw):
    torch.manual_seed(0)
    cls_nn, cls = NN_PAIRS[kind]
    if not kind.endswith("cell"):
        kw = dict(num_layers=2, bidirectional=True, **kw)
    ref = cls_nn(3, 5, **kw).to(dtype)
    ours = cls(3, 5, backend=backend, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _nn_under_cpu_autocast(ref, x):
    """nn's result under CPU bf16 autocast. On a CPU whose oneDNN cannot build a bf16 LSTM (nn.LSTM raises
    "could not create a primitive descriptor" there), what nn.LSTM computes elsewhere: the same LSTM run in bf16
    throughout, on torch's native kernels (the values and dtypes oneDNN's bf16 LSTM returns)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ref(x)
    except RuntimeError as e:
        if "primitive descriptor" not in str(e) or not isinstance(ref, nn.LSTM):
            raise
    return _lstm_in_bf16_natively(ref, x)


def _lstm_in_bf16_natively(ref, x, hx=None):
    import copy

    bf16 = lambda t: t.to(torch.bfloat16)  # noqa: E731
    with torch.backends.mkldnn.flags(enabled=False):
        m = copy.deepcopy(ref).to(torch.bfloat16)
        return m(bf16(x)) if hx is None else m(bf16(x), tuple(map(bf16, hx)))


def test_the_bf16_stand_in_for_onednn_lstm_agrees_with_it():
    """Where oneDNN's bf16 LSTM runs, the stand-in used on CPUs where it cannot has its dtypes and values."""
    ref, _ = _pair("lstm", torch.float32, "reference")
    x = rand(6, 3, 3, dtype=torch.float32, device=CPU)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = ref(x)
    except RuntimeError as e:
        pytest.skip(f"this CPU's oneDNN has no bf16 LSTM to compare with: {e}")
    got = _lstm_in_bf16_natively(ref, x)
    assert _dtypes(got) == _dtypes(want) == (torch.bfloat16, (torch.bfloat16, torch.bfloat16))
    for g, w in zip(_flat(got), _flat(want)):
        assert_close(g.double(), w.double(), torch.bfloat16)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "no-onednn"])
@pytest.mark.parametrize("kind, kw, packed", AUTOCAST_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cpu_autocast_dtypes_and_values_as_nn(kind, kw, packed, dtype, onednn):
    """Under CPU autocast every output has nn's dtype (float64 is never cast) and nn's values to the
    precision of the dtype it ran in, with torch's oneDNN on (nn.LSTM then runs oneDNN's bf16 LSTM) and off."""
    ref, ours = _pair(kind, dtype, "reference", **kw)
    if kind.endswith("cell"):
        x = rand(4, 3, dtype=dtype, device=CPU)
    else:
        x = rand(6, 3, 3, dtype=dtype, device=CPU)
        if packed:
            x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 4, 2]))
    with torch.backends.mkldnn.flags(enabled=onednn):
        want = _nn_under_cpu_autocast(ref, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = ours(x)
    assert _dtypes(got) == _dtypes(want)
    for g, w in zip(_flat(got), _flat(want)):
        if dtype == torch.float64:  # untouched by autocast: nn's float64 result
            assert_close(g, w, torch.float64)
        else:
            assert_close(g.double(), w.double(), torch.bfloat16)


@pytest.mark.parametrize("kind", ["gru", "gru_cell", "lstm_cell", "rnn", "lstm"])
@pytest.mark.parametrize("x_dtype, state_dtype", [(torch.bfloat16, None), (torch.bfloat16, torch.float32),
                                                  (torch.float16, None), (torch.float32, torch.bfloat16)],
                         ids=["bf16", "bf16-fp32state", "fp16", "fp32-bf16state"])
def test_cpu_autocast_input_of_another_dtype_than_the_weights_as_nn(kind, x_dtype, state_dtype):
    """An fp32 module under CPU autocast fed a bf16 input (what an autocast Linear or conv returns), or a state
    of another dtype: nn's dtypes and values (the GRUs and LSTMCell promote the autocast dtype with the
    state's)."""
    ref, ours = _pair(kind, torch.float32, "reference")
    cell = kind.endswith("cell")
    x = rand(*((4, 3) if cell else (6, 3, 3)), dtype=torch.float32, device=CPU).to(x_dtype)
    args = (x,)
    if state_dtype is not None:
        h = rand(*((4, 5) if cell else (4, 3, 5)), dtype=torch.float32, device=CPU).to(state_dtype)
        args = (x, (h, h.clone()) if "lstm" in kind else h)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = ref(*args)
    except RuntimeError as e:  # this CPU's oneDNN has no bf16 LSTM: nn.LSTM computes in bf16 elsewhere
        if "primitive descriptor" not in str(e):
            raise
        want = _lstm_in_bf16_natively(ref, *args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours(*args)
    assert _dtypes(got) == _dtypes(want)
    for g, w in zip(_flat(got), _flat(want)):
        assert_close(g.double(), w.double(), torch.bfloat16)


def test_autocast_keeps_float64_on_the_triton_backend():
    ref, ours = _pair("lstm_cell", torch.float64, "triton")
    ref, ours = ref.to(DEVICE), ours.to(DEVICE)
    lin = nn.Linear(5, 1).double().to(DEVICE)
    x = rand(4, 3)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        want, got = ref(x), ours(x)
        lin(got[0])  # a float64 program goes on in float64
    assert _dtypes(got) == _dtypes(want) == (torch.float64, torch.float64)
    assert_close(got[0], want[0], torch.float64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast needs a GPU")
@pytest.mark.parametrize("kind, kw, packed", AUTOCAST_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cuda_autocast_dtypes_as_nn(kind, kw, packed, dtype):
    ref, ours = _pair(kind, dtype, "auto", **kw)
    ref, ours = ref.cuda(), ours.cuda()
    x = rand(4, 3, dtype=dtype, device="cuda") if kind.endswith("cell") else rand(6, 3, 3, dtype=dtype, device="cuda")
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 4, 2]))
    with torch.autocast("cuda", dtype=torch.float16):
        want, got = ref(x), ours(x)
    assert _dtypes(got) == _dtypes(want)


# --- the public name: fusedrnn, next to a program's own models / kernels packages ---------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

USER_PROGRAM = r'''
import io, pickle, sys
import torch
from torch import nn

import models                                   # the program's own package, first on sys.path
from models.encoder import Encoder
import kernels
from fusedrnn import LSTM, RNN, LSTMCell, RNNCell, UseGateLSTM, swap_rnns
import fusedrnn.models, fusedrnn.kernels.reference
from models.decoder import Decoder              # still the program's own, after fusedrnn was imported

assert models.WHOSE == "user" and kernels.WHOSE == "user", (models.__file__, kernels.__file__)
assert Encoder.WHOSE == "user" and Decoder.WHOSE == "user"
assert sys.modules["models"] is models and fusedrnn.models is not models
assert LSTM.__module__ == "fusedrnn.models.lstm"
enc = swap_rnns(Encoder())
assert type(enc.rnn) is LSTM
y, _ = enc.rnn(torch.randn(4, 2, 3))
buf = io.BytesIO(); torch.save(enc, buf); buf.seek(0)
with torch.serialization.safe_globals([Encoder]):
    back = torch.load(buf, weights_only=True)
assert type(back.rnn) is LSTM and torch.equal(back.rnn.weight_hh_l0, enc.rnn.weight_hh_l0)
print("ok")
'''


def _user_packages(tmp_path):
    for pkg in ("models", "kernels"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text('WHOSE = "user"\n')
    (tmp_path / "models" / "encoder.py").write_text(
        "from torch import nn\n\n\nclass Encoder(nn.Module):\n    WHOSE = 'user'\n\n"
        "    def __init__(self):\n        super().__init__()\n        self.rnn = nn.LSTM(3, 4)\n")
    (tmp_path / "models" / "decoder.py").write_text("class Decoder:\n    WHOSE = 'user'\n")
    (tmp_path / "prog.py").write_text(USER_PROGRAM)


def _run(tmp_path, *pythonpath, code=None):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath), TRITON_INTERPRET="1")
    args = [sys.executable, "-c", code] if code else [sys.executable, str(tmp_path / "prog.py")]
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def test_user_models_package_and_fusedrnn_in_one_program(tmp_path):
    """A program with its own ``models`` and ``kernels`` packages, first on sys.path, imports ours as
    ``fusedrnn`` from a source checkout (PYTHONPATH=<repo>, no install); both work side by side."""
    _user_packages(tmp_path)
    r = _run(tmp_path, tmp_path, ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_checkout_short_names_are_fusedrnn_modules(tmp_path):
    """Without a package of the program's own, the checkout's ``models`` / ``kernels`` are the very modules of
    ``fusedrnn.models`` / ``fusedrnn.kernels`` (one copy: one registration of the custom ops)."""
    code = ("import models, models.lstm, kernels.lstm, fusedrnn, fusedrnn.kernels.lstm\n"
            "from models.usegate import UseGateLSTM\n"
            "assert models is fusedrnn.models and models.lstm is fusedrnn.models.lstm\n"
            "assert kernels.lstm is fusedrnn.kernels.lstm and UseGateLSTM is fusedrnn.UseGateLSTM\n"
            "assert models.LSTM is fusedrnn.LSTM and models.lstm.__spec__.name == 'fusedrnn.models.lstm'\n"
            "print('ok')\n")
    r = _run(tmp_path, ROOT, code=code)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


# --- PackedSequence and dropout between layers: nn.LSTM's masks ----------------------------------------------
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=cpu_triton)])
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_packed_dropout_draws_nn_masks(kind, backend, enforce_sorted):
    """nn drops the packed data rows between layers: with the same seed the outputs, the final states, the
    gradients and the next random number are nn's (on CPU: on CUDA nn's dropout is cuDNN's own)."""
    torch.manual_seed(0)
    cls_nn, cls = (nn.LSTM, LSTM) if kind == "lstm" else (nn.RNN, RNN)
    kw = dict(num_layers=3, dropout=0.4, bidirectional=True, batch_first=True, dtype=torch.float64)
    ref, ours = cls_nn(4, 3, **kw), cls(4, 3, backend=backend, **kw)
    ours.load_state_dict(ref.state_dict())
    x = rand(3, 5, 4, device=CPU)
    lengths = torch.tensor([5, 3, 2] if enforce_sorted else [3, 5, 2])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    results = []
    for m in (ref, ours):
        torch.manual_seed(1)
        out, hidden = m(packed)
        hidden = hidden if isinstance(hidden, tuple) else (hidden,)
        grads = torch.autograd.grad((out.data ** 2).sum() + sum((h * 1.5).sum() for h in hidden),
                                    list(m.parameters()))
        results.append(([out.data, *hidden, *grads], torch.rand(3)))
    (want, want_next), (got, got_next) = results
    assert torch.equal(got_next, want_next), "the RNG moved on differently"
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, torch.float64, f"tensor {i}")


# --- export and legacy paths: ONNX, torch.jit.trace, torch.jit.script ----------------------------------------
EXPORT_MODULES = [
    pytest.param(lambda b: LSTM(3, 5, num_layers=2, bidirectional=True, backend=b), (6, 2, 3), id="lstm"),
    pytest.param(lambda b: LSTM(3, 5, proj_size=2, batch_first=True, backend=b), (2, 6, 3), id="lstm-proj"),
    pytest.param(lambda b: RNN(3, 5, num_layers=2, nonlinearity="relu", backend=b), (6, 2, 3), id="rnn-relu"),
    pytest.param(lambda b: LSTMCell(3, 5, backend=b), (2, 3), id="lstm_cell"),
    pytest.param(lambda b: RNNCell(3, 5, backend=b), (2, 3), id="rnn_cell"),
    pytest.param(lambda b: UseGateLSTM(3, 5, backend=b), (6, 2, 3), id="usegate"),
]


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("make, shape", EXPORT_MODULES)
def test_onnx_export_runs_in_onnxruntime(make, shape, tmp_path):
    """The fused path (backend="triton", what "auto" is on CUDA) exports to ONNX and onnxruntime computes
    what the module computes."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    m = make("triton").to(DEVICE).eval()
    x = rand(*shape, dtype=torch.float32)
    with torch.no_grad():
        want = _flat(m(x))
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(m, (x,), str(path), dynamo=True, verbose=False)
    assert not [w for w in caught if "_flat_weights" in str(w.message)]  # nn's bookkeeping, not refreshed
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = rand(*shape, dtype=torch.float32)  # fresh values: nothing of the first input baked in
    got = sess.run(None, {sess.get_inputs()[0].name: x2.cpu().numpy()})
    with torch.no_grad():
        want = _flat(m(x2))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert_close(torch.from_numpy(g), w.cpu(), torch.float32)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("make, op", [
    pytest.param(lambda: LSTM(3, 4, num_layers=2, bidirectional=True), "LSTM", id="lstm"),
    pytest.param(lambda: GRU(3, 4, batch_first=True), "GRU", id="gru"),
    pytest.param(lambda: RNN(3, 4, nonlinearity="relu"), "RNN", id="rnn-relu"),
])
def test_trace_and_onnx_of_the_cpu_reference_path_replay_at_another_length(make, op, tmp_path):
    """On CPU "auto" is the reference, whose Python time loop a trace would unroll: under tracing it calls
    torch's op of the same function instead, so a trace made at T = 3 replays at T = 5 (values and gradients),
    and the TorchScript ONNX export holds one ONNX LSTM / GRU / RNN node that onnxruntime runs at T = 5."""
    torch.manual_seed(0)
    m = make()
    shape = lambda T: (2, T, 3) if m.batch_first else (T, 2, 3)  # noqa: E731
    x3 = rand(*shape(3), dtype=torch.float32, device=CPU)
    x5 = rand(*shape(5), dtype=torch.float32, device=CPU).requires_grad_(True)
    traced = torch.jit.trace(m, (x3,))
    for f in (traced, m):
        out = f(x5)[0]
        grads = torch.autograd.grad((out * out).sum(), [x5, *m.parameters()])
        if f is traced:
            want = [out, *grads]
    for g, w in zip([out, *grads], want):
        assert_close(w, g, torch.float32)

    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = str(tmp_path / "m.onnx")
    torch.onnx.export(m, (x3,), path, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {1 if m.batch_first else 0: "T"}})
    assert op in {n.op_type for n in onnx.load(path).graph.node}
    x5 = x5.detach()
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x5.numpy()})[0]
    assert_close(torch.from_numpy(got), m(x5)[0].detach(), torch.float32)


@pytest.mark.parametrize("grad_at_trace", [True, False], ids=["traced-with-grad", "traced-under-no_grad"])
def test_jit_trace_of_the_fused_path(grad_at_trace):
    """torch.jit.trace passes its own check (no grad-dependent constant in the graph), generalises to a new
    sequence length, and a module traced under no_grad still backprops to nn's gradients."""
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, num_layers=2, dtype=torch.float64, device=DEVICE)
    m = LSTM(3, 4, num_layers=2, backend="triton", dtype=torch.float64, device=DEVICE)
    m.load_state_dict(ref.state_dict())
    with torch.set_grad_enabled(grad_at_trace):
        traced = torch.jit.trace(m, (rand(5, 2, 3),))  # check_trace=True: reruns and compares the graphs
    x = rand(7, 2, 3, requires_grad=True)
    (y, (h, c)), (y_ref, (h_ref, c_ref)) = traced(x), ref(x)
    for g, w in ((y, y_ref), (h, h_ref), (c, c_ref)):
        assert_close(g.detach(), w.detach(), torch.float64)
    loss, loss_ref = (y ** 2).sum() + c.sum(), (y_ref ** 2).sum() + c_ref.sum()
    got = torch.autograd.grad(loss, [x, *m.parameters()])
    want = torch.autograd.grad(loss_ref, [x, *ref.parameters()])
    for g, w in zip(got, want):
        assert_close(g, w, torch.float64)


@pytest.mark.parametrize("make, shape", EXPORT_MODULES)
def test_jit_script_fails_at_once_naming_what_works(make, shape):
    m = make("auto")
    for target in (m, nn.Sequential(m)):
        with pytest.raises(RuntimeError, match=r"torch\.jit\.script.*torch\.compile.*torch\.export"):
            torch.jit.script(target)


# --- PackedSequence under torch.compile ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("case", ["sorted-fullgraph", "unsorted", "sorted-with-h0"])
def test_compile_packed_sequence_without_graph_break(case, backend):
    """A PackedSequence through the compiled module: one graph, no graph break from our code, nn's outputs and
    gradients. Sorted input without h_0 has its batch size only in batch_sizes' values (data-dependent):
    ``fullgraph=True`` traces it; with a shape that holds it (unsorted input, h_0) even default mode does."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    ref = nn.LSTM(2, 3, bidirectional=True, dtype=torch.float64, device=DEVICE)
    m = LSTM(2, 3, bidirectional=True, backend=backend, dtype=torch.float64, device=DEVICE)
    m.load_state_dict(ref.state_dict())
    lengths = torch.tensor([4, 3, 2] if case.startswith("sorted") else [3, 4, 2])
    packed = torch.nn.utils.rnn.pack_padded_sequence(rand(4, 3, 2), lengths,
                                                     enforce_sorted=case.startswith("sorted"))
    hx = (rand(2, 3, 3), rand(2, 3, 3)) if case.endswith("h0") else None
    torch._dynamo.reset()
    counters.clear()
    cnt = CompileCounter()
    compiled = torch.compile(m, backend=cnt, fullgraph=case.endswith("fullgraph"))
    got, want = compiled(packed, hx), ref(packed, hx)
    assert cnt.frame_count == 1 and not counters["graph_break"], dict(counters["graph_break"])
    (out, (h, c)), (out_ref, (h_ref, c_ref)) = got, want
    for g, w in ((out.data, out_ref.data), (h, h_ref), (c, c_ref)):
        assert_close(g.detach(), w.detach(), torch.float64)
    loss = (out.data ** 2).sum() + h.sum() + c.sum()
    loss_ref = (out_ref.data ** 2).sum() + h_ref.sum() + c_ref.sum()
    grads = torch.autograd.grad(loss, list(m.parameters()))
    for g, w in zip(grads, torch.autograd.grad(loss_ref, list(ref.parameters()))):
        assert_close(g, w, torch.float64)
