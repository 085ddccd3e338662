"""What a benchmark is: sweep points, cases, providers, results, the :class:`Benchmark` record and its registry.

New benchmarks: add ``bench/bench_<name>.py`` that defines its providers and functions and calls
:func:`register_module` (or :func:`register`) at import; :func:`discover` imports every such module,
so ``python -m bench.run`` picks it up with no other change (see bench/README.md).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .measure import DEFAULT_MAX_SECONDS, DEFAULT_REPS, DEFAULT_WARMUP, Environment, Timing

BENCH_DIR = Path(__file__).resolve().parent

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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



#: The names a benchmark module defines, by the :class:`Benchmark` field they fill (the first three and
#: ``check`` are required; the others are used when the module defines them).
MODULE_FIELDS = {"providers": "PROVIDERS", "points": "points", "make_case": "make_case", "check": "check",
                 "bytes_moved": "bytes_moved", "report": "report", "plot": "plot", "add_arguments": "add_arguments",
                 "metrics": "metrics"}


def register_module(namespace: dict[str, Any], *, name: str, description: str, **fields: Any) -> Benchmark:
    """Registers the benchmark a ``bench_<name>.py`` module defines: ``register_module(globals(), name=...,
    description=...)`` at its end builds the :class:`Benchmark` from the module's ``PROVIDERS``, ``points``,
    ``make_case``, ``check`` and, when defined, ``bytes_moved``, ``report``, ``plot``, ``add_arguments``,
    ``metrics``; ``fields`` sets the others (e.g. ``sync_check=False``)."""
    found = {field_: namespace[key] for field_, key in MODULE_FIELDS.items() if key in namespace}
    return register(Benchmark(name=name, description=description, **found, **fields))

def discover() -> dict[str, Benchmark]:
    """Imports every ``bench/bench_*.py`` (each registers its benchmark) and returns the registry."""
    for module in sorted(pkgutil.iter_modules([str(BENCH_DIR)]), key=lambda m: m.name):
        if module.name.startswith("bench_"):
            importlib.import_module(f"{__package__}.{module.name}")
    return BENCHMARKS

