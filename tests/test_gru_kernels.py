"""kernels/gru.py in the interpreter: the layer functions against the float64 reference (kernels.reference.
gru_layer_ref) and its autograd, with and without biases and lengths (unsorted, one of them 0), in fp64, fp32
and fp16/bf16 (against the float64 oracle); the saved gates' layout; the per-step launchers on their own, at
the tile shapes a GPU runs; the input checks. Every tensor the kernels allocate is NaN-poisoned
(``experiments.gpu_check.poisoned``), so an element a kernel fails to write shows."""
import pytest
import torch

from experiments.gpu_check import poisoned
from kernels import _common, gru
from kernels.reference import gru_input_projection, gru_layer_ref, gru_pointwise

from .compare import compare_lowp
from .helpers import DEVICE, assert_close, rand

D = torch.float64
NAMES = ("dx", "dh0", "dW_ih", "dW_hh", "db_ih", "db_hh")


def _params(I, H, bias, dtype=D, seed=0):
    torch.manual_seed(seed)
    p = [rand(3 * H, I, dtype=dtype, scale=0.4), rand(3 * H, H, dtype=dtype, scale=0.4)]
    p += [rand(3 * H, dtype=dtype, scale=0.5), rand(3 * H, dtype=dtype, scale=0.5)] if bias else [None, None]
    return p


def _inputs(T, B, I, H, dtype=D):
    return rand(T, B, I, dtype=dtype), rand(B, H, dtype=dtype, scale=0.5), rand(T, B, H, dtype=dtype)


def _lengths(lens):
    return None if lens is None else torch.tensor(lens, dtype=torch.int32, device=DEVICE)


def _ours(x, h0, params, dy, lengths, strategy="auto"):
    """Forward and backward through the layer functions, every allocation poisoned."""
    w_ih, w_hh, b_ih, b_hh = params
    with poisoned():
        y, gates = gru.gru_layer_fwd(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, strategy=strategy)
        grads = gru.gru_layer_bwd(dy, x, h0, y, w_ih, w_hh, gates, lengths, has_bias=b_ih is not None,
                                  strategy=strategy)
    return y, gates, dict(zip(NAMES, grads))


def _reference(x, h0, params, dy, lengths):
    """y and every gradient of sum(y * dy) by autograd through the reference, in the inputs' dtype."""
    leaves = [t.detach().requires_grad_(True) if t is not None else None for t in (x, h0, *params)]
    y, _ = gru_layer_ref(*leaves, lengths=None if lengths is None else lengths.long())
    used = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, used, dy))
    return y.detach(), {n: (next(grads) if t is not None else None) for n, t in zip(NAMES, leaves)}


def _reference_gates(x, h0, params, y):
    """[r, z, n, hn] per step from the reference pointwise step, given the outputs (h_{t-1} = y[t-1])."""
    w_ih, w_hh, b_ih, b_hh = params
    H = h0.shape[1]
    xp = gru_input_projection(x, w_ih, b_ih, b_hh)
    h_prev = torch.cat([h0.unsqueeze(0), y[:-1]])
    out = []
    for t in range(x.shape[0]):
        _, r, z, n, hn = gru_pointwise(xp[t], h_prev[t] @ w_hh.t(), h_prev[t], None if b_hh is None else b_hh[2 * H:])
        out.append(torch.cat([r, z, n, hn], 1))
    return torch.stack(out)


def _active(lengths, T, B):
    if lengths is None:
        return torch.ones(T, B, 1, dtype=torch.bool, device=DEVICE)
    return (torch.arange(T, device=DEVICE)[:, None] < lengths.to(DEVICE)[None, :]).unsqueeze(2)


FP64_CASES = [  # (id, T, B, I, H, bias, lengths): H not a multiple of the interpreter's 16-unit tiles
    ("H20_bias", 5, 5, 7, 20, True, None),
    ("H24_no_bias_lengths", 6, 5, 3, 24, False, [3, 6, 0, 1, 6]),
    ("H20_bias_lengths_B17", 4, 17, 5, 20, True, [4 - (3 * b) % 4 for b in range(17)]),
]


@pytest.mark.parametrize("case", FP64_CASES, ids=lambda c: c[0])
def test_fp64_layer_matches_reference_and_autograd(case):
    _, T, B, I, H, bias, lens = case
    lengths = _lengths(lens)
    params = _params(I, H, bias)
    x, h0, dy = _inputs(T, B, I, H)
    y, gates, got = _ours(x, h0, params, dy, lengths)
    y_ref, want = _reference(x, h0, params, dy, lengths)
    assert_close(y, y_ref, D, "y")
    act = _active(lengths, T, B)
    assert (y.masked_select(~act) == 0).all(), "finished rows output 0"
    # the saved gates, [r, z, n, hn], on the rows still running (finished rows' gates are never read)
    g_ref = _reference_gates(x, h0, params, y_ref)
    assert gates.shape == (T, B, 4 * H) and gates.dtype == D
    assert_close(gates * act, g_ref * act, D, "gates")
    for n in NAMES:
        if want[n] is None:
            assert got[n] is None, n
        else:
            assert got[n].dtype == D, n
            assert_close(got[n], want[n], D, n)


def test_fp32_layer_matches_reference():
    T, B, I, H = 6, 5, 7, 20
    lengths = _lengths([6, 2, 5, 1, 4])
    params = _params(I, H, True, torch.float32, seed=1)
    x, h0, dy = _inputs(T, B, I, H, torch.float32)
    y, _, got = _ours(x, h0, params, dy, lengths)
    y_ref, want = _reference(x, h0, params, dy, lengths)
    assert_close(y, y_ref, torch.float32, "y")
    for n in NAMES:
        assert got[n].dtype == torch.float32, n
        assert_close(got[n], want[n], torch.float32, n)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_layer_against_fp64_reference(dtype):
    """fp16/bf16 against the float64 reference on the same rounded values, bounded as ``compare_lowp`` says
    (the reference in ``dtype`` gives PyTorch's own error)."""
    T, B, I, H = 6, 5, 7, 24
    lengths = _lengths([6, 3, 6, 1, 5])
    params = _params(I, H, True, dtype, seed=2)
    x, h0, dy = _inputs(T, B, I, H, dtype)
    y, _, got = _ours(x, h0, params, dy, lengths)
    got["y"] = y

    def ref(dt):
        def c(t):
            return None if t is None else t.to(dt)
        y_r, g = _reference(c(x), c(h0), [c(p) for p in params], c(dy), lengths)
        return {"y": y_r, **g}

    compare_lowp(got, ref(D), ref(dtype), dtype, str(dtype))


def test_store_false_returns_no_gates_and_the_same_outputs():
    T, B, I, H = 4, 5, 3, 20
    params = _params(I, H, True, seed=3)
    x, h0, _ = _inputs(T, B, I, H)
    lengths = _lengths([4, 1, 3, 2, 4])
    with poisoned():
        y, gates = gru.gru_layer_fwd(x, h0, *params, lengths, store=True)
        y2, none = gru.gru_layer_fwd(x, h0, *params, lengths, store=False)
    assert none is None and gates is not None
    assert torch.equal(y, y2)


def test_persistent_strategy_dispatches_to_the_persistent_kernels(monkeypatch):
    """strategy="persistent" reaches kernels/gru_persistent.py from the sequence functions (both passes) and
    agrees with per_step in fp64."""
    from kernels import gru_persistent

    calls = []
    for name in ("gru_fwd_persistent", "gru_bwd_persistent"):
        real = getattr(gru_persistent, name)
        monkeypatch.setattr(gru_persistent, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    T, B, I, H = 3, 5, 3, 32
    params = _params(I, H, True, seed=4)
    x, h0, dy = _inputs(T, B, I, H)
    y, gates, got = _ours(x, h0, params, dy, None, strategy="per_step")
    assert calls == []
    y2, gates2, got2 = _ours(x, h0, params, dy, None, strategy="persistent")
    assert calls == ["gru_fwd_persistent", "gru_bwd_persistent"]
    torch.testing.assert_close(y2, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gates2, gates, rtol=1e-12, atol=1e-12)
    for n in NAMES:
        torch.testing.assert_close(got2[n], got[n], rtol=1e-11, atol=1e-11, msg=n)


# ------------------------------------------------------------------------------------- per-step launchers
def _step_inputs(B, H, seed=5):
    torch.manual_seed(seed)
    return dict(xp=rand(B, 3 * H), h_prev=rand(B, H, scale=0.5), w_hh=rand(3 * H, H, scale=0.4),
                b_hn=rand(H, scale=0.5))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_forward_step_launcher(bias):
    B, H, t = 5, 20, 2
    a = _step_inputs(B, H)
    b_hn = a["b_hn"] if bias else None
    lengths = _lengths([3, 2, 5, 0, 4])  # rows 1 and 3 have ended at t = 2
    h_out = torch.full((B, H), float("nan"), dtype=D)
    gates = torch.full((B, 4 * H), float("nan"), dtype=D)
    gru.gru_fwd_step(a["xp"], a["h_prev"], a["w_hh"], h_out, b_hn, gates, lengths, t)
    h_ref, r, z, n, hn = gru_pointwise(a["xp"], a["h_prev"] @ a["w_hh"].t(), a["h_prev"], b_hn)
    act = (t < lengths).unsqueeze(1)
    assert_close(h_out, torch.where(act, h_ref, 0.0), D, "h_t")
    assert_close(gates, torch.cat([r, z, n, hn], 1), D, "gates")
    h_plain = torch.full((B, H), float("nan"), dtype=D)
    gru.gru_fwd_step(a["xp"], a["h_prev"], a["w_hh"], h_plain, b_hn)  # no gates, no lengths
    assert_close(h_plain, h_ref, D, "h_t without lengths")


@pytest.mark.parametrize("has_next", [True, False], ids=["t_lt_T-1", "t_eq_T-1"])
def test_backward_step_launcher(has_next):
    B, H, t = 5, 24, 1
    a = _step_inputs(B, H, seed=6)
    _, r, z, n, hn = gru_pointwise(a["xp"], a["h_prev"] @ a["w_hh"].t(), a["h_prev"], a["b_hn"])
    gates_t = torch.cat([r, z, n, hn], 1)
    dy = rand(B, H)
    dg_next = rand(B, 4 * H) if has_next else None
    q_in = rand(B, H) if has_next else None
    lengths = _lengths([2, 1, 5, 3, 0])  # rows 1 and 4 have ended at t = 1
    dg = torch.full((B, 4 * H), float("nan"), dtype=D)
    q_out = torch.full((B, H), float("nan"), dtype=D)
    gru.gru_bwd_step(dg_next, a["w_hh"], dy, gates_t, a["h_prev"], q_in, q_out, dg, lengths, t)
    dh = dy + (q_in + dg_next[:, :3 * H] @ a["w_hh"] if has_next else 0)
    dn = dh * (1 - z) * (1 - n * n)
    want = torch.cat([dn * hn * r * (1 - r), dh * (a["h_prev"] - n) * z * (1 - z), dn * r, dn], 1)
    act = (t < lengths).unsqueeze(1)
    assert_close(dg, torch.where(act, want, 0.0), D, "dg_t")
    assert_close(q_out, torch.where(act, dh * z, 0.0), D, "q_out")


TILES = [  # the GPU's tile shapes (see tests/test_step_tiles.py): K = H or 3H not a multiple of BLOCK_K
    _common.TileConfig(B=16, H=16, K=64, warps=4, stages=1),  # 4 chunks of 16 per K slice (backward)
    _common.TileConfig(B=16, H=32, K=128, warps=4, stages=1),  # one slice, one unit tile with masked units
    _common.TileConfig(B=64, H=16, K=32, warps=4, stages=1),  # the backward's 2-D dot, most rows masked
]


@pytest.mark.parametrize("cfg", TILES, ids=lambda c: f"{c.B}x{c.H}x{c.K}")
def test_gpu_tile_shapes_match_reference(cfg, monkeypatch):
    monkeypatch.setattr(_common, "INTERPRETER_CONFIG", cfg)
    T, B, I, H = 3, 5, 4, 20
    params = _params(I, H, True, seed=7)
    x, h0, dy = _inputs(T, B, I, H)
    lengths = _lengths([3, 1, 2, 3, 2])
    y, _, got = _ours(x, h0, params, dy, lengths)
    y_ref, want = _reference(x, h0, params, dy, lengths)
    assert_close(y, y_ref, D, "y")
    for n in NAMES:
        assert_close(got[n], want[n], D, n)


# ------------------------------------------------------------------------------------------- input checks
def test_input_checks_raise_clear_errors():
    T, B, H = 3, 2, 16
    xp, w, h0 = torch.zeros(T, B, 3 * H, dtype=D), torch.zeros(3 * H, H, dtype=D), torch.zeros(B, H, dtype=D)
    fwd = gru.gru_fwd_sequence
    with pytest.raises(ValueError, match="strategy must be one of"):
        fwd(xp, w, None, h0, strategy="fast")
    with pytest.raises(TypeError, match="xp: dtype torch.int32 is not supported"):
        fwd(xp.int(), w.int(), None, h0.int())
    with pytest.raises(RuntimeError, match="larger than 0"):
        fwd(xp[:0], w, None, h0)
    with pytest.raises(RuntimeError, match=r"must be 3 \* hidden_size"):
        fwd(xp[..., :-1], w, None, h0)
    with pytest.raises(RuntimeError, match=r"w_hh: expected shape \(48, 16\)"):
        fwd(xp, w[:, :-1], None, h0)
    with pytest.raises(TypeError, match="h0: expected dtype torch.float64"):
        fwd(xp, w, None, h0.float())
    with pytest.raises(RuntimeError, match=r"b_hn: expected shape \(16,\)"):
        fwd(xp, w, torch.zeros(3 * H, dtype=D), h0)
    with pytest.raises(TypeError, match="lengths: expected dtype torch.int32"):
        fwd(xp, w, None, h0, torch.ones(B, dtype=torch.int64))
    y, gates = torch.zeros(T, B, H, dtype=D), torch.zeros(T, B, 4 * H, dtype=D)
    bwd = gru.gru_bwd_sequence
    with pytest.raises(RuntimeError, match=r"gates: expected shape \(3, 2, 64\)"):
        bwd(y, w, h0, y, gates[..., :3 * H])
    with pytest.raises(RuntimeError, match=r"y: expected shape \(3, 2, 16\)"):
        bwd(y, w, h0, y[:-1], gates)
    with pytest.raises(ValueError, match="strategy must be one of"):
        bwd(y, w, h0, y, gates, strategy="cudnn")
    with pytest.raises(ValueError, match="dg_next and q_in"):
        gru.gru_bwd_step(None, w, y[0], gates[0], h0, h0, h0.clone(), gates[0].clone())
    assert gru.STRATEGIES == ("auto", "per_step", "persistent")
