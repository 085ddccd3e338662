"""Constants, assertions and Triton helpers shared by the op tests.

Test files import these by name (``from helpers import assert_same``) and never from
each other; the fixtures they share (``triton_device``, ``fake_safe_launches``) are in
conftest.py. The sm_90 compile script that both Triton test files run is
tests/compile_sm90.py (``compile_for_sm90`` below runs it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

#: The token dtypes every op test covers.
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

#: PruMerge/ToMe rows are new values computed in float64 and rounded once; backends may
#: differ in the float64 summation order, i.e. by at most one rounding of the output dtype.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 8e-3)}


def assert_same(out, expected):
    """Two ``prune`` outputs are equal: every index tensor exactly, the token rows bit for bit."""
    assert out.frame_counts.dtype == torch.int32 and out.cu_seqlens.dtype == torch.int32
    assert out.indices.dtype == torch.int64 and out.frame_cu_seqlens.dtype == torch.int32
    torch.testing.assert_close(out.frame_counts, expected.frame_counts, rtol=0, atol=0)
    torch.testing.assert_close(out.indices, expected.indices, rtol=0, atol=0)
    torch.testing.assert_close(out.cu_seqlens, expected.cu_seqlens, rtol=0, atol=0)
    torch.testing.assert_close(out.frame_cu_seqlens, expected.frame_cu_seqlens, rtol=0, atol=0)
    assert out.tokens.dtype == expected.tokens.dtype
    assert torch.equal(out.tokens.view(torch.uint8), expected.tokens.view(torch.uint8)), \
        "token rows are not bit-identical"
    assert out.max_seqlen == expected.max_seqlen


# ----------------------------------------------------------------------------------
# Triton: under the interpreter (conftest.py's default) the kernels run on CPU tensors;
# with TRITON_INTERPRET=0 on a CUDA machine the same tests run on the GPU.
# ----------------------------------------------------------------------------------
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETING else "cuda"

#: ``pytestmark`` of the Triton test files.
needs_triton_device = pytest.mark.skipif(
    not INTERPRETING and not torch.cuda.is_available(),
    reason="needs a CUDA device or TRITON_INTERPRET=1",
)


class LaunchCounter:
    """Stands in for ``torch.library.wrap_triton`` and lists the names of the kernels launched."""

    def __init__(self, wrap_triton):
        self.wrap_triton = wrap_triton
        self.kernels = []

    def __call__(self, kernel):
        self.kernels.append(kernel.fn.__name__)
        return self.wrap_triton(kernel)


_ROOT = Path(__file__).resolve().parents[1]


def run_compiler(args: list[str], **env: str) -> str:
    """``python <args>`` from the repository root with the interpreter off (Triton compiles
    for a GPU, none needed), ``env`` added to the environment; returns what it prints.

    Skips the test where Triton has no ptxas. From the repository root, so that it compiles
    this checkout's kernels.
    """
    env = dict(os.environ, TRITON_INTERPRET="0", **env)
    result = subprocess.run([sys.executable, *args], cwd=_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if "ptxas" in result.stderr and "not found" in result.stderr.lower():
        pytest.skip("triton's ptxas is not available")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def compile_for_sm90(op: str) -> str:
    """Run tests/compile_sm90.py for ``op`` ("prune" or "merge"): what it prints (``compiled <launches>``)."""
    return run_compiler(["-m", "tests.compile_sm90", op]).strip()
