"""The persistent whole-sequence GRU kernels (kernels/gru_persistent.py).

In the interpreter one program owns every unit (the grid barrier is trivial there), so these tests check the math
of the kernel source against the float64 reference layer (kernels.reference.gru_layer_ref) and its autograd: the
forward's y and saved gates, and every gradient rebuilt from the backward's dg and q0 by the post-loop math of
docs/MATH.md ("GRU"). Also: the barrier timeout and the NaN poisoning (two programs in the interpreter, run one
after the other), and the strategy decision with fake device properties. The many-program kernels are covered by
the static compile check (experiments/compile_check.py).
"""
import logging

import pytest
import torch

from kernels import _persistent as S
from kernels import gru_persistent as G
from kernels._common import DTYPE_GROUPS
from kernels.reference import gru_input_projection, gru_layer_ref, gru_pointwise

from .helpers import DEVICE, max_rel, rel_rms

D = torch.float64
interpreter_only = pytest.mark.skipif(
    DEVICE.type == "cuda", reason="relies on the interpreter running programs one after another")


def _problem(T, B, H, I=3, bias=True, lengths=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=D) * scale).to(DEVICE)

    p = dict(x=r(T, B, I), h0=r(B, H, scale=0.5), w_ih=r(3 * H, I, scale=0.5), w_hh=r(3 * H, H, scale=0.3),
             b_ih=r(3 * H, scale=0.5) if bias else None, b_hh=r(3 * H, scale=0.5) if bias else None)
    p["lengths"] = (torch.tensor([max(1, T - (2 * b) % T) for b in range(B)], dtype=torch.int32, device=DEVICE)
                    if lengths else None)
    return p


def _reference(p, dy):
    """y, the gates [r, z, n, hn] of every active row, and autograd of sum(y * dy) with respect to every input
    of the reference layer."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items() if k != "lengths" and v is not None}
    y, _ = gru_layer_ref(leaves["x"], leaves["h0"], leaves["w_ih"], leaves["w_hh"], leaves.get("b_ih"),
                         leaves.get("b_hh"), p["lengths"])
    grads = dict(zip(leaves, torch.autograd.grad((y * dy).sum(), list(leaves.values()))))
    y = y.detach()
    H = p["h0"].shape[1]
    xp = gru_input_projection(p["x"], p["w_ih"], p["b_ih"], p["b_hh"])
    b_hn = None if p["b_hh"] is None else p["b_hh"][2 * H:]
    gates = []
    for t in range(y.shape[0]):
        h_prev = p["h0"] if t == 0 else y[t - 1]
        _, r, z, n, hn = gru_pointwise(xp[t], h_prev @ p["w_hh"].t(), h_prev, b_hn)
        gates.append(torch.cat([r, z, n, hn], 1))
    return y, torch.stack(gates), grads


def _grads_from(dg, q0, p, y):
    """docs/MATH.md's post-loop math: every input's gradient from the per-step dg = [da_r, da_z, dhn, dn] and q0."""
    H = p["h0"].shape[1]
    dhp = dg[..., :3 * H]  # gradient of h_{t-1} W_hh^T
    dxp = torch.cat([dg[..., :2 * H], dg[..., 3 * H:]], -1)  # gradient of xp
    h_prev = torch.cat([p["h0"][None], y[:-1]])
    out = dict(x=dxp @ p["w_ih"], h0=q0 + dhp[0] @ p["w_hh"], w_ih=torch.einsum("tbg,tbi->gi", dxp, p["x"]),
               w_hh=torch.einsum("tbg,tbh->gh", dhp, h_prev))
    if p["b_hh"] is not None:
        out.update(b_ih=dxp.sum((0, 1)), b_hh=dhp.sum((0, 1)))
    return out


def _active(p, T, B):
    if p["lengths"] is None:
        return torch.ones(T, B, 1, dtype=torch.bool, device=DEVICE)
    return (torch.arange(T, device=DEVICE)[:, None] < p["lengths"][None, :])[..., None]


def _inputs(p, dtype):
    H = p["h0"].shape[1]
    xp = gru_input_projection(p["x"], p["w_ih"], p["b_ih"], p["b_hh"]).to(dtype)
    b_hn = None if p["b_hh"] is None else p["b_hh"][2 * H:].to(dtype)
    return xp, p["w_hh"].to(dtype), b_hn, p["h0"].to(dtype)


@pytest.mark.parametrize("T,B,H,block_b,split,bias,lengths", [
    (1, 1, 20, 4, 1, True, False),  # one step: no barrier wait, no dg of a later step, no split
    (6, 5, 20, 2, 2, True, False),  # batch-tile loop (3 tiles, the last partial), H not a power of two
    (4, 5, 16, 4, 4, True, True),  # lengths, 4 K slices
    (3, 3, 33, 16, 0, False, False),  # no bias, H_PAD = 64 > H, one batch tile, default slices
])
def test_kernels_match_reference_fp64(T, B, H, block_b, split, bias, lengths):
    p = _problem(T, B, H, bias=bias, lengths=lengths)
    dy = torch.randn(T, B, H, generator=torch.Generator().manual_seed(1), dtype=D).to(DEVICE)
    y_ref, gates_ref, grads_ref = _reference(p, dy)
    xp, w, b_hn, h0 = _inputs(p, D)
    cfg = G.interpreter_config(H, block_b, split)
    y, gates = G.gru_fwd_persistent(xp, w, b_hn, h0, p["lengths"], store=True, cfg=cfg)
    act = _active(p, T, B)
    assert max_rel(y, y_ref) <= 1e-12
    assert max_rel(gates, gates_ref) <= 1e-12  # finished rows too: h_{t-1} = y[t-1] (zero once finished)
    y_ns, none = G.gru_fwd_persistent(xp, w, b_hn, h0, p["lengths"], store=False, cfg=cfg)
    assert none is None and torch.equal(y_ns, y)

    dg, q0 = G.gru_bwd_persistent(dy, w, h0, y, gates, p["lengths"], cfg=cfg)
    assert dg.shape == (T, B, 4 * H) and q0.dtype == D
    assert not (dg * ~act).any()  # finished rows get no gradient
    for name, got in _grads_from(dg, q0, p, y).items():
        assert max_rel(got, grads_ref[name]) <= 1e-12, name
    # the backward is a function of the saved tensors only: the same from the reference's y and gates
    dg2, q02 = G.gru_bwd_persistent(dy, w, h0, y_ref, gates_ref * act, p["lengths"], cfg=cfg)
    assert max_rel(dg2, dg) <= 1e-12 and max_rel(q02, q0) <= 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_lower_precision_against_fp64_reference(dtype, tol):
    """fp32 (max-relative) and bf16 (relative RMS; its tl.dot runs on fp32 casts in the interpreter) against the
    float64 reference on the same rounded inputs, with lengths."""
    T, B, H = 4, 3, 16
    p = _problem(T, B, H, lengths=True, seed=3)
    p = {k: (v if v is None or k == "lengths" else v.to(dtype).to(D)) for k, v in p.items()}
    dy = torch.randn(T, B, H, generator=torch.Generator().manual_seed(4), dtype=D).to(DEVICE).to(dtype)
    y_ref, _, grads_ref = _reference(p, dy.to(D))
    xp, w, b_hn, h0 = _inputs(p, dtype)
    cfg = G.interpreter_config(H)
    y, gates = G.gru_fwd_persistent(xp, w, b_hn, h0, p["lengths"], store=True, cfg=cfg)
    assert y.dtype == gates.dtype == dtype
    dg, q0 = G.gru_bwd_persistent(dy, w, h0, y, gates, p["lengths"], cfg=cfg)
    assert q0.dtype == torch.float32
    err = max_rel if dtype == torch.float32 else rel_rms
    assert err(y, y_ref) <= tol
    for name, got in _grads_from(dg.to(D), q0.to(D), p, y.to(D)).items():
        assert err(got, grads_ref[name]) <= tol, name


# ------------------------------------------------------------------------------------------ barrier errors
def _saved(T=3, B=2, H=8):
    p = _problem(T, B, H)
    xp, w, b_hn, h0 = _inputs(p, D)
    cfg = G.interpreter_config(H)
    y, gates = G.gru_fwd_persistent(xp, w, b_hn, h0, cfg=cfg)
    return xp, w, b_hn, h0, y, gates, torch.ones(T, B, H, dtype=D, device=DEVICE), cfg


@interpreter_only
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_barrier_timeout_raises(kind):
    """Two programs in the interpreter run one after the other: the first waits for the second at its first
    barrier, gives up after spin_cap iterations, sets the flag; the launcher raises."""
    xp, w, b_hn, h0, y, gates, dy, cfg = _saved()
    with pytest.raises(RuntimeError, match="persistent GRU .* timed out at its grid barrier.*per_step"):
        if kind == "fwd":
            G.gru_fwd_persistent(xp, w, b_hn, h0, cfg=cfg, spin_cap=3, n_programs=2)
        else:
            G.gru_bwd_persistent(dy, w, h0, y, gates, cfg=cfg, spin_cap=3, n_programs=2)


@interpreter_only
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_timeout_under_graph_capture_is_never_silent(monkeypatch, kind):
    """While a CUDA graph is captured the host cannot read the flag: a timeout then shows as NaN outputs and as
    the sticky flag (shared with the LSTM's kernels), which check_errors or the next eager launch reports."""
    xp, w, b_hn, h0, y, gates, dy, cfg = _saved()
    monkeypatch.setattr(S, "_capturing", lambda device: True)
    if kind == "fwd":
        out = G.gru_fwd_persistent(xp, w, b_hn, h0, cfg=cfg, spin_cap=3, n_programs=2)[0]
    else:
        out = G.gru_bwd_persistent(dy, w, h0, y, gates, cfg=cfg, spin_cap=3, n_programs=2)[0]
    monkeypatch.setattr(S, "_capturing", lambda device: False)
    # the first program timed out at its first barrier: everything it wrote after it is NaN, what before is not
    after, before = (out[1:], out[:1]) if kind == "fwd" else (out[:-1], out[-1:])
    assert torch.isnan(after).all() and not torch.isnan(before).any()
    with pytest.raises(RuntimeError, match="timed out.*CUDA-graph replay"):
        G.check_errors()
    G.check_errors()  # reported once, then cleared
    with pytest.raises(RuntimeError, match="timed out"):  # the next eager launch reports a timeout too
        G.gru_fwd_persistent(xp, w, b_hn, h0, cfg=cfg, spin_cap=3, n_programs=2)
    y2, _ = G.gru_fwd_persistent(xp, w, b_hn, h0, cfg=cfg)  # and a good launch afterwards runs clean
    assert torch.equal(y2, y)


# ------------------------------------------------------------------------------------------ decisions
H100 = dict(device_type="cuda", sm_count=132, interpret=False)
A100 = dict(device_type="cuda", sm_count=108, interpret=False)


@pytest.mark.parametrize("dtype,H,B,props,want_units", [
    (torch.bfloat16, 1024, 16, H100, 8),  # 128 programs
    (torch.float16, 768, 16, H100, 8),  # H_PAD 1024, masked
    (torch.bfloat16, 512, 16, A100, 8),  # 64 programs: 128 would not fit in 108 SMs
    (torch.float16, 32, 1, H100, 4),  # H_PAD 128 tile
    (torch.float32, 512, 16, H100, 4),
    (torch.float64, 96, 8, H100, 4),
])
def test_auto_picks_persistent_where_a_checked_config_fits(dtype, H, B, props, want_units, monkeypatch):
    monkeypatch.setattr(S, "auto_strategy", lambda *a: "persistent")  # the predictor's table says so
    cfg, why = G.decide("auto", dtype=dtype, H=H, B=B, **props)
    assert cfg is not None and why == ""
    assert cfg.UNITS == want_units and cfg.H_PAD >= H and -(-H // cfg.UNITS) <= props["sm_count"]
    assert cfg in G.CONFIGS[G.dtype_group(dtype)]


@pytest.mark.parametrize("strategy,dtype,H,B,props,reason", [
    ("persistent", torch.bfloat16, 2048, 16, H100, "no compile-checked"),
    ("auto", torch.float32, 1024, 16, H100, "no compile-checked"),
    ("auto", torch.float64, 256, 16, H100, "no compile-checked"),
    ("auto", torch.bfloat16, 1024, 16, A100, "no compile-checked"),
    ("auto", torch.bfloat16, 1000, 16, H100, "multiple of 16"),
    ("persistent", torch.float16, 100, 4, H100, "multiple of 16"),
    ("per_step", torch.bfloat16, 256, 16, H100, "per_step"),
    ("persistent", torch.float32, 64, 16, dict(device_type="cpu", sm_count=0, interpret=False), "CUDA"),
    ("auto", torch.float64, 20, 5, dict(device_type="cpu", sm_count=0, interpret=True), "interpreter"),
])
def test_falls_back_to_per_step_with_a_reason(strategy, dtype, H, B, props, reason):
    cfg, why = G.decide(strategy, dtype=dtype, H=H, B=B, **props)
    assert cfg is None and reason in why


def test_auto_is_decided_per_pass_and_explicit_persistent_ignores_the_batch_limit(monkeypatch):
    from kernels import auto_strategy as A

    monkeypatch.setitem(A.TABLE, ("gru", "fwd", "bf16", 90), {(64, 1024): "per_step"})
    monkeypatch.setitem(A.TABLE, ("gru", "bwd", "bf16", 90), {(64, 1024): "persistent"})
    kw = dict(dtype=torch.bfloat16, H=1024, B=64, **H100)
    assert G.decide("auto", kind="fwd", **kw)[0] is None
    assert G.decide("auto", kind="bwd", **kw)[0] is not None
    assert G.decide("persistent", kind="fwd", **kw)[0] is not None
    cfg, _ = G.decide("persistent", dtype=D, H=20, B=5, device_type="cpu", interpret=True)
    assert cfg.UNITS == cfg.H_PAD == 32  # one program owns every unit


def test_plan_and_fallback_log_the_reason(caplog):
    with caplog.at_level(logging.DEBUG, logger="fusedrnn"):
        assert G.plan("auto", device=torch.device("cpu"), dtype=torch.float32, H=8, B=2, kind="bwd") is None
        G.log_fallback("persistent", G.NotCoresident("130 registers x 512 threads > 65536 registers per SM"))
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("fusedrnn: GRU bwd strategy='auto' runs per_step") for m in msgs)
    assert any("GRU" in m and "registers per SM" in m for m in msgs)
    assert issubclass(G.NotCoresident, G.Fallback) and G.Fallback is S.Fallback  # one Fallback for every cell


def test_compile_check_covers_the_configs():
    """Every config a GPU may pick is a COMPILE_CHECK entry of both kernels, in every dtype of its group (the
    compiles themselves: python -m experiments.compile_check --kernels gru_persistent)."""
    entries = {}
    for e in G.COMPILE_CHECK:
        assert e["aligns"] == ("aligned",)
        for c in e["configs"]:
            for dt in e["dtypes"]:
                entries.setdefault(e["kernel"].__name__, set()).add(
                    (dt, c.kwargs["BLOCK_K"], c.kwargs["BLOCK_H"], c.num_warps))
    for group, cfgs in G.CONFIGS.items():
        for c in cfgs:
            for dt in DTYPE_GROUPS[group]:
                for kind in ("fwd", "bwd"):
                    assert (dt, c.H_PAD, c.units(kind), c.warps(kind)) in entries[f"_gru_{kind}_persistent"]
