"""The cell-independent parts of the persistent whole-sequence kernels (kernels/lstm_persistent.py,
kernels/gru_persistent.py): the grid barrier, the sticky error flag, the cooperative launch, the co-residency
check, the split-K dot and the W-slice loader, the launch config and the skeleton of the decision whether a pass
runs persistent. Each cell module holds its kernels, its configs (``CONFIGS``, compile-checked) and its
``decide`` / ``plan``; "auto" follows the predictor's table (``auto_strategy``, kernels/auto_strategy.py); the
design is described in kernels/lstm_persistent.py's docstring, the budget in docs/PERFORMANCE.md.

Nothing here is a launchable kernel: the @triton.jit functions are device helpers, inlined into the cells'
kernels and compiled with them (experiments/compile_check.py compiles the kernels).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import (
    _dot_in, acc_torch_dtype, compile_check_entries, dot_meta, dtype_group, interpreting, join_gates4,
)

log = logging.getLogger("fusedrnn")

# Spin iterations of one barrier before giving up (each is one acquire load of the counter, ~1 us when
# contended): ~seconds, far beyond any legitimate step.
SPIN_CAP = 1 << 24
_TRITON = tuple(int(v) for v in triton.__version__.split(".")[:2] if v.isdigit())


# ----------------------------------------------------------------------------------------------
# Device helpers: barrier, split-K dot, W slices
# ----------------------------------------------------------------------------------------------
@triton.jit
def _arrive(counter):
    """This program's arrival at a step's grid barrier: every thread's stores are issued (CTA barrier), then one
    release add, so a program whose acquire sees the count also sees those stores."""
    tl.debug_barrier()
    tl.atomic_add(counter, 1, sem="release", scope="gpu")


@triton.jit
def _wait(counter, flag, target, cap, alive):
    """Wait until the step counter reaches ``target`` (acquire loads, at most ``cap * alive`` polls). On a timeout
    set the sticky error ``flag`` and return alive = 0: later waits of this program return at once and its outputs
    are written as NaN from then on, so a timeout can never pass as a result (also inside a CUDA graph, where the
    host cannot read the flag)."""
    cnt = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
    it = 0
    lim = cap * alive
    while (cnt < target) & (it < lim):
        cnt = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        it += 1
    if cnt < target:
        tl.atomic_xchg(flag, 1)
        alive = 0
    tl.debug_barrier()  # every thread waits for the acquire before reading what the others wrote
    return alive


@triton.jit
def _splitk_dot(a3, w3, CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """sum_s a3[s] @ w3[s]: a (M, K) x (K, N) product whose K axis is cut into the leading axis of a3 (S, M, K/S)
    and w3 (S, K/S, N). The batched ``tl.dot`` puts each slice s on its own warp (no two warps compute the same
    MMA tile) and ``tl.sum`` adds the S partial results across warps."""
    if CAST_F32:  # the interpreter's bf16 tl.dot is wrong (triton#11584)
        a3 = a3.to(tl.float32)
    return tl.sum(tl.dot(a3, w3, input_precision=PRECISION, out_dtype=ACC), axis=0)


@triton.jit
def _w_units(w, s_w, col0, j0, H, S: tl.constexpr, KS: tl.constexpr, U: tl.constexpr, G: tl.constexpr,
             NB: tl.constexpr, CAST_F32: tl.constexpr):
    """G row blocks of ``w`` for units j0 .. j0+U-1 side by side, split along K into (S, KS, G*U):
    [s, k, g*U + u] = w[g*H + j0 + u, col0 + s*KS + k], zero past H and for g >= NB (the GRU's three gates in a
    tile four blocks wide: sizes are powers of two). K runs along w's rows (contiguous), so the shared-memory copy
    Triton keeps of this loop-invariant dot operand is read with ldmatrix. The forwards pass W_hh (G gate blocks,
    col0 = 0); the backwards W_hh^T (G = 1, col0 = the gate block's first column)."""
    kk = tl.arange(0, S)[:, None, None] * KS + tl.arange(0, KS)[None, :, None]
    n = tl.arange(0, G * U)
    j = j0 + n % U
    p = w + ((n // U) * H + j)[None, None, :].to(tl.int64) * s_w + col0 + kk
    b = tl.load(p, mask=(kk < H) & ((j < H) & (n // U < NB))[None, None, :], other=0.0)
    return b.to(tl.float32) if CAST_F32 else b


@triton.jit
def _blocks_dot(p, m3, H, w0, w1, w2, w3, NBLK: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr,
                ACC: tl.constexpr):
    """sum over the NBLK (3 or 4) gate blocks g of the reduction axis of A_g @ w_g, split-K: A_g is the (S, BB, KS)
    block at pointers ``p + g*H`` (mask ``m3``), written by other programs (read past L1); each block's load is
    issued before the previous block's dot (one block in flight while the MMA runs), the dots accumulate into one
    (S, BB, U) partial and ONE reduction sums the slices. ``w3`` is unused with NBLK = 3."""
    a0 = tl.load(p, mask=m3, other=0.0, cache_modifier=".cg")
    a1 = tl.load(p + H, mask=m3, other=0.0, cache_modifier=".cg")
    acc = _dot_in(a0, w0, None, CAST_F32, PRECISION, ACC)
    a2 = tl.load(p + 2 * H, mask=m3, other=0.0, cache_modifier=".cg")
    acc = _dot_in(a1, w1, acc, CAST_F32, PRECISION, ACC)
    if NBLK == 4:
        a3 = tl.load(p + 3 * H, mask=m3, other=0.0, cache_modifier=".cg")
        acc = _dot_in(a2, w2, acc, CAST_F32, PRECISION, ACC)
        acc = _dot_in(a3, w3, acc, CAST_F32, PRECISION, ACC)
    else:
        acc = _dot_in(a2, w2, acc, CAST_F32, PRECISION, ACC)
    return tl.sum(acc, axis=0)


@triton.jit
def _store_gate_tile(p, o_b, B, H, o_n, m_n, z0, z1, z2, z3, BLOCK_B: tl.constexpr, U: tl.constexpr):
    """Store four (BB, U) gate blocks into the (B, 4H) rows at ``p`` as one (BB, 4U) tile (``o_n``, ``m_n``: its
    columns and their mask): one layout change before the store (``_common.join_gates4``) instead of one per
    block, cast to ``p``'s element type."""
    z = join_gates4(z0, z1, z2, z3, BLOCK_B, U)
    tl.store(p + o_b[:, None] * (4 * H) + o_n[None, :], z.to(p.dtype.element_ty),
             mask=(o_b < B)[:, None] & m_n[None, :])


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PersistentConfig:
    """One persistent launch shape. Both kernels split their dot's reduction axis into ``split(kind)`` slices,
    one per warp (``_splitk_dot``), so that no two warps compute the same MMA tile. Each pointwise value is
    computed by one warp where the (BLOCK_B, units) tile has at least as many values as the pass has threads
    (``units(kind)`` x BLOCK_B >= 32 x warps): a smaller tile is laid out over the warps more than once."""
    H_PAD: int  # BLOCK_K: next power of two >= H (the depth of each gate's dot)
    UNITS: int  # BLOCK_H of the forward: hidden units per program (programs = cdiv(H, UNITS))
    BLOCK_B: int  # batch tile (the dots' M)
    fwd_warps: int
    bwd_warps: int
    fwd_split: int = 0  # K slices of the forward dot; 0: one per warp (at most H_PAD / 16: MMA K >= 16)
    bwd_split: int = 0  # likewise for each of the backward's gate blocks (one dot of depth H_PAD per gate)
    bwd_units: int = 0  # BLOCK_H of the backward; 0: UNITS (fewer programs: each gathers all of dz anyway)

    def units(self, kind: str) -> int:
        return (self.bwd_units or self.UNITS) if kind == "bwd" else self.UNITS

    def programs(self, kind: str, H: int) -> int:
        """The grid of the ``kind`` pass at hidden size H: cdiv(H, units)."""
        return triton.cdiv(H, self.units(kind))

    def split(self, kind: str) -> int:
        given = self.fwd_split if kind == "fwd" else self.bwd_split
        return given or max(1, min(self.warps(kind), self.H_PAD // 16))

    def meta(self, kind: str) -> dict:
        """Constexprs of the ``"fwd"`` or ``"bwd"`` kernel."""
        return dict(BLOCK_B=self.BLOCK_B, BLOCK_H=self.units(kind), BLOCK_K=self.H_PAD, SPLIT_K=self.split(kind))

    def warps(self, kind: str) -> int:
        return self.fwd_warps if kind == "fwd" else self.bwd_warps

    def as_triton(self, kind: str) -> triton.Config:
        return triton.Config(self.meta(kind), num_warps=self.warps(kind), num_stages=1)


# The 16-bit launch shapes of both cells' kernels, per architecture (each cell's ``ARCH_CONFIGS`` holds them). Each
# pointwise value is computed by one warp where the (16, units) tile holds a value per thread: 4 forward warps on 8
# units, 2 on 4 units; the backward on 16 units with 8 warps (64 programs at H = 1024: half the dz gathered over
# the grid) or 8 with 4 warps. At H_PAD 256 the LSTM's backward keeps 4 units on 8 warps, each value computed by
# every warp: every variant with a value per thread (4, 8 or 16 units on 2, 4 or 8 warps, 2 to 16 K slices) is
# predicted slower there for the LSTM (docs/PERFORMANCE.md, "Step 3 rewrites", row 7); the GRU runs its own
# (kernels/gru_persistent.py, ``_GRU_256``). sm_80's backward at H_PAD
# 1024 runs 8 units on 4 warps with 16 K slices (two per warp): 16 units need 192 KB of shared memory (the W slice
# and two dz blocks in flight), above its 163 KB; 8 warps would compute each value in every warp.
CONFIGS_16BIT = {90: [
    PersistentConfig(H_PAD=1024, UNITS=8, BLOCK_B=16, fwd_warps=4, bwd_warps=8, bwd_units=16),
    PersistentConfig(H_PAD=512, UNITS=8, BLOCK_B=16, fwd_warps=4, bwd_warps=8, bwd_units=16),
    PersistentConfig(H_PAD=256, UNITS=4, BLOCK_B=16, fwd_warps=2, bwd_warps=8),
    PersistentConfig(H_PAD=128, UNITS=4, BLOCK_B=16, fwd_warps=2, bwd_warps=4, bwd_units=8),
]}
CONFIGS_16BIT[80] = [
    PersistentConfig(H_PAD=1024, UNITS=8, BLOCK_B=16, fwd_warps=4, bwd_warps=4, bwd_split=16),  # 255 registers
    *CONFIGS_16BIT[90][1:]]


def triton_configs(configs: dict, kind: str) -> dict:
    """``{dtype group: [triton.Config]}`` of a cell's ``CONFIGS`` for its ``kind`` kernel (compile check)."""
    return {g: [c.as_triton(kind) for c in cfgs] for g, cfgs in configs.items()}


def check_entries(kernel, arch_configs: dict, kind: str, **entry) -> list[dict]:
    """``COMPILE_CHECK`` entries of a persistent ``kind`` kernel: for each architecture of ``arch_configs``
    (``{arch: CONFIGS}``) the launch shapes that architecture runs, compiled for it alone (``entry``: the rest of
    ``_common.compile_check_entries``' arguments)."""
    out = [e for arch, configs in arch_configs.items()
           for e in compile_check_entries(kernel, triton_configs(configs, kind), archs=(arch,), **entry)]
    for e in out:  # FAST_TANH=True in ``entry`` means: on the 16-bit path, as ``fast_tanh`` launches it
        if e["constexprs"].get("FAST_TANH"):
            e["constexprs"] = dict(e["constexprs"], FAST_TANH="bf16" in e["dtypes"])
    return out


def fast_tanh(dtype: torch.dtype) -> bool:
    """The FAST_TANH constexpr of a launch: ``tanh.approx`` for the forward's activations of 16-bit data in a
    kernel compiled for a GPU (absolute error <= 2^-11, about the 16-bit rounding of the outputs: docs/MATH.md);
    never in the interpreter (it cannot run inline PTX) nor for fp32 / fp64 (they keep the exact activations)."""
    return dtype in (torch.float16, torch.bfloat16) and not interpreting()


def config_arch(capability: tuple) -> int:
    """The compile-checked architecture whose config lists a GPU of compute ``capability`` (major, minor) runs:
    sm_90a's from 9.0 on, sm_80's below."""
    return 90 if capability[0] >= 9 else 80


def arch_of(device: torch.device) -> int:
    """``config_arch`` of a CUDA device (90 elsewhere: only the interpreter runs there, with its own config)."""
    return config_arch(torch.cuda.get_device_capability(device)) if device.type == "cuda" else 90


def interpreter_config(H: int, block_b: int = 4, split: int = 4) -> PersistentConfig:
    """The interpreter's config: one program owns every unit (U = H_PAD), so the grid barrier is trivial; a
    small batch tile (the interpreter allows tl.dot with M < 16) so that B = 5 runs the batch-tile loop;
    ``split`` K slices in both kernels (the interpreter allows slices shallower than 16)."""
    h_pad = max(16, triton.next_power_of_2(H))
    return PersistentConfig(H_PAD=h_pad, UNITS=h_pad, BLOCK_B=block_b, fwd_warps=4, bwd_warps=4, fwd_split=split,
                            bwd_split=split)


def pick_config(configs: dict, dtype: torch.dtype, H: int, sm_count: int):
    """The config of ``configs[dtype's group]`` with the smallest H_PAD >= H and then the fewest units per
    program whose grids (``programs`` of both passes) fit in ``sm_count`` SMs, or None."""
    fits = [c for c in configs[dtype_group(dtype)]
            if c.H_PAD >= H and max(c.programs("fwd", H), c.programs("bwd", H)) <= sm_count]
    return min(fits, key=lambda c: (c.H_PAD, c.UNITS)) if fits else None


def supported(configs: dict, dtype) -> str:
    """What ``configs`` covers for ``dtype`` (for a fallback reason)."""
    cfgs = configs[dtype_group(dtype)]
    if not cfgs:
        return "none"
    return f"H <= {max(c.H_PAD for c in cfgs)}, programs = cdiv(H, units) with units in " \
           f"{sorted({c.UNITS for c in cfgs})}"


# ----------------------------------------------------------------------------------------------
# Planning: which config, or why not (then per_step)
# ----------------------------------------------------------------------------------------------
_AUTO_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def auto_strategy(cell: str, kind: str, dtype: torch.dtype, B: int, H: int, arch: int) -> str:
    """The strategy "auto" runs for a ``cell`` ("lstm", "gru") ``kind`` pass: the one predicted faster
    (kernels/auto_strategy.py, generated by ``python -m experiments.predict --auto-table``). ``arch``: as
    ``arch_of`` gives it (90 or 80); the sm_90a table serves 90 and above, the sm_80 one anything below. Between
    the table's points B and H round up to the next point (the last one beyond it): a persistent program walks the
    batch in 16-row tiles and pads H to a power of two, so its time steps up with both, and rounding up never credits a
    shape with a faster point's prediction. A dtype the table does not hold (fp64): "per_step"."""
    from .auto_strategy import BATCHES, HIDDEN, TABLE

    table = TABLE.get((cell, kind, _AUTO_DTYPES.get(dtype, ""), 90 if arch >= 90 else 80))
    if table is None:
        return "per_step"
    b = next((x for x in BATCHES if x >= B), BATCHES[-1])
    h = next((x for x in HIDDEN if x >= H), HIDDEN[-1])
    return table.get((b, h), "per_step")


def decide_common(strategy: str, *, device_type: str, dtype: torch.dtype, H: int, B: int, sm_count: int,
                  interpret: bool | None, kind: str, configs: dict, cell: str, arch: int = 90):
    """The cell-independent rules of a cell's ``decide`` (which adds its own, e.g. the LSTM's proj_size, before
    calling this): returns ``(config, "")`` or ``(None, reason)``. Pure function of its arguments.

    - "per_step": never. "auto": on CUDA where a config of ``configs`` fits and ``auto_strategy`` (the predicted
      faster strategy for ``cell``, ``kind``, the shape and ``arch``) is "persistent"; in the interpreter never
      (there is nothing to gain, and the per-step kernels stay the tested default).
    - "persistent": in the interpreter always (one program, ``interpreter_config``); on CUDA where a config fits.
    - never on a device that is neither CUDA nor the interpreter, never with triton < 3.6, on CUDA never with
      H % 16 != 0 (only the aligned kernels are compile-checked).
    """
    if strategy == "per_step":
        return None, "strategy='per_step'"
    interpret = interpreting() if interpret is None else interpret
    if interpret:
        if strategy == "auto":
            return None, "strategy='auto' in the interpreter runs per_step"
        return interpreter_config(H), ""
    if device_type != "cuda":
        return None, f"persistent runs on CUDA (device type {device_type!r})"
    if _TRITON < (3, 6):
        return None, (f"persistent needs triton >= 3.6 (dots with N = 8; compile-checked with 3.6), "
                      f"have {triton.__version__}")
    if H % 16:
        return None, f"H={H} is not a multiple of 16 (the persistent kernels are built for 16-byte aligned rows)"
    cfg = pick_config(configs, dtype, H, sm_count)
    if cfg is None:
        return None, (f"no compile-checked persistent config for {dtype} with H={H} in at most {sm_count} "
                      f"programs (checked: {supported(configs, dtype)})")
    if strategy == "auto" and auto_strategy(cell, kind, dtype, B, H, arch) != "persistent":
        return None, f"per_step is predicted faster for {cell} {kind} at B={B}, H={H} (kernels/auto_strategy.py)"
    return cfg, ""


def sm_count_of(device: torch.device) -> int:
    """The SM count ``decide`` plans with: the CUDA device's, 0 elsewhere."""
    return device_limits(device)["sm_count"] if device.type == "cuda" else 0


def log_per_step(cell: str, kind: str, strategy: str, why: str) -> None:
    """Log at DEBUG level why a ``cell`` pass planned with ``strategy`` runs per_step."""
    if strategy != "per_step":
        log.debug("fusedrnn: %s %s strategy=%r runs per_step: %s", cell, kind, strategy, why)


def log_fallback(strategy: str, err: Exception, cell: str = "LSTM") -> None:
    """Log at DEBUG level why a launch planned as persistent runs per_step (the caller then runs it)."""
    log.debug("fusedrnn: %s strategy=%r runs per_step: %s", cell, strategy, err)


def coresidency(n_programs: int, n_regs: int, num_warps: int, shared: int, *, sm_count: int,
                regs_per_sm: int = 65536, shared_per_sm: int = 227 * 1024, threads_per_sm: int = 2048) -> str:
    """"" when ``n_programs`` programs of a compiled kernel can all be resident at once (one per SM at
    most: every SM must hold one), else the reason."""
    threads = num_warps * 32
    if n_programs > sm_count:
        return f"{n_programs} programs > {sm_count} SMs"
    if n_regs <= 0:
        return "register count of the compiled kernel unknown"
    if n_regs * threads > regs_per_sm:
        return f"{n_regs} registers x {threads} threads > {regs_per_sm} registers per SM"
    if shared > shared_per_sm:
        return f"{shared} B of shared memory > {shared_per_sm} B per SM"
    if threads > threads_per_sm:
        return f"{threads} threads > {threads_per_sm} per SM"
    return ""


def device_limits(device: torch.device) -> dict:
    """SM count and per-SM limits of a CUDA device (defaults of sm_90 where torch does not say)."""
    p = torch.cuda.get_device_properties(device)
    return dict(
        sm_count=p.multi_processor_count,
        regs_per_sm=getattr(p, "regs_per_multiprocessor", 65536),
        shared_per_sm=getattr(p, "shared_memory_per_block_optin", 227 * 1024),
        threads_per_sm=getattr(p, "max_threads_per_multi_processor", 2048),
    )


# ----------------------------------------------------------------------------------------------
# Launch: fallbacks, alignment, co-residency, the cooperative launch, the error flag
# ----------------------------------------------------------------------------------------------
class Fallback(RuntimeError):
    """The persistent kernel cannot run this launch (the caller runs per_step instead, reason at DEBUG level)."""


class NotCoresident(Fallback):
    """The compiled persistent kernel cannot have all its programs resident at once."""


class Misaligned(Fallback):
    """A tensor is not 16-byte aligned (only the aligned kernels are compile-checked)."""


def _check_aligned(**tensors):
    for name, t in tensors.items():
        if t is not None and t.is_cuda and t.data_ptr() % 16:
            raise Misaligned(f"{name} is not 16-byte aligned")


def _cooperative() -> dict:
    """Launch option: on CUDA the driver's cooperative-grid launch, which guarantees that every program is resident
    at once or refuses the launch (then the caller runs per_step); the co-residency check and the barrier's
    timeout flag stay as a second line. Not in the interpreter (programs run one after another there)."""
    return {} if interpreting() else {"launch_cooperative_grid": True}


_CORES_CACHE: dict = {}


def _check_coresident(kernel, grid, args: dict, meta: dict, num_warps: int, device: torch.device):
    """On CUDA: compile (cached) and check that the grid is co-resident; raise NotCoresident otherwise."""
    if interpreting():
        return
    key = (kernel.fn.__name__ if hasattr(kernel, "fn") else id(kernel), grid, device.index, num_warps,
           tuple((k, str(v)) for k, v in sorted(meta.items())),
           tuple(str(v.dtype) if isinstance(v, torch.Tensor) else None for v in args.values()))
    why = _CORES_CACHE.get(key)
    if why is None:
        try:
            ck = kernel.warmup(**args, **meta, grid=grid, num_warps=num_warps, num_stages=1, **_cooperative())
            ck._init_handles()
            n_regs, shared = int(ck.n_regs), int(ck.metadata.shared)
            why = coresidency(grid[0], n_regs, num_warps, shared, **device_limits(device))
        except Exception as e:  # noqa: BLE001 - any failure to compile or measure means: do not risk it
            why = f"could not compile/measure the persistent kernel: {type(e).__name__}: {e}"
        _CORES_CACHE[key] = why
    if why:
        raise NotCoresident(why)


# One sticky error flag per device, shared by every persistent launch of every cell: a barrier timeout writes 1
# and no kernel clears it, so a timeout inside a CUDA-graph replay (where the host cannot read the flag) is
# reported by the next eager launch or by ``check_errors``; the timed-out programs also write NaN from then on.
_ERROR_FLAGS: dict = {}


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def error_flag(device: torch.device) -> torch.Tensor:
    """The device's sticky (1,) int32 error flag. One first needed inside a CUDA-graph capture belongs to that
    graph (zeroed by each replay, never kept here); its timeouts still show as NaN outputs."""
    f = _ERROR_FLAGS.get(device)
    if f is None:
        f = torch.zeros(1, dtype=torch.int32, device=device)
        if not _capturing(device):
            _ERROR_FLAGS[device] = f
    return f


_TIMEOUT = ("fusedrnn: a persistent {what} kernel timed out at its grid barrier (its programs were not all "
            "resident at once: the GPU is shared with other work, or the co-residency check was wrong). Its "
            "results, and those of any CUDA-graph replay since the last check, are invalid (NaN where they were "
            "written after the timeout); rerun with strategy='per_step'.")


def check_flag(flag: torch.Tensor, what: str) -> None:
    """Raise when a persistent kernel's barrier timed out (the kernel wrote 1 to ``flag``), and clear the flag.
    ``what`` names the kernel in the message (e.g. "LSTM forward"). Skipped while a CUDA graph is being captured
    (reading the flag would synchronize)."""
    if _capturing(flag.device):
        return
    if int(flag.item()) != 0:
        flag.zero_()
        raise RuntimeError(_TIMEOUT.format(what=what))


def check_errors(device=None) -> None:
    """Raise if a persistent launch (any cell) on ``device`` (default: every device used) timed out since the
    last check, e.g. inside a CUDA-graph replay. Call it after replaying a graph that contains persistent layers;
    eager calls check by themselves."""
    devices = [torch.device(device)] if device is not None else list(_ERROR_FLAGS)
    for d in devices:
        if d in _ERROR_FLAGS:
            check_flag(_ERROR_FLAGS[d], "(earlier launch)")


def _launch(kernel, grid, args: dict, meta: dict, num_warps: int) -> None:
    """Launch a persistent kernel (cooperatively on CUDA). A cooperative launch the driver refuses (more programs
    than can be resident at once) raises NotCoresident, so the caller runs per_step instead."""
    try:
        kernel[grid](**args, **meta, num_warps=num_warps, num_stages=1, **_cooperative())
    except RuntimeError as e:
        if "cooperative" in str(e).lower():
            raise NotCoresident(f"the driver refused the cooperative launch: {e}") from e
        raise


def lstm_state_buffers(xp: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, store: bool):
    """The persistent LSTM forwards' state buffers: hbuf (T+1, B, H) with hbuf[0] = h0 (h_t goes to hbuf[t+1]),
    cbuf (NSLOT, B, H) in the accumulator dtype with cbuf[0] = c0 (c_t in slot (t+1) % NSLOT; NSLOT = T+1 when
    every c_t is kept for the backward, else 2); returns (hbuf, cbuf, NSLOT)."""
    T, B, H = xp.shape[0], xp.shape[1], c0.shape[-1]
    hbuf = xp.new_empty(T + 1, B, H)
    hbuf[0].copy_(h0)
    nslot = T + 1 if store else 2
    cbuf = xp.new_empty(nslot, B, H, dtype=acc_torch_dtype(xp.dtype))
    cbuf[0].copy_(c0)
    return hbuf, cbuf, nslot


def run_persistent(kernel, args: dict, *, cfg: PersistentConfig, kind: str, like: torch.Tensor, what: str,
                   n_programs: int | None = None, extra_meta: dict | None = None) -> None:
    """One persistent pass (``kind`` "fwd" or "bwd" of ``cfg``: its ``meta`` and ``warps``, plus ``extra_meta``)
    on ``cfg.programs(kind, H)`` programs, or ``n_programs`` (tests of the barrier timeout). ``args`` gets a zeroed
    barrier counter, the device's error flag, HAS_LENGTHS (from ``args["lengths"]``), HAS_RESETS (from
    ``args["resets"]``, for the kernels that take it) and the dtype constexprs of ``like`` (``_common.dot_meta``).
    Raises NotCoresident before launching, RuntimeError naming ``what`` after a barrier timeout."""
    flag = error_flag(like.device)
    args = dict(args, counter=torch.zeros(1, dtype=torch.int32, device=like.device), flag=flag,
                HAS_LENGTHS=args["lengths"] is not None, **dot_meta(like))
    if "resets" in args:
        args["HAS_RESETS"] = args["resets"] is not None
    grid = (n_programs or cfg.programs(kind, args["H"]),)
    meta, warps = dict(cfg.meta(kind), **(extra_meta or {})), cfg.warps(kind)
    _check_coresident(kernel, grid, args, meta, warps, like.device)
    _launch(kernel, grid, args, meta, warps)
    check_flag(flag, what)
