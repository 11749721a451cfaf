"""The static step-time predictor (experiments/predict.py) on hand-written SASS with hand-counted paths, its GEMM
model, the committed CSV / auto table / doc block being in sync, and "auto" following the table (fake device
properties). No compile: the CSV is made by ``python -m experiments.predict`` in a fresh process."""
import pytest
import torch

from experiments import predict as pr
from kernels import _persistent as S
from kernels import auto_strategy as A
from kernels import gru_persistent as G
from kernels import lstm_persistent as P


def _word(stall=1, wbar=7, rbar=7, wait=0) -> str:
    return f"0x{(stall << 41) | (wbar << 46) | (rbar << 49) | (wait << 52):016x}"


def _sass(*instrs) -> str:
    """A cuobjdump -sass listing: (address, text, control fields) per instruction."""
    lines = ["\tcode for sm_90a", "\t\tFunction : k"]
    for addr, text, ctrl in instrs:
        lines.append(f"        /*{addr:04x}*/                   {text} ;   /* 0x0000000000000000 */")
        lines.append(f"                                              /* {_word(**ctrl)} */")
    return "\n".join(lines) + "\n"


# A persistent-style kernel: time loop 0x20..0xf0 with tile 0 peeled (HMMA at 0x60), a batch-tile loop
# 0x80..0xa0 guarded at 0x70, the arrival's CTA barrier at 0xc0 before the REDG, the acquire, the back branch.
PERSISTENT = _sass(
    (0x00, "S2R R0, SR_TID.X", dict(wbar=0)),
    (0x10, "ISETP.GE.AND P0, PT, R0, 0x10, PT", dict(wait=1)),
    (0x20, "LDG.E.128.STRONG.GPU R4, desc[UR4][R2.64]", dict(wbar=1)),
    (0x30, "STS.128 [R0], R4", dict(wait=2, rbar=2)),
    (0x40, "BAR.SYNC.DEFER_BLOCKING 0x0", {}),
    (0x50, "LDSM.16.M88.4 R8, [R0]", dict(wbar=3)),
    (0x60, "HMMA.16816.F32.BF16 R12, R8, R10, R12", dict(wait=8)),
    (0x70, "@P0 BRA 0xb0", {}),
    (0x80, "LDG.E.128.STRONG.GPU R4, desc[UR4][R2.64]", dict(wbar=1)),
    (0x90, "HMMA.16816.F32.BF16 R12, R4, R10, R12", dict(wait=2)),
    (0xa0, "@!P0 BRA 0x80", {}),
    (0xb0, "SHFL.BFLY PT, R1, R12, 0x1, 0x1f", dict(wbar=4)),
    (0xc0, "BAR.SYNC.DEFER_BLOCKING 0x0", {}),
    (0xd0, "REDG.E.ADD.STRONG.GPU desc[UR4][R2.64], R1", dict(wait=16)),
    (0xe0, "LDG.E.STRONG.GPU R5, desc[UR4][R2.64]", dict(wbar=5)),
    (0xf0, "BRA 0x20", {}),
    (0x100, "EXIT", {}),
    (0x110, "BRA 0x110", {}),
)


def test_parse_sass_reads_the_control_fields():
    ins = pr.parse_sass(PERSISTENT)
    assert [i.addr for i in ins][:3] == [0, 0x10, 0x20] and len(ins) == 18
    assert (ins[0].op, ins[0].base, ins[0].wbar, ins[0].wait) == ("S2R", "S2R", 0, 0)
    assert (ins[3].op, ins[3].wait, ins[3].rbar, ins[3].wbar) == ("STS.128", 2, 2, 7)
    assert (ins[7].pred, ins[7].target, ins[10].target) == ("@P0", 0xb0, 0x80)
    assert pr.loops(ins) == [(0x20, 0xf0), (0x80, 0xa0)]  # the trailing self-branch is no loop
    assert pr.is_gather(ins[2]) and not pr.is_gather(ins[14])  # 128-bit strong load vs the 32-bit acquire


def test_persistent_step_path_and_counts_by_hand():
    """Counted by hand from the listing above: one tile is 0x20-0x70 then 0xb0, 0xc0 (the guard skips the tile
    loop): 8 instructions, 2 BAR, 1 HMMA; each more tile runs the loop body (3 instructions, 1 HMMA) once more.
    Per CTA of 4 warps: STS.128 + LDSM.x4 = 2 x 512 B per warp; the gather 512 B per warp and tile."""
    m = pr.StepKernelModel(dict(sass=PERSISTENT, registers=64, shared_bytes=4096), warps=4, persistent=True)
    assert m.persistent == (0x20, 0xf0, 0xc0) and m.peeled == 1
    sm80 = PERSISTENT.replace("REDG.E.ADD", "RED.E.ADD")  # sm_80 spells the release add RED
    assert pr.time_loop(pr.parse_sass(sm80)) == (0x20, 0xf0, 0xc0)
    no_arrival = PERSISTENT.replace("REDG.E.ADD.STRONG.GPU desc[UR4][R2.64], R1", "NOP")
    with pytest.raises(ValueError, match="no time loop"):  # never walk a persistent kernel from its entry
        pr.StepKernelModel(dict(sass=no_arrival, registers=64, shared_bytes=0), warps=4, persistent=True)
    one = m.path(1)
    assert [i.addr for i in one] == [0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0xb0, 0xc0]
    three = m.path(3)
    assert [i.addr for i in three] == [0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0x80, 0x90, 0xa0,
                                       0xb0, 0xc0]
    c = pr.count(one, 4, gather_fraction=0.5)
    assert (c.insts, c.bars, c.mma, c.smem_bytes, c.global_bytes) == (8, 2, 1, 4 * 1024, 4 * 512 * 0.5)
    c = pr.count(three, 4)
    assert (c.insts, c.bars, c.mma, c.global_bytes) == (14, 2, 3, 4 * 512 * 3)


# Today's persistent kernels: one (step, tile) loop 0x10..0xe0 (no loop nested in it holds the MMA); a tile that
# is not its step's last skips the arrival (the guard at 0x40 over the CTA barrier 0x50 and the REDG) and the wait
# (the guard at 0x80 over the spin loop 0x90..0xb0 and its barrier).
STEP_TILE = _sass(
    (0x00, "S2R R0, SR_TID.X", dict(wbar=0)),
    (0x10, "LDG.E.128.STRONG.GPU R4, desc[UR4][R2.64]", dict(wbar=1)),
    (0x20, "HMMA.16816.F32.BF16 R12, R4, R10, R12", dict(wait=2)),
    (0x30, "ISETP.NE.AND P4, PT, R1, R3, PT", {}),
    (0x40, "@P4 BRA 0x70", {}),
    (0x50, "BAR.SYNC.DEFER_BLOCKING 0x0", {}),
    (0x60, "REDG.E.ADD.STRONG.GPU desc[UR4][R2.64], R1", {}),
    (0x70, "STG.E [R2.64], R12", {}),
    (0x80, "@P4 BRA 0xd0", {}),
    (0x90, "LDG.E.STRONG.GPU R5, desc[UR4][R2.64]", dict(wbar=5)),
    (0xa0, "ISETP.GT.AND P2, PT, R5, R1, PT", dict(wait=32)),
    (0xb0, "@!P2 BRA 0x90", {}),
    (0xc0, "BAR.SYNC.DEFER_BLOCKING 0x0", {}),
    (0xd0, "@!P1 EXIT", {}),
    (0xe0, "BRA 0x10", {}),
    (0xf0, "BRA 0xf0", {}),
)


def test_step_tile_loop_runs_every_batch_tile_of_a_step():
    """A step of n batch tiles in a (step, tile) loop: n - 1 whole passes that skip the arrival and the wait, then
    the pass to the arrival's barrier; so the predicted step at 4 tiles is at least 3x one tile's (barrier aside).
    (The predictor once walked the last pass alone: the same step at every batch.)"""
    m = pr.StepKernelModel(dict(sass=STEP_TILE, registers=64, shared_bytes=0), warps=4, persistent=True)
    assert m.persistent == (0x10, 0xe0, 0x50) and m.hot == set() and m.tile_guards == {0x40, 0x80}
    last = [0x10, 0x20, 0x30, 0x40, 0x50]
    assert [i.addr for i in m.path(1)] == last
    assert [i.addr for i in m.path(3)] == [0x10, 0x20, 0x30, 0x40, 0x70, 0x80, 0xd0, 0xe0] * 2 + last
    assert pr.count(m.path(4), 4).global_bytes == 4 * 4 * 512
    for p in pr.DEVICES["h100"]:
        one, four = (pr.persistent_step_us(m, n, 128, 1.0, p) - p.grid_barrier_us for n in (1, 4))
        assert four >= 3 * one, (p, one, four)


def test_csv_persistent_steps_grow_with_the_batch_tiles():
    """The committed predictions: a persistent step at B = 64 (4 tiles of 16) does at least 3x the work of one at
    B = 16 (grid barrier aside), 16 tiles at B = 256 at least 12x."""
    idx = pr._index(pr.read_csv())
    n = 0
    for (cell, strategy, dtype, arch, B, H, kind), r in idx.items():
        if (strategy != "persistent" or B != 16 or "[16x" not in r["kernel"]
                or r["kernel"].partition("[")[0] in pr.WHOLE_PASS_BARRIERS):  # those hold the batch in one tile
            continue
        for Bn, times in ((64, 3), (256, 12)):
            rn = idx[(cell, strategy, dtype, arch, Bn, H, kind)]
            assert int(rn["insts_per_warp"]) >= times * int(r["insts_per_warp"]), (r, rn)
            for end, p in zip(("lo", "hi"), pr.DEVICES[pr.ARCH_DEVICE[int(arch.removeprefix("sm_"))]]):
                one, many = (float(x[f"us_per_step_{end}"]) - p.grid_barrier_us for x in (r, rn))
                assert many >= times * one, (r, rn)
            n += 1
    assert n > 0


def test_csv_layernorm_persistent_rows_pay_three_barriers_a_step():
    """The LayerNorm LSTM's persistent forward (one batch tile): rows at B <= 16 only, forward only, each step at
    least its three grid barriers."""
    rows = [r for r in pr.read_csv() if r["cell"] == "lnlstm" and r["strategy"] == "persistent"]
    assert rows and all(int(r["B"]) <= 16 and r["pass"] == "fwd" for r in rows)
    for r in rows:
        for end, p in zip(("lo", "hi"), pr.DEVICES[pr.ARCH_DEVICE[int(r["arch"].removeprefix("sm_"))]]):
            assert float(r[f"us_per_step_{end}"]) > 3 * p.grid_barrier_us, r


def test_per_step_path_enters_a_loop_guarded_by_a_branch_around_it():
    """ptxas' K loop entry: ``@P BRA`` into the loop, the fall-through an unconditional ``BRA`` past it; a
    ``CALL`` walks its callee up to ``RET``; the walk ends at the unpredicated EXIT."""
    sass = _sass(
        (0x00, "@P3 BRA 0x20", {}),
        (0x10, "BRA 0x60", {}),
        (0x20, "LDGSTS.E.BYPASS.128 [R1], desc[UR4][R2.64]", {}),
        (0x30, "HMMA.16816.F32.BF16 R12, R8, R10, R12", {}),
        (0x40, "CALL.REL.NOINC 0x90", {}),
        (0x50, "@!P3 BRA 0x20", {}),
        (0x60, "@!P0 EXIT", {}),
        (0x70, "STG.E [R2.64], R12", {}),
        (0x80, "EXIT", {}),
        (0x90, "MUFU.RCP R1, R1", dict(wbar=0)),
        (0xa0, "RET.REL.NODEC R4 0x0", dict(wait=1)),
    )
    m = pr.StepKernelModel(dict(sass=sass, registers=64, shared_bytes=0), warps=4)
    assert m.persistent is None and m.hot == {(0x20, 0x50)}
    assert [i.addr for i in m.path(2)] == [0x00, 0x20, 0x30, 0x40, 0x90, 0xa0, 0x50] * 1 + [
        0x20, 0x30, 0x40, 0x90, 0xa0, 0x50, 0x60, 0x70, 0x80]
    assert pr.count(m.path(2), 4).global_bytes == 2 * 4 * 512


def test_while_loop_runs_its_trips_and_the_walk_ends_with_its_outer_loop():
    """A data-sync poll: ``while`` loop 0x20..0x50 with its exit test at 0x30 (to 0x60, the address after it) and
    an unconditional back branch; the walk starts at the outer loop's top (0x10) and ends at its back branch."""
    sass = _sass(
        (0x00, "S2R R0, SR_TID.X", {}),
        (0x10, "LDG.E.128.STRONG.SYS R4, desc[UR4][R2.64]", {}),
        (0x20, "ISETP.NE.AND P2, PT, R4, -0x1, PT", {}),
        (0x30, "@P2 BRA 0x60", {}),
        (0x40, "LDG.E.128.STRONG.SYS R4, desc[UR4][R2.64]", {}),
        (0x50, "BRA 0x20", {}),
        (0x60, "HMMA.16816.F32.BF16 R12, R4, R10, R12", {}),
        (0x70, "@!P0 BRA 0x10", {}),
        (0x80, "EXIT", {}),
    )
    m = pr.StepKernelModel(dict(sass=sass, registers=64, shared_bytes=0), warps=4, data_sync=True)
    assert m.persistent == (0x10, 0x70, 0x70) and m.hot == set()  # no batch-tile loop
    assert [i.addr for i in m.path(1, polls=0)] == [0x10, 0x20, 0x30, 0x60, 0x70]
    assert [i.addr for i in m.path(1, polls=2)] == [0x10] + [0x20, 0x30, 0x40, 0x50] * 2 + [0x20, 0x30, 0x60, 0x70]


def test_simulate_by_hand():
    """One warp: a 2-cycle then a 3-cycle stall: 5 cycles. A MUFU result waited on: issue at 0, ready after
    mufu_lat (18), the next instruction issues at 18 and holds its warp 1 cycle: 19. Two warps meeting at a
    BAR.SYNC: released bar_lat (20) after the later arrival."""
    p = pr.Params(clock_ghz=1.0, sms=1, l2_lat=100, l2_tbs=1.0)
    ins = pr.parse_sass(_sass((0x0, "IADD3 R1, R1, 0x1, RZ", dict(stall=2)), (0x10, "IADD3 R2, R2, 0x1, RZ",
                                                                                  dict(stall=3))))
    assert pr.simulate(ins, 1, p) == 5
    ins = pr.parse_sass(_sass((0x0, "MUFU.EX2 R1, R1", dict(wbar=0)), (0x10, "FADD R2, R1, R1", dict(wait=1))))
    assert pr.simulate(ins, 1, p) == 19
    ins = pr.parse_sass(_sass((0x0, "IADD3 R1, R1, 0x1, RZ", dict(stall=7)), (0x10, "BAR.SYNC.DEFER_BLOCKING 0x0",
                                                                                  {})))
    assert pr.simulate(ins, 2, p) == 7 + 20
    # a 512 B gather at 16 B/clk streams 32 clocks, then the L2 latency; the dependent add issues after it
    ins = pr.parse_sass(_sass((0x0, "LDG.E.128.STRONG.GPU R4, desc[UR4][R2.64]", dict(wbar=0)),
                              (0x10, "FADD R2, R4, R4", dict(wait=1))))
    assert pr.simulate(ins, 1, p, gather_bpc=16.0) == 32 + 100 + 1
    assert pr.simulate(ins, 1, p, memory=False) == 2


def test_extrapolate_is_linear_past_the_base():
    assert pr.extrapolate(lambda n: 10 + 3 * n, 7) == 31
    assert pr.extrapolate(lambda n: n * n, 2) == 4  # exact where simulated


def test_gemm_model_by_hand():
    """Forward at B=16, H=I=1024, T=1024, bf16: 2 x 16384 x 4096 x 1024 FLOP at 650 TFLOP/s = 0.2114 ms (more than
    its 50 MB at 3 TB/s); the backward's three GEMMs are 3x that plus the cat and db traffic."""
    fwd = pr.gemm_ms("lstm", "fwd", "persistent", "bf16", 16, 1024, pr.H100_OPT)
    assert fwd == pytest.approx(2 * 16384 * 4096 * 1024 / 650e12 * 1e3)
    bwd = pr.gemm_ms("lstm", "bwd", "persistent", "bf16", 16, 1024, pr.H100_OPT)
    assert bwd == pytest.approx(3 * fwd + (2 * 16384 * 1024 * 2 + 16384 * 4096 * 2) / 3e12 * 1e3)
    assert pr.gemm_ms("gru", "fwd", "persistent", "bf16", 16, 1024, pr.H100_OPT) == pytest.approx(fwd * 3 / 4)


def test_layernorm_step_model_by_hand(tmp_path):
    """A LayerNorm step is two launches, each with its node gap; PDL swaps each gap for ``pdl_gap_us`` and nothing
    else. Their GEMMs add the layer-norm passes, by hand. ``--update`` replaces only the rows it predicted."""
    m = pr.StepKernelModel(dict(sass=_sass((0x00, "IADD3 R1, R1, 0x1, RZ", dict(stall=4)), (0x10, "EXIT", {})),
                                registers=32, shared_bytes=0), warps=4)
    p = pr.H100_PESS
    off, on = pr.per_step_us(m, 1, 16, p)[0], pr.per_step_us(m, 1, 16, p, pdl=True)[0]
    assert off - on == pytest.approx(p.graph_gap_us - p.pdl_gap_us) and 0 < p.pdl_gap_us < p.graph_gap_us
    TB, H, e, bw = 16 * 1024, 768, 2, 3e12
    plain = {k: pr.gemm_ms(c, k, "per_step", "bf16", 16, H, pr.H100_OPT) for c, k in (("lstm", "fwd"),
                                                                                       ("lstm", "bwd"))}
    assert pr.gemm_ms("lnlstm", "fwd", "per_step", "bf16", 16, H, pr.H100_OPT) == pytest.approx(
        plain["fwd"] + 4 * TB * 4 * H * e / bw * 1e3)
    assert pr.gemm_ms("lnlstm", "bwd", "per_step", "bf16", 16, H, pr.H100_OPT) == pytest.approx(
        plain["bwd"] + (5 * TB * 4 * H * e + 3 * TB * H * 4 + TB * H * e) / bw * 1e3)
    row = dict(kernel="k", cell="lstm", strategy="per_step", dtype="bf16", arch="sm_90", B="16", H="768",
               insts_per_warp="1", cta_barriers="0", smem_bytes="0", global_bytes="0", us_per_step_lo="1",
               us_per_step_hi="2", ms_T1024_lo="1", ms_T1024_hi="2", commit="old", resets="0", **{"pass": "fwd"})
    path = tmp_path / "p.csv"
    path.write_text(",".join(pr.COLUMNS) + "\n" + "".join(",".join(r[c] for c in pr.COLUMNS) + "\n" for r in (
        row, dict(row, cell="lnlstm"))))
    new = pr.Prediction("new", "lnlstm", "per_step", "bf16", "sm_90", 16, 768, "fwd", pr.Counts(insts=2), (3.0, 4.0),
                        (3.0, 4.0), 4)
    pr.write_csv(path, [new], "now", update=True)
    assert [(r["cell"], r["kernel"], r["commit"]) for r in pr.read_csv(path)] == [("lstm", "k", "old"),
                                                                                  ("lnlstm", "new", "now")]


# A per-head whole-sequence kernel: no arrival; the time loop 0x20..0x70 consumes at 0x40 the xp it prefetched at
# 0x50 in the step before.
HEADS = _sass(
    (0x00, "S2R R0, SR_TID.X", dict(wbar=0)),
    (0x10, "LDG.E.128 R4, desc[UR4][R2.64]", dict(wbar=1, wait=1)),
    (0x20, "LDSM.16.M88.4 R8, [R0]", dict(wbar=2)),
    (0x30, "HMMA.16816.F32.BF16 R12, R8, R10, R12", dict(wait=4)),
    (0x40, "FADD R12, R4, R12", dict(wait=2)),
    (0x50, "LDG.E.128 R4, desc[UR4][R2.64]", dict(wbar=1)),
    (0x60, "STG.E [R2.64], R12", {}),
    (0x70, "@!P0 BRA 0x20", {}),
    (0x80, "EXIT", {}),
    (0x90, "BRA 0x90", {}),
)


def test_heads_step_is_a_steady_state_pass_of_the_time_loop():
    """A step of a per-head kernel is one pass of its time loop (not the walk from the entry), timed in steady
    state: the load a pass prefetches is waited on by the next pass, so with a loop shorter than the L2 latency
    the step is at least that latency (one pass alone would not see it). Programs beyond the SMs run in a second
    wave: twice the time."""
    m = pr.StepKernelModel(dict(sass=HEADS, registers=64, shared_bytes=4096), warps=4, whole_sequence=True)
    assert m.persistent == (0x20, 0x70, 0x70) and m.hot == set() and m.peeled == 1
    assert [i.addr for i in m.path(1)] == [0x20, 0x30, 0x40, 0x50, 0x60, 0x70]
    assert pr.StepKernelModel(dict(sass=HEADS, registers=64, shared_bytes=0), warps=4).path(1)[0].addr == 0
    p = pr.Params(clock_ghz=1.0, sms=4, l2_lat=300, l2_tbs=1.0)
    one = pr.simulate(m.path(1), 4, p)
    step = pr.heads_step_us(m, 4, p)
    assert one < p.l2_lat <= step * 1e3
    assert pr.heads_step_us(m, 5, p) == pytest.approx(2 * step)


def test_heads_gemm_model_by_hand():
    """The multi-head backward's GEMMs: the dense ones with dW_hh as 24 per-head (4*32, T*B) x (T*B, 32) products
    (24 x the FLOPs and bytes of one) in place of the dense (4H, T*B) x (T*B, H); the forward's are the dense."""
    p, TB, H, D, e = pr.H100_OPT, 16 * 1024, 768, 32, 2
    rate, bw = 650e12, 3e12

    def gemm(m, n, k):
        return max(2 * m * n * k / rate, (m * k + k * n + m * n) * e / bw) * 1e3

    dense = pr.gemm_ms("lstm", "bwd", "persistent", "bf16", 16, H, p)
    assert pr.gemm_ms("lstm", "bwd", "heads_D32", "bf16", 16, H, p) == pytest.approx(
        dense - gemm(4 * H, H, TB) + H // D * gemm(4 * D, D, TB))
    assert pr.gemm_ms("slstm", "fwd", "heads_D64", "bf16", 16, H, p) == pytest.approx(
        pr.gemm_ms("lstm", "fwd", "persistent", "bf16", 16, H, p))
    assert (pr.head_size("heads_D64"), pr.head_size("per_step")) == (64, None)


# ----------------------------------------------------------------------------------------------
# the committed outputs
# ----------------------------------------------------------------------------------------------
def test_csv_has_the_columns_and_both_strategies():
    rows = pr.read_csv()
    assert tuple(rows[0]) == pr.COLUMNS
    keys = {(r["cell"], r["strategy"], r["pass"], r["arch"], r["dtype"]) for r in rows}
    for cell in ("lstm", "gru"):
        for kind in ("fwd", "bwd"):
            assert {(cell, s, kind, "sm_90", "bf16") for s in ("persistent", "per_step")} <= keys
    for r in rows:
        assert float(r["us_per_step_lo"]) <= float(r["us_per_step_hi"])
        assert float(r["ms_T1024_lo"]) <= float(r["ms_T1024_hi"]) and int(r["insts_per_warp"]) > 0


def test_layernorm_rows_of_the_csv():
    """The committed LayerNorm rows (``--cells lnlstm,lngru``): both passes with and without PDL at the issue's
    shape, the step's two kernels named, PDL never slower, and their generated block in docs/PERFORMANCE.md."""
    rows = pr.read_csv()
    idx = pr._index(rows)
    for cell, rows_kernel in (("lnlstm", "_lnlstm"), ("lngru", "_lngru")):
        for kind in ("fwd", "bwd"):
            off, on = (idx[(cell, s, "bf16", "sm_90", 16, 768, kind)] for s in ("per_step", "per_step_pdl"))
            assert off["kernel"].startswith("_ln_product[") and f"+{rows_kernel}_{kind}_rows[1024 w8]" in off["kernel"]
            for col in ("us_per_step_lo", "us_per_step_hi"):
                assert float(on[col]) < float(off[col])
    assert pr.ln_doc_block(rows) in pr.ROOT.joinpath("docs", "PERFORMANCE.md").read_text(), \
        "stale: python -m experiments.predict --doc docs/PERFORMANCE.md"


def test_heads_rows_of_the_csv():
    """The committed multi-head rows (``--cells lstm,gru,slstm,rnn_tanh --strategies heads``): both passes of every
    cell and head size at issue 21's shape, at the config kernels/heads.py launches; 24 heads of 32 at B = 256 are
    384 programs on 132 SMs, 3 waves: 3x the step at B = 16; "auto" never picks them; their block in the doc."""
    from kernels import heads as K

    rows = pr.read_csv()
    idx = pr._index(rows)
    for cell in ("lstm", "gru", "slstm", "rnn_tanh"):
        for D in pr.HEAD_SIZES:
            for kind in ("fwd", "bwd"):
                r = idx[(cell, f"heads_D{D}", "bf16", "sm_90", 16, 768, kind)]
                assert r["kernel"] == f"_heads_{kind}[{cell}][16x{D} w{K.warps(cell, '16bit', kind, D)}]"
                assert float(r["ms_T1024_lo"]) > 1024 * float(r["us_per_step_lo"]) / 1e3  # + the GEMMs
    for kind in ("fwd", "bwd"):
        one, three = (idx[("lstm", "heads_D32", "bf16", "sm_90", B, 768, kind)] for B in (16, 256))
        for end in ("lo", "hi"):
            assert float(three[f"us_per_step_{end}"]) == pytest.approx(3 * float(one[f"us_per_step_{end}"]),
                                                                        abs=0.02)
    assert all(s in ("persistent", "per_step") for shapes in pr.auto_choices(rows).values() for s in shapes.values())
    assert pr.heads_doc_block(rows) in pr.ROOT.joinpath("docs", "PERFORMANCE.md").read_text(), \
        "stale: python -m experiments.predict --doc docs/PERFORMANCE.md"


def test_predict_all_includes_the_reset_and_rnn_rows():
    """What ``--all`` predicts (a stub predictor records the calls): the grid, the RNN's heads, and at each shape
    of ``RESET_SHAPES`` both strategies and passes with a mask, plus without one off the grid (B = 128);
    ``--resets-only`` predicts those shapes alone, each with and without a mask."""
    class Stub:
        def __getattr__(self, name):
            return lambda *a, **kw: (name, a, kw.get("resets", False))

    calls = pr.predict_all(Stub())
    resets = {(c[1][0], c[0], c[1][2], c[1][3], c[1][4], c[1][5], c[1][1], c[2]) for c in calls if c[0] != "heads"}
    for cell in pr.RESET_CELLS:
        for (arch, dtype), shapes in pr.RESET_SHAPES.items():
            for B, H in shapes:
                for s in ("persistent", "per_step"):
                    for kind in ("fwd", "bwd"):
                        assert {(cell, s, arch, dtype, B, H, kind, r) for r in (False, True)} <= resets
    assert ("heads", ("rnn_tanh", "fwd", 90, "bf16", 16, 768, 32), False) in calls
    only = pr.predict_all(Stub(), resets_only=True)
    assert len(only) == 2 * 2 * 2 * 2 * sum(map(len, pr.RESET_SHAPES.values())) == len(set(only))


def test_reset_rows_of_the_csv():
    """The committed reset rows (``--cells lstm,gru --resets-only``): every shape of ``RESET_SHAPES``, both
    strategies and passes, each beside its row without a mask from the same commit (the same kernels); per_step's
    reset variant at the same config loads more bytes (its int8 flags; its instruction count may differ either way
    by a few per K-loop pass, as ptxas allocates the two variants apart); the persistent row with a mask is the
    persistent reset variant, which loads more than its twin too; the block in the doc."""
    rows = pr.read_csv()
    idx0, idx1 = pr._index(rows), pr._index(rows, 1)
    for cell in pr.RESET_CELLS:
        for (arch, dtype), shapes in pr.RESET_SHAPES.items():
            for B, H in shapes:
                for kind in ("fwd", "bwd"):
                    none, mask = ({s: i[(cell, s, dtype, f"sm_{arch}", B, H, kind)] for s in ("persistent", "per_step")}
                                  for i in (idx0, idx1))
                    assert {r["commit"] for r in (*none.values(), *mask.values())} == {mask["per_step"]["commit"]}
                    step = mask["per_step"]
                    assert step["kernel"].startswith(f"_{cell}_{kind}_step[")
                    if step["kernel"] == none["per_step"]["kernel"]:  # the flag loads: 32 lanes x 1 B per warp
                        assert int(step["global_bytes"]) > int(none["per_step"]["global_bytes"]), step
                    # its own reset variant, against the variant without (HAS_RESETS=False: the flag loads)
                    assert mask["persistent"]["kernel"].startswith(f"_{cell}_{kind}_persistent[")
                    assert int(mask["persistent"]["global_bytes"]) > int(none["persistent"]["global_bytes"])
    assert pr.resets_doc_block(rows) in pr.ROOT.joinpath("docs", "PERFORMANCE.md").read_text(), \
        "stale: python -m experiments.predict --doc docs/PERFORMANCE.md"


def test_auto_table_and_doc_block_are_generated_from_the_csv():
    rows = pr.read_csv()
    assert pr.ROOT.joinpath("kernels", "auto_strategy.py").read_text() == pr.auto_table_source(rows), \
        "stale: python -m experiments.predict --auto-table"
    doc = pr.ROOT.joinpath("docs", "PERFORMANCE.md").read_text()
    assert pr.doc_block(rows, pr.read_before()) in doc, "stale: python -m experiments.predict --doc docs/PERFORMANCE.md"


def test_auto_choices_take_the_lower_midpoint():
    row = dict(cell="lstm", pass_="fwd", dtype="bf16", arch="sm_90", B="16", H="1024")
    rows = [dict(row, strategy="persistent", ms_T1024_lo="1.0", ms_T1024_hi="5.0"),
            dict(row, strategy="per_step", ms_T1024_lo="2.0", ms_T1024_hi="3.5")]
    for r in rows:
        r["pass"] = r.pop("pass_")
    assert pr.auto_choices(rows) == {("lstm", "fwd", "bf16", 90): {(16, 1024): "per_step"}}  # 2.75 < 3.0


def _row(**kw) -> dict:
    """A CSV row (strings, as read back) of lstm per_step fwd, bf16, sm_90, B = 128, H = 256, no mask."""
    row = dict(kernel="k", cell="lstm", strategy="per_step", dtype="bf16", arch="sm_90", B="128", H="256",
               resets="0", insts_per_warp="1", cta_barriers="0", smem_bytes="0", global_bytes="0",
               us_per_step_lo="1", us_per_step_hi="2", ms_T1024_lo="1", ms_T1024_hi="2", commit="c")
    row["pass"] = "fwd"
    return dict(row, **kw)


def test_reset_rows_are_kept_apart_and_off_auto(tmp_path):
    """A row with a reset mask (resets = 1) has its own identity: ``--update`` with it keeps the row without, a CSV
    from before the column reads as resets = 0, ``_index`` picks one or the other; "auto" reads neither the reset
    rows nor the shapes off its grid (B = 128)."""
    path = tmp_path / "p.csv"
    old = [c for c in pr.COLUMNS if c != "resets"]
    path.write_text(",".join(old) + "\n" + ",".join(_row()[c] for c in old) + "\n")
    new = pr.Prediction("masked", "lstm", "per_step", "bf16", "sm_90", 128, 256, "fwd", pr.Counts(insts=2), (3.0, 4.0),
                        (3.0, 4.0), 4, resets=1)
    pr.write_csv(path, [new], "now", update=True)
    rows = pr.read_csv(path)
    assert [(r["kernel"], r["resets"]) for r in rows] == [("k", "0"), ("masked", "1")] and tuple(rows[0]) == pr.COLUMNS
    key = ("lstm", "per_step", "bf16", "sm_90", 128, 256, "fwd")
    assert (pr._index(rows)[key]["kernel"], pr._index(rows, 1)[key]["kernel"]) == ("k", "masked")
    fast = dict(strategy="persistent", ms_T1024_lo="0.1", ms_T1024_hi="0.1")
    grid = [_row(B="16", H="1024"), _row(B="16", H="1024", resets="1", **fast), _row(**fast)]
    assert pr.auto_choices(grid) == {("lstm", "fwd", "bf16", 90): {(16, 1024): "per_step"}}


def test_resets_block_by_hand():
    """``ms_at``: T steps + the pass's GEMMs at T of the row's strategy. The target table runs each pass with the
    strategy faster without a mask, and compares the midpoints: a mask adding 0.02 us per step is within 5%, one
    adding 1 us is not."""
    T, (opt, pess) = 128, pr.DEVICES["h100"]
    per = _row(kernel="_lstm_fwd_step[x]", us_per_step_lo="2.0", us_per_step_hi="3.0")
    pers = _row(kernel="_lstm_fwd_persistent[z]", strategy="persistent", us_per_step_lo="4.0", us_per_step_hi="5.0")
    gemm = {s: [pr.gemm_ms("lstm", "fwd", s, "bf16", 128, 256, p, T) for p in (opt, pess)]
            for s in ("per_step", "persistent")}
    assert gemm["per_step"][0] > gemm["persistent"][0]  # the CUDA graph's copy of xp
    assert pr.ms_at(per, T, 0) == pytest.approx(T * 2.0 / 1e3 + gemm["per_step"][0])
    assert pr.ms_at(pers, T, 1) == pytest.approx(T * 5.0 / 1e3 + gemm["persistent"][1])
    for extra, within in ((0.02, "yes"), (1.0, "no")):
        rows = []
        for kind in ("fwd", "bwd"):
            plain = [dict(r, **{"pass": kind}) for r in (per, pers)]
            rows += plain + [dict(r, resets="1", **{k: f"{float(v) + extra:.2f}" for k, v in r.items()
                                                    if k.startswith("us_per_step")}) for r in plain]
        none = sum(pr.ms_at(r, T, e) for r in rows[:8:4] for e in (0, 1))
        mask = sum(pr.ms_at(r, T, e) for r in rows[2::4] for e in (0, 1))
        block = pr.resets_doc_block(rows)
        assert "| lstm | bf16 | 128 | 128 | 256 | per_step / per_step | " in block
        assert f"| {mask / none:.3f} | {within} |" in block
        assert "| lstm | bf16 | 128 | 128 | 256 | persistent | z / z | " in block


# ----------------------------------------------------------------------------------------------
# "auto" follows the table
# ----------------------------------------------------------------------------------------------
PROPS = {90: dict(device_type="cuda", sm_count=132, interpret=False, arch=90),
         80: dict(device_type="cuda", sm_count=108, interpret=False, arch=80)}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def test_auto_follows_the_table():
    """At every point of the committed table, "auto" runs persistent exactly where the table says so."""
    assert A.TABLE
    for (cell, kind, dtype, arch), shapes in A.TABLE.items():
        for (B, H), want in shapes.items():
            kw = dict(dtype=DTYPES[dtype], H=H, B=B, kind=kind, **PROPS[arch])
            cfg, why = P.decide("auto", has_proj=False, **kw) if cell == "lstm" else G.decide("auto", **kw)
            assert (cfg is not None) == (want == "persistent"), (cell, kind, dtype, arch, B, H, why)


def test_auto_between_the_points_rounds_up(monkeypatch):
    table = {(b, h): "per_step" for b in A.BATCHES for h in A.HIDDEN}
    table[(64, 768)] = "persistent"
    monkeypatch.setitem(A.TABLE, ("lstm", "bwd", "bf16", 90), table)
    below = A.BATCHES[A.BATCHES.index(64) - 1]  # the point before B = 64
    for B, H, want in ((below + 1, 768, "persistent"), (64, 528, "persistent"), (64, 768, "persistent"),
                       (below, 768, "per_step"), (65, 768, "per_step"), (64, 784, "per_step")):
        assert S.auto_strategy("lstm", "bwd", torch.bfloat16, B, H, 90) == want, (B, H)
    assert S.auto_strategy("lstm", "bwd", torch.bfloat16, 4096, 4096, 90) == table[(256, 1024)]  # beyond: last
    assert S.auto_strategy("lstm", "bwd", torch.bfloat16, 64, 768, 100) == "persistent"  # sm_100 uses sm_90's
    assert S.auto_strategy("lstm", "bwd", torch.float64, 64, 768, 90) == "per_step"  # no fp64 predictions
    cfg, why = P.decide("auto", dtype=torch.bfloat16, H=768, B=65, has_proj=False, kind="bwd", **PROPS[90])
    assert cfg is None and "predicted faster" in why
