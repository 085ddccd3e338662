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


def pytest_report_header(config):
    """The versions a run tested (CI runs the model tests with several transformers releases)."""
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    try:
        import transformers

        hf = transformers.__version__
    except ImportError:
        hf = "not installed"
    return f"kvtp_kernels: torch {torch.__version__}, triton {version('triton')}, transformers {hf}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): one intra-op
    thread is as fast, and far faster than two when the (shared) cores are busy (OpenMP threads then wait
    on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
