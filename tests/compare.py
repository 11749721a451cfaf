"""Run one of our recurrent modules and its torch.nn twin on the same inputs and compare everything:
outputs, final states, and the gradients of the input, the initial states and every parameter.

A case is a ``Case`` (readable id, sizes, module options, input layout). ``run(module, case, inputs)`` feeds
the case's input (padded tensor, batch_first, unbatched or PackedSequence) and returns the outputs plus all
gradients, so the same function runs on the torch.nn module, on ours, and on the float64 oracle.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .helpers import DEVICE, assert_close, loss_of, rand


@dataclass(frozen=True)
class Case:
    id: str
    T: int = 5
    B: int = 3
    I: int = 7
    H: int = 20
    layers: int = 1
    bidirectional: bool = False
    proj: int = 0
    batch_first: bool = False
    bias: bool = True
    packed: str = ""  # "", "sorted" or "unsorted"
    unbatched: bool = False
    h0: bool = True
    noncontig: bool = False
    extra: dict = field(default_factory=dict)

    def module_kwargs(self, lstm: bool) -> dict:
        kw = dict(num_layers=self.layers, bidirectional=self.bidirectional, batch_first=self.batch_first,
                  bias=self.bias, **self.extra)
        if lstm and self.proj:
            kw["proj_size"] = self.proj
        return kw

    def lengths(self) -> list[int] | None:
        """Uneven lengths with the full T present; descending for "sorted", shuffled for "unsorted"."""
        if not self.packed:
            return None
        lens = [max(1, self.T - (3 * b) % self.T) for b in range(self.B)]
        lens[0] = self.T
        if self.packed == "sorted":
            return sorted(lens, reverse=True)
        g = torch.Generator().manual_seed(self.B * 31 + self.T)
        perm = torch.randperm(self.B, generator=g).tolist()
        return [lens[p] for p in perm]


# The awkward configurations every module whose state is h alone (RNN, GRU) is checked on against torch.nn.
H_STATE_CASES = [
    Case("base"),
    Case("B1_T1", B=1, T=1),
    Case("B17_prime_2tiles", B=17, T=3),
    Case("H33_I5", H=33, I=5, T=3),
    Case("layers2_bidir", layers=2, bidirectional=True, T=4),
    Case("batch_first_no_bias", batch_first=True, bias=False),
    Case("no_h0", h0=False),
    Case("packed_sorted", packed="sorted", B=4, T=6),
    Case("packed_unsorted_bidir", packed="unsorted", B=5, T=6, bidirectional=True),
    Case("unbatched", unbatched=True),
    Case("noncontiguous_input", noncontig=True),
]


def make_inputs(case: Case, has_cell: bool, dtype=torch.float64, device=DEVICE, seed=0):
    """Random input and (optionally) initial states in the case's layout, all requiring grad. Returns
    (x, hx) where hx is None, a tensor, or a tuple (h0, c0)."""
    torch.manual_seed(seed)
    dirs = 2 if case.bidirectional else 1
    P = case.proj or case.H
    if case.unbatched:
        x = rand(case.T, case.I, dtype=dtype, device=device)
    elif case.batch_first:
        x = rand(case.B, case.T, case.I, dtype=dtype, device=device)
    else:
        x = rand(case.T, case.B, case.I, dtype=dtype, device=device)
    if case.noncontig:
        # the same values, stored with a stride of 2 along features
        big = torch.empty(*x.shape[:-1], 2 * case.I, dtype=dtype, device=device)
        big[..., ::2] = x
        big[..., 1::2] = float("nan")
        x = big[..., ::2]
        assert not x.is_contiguous()
    x.requires_grad_(True)
    if not case.h0:
        return x, None
    state_shape = (case.layers * dirs, case.H) if case.unbatched else (case.layers * dirs, case.B, case.H)
    h_shape = (*state_shape[:-1], P)
    h0 = rand(*h_shape, dtype=dtype, device=device, scale=0.5, requires_grad=True)
    if not has_cell:
        return x, h0
    c0 = rand(*state_shape, dtype=dtype, device=device, scale=0.5, requires_grad=True)
    return x, (h0, c0)


def _leaves(x, hx):
    out = [x]
    if hx is not None:
        out += list(hx) if isinstance(hx, tuple) else [hx]
    return out


def run(module, case: Case | None, x, hx, **kwargs):
    """Forward + backward of ``module`` on the case (None: the input ``x`` as it is, not packed), from ``hx``
    (None: the module's zero state), ``kwargs`` passed to the call (e.g. ``resets=``). Returns a dict name ->
    tensor: "out", "h_n", "c_n" (then "state2", ... for a cell with more states), "grad_x", "grad_h0", "grad_c0"
    (those given), and "grad_<param name>" for every parameter."""
    module.zero_grad(set_to_none=True)
    leaves = _leaves(x, hx)
    for t in leaves:
        t.grad = None
    inp = x
    lengths = case.lengths() if case is not None else None
    if lengths is not None:
        inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=case.batch_first,
                                   enforce_sorted=case.packed == "sorted")
    out, hn = module(inp, **kwargs) if hx is None else module(inp, hx, **kwargs)
    if lengths is not None:
        out, out_lens = pad_packed_sequence(out, batch_first=case.batch_first, total_length=case.T)
        assert out_lens.tolist() == lengths
    states = list(hn) if isinstance(hn, (tuple, list)) else [hn]
    res = {"out": out, **{n: s for n, s in zip(["h_n", "c_n"], states)},
           **{f"state{i}": s for i, s in enumerate(states[2:], 2)}}
    loss = loss_of([out, *states])
    loss.backward()
    names = ["grad_x", "grad_h0", "grad_c0"]
    for n, t in zip(names, leaves):
        res[n] = t.grad.clone()
    for n, p in module.named_parameters():
        assert p.grad is not None, f"no gradient reached {n}"
        res["grad_" + n] = p.grad.clone()
    return {k: v.detach() for k, v in res.items()}


def compare(got: dict, want: dict, dtype, what: str = ""):
    """assert_close on every entry of ``want``; returns the worst error."""
    assert set(got) == set(want), f"{what}: entries differ: {sorted(set(got) ^ set(want))}"
    return max(assert_close(got[k], want[k], dtype, f"{what} {k}") for k in want)


def recast(x, hx, dtype):
    """The same input values in ``dtype``, as fresh leaves requiring grad (for the float64 oracle)."""
    def c(t):
        return t.detach().to(dtype).requires_grad_(True)
    if hx is None:
        return c(x), None
    return c(x), (tuple(c(t) for t in hx) if isinstance(hx, tuple) else c(hx))


def compare_lowp(got: dict, want: dict, plain: dict, dtype, what: str = ""):
    """fp16/bf16 check: each entry of ``got`` against the float64 ``want`` within the dtype's relative-RMS
    tolerance, or within 1.5x the error of ``plain`` (PyTorch's own computation in the same dtype) where
    that is larger. The second bound only matters for entries that are ill-conditioned in that dtype, where PyTorch
    itself is off by more than the dtype's tolerance."""
    from .helpers import RELRMS_TOL, rel_rms

    assert set(got) == set(want) == set(plain), f"{what}: entries differ"
    for k in want:
        assert got[k].dtype == dtype, f"{what} {k}: dtype {got[k].dtype}, expected {dtype}"
        err = rel_rms(got[k], want[k])
        bound = max(RELRMS_TOL[dtype], 1.5 * rel_rms(plain[k], want[k]))
        assert err <= bound, f"{what} {k}: rel RMS err {err:.3g} > {bound:.3g}"


def check_lowp_against_oracle(cls, case: Case, dtype, what: str, seed: int = 12, has_cell: bool = True,
                              **ours_kw):
    """fp16/bf16: module class ``cls`` with backend="triton" (and ``ours_kw``, e.g. a strategy) in ``dtype``,
    against the float64 reference on the same rounded weights and inputs, bounded as ``compare_lowp`` says
    (the reference computed in ``dtype`` gives PyTorch's own error). ``has_cell``: the module's state is
    (h, c) (the LSTMs) rather than h (RNN, GRU)."""
    torch.manual_seed(seed)
    kw = dict(**case.module_kwargs(has_cell), device=DEVICE)
    ours = cls(case.I, case.H, **kw, backend="triton", **ours_kw).to(dtype)
    oracle = cls(case.I, case.H, **kw, dtype=torch.float64, backend="reference")
    oracle.load_state_dict({k: v.double() for k, v in ours.state_dict().items()})
    plain = cls(case.I, case.H, **kw, backend="reference").to(dtype)
    plain.load_state_dict(ours.state_dict())
    x, hx = make_inputs(case, has_cell, dtype)
    got = run(ours, case, x, hx)
    want = run(oracle, case, *recast(x, hx, torch.float64))
    compare_lowp(got, want, run(plain, case, *recast(x, hx, dtype)), dtype, what)
