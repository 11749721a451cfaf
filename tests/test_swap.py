"""swap_rnns: every nn.LSTM / nn.RNN / nn.LSTMCell / nn.RNNCell inside a model is replaced in place, weights,
dtype, device, requires_grad and train/eval mode kept, and the model computes the same thing."""
import warnings

import pytest
import torch
from torch import nn

import models
from models import swap_rnns

from .helpers import DEVICE, assert_close, rand


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.LSTM(4, 12, num_layers=2, bidirectional=True, batch_first=True, proj_size=5)
        self.blocks = nn.ModuleList([nn.RNN(10, 9, nonlinearity="relu"), nn.Sequential(nn.LSTMCell(9, 7))])
        self.cell = nn.RNNCell(7, 6, bias=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        y, (h, c) = self.enc(x)  # (B, T, 10)
        z, _ = self.blocks[0](y.transpose(0, 1))
        hc = self.blocks[1][0](z[-1])
        return self.head(self.cell(hc[0])) + c.mean()


def test_swapped_model_matches_original():
    torch.manual_seed(0)
    net = Net().double().to(DEVICE)
    net.enc.weight_hh_l0.requires_grad_(False)
    net.eval()
    x = rand(3, 5, 4, requires_grad=True)
    want = net(x)
    want.sum().backward()
    g_want = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    gx_want = x.grad.clone()
    x.grad = None

    swapped = swap_rnns(net, backend="triton")
    assert swapped is net
    assert type(net.enc) is models.LSTM and type(net.blocks[0]) is models.RNN
    assert type(net.blocks[1][0]) is models.LSTMCell and type(net.cell) is models.RNNCell
    assert net.blocks[0].nonlinearity == "relu" and net.cell.bias is False and net.enc.proj_size == 5
    assert not net.training and not net.enc.training
    assert not net.enc.weight_hh_l0.requires_grad
    assert all(p.dtype == torch.float64 and p.device.type == DEVICE.type for p in net.parameters())

    net.zero_grad(set_to_none=True)
    got = net(x)
    got.sum().backward()
    assert_close(got.detach(), want.detach(), torch.float64, "output")
    assert_close(x.grad, gx_want, torch.float64, "grad x")
    g_got = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert set(g_got) == set(g_want)
    for n in g_want:
        assert_close(g_got[n], g_want[n], torch.float64, n)


def test_swap_top_level_module_and_train_mode():
    m = nn.LSTM(3, 4).train()
    new = swap_rnns(m)
    assert type(new) is models.LSTM and new.training
    for (n, a), (_, b) in zip(m.state_dict().items(), new.state_dict().items()):
        assert torch.equal(a, b), n


def test_gru_is_swapped_and_ours_untouched():
    model = nn.Sequential(nn.GRU(3, 4), models.LSTM(3, 4))
    ours = model[1]
    swap_rnns(model)
    assert type(model[0]) is models.GRU and model[1] is ours


def test_swap_warns_on_subclass():
    class MyLSTM(nn.LSTM):
        pass

    model = nn.Sequential(MyLSTM(3, 4))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        swap_rnns(model)
    assert type(model[0]) is MyLSTM and any("subclass" in str(x.message) for x in w)


def test_persistent_strategy_goes_to_lstms_only():
    model = nn.Sequential(nn.LSTM(3, 4), nn.RNN(4, 4), nn.RNNCell(4, 4))
    swap_rnns(model, strategy="persistent")
    assert model[0].strategy == "persistent" and model[1].strategy == "auto" and model[2].strategy == "auto"
    with pytest.raises(ValueError, match="strategy"):
        swap_rnns(nn.Sequential(nn.LSTM(3, 4)), strategy="fastest")


# --- swapping changes nothing but the kernels ---------------------------------------------------------------
class Tied(nn.Module):
    """The same LSTM used twice (a siamese encoder) and an LSTMCell whose input weight is tied to a Linear."""

    def __init__(self):
        super().__init__()
        enc = nn.LSTM(3, 5, num_layers=2, dropout=0.5)
        self.left, self.right = nn.Sequential(enc), nn.Sequential(enc)
        self.cell = nn.LSTMCell(5, 4)
        self.proj = nn.Linear(5, 16, bias=False)
        self.proj.weight = self.cell.weight_ih
        self.head = nn.Linear(4, 2)

    def forward(self, a, b):
        ya, _ = self.left[0](a)
        yb, _ = self.right[0](b)
        h, c = self.cell(ya[-1] * yb[-1])
        return self.head(h).sum() + self.proj(yb[-1]).sum() * 0.1


def _train(model, steps, swap_after_optimizer, backend="auto"):
    """A seeded program: batches and dropout masks come from the global RNG after the model is built."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if swap_after_optimizer:
        model = swap_rnns(model, backend=backend)
    losses = []
    for _ in range(steps):
        a, b = torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(4, 2, 3, dtype=torch.float64)
        loss = model(a, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def test_swap_draws_no_random_number():
    def program(swap):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Embedding(10, 8), nn.LSTM(8, 8, num_layers=2, dropout=0.5), nn.RNNCell(8, 3))
        if swap:
            m = swap_rnns(m)
        return torch.rand(5)

    assert torch.equal(program(True), program(False))


def test_shared_module_stays_one_module_with_the_same_parameters():
    torch.manual_seed(0)
    m = Tied()
    params = list(m.parameters())
    n_before = sum(p.numel() for p in params)
    swap_rnns(m)
    assert type(m.left[0]) is models.LSTM and m.left[0] is m.right[0]
    assert type(m.cell) is models.LSTMCell and m.proj.weight is m.cell.weight_ih
    after = list(m.parameters())
    assert len(after) == len(params) and all(p is q for p, q in zip(after, params))
    assert sum(p.numel() for p in after) == n_before


def test_seeded_training_with_dropout_and_an_earlier_optimizer_matches_nn():
    """Losses of a seeded dropout program whose optimizer is built before the swap equal nn's step for step
    (the same masks and batches are drawn, and the optimizer updates the weights the swapped model uses)."""
    torch.manual_seed(0)
    ref, want = _train(Tied().double().train(), 4, swap_after_optimizer=False)
    torch.manual_seed(0)
    got_model, got = _train(Tied().double().train(), 4, swap_after_optimizer=True)
    assert type(got_model.left[0]) is models.LSTM
    assert len(set(want)) == 4  # the weights did move
    for step, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= 1e-10 * abs(w), (step, g, w)
    for (n, p), (_, q) in zip(ref.named_parameters(), got_model.named_parameters()):
        assert_close(q.detach(), p.detach(), torch.float64, n)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors on the triton backend need the interpreter")
def test_seeded_training_triton_backend_matches_nn():
    torch.manual_seed(1)
    _, want = _train(Tied().double().train(), 2, swap_after_optimizer=False)
    torch.manual_seed(1)
    _, got = _train(Tied().double().train(), 2, swap_after_optimizer=True, backend="triton")
    for step, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= 1e-10 * abs(w), (step, g, w)


def test_hooks_and_mode_move_to_the_new_module():
    m = nn.Sequential(nn.LSTM(3, 4), nn.RNNCell(4, 2)).eval()
    m[0].train()  # a mode different from the parent's is kept
    calls = []
    h1 = m[0].register_forward_hook(lambda mod, inp, out: calls.append(("fwd", type(mod).__name__)))
    m[0].register_forward_pre_hook(lambda mod, inp: calls.append(("pre", type(mod).__name__)))
    m[1].register_full_backward_hook(lambda mod, gin, gout: calls.append(("bwd", type(mod).__name__)))
    m[0].weight_hh_l0.register_hook(lambda g: calls.append(("param", None)))
    m[0].note = "user attribute"
    swap_rnns(m)
    assert m[0].training and not m[1].training and m[0].note == "user attribute"
    x = torch.randn(2, 3, 3, requires_grad=True)
    y, _ = m[0](x)
    m[1](y[-1]).sum().backward()
    assert calls == [("pre", "LSTM"), ("fwd", "LSTM"), ("bwd", "RNNCell"), ("param", None)]
    h1.remove()
    calls.clear()
    m[0](x)
    assert calls == [("pre", "LSTM")]


class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.GRU(4, 6, num_layers=2, bidirectional=True, dropout=0.3)
        self.proj = nn.LSTM(12, 5, proj_size=3)
        self.dec = nn.ModuleList([nn.GRUCell(3, 5), nn.LSTMCell(5, 4), nn.RNNCell(4, 3, nonlinearity="relu")])

    def forward(self, x):
        y, _ = self.enc(x)
        y, _ = self.proj(y)
        h = self.dec[0](y[-1])
        return self.dec[2](self.dec[1](h)[0])


def test_unswap_rnns_gives_back_nn_modules_with_the_same_parameters():
    """unswap_rnns undoes swap_rnns in place: torch.nn's classes, the same Parameter objects, hooks, mode and
    user attributes, nn's own output bit for bit; its whole-model pickle names no fusedrnn class."""
    import io

    from fusedrnn import UseGateLSTM, unswap_rnns

    torch.manual_seed(0)
    net = Seq2Seq().train()
    ref = Seq2Seq().train()
    ref.load_state_dict(net.state_dict())
    params = [id(p) for p in net.parameters()]
    net.dec[1].tag = "decoder"
    calls = []
    hook = net.enc.register_forward_hook(lambda *a: calls.append(1))

    swap_rnns(net)
    assert type(net.enc) is models.GRU and type(net.dec[1]) is models.LSTMCell
    assert unswap_rnns(net) is net
    assert [type(m) for m in net.modules()] == [type(m) for m in ref.modules()]
    assert [id(p) for p in net.parameters()] == params
    assert net.dec[1].tag == "decoder" and not hasattr(net.enc, "backend") and net.enc.training
    for (k, a), (k2, b) in zip(net.state_dict().items(), ref.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = rand(5, 2, 4, dtype=torch.float32, device=torch.device("cpu"))
    torch.manual_seed(1)
    got = net(x)
    torch.manual_seed(1)
    assert torch.equal(got, ref(x)) and calls == [1]
    hook.remove()  # the user's handle still works
    buf = io.BytesIO()
    torch.save(net, buf)
    assert b"fusedrnn" not in buf.getvalue()
    swap_rnns(net)  # and there again
    assert type(net.proj) is models.LSTM and [id(p) for p in net.parameters()] == params

    lone = swap_rnns(nn.GRU(3, 4))  # the model itself, and a module with no nn counterpart
    assert type(unswap_rnns(lone)) is nn.GRU
    holder = nn.Sequential(UseGateLSTM(3, 4))
    with pytest.warns(UserWarning, match="UseGateLSTM"):
        unswap_rnns(holder)
    assert type(holder[0]) is UseGateLSTM
