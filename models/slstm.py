"""``SLSTM``: the sLSTM of xLSTM (exponential gating, normaliser, stabiliser; block-diagonal recurrence) with
torch.nn's module conventions, on the per-head kernels of kernels/heads.py (cell ``"slstm"``), and conversions from
FlashRNN's and xLSTM's parameter layouts.

Per layer and direction, per step and head (docs/MATH.md "sLSTM"; gates i, f, z, o stacked like nn's, row
g*H + n*D + d): ``raw = W_ih x_t + b_ih + b_hh + R h_{t-1}`` with R block-diagonal (``weight_hh`` (NH, 4D, D), the
layout of ``num_heads`` in models/heads.py); ``lfm = m_{t-1} + logsigmoid(f~)``; ``m_t = i~`` where
``n_{t-1} == 0`` (elementwise), else ``max(i~, lfm)``; ``i_t = min(1, exp(i~ - m_t))``,
``f_t = min(1, exp(lfm - m_t))``; ``c_t = f_t c_{t-1} + i_t tanh(z~)``; ``n_t = max(f_t n_{t-1} + i_t, 1)``;
``h_t = sigmoid(o~) c_t / n_t``. The stabiliser m is a constant in the backward (as FlashRNN, xLSTM and TiRex
compute it): no gradient flows through m_t, and m_0 gets none.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from ._base import FusedRNNBase, check_triton_dtype, last_step, needs_grad, resolve_backend
from ._selfcheck import fused_ok
from .heads import setup_heads
from .reference_op import run_reference


def run_slstm_layer(x, h0, s0, weights, lengths, *, has_bias, backend, strategy, resets=None):
    """One sLSTM layer and direction. s0 (3, B, H): c_0, n_0, m_0; resets (T, B) bool or None (h, c, n and m
    entering step t are zero on the rows set at t). Returns y (T, B, H), h_n (B, H), s_n (3, B, H)."""
    w_ih, w_hh = weights[0], weights[1]
    b_ih, b_hh = (weights[2], weights[3]) if has_bias else (None, None)
    from ..kernels.heads import supported

    if (resolve_backend(backend, x.device) == "reference" or x.shape[1] == 0
            or not supported(x.dtype, w_hh.shape[2], "slstm")  # no dense sLSTM kernel to fall back on
            or not fused_ok("SLSTM", run_slstm_layer, (x, h0, s0, weights, lengths),
                            dict(has_bias=has_bias, strategy=strategy), resets)):
        y, h_n, c_n, n_n, m_n = run_reference("slstm", x, (h0, *s0.unbind(0)), (w_ih, w_hh, b_ih, b_hh), lengths,
                                              resets=resets)
        return y, h_n, torch.stack([c_n, n_n, m_n])
    check_triton_dtype(x.dtype)
    from .heads_ops import heads_layer_op

    y, s_n, *_ = heads_layer_op("slstm", x, h0, s0, w_ih, w_hh, b_ih, b_hh, lengths, needs_grad(x, h0, s0, *weights),
                                resets)
    return y, last_step(y, lengths), s_n


class SLSTM(FusedRNNBase):
    """Multi-layer sLSTM (xLSTM's scalar-memory LSTM) with torch.nn's module conventions.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional: as ``torch.nn.LSTM``.
        num_heads: heads of the block-diagonal recurrence (hidden_size % num_heads == 0).
        backend: "auto" (the per-head Triton kernels on CUDA, the PyTorch reference elsewhere), "triton" (on CPU the
            Triton interpreter) or "reference" (pure PyTorch, float64-capable).
        strategy: accepted for symmetry with the other modules ("auto", "per_step"): every strategy runs the
            per-head whole-sequence kernels (kernels/heads.py).
        device, dtype: as torch.nn's.

    Parameters per layer k (suffix ``_reverse`` for the second direction): ``weight_ih_l{k}`` (4H, I) and
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` (4H,), gates i, f, z, o stacked like nn's; ``weight_hh_l{k}`` (NH, 4D, D).
    Initialised as nn's (uniform in +-1/sqrt(H)).

    Inputs: ``input`` (T, B, I) / (B, T, I) with batch_first / (T, I) unbatched / a PackedSequence, and optional
    ``state = (h_0, c_0, n_0, m_0)``, each (num_layers * directions, B, H); zeros by default.
    Returns: ``output, (h_n, c_n, n_n, m_n)`` (output as nn.LSTM's; the states of the last step of each sequence).
    Autocast is not applied: the module runs in its parameters' dtype.
    """

    _has_cell = True
    _autocast_kind = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_heads: int = 1, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, backend: str = "auto", strategy: str = "auto"):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, backend=backend, strategy=strategy,
                         num_heads=num_heads)
        if num_heads == 1:  # the base sets up blocks only above one head; the sLSTM's weight_hh is always (NH, 4D, D)
            setup_heads(self, 1)

    def flatten_parameters(self) -> None:
        """No-op: cuDNN has no sLSTM."""
        return None

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if "num_heads" in s else s + f", num_heads={self.num_heads}"

    def _layer(self, x, h0, c0, weights, lengths, resets=None):
        return run_slstm_layer(x, h0, c0, weights, lengths, has_bias=self.bias, backend=self.backend,
                               strategy=self.strategy, resets=resets)

    _heads_layer = _layer

    def permute_hidden(self, hx, permutation):
        if permutation is None:
            return hx
        return tuple(s.index_select(1, permutation) for s in hx)

    def forward(self, input, state=None, resets=None):
        """See the class docstring; ``resets`` as for ``models.LSTM`` (``FusedRNNBase.forward``): h, c, n and m
        restart from zero where set."""
        self._refresh_flat_weights()
        packed = isinstance(input, PackedSequence)
        x, lengths_cpu, check_input, batch_sizes, is_batched = self._as_time_major(input, state, packed, False)
        self.check_input(check_input, batch_sizes)
        resets = self._resets_mask(resets, input, x, packed, is_batched, lengths_cpu)
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        L = self.num_layers * (2 if self.bidirectional else 1)
        B, H = x.shape[1], self.hidden_size
        if state is None:
            states = [x.new_zeros(L, B, H) for _ in range(4)]
        else:
            if not (isinstance(state, (tuple, list)) and len(state) == 4):
                raise ValueError("SLSTM: state must be a tuple (h_0, c_0, n_0, m_0)")
            states = [s if (packed or is_batched) else s.unsqueeze(1) for s in state]
            want = (L, B, H)
            for name, s in zip(("h_0", "c_0", "n_0", "m_0"), states):
                if tuple(s.shape) != want:
                    raise RuntimeError(f"SLSTM: expected {name} of shape {want}, got {tuple(s.shape)}")
            self._check_state_tensors(x, list(zip(("h_0", "c_0", "n_0", "m_0"), states)))
            if packed:
                states = list(self.permute_hidden(tuple(states), input.sorted_indices))
        lengths = None
        if lengths_cpu is not None and bool((lengths_cpu != lengths_cpu[0]).any()):
            lengths = lengths_cpu.to(device=x.device, dtype=torch.int32)
        # c, n, m travel as one (3, B, H) "cell state" per layer and direction through the base's layer loop
        s_all = torch.stack(states[1:], 1)  # (L, 3, B, H)
        with torch.autocast(x.device.type, enabled=False):
            output, h_n, s_n, rows = self._run_layers(x, states[0], s_all, lengths, lengths_cpu, None,
                                                      input.data.shape[0] if packed else None, resets)
        s_n = torch.stack(s_n, 1)  # (3, L, B, H)
        hidden = (torch.stack(h_n), s_n[0], s_n[1], s_n[2])
        return self._restore_layout(input, output, hidden, is_batched, False, rows, lengths_cpu, x.shape[0])


# ------------------------------------------------------------------------------------------------------------------
# Conversions. FlashRNN: R (4, NH, D_out, D_in) with raw_g[:, n] += h[:, n] @ R[g, n]^T, b (4, NH, D), gates i, f, z,
# o. xLSTM: sLSTMLayer's cell keeps ``slstm_cell._recurrent_kernel_`` and ``slstm_cell._bias_`` in its backend's
# internal layout (cuda, the default: (NH, D_in, 4*D_out) and bias index n*4D + g*D + d; vanilla: (NH, 4*D_out, D_in),
# ours, and bias index g*H + n*D + d), and its gate projections ``{i,f,z,o}gate.weight`` (NH, D_out, D_in) are
# head-wise (block-diagonal) linear maps.
# ------------------------------------------------------------------------------------------------------------------
def slstm_from_flashrnn(R: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(weight_hh (NH, 4D, D), bias (4H,)) from FlashRNN's sLSTM parameters R (4, NH, D, D) and b (4, NH, D). Load
    the bias as ``bias_ih`` with ``bias_hh`` zero (only their sum matters); FlashRNN's input Wx (B, T, 4, NH, D) is
    the input projection, i.e. ``weight_ih`` applied to x, flattened in the same (gate, head, unit) order."""
    if R.dim() != 4 or R.shape[0] != 4 or R.shape[2] != R.shape[3]:
        raise ValueError(f"slstm_from_flashrnn: R must have shape (4, NH, D, D), got {tuple(R.shape)}")
    _, NH, D, _ = R.shape
    if tuple(b.shape) != (4, NH, D):
        raise ValueError(f"slstm_from_flashrnn: b must have shape (4, {NH}, {D}), got {tuple(b.shape)}")
    return R.permute(1, 0, 2, 3).reshape(NH, 4 * D, D).contiguous(), b.reshape(-1).clone()


def slstm_to_flashrnn(weight_hh: Tensor, bias_ih: Tensor | None = None, bias_hh: Tensor | None = None):
    """The inverse of ``slstm_from_flashrnn``: (R (4, NH, D, D), b (4, NH, D)) with b = bias_ih + bias_hh."""
    NH, GD, D = weight_hh.shape
    R = weight_hh.reshape(NH, 4, D, D).permute(1, 0, 2, 3).contiguous()
    b = weight_hh.new_zeros(4 * NH * D)
    for v in (bias_ih, bias_hh):
        if v is not None:
            b = b + v
    return R, b.reshape(4, NH, D)


def _headwise_to_dense(w: Tensor) -> Tensor:
    """A head-wise linear map's weight (NH, D_out, D_in) as the dense (NH*D_out, NH*D_in) block-diagonal matrix."""
    NH, Do, Di = w.shape
    dense = w.new_zeros(NH, Do, NH, Di)
    idx = torch.arange(NH, device=w.device)
    dense[idx, :, idx, :] = w
    return dense.reshape(NH * Do, NH * Di)


def slstm_from_xlstm(state_dict: dict, num_heads: int, *, backend: str = "cuda", prefix: str = "") -> dict:
    """An ``SLSTM(E, E, num_heads)`` state_dict (layer 0) from the state_dict of xLSTM's ``sLSTMLayer`` (embedding
    E, ``conv1d_kernel_size=0``), whose cell was built with ``backend`` ("cuda", xLSTM's default, or "vanilla": the
    layouts of ``_recurrent_kernel_`` and ``_bias_`` differ). ``prefix``: the layer's key prefix in a larger model.

    The gates follow sLSTMLayer.forward, which feeds the cell's input gate from ``fgate`` and its forget gate from
    ``igate`` (its ``step`` does the reverse): weight_ih = [fgate; igate; zgate; ogate] as dense block-diagonal maps.
    A layer with a causal convolution feeds i and f from conv(x) but z and o from x, which one weight_ih over one
    input cannot express: ValueError. The layer's group norm and dropout act on the output: apply them after.
    """
    p = prefix
    if any(k.startswith(p + "conv1d.") for k in state_dict):
        raise ValueError("slstm_from_xlstm: the layer has a causal convolution (conv1d_kernel_size > 0); only "
                         "conv1d_kernel_size=0 maps onto one input projection")
    if backend not in ("cuda", "vanilla"):
        raise ValueError(f"slstm_from_xlstm: backend must be 'cuda' or 'vanilla', got {backend!r}")
    r = state_dict[p + "slstm_cell._recurrent_kernel_"]
    bias = state_dict[p + "slstm_cell._bias_"].reshape(-1)
    NH = num_heads
    D = r.shape[-1] if backend == "vanilla" else r.shape[1]
    want = (NH, 4 * D, D) if backend == "vanilla" else (NH, D, 4 * D)
    if tuple(r.shape) != want:
        raise ValueError(f"slstm_from_xlstm: _recurrent_kernel_ has shape {tuple(r.shape)}, expected {want} for "
                         f"backend={backend!r} and {NH} heads")
    if backend == "vanilla":
        w_hh, b = r.clone(), bias.clone()
    else:  # cuda[n, b, g*D + a] = w_hh[n, g*D + a, b]; bias index n*4D + g*D + d -> g*H + n*D + d
        w_hh = r.transpose(1, 2).contiguous()
        b = bias.reshape(NH, 4, D).transpose(0, 1).reshape(-1).clone()
    gates = [state_dict[p + f"{g}gate.weight"] for g in ("f", "i", "z", "o")]  # forward's order: i from fgate
    w_ih = torch.cat([_headwise_to_dense(g) for g in gates], 0)
    b_ih = b
    extra = [state_dict.get(p + f"{g}gate.bias") for g in ("f", "i", "z", "o")]
    if all(e is not None for e in extra):
        b_ih = b_ih + torch.cat(extra)
    return {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": torch.zeros_like(b_ih)}


__all__ = ["SLSTM", "run_slstm_layer", "slstm_from_flashrnn", "slstm_to_flashrnn", "slstm_from_xlstm"]
