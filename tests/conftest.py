"""Shared test setup.

TRITON_INTERPRET=1 must be set before triton decorates any kernel, i.e. before
kvtp_kernels is imported, so that the Triton backend runs on CPU tensors here.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import kvtp_kernels  # noqa: E402,F401  (registers the ops under the interpreter)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["reference", "cpu", "triton"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
