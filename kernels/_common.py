"""Pieces shared by every cell family: dtype rules, argument checks, tile configs and the declaration of a
per-step kernel (``step_kernel``: configs, autotuners, launch, compile-check entries), the weight-gradient
GEMMs, and the @triton.jit helpers inlined into the kernels (activations, tile offsets, dots, the LSTM cell).

Dimension legend used across ``kernels/``: B batch, T steps, I input, H hidden, P projected hidden
(P = H without proj_size), G gates per cell (LSTM 4, GRU 3, RNN 1).
"""
from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def check_interpreter_numpy(numpy_version: str | None = None, triton_version: str | None = None) -> None:
    """RuntimeError when Triton's interpreter would fail on this numpy: triton <= 3.6's interpreter turns
    runtime loop bounds into 1-element arrays and converts them with ``int()``, which numpy >= 2.4 refuses
    ("only 0-dimensional arrays can be converted to Python scalars"). The versions default to the installed
    ones. Called only when interpreting (compiled GPU kernels do not use numpy)."""
    if numpy_version is None:
        import numpy

        numpy_version = numpy.__version__
    triton_version = triton.__version__ if triton_version is None else triton_version
    if _version_tuple(numpy_version) >= (2, 4) and _version_tuple(triton_version) < (3, 7):
        raise RuntimeError(
            f"Triton {triton_version}'s interpreter (TRITON_INTERPRET=1, the CPU path) does not work with "
            f"numpy {numpy_version}: install numpy<2.4 (pip install 'numpy<2.4'), as the fusedrnn package's "
            "dependencies require"
        )


@functools.lru_cache(maxsize=1)
def _interpreter_numpy_checked() -> bool:
    check_interpreter_numpy()  # raises (and so is not cached) until numpy is fixed
    return True


def acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulator / cell-state dtype: fp64 for fp64 inputs, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    """``tl.dot`` input precision. fp32 follows ``torch.backends.cudnn.allow_tf32`` as nn.LSTM does."""
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def cast_dot_inputs(dtype: torch.dtype) -> bool:
    """The interpreter multiplies raw bf16 bit patterns in ``tl.dot`` (triton#11584): upcast there."""
    return dtype == torch.bfloat16 and interpreting()


def dot_meta(t: torch.Tensor) -> dict:
    """The constexprs every fused kernel takes from its data's dtype and device: CAST_F32, PRECISION, ACC."""
    return dict(CAST_F32=cast_dot_inputs(t.dtype), PRECISION=dot_precision(t.dtype, t.device),
                ACC=acc_tl_dtype(t.dtype))


def check_tensor(name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype, device: torch.device):
    """Raise a clear error when a launcher argument has the wrong shape, dtype or device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise RuntimeError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise RuntimeError(f"{name}: expected device {device}, got {t.device}")


def check_dtype(name: str, dtype: torch.dtype):
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name}: dtype {dtype} is not supported by the triton backend "
            f"(supported: {', '.join(str(d) for d in SUPPORTED_DTYPES)})"
        )


PER_STEP_STRATEGIES = ("auto", "per_step")


def check_strategy(strategy: str, allowed: tuple = PER_STEP_STRATEGIES) -> None:
    """ValueError unless ``strategy`` is one of the ``allowed`` strategies of a cell's kernels."""
    if strategy not in allowed:
        raise ValueError(f"strategy must be one of {allowed}, got {strategy!r}")


def check_steps(T: int) -> None:
    """torch.nn's error for a sequence of no steps."""
    if T < 1:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")


def rowmajor(t: torch.Tensor) -> torch.Tensor:
    """Kernels take a row stride and assume unit stride along the last dimension."""
    return t if t.stride(-1) == 1 else t.contiguous()


def aligned16(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` contiguous and starting on a 16-byte boundary: itself when it is, else a copy (a fresh allocation is
    aligned). For the kernels compile-checked in the aligned variant only (kernels/heads.py): a view that starts
    mid-allocation (a storage offset such as ``x[1:]``) would run the unaligned variant, which nothing checked."""
    if t is None:
        return None
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


# ----------------------------------------------------------------------------------------------
# Tile configs and the declaration of a per-step kernel. The compile check (experiments/compile_check.py)
# compiles every config of every declared kernel for sm_90a and sm_80 and requires 0 spills, so only
# configs listed in a declaration ever run.
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TileConfig:
    """One config of a per-step kernel: a program computes a tile of ``B`` batch rows by ``H`` hidden units
    (constexprs BLOCK_B, BLOCK_H), stepping ``K`` deep through its dots (BLOCK_K), on ``warps`` warps with
    ``stages`` software-pipeline stages."""
    B: int
    H: int
    K: int
    warps: int
    stages: int

    def meta(self) -> dict:
        """The tile constexprs."""
        return {"BLOCK_B": self.B, "BLOCK_H": self.H, "BLOCK_K": self.K}

    def as_triton(self) -> triton.Config:
        return triton.Config(self.meta(), num_warps=self.warps, num_stages=self.stages)


# The interpreter's config: smallest legal tl.dot tiles (>= 16), so masks and K loops get exercised.
INTERPRETER_CONFIG = TileConfig(B=16, H=16, K=16, warps=4, stages=1)


def prune_by_batch(configs, named_args, **kwargs):
    """Drop batch tiles far larger than the batch (all-masked rows are wasted registers). The autotuner
    passes positional arguments in ``named_args`` and keyword arguments in ``kwargs`` (our launchers use
    keywords), so B is looked up in both."""
    B = {**named_args, **kwargs}["B"]
    need = max(16, triton.next_power_of_2(B))
    kept = [c for c in configs if c.kwargs["BLOCK_B"] <= need]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_B"])]


# Dtype groups with their own config lists: register pressure grows with the element size (fp32 tiles and
# fp64 accumulators take twice the registers), so a tile that fits for fp16/bf16 may spill for fp32/fp64.
DTYPE_GROUPS = {"16bit": ("fp16", "bf16"), "fp32": ("fp32", "tf32"), "fp64": ("fp64",)}


def dtype_group(dtype: torch.dtype) -> str:
    """The config group of a tensor dtype: "16bit", "fp32" or "fp64"."""
    if dtype in (torch.float16, torch.bfloat16):
        return "16bit"
    return "fp64" if dtype == torch.float64 else "fp32"


def per_group(configs) -> dict:
    """Normalize a config spec to {group: [config]}: a plain list applies to every group."""
    if isinstance(configs, dict):
        missing = set(DTYPE_GROUPS) - set(configs)
        if missing:
            raise ValueError(f"config lists missing for dtype groups {sorted(missing)}")
        return {g: list(configs[g]) for g in DTYPE_GROUPS}
    return {g: list(configs) for g in DTYPE_GROUPS}


def pdl_enabled(device: torch.device) -> bool:
    """Programmatic dependent launch for the step kernels: opt-in with ``FUSEDRNN_PDL=1`` (off until a GPU
    has measured it), CUDA devices of compute capability 9.0 or more only (``griddepcontrol`` is sm_90+)."""
    if os.environ.get("FUSEDRNN_PDL", "0") != "1" or device.type != "cuda" or interpreting():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def pdl_launch_kwargs(pdl: bool) -> dict:
    """The launch keyword of a programmatic dependent launch (``launch_pdl=True``) when ``pdl``, else none (the
    interpreter and older launchers never see it)."""
    return {"launch_pdl": True} if pdl else {}


def fixed_config(autotuner, kwargs) -> triton.Config:
    """The config used without autotuning (``FUSEDRNN_AUTOTUNE=0``, e.g. a quick GPU test run): the first of
    the autotuner's list that survives the batch pruning (every entry is compile-checked)."""
    return prune_by_batch(list(autotuner.configs), {}, **kwargs)[0]


def row_stride(t: torch.Tensor | None) -> int:
    """The row stride of an optional (rows, cols) tensor; 0 when absent (the kernel does not read it)."""
    return t.stride(0) if t is not None else 0


def _given(arg: str):
    return lambda args: args[arg] is not None


# Constexprs every step launch derives from its weight argument ``w`` (dtype and device) and, for PDL, from
# whether the previous launch in the stream is the same loop's previous step.
_LAUNCH_META = ("CAST_F32", "PRECISION", "ACC", "PDL")
# The optional flag of a step kernel's second variant: with an episode-reset mask (HAS_RESETS) a step kernel runs
# its own config list (``reset_configs``: the configs minus ``resets_drop``, those that spill with the mask's
# predicates) through its own autotuners, and the compile check lists it as its own entry, "<kernel>+resets".
RESET_FLAG = "HAS_RESETS"
RESET_SUFFIX = "+resets"
_TILE_META = ("BLOCK_B", "BLOCK_H", "BLOCK_K")
_STEP_KERNELS: list = []


class StepKernel:
    """A per-step kernel declared once, by ``@step_kernel(...)`` on its ``@triton.jit`` function: its configs,
    autotune key, optional inputs and compile-check signature. The launcher (``launch``), the autotuners (one
    per dtype group) and the compile check (``compile_check``) all read this declaration.

    Every step kernel takes the weight ``w``, the sizes ``B``, ``H`` (the grid: unit tiles on axis 0, batch tiles
    on axis 1) and ``K``, and the tile constexprs BLOCK_B, BLOCK_H, BLOCK_K. Its other constexprs are each
    derived in exactly one way:

    - CAST_F32, PRECISION, ACC (and PDL where the kernel has it) from ``w`` at launch;
    - a flag of ``optional`` ({flag: argument}) is True when that argument is not None
      (``triton.heuristics``); the absent tensor is passed as None and never read;
    - any other constexpr is a launcher argument, and ``heaviest`` gives the value the compile check compiles.

    A constexpr that is none of these is a TypeError at import. The compile check compiles the heaviest variant:
    every optional input present, ``heaviest`` for the rest, CAST_F32 and PDL False (what runs on a GPU without
    PDL); a kernel with a reset mask (``RESET_FLAG`` in ``optional``) twice, without the mask (every config) and
    with it (``reset_configs``: every config but those of ``resets_drop``, {group: [TileConfig]}, which spill with
    the mask; a launch with a mask autotunes over ``reset_configs`` alone). ``args`` are the pointer types for the
    compile check: "x" the input dtype, "acc" the accumulator dtype, or a triton type ("*i32"); the other
    non-constexpr arguments are i32 scalars.
    ``key``: the arguments whose values select a tuning; it must include a constexpr that changes the work
    (a backward step's HAS_NEXT: the first step, t = T-1, has no product), or the first call would tune the
    cheap variant. ``configs``: a list of TileConfig (every dtype) or {group: list} (``DTYPE_GROUPS``).
    """

    def __init__(self, fn, *, configs, args: dict, key=("B", "H", "K"), optional=None, heaviest=None,
                 resets_drop=None):
        self.fn = fn
        self.__name__ = fn.__name__
        self.module = getattr(fn, "fn", fn).__module__
        self.configs = per_group(configs)
        drop = dict(resets_drop or {})
        if set(drop) - set(DTYPE_GROUPS) or any(c not in self.configs[g] for g, cs in drop.items() for c in cs):
            raise ValueError(f"{fn.__name__}: resets_drop names configs the kernel does not list: {drop}")
        self.reset_configs = {g: [c for c in cs if c not in drop.get(g, ())] for g, cs in self.configs.items()}
        if any(not cs for cs in self.reset_configs.values()):
            raise ValueError(f"{fn.__name__}: resets_drop leaves a dtype group without configs")
        self.args = dict(args)
        self.key = tuple(key)
        self.optional = dict(optional or {})
        self.heaviest = dict(heaviest or {})
        params = inspect.signature(getattr(fn, "fn", fn)).parameters  # GPU-decorated or interpreted
        constexprs = {n for n, p in params.items() if "constexpr" in str(p.annotation)}
        self.launch_meta = tuple(m for m in _LAUNCH_META if m in constexprs)
        undeclared = constexprs - set(_TILE_META) - set(self.launch_meta) - set(self.optional) - set(self.heaviest)
        unknown = ({a for a in self.optional.values() if a not in params}
                   | {k for k in self.key if k not in params} | {a for a in self.args if a not in params})
        if undeclared or unknown:
            raise TypeError(f"{fn.__name__}: constexprs {sorted(undeclared)} are not declared (optional= or "
                            f"heaviest=); unknown arguments {sorted(unknown)}")
        flags = {flag: _given(arg) for flag, arg in self.optional.items()}
        self.plain = triton.heuristics(flags)(fn)
        self.has_resets = RESET_FLAG in self.optional
        if drop and not self.has_resets:
            raise ValueError(f"{fn.__name__}: resets_drop without a {RESET_FLAG} flag")

        def tuners(config_lists):
            return {g: triton.autotune(configs=[c.as_triton() for c in cfgs], key=list(self.key),
                                       prune_configs_by={"early_config_prune": prune_by_batch})(fn)
                    for g, cfgs in config_lists.items()}

        self.autotuners = tuners(self.configs)
        self.reset_autotuners = tuners(self.reset_configs) if self.has_resets else self.autotuners
        # the heuristics wrap the autotuner, so the flags are set before it reads its key
        self.tuned = {g: triton.heuristics(flags)(a) for g, a in self.autotuners.items()}
        self.reset_tuned = {g: triton.heuristics(flags)(a) for g, a in self.reset_autotuners.items()}
        _STEP_KERNELS.append(self)

    def launch(self, *, chained: bool = False, **kwargs):
        """Launch on the (cdiv(H, BLOCK_H), cdiv(B, BLOCK_B)) grid with the fixed interpreter config, or on a
        GPU through the autotuner of ``w``'s dtype group; with ``FUSEDRNN_AUTOTUNE=0`` in the environment, with
        that group's first config that fits the batch instead (no benchmarking: faster test runs).
        ``chained``: the previous launch in the stream is this loop's previous step, so programmatic dependent
        launch may overlap with it (``pdl_enabled``, ``wait_prior_step``); a loop's first step never is."""
        w = kwargs["w"]
        meta = dict(dot_meta(w), PDL=chained and pdl_enabled(w.device))
        kwargs.update({m: meta[m] for m in self.launch_meta})
        B, H = kwargs["B"], kwargs["H"]

        def grid(m):
            return triton.cdiv(H, m["BLOCK_H"]), triton.cdiv(B, m["BLOCK_B"])

        extra = pdl_launch_kwargs(kwargs.get("PDL", False))
        masked = self.has_resets and kwargs.get(self.optional[RESET_FLAG]) is not None  # the reset variant
        autotuners, tuned = (self.reset_autotuners, self.reset_tuned) if masked else (self.autotuners, self.tuned)
        if interpreting():
            _interpreter_numpy_checked()
            c = INTERPRETER_CONFIG
            self.plain[grid(c.meta())](**kwargs, **c.meta(), num_warps=c.warps, num_stages=c.stages)
        elif os.environ.get("FUSEDRNN_AUTOTUNE", "1") == "0":
            c = fixed_config(autotuners[dtype_group(w.dtype)], kwargs)
            self.plain[grid(c.kwargs)](**kwargs, **c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages,
                                       **extra)
        else:
            tuned[dtype_group(w.dtype)][grid](**kwargs, **extra)

    def compile_check(self) -> list[dict]:
        """``COMPILE_CHECK`` entries (experiments/compile_check.py): the heaviest variant, one entry per dtype
        group with the configs that group may run; with a reset mask, first the variant without it (every
        config), then the one with it ("<kernel>+resets", ``reset_configs``; ``variant_of`` names the first, so
        the tests' sample compiles the heavier of the two)."""
        constexprs = {flag: flag != RESET_FLAG for flag in self.optional}
        constexprs.update(self.heaviest)
        constexprs.update({m: False for m in ("CAST_F32", "PDL") if m in self.launch_meta})
        out = compile_check_entries(self.fn, self.configs, args=self.args, constexprs=constexprs)
        if self.has_resets:
            resets = compile_check_entries(self.fn, self.reset_configs, args=self.args,
                                           constexprs={**constexprs, RESET_FLAG: True},
                                           name=self.__name__ + RESET_SUFFIX)
            out += [dict(e, variant_of=self.__name__) for e in resets]
        return out


def step_kernel(**declaration):
    """Decorator form of ``StepKernel``: ``@step_kernel(configs=..., args=..., optional=...)`` above
    ``@triton.jit``."""
    return lambda fn: StepKernel(fn, **declaration)


def step_kernel_checks(module: str) -> list[dict]:
    """The COMPILE_CHECK entries of every step kernel declared in ``module`` (a module name)."""
    return [e for k in _STEP_KERNELS if k.module == module for e in k.compile_check()]


@triton.jit
def wait_prior_step(PDL: tl.constexpr):
    """Under programmatic dependent launch a step starts while the previous one still runs: this waits until
    it has finished (its writes visible), then lets the next step start. Every load before this call may
    read only what was complete before the previous step began (W, xp, the forward's saved tensors, dy);
    everything the previous step writes (h, c, dz, dc) is loaded after it, and every store comes after it.
    A loop's first step follows some other kernel, which may signal its dependents before it is done: it is
    launched without PDL (and then waits for everything before it, as a plain launch does)."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


def compile_check_entries(kernel, configs, args: dict, constexprs: dict, name: str | None = None,
                          aligns: tuple | None = None, archs: tuple | None = None) -> list[dict]:
    """``COMPILE_CHECK`` entries (experiments/compile_check.py) for a kernel: one per dtype group, each with
    the configs that group may run. ``aligns``: the alignment variants its launcher can run (default both);
    ``archs``: the architectures that run these configs (default every checked one)."""
    out = []
    for g, cfgs in per_group(configs).items():
        e = dict(kernel=kernel, configs=cfgs, args=args, constexprs=constexprs, dtypes=DTYPE_GROUPS[g])
        if name:
            e["name"] = name
        if aligns:
            e["aligns"] = tuple(aligns)
        if archs:
            e["archs"] = tuple(archs)
        out.append(e)
    return out


def previous_outputs(h0, y, lengths=None, resets=None):
    """h_{t-1} of every step, (T, B, H): h0 at t = 0 and y[t-1] after; with ``lengths`` zero at the steps past a
    row's length (its dz is 0 there, and 0 * a non-finite last output would put NaN into dW_hh); with ``resets``
    (T, B) bool zero where a row restarts (its state entering that step is the zero state)."""
    h_prev = torch.cat([h0.unsqueeze(0), y[:-1]], 0)
    if lengths is not None:
        t = torch.arange(y.shape[0], device=h_prev.device).unsqueeze(1)
        h_prev = h_prev.masked_fill((t >= lengths.to(t.dtype).unsqueeze(0)).unsqueeze(2), 0)
    if resets is not None:
        h_prev = h_prev.masked_fill(resets.unsqueeze(2), 0)
    return h_prev


def weight_grads(dz, x, h0, y, w_ih, w_hh, has_bias, lengths=None, dz_ih=None, resets=None):
    """Post-loop GEMMs shared by every cell: given dz (T, B, G*H) returns
    (dx, dh0, dW_ih, dW_hh, db or None). h_{t-1} is h0 at t = 0 and y[t-1] after. With ``lengths`` (B,),
    h_{t-1} is zeroed at the steps past a row's length: dz is 0 there, and 0 * a non-finite last output would
    otherwise put NaN into every entry of dW_hh. ``dz_ih``: the gradient of the input projection where it is not
    dz (the GRU's, whose n block differs); dx and dW_ih come from it, everything else from dz (db = dz's sum).
    ``resets`` (T, B) bool: h_{t-1} is zero at a restart, and dh0 is zero on the rows restarted at t = 0."""
    T, B, GH = dz.shape
    dz2 = dz.reshape(T * B, GH)
    dzi2 = dz2 if dz_ih is None else dz_ih.reshape(T * B, -1)
    dw_hh = dh0 = None
    if w_hh is not None:  # None: the caller forms dW_hh and dh0 itself (kernels/heads.py)
        dw_hh = dz2.t() @ previous_outputs(h0, y, lengths, resets).reshape(T * B, -1).to(dz2.dtype)
        dh0 = dz[0] @ w_hh.to(dz2.dtype)
        if resets is not None:
            dh0 = dh0.masked_fill(resets[0].unsqueeze(1), 0)
    dw_ih = dzi2.t() @ x.reshape(T * B, -1).to(dz2.dtype)
    dx = (dzi2 @ w_ih.to(dz2.dtype)).reshape(T, B, -1)
    db = dz2.sum(0, dtype=acc_torch_dtype(dz2.dtype)).to(dz2.dtype) if has_bias else None
    return dx, dh0, dw_ih, dw_hh, db


# ----------------------------------------------------------------------------------------------
# Activations from tl.exp alone (no libdevice dependency: the same code in the interpreter and on the
# GPU), accurate to a few ulp relative to the result over the whole range, in fp32 and fp64 (16-bit
# inputs are computed in fp32 by every kernel).
# ----------------------------------------------------------------------------------------------
@triton.jit
def sigmoid(x):
    # No cancellation anywhere: for x < 0 the relative error stays at a few ulp until the result leaves the
    # normal range (e^{-x} overflows only where sigmoid(x) is below the smallest normal).
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # Large |x|: tanh(|x|) = (1 - e) / (1 + e) with e = e^{-2|x|} (no overflow). Near 0, 1 - e cancels
    # (relative error ~ eps / |x|, and 0 below |x| ~ eps / 2), so there the odd Taylor series is used,
    # x (1 + x^2 p(x^2)), truncated where its remainder is below the dtype's rounding: through x^13 for
    # |x| < 0.1 in fp64 (remainder < 1e-17), through x^9 for |x| < 0.2 in fp32 (remainder < 1e-9). At the
    # switch the exp form is within ~5 ulp (fp64) / ~3 ulp (fp32) and improves with |x|.
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x < 0, -t, t)
    x2 = x * x
    if x.dtype == tl.float64:
        p = 21844.0 / 6081075.0
        p = p * x2 - 1382.0 / 155925.0
        p = p * x2 + 62.0 / 2835.0
        p = p * x2 - 17.0 / 315.0
        p = p * x2 + 2.0 / 15.0
        p = p * x2 - 1.0 / 3.0
        small = a < 0.1
    else:
        p = 62.0 / 2835.0 * x2 - 17.0 / 315.0
        p = p * x2 + 2.0 / 15.0
        p = p * x2 - 1.0 / 3.0
        small = a < 0.2
    return tl.where(small, x + x * (x2 * p), t)


@triton.jit
def tanh_approx(x):
    """The hardware's ``tanh.approx.f32`` (one MUFU.TANH; maximum relative error 2^-11 over the whole range per
    the PTX ISA, so absolute error <= 2^-11: docs/MATH.md) on fp32 ``x``. Compiled kernels only: the
    interpreter cannot run inline PTX."""
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def tanh_of(x, FAST: tl.constexpr):
    """tanh(x): ``tanh_approx`` with FAST (fp32 ``x`` of a 16-bit kernel compiled for a GPU), else the exact
    ``tanh``."""
    if FAST:
        return tanh_approx(x)
    else:
        return tanh(x)


@triton.jit
def sigmoid_of(x, FAST: tl.constexpr):
    """s(x): with FAST 0.5 tanh(x / 2) + 0.5 (one ``tanh_approx``), else the exact ``sigmoid``."""
    if FAST:
        return 0.5 * tanh_approx(0.5 * x) + 0.5
    else:
        return sigmoid(x)


@triton.jit
def gate_act(z, is_tanh, FAST: tl.constexpr):
    """tanh(z) where ``is_tanh``, s(z) elsewhere (a gate tile whose columns mix gates). FAST (fp32 ``z`` of a
    16-bit kernel compiled for a GPU): one ``tanh_approx`` per element, s(z) = 0.5 tanh(z / 2) + 0.5."""
    if FAST:
        th = tanh_approx(tl.where(is_tanh, z, 0.5 * z))
        return tl.where(is_tanh, th, 0.5 * th + 0.5)
    else:
        return tl.where(is_tanh, tanh(z), sigmoid(z))


# ----------------------------------------------------------------------------------------------
# Tile pieces shared by the step kernels (inlined by Triton into each kernel).
# ----------------------------------------------------------------------------------------------
@triton.jit
def tile_offsets(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's batch rows and hidden units (grid axis 0: unit tiles, axis 1: batch tiles) and their
    masks: (o_b, o_j, m_b, m_j, m_bj)."""
    o_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    o_j = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    m_b = o_b < B
    m_j = o_j < H
    return o_b, o_j, m_b, m_j, m_b[:, None] & m_j[None, :]


@triton.jit
def _dot_in(a, b, acc, CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    if CAST_F32:  # the interpreter's bf16 tl.dot is wrong (triton#11584)
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def dot_rows(a, s_a, w, s_w, w_off, o_b, m_b, o_j, m_j, K, TRANS_W: tl.constexpr,
             CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
             BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_B, BLOCK_H) tile of ``a[o_b, :K] @ M`` over K tiles, in ACC, where M[k, j] is
    ``w[w_off + j, k]`` when TRANS_W (a product with W^T, W's rows = units: forward) and
    ``w[k, w_off + j]`` otherwise (a product with W, W's rows = the K axis: backward). ``s_a``, ``s_w``
    are the row strides; columns have unit stride."""
    acc = tl.zeros((BLOCK_B, BLOCK_H), ACC)
    if TRANS_W:
        p_w = w + (w_off + o_j[None, :]).to(tl.int64) * s_w
    else:
        p_w = w + w_off + o_j[None, :]
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        b_a = tl.load(a + o_b[:, None] * s_a + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
        if TRANS_W:
            b_w = tl.load(p_w + o_k[:, None], mask=m_k[:, None] & m_j[None, :], other=0.0)
        else:
            b_w = tl.load(p_w + o_k[:, None].to(tl.int64) * s_w, mask=m_k[:, None] & m_j[None, :], other=0.0)
        acc = _dot_in(b_a, b_w, acc, CAST_F32, PRECISION, ACC)
    return acc


@triton.jit
def dot_rows_split(a, s_a, w, s_w, o_b, m_b, o_j, m_j, K,
                   CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """``dot_rows`` with TRANS_W False (``a[o_b, :K] @ w[:K, o_j]``, the backward's product) for long K.

    Tiles of fewer than 64 rows compile to mma.sync, where a (16, BLOCK_H) tile gives each warp one or two
    accumulators and K/16 dependent MMAs in a row (192 at K = 3072: the step's critical path). Here each
    K slice is cut into BLOCK_K/16 chunks of 16 that accumulate separately, a batched (3-D) dot whose warps
    take different chunks (no warp repeats another's work), and the chunks are summed once after the loop in
    a fixed order (deterministic). 64-row tiles and more keep the 2-D dot, which is wgmma on sm_90a."""
    if BLOCK_B >= 64:
        acc2 = dot_rows(a, s_a, w, s_w, 0, o_b, m_b, o_j, m_j, K, False, CAST_F32, PRECISION, ACC,
                        BLOCK_B, BLOCK_H, BLOCK_K)
    else:
        SPLIT: tl.constexpr = BLOCK_K // 16
        acc = tl.zeros((SPLIT, BLOCK_B, BLOCK_H), ACC)
        o_c = tl.arange(0, SPLIT)[:, None] * 16 + tl.arange(0, 16)[None, :]  # (SPLIT, 16): chunk, offset
        p_a = a + o_b[None, :, None] * s_a
        p_w = w + o_j[None, None, :]
        for k0 in range(0, K, BLOCK_K):
            o_k = k0 + o_c
            m_k = o_k < K
            b_a = tl.load(p_a + o_k[:, None, :], mask=m_b[None, :, None] & m_k[:, None, :], other=0.0)
            b_w = tl.load(p_w + o_k[:, :, None].to(tl.int64) * s_w, mask=m_k[:, :, None] & m_j[None, None, :],
                          other=0.0)
            acc = _dot_in(b_a, b_w, acc, CAST_F32, PRECISION, ACC)
        acc2 = tl.sum(acc, 0)
    return acc2


@triton.jit
def gate_products(h_prev, s_hp, w, s_w, o_b, m_b, o_j, m_j, H, K,
                  CAST_F32: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, GATES: tl.constexpr = 4):
    """The four gate pre-activation tiles ``h_prev[o_b, :K] @ W[g*H + o_j, :K]^T`` for g = 0..3 (gate blocks
    stacked along W's rows, as nn.LSTM). Returns (z0, z1, z2, z3).

    One ``tl.dot`` of N = 4 * BLOCK_H per K slice (column n is unit o_j[n % BLOCK_H] of gate n // BLOCK_H),
    not four dots of N = BLOCK_H: with four dots that share an operand Triton lays every dot's warps along a
    single axis, so a (16, 16) tile on 4 warps has every warp compute the whole tile (4x repeated MMA work);
    the wide dot spreads the warps over all four gates. The gates are split apart once, after the loop.

    ``GATES = 3`` (the GRU's r, z, n; W has 3H rows): tensor sizes are powers of two, so the dot stays four
    blocks wide and the fourth block's W rows are masked (never loaded; z3 is 0, for the caller to drop). That
    costs a quarter of the MMA instructions, not memory traffic, and keeps the warps spread over every gate."""
    acc = tl.zeros((BLOCK_B, 4 * BLOCK_H), ACC)
    o_n = tl.arange(0, 4 * BLOCK_H)
    o_jn = tl.reshape(tl.broadcast_to(o_j[None, :], (4, BLOCK_H)), (4 * BLOCK_H,))
    m_n = tl.reshape(tl.broadcast_to(m_j[None, :], (4, BLOCK_H)), (4 * BLOCK_H,))
    if GATES < 4:  # constexpr: the four-gate code is unchanged
        m_n = m_n & (o_n < GATES * BLOCK_H)
    # W tile loaded transposed, (BLOCK_K, 4 * BLOCK_H): rows g*H + j of W, columns k.
    p_w = w + ((o_n // BLOCK_H) * H + o_jn)[None, :].to(tl.int64) * s_w
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        b_h = tl.load(h_prev + o_b[:, None] * s_hp + o_k[None, :], mask=m_b[:, None] & m_k[None, :], other=0.0)
        b_w = tl.load(p_w + o_k[:, None], mask=m_k[:, None] & m_n[None, :], other=0.0)
        acc = _dot_in(b_h, b_w, acc, CAST_F32, PRECISION, ACC)
    return split_gates4(acc, BLOCK_B, BLOCK_H)


@triton.jit
def join_gates4(z0, z1, z2, z3, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The (BLOCK_B, 4 * BLOCK_H) tile of four (BLOCK_B, BLOCK_H) gate blocks: ``split_gates4``'s inverse."""
    z = tl.join(tl.join(z0, z2), tl.join(z1, z3))  # (B, H, 2, 2): [.., a, b] is gate 2a + b
    return tl.reshape(tl.permute(tl.reshape(z, (BLOCK_B, BLOCK_H, 4)), (0, 2, 1)), (BLOCK_B, 4 * BLOCK_H))


@triton.jit
def split_gates4(z, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The four (BLOCK_B, BLOCK_H) gate blocks of a (BLOCK_B, 4 * BLOCK_H) tile whose column n is unit
    n % BLOCK_H of gate n // BLOCK_H."""
    # (B, 4, H) -> (B, H, 4) -> (B, H, 2, 2) with gate g = 2a + b: the first split takes b, the second a.
    z = tl.reshape(tl.permute(tl.reshape(z, (BLOCK_B, 4, BLOCK_H)), (0, 2, 1)), (BLOCK_B, BLOCK_H, 2, 2))
    z_even, z_odd = tl.split(z)
    z0, z2 = tl.split(z_even)
    z1, z3 = tl.split(z_odd)
    return z0, z1, z2, z3


@triton.jit
def store_blocks(p, H, b0, b1, b2, b3, mask):
    """Store four (BLOCK_B, BLOCK_H) tiles at ``p``, ``p + H``, ``p + 2H``, ``p + 3H`` (the gate blocks of a
    (B, 4H) row), cast to ``p``'s element type."""
    ty = p.dtype.element_ty
    tl.store(p, b0.to(ty), mask=mask)
    tl.store(p + H, b1.to(ty), mask=mask)
    tl.store(p + 2 * H, b2.to(ty), mask=mask)
    tl.store(p + 3 * H, b3.to(ty), mask=mask)


def check_resets(resets, T: int, B: int, device) -> torch.Tensor | None:
    """The (T, B) bool reset mask as the kernels read it: checked, row-major, viewed as int8 (no copy when
    already row-major); None stays None."""
    if resets is None:
        return None
    check_tensor("resets", resets, (T, B), torch.bool, device)
    return rowmajor(resets).view(torch.int8)


def step_resets(resets, t: int, has_next: bool) -> dict:
    """A backward step's reset rows: ``resets`` (row t: its c_{t-1} / h_{t-1} was zero) and ``resets_next`` (row
    t+1, with a next step: its gradient does not reach step t) of the (T, B) int8 mask, or both None."""
    if resets is None:
        return dict(resets=None, resets_next=None)
    return dict(resets=resets[t], resets_next=resets[t + 1] if has_next else None)


# ----------------------------------------------------------------------------------------------
# Episode resets (docs/MATH.md "Episode resets"): with HAS_RESETS a step reads one int8 per row of its step's
# row of the (T, B) mask; a restarting row's state entering the step is the zero state. The flags are loaded
# before the product (their latency hidden under it) and applied after it, as selects on the product's rows and
# on c_{t-1} / h_{t-1} (backward: on the rows of dz_{t+1} @ W_hh that would reach the dropped state), so the
# product's loads never wait for them and a dropped state's values (NaN included) never reach the result.
# ----------------------------------------------------------------------------------------------
@triton.jit
def carried_rows(resets, o_b, m_b):
    """(BLOCK_B,) bool: the rows of this tile (``m_b``) whose state carries into the step of ``resets`` (that
    step's (B,) int8 row of the reset mask), i.e. those that do not restart there."""
    return m_b & (tl.load(resets + o_b, mask=m_b, other=1) == 0)


# ----------------------------------------------------------------------------------------------
# The LSTM cell's pointwise work (docs/MATH.md), shared by the per-step and the persistent kernels.
# With HAS_LENGTHS, a row whose sequence has ended (t >= lengths[b]) does not move at step t.
# ----------------------------------------------------------------------------------------------
@triton.jit
def lstm_cell_fwd(z_i, z_f, z_g, z_o, c_prev, lengths, t, o_b, m_b, HAS_LENGTHS: tl.constexpr):
    """From the gate pre-activations (input projection included) and c_{t-1}: the activated gates i, f, g, o,
    c_t and h_t = o * tanh(c_t). A finished row keeps its cell state and outputs zeros."""
    b_i = sigmoid(z_i)
    b_f = sigmoid(z_f)
    b_g = tanh(z_g)
    b_o = sigmoid(z_o)
    b_c, b_h = lstm_cell_state(b_i, b_f, b_g, b_o, c_prev, lengths, t, o_b, m_b, HAS_LENGTHS, False)
    return b_i, b_f, b_g, b_o, b_c, b_h


@triton.jit
def lstm_cell_state(b_i, b_f, b_g, b_o, c_prev, lengths, t, o_b, m_b, HAS_LENGTHS: tl.constexpr,
                    FAST: tl.constexpr):
    """From the activated gates and c_{t-1}: c_t and h_t = o * tanh(c_t) (``tanh_of``: FAST only on the 16-bit
    compiled path). A finished row keeps its cell state and outputs zeros."""
    b_c = b_f * c_prev + b_i * b_g
    b_h = b_o * tanh_of(b_c, FAST)
    if HAS_LENGTHS:
        m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
        b_c = tl.where(m_act, b_c, c_prev)
        b_h = tl.where(m_act, b_h, 0.0)
    return b_c, b_h


@triton.jit
def finished_rows_bwd(d0, d1, d2, d3, carry, carry_in, lengths, t, o_b, m_b):
    """The backward of a step on the rows whose sequence has ended (t >= lengths[b]): no gradient for the four gate
    pre-activations d0..d3, and the cell state's gradient ``carry_in`` (the one reaching c_t) passed through as
    ``carry`` (that of c_{t-1}). Returns the five, masked, and the (BLOCK_B, 1) mask of the running rows (for a
    cell with more states to pass through: the sLSTM's n)."""
    m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
    return (tl.where(m_act, d0, 0.0), tl.where(m_act, d1, 0.0), tl.where(m_act, d2, 0.0),
            tl.where(m_act, d3, 0.0), tl.where(m_act, carry, carry_in), m_act)


@triton.jit
def lstm_cell_bwd(dh, b_i, b_f, b_g, b_o, c, c_prev, dc_in, lengths, t, o_b, m_b, HAS_LENGTHS: tl.constexpr):
    """Backward of one step's pointwise work given dh_t, the saved gates, c_t, c_{t-1} and the gradient dc_in
    reaching c_t from step t+1: returns (dz_i, dz_f, dz_g, dz_o, dc_{t-1}). A finished row gets no gate
    gradient and passes dc_in through unchanged."""
    tc = tanh(c)
    dc = dc_in + dh * b_o * (1.0 - tc * tc)
    dz_i = dc * b_g * b_i * (1.0 - b_i)
    dz_f = dc * c_prev * b_f * (1.0 - b_f)
    dz_g = dc * b_i * (1.0 - b_g * b_g)
    dz_o = dh * tc * b_o * (1.0 - b_o)
    dc_prev = dc * b_f
    if HAS_LENGTHS:
        dz_i, dz_f, dz_g, dz_o, dc_prev, _ = finished_rows_bwd(dz_i, dz_f, dz_g, dz_o, dc_prev, dc_in, lengths, t,
                                                               o_b, m_b)
    return dz_i, dz_f, dz_g, dz_o, dc_prev


# ----------------------------------------------------------------------------------------------
# The GRU cell's pointwise work (docs/MATH.md), shared by the per-step and the persistent kernels.
# Saved per step (the layout of ``gates``): r, z, n, hn, four (B, H) blocks of a (B, 4H) row. The backward's
# per-step gradients (``dg``) are da_r, da_z, dhn, dn in that order, so the first 3H columns are the gradient of
# the recurrent product (the next step's dot reads them with K = 3H) and columns 0:2H + 3H:4H that of xp.
# With HAS_LENGTHS, a row whose sequence has ended (t >= lengths[b]) outputs zeros and gets no gradient.
# ----------------------------------------------------------------------------------------------
@triton.jit
def gru_cell_fwd(a_r, a_z, x_n, hn, h_prev, lengths, t, o_b, m_b, HAS_LENGTHS: tl.constexpr,
                 FAST: tl.constexpr = False):
    """From a_r = xp_r + hp_r, a_z = xp_z + hp_z, x_n = xp_n, hn = hp_n + b_hn and h_{t-1}: the gates r, z, n and
    h_t = (1 - z) * n + z * h_{t-1} (zeros on finished rows). FAST: ``tanh_approx`` activations (``tanh_of``)."""
    b_r = sigmoid_of(a_r, FAST)
    b_z = sigmoid_of(a_z, FAST)
    b_n = tanh_of(x_n + b_r * hn, FAST)
    b_h = b_n + b_z * (h_prev - b_n)
    if HAS_LENGTHS:
        m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
        b_h = tl.where(m_act, b_h, 0.0)
    return b_r, b_z, b_n, b_h


@triton.jit
def gru_cell_bwd(dh, b_r, b_z, b_n, b_hn, h_prev, lengths, t, o_b, m_b, HAS_LENGTHS: tl.constexpr):
    """Backward of one step's pointwise work given dh_t (dy_t, the carry and dg_{t+1} @ W_hh already summed), the
    saved gates and h_{t-1}: returns (da_r, da_z, dhn, dn, carry) with carry = dh * z, the direct part of dh_{t-1}.
    A finished row gets zeros everywhere (its output is a constant zero)."""
    dn = dh * (1.0 - b_z) * (1.0 - b_n * b_n)
    da_z = dh * (h_prev - b_n) * b_z * (1.0 - b_z)
    dhn = dn * b_r
    da_r = dn * b_hn * b_r * (1.0 - b_r)
    carry = dh * b_z
    if HAS_LENGTHS:
        m_act = (t < tl.load(lengths + o_b, mask=m_b, other=0))[:, None]
        da_r = tl.where(m_act, da_r, 0.0)
        da_z = tl.where(m_act, da_z, 0.0)
        dhn = tl.where(m_act, dhn, 0.0)
        dn = tl.where(m_act, dn, 0.0)
        carry = tl.where(m_act, carry, 0.0)
    return da_r, da_z, dhn, dn, carry
