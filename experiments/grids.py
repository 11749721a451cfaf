"""Named sweep grids. Every grid has I = H, one layer and one direction unless the command line says otherwise.

Dimensions: B batch, T steps, I input, H hidden. The recurrent cell (``CELLS``: "lstm", "gru", "rnn" = tanh
Elman; "slstm" xLSTM's sLSTM; "lnlstm", "lngru" Haste's LayerNorm LSTM and GRU) and its number of heads (``heads``:
block-diagonal W_hh of heads of H / heads units; the LSTM, GRU, RNN and sLSTM) are part of a problem; a grid is run
for one cell and one number of heads at a time (``--cell``, ``--heads``).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

CELLS = ("lstm", "gru", "rnn", "slstm", "lnlstm", "lngru")
# the cells cuDNN runs (torch.nn has them): their rows are compared with that module; the others with the PyTorch
# reference of their fusedrnn module (``experiments.backends``: backend "reference")
NN_CELLS = ("lstm", "gru", "rnn")
# the cells that take heads (num_heads=)
HEAD_CELLS = ("lstm", "gru", "rnn", "slstm")
# gate blocks of W_hh per cell: W_hh is (GATES * H, H) (with heads: GATES * D x D per head, D = H / heads), a step's
# recurrent product 2 * GATES * B * H * D FLOPs
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "slstm": 4, "lnlstm": 4, "lngru": 3}
CELL_LABELS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN (tanh)", "slstm": "sLSTM", "lnlstm": "LayerNorm LSTM",
               "lngru": "LayerNorm GRU"}
# the torch.nn module every cell's rows are timed beside (cuDNN on CUDA): the cell's own for the cells torch.nn has
# (the comparison baseline, the dense block-diagonal equivalent with heads), else the dense plain cell of the same
# shape (the speed anchor, backend "nn_dense": another function, so no error against it)
NN_MODULES = {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN", "slstm": "nn.LSTM", "lnlstm": "nn.LSTM",
              "lngru": "nn.GRU"}
# the plain cell whose nn module anchors each cell
NN_CELL_OF = {"lstm": "lstm", "gru": "gru", "rnn": "rnn", "slstm": "lstm", "lnlstm": "lstm", "lngru": "gru"}


@dataclass(frozen=True)
class Config:
    """One problem: batch B, steps T, hidden H, input I, layers, directions (1 or 2), the cell (``CELLS``) and its
    heads (1: a dense recurrence); ``packed``: the input is a PackedSequence of seeded random lengths
    (``experiments.sweep``: ``LENGTHS``); ``resets_p``: each (t, b) reset flag is set with this probability (0: no
    ``resets=``)."""

    B: int
    T: int
    H: int
    I: int
    layers: int = 1
    directions: int = 1
    cell: str = "lstm"
    heads: int = 1
    packed: bool = False
    resets_p: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.resets_p <= 1.0:
            raise ValueError(f"resets: a probability in [0, 1], got {self.resets_p!r}")
        if (self.packed or self.resets_p) and self.cell not in NN_CELLS:
            raise ValueError(f"--packed and --resets: the cells torch.nn has only ({', '.join(NN_CELLS)}), "
                             f"not {self.cell}")
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose from {CELLS}")
        if isinstance(self.heads, bool) or not isinstance(self.heads, int) or self.heads < 1:
            raise ValueError(f"heads must be a positive int, got {self.heads!r}")
        if self.heads > 1 and self.cell not in HEAD_CELLS:
            raise ValueError(f"heads: the {self.cell} cell has no heads (cells with heads: {', '.join(HEAD_CELLS)})")
        if self.H % self.heads:
            raise ValueError(f"heads: H={self.H} is not divisible by {self.heads} heads")

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
        if self.heads != 1:
            s += f"-h{self.heads}"
        if self.packed:
            s += "-packed"
        if self.resets_p:
            s += f"-r{self.resets_p:g}"
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
                 cell: str = "lstm", heads: int = 1, packed: bool = False, resets_p: float = 0.0) -> list[Config]:
    """The configs of grid ``name`` for ``cell`` with ``heads`` heads (``packed``, ``resets_p``: ``Config``);
    ``B``/``T``/``H`` (sequences of ints) replace that axis's values. ValueError for an unknown grid, a cell without
    heads given heads, an H the heads do not divide, or packed / resets for a cell torch.nn lacks.

    Returns: configs in the order B, then T, then H (I = H).
    """
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose from {sorted(GRIDS)}")
    bs, ts, hs, _ = GRIDS[name]
    bs, ts, hs = (tuple(B) if B else bs), (tuple(T) if T else ts), (tuple(H) if H else hs)
    dirs = 2 if bidirectional else 1
    return [Config(b, t, h, h, layers, dirs, cell, heads, packed, resets_p) for b, t, h in product(bs, ts, hs)]
