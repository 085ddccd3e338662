"""Compile every launch variant of a Triton op for sm_90 ahead of time, no GPU needed.

    TRITON_INTERPRET=0 python -m tests.compile_sm90 {prune,merge}

The interpreter cannot see GPU-only compile errors (a loop-carried variable that changes
shape, the float64 MMA rejecting a 16-bit operand width) nor register use. This records
the launches of the op bodies on the shapes below (``bench.kernel_launches.record``),
compiles each as Triton's launcher specialises it (``compile_launch``), checks ptxas's
spill report (``bench.kernel_model.spill_bytes``) and the op's own checks, and prints
``compiled <number of launches>``. tests/test_prune_triton.py and test_merge_triton.py
run it through ``helpers.compile_for_sm90``.
"""

from __future__ import annotations

import re
import sys

import torch
from torch._higher_order_ops import triton_kernel_wrap
from triton.runtime import driver

# imported before ``record`` sets TRITON_INTERPRET=1 for its calls: the kernels stay JITFunctions
import kvtp_kernels.kernels.merge_triton as mt
import kvtp_kernels.kernels.prune_triton as pt
from bench import kernel_model as km
from bench.kernel_launches import Launch, Target, compile_launch, record

CAPABILITY = 90
bf, f16, f64, i32, i64 = torch.bfloat16, torch.float16, torch.float64, torch.int32, torch.int64


# ----------------------------------------------------------------------------------
# prune: kvtp::prune_tokens_triton / kvtp::keep_counts_triton
# ----------------------------------------------------------------------------------
def prune_calls() -> None:
    e = lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype)  # never written: no memory used
    headline = e(1, 64, 196, 3584, dtype=bf)  # B=1, T=64, N=196, D=3584, beta=0.2: K=2509
    pt.prune_tokens_triton(headline, e(1, 64), None, None, None, None, e(1, 64, 196), None, 2509, 2509, 2.0, 0)
    pt.prune_tokens_triton(headline, None, e(1, 64, 1152, dtype=bf), e(1, 2, 1152, dtype=bf), e(1, dtype=f64),
                           e(1, dtype=f64), None, None, 2509, 2509, 2.0, 0)
    pt.prune_tokens_triton(e(2, 64, 196, 3584, dtype=bf), e(2, 64), None, None, None, None, None, None,
                           3763, 7526, 2.0, 0)
    pt.prune_tokens_triton(e(1, 8, 19, 32, dtype=f16), None, e(1, 8, 24), e(1, 2, 24), e(1, dtype=f64),
                           e(1, dtype=f64), e(1, 8, 19), None, 30, 30, 2.0, 1)
    counts = torch.tensor([[4, 4, 4, 4, 4, 4, 3, 3]], dtype=i32)  # checked on the host: in [0, N], summing to 30
    pt.prune_tokens_triton(e(1, 8, 19, 32), None, None, None, None, None, None, counts, 0, 30, 2.0, 0)
    pt.prune_tokens_triton(e(1, 1, 1, 1, dtype=f64), e(1, 1), None, None, None, None, None, None, 1, 1, 2.0, 1)
    pt.keep_counts_triton(e(2, 64), None, None, None, None, 196, 3763, 0.3, 2.0, 0, False)
    pt.keep_counts_triton(None, e(2, 64, 24, dtype=bf), e(2, 3, 24, dtype=bf), None, None, 196, 3763, 0.3, 2.0, 0,
                          True)
    pt.keep_counts_triton(e(1, 1024), None, None, None, None, 49, 10035, 0.2, 2.0, 0, False)


def check_prune(number: int, launch: Launch, ptx: str) -> None:
    name = launch.name
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
def merge_calls() -> None:
    e = lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype)
    llava = e(2, 64, 196, 3584, dtype=bf)  # LLaVA-Video-7B, 2 videos; keys = tokens
    mt.merge_neighbors_triton(llava, llava, e(2, 64, 196), e(7526, dtype=i64), 32, False)
    mt.merge_neighbors_triton(llava, llava, e(2, 64, 196), e(7526, dtype=i64), 32, True)
    mt.merge_neighbors_triton(llava, llava, e(2, 64, 196), e(7526, dtype=i64), 0, True)
    mt.merge_neighbors_triton(e(1, 8, 19, 111), e(1, 8, 19, 24, dtype=f16), e(1, 8, 19, dtype=bf),
                              e(30, dtype=i64), 18, True)
    mt.merge_neighbors_triton(e(1, 8, 196, 64, dtype=f16), e(1, 8, 196, 64, dtype=f64), e(1, 8, 196, dtype=f64),
                              e(300, dtype=i64), 195, False)
    mt.merge_neighbors_triton(e(1, 8, 11, 32, dtype=f64), e(1, 8, 11, 8), e(1, 8, 11), e(40, dtype=i64), 6, True)


def check_merge(number: int, launch: Launch, ptx: str) -> None:
    select = launch.name == "_merge_select_kernel"
    dmma = len(re.findall(r"mma\.sync\.aligned\.m8n8k4[^\n]*f64", ptx))
    # Triton < 3.7 lowers the float64 tl.dot to FMAs on sm_90 (no DMMA; mt.select_warps gives it 8 warps)
    assert (dmma > 0) == (select and not mt._TRITON_BEFORE_3_7), dmma
    arguments = {k: v for k, v in launch.values().items() if k != "num_warps"}
    accesses = triton_kernel_wrap.identify_accessed_tensors(launch.kernel, arguments, {})
    written = ["neighbors_ptr", "coefs_ptr", "merging_ptr"] if select else ["out_ptr"]
    assert sorted(dep.name for dep in accesses.read_writes.writes) == sorted(written), accesses.read_writes.writes


OPS = {"prune": (prune_calls, check_prune), "merge": (merge_calls, check_merge)}


def main(argv: list[str]) -> None:
    (op,) = argv
    calls, check = OPS[op]
    with record(CAPABILITY) as recorder:
        calls()
    driver.set_active(Target(CAPABILITY))  # torch.compile's mutation analysis asks for the active target
    for number, launch in enumerate(recorder.launches):
        ptx = compile_launch(launch, CAPABILITY).asm["ptx"]
        assert km.spill_bytes(ptx, CAPABILITY) == 0, launch.name
        check(number, launch, ptx)
    print("compiled", len(recorder.launches))


if __name__ == "__main__":
    main(sys.argv[1:])
