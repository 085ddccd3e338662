"""Compile every launch variant of a Triton op for sm_90 ahead of time, no GPU needed.

    TRITON_INTERPRET=0 python -m tests.compile_sm90 {prune,merge}

The interpreter cannot see GPU-only compile errors (a loop-carried variable that changes
shape, the float64 MMA rejecting a 16-bit operand width) nor register use. This records
the launches of the op bodies (``wrap_triton`` replaced by a recorder) on the shapes
below, compiles each as the launcher would specialise it (ints == 1 constexpr, multiples
of 16 marked divisible), checks ptxas's spill report and the op's own checks, and prints
``compiled <number of launches>``. tests/test_prune_triton.py and test_merge_triton.py
run it through ``helpers.compile_for_sm90``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from typing import NamedTuple

import torch
import triton
from torch._higher_order_ops import triton_kernel_wrap
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
         torch.int32: "i32", torch.int64: "i64"}
bf, f16, f64, i32, i64 = torch.bfloat16, torch.float16, torch.float64, torch.int32, torch.int64


class Launch(NamedTuple):
    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict  # constexprs, without num_warps
    num_warps: int

    def values(self) -> dict:
        return dict(zip(self.kernel.arg_names, self.args), **self.kwargs)


def record(calls) -> list[Launch]:
    """The launches ``calls()`` makes through ``torch.library.wrap_triton``, recorded, not run."""
    launches = []

    class Record:  # stands in for wrap_triton
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                kwargs = dict(kwargs)
                num_warps = kwargs.pop("num_warps")
                launches.append(Launch(self.kernel, grid, args, kwargs, num_warps))
            return launch

    torch.library.wrap_triton = Record
    calls()
    return launches


def source(launch: Launch) -> ASTSource:
    """The kernel specialised as Triton's launcher would (ints == 1 constexpr, multiples of 16 divisible)."""
    values = launch.values()
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(launch.kernel.arg_names):
        v = values[name]
        if name in launch.kwargs or (type(v) is int and v == 1):  # the launcher specialises ints == 1 too
            signature[name], constexprs[(i,)] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[name], attrs[(i,)] = "*" + TYPES[v.dtype], [["tt.divisibility", 16]]
        else:
            signature[name] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return ASTSource(launch.kernel, signature, constexprs, attrs)


def assert_no_spills(name: str, ptx: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        report = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"],
                                capture_output=True, text=True, check=True).stderr
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    assert spills and not any(spills), (name, report)


# ----------------------------------------------------------------------------------
# prune: kvtp::prune_tokens_triton / kvtp::keep_counts_triton
# ----------------------------------------------------------------------------------
def prune_launches() -> list[Launch]:
    import kvtp_kernels.kernels.prune_triton as pt

    e = lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype, device="meta")

    def calls():
        headline = e(1, 64, 196, 3584, dtype=bf)  # B=1, T=64, N=196, D=3584, beta=0.2: K=2509
        pt.prune_tokens_triton(headline, e(1, 64), None, None, None, None, e(1, 64, 196), None, 2509, 2509, 2.0, 0)
        pt.prune_tokens_triton(headline, None, e(1, 64, 1152, dtype=bf), e(1, 2, 1152, dtype=bf), e(1, dtype=f64),
                               e(1, dtype=f64), None, None, 2509, 2509, 2.0, 0)
        pt.prune_tokens_triton(e(2, 64, 196, 3584, dtype=bf), e(2, 64), None, None, None, None, None, None,
                               3763, 7526, 2.0, 0)
        pt.prune_tokens_triton(e(1, 8, 19, 32, dtype=f16), None, e(1, 8, 24), e(1, 2, 24), e(1, dtype=f64),
                               e(1, dtype=f64), e(1, 8, 19), None, 30, 30, 2.0, 1)
        pt.prune_tokens_triton(e(1, 8, 19, 32), None, None, None, None, None, None, e(1, 8, dtype=i32), 0, 30, 2.0, 0)
        pt.prune_tokens_triton(e(1, 1, 1, 1, dtype=f64), e(1, 1), None, None, None, None, None, None, 1, 1, 2.0, 1)
        pt.keep_counts_triton(e(2, 64), None, None, None, None, 196, 3763, 0.3, 2.0, 0, False)
        pt.keep_counts_triton(None, e(2, 64, 24, dtype=bf), e(2, 3, 24, dtype=bf), None, None, 196, 3763, 0.3, 2.0, 0,
                              True)
        pt.keep_counts_triton(e(1, 1024), None, None, None, None, 49, 10035, 0.2, 2.0, 0, False)

    return record(calls)


def check_prune(number: int, launch: Launch, ptx: str) -> None:
    name = launch.kernel.fn.__name__
    if number == 2:  # the headline copy: the whole GPU, 16-byte loads
        assert name == "_copy_rows_kernel"
        assert launch.grid[0] * launch.grid[1] >= 264, launch.grid
        assert len(re.findall(r"ld\.global[^\n]*v4", ptx)) >= 8
    if number == 3:  # similarity and distinctiveness sums: products rounded on their own, never FMAs
        assert name == "_plan_kernel" and "mul.rn.f64" in ptx


# ----------------------------------------------------------------------------------
# merge: kvtp::merge_neighbors_triton (float64 MMA in the select kernel only, and
# torch.compile's mutation analysis of user kernels on the same launches)
# ----------------------------------------------------------------------------------
class _Driver:  # the mutation analysis (and the select kernel's warps) ask the active driver for its target
    def get_current_target(self):
        return TARGET


def merge_launches() -> list[Launch]:
    import kvtp_kernels.kernels.merge_triton as mt

    triton.runtime.driver.set_active(_Driver())
    e = lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype)

    def calls():
        llava = e(2, 64, 196, 3584, dtype=bf)  # LLaVA-Video-7B, 2 videos; keys = tokens
        mt.merge_neighbors_triton(llava, llava, e(2, 64, 196), e(7526, dtype=i64), 32, False)
        mt.merge_neighbors_triton(llava, llava, e(2, 64, 196), e(7526, dtype=i64), 32, True)
        mt.merge_neighbors_triton(llava, llava, e(2, 64, 196), e(7526, dtype=i64), 0, True)
        mt.merge_neighbors_triton(e(1, 8, 19, 111), e(1, 8, 19, 24, dtype=f16), e(1, 8, 19, dtype=bf),
                                  e(30, dtype=i64), 18, True)
        mt.merge_neighbors_triton(e(1, 8, 196, 64, dtype=f16), e(1, 8, 196, 64, dtype=f64), e(1, 8, 196, dtype=f64),
                                  e(300, dtype=i64), 195, False)
        mt.merge_neighbors_triton(e(1, 8, 11, 32, dtype=f64), e(1, 8, 11, 8), e(1, 8, 11), e(40, dtype=i64), 6,
                                  True)

    return record(calls)


def check_merge(number: int, launch: Launch, ptx: str) -> None:
    import kvtp_kernels.kernels.merge_triton as mt

    select = launch.kernel.fn.__name__ == "_merge_select_kernel"
    dmma = len(re.findall(r"mma\.sync\.aligned\.m8n8k4[^\n]*f64", ptx))
    # Triton < 3.7 lowers the float64 tl.dot to FMAs on sm_90 (no DMMA; mt.select_warps gives it 8 warps)
    assert (dmma > 0) == (select and not mt._TRITON_BEFORE_3_7), dmma
    accesses = triton_kernel_wrap.identify_accessed_tensors(launch.kernel, launch.values(), {})
    written = ["neighbors_ptr", "coefs_ptr", "merging_ptr"] if select else ["out_ptr"]
    assert sorted(dep.name for dep in accesses.read_writes.writes) == sorted(written), accesses.read_writes.writes


OPS = {"prune": (prune_launches, check_prune), "merge": (merge_launches, check_merge)}


def main(argv: list[str]) -> None:
    (op,) = argv
    launches, check = OPS[op]
    recorded = launches()
    for number, launch in enumerate(recorded):
        compiled = triton.compile(source(launch), target=TARGET, options={"num_warps": launch.num_warps})
        ptx = compiled.asm["ptx"]
        assert_no_spills(launch.kernel.fn.__name__, ptx)
        check(number, launch, ptx)
    print("compiled", len(recorded))


if __name__ == "__main__":
    main(sys.argv[1:])
