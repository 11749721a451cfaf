"""The persistent forward of the LayerNorm LSTM (kernels/layernorm_persistent.py).

In the interpreter one program owns every unit (its grid barriers are trivial there), so the kernel's math is
checked against the per_step kernels and the float64 reference (outputs and everything saved for the backward,
allocations NaN-poisoned); the combination of partial row statistics across programs (Chan's formula) is checked
on its own, with several programs publishing and one combining (two launches instead of a barrier). The
many-program kernel is covered by the static compile check.
"""
import logging

import pytest
import torch
import triton
import triton.language as tl

from experiments.gpu_check import poisoned
from kernels import layernorm as L
from kernels import layernorm_persistent as LP
from kernels.layernorm_ref import lnlstm_recurrence_ref
from kernels.lstm_persistent import _gate_cols
from models import LayerNormLSTM

from .helpers import rand
from .test_layernorm import fixed_mask

D = torch.float64
T, B, H = 5, 3, 20  # H = 20: the (S, BB, KS) gather and the gate tile padded to 32 lanes


def _inputs():
    torch.manual_seed(11)
    return (rand(T, B, 4 * H), rand(B, H, scale=0.5), rand(B, H, scale=0.5), rand(H, 4 * H, scale=0.4),
            1 + rand(4 * H, scale=0.2), 1 + rand(H, scale=0.2), rand(H))


@pytest.mark.parametrize("zoneout, with_lengths", [("off", False), ("train", True), ("eval", True)])
def test_forward_matches_per_step_and_reference_fp64(zoneout, with_lengths):
    """y, c_n and the saved c_seq, gates, a^, rstd equal the per_step kernels' (what its backward reads) and y, c_n
    the float64 reference, to 1e-10: zoneout off, a fixed training mask, the eval keep weight; lengths [5, 2, 4]."""
    xp, h0, c0, rk, g_r, g_h, b_h = _inputs()
    zmask = fixed_mask(0.4, seed=5, shape=(T, B, H)) if zoneout == "train" else None
    zkeep = torch.tensor([0.6], dtype=D) if zoneout == "eval" else None
    zref = zmask if zoneout == "train" else (0.6 if zoneout == "eval" else None)
    lengths = torch.tensor([5, 2, 4], dtype=torch.int32) if with_lengths else None
    args = (xp, h0, c0, rk, g_r, g_h, b_h, zmask, zkeep, lengths)
    cfg, why = LP.decide("persistent", device_type="cpu", dtype=D, H=H, B=B)
    assert cfg is not None, why
    with poisoned():
        ours = LP.lnlstm_fwd_persistent(*args, store=True, cfg=cfg)
        per_step = L.lnlstm_fwd_sequence(*args, store=True)
    for name, a, b in zip(("y", "c_n", "c_seq", "gates", "a_hat", "rstd"), ours, per_step):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)
    y, _, c_n = lnlstm_recurrence_ref(xp, h0, c0, rk, g_r, g_h, b_h, zref, lengths)
    torch.testing.assert_close(ours[0], y, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours[1], c_n, rtol=0, atol=1e-10)


def test_module_persistent_forward_then_per_step_backward(monkeypatch):
    """LayerNormLSTM(strategy="persistent") in training with zoneout (the module's seeded masks), B = 5 (the batch
    tile 8): the persistent forward runs, the per_step backward follows; outputs and every gradient equal the
    reference module's to 1e-10."""
    calls = []
    real = LP.lnlstm_fwd_persistent
    monkeypatch.setattr(LP, "lnlstm_fwd_persistent", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(4)
    mods = [LayerNormLSTM(4, 6, zoneout=0.3, dtype=D, backend=b, strategy="persistent")
            for b in ("reference", "triton")]
    with torch.no_grad():
        for p in mods[0].parameters():
            p.add_(0.1 * torch.randn_like(p))
    mods[1].load_state_dict(mods[0].state_dict())
    x = rand(3, 5, 4, requires_grad=True)
    res = []
    for m in mods:
        torch.manual_seed(8)
        with poisoned():
            y, (h_n, c_n) = m(x)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=D).view_as(y)).sum() + h_n.sum() + 0.5 * c_n.sum()
        res.append([y, h_n, c_n, *torch.autograd.grad(loss, [x, *m.parameters()])])
    assert calls, "the persistent forward did not run"
    for a, b in zip(res[1], res[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@triton.jit
def _publish_partials(v, stats, B, H, U: tl.constexpr, BLOCK_B: tl.constexpr, P_PAD: tl.constexpr):
    pid = tl.program_id(0)
    o_b = tl.arange(0, BLOCK_B)
    m_b = o_b < B
    o_n, m_n, _ = _gate_cols(pid * U, H, U)
    a = tl.load(v + o_b[:, None] * (4 * H) + o_n[None, :], mask=m_b[:, None] & m_n[None, :], other=0.0)
    s, m2 = LP._partial_stats(a, m_n[None, :], 4 * tl.minimum(U, H - pid * U))
    LP._publish(stats, 1, pid, s, m2, o_b, m_b, BLOCK_B, P_PAD)


@triton.jit
def _combine_partials(stats, out, nprog, H, U: tl.constexpr, P_PAD: tl.constexpr, BLOCK_B: tl.constexpr):
    o_b = tl.arange(0, BLOCK_B)
    mean, r = LP._combine(stats, 1, nprog, 4, U, 4 * H, o_b, P_PAD, BLOCK_B)
    tl.store(out + o_b, mean)
    tl.store(out + BLOCK_B + o_b, r)


def test_row_statistics_combine_across_programs():
    """Three programs of 8 units (the last one 4) publish the (sum, M2) of their gate columns of a (3, 4 * 20) row
    block, one more launch combines them: the mean and rstd of each whole row, to 1e-12 (fp64, rows offset by 50
    so that a sum of squares would cancel where the deviations do not)."""
    torch.manual_seed(2)
    v = rand(B, 4 * H) + 50.0
    U, BB = 8, 4
    nprog = triton.cdiv(H, U)
    stats = torch.full((2, 2, BB, 4), float("nan"), dtype=D)
    out = torch.full((2, BB), float("nan"), dtype=D)
    _publish_partials[(nprog,)](v, stats, B, H, U=U, BLOCK_B=BB, P_PAD=4)
    _combine_partials[(1,)](stats, out, nprog, H, U=U, P_PAD=4, BLOCK_B=BB)
    mean = v.mean(1)
    rstd = torch.rsqrt(v.var(1, unbiased=False) + 1e-5)
    torch.testing.assert_close(out[0, :B], mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1, :B], rstd, rtol=1e-12, atol=0)


@pytest.mark.parametrize("strategy, dtype, H_, B_, reason", [
    ("per_step", torch.bfloat16, 768, 16, "strategy='per_step'"),
    ("auto", torch.bfloat16, 768, 16, "per_step is predicted faster"),
    ("persistent", torch.bfloat16, 768, 32, "B=32 > 16"),
    ("persistent", torch.float64, 256, 16, "no compile-checked persistent config"),
    ("persistent", torch.bfloat16, 760, 16, "not a multiple of 16"),
])
def test_falls_back_to_per_step_with_a_reason(strategy, dtype, H_, B_, reason):
    cfg, why = LP.decide(strategy, device_type="cuda", dtype=dtype, H=H_, B=B_, sm_count=132, interpret=False)
    assert cfg is None and reason in why


def test_runs_persistent_where_a_config_fits_and_logs_fallbacks(caplog):
    cfg, why = LP.decide("persistent", device_type="cuda", dtype=torch.bfloat16, H=768, B=16, sm_count=132,
                         interpret=False)
    assert why == "" and (cfg.H_PAD, cfg.UNITS, cfg.BLOCK_B, cfg.fwd_warps) == (1024, 8, 16, 8)
    # 128 programs of 8 units do not fit an A100's 108 SMs at H = 1024: 16 units (64 programs)
    cfg, why = LP.decide("persistent", device_type="cuda", dtype=torch.bfloat16, H=1024, B=16, sm_count=108,
                         interpret=False, arch=80)
    assert why == "" and (cfg.H_PAD, cfg.UNITS, cfg.fwd_warps) == (1024, 16, 8)
    with caplog.at_level(logging.DEBUG, logger="fusedrnn"):
        assert LP.plan("auto", device=torch.device("cpu"), dtype=D, H=H, B=B) is None
    assert "LayerNorm LSTM fwd strategy='auto' runs per_step" in caplog.text

