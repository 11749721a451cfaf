"""Episode resets (``forward(..., resets=)``): every module against the same module run segment by segment, each
segment as its own sequence from zeros (torch.nn's modules where they exist; the use-gate LSTM and the sLSTM
against our reference backend without resets), in float64: outputs, final states and every gradient, both
directions, two layers, padded (time-major and batch_first) and packed input, every backend and strategy."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from models import GRU, LSTM, RNN, SLSTM, LayerNormLSTM, UseGateLSTM

from .helpers import DEVICE, loss_of, rand
from .test_heads import poisoned  # noqa: F401 (fixture)

TOL = 1e-10
CELLS = {
    "lstm": (LSTM, torch.nn.LSTM, 2),
    "gru": (GRU, torch.nn.GRU, 1),
    "rnn": (RNN, torch.nn.RNN, 1),
    "usegate": (UseGateLSTM, None, 2),
    "slstm": (SLSTM, None, 4),
}


def masks(kind: str, T: int, B: int) -> torch.Tensor:
    """(T, B) bool: "random" (row 0 reset at t = 0, row 1 at two consecutive steps, the rest random),
    "none" (all false), "all" (every step)."""
    if kind == "none":
        return torch.zeros(T, B, dtype=torch.bool)
    if kind == "all":
        return torch.ones(T, B, dtype=torch.bool)
    g = torch.Generator().manual_seed(T * 31 + B)
    r = torch.rand(T, B, generator=g) < 0.3
    r[0, 0] = True
    r[:, 1] = False
    r[2, 1] = r[3, 1] = True
    return r


def _make(cell, backend, strategy, layers, bidir, batch_first=False, I=3, H=4):
    ours_cls, nn_cls, _ = CELLS[cell]
    kw = dict(num_layers=layers, bidirectional=bidir, batch_first=batch_first, dtype=torch.float64, device=DEVICE)
    if cell == "slstm":
        kw["num_heads"] = 2
    ours = ours_cls(I, H, backend=backend, strategy=strategy, **kw)
    if nn_cls is not None:
        oracle = nn_cls(I, H, **kw)
        oracle.load_state_dict(ours.state_dict())
    else:
        oracle = ours_cls(I, H, backend="reference", **kw)
        oracle.load_state_dict(ours.state_dict())
    return ours, oracle


def _states(cell, L, B, H, given: bool):
    n = CELLS[cell][2]
    if not given:
        return None
    s = [rand(L, B, H, scale=0.5, requires_grad=True) for _ in range(n)]
    if cell == "slstm":  # n_0 >= 1 or 0, m_0 any: the stabilised forms are then exact (docs/MATH.md)
        s[2] = (s[2].detach().abs() + 1).requires_grad_(True)
    return s


def _pack_hx(cell, states):
    if states is None:
        return None
    return states[0] if len(states) == 1 else tuple(states)


def segment_oracle(oracle, cell, x, states, resets, lengths, bidir):
    """Outputs and final states of ``oracle`` run on each segment of each row alone (time-major x (T, B, I)):
    the forward direction starts from the given h_0 only in a row's first segment without a reset at t = 0, the
    reverse direction from its h_0 only in the row's last segment."""
    T, B, _ = x.shape
    D = 2 if bidir else 1
    L = oracle.num_layers * D
    H = oracle.hidden_size
    n = CELLS[cell][2]
    outs = [[None] * B for _ in range(T)]
    finals = [[[None] * B for _ in range(L)] for _ in range(n)]
    for b in range(B):
        Tb = int(lengths[b]) if lengths is not None else T
        starts = [t for t in range(Tb) if t == 0 or resets[t, b]]
        for i, s in enumerate(starts):
            e = starts[i + 1] if i + 1 < len(starts) else Tb
            first, last = i == 0, i == len(starts) - 1
            seg_states = []
            for k in range(n):
                rows = []
                for ld in range(L):
                    d = ld % D
                    use = states is not None and ((d == 0 and first and not resets[0, b]) or (d == 1 and last))
                    rows.append(states[k][ld, b] if use else x.new_zeros(H))
                seg_states.append(torch.stack(rows).unsqueeze(1))
            hx = seg_states[0] if n == 1 else tuple(seg_states)
            y, hn = oracle(x[s:e, b:b + 1], hx)
            hn = (hn,) if n == 1 else tuple(hn)
            for t in range(s, e):
                outs[t][b] = y[t - s, 0]
            for k in range(n):
                for ld in range(L):
                    d = ld % D
                    if (d == 0 and last) or (d == 1 and first):
                        finals[k][ld][b] = hn[k][ld, 0]
        for t in range(Tb, T):
            outs[t][b] = x.new_zeros(D * H)
    y = torch.stack([torch.stack(row) for row in outs])
    fin = [torch.stack([torch.stack(r) for r in f]) for f in finals]
    return y, fin


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def _check(ours, oracle, cell, T=5, B=4, kind="random", given=True, batch_first=False, packed=False):
    L = ours.num_layers * (2 if ours.bidirectional else 1)
    H = ours.hidden_size
    x = rand(T, B, ours.input_size, requires_grad=True)
    states = _states(cell, L, B, H, given)
    resets = masks(kind, T, B)
    lengths = None
    if packed:
        lengths = torch.tensor(sorted(torch.randint(1, T + 1, (B,)).tolist(), reverse=True))
        lengths[0] = T
        inp = pack_padded_sequence(x, lengths)
        packed_resets = pack_padded_sequence(resets.unsqueeze(2), lengths).data.squeeze(1)
        out, hn = ours(inp, _pack_hx(cell, states), resets=packed_resets)
        y = torch.nn.utils.rnn.pad_packed_sequence(out)[0]
        resets = resets & (torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0))
    elif batch_first:
        out, hn = ours(x.transpose(0, 1), _pack_hx(cell, states), resets=resets.t().contiguous())
        y = out.transpose(0, 1)
    else:
        y, hn = ours(x, _pack_hx(cell, states), resets=resets)
    hn = (hn,) if CELLS[cell][2] == 1 else tuple(hn)
    want_y, want_hn = segment_oracle(oracle, cell, x, states, resets, lengths, ours.bidirectional)
    assert (y - want_y).abs().max() <= TOL, "output"
    for k, (a, b) in enumerate(zip(hn, want_hn)):
        assert (a - b).abs().max() <= TOL, f"final state {k}"
    leaves = [x, *(states or [])]
    params = list(ours.parameters())
    got = _grads(loss_of([y, *hn]), leaves + params)
    want = _grads(loss_of([want_y, *want_hn]), leaves + list(oracle.parameters()))
    names = ["x"] + [f"state {k}" for k in range(len(states or []))] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, got, want):
        if cell == "slstm" and name == "state 3":  # m_0 gets no gradient (docs/MATH.md)
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        assert torch.isfinite(a).all(), name
        assert (a - b).abs().max() <= TOL * max(1.0, b.abs().max().item()), f"grad {name}"
    return resets


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "usegate", "slstm"])
def test_reference_backend_bidir_2layers(cell):
    ours, oracle = _make(cell, "reference", "auto", 2, True)
    _check(ours, oracle, cell)


@pytest.mark.parametrize("kind", ["none", "all"])
def test_reference_all_false_all_true(kind):
    ours, oracle = _make("lstm", "reference", "auto", 1, True)
    _check(ours, oracle, "lstm", kind=kind)


def test_reference_packed_and_batch_first():
    ours, oracle = _make("gru", "reference", "auto", 2, True)
    _check(ours, oracle, "gru", B=4, T=6, packed=True)
    ours, oracle = _make("lstm", "reference", "auto", 1, False, batch_first=True)
    oracle.batch_first = False  # the oracle runs time-major segments
    _check(ours, oracle, "lstm", batch_first=True, given=False)


def test_reset_at_t0_overrides_h0_and_zeroes_its_gradient():
    ours, _ = _make("lstm", "reference", "auto", 1, False)
    x = rand(3, 2, 3)
    h0, c0 = rand(1, 2, 4, requires_grad=True), rand(1, 2, 4, requires_grad=True)
    resets = torch.tensor([[True, False], [False, False], [False, False]])
    y, (hn, cn) = ours(x, (h0, c0), resets=resets)
    y0, _ = ours(x[:, :1])
    assert (y[:, 0] - y0[:, 0]).abs().max() <= TOL
    dh0, dc0 = torch.autograd.grad(loss_of([y, hn, cn]), [h0, c0])
    assert torch.all(dh0[:, 0] == 0) and torch.all(dc0[:, 0] == 0)
    assert torch.all(dh0[:, 1] != 0)


@pytest.mark.parametrize("bad, err, match", [
    (torch.zeros(5, 3, dtype=torch.bool), RuntimeError, r"resets must have shape \(T, B\) = \(4, 3\)"),
    (torch.zeros(4, 3), TypeError, "resets must be a torch.bool tensor, got dtype torch.float32"),
    ([[False] * 3] * 4, TypeError, "resets must be a torch.bool tensor, got list"),
    (torch.zeros(4, 3, dtype=torch.bool, device="meta"), RuntimeError, "resets is on meta"),
])
def test_bad_masks_name_resets(bad, err, match):
    m = LSTM(2, 3, backend="reference")
    with pytest.raises(err, match=match):
        m(torch.randn(4, 3, 2), resets=bad)


def test_bad_packed_and_batch_first_shapes():
    m = GRU(2, 3, backend="reference", batch_first=True)
    with pytest.raises(RuntimeError, match=r"\(B, T\) with batch_first = \(3, 4\)"):
        m(torch.randn(3, 4, 2), resets=torch.zeros(4, 3, dtype=torch.bool))
    packed = pack_padded_sequence(torch.randn(4, 3, 2), torch.tensor([4, 3, 1]))
    with pytest.raises(RuntimeError, match=r"\(total packed rows,\) in the packed order = \(8,\)"):
        GRU(2, 3, backend="reference")(packed, resets=torch.zeros(4, 3, dtype=torch.bool))


def test_layernorm_modules_refuse_resets():
    with pytest.raises(NotImplementedError, match="LayerNormLSTM does not support resets"):
        LayerNormLSTM(2, 3, backend="reference")(torch.randn(4, 3, 2), resets=torch.zeros(4, 3, dtype=torch.bool))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "usegate"])
def test_triton_per_step_bidir_2layers(cell):
    ours, oracle = _make(cell, "triton", "per_step", 2, True)
    _check(ours, oracle, cell, T=4, B=3)


def test_triton_packed_lstm():
    ours, oracle = _make("lstm", "triton", "per_step", 1, True)
    _check(ours, oracle, "lstm", T=5, B=4, packed=True)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_triton_persistent_strategy(cell, monkeypatch):
    """strategy="persistent" with resets (in the interpreter one program owns every unit: the kernels' math); the
    persistent kernels run, forward and backward (the reverse direction's masks: the per_step tests)."""
    from kernels import gru_persistent, lstm_persistent

    mod = {"lstm": lstm_persistent, "gru": gru_persistent}[cell]
    calls = []
    for kind in ("fwd", "bwd"):
        name = f"{cell}_{kind}_persistent"
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _k=kind, **k: calls.append((_k, k["resets"])) or _r(*a, **k))
    ours, oracle = _make(cell, "triton", "persistent", 1, False)
    _check(ours, oracle, cell, T=4, B=3)
    assert sorted(k for k, r in calls if r is not None) == ["bwd", "fwd"]


def test_triton_lstm_proj_matches_reference():
    """proj_size (the backward's product outside the kernel, masked on the host) against the reference backend,
    which the tests above hold to torch.nn run segment by segment."""
    kw = dict(num_layers=1, proj_size=2, dtype=torch.float64, device=DEVICE)
    ours = LSTM(3, 4, backend="triton", strategy="per_step", **kw)
    ref = LSTM(3, 4, backend="reference", **kw)
    ref.load_state_dict(ours.state_dict())
    x = rand(5, 3, 3, requires_grad=True)
    resets = masks("random", 5, 3)
    outs = [m(x, resets=resets) for m in (ours, ref)]
    flat = [[o[0], *o[1]] for o in outs]
    for a, b in zip(*flat):
        assert (a - b).abs().max() <= TOL
    got = torch.autograd.grad(loss_of(flat[0]), [x, *ours.parameters()])
    want = torch.autograd.grad(loss_of(flat[1]), [x, *ref.parameters()])
    for a, b in zip(got, want):
        assert (a - b).abs().max() <= TOL * max(1.0, b.abs().max().item())


def test_readme_policy_example_runs():
    """The README's "Episode resets" example runs on CPU as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index("### Episode resets")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    scope = {"__name__": "readme_resets"}
    exec(compile(code, "README.md: Episode resets", "exec"), scope)
    assert torch.isfinite(scope["loss"]) and scope["out"].shape == (16, 8, 32)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_selfcheck_checks_a_call_with_resets_as_its_own_configuration(num_heads):
    """The first-use self-check (forced on) compares the fused path with resets against the reference, with
    random resets, once per configuration; a call without resets is another configuration. Dense and per-head
    kernels."""
    from models import _selfcheck as S

    S.forget()
    S.set_selfcheck("raise")
    try:
        m = GRU(3, 4, backend="triton", strategy="per_step", dtype=torch.float64, num_heads=num_heads)
        x = rand(4, 2, 3)
        with torch.no_grad():  # the forward check (the backward's is the same machinery)
            m(x, resets=masks("random", 4, 2))
            m(x, resets=masks("none", 4, 2))  # the same configuration: no second check
            report = S.selfcheck_report()
            assert len(report) == 1 and report[0]["status"] == "pass" and ", resets" in report[0]["config"], report
            assert ("multi-head" in report[0]["config"]) == (num_heads > 1), report
            m(x)
        assert len(S.selfcheck_report()) == 2
    finally:
        S.set_selfcheck(None)
        S.forget()


def test_persistent_kernels_are_compile_checked_with_resets():
    """Every persistent entry of the compile check compiles the reset variant (HAS_RESETS, with its mask pointer),
    the one a CUDA launch with resets runs (its "+launch" variant, without the flags, beside it)."""
    from experiments import compile_check as cc

    entries = [e for m in ("kernels.lstm_persistent", "kernels.gru_persistent") for e in cc._entries(m)
               if not e.get("variant_of")]
    assert len(entries) == 24
    for e in entries:
        assert e["constexprs"]["HAS_RESETS"] is True and e["args"]["resets"] == "*i8", e["dtypes"]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_launch_with_resets_is_planned_persistent(monkeypatch, cell, kind, dtype):
    """A sequence with a reset mask on CUDA takes the persistent plan and passes the mask to the persistent
    launcher (no per_step fallback). No GPU needed: the tensors report a CUDA device, the plan and the launcher
    are stand-ins that record their call."""
    from kernels import gru, gru_persistent, lstm, lstm_persistent

    T, B, H = 4, 2, 4
    pmod = lstm_persistent if cell == "lstm" else gru_persistent
    calls = {}

    def plan(strategy, **kw):
        calls["plan"] = kw
        return "cfg"

    def run(*args, cfg, resets, **kw):
        calls["run"] = cfg, resets

    monkeypatch.setattr(pmod, "plan", plan)
    monkeypatch.setattr(pmod, f"{cell}_{kind}_persistent", run)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")))
    r = masks("random", T, B)

    def x(*shape):
        return rand(*shape, dtype=dtype)

    if (cell, kind) == ("lstm", "fwd"):
        lstm.lstm_fwd_sequence(x(T, B, 4 * H), x(4 * H, H), x(B, H), x(B, H), resets=r)
    elif (cell, kind) == ("lstm", "bwd"):
        lstm.lstm_bwd_sequence(x(T, B, H), x(B, H), x(4 * H, H), x(B, H), rand(T, B, H, dtype=torch.float32),
                               x(T, B, 4 * H), resets=r)
    elif kind == "fwd":
        gru.gru_fwd_sequence(x(T, B, 3 * H), x(3 * H, H), None, x(B, H), resets=r)
    else:
        gru.gru_bwd_sequence(x(T, B, H), x(3 * H, H), x(B, H), x(T, B, H), x(T, B, 4 * H), resets=r)
    assert calls["plan"]["device"].type == "cuda" and calls["plan"]["kind"] == kind
    cfg, resets = calls["run"]
    assert cfg == "cfg" and torch.equal(resets.view(torch.bool), r)


def test_unbatched_input_takes_a_T_mask():
    m = LSTM(3, 4, backend="reference", dtype=torch.float64)
    x, r = rand(5, 3), masks("random", 5, 2)[:, 0]
    y, (h, c) = m(x, resets=r)
    yb, (hb, cb) = m(x.unsqueeze(1), resets=r.unsqueeze(1))
    assert torch.equal(y, yb[:, 0]) and torch.equal(h, hb[:, 0]) and torch.equal(c, cb[:, 0])
    with pytest.raises(RuntimeError, match=r"resets must have shape \(T,\) for unbatched input = \(5,\)"):
        m(x, resets=r.unsqueeze(1))


# --- the per-head kernels (kernels/heads.py): num_heads=2, heads of D = 16 ---------------------------------------
HEADS = {"lstm": LSTM, "gru": GRU, "rnn": RNN, "slstm": SLSTM}


@pytest.fixture
def head_launches(monkeypatch, poisoned):  # noqa: F811 (every buffer the kernels write starts as NaN)
    """The per-head kernel launches of a test, as (kind, whether a reset mask was passed)."""
    from kernels import heads as k

    seen = []
    real = k._launch

    def spy(kernel, kind, args, *rest):
        seen.append((kind, args["resets"] is not None))
        return real(kernel, kind, args, *rest)

    monkeypatch.setattr(k, "_launch", spy)
    return seen


def _make_heads(cell, layers=1, bidir=False, **extra):
    """(triton module with two heads of 16, the reference backend's with the same parameters of unit scale)."""
    kw = dict(num_layers=layers, bidirectional=bidir, num_heads=2, dtype=torch.float64, device=DEVICE, **extra)
    ours = HEADS[cell](3, 32, backend="triton", **kw)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(rand(*p.shape, scale=0.5))
    oracle = HEADS[cell](3, 32, backend="reference", **kw)
    oracle.load_state_dict(ours.state_dict())
    return ours, oracle


@pytest.mark.parametrize("cell, extra", [("lstm", {}), ("gru", {}), ("rnn", dict(nonlinearity="relu")),
                                         ("slstm", {})])
def test_triton_heads_match_segments(cell, extra, head_launches):
    """Each cell's per-head kernels with resets (row 0 at t = 0, row 1 mid-sequence) against the reference run
    segment by segment: outputs, final states and every gradient; the kernels took the mask, forward and
    backward (no reference fallback)."""
    ours, oracle = _make_heads(cell, **extra)
    _check(ours, oracle, cell, T=6, B=3)
    assert sorted(set(head_launches)) == [("bwd", True), ("fwd", True)]


def test_triton_heads_bidir_2layers(head_launches):
    ours, oracle = _make_heads("rnn", layers=2, bidir=True)
    _check(ours, oracle, "rnn", T=6, B=3)
    assert len(head_launches) == 8 and all(r for _, r in head_launches)


def test_triton_heads_packed(head_launches):
    ours, oracle = _make_heads("lstm")
    _check(ours, oracle, "lstm", T=6, B=4, packed=True)
    assert all(r for _, r in head_launches)


def test_triton_heads_without_config_run_dense_kernels_with_resets(monkeypatch):
    """Heads without a compile-checked per-head config run the dense fused kernels on the dense equivalent, the
    reset mask with them."""
    from kernels import heads as k

    monkeypatch.setattr(k, "supported", lambda dtype, D, cell="lstm": False)
    ours, oracle = _make_heads("gru")
    _check(ours, oracle, "gru", T=4, B=3)


def test_a_masked_step_launch_autotunes_over_the_reset_configs(monkeypatch):
    """On a GPU a step launch with a reset mask goes through the kernel's reset autotuners (its ``reset_configs``,
    the configs minus ``resets_drop``), one without through the plain ones; with FUSEDRNN_AUTOTUNE=0 the fixed
    config comes from the same list. No GPU here: the launch is made with the tuned kernels replaced."""
    from kernels import _common
    from kernels.rnn import _rnn_bwd_step as kern

    assert kern.has_resets and any(len(kern.reset_configs[g]) < len(kern.configs[g]) for g in kern.configs)
    monkeypatch.setattr(_common, "interpreting", lambda: False)
    calls = []

    class Tuned:
        def __init__(self, label):
            self.label = label

        def __getitem__(self, grid):
            return lambda **kwargs: calls.append(self.label)

    monkeypatch.setattr(kern, "tuned", {g: Tuned("plain") for g in kern.tuned})
    monkeypatch.setattr(kern, "reset_tuned", {g: Tuned("resets") for g in kern.tuned})
    w = torch.ones(4, 4, dtype=torch.float32)
    mask = torch.zeros(4, dtype=torch.int8)
    kern.launch(w=w, B=4, H=4, K=4, resets_next=None)
    kern.launch(w=w, B=4, H=4, K=4, resets_next=mask)
    assert calls == ["plain", "resets"]
    monkeypatch.setenv("FUSEDRNN_AUTOTUNE", "0")
    picked = []
    monkeypatch.setattr(_common, "fixed_config", lambda tuner, kwargs: picked.append(tuner) or tuner.configs[0])
    monkeypatch.setattr(kern, "plain", Tuned("fixed"))
    kern.launch(w=w, B=4, H=4, K=4, resets_next=mask)
    kern.launch(w=w, B=4, H=4, K=4, resets_next=None)
    assert picked == [kern.reset_autotuners["fp32"], kern.autotuners["fp32"]]
