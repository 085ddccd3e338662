"""The one benchmark harness every ``bench/bench_*.py`` script uses.

A benchmark (:class:`Benchmark`) is a name, sweep points (:class:`Point`), providers
(:class:`Provider`: ours, baselines, roofs), a correctness oracle (``make_case`` builds
the inputs and the expected output, ``check`` compares a provider's output to it) and
a bytes-moved function. :func:`run_benchmark` does the same thing for every benchmark:

1. per point: build the inputs and the oracle's output once;
2. per provider: build its callable (setup such as ``torch.compile`` or precomputed
   indices happens here, outside the timed region), call it once, and compare the
   output to the oracle. A mismatch raises :class:`MismatchError` and stops the run;
3. on CUDA, call it once more under ``torch.cuda.set_sync_debug_mode("error")`` to
   record whether it is free of host syncs;
4. time it: CPU = ``time.perf_counter`` around each call after a warm-up, GPU =
   ``triton.testing.do_bench`` (it zeroes a 256 MB buffer between runs, so every run
   starts from a cold L2), median and p10/p90 of all runs;
5. record a :class:`Result` (a CSV row, see :data:`CSV_COLUMNS`).

Effective bandwidth: ``gbps = bytes_moved(point) / median`` with the bytes of the
*minimal* algorithm at that point (defined by each benchmark, the same for every
provider), so GB/s ratios equal speedups and ours can be read against the roofs.

New benchmarks: add ``bench/bench_<name>.py`` that builds a :class:`Benchmark` and
calls :func:`register` at import; :func:`discover` imports every such module, so
``python -m bench.run`` picks it up with no other change (see bench/README.md).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import math
import os
import pkgutil
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

#: CPU timing defaults: warm-up calls, timed calls, and a cap on the timed loop's wall time
#: (at least MIN_REPS calls are always timed), so a slow baseline cannot stall a sweep.
DEFAULT_WARMUP = 3
DEFAULT_REPS = 20
DEFAULT_MAX_SECONDS = 2.0
MIN_REPS = 3
#: GPU timing: ``triton.testing.do_bench`` budgets in milliseconds.
GPU_WARMUP_MS = 25
GPU_REP_MS = 100

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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


# ----------------------------------------------------------------------------------
# Benchmarks, providers, points
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One sweep point: a dtype, named sizes (``shape``) and other named parameters.

    Build with :meth:`make`; read with ``point["T"]``. Hashable, so it can key a dict.
    """

    dtype: torch.dtype
    shape: tuple[tuple[str, int], ...]
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, dtype: torch.dtype, shape: dict[str, int], **params: Any) -> Point:
        return cls(dtype, tuple(shape.items()), tuple(params.items()))

    def __getitem__(self, key: str) -> Any:
        for name, value in self.shape + self.params:
            if name == key:
                return value
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    @property
    def shape_str(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.shape)

    @property
    def params_str(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params)

    @property
    def label(self) -> str:
        return " ".join(s for s in (dtype_name(self.dtype), self.shape_str, self.params_str) if s)


@dataclass
class Case:
    """A point's inputs on a device and the oracle's output (computed once per point)."""

    point: Point
    device: torch.device
    inputs: dict[str, Any]
    expected: Any


@dataclass
class RunConfig:
    device: torch.device
    full: bool = False
    dtypes: tuple[torch.dtype, ...] | None = None  # None: the benchmark's own choice
    reps: int = DEFAULT_REPS
    warmup: int = DEFAULT_WARMUP
    max_seconds: float = DEFAULT_MAX_SECONDS
    providers: tuple[str, ...] | None = None  # None: all that run on the device
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    options: dict[str, Any] = field(default_factory=dict)  # benchmark-specific CLI flags


@dataclass(frozen=True)
class Provider:
    """One implementation being timed.

    Attributes:
        name: short, used in tables, CSV rows and ``--providers``.
        role: "ours", "baseline" or "roof".
        build: ``case -> fn``; ``fn()`` is what gets timed. Anything that should not be
            timed (compilation, precomputed indices, allocation of a source buffer)
            happens in ``build`` or in the first, untimed call of ``fn``.
        devices: device types it runs on.
        check: how :attr:`Benchmark.check` compares its output ("none": not comparable,
            e.g. a bandwidth roof that copies unrelated bytes); benchmark-defined values.
        optional: an exception while building, checking for syncs or timing becomes an
            "error: ..." row instead of stopping the run (e.g. ``torch.compile``, which
            may fail on some machines). A wrong *result* always stops the run.
        skip: ``(point, config) -> reason or None``: points where it does not run.
        description: one line for tables and the README.
    """

    name: str
    role: str
    build: Callable[[Case], Callable[[], Any]]
    devices: tuple[str, ...] = ("cpu", "cuda")
    check: str = "full"
    optional: bool = False
    skip: Callable[[Point, RunConfig], str | None] | None = None
    description: str = ""


class MismatchError(AssertionError):
    """A provider's output differs from the oracle's."""


@dataclass
class Result:
    bench: str
    point: Point
    provider: str
    role: str
    status: str  # "ok", "skipped: ...", "error: ..."
    timing: Timing | None = None
    bytes_moved: int | None = None
    setup_s: float | None = None  # build + first (untimed) call, e.g. torch.compile's compile time
    sync_free: bool | None = None  # CUDA only
    metrics: dict[str, Any] = field(default_factory=dict)  # extra per-row numbers (Benchmark.metrics)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def gbps(self) -> float | None:
        if self.timing is None or not self.bytes_moved:
            return None
        return self.bytes_moved / (self.timing.median_ms * 1e-3) / 1e9


@dataclass
class Benchmark:
    """What :func:`run_benchmark` needs to know about one op.

    Attributes:
        name: e.g. "prune".
        providers: every implementation (filtered by device and ``--providers``).
        points: ``config -> [Point]`` (quick or ``config.full`` sweep).
        make_case: ``(point, device) -> Case`` with the oracle's output in ``expected``.
        check: ``(case, provider, output) -> None``; raises :class:`MismatchError`.
        bytes_moved: ``point -> bytes`` of the minimal algorithm (None: no GB/s column).
        report: ``(results, config, env) -> str``: the headline text (targets etc.);
            default :func:`results_table`.
        plot: ``(results, path) -> None`` writes a figure; None: no plot.
        add_arguments: ``parser -> None`` adds benchmark-specific CLI flags, read back
            from ``config.options``.
        metrics: ``(case, provider, output) -> dict`` extra numbers per row (e.g. the
            sequence length of an end-to-end run); stored in the CSV's ``metrics`` column.
        sync_check: run :func:`is_sync_free` per provider on CUDA.
    """

    name: str
    description: str
    providers: list[Provider]
    points: Callable[[RunConfig], list[Point]]
    make_case: Callable[[Point, torch.device], Case]
    check: Callable[[Case, Provider, Any], None]
    bytes_moved: Callable[[Point], int | None] = lambda point: None
    report: Callable[[list[Result], RunConfig, Environment], str] | None = None
    plot: Callable[[list[Result], Path], None] | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    metrics: Callable[[Case, Provider, Any], dict[str, Any]] | None = None
    sync_check: bool = True


BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in BENCHMARKS and BENCHMARKS[benchmark.name] is not benchmark:
        raise ValueError(f"bench: a benchmark named {benchmark.name!r} is already registered")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def discover() -> dict[str, Benchmark]:
    """Imports every ``bench/bench_*.py`` (each registers its benchmark) and returns the registry."""
    for module in sorted(pkgutil.iter_modules([str(BENCH_DIR)]), key=lambda m: m.name):
        if module.name.startswith("bench_"):
            importlib.import_module(f"{__package__}.{module.name}")
    return BENCHMARKS


# ----------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------
def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def selected_providers(benchmark: Benchmark, config: RunConfig) -> list[Provider]:
    names = {p.name for p in benchmark.providers}
    if config.providers is not None:
        unknown = [n for n in config.providers if n not in names]
        if unknown:
            raise ValueError(f"bench {benchmark.name}: unknown provider(s) {unknown}; known: {sorted(names)}")
    return [p for p in benchmark.providers
            if config.device.type in p.devices and (config.providers is None or p.name in config.providers)]


def run_provider(benchmark: Benchmark, case: Case, provider: Provider, config: RunConfig) -> Result:
    point = case.point
    result = Result(benchmark.name, point, provider.name, provider.role, "ok",
                    bytes_moved=benchmark.bytes_moved(point))
    reason = provider.skip(point, config) if provider.skip is not None else None
    if reason:
        result.status = f"skipped: {reason}"
        return result
    device = config.device

    def guarded(step: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            return True, step()
        except MismatchError:
            raise
        except Exception as exc:
            if not provider.optional:
                raise
            result.status = f"error: {_first_line(exc)}"
            return False, None

    def setup() -> Any:
        start = time.perf_counter()
        fn = provider.build(case)
        output = fn()
        synchronize(device)
        result.setup_s = time.perf_counter() - start
        return fn, output

    ok, built = guarded(setup)
    if not ok:
        return result
    fn, output = built
    benchmark.check(case, provider, output)  # a mismatch stops the run, whatever the provider
    if benchmark.metrics is not None:
        result.metrics = dict(benchmark.metrics(case, provider, output))
    del output
    if device.type == "cuda" and benchmark.sync_check:
        ok, result.sync_free = guarded(lambda: is_sync_free(fn))
        if not ok:
            return result
    if device.type == "cuda":
        ok, timing = guarded(lambda: time_cuda(fn))
    else:
        ok, timing = guarded(lambda: time_cpu(fn, warmup=config.warmup, reps=config.reps,
                                              max_seconds=config.max_seconds))
    if ok:
        result.timing = timing
    return result


def run_benchmark(benchmark: Benchmark, config: RunConfig) -> list[Result]:
    """Every selected provider at every point; one progress-bar step per (point, provider)."""
    from tqdm.auto import tqdm

    points = benchmark.points(config)
    providers = selected_providers(benchmark, config)
    disable = None if config.progress is None else not config.progress  # None: auto (tty only)
    results: list[Result] = []
    with tqdm(total=len(points) * len(providers), desc=f"bench {benchmark.name}", unit="run",
              disable=disable, dynamic_ncols=True, file=sys.stderr) as bar:
        for point in points:
            bar.set_postfix_str(point.label, refresh=False)
            case = benchmark.make_case(point, config.device)
            for provider in providers:
                bar.set_postfix_str(f"{point.label} | {provider.name}")
                results.append(run_provider(benchmark, case, provider, config))
                bar.update()
            del case
            if config.device.type == "cuda":
                torch.cuda.empty_cache()
    return results


# ----------------------------------------------------------------------------------
# CSV
# ----------------------------------------------------------------------------------
CSV_COLUMNS = (
    "timestamp", "bench", "device", "device_name", "cores", "threads", "torch", "triton", "python", "git_sha",
    "dtype", "shape", "params", "provider", "role", "median_ms", "p10_ms", "p90_ms", "reps",
    "bytes_moved", "gbps", "setup_s", "sync_free", "metrics", "status",
)


def _fmt(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def csv_row(result: Result, env: Environment, timestamp: str) -> dict[str, str]:
    t = result.timing
    return {
        "timestamp": timestamp, "bench": result.bench, "device": env.device, "device_name": env.device_name,
        "cores": str(env.cores), "threads": str(env.threads), "torch": env.torch_version,
        "triton": env.triton_version, "python": env.python_version, "git_sha": env.git_sha,
        "dtype": dtype_name(result.point.dtype), "shape": result.point.shape_str, "params": result.point.params_str,
        "provider": result.provider, "role": result.role,
        "median_ms": _fmt(t and t.median_ms), "p10_ms": _fmt(t and t.p10_ms), "p90_ms": _fmt(t and t.p90_ms),
        "reps": "" if t is None else str(t.reps), "bytes_moved": "" if result.bytes_moved is None else
        str(result.bytes_moved), "gbps": _fmt(result.gbps, 4), "setup_s": _fmt(result.setup_s, 4),
        "sync_free": "" if result.sync_free is None else str(result.sync_free).lower(),
        "metrics": " ".join(f"{k}={v}" for k, v in result.metrics.items()), "status": result.status,
    }


def append_csv(path: Path, results: Sequence[Result], env: Environment) -> None:
    """Appends one row per result; writes the header when the file is new or empty.

    An existing file whose header differs from :data:`CSV_COLUMNS` is refused (rather
    than mixing two layouts in one file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != CSV_COLUMNS:
            raise ValueError(f"bench: {path} has a different header ({header}); expected {list(CSV_COLUMNS)}. "
                             "Write to a new file (--csv PATH).")
    timestamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        for result in results:
            writer.writerow(csv_row(result, env, timestamp))


# ----------------------------------------------------------------------------------
# Text tables and plots
# ----------------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown pipe table, padded so it also reads well in a terminal."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def environment_line(env: Environment) -> str:
    return (f"device: {env.device} ({env.device_name}, {env.cores} cores, {env.threads} torch threads) | "
            f"torch {env.torch_version} | triton {env.triton_version} | python {env.python_version} | "
            f"git {env.git_sha}")


def results_table(results: Sequence[Result], config: RunConfig | None = None, env: Environment | None = None) -> str:
    """One row per point, one column of median ms per provider (the default report)."""
    providers = list(dict.fromkeys(r.provider for r in results))
    by_point: dict[Point, dict[str, Result]] = {}
    for r in results:
        by_point.setdefault(r.point, {})[r.provider] = r
    rows = []
    for point, row in by_point.items():
        cells = [point.label]
        for name in providers:
            r = row.get(name)
            cells.append("-" if r is None else ms(r.timing.median_ms) if r.timing else r.status.split(":")[0])
        rows.append(cells)
    return format_table(["point (median ms)", *providers], rows)


def plot_lines(results: Sequence[Result], path: Path, *, x: str, panel: Callable[[Point], str],
               keep: Callable[[Point], bool] = lambda point: True, title: str = "") -> None:
    """Median latency against ``point[x]``, one line per provider, one panel per ``panel(point)``;
    log-log axes, p10-p90 as a band."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    timed = [r for r in results if r.timing is not None and keep(r.point)]
    panels = list(dict.fromkeys(panel(r.point) for r in timed))
    if not panels:
        return
    providers = list(dict.fromkeys(r.provider for r in timed))
    colors = {name: f"C{i % 10}" for i, name in enumerate(providers)}  # same colour in every panel
    fig = Figure(figsize=(5.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, name in zip(axes[0], panels):
        in_panel = [r for r in timed if panel(r.point) == name]
        for provider in dict.fromkeys(r.provider for r in in_panel):
            rs = sorted((r for r in in_panel if r.provider == provider), key=lambda r: r.point[x])
            xs = [r.point[x] for r in rs]
            style = "-" if rs[0].role == "ours" else ":" if rs[0].role == "roof" else "--"
            ax.plot(xs, [r.timing.median_ms for r in rs], style, marker="o", label=provider, color=colors[provider])
            ax.fill_between(xs, [r.timing.p10_ms for r in rs], [r.timing.p90_ms for r in rs], alpha=0.15,
                            color=colors[provider])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.point[x] for r in in_panel}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel("median latency (ms)")
        ax.set_title(name, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------
# Command line (shared by bench/run.py and every bench/bench_*.py)
# ----------------------------------------------------------------------------------
def build_parser(benchmarks: Sequence[Benchmark], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="full", action="store_false",
                      help="headline row and a handful of points (default)")
    size.add_argument("--full", dest="full", action="store_true", help="the whole sweep")
    parser.set_defaults(full=False)  # store_false above would otherwise make the default True
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument("--dtype", default=None,
                        help=f"comma-separated subset of {', '.join(DTYPES)} (default: each benchmark's own)")
    parser.add_argument("--providers", default=None, help="comma-separated provider names (default: all)")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS,
                        help=f"CPU: timed calls per provider and point (default {DEFAULT_REPS}); "
                             f"GPU runs use do_bench's {GPU_REP_MS} ms budget")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="CPU: untimed calls before timing")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help="CPU: stop timing a provider after this many seconds (at least "
                             f"{MIN_REPS} calls are timed)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (torch.set_num_threads; default: torch's choice)")
    parser.add_argument("--csv", type=Path, default=None, help="append CSV rows to this file")
    parser.add_argument("--plot", type=Path, default=None, help="write the sweep plot (.png) here")
    parser.add_argument("--save", action="store_true",
                        help="write bench/results/<device>.csv and bench/results/<device>-<bench>.png")
    parser.add_argument("--no-progress", dest="progress", action="store_const", const=False, default=None,
                        help="no progress bar (default: shown when stderr is a terminal)")
    parser.add_argument("--progress", dest="progress", action="store_const", const=True,
                        help="always show the progress bar")
    parser.add_argument("--bench", default=None,
                        help=f"comma-separated subset of {', '.join(b.name for b in benchmarks)}")
    for benchmark in benchmarks:
        if benchmark.add_arguments is not None:
            benchmark.add_arguments(parser)
    return parser


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench: --device {name} but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"bench: --device must be cpu, cuda[:N] or auto; got {name}")
    return device


def _split(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def main(benchmarks: Sequence[Benchmark], argv: Sequence[str] | None = None, *, prog: str = "bench",
         description: str = "") -> list[Result]:
    """Parses flags, runs the benchmarks, prints each one's report, writes CSV/plots if asked."""
    parser = build_parser(benchmarks, prog, description)
    args = parser.parse_args(argv)
    names = _split(getattr(args, "bench", None))
    if names is not None:
        known = {b.name for b in benchmarks}
        if set(names) - known:
            parser.error(f"--bench: unknown {sorted(set(names) - known)}; known: {sorted(known)}")
        benchmarks = [b for b in benchmarks if b.name in names]
    dtypes = None
    if args.dtype is not None:
        bad = [d for d in _split(args.dtype) if d not in DTYPES]
        if bad:
            parser.error(f"--dtype: unknown {bad}; choose from {list(DTYPES)}")
        dtypes = tuple(DTYPES[d] for d in _split(args.dtype))
    if args.reps < 1 or args.warmup < 0 or args.max_seconds <= 0:
        parser.error("--reps must be >= 1, --warmup >= 0, --max-seconds > 0")
    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    config = RunConfig(device=device, full=args.full, dtypes=dtypes, reps=args.reps, warmup=args.warmup,
                       max_seconds=args.max_seconds, providers=_split(args.providers), progress=args.progress,
                       options=vars(args))
    env = environment(device)
    print(environment_line(env), flush=True)
    csv_path = args.csv if args.csv is not None else (RESULTS_DIR / f"{env.slug}.csv" if args.save else None)
    everything: list[Result] = []
    for benchmark in benchmarks:
        start = time.perf_counter()
        results = run_benchmark(benchmark, config)
        everything += results
        print(f"\n## {benchmark.name}: {benchmark.description} "
              f"({'full' if config.full else 'quick'}, {time.perf_counter() - start:.0f} s)\n", flush=True)
        report = benchmark.report or results_table
        print(report(results, config, env), flush=True)
        plot_path = args.plot if args.plot is not None else (
            RESULTS_DIR / f"{env.slug}-{benchmark.name}.png" if args.save else None)
        if plot_path is not None and benchmark.plot is not None:
            if args.plot is not None and len(benchmarks) > 1:
                plot_path = plot_path.with_name(f"{plot_path.stem}-{benchmark.name}{plot_path.suffix}")
            benchmark.plot(results, plot_path)
            print(f"\nplot: {plot_path}")
    if csv_path is not None:
        append_csv(csv_path, everything, env)
        print(f"csv: {csv_path} (+{len(everything)} rows)")
    return everything
