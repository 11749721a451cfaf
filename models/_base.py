"""Shared module plumbing: everything torch.nn.LSTM / nn.RNN accept, around a per-layer function.

``FusedRNNBase`` subclasses ``nn.RNNBase`` (never ``nn.LSTM``: torch.compile graph-breaks on those), so the
constructor's checks, parameter names, init, state_dict, repr and ``_all_weights`` come from torch. Its
``forward`` handles batch_first, unbatched input, PackedSequence (sorted or not; the reverse direction starts
at each sequence's own end), h0/c0 defaults and checks, autocast, layers, directions and dropout, and calls
``self._layer(x, h0, c0, weights, lengths, resets)`` once per layer and direction, always forward in time on
time-major input. ``forward(..., resets=)`` restarts rows from the zero state at given steps (episode resets:
``FusedRNNBase.forward``).

A new cell plugs in by subclassing ``FusedRNNBase`` and implementing:
- ``_layer(self, x, h0, c0, weights, lengths, resets=None) -> (y (T, B, P), h_n (B, P), c_n (B, H) or None)``,
  where ``weights`` is the list of parameters of that layer and direction, in the order of ``self._all_weights``
  (weight_ih, weight_hh, [bias_ih, bias_hh], [extra...]); ``lengths`` is (B,) int32 on the input's device or
  None; ``resets`` (T, B) bool on that device or None (the state entering step t is zero where set, in this
  direction's time order); ``c0`` is None for cells without a cell state. A cell without resets sets
  ``_supports_resets = False``.
- class attribute ``_has_cell`` (True when the state is a pair (h, c)) and ``_autocast_kind`` (whose autocast
  rules in models/_autocast.py the module follows: "rnn", "lstm" or "gru").
Backends: ``self.backend`` is "triton" or "reference" after ``resolve_backend``.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..kernels.lstm import STRATEGIES
from . import heads
from ._autocast import autocast_plan, cast_outputs
from ._export import NoScript
from ._packed import batch_from_shapes, check_batch_sizes, dropout_packed_rows, pack_rows, packed_rows, unpack_traceable

BACKENDS = ("auto", "triton", "reference")
# every strategy, as the LSTM's kernels define them; cells without a persistent kernel (RNN, use-gate LSTM)
# accept PER_STEP_STRATEGIES only. check_backend is the one place a module's arguments are validated.
PER_STEP_STRATEGIES = ("auto", "per_step")


def check_backend(backend: str, strategy: str, strategies: tuple = PER_STEP_STRATEGIES) -> None:
    """ValueError for an unknown backend, or a strategy not in ``strategies`` (those of the cell)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if strategy not in strategies:
        hint = (" ('persistent' exists for the LSTM and GRU only, and the LayerNorm LSTM's forward)"
                if strategy in STRATEGIES else "")
        raise ValueError(f"strategy must be one of {strategies}, got {strategy!r}{hint}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """"auto" is our kernels on CUDA and the pure-PyTorch reference elsewhere (the interpreter is too slow
    to be a default). During ``torch.onnx.export`` every backend is the reference: the exported model is the
    same function written in standard ops."""
    if torch.onnx.is_in_onnx_export():
        return "reference"  # standard ops, which ONNX has; the fused ops have no ONNX translation
    if backend == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if backend == "triton" and device.type != "cuda":
        from ..kernels._common import interpreting

        if not interpreting():
            raise RuntimeError(
                f"fusedrnn backend='triton' on {device.type} tensors needs Triton's interpreter: set "
                "TRITON_INTERPRET=1 before importing fusedrnn (importing it sets it where no GPU is visible and "
                "the variable is unset), or use backend='auto' or 'reference'")
    return backend


def check_triton_dtype(dtype: torch.dtype) -> None:
    """RuntimeError for a dtype the kernels lack, or (CPU interpreter) a numpy that Triton's interpreter
    cannot run with."""
    from ..kernels._common import SUPPORTED_DTYPES, check_interpreter_numpy, interpreting

    if interpreting():
        check_interpreter_numpy()
    if dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(
            f"fusedrnn backend 'triton' does not support dtype {dtype}; "
            "use float16, bfloat16, float32 or float64, or backend='reference'"
        )


def autocast_dtype(device: torch.device):
    """The autocast dtype when autocast is on for ``device``'s type, else None."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def needs_grad(*tensors) -> bool:
    """Whether the fused forward must keep what its backward reads. Always under ``torch.jit.trace``: the
    traced graph is replayed with and without grad, so the answer cannot be a constant of one run."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def reverse_time(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence along time (dim 0) within its own length; padding stays in place."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    t = torch.arange(T, device=x.device).unsqueeze(1)
    lens = lengths.to(t.dtype).unsqueeze(0)
    idx = torch.where(t < lens, lens - 1 - t, t)  # (T, B)
    idx = idx.view(T, -1, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, idx)


def reverse_resets(resets: Tensor, lengths: Tensor | None) -> Tensor:
    """The reverse direction's resets (T, B), in its own (reversed) time: each segment runs as its own sequence,
    so the reverse pass restarts from zero at the last step of every segment but the row's last one (the step
    before a forward reset), and the given reverse h_0 enters at the row's last step (docs/MATH.md)."""
    ends = torch.cat([resets[1:], resets.new_zeros(1, resets.shape[1])])  # past a row's length: padding, False
    return reverse_time(ends, lengths)


def last_step(y: Tensor, lengths: Tensor | None) -> Tensor:
    """y[len_b - 1, b] for each b (y[-1] without lengths)."""
    if lengths is None:
        return y[-1]
    idx = (lengths.long() - 1).view(1, -1, 1).expand(1, y.shape[1], y.shape[2])
    return y.gather(0, idx).squeeze(0)


class FusedRNNBase(NoScript, nn.RNNBase):
    """Base of the drop-in recurrent modules (see the module docstring)."""

    _has_cell = False
    _autocast_kind = "rnn"  # which torch.nn module's autocast rules apply (models/_autocast.py)
    _strategies = PER_STEP_STRATEGIES  # the strategies this cell's kernels implement
    _supports_resets = True  # forward(..., resets=): the cell's layer function takes resets

    def __init__(self, mode: str, *args, backend: str = "auto", strategy: str = "auto", num_heads: int = 1,
                 **kwargs):
        check_backend(backend, strategy, self._strategies)
        super().__init__(mode, *args, **kwargs)
        self.backend = backend
        self.strategy = strategy
        self.num_heads = heads.check_num_heads(num_heads, self.hidden_size, self.proj_size)
        if num_heads > 1:  # per-head recurrent blocks (models/heads.py)
            heads.setup_heads(self, num_heads)

    def flatten_parameters(self) -> None:
        if getattr(self, "num_heads", 1) > 1:  # cuDNN's flat buffer has no block-diagonal layout
            return None
        return super().flatten_parameters()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if getattr(self, "num_heads", 1) > 1:
            s += f", num_heads={self.num_heads}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.strategy != "auto":
            s += f", strategy={self.strategy!r}"
        return s

    # --- checks, reusing torch's own (same exception types and messages) --------------------------------
    def _check_args(self, input: Tensor, hx, batch_sizes):
        if self._has_cell:
            nn.LSTM.check_forward_args(self, input, hx, batch_sizes)
        else:
            nn.RNNBase.check_forward_args(self, input, hx, batch_sizes)

    def get_expected_cell_size(self, input, batch_sizes):
        return nn.LSTM.get_expected_cell_size(self, input, batch_sizes)

    def _check_state_tensors(self, input: Tensor, states) -> None:
        for name, s in states:
            if s.device != input.device:
                raise RuntimeError(
                    f"Input and hidden tensors are not at the same device, found input tensor at "
                    f"{input.device} and hidden tensor ({name}) at {s.device}"
                )
            if s.dtype != input.dtype and autocast_dtype(input.device) is None:
                raise RuntimeError(
                    f"Expected {name} to have dtype {input.dtype} like the input, got {s.dtype}"
                )

    def _check_weight_dtypes(self, layer: int, direction: int, weights, dtype: torch.dtype) -> None:
        """RuntimeError (as torch.nn's matmuls give) when a parameter's dtype is not the input's, e.g. one
        parameter cast on its own."""
        names = self._all_weights[layer * (2 if self.bidirectional else 1) + direction]
        for n, w in zip(names, weights):
            if w.dtype != dtype:
                raise RuntimeError(f"{type(self).__name__}: parameter {n} has dtype {w.dtype}, expected {dtype} "
                                   "like the input")

    def _layer_weights(self, layer: int, direction: int):
        names = self._all_weights[layer * (2 if self.bidirectional else 1) + direction]
        return [getattr(self, n) for n in names]

    def _layer(self, x, h0, c0, weights, lengths, resets=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def _heads_layer(self, x, h0, c0, weights, lengths, resets=None):
        return heads.run_heads_layer(self.mode.lower(), x, h0, c0, weights, lengths, has_bias=self.bias,
                                     backend=self.backend, strategy=self.strategy, resets=resets)

    def _resets_mask(self, resets, input, x: Tensor, packed: bool, is_batched: bool, lengths_cpu) -> Tensor | None:
        """``resets`` checked and as a time-major (T, B) bool tensor on the input's device (None stays None):
        (T, B) / (B, T) with batch_first for padded input, (T,) unbatched, (total packed rows,) in the packed
        order for a PackedSequence (padding positions never reset)."""
        if resets is None:
            return None
        name = type(self).__name__
        if not self._supports_resets:
            raise NotImplementedError(f"{name} does not support resets= (episode resets) yet")
        if not isinstance(resets, Tensor):
            raise TypeError(f"{name}: resets must be a torch.bool tensor, got {type(resets).__name__}")
        if resets.dtype != torch.bool:
            raise TypeError(f"{name}: resets must be a torch.bool tensor, got dtype {resets.dtype}")
        data = input.data if packed else input
        if resets.device != data.device:
            raise RuntimeError(f"{name}: resets is on {resets.device}, expected the input's device {data.device}")
        T, B = x.shape[0], x.shape[1]
        if packed:
            want, what = (data.shape[0],), "(total packed rows,) in the packed order"
        elif not is_batched:
            want, what = (T,), "(T,) for unbatched input"
        else:
            want, what = ((B, T), "(B, T) with batch_first") if self.batch_first else ((T, B), "(T, B)")
        if tuple(resets.shape) != want:
            raise RuntimeError(f"{name}: resets must have shape {what} = {want}, got {tuple(resets.shape)}")
        if packed:
            rows = packed_rows(lengths_cpu.to(x.device), T, data.shape[0])
            return resets.new_zeros(T * B).index_copy(0, rows, resets).view(T, B)
        if not is_batched:
            return resets.unsqueeze(1)
        return resets.t() if self.batch_first else resets

    # --- forward ------------------------------------------------------------------------------------------
    def _refresh_flat_weights(self) -> None:
        """nn's ``_update_flat_weights``, outside torch.compile / torch.export only: the list is unread here;
        refreshing it under export warns of an attribute assignment, and under compile it guards on weak
        references that fail on the second call (one recompile)."""
        if not torch.compiler.is_compiling():
            self._update_flat_weights()

    def forward(self, input, hx=None, resets=None):
        """Same inputs and outputs as the matching torch.nn module (see its documentation), plus episode resets.

        ``resets`` (optional; pass it by keyword: it is positional too only because torch.onnx.export's TorchScript
        exporter passes every parameter's default positionally): a bool tensor, (T, B) for padded input ((B, T) with
        batch_first, (T,) unbatched) or (total packed rows,) in the packed order for a PackedSequence. Where
        resets[t, b] is set, row b's state entering step t is the zero state (at t = 0 this overrides the given h_0 /
        c_0 of that row): every segment between resets runs as its own sequence from zeros, in every layer, and no
        gradient crosses a reset (dh_0 / dc_0 of a row reset at t = 0 are zero). The reverse direction of a
        bidirectional module runs each segment backwards as its own sequence: it restarts from zero at each
        segment's last step, except the row's last segment, which starts from the given reverse h_0 (docs/MATH.md
        "Episode resets"). The final states are those after each row's last step (forward) and first step
        (reverse)."""
        self._refresh_flat_weights()
        packed = isinstance(input, PackedSequence)
        compiling = packed and torch.compiler.is_compiling()
        x, lengths_cpu, check_input, batch_sizes, is_batched = self._as_time_major(input, hx, packed, compiling)
        resets = self._resets_mask(resets, input, x, packed, is_batched, lengths_cpu)
        h_all, c_all = self._initial_states(hx, x, check_input, batch_sizes, is_batched, packed,
                                            input.sorted_indices if packed else None)
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

        # autocast: the dtypes torch.nn's module would run in and return (models/_autocast.py)
        plan = autocast_plan(self._autocast_kind, x.device, x.dtype, packed=packed, proj=self.proj_size > 0,
                             state_dtype=(c_all if c_all is not None else h_all).dtype)
        weights_cast = plan.run if plan is not None else None
        if weights_cast is not None:
            x, h_all = x.to(weights_cast), h_all.to(weights_cast)
            c_all = c_all.to(weights_cast) if c_all is not None else None

        lengths = None
        if lengths_cpu is not None and (compiling or bool((lengths_cpu != lengths_cpu[0]).any())):
            lengths = lengths_cpu.to(device=x.device, dtype=torch.int32)

        with torch.autocast(x.device.type, enabled=False) if plan is not None else nullcontext():
            output, h_n, c_n, rows = self._run_layers(x, h_all, c_all, lengths, lengths_cpu, weights_cast,
                                                      input.data.shape[0] if packed else None, resets)
        h_n = torch.stack(h_n)
        hidden = (h_n, torch.stack(c_n)) if self._has_cell else h_n
        if plan is not None:
            output, hidden = cast_outputs(plan, output, hidden)
        return self._restore_layout(input, output, hidden, is_batched, compiling, rows, lengths_cpu, x.shape[0])

    def _as_time_major(self, input, hx, packed: bool, compiling: bool):
        """The input as a padded time-major (T, B, I) tensor. Returns (x, lengths on the CPU or None, the
        tensor and batch_sizes torch's argument checks see, whether the input had a batch dimension)."""
        if packed:
            data, batch_sizes, sorted_indices, _ = input
            if compiling:  # no host read of batch_sizes (models/_packed.py); lengths on the data's device
                B = batch_from_shapes(sorted_indices, hx, self._has_cell)
                x, lengths_cpu = unpack_traceable(data, batch_sizes, B)
                return x, lengths_cpu, (x.transpose(0, 1) if self.batch_first else x), None, True
            check_batch_sizes(batch_sizes)
            x, lengths_cpu = pad_packed_sequence(PackedSequence(data, batch_sizes), batch_first=False)
            return x, lengths_cpu, data, batch_sizes, True
        if input.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        if not is_batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
        x = input.transpose(0, 1) if self.batch_first else input
        return x, None, input, None, is_batched

    def _initial_states(self, hx, x, check_input, batch_sizes, is_batched: bool, packed: bool, sorted_indices):
        """(h_0, c_0 or None) of every layer and direction, (L*D, B, ·): zeros without ``hx``, else ``hx``
        checked as torch.nn checks it, unbatched states given their batch dimension, packed input's states
        put in the sorted order."""
        name = type(self).__name__
        if hx is None:
            real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
            zeros = lambda n: torch.zeros(  # noqa: E731
                self.num_layers * (2 if self.bidirectional else 1), x.shape[1], n, dtype=x.dtype, device=x.device
            )
            hx = (zeros(real_hidden), zeros(self.hidden_size)) if self._has_cell else zeros(real_hidden)
            self._check_args(check_input, hx, batch_sizes)
        else:
            if self._has_cell and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                # torch.nn.LSTM: IndexError when hx[1] does not exist, RuntimeError for extra states
                if isinstance(hx, (tuple, list)) and len(hx) > 2:
                    raise RuntimeError(f"{name} expects two hidden states (h_0, c_0), got {len(hx)}")
                got = f"{len(hx)} state" if isinstance(hx, (tuple, list)) else f"a {type(hx).__name__}"
                raise IndexError(f"{name}: hx must be a tuple (h_0, c_0), got {got}")
            states = hx if self._has_cell else (hx,)
            if not packed:
                want = 3 if is_batched else 2
                if any(s.dim() != want for s in states):
                    kind = "batched 3-D" if is_batched else "unbatched 2-D"
                    dims = ", ".join(f"{s.dim()}-D" for s in states)
                    raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got ({dims}) tensors")
                if not is_batched:
                    states = tuple(s.unsqueeze(1) for s in states)
            hx = tuple(states) if self._has_cell else states[0]
            self._check_args(check_input, hx, batch_sizes)
            if sorted_indices is not None:
                hx = self.permute_hidden(hx, sorted_indices)
        h_all, c_all = (hx[0], hx[1]) if self._has_cell else (hx, None)
        self._check_state_tensors(x, [("h_0", h_all)] + ([("c_0", c_all)] if c_all is not None else []))
        return h_all, c_all

    def _run_layers(self, x, h_all, c_all, lengths, lengths_cpu, weights_cast, n_packed, resets=None):
        """Every layer and direction in turn, dropout between layers in training. ``n_packed``: the packed
        input's row count (None when not packed); ``resets``: (T, B) bool or None (``_resets_mask``). Returns
        (output (T, B, D*P), [h_n], [c_n], the packed rows the dropout masks were drawn on, or None)."""
        num_directions = 2 if self.bidirectional else 1
        if resets is None:
            dir_resets = (None, None)
        else:
            dir_resets = (resets, reverse_resets(resets, lengths) if num_directions == 2 else None)
        layer_in = x
        h_n, c_n = [], []
        rows = None
        for layer in range(self.num_layers):
            outs = []
            for d in range(num_directions):
                k = layer * num_directions + d
                w = self._layer_weights(layer, d)
                if weights_cast is not None:
                    w = [p.to(weights_cast) for p in w]
                else:
                    self._check_weight_dtypes(layer, d, w, x.dtype)
                xin = layer_in if d == 0 else reverse_time(layer_in, lengths)
                layer_fn = self._heads_layer if getattr(self, "num_heads", 1) > 1 else self._layer
                y, hn, cn = layer_fn(xin, h_all[k], c_all[k] if c_all is not None else None, w, lengths,
                                     resets=dir_resets[d])
                outs.append(y if d == 0 else reverse_time(y, lengths))
                h_n.append(hn)
                c_n.append(cn)
            layer_in = outs[0] if num_directions == 1 else torch.cat(outs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                if n_packed is not None:  # on the packed rows, as nn does (same mask for the same seed)
                    if rows is None:
                        rows = packed_rows(lengths_cpu.to(x.device), x.shape[0], n_packed)
                    layer_in = dropout_packed_rows(layer_in, rows, self.dropout)
                else:
                    layer_in = F.dropout(layer_in, p=self.dropout, training=True)
        return layer_in, h_n, c_n, rows

    def _restore_layout(self, input, output, hidden, is_batched: bool, compiling: bool, rows, lengths_cpu, T: int):
        """The outputs in the input's layout: packed again (states back in the caller's batch order),
        batch_first, or without the batch dimension."""
        if isinstance(input, PackedSequence):
            if compiling:
                rows = rows if rows is not None else packed_rows(lengths_cpu, T, input.data.shape[0])
                out_data = pack_rows(output, rows)
            else:
                out_data = pack_padded_sequence(output, lengths_cpu, enforce_sorted=True).data
            return (PackedSequence(out_data, input.batch_sizes, input.sorted_indices, input.unsorted_indices),
                    self.permute_hidden(hidden, input.unsorted_indices))
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = tuple(s.squeeze(1) for s in hidden) if self._has_cell else hidden.squeeze(1)
        return output, hidden

    def permute_hidden(self, hx, permutation):
        if permutation is None:
            return hx
        if self._has_cell:
            return hx[0].index_select(1, permutation), hx[1].index_select(1, permutation)
        return hx.index_select(1, permutation)
