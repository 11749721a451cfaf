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
    x = rand(5, 2, 3, dtype=torch.float32)
    for a, b in ((model[0](x)[0], back[0](x)[0]), (model[2](x[0])[0], back[2](x[0])[0])):
        assert torch.equal(a, b)
