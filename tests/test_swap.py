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


def test_gru_is_left_with_a_warning_and_ours_untouched():
    model = nn.Sequential(nn.GRU(3, 4), models.LSTM(3, 4))
    ours = model[1]
    with pytest.warns(UserWarning, match="GRU"):
        swap_rnns(model)
    assert type(model[0]) is nn.GRU and model[1] is ours


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
