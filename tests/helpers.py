"""Shared test utilities: tolerances per dtype, error metrics, random inputs and losses that touch every
output, so that every gradient (final states included) is compared."""
from __future__ import annotations

import math

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# max |a - b| / max |b| per dtype, against torch.nn in the same dtype (fp64, fp32)
MAXREL_TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
# relative RMS against a float64 reference computed from the same (rounded) inputs
RELRMS_TOL = {torch.float16: 1e-2, torch.bfloat16: 2e-2}


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / max(scale, 1e-30)


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert not torch.isnan(a).any(), "NaN in result"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_close(a, b, dtype, what=""):
    """Tight per-dtype comparison: max-relative for fp64/fp32, relative RMS (NaN-checked) for fp16/bf16."""
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.isfinite(a.double()).all(), f"{what}: non-finite values"
    if dtype in MAXREL_TOL:
        err = max_rel(a, b)
        assert err <= MAXREL_TOL[dtype], f"{what}: max rel err {err:.3g} > {MAXREL_TOL[dtype]:.1g}"
    else:
        err = rel_rms(a, b)
        assert err <= RELRMS_TOL[dtype], f"{what}: rel RMS err {err:.3g} > {RELRMS_TOL[dtype]:.1g}"
    return err


def rand(*shape, dtype=torch.float64, device=DEVICE, scale=1.0, requires_grad=False):
    """Random normal values with no exact zeros."""
    t = torch.randn(*shape, dtype=torch.float64) * scale
    t = torch.where(t == 0, torch.full_like(t, 0.1), t)
    return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)


def loss_weights(i: int, shape: tuple) -> torch.Tensor:
    """The fixed random weights ``loss_of`` gives its ``i``-th output of ``shape`` (the same on every call)."""
    g = torch.Generator().manual_seed(1000 + i + 7 * len(shape) + int(math.prod(shape)))
    return torch.randn(shape, generator=g, dtype=torch.float64)


def loss_of(outputs):
    """A loss that depends on every output with distinct random weights (deterministic per position and
    shape), so that every gradient, the final states' included, is exercised."""
    total = 0.0
    for i, o in enumerate(outputs):
        if o is None:
            continue
        total = total + (o.double() * loss_weights(i, tuple(o.shape)).to(o.device)).sum()
    return total
