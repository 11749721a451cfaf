"""PackedSequence helpers of the drop-in modules, written with plain tensor ops (no host reads of tensor
values, no data-dependent shapes) so that ``torch.compile(fullgraph=True)`` traces them.

B batch, T steps, N = sum of the lengths (rows of the packed data).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def packed_rows(lengths: Tensor, T: int, n_rows: int) -> Tensor:
    """Indices into a time-major (T * B) flattening of the packed data's rows, in the packed order (time
    outer, batch inner, sequences sorted by decreasing length): (N,) int64. ``lengths`` (B,) on any device."""
    t = torch.arange(T, device=lengths.device).unsqueeze(1)
    valid = (t < lengths.unsqueeze(0)).reshape(-1)  # (T * B,), row-major = the packed order
    # a stable sort puts the valid positions first, in their order; N of them
    return torch.argsort((~valid).to(torch.int8), stable=True)[:n_rows]


def dropout_packed_rows(x: Tensor, rows: Tensor, p: float) -> Tensor:
    """Dropout between layers as nn.LSTM draws it for a PackedSequence: on the (N, F) packed rows of the
    (T, B, F) padded ``x``, one draw of that shape; the padding positions are left as they are."""
    T, B, feat = x.shape
    flat = x.reshape(T * B, feat)
    dropped = F.dropout(flat.index_select(0, rows), p=p, training=True)
    return flat.index_copy(0, rows, dropped).view(T, B, feat)
