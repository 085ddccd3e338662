"""Shared test setup.

TRITON_INTERPRET=1 must be set before triton decorates any kernel, i.e. before
kvtp_kernels is imported, so that the Triton backend runs on CPU tensors here.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import DEVICE  # noqa: E402

import kvtp_kernels  # noqa: E402,F401  (registers the ops under the interpreter)


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


@pytest.fixture
def triton_device():
    """For the Triton test modules (``pytest.mark.usefixtures("triton_device")``): new tensors on
    helpers.DEVICE, the CPU under the interpreter, else the GPU."""
    torch.set_default_device(DEVICE)
    yield
    torch.set_default_device(None)


@pytest.fixture
def fake_safe_launches(monkeypatch):
    """Under TRITON_INTERPRET, ``wrap_triton`` hands back the interpreted kernel itself,
    which then runs even on the fake tensors of a trace (on a GPU it records the launch
    instead). Skip launches whose arguments are tensor subclasses (fake / functional),
    so that the op's fake path (the triton_op body: allocations only) can be tested.
    Returns the ``test_utils`` for ``torch.library.opcheck``."""
    if DEVICE != "cpu":
        return ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    real_wrap = torch.library.wrap_triton

    def wrap(kernel):
        launcher = real_wrap(kernel)

        class _Grid:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    if any(isinstance(a, torch.Tensor) and type(a) is not torch.Tensor for a in args):
                        return None
                    return launcher[grid](*args, **kwargs)
                return launch
        return _Grid()

    monkeypatch.setattr(torch.library, "wrap_triton", wrap)
    # test_aot_dispatch_dynamic traces the launches into a graph: GPU only
    return ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``): one intra-op
    thread is as fast, and far faster than two when the (shared) cores are busy (OpenMP threads then wait
    on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Lines a test wants in the terminal summary (e.g. the wall times of tests/test_lmms_eval.py's runs).
SUMMARY = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[SUMMARY] = []


@pytest.fixture(scope="session")
def summary_lines(pytestconfig) -> list:
    """Append a line here to print it in the terminal summary (section "kvtp timings")."""
    return pytestconfig.stash[SUMMARY]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(SUMMARY, [])
    if lines:
        terminalreporter.section("kvtp timings")
        for line in lines:
            terminalreporter.write_line(line)
