"""The reference path as one op under torch.compile (models/reference_op.py): a new sequence length does not
recompile, the compiled model gives the eager values and gradients, and the op passes torch.library.opcheck."""
import pytest
import torch

from fusedrnn import LSTM
from models.reference_op import REFERENCES, reference_layer, reference_layer_bwd

from .helpers import assert_close, loss_of, rand

CPU = torch.device("cpu")  # what "auto" runs the reference on
F64 = torch.float64


def test_compile_dynamic_one_graph_for_every_sequence_length():
    """torch.compile(dynamic=True) over the CPU reference path ("auto" on CPU) of a bidirectional LSTM: three
    sequence lengths, one graph (each direction one ``fusedrnn::reference_layer`` node, not a loop unrolled at the
    traced length), the eager outputs and gradients. (The other cells share ``run_reference``; their op's fake
    implementation is checked by opcheck below.)"""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = LSTM(3, 4, bidirectional=True, batch_first=True, dtype=F64, device=CPU)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, dynamic=True, fullgraph=True)
    frames = []
    for T in (5, 7, 10):  # distinct from every other size: equal sizes would share one symbol
        x = rand(2, T, 3, device=CPU, requires_grad=True)
        results = []
        for f in (compiled, model):
            y, (h, c) = f(x)
            results.append([y, h, c, *torch.autograd.grad(loss_of([y, h, c]), [x, *model.parameters()])])
        frames.append(counter.frame_count)
        for i, (got, want) in enumerate(zip(*results)):
            assert_close(got.detach(), want.detach(), F64, f"T={T}, tensor {i}")
    assert frames == frames[:1] * 3, f"recompiled for a new sequence length: frames {frames}"
    ops = [n for g in counter.graphs for n in g.graph.nodes if n.target is torch.ops.fusedrnn.reference_layer.default]
    assert len(ops) == 2, f"{len(ops)} reference ops in the graph, expected one per direction"


def _case(cell, variant):
    """(x, states, weights, lengths, keep) for ``reference_layer``, small random values. "full": every optional
    weight (biases, the LSTM's projection, a zoneout mask), no lengths; "bare": none of them (empty tensors, as
    ``run_reference`` passes absent weights; zoneout by the eval keep weight), lengths."""
    T, B, I, H, P = 3, 2, 3, 4, 3
    full = variant == "full"
    g = lambda *s: rand(*s, device=CPU, scale=0.5, requires_grad=True)  # noqa: E731
    none = torch.empty(0, dtype=F64)
    opt = lambda *s: g(*s) if full else none  # noqa: E731
    lengths = None if full else torch.tensor([3, 1], dtype=torch.int32)
    if cell in ("lnlstm", "lngru"):  # x is the input projection
        G = 4 if cell == "lnlstm" else 3
        mask = (torch.rand(T, B, H, dtype=F64) < 0.7).to(F64) if full else none
        x, states = g(T, B, G * H), [g(B, H) for _ in range(G - 2)]
        rest = [g(H), g(H)] if cell == "lnlstm" else [opt(3 * H)]
        return x, states, [g(H, G * H), g(G * H), *rest, mask], lengths, 0.75
    G = {"lstm": 4, "usegate": 4, "slstm": 4, "gru": 3}.get(cell, 1)
    x = g(T, B, I)
    if cell == "lstm":  # projected (P) with the biases
        Q = P if full else H
        return x, [g(B, Q), g(B, H)], [g(4 * H, I), g(4 * H, Q), opt(4 * H), opt(4 * H), opt(P, H)], lengths, 1.0
    states = [g(B, H) for _ in range({"usegate": 2, "slstm": 4}.get(cell, 1))]
    w_hh = g(2, 4 * 2, 2) if cell == "slstm" else g(G * H, H)  # sLSTM: 2 heads of 2 units
    weights = [g(G * H, I), w_hh, opt(G * H), opt(G * H)] + ([g(H, H), opt(H)] if cell == "usegate" else [])
    return x, states, weights, lengths, 1.0


def _python(cell, x, states, weights, lengths, keep, resets):
    return REFERENCES[cell](x, states, [w if w.numel() else None for w in weights], lengths, keep, resets)


@pytest.mark.parametrize("cell", sorted(REFERENCES))
def test_reference_op_opcheck_and_gradients(cell):
    """opcheck of the op and its backward op (schema, fake implementation, autograd registration; AOT dispatch
    with dynamic shapes for one case, the sLSTM with every weight: it compiles); the op's values,
    gradients and (create_graph=True) second-order gradients are the Python reference's."""
    torch.manual_seed(1)
    for variant in ("full", "bare"):
        checks = ("test_schema", "test_faketensor", "test_autograd_registration")
        checks += ("test_aot_dispatch_dynamic",) if (cell, variant) == ("slstm", "full") else ()
        case = _case(cell, variant)
        resets = None  # the full case of every cell with episode resets (the LayerNorm cells take none) restarts rows
        if variant == "full" and not cell.startswith("ln"):
            resets = torch.rand(case[0].shape[:2]) < 0.4
            resets[1, 0] = True
        args = (*case, resets)
        x, states, weights, lengths, keep, _ = args
        torch.library.opcheck(reference_layer, (cell, *args), test_utils=checks)
        inputs = [t for t in (x, *states, *weights) if t.requires_grad]
        results = []
        for f in (reference_layer, _python):
            outs = f(cell, *args)
            grads = torch.autograd.grad(loss_of(outs), inputs, create_graph=True, materialize_grads=True)
            second = torch.autograd.grad(sum((d ** 3).sum() for d in grads), inputs, materialize_grads=True)
            results.append([*outs, *grads, *second])
        for i, (got, want) in enumerate(zip(*results)):
            assert_close(got.detach(), want.detach(), F64, f"{cell} {variant}: tensor {i}")
        n = 1 + len(states)
        d = [t.detach() for t in (x, *states, *weights)]
        need = [t.requires_grad for t in (x, *states, *weights)]
        out_grads = [rand(*o.shape, device=CPU) for o in results[1][:n]]
        torch.library.opcheck(reference_layer_bwd, (cell, out_grads, d[0], d[1:n], d[n:], lengths, keep, need, resets),
                              test_utils=checks)
