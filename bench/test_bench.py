"""pytest-benchmark suite: every prune provider at a small size, checked before it is timed.

    pytest bench/ --benchmark-only                # CPU here; CUDA when a GPU is visible
    pytest bench/ --benchmark-only --benchmark-group-by=group

Not collected by ``pytest tests`` (``testpaths = ["tests"]``). The sizes are small so the
suite stays fast (torch.compile compiles once per score mode); the real numbers come from
``python -m bench.run``.
"""

from __future__ import annotations

import pytest
import torch

from bench import bench_prune
from bench.harness import Case, Point, RunConfig

pytest.importorskip("pytest_benchmark")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CONFIG = RunConfig(device=DEVICE, options={"compile_points": "all"})
SMALL = {"B": 2, "T": 8, "N": 16, "D": 64, "beta": 0.25}
DTYPE = torch.bfloat16
PROVIDERS = [p for p in bench_prune.PROVIDERS if DEVICE.type in p.devices]


@pytest.fixture(scope="module")
def case_for():
    cache: dict[Point, Case] = {}

    def get(point: Point) -> Case:
        if point not in cache:
            cache[point] = bench_prune.make_case(point, DEVICE)
        return cache[point]

    return get


@pytest.mark.parametrize("mode", bench_prune.SCORE_MODES)
@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_prune(benchmark, case_for, provider, mode):
    point = bench_prune.make_point(DTYPE, mode, **SMALL)
    reason = provider.skip(point, CONFIG) if provider.skip is not None else None
    if reason:
        pytest.skip(reason)
    case = case_for(point)
    try:
        fn = provider.build(case)
        output = fn()  # untimed: compiles (torch.compile, Triton) and warms up
    except Exception as exc:
        if not provider.optional:
            raise
        pytest.skip(f"error: {type(exc).__name__}: {exc}")  # the harness reports these as error rows too
    bench_prune.check(case, provider, output)  # raises MismatchError before anything is timed

    if DEVICE.type == "cuda":
        def timed():
            fn()
            torch.cuda.synchronize()
    else:
        timed = fn
    benchmark.group = f"prune {point.label}"
    benchmark.extra_info.update(point=point.label, role=provider.role,
                                bytes_moved=bench_prune.bytes_moved(point))
    benchmark(timed)
