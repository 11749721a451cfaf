"""Bad inputs get the error torch.nn gives (same exception type, a message naming the problem), and edge
shapes (empty batch, T = 0) behave as in torch.nn."""
import pytest
import torch

from models import LSTM, RNN

from .helpers import DEVICE


def _pair(kind="lstm", **kw):
    torch.manual_seed(0)
    if kind == "lstm":
        ref, ours = torch.nn.LSTM(3, 4, **kw), LSTM(3, 4, backend="triton", **kw)
    else:
        ref, ours = torch.nn.RNN(3, 4, **kw), RNN(3, 4, backend="triton", **kw)
    ours.load_state_dict(ref.state_dict())
    return ref.to(DEVICE), ours.to(DEVICE)


def _same_error(ref, ours, *args, match=None):
    with pytest.raises(Exception) as e_ref:
        ref(*args)
    with pytest.raises(type(e_ref.value), match=match) as e_ours:
        ours(*args)
    assert str(e_ours.value), "empty error message"
    return e_ours.value


x3 = lambda *s: torch.randn(*s, device=DEVICE)  # noqa: E731


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_wrong_rank(kind):
    ref, ours = _pair(kind)
    _same_error(ref, ours, x3(2, 2, 3, 1), match="2D or 3D")


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_wrong_feature_size(kind):
    ref, ours = _pair(kind)
    _same_error(ref, ours, x3(2, 2, 5), match="input_size. Expected 3, got 5")


def test_h0_c0_shapes():
    ref, ours = _pair("lstm", num_layers=2)
    x = x3(2, 3, 3)
    good = lambda: (x3(2, 3, 4), x3(2, 3, 4))  # noqa: E731
    _same_error(ref, ours, x, (x3(1, 3, 4), good()[1]), match=r"hidden\[0\] size \(2, 3, 4\)")
    _same_error(ref, ours, x, (good()[0], x3(2, 2, 4)), match=r"hidden\[1\] size \(2, 3, 4\)")
    _same_error(ref, ours, x, (x3(2, 3, 4), x3(2, 3, 5)), match=r"hidden\[1\]")
    _same_error(ref, ours, x, (x3(3, 4), x3(3, 4)), match="3-D")


def test_proj_h0_shape():
    ref, ours = _pair("lstm", proj_size=2)
    _same_error(ref, ours, x3(2, 3, 3), (x3(1, 3, 4), x3(1, 3, 4)), match=r"hidden\[0\] size \(1, 3, 2\)")


def test_rnn_h0_shape():
    ref, ours = _pair("rnn", bidirectional=True)
    _same_error(ref, ours, x3(2, 3, 3), x3(1, 3, 4), match=r"hidden size \(2, 3, 4\)")


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_input_dtype_mismatch_with_weights(kind):
    ref, ours = _pair(kind)
    _same_error(ref, ours, x3(2, 2, 3).double(), match="does not match weight dtype")


def test_state_dtype_mismatch():
    _, ours = _pair("lstm")
    with pytest.raises(RuntimeError, match="h_0 to have dtype torch.float32"):
        ours(x3(2, 2, 3), (x3(1, 2, 4).double(), x3(1, 2, 4)))
    with pytest.raises(RuntimeError, match="c_0 to have dtype torch.float32"):
        ours(x3(2, 2, 3), (x3(1, 2, 4), x3(1, 2, 4).half()))


def test_state_device_mismatch():
    ref, ours = _pair("lstm")
    meta = torch.zeros(1, 2, 4, device="meta")
    with pytest.raises(RuntimeError, match="not at the same device"):
        ours(x3(2, 2, 3), (x3(1, 2, 4), meta))


def test_unsupported_dtype_for_triton_backend():
    m = LSTM(3, 4, backend="triton").to(torch.complex64)
    with pytest.raises(RuntimeError, match="does not support dtype torch.complex64"):
        m(torch.randn(2, 2, 3, dtype=torch.complex64, device=m.weight_ih_l0.device))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="nonlinearity"):
        RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="backend"):
        LSTM(3, 4, backend="cuda")
    with pytest.raises(ValueError, match="strategy"):
        LSTM(3, 4, strategy="magic")
    for kw in [dict(proj_size=4), dict(proj_size=-1), dict(dropout=1.5)]:
        with pytest.raises(ValueError) as e_ref:
            torch.nn.LSTM(3, 4, **kw)
        with pytest.raises(type(e_ref.value)):
            LSTM(3, 4, **kw)


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_empty_sequence_raises_like_nn(kind):
    ref, ours = _pair(kind)
    _same_error(ref, ours, x3(0, 2, 3), match="sequence length to be larger than 0")


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_empty_batch_like_nn(kind):
    ref, ours = _pair(kind, num_layers=2, bidirectional=True)
    x = x3(3, 0, 3).requires_grad_(True)
    out_ref, st_ref = ref(x)
    out, st = ours(x)
    assert out.shape == out_ref.shape
    states, states_ref = (st, st_ref) if kind == "lstm" else ((st,), (st_ref,))
    for a, b in zip(states, states_ref):
        assert a.shape == b.shape
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_lstm_launcher_checks_shapes_and_dtypes():
    from kernels.lstm import lstm_fwd_sequence

    xp = torch.randn(2, 3, 16, device=DEVICE)
    w = torch.randn(16, 4, device=DEVICE)
    h0, c0 = torch.randn(3, 4, device=DEVICE), torch.randn(3, 4, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"h0: expected shape \(3, 4\), got \(2, 4\)"):
        lstm_fwd_sequence(xp, w, h0[:2], c0)
    with pytest.raises(TypeError, match="w_hh: expected dtype torch.float32, got torch.float64"):
        lstm_fwd_sequence(xp, w.double(), h0, c0)
    with pytest.raises(TypeError, match="not supported"):
        lstm_fwd_sequence(xp.to(torch.int32), w, h0, c0)
    with pytest.raises(ValueError, match="strategy"):
        lstm_fwd_sequence(xp, w, h0, c0, strategy="nope")


def _cells(kind):
    from models import LSTMCell, RNNCell

    torch.manual_seed(0)
    ref_cls, cls = (torch.nn.LSTMCell, LSTMCell) if kind == "lstm" else (torch.nn.RNNCell, RNNCell)
    ref, ours = ref_cls(3, 4), cls(3, 4, backend="triton")
    ours.load_state_dict(ref.state_dict())
    return ref.to(DEVICE), ours.to(DEVICE)


def test_lstmcell_hx_must_be_a_pair():
    ref, ours = _cells("lstm")
    x, h, c = x3(2, 3), x3(2, 4), x3(2, 4)
    assert isinstance(_same_error(ref, ours, x, torch.stack([h, c])), TypeError)
    assert isinstance(_same_error(ref, ours, x, h), TypeError)
    assert isinstance(_same_error(ref, ours, x, (h, c, h)), RuntimeError)
    assert isinstance(_same_error(ref, ours, x, (h,)), RuntimeError)
    h1, c1 = ours(x, [h, c])  # a list of two works, as in torch.nn
    assert h1.shape == c1.shape == (2, 4)


def test_unbatched_lstmcell_reads_hx0_and_hx1_like_nn():
    """Unbatched, torch.nn.LSTMCell indexes hx[0] and hx[1] of whatever it is given: one (2, H) tensor, a
    list of three."""
    ref, ours = _cells("lstm")
    x = x3(3)
    for hx in (x3(2, 4), x3(3, 4), [x3(4), x3(4), x3(4)]):
        for a, b in zip(ours(x, hx), ref(x, hx)):
            torch.testing.assert_close(a, b)
    assert isinstance(_same_error(ref, ours, x, x3(1, 4)), IndexError)
    assert isinstance(_same_error(ref, ours, x, x3(4), match="hx\\[0\\]"), ValueError)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch_sizes", [[2, 0], [1, 2]])
def test_hand_made_packed_sequence_with_impossible_batch_sizes_is_refused(kind, batch_sizes):
    """pack_* never makes a zero or a growing batch size; torch.nn runs such input to another result than a
    padded reading of it would give, so it is refused, naming batch_sizes."""
    from torch.nn.utils.rnn import PackedSequence

    from models import GRU

    m = LSTM(3, 4) if kind == "lstm" else GRU(3, 4)
    packed = PackedSequence(torch.randn(sum(batch_sizes), 3), torch.tensor(batch_sizes))
    with pytest.raises(ValueError, match="batch_sizes must be positive and non-increasing"):
        m(packed)


def test_lstm_hx_not_a_pair_like_nn():
    ref, ours = _pair("lstm")
    x, h0 = x3(5, 2, 3), x3(1, 2, 4)
    assert isinstance(_same_error(ref, ours, x, (h0,), match="hx"), IndexError)
    assert isinstance(_same_error(ref, ours, x, h0, match="hx"), IndexError)
    assert isinstance(_same_error(ref, ours, x, (h0, h0, h0), match="two hidden states"), RuntimeError)


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_cell_hidden_shape_messages_like_nn(kind):
    ref, ours = _cells(kind)
    x = x3(2, 3)

    def hx(h):
        return (h, x3(*h.shape)) if kind == "lstm" else h

    for args in [(x, hx(x3(2, 5))), (x, hx(x3(3, 4))), (x[0], hx(x3(5)))]:
        with pytest.raises(Exception) as e_ref:
            ref(*args)
        with pytest.raises(type(e_ref.value)) as e_ours:
            ours(*args)
        assert str(e_ours.value) == str(e_ref.value)
    if kind == "lstm":  # the cell state is hidden1
        with pytest.raises(RuntimeError) as e_ref:
            ref(x, (x3(2, 4), x3(2, 5)))
        with pytest.raises(RuntimeError) as e_ours:
            ours(x, (x3(2, 4), x3(2, 5)))
        assert str(e_ours.value) == str(e_ref.value)


@pytest.mark.parametrize("kind", ["lstm", "rnn", "lstm_cell", "rnn_cell"])
def test_one_parameter_cast_raises_runtime_error(kind):
    if kind.endswith("cell"):
        ref, ours = _cells(kind.split("_")[0])
        name, x = "weight_hh", x3(2, 3)
    else:
        ref, ours = _pair(kind, num_layers=2)
        name, x = "weight_hh_l1", x3(4, 2, 3)
    for m in (ref, ours):
        getattr(m, name).data = getattr(m, name).data.double()
    e = _same_error(ref, ours, x)
    assert isinstance(e, RuntimeError) and name in str(e)


def test_cn_requires_grad_like_nn():
    """c_n cannot depend on weight_hr after one step: then it does not require grad, as in torch.nn."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(2, 3, proj_size=1).double().to(DEVICE)
    ours = LSTM(2, 3, proj_size=1, backend="triton").double().to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    for m in (ref, ours):
        for n, p in m.named_parameters():
            p.requires_grad_(n == "weight_hr_l0")
    for T in (1, 3):
        x = torch.randn(T, 2, 2, dtype=torch.float64, device=DEVICE)
        (y_r, (h_r, c_r)), (y, (h, c)) = ref(x), ours(x)
        assert (y.requires_grad, h.requires_grad, c.requires_grad) == (
            y_r.requires_grad, h_r.requires_grad, c_r.requires_grad), T
        assert c.requires_grad == (T > 1)


def test_usegate_cn_requires_grad_like_reference():
    from models import UseGateLSTM

    torch.manual_seed(0)
    ref = UseGateLSTM(2, 3, backend="reference").double().to(DEVICE)
    ours = UseGateLSTM(2, 3, backend="triton").double().to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    for m in (ref, ours):
        for n, p in m.named_parameters():
            p.requires_grad_(n.startswith(("weight_u", "bias_u")))
    for T in (1, 3):
        x = torch.randn(T, 2, 2, dtype=torch.float64, device=DEVICE)
        c_r, c = ref(x)[1][1], ours(x)[1][1]
        assert c.requires_grad == c_r.requires_grad == (T > 1), T


def test_inplace_change_of_the_output_raises_in_backward():
    """Documented difference (README): the fused backward reads the returned output, so modifying it in place
    before backward is an error, as with cuDNN's nn.LSTM on CUDA."""
    _, ours = _pair("lstm")
    x = x3(5, 2, 3).requires_grad_(True)
    out, _ = ours(x)
    out += 1.0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.pow(2).sum().backward()
    out, _ = ours(x)
    (out + 1.0).pow(2).sum().backward()  # the out-of-place form works
    assert x.grad is not None
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    differences = readme[readme.index("### Differences from torch.nn"):readme.index("## How it works")]
    assert "modified by an" in differences and "cuDNN" in differences


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs the persistent kernel at any H; on a GPU "
                    "this H = 4 falls back to per_step")
def test_inplace_change_of_a_persistent_output_raises_the_readme_message():
    """With strategy "persistent" the output is a view of the kernel's state buffer: the in-place op itself
    raises, with the message the README quotes for it."""
    from pathlib import Path

    from models import GRU

    torch.manual_seed(0)
    m = GRU(3, 4, backend="triton", strategy="persistent")
    out, _ = m(torch.randn(2, 2, 3, requires_grad=True))
    with pytest.raises(RuntimeError, match="is a view and is being modified inplace") as e:
        out += 1.0
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    differences = readme[readme.index("### Differences from torch.nn"):readme.index("## How it works")]
    assert "is a view and is being modified inplace" in " ".join(differences.split()), str(e.value)
