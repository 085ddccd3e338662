"""Where and how long: the environment every CSV row carries, and the CPU / GPU timers of the harness.

CPU = ``time.perf_counter`` around each call after a warm-up; GPU = ``triton.testing.do_bench``
(it zeroes a 256 MB buffer between runs, so every run starts from a cold L2); both keep every
run's time and report the median and p10/p90.
"""

from __future__ import annotations

import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


#: CPU timing defaults: warm-up calls, timed calls, and a cap on the timed loop's wall time
#: (at least MIN_REPS calls are always timed), so a slow baseline cannot stall a sweep.
DEFAULT_WARMUP = 3
DEFAULT_REPS = 20
DEFAULT_MAX_SECONDS = 2.0
MIN_REPS = 3
#: GPU timing: ``triton.testing.do_bench`` budgets in milliseconds.
GPU_WARMUP_MS = 25
GPU_REP_MS = 100

# ----------------------------------------------------------------------------------
# Environment row
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Environment:
    """Where a measurement was taken; every CSV row carries all of it."""

    device: str  # "cpu" or "cuda"
    device_name: str  # CPU model or GPU name
    cores: int  # logical CPUs visible to this process
    threads: int  # torch intra-op threads
    torch_version: str
    triton_version: str
    python_version: str
    git_sha: str

    @property
    def slug(self) -> str:
        """File-name stem for results, e.g. ``cpu-amd-epyc-2c`` or ``cuda-nvidia-h100-80gb-hbm3``."""
        name = re.sub(r"[^a-z0-9]+", "-", self.device_name.lower()).strip("-") or "unknown"
        return f"{self.device}-{name}-{self.cores}c" if self.device == "cpu" else f"{self.device}-{name}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def git_sha(repo: Path = REPO_ROOT) -> str:
    """Short HEAD sha, ``-dirty`` appended when tracked files differ from it; "unknown" outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else (sha or "unknown")


def triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return triton.__version__


def environment(device: torch.device) -> Environment:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_model()
    return Environment(
        device=device.type,
        device_name=name,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        triton_version=triton_version(),
        python_version=platform.python_version(),
        git_sha=git_sha(),
    )


# ----------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    reps: int


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_ms: Iterable[float]) -> Timing:
    values = sorted(times_ms)
    if not values:
        raise ValueError("summarize: no timings")
    return Timing(_quantile(values, 0.5), _quantile(values, 0.1), _quantile(values, 0.9), len(values))


def time_cpu(fn: Callable[[], Any], *, warmup: int = DEFAULT_WARMUP, reps: int = DEFAULT_REPS,
             max_seconds: float = DEFAULT_MAX_SECONDS) -> Timing:
    """Up to ``warmup`` untimed calls (fewer once ``max_seconds / 4`` have passed: the
    harness has already made one untimed call), then up to ``reps`` timed calls (at least
    ``MIN_REPS``, fewer than ``reps`` once ``max_seconds`` of timed calls have passed)."""
    warmup_end = time.perf_counter() + max_seconds / 4
    for _ in range(warmup):
        fn()
        if time.perf_counter() > warmup_end:
            break
    times = []
    budget_end = time.perf_counter() + max_seconds
    while len(times) < reps:
        start = time.perf_counter()
        fn()
        end = time.perf_counter()
        times.append((end - start) * 1e3)
        if end > budget_end and len(times) >= min(MIN_REPS, reps):
            break
    return summarize(times)


def time_cuda(fn: Callable[[], Any], *, warmup_ms: float = GPU_WARMUP_MS, rep_ms: float = GPU_REP_MS) -> Timing:
    """``triton.testing.do_bench`` with every per-run time kept (cold L2 before each run).

    Without triton: CUDA events around each call, with the same 256 MB L2 flush.
    """
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return summarize(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all"))
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    times = []
    deadline = time.perf_counter() + (warmup_ms + rep_ms) / 1e3
    while len(times) < MIN_REPS or time.perf_counter() < deadline:
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return summarize(times)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_sync_free(fn: Callable[[], Any]) -> bool:
    """True when one call of ``fn`` makes no device-to-host synchronisation.

    Runs ``fn`` under ``torch.cuda.set_sync_debug_mode("error")``, which raises on the
    first synchronising CUDA call (``.item()``, ``nonzero``, a copy to the host, ...).
    """
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        free = True
    except RuntimeError as exc:
        if "synchroniz" not in str(exc).lower():
            raise
        free = False
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    return free

