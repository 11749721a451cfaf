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


def check_batch_sizes(batch_sizes: Tensor) -> None:
    """ValueError unless ``batch_sizes`` (on the CPU) is what ``pack_padded_sequence`` / ``pack_sequence`` make:
    positive and non-increasing. A hand-made PackedSequence with a 0 (or a growing batch) has no padded form."""
    if bool((batch_sizes <= 0).any()) or bool((batch_sizes[1:] > batch_sizes[:-1]).any()):
        raise ValueError(f"PackedSequence batch_sizes must be positive and non-increasing, as pack_padded_sequence "
                         f"and pack_sequence make them; got {batch_sizes.tolist()}")


def lengths_of(batch_sizes: Tensor, B) -> Tensor:
    """Length of each of the B sequences of a PackedSequence: the number of steps t with batch_sizes[t] > b."""
    b = torch.arange(B, device=batch_sizes.device).unsqueeze(1)
    return (batch_sizes.unsqueeze(0) > b).sum(1)


@torch.library.custom_op("fusedrnn::pad_packed", mutates_args=())
def pad_packed(data: Tensor, batch_sizes: Tensor) -> Tensor:
    """The (T, B, F) zero-padded, time-major layout of a PackedSequence's ``data`` (N, F), B = batch_sizes[0]
    (as ``pad_packed_sequence``). An op so that the compiler sees B as one data-dependent size instead of
    tracing the host read of batch_sizes[0]."""
    T, B = batch_sizes.shape[0], int(batch_sizes[0])
    rows = packed_rows(lengths_of(batch_sizes, B).to(data.device), T, data.shape[0])
    return data.new_zeros(T * B, data.shape[1]).index_copy(0, rows, data).view(T, B, data.shape[1])


@pad_packed.register_fake
def _(data, batch_sizes):
    B = torch.library.get_ctx().new_dynamic_size(min=1)
    return data.new_empty(batch_sizes.shape[0], B, data.shape[1])


def _pad_packed_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.n_rows = inputs[0].shape[0]


def _pad_packed_backward(ctx, grad):
    (batch_sizes,) = ctx.saved_tensors
    T, B, feat = grad.shape
    rows = packed_rows(lengths_of(batch_sizes, B).to(grad.device), T, ctx.n_rows)
    return grad.reshape(T * B, feat).index_select(0, rows), None


pad_packed.register_autograd(_pad_packed_backward, setup_context=_pad_packed_setup)


def unpack_traceable(data: Tensor, batch_sizes: Tensor, B=None) -> tuple[Tensor, Tensor]:
    """``pad_packed_sequence`` for torch.compile: (padded (T, B, F), lengths (B,) int64 on data's device)
    without a host read of a tensor value.

    With ``B`` known from a shape (the sorted_indices of an unsorted PackedSequence, or h_0) this is plain
    tensor ops: no graph break. Otherwise B = batch_sizes[0] is data-dependent and comes from the op
    ``fusedrnn::pad_packed``: ``fullgraph=True`` traces it; without fullgraph, Dynamo breaks the graph there
    unless ``torch._dynamo.config.capture_dynamic_output_shape_ops`` is set.
    """
    if data.dim() != 2:
        raise RuntimeError(f"packed input data must be 2-D (N, features), got {data.dim()}-D")
    T = batch_sizes.shape[0]
    if B is None:
        padded = pad_packed(data, batch_sizes)
        B = padded.shape[1]
        torch._check(data.shape[0] <= T * B)
        return padded, lengths_of(batch_sizes.to(data.device), B)
    # B read from h_0 must be the packed batch (nn checks it against batch_sizes[0]): an in-graph assert
    torch._assert_async(batch_sizes[0] == B, "the batch size of h_0 does not match the PackedSequence's")
    lengths = lengths_of(batch_sizes.to(data.device), B)
    rows = packed_rows(lengths, T, data.shape[0])
    padded = data.new_zeros(T * B, data.shape[1]).index_copy(0, rows, data).view(T, B, data.shape[1])
    return padded, lengths


def pack_rows(padded: Tensor, rows: Tensor) -> Tensor:
    """The packed data (N, F) of a (T, B, F) padded, time-major tensor, rows from ``packed_rows``."""
    T, B, feat = padded.shape
    return padded.reshape(T * B, feat).index_select(0, rows)


def batch_from_shapes(sorted_indices, hx, has_cell: bool):
    """The batch size of a PackedSequence read from a shape where one has it (None otherwise)."""
    if sorted_indices is not None:
        return sorted_indices.shape[0]
    h = hx[0] if has_cell and isinstance(hx, (tuple, list)) and len(hx) == 2 else hx
    return h.shape[1] if isinstance(h, Tensor) and h.dim() == 3 else None
