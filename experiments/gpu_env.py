"""What a GPU run ran on, written first: device, clocks, driver, library versions, commit, and two measured
ceilings (device-to-device copy bandwidth, dense matmul rates), in a few seconds.

    python -m experiments.gpu_env --out OUT/env.json

The commit comes from the file ``REVISION`` at the repository root when present (a copy of the tree sent to
a GPU machine has no .git; write it with ``git rev-parse HEAD > REVISION`` before sending), else from git.
``source_sha256`` hashes the tracked Python sources as sent, so a result can be matched to a commit later:
``python -m experiments.gpu_env --source-hash`` prints the same hash for a local checkout.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from .results import commit_of

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("kernels", "models", "experiments", "tests")
SMI_FIELDS = ("name", "driver_version", "pstate", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
              "clocks.applications.graphics", "power.draw", "power.limit", "temperature.gpu", "memory.total",
              "memory.used", "compute_mode", "mig.mode.current", "persistence_mode")


def revision() -> str:
    """The measured commit: REVISION's first word when the file exists, else git's HEAD (+dirty)."""
    return commit_of(ROOT)


def source_sha256() -> str:
    """sha256 over (path, content) of every .py file under the source folders, in sorted order."""
    h = hashlib.sha256()
    for d in SOURCE_DIRS:
        for p in sorted((ROOT / d).rglob("*.py")):
            if "__pycache__" in p.parts:
                continue
            h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _smi(fields) -> tuple[list[str] | None, str]:
    try:
        r = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{type(e).__name__}: {e}"
    vals = [v.strip() for v in (r.stdout.strip().splitlines() or [""])[0].split(",")]
    if r.returncode != 0 or len(vals) != len(fields):
        return None, (r.stderr or r.stdout).strip()[:200]
    return vals, ""


def nvidia_smi() -> dict:
    """nvidia-smi's view of GPU 0 (clocks as found: nothing here changes them). A field this driver does not
    know is asked for alone, so one unknown name costs only that field."""
    vals, err = _smi(SMI_FIELDS)
    if vals is not None:
        return dict(zip(SMI_FIELDS, vals))
    if err.startswith(("FileNotFoundError", "OSError", "TimeoutExpired")):
        return {"error": err}
    out = {}
    for f in SMI_FIELDS:
        v, e = _smi([f])
        out[f] = v[0] if v is not None else f"error: {e}"
    return out


def device_info() -> dict:
    if not torch.cuda.is_available():
        return {"device": "cpu", "gpu": f"cpu ({platform.machine()})", "note": "no CUDA: CPU dry run, not a GPU"}
    p = torch.cuda.get_device_properties(0)
    return {
        "device": "cuda", "gpu": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
        "l2_mb": getattr(p, "L2_cache_size", 0) / 2**20, "memory_gib": p.total_memory / 2**30,
        "regs_per_sm": getattr(p, "regs_per_multiprocessor", None),
        "shared_per_block_optin_kb": getattr(p, "shared_memory_per_block_optin", 0) / 1024,
        "device_count": torch.cuda.device_count(),
    }


def versions() -> dict:
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = ""
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "triton": tv, "cuda": torch.version.cuda or "",
            "cudnn": torch.backends.cudnn.version() if cuda else "", "python": platform.python_version(),
            "numpy": _version("numpy"), "pandas": _version("pandas"), "matplotlib": _version("matplotlib")}


def _version(name: str) -> str:
    try:
        return __import__(name).__version__
    except ImportError:
        return ""


def collect() -> dict:
    """Everything above, the peaks (``measure.measure_peaks``) with the seconds they took, and nvidia-smi
    before and after the peaks (idle and busy clocks)."""
    from .measure import measure_peaks

    t0 = time.perf_counter()
    env = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": revision(),
           "source_sha256": source_sha256(), "host": platform.node(), **device_info(), "versions": versions(),
           "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("FUSEDRNN_", "TRITON_", "CUDA_"))}}
    cuda = torch.cuda.is_available()
    if cuda:
        env["nvidia_smi_before"] = nvidia_smi()
    t1 = time.perf_counter()
    peaks = measure_peaks(torch.device("cuda" if cuda else "cpu"))
    env["peaks"] = peaks.__dict__
    env["peaks_seconds"] = time.perf_counter() - t1
    if cuda:
        env["nvidia_smi_after"] = nvidia_smi()
    env["seconds"] = time.perf_counter() - t0
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_env", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default: print)")
    p.add_argument("--source-hash", action="store_true", help="print source_sha256 of this checkout and exit")
    args = p.parse_args(argv)
    if args.source_hash:
        print(source_sha256())
        return 0
    env = collect()
    text = json.dumps(env, indent=1, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    pk = env["peaks"]
    print(f"env: {env['gpu']} | commit {env['commit']} | torch {env['versions']['torch']} triton "
          f"{env['versions']['triton']} cuda {env['versions']['cuda']} cudnn {env['versions']['cudnn']} | "
          f"copy {pk['hbm_gbs']:.4g} GB/s, bf16 matmul {pk['tflops_bf16']:.4g} TFLOP/s "
          f"({env['peaks_seconds']:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
