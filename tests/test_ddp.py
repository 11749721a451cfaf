"""DistributedDataParallel with a swapped model: two gloo processes on CPU, each on half of the batch, train
to the parameters and losses one process reaches on the whole batch."""
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fusedrnn import swap_rnns

from .helpers import assert_close

STEPS, B, T = 3, 4, 3


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 5, bidirectional=True)
        self.cell = nn.RNNCell(10, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(self.cell(y[-1])).squeeze(1)


def _model(backend):
    torch.manual_seed(0)
    return swap_rnns(Tagger().double(), backend=backend)


def _data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(T, B, 3, generator=g, dtype=torch.float64), torch.randn(B, generator=g, dtype=torch.float64))
            for _ in range(STEPS)]


def _train(model, data, rows=slice(None), reduce_loss=lambda loss: loss):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for x, target in data:
        loss = ((model(x[:, rows]) - target[rows]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(reduce_loss(loss.detach()).item())
    return losses


def _worker(rank, world, store_path, out_path, backend):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        model = nn.parallel.DistributedDataParallel(_model(backend))
        half = B // world

        def mean_over_ranks(loss):
            dist.all_reduce(loss)
            return loss / world

        losses = _train(model, _data(), slice(rank * half, (rank + 1) * half), mean_over_ranks)
        if rank == 0:
            torch.save({"losses": losses, "params": [p.detach() for p in model.module.parameters()]}, out_path)
    finally:
        dist.destroy_process_group()


# gloo runs on CPU tensors: the triton backend there is the interpreter, which conftest switches on without CUDA
@pytest.mark.parametrize("backend", ["auto", pytest.param("triton", marks=pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU tensors on the triton backend need the interpreter"))])
def test_ddp_two_processes_match_one_process(backend, tmp_path):
    single = _model(backend)
    want = _train(single, _data())
    out = tmp_path / "rank0.pt"
    ctx = mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out), backend), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish in 300 s")
    got = torch.load(out, weights_only=True)
    assert len(set(want)) == STEPS  # the model did train
    for g, w in zip(got["losses"], want):
        assert abs(g - w) <= 1e-10 * abs(w), (g, w)
    for g, p in zip(got["params"], single.parameters()):
        assert_close(g, p.detach(), torch.float64)
