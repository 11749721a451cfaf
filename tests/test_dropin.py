"""Drop-in behaviour in real programs: constructor errors as torch.nn's, whole-model checkpoints loaded with
``weights_only=True``, autocast following torch's casting rules, and the public ``fusedrnn`` import name."""
import io

import pytest
import torch
from torch import nn

import models
from models import LSTM, RNN, LSTMCell, RNNCell, UseGateLSTM

from .helpers import assert_close, rand


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
