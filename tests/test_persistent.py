"""The persistent whole-sequence LSTM strategy (kernels/lstm_persistent.py).

In the interpreter one program owns every unit (the grid barrier is trivial there), so these tests check the
math of the kernel source: persistent == per_step == torch.nn.LSTM / the float64 reference, outputs, final
states and every gradient. The many-program kernels are covered by the static compile check
(tests/test_compile_check.py). Also unit-tested here: the strategy decision with fake device properties, the
co-residency rule, the barrier timeout (a real one: two programs in the interpreter, run one after the other)
and the error raised from the flag.
"""
import logging

import pytest
import torch

from kernels import lstm as L
from kernels import _persistent as S
from kernels import lstm_persistent as P
from kernels._common import DTYPE_GROUPS
from models import LSTM

from .compare import Case, check_lowp_against_oracle, compare, make_inputs, run
from .helpers import DEVICE, DTYPES, max_rel

interpreter_only = pytest.mark.skipif(
    DEVICE.type == "cuda", reason="relies on the interpreter running programs one after another")


def _rand_seq(T, B, H, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(device=DEVICE, dtype=dtype)

    return r(T, B, 4 * H), r(4 * H, H, scale=0.3), r(B, H, scale=0.5), r(B, H, scale=0.5)


# ------------------------------------------------------------------------------------------ kernel level
@pytest.mark.parametrize("T,B,H,block_b,split,with_lengths", [
    (1, 1, 20, 4, 1, False),  # one step: no barrier at all, no split
    (6, 5, 20, 2, 2, False),  # batch-tile loop (3 tiles, the last partial), H not a power of two, 2 K slices
    (4, 5, 16, 4, 4, True),  # lengths, 4 K slices
    (3, 3, 33, 16, 0, False),  # H_PAD = 64 > H, one batch tile, default slices
])
def test_kernels_match_per_step_fp64(T, B, H, block_b, split, with_lengths):
    """Forward and backward launchers against the per-step path, crossed: either backward follows either
    forward (same saved layout)."""
    xp, w, h0, c0 = _rand_seq(T, B, H)
    lengths = (torch.tensor([max(1, T - (2 * b) % T) for b in range(B)], dtype=torch.int32, device=DEVICE)
               if with_lengths else None)
    cfg = P.interpreter_config(H, block_b, split)
    want = L.lstm_fwd_sequence(xp, w, h0, c0, lengths=lengths, strategy="per_step")
    got = P.lstm_fwd_persistent(xp, w, h0, c0, lengths, store=True, cfg=cfg)
    for name, a, b in zip(("y", "c_n", "c_seq", "gates"), got, want):
        assert max_rel(a, b) <= 1e-12, name
    y_ns, c_ns, *rest = P.lstm_fwd_persistent(xp, w, h0, c0, lengths, store=False, cfg=cfg)
    assert rest == [None, None, None]
    assert max_rel(y_ns, want[0]) <= 1e-12 and max_rel(c_ns, want[1]) <= 1e-12

    g = torch.Generator().manual_seed(1)
    dy = torch.randn(T, B, H, generator=g, dtype=torch.float64).to(DEVICE)
    dc_n = torch.randn(B, H, generator=g, dtype=torch.float64).to(DEVICE)
    ref_dz, ref_dc0, _ = L.lstm_bwd_sequence(dy, dc_n, w, c0, want[2], want[3], lengths=lengths, strategy="per_step")
    for c_seq, gates in ((got[2], got[3]), (want[2], want[3])):
        dz, dc0, none = P.lstm_bwd_persistent(dy, dc_n, w, c0, c_seq, gates, lengths, cfg=cfg)
        assert none is None
        assert max_rel(dz, ref_dz) <= 1e-12 and max_rel(dc0, ref_dc0) <= 1e-12


@interpreter_only
def test_sequence_dispatch_runs_persistent(monkeypatch):
    """strategy="persistent" goes through the persistent launchers, "auto" (interpreter) and "per_step" do not."""
    calls = []
    real_f, real_b = P.lstm_fwd_persistent, P.lstm_bwd_persistent
    monkeypatch.setattr(P, "lstm_fwd_persistent", lambda *a, **k: calls.append("fwd") or real_f(*a, **k))
    monkeypatch.setattr(P, "lstm_bwd_persistent", lambda *a, **k: calls.append("bwd") or real_b(*a, **k))
    xp, w, h0, c0 = _rand_seq(2, 2, 8)
    for strategy in ("per_step", "auto"):
        y, c_n, c_seq, gates, _ = L.lstm_fwd_sequence(xp, w, h0, c0, strategy=strategy)
        L.lstm_bwd_sequence(torch.ones_like(y), torch.zeros_like(c_n), w, c0, c_seq, gates, strategy=strategy)
    assert calls == []
    y, c_n, c_seq, gates, _ = L.lstm_fwd_sequence(xp, w, h0, c0, strategy="persistent")
    L.lstm_bwd_sequence(torch.ones_like(y), torch.zeros_like(c_n), w, c0, c_seq, gates, strategy="persistent")
    assert calls == ["fwd", "bwd"]
    with pytest.raises(ValueError, match="strategy"):
        L.lstm_fwd_sequence(xp, w, h0, c0, strategy="persistant")


# ------------------------------------------------------------------------------------------ module level
def _pair(case, dtype, strategy):
    ref = torch.nn.LSTM(case.I, case.H, **case.module_kwargs(True), dtype=dtype, device=DEVICE)
    ours = LSTM(case.I, case.H, **case.module_kwargs(True), dtype=dtype, device=DEVICE, backend="triton",
                strategy=strategy)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


MODULE_CASES = [
    Case("T1_B1", T=1, B=1),
    Case("layers2_bidir_B5", T=5, B=5, H=20, layers=2, bidirectional=True),
    Case("packed_unsorted_no_h0", packed="unsorted", B=5, T=6, h0=False),
]


@pytest.mark.parametrize("case", MODULE_CASES, ids=lambda c: c.id)
def test_module_fp64_matches_nn_lstm_and_per_step(case, monkeypatch):
    calls = []
    for name in ("lstm_fwd_persistent", "lstm_bwd_persistent"):
        real = getattr(P, name)
        monkeypatch.setattr(P, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    ours, ref = _pair(case, torch.float64, "persistent")
    x, hx = make_inputs(case, True, torch.float64)
    got = run(ours, case, x, hx)
    n = case.layers * (2 if case.bidirectional else 1)
    assert sorted(calls) == ["lstm_bwd_persistent"] * n + ["lstm_fwd_persistent"] * n
    compare(got, run(ref, case, x, hx), torch.float64, case.id)
    per_step = LSTM(case.I, case.H, **case.module_kwargs(True), dtype=torch.float64, device=DEVICE,
                    backend="triton", strategy="per_step")
    per_step.load_state_dict(ref.state_dict())
    compare(got, run(per_step, case, x, hx), torch.float64, case.id + " vs per_step")


def test_module_fp32_matches_nn_lstm():
    case = Case("fp32", T=4, B=3, layers=2)
    ours, ref = _pair(case, torch.float32, "persistent")
    x, hx = make_inputs(case, True, torch.float32)
    compare(run(ours, case, x, hx), run(ref, case, x, hx), torch.float32, case.id)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_module_half_precision_against_fp64_reference(dtype):
    """bf16 (cast to fp32 before tl.dot in the interpreter, triton#11584) and fp16 against the float64
    reference on the same rounded weights and inputs."""
    check_lowp_against_oracle(LSTM, Case("lowp", T=5, B=5, bidirectional=True), DTYPES[dtype],
                              f"persistent {dtype}", strategy="persistent")


def test_proj_size_falls_back_to_per_step_with_logged_reason(caplog):
    case = Case("proj", T=3, B=2, proj=5)
    ours, ref = _pair(case, torch.float64, "persistent")
    x, hx = make_inputs(case, True, torch.float64)
    with caplog.at_level(logging.DEBUG, logger="fusedrnn"):
        got = run(ours, case, x, hx)
    compare(got, run(ref, case, x, hx), torch.float64, case.id)
    assert any("runs per_step" in r.getMessage() and "proj_size" in r.getMessage() for r in caplog.records)


def test_only_lstm_and_gru_modules_accept_persistent():
    from models import GRU, RNN, GRUCell, LSTMCell, RNNCell, STRATEGIES

    assert "persistent" in STRATEGIES
    for cls in (LSTM, LSTMCell, GRU, GRUCell):
        cls(3, 4, strategy="persistent")
    for make in (lambda: RNN(3, 4, strategy="persistent"), lambda: RNNCell(3, 4, strategy="persistent")):
        with pytest.raises(ValueError, match="LSTM and GRU only"):
            make()


def test_lstm_cell_persistent_matches_nn():
    from models import LSTMCell

    torch.manual_seed(5)
    ref = torch.nn.LSTMCell(4, 12, dtype=torch.float64)
    ours = LSTMCell(4, 12, dtype=torch.float64, backend="triton", strategy="persistent")
    ours.load_state_dict(ref.state_dict())
    ref, ours = ref.to(DEVICE), ours.to(DEVICE)
    x = torch.randn(3, 4, dtype=torch.float64, device=DEVICE)
    hx = tuple(torch.randn(3, 12, dtype=torch.float64, device=DEVICE) for _ in range(2))
    for a, b in zip(ours(x, hx), ref(x, hx)):
        assert max_rel(a, b) <= 1e-12


# ------------------------------------------------------------------------------------------ decisions
H100 = dict(device_type="cuda", sm_count=132, interpret=False)
A100 = dict(device_type="cuda", sm_count=108, interpret=False)


@pytest.mark.parametrize("dtype,H,B,props,want_units", [
    (torch.bfloat16, 1024, 16, H100, 8),  # 128 programs
    (torch.float16, 768, 16, H100, 8),  # H_PAD 1024, masked
    (torch.bfloat16, 512, 16, H100, 8),  # 64 programs (4 units would compute each pointwise value twice)
    (torch.bfloat16, 512, 16, A100, 8),  # 64 programs: 128 would not fit in 108 SMs
    (torch.bfloat16, 256, 1, H100, 4),
    (torch.float16, 32, 1, H100, 4),  # H_PAD 128 tile
    (torch.float32, 512, 16, H100, 4),
    (torch.float64, 96, 8, H100, 4),
])
def test_auto_picks_persistent_where_a_checked_config_fits(dtype, H, B, props, want_units, monkeypatch):
    monkeypatch.setattr(S, "auto_strategy", lambda *a: "persistent")  # the predictor's table says so
    cfg, why = P.decide("auto", dtype=dtype, H=H, B=B, has_proj=False, **props)
    assert cfg is not None and why == ""
    assert cfg.UNITS == want_units and cfg.H_PAD >= H and -(-H // cfg.UNITS) <= props["sm_count"]
    assert cfg in P.CONFIGS[P.dtype_group(dtype)]  # only compile-checked configs run on a GPU


def test_backward_runs_its_own_units_per_program(monkeypatch):
    """A config's backward may own more units per program than its forward (``bwd_units``): its grid and BLOCK_H
    follow; at H = 1024 in 16-bit on sm_90 the backward runs 64 programs of 16 units (one warp per pointwise
    value, half the dz gathered), on sm_80 128 of 8 (16 units need more shared memory than it has)."""
    cfg, _ = P.decide("persistent", dtype=torch.bfloat16, H=1024, B=16, has_proj=False, **H100)
    assert (cfg.programs("fwd", 1024), cfg.programs("bwd", 1024)) == (128, 64)
    assert (cfg.meta("fwd")["BLOCK_H"], cfg.meta("bwd")["BLOCK_H"]) == (8, 16)
    cfg80, _ = P.decide("persistent", dtype=torch.bfloat16, H=768, B=16, has_proj=False, arch=80, **A100)
    assert cfg80.programs("bwd", 768) == 96 and cfg80.meta("bwd")["BLOCK_H"] == 8
    grids = []
    monkeypatch.setattr(S, "_check_coresident", lambda *a: None)
    monkeypatch.setattr(S, "_launch", lambda kernel, grid, args, meta, warps: grids.append((grid, meta["BLOCK_H"])))
    monkeypatch.setattr(S, "check_flag", lambda *a: None)
    like = torch.zeros(1, dtype=torch.bfloat16)
    for kind in ("fwd", "bwd"):
        S.run_persistent(None, dict(H=1000, lengths=None), cfg=cfg, kind=kind, like=like, what="test")
    assert grids == [((125,), 8), ((63,), 16)]


@pytest.mark.parametrize("strategy,dtype,H,B,has_proj,props,reason", [
    ("auto", torch.bfloat16, 2048, 16, False, H100, "no compile-checked"),
    ("persistent", torch.bfloat16, 2048, 16, False, H100, "no compile-checked"),
    ("auto", torch.float32, 1024, 16, False, H100, "no compile-checked"),
    ("auto", torch.float64, 256, 16, False, H100, "no compile-checked"),
    ("auto", torch.bfloat16, 1024, 16, False, A100, "no compile-checked"),  # 16 units/program: no config
    ("auto", torch.bfloat16, 256, 16, True, H100, "proj_size"),
    ("persistent", torch.bfloat16, 256, 16, True, H100, "proj_size"),
    ("auto", torch.bfloat16, 1000, 16, False, H100, "multiple of 16"),
    ("persistent", torch.float16, 100, 4, False, H100, "multiple of 16"),
    ("per_step", torch.bfloat16, 256, 16, False, H100, "per_step"),
    ("persistent", torch.float32, 64, 16, False, dict(device_type="cpu", sm_count=0, interpret=False), "CUDA"),
    ("auto", torch.float64, 20, 5, False, dict(device_type="cpu", sm_count=0, interpret=True), "interpreter"),
])
def test_falls_back_to_per_step_with_a_reason(strategy, dtype, H, B, has_proj, props, reason):
    cfg, why = P.decide(strategy, dtype=dtype, H=H, B=B, has_proj=has_proj, **props)
    assert cfg is None and reason in why


def test_auto_is_decided_per_pass(monkeypatch):
    """Each pass has its own entry in the predictor's table: a shape can run a persistent backward after a
    per-step forward."""
    from kernels import auto_strategy as A

    monkeypatch.setitem(A.TABLE, ("lstm", "fwd", "bf16", 90), {(64, 1024): "per_step"})
    monkeypatch.setitem(A.TABLE, ("lstm", "bwd", "bf16", 90), {(64, 1024): "persistent"})
    kw = dict(dtype=torch.bfloat16, H=1024, B=64, has_proj=False, **H100)
    assert P.decide("auto", kind="fwd", **kw)[0] is None
    assert P.decide("auto", kind="bwd", **kw)[0] is not None


def test_explicit_persistent_ignores_the_auto_batch_limit_and_runs_in_the_interpreter():
    cfg, _ = P.decide("persistent", dtype=torch.bfloat16, H=256, B=4096, has_proj=False, **H100)
    assert cfg is not None
    cfg, _ = P.decide("persistent", dtype=torch.float64, H=20, B=5, has_proj=False, device_type="cpu",
                      interpret=True)
    assert cfg.UNITS == cfg.H_PAD == 32  # one program owns every unit


def test_plan_logs_the_fallback_reason(caplog):
    with caplog.at_level(logging.DEBUG, logger="fusedrnn"):
        assert P.plan("auto", device=torch.device("cpu"), dtype=torch.float32, H=8, B=2, has_proj=False) is None
    assert any("runs per_step" in r.getMessage() for r in caplog.records)


def test_coresidency_rule():
    lim = dict(sm_count=132, regs_per_sm=65536, shared_per_sm=227 * 1024)
    assert P.coresidency(128, 128, 16, 98304, **lim) == ""  # 512 threads x 128 registers = the whole file
    assert "SMs" in P.coresidency(133, 64, 8, 1024, **lim)
    assert "registers" in P.coresidency(128, 130, 16, 1024, **lim)
    assert "shared" in P.coresidency(64, 64, 8, 228 * 1024, **lim)
    assert "unknown" in P.coresidency(64, 0, 8, 1024, **lim)


def test_not_coresident_falls_back_to_per_step(monkeypatch, caplog):
    """A NotCoresident raised by the launcher (as the CUDA co-residency check does) makes the sequence
    function run per_step, with the reason logged."""
    def refuse(*a, **k):
        raise P.NotCoresident("130 registers x 512 threads > 65536 registers per SM")

    monkeypatch.setattr(P, "lstm_fwd_persistent", refuse)
    xp, w, h0, c0 = _rand_seq(3, 2, 8)
    with caplog.at_level(logging.DEBUG, logger="fusedrnn"):
        got = L.lstm_fwd_sequence(xp, w, h0, c0, strategy="persistent")
    want = L.lstm_fwd_sequence(xp, w, h0, c0, strategy="per_step")
    assert torch.equal(got[0], want[0])
    assert any("registers per SM" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------ barrier errors
def test_flag_check_raises_a_clear_error():
    P.check_flag(torch.zeros(1, dtype=torch.int32), "forward")
    with pytest.raises(RuntimeError, match="timed out at its grid barrier.*per_step"):
        P.check_flag(torch.ones(1, dtype=torch.int32), "forward")


@interpreter_only
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_barrier_timeout_raises(kind):
    """Two programs in the interpreter run one after the other: the first waits for the second at its first
    barrier, gives up after spin_cap iterations, sets the flag and stops waiting; the launcher raises."""
    T, B, H = 3, 2, 8
    xp, w, h0, c0 = _rand_seq(T, B, H)
    cfg = P.interpreter_config(H)
    with pytest.raises(RuntimeError, match="timed out"):
        if kind == "fwd":
            P.lstm_fwd_persistent(xp, w, h0, c0, cfg=cfg, spin_cap=3, n_programs=2)
        else:
            _, c_n, c_seq, gates, _ = P.lstm_fwd_persistent(xp, w, h0, c0, cfg=cfg)
            dy = torch.ones(T, B, H, dtype=torch.float64, device=DEVICE)
            P.lstm_bwd_persistent(dy, c_n, w, c0, c_seq, gates, cfg=cfg, spin_cap=3, n_programs=2)


@interpreter_only
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_timeout_under_graph_capture_is_never_silent(monkeypatch, kind):
    """While a CUDA graph is captured the host cannot read the flag: a timeout then shows as NaN outputs and as
    the sticky flag, which the next eager launch (or check_errors) reports, once."""
    T, B, H = 3, 2, 8
    xp, w, h0, c0 = _rand_seq(T, B, H)
    cfg = P.interpreter_config(H)
    _, c_n, c_seq, gates, _ = P.lstm_fwd_persistent(xp, w, h0, c0, cfg=cfg)
    dy = torch.ones(T, B, H, dtype=torch.float64, device=DEVICE)
    monkeypatch.setattr(S, "_capturing", lambda device: True)
    if kind == "fwd":
        out = P.lstm_fwd_persistent(xp, w, h0, c0, cfg=cfg, spin_cap=3, n_programs=2)[0]
    else:
        out = P.lstm_bwd_persistent(dy, c_n, w, c0, c_seq, gates, cfg=cfg, spin_cap=3, n_programs=2)[0]
    monkeypatch.setattr(S, "_capturing", lambda device: False)
    assert torch.isnan(out).any()  # what was written after the timeout
    with pytest.raises(RuntimeError, match="timed out.*CUDA-graph replay"):
        P.check_errors()
    P.check_errors()  # reported once, then cleared
    with pytest.raises(RuntimeError, match="timed out"):  # the next eager launch reports a timeout too
        P.lstm_fwd_persistent(xp, w, h0, c0, cfg=cfg, spin_cap=3, n_programs=2)
    y = P.lstm_fwd_persistent(xp, w, h0, c0, cfg=cfg)[0]  # and a good launch afterwards runs clean
    assert not torch.isnan(y).any()


def test_compile_check_covers_the_persistent_configs():
    """Every config a GPU may pick is a COMPILE_CHECK entry of both kernels for the architecture that runs it
    (H_PAD 256, 512, 1024 included), and no entry is compiled for an architecture that does not run it; the
    compile itself runs in tests/test_compile_check.py."""
    entries = {}
    for e in P.COMPILE_CHECK:
        assert len(e["archs"]) == 1
        for c in e["configs"]:
            for dt in e["dtypes"]:
                entries.setdefault((e["kernel"].__name__, e["archs"][0]), set()).add(
                    (dt, c.kwargs["BLOCK_K"], c.kwargs["BLOCK_H"], c.num_warps))
    want = {}
    for arch, configs in P.ARCH_CONFIGS.items():
        for group, cfgs in configs.items():
            for c in cfgs:
                for dt in DTYPE_GROUPS[group]:
                    for kind in ("fwd", "bwd"):
                        want.setdefault((f"_lstm_{kind}_persistent", arch), set()).add(
                            (dt, c.H_PAD, c.units(kind), c.warps(kind)))
    assert entries == want
    assert set(P.ARCH_CONFIGS) == {90, 80}
    assert {256, 512, 1024} <= {c.H_PAD for c in P.CONFIGS["16bit"]}


def test_tanh_approx_only_where_compiled_in_16bit(monkeypatch):
    """The forward's FAST_TANH (tanh.approx, docs/MATH.md) is on for fp16/bf16 compiled for a GPU only: never in the
    interpreter, never for fp32/fp64; the launcher passes it and the compile check builds what runs."""
    assert not S.fast_tanh(torch.float32) and not S.fast_tanh(torch.float64)
    monkeypatch.setattr(S, "interpreting", lambda: True)
    assert not S.fast_tanh(torch.bfloat16) and not S.fast_tanh(torch.float16)
    monkeypatch.setattr(S, "interpreting", lambda: False)
    assert S.fast_tanh(torch.bfloat16) and S.fast_tanh(torch.float16) and not S.fast_tanh(torch.float32)
    fwd = [e for e in P.COMPILE_CHECK if e["kernel"].__name__ == "_lstm_fwd_persistent"]
    assert fwd and all(e["constexprs"]["FAST_TANH"] == ("bf16" in e["dtypes"]) for e in fwd)
    seen = []
    monkeypatch.setattr(S, "run_persistent", lambda *a, **k: seen.append(k["extra_meta"]))
    xp, w, h0, c0 = _rand_seq(2, 2, 8, dtype=torch.bfloat16)
    P.lstm_fwd_persistent(xp, w, h0, c0, cfg=P.interpreter_config(8))
    assert seen == [{"FAST_TANH": True}]


@pytest.mark.parametrize("capability,arch", [((9, 0), 90), ((10, 0), 90), ((8, 0), 80), ((8, 9), 80)])
def test_the_config_list_follows_the_device_capability(capability, arch):
    """sm_90 and later run ``CONFIGS``, sm_8x ``CONFIGS_SM80``: ``decide`` picks from the list of ``arch``."""
    assert S.config_arch(capability) == arch
    only = P.PersistentConfig(H_PAD=1024, UNITS=8, BLOCK_B=16, fwd_warps=2, bwd_warps=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(P.ARCH_CONFIGS, arch, {"16bit": [only], "fp32": [], "fp64": []})
        cfg, _ = P.decide("persistent", dtype=torch.bfloat16, H=1024, B=16, has_proj=False, arch=arch, **H100)
        other, _ = P.decide("persistent", dtype=torch.bfloat16, H=1024, B=16, has_proj=False, arch=170 - arch,
                            **H100)
    assert cfg is only and other is not only and other in P.ARCH_CONFIGS[170 - arch]["16bit"]


def test_refused_cooperative_launch_falls_back_to_per_step(monkeypatch):
    """The driver's refusal of a cooperative launch (too many programs to be resident at once) is a fallback
    to per_step, not an error; other launch errors propagate."""
    class Refusing:
        def __init__(self, msg):
            self.msg = msg

        def __getitem__(self, grid):
            def launch(**kw):
                raise RuntimeError(self.msg)
            return launch

    with pytest.raises(P.NotCoresident, match="cooperative"):
        P._launch(Refusing("Triton Error [CUDA]: too many blocks in cooperative launch"), (2,), {}, {}, 4)
    with pytest.raises(RuntimeError, match="out of resources") as e:
        P._launch(Refusing("out of resources"), (2,), {}, {}, 4)
    assert not isinstance(e.value, P.Fallback)


def test_older_triton_runs_per_step(monkeypatch):
    monkeypatch.setattr(S, "_TRITON", (3, 2))
    cfg, why = P.decide("persistent", dtype=torch.bfloat16, H=1024, B=16, has_proj=False, **H100)
    assert cfg is None and "triton >= 3.6" in why


def test_arch_of_names_a_config_list_on_every_device():
    """The launchers index ARCH_CONFIGS with arch_of(device): every device must map to a listed architecture
    (CPU: the interpreter, 90; sm_86 runs sm_80's list, sm_100 sm_90's)."""
    from kernels import _persistent as P
    from kernels import gru_persistent, lstm_persistent

    assert P.arch_of(torch.device("cpu")) in lstm_persistent.ARCH_CONFIGS
    for cap, want in (((8, 0), 80), ((8, 6), 80), ((8, 9), 80), ((9, 0), 90), ((10, 0), 90)):
        assert P.config_arch(cap) == want
        assert want in lstm_persistent.ARCH_CONFIGS and want in gru_persistent.ARCH_CONFIGS
