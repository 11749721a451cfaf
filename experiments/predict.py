"""Static step-time predictor of the persistent and per-step kernels, from their compiled SASS (no GPU).

    python -m experiments.predict                      # compile (cached), predict, write results/predicted_steps.csv
    python -m experiments.predict --auto-table         # kernels/auto_strategy.py from the CSV ("auto")
    python -m experiments.predict --doc docs/PERFORMANCE.md [--check]   # the doc's generated [E] block
    python -m experiments.predict --all                # the three above, in that order

Every number this writes is a **prediction** ([E]), never a measurement. Method, per kernel config, pass, arch and
dtype:

1. Compile the kernel as it runs (the launch-time constexprs of ``RUNTIME``: no lengths, gates stored, no data
   sync, no PDL) with experiments/compile_check.py's ``compile_entry`` for ``GPUTarget("cuda", arch, 32)``, aligned,
   and read its SASS (the bundled ``cuobjdump -sass``, with the control word of every instruction). Compiles are
   cached by the kernel's source hash (triton's ``cache_key``), the triton version and the variant (``--cache``).
2. Walk one time step's SASS path (``step_path``): a persistent kernel from the top of its time loop to the CTA
   barrier of its arrival at the grid barrier (the last ``BAR.SYNC`` before the ``REDG`` that arrives), a per-step
   kernel from its entry to its ``EXIT``. Conditional forward branches fall through (the guarded block runs),
   except a loop's guard; nested loops run ``trips`` times: the K loop of a per-step kernel cdiv(K, BLOCK_K) times
   (divided by ptxas' unroll factor), a persistent kernel's batch-tile loop once per extra 16-row tile, any other
   loop (the barrier's spin loop) never. A persistent kernel that runs its batch tiles as passes of one (step,
   tile) loop (today's kernels) walks one whole pass per extra tile first, with the branches over the arrival and
   the wait taken (``tile_guards``: only a step's last tile arrives and waits).
3. Count on that path, per warp: instructions (``insts_per_warp``; the issue floor is insts x warps / 4 cycles per
   SM sub-partition), ``BAR.SYNC`` (``cta_barriers``), MMA instructions; per CTA the shared-memory bytes
   (LDS/STS/LDSM, 32 lanes each) and the global bytes loaded (LDG/LDGSTS, every lane active; a persistent
   gather, the wide ``.STRONG`` loads of h / dz, scaled by the active rows and columns: min(B, BLOCK_B) / BLOCK_B
   x H / H_PAD); ``global_bytes`` is the grid's total per step.
4. Time the path (``simulate``): every warp of the CTA runs it, 4 schedulers issue at most one instruction per
   clock each (warp w on scheduler w % 4); an instruction waits for the scoreboards in its wait mask and then
   holds its warp for its encoded stall count; variable-latency results (LDS, LDSM, SHFL, MUFU, S2R, global loads)
   release their scoreboard after the latencies of ``Params``; LDS/STS/LDSM/SHFL share one shared-memory port of
   ``smem_bpc`` bytes per clock; ``BAR.SYNC`` releases ``bar_lat`` after the last warp arrives; global loads stream
   through a per-CTA L2 pipe (persistent gathers at the CTA's share of the aggregate L2 bandwidth, capped at the
   per-SM rate) and complete ``l2_lat`` after their last byte. Not modelled: bank conflicts, the instruction
   cache, clock throttling, different paths in different warps (one warp's arrival code runs in all).
5. Per step: persistent = the simulated path + the grid barrier (``grid_barrier_us``; a batch of n 16-row tiles
   adds n - 1 times the simulated cost of one more tile); per-step = max(the path simulated with zero-latency
   memory, the CTA's bytes at the per-SM L2 rate, the grid's bytes at the aggregate L2 rate) x waves of CTAs + one
   exposed L2 latency + the CUDA-graph node gap (``graph_gap_us``); the per-step config is the fastest of those the
   autotuner may pick (``prune_by_batch``). ``ms_T1024`` = 1024 steps + the pass's non-recurrent GEMMs
   (``gemm_ms``: forward the input projection, backward dW_hh, dW_ih and dx, plus the cat of h_{t-1} and db; at
   max(FLOPs / ``gemm_tflops``, bytes / ``hbm_tbs``), input size I = H).
6. LayerNorm cells (``lnlstm``, ``lngru``: kernels/layernorm.py): a step is two launches, the product
   (``_ln_product``, the fastest of its configs the autotuner may pick, timed as step 5) and the row program (one
   CTA per batch row, the block and warps its launcher gives it, path from entry to EXIT), each with its own graph
   node gap. With PDL (strategy ``per_step_pdl``, ``FUSEDRNN_PDL=1``; the kernels compiled with PDL=True) each of the
   two gaps is ``pdl_gap_us`` instead of ``graph_gap_us``: an assumption, not a measurement (the plain cells' PDL
   is not predicted here either): docs/PERFORMANCE.md ("Programmatic dependent launch") expects it to hide 0.5-1.5
   us of each 1-2 us gap; the range keeps 0.25 us of the optimistic 1 us gap and 1.5 us of the pessimistic 2 us.
   Their GEMMs add the input layer norm's passes and, backward, its VJP and the gain sums (``gemm_ms``).
   The LayerNorm LSTM's persistent forward (strategy ``persistent``, kernels/layernorm_persistent.py; B <= 16,
   the batch in one tile): a step is one whole pass of its time loop (the spin loops not run) with three grid
   barriers (``WHOLE_PASS_BARRIERS``, ``whole_pass_step_us``): the work between an arrival and the end of its wait
   overlaps the barrier (the max of the two), the rest runs in series; its GEMMs are the per_step forward's less
   the graph's input copy.
7. Multi-head cells (strategy ``heads_D<D>``, heads of D units: kernels/heads.py, ``_heads_fwd[cell]`` /
   ``_heads_bwd[cell]``; cells lstm, gru, rnn_tanh and slstm, the last two only as heads): one program per (head,
   16-row batch tile) for the whole sequence at the BLOCK_D and warps its launcher picks (``WARPS``), no grid
   barrier. A step is one pass of the kernel's time loop (the outermost loop holding the MMA), timed in steady
   state: the mean of passes 2 and 3 of three simulated back to back (the next step's prefetched loads wait where
   they are used). The programs run side by side while NH x cdiv(B, 16) <= SMs; each further wave adds a whole
   sequence (waves x the step; CTAs sharing an SM are not modelled). Their GEMMs are the dense cell's with dW_hh
   per head (one batched GEMM of NH (G*D, T*B) x (T*B, D) products).
8. Episode resets (column ``resets``: 1 = a ``resets=`` mask given, 0 = none): at the shapes of ``RESET_SHAPES``
   (LSTM and GRU, per_step and persistent), each pass compiled with HAS_RESETS=True (the mask's pointers ``*i8``)
   and predicted as steps 1-5 predict the variant without: its int8 flag loads and selects are instructions and
   bytes on the path like any other. The per-step configs are timed and picked for the reset variant on its own.
   The flags only feed selects, so the prediction holds for any mask content (all-false or not). Off the
   ``BATCHES`` x ``HIDDEN`` grid the rows without a mask are predicted beside them (not read by "auto").

Each range is (optimistic, pessimistic): the two ``Params`` of the arch's device (``DEVICES``: sm_90a rows use the
H100's, sm_80 rows the A100's; ``--device h200`` re-times the sm_90a rows with the H200's).
"""
from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .compile_check import LAUNCH_FLAGS

ROOT = Path(__file__).resolve().parent.parent
CSV_PATH = ROOT / "results" / "predicted_steps.csv"
# The predictions of the kernels as the static review read them (commit 2c7c128's kernels, predicted at 0d36e50):
# kept unchanged, so that the doc shows the predictor reproducing the review and each rewrite's before -> after.
BEFORE_CSV_PATH = ROOT / "results" / "predicted_steps_2c7c128.csv"
AUTO_TABLE_PATH = ROOT / "kernels" / "auto_strategy.py"
COLUMNS = ("kernel", "cell", "strategy", "dtype", "arch", "B", "H", "pass", "resets", "insts_per_warp", "cta_barriers",
           "smem_bytes", "global_bytes", "us_per_step_lo", "us_per_step_hi", "ms_T1024_lo", "ms_T1024_hi", "commit")
BATCHES = (1, 16, 32, 64, 256)  # 32: two batch tiles, where persistent and per_step cross (predicted)
HIDDEN = (256, 512, 768, 1024)
T_STEPS = 1024
# (arch, dtype) pairs predicted by default: bf16 and fp32 on sm_90a, bf16 on sm_80 (fp16 compiles to the same
# code as bf16 but for the HMMA type: ``--dtypes fp16`` adds it)
DEFAULT_TARGETS = ((90, "bf16"), (90, "fp32"), (80, "bf16"))


# ----------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Params:
    """Latencies (clock cycles), bandwidths and rates of one device, one end of a range. Stated, not measured:
    the H100 values are the ranges of docs/PERFORMANCE.md (clock, L2, HBM, cuBLAS) and the shared-memory / MUFU /
    barrier latencies of published microbenchmarks of Hopper and Ampere, rounded outward."""
    clock_ghz: float
    sms: int
    l2_lat: float  # L2 hit latency of a global load
    l2_tbs: float  # aggregate L2 bandwidth (TB/s) that an all-to-all gather shares
    sm_l2_bpc: float = 64.0  # per-SM L2 bandwidth cap (bytes / clock)
    smem_bpc: float = 128.0  # shared-memory port (bytes / clock)
    lds_lat: float = 30
    ldsm_lat: float = 33
    shfl_lat: float = 26
    mufu_lat: float = 18
    bar_lat: float = 20
    s2r_lat: float = 20
    other_lat: float = 20  # any other variable-latency result (I2F, POPC, ...)
    sts_release: float = 6  # read-scoreboard release of a shared store (its source registers free again)
    ldg_release: float = 12  # read-scoreboard release of a global memory instruction
    grid_barrier_us: float = 0.75  # persistent: arrival (membar + red) to detection by the last program
    graph_gap_us: float = 1.5  # per-step: CUDA-graph kernel-node gap between dependent launches
    pdl_gap_us: float = 0.75  # per-step with programmatic dependent launch: what is left of that gap (assumed)
    sm_stream_gbs: float = 85.0  # per-step: one SM's sustained L2 read stream (GB/s)
    gemm_tflops: float = 550.0  # cuBLAS, 16-bit inputs
    gemm_tflops_fp32: float = 45.0  # cuBLAS, fp32 "ieee" (no TF32)
    hbm_tbs: float = 2.75


H100_OPT = Params(clock_ghz=1.98, sms=132, l2_lat=260, l2_tbs=7.0, lds_lat=28, ldsm_lat=30, shfl_lat=24,
                  mufu_lat=16, bar_lat=16, grid_barrier_us=0.5, graph_gap_us=1.0, pdl_gap_us=0.25, sm_stream_gbs=100.0,
                  gemm_tflops=650.0, gemm_tflops_fp32=55.0, hbm_tbs=3.0)
H100_PESS = Params(clock_ghz=1.755, sms=132, l2_lat=380, l2_tbs=5.5, lds_lat=33, ldsm_lat=34, shfl_lat=30,
                   mufu_lat=22, bar_lat=24, grid_barrier_us=1.0, graph_gap_us=2.0, pdl_gap_us=1.5, sm_stream_gbs=70.0,
                   gemm_tflops=450.0, gemm_tflops_fp32=40.0, hbm_tbs=2.5)
# H200: the H100's SM and L2 at the same clocks, faster HBM (4.8 TB/s)
H200_OPT = replace(H100_OPT, hbm_tbs=4.8)
H200_PESS = replace(H100_PESS, hbm_tbs=4.0)
# A100 SXM: 108 SMs at 1.41 GHz boost (1.275 sustained), L2 about 5 TB/s, bf16 dense 312 TFLOP/s peak, HBM 2 TB/s
A100_OPT = Params(clock_ghz=1.41, sms=108, l2_lat=230, l2_tbs=5.0, lds_lat=28, ldsm_lat=30, shfl_lat=24,
                  mufu_lat=16, bar_lat=16, grid_barrier_us=0.6, graph_gap_us=1.0, pdl_gap_us=0.25, sm_stream_gbs=80.0,
                  gemm_tflops=270.0, gemm_tflops_fp32=18.0, hbm_tbs=1.9)
A100_PESS = Params(clock_ghz=1.275, sms=108, l2_lat=330, l2_tbs=3.8, lds_lat=33, ldsm_lat=34, shfl_lat=30,
                   mufu_lat=22, bar_lat=24, grid_barrier_us=1.2, graph_gap_us=2.0, pdl_gap_us=1.5, sm_stream_gbs=55.0,
                   gemm_tflops=200.0, gemm_tflops_fp32=14.0, hbm_tbs=1.5)
DEVICES = {"h100": (H100_OPT, H100_PESS), "h200": (H200_OPT, H200_PESS), "a100": (A100_OPT, A100_PESS)}
ARCH_DEVICE = {90: "h100", 80: "a100"}


# ----------------------------------------------------------------------------------------------
# SASS: instructions with their control words
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instr:
    """One SASS instruction: address, opcode with modifiers (``LDG.E.128.STRONG.GPU``), its base (``LDG``),
    operands, guard predicate ('' when none) and the scheduling fields ptxas encodes in bits 105..121 of the
    128-bit instruction (the second 64-bit word): stall cycles, write / read scoreboard (7 = none), wait mask."""
    addr: int
    op: str
    operands: str = ""
    pred: str = ""
    stall: int = 1
    wbar: int = 7
    rbar: int = 7
    wait: int = 0

    @property
    def base(self) -> str:
        return self.op.split(".")[0]

    @property
    def target(self) -> int | None:
        """A branch's (or call's) target address."""
        m = re.search(r"(0x[0-9a-fA-F]+)\s*$", self.operands)
        return int(m.group(1), 16) if m and self.base in ("BRA", "CALL") else None


_LINE_RE = re.compile(r"/\*([0-9a-fA-F]{4,})\*/\s+(@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\s*([^;]*);"
                      r"\s*/\*\s*0x[0-9a-fA-F]{16}\s*\*/")
_HI_RE = re.compile(r"^\s*/\*\s*(0x[0-9a-fA-F]{16})\s*\*/\s*$")


def parse_sass(sass: str, function: str | None = None) -> list[Instr]:
    """The instructions of ``function`` (default: the first) in a ``cuobjdump -sass`` listing, each with the
    control fields of its second encoding word (the line below it)."""
    sections = re.split(r"^\s*Function\s*:\s*", sass, flags=re.MULTILINE)[1:]
    text = next((sec for sec in sections if function is None or sec.split(None, 1)[0] == function), "")
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        m = _LINE_RE.search(line)
        if not m:
            continue
        hi = _HI_RE.match(lines[i + 1]) if i + 1 < len(lines) else None
        word = int(hi.group(1), 16) if hi else 0
        out.append(Instr(addr=int(m.group(1), 16), op=m.group(3), operands=m.group(4).strip(),
                         pred=(m.group(2) or "").strip(), stall=(word >> 41) & 0xF, wbar=(word >> 46) & 7,
                         rbar=(word >> 49) & 7, wait=(word >> 52) & 0x3F))
    return out


def loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """``(first, last)`` address ranges of the loops: a branch back to an earlier address (not to itself, the
    listing's trailing ``BRA`` to its own address)."""
    return sorted({(i.target, i.addr) for i in instrs if i.base == "BRA" and i.target is not None
                   and i.target < i.addr})


MMA_KINDS = ("HGMMA", "HMMA", "DMMA", "IMMA")
GLOBAL_LOADS = ("LDG", "LDGSTS")
SHARED_OPS = ("LDS", "STS", "LDSM")


def mma_kind(instrs: list[Instr]) -> str:
    """The kernel's MMA instruction (HGMMA, HMMA, DMMA, IMMA), else FFMA / DFMA (dots without MMA)."""
    bases = {i.base for i in instrs}
    return next((k for k in MMA_KINDS + ("DFMA", "FFMA") if k in bases), "")


def _width(op: str) -> int:
    """Bytes per lane of a memory instruction from its modifiers (32-bit when none)."""
    for mod, n in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if mod in op:
            return n
    return 4


def mem_bytes(ins: Instr) -> int:
    """Bytes one warp's instruction moves: 32 lanes x the width; LDSM.x1/.x2/.x4 moves 1, 2, 4 8x8 16-bit
    matrices (128 B each)."""
    if ins.base == "LDSM":
        return 128 * (4 if ".4" in ins.op else 2 if ".2" in ins.op else 1)
    if ins.base in SHARED_OPS + GLOBAL_LOADS + ("STG", "SHFL"):
        return 4 * 32 if ins.base == "SHFL" else _width(ins.op) * 32
    return 0


def is_gather(ins: Instr) -> bool:
    """A persistent kernel's gather of what other programs wrote: a vector (64- or 128-bit) ``.STRONG`` global
    load (``cache_modifier=".cg"`` / volatile)."""
    return ins.base == "LDG" and ".STRONG" in ins.op and _width(ins.op) >= 8


# ----------------------------------------------------------------------------------------------
# one time step's path
# ----------------------------------------------------------------------------------------------
def time_loop(instrs: list[Instr]) -> tuple[int, int, int] | None:
    """A persistent kernel's time loop and arrival: ``(loop top, loop end, arrival barrier address)``: the
    outermost loop holding the first ``REDG`` (sm_90; ``RED`` on sm_80: the release add of ``_arrive``), and the
    last ``BAR.SYNC`` before it. None when the kernel has no such loop (a per-step kernel, the data-sync forward)."""
    red = next((i.addr for i in instrs if i.base in ("REDG", "RED")), None)
    if red is None:
        return None
    outer = [lp for lp in loops(instrs) if lp[0] <= red <= lp[1]]
    if not outer:
        return None
    lo, hi = min(outer, key=lambda lp: (lp[0], -lp[1]))
    bar = max((i.addr for i in instrs if i.base == "BAR" and lo <= i.addr < red), default=None)
    return (lo, hi, bar) if bar is not None else None


def step_path(instrs: list[Instr], start: int, stop: int | None, trips, take=()) -> list[Instr]:
    """The instructions one warp executes from address ``start`` until (and with) address ``stop`` (None: the
    first unpredicated ``EXIT``). ``trips((first, last))`` is how many times a loop's body runs in total.
    Branches: a conditional forward branch falls through (its block runs), unless its address is in ``take``
    (taken: e.g. over the arrival, in a pass of a batch tile that is not its step's last), or it skips a loop (it
    targets the address right after a loop's back branch and the loop starts at or after it) whose trips are used
    up, or it is a while loop's exit test (inside the loop, to the address after it) and the trips are done, or it
    is the entry of a loop that must still run (``_falls_around_a_loop``); an unconditional one is taken; a conditional
    backward branch is taken until its loop has run ``trips`` times, an unconditional one always (its loop exits
    at the top), except back to the start of the walk (one pass of the loop the walk began in ends it). ``CALL``
    walks the callee up to its ``RET``."""
    at = {ins.addr: k for k, ins in enumerate(instrs)}
    lps = loops(instrs)
    after = {instrs[at[hi] + 1].addr if at[hi] + 1 < len(instrs) else hi + 16: (lo, hi) for lo, hi in lps}
    runs: collections.Counter = collections.Counter()
    path, k, calls = [], at[start], []
    while k < len(instrs):
        ins = instrs[k]
        path.append(ins)
        if len(path) > 2_000_000:
            raise RuntimeError("step_path: no end (a loop without trips?)")
        if ins.addr == stop or (ins.base == "EXIT" and not ins.pred):
            break
        if ins.base == "RET" and calls:
            k = calls.pop()
            continue
        if ins.base == "CALL" and ins.target is not None:
            calls.append(k + 1)
            k = at[ins.target]
            continue
        tgt = ins.target if ins.base == "BRA" else None
        if tgt is None:
            k += 1
            continue
        if tgt < ins.addr:  # a loop's back branch
            loop = (tgt, ins.addr)
            runs[loop] += 1
            if not ins.pred:  # a while loop: its exit test is a forward branch inside it
                if tgt <= start:  # the loop the walk started in: one pass is done
                    break
                k = at[tgt]
            elif runs[loop] < trips(loop):
                k = at[tgt]
            else:
                runs[loop] = 0
                k += 1
            continue
        skipped = after.get(tgt)  # the loop this branch leaves or skips, if it targets the end of one
        if ins.addr in take:
            k = at[tgt]
        elif skipped and skipped[0] <= ins.addr <= skipped[1] and runs[skipped] >= trips(skipped):
            runs[skipped] = 0  # a while loop's exit, taken once its trips are done
            k = at[tgt]
        elif not ins.pred or (skipped and skipped[0] >= ins.addr and runs[skipped] >= trips(skipped)):
            k = at[tgt]
        elif _falls_around_a_loop(instrs, k, lps, lambda lp: runs[lp] < trips(lp)):
            k = at[tgt]
        else:
            k += 1
    return path


def _falls_around_a_loop(instrs: list[Instr], k: int, lps, pending) -> bool:
    """Whether the fall-through of the conditional branch ``instrs[k]`` reaches an unconditional forward branch
    (before any other branch or the conditional branch's target) that jumps over a loop starting at or after the
    target whose body must still run (``pending``): then the branch is the loop's entry, and it is taken."""
    tgt = instrs[k].target
    for ins in instrs[k + 1:]:
        if ins.addr >= tgt:
            return False
        if ins.base == "BRA":
            return not ins.pred and ins.target is not None and any(
                tgt <= lo and hi < ins.target and pending((lo, hi)) for lo, hi in lps)
    return False


@dataclass
class Counts:
    """What one warp (instructions, barriers, MMA) and one CTA (bytes) do on a path."""
    insts: int = 0
    bars: int = 0
    mma: int = 0
    smem_bytes: int = 0  # per CTA
    global_bytes: float = 0.0  # per CTA, gathers scaled by their active fraction
    by_op: dict = field(default_factory=dict)


def count(path: list[Instr], warps: int, gather_fraction: float = 1.0) -> Counts:
    """Per-warp instruction, ``BAR.SYNC`` and MMA counts of a path, and per-CTA shared and global load bytes
    (``warps`` warps run it; gathers, ``is_gather``, count ``gather_fraction`` of their bytes)."""
    c = Counts(insts=len(path))
    ops = collections.Counter(i.base for i in path)
    c.by_op = dict(ops)
    c.bars = ops.get("BAR", 0)
    c.mma = sum(ops.get(k, 0) for k in MMA_KINDS)
    for ins in path:
        if ins.base in SHARED_OPS:
            c.smem_bytes += mem_bytes(ins) * warps
        elif ins.base in GLOBAL_LOADS:
            c.global_bytes += mem_bytes(ins) * warps * (gather_fraction if is_gather(ins) else 1.0)
    return c


# ----------------------------------------------------------------------------------------------
# timing one CTA's path
# ----------------------------------------------------------------------------------------------
_LATENCY = {"LDS": "lds_lat", "LDSM": "ldsm_lat", "SHFL": "shfl_lat", "MUFU": "mufu_lat", "S2R": "s2r_lat",
            "S2UR": "s2r_lat", "CS2R": "s2r_lat"}


def simulate(path: list[Instr], warps: int, p: Params, gather_bpc: float = 0.0, gather_fraction: float = 1.0,
             memory: bool = True) -> float:
    """Clock cycles for ``warps`` warps to each run ``path`` (module docstring, step 4). ``gather_bpc``: the
    bytes per clock this CTA's gathers (``is_gather``) stream at (default: the per-SM cap), moving
    ``gather_fraction`` of their nominal bytes; ``memory=False``: global loads complete at once (the on-chip
    floor)."""
    gather_bpc = gather_bpc or p.sm_l2_bpc
    n = len(path)
    pc = [0] * warps
    ready = [0.0] * warps
    board = [[0.0] * 6 for _ in range(warps)]
    waiting = [False] * warps  # at a BAR.SYNC
    arrived = [0.0] * warps
    smem_free = gather_free = l2_free = 0.0
    t = 0.0
    while True:
        live = [w for w in range(warps) if pc[w] < n]
        if not live:
            break
        if all(waiting[w] for w in live):  # every warp at the barrier: release them together
            release = max(arrived[w] for w in live) + p.bar_lat
            for w in live:
                waiting[w] = False
                pc[w] += 1
                ready[w] = max(ready[w], release)
            t = max(t, release)
            continue
        issued, next_t = False, None
        for s in range(4):
            for w in range(s, warps, 4):
                if pc[w] >= n or waiting[w]:
                    continue
                ins = path[pc[w]]
                when = ready[w]
                for b in range(6):
                    if ins.wait >> b & 1:
                        when = max(when, board[w][b])
                if when > t:
                    next_t = when if next_t is None else min(next_t, when)
                    continue
                issued = True
                base = ins.base
                if base == "BAR":
                    waiting[w], arrived[w] = True, t
                    break
                done = None  # when a variable-latency result is ready
                start = t
                if base in SHARED_OPS or base == "SHFL":
                    start = max(t, smem_free)
                    smem_free = start + max(1.0, mem_bytes(ins) / p.smem_bpc)
                    if base != "STS":
                        done = smem_free + getattr(p, _LATENCY[base])
                elif base in GLOBAL_LOADS or base in ("STG", "REDG", "ATOMG", "RED", "ATOM"):
                    nbytes = mem_bytes(ins) or 128
                    if not memory:
                        done = t
                    elif is_gather(ins):
                        gather_free = max(t, gather_free) + nbytes * gather_fraction / gather_bpc
                        done = gather_free + p.l2_lat
                    else:
                        l2_free = max(t, l2_free) + nbytes / p.sm_l2_bpc
                        done = l2_free + p.l2_lat
                elif ins.wbar != 7:
                    done = t + getattr(p, _LATENCY.get(base, "other_lat"))
                if ins.wbar != 7:
                    board[w][ins.wbar] = max(board[w][ins.wbar], done if done is not None else t + p.other_lat)
                if ins.rbar != 7:
                    hold = p.ldg_release if base in GLOBAL_LOADS or base in ("STG", "REDG", "ATOMG") else p.sts_release
                    board[w][ins.rbar] = max(board[w][ins.rbar], start + hold)
                ready[w] = t + max(1, ins.stall)
                pc[w] += 1
                break
        if issued:
            t += 1
        elif next_t is not None:
            t = max(t + 1, next_t)
        else:
            t += 1
    return max(max(ready), t)


def extrapolate(time_of, n: int, base: int = 1) -> float:
    """``time_of(n)`` for a path holding n copies of a loop body, from two simulations: time_of(base) plus
    (n - base) times the cost of one more copy (time_of(base + 1) - time_of(base)); exact for n <= base + 1."""
    if n <= base + 1:
        return time_of(n)
    first = time_of(base)
    return first + (n - base) * (time_of(base + 1) - first)


# ----------------------------------------------------------------------------------------------
# compiles (cached): experiments/compile_check.py's compile_entry on the launch-time variant
# ----------------------------------------------------------------------------------------------
# Launch-time constexprs that differ from the compile check's heaviest variant: what a training step runs. (The
# opt-in data-sync forward, "[data_sync]", was removed after its prediction; its rows stay in the CSV of 2c7c128's
# kernels, and StepKernelModel's ``data_sync`` still models a step that waits by polling.)
RUNTIME = LAUNCH_FLAGS  # a call without resets (step 8 sets it): the compile check's "+launch" variant
RESET_ARGS = ("resets", "resets_next")  # the reset variant's int8 mask pointers (HAS_RESETS=True: ``compiled``)
# (cell, strategy, pass) -> (kernel module, kernel name)
KERNELS = {
    ("lstm", "persistent", "fwd"): ("lstm_persistent", "_lstm_fwd_persistent"),
    ("lstm", "persistent", "bwd"): ("lstm_persistent", "_lstm_bwd_persistent"),
    ("lstm", "per_step", "fwd"): ("lstm", "_lstm_fwd_step"),
    ("lstm", "per_step", "bwd"): ("lstm", "_lstm_bwd_step"),
    ("gru", "persistent", "fwd"): ("gru_persistent", "_gru_fwd_persistent"),
    ("gru", "persistent", "bwd"): ("gru_persistent", "_gru_bwd_persistent"),
    ("gru", "per_step", "fwd"): ("gru", "_gru_fwd_step"),
    ("gru", "per_step", "bwd"): ("gru", "_gru_bwd_step"),
    ("lnlstm", "persistent", "fwd"): ("layernorm_persistent", "_lnlstm_fwd_persistent"),
}
# Persistent kernels whose step is one whole pass of the time loop with several grid barriers in it (module
# docstring, step 6): the barriers per step.
WHOLE_PASS_BARRIERS = {"_lnlstm_fwd_persistent": 3}
# The LayerNorm cells' row programs (module docstring, step 6); their product is ``LN_PRODUCT``.
LN_ROWS = {("lnlstm", "fwd"): "_lnlstm_fwd_rows", ("lnlstm", "bwd"): "_lnlstm_bwd_rows",
           ("lngru", "fwd"): "_lngru_fwd_rows", ("lngru", "bwd"): "_lngru_bwd_rows"}
LN_PRODUCT = "_ln_product"
GATES = {"lstm": 4, "gru": 3, "lnlstm": 4, "lngru": 3, "slstm": 4, "rnn_tanh": 1}
CELLS = ("lstm", "gru", "lnlstm", "lngru", "slstm", "rnn_tanh")
LN_CELLS = ("lnlstm", "lngru")
# Multi-head cells (module docstring, step 7): the head sizes predicted, as strategies "heads_D<D>"; the sLSTM
# and the RNN (tanh) are predicted only as heads.
HEAD_SIZES = (32, 64)
HEADS_STRATEGIES = tuple(f"heads_D{d}" for d in HEAD_SIZES)
HEADS_HIDDEN = (768,)  # issue 21's shape (24 heads of 32, 12 of 64); every B of BATCHES (the waves)
HEADS_ONLY = ("slstm", "rnn_tanh")


def head_size(strategy: str) -> int | None:
    """D of a multi-head strategy (``heads_D32`` -> 32), None for the dense strategies."""
    return int(strategy.removeprefix("heads_D")) if strategy.startswith("heads_D") else None


def strategies(cell: str) -> tuple:
    """The strategies predicted for ``cell``."""
    if cell == "lnlstm":
        return ("per_step", "per_step_pdl", "persistent")
    if cell in LN_CELLS:
        return ("per_step", "per_step_pdl")
    return (() if cell in HEADS_ONLY else ("persistent", "per_step")) + HEADS_STRATEGIES
AUTO_CELLS = ("lstm", "gru")  # the cells "auto" chooses a strategy for (the LayerNorm cells run per_step only)
# Episode resets (module docstring, step 8): the (B, H) shapes predicted with a reset mask (resets = 1) beside
# the same shapes without (resets = 0), per dtype, sm_90a: pytorch/rl's benchmark shape (B = 128, H = 256; issue
# 23's target is at its T = 128: ``RESET_T``) and the headline's (B = 16, H = 768 / 1024).
RESET_CELLS = ("lstm", "gru")
RESET_SHAPES = {(90, "bf16"): ((128, 256), (16, 768), (16, 1024)), (90, "fp32"): ((128, 256),)}
RESET_T = {(128, 256): 128}  # the sequence length each shape's target check is at (default T_STEPS)


def default_cache() -> Path:
    return Path(os.environ.get("FUSEDRNN_PREDICT_CACHE", Path.home() / ".cache" / "fusedrnn" / "predict"))


def compiled(kernel: str, config: dict, arch: int, dtype: str, cache: Path, pdl: bool = False,
             resets: bool = False) -> dict:
    """The launch-time variant (``RUNTIME``; with ``pdl`` PDL=True; with ``resets`` HAS_RESETS=True, the reset
    mask's pointers typed ``*i8``) of registry kernel ``kernel`` compiled at ``config`` for ``arch`` / ``dtype``
    (aligned): ``{"sass", "ttgir", "registers", "spill_bytes", "shared_bytes", "status"}``, cached in ``cache``
    under a hash of the kernel's ``cache_key`` (triton's hash of its source and the jit functions it calls), the
    triton version and the variant."""
    import triton

    from . import compile_check as cc

    entry = cc.find_entry(kernel, dtype)
    consts = {k: RUNTIME.get(k, v) for k, v in entry.get("constexprs", {}).items()}
    if "PDL" in consts:
        consts["PDL"] = pdl
    if resets:
        if "HAS_RESETS" not in consts:
            raise ValueError(f"{kernel}: no HAS_RESETS constexpr in its compile-check entry")
        consts["HAS_RESETS"] = True
        params = {p.name for p in entry["kernel"].params}
        entry = dict(entry, args={**{a: "*i8" for a in RESET_ARGS if a in params}, **entry.get("args", {})})
    variant = [entry["kernel"].cache_key, triton.__version__, kernel, consts, config, arch, dtype]
    key = hashlib.sha1(json.dumps(variant, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = Path(cache) / f"{kernel}_{arch}_{dtype}_{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        r = cc.compile_entry(dict(entry, constexprs=consts), config, arch, dtype, "aligned",
                             module=entry.get("module", ""), name=kernel, dump_dir=tmp)
        if r.status not in ("OK", "SPILL", "SMEM", "SPILL+SMEM"):
            raise RuntimeError(f"{kernel} {config} sm_{arch} {dtype}: {r.status} {r.error}")
        texts = {ext: next(Path(tmp).glob(f"*.{ext}")).read_text() for ext in ("sass", "ttgir")}
    out = dict(texts, registers=r.registers, spill_bytes=r.spill_bytes, shared_bytes=r.shared_bytes,
               status=r.status)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


# ----------------------------------------------------------------------------------------------
# one compiled kernel: its step path and the time of a step
# ----------------------------------------------------------------------------------------------
def tile_guards(instrs: list[Instr], lo: int, hi: int, bar: int) -> frozenset:
    """The branches a batch tile that is not its step's last takes in a persistent kernel's (step, tile) loop
    ``lo``..``hi`` with the arrival barrier at ``bar``: the conditional forward branches that jump over the
    arrival (from before ``bar`` to after it) or over a loop nested in the time loop (the wait's spin loop)."""
    nested = [lp for lp in loops(instrs) if lo < lp[0] and lp[1] < hi]
    return frozenset(i.addr for i in instrs if lo <= i.addr <= hi and i.base == "BRA" and i.pred
                     and i.target is not None and i.target > i.addr
                     and ((i.addr < bar < i.target) or any(i.addr < a and b < i.target for a, b in nested)))


class StepKernelModel:
    """One compiled kernel config and its step path (``step_path``). ``reps``: copies of the repeated loop body
    on the path: batch tiles of a persistent step, iterations of a per-step kernel's K loop body. A persistent
    kernel runs its tiles either in a batch-tile loop nested in the time loop (it runs reps - 1 times when ptxas
    peeled tile 0 out of it, else reps times) or as passes of one (step, tile) loop (today's kernels: no loop
    nested in the time loop holds the MMA): reps - 1 whole passes that skip the arrival and the wait (the
    branches of ``tile_guards`` taken), then the pass to the arrival. ``whole_sequence`` (the per-head kernels):
    a step is one pass of the outermost loop holding the MMA, as with ``data_sync``. ``hot``: the loops that
    repeat (those holding the MMA instructions, nested in a persistent kernel's time loop; the innermost ones of
    a per-step kernel)."""

    def __init__(self, build: dict, warps: int, data_sync: bool = False, persistent: bool | None = None,
                 whole_sequence: bool = False):
        self.instrs = parse_sass(build["sass"])
        self.warps = warps
        self.registers = build["registers"]
        self.spill_bytes = build.get("spill_bytes", 0)
        self.shared_bytes = build["shared_bytes"]
        self.kind = mma_kind(self.instrs)
        self.tile_guards = frozenset()
        body_ops = (self.kind,) if self.kind else ()
        self.hot = {lp for lp in loops(self.instrs) if any(lp[0] <= i.addr <= lp[1] and i.base in body_ops
                                                             for i in self.instrs)}
        self.persistent = time_loop(self.instrs)
        if data_sync or whole_sequence:  # no arrival: a step is one whole pass of the outermost loop with the MMA
            lo, hi = min(self.hot, key=lambda lp: (lp[0], -lp[1]))
            self.persistent = (lo, hi, hi)
        if persistent is not None and bool(self.persistent) != persistent:
            raise ValueError(f"expected a {'persistent' if persistent else 'per-step'} kernel, the SASS shows "
                             f"{'no' if persistent else 'a'} time loop with an arrival")
        if self.persistent:
            lo, hi, _ = self.persistent
            self.hot = {lp for lp in self.hot if lo <= lp[0] and lp[1] <= hi and lp != (lo, hi)}
            inner = [i for i in self.instrs if lo <= i.addr <= hi and not any(a <= i.addr <= b for a, b in self.hot)]
            self.peeled = int(any(i.base == self.kind for i in inner))
            if not self.hot and not (data_sync or whole_sequence):  # a (step, tile) loop
                self.tile_guards = tile_guards(self.instrs, *self.persistent)
        else:  # the innermost loops that hold the MMA (the K loop)
            self.hot = {lp for lp in self.hot if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1]
                                                           for o in self.hot)}
            self.peeled = 0
        self._paths: dict = {}
        self._cycles: dict = {}

    def path(self, reps: int, polls: int = 0) -> list[Instr]:
        """The step path with ``reps`` copies of the repeated body and ``polls`` passes of every other loop (a
        data-sync poll loop: extra polls; the counter barrier's spin loop is after the arrival)."""
        if (reps, polls) not in self._paths:
            trips = lambda lp: max(0, reps - self.peeled) if lp in self.hot else polls  # noqa: E731
            if self.persistent:
                lo, hi, stop = self.persistent
                self._paths[reps, polls] = step_path(self.instrs, lo, stop, trips)
                if self.tile_guards and reps > 1:  # the step's other tiles: passes of the (step, tile) loop
                    tile = step_path(self.instrs, lo, hi, trips, take=self.tile_guards)
                    self._paths[reps, polls] = tile * (reps - 1) + self._paths[reps, polls]
            else:
                self._paths[reps, polls] = step_path(self.instrs, self.instrs[0].addr, None, trips)
        return self._paths[reps, polls]

    def cycles(self, reps: int, p: Params, gather_bpc: float = 0.0, gather_fraction: float = 1.0,
               memory: bool = True, polls: int = 0) -> float:
        """``simulate`` of ``path(reps, polls)`` on this kernel's warps (memoized)."""
        key = (reps, polls, p, gather_bpc, gather_fraction, memory)
        if key not in self._cycles:
            self._cycles[key] = simulate(self.path(reps, polls), self.warps, p, gather_bpc, gather_fraction, memory)
        return self._cycles[key]


def _macs(op: str) -> int:
    """Multiply-adds of one MMA instruction, per warp (HMMA / DMMA / IMMA) or per warpgroup (HGMMA), from its
    shape modifier (``HMMA.16816``, ``HGMMA.64x32x16``, ``DMMA.884``)."""
    m = re.search(r"\.(\d+)x(\d+)x(\d+)", op)
    if m:
        return int(m.group(1)) * int(m.group(2)) * int(m.group(3))
    m = re.search(r"\.(16|8)(8|16)(4|8|16|32)\b", op)
    return int(m.group(1)) * int(m.group(2)) * int(m.group(3)) if m else 0


def unroll_factor(model: StepKernelModel, macs_per_slice: int) -> int:
    """How many K slices one pass of a per-step kernel's loop body computes (ptxas may unroll the loop): its MMA
    work over one slice's (BLOCK_B x N x BLOCK_K); 1 when unknown (no MMA instruction)."""
    ops = [i.op for i in model.instrs for lo, hi in model.hot if lo <= i.addr <= hi and i.base == model.kind]
    if not ops or model.kind not in MMA_KINDS:
        return 1
    per_warp = model.warps // 4 if model.kind == "HGMMA" else model.warps
    work = sum(_macs(op) for op in ops) * max(1, per_warp)
    return max(1, round(work / macs_per_slice)) if macs_per_slice else 1


# Data-sync forward: extra poll rounds per step and tile on average (the first poll finds the data unwritten about
# half the time: the producers finish within one poll round of each other).
DATA_SYNC_EXTRA_POLLS = 0.5


def persistent_step_us(model: StepKernelModel, tiles: int, programs: int, gather_fraction: float,
                       p: Params, data_sync: bool = False) -> float:
    """A persistent step (module docstring, step 5): the path to the arrival for ``tiles`` batch tiles, with the
    gathers at this program's share of the aggregate L2 bandwidth, plus the grid barrier. ``data_sync``: the
    whole step with one successful poll per tile plus ``DATA_SYNC_EXTRA_POLLS`` poll rounds per tile, no grid
    barrier (the polls are the wait)."""
    clk = p.clock_ghz * 1e3  # cycles per us
    bpc = min(p.sm_l2_bpc, p.l2_tbs * 1e12 / (programs * p.clock_ghz * 1e9))
    cyc = extrapolate(lambda n: model.cycles(n, p, bpc, gather_fraction), tiles)
    if not data_sync:
        return cyc / clk + p.grid_barrier_us
    rounds = extrapolate(lambda n: model.cycles(n, p, bpc, gather_fraction, polls=1), tiles) - cyc
    return (cyc + DATA_SYNC_EXTRA_POLLS * rounds) / clk


def whole_pass_step_us(model: StepKernelModel, programs: int, gather_fraction: float, p: Params) -> float:
    """A persistent step that is one whole pass of the time loop with several grid barriers (module docstring,
    step 6): the path cut at each arrival (``REDG`` / ``RED``) and at the end of the wait that follows it (the
    first instruction past the next spin loop); the work between an arrival and the end of its wait overlaps the
    barrier (max of the two), the rest is in series. Each piece simulated on its own (gathers at this program's
    share of the aggregate L2 bandwidth)."""
    clk = p.clock_ghz * 1e3
    bpc = min(p.sm_l2_bpc, p.l2_tbs * 1e12 / (programs * p.clock_ghz * 1e9))
    path = model.path(1)
    lo, hi, _ = model.persistent
    spins = sorted(lp for lp in loops(model.instrs) if lo < lp[0] and lp[1] < hi)

    def us(seg):
        return simulate(seg, model.warps, p, bpc, gather_fraction) / clk if seg else 0.0

    t, prev = 0.0, 0
    for k in (k for k, ins in enumerate(path) if ins.base in ("REDG", "RED")):
        spin = next(lp for lp in spins if lp[0] > path[k].addr)
        end = next(j for j in range(k, len(path)) if path[j].addr > spin[1])
        t += us(path[prev:k + 1]) + max(us(path[k + 1:end]), p.grid_barrier_us)
        prev = end
    return t + us(path[prev:])


def heads_step_us(model: StepKernelModel, programs: int, p: Params) -> float:
    """A per-head kernel's step (module docstring, step 7): the steady-state pass of its time loop, (three passes
    - one) / 2 simulated back to back, times the waves of ``programs`` programs on the SMs."""
    one = model.path(1)
    cyc = (simulate(one * 3, model.warps, p) - simulate(one, model.warps, p)) / 2
    return cyc / (p.clock_ghz * 1e3) * -(-programs // p.sms)


def occupancy(registers: int, shared: int, warps: int) -> int:
    """CTAs resident per SM (sm_80 / sm_90 limits: 64K registers, 2048 threads, 32 CTAs, 227 KB shared)."""
    threads = 32 * warps
    by_regs = 65536 // max(1, registers * threads)
    by_smem = (227 * 1024) // shared if shared else 32
    return max(1, min(by_regs, by_smem, 2048 // threads, 32))


def per_step_us(model: StepKernelModel, iters: int, ctas: int, p: Params, pdl: bool = False) -> tuple[float, float]:
    """A per-step launch (module docstring, step 5) with ``iters`` K-loop body passes on ``ctas`` CTAs:
    ``(us, bytes loaded per CTA)``; ``pdl``: launched with programmatic dependent launch (step 6)."""
    clk = p.clock_ghz * 1e3
    onchip = extrapolate(lambda n: model.cycles(n, p, memory=False), iters, base=2) / clk
    cta_bytes = extrapolate(lambda n: count(model.path(n), model.warps).global_bytes, iters, base=2)
    waves = -(-ctas // (p.sms * occupancy(model.registers, model.shared_bytes, model.warps)))
    sm_stream = cta_bytes / (p.sm_stream_gbs * 1e3)
    grid_stream = cta_bytes * ctas / (p.l2_tbs * 1e6)
    return (max(onchip, sm_stream) * waves + max(0.0, grid_stream - max(onchip, sm_stream) * waves)
            + p.l2_lat / clk + (p.pdl_gap_us if pdl else p.graph_gap_us)), cta_bytes


# ----------------------------------------------------------------------------------------------
# the non-recurrent GEMMs of a pass
# ----------------------------------------------------------------------------------------------
ESIZE = {"fp16": 2, "bf16": 2, "fp32": 4, "tf32": 4, "fp64": 8}


def gemm_ms(cell: str, kind: str, strategy: str, dtype: str, B: int, H: int, p: Params, T: int = T_STEPS) -> float:
    """The pass's GEMMs and copies outside the recurrence, each at max(FLOPs / rate, bytes / HBM bandwidth), input
    size I = H: forward the input projection (bias in addmm); backward dW_hh, dW_ih, dx, the cat of h_{t-1} and
    db. per_step adds the CUDA graph's input copy (xp forward, dy backward). The LayerNorm cells add, forward, the
    input layer norm and the bias add (two reads and two writes of xp), backward the layer norm's VJP (three
    passes over xp's size) and the gain sums (dv x a^: two; the LSTM's dn x LN(c_t): c_t read, its normalised copy
    written and read, fp32, and dn read). The multi-head strategies (``heads_D<D>``): dW_hh is one batched GEMM
    of the H / D heads' (G*D, T*B) x (T*B, D) products."""
    G, I, e = GATES[cell], H, ESIZE[dtype]
    D = head_size(strategy)
    rate = (p.gemm_tflops if e == 2 else p.gemm_tflops_fp32) * 1e12
    bw = p.hbm_tbs * 1e12

    def gemm(m, n, k):
        return max(2.0 * m * n * k / rate, (m * k + k * n + m * n) * e / bw)

    TB = T * B
    if kind == "fwd":
        s = gemm(TB, G * H, I) + (2 * TB * G * H * e / bw if strategy == "per_step" else 0.0)
    else:
        s = (H // D * gemm(G * D, D, TB) if D else gemm(G * H, H, TB)) + gemm(G * H, I, TB) + gemm(TB, I, G * H)
        s += (2 * TB * H * e + TB * G * H * e) / bw  # cat of h_{t-1} (read + write), db (a read of dz)
        s += 2 * TB * H * e / bw if strategy == "per_step" else 0.0
    if cell.startswith("ln"):
        s += (4 if kind == "fwd" else 5) * TB * G * H * e / bw
        s += (3 * TB * H * 4 + TB * H * e) / bw if cell == "lnlstm" and kind == "bwd" else 0.0
    return s * 1e3


# ----------------------------------------------------------------------------------------------
# rows: the configs the launchers pick
# ----------------------------------------------------------------------------------------------
_TORCH_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "fp64": "float64"}


def _module(name: str):
    import importlib

    from . import compile_check as cc

    return importlib.import_module(f"{cc._kernels_package()[1]}.{name}")


def persistent_config(cell: str, dtype: str, H: int, sms: int, arch: int = 90):
    """The config ``decide`` runs for a persistent pass on ``arch`` (``_persistent.pick_config`` on the cell's
    ``ARCH_CONFIGS[arch]``), or None."""
    import torch

    configs = _module(KERNELS[(cell, "persistent", "fwd")][0]).ARCH_CONFIGS[arch]
    return _module("_persistent").pick_config(configs, getattr(torch, _TORCH_DTYPE[dtype]), H, sms)


def _group(dtype: str) -> str:
    return next(g for g, ds in _module("_common").DTYPE_GROUPS.items() if dtype in ds)


def step_configs(cell: str, kind: str, dtype: str, B: int, kern=None, resets: bool = False) -> list[dict]:
    """The per-step configs the autotuner may pick at batch B (its list for the dtype's group, pruned by
    ``prune_by_batch``), as compile-check config dicts; ``kern``: that StepKernel instead of the cell's;
    ``resets``: those of its reset variant (``reset_configs``)."""
    from . import compile_check as cc

    if kern is None:
        kern = getattr(_module(KERNELS[(cell, "per_step", kind)][0]), KERNELS[(cell, "per_step", kind)][1])
    group = _group(dtype)
    cfgs = [c.as_triton() for c in (kern.reset_configs if resets else kern.configs)[group]]
    return [cc._config_fields(c) for c in _module("_common").prune_by_batch(cfgs, {}, B=B)]


def _cfg_label(cfg: dict) -> str:
    split = f" S{cfg['SPLIT_K']}" if "SPLIT_K" in cfg else ""
    return f"{cfg['BLOCK_B']}x{cfg['BLOCK_H']}x{cfg['BLOCK_K']} w{cfg['num_warps']} s{cfg['num_stages']}{split}"


@dataclass
class Prediction:
    """One row of results/predicted_steps.csv, plus the MMA count and the issue floor (not CSV columns)."""
    kernel: str
    cell: str
    strategy: str
    dtype: str
    arch: str
    B: int
    H: int
    kind: str
    counts: Counts
    us: tuple
    ms: tuple
    warps: int
    resets: int = 0  # 1: the HAS_RESETS variant (a reset mask given; any content: module docstring, step 8)

    def row(self, commit: str) -> dict:
        return {"kernel": self.kernel, "cell": self.cell, "strategy": self.strategy, "dtype": self.dtype,
                "arch": self.arch, "B": self.B, "H": self.H, "pass": self.kind, "resets": self.resets,
                "insts_per_warp": self.counts.insts,
                "cta_barriers": self.counts.bars, "smem_bytes": self.counts.smem_bytes,
                "global_bytes": int(round(self.counts.global_bytes)), "us_per_step_lo": f"{self.us[0]:.2f}",
                "us_per_step_hi": f"{self.us[1]:.2f}", "ms_T1024_lo": f"{self.ms[0]:.2f}",
                "ms_T1024_hi": f"{self.ms[1]:.2f}", "commit": commit}


class Predictor:
    """Compiles (cached) and predicts; ``device`` picks the parameters of sm_90a rows (``DEVICES``)."""

    def __init__(self, cache: Path | None = None, device90: str = "h100"):
        from . import compile_check as cc

        cc._drop_interpreter()
        self.cache = Path(cache or default_cache())
        self.device = {90: device90, 80: ARCH_DEVICE[80]}
        self._models: dict = {}

    def model(self, kernel: str, cfg: dict, arch: int, dtype: str, pdl: bool = False,
              resets: bool = False) -> StepKernelModel:
        key = (kernel, json.dumps(cfg, sort_keys=True), arch, dtype, pdl, resets)
        if key not in self._models:
            build = compiled(kernel, cfg, arch, dtype, self.cache, pdl, resets)
            heads = kernel.startswith("_heads_")
            self._models[key] = StepKernelModel(build, cfg["num_warps"], data_sync="[data_sync]" in kernel,
                                                persistent=None if heads else "persistent" in kernel,
                                                whole_sequence=heads or kernel in WHOLE_PASS_BARRIERS)
        return self._models[key]

    def persistent(self, cell, kind, arch, dtype, B, H, strategy: str = "persistent",
                   resets: bool = False) -> Prediction | None:
        """A persistent pass (module docstring, step 5); ``resets``: its reset variant, or what runs instead where
        a launch with a reset mask falls back to per_step on a GPU (step 8)."""
        params = DEVICES[self.device[arch]]
        pc = persistent_config(cell, dtype, H, params[0].sms, arch)
        if pc is None or (cell, strategy, kind) not in KERNELS:
            return None
        cfg = dict(pc.meta(kind), num_warps=pc.warps(kind), num_stages=1)
        kernel = KERNELS[(cell, strategy, kind)][1]
        barriers = WHOLE_PASS_BARRIERS.get(kernel, 1)
        if barriers > 1 and B > pc.BLOCK_B:  # the batch in one tile (kernels/layernorm_persistent.py)
            return None
        m = self.model(kernel, cfg, arch, dtype, resets=resets)
        tiles = -(-B // pc.BLOCK_B)
        programs = pc.programs(kind, H)
        frac = min(B, pc.BLOCK_B) / pc.BLOCK_B * H / pc.H_PAD
        if barriers > 1:
            us = tuple(whole_pass_step_us(m, programs, frac, p) for p in params)
        else:
            us = tuple(persistent_step_us(m, tiles, programs, frac, p, strategy != "persistent") for p in params)
        c = count(m.path(tiles), m.warps, frac)
        c.global_bytes *= programs
        ms = tuple(T_STEPS * u / 1e3 + gemm_ms(cell, kind, "persistent", dtype, B, H, p) for u, p in zip(us, params))
        return Prediction(f"{kernel.partition('[')[0]}[{_cfg_label(cfg)}]", cell, strategy, dtype, f"sm_{arch}", B,
                          H, kind, c, us, ms, m.warps, int(resets))

    def _fastest_step(self, kernel, cfgs, K, N_of, cols, arch, dtype, B, pdl=False, resets=False):
        """The fastest (predicted) of a step kernel's ``cfgs`` (step 5): a product of depth ``K`` over ``cols``
        columns, ``N_of(cfg)`` of them per program. Returns (cfg, us range, model, counts of the grid)."""
        params = DEVICES[self.device[arch]]
        best = None
        for cfg in cfgs:
            m = self.model(kernel, cfg, arch, dtype, pdl, resets)
            slices = -(-K // cfg["BLOCK_K"])
            iters = max(1, slices // unroll_factor(m, cfg["BLOCK_B"] * N_of(cfg) * cfg["BLOCK_K"]))
            ctas = -(-cols // cfg["BLOCK_H"]) * -(-B // cfg["BLOCK_B"])
            us = tuple(per_step_us(m, iters, ctas, p, pdl)[0] for p in params)
            if best is None or sum(us) < sum(best[1]):
                best = (cfg, us, m, iters, ctas)
        cfg, us, m, iters, ctas = best
        c = count(m.path(min(iters, 3)), m.warps)
        if iters > 3:  # the counts of the extrapolated path
            c2 = count(m.path(2), m.warps)
            for f in ("insts", "bars", "mma", "smem_bytes", "global_bytes"):
                setattr(c, f, getattr(c, f) + (iters - 3) * (getattr(c, f) - getattr(c2, f)))
        c.global_bytes *= ctas
        return cfg, us, m, c

    def per_step(self, cell, kind, arch, dtype, B, H, resets: bool = False) -> Prediction:
        """A per-step pass (module docstring, step 5), the fastest config; ``resets``: the reset variant (step 8),
        its configs timed and picked on their own (the autotuner tunes each variant apart)."""
        params = DEVICES[self.device[arch]]
        kernel = KERNELS[(cell, "per_step", kind)][1]
        K = H if kind == "fwd" else GATES[cell] * H
        # the forward's gate product is one dot of N = 4 * BLOCK_H (the GRU's fourth block masked)
        N_of = lambda c: 4 * c["BLOCK_H"] if kind == "fwd" else c["BLOCK_H"]  # noqa: E731
        cfg, us, m, c = self._fastest_step(kernel, step_configs(cell, kind, dtype, B, resets=resets), K, N_of, H,
                                           arch, dtype, B, resets=resets)
        ms = tuple(T_STEPS * u / 1e3 + gemm_ms(cell, kind, "per_step", dtype, B, H, p) for u, p in zip(us, params))
        return Prediction(f"{kernel}[{_cfg_label(cfg)}]", cell, "per_step", dtype, f"sm_{arch}", B, H, kind, c, us, ms,
                          m.warps, int(resets))

    def layernorm(self, cell, kind, arch, dtype, B, H, pdl: bool = False) -> Prediction:
        """A LayerNorm cell's per_step pass (module docstring, step 6): the product, then the row program. The
        counts are the two launches' sums (per warp of each, per CTA, per grid)."""
        params = DEVICES[self.device[arch]]
        ln = _module("layernorm")
        G = GATES[cell]
        K, cols = (H, G * H) if kind == "fwd" else (G * H, H)
        cfg, us_p, m_p, c = self._fastest_step(LN_PRODUCT, step_configs(cell, kind, dtype, B, ln._ln_product), K,
                                               lambda cf: cf["BLOCK_H"], cols, arch, dtype, B, pdl)
        row_cfg = ln.row_config(H, _group(dtype))
        block = row_cfg["BLOCK_H"]
        rows = LN_ROWS[(cell, kind)]
        m_r = self.model(rows, row_cfg, arch, dtype, pdl)
        us = tuple(u + per_step_us(m_r, 1, B, p, pdl)[0] for u, p in zip(us_p, params))
        c_r = count(m_r.path(1), m_r.warps)
        for f in ("insts", "bars", "mma", "smem_bytes"):
            setattr(c, f, getattr(c, f) + getattr(c_r, f))
        c.global_bytes += c_r.global_bytes * B
        ms = tuple(T_STEPS * u / 1e3 + gemm_ms(cell, kind, "per_step", dtype, B, H, p) for u, p in zip(us, params))
        label = f"{LN_PRODUCT}[{_cfg_label(cfg)}]+{rows}[{block} w{row_cfg['num_warps']}]"
        return Prediction(label, cell, "per_step_pdl" if pdl else "per_step", dtype, f"sm_{arch}", B, H, kind, c, us,
                          ms, m_r.warps)


    def heads(self, cell, kind, arch, dtype, B, H, D) -> Prediction | None:
        """A multi-head pass (module docstring, step 7) with heads of D units, at the BLOCK_D and warps of
        kernels/heads.py's launcher; None where H is no multiple of D or the launcher has no config (it runs the
        dense kernels there). Counts: one step of one program; global_bytes: all programs' loads per step."""
        hk = _module("heads")
        group, BD = _group(dtype), hk.block_d(D)
        if H % D or BD > hk.max_block_d(cell, group):
            return None
        cfg = dict(BLOCK_B=hk.BLOCK_B, BLOCK_D=BD, num_warps=hk.warps(cell, group, kind, BD), num_stages=1)
        kernel = f"_heads_{kind}[{cell}]"
        m = self.model(kernel, cfg, arch, dtype)
        lo, hi, _ = m.persistent
        if any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in loops(m.instrs)):  # its trips are unknown
            raise ValueError(f"{kernel} {cfg} sm_{arch} {dtype}: a loop inside the time loop; the step model "
                             "walks the time loop's body once and has no trip count for it")
        programs = H // D * -(-B // hk.BLOCK_B)
        params = DEVICES[self.device[arch]]
        us = tuple(heads_step_us(m, programs, p) for p in params)
        c = count(m.path(1), m.warps)
        c.global_bytes *= programs
        strategy = f"heads_D{D}"
        ms = tuple(T_STEPS * u / 1e3 + gemm_ms(cell, kind, strategy, dtype, B, H, p) for u, p in zip(us, params))
        return Prediction(f"{kernel}[{hk.BLOCK_B}x{BD} w{m.warps}]", cell, strategy, dtype, f"sm_{arch}", B, H,
                          kind, c, us, ms, m.warps)


# ----------------------------------------------------------------------------------------------
# the CSV
# ----------------------------------------------------------------------------------------------
def predict_all(predictor: Predictor, targets=DEFAULT_TARGETS, cells=CELLS, batches=BATCHES,
                hidden=HIDDEN, progress=None, only=None, resets_only: bool = False) -> list[Prediction]:
    """Every (target, cell, pass, H, B, strategy) prediction (``strategies``; ``only``: those strategies only);
    a persistent or multi-head pass without a config is left out (it runs per_step / the dense kernels). The
    LayerNorm cells: per_step without and with PDL. Then the reset rows of ``RESET_SHAPES`` (step 8), with the
    rows without a mask at the shapes off the grid; ``resets_only``: those alone, each beside its row without."""
    out = []

    def add(r):
        if r is not None:
            out.append(r)
            if progress:
                progress(r)

    for arch, dtype in targets:
        for cell in () if resets_only else cells:
            for kind in ("fwd", "bwd"):
                for H in hidden:
                    for B in batches:
                        for strategy in strategies(cell):
                            if (only is not None and strategy not in only) or (head_size(strategy)
                                                                                and H not in HEADS_HIDDEN):
                                continue
                            if strategy == "per_step_pdl" and arch < 90:  # PDL (griddepcontrol) needs sm_90
                                continue
                            if head_size(strategy):
                                r = predictor.heads(cell, kind, arch, dtype, B, H, head_size(strategy))
                            elif cell in LN_CELLS and strategy != "persistent":
                                r = predictor.layernorm(cell, kind, arch, dtype, B, H, strategy == "per_step_pdl")
                            else:
                                r = getattr(predictor, strategy)(cell, kind, arch, dtype, B, H)
                            add(r)
        for cell in (c for c in cells if c in RESET_CELLS):  # step 8: with a reset mask, and without off the grid
            for B, H in RESET_SHAPES.get((arch, dtype), ()):
                for kind in ("fwd", "bwd"):
                    for strategy in ("persistent", "per_step"):
                        if only is not None and strategy not in only:
                            continue
                        on_grid = B in batches and H in hidden and not resets_only
                        for resets in (True,) if on_grid else (False, True):
                            add(getattr(predictor, strategy)(cell, kind, arch, dtype, B, H, resets=resets))
    return out


def write_csv(path: Path, preds: list[Prediction], commit: str, update: bool = False):
    """The CSV of ``preds``; ``update``: replace only the rows of the same (cell, strategy, dtype, arch, B, H,
    pass) in the existing file and keep the others (with their commits)."""
    rows = [r.row(commit) for r in preds]
    if update and path.exists():
        new = {_key(r) for r in rows}
        rows = [dict(r, resets=_key(r)[-1]) for r in read_csv(path) if _key(r) not in new] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def read_csv(path: Path = CSV_PATH) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------
# "auto": the strategy with the lower predicted time, per pass and shape
# ----------------------------------------------------------------------------------------------
def _mid(row: dict) -> float:
    return (float(row["ms_T1024_lo"]) + float(row["ms_T1024_hi"])) / 2


def auto_choices(rows: list[dict]) -> dict:
    """``{(cell, pass, dtype, arch): {(B, H): strategy}}``: per shape the strategy whose predicted ms_T1024
    midpoint is lower (per_step where persistent has no row: no config); the grid of ``BATCHES`` x ``HIDDEN``
    without a reset mask only."""
    best: dict = {}
    for r in _auto_rows(rows):
        key = (r["cell"], r["pass"], r["dtype"], int(r["arch"].removeprefix("sm_")))
        shape = (int(r["B"]), int(r["H"]))
        cur = best.setdefault(key, {}).get(shape)
        if cur is None or _mid(r) < cur[1]:
            best[key][shape] = (r["strategy"], _mid(r))
    return {k: {s: v[0] for s, v in sorted(d.items())} for k, d in sorted(best.items())}


def _auto_rows(rows: list[dict]) -> list[dict]:
    """The rows "auto" chooses from: the dense cells' persistent and per_step rows on the grid, no reset mask (the
    multi-head strategies are opt-in: never "auto")."""
    return [r for r in rows if r["cell"] in AUTO_CELLS and r["strategy"] in ("persistent", "per_step")
            and _key(r)[-1] == 0 and int(r["B"]) in BATCHES and int(r["H"]) in HIDDEN]


def auto_table_source(rows: list[dict]) -> str:
    """The text of kernels/auto_strategy.py."""
    rows = _auto_rows(rows)
    commits = sorted({r["commit"] for r in rows})
    batches = sorted({int(r["B"]) for r in rows})
    hidden = sorted({int(r["H"]) for r in rows})
    lines = [
        '"""The strategy "auto" runs, per pass and shape: the one with the lower predicted time (the midpoint of its',
        "range, recurrence + GEMMs at T = 1024) in results/predicted_steps.csv. PREDICTED, not measured: replace with",
        "measured crossovers once a GPU has timed both strategies. Generated by `python -m experiments.predict",
        f"--auto-table` from the CSV of commit {' / '.join(commits)}; do not edit.",
        "",
        "Keys: (cell, pass, dtype, arch) with arch 90 (sm_90a, H100 parameters) or 80 (sm_80, A100 parameters);",
        "values: {(B, H): strategy}. Shapes between the points: ``_persistent.auto_strategy``.",
        '"""',
        'P, S = "persistent", "per_step"',
        f"BATCHES = {tuple(batches)}",
        f"HIDDEN = {tuple(hidden)}",
        "TABLE = {",
    ]
    for key, shapes in auto_choices(rows).items():
        lines.append(f"    {key!r}: {{")
        items = [f"{s!r}: {'P' if v == 'persistent' else 'S'}" for s, v in shapes.items()]
        line = "       "
        for it in items:
            if len(line) + len(it) + 2 > 118:
                lines.append(line.rstrip())
                line = "       "
            line += f" {it},"
        lines.append(line.rstrip())
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# docs/PERFORMANCE.md: the generated [E] block
# ----------------------------------------------------------------------------------------------
BEGIN = ("<!-- predicted steps: generated by `python -m experiments.predict --doc docs/PERFORMANCE.md` from "
         "results/predicted_steps.csv; do not edit -->")
END = "<!-- end of predicted steps -->"
# The static review of commit 2c7c128's kernels (B = 16, T = 1024, bf16, H100; ms, recurrence + GEMMs): the
# figures this predictor must reproduce while the kernels are those.
REVIEW = {
    ("lstm", "persistent", 1024, "fwd"): (4.8, 6.3), ("lstm", "persistent", 1024, "fwd+bwd"): (12.4, 16.5),
    ("lstm", "persistent", 768, "fwd"): (4.4, 5.9), ("lstm", "persistent", 768, "fwd+bwd"): (10.7, 14.3),
    ("lstm", "per_step", 1024, "fwd"): (4.1, 5.8), ("lstm", "per_step", 1024, "fwd+bwd"): (10.6, 14.7),
    ("lstm", "per_step", 768, "fwd+bwd"): (8.8, 12.4),
    ("lstm", "persistent_data_sync", 1024, "fwd"): (6.0, 7.6), ("lstm", "persistent_data_sync", 768, "fwd"): (5.6, 7.0),
    ("gru", "persistent", 1024, "fwd"): (3.8, 5.1), ("gru", "persistent", 1024, "fwd+bwd"): (9.6, 13.0),
    ("gru", "persistent", 768, "fwd"): (3.4, 4.7), ("gru", "persistent", 768, "fwd+bwd"): (8.3, 11.2),
}
REVIEW_COUNTS = {("lstm", "fwd"): (874, 26), ("lstm", "bwd"): (942, 27), ("gru", "fwd"): (585, 21),
                 ("gru", "bwd"): (682, 22)}


# The parity design (docs/PERFORMANCE.md): per step, on chip after the last chunk of the gather: the last
# chunk's MMA, the split-K reduction into one output per warp, the cell on those outputs, arrival skew (us).
PARITY_ONCHIP_US = (0.5, 0.8)
PARITY_UNITS = {"fwd": 8, "bwd": 16}  # units per program: the backward halves its gather with 64 programs at H=1024


def parity_budget(cell: str, kind: str, H: int, B: int, p: Params, onchip_us: float, dtype: str = "bf16") -> dict:
    """Per-step budget (us) of the parity design, not of a compiled kernel: ``flag`` a producer's flag store
    seen by a consumer's poll (2 L2 latencies), ``gather`` the step's all-to-all bytes (h forward, dz backward: each
    of the cdiv(H, units) programs reads B x G_in x H elements) at the aggregate L2 rate (capped by the
    programs' per-SM rate), the MMA hidden under it chunk by chunk, then ``onchip``; plus ``ms`` at T = 1024 with
    the pass's GEMMs."""
    programs = -(-H // PARITY_UNITS[kind])
    width = H if kind == "fwd" else GATES[cell] * H
    nbytes = programs * B * width * ESIZE[dtype]
    rate = min(p.l2_tbs * 1e12, programs * p.sm_l2_bpc * p.clock_ghz * 1e9)
    out = dict(flag=2 * p.l2_lat / (p.clock_ghz * 1e3), gather=nbytes / rate * 1e6, onchip=onchip_us)
    out["step"] = sum(out.values())
    out["ms"] = T_STEPS * out["step"] / 1e3 + gemm_ms(cell, kind, "persistent", dtype, B, H, p)
    return out


def _key(r) -> tuple:
    """A row's identity: (cell, strategy, dtype, arch, B, H, pass, resets); a row without ``resets`` (a CSV from
    before that column) has none."""
    return (r["cell"], r["strategy"], r["dtype"], r["arch"], int(r["B"]), int(r["H"]), r["pass"],
            int(r.get("resets") or 0))


def _index(rows, resets: int = 0):
    """``{(cell, strategy, dtype, arch, B, H, pass): row}`` of the rows with that ``resets``."""
    return {k[:-1]: r for r in rows if (k := _key(r))[-1] == resets}


def _ms(idx, cell, strategy, H, passes, B=16, dtype="bf16", arch="sm_90"):
    rs = [idx.get((cell, strategy, dtype, arch, B, H, k)) for k in passes]
    if any(r is None for r in rs):
        return None
    return sum(float(r["ms_T1024_lo"]) for r in rs), sum(float(r["ms_T1024_hi"]) for r in rs)


def doc_block(rows: list[dict], before: list[dict] | None = None) -> str:
    """The generated block of docs/PERFORMANCE.md from the CSV's ``rows``; ``before``: the rows of the kernels the
    static review read (``BEFORE_CSV_PATH``), for the before -> after table and the comparison with the review."""
    # the LayerNorm cells: ``ln_doc_block``; the multi-head strategies: ``heads_doc_block``
    rows = _auto_rows(rows)  # the reset rows: ``resets_doc_block``
    idx = _index(rows)
    auto_rows = rows
    commits = " / ".join(sorted({r["commit"] for r in rows}))
    out = [BEGIN, "", f"[E] All predicted (`python -m experiments.predict`, commit {commits}; H100 parameters for "
           "sm_90a; module docstring of `experiments/predict.py`). B = 16, T = 1024, bf16, sm_90a; ms are the "
           "recurrence plus the pass's GEMMs; per-warp counts are one step (persistent: loop top to the arrival).",
           "", "| cell | strategy | H | config (fwd / bwd) | insts / BAR per warp, fwd | bwd | us per step fwd | bwd "
           "| fwd ms | fwd+bwd ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in ("lstm", "gru"):
        for strategy in ("persistent", "per_step"):
            for H in (768, 1024):
                f, b = (idx.get((cell, strategy, "bf16", "sm_90", 16, H, k)) for k in ("fwd", "bwd"))
                if f is None or b is None:
                    continue
                cfgs = f"{f['kernel'].partition('[')[2][:-1]} / {b['kernel'].partition('[')[2][:-1]}"
                fb = _ms(idx, cell, strategy, H, ("fwd", "bwd"))
                out.append(f"| {cell} | {strategy} | {H} | {cfgs} | {f['insts_per_warp']} / {f['cta_barriers']} | "
                           f"{b['insts_per_warp']} / {b['cta_barriers']} | {f['us_per_step_lo']}-{f['us_per_step_hi']}"
                           f" | {b['us_per_step_lo']}-{b['us_per_step_hi']} | {f['ms_T1024_lo']}-{f['ms_T1024_hi']} |"
                           f" {fb[0]:.1f}-{fb[1]:.1f} |")
    if before:
        out += ["", "Before -> after the persistent rewrites ([E] both; before: `results/predicted_steps_2c7c128.csv`, "
                "the kernels of 2c7c128, predicted by this predictor; B = 16, bf16, sm_90a):", "",
                "| cell | strategy | H | insts / BAR per warp fwd | bwd | fwd ms | fwd+bwd ms |",
                "|---|---|---|---|---|---|---|"]
        bidx = _index(before)
        for cell in ("lstm", "gru"):
            for H in (768, 1024):
                rs = [tuple(i.get((cell, "persistent", "bf16", "sm_90", 16, H, k)) for k in ("fwd", "bwd"))
                      for i in (bidx, idx)]
                if any(r is None for pair in rs for r in pair):
                    continue
                (bf, bb), (af, ab) = rs
                f0, f1 = _ms(bidx, cell, "persistent", H, ("fwd",)), _ms(idx, cell, "persistent", H, ("fwd",))
                t0, t1 = (_ms(i, cell, "persistent", H, ("fwd", "bwd")) for i in (bidx, idx))
                out.append(f"| {cell} | persistent | {H} | {bf['insts_per_warp']} / {bf['cta_barriers']} -> "
                           f"{af['insts_per_warp']} / {af['cta_barriers']} | {bb['insts_per_warp']} / "
                           f"{bb['cta_barriers']} -> {ab['insts_per_warp']} / {ab['cta_barriers']} | "
                           f"{f0[0]:.1f}-{f0[1]:.1f} -> {f1[0]:.1f}-{f1[1]:.1f} | "
                           f"{t0[0]:.1f}-{t0[1]:.1f} -> {t1[0]:.1f}-{t1[1]:.1f} |")
        idx = bidx  # the review read 2c7c128's kernels: compare with their predictions
    out += ["", "Against the static review of commit 2c7c128's kernels (its simulator, the same parameters; agree = "
            "each range holds the other's midpoint; this predictor on the same kernels"
            + (", `results/predicted_steps_2c7c128.csv`" if before else "") + "):", "",
            "| cell | strategy | H | pass | this predictor (ms) | review (ms) | agree |",
            "|---|---|---|---|---|---|---|"]
    for (cell, strategy, H, kind), (lo, hi) in REVIEW.items():
        got = _ms(idx, cell, strategy, H, ("fwd", "bwd") if kind == "fwd+bwd" else (kind,))
        if got is None:
            continue
        ok = got[0] <= (lo + hi) / 2 <= got[1] and lo <= sum(got) / 2 <= hi
        out.append(f"| {cell} | {strategy} | {H} | {kind} | {got[0]:.1f}-{got[1]:.1f} | {lo}-{hi} | "
                   f"{'yes' if ok else 'no'} |")
    for (cell, kind), (n, bars) in REVIEW_COUNTS.items():
        r = idx.get((cell, "persistent", "bf16", "sm_90", 16, 1024, kind))
        if r is not None:
            out.append(f"| {cell} | persistent | 1024 | {kind}: insts / BAR per warp per step | "
                       f"{r['insts_per_warp']} / {r['cta_barriers']} | {n} / {bars} | "
                       f"{'yes' if (int(r['insts_per_warp']), int(r['cta_barriers'])) == (n, bars) else 'no'} |")
    out += ["", '"auto" (kernels/auto_strategy.py, the lower midpoint per pass; P = persistent, S = per_step), '
            "bf16, sm_90a, B x H:", "", "| cell, pass | " + " | ".join(f"H={h}" for h in HIDDEN) + " |",
            "|---|" + "---|" * len(HIDDEN)]
    for (cell, kind, dtype, arch), shapes in auto_choices(auto_rows).items():
        if dtype != "bf16" or arch != 90:
            continue
        cells = []
        for h in HIDDEN:
            cells.append(" ".join(f"{b}:{'P' if shapes.get((b, h)) == 'persistent' else 'S'}" for b in BATCHES))
        out.append(f"| {cell} {kind} | " + " | ".join(cells) + " |")
    out += ["", "The parity design (below), its budget from the same H100 parameters ([E]; LSTM, B = 16, bf16; "
            "`parity_budget`: flag = 2 L2 latencies, gather at the aggregate L2 rate with the MMA hidden under it, "
            f"on chip {PARITY_ONCHIP_US[0]}-{PARITY_ONCHIP_US[1]} us):", "",
            "| H | pass | programs | flag us | gather us | on chip us | step us | ms (with GEMMs) |",
            "|---|---|---|---|---|---|---|---|"]
    opt, pess = DEVICES["h100"]
    for H in (768, 1024):
        total = [0.0, 0.0]
        for kind in ("fwd", "bwd"):
            lo, hi = (parity_budget("lstm", kind, H, 16, p, o) for p, o in zip((opt, pess), PARITY_ONCHIP_US))
            total = [total[0] + lo["ms"], total[1] + hi["ms"]]
            out.append(f"| {H} | {kind} | {-(-H // PARITY_UNITS[kind])} | " + " | ".join(
                f"{lo[k]:.2f}-{hi[k]:.2f}" for k in ("flag", "gather", "onchip", "step", "ms")) + " |")
        out.append(f"| {H} | fwd+bwd | | | | | | **{total[0]:.1f}-{total[1]:.1f}** |")
    out += ["", END]
    return "\n".join(out)


LN_BEGIN = ("<!-- predicted LayerNorm steps: generated by `python -m experiments.predict --doc docs/PERFORMANCE.md` "
            "from results/predicted_steps.csv; do not edit -->")
LN_END = "<!-- end of predicted LayerNorm steps -->"
LN_TARGETS_MS = (4.0, 12.0)  # issue 24: forward, forward+backward at B = 16, T = 1024, H = 768, bf16
LN_TARGET_RATIO = 1.5  # ... and within 1.5x of the plain LSTM per_step at the same shape


def ln_doc_block(rows: list[dict]) -> str:
    """The LayerNorm section's generated block: per cell, H and PDL off / on, the step and T = 1024 predictions at
    B = 16, bf16, sm_90a, against the issue's targets and the plain LSTM's per_step rows of the same CSV."""
    idx = _index(rows)
    ln_rows = [r for r in rows if r["cell"] in LN_CELLS]
    commits = " / ".join(sorted({r["commit"] for r in ln_rows}))
    out = [LN_BEGIN, "", f"[E] Predicted (`python -m experiments.predict`, commit {commits}; H100 parameters; module "
           "docstring of `experiments/predict.py`, step 6: the product then the row program, each with its graph node "
           "gap, 1.0-2.0 us, or with PDL the assumed 0.25-1.5 us; the persistent forward: one pass of its time loop "
           "plus three grid barriers, then the per_step backward). B = 16, T = 1024, bf16, sm_90a; ms are the "
           f"recurrence plus the pass's GEMMs and layer-norm passes. Targets: forward <= {LN_TARGETS_MS[0]:g} ms, "
           f"forward+backward <= {LN_TARGETS_MS[1]:g} ms, and <= {LN_TARGET_RATIO:g}x the plain LSTM per_step "
           "(its forward+backward in the last column's denominator, the same CSV).", "",
           "| cell | H | PDL | product + row program (fwd / bwd) | us per step fwd | bwd | fwd ms | fwd+bwd ms | "
           "x plain LSTM per_step fwd+bwd |", "|---|---|---|---|---|---|---|---|---|"]
    for cell in LN_CELLS:
        for H in (768, 1024):
            for strategy in ("per_step", "per_step_pdl"):
                f, b = (idx.get((cell, strategy, "bf16", "sm_90", 16, H, k)) for k in ("fwd", "bwd"))
                if f is None or b is None:
                    continue
                fb = _ms(idx, cell, strategy, H, ("fwd", "bwd"))
                plain = _ms(idx, "lstm", "per_step", H, ("fwd", "bwd"))
                ratio = f"{fb[0] / plain[0]:.2f}-{fb[1] / plain[1]:.2f}" if plain else "n/a"
                cfgs = f"{f['kernel']} / {b['kernel']}".replace("_ln_product", "product")
                out.append(f"| {cell} | {H} | {'on' if strategy == 'per_step_pdl' else 'off'} | {cfgs} | "
                           f"{f['us_per_step_lo']}-{f['us_per_step_hi']} | {b['us_per_step_lo']}-{b['us_per_step_hi']}"
                           f" | {f['ms_T1024_lo']}-{f['ms_T1024_hi']} | {fb[0]:.1f}-{fb[1]:.1f} | {ratio} |")
            # the persistent forward (three grid barriers a step) before the per_step backward, PDL off / on
            for strategy in ("per_step", "per_step_pdl"):
                f, b = idx.get((cell, "persistent", "bf16", "sm_90", 16, H, "fwd")), idx.get(
                    (cell, strategy, "bf16", "sm_90", 16, H, "bwd"))
                plain = _ms(idx, "lstm", "per_step", H, ("fwd", "bwd"))
                if f is None or b is None or plain is None:
                    continue
                fb = [float(f[k]) + float(b[k]) for k in ("ms_T1024_lo", "ms_T1024_hi")]
                out.append(f"| {cell} persistent fwd | {H} | {'on' if strategy == 'per_step_pdl' else 'off'} (bwd) | "
                           f"{f['kernel']} / {b['kernel'].replace('_ln_product', 'product')} | "
                           f"{f['us_per_step_lo']}-{f['us_per_step_hi']} | {b['us_per_step_lo']}-{b['us_per_step_hi']}"
                           f" | {f['ms_T1024_lo']}-{f['ms_T1024_hi']} | {fb[0]:.1f}-{fb[1]:.1f} | "
                           f"{fb[0] / plain[0]:.2f}-{fb[1] / plain[1]:.2f} |")
    out += ["", LN_END]
    return "\n".join(out)


HEADS_BEGIN = ("<!-- predicted multi-head steps: generated by `python -m experiments.predict --doc "
               "docs/PERFORMANCE.md` from results/predicted_steps.csv; do not edit -->")
HEADS_END = "<!-- end of predicted multi-head steps -->"
# issue 21: {D: (forward, forward+backward)} ms at B = 16, T = 1024, H = 768, bf16, H100 (24 heads of 32, 12 of 64);
# and FlashRNN's Triton kernel at the same shapes [D, published]
HEADS_TARGETS_MS = {32: (1.3, 3.7), 64: (1.8, 5.0)}
FLASHRNN_MS = {32: (1.44, 4.10), 64: (1.99, 18.94)}


def heads_doc_block(rows: list[dict]) -> str:
    """The multi-head section's generated block: per cell and head size, the step and T = 1024 predictions at
    H = 768, bf16, sm_90a: at B = 16 against issue 21's targets and FlashRNN's published figures, then the
    forward+backward at every B of the CSV (the waves of programs)."""
    idx = _index(rows)
    hrows = [r for r in rows if head_size(r["strategy"]) and r["dtype"] == "bf16" and r["arch"] == "sm_90"]
    commits = " / ".join(sorted({r["commit"] for r in hrows}))
    batches = sorted({int(r["B"]) for r in hrows})
    shapes = [(cell, D) for cell in ("lstm", "slstm", "gru", "rnn_tanh") for D in HEAD_SIZES]
    out = [HEADS_BEGIN, "", f"[E] Predicted (`python -m experiments.predict`, commit {commits}; H100 parameters; "
           "module docstring of `experiments/predict.py`, step 7: one pass of the kernel's time loop in steady state, "
           "times the waves of NH x cdiv(B, 16) programs on 132 SMs). T = 1024, H = 768, bf16, sm_90a, the launch-time "
           "variant (no lengths, the saved tensors stored); ms are the recurrence plus the pass's GEMMs (input "
           "projection; dW_ih, dx, dW_hh per head, the cat of h_{t-1} and db); forward = the training forward. "
           "Targets: issue 21; FlashRNN: its Triton kernel [D, published] (dense cuDNN fp16: 2.01 / 5.19 ms).", "",
           "B = 16:", "", "| cell | heads | config (fwd / bwd) | insts / BAR per warp, fwd | bwd | us per step fwd | "
           "bwd | fwd ms | fwd+bwd ms | target fwd / fwd+bwd | FlashRNN | meets target |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell, D in shapes:
        strategy = f"heads_D{D}"
        f, b = (idx.get((cell, strategy, "bf16", "sm_90", 16, 768, k)) for k in ("fwd", "bwd"))
        if f is None or b is None:
            continue
        fb = _ms(idx, cell, strategy, 768, ("fwd", "bwd"))
        (tf, tfb), (ff, ffb) = HEADS_TARGETS_MS[D], FLASHRNN_MS[D]
        meets = ("yes" if float(f["ms_T1024_hi"]) <= tf and fb[1] <= tfb else
                 "at the optimistic end" if float(f["ms_T1024_lo"]) <= tf and fb[0] <= tfb else "no")
        cfgs = f"{f['kernel'].rpartition('[')[2][:-1]} / {b['kernel'].rpartition('[')[2][:-1]}"
        out.append(f"| {cell} | {768 // D} x {D} | {cfgs} | {f['insts_per_warp']} / {f['cta_barriers']} | "
                   f"{b['insts_per_warp']} / {b['cta_barriers']} | {f['us_per_step_lo']}-{f['us_per_step_hi']} | "
                   f"{b['us_per_step_lo']}-{b['us_per_step_hi']} | {f['ms_T1024_lo']}-{f['ms_T1024_hi']} | "
                   f"{fb[0]:.2f}-{fb[1]:.2f} | <= {tf:.1f} / {tfb:.1f} | {ff:.2f} / {ffb:.2f} | {meets} |")
    out += ["", "Forward+backward ms by batch (programs = NH x cdiv(B, 16); more than 132 run in waves):", "",
            "| cell | heads | " + " | ".join(f"B={B}" for B in batches) + " |", "|---|---|" + "---|" * len(batches)]
    for cell, D in shapes:
        got = [_ms(idx, cell, f"heads_D{D}", 768, ("fwd", "bwd"), B=B) for B in batches]
        if all(g is not None for g in got):
            out.append(f"| {cell} | {768 // D} x {D} | " + " | ".join(f"{g[0]:.2f}-{g[1]:.2f}" for g in got) + " |")
    out += ["", HEADS_END]
    return "\n".join(out)


RESETS_BEGIN = ("<!-- predicted episode resets: generated by `python -m experiments.predict --doc docs/PERFORMANCE.md` "
                "from results/predicted_steps.csv; do not edit -->")
RESETS_END = "<!-- end of predicted episode resets -->"
RESETS_TARGET = 1.05  # issue 23: a mask with 3% resets within 5% of the no-reset time at pytorch/rl's shape


def ms_at(row: dict, T: int, end: int) -> float:
    """A CSV row's pass at ``T`` steps, ``end`` 0 the optimistic end of its range (the ``lo`` columns and the
    first ``Params`` of its arch's device), 1 the pessimistic: T x its step + the pass's GEMMs at T (``gemm_ms``)."""
    p = DEVICES[ARCH_DEVICE[int(row["arch"].removeprefix("sm_"))]][end]
    us = float(row[("us_per_step_lo", "us_per_step_hi")[end]])
    return T * us / 1e3 + gemm_ms(row["cell"], row["pass"], row["strategy"], row["dtype"], int(row["B"]), int(row["H"]),
                                  p, T)


def _ms_range(rs: list[dict], T: int) -> tuple[float, float]:
    """The sum of rows ``rs`` (passes) at T steps, optimistic and pessimistic."""
    return tuple(sum(ms_at(r, T, end) for r in rs) for end in (0, 1))


def _ratio(mask: tuple, none: tuple) -> float:
    return sum(mask) / sum(none)


def resets_doc_block(rows: list[dict]) -> str:
    """The episode-resets section's generated block: per cell, shape of ``RESET_SHAPES`` and strategy, each pass
    with a reset mask (resets = 1) beside the same pass without, at the shape's T (``RESET_T``); then issue 23's
    target check at pytorch/rl's shape, each pass by the strategy predicted faster there without a mask."""
    idx0, idx1 = _index(rows, 0), _index(rows, 1)
    commits = " / ".join(sorted({r["commit"] for r in rows if _key(r)[-1] == 1}))
    out = [RESETS_BEGIN, "", f"[E] Predicted (`python -m experiments.predict`, commit {commits}; H100 parameters; "
           "module docstring of `experiments/predict.py`, step 8): each pass compiled with HAS_RESETS=True, its flag "
           "loads and selects counted and timed like every other instruction, beside the same pass without a mask. "
           "The mask only enters selects (no branch, no work depends on which rows restart), so every mask content, "
           "all-false or 3% set, runs the same instructions and loads: these are the times of a 3%-reset mask as "
           "much as of an all-false one. ms: T steps plus the pass's GEMMs at that T (`ms_at`); mask / none: the "
           "ratio of the midpoints.", "",
           "| cell | dtype | B | T | H | strategy | with a mask runs (fwd / bwd) | insts per warp fwd: none -> mask "
           "| bwd | us per step fwd: none -> mask | bwd | fwd ms: none -> mask | fwd+bwd ms: none -> mask | "
           "mask / none fwd, fwd+bwd |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in RESET_CELLS:
        for (arch, dtype), shapes in RESET_SHAPES.items():
            for B, H in shapes:
                T = RESET_T.get((B, H), T_STEPS)
                for strategy in ("persistent", "per_step"):
                    key = (cell, strategy, dtype, f"sm_{arch}", B, H)
                    pairs = [(idx0.get(key + (k,)), idx1.get(key + (k,))) for k in ("fwd", "bwd")]
                    if any(r is None for pair in pairs for r in pair):
                        continue
                    (f0, f1), (b0, b1) = pairs
                    runs = " / ".join(r["kernel"].partition("[")[2].partition("]")[0] for r in (f1, b1))
                    fwd = [_ms_range([f], T) for f in (f0, f1)]
                    both = [_ms_range([f, b], T) for f, b in ((f0, b0), (f1, b1))]
                    step = " | ".join(f"{n['us_per_step_lo']}-{n['us_per_step_hi']} -> "
                                      f"{m['us_per_step_lo']}-{m['us_per_step_hi']}" for n, m in pairs)
                    out.append(f"| {cell} | {dtype} | {B} | {T} | {H} | {strategy} | {runs} | "
                               f"{f0['insts_per_warp']} -> {f1['insts_per_warp']} | "
                               f"{b0['insts_per_warp']} -> {b1['insts_per_warp']} | {step} | "
                               + " | ".join(f"{n[0]:.2f}-{n[1]:.2f} -> {m[0]:.2f}-{m[1]:.2f}" for n, m in (fwd, both))
                               + f" | {_ratio(*fwd[::-1]):.3f}, {_ratio(*both[::-1]):.3f} |")
    out += ["", f"Issue 23's target: a mask with 3% resets within {100 * (RESETS_TARGET - 1):.0f}% of the no-reset "
            "time at pytorch/rl's shape (B = 128, T = 128, H = 256; the headline shapes beside it). Each pass runs "
            "the strategy predicted faster at that shape without a mask (auto's rule, at the exact shape), and with "
            "a mask that strategy's row above; fwd+bwd:", "",
            "| cell | dtype | B | T | H | strategy fwd / bwd | none ms | mask ms | mask / none | within "
            f"{100 * (RESETS_TARGET - 1):.0f}% |", "|---|---|---|---|---|---|---|---|---|---|"]
    for cell in RESET_CELLS:
        for (arch, dtype), shapes in RESET_SHAPES.items():
            for B, H in shapes:
                T, picked = RESET_T.get((B, H), T_STEPS), []
                for kind in ("fwd", "bwd"):
                    cands = [(sum(_ms_range([r], T)), s, r) for s in ("persistent", "per_step")
                             if (r := idx0.get((cell, s, dtype, f"sm_{arch}", B, H, kind))) is not None
                             and (cell, s, dtype, f"sm_{arch}", B, H, kind) in idx1]
                    if cands:
                        _, s, r = min(cands, key=lambda c: c[0])
                        picked.append((s, r, idx1[(cell, s, dtype, f"sm_{arch}", B, H, kind)]))
                if len(picked) < 2:
                    continue
                none, mask = _ms_range([p[1] for p in picked], T), _ms_range([p[2] for p in picked], T)
                ratio = _ratio(mask, none)
                out.append(f"| {cell} | {dtype} | {B} | {T} | {H} | {picked[0][0]} / {picked[1][0]} | "
                           f"{none[0]:.2f}-{none[1]:.2f} | {mask[0]:.2f}-{mask[1]:.2f} | {ratio:.3f} | "
                           f"{'yes' if ratio <= RESETS_TARGET else 'no'} |")
    out += ["", RESETS_END]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def _targets(text: str) -> tuple:
    out = []
    for item in filter(None, text.split(",")):
        arch, _, dtype = item.partition(":")
        if int(arch) not in ARCH_DEVICE or dtype not in ("fp16", "bf16", "fp32"):
            raise SystemExit(f"--targets {item}: want ARCH:DTYPE with ARCH in {sorted(ARCH_DEVICE)} and DTYPE in "
                             "fp16, bf16, fp32")
        out.append((int(arch), dtype))
    return tuple(out)


def read_before() -> list[dict] | None:
    """The frozen predictions of 2c7c128's kernels, or None where the file is absent."""
    return read_csv(BEFORE_CSV_PATH) if BEFORE_CSV_PATH.exists() else None


def _write_doc(path: Path, rows: list[dict], check: bool) -> int:
    from .report import ReportError, write_or_check

    try:
        return max(write_or_check(path, block, check=check, what=what, begin=begin, end=end,
                                  command=f"python -m experiments.predict --doc {path}")
                   for block, what, begin, end in ((doc_block(rows, read_before()), "predicted steps", BEGIN, END),
                                                   (ln_doc_block(rows), "predicted LayerNorm steps", LN_BEGIN,
                                                    LN_END),
                                                   (heads_doc_block(rows), "predicted multi-head steps", HEADS_BEGIN,
                                                    HEADS_END),
                                                   (resets_doc_block(rows), "predicted episode resets", RESETS_BEGIN,
                                                    RESETS_END)))
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.predict", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, default=CSV_PATH,
                    help=f"the predictions (default {CSV_PATH.relative_to(ROOT)})")
    ap.add_argument("--targets", default=",".join(f"{a}:{d}" for a, d in DEFAULT_TARGETS),
                    help="ARCH:DTYPE pairs to predict (default %(default)s)")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--strategies", default=None, metavar="LIST",
                    help="predict only these strategies (heads: every heads_D<D>; default all of each cell's)")
    ap.add_argument("--resets-only", action="store_true",
                    help="predict only the shapes of RESET_SHAPES, with a reset mask and without")
    ap.add_argument("--update", action="store_true",
                    help="replace only the predicted rows in --csv, keep the others (e.g. --cells lnlstm,lngru)")
    ap.add_argument("--device", choices=("h100", "h200"), default="h100", help="parameters of the sm_90a rows")
    ap.add_argument("--cache", type=Path, default=None, help=f"compile cache (default {default_cache()})")
    ap.add_argument("--auto-table", nargs="?", const=AUTO_TABLE_PATH, type=Path, default=None, metavar="PY",
                    help="write the auto table from the CSV (default kernels/auto_strategy.py); no compiles")
    ap.add_argument("--doc", type=Path, default=None, metavar="MD", help="write the doc's block from the CSV")
    ap.add_argument("--check", action="store_true", help="with --doc / --auto-table: exit 1 if out of date")
    ap.add_argument("--all", action="store_true", help="predict, then write the auto table and docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    if args.all:
        args.auto_table, args.doc = AUTO_TABLE_PATH, ROOT / "docs" / "PERFORMANCE.md"
    if args.all or (args.auto_table is None and args.doc is None):
        from . import compile_check as cc

        t0 = time.perf_counter()
        predictor = Predictor(args.cache, args.device)
        cells = tuple(c for c in args.cells.split(",") if c)

        def progress(r):
            print(f"{r.cell} {r.kind} {r.arch} {r.dtype} B={r.B} H={r.H} resets={r.resets} {r.kernel}: "
                  f"{r.counts.insts} insts, {r.counts.bars} BAR, {r.counts.mma} MMA per warp; "
                  f"{r.us[0]:.2f}-{r.us[1]:.2f} us/step, {r.ms[0]:.2f}-{r.ms[1]:.2f} ms", file=sys.stderr, flush=True)

        only = None
        if args.strategies:
            only = {s for item in args.strategies.split(",") if item
                    for s in (HEADS_STRATEGIES if item == "heads" else (item,))}
        preds = predict_all(predictor, _targets(args.targets), cells, progress=progress, only=only,
                            resets_only=args.resets_only)
        write_csv(args.csv, preds, cc._git_commit(), args.update)
        print(f"{len(preds)} predictions, {len(predictor._models)} compiled configs, "
              f"{time.perf_counter() - t0:.0f} s -> {args.csv}")
    rc = 0
    if args.auto_table is not None:
        text = auto_table_source(read_csv(args.csv))
        if args.check:
            if not args.auto_table.exists() or args.auto_table.read_text() != text:
                print(f"{args.auto_table} is out of date: python -m experiments.predict --auto-table")
                rc = 1
        else:
            args.auto_table.write_text(text)
            print(f"wrote {args.auto_table}")
    if args.doc is not None:
        rc = max(rc, _write_doc(args.doc, read_csv(args.csv), args.check))
    return rc


if __name__ == "__main__":
    sys.exit(main())
