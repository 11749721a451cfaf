"""Static resource and MMA check of every hot kernel and tile config for sm_90a and sm_80, without a GPU.

    python -m experiments.compile_check [--arch(s) 90,80] [--kernels lstm,_rnn_fwd_step,...]
                                    [--dtypes fp16,bf16,fp32,tf32,fp64] [--align(s) aligned,unaligned]
                                    [--config B,H,K,WARPS,STAGES | --config NAME=VALUE,...] [--jobs N]
                                    [--csv out.csv] [--markdown out.md] [--dump DIR] [--quiet]
                                    [--sample all|heaviest] [--reference results/compile_table.csv]

Each kernel is compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` for every
config of its list, in its heaviest constexpr variant (the kernel module says which). Registers and stack
(spill) bytes come from the ``cuobjdump --dump-resource-usage`` bundled with triton, shared memory from
``kernel.metadata.shared``. A config fails when it spills (stack or local bytes > 0), exceeds the shared memory
of the arch (227 KB sm_90, 163 KB sm_80) or does not compile; the exit status is 1 if any config fails.

The full table (every config, about 1,100 compiles, several minutes on 2 cores uncached) is its own command::

    python -m experiments.compile_check --csv results/compile_table.csv --markdown results/compile_table.md

It prints a progress line every ``PROGRESS_EVERY`` compiles on stderr (elapsed, estimated time left, failures
so far), under ``--quiet`` too, which only drops the line per compile. ``--sample heaviest`` (what
tests/test_compile_check.py runs) compiles, of each entry (a kernel and one dtype group), only its heaviest
config, both archs, each arch in the dtype and alignment of the group with the most registers there
(``heaviest_variants``; all of them while the table lacks one). The heaviest config
(``heaviest_configs``) is the one with the most registers in the last full table (``--reference``, default the
committed results/compile_table.csv; the max over the group's dtypes, the archs and alignments), ties broken by
shared memory; configs that table does not hold (new or changed ones) are compiled as well. Without the table,
the config with the most tile elements per warp (``tile_estimate``).

MMA columns (``analyze_compiled``), per compile:

- ``mma``: the matrix instruction the dots became, read from the SASS (``cuobjdump -sass``): ``HGMMA``
  (wgmma, sm_90 only), ``HMMA`` (mma.sync), ``DMMA`` / ``IMMA``, or ``FFMA`` / ``DFMA`` when no MMA instruction
  is emitted (fp32 "ieee", fp64).
- ``mma_per_iter`` and ``ldsm_per_iter``: instructions of that kind, and LDSM (ldmatrix) instructions, in one
  pass of the hot loop's body, counted from the SASS, i.e. per warp. The hot loop is the innermost SASS loop (a
  backward branch and its target) that holds instructions of the kind; if several do, the one with the most.
  Per-step kernels: one K slice (BLOCK_K) of the product, all gates. Persistent kernels: one batch tile of one
  time step. A loop that ptxas unrolled counts its unrolled body; a kernel with no such loop counts the whole
  kernel.
- ``mma_repeat``: how many warps compute the same element of a dot result, from the TTGIR. For each ``tt.dot``
  / ``ttng.warp_group_dot`` the result's layout (``#mma``: ``warpsPerCTA`` and the per-warp ``instrShape``,
  v2 or v3, 2-D or 3-D; ``#blocked`` for FMA dots: ``sizePerThread x threadsPerWarp``) is laid over the result
  shape: along each dimension the warps take ceil(extent / per-warp tile) distinct positions and the surplus
  wraps onto the same elements (``warp_repeat``). The kernel's value is the max over its dots; 1 = no
  replicated work, 0 = no dot. Example: ``warpsPerCTA = [4, 4]``, ``instrShape = [16, 8]`` on a 16x32 result ->
  4 (the four warps of each column group compute the same 16 rows). ``--dump DIR`` writes the TTGIR, PTX and
  SASS that these columns were read from.
- ``epilogue_repeat``: how many warps compute the same pointwise value that the kernel stores, from the TTGIR
  (``epilogue_repeats``): for each ``tt.store``, the layout its value was computed in (the source of the
  ``ttg.convert_layout`` chain feeding the store) laid over the stored shape as for ``mma_repeat``; a
  ``#ttg.slice`` of an MMA layout counts every warp along the sliced axis (a ``tl.sum`` over the warps' split-K
  axis leaves the whole tile in every warp: ``[16, 1, 1]`` sliced along 0 -> 16). Max over the stores; 1 = none.

Fast path for one kernel, e.g. while reworking it::

    python -m experiments.compile_check --kernels _lstm_fwd_persistent --archs 90 --dtypes bf16 --aligns aligned

prints registers, spill, shared memory and the MMA columns for each of its configs (a few seconds), then a
``REPEAT`` line for every fp16/bf16 compile with ``mma_repeat > 1``. From a script (without TRITON_INTERPRET
in the environment when the kernels are imported)::

    from experiments import compile_check as cc
    cc._drop_interpreter()
    from kernels.lstm_persistent import _lstm_fwd_persistent
    for r in cc.analyze_source(_lstm_fwd_persistent, "_lstm_fwd_persistent", arch=90, dtype="bf16"):
        print(r.BLOCK_H, r.BLOCK_K, r.registers, r.spill_bytes, r.mma, r.mma_per_iter, r.mma_repeat, r.dots)

``analyze_source(kernel, entry, configs)`` takes a COMPILE_CHECK entry (a dict as below, or a registry kernel's
name); a different ``kernel`` with the same parameters (a prototype) is compiled under that entry.

dtypes: fp16, bf16, fp32 (``tl.dot`` precision "ieee"), tf32 (fp32 tensors, precision "tf32", what runs on a
GPU when ``torch.backends.cudnn.allow_tf32`` is on), fp64 (fp64 accumulator; reported n/a if it does not
compile). align: the runtime specializes pointers and integer arguments on divisibility by 16, which changes
the generated code a lot (vectorized loads and wgmma vs. scalar loads and mma), so both extremes are compiled:
``aligned`` (every pointer and integer argument divisible by 16) and ``unaligned`` (none).

Registry: every module ``kernels/<name>.py`` whose source defines ``COMPILE_CHECK`` is imported, and its
``COMPILE_CHECK`` (a list, or a function returning one) lists dicts. A per-step kernel declares its entry once,
with ``@_common.step_kernel(configs=..., args=..., optional=..., heaviest=...)`` on its ``@triton.jit``, and
its module sets ``COMPILE_CHECK = step_kernel_checks(__name__)``; other kernels write the dicts::

    dict(
        kernel=_lstm_fwd_persistent,         # the @triton.jit function
        configs=configs,                     # TileConfig or triton.Config entries
        args={"xp": "x", "cbuf": "acc", "lengths": "*i32"},  # pointer args: "x" = the input dtype,
                                             # "acc" = the accumulator dtype, or a triton type string;
                                             # unlisted non-constexpr args are "i32" scalars
        constexprs=dict(HAS_LENGTHS=True),   # heaviest variant; PRECISION, ACC and the BLOCK_* sizes
                                             # are filled in by the checker when the kernel has them
        name="...",                          # optional label (default: the kernel's name)
        dtypes=("fp16", ...),                # optional subset of the dtypes
        archs=(90,),                         # optional: the architectures that run these configs
        variant_of="...",                    # optional: this entry is another variant (other constexprs) of
                                             # that entry's kernel: the tests' sample compiles the heavier
    )

Each entry that ``LAUNCH_FLAGS`` changes is compiled in the variant a plain launch runs as well ("<kernel>+launch",
``launch_variants``): the heaviest variant compiling without spills does not imply that the others do.

Coverage: ``package_kernels()`` reads every ``kernels/*.py`` and lists each ``@triton.jit`` function that no
other jit function calls (a launchable kernel; the helpers are compiled inside their callers);
tests/test_compile_check.py requires each of them to have an entry here (``checked_kernels()``).

The check must see the real compiler: it refuses to run on kernels decorated under ``TRITON_INTERPRET=1``
and drops that variable for the modules it imports itself.
"""
from __future__ import annotations

import argparse
import ast
import csv
import datetime
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

ARCHS = {90: "sm_90a", 80: "sm_80"}
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}  # max dynamic shared memory per block (opt-in)
DTYPES = ("fp16", "bf16", "fp32", "tf32", "fp64")
ALIGNS = ("aligned", "unaligned")
# dtype label -> (tensor type, accumulator type, tl.dot input precision)
_DTYPE_INFO = {
    "fp16": ("fp16", "fp32", "ieee"),
    "bf16": ("bf16", "fp32", "ieee"),
    "fp32": ("fp32", "fp32", "ieee"),
    "tf32": ("fp32", "fp32", "tf32"),
    "fp64": ("fp64", "fp64", "ieee"),
}
_SKIP_MODULES = {"reference"}


# ----------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------
def _interpret_env_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _drop_interpreter():
    """Compile-check processes need the real compiler: drop TRITON_INTERPRET before any kernel import."""
    os.environ.pop("TRITON_INTERPRET", None)
    try:
        from triton import knobs

        knobs.runtime.interpret = False
    except Exception:  # older triton: the environment variable is all there is
        pass


def _kernels_package() -> tuple[str, str]:
    """The kernels package this check reads: its folder and its import name (``kernels`` in a checkout,
    ``fusedrnn.kernels`` installed). The check lives beside the other experiments; it reads kernels, it is not one."""
    pkg = (__package__ or "experiments").rpartition(".")[0]
    name = f"{pkg}.kernels" if pkg else "kernels"
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    if not os.path.isdir(folder):  # installed: the folder is wherever the kernels package was installed
        folder = os.path.dirname(importlib.util.find_spec(name).origin)
    return folder, name


def kernel_modules() -> list[str]:
    """Names of the ``kernels.*`` modules that define COMPILE_CHECK (found by reading their source)."""
    pkg_dir, pkg = _kernels_package()
    names = []
    for info in pkgutil.iter_modules([pkg_dir]):
        if info.ispkg or info.name in _SKIP_MODULES or info.name.startswith("_"):
            continue
        with open(os.path.join(pkg_dir, info.name + ".py"), encoding="utf-8") as f:
            if re.search(r"^COMPILE_CHECK\b|^def COMPILE_CHECK\b", f.read(), re.MULTILINE):
                names.append(f"{pkg}.{info.name}")
    return sorted(names)


def _is_jit(decorator: ast.expr) -> bool:
    """``@triton.jit``, ``@triton.jit(...)``, ``@jit``, ``@jit(...)``."""
    node = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(node, ast.Attribute) and node.attr == "jit") or (isinstance(node, ast.Name) and node.id == "jit")


def jit_kernels(sources: dict[str, str]) -> dict[str, str]:
    """The launchable kernels among ``sources`` (module name -> Python source): every function decorated with
    ``triton.jit`` that no jit function of ``sources`` calls (those are device helpers, inlined into their
    callers and compiled with them). Returns ``{function name: module name}``."""
    defined, called = {}, set()
    for module, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and any(_is_jit(d) for d in node.decorator_list):
                defined[node.name] = module
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Call):
                        f = sub.func
                        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                        if name != node.name:
                            called.add(name)
    return {name: mod for name, mod in defined.items() if name not in called}


def package_kernels() -> dict[str, str]:
    """``jit_kernels`` of every module in this package (``kernels/*.py``), by their qualified module names."""
    pkg_dir, pkg = _kernels_package()
    sources = {}
    for info in pkgutil.iter_modules([pkg_dir]):
        if not info.ispkg:
            with open(os.path.join(pkg_dir, info.name + ".py"), encoding="utf-8") as f:
                sources[f"{pkg}.{info.name}"] = f.read()
    return jit_kernels(sources)


def checked_kernels() -> dict[str, str]:
    """``{function name: defining module}`` of every kernel in the COMPILE_CHECK registry (importable with or
    without the interpreter: only names are read)."""
    out = {}
    for module_name in kernel_modules():
        for entry in _entries(module_name):
            fn = entry["kernel"]
            inner = getattr(fn, "fn", fn)
            out[getattr(fn, "__name__", None) or inner.__name__] = inner.__module__
    return out


def _entries(module_name: str) -> list[dict]:
    """The module's COMPILE_CHECK entries, then their launch-time variants (``launch_variants``)."""
    mod = importlib.import_module(module_name)
    entries = mod.COMPILE_CHECK
    if callable(entries):
        entries = entries()
    return list(entries) + launch_variants(entries)


# The constexprs of the variant that a launch without lengths, resets, zoneout or PDL runs: the most common call,
# and the one experiments/predict.py times. An entry lists its heaviest variant (every flag on); ptxas allocates
# registers per variant, and one with fewer flags can spill where the heaviest does not (the LayerNorm LSTM's
# persistent forward with 16 units on 4 warps spilled 16-64 B without lengths and zoneout, 0 with them). So each
# entry whose constexprs these flags change is compiled in that variant too, as "<kernel>+launch" (aligned only:
# a launch from torch's own allocations).
LAUNCH_FLAGS = dict(HAS_LENGTHS=False, PDL=False, ZONEOUT=0, HAS_RESETS=False)
LAUNCH_SUFFIX = "+launch"


def launch_variants(entries: list) -> list[dict]:
    """For each entry of ``entries`` (not itself a variant) whose constexprs ``LAUNCH_FLAGS`` change: the same
    entry in the launch-time variant, named "<kernel>+launch", aligned only, ``variant_of`` its entry."""
    out = []
    for e in entries:
        consts = dict(e.get("constexprs", {}))
        launch = {k: LAUNCH_FLAGS.get(k, v) for k, v in consts.items()}
        if e.get("variant_of") or launch == consts:
            continue
        out.append(dict(e, constexprs=launch, name=_entry_name(e) + LAUNCH_SUFFIX, variant_of=_entry_name(e),
                        aligns=("aligned",)))
    return out


def _entry_name(entry: dict) -> str:
    return entry.get("name") or entry["kernel"].__name__


def _check_not_interpreted(entry: dict, module_name: str):
    fn = entry["kernel"]
    if type(fn).__name__ == "InterpretedFunction" or not hasattr(fn, "params"):
        raise SystemExit(
            f"compile_check: {module_name}.{_entry_name(entry)} was decorated by Triton's interpreter "
            "(TRITON_INTERPRET=1 was set when the module was imported; importing fusedrnn sets it where no GPU is "
            "visible and it is unset). Run the check in a fresh process with the interpreter off: "
            "`TRITON_INTERPRET=0 python -m experiments.compile_check` (installed: "
            "`-m fusedrnn.experiments.compile_check`)."
        )


def _config_fields(cfg) -> dict:
    """TileConfig or triton.Config -> constexpr sizes + num_warps / num_stages."""
    if hasattr(cfg, "as_triton"):
        cfg = cfg.as_triton()
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _parse_config(text: str) -> dict:
    """``B,H,K,WARPS,STAGES`` or ``NAME=VALUE,...`` (any constexprs, e.g. a persistent kernel's SPLIT_K, plus
    num_warps and num_stages, which default to 4 and 1)."""
    if "=" in text:
        cfg = {k.strip(): int(v) for k, v in (item.split("=", 1) for item in text.split(",") if item.strip())}
        cfg.setdefault("num_warps", 4)
        cfg.setdefault("num_stages", 1)
        return cfg
    b, h, k, w, s = (int(v) for v in text.split(","))
    return dict(BLOCK_B=b, BLOCK_H=h, BLOCK_K=k, num_warps=w, num_stages=s)


@dataclass
class Job:
    module: str
    index: int  # position in the module's COMPILE_CHECK
    kernel: str
    arch: int
    dtype: str
    align: str
    config: dict


@dataclass
class Result:
    kernel: str
    module: str
    arch: str
    dtype: str
    precision: str
    align: str
    BLOCK_B: int
    BLOCK_H: int
    BLOCK_K: int
    num_warps: int
    num_stages: int
    registers: int = -1
    stack_bytes: int = -1
    local_bytes: int = -1
    spill_bytes: int = -1
    shared_bytes: int = -1
    shared_limit: int = 0
    mma: str = ""  # HGMMA, HMMA, DMMA, IMMA, or FFMA / DFMA when the dots compile without MMA instructions
    mma_per_iter: int = -1  # instructions of that kind in the hot loop's body (per warp, from SASS)
    ldsm_per_iter: int = -1  # LDSM (ldmatrix) instructions in the same loop body
    mma_repeat: int = -1  # warps computing the same tile of a dot result (1 = none; max over the dots)
    dots: str = ""  # each dot's result shape, layout kind, warpsPerCTA and per-warp tile, ';'-separated
    epilogue_repeat: int = -1  # warps computing the same stored pointwise value (1 = none; max over the stores)
    status: str = "ERROR"  # OK, SPILL, SMEM, SPILL+SMEM, ERROR, N/A
    error: str = ""
    seconds: float = 0.0


def collect_jobs(kernels=None, archs=(90, 80), dtypes=DTYPES, aligns=ALIGNS, configs=None, sample="all",
                 reference: str | None = None) -> list[Job]:
    """Every (kernel, config, arch, dtype, align) to compile. ``kernels`` filters by kernel name, entry name
    or module (``lstm`` or ``kernels.lstm``); ``configs`` replaces every kernel's config list. ``sample``
    "heaviest" keeps only each entry's ``heaviest_configs`` (registers and shared memory read from the
    ``reference`` table, default ``REFERENCE_TABLE`` when it exists), and of each such config, per arch, only the
    dtype and alignment of its dtype group with the most registers there (``heaviest_variants``)."""
    variant_usage = measured_variants(reference) if sample == "heaviest" and configs is None else {}
    measured = measured_usage(variants=variant_usage)  # the table is read once
    jobs = []
    wanted = set(kernels) if kernels else None
    matched = set()
    for module_name in kernel_modules():
        short = module_name.rsplit(".", 1)[-1]
        entries = _entries(module_name)
        lighter = lighter_variants(entries, measured) if sample == "heaviest" and configs is None else set()
        for index, entry in enumerate(entries):
            name = _entry_name(entry)
            keys = {name, entry["kernel"].__name__, short, module_name}
            if wanted:
                if not wanted & keys:
                    continue
                matched |= wanted & keys
            if index in lighter:
                continue
            _check_not_interpreted(entry, module_name)
            cfgs = configs if configs is not None else [_config_fields(c) for c in entry["configs"]]
            if sample == "heaviest" and configs is None:
                cfgs = heaviest_configs(name, entry.get("dtypes", DTYPES), cfgs, measured)
            for cfg in cfgs:
                for arch in archs:
                    if arch not in entry.get("archs", (arch,)):  # configs another architecture runs
                        continue
                    variants = [(dtype, align) for dtype in dtypes if dtype in entry.get("dtypes", DTYPES)
                                for align in aligns if align in entry.get("aligns", ALIGNS)]  # the launcher's
                    if sample == "heaviest" and configs is None:
                        variants = heaviest_variants(name, cfg, arch, variants, variant_usage)
                    jobs.extend(Job(module_name, index, name, arch, dtype, align, dict(cfg))
                                for dtype, align in variants)
    if wanted and wanted - matched:
        raise SystemExit(f"compile_check: unknown kernels {sorted(wanted - matched)}; "
                         f"modules with COMPILE_CHECK: {kernel_modules()}")
    return jobs


# ----------------------------------------------------------------------------------------------
# sampling: the heaviest config of each entry (what the tests compile; the full table is its own command)
# ----------------------------------------------------------------------------------------------
SAMPLES = ("all", "heaviest")
# the last full run, committed: the measured registers and shared memory that rank the configs
REFERENCE_TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results",
                               "compile_table.csv")
_CONFIG_KEY = ("BLOCK_B", "BLOCK_H", "BLOCK_K", "num_warps", "num_stages")


def _config_key(cfg: dict) -> tuple:
    return tuple(int(cfg.get(k, 0)) for k in _CONFIG_KEY)


def tile_estimate(cfg: dict) -> tuple:
    """A config's expected weight without a compile: the elements per warp of the program's tiles (the
    BLOCK_B x BLOCK_H result and the BLOCK_K-deep operands, (BLOCK_B + BLOCK_H) x BLOCK_K), which the
    registers grow with; then the staged operand elements (shared memory)."""
    b, h, k, warps, stages = _config_key(cfg)
    return (b * h + k * (b + h)) / max(1, warps), stages * k * (b + h)


def measured_variants(path: str | None = None) -> dict:
    """``{(kernel, config key, arch, dtype, align): (spill bytes, registers, shared bytes)}`` from a compile table
    CSV (default ``REFERENCE_TABLE``); {} when the file is absent."""
    path = path or REFERENCE_TABLE
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as f:
        return {(r["kernel"], _config_key(r), r["arch"], r["dtype"], r["align"]):
                (int(r.get("spill_bytes") or 0), int(r["registers"]), int(r["shared_bytes"]))
                for r in csv.DictReader(f)}


def heaviest_variants(kernel: str, cfg: dict, arch: int, variants: list, measured: dict) -> list:
    """Of one config's (dtype, align) ``variants`` at ``arch``, the one that spilled most, then the one with the
    most registers, then shared memory, in ``measured`` (``measured_variants``; a variant that spilled in the last
    table is compiled again, whatever its registers: ptxas may cap a variant below the others): the dtypes of a
    group (fp16 / bf16, fp32 / tf32) and the alignments compile to near-identical code, the heaviest standing for
    them; every variant while one of them is unmeasured (new or changed)."""
    got = {v: measured.get((kernel, _config_key(cfg), ARCHS[arch], *v)) for v in variants}
    if not variants or any(u is None for u in got.values()):
        return list(variants)
    return [max(variants, key=lambda v: got[v])]


def measured_usage(path: str | None = None, variants: dict | None = None) -> dict:
    """``{(kernel, dtype, config key): (registers, shared bytes)}`` from a compile table CSV (``--csv``
    output; default ``REFERENCE_TABLE``) or its ``measured_variants``, each the max over archs and alignments;
    {} when the file is absent."""
    out: dict = {}
    for (kernel, cfg, _arch, dtype, _align), (_, regs, smem) in (variants if variants is not None
                                                                   else measured_variants(path)).items():
        r, m = out.get((kernel, dtype, cfg), (-1, -1))
        out[(kernel, dtype, cfg)] = (max(r, regs), max(m, smem))
    return out


def heaviest_configs(kernel: str, dtypes, configs: list[dict], measured: dict) -> list[dict]:
    """The configs of one entry (``kernel``, its dtype group ``dtypes``) that ``--sample heaviest`` compiles:
    the one with the most registers in ``measured`` (``measured_usage``: max over the group's dtypes, archs
    and alignments), ties broken by shared memory, then by ``tile_estimate``; plus every config ``measured``
    lacks for one of the dtypes (a new or changed config counts as heaviest until the table is regenerated).
    With no table at all (``measured`` empty), the config with the largest ``tile_estimate``."""
    if not measured:
        return [max(configs, key=tile_estimate)] if configs else []
    weights, unmeasured = {}, []
    for c in configs:
        got = [measured[(kernel, dt, _config_key(c))] for dt in dtypes if (kernel, dt, _config_key(c)) in measured]
        if len(got) < len(dtypes):
            unmeasured.append(c)
        else:
            weights[_config_key(c)] = (max(g[0] for g in got), max(g[1] for g in got), tile_estimate(c))
    top = max(weights.items(), key=lambda kv: kv[1])[0] if weights else None
    return [c for c in configs if _config_key(c) == top or any(c is u for u in unmeasured)]


def lighter_variants(entries: list[dict], measured: dict) -> set:
    """The positions in ``entries`` (one module's COMPILE_CHECK) that ``--sample heaviest`` leaves out: of an entry
    and its ``variant_of`` entry (a step kernel without and with a reset mask, or an entry and its launch-time
    variant: same dtype group), the one whose ``heaviest_configs`` weigh less in ``measured`` (registers, then
    shared memory); when they weigh the same, the base entry of a launch variant (the variant is what runs, and at a
    register cap the one that spilled where the heaviest did not) and a reset variant (the base has every other flag
    on); both while either has a config ``measured`` lacks."""
    def weight(entry):
        name, dtypes = _entry_name(entry), entry.get("dtypes", DTYPES)
        picked = heaviest_configs(name, dtypes, [_config_fields(c) for c in entry["configs"]], measured)
        got = [measured.get((name, dt, _config_key(c))) for c in picked for dt in dtypes]
        return None if not got or any(g is None for g in got) else max(got)

    where = {(_entry_name(e), tuple(e.get("dtypes", DTYPES))): i for i, e in enumerate(entries)}
    out = set()
    for i, e in enumerate(entries):
        base = where.get((e.get("variant_of"), tuple(e.get("dtypes", DTYPES))))
        if base is None:
            continue
        wv, wb = weight(e), weight(entries[base])
        if wv is not None and wb is not None:
            if wv == wb:  # a tie: the launch variant (what runs), else the base (every flag on)
                out.add(base if _entry_name(e).endswith(LAUNCH_SUFFIX) else i)
            else:
                out.add(base if wv > wb else i)
    return out


# ----------------------------------------------------------------------------------------------
# compiling one job
# ----------------------------------------------------------------------------------------------
def cuobjdump_path() -> str:
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    for path in (os.environ.get("TRITON_CUOBJDUMP_PATH"), bundled, shutil.which("cuobjdump")):
        if path and os.path.exists(path):
            return path
    raise RuntimeError("cuobjdump not found (neither bundled with triton nor on PATH); set TRITON_CUOBJDUMP_PATH")


_RES_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def cuobjdump(cubin: bytes, *flags: str) -> str:
    """The output of the bundled ``cuobjdump FLAGS`` on a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        return subprocess.run([cuobjdump_path(), *flags, path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)


def resource_usage(cubin: bytes, name: str) -> dict:
    """Registers, stack, static shared and local bytes of kernel ``name`` in a cubin (cuobjdump)."""
    out = cuobjdump(cubin, "--dump-resource-usage")
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if re.search(rf"Function {re.escape(name)}\b", line):
            for nxt in lines[i + 1:i + 3]:
                m = _RES_RE.search(nxt)
                if m:
                    reg, stack, shared, local = (int(v) for v in m.groups())
                    return dict(registers=reg, stack_bytes=stack, static_shared=shared, local_bytes=local)
    raise RuntimeError(f"no resource usage for {name} in cuobjdump output:\n{out}")


# ----------------------------------------------------------------------------------------------
# MMA analysis: replicated work (TTGIR layouts) and the hot loop's instruction counts (SASS)
# ----------------------------------------------------------------------------------------------
_LAYOUT_DEF_RE = re.compile(r"^(#[\w.$-]+)\s*=\s*#(?:ttg|triton_gpu)\.(nvidia_mma|blocked)<\{(.*)\}>", re.MULTILINE)
_DOT_RE = re.compile(r"=\s*(tt\.dot|ttng\.warp_group_dot)\s")
_TENSOR_RE = re.compile(r"->\s*tensor<((?:\d+x)+)(\w+)\s*,\s*(#[\w.$-]+)")


def _int_list(attrs: str, name: str) -> list[int] | None:
    m = re.search(rf"\b{name}\s*=\s*\[([\d,\s]*)\]", attrs)
    return [int(v) for v in m.group(1).split(",") if v.strip()] if m else None


def parse_layouts(ttgir: str) -> dict:
    """``#name -> layout`` for the nvidia_mma and blocked layout aliases of a TTGIR module. A layout is a dict:
    ``kind`` ("mma v2", "mma v3" or "blocked"), ``warps`` (warpsPerCTA) and ``tile`` (the extent one warp covers
    per dimension: the MMA layout's instrShape, whose v3 form carries K last; sizePerThread x threadsPerWarp for
    blocked)."""
    out = {}
    for m in _LAYOUT_DEF_RE.finditer(ttgir):
        name, kind, attrs = m.groups()
        warps = _int_list(attrs, "warpsPerCTA")
        if warps is None:
            continue
        if kind == "nvidia_mma":
            major = re.search(r"versionMajor\s*=\s*(\d+)", attrs)
            tile = _int_list(attrs, "instrShape") or []
            out[name] = dict(kind=f"mma v{major.group(1) if major else '?'}", warps=warps, tile=tile)
        else:
            spt = _int_list(attrs, "sizePerThread") or []
            tpw = _int_list(attrs, "threadsPerWarp") or []
            out[name] = dict(kind="blocked", warps=warps, tile=[a * b for a, b in zip(spt, tpw)])
    return out


def warp_repeat(shape: list[int], warps: list[int], tile: list[int]) -> int:
    """How many warps compute each element of a ``shape`` result laid out with ``warps`` (warpsPerCTA) warps of
    ``tile`` elements per dimension: along dimension d the warps take min(warps[d], ceil(shape[d] / tile[d]))
    distinct positions and the rest wrap around onto the same elements, so the repeat is the product over d of
    warps[d] / distinct[d] (1 = every warp has its own part). ``tile`` may be longer than ``shape`` (mma v3's
    instrShape is [M, N, K]): its leading entries are used."""
    if len(tile) < len(shape) or len(warps) != len(shape):
        raise ValueError(f"layout rank mismatch: shape {shape}, warpsPerCTA {warps}, tile {tile}")
    rep = 1
    for n, w, t in zip(shape, warps, tile):
        distinct = min(w, max(1, -(-n // max(1, t))))
        rep *= max(1, w // distinct)
    return rep


def dot_repeats(ttgir: str) -> list[dict]:
    """Every ``tt.dot`` / ``ttng.warp_group_dot`` of a TTGIR module: its result ``shape``, ``layout`` name, the
    layout's ``kind``, ``warps``, ``tile`` and the ``repeat`` (``warp_repeat``; -1 when the result layout is
    neither an MMA nor a blocked layout)."""
    layouts = parse_layouts(ttgir)
    dots = []
    for line in ttgir.splitlines():
        if not _DOT_RE.search(line):
            continue
        m = None
        for m in _TENSOR_RE.finditer(line):  # the last "-> tensor<...>" is the result type
            pass
        if m is None:
            continue
        shape = [int(v) for v in m.group(1).rstrip("x").split("x")]
        lay = layouts.get(m.group(3))
        d = dict(shape=shape, layout=m.group(3), kind=lay["kind"] if lay else "?",
                 warps=lay["warps"] if lay else [], tile=lay["tile"][:len(shape)] if lay else [], repeat=-1)
        if lay:
            d["repeat"] = warp_repeat(shape, lay["warps"], lay["tile"])
        dots.append(d)
    return dots


def mma_repeat(ttgir: str) -> int:
    """The largest ``repeat`` over a kernel's dots (0 when it has no dot)."""
    return max((d["repeat"] for d in dot_repeats(ttgir)), default=0)


_ALIAS_RE = re.compile(r"^(#[\w.$-]+)\s*=\s*(#(?:ttg|triton_gpu)\.\w+<.*>)\s*$", re.MULTILINE)
_STORE_RE = re.compile(r"\btt\.store\s+%[\w.$#-]+,\s*(%[\w.$#-]+)")


def _tensor_type(text: str) -> tuple[list[int], str] | None:
    """``(shape, layout)`` of the first ``tensor<AxBx...xT, LAYOUT>`` in ``text`` (the layout as written: an alias
    or an inline attribute, nested brackets included)."""
    m = re.search(r"tensor<((?:\d+x)+)[^,<>]*(?:<[^<>]*>)?[^,<>]*,\s*", text)
    if not m:
        return None
    depth, i = 0, m.end()
    for j in range(m.end(), len(text)):
        c = text[j]
        if c in "<{[(":
            depth += 1
        elif c in ">}])":
            if depth == 0:
                return [int(v) for v in m.group(1).rstrip("x").split("x")], text[i:j].strip()
            depth -= 1
    return None


def layout_repeat(shape: list[int], layout: str, aliases: dict) -> int:
    """How many warps hold each element of a ``shape`` tensor laid out as ``layout`` (TTGIR text: an alias of
    ``aliases``, or ``#ttg.slice<{dim = d, parent = P}>``, blocked, nvidia_mma or linear): ``warp_repeat`` for
    blocked / MMA layouts; a slice is its parent's with extent 1 along the sliced dimension (every warp along it
    holds the same values); a linear layout repeats 2 ** (its all-zero warp bases). -1 when unknown."""
    layout = aliases.get(layout, layout)
    m = re.match(r"#(?:ttg|triton_gpu)\.slice<\{dim\s*=\s*(\d+)\s*,\s*parent\s*=\s*(.*)\}>$", layout)
    if m:
        d = int(m.group(1))
        return layout_repeat(shape[:d] + [1] + shape[d:], m.group(2).strip(), aliases)
    if re.match(r"#(?:ttg|triton_gpu)\.linear<", layout):
        w = re.search(r"\bwarp\s*=\s*\[(.*?)\]\s*(?:,\s*block|\})", layout)
        if not w:
            return -1
        bases = re.findall(r"\[([\d,\s]*)\]", w.group(1))
        return 2 ** sum(1 for b in bases if not any(int(v) for v in b.split(",") if v.strip()))
    lay = parse_layouts(f"#x = {layout}").get("#x")
    if lay is None or len(lay["warps"]) != len(shape):
        return -1
    return warp_repeat(shape, lay["warps"], lay["tile"])


def epilogue_repeats(ttgir: str) -> list[dict]:
    """Every tensor ``tt.store`` of a TTGIR module with the ``repeat`` of the value it stores: the layout that
    value was computed in (the source of the ``ttg.convert_layout`` chain that feeds the store, else the store's
    own layout), and how many warps hold each of its elements (``layout_repeat``): the pointwise work before a
    store is done that many times. ``shape``, ``layout`` (as written) and ``repeat`` per store."""
    aliases = {m.group(1): m.group(2) for m in _ALIAS_RE.finditer(ttgir)}
    defs = {}
    for line in ttgir.splitlines():
        m = re.match(r"\s*(%[\w.$#-]+)(?::\d+)?\s*=\s*(\S+)\s+(.*)", line)
        if m:
            defs[m.group(1)] = (m.group(2), m.group(3))
    out = []
    for line in ttgir.splitlines():
        m = _STORE_RE.search(line)
        if not m or "tensor<" not in line:
            continue
        typ = _tensor_type(line.partition(" : ")[2])
        value = m.group(1)
        while value in defs and defs[value][0] == "ttg.convert_layout":
            rest = defs[value][1]
            typ = _tensor_type(rest.partition(" : ")[2]) or typ
            value = rest.split()[0]
        if typ is None:
            continue
        out.append(dict(shape=typ[0], layout=typ[1], repeat=layout_repeat(typ[0], typ[1], aliases)))
    return out


def epilogue_repeat(ttgir: str) -> int:
    """The largest ``repeat`` over a kernel's stores (``epilogue_repeats``; 1 = every stored value computed by
    one warp, 0 = no tensor store)."""
    return max((e["repeat"] for e in epilogue_repeats(ttgir)), default=0)


def describe_dots(dots: list[dict]) -> str:
    """Distinct dots as ``SHAPE kind warps/tile xREPEAT``, e.g. ``16x32 mma v2 [4,4]/[16,8] x4``."""
    fmt = lambda v: "[" + ",".join(map(str, v)) + "]"  # noqa: E731
    seen = []
    for d in dots:
        s = f"{'x'.join(map(str, d['shape']))} {d['kind']} {fmt(d['warps'])}/{fmt(d['tile'])} x{d['repeat']}"
        if s not in seen:
            seen.append(s)
    return "; ".join(seen)


_SASS_RE = re.compile(r"/\*([0-9a-fA-F]{4,})\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Z0-9_]+)*)\s*([^;]*);")
_MMA_KINDS = ("HGMMA", "HMMA", "DMMA", "IMMA")  # in order of preference when a kernel has several
_FMA_KINDS = ("DFMA", "FFMA")


def sass_instructions(sass: str, function: str | None = None) -> list[tuple[int, str, str]]:
    """``(address, opcode, operands)`` of every instruction of ``function`` (default: the first) in a
    ``cuobjdump -sass`` listing; the opcode keeps its modifiers (``HMMA.16816.F32.BF16``)."""
    out, inside = [], False
    for line in sass.splitlines():
        head = re.match(r"\s*Function\s*:\s*(\S+)", line)
        if head:
            if inside:
                break
            inside = function is None or head.group(1) == function
            continue
        if not inside:
            continue
        m = _SASS_RE.search(line)
        if m:
            out.append((int(m.group(1), 16), m.group(2) + m.group(3), m.group(4).strip()))
    return out


def sass_loops(instrs: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """Loops as ``(first, last)`` address ranges, one per backward branch (a ``BRA`` to an address at or before
    its own): the body runs from the branch target to the branch."""
    loops = set()
    for addr, op, operands in instrs:
        if op.split(".")[0] != "BRA":
            continue
        m = re.search(r"(?:^|[\s,])(?:`\()?(0x[0-9a-fA-F]+)", operands)
        if m and int(m.group(1), 16) <= addr:
            loops.add((int(m.group(1), 16), addr))
    return sorted(loops)


def hot_loop_counts(sass: str, function: str | None = None) -> dict:
    """The MMA kind of a kernel and its instruction counts per iteration of the hot loop, from SASS.

    kind: the first of HGMMA, HMMA, DMMA, IMMA present in the kernel, else DFMA or FFMA (the dots compiled to
    FMA). Hot loop: of the loops (``sass_loops``) that hold an instruction of that kind, those that hold no
    other such loop (the innermost), and of these the one with the most instructions of the kind. Counts are
    the instructions of the kind (``mma_per_iter``) and the LDSM (ldmatrix) instructions (``ldsm_per_iter``)
    between the loop's first address and its backward branch: one pass of the loop body as ptxas laid it out,
    executed once per warp (an unrolled source loop shows up as a multiple). With no such loop, the whole
    kernel is counted (``loop`` is None)."""
    instrs = sass_instructions(sass, function)
    base = [op.split(".")[0] for _, op, _ in instrs]
    kind = next((k for k in _MMA_KINDS if k in base), None) or next((k for k in _FMA_KINDS if k in base), "")
    if not kind:
        return dict(mma="", mma_per_iter=0, ldsm_per_iter=0, loop=None)

    def count(lo, hi, what):
        return sum(1 for (a, _, _), b in zip(instrs, base) if lo <= a <= hi and b == what)

    cands = [lp for lp in sass_loops(instrs) if count(lp[0], lp[1], kind)]
    inner = [lp for lp in cands if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in cands)]
    if inner:
        loop = max(inner, key=lambda lp: (count(lp[0], lp[1], kind), -(lp[1] - lp[0])))
    else:
        loop = None
    lo, hi = loop if loop else (0, float("inf"))
    return dict(mma=kind, mma_per_iter=count(lo, hi, kind), ldsm_per_iter=count(lo, hi, "LDSM"), loop=loop)


def analyze_compiled(kernel) -> dict:
    """The MMA columns of a ``triton.compile`` result: ``mma``, ``mma_per_iter``, ``ldsm_per_iter`` (SASS,
    ``hot_loop_counts``), ``mma_repeat`` and ``dots`` (TTGIR, ``dot_repeats``), ``epilogue_repeat`` (TTGIR,
    ``epilogue_repeats``), plus the raw ``ttgir`` and ``sass`` texts."""
    ttgir = kernel.asm["ttgir"]
    sass = cuobjdump(kernel.asm["cubin"], "-sass")
    counts = hot_loop_counts(sass, kernel.metadata.name)
    dots = dot_repeats(ttgir)
    return dict(mma=counts["mma"], mma_per_iter=counts["mma_per_iter"], ldsm_per_iter=counts["ldsm_per_iter"],
                mma_repeat=max((d["repeat"] for d in dots), default=0), dots=describe_dots(dots),
                epilogue_repeat=epilogue_repeat(ttgir), ttgir=ttgir, sass=sass)


def _signature(fn, entry: dict, dtype: str, align: str):
    """(signature, constexprs, attrs) for the heaviest variant of ``entry`` at ``dtype``."""
    import triton.language as tl

    x_ty, acc_ty, precision = _DTYPE_INFO[dtype]
    arg_types = entry.get("args", {})
    sig, attrs = {}, {}
    try:
        from triton.compiler.compiler import make_backend
        from triton.backends.compiler import GPUTarget

        div16 = make_backend(GPUTarget("cuda", 90, 32)).parse_attr("D")
    except Exception:
        div16 = [["tt.divisibility", 16]]
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            continue
        ty = arg_types.get(p.name, "i32")
        ty = {"x": "*" + x_ty, "acc": "*" + acc_ty}.get(ty, ty)
        sig[p.name] = ty
        if align == "aligned" and not p.do_not_specialize and (ty.startswith("*") or ty in ("i32", "i64")):
            if not getattr(p, "do_not_specialize_on_alignment", False):
                attrs[(i,)] = div16
    consts = dict(entry.get("constexprs", {}))
    names = {p.name for p in fn.params if p.is_constexpr}
    if "PRECISION" in names:
        consts.setdefault("PRECISION", precision)
    if "ACC" in names:
        consts.setdefault("ACC", tl.float64 if acc_ty == "fp64" else tl.float32)
    missing = names - set(consts)
    return sig, consts, attrs, missing


def _ast_source(fn, sig, consts, attrs):
    from triton.compiler import ASTSource

    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" in params:  # triton >= 3.3: constexprs keyed by name (or index path)
        return ASTSource(fn, sig, constexprs=consts, attrs=attrs)
    # triton 3.2: constants keyed by index path
    idx = {p.name: (p.num,) for p in fn.params}
    return ASTSource(fn, sig, constants={idx[k]: v for k, v in consts.items()}, attrs=attrs)


def compile_entry(entry: dict, config: dict, arch: int = 90, dtype: str = "bf16", align: str = "aligned", *,
                  module: str = "", name: str = "", dump_dir: str = "") -> Result:
    """Compile ``entry`` (a COMPILE_CHECK dict) at one ``config`` (constexpr sizes + num_warps / num_stages) in
    this process and measure it: resources, status and the MMA columns. Never raises: errors become status
    ERROR (N/A for fp64). With ``dump_dir``, the TTGIR, PTX and SASS are written there."""
    import triton
    from triton.backends.compiler import GPUTarget

    cfg = dict(config)
    res = Result(
        kernel=name or _entry_name(entry), module=module, arch=ARCHS[arch], dtype=dtype,
        precision=_DTYPE_INFO[dtype][2], align=align, BLOCK_B=cfg.get("BLOCK_B", 0),
        BLOCK_H=cfg.get("BLOCK_H", 0), BLOCK_K=cfg.get("BLOCK_K", 0), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], shared_limit=SHARED_LIMIT[arch],
    )
    t0 = time.perf_counter()
    try:
        fn = entry["kernel"]
        _check_not_interpreted(entry, module or "compile_entry")
        sig, consts, attrs, missing = _signature(fn, entry, dtype, align)
        names = {p.name for p in fn.params if p.is_constexpr}
        for k in list(cfg):
            if k in names:
                consts[k] = cfg[k]
        missing -= set(consts)
        if missing:
            raise ValueError(f"COMPILE_CHECK entry leaves constexprs {sorted(missing)} unset")
        kernel = triton.compile(
            _ast_source(fn, sig, consts, attrs),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]},
        )
        mma = _measure(res, kernel)
        if dump_dir:
            _dump(dump_dir, res, arch, kernel, mma)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - every failure is a row
        res.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        res.status = "N/A" if dtype == "fp64" else "ERROR"
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


def _measure(res: Result, kernel) -> dict:
    """Fill ``res`` from a compiled kernel: resources (cuobjdump), the MMA columns and the status. Returns
    ``analyze_compiled``'s dict (with the TTGIR and SASS texts)."""
    usage = resource_usage(kernel.asm["cubin"], kernel.metadata.name)
    res.registers = usage["registers"]
    res.stack_bytes = usage["stack_bytes"]
    res.local_bytes = usage["local_bytes"]
    res.spill_bytes = usage["stack_bytes"] + usage["local_bytes"]
    res.shared_bytes = int(kernel.metadata.shared)
    mma = analyze_compiled(kernel)
    for k in ("mma", "mma_per_iter", "ldsm_per_iter", "mma_repeat", "dots", "epilogue_repeat"):
        setattr(res, k, mma[k])
    bad = []
    if res.spill_bytes > 0:
        bad.append("SPILL")
    if res.shared_bytes > res.shared_limit:
        bad.append("SMEM")
    res.status = "+".join(bad) or "OK"
    return mma


def _dump(dump_dir: str, res: Result, arch: int, kernel, mma: dict):
    """Write the TTGIR, PTX and SASS of one compile to ``dump_dir``."""
    os.makedirs(dump_dir, exist_ok=True)
    stem = os.path.join(dump_dir, f"{res.kernel}_{arch}_{res.dtype}_{res.align}_{res.BLOCK_B}x{res.BLOCK_H}x"
                                  f"{res.BLOCK_K}_w{res.num_warps}_s{res.num_stages}")
    for ext, text in (("ttgir", mma["ttgir"]), ("ptx", kernel.asm.get("ptx", "")), ("sass", mma["sass"])):
        with open(f"{stem}.{ext}", "w") as f:
            f.write(text)


def compile_job(job: Job, dump_dir: str = "") -> Result:
    """Compile one registry job in this process (``compile_entry`` on its module's entry)."""
    entry = _entries(job.module)[job.index]
    return compile_entry(entry, job.config, job.arch, job.dtype, job.align, module=job.module, name=job.kernel,
                         dump_dir=dump_dir)


def find_entry(kernel: str, dtype: str = "bf16") -> dict:
    """The registry's COMPILE_CHECK entry for kernel (or entry) name ``kernel`` that covers ``dtype``."""
    for module_name in kernel_modules():
        for entry in _entries(module_name):
            if kernel in (_entry_name(entry), entry["kernel"].__name__) and dtype in entry.get("dtypes", DTYPES):
                return dict(entry, module=module_name)
    raise KeyError(f"no COMPILE_CHECK entry for {kernel!r} with dtype {dtype}")


def analyze_source(kernel=None, entry: dict | None = None, configs=None, *, arch: int = 90, dtype: str = "bf16",
                   align: str = "aligned", dump_dir: str = "") -> list[Result]:
    """Compile ``kernel`` (a @triton.jit function) as ``entry`` describes it (a COMPILE_CHECK dict, or the
    name of a registry kernel: ``find_entry``) for every config of ``configs`` (default: the entry's), and
    return one ``Result`` each, MMA columns included. ``kernel=None`` takes the entry's kernel; passing another
    kernel with the same parameters checks a variant (a prototype) against an existing entry. The kernel must
    have been decorated without ``TRITON_INTERPRET`` (call ``_drop_interpreter()`` before importing it)."""
    if entry is None or isinstance(entry, str):
        entry = find_entry(entry or kernel.__name__, dtype)
    entry = dict(entry)
    if kernel is not None:
        entry["kernel"] = kernel
    cfgs = configs if configs is not None else entry["configs"]
    cfgs = [c if isinstance(c, dict) else _config_fields(c) for c in cfgs]
    name = entry.get("name") or entry["kernel"].__name__
    return [compile_entry(entry, c, arch, dtype, align, module=entry.get("module", ""), name=name,
                          dump_dir=dump_dir) for c in cfgs]


def _worker_init():
    _drop_interpreter()


def run_jobs(jobs: list[Job], n_jobs: int = 1, progress=None, dump_dir: str = "") -> list[Result]:
    """Compile every job, in a pool of ``n_jobs`` spawned processes when > 1; results in job order."""
    if n_jobs <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            out.append(compile_job(job, dump_dir))
            if progress:
                progress(out[-1], len(out), len(jobs))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    results: list = [None] * len(jobs)
    # longest compiles (largest tiles) first, for a balanced pool
    order = sorted(range(len(jobs)), key=lambda i: -(jobs[i].config.get("BLOCK_B", 1) * jobs[i].config.get(
        "BLOCK_H", 1) * jobs[i].config.get("BLOCK_K", 1)))
    with ProcessPoolExecutor(n_jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
        futures = {pool.submit(compile_job, jobs[i], dump_dir): i for i in order}
        from concurrent.futures import as_completed

        done = 0
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            done += 1
            if progress:
                progress(results[futures[fut]], done, len(jobs))
    return results


# ----------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------
def summarize(results: list[Result]) -> list[dict]:
    """One row per (kernel, arch, dtype, config), merging the alignment variants: registers of each
    variant, the largest spill and shared memory, OK only if every variant is OK (n/a if all are N/A)."""
    rows, index = [], {}
    for r in results:
        key = (r.kernel, r.arch, r.dtype, r.BLOCK_B, r.BLOCK_H, r.BLOCK_K, r.num_warps, r.num_stages)
        if key not in index:
            index[key] = len(rows)
            rows.append(dict(kernel=r.kernel, arch=r.arch, dtype=r.dtype, BLOCK_B=r.BLOCK_B, BLOCK_H=r.BLOCK_H,
                             BLOCK_K=r.BLOCK_K, warps=r.num_warps, stages=r.num_stages, variants=[]))
        rows[index[key]]["variants"].append(r)
    for row in rows:
        vs = row.pop("variants")
        row["registers"] = "/".join(str(v.registers) if v.registers >= 0 else "-" for v in vs)
        row["aligns"] = "/".join(v.align for v in vs)
        row["spill_bytes"] = max(v.spill_bytes for v in vs)
        row["shared_kb"] = max(v.shared_bytes for v in vs) / 1024
        row["max_registers"] = max(v.registers for v in vs)
        statuses = {v.status for v in vs}
        if statuses == {"OK"}:
            row["status"] = "OK"
        elif statuses == {"N/A"}:
            row["status"] = "n/a"
        else:
            row["status"] = "FAIL (" + ", ".join(f"{v.align} {v.status}" for v in vs if v.status != "OK") + ")"
        row["error"] = "; ".join(sorted({v.error for v in vs if v.error}))
        for k in ("mma", "mma_per_iter", "ldsm_per_iter"):
            vals = [str(getattr(v, k)) if getattr(v, k) not in ("", -1) else "-" for v in vs]
            row[k] = vals[0] if len(set(vals)) == 1 else "/".join(vals)
        row["mma_repeat"] = max(v.mma_repeat for v in vs)
        row["epilogue_repeat"] = max(v.epilogue_repeat for v in vs)
    return rows


def failed(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status not in ("OK", "N/A")]


# dtypes whose hot kernels must not replicate MMA work (the 16-bit group: the tensor-core fast path)
REPEAT_DTYPES = ("fp16", "bf16")


def repeated(results: list[Result], dtypes=REPEAT_DTYPES) -> list[Result]:
    """Compiles of ``dtypes`` whose dots replicate work across warps (``mma_repeat > 1``)."""
    return [r for r in results if r.dtype in dtypes and r.mma_repeat > 1]


_COLUMNS = ("kernel", "arch", "dtype", "BLOCK_B", "BLOCK_H", "BLOCK_K", "warps", "stages", "registers",
            "spill B", "shared KB", "mma", "mma_per_iter", "ldsm_per_iter", "mma_repeat", "epilogue_repeat", "status")


def _cells(row: dict) -> list[str]:
    return [row["kernel"], row["arch"], row["dtype"], str(row["BLOCK_B"]), str(row["BLOCK_H"]), str(row["BLOCK_K"]),
            str(row["warps"]), str(row["stages"]), row["registers"],
            str(row["spill_bytes"]) if row["spill_bytes"] >= 0 else "-",
            f"{row['shared_kb']:.1f}" if row["shared_kb"] >= 0 else "-", row["mma"], row["mma_per_iter"],
            row["ldsm_per_iter"], str(row["mma_repeat"]) if row["mma_repeat"] >= 0 else "-",
            str(row["epilogue_repeat"]) if row["epilogue_repeat"] >= 0 else "-", row["status"]]


def format_table(rows: list[dict], markdown: bool = False) -> str:
    cells = [_cells(r) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "|".join("---" for _ in _COLUMNS) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(_COLUMNS)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*_COLUMNS)] + [fmt.format(*c) for c in cells])


def max_registers(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        if r["status"] == "n/a":
            continue
        key = (r["kernel"], r["arch"])
        out[key] = max(out.get(key, -1), r["max_registers"])
    return out


def write_csv(path: str, results: list[Result]):
    """One row per compile, each with its provenance: triton version, git commit, date (UTC)."""
    import triton

    prov = dict(triton=triton.__version__, commit=_git_commit(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    cols = list(asdict(results[0])) + list(prov)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in results:
            w.writerow(dict(asdict(r), **prov))


def _git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "kernels"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        return head + (" (kernels/ modified)" if dirty else "")
    except Exception:
        return "unknown"


def write_markdown(path: str, rows: list[dict], results: list[Result], command: str, seconds: float, n_jobs: int):
    import triton

    fails = failed(results)
    regs = max_registers(rows)
    summary = "\n".join(f"| {k} | {a} | {v} |" for (k, a), v in sorted(regs.items()))
    reps = repeated(results)
    repeat_line = (f"\n{len(reps)} {'/'.join(REPEAT_DTYPES)} compiles replicate MMA work (`mma_repeat > 1`):\n\n"
                   + "\n".join(sorted({f"- {r.kernel} {r.arch} {r.BLOCK_B}x{r.BLOCK_H}x{r.BLOCK_K} w{r.num_warps} "
                                        f"s{r.num_stages}: {r.dots}" for r in reps})) + "\n") if reps else ""
    text = f"""# Static compile check of the step kernels

- triton: {triton.__version__}
- date: {datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
- commit: {_git_commit()}
- command: `{command}`
- {len(results)} compiles in {seconds:.0f} s with {n_jobs} process(es); {len(fails)} failing.

Registers are `aligned/unaligned`: every pointer and integer argument divisible by 16 (what the runtime
specializes on when H is a multiple of 16) / none of them. Spill bytes (cuobjdump STACK + LOCAL) and shared memory
(`kernel.metadata.shared`) are the larger of the two variants. Limits: 0 spill bytes; shared memory
227 KB (sm_90a), 163 KB (sm_80). dtype `fp32` is `tl.dot` precision "ieee", `tf32` is fp32 tensors with
precision "tf32"; fp64 accumulates in fp64. Heaviest constexpr variant of each kernel (lengths, stored gates,
a next step, tanh).

MMA columns (module docstring of `experiments/compile_check.py`): `mma` is the matrix instruction in the SASS
(HGMMA = wgmma, HMMA = mma.sync, DMMA; FFMA / DFMA = no MMA instruction); `mma_per_iter` / `ldsm_per_iter`
count it and the LDSM (ldmatrix) instructions per warp in one pass of the innermost SASS loop that holds it
(one K slice of a per-step kernel, one batch tile of a persistent step); `mma_repeat` is how many warps
compute the same element of a dot result (TTGIR layout warpsPerCTA x per-warp tile against the result shape;
1 = none, max over the kernel's dots and both alignments); `epilogue_repeat` is how many warps compute the same
stored pointwise value (the TTGIR layout each stored value was computed in; 1 = none, max over the stores).
Values differing between the aligned and unaligned variants are shown `aligned/unaligned`.
{repeat_line}
Max registers per kernel and arch:

| kernel | arch | max registers |
|---|---|---|
{summary}

{format_table(rows, markdown=True)}
"""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.compile_check", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", "--archs", dest="arch", default="90,80",
                    help="compute capabilities, comma separated (default 90,80)")
    ap.add_argument("--kernels", default="", help="kernel names or modules (lstm, rnn, _lstm_fwd_step, ...)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help=f"subset of {','.join(DTYPES)}")
    ap.add_argument("--align", "--aligns", dest="align", default=",".join(ALIGNS),
                    help="aligned,unaligned (see module doc)")
    ap.add_argument("--config", action="append", default=None, metavar="B,H,K,WARPS,STAGES",
                    help="compile these tile configs instead of the kernels' lists (repeatable); also "
                         "NAME=VALUE,... (e.g. BLOCK_B=16,BLOCK_H=8,BLOCK_K=1024,SPLIT_K=8,num_warps=8)")
    ap.add_argument("--dump", default="", metavar="DIR", help="write each compile's TTGIR, PTX and SASS here")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes (default 2)")
    ap.add_argument("--csv", default="", help="write one row per compile here")
    ap.add_argument("--markdown", default="", help="write the table with its provenance here")
    ap.add_argument("--sample", choices=SAMPLES, default="all",
                    help="all configs (default), or only the heaviest config of each kernel and dtype group "
                         "(heaviest_configs: most registers in --reference), every arch, dtype and alignment")
    ap.add_argument("--reference", default=REFERENCE_TABLE, metavar="CSV",
                    help="the full table that ranks the configs for --sample heaviest (default: the committed "
                         "results/compile_table.csv)")
    ap.add_argument("--quiet", action="store_true",
                    help=f"no line per compile; a progress line every {PROGRESS_EVERY} compiles still")
    return ap


def _choices(ap, option: str, text: str, allowed) -> list:
    """A comma-separated option's values, each checked against ``allowed`` (an argparse error otherwise)."""
    values = [v for v in text.split(",") if v]
    for v in values:
        if v not in allowed:
            ap.error(f"{option} {v}: supported {list(allowed)}")
    return values


def _print_progress(r: Result, done: int, total: int):
    print(f"[{done}/{total}] {r.kernel} {r.arch} {r.dtype} {r.align} {r.BLOCK_B}x{r.BLOCK_H}x{r.BLOCK_K} "
          f"w{r.num_warps} s{r.num_stages}: {r.status} regs={r.registers} spill={r.spill_bytes} "
          f"smem={r.shared_bytes} {r.mma or '-'} {r.mma_per_iter}/{r.ldsm_per_iter} "
          f"repeat={r.mma_repeat} ({r.seconds:.1f}s)", file=sys.stderr, flush=True)


PROGRESS_EVERY = 50  # compiles between two progress lines


def progress_printer(quiet: bool = False, every: int = PROGRESS_EVERY, out=None):
    """The ``progress`` callback of ``run_jobs``: a line per compile unless ``quiet``, and, quiet or not, a
    line every ``every`` compiles and at the end with the elapsed time, the estimated time left and the
    failures so far (on stderr: a long run is never silent)."""
    t0, fails = time.perf_counter(), []

    def progress(r: Result, done: int, total: int):
        if not quiet:
            _print_progress(r, done, total)
        if r.status not in ("OK", "N/A"):
            fails.append(r)
        if done % every == 0 or done == total:
            elapsed = time.perf_counter() - t0
            print(f"compile_check: {done}/{total} compiles, {len(fails)} failing, {elapsed:.0f} s elapsed, "
                  f"~{elapsed / done * (total - done):.0f} s left", file=out or sys.stderr, flush=True)

    return progress


def _report(results: list[Result], rows: list[dict], seconds: float) -> list[Result]:
    """Print the table, the largest register counts, the errors and the replicated-MMA compiles; returns the
    failing results."""
    print(format_table(rows))
    regs = max_registers(rows)
    print("\nmax registers: " + ", ".join(f"{k}@{a}={v}" for (k, a), v in sorted(regs.items())))
    fails = failed(results)
    for r in fails:
        if r.error:
            print(f"ERROR {r.kernel} {r.arch} {r.dtype} {r.align} {r.BLOCK_B}x{r.BLOCK_H}x{r.BLOCK_K}: {r.error}")
    reps = repeated(results)
    for r in reps:
        print(f"REPEAT {r.kernel} {r.arch} {r.dtype} {r.align} {r.BLOCK_B}x{r.BLOCK_H}x{r.BLOCK_K} "
              f"w{r.num_warps} s{r.num_stages}: mma_repeat={r.mma_repeat} ({r.dots})")
    print(f"{len(results)} compiles in {seconds:.1f} s; {len(fails)} failing "
          f"({sum(r.status == 'N/A' for r in results)} n/a); {len(reps)} {'/'.join(REPEAT_DTYPES)} compiles "
          f"with mma_repeat > 1")
    return fails


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.sample != "all" and args.csv and os.path.exists(args.csv) and os.path.exists(args.reference) \
            and os.path.samefile(args.csv, args.reference):
        ap.error(f"--csv {args.csv} is the --reference table: a sample would replace the full table")
    if _interpret_env_on():
        print("compile_check: ignoring TRITON_INTERPRET=1 (the check needs the real compiler)", file=sys.stderr)
    _drop_interpreter()
    archs = [int(a) for a in _choices(ap, "--arch", args.arch, [str(a) for a in sorted(ARCHS)])]
    dtypes = _choices(ap, "--dtypes", args.dtypes, DTYPES)
    aligns = _choices(ap, "--align", args.align, ALIGNS)
    configs = [_parse_config(c) for c in args.config] if args.config else None
    kernels = [k for k in args.kernels.split(",") if k]

    import triton

    jobs = collect_jobs(kernels, archs, dtypes, aligns, configs, sample=args.sample, reference=args.reference)
    print(f"compile_check: triton {triton.__version__}, {len(jobs)} compiles ({args.sample} configs), "
          f"{args.jobs} process(es)", file=sys.stderr)
    t0 = time.perf_counter()
    results = run_jobs(jobs, args.jobs, progress_printer(args.quiet), args.dump)
    seconds = time.perf_counter() - t0
    rows = summarize(results)
    fails = _report(results, rows, seconds)
    if args.csv and results:
        write_csv(args.csv, results)
    if args.markdown and results:
        command = "python -m experiments.compile_check " + " ".join(argv if argv is not None else sys.argv[1:])
        write_markdown(args.markdown, rows, results, command.strip(), seconds, args.jobs)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
