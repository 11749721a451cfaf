"""Static resource check of every step kernel and tile config for sm_90a and sm_80, without a GPU.

    python -m kernels.compile_check [--arch 90,80] [--kernels lstm,_rnn_fwd_step,...]
                                    [--dtypes fp16,bf16,fp32,tf32,fp64] [--align aligned,unaligned]
                                    [--config B,H,K,WARPS,STAGES] [--jobs N] [--csv out.csv] [--markdown out.md]

Each kernel is compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` for every
config of its list, in its heaviest constexpr variant (the kernel module says which). Registers and stack
(spill) bytes come from the ``cuobjdump --dump-resource-usage`` bundled with triton, shared memory from
``kernel.metadata.shared``. A config fails when it spills (stack or local bytes > 0), exceeds the shared memory
of the arch (227 KB sm_90, 163 KB sm_80) or does not compile; the exit status is 1 if any config fails.

dtypes: fp16, bf16, fp32 (``tl.dot`` precision "ieee"), tf32 (fp32 tensors, precision "tf32", what runs on a
GPU when ``torch.backends.cudnn.allow_tf32`` is on), fp64 (fp64 accumulator; reported n/a if it does not
compile). align: the runtime specializes pointers and integer arguments on divisibility by 16, which changes
the generated code a lot (vectorized loads and wgmma vs. scalar loads and mma), so both extremes are compiled:
``aligned`` (every pointer and integer argument divisible by 16) and ``unaligned`` (none).

Registry: every module ``kernels/<name>.py`` whose source defines ``COMPILE_CHECK`` is imported, and its
``COMPILE_CHECK`` (a list, or a function returning one) lists dicts::

    dict(
        kernel=_lstm_fwd_step,               # the @triton.jit function
        configs=FWD_CONFIGS,                 # TileConfig or triton.Config entries
        args={"xp": "x", "c_out": "acc", "lengths": "*i32"},  # pointer args: "x" = the input dtype,
                                             # "acc" = the accumulator dtype, or a triton type string;
                                             # unlisted non-constexpr args are "i32" scalars
        constexprs=dict(HAS_LENGTHS=True),   # heaviest variant; PRECISION, ACC and the BLOCK_* sizes
                                             # are filled in by the checker when the kernel has them
        name="...",                          # optional label (default: the kernel's name)
        dtypes=("fp16", ...),                # optional subset of the dtypes
    )

The check must see the real compiler: it refuses to run on kernels decorated under ``TRITON_INTERPRET=1``
and drops that variable for the modules it imports itself.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import inspect
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

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
_SKIP_MODULES = {"compile_check", "reference"}


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


def kernel_modules() -> list[str]:
    """Names of the ``kernels.*`` modules that define COMPILE_CHECK (found by reading their source)."""
    pkg_dir = os.path.dirname(os.path.abspath(__file__))
    names = []
    for info in pkgutil.iter_modules([pkg_dir]):
        if info.ispkg or info.name in _SKIP_MODULES or info.name.startswith("_"):
            continue
        with open(os.path.join(pkg_dir, info.name + ".py"), encoding="utf-8") as f:
            if re.search(r"^COMPILE_CHECK\b|^def COMPILE_CHECK\b", f.read(), re.MULTILINE):
                names.append(f"{__package__ or 'kernels'}.{info.name}")
    return sorted(names)


def _entries(module_name: str) -> list[dict]:
    mod = importlib.import_module(module_name)
    entries = mod.COMPILE_CHECK
    if callable(entries):
        entries = entries()
    return list(entries)


def _entry_name(entry: dict) -> str:
    return entry.get("name") or entry["kernel"].__name__


def _check_not_interpreted(entry: dict, module_name: str):
    fn = entry["kernel"]
    if type(fn).__name__ == "InterpretedFunction" or not hasattr(fn, "params"):
        raise SystemExit(
            f"compile_check: {module_name}.{_entry_name(entry)} was decorated by Triton's interpreter "
            "(TRITON_INTERPRET=1 was set when the module was imported). Run the check in a fresh process "
            "without TRITON_INTERPRET: `env -u TRITON_INTERPRET python -m kernels.compile_check`."
        )


def _config_fields(cfg) -> dict:
    """TileConfig or triton.Config -> constexpr sizes + num_warps / num_stages."""
    if hasattr(cfg, "as_triton"):
        cfg = cfg.as_triton()
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _parse_config(text: str) -> dict:
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
    status: str = "ERROR"  # OK, SPILL, SMEM, SPILL+SMEM, ERROR, N/A
    error: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def collect_jobs(kernels=None, archs=(90, 80), dtypes=DTYPES, aligns=ALIGNS, configs=None) -> list[Job]:
    """Every (kernel, config, arch, dtype, align) to compile. ``kernels`` filters by kernel name, entry name
    or module (``lstm`` or ``kernels.lstm``); ``configs`` replaces every kernel's config list."""
    jobs = []
    wanted = set(kernels) if kernels else None
    matched = set()
    for module_name in kernel_modules():
        short = module_name.rsplit(".", 1)[-1]
        for index, entry in enumerate(_entries(module_name)):
            name = _entry_name(entry)
            keys = {name, entry["kernel"].__name__, short, module_name}
            if wanted:
                if not wanted & keys:
                    continue
                matched |= wanted & keys
            _check_not_interpreted(entry, module_name)
            cfgs = configs if configs is not None else [_config_fields(c) for c in entry["configs"]]
            for cfg in cfgs:
                for arch in archs:
                    for dtype in dtypes:
                        if dtype not in entry.get("dtypes", DTYPES):
                            continue
                        for align in aligns:
                            if align not in entry.get("aligns", ALIGNS):  # the launcher never runs it
                                continue
                            jobs.append(Job(module_name, index, name, arch, dtype, align, dict(cfg)))
    if wanted and wanted - matched:
        raise SystemExit(f"compile_check: unknown kernels {sorted(wanted - matched)}; "
                         f"modules with COMPILE_CHECK: {kernel_modules()}")
    return jobs


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


def resource_usage(cubin: bytes, name: str) -> dict:
    """Registers, stack, static shared and local bytes of kernel ``name`` in a cubin (cuobjdump)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        out = subprocess.run([cuobjdump_path(), "--dump-resource-usage", path], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(path)
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if re.search(rf"Function {re.escape(name)}\b", line):
            for nxt in lines[i + 1:i + 3]:
                m = _RES_RE.search(nxt)
                if m:
                    reg, stack, shared, local = (int(v) for v in m.groups())
                    return dict(registers=reg, stack_bytes=stack, static_shared=shared, local_bytes=local)
    raise RuntimeError(f"no resource usage for {name} in cuobjdump output:\n{out}")


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


def compile_job(job: Job) -> Result:
    """Compile one job in this process and measure it (never raises: errors become status ERROR / N/A)."""
    import triton
    from triton.backends.compiler import GPUTarget

    cfg = dict(job.config)
    res = Result(
        kernel=job.kernel, module=job.module, arch=ARCHS[job.arch], dtype=job.dtype,
        precision=_DTYPE_INFO[job.dtype][2], align=job.align, BLOCK_B=cfg.get("BLOCK_B", 0),
        BLOCK_H=cfg.get("BLOCK_H", 0), BLOCK_K=cfg.get("BLOCK_K", 0), num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], shared_limit=SHARED_LIMIT[job.arch],
    )
    t0 = time.perf_counter()
    try:
        entry = _entries(job.module)[job.index]
        fn = entry["kernel"]
        _check_not_interpreted(entry, job.module)
        sig, consts, attrs, missing = _signature(fn, entry, job.dtype, job.align)
        names = {p.name for p in fn.params if p.is_constexpr}
        for k in list(cfg):
            if k in names:
                consts[k] = cfg[k]
        missing -= set(consts)
        if missing:
            raise ValueError(f"COMPILE_CHECK entry leaves constexprs {sorted(missing)} unset")
        kernel = triton.compile(
            _ast_source(fn, sig, consts, attrs),
            target=GPUTarget("cuda", job.arch, 32),
            options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]},
        )
        usage = resource_usage(kernel.asm["cubin"], kernel.metadata.name)
        res.registers = usage["registers"]
        res.stack_bytes = usage["stack_bytes"]
        res.local_bytes = usage["local_bytes"]
        res.spill_bytes = usage["stack_bytes"] + usage["local_bytes"]
        res.shared_bytes = int(kernel.metadata.shared)
        bad = []
        if res.spill_bytes > 0:
            bad.append("SPILL")
        if res.shared_bytes > res.shared_limit:
            bad.append("SMEM")
        res.status = "+".join(bad) or "OK"
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - every failure is a row
        res.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        res.status = "N/A" if job.dtype == "fp64" else "ERROR"
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


def _worker_init():
    _drop_interpreter()


def run_jobs(jobs: list[Job], n_jobs: int = 1, progress=None) -> list[Result]:
    """Compile every job, in a pool of ``n_jobs`` spawned processes when > 1; results in job order."""
    if n_jobs <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            out.append(compile_job(job))
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
        futures = {pool.submit(compile_job, jobs[i]): i for i in order}
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
            why = sorted(s for s in statuses if s != "OK")
            row["status"] = "FAIL (" + ", ".join(f"{v.align} {v.status}" for v in vs if v.status != "OK") + ")"
            row["why"] = why
        row["error"] = "; ".join(sorted({v.error for v in vs if v.error}))
    return rows


def failed(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status not in ("OK", "N/A")]


_COLUMNS = ("kernel", "arch", "dtype", "BLOCK_B", "BLOCK_H", "BLOCK_K", "warps", "stages", "registers",
            "spill B", "shared KB", "status")


def _cells(row: dict) -> list[str]:
    return [row["kernel"], row["arch"], row["dtype"], str(row["BLOCK_B"]), str(row["BLOCK_H"]), str(row["BLOCK_K"]),
            str(row["warps"]), str(row["stages"]), row["registers"],
            str(row["spill_bytes"]) if row["spill_bytes"] >= 0 else "-",
            f"{row['shared_kb']:.1f}" if row["shared_kb"] >= 0 else "-", row["status"]]


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
    cols = [k for k in asdict(results[0]) if k != "extra"] + list(prov)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in results:
            d = asdict(r)
            d.pop("extra")
            w.writerow(dict(d, **prov))


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

Max registers per kernel and arch:

| kernel | arch | max registers |
|---|---|---|
{summary}

{format_table(rows, markdown=True)}
"""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.compile_check", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="90,80", help="compute capabilities, comma separated (default 90,80)")
    ap.add_argument("--kernels", default="", help="kernel names or modules (lstm, rnn, _lstm_fwd_step, ...)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help=f"subset of {','.join(DTYPES)}")
    ap.add_argument("--align", default=",".join(ALIGNS), help="aligned,unaligned (see module doc)")
    ap.add_argument("--config", action="append", default=None, metavar="B,H,K,WARPS,STAGES",
                    help="compile these tile configs instead of the kernels' lists (repeatable)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes (default 2)")
    ap.add_argument("--csv", default="", help="write one row per compile here")
    ap.add_argument("--markdown", default="", help="write the table with its provenance here")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)

    if _interpret_env_on():
        print("compile_check: ignoring TRITON_INTERPRET=1 (the check needs the real compiler)", file=sys.stderr)
    _drop_interpreter()
    archs = [int(a) for a in args.arch.split(",") if a]
    for a in archs:
        if a not in ARCHS:
            ap.error(f"--arch {a}: supported {sorted(ARCHS)}")
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"--dtypes {d}: supported {DTYPES}")
    aligns = [a for a in args.align.split(",") if a]
    for a in aligns:
        if a not in ALIGNS:
            ap.error(f"--align {a}: supported {ALIGNS}")
    configs = [_parse_config(c) for c in args.config] if args.config else None
    kernels = [k for k in args.kernels.split(",") if k]

    import triton

    jobs = collect_jobs(kernels, archs, dtypes, aligns, configs)
    print(f"compile_check: triton {triton.__version__}, {len(jobs)} compiles, {args.jobs} process(es)",
          file=sys.stderr)

    def progress(r: Result, done: int, total: int):
        if not args.quiet:
            print(f"[{done}/{total}] {r.kernel} {r.arch} {r.dtype} {r.align} {r.BLOCK_B}x{r.BLOCK_H}x{r.BLOCK_K} "
                  f"w{r.num_warps} s{r.num_stages}: {r.status} regs={r.registers} spill={r.spill_bytes} "
                  f"smem={r.shared_bytes} ({r.seconds:.1f}s)", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    results = run_jobs(jobs, args.jobs, progress)
    seconds = time.perf_counter() - t0
    rows = summarize(results)
    print(format_table(rows))
    regs = max_registers(rows)
    print("\nmax registers: " + ", ".join(f"{k}@{a}={v}" for (k, a), v in sorted(regs.items())))
    fails = failed(results)
    for r in fails:
        if r.error:
            print(f"ERROR {r.kernel} {r.arch} {r.dtype} {r.align} {r.BLOCK_B}x{r.BLOCK_H}x{r.BLOCK_K}: {r.error}")
    print(f"{len(results)} compiles in {seconds:.1f} s; {len(fails)} failing "
          f"({sum(r.status == 'N/A' for r in results)} n/a)")
    if args.csv and results:
        write_csv(args.csv, results)
    if args.markdown and results:
        command = "python -m kernels.compile_check " + " ".join(argv if argv is not None else sys.argv[1:])
        write_markdown(args.markdown, rows, results, command.strip(), seconds, args.jobs)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
