"""What triton's Gluon (``triton.experimental.gluon``) can express of the parity design of docs/PERFORMANCE.md:
compiles one small kernel per building block for sm_90a without a GPU and reads its TTGIR / SASS.

    env -u TRITON_INTERPRET python -m experiments.gluon_probe

Blocks (each a few lines, not the design itself):

- ``resident_w``: a W fragment loaded once into registers in the MMA's B-operand layout (``DotOperandLayout``)
  and used by ``mma_v2`` at every step of a loop: does the loop read W from shared memory (LDSM / LDS bytes per
  step beyond the A operand's)?
- ``distributed_sum``: split-K partial sums (slice, M, N) on one warp per slice, summed over the slices and
  converted to a layout that gives each output to one warp before the pointwise work and the store
  (``epilogue_repeat`` of experiments/compile_check.py).
- ``chunked_gather``: the gathered operand copied global -> shared in chunks with ``async_copy`` (cp.async) and
  multiplied chunk by chunk while later chunks are in flight (``wait_group``: LDGSTS and DEPBAR in SASS).
- ``poller``: ``warp_specialize`` with a one-warp partition that polls a per-producer flag (acquire atomics) and
  releases the compute warps through an ``mbarrier``.

Prints one line per block: compiled or the error, and what the SASS shows. Static only: nothing here runs.
"""
from __future__ import annotations

import sys

from . import compile_check as cc

cc._drop_interpreter()

from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.language.nvidia.ampere import async_copy, mbarrier, mma_v2  # noqa: E402

M, K, N, S = 16, 256, 32, 4  # batch tile, reduction depth, units, K slices


@gluon.jit
def resident_w(h, w, out, T, M: gl.constexpr, K: gl.constexpr, N: gl.constexpr):
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 4], instr_shape=[16, 8])
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    k = gl.arange(0, K, layout=gl.SliceLayout(1, blk))
    n = gl.arange(0, N, layout=gl.SliceLayout(0, blk))
    wb = gl.convert_layout(gl.load(w + k[:, None] * N + n[None, :]), gl.DotOperandLayout(1, mma, 2))
    m = gl.arange(0, M, layout=gl.SliceLayout(1, blk))
    kk = gl.arange(0, K, layout=gl.SliceLayout(0, blk))
    mo = gl.arange(0, M, layout=gl.SliceLayout(1, mma))
    no = gl.arange(0, N, layout=gl.SliceLayout(0, mma))
    for t in range(T):
        a = gl.load(h + t * M * K + m[:, None] * K + kk[None, :])
        acc = mma_v2(gl.convert_layout(a, gl.DotOperandLayout(0, mma, 2)), wb, gl.zeros([M, N], gl.float32, mma))
        gl.store(out + t * M * N + mo[:, None] * N + no[None, :], acc)


@gluon.jit
def distributed_sum(p, out, S: gl.constexpr, M: gl.constexpr, N: gl.constexpr):
    part: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 4, 8], [4, 1, 1], [2, 1, 0])
    one: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [2, 2], [1, 0])  # (16, 32): each element in one warp
    s = gl.arange(0, S, layout=gl.SliceLayout(1, gl.SliceLayout(2, part)))
    m = gl.arange(0, M, layout=gl.SliceLayout(0, gl.SliceLayout(2, part)))
    n = gl.arange(0, N, layout=gl.SliceLayout(0, gl.SliceLayout(1, part)))
    x = gl.load(p + s[:, None, None] * M * N + m[None, :, None] * N + n[None, None, :])
    z = gl.convert_layout(gl.sum(x, axis=0), one)
    y = 1.0 / (1.0 + gl.exp(-z))
    mo = gl.arange(0, M, layout=gl.SliceLayout(1, one))
    no = gl.arange(0, N, layout=gl.SliceLayout(0, one))
    gl.store(out + mo[:, None] * N + no[None, :], y)


@gluon.jit
def chunked_gather(h, w, out, M: gl.constexpr, K: gl.constexpr, N: gl.constexpr, CH: gl.constexpr):
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 4], instr_shape=[16, 8])
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    smem: gl.constexpr = gl.SwizzledSharedLayout(8, 1, 8, [1, 0])
    KC: gl.constexpr = K // CH
    bufs = gl.allocate_shared_memory(gl.bfloat16, [CH, M, KC], smem)  # CH buffers of (M, KC)
    m = gl.arange(0, M, layout=gl.SliceLayout(1, blk))
    kc = gl.arange(0, KC, layout=gl.SliceLayout(0, blk))
    for c in gl.static_range(CH):  # every chunk in flight at once
        async_copy.async_copy_global_to_shared(bufs.index(c), h + m[:, None] * K + c * KC + kc[None, :])
        async_copy.commit_group()
    k = gl.arange(0, KC, layout=gl.SliceLayout(1, blk))
    n = gl.arange(0, N, layout=gl.SliceLayout(0, blk))
    acc = gl.zeros([M, N], gl.float32, mma)
    for c in gl.static_range(CH):  # multiply chunk c while chunks c+1.. are still arriving
        async_copy.wait_group(CH - 1 - c)
        a = bufs.index(c).load(gl.DotOperandLayout(0, mma, 2))
        wc = gl.convert_layout(gl.load(w + (c * KC + k[:, None]) * N + n[None, :]), gl.DotOperandLayout(1, mma, 2))
        acc = mma_v2(a, wc, acc)
    mo = gl.arange(0, M, layout=gl.SliceLayout(1, mma))
    no = gl.arange(0, N, layout=gl.SliceLayout(0, mma))
    gl.store(out + mo[:, None] * N + no[None, :], acc)


@gluon.jit
def _compute(bar, out):
    mbarrier.wait(bar, 0)
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    i = gl.arange(0, 128, layout=lay)
    gl.store(out + i, i.to(gl.float32))


@gluon.jit
def _poll(bar, flags, P: gl.constexpr):
    for q in range(P):  # one flag word per producer
        while gl.atomic_add(flags + q, 0, sem="acquire", scope="gpu") == 0:
            pass
    mbarrier.arrive(bar)


@gluon.jit
def poller(flags, out, P: gl.constexpr):
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    gl.warp_specialize([(_compute, (bar, out)), (_poll, (bar, flags, P))], [1], [24])
    mbarrier.invalidate(bar)


PROBES = [
    ("resident_w", resident_w, dict(h="*bf16", w="*bf16", out="*fp32", T="i32"), dict(M=M, K=K, N=N), 4),
    ("distributed_sum", distributed_sum, dict(p="*fp32", out="*fp32"), dict(S=S, M=M, N=N), 4),
    ("chunked_gather", chunked_gather, dict(h="*bf16", w="*bf16", out="*fp32"), dict(M=M, K=K, N=N, CH=4), 4),
    ("poller", poller, dict(flags="*i32", out="*fp32"), dict(P=8), 4),
]


def compile_probe(fn, sig: dict, consts: dict, warps: int, arch: int = 90):
    """``triton.compile`` of a Gluon kernel for ``GPUTarget("cuda", arch, 32)`` (aligned pointers)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    full = {p.name: ("constexpr" if p.name in consts else sig[p.name]) for p in fn.params}
    attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(fn.params) if full[p.name].startswith("*")}
    src = GluonASTSource(fn, full, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


def describe(name: str, kernel) -> str:
    """What the SASS / TTGIR show for one probe."""
    from . import predict as pr

    ins = pr.parse_sass(cc.cuobjdump(kernel.asm["cubin"], "-sass"), kernel.metadata.name)
    ops = lambda lo, hi: [i for i in ins if lo <= i.addr <= hi]  # noqa: E731
    n_of = lambda xs, b: sum(1 for i in xs if i.base == b)  # noqa: E731
    regs = cc.resource_usage(kernel.asm["cubin"], kernel.metadata.name)
    head = f"{regs['registers']} registers, {regs['stack_bytes'] + regs['local_bytes']} B spill"
    if name == "resident_w":
        lo, hi = max(pr.loops(ins), key=lambda lp: n_of(ops(*lp), "HMMA"))
        body = ops(lo, hi)
        smem = sum(pr.mem_bytes(i) for i in body if i.base in ("LDS", "LDSM"))
        return (f"{head}; per loop step and warp: {n_of(body, 'HMMA')} HMMA, {smem} B read from shared memory "
                f"(the A operand alone is {M * K * 2} B), {n_of(body, 'LDG')} LDG")
    if name == "distributed_sum":
        return f"{head}; epilogue_repeat {cc.epilogue_repeat(kernel.asm['ttgir'])} (1 = each output in one warp)"
    if name == "chunked_gather":
        deps = [i.operands for i in ins if i.base == "DEPBAR"]
        return f"{head}; {n_of(ins, 'LDGSTS')} LDGSTS, waits {deps}, {n_of(ins, 'HMMA')} HMMA"
    return (f"{head}; {n_of(ins, 'ATOMG') + n_of(ins, 'LDG')} polling loads, {n_of(ins, 'SYNCS')} mbarrier "
            f"(SYNCS) instructions, {sum(1 for i in ins if i.op.startswith('USETMAXREG'))} setmaxnreg")


def main() -> int:
    for name, fn, sig, consts, warps in PROBES:
        try:
            print(f"{name}: compiled for sm_90a; {describe(name, compile_probe(fn, sig, consts, warps))}")
        except Exception as e:  # noqa: BLE001 - the probe reports what does not compile
            print(f"{name}: does not compile: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
