"""The one benchmark harness every ``bench/bench_*.py`` script uses: the run and the shared command line.

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
5. record a :class:`Result` (a CSV row, see :data:`bench.report.CSV_COLUMNS`).

Effective bandwidth: ``gbps = bytes_moved(point) / median`` with the bytes of the
*minimal* algorithm at that point (defined by each benchmark, the same for every
provider), so GB/s ratios equal speedups and ours can be read against the roofs.

Its parts: ``core.py`` (what a benchmark is, and the registry), ``measure.py`` (the
environment row and the timers), ``report.py`` (CSV rows, tables, plots); this module runs
them (:func:`run_benchmark`) and parses the flags (:func:`main`). New benchmarks: see
``core.py`` and bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .core import BENCH_DIR, DTYPES, Benchmark, Case, MismatchError, Provider, Result, RunConfig
from .measure import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_REPS,
    DEFAULT_WARMUP,
    GPU_REP_MS,
    MIN_REPS,
    environment,
    is_sync_free,
    synchronize,
    time_cpu,
    time_cuda,
)
from .report import append_csv, environment_line, results_table

RESULTS_DIR = BENCH_DIR / "results"


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


def subset_option(group, flag: str, known: Sequence[str], default: str) -> None:
    """A benchmark's ``flag``: a comma-separated subset of ``known`` (None when not given: ``default``)."""
    group.add_argument(flag, type=comma_names(known), default=None,
                       help=f"comma-separated subset of {', '.join(known)} (default: {default})")


def comma_names(known: Sequence[str]):
    """argparse ``type``: a comma-separated subset of ``known`` -> tuple (a benchmark's own flags)."""
    def parse(value: str) -> tuple[str, ...]:
        names = tuple(v.strip() for v in value.split(",") if v.strip())
        bad = [n for n in names if n not in known]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {bad or value!r}; choose from {', '.join(known)}")
        return names
    return parse
