"""Static performance check without a GPU: every kernel, in the heaviest tile config of each dtype group (the
one with the most registers in the committed full table, results/compile_table.csv), in every dtype,
compiles for sm_90a and sm_80 (aligned and unaligned arguments) with 0 bytes of spill, shared memory within
the chip's limit and, in fp16/bf16, no MMA work replicated across warps. The table tests run ``python -m
experiments.compile_check --sample heaviest`` in a fresh process (the real compiler: the test session's kernels
are decorated by the interpreter); every config is compiled by the full table's own command (README). The
selection, layout / SASS and coverage tests below need no compile."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("compile_check")  # one process compiles the sample for all of them

ROOT = Path(__file__).resolve().parents[1]


def _variant_base(kernel: str) -> str:
    """A compile-table kernel name without its variant suffix ("+launch", "+resets"): the entry it is a variant of
    (its label, "[lstm]", kept)."""
    from experiments.compile_check import LAUNCH_SUFFIX
    from kernels._common import RESET_SUFFIX

    return kernel.removesuffix(LAUNCH_SUFFIX).removesuffix(RESET_SUFFIX)


def compile_table(out: Path, *args: str):
    """``python -m experiments.compile_check ARGS --csv OUT`` in a fresh process without the interpreter:
    ``(the finished process, the rows of OUT)``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.compile_check", *args, "--quiet", "--jobs",
         str(min(4, os.cpu_count() or 1)), "--csv", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,  # a busy CI machine
    )
    rows = list(csv.DictReader(open(out))) if out.exists() else []
    return proc, rows


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return compile_table(tmp_path_factory.mktemp("cc") / "cc.csv", "--sample", "heaviest")


def test_heaviest_configs_compile_without_spills(table):
    proc, rows = table
    bad = [r for r in rows if r["status"] != "OK"]
    assert proc.returncode == 0 and not bad, (
        "compile check failed:\n" + "\n".join(
            f"{r['kernel']} {r['arch']} {r['dtype']} {r['align']} {r['BLOCK_B']}x{r['BLOCK_H']}x{r['BLOCK_K']} "
            f"w{r['num_warps']}: {r['status']} spill={r['spill_bytes']} smem={r['shared_bytes']} {r['error']}"
            for r in bad) + proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    for r in rows:
        assert r["triton"] and r["commit"] and r["date"], "row without provenance"
        assert int(r["spill_bytes"]) == 0 and int(r["shared_bytes"]) <= int(r["shared_limit"])
        assert 0 < int(r["registers"]) <= 255
    assert "compile_check: " in proc.stderr and f"{len(rows)}/{len(rows)} compiles" in proc.stderr  # progress


def _declared():
    """Every registry entry's (kernel, arch, dtype, align), and its dtype group's dtypes."""
    from experiments import compile_check as cc

    declared, groups = set(), {}
    for module in cc.kernel_modules():
        for e in cc._entries(module):
            name, dtypes = cc._entry_name(e), tuple(e.get("dtypes", cc.DTYPES))
            for arch in e.get("archs", cc.ARCHS):
                groups.setdefault((name, cc.ARCHS[arch]), []).append(dtypes)
                declared |= {(name, cc.ARCHS[arch], dt, al) for dt in dtypes for al in e.get("aligns", cc.ALIGNS)}
    return declared, groups


def test_full_table_covers_every_kernel_arch_dtype():
    """The committed full table (results/compile_table.csv) holds every registry entry for its archs (default both)
    in each of its dtypes and alignments: the per-step kernels in every dtype and both alignments (their launchers
    run both), the persistent ones aligned (the only variant ``decide`` lets run), every "+launch" variant aligned."""
    from experiments import compile_check as cc

    with open(ROOT / "results" / "compile_table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    seen = {(r["kernel"], r["arch"], r["dtype"], r["align"]) for r in rows}
    declared, _ = _declared()
    assert declared <= seen, f"not in the full table: {sorted(declared - seen)[:10]}"
    for k in {r["kernel"] for r in rows}:
        if k.startswith("_heads_"):  # per-head whole-sequence kernels: their entries' dtypes, aligned (above)
            continue
        aligns = ("aligned",) if "persistent" in k or k.endswith(cc.LAUNCH_SUFFIX) else cc.ALIGNS
        for arch in cc.ARCHS.values():
            for dt in cc.DTYPES:
                for al in aligns:
                    assert (k, arch, dt, al) in seen, f"missing {k} {arch} {dt} {al}"


def test_sample_covers_every_kernel_arch_and_dtype_group(table):
    """The tests' sample compiles every registry entry (a kernel and one dtype group) for each of its archs, in
    one of the group's dtypes and one of its alignments at least (``heaviest_variants``)."""
    _, rows = table
    # any variant of a kernel (its heaviest, "+resets", "+launch") stands for all of them
    seen = {(_variant_base(r["kernel"]), r["arch"], r["dtype"]) for r in rows}
    assert {"_lstm_fwd_step", "_lstm_bwd_step", "_rnn_fwd_step", "_rnn_bwd_step", "_gru_fwd_step",
            "_gru_bwd_step"} <= {k for k, _, _ in seen}
    _, groups = _declared()
    missing = [(k, arch, dts) for (k, arch), gs in groups.items() for dts in gs
               if not any((_variant_base(k), arch, dt) in seen for dt in dts)]
    assert not missing, f"no compile of: {missing[:10]}"


def test_sample_takes_the_heavier_variant_of_each_step_kernel():
    """Of a step kernel's two entries (without and with a reset mask), the sample keeps the one whose heaviest config
    has more registers in the table (``lighter_variants``), both while one is unmeasured."""
    from experiments import compile_check as cc
    from kernels._common import TileConfig

    light, heavy = TileConfig(B=16, H=16, K=64, warps=4, stages=3), TileConfig(B=64, H=32, K=64, warps=8, stages=3)
    base = dict(kernel=None, name="k", configs=[light, heavy], dtypes=("fp32",))
    variant = dict(base, name="k+resets", configs=[light], variant_of="k")
    key = lambda c: cc._config_key(cc._config_fields(c))  # noqa: E731
    measured = {("k", "fp32", key(light)): (60, 0), ("k", "fp32", key(heavy)): (128, 0),
                ("k+resets", "fp32", key(light)): (72, 0)}
    assert cc.lighter_variants([base, variant], measured) == {1}  # the base's 128 registers outweigh 72
    measured[("k+resets", "fp32", key(light))] = (130, 0)
    assert cc.lighter_variants([base, variant], measured) == {0}
    measured[("k+resets", "fp32", key(light))] = (128, 0)
    assert cc.lighter_variants([base, variant], measured) == {1}  # a tie: the base (every flag on) for resets
    launch = dict(variant, name="k+launch")
    tie = {**measured, ("k+launch", "fp32", key(light)): (128, 0)}
    assert cc.lighter_variants([base, launch], tie) == {0}  # but the launch variant (what runs) for a launch one
    del measured[("k+resets", "fp32", key(light))]
    assert cc.lighter_variants([base, variant], measured) == set()  # unmeasured: both compiled


def test_sample_is_the_heaviest_config_of_each_entry(table):
    """The tests' compile check holds, for each kernel, dtype group and arch, exactly the configs
    ``heaviest_configs`` picks from its entry (one per dtype group while the committed table is current), each in
    the dtype and alignment with the most registers at that arch in the committed table."""
    from experiments import compile_check as cc

    _, rows = table
    group = {"fp16": "16bit", "bf16": "16bit", "fp32": "fp32", "tf32": "fp32", "fp64": "fp64"}
    compiled: dict = {}
    for r in rows:
        compiled.setdefault((r["kernel"], group[r["dtype"]], r["arch"]), set()).add(
            (cc._config_key(r), r["dtype"], r["align"]))
    measured, variants = cc.measured_usage(), cc.measured_variants()
    assert measured and variants, "results/compile_table.csv (the full table) is missing"
    want: dict = {}
    for module in cc.kernel_modules():
        entries = cc._entries(module)
        lighter = cc.lighter_variants(entries, measured)
        for e in (e for i, e in enumerate(entries) if i not in lighter):
            name, dtypes = cc._entry_name(e), e.get("dtypes", cc.DTYPES)
            cfgs = [cc._config_fields(c) for c in e["configs"]]
            picked = cc.heaviest_configs(name, dtypes, cfgs, measured)
            assert picked
            for arch in (a for a in (90, 80) if a in e.get("archs", (a,))):
                runs = [(dt, al) for dt in dtypes for al in e.get("aligns", cc.ALIGNS)]
                for c in picked:
                    heavy = cc.heaviest_variants(name, c, arch, runs, variants)
                    assert len(heavy) == 1, f"{name} {c}: a variant missing from the committed table"
                    want.setdefault((name, group[dtypes[0]], cc.ARCHS[arch]), set()).update(
                        (cc._config_key(c), dt, al) for dt, al in heavy)
    assert compiled == want


def test_heaviest_configs_selection(tmp_path):
    """Most measured registers (max over the group's dtypes, archs and alignments) wins, ties go to shared
    memory; an unmeasured config is compiled too; without a table, the largest tile per warp."""
    from experiments import compile_check as cc

    def cfg(b, h, k, w, s):
        return dict(BLOCK_B=b, BLOCK_H=h, BLOCK_K=k, num_warps=w, num_stages=s)

    small, wide, deep, new = cfg(16, 16, 32, 4, 3), cfg(64, 32, 32, 8, 3), cfg(16, 16, 128, 2, 3), cfg(16, 64, 64, 4, 2)
    cols = ["kernel", "arch", "dtype", "align", *cc._CONFIG_KEY, "registers", "shared_bytes"]
    table = [("_k", "sm_90a", "fp16", "aligned", small, 96, 4096),
             ("_k", "sm_80", "bf16", "unaligned", small, 240, 2048),
             ("_k", "sm_90a", "fp16", "unaligned", wide, 200, 9000),
             ("_k", "sm_90a", "bf16", "aligned", wide, 200, 36000),
             ("_k", "sm_90a", "fp16", "aligned", deep, 255, 16000),  # measured in fp16 only
             ("_other", "sm_90a", "fp16", "aligned", wide, 255, 1)]
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for k, arch, dt, al, c, regs, smem in table:
            w.writerow([k, arch, dt, al, *(c[n] for n in cc._CONFIG_KEY), regs, smem])
    measured = cc.measured_usage(str(path))
    assert measured[("_k", "fp16", cc._config_key(small))] == (96, 4096)  # max over archs and alignments
    assert measured[("_k", "fp16", cc._config_key(wide))] == (200, 9000)
    group = ("fp16", "bf16")
    # small: 240 registers (bf16 on sm_80) beats wide's 200; deep lacks bf16 and new is absent: both compiled
    assert cc.heaviest_configs("_k", group, [wide, small, deep, new], measured) == [small, deep, new]
    assert cc.heaviest_configs("_k", group, [wide, small], measured) == [small]
    assert cc.heaviest_configs("_k", ("fp16",), [wide, small, deep], measured) == [deep]
    # equal registers: the larger shared memory (wide, 36000 B in bf16)
    tie = {**measured, **{("_k", dt, cc._config_key(small)): (200, 100) for dt in group}}
    assert cc.heaviest_configs("_k", group, [small, wide], tie) == [wide]
    # another kernel's rows do not count; a kernel absent from the table compiles every config
    assert cc.heaviest_configs("_new", group, [small, wide], measured) == [small, wide]
    # no table: the most tile elements per warp ((BB*BH + BK*(BB+BH)) / warps): deep (16*16+128*32)/2 = 2176
    assert cc.measured_usage(str(tmp_path / "absent.csv")) == {}
    assert cc.heaviest_configs("_k", group, [small, wide, deep, new], {}) == [deep]
    assert cc.tile_estimate(wide) == ((64 * 32 + 32 * 96) / 8, 3 * 32 * 96)
    # per arch, the (dtype, align) with the most registers, then shared memory; all while one is unmeasured
    variants = cc.measured_variants(str(path))
    runs = [("fp16", "aligned"), ("fp16", "unaligned"), ("bf16", "aligned")]
    assert cc.heaviest_variants("_k", wide, 90, runs[1:], variants) == [("bf16", "aligned")]  # 200/36000 B
    assert cc.heaviest_variants("_k", wide, 90, runs, variants) == runs  # fp16 aligned unmeasured
    assert cc.heaviest_variants("_k", small, 80, [("bf16", "unaligned")], variants) == [("bf16", "unaligned")]
    # a variant that spilled in the table is the one compiled again, even with fewer registers
    spilled = {**variants, ("_k", cc._config_key(wide), "sm_90a", "fp16", "unaligned"): (8, 64, 9000)}
    assert cc.heaviest_variants("_k", wide, 90, runs[1:], spilled) == [("fp16", "unaligned")]
    assert cc.measured_variants(str(tmp_path / "absent.csv")) == {}


def test_progress_lines_under_quiet():
    """The full table prints a progress line every ``every`` compiles and at the end, even when quiet."""
    import io

    from experiments import compile_check as cc

    out = io.StringIO()
    progress = cc.progress_printer(quiet=True, every=2, out=out)
    ok = cc.Result("_k", "m", "sm_90a", "bf16", "ieee", "aligned", 16, 16, 32, 4, 3, status="OK")
    for i, status in enumerate(("OK", "SPILL", "OK", "N/A", "OK"), 1):
        progress(cc.Result(**dict(vars(ok), status=status)), i, 5)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["compile_check: 2/5 compiles", "compile_check: 4/5 compiles",
                                                     "compile_check: 5/5 compiles"]
    assert " 1 failing" in lines[-1] and "s elapsed" in lines[-1] and "~0 s left" in lines[-1]


def test_sample_never_overwrites_the_reference_table(tmp_path, capsys):
    from experiments import compile_check as cc

    ref = tmp_path / "full.csv"
    ref.write_text("kernel\n")
    with pytest.raises(SystemExit):
        cc.main(["--sample", "heaviest", "--reference", str(ref), "--csv", str(ref)])
    assert "would replace the full table" in capsys.readouterr().err
    assert ref.read_text() == "kernel\n"


def test_every_autotune_config_is_listed():
    """The configs every declared step kernel's autotuners hold are exactly the ones its COMPILE_CHECK entries
    list (per dtype group), for every kernel declared with ``_common.step_kernel``: the full table compiles
    them all (no compile here)."""
    from kernels import _common
    from experiments import compile_check as cc

    listed = set()
    for module in cc.kernel_modules():  # importing them declares their step kernels
        for e in cc._entries(module):
            for c in e["configs"]:
                f = cc._config_fields(c)
                listed |= {(cc._entry_name(e), dt, *cc._config_key(f)) for dt in e.get("dtypes", cc.DTYPES)}
    names = set()
    for kernel in _common._STEP_KERNELS:
        names.add(kernel.__name__)
        variants = [(kernel.__name__, kernel.autotuners, kernel.configs)]
        if kernel.has_resets:  # the reset variant: its own autotuners over its own list, its own entry
            variants.append((kernel.__name__ + _common.RESET_SUFFIX, kernel.reset_autotuners, kernel.reset_configs))
        for name, autotuners, configs in variants:
            for g, tuner in autotuners.items():
                assert [c.kwargs for c in tuner.configs] == [c.meta() for c in configs[g]]
                for c in tuner.configs:
                    for dt in _common.DTYPE_GROUPS[g]:
                        assert (name, dt, c.kwargs["BLOCK_B"], c.kwargs["BLOCK_H"], c.kwargs["BLOCK_K"],
                                c.num_warps, c.num_stages) in listed, (name, dt, c)
    assert {"_lstm_fwd_step", "_lstm_bwd_step", "_rnn_fwd_step", "_rnn_bwd_step", "_gru_fwd_step", "_gru_bwd_step",
            "_usegate_fwd_gates", "_usegate_fwd_use", "_usegate_bwd_gates", "_usegate_bwd_use"} <= names


_HOT_KINDS = {"HGMMA", "HMMA", "DMMA", "IMMA", "FFMA", "DFMA"}
# kernels with no tl.dot (kernels/layernorm.py's row programs: the layer norms' statistics and the pointwise step)
_DOT_FREE = {"_lnlstm_fwd_rows", "_lnlstm_bwd_rows", "_lngru_fwd_rows", "_lngru_bwd_rows"}


def test_mma_columns_filled(table):
    _, rows = table
    assert rows
    for r in rows:
        if r["status"] == "N/A":
            continue
        what = f"{r['kernel']} {r['arch']} {r['dtype']} {r['align']} {r['BLOCK_B']}x{r['BLOCK_H']}x{r['BLOCK_K']}"
        assert r["mma"] in _HOT_KINDS, what
        if _base(r["kernel"]) in _DOT_FREE:  # pointwise row programs: FMA work, no dot to lay out
            assert r["mma"] in ("FFMA", "DFMA") and int(r["mma_repeat"]) == 0 and not r["dots"], what
            continue
        assert int(r["mma_per_iter"]) > 0 and int(r["ldsm_per_iter"]) >= 0, what
        assert int(r["mma_repeat"]) >= 1 and r["dots"], what
        if r["dtype"] in ("fp16", "bf16"):
            assert r["mma"] in ("HGMMA", "HMMA"), what


def test_no_replicated_mma_work_in_16bit_hot_kernels(table):
    """Every kernel of the registry runs once per time step or persists over the sequence (the hot path);
    in fp16/bf16 no warp may recompute another warp's part of a dot (``mma_repeat`` == 1)."""
    from experiments import compile_check as cc
    _, rows = table
    # "_heads_fwd[lstm]": one entry of "_heads_fwd"; "_lstm_fwd_step+resets" / "+launch": the sample's heavier variant
    names = {_variant_base(r["kernel"]).partition("[")[0] for r in rows}
    assert names >= set(cc.checked_kernels())
    bad: dict = {}  # (kernel, arch, config) -> [dtype/align variants], repeat, dots
    for r in rows:
        if r["dtype"] in cc.REPEAT_DTYPES and int(r["mma_repeat"]) > 1:
            key = (r["kernel"], r["arch"], f"{r['BLOCK_B']}x{r['BLOCK_H']}x{r['BLOCK_K']} w{r['num_warps']} "
                                           f"s{r['num_stages']}")
            v = bad.setdefault(key, [[], 0, set()])
            v[0].append(f"{r['dtype']} {r['align']}")
            v[1] = max(v[1], int(r["mma_repeat"]))
            v[2].add(r["dots"])
    n = sum(len(v[0]) for v in bad.values())
    assert not bad, f"{n} fp16/bf16 compiles ({len(bad)} kernel/arch/configs) replicate MMA work across " \
        "warps:\n" + "\n".join(f"{k} {a} {c}: mma_repeat={rep} ({'; '.join(sorted(dots))}) in {', '.join(vs)}"
                               for (k, a, c), (vs, rep, dots) in sorted(bad.items()))


# ----------------------------------------------------------------------------------------------
# the analysis on hand-written TTGIR / SASS (no compile)
# ----------------------------------------------------------------------------------------------
def _ttgir(layouts: str, *results: str) -> str:
    ops = "\n".join(f"    %z{i} = tt.dot %a, %b, %c : tensor<16x64xbf16, #ttg.dot_op<{{opIdx = 0, parent = #mma, "
                     f"kWidth = 2}}>> * tensor<64x16xbf16, #ttg.dot_op<{{opIdx = 1, parent = #mma, kWidth = 2}}>> "
                     f"-> tensor<{res}> loc(#loc{i})" for i, res in enumerate(results))
    return f"{layouts}\nmodule {{\n  tt.func public @k() {{\n{ops}\n  }}\n}}\n"


def _mma(name, major, warps, instr):
    return (f"#{name} = #ttg.nvidia_mma<{{versionMajor = {major}, versionMinor = 0, warpsPerCTA = {warps}, "
            f"instrShape = {instr}}}>")


@pytest.mark.parametrize("major,warps,instr,result,expected", [
    (2, "[4, 4]", "[16, 8]", "16x32xf32", 4),  # persistent forward, H_PAD 1024: 4 warps per 16-row block
    (2, "[8, 2]", "[16, 8]", "16x16xf32", 8),  # persistent backward, H_PAD 1024
    (2, "[4, 1]", "[16, 8]", "16x16xf32", 4),  # per-step forward (16, 16, 64, 4, 2)
    (2, "[1, 4]", "[16, 8]", "16x32xf32", 1),  # warps along N, one 16x8 column block each
    (2, "[1, 8]", "[16, 8]", "16x32xf32", 2),  # 8 warps on 4 column blocks
    (2, "[2, 4]", "[16, 8]", "32x32xf32", 1),
    (3, "[4, 2]", "[16, 16, 16]", "64x32xf32", 1),  # wgmma per-step forward (64, 32, 32, 8, 2)
    (3, "[4, 1]", "[16, 32, 16]", "64x32xf32", 1),
    (3, "[8, 1]", "[16, 32, 16]", "64x32xf32", 2),  # two warpgroups on one 64-row tile
    (2, "[16, 1, 1]", "[1, 16, 8]", "16x16x32xf32", 1),  # 3-D split-K: one reduction slice per warp
    (2, "[1, 4, 4]", "[1, 16, 8]", "16x16x32xf32", 4),  # 3-D, warps along M of a 16-row slice
    (2, "[4, 1, 1]", "[1, 16, 8]", "2x16x16xf32", 2),  # 3-D, more warps than slices
])
def test_mma_repeat_of_hand_written_layouts(major, warps, instr, result, expected):
    from experiments import compile_check as cc

    text = _ttgir(_mma("mma", major, warps, instr), f"{result}, #mma")
    assert cc.mma_repeat(text) == expected
    (dot,) = cc.dot_repeats(text)
    assert dot["kind"] == f"mma v{major}" and dot["repeat"] == expected
    assert dot["shape"] == [int(v) for v in result.split("x")[:-1]]


def test_mma_repeat_max_over_dots_and_blocked_and_none():
    from experiments import compile_check as cc

    layouts = "\n".join([_mma("mma", 2, "[1, 4]", "[16, 8]"), _mma("mma1", 2, "[8, 2]", "[16, 8]"),
                         "#blocked = #ttg.blocked<{sizePerThread = [1, 4], threadsPerWarp = [8, 4], "
                         "warpsPerCTA = [4, 1], order = [1, 0]}>"])
    text = _ttgir(layouts, "16x32xf32, #mma", "16x16xf32, #mma1")
    assert [d["repeat"] for d in cc.dot_repeats(text)] == [1, 8]
    assert cc.mma_repeat(text) == 8
    assert "16x16 mma v2 [8,2]/[16,8] x8" in cc.describe_dots(cc.dot_repeats(text))
    # an FMA dot in a blocked layout: 8x16 elements per warp; 16 rows take 2 of the 4 warps along M
    assert cc.mma_repeat(_ttgir(layouts, "16x16xf32, #blocked")) == 2
    assert cc.mma_repeat(_ttgir(layouts)) == 0  # no dot
    # warp_group_dot results are read the same way
    wg = _mma("mma", 3, "[4, 2]", "[16, 16, 16]") + "\n  %z = ttng.warp_group_dot %a, %b, %c {isAsync = true} : " \
        "!ttg.memdesc<64x32xbf16, #shared, #smem> * !ttg.memdesc<32x16xbf16, #shared1, #smem> -> " \
        "tensor<64x16xf32, #mma> loc(#loc1)\n  %w = ttng.warp_group_dot_wait %z {pendings = 0 : i32} : " \
        "tensor<64x16xf32, #mma>\n"
    assert [d["repeat"] for d in cc.dot_repeats(wg)] == [2]  # 2 warpgroups along N on one 16-wide tile


def test_warp_repeat_rank_mismatch_raises():
    from experiments import compile_check as cc

    assert cc.warp_repeat([16, 32], [4, 4], [16, 8, 16]) == 4
    with pytest.raises(ValueError):
        cc.warp_repeat([16, 32, 8], [4, 4], [16, 8])


_SASS = """
        code for sm_90a
                Function : _k
        .headerflags    @"EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                          /* 0x00000a00ff017b82 */
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, RZ ;           /* 0x0000000c0804723c */
        /*0020*/                   LDSM.16.M88.4 R8, [R2] ;                        /* 0x000000000208783b */
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;                   /* 0x0000000000007b1d */
        /*0040*/                   LDSM.16.M88.4 R8, [R2+0x80] ;                   /* 0x000080000208783b */
        /*0050*/                   LDSM.16.MT88.4 R12, [R3] ;                      /* 0x000000000318783b */
        /*0060*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;           /* 0x0000000c0804723c */
        /*0070*/                   HMMA.16816.F32.BF16 R4, R10, R14, R4 ;          /* 0x0000000e0a04723c */
        /*0080*/              @!P0 BRA 0x40 ;                                      /* 0xfffffff800008947 */
        /*0090*/                   FFMA R4, R4, R5, R6 ;                           /* 0x0000000504047223 */
        /*00a0*/                   LDG.E.STRONG.GPU R7, desc[UR4][R2.64] ;         /* 0x0000000402077981 */
        /*00b0*/               @P1 BRA 0xa0 ;                                      /* 0x0000000000001947 */
        /*00c0*/                   ISETP.NE.AND P2, PT, R0, RZ, PT ;               /* 0x000000ff0000720c */
        /*00d0*/               @P2 BRA 0x10 ;                                      /* 0x0000000000002947 */
        /*00e0*/                   EXIT ;                                          /* 0x000000000000794d */
        /*00f0*/                   BRA 0xf0;                                       /* 0xfffffffc00fc7947 */
                ..........
"""


def test_hot_loop_counts_of_hand_written_sass():
    from experiments import compile_check as cc

    instrs = cc.sass_instructions(_SASS)
    assert instrs[1] == (0x10, "HMMA.16816.F32.BF16", "R4, R8, R12, RZ")
    assert cc.sass_loops(instrs) == [(0x10, 0xd0), (0x40, 0x80), (0xa0, 0xb0), (0xf0, 0xf0)]
    # innermost loop holding HMMA: 0x40..0x80 (not the outer 0x10..0xd0, not the spin loop 0xa0..0xb0)
    got = cc.hot_loop_counts(_SASS)
    assert got == dict(mma="HMMA", mma_per_iter=2, ldsm_per_iter=2, loop=(0x40, 0x80))
    # FMA fallback and HGMMA precedence
    ffma = "\n".join(line for line in _SASS.splitlines() if "HMMA" not in line)
    assert cc.hot_loop_counts(ffma)["mma"] == "FFMA"
    assert cc.hot_loop_counts(ffma)["loop"] == (0x10, 0xd0)  # the only loop holding the FFMA
    hg = _SASS.replace("HMMA.16816.F32.BF16 R4, R10, R14, R4", "HGMMA.64x16x16.F32.BF16 R24, gdesc[UR4], R24")
    assert cc.hot_loop_counts(hg) == dict(mma="HGMMA", mma_per_iter=1, ldsm_per_iter=2, loop=(0x40, 0x80))
    # no loop at all: the whole kernel is counted
    flat = "\n".join(line for line in _SASS.splitlines() if "BRA" not in line)
    assert cc.hot_loop_counts(flat) == dict(mma="HMMA", mma_per_iter=3, ldsm_per_iter=3, loop=None)
    # a second function in the listing is not mixed in
    two = _SASS + _SASS.replace("Function : _k", "Function : _other").replace("HMMA.16816", "IMMA.16816")
    assert cc.hot_loop_counts(two, "_k")["mma"] == "HMMA"
    assert cc.hot_loop_counts(two, "_other")["mma"] == "IMMA"


# ----------------------------------------------------------------------------------------------
# coverage: the registry is derived from the kernels' sources
# ----------------------------------------------------------------------------------------------
# @triton.jit kernels of kernels/ that the compile check does not compile, with the reason (none today).
NOT_CHECKED: dict[str, str] = {}


def test_every_jit_kernel_is_compile_checked():
    """Every launchable @triton.jit function in kernels/ (a jit function no other jit function calls) has a
    COMPILE_CHECK entry, or is in NOT_CHECKED with its reason; removing an entry fails here."""
    from experiments import compile_check as cc

    defined = cc.package_kernels()
    checked = cc.checked_kernels()
    assert len(defined) >= 10, defined
    missing = {k: m for k, m in defined.items() if k not in checked and k not in NOT_CHECKED}
    assert not missing, f"@triton.jit kernels without a COMPILE_CHECK entry: {missing}"
    assert {k: checked[k] for k in defined if k in checked} == {k: m for k, m in defined.items() if k in checked}
    stale = {k for k in NOT_CHECKED if k not in defined or k in checked}
    assert not stale, f"NOT_CHECKED names kernels that are gone or checked: {stale}"
    # every kernel declared with step_kernel gets its entries from that declaration
    from kernels import _common

    declared = {k.__name__: k.module for k in _common._STEP_KERNELS}
    assert len(declared) >= 8 and {k: checked.get(k) for k in declared} == declared
    # helpers (called from kernels) are compiled inside their callers, not on their own
    assert "lstm_cell_fwd" not in defined and "_grid_barrier" not in defined


def test_jit_kernels_tells_kernels_from_helpers():
    from experiments import compile_check as cc

    src = (
        "import triton\nfrom triton import jit\n"
        "@triton.jit\ndef helper(x):\n    return x\n"
        "@jit\ndef helper2(x):\n    return helper(x)\n"
        "@triton.jit(do_not_specialize=['t'])\ndef kernel_a(p, t):\n    y = helper2(p)\n"
        "@triton.jit\ndef kernel_b(p):\n    mod.other_helper(p)\n"
        "def host(p):\n    kernel_a[(1,)](p, 0)\n    helper(p)\n"
    )
    other = "import triton\n@triton.jit\ndef other_helper(p):\n    pass\n"
    assert cc.jit_kernels({"m": src, "o": other}) == {"kernel_a": "m", "kernel_b": "m"}


# ----------------------------------------------------------------------------------------------
# epilogue_repeat: warps computing the same stored pointwise values
# ----------------------------------------------------------------------------------------------
# The replication the step-3 rewrites left (issue 20 stays open for it; docs/PERFORMANCE.md, "Step 3 rewrites", row 7):
# where a backward's (16, units) tile holds fewer values than it has threads, the tile is laid out over the warps more
# than once and every warp computes all of it: the LSTM's H_PAD 256 (4 units on 8 warps: the variants with one warp per
# value are predicted slower there for the LSTM; the GRU runs one of them). Per (kernel, arch, BLOCK_K, BLOCK_H), the
# largest value allowed; anything not listed must be 1. A kernel change that lowers a value makes the xfail below pass
# (strict): then shrink this list.
EPILOGUE_DEBT = {("_lstm_bwd_persistent", arch, 256, 4): 8 for arch in ("sm_90a", "sm_80")}
# The LayerNorm LSTM's persistent forward stores its per-row partial statistics (B values a phase) from the dot's
# reduced tile, which every one of its warps (8 at H_PAD 1024, 4 below) holds whole (the row sums need no shared
# memory there); its 2-D stores (h, c, the gates, a^) are computed once per value.
EPILOGUE_DEBT.update({("_lnlstm_fwd_persistent", arch, h_pad, units): warps for arch in ("sm_90a", "sm_80")
                      for h_pad, units, warps in ((1024, 8, 8), (1024, 16, 8), (512, 8, 4), (256, 8, 4), (128, 8, 4))})


def _base(kernel: str) -> str:
    """A compile-table kernel name without its entry label ("[lstm]") and variant suffix."""
    return _variant_base(kernel).partition("[")[0]


@pytest.fixture(scope="module")
def debt_rows():
    """The rows of the committed full table (results/compile_table.csv, every config; no compile here) for the
    configs ``EPILOGUE_DEBT`` names that the kernels still declare: the sampled ``table`` holds each entry's
    heaviest config only, which need not be one of them. A debt whose config is gone has no row here (the strict
    xfail below then passes: shrink the list); a kernel change shows here once the full table is regenerated."""
    from experiments import compile_check as cc

    wanted = {(cc._entry_name(e), cc.ARCHS[arch], cc._config_key(c))
              for module in cc.kernel_modules() for e in cc._entries(module)
              for c in map(cc._config_fields, e["configs"]) for arch in e.get("archs", (90, 80))
              if (_base(cc._entry_name(e)), cc.ARCHS[arch], c.get("BLOCK_K"), c.get("BLOCK_H")) in EPILOGUE_DEBT}
    with open(ROOT / "results" / "compile_table.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if (r["kernel"], r["arch"], cc._config_key(r)) in wanted]
    assert {(r["kernel"], r["arch"], cc._config_key(r)) for r in rows} == wanted, "debt configs not in the full table"
    return rows


def _persistent_16bit(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "persistent" in r["kernel"] and r["dtype"] in ("fp16", "bf16") and r["status"] == "OK"]


def replicated_epilogues(rows: list[dict], allowed=lambda r: 1) -> list[str]:
    """The fp16/bf16 persistent compiles of a compile table whose stored pointwise values are computed by more
    warps than ``allowed(row)`` (by default: by more than one warp, ``epilogue_repeat > 1``)."""
    return sorted({f"{r['kernel']} {r['arch']} {r['dtype']} {r['BLOCK_B']}x{r['BLOCK_H']}x{r['BLOCK_K']} "
                   f"w{r['num_warps']}: epilogue_repeat={r['epilogue_repeat']}" for r in _persistent_16bit(rows)
                   if int(r["epilogue_repeat"]) > allowed(r)})


def _debt(r: dict) -> int:
    return EPILOGUE_DEBT.get((_base(r["kernel"]), r["arch"], int(r["BLOCK_K"]), int(r["BLOCK_H"])), 1)


def test_epilogue_replication_no_worse_than_recorded(table, debt_rows):
    """No 16-bit persistent config replicates its pointwise work more than ``EPILOGUE_DEBT`` records (1 where it
    records nothing): every forward and the backwards at H_PAD 1024, 512 and 128 compute each value in one
    warp; a change that brings back the 16x of 2c7c128's forward or the 8x of the backwards before fails here."""
    rows = table[1] + debt_rows
    assert _persistent_16bit(rows) and all(int(r["epilogue_repeat"]) >= 0 for r in rows if r["status"] != "N/A")
    bad = replicated_epilogues(rows, _debt)
    assert not bad, f"{len(bad)} fp16/bf16 persistent configs replicate the epilogue more than recorded:\n" + \
        "\n".join(bad)


@pytest.mark.xfail(strict=True, reason="issue 20 open: the LSTM's persistent backward at H_PAD 256 still "
                                       "replicates the epilogue 8x (EPILOGUE_DEBT)")
def test_no_replicated_epilogue_in_16bit_persistent_kernels(table, debt_rows):
    """The target: a persistent step's activations and cell update run once per value, not once per warp (the
    split-K sum leaves each output in one warp). The kernels of 2c7c128 computed them 16x."""
    rows = table[1] + debt_rows
    bad = replicated_epilogues(rows)
    assert not bad, f"{len(bad)} fp16/bf16 persistent configs replicate the epilogue:\n" + "\n".join(bad)


_EPI_LAYOUTS = (_mma("mma", 2, [16, 1, 1], [1, 16, 8]) + "\n"
                "#blocked = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [4, 8], warpsPerCTA = [16, 1], "
                "order = [1, 0]}>\n"
                "#blocked1 = #ttg.blocked<{sizePerThread = [1, 4], threadsPerWarp = [8, 4], warpsPerCTA = [2, 2], "
                "order = [1, 0]}>\n"
                "#linear = #ttg.linear<{register = [[0, 1]], lane = [[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]], "
                "warp = [[8, 0], [0, 0]], block = []}>")


def _store_ttgir(*stores: str) -> str:
    body = "\n".join(f"    {s}" for s in stores)
    return f"{_EPI_LAYOUTS}\nmodule {{\n  tt.func public @k() {{\n{body}\n  }}\n}}\n"


def test_epilogue_repeat_of_hand_written_ttgir():
    """Counted by hand: a (16, 8) slice along dim 0 of a [16, 1, 1] MMA layout is held by all 16 warps (the
    persistent forward of 2c7c128); the same values converted to #blocked for the store still count 16 (the
    layout they were computed in); #blocked over (16, 8): 4 x 8 per warp, 16 warps in rows -> 4 distinct, 4x;
    #blocked1 over (16, 32): 8 x 16 per warp on [2, 2] warps -> 1; #linear: one of two warp bases is zero -> 2."""
    from experiments import compile_check as cc

    slice_ty = "tensor<16x8xf32, #ttg.slice<{dim = 0, parent = #mma}>>"
    conv = (f"%v = ttg.convert_layout %c : {slice_ty} -> tensor<16x8xf32, #blocked> loc(#loc1)",
            "%w = ttg.convert_layout %v : tensor<16x8xf32, #blocked> -> tensor<16x8xf32, #blocked> loc(#loc1)",
            "tt.store %p, %w, %m : tensor<16x8x!tt.ptr<f32>, #blocked> loc(#loc2)")
    assert [e["repeat"] for e in cc.epilogue_repeats(_store_ttgir(*conv))] == [16]
    assert cc.epilogue_repeat(_store_ttgir("tt.store %p, %x : tensor<16x8x!tt.ptr<f32>, #blocked>")) == 4
    assert cc.epilogue_repeat(_store_ttgir("tt.store %p, %x : tensor<16x32x!tt.ptr<bf16>, #blocked1>")) == 1
    assert cc.epilogue_repeat(_store_ttgir("tt.store %p, %x : tensor<16x8x!tt.ptr<bf16>, #linear>")) == 2
    assert cc.epilogue_repeat(_store_ttgir("tt.store %p, %x : !tt.ptr<i32>")) == 0  # scalar stores: no tensor
    both = _store_ttgir(*conv, "tt.store %q, %y : tensor<16x32x!tt.ptr<bf16>, #blocked1>")
    assert cc.epilogue_repeat(both) == 16  # the largest over the stores
    # a slice of a slice: (16,) along dims 0 then 1 of [16, 1, 1] -> still 16
    nested = "#ttg.slice<{dim = 1, parent = #ttg.slice<{dim = 0, parent = #mma}>}>"
    aliases = {"#mma": _mma("mma", 2, [16, 1, 1], [1, 16, 8]).split(" = ", 1)[1]}
    assert cc.layout_repeat([16], nested, aliases) == 16
