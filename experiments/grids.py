"""Named sweep grids. Every grid has I = H, one layer and one direction unless the command line says otherwise.

Dimensions: B batch, T steps, I input, H hidden. The recurrent cell (``CELLS``: "lstm", "gru", "rnn" = tanh
Elman) is part of a problem; a grid is run for one cell at a time (``--cell``).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

CELLS = ("lstm", "gru", "rnn")
# gate blocks of W_hh per cell: W_hh is (GATES * H, H), a step's recurrent product 2 * GATES * B * H^2 FLOPs
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
CELL_LABELS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN (tanh)"}
# the torch.nn module every cell's rows are compared with (cuDNN on CUDA)
NN_MODULES = {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN"}


@dataclass(frozen=True)
class Config:
    """One problem: batch B, steps T, hidden H, input I, layers, directions (1 or 2), and the cell ("lstm",
    "gru" or "rnn")."""

    B: int
    T: int
    H: int
    I: int
    layers: int = 1
    directions: int = 1
    cell: str = "lstm"

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose from {CELLS}")

    @property
    def label(self) -> str:
        s = f"B{self.B}-T{self.T}-H{self.H}"
        if self.I != self.H:
            s += f"-I{self.I}"
        if self.layers != 1:
            s += f"-L{self.layers}"
        if self.directions != 1:
            s += "-bi"
        if self.cell != "lstm":  # LSTM labels (and the source weights seeded from them) as before cells existed
            s += f"-{self.cell}"
        return s


BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HIDDENS = (128, 256, 512, 768, 1024, 1536, 2048)
SEQS = (64, 128, 256, 512, 1024, 2048, 4096)

# name -> (B values, T values, H values, one-line description)
GRIDS = {
    "batch": (BATCHES, (1024,), (1024,), "B in 1..256 at T=1024, H=1024"),
    "hidden": ((16,), (1024,), HIDDENS, "H in 128..2048 at B=16, T=1024"),
    "seq": ((16,), SEQS, (1024,), "T in 64..4096 at B=16, H=1024"),
    "full": (BATCHES, (1024,), HIDDENS, "every B of 'batch' x every H of 'hidden', T=1024"),
    "smoke": ((1, 4), (8,), (32,), "tiny CPU grid: B in {1, 4}, T=8, H=32 (not a benchmark)"),
}


def grid_configs(name: str, *, B=None, T=None, H=None, layers: int = 1, bidirectional: bool = False,
                 cell: str = "lstm") -> list[Config]:
    """The configs of grid ``name`` for ``cell``; ``B``/``T``/``H`` (sequences of ints) replace that axis's values.

    Returns: configs in the order B, then T, then H (I = H).
    """
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose from {sorted(GRIDS)}")
    bs, ts, hs, _ = GRIDS[name]
    bs, ts, hs = (tuple(B) if B else bs), (tuple(T) if T else ts), (tuple(H) if H else hs)
    dirs = 2 if bidirectional else 1
    return [Config(b, t, h, h, layers, dirs, cell) for b, t, h in product(bs, ts, hs)]
