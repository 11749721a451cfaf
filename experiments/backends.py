"""The registry of recurrent-layer implementations a sweep compares. Adding a peer is one ``register(Backend(...))``.

Every backend builds, from a source module holding the weights (``src``, the cell of the sweep, ``cell_of(src)``:
``torch.nn.LSTM``, ``torch.nn.GRU`` or ``torch.nn.RNN`` (tanh), with ``heads`` > 1 carrying the dense block-diagonal
equivalent of the heads (``heads_of(src)``); for the cells torch.nn lacks, the fusedrnn module with
``backend="reference"``: ``SLSTM``, ``LayerNormLSTM``, ``LayerNormGRU``), a runner with one signature:
``run(x (T, B, I), h0 (L*D, B, H), c0 or None) -> (y (T, B, D*H), h_n (L*D, B, H), c_n or None)``
(the ``variable`` backends also take a PackedSequence x and ``resets=``: torch.nn's modules, which have no
``resets=``, then run every segment as its own sequence, ``run_segments``)
(c0 and c_n are the cell's other states, ``CELL_STATES``: the LSTM's and the LayerNorm LSTM's cell state
(L*D, B, H), the sLSTM's c, n and m stacked (3, L*D, B, H); None for the GRUs and the RNN), and exposes its trainable
tensors under the source module's parameter names (so gradients can be compared; a dense W_hh's gradient compares
with the heads' through ``head_blocks``). ``Backend.cells`` says which cells a backend implements.

The comparison baseline of a row (``baseline_for``): for the cells torch.nn has, its module (cuDNN on CUDA,
``torch_cpu`` on CPU), with heads the dense block-diagonal equivalent (the same function, at a dense module's
cost); for the sLSTM and the LayerNorm cells, ``reference``: the fusedrnn module's PyTorch reference (a Python loop
over the steps, eager, in the row's dtype), which every row's ``max_rel_err`` and ``speedup`` are against. Beside
it, ``nn_dense`` times the anchor of the published comparisons: the dense torch.nn module of the plain cell of the
same shape (nn.LSTM for the sLSTM and the LayerNorm LSTM, nn.GRU for the LayerNorm GRU; cuDNN on CUDA), another
function, so its rows have no ``max_rel_err``; their ``strategy`` column names the module.
Imports of optional or heavy packages (models, flashrnn) happen inside ``build``, after the sweep has set
TRITON_INTERPRET on a machine without CUDA.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

CELLS = ("lstm", "gru", "rnn")  # the cells torch.nn (cuDNN) has
OTHER_CELLS = ("slstm", "lnlstm", "lngru")  # the cells it lacks: compared with the reference, nn_dense beside
# the fusedrnn module of each cell (looked up when a row is built: models.GRU may not exist in a tree)
FUSEDRNN_CLASSES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN", "slstm": "SLSTM", "lnlstm": "LayerNormLSTM",
                    "lngru": "LayerNormGRU"}
# the states beside h of each cell, as ``run`` takes and returns them: one (L*D, B, H), or k stacked (k, L*D, B, H)
CELL_STATES = {"lstm": 1, "lnlstm": 1, "slstm": 3}
# the dense torch.nn module that anchors a cell torch.nn lacks (backend nn_dense)
ANCHORS = {"slstm": nn.LSTM, "lnlstm": nn.LSTM, "lngru": nn.GRU}


def cell_of(src: nn.Module) -> str:
    """The cell of a source module: "lstm", "gru" or "rnn" for a torch.nn.LSTM / GRU / RNN (tanh or relu),
    "slstm", "lnlstm", "lngru" for fusedrnn's SLSTM / LayerNormLSTM / LayerNormGRU."""
    other = {FUSEDRNN_CLASSES[c]: c for c in OTHER_CELLS}.get(type(src).__name__)
    return other or {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn", "RNN_RELU": "rnn"}[src.mode]


def heads_of(src: nn.Module) -> int:
    """The heads of a source module (its ``num_heads``; 1 when it has none: a dense recurrence)."""
    return int(getattr(src, "num_heads", 1))


def head_blocks(name: str, grad: Tensor | None, heads: int) -> Tensor | None:
    """The gradient of parameter ``name`` in the heads' layout: a dense W_hh's (G*H, H) gradient (a backend that
    runs the dense block-diagonal equivalent) as its diagonal blocks (heads, G*D, D), the gradient of the heads'
    parameters (``models.heads.heads_to_dense``'s layout); any other gradient as it is."""
    if grad is None or heads == 1 or not name.startswith("weight_hh") or grad.dim() != 2:
        return grad
    from fusedrnn.models.heads import diagonal_blocks

    return diagonal_blocks(grad, heads)


def _runner(m: nn.Module, cell: str, split: bool = False):
    """``run`` (module docstring) of a module with torch.nn's calling convention for ``cell``; with ``resets``
    given, the module's ``resets=`` or, ``split`` (torch.nn's modules, which have none), ``run_segments``."""
    def run(x, h0, c0=None, *, resets=None):
        if resets is not None and split:
            return run_segments(m, x, h0, c0, resets)
        kw = {} if resets is None else {"resets": resets}
        if cell == "slstm":
            y, (h, *s) = m(x, (h0, *c0.unbind(0)), **kw)
            return y, h, torch.stack(s)
        if c0 is not None:
            y, (h, c) = m(x, (h0, c0), **kw)
            return y, h, c
        y, h = m(x, h0, **kw)
        return y, h, None

    return run


def _packed_rows(packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """(step, batch row) of every row of ``packed.data``, in packed order."""
    bs = packed.batch_sizes
    t = torch.repeat_interleave(torch.arange(len(bs)), bs)
    pos = torch.arange(len(t)) - (torch.cumsum(bs, 0) - bs)[t]
    rows = pos if packed.sorted_indices is None else packed.sorted_indices.cpu()[pos]
    return t, rows


def run_segments(m: nn.RNNBase, x, h0: Tensor, c0: Tensor | None, resets: Tensor):
    """What users of torch.nn (cuDNN) do today for episode resets: every segment of every row (from a step whose
    flag is set, or step 0, to the next such step or the row's end) as its own sequence, all of them in one
    PackedSequence through ``m``, the outputs mapped back. ``x`` (T, B, I) with ``resets`` (T, B), or a
    PackedSequence with ``resets`` one flag per packed row (the module's ``resets=``). A segment starts from zeros,
    except the given h_0 (c_0): forward, it starts the row's first segment unless step 0's flag is set; reverse, it
    starts the row's last segment. Final states: forward the last segment's, reverse the first's (docs/MATH.md
    "Episode resets"). Returns ``run``'s (y, h_n, c_n or None), y packed like ``x``."""
    dev = h0.device
    if isinstance(x, PackedSequence):
        t_of, b_of = _packed_rows(x)
        xp, lengths = pad_packed_sequence(x)
        r = torch.zeros(xp.shape[:2], dtype=torch.bool)
        r[t_of, b_of] = resets.cpu()
    else:
        xp, lengths, r = x, torch.full((x.shape[1],), x.shape[0]), resets.cpu()
    T, B = r.shape
    valid = torch.arange(T)[:, None] < lengths[None, :]  # (T, B)
    starts = (r | (torch.arange(T) == 0)[:, None]) & valid
    seg = (torch.cumsum(starts.T.reshape(-1), 0) - 1).reshape(B, T).T  # (T, B): segment of each step, b-major
    seg_b, seg_t = starts.T.nonzero(as_tuple=True)  # each segment's row and first step
    n = len(seg_b)
    tt, bb = valid.nonzero(as_tuple=True)
    sid, off = seg[tt, bb], tt - seg_t[seg[tt, bb]]
    seg_len = torch.bincount(sid, minlength=n)
    xs = xp.new_zeros(int(seg_len.max()), n, xp.shape[2]).index_put((off.to(dev), sid.to(dev)), xp[tt, bb])
    first = torch.zeros(n, dtype=torch.bool)
    first[seg[0]] = True
    last_seg = seg[lengths - 1, torch.arange(B)]
    is_last = torch.zeros(n, dtype=torch.bool)
    is_last[last_seg] = True
    D = 2 if m.bidirectional else 1
    fwd = (torch.arange(h0.shape[0]) % D == 0)[:, None]  # (L*D, 1)
    keep = torch.where(fwd, (first & ~r[0, seg_b])[None], is_last[None]).to(dev, h0.dtype)[..., None]
    states = [s[:, seg_b.to(dev)] * keep for s in ((h0,) if c0 is None else (h0, c0))]
    out, hn = m(pack_padded_sequence(xs, seg_len, enforce_sorted=False), states[0] if c0 is None else tuple(states))
    ys, _ = pad_packed_sequence(out)
    y = ys.new_zeros(T, B, ys.shape[2]).index_put((tt.to(dev), bb.to(dev)), ys[off.to(dev), sid.to(dev)])
    final = torch.where(fwd, last_seg[None], seg[0][None]).to(dev)  # (L*D, B)
    lay = torch.arange(h0.shape[0], device=dev)[:, None]
    hn = (hn,) if c0 is None else hn
    h, c = hn[0][lay, final], (None if c0 is None else hn[1][lay, final])
    if isinstance(x, PackedSequence):
        y = PackedSequence(y[t_of.to(dev), b_of.to(dev)], x.batch_sizes, x.sorted_indices, x.unsorted_indices)
    return y, h, c


@dataclass
class Built:
    """A ready-to-run backend instance: ``run`` as in the module docstring; ``params`` name -> leaf tensor
    (nn.LSTM names, e.g. "weight_hh_l0") whose gradients a training step produces."""

    run: Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor | None]]
    params: dict[str, Tensor]


@dataclass
class Backend:
    """One implementation. ``build(src, strategy) -> Built``; ``devices``: where it can run ("cuda", "cpu");
    ``cells``: the cells it implements; ``strategies(cell="lstm", heads=1)``: the row variants of that cell ("" when
    it has none); ``unavailable()``: None, or why it cannot run here; ``default_on``: devices where it is in the
    default backend set; ``baseline``: it is the comparison baseline of its cells on its device (cudnn on CUDA,
    torch_cpu on CPU, reference for the cells torch.nn lacks): every row's speedup and error are against it, and
    its name is the row's ``speedup_ref`` column; ``anchor``: its rows time another function (nn_dense), so their
    outputs are not compared; ``variable``: its ``run`` takes a PackedSequence ``x`` (y then packed too) and
    ``resets=`` (the sweep's ``--packed`` and ``--resets``)."""

    name: str
    build: Callable[[nn.LSTM, str], Built]
    devices: tuple[str, ...]
    strategies: Callable[..., tuple[str, ...]] = lambda cell="lstm", heads=1: ("",)
    unavailable: Callable[[], str | None] = lambda: None
    default_on: tuple[str, ...] = ("cuda", "cpu")
    baseline: bool = False
    notes: str = field(default="")
    cells: tuple[str, ...] = CELLS
    anchor: bool = False
    variable: bool = False


REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add (or replace) a backend in the registry and return it."""
    REGISTRY[backend.name] = backend
    return backend


def baseline_for(device: torch.device, cell: str = "lstm") -> str:
    """Name of the comparison baseline of ``cell`` on ``device``'s type."""
    for b in REGISTRY.values():
        if b.baseline and device.type in b.devices and cell in b.cells:
            return b.name
    raise LookupError(f"no comparison baseline for {cell} on {device.type}")


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}" + ("_reverse" if direction else "")


# --- torch.nn.LSTM / GRU / RNN: cuDNN on CUDA, ATen's CPU kernels on CPU ----------------------------------------
def _build_nn(src: nn.RNNBase, strategy: str) -> Built:
    return Built(_runner(src, cell_of(src), split=cell_of(src) in CELLS), dict(src.named_parameters()))


register(Backend("cudnn", _build_nn, devices=("cuda",), baseline=True, variable=True,
                 notes="torch.nn.LSTM / GRU / RNN on CUDA (cuDNN)"))
register(Backend("torch_cpu", _build_nn, devices=("cpu",), baseline=True, variable=True,
                 notes="torch.nn.LSTM / GRU / RNN on CPU (not cuDNN)"))
# the cells torch.nn lacks: the source module itself (backend="reference") is the baseline
register(Backend("reference", _build_nn, devices=("cuda", "cpu"), baseline=True, cells=OTHER_CELLS,
                 notes="slstm, lnlstm, lngru: the fusedrnn module's PyTorch reference (a Python loop over the steps, "
                       "eager), the comparison baseline of those cells"))


def _build_dense_anchor(src: nn.Module, strategy: str) -> Built:
    """The dense torch.nn module of ``src``'s plain cell (``ANCHORS``) at src's shape, device and dtype, fresh
    weights. It takes the sLSTM's stacked states as its c0 = c0[0] and returns no c_n then (its training step has
    no c_n cotangent: one elementwise add less)."""
    cell = cell_of(src)
    p = next(src.parameters())
    m = ANCHORS[cell](src.input_size, src.hidden_size, src.num_layers, bidirectional=src.bidirectional,
                      device=p.device, dtype=p.dtype).train(src.training)
    inner = _runner(m, "lstm" if ANCHORS[cell] is nn.LSTM else "gru")

    def run(x, h0, c0=None):
        if cell != "slstm":
            return inner(x, h0, c0)
        y, h, _ = inner(x, h0, c0[0])
        return y, h, None

    return Built(run, dict(m.named_parameters()))


register(Backend("nn_dense", _build_dense_anchor, devices=("cuda", "cpu"), cells=OTHER_CELLS, anchor=True,
                 strategies=lambda cell="slstm", heads=1: (f"nn.{ANCHORS[cell].__name__}",),
                 notes="slstm, lnlstm, lngru: the speed anchor, the dense torch.nn module of the plain cell "
                       "(nn.LSTM; nn.GRU for lngru) of the same shape, cuDNN on CUDA; another function: no "
                       "max_rel_err"))


# --- fusedrnn through its public module API --------------------------------------------------------------------
IMPL_DIR_ENV = "FUSEDRNN_IMPL_DIR"


def fusedrnn_models():
    """The ``models`` package whose modules the fusedrnn rows time: this tree's (``fusedrnn.models``), or, with
    ``FUSEDRNN_IMPL_DIR`` set, the top-level ``models`` package of another source tree (e.g. an earlier commit's
    ``kernels/`` and ``models/`` unpacked there, to time it beside this one). Use that in a process of its own:
    both trees register the same custom-op names."""
    other = os.environ.get(IMPL_DIR_ENV)
    if not other:
        from fusedrnn import models
        return models
    other = os.path.realpath(other)
    if other not in sys.path:
        sys.path.insert(0, other)
    import models  # noqa: PLC0415 - the other tree's, first on sys.path
    if not os.path.realpath(models.__file__).startswith(other + os.sep):
        raise RuntimeError(f"{IMPL_DIR_ENV}={other}: imported models from {models.__file__} instead")
    return models


def fusedrnn_class(cell: str):
    """The fusedrnn module class of ``cell`` (models.LSTM, models.GRU, models.RNN); NotImplementedError when the
    tree's models has none (models.GRU before it exists), which a sweep row records as its error."""
    models = fusedrnn_models()
    cls = getattr(models, FUSEDRNN_CLASSES[cell], None)
    if cls is None:
        raise NotImplementedError(f"this tree's models has no {FUSEDRNN_CLASSES[cell]} ({cell} cell)")
    return cls


def _fusedrnn_strategies(cell: str = "lstm", heads: int = 1) -> tuple[str, ...]:
    if heads > 1 or cell == "slstm":  # the per-head kernels run whatever the strategy (models/heads.py)
        return ("auto",)
    models = fusedrnn_models()
    cls = getattr(models, FUSEDRNN_CLASSES[cell], None)
    # the strategies the cell's module accepts (models._base: ``_strategies``); an earlier commit's models
    # (FUSEDRNN_IMPL_DIR) may predate them: it then had per_step only (and STRATEGIES for the LSTM, if any)
    listed = getattr(cls, "_strategies", None)
    if listed is None:
        listed = (getattr(models, "STRATEGIES", None) if cell == "lstm" else None) or ("per_step",)
    return tuple(s for s in listed if s != "auto") or ("auto",)


def _build_fusedrnn(src: nn.Module, strategy: str) -> Built:
    cell, heads = cell_of(src), heads_of(src)
    models = fusedrnn_models()
    cls = fusedrnn_class(cell)

    # the rows time the kernels and compare them with the baseline themselves: the first-use self-check would
    # serve a failing configuration with the reference under this row's name (models/_selfcheck.py)
    getattr(models, "set_selfcheck", lambda mode: None)("off")
    p = next(src.parameters())
    kw = {"num_heads": heads} if heads > 1 or cell == "slstm" else {}
    m = cls(src.input_size, src.hidden_size, num_layers=src.num_layers, bidirectional=src.bidirectional,
            device=p.device, dtype=p.dtype, backend="triton", strategy=strategy or "auto", **kw)
    state = src.state_dict()
    if heads > 1 and cell in CELLS:  # the source holds the dense block-diagonal equivalent
        state = {k: models.dense_to_heads(v, heads) if k.startswith("weight_hh") else v for k, v in state.items()}
    m.load_state_dict(state)
    run = _runner(m, cell)

    if strategy not in ("", "auto", "per_step"):
        run = _no_fallback(run, strategy)
    return Built(run, dict(m.named_parameters()))


class _FallbackSeen(logging.Handler):
    def __init__(self, reasons: list):
        super().__init__(logging.DEBUG)
        self.reasons = reasons

    def emit(self, record):
        msg = record.getMessage()
        if "runs per_step" in msg:
            self.reasons.append(msg)


@contextmanager
def fallback_reasons():
    """Collect, while the block runs, every reason fusedrnn logs (DEBUG, "fusedrnn" logger) for running a
    launch per_step instead of the strategy it was asked for; yields the list they are appended to."""
    log = logging.getLogger("fusedrnn")
    reasons: list[str] = []
    seen, level = _FallbackSeen(reasons), log.level
    log.addHandler(seen)
    log.setLevel(logging.DEBUG)
    try:
        yield reasons
    finally:
        log.removeHandler(seen)
        log.setLevel(level)


def _no_fallback(run, strategy: str):
    """Wrap ``run`` so that a strategy that falls back to per_step (fusedrnn logs the reason on its "fusedrnn"
    logger) raises instead: its row then carries the reason as an error rather than per_step timings under
    the wrong strategy name."""
    def checked(x, h0, c0=None, **kw):
        with fallback_reasons() as reasons:
            out = run(x, h0, c0, **kw)
        if reasons:
            raise RuntimeError(f"strategy {strategy!r} not applicable here: {reasons[0]}")
        return out

    return checked


register(Backend("fusedrnn", _build_fusedrnn, devices=("cuda", "cpu"), strategies=_fusedrnn_strategies,
                 cells=CELLS + OTHER_CELLS, variable=True,
                 notes="models.LSTM / GRU / RNN / SLSTM / LayerNormLSTM / LayerNormGRU(backend='triton'); on CPU the "
                       "Triton interpreter"))


# --- eager and compiled cell loops ------------------------------------------------------------------------------
CELL_MODULES = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


def _cells_from(src: nn.RNNBase) -> tuple[list[nn.RNNCellBase], dict[str, Tensor]]:
    """One nn.LSTMCell / GRUCell / RNNCell per (layer, direction), holding copies of src's weights; params
    under src's names."""
    p = next(src.parameters())
    cell_cls = CELL_MODULES[cell_of(src)]
    dirs = 2 if src.bidirectional else 1
    cells, params = [], {}
    for layer in range(src.num_layers):
        for d in range(dirs):
            in_size = src.input_size if layer == 0 else src.hidden_size * dirs
            cell = cell_cls(in_size, src.hidden_size, device=p.device, dtype=p.dtype)
            sfx = _suffix(layer, d)
            with torch.no_grad():
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(getattr(src, name + sfx))
                    params[name + sfx] = getattr(cell, name)
            cells.append(cell)
    return cells, params


def _loop(step, n_layers: int, dirs: int, x: Tensor, h0: Tensor, c0: Tensor | None):
    """Run ``step(k, x_t, h, c) -> (h, c)`` over time for every layer k and direction, as nn.LSTM does
    (c is None throughout for the cells without a cell state; c_n is then None)."""
    layer_in, hs, cs = x, [], []
    for layer in range(n_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            h, c = h0[k], (None if c0 is None else c0[k])
            ys = []
            for t in (range(x.shape[0]) if d == 0 else reversed(range(x.shape[0]))):
                h, c = step(k, layer_in[t], h, c)
                ys.append(h)
            if d:
                ys.reverse()
            outs.append(torch.stack(ys))
            hs.append(h)
            cs.append(c)
        layer_in = outs[0] if dirs == 1 else torch.cat(outs, dim=2)
    return layer_in, torch.stack(hs), (None if c0 is None else torch.stack(cs))


def _build_torch_loop(src: nn.RNNBase, strategy: str) -> Built:
    cells, params = _cells_from(src)
    dirs = 2 if src.bidirectional else 1

    def step(k, xt, h, c):
        return cells[k](xt, (h, c)) if c is not None else (cells[k](xt, h), None)

    def run(x, h0, c0=None):
        return _loop(step, src.num_layers, dirs, x, h0, c0)

    return Built(run, params)


register(Backend("torch_loop", _build_torch_loop, devices=("cuda", "cpu"),
                 notes="nn.LSTMCell / GRUCell / RNNCell stepped in a Python loop, eager"))


def lstm_cell_math(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
    """One LSTM step written out (gates i, f, g, o): the function torch.compile fuses."""
    z = x @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh
    i, f, g, o = z.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell_math(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
    """One GRU step written out (gates r, z, n, as nn.GRU: n = tanh(x_n + r * (h W_hn^T + b_hn)))."""
    xr, xz, xn = (x @ w_ih.t() + b_ih).chunk(3, dim=1)
    hr, hz, hn = (h @ w_hh.t() + b_hh).chunk(3, dim=1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def rnn_cell_math(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
    """One tanh RNN step written out."""
    return torch.tanh(x @ w_ih.t() + b_ih + h @ w_hh.t() + b_hh)


def _build_torch_compile(src: nn.RNNBase, strategy: str) -> Built:
    # Only the cell is compiled: compiling the 1024-step loop would unroll it for minutes.
    cells, params = _cells_from(src)
    dirs = 2 if src.bidirectional else 1
    cell = cell_of(src)
    if cell == "rnn" and src.nonlinearity != "tanh":
        raise NotImplementedError("torch_compile backend: tanh RNN only")
    math_fn = {"lstm": lstm_cell_math, "gru": gru_cell_math, "rnn": rnn_cell_math}[cell]
    step_fn = torch.compile(math_fn, dynamic=False)

    def step(k, xt, h, c):
        cl = cells[k]
        if c is not None:
            return step_fn(xt, h, c, cl.weight_ih, cl.weight_hh, cl.bias_ih, cl.bias_hh)
        return step_fn(xt, h, cl.weight_ih, cl.weight_hh, cl.bias_ih, cl.bias_hh), None

    def run(x, h0, c0=None):
        return _loop(step, src.num_layers, dirs, x, h0, c0)

    return Built(run, params)


register(Backend("torch_compile", _build_torch_compile, devices=("cuda", "cpu"), default_on=("cuda",),
                 notes="the written-out cell under torch.compile, the loop eager; first call = compile_s"))


# --- FlashRNN (NX-AI), when importable ------------------------------------------------------------------------
def _flashrnn_unavailable() -> str | None:
    for mod in ("flashrnn", "einops"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not importable"
    return None


def _build_flashrnn(src: nn.RNNBase, strategy: str) -> Built:
    """FlashRNN's fused LSTM; the input projection x @ W_ih^T is timed inside ``run`` so the work equals
    nn.LSTM's. Layout mapping (Wx (B, T, 4, 1, H), R (4, 1, H, H), b (4, 1, H)) is checked by the error column
    of every row (the error against the comparison baseline)."""
    if cell_of(src) != "lstm":
        raise NotImplementedError("flashrnn backend: the LSTM only")
    if src.num_layers != 1 or src.bidirectional:
        raise NotImplementedError("flashrnn backend: 1 layer, unidirectional only")
    from flashrnn import flashrnn

    dtype_name = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
    p = next(src.parameters())
    if p.dtype not in dtype_name:
        raise NotImplementedError(f"flashrnn backend: dtype {p.dtype} unsupported")
    H = src.hidden_size
    params = {n: t.detach().clone().requires_grad_(True) for n, t in src.named_parameters()}

    def run(x, h0, c0):
        T, B, _ = x.shape
        wx = (x.transpose(0, 1) @ params["weight_ih_l0"].t()).view(B, T, 4, 1, H)
        r = params["weight_hh_l0"].view(4, H, H).transpose(1, 2).unsqueeze(1)  # (4, 1, H_in, H_out)
        b = (params["bias_ih_l0"] + params["bias_hh_l0"]).view(4, 1, H)
        states = torch.stack([h0[0], c0[0]]).view(2, B, 1, H)
        out, last = flashrnn(wx, r, b, states=states, function="lstm", backend="cuda_fused",
                             dtype=dtype_name[p.dtype])
        y = out[0].reshape(B, -1, H)[:, -T:].transpose(0, 1)
        last = last.reshape(2, B, H)
        return y, last[0:1], last[1:2]

    return Built(run, params)


register(Backend("flashrnn", _build_flashrnn, devices=("cuda",), unavailable=_flashrnn_unavailable,
                 notes="FlashRNN cuda_fused LSTM, input projection included", cells=("lstm",)))
