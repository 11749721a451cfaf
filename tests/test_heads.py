"""Multi-head (block-diagonal) LSTM / GRU / RNN: ``num_heads=`` against torch.nn with the dense equivalent loaded
(outputs, final states and every gradient, fp64 to 1e-10), the dense conversions, the argument errors, and the
per-head kernels of kernels/heads.py on the triton backend (interpreter on CPU)."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fusedrnn import GRU, LSTM, RNN, dense_to_heads, heads_to_dense
from fusedrnn.models.heads import diagonal_blocks

from .helpers import DEVICE, assert_close, loss_of, rand

CELLS = {"lstm": (nn.LSTM, LSTM, {}), "gru": (nn.GRU, GRU, {}), "rnn_tanh": (nn.RNN, RNN, {}),
         "rnn_relu": (nn.RNN, RNN, dict(nonlinearity="relu"))}


def make_pair(cell, I, H, NH, dtype=torch.float64, backend="reference", **kw):
    """(torch.nn module with the dense equivalent, fusedrnn module with NH heads), same parameters."""
    nn_cls, cls, extra = CELLS[cell]
    torch.manual_seed(0)
    ours = cls(I, H, num_heads=NH, backend=backend, **extra, **kw).to(device=DEVICE, dtype=dtype)
    with torch.no_grad():  # weights of unit scale, so the fp64 comparison is not of near-zero activations
        for p in ours.parameters():
            p.copy_(rand(*p.shape, dtype=dtype, scale=0.5))
    ref = nn_cls(I, H, **extra, **kw).to(device=DEVICE, dtype=dtype)
    sd = {k: (heads_to_dense(v) if v.dim() == 3 else v) for k, v in ours.state_dict().items()}
    ref.load_state_dict(sd)
    return ref, ours


def run_both(ref, ours, x, h0, packed_lengths=None):
    """Forward and backward of both modules on the same inputs; returns [(name, ours, nn's)] of the outputs,
    final states and every gradient (inputs, states, parameters: weight_hh compared blockwise)."""
    results = []
    for m in (ref, ours):
        m.zero_grad()
        xi = x.detach().clone().requires_grad_(True)
        hi = tuple(h.detach().clone().requires_grad_(True) for h in h0) if h0 is not None else None
        inp = xi
        if packed_lengths is not None:
            inp = pack_padded_sequence(xi, packed_lengths, batch_first=m.batch_first, enforce_sorted=False)
        hx = None if hi is None else (hi if len(hi) == 2 else hi[0])
        out, state = m(inp, hx)
        if packed_lengths is not None:
            out = pad_packed_sequence(out, batch_first=m.batch_first)[0]
        states = state if isinstance(state, tuple) else (state,)
        loss_of([out, *states]).backward()
        grads = {"x": xi.grad}
        if hi is not None:
            grads.update({f"h0[{i}]": h.grad for i, h in enumerate(hi)})
        for name, p in m.named_parameters():
            g = p.grad
            if m is ref and name.startswith("weight_hh"):
                g = diagonal_blocks(g, ours.num_heads)
            grads[name] = g
        results.append(dict(out=out, **{f"state{i}": s for i, s in enumerate(states)}, **grads))
    return [(k, results[1][k], results[0][k]) for k in results[0]]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("layout", ["plain", "bidir_batch_first_h0", "packed"])
def test_reference_matches_nn_with_dense_equivalent(cell, layout):
    T, B, I, H, NH = 5, 3, 4, 8, 2
    kw = dict(num_layers=2)
    if layout == "bidir_batch_first_h0":
        kw.update(bidirectional=True, batch_first=True)
    ref, ours = make_pair(cell, I, H, NH, **kw)
    D = 2 if ours.bidirectional else 1
    x = rand(B, T, I) if ours.batch_first else rand(T, B, I)
    h0 = None
    if layout != "plain":
        h0 = (rand(2 * D, B, H),) + ((rand(2 * D, B, H),) if cell == "lstm" else ())
    lengths = torch.tensor([3, 5, 2]) if layout == "packed" else None
    for name, a, b in run_both(ref, ours, x, h0, lengths):
        assert_close(a, b, torch.float64, f"{cell} {layout} {name}")


def test_dropout_as_nn():
    ref, ours = make_pair("lstm", 3, 8, 4, num_layers=3, dropout=0.5)
    x = rand(4, 2, 3)
    outs = []
    for m in (ref, ours):
        torch.manual_seed(5)
        outs.append(m(x)[0])
    assert_close(outs[1], outs[0], torch.float64, "dropout")


def test_state_dict_shapes_and_default():
    m = GRU(3, 12, num_heads=3, num_layers=2, bidirectional=True)
    sd = m.state_dict()
    assert tuple(sd["weight_hh_l1_reverse"].shape) == (3, 12, 4)
    assert tuple(sd["weight_ih_l1"].shape) == (36, 24) and tuple(sd["bias_hh_l0"].shape) == (36,)
    assert list(sd) == list(nn.GRU(3, 12, num_layers=2, bidirectional=True).state_dict())
    assert "num_heads=3" in repr(m)
    plain = LSTM(3, 8)  # num_heads=1 is today's module: nn's state_dict
    plain.load_state_dict(nn.LSTM(3, 8).state_dict())
    assert plain.num_heads == 1 and "num_heads" not in repr(plain)


def test_dense_conversions_round_trip_and_layout():
    w = rand(3, 4 * 2, 2)  # NH=3, G=4, D=2
    dense = heads_to_dense(w)
    assert dense.shape == (4 * 6, 6)
    g, n, a, b = 2, 1, 1, 0
    assert dense[g * 6 + n * 2 + a, n * 2 + b] == w[n, g * 2 + a, b]
    assert dense[g * 6 + n * 2 + a, 0 * 2 + b] == 0
    assert torch.equal(dense_to_heads(dense, 3), w)
    assert torch.equal(dense_to_heads(heads_to_dense(w[:1]), 1), w[:1])


def test_dense_to_heads_rejects_off_diagonal():
    dense = heads_to_dense(rand(2, 3 * 4, 4))
    dense[5, 7] = 0.25  # gate 0, head 1's row 1, head 1's column 3: inside a block, fine
    dense_to_heads(dense, 2)
    dense[5, 1] = 0.5  # head 1's row, head 0's column
    with pytest.raises(ValueError, match=r"not block-diagonal.*\[5, 1\]"):
        dense_to_heads(dense, 2)
    with pytest.raises(ValueError, match="num_heads"):
        dense_to_heads(dense, 3)
    with pytest.raises(ValueError, match="weight_hh must have shape"):
        heads_to_dense(dense)


def test_constructor_errors():
    with pytest.raises(ValueError, match=r"hidden_size \(10\) must be divisible by num_heads \(4\)"):
        LSTM(3, 10, num_heads=4)
    with pytest.raises(ValueError, match="proj_size"):
        LSTM(3, 8, num_heads=2, proj_size=4)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="num_heads must be a positive int"):
            RNN(3, 8, num_heads=bad)
    LSTM(3, 8, num_heads=1, proj_size=4)  # one head: nn's module, projection included


# --- the per-head kernels (kernels/heads.py) on the triton backend ---------------------------------------------
@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the per-head kernels write starts as NaN, so an element they miss cannot pass."""
    from fusedrnn.kernels import heads as k

    real = k._alloc
    monkeypatch.setattr(k, "_alloc", lambda like, *shape, dtype=None: real(like, *shape, dtype=dtype).fill_(
        float("nan")))


@pytest.mark.parametrize("cell", list(CELLS))
def test_triton_matches_nn_fp64(cell, poisoned):
    """fp64 in the interpreter (exact dots): outputs, states and every gradient as nn's with the dense weights, to
    1e-10; D = 6 (padded to 16: masked units), packed input of unequal lengths, h0 (the layer loop, directions and
    layouts are the base's, tested on the reference backend above)."""
    T, B, I, H, NH = 3, 3, 4, 12, 2
    ref, ours = make_pair(cell, I, H, NH, backend="triton")
    h0 = (rand(1, B, H),) + ((rand(1, B, H),) if cell == "lstm" else ())
    for name, a, b in run_both(ref, ours, rand(T, B, I), h0, torch.tensor([2, 3, 1])):
        assert_close(a, b, torch.float64, f"{cell} {name}")


@pytest.mark.parametrize("cell, dtype, B", [
    ("lstm", torch.float32, 17), ("lstm", torch.float16, 5), ("lstm", torch.bfloat16, 5),
    ("gru", torch.bfloat16, 5), ("rnn_tanh", torch.float16, 5)])
def test_triton_dtypes_against_fp64(cell, dtype, B, poisoned):
    """fp32 against nn's fp32 math (1e-5 max-rel); 16-bit against the fp64 reference of the same rounded
    parameters and inputs within the dtype's relative-RMS tolerance or 1.5x PyTorch's own error in that dtype
    (tests/compare.py). D = 16, two heads; B = 17 is two batch tiles, the second masked."""
    from .compare import compare_lowp

    T, I, H, NH = 3, 8, 32, 2
    ours = make_pair(cell, I, H, NH, dtype=dtype, backend="triton")[1]
    runs = {}
    for kind, dt, backend in (("got", dtype, "triton"), ("want", torch.float64, "reference"),
                              ("plain", dtype, "reference")):
        m = make_pair(cell, I, H, NH, dtype=dt, backend=backend)[1]
        m.load_state_dict({k: v.to(dt) for k, v in ours.state_dict().items()})
        torch.manual_seed(3)
        xi = rand(T, B, I, dtype=dtype).to(dt).requires_grad_(True)
        out, state = m(xi)
        states = state if isinstance(state, tuple) else (state,)
        loss_of([out, *states]).backward()
        runs[kind] = dict(out=out, **{f"s{i}": s for i, s in enumerate(states)}, x=xi.grad,
                          **{n: p.grad for n, p in m.named_parameters()})
    if dtype == torch.float32:
        for k in runs["want"]:
            assert_close(runs["got"][k], runs["want"][k], dtype, f"{cell} fp32 {k}")
    else:
        compare_lowp(runs["got"], runs["want"], runs["plain"], dtype, f"{cell} {dtype}")


def test_heads_without_config_run_dense_kernels(monkeypatch):
    """A head size without a compile-checked per-head config runs the dense fused kernels on the dense
    equivalent: still nn's results."""
    from fusedrnn.kernels import heads as k

    monkeypatch.setattr(k, "supported", lambda dtype, D, cell="lstm": False)
    ref, ours = make_pair("lstm", 3, 8, 2, backend="triton")
    for name, a, b in run_both(ref, ours, rand(3, 2, 3), None):
        assert_close(a, b, torch.float64, f"dense fallback {name}")


def _offset_by_one(t):
    """A copy of ``t`` that starts one element into its storage: contiguous, but not 16-byte aligned."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape).copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16
    return out


@pytest.mark.parametrize("cell", ["lstm", "slstm"])
def test_misaligned_inputs_are_copied_to_aligned_buffers(cell, monkeypatch, poisoned):
    """The per-head kernels are compile-checked in the aligned variant only: inputs that start one element into
    their storage (a slice's offset) reach the kernels as 16-byte aligned copies, with the results of aligned
    inputs."""
    from fusedrnn.kernels import heads as k

    seen = []
    real = k._launch

    def spy(kernel, kind, args, *rest):
        seen.extend((kind, n) for n, v in args.items() if isinstance(v, torch.Tensor) and v.data_ptr() % 16)
        return real(kernel, kind, args, *rest)

    monkeypatch.setattr(k, "_launch", spy)
    c = k.CELLS[cell]
    T, B, NH, D = 3, 3, 2, 6
    H = NH * D
    torch.manual_seed(0)
    xp, w, h0 = rand(T, B, c.G * H), rand(NH, c.G * D, D, scale=0.5), rand(B, H)
    s0 = rand(c.NS, B, H) if cell == "lstm" else torch.stack([rand(B, H), 1 + rand(B, H).abs(), rand(B, H)])
    lengths = torch.tensor([2, 3, 1], dtype=torch.int32, device=DEVICE)
    dy, ds_n = rand(T, B, H), rand(c.NS, B, H)
    runs = []
    for prep in (lambda t: t, _offset_by_one):
        y, s_n, gates, aux = k.heads_fwd(cell, prep(xp), prep(w), prep(h0), prep(s0), None, prep(lengths))
        grads = k.heads_bwd(cell, prep(dy), prep(w), prep(h0), prep(s0), prep(y), prep(ds_n),
                            None if gates is None else prep(gates), None if aux is None else prep(aux), prep(lengths))
        runs.append((y, s_n, *grads))
    assert not seen, f"misaligned tensors reached the kernels: {seen}"
    for a, b in zip(*runs):
        assert torch.isfinite(a).all() and torch.equal(a, b)
