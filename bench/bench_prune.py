"""Benchmark of ``kvtp_kernels.prune`` (exact mode) against naive PyTorch and the copy roofs.

Providers (see :mod:`bench.baselines`):

==================  ========  ===============================================================
provider            role      what is timed
==================  ========  ===============================================================
naive               baseline  the KVTP authors' style: loop over frames, topk + host sync each
torch               baseline  best vectorised PyTorch, no loop, no sync
torch.compile       baseline  ``torch.compile(torch, dynamic=False)``, compile time not timed
ours                ours      ``kvtp_kernels.prune``: backend "cpu" (C++) on CPU, "triton" on CUDA
ours_graph          ours      CUDA only: ``ours`` captured in a CUDA graph, the replay timed
ours_compile        ours      CUDA only: ``torch.compile(prune, fullgraph=True)``, headline only
roof_index_select   roof      ``index_select`` of the kept rows, indices given (the minimum copy)
roof_clone          roof      CUDA only: ``clone()`` of as many contiguous bytes as the kept rows
==================  ========  ===============================================================

Token-score modes: ``given`` (``token_scores`` passed in, what LLaVA-Video with a
predictor uses; the headline) and ``distinct`` (the default distinctiveness score, which
reads every token).

Bytes moved by the minimal algorithm (the GB/s numerator, the same for every provider):
``given``: read the kept rows + write them + read the float32 token scores
(``2*B*K*D*s + 4*B*T*N``); ``distinct``: read every token + write the kept rows
(``B*T*N*D*s + B*K*D*s``); ``s`` = element size, ``K = floor(beta*T*N + 1/2)``.

Run ``python -m bench.bench_prune --help``; ``python -m bench.run`` runs this (and every
other registered benchmark) and prints the headline table with the targets.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import kvtp_kernels
from kvtp_kernels import ops

from . import baselines
from .core import Case, MismatchError, Point, Provider, Result, RunConfig, dtype_name, register_module
from .harness import main
from .measure import Environment
from .report import format_table, join_report, plot_lines, provider_table

#: The headline row (METHOD.md section 5): one LLaVA-Video-7B video at the paper's beta.
HEADLINE = {"B": 1, "T": 64, "N": 196, "D": 3584, "beta": 0.2}
#: The full sweep (``--full``): every combination, for every dtype and score mode.
SWEEP = {"B": (1, 4), "T": (16, 32, 64, 128), "N": (169, 196), "D": (1152, 3584), "beta": (0.1, 0.2, 0.5)}
#: Quick run: the headline row, and T swept at the headline's other sizes (for the plot).
QUICK_T = (16, 32, 64, 128)
DTYPES = (torch.bfloat16, torch.float32)
SCORE_MODES = ("given", "distinct")
TEMPERATURE = 2.0

#: Targets at the headline row (given token scores): (provider, kind, factor).
#: "speedup": t_provider / t_ours >= factor; "within": t_ours <= factor * t_provider.
TARGETS = {
    "cpu": (("naive", "speedup", 10.0), ("torch", "speedup", 1.5), ("roof_index_select", "within", 2.0)),
    "cuda": (("naive", "speedup", 20.0), ("torch", "speedup", 3.0), ("torch.compile", "speedup", 1.5),
             ("roof_index_select", "within", 1.5)),
}


def kept_per_video(point: Point) -> int:
    return math.floor(point["beta"] * point["T"] * point["N"] + 0.5)


def make_point(dtype: torch.dtype, mode: str, B: int, T: int, N: int, D: int, beta: float) -> Point:
    return Point.make(dtype, {"B": B, "T": T, "N": N, "D": D}, beta=beta, scores=mode)


#: The headline's shape as the bench's rows write it (``Point.shape_str``).
HEADLINE_SHAPE = make_point(DTYPES[0], "given", **HEADLINE).shape_str


def target_met(kind: str, factor: float, ratio: float) -> bool:
    """Whether a target of :data:`TARGETS` holds, ``ratio`` = t_provider / t_ours."""
    return ratio >= factor if kind == "speedup" else 1 / ratio <= factor


def is_headline(point: Point) -> bool:
    return all(point[k] == v for k, v in HEADLINE.items())


# ----------------------------------------------------------------------------------
# Points
# ----------------------------------------------------------------------------------
def points(config: RunConfig) -> list[Point]:
    dtypes = config.dtypes or DTYPES
    modes = SCORE_MODES if config.options.get("scores", "both") == "both" else (config.options["scores"],)
    if config.full:
        keys = list(SWEEP)
        return [make_point(dtype, mode, **dict(zip(keys, values)))
                for dtype in dtypes for mode in modes for values in itertools.product(*SWEEP.values())]
    out = []
    headline_only = config.options.get("headline_only", False)
    for dtype in dtypes:
        for mode in modes:
            # distinct mode reads every token (~10x the bytes): only the headline row in a quick run
            for T in (QUICK_T if mode == "given" and not headline_only else (HEADLINE["T"],)):
                out.append(make_point(dtype, mode, **{**HEADLINE, "T": T}))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prune")
    group.add_argument("--scores", choices=("given", "distinct", "both"), default="both",
                       help="token-score mode(s): given token_scores (the headline) or the default "
                            "distinctiveness (reads every token)")
    group.add_argument("--headline-only", action="store_true",
                       help="only the headline row (B=1, T=64, N=196, D=3584, beta=0.2) per dtype and mode")
    group.add_argument("--compile-points", choices=("headline", "all", "none"), default=None,
                       help="where torch.compile runs (each point compiles once, untimed): default "
                            "'headline' for --quick, 'all' for --full")


# ----------------------------------------------------------------------------------
# Inputs and the oracle
# ----------------------------------------------------------------------------------
def make_case(point: Point, device: torch.device) -> Case:
    """Random tokens and frame scores; token scores (``given``) a permutation, so no ties."""
    B, T, N, D = (point[k] for k in "BTND")
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(point.label.encode()))
    tokens = torch.randn(B, T, N, D, generator=gen, device=device, dtype=point.dtype)
    scores = torch.randn(B, T, generator=gen, device=device)
    token_scores = None
    if point["scores"] == "given":
        token_scores = torch.randperm(B * T * N, generator=gen, device=device).reshape(B, T, N).float()
    expected = kvtp_kernels.prune(tokens, scores, point["beta"], token_scores=token_scores,
                                  temperature=TEMPERATURE, backend="reference")
    if expected.tokens.shape[0] != B * kept_per_video(point):
        raise AssertionError(f"bench prune: the reference kept {expected.tokens.shape[0]} rows at {point.label}, "
                             f"expected B*K = {B * kept_per_video(point)}")
    inputs = {"tokens": tokens, "scores": scores, "token_scores": token_scores, "budget": point["beta"],
              "budget_tokens": kept_per_video(point)}
    return Case(point, device, inputs, expected)


def check(case: Case, provider: Provider, output: Any) -> None:
    """``torch.equal`` of (tokens, indices, frame_counts) with ``prune(..., backend="reference")``."""
    if provider.check == "none":
        return
    expected = case.expected
    if provider.check == "tokens":
        fields = (("tokens", output, expected.tokens),)
    else:
        fields = tuple(zip(("tokens", "indices", "frame_counts"), output[:3], expected[:3]))
    for name, got, want in fields:
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            where = ""
            if got.shape == want.shape and got.dtype == want.dtype:
                bad = (got != want).reshape(got.shape[0], -1).any(dim=-1).nonzero()
                where = f"; first differing row {int(bad[0])} of {got.shape[0]}" if bad.numel() else ""
            raise MismatchError(
                f"bench prune: provider {provider.name!r} at {case.point.label}: `{name}` differs from "
                f"prune(..., backend='reference'): got {got.dtype} {tuple(got.shape)}, expected "
                f"{want.dtype} {tuple(want.shape)}{where}")


def bytes_moved(point: Point) -> int:
    B, T, N, D = (point[k] for k in "BTND")
    size = torch.empty((), dtype=point.dtype).element_size()
    kept = B * kept_per_video(point) * D * size
    if point["scores"] == "given":
        return 2 * kept + 4 * B * T * N
    return B * T * N * D * size + kept


# ----------------------------------------------------------------------------------
# Providers
# ----------------------------------------------------------------------------------
def _ours_backend(device: torch.device) -> str:
    return "triton" if device.type == "cuda" else "cpu"


def _build_naive(case: Case):
    i = case.inputs
    return functools.partial(baselines.prune_naive, i["tokens"], i["scores"], i["budget"], i["token_scores"],
                             TEMPERATURE)


def _build_torch(case: Case):
    i = case.inputs
    return functools.partial(baselines.prune_torch, i["tokens"], i["scores"], i["budget_tokens"],
                             i["token_scores"], TEMPERATURE)


def _build_compiled(case: Case):
    i = case.inputs
    return functools.partial(baselines.compile_prune_torch(), i["tokens"], i["scores"], i["budget_tokens"],
                             i["token_scores"], TEMPERATURE)


def _build_ours(case: Case):
    i = case.inputs
    return functools.partial(kvtp_kernels.prune, i["tokens"], i["scores"], i["budget"],
                             token_scores=i["token_scores"], temperature=TEMPERATURE,
                             backend=_ours_backend(case.device))


def _build_ours_graph(case: Case):
    """``ours`` captured once in a CUDA graph (exact mode has static shapes and no sync); timed: the replay."""
    fn = _build_ours(case)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out
    return replay


def _build_ours_compiled(case: Case):
    i = case.inputs
    compiled = torch.compile(kvtp_kernels.prune, fullgraph=True, dynamic=False)
    return functools.partial(compiled, i["tokens"], i["scores"], i["budget"], token_scores=i["token_scores"],
                             temperature=TEMPERATURE, backend=_ours_backend(case.device))


def _build_roof_index_select(case: Case):
    return functools.partial(baselines.roof_index_select, case.inputs["tokens"], case.expected.indices)


def _build_roof_clone(case: Case):
    kept = case.expected.tokens.numel()
    return functools.partial(baselines.roof_clone, case.inputs["tokens"].reshape(-1)[:kept])


def _skip_ours(point: Point, config: RunConfig) -> str | None:
    backend = _ours_backend(config.device)
    if backend == "cpu" and not ops.HAS_CPP:
        return f"C++ extension not built ({ops.CPP_IMPORT_ERROR})"
    if backend == "triton" and not ops.HAS_TRITON:
        return f"triton backend unavailable ({ops.TRITON_IMPORT_ERROR})"
    return None


def _compile_policy(config: RunConfig) -> str:
    policy = config.options.get("compile_points")
    return policy or ("all" if config.full else "headline")


def _skip_compiled(point: Point, config: RunConfig) -> str | None:
    policy = _compile_policy(config)
    if policy == "none":
        return "--compile-points none"
    if policy == "headline" and not (is_headline(point) and point["scores"] == "given"):
        return "compiled at the headline row only (--compile-points all)"
    return None


def _skip_ours_compiled(point: Point, config: RunConfig) -> str | None:
    return _skip_ours(point, config) or _skip_compiled(point, config)


PROVIDERS = [
    Provider("naive", "baseline", _build_naive,
             description="authors' style: Python loop over frames, topk + host sync per frame, torch.cat"),
    Provider("torch", "baseline", _build_torch,
             description="vectorised PyTorch: sort, scatter, nonzero_static, index_select; no loop, no sync"),
    Provider("torch.compile", "baseline", _build_compiled, optional=True, skip=_skip_compiled,
             description="torch.compile(torch, dynamic=False); compile time reported as setup, not timed"),
    Provider("ours", "ours", _build_ours, skip=_skip_ours,
             description="kvtp_kernels.prune: C++ kernel on CPU, one Triton launch on CUDA"),
    Provider("ours_graph", "ours", _build_ours_graph, optional=True, skip=_skip_ours, devices=("cuda",),
             description="ours captured in a CUDA graph; the replay is timed"),
    Provider("ours_compile", "ours", _build_ours_compiled, optional=True, skip=_skip_ours_compiled,
             devices=("cuda",),
             description="torch.compile(kvtp_kernels.prune, fullgraph=True); compile time reported as setup"),
    Provider("roof_index_select", "roof", _build_roof_index_select, check="tokens",
             description="index_select of the kept rows with the indices given: the minimum copy"),
    Provider("roof_clone", "roof", _build_roof_clone, devices=("cuda",), check="none",
             description="clone() of as many contiguous bytes as the kept rows: the bandwidth roof"),
]


# ----------------------------------------------------------------------------------
# Report, plot, flags
# ----------------------------------------------------------------------------------
def headline_table(results: Sequence[Result], dtype: torch.dtype, mode: str) -> str | None:
    rows = [r for r in results if is_headline(r.point) and r.point.dtype == dtype and r.point["scores"] == mode]
    if not rows:
        return None
    cuda = any(r.sync_free is not None for r in rows)
    point = rows[0].point
    title = (f"### headline: {dtype_name(dtype)}, token scores {mode}, {point.shape_str} beta={point['beta']} "
             f"(K={kept_per_video(point)} per video, {rows[0].bytes_moved / 1e6:.1f} MB moved)")
    return title + "\n\n" + provider_table(rows, cuda=cuda)


def targets_table(results: Sequence[Result], device_type: str) -> str | None:
    rows = []
    headline = [r for r in results if is_headline(r.point) and r.point["scores"] == "given"]
    for dtype in dict.fromkeys(r.point.dtype for r in headline):
        at = {r.provider: r for r in headline if r.point.dtype == dtype}
        ours = at.get("ours")
        for provider, kind, factor in TARGETS[device_type]:
            other = at.get(provider)
            name = (f"ours >= {factor:g}x faster than {provider}" if kind == "speedup"
                    else f"ours within {factor:g}x of {provider}")
            if ours is None or other is None or ours.timing is None or other.timing is None:
                missing = [r.provider + ": " + r.status for r in (ours, other) if r is not None and not r.ok]
                rows.append([name, dtype_name(dtype), "-", "n/a (" + ("; ".join(missing) or "not run") + ")"])
                continue
            ratio = other.timing.median_ms / ours.timing.median_ms
            measured = f"{ratio:.2f}x" if kind == "speedup" else f"{1 / ratio:.2f}x of roof"
            rows.append([name, dtype_name(dtype), measured, "met" if target_met(kind, factor, ratio) else "MISSED"])
        if device_type == "cuda" and ours is not None:
            rows.append(["ours: no host sync (set_sync_debug_mode('error'))", dtype_name(dtype),
                         "-" if ours.sync_free is None else "sync-free" if ours.sync_free else "syncs",
                         "n/a" if ours.sync_free is None else "met" if ours.sync_free else "MISSED"])
    if not rows:
        return None
    return "### targets (headline row, token scores given)\n\n" + format_table(
        ["target", "dtype", "measured", "result"], rows)


def report(results: list[Result], config: RunConfig, env: Environment) -> str:
    parts = []
    for dtype in dict.fromkeys(r.point.dtype for r in results):
        for mode in SCORE_MODES:
            table = headline_table(results, dtype, mode)
            if table:
                parts.append(table)
    return join_report([*parts, targets_table(results, config.device.type)], results, env, max_points=48)


def plot(results: list[Result], path: Path) -> None:
    """Latency against T at the headline's other sizes, one panel per (dtype, score mode)."""
    def at_headline_but_t(point: Point) -> bool:
        return all(point[k] == v for k, v in HEADLINE.items() if k != "T")

    t_values: dict[tuple, set[int]] = {}
    for r in results:
        if at_headline_but_t(r.point):
            t_values.setdefault((r.point.dtype, r.point["scores"]), set()).add(r.point["T"])
    swept = {key for key, ts in t_values.items() if len(ts) > 1}  # a lone T makes no line
    plot_lines(results, path, x="T",
               panel=lambda p: f"{dtype_name(p.dtype)}, token scores {p['scores']}",
               keep=lambda p: at_headline_but_t(p) and (p.dtype, p["scores"]) in swept,
               title=f"kvtp prune, B={HEADLINE['B']} N={HEADLINE['N']} D={HEADLINE['D']} beta={HEADLINE['beta']}")


BENCHMARK = register_module(
    globals(), name="prune",
    description="kvtp_kernels.prune (exact mode) vs naive PyTorch and the copy roofs")


if __name__ == "__main__":
    main([BENCHMARK], prog="python -m bench.bench_prune", description=__doc__.split("\n\n")[0])
