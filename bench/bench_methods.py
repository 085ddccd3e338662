"""Benchmark of the within-frame methods under KVTP's counts: ``prune(..., method=...)``.

KVTP fixes how many tokens each frame keeps (k_t); the within-frame method decides
which (METHOD.md section 3). The paper's best variant is PruMerge+KVTP. Providers:

==============  ========  ==========  ===========================================================
provider        method    role        what is timed
==============  ========  ==========  ===========================================================
authors_loop    prumerge  baseline    the KVTP authors' ``prumerge``, re-written here: a Python
                                      loop over frames and, inside, over every kept token (cat
                                      of the others, cosines, topk(32), weighted sum)
torch           prumerge  baseline    the best vectorised PyTorch we could write: one padded
                                      float64 GEMM of the kept keys against their frame, topk,
                                      ``embedding_bag`` with per-sample weights (no loop)
loop            tome      baseline    bipartite soft matching frame by frame, round by round,
                                      one merge per destination (the authors' loop structure)
ours            all       ours        ``kvtp_kernels.prune(..., method=...)`` on the device's
                                      default backend (C++ on CPU, Triton on CUDA; ToMe is
                                      batched PyTorch on every device)
==============  ========  ==========  ===========================================================

``random`` and ``topk`` run ``ours`` only, for context. Every baseline computes what
``prune`` computes: KVTP's exact-mode counts, kept rows in (video, frame, raster) order,
PruMerge's unnormalised fold (``merge="paper"``, ``x_i + sum_j a_j x_j``), ToMe's
size-weighted means; the baselines are in method_baselines.py, and the docstrings of
:func:`prumerge_authors_loop` and :func:`tome_loop` there say what had to change in the
authors' code to make the outputs equal.

Correctness, before anything is timed: ``indices`` and ``frame_counts`` (and, for ours,
``cu_seqlens`` / ``frame_cu_seqlens``) equal to the reference's; merged rows (new values,
computed in float64 and rounded once) within the per-dtype tolerance of
``tests/helpers.py``, copied rows (topk, random) bit-equal. Oracles:

- prumerge: ``reference.prumerge_ref`` (what ``prune(..., backend="reference")`` runs)
  with its neighbour selection verbatim and its fold as one float64 GEMM per frame
  (:func:`prumerge_oracle_rows`): called on a whole video the reference materialises a
  float64 [R, N, D] tensor (14 GB at the headline; ~18 s on 2 cores even in chunks);
  its first 32 rows are checked against ``prumerge_ref`` itself at every point;
- tome: ``reference.tome_ref`` (the literal per-frame oracle) is too slow for whole
  videos (~0.2 s per frame on CPU), so it checks the ``loop`` provider on a few frames
  (every frame at small points) and the loop's output on every frame is the oracle
  the other providers are compared with;
- topk, random: ``prune(..., backend="reference")`` (random: the same seed).

Bytes moved by the minimal algorithm (GB/s numerator; ``s`` the element size of tokens
and keys, which share the dtype; ``K`` kept tokens per video): topk
``2*B*K*D*s + 4*B*T*N``, random ``2*B*K*D*s``, prumerge
``B*T*N*(D*s + Dk*s + 4) + B*K*D*s`` (every token, key and weight read once, the kept
rows written), tome ``B*T*N*(D*s + Dk*s) + B*K*D*s``; with keys = the tokens
themselves there are no separate keys to read (``Dk*s`` drops out).

Quick runs: bfloat16, SigLIP keys, every method at the headline, except ToMe on CPU,
which runs at T = 4 to keep them short (at the headline ``ours`` takes ~0.35 s a call and
the ``loop`` ~0.5 s on 2 cores, so the point adds several seconds with its checks;
``--tome-headline`` restores it). ``--full``: N in {169, 196} x D in {1152, 3584} x
both dtypes x both key modes, T = 64.

Run ``python -m bench.bench_methods --help``; ``python -m bench.run`` runs this with
every other benchmark.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

import kvtp_kernels
from kvtp_kernels import ops
from kvtp_kernels import reference as ref

from .core import Case, MismatchError, Point, Provider, Result, RunConfig, dtype_name, register_module
from .harness import comma_names, main, subset_option
from .measure import Environment
from .method_baselines import NUM_NEIGHBORS, TEMPERATURE, MethodOutput, prumerge_authors_loop, prumerge_torch, tome_loop
from .report import format_table, join_report, ms, provider_table

#: The headline (METHOD.md section 5): one LLaVA-Video-7B video at the paper's beta.
HEADLINE = {"B": 1, "T": 64, "N": 196, "D": 3584, "beta": 0.2}
#: kvtp_kernels.options.METHODS in the order of the sweep and the report.
SWEPT_METHODS = ("prumerge", "tome", "random", "topk")
MERGING = ("prumerge", "tome")
#: Merge keys: random keys of SigLIP's width (what the authors use: the keys of SigLIP's
#: attention-pooling head) or the tokens themselves (``merge_keys=None``).
KEY_MODES = ("siglip", "tokens")
SIGLIP_DK = 1152
RANDOM_SEED = 1234
DTYPES = (torch.bfloat16, torch.float32)
#: The full sweep: every method at these sizes, both dtypes, both key modes for merging methods.
SWEEP = {"N": (169, 196), "D": (1152, 3584)}
#: Quick CPU runs time ToMe at this T (the headline's other sizes): see points().
QUICK_CPU_TOME_T = 4
#: Rows of the prumerge oracle compared with reference.prumerge_ref itself at every point
#: (its float64 [rows, N, D] intermediate: 32 * 196 * 3584 * 8 bytes = 180 MB).
ORACLE_SPOT_ROWS = 32
#: ToMe: tome_ref checks the loop on every frame when B*T*N is at most this, else on TOME_REF_FRAMES frames.
TOME_REF_ALL = 4096
TOME_REF_FRAMES = 4

#: Same as tests/helpers.py: merged rows are float64 math rounded once, so backends
#: may differ by one rounding of the output dtype.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 8e-3)}


class Expected(NamedTuple):
    tokens: torch.Tensor
    indices: torch.Tensor
    frame_counts: torch.Tensor
    cu_seqlens: torch.Tensor
    frame_cu_seqlens: torch.Tensor


def kept_per_video(point: Point) -> int:
    return math.floor(point["beta"] * point["T"] * point["N"] + 0.5)


def make_point(dtype: torch.dtype, method: str, keys: str | None = None, **shape: Any) -> Point:
    sizes = {**HEADLINE, **shape}
    beta = sizes.pop("beta")
    params = {"beta": beta, "method": method}
    if method in MERGING:
        params["keys"] = keys or KEY_MODES[0]
    return Point.make(dtype, sizes, **params)


def is_headline(point: Point) -> bool:
    return all(point[k] == v for k, v in HEADLINE.items())


# ----------------------------------------------------------------------------------
# Points
# ----------------------------------------------------------------------------------
def points(config: RunConfig) -> list[Point]:
    dtypes = config.dtypes or (DTYPES if config.full else (torch.bfloat16,))
    methods = config.options.get("methods") or SWEPT_METHODS
    keys = config.options.get("keys") or (KEY_MODES if config.full else KEY_MODES[:1])
    out = []
    for dtype in dtypes:
        for method in methods:
            key_modes = keys if method in MERGING else (None,)
            if config.full:
                for N, D in itertools.product(*SWEEP.values()):
                    out += [make_point(dtype, method, k, N=N, D=D) for k in key_modes]
            elif method == "tome" and config.device.type == "cpu" and not config.options.get("tome_headline"):
                # At the headline ours takes ~0.35 s a call and the loop ~0.5 s on 2 CPU cores: to keep
                # quick runs short, a quick CPU run uses QUICK_CPU_TOME_T frames.
                out.append(make_point(dtype, method, key_modes[0], T=QUICK_CPU_TOME_T))
            else:
                out.append(make_point(dtype, method, key_modes[0]))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("methods")
    subset_option(group, "--methods", SWEPT_METHODS, "all")
    group.add_argument("--keys", type=comma_names(KEY_MODES), default=None,
                       help=f"merge keys for prumerge/tome: comma-separated subset of {', '.join(KEY_MODES)} "
                            "(siglip: random Dk=1152 keys; tokens: the tokens themselves). Default: siglip for "
                            "--quick, both for --full")
    group.add_argument("--tome-headline", action="store_true",
                       help="quick CPU runs: time ToMe at the headline (T=64; ~0.35 s per call of ours, ~0.5 s of the "
                            "loop on 2 cores) instead of T=4")


# ----------------------------------------------------------------------------------
# Inputs and the oracles
# ----------------------------------------------------------------------------------
def make_inputs(point: Point, device: torch.device) -> dict[str, Any]:
    """Random tokens, frame logits, a softmax "attention" per frame, SigLIP-width keys.

    Token scores are a softmax of random logits (the attention of SigLIP's pooling head,
    pooled to the grid: PruMerge's weights); float64 cosines of random keys are distinct,
    so no provider depends on how ties are broken (the checks would catch one).
    """
    B, T, N, D = (point[k] for k in "BTND")
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(point.label.encode()))
    tokens = torch.randn(B, T, N, D, generator=gen, device=device, dtype=point.dtype)
    scores = torch.randn(B, T, generator=gen, device=device)
    method = point["method"]
    token_scores = merge_keys = None
    if method in ("prumerge", "topk"):
        token_scores = torch.softmax(2 * torch.randn(B, T, N, generator=gen, device=device), dim=-1)
    if method in MERGING and point["keys"] == "siglip":
        merge_keys = torch.randn(B, T, N, SIGLIP_DK, generator=gen, device=device, dtype=point.dtype)
    return {"tokens": tokens, "scores": scores, "token_scores": token_scores, "merge_keys": merge_keys,
            "budget": point["beta"], "budget_tokens": kept_per_video(point)}


def _prune_kwargs(point: Point, inputs: dict[str, Any]) -> dict[str, Any]:
    method = point["method"]
    kw: dict[str, Any] = {"temperature": TEMPERATURE, "method": method}
    if method in ("prumerge", "topk"):
        kw["token_scores"] = inputs["token_scores"]
    if method in MERGING:
        kw["merge_keys"] = inputs["merge_keys"]
    if method == "prumerge":
        kw.update(merge="paper", num_neighbors=NUM_NEIGHBORS)
    if method == "random":
        kw["generator"] = RANDOM_SEED
    return kw


def prumerge_oracle_rows(tokens: torch.Tensor, merge_keys: torch.Tensor | None, weights: torch.Tensor,
                         indices: torch.Tensor, num_neighbors: int) -> torch.Tensor:
    """``reference.prumerge_ref`` (merge="paper"), with its fold evaluated frame by frame.

    The neighbour selection is the reference's, verbatim (``cosine_gram_ref``, ``rank_ref``,
    the same rank shift and mask), so neighbour sets are the reference's by construction.
    The fold ``x_i + sum_j a_j x_j`` is the same float64 sum, as one ``[k_t, N] @ [N, D]``
    GEMM per frame instead of the reference's einsum over gathered ``[R, N, D]`` float64
    rows (14 GB at the headline; ~18 s on 2 cores in chunks). The result can differ from
    ``prumerge_ref``'s only by the float64 summation order; :func:`make_case` compares the
    first ``ORACLE_SPOT_ROWS`` rows with ``prumerge_ref`` itself at every point, and
    ``bench/test_bench.py`` the whole output with ``prune(..., backend="reference")``.
    """
    B, T, N, D = tokens.shape
    Fr = B * T
    keys = tokens if merge_keys is None else merge_keys
    frame, token = indices // N, indices % N
    cos = ref.cosine_gram_ref(keys.reshape(Fr, N, -1))[frame, token]  # [R, N]
    rank = ref.rank_ref(cos)
    rank = rank - (rank.gather(1, token[:, None]) < rank).long()  # rank among the other tokens
    neighbor = (rank < num_neighbors) & (torch.arange(N, device=tokens.device) != token[:, None])
    aj = torch.where(neighbor, weights.reshape(Fr, N).double()[frame], 0.0)  # [R, N]
    x = tokens.reshape(Fr, N, D)
    out = tokens.new_empty((indices.shape[0], D))
    bounds = torch.cat([torch.zeros(1, dtype=torch.long, device=indices.device),
                        (frame[1:] != frame[:-1]).nonzero().squeeze(-1) + 1,
                        torch.tensor([indices.shape[0]], device=indices.device)]).tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # rows come frame by frame
        xf = x[int(frame[lo])].double()
        out[lo:hi] = (xf[token[lo:hi]] + aj[lo:hi] @ xf).to(tokens.dtype)
    return out


def spot_check_prumerge_oracle(point: Point, inputs: dict[str, Any], indices: torch.Tensor,
                               rows: torch.Tensor) -> None:
    """The oracle's first ``ORACLE_SPOT_ROWS`` rows against ``reference.prumerge_ref`` itself."""
    n = min(ORACLE_SPOT_ROWS, indices.shape[0])
    want = ref.prumerge_ref(inputs["tokens"], inputs["tokens"] if inputs["merge_keys"] is None
                            else inputs["merge_keys"], inputs["token_scores"], indices[:n], NUM_NEIGHBORS, False)
    atol, rtol = TOLERANCES[point.dtype]
    if not torch.allclose(rows[:n].double(), want.double(), atol=atol, rtol=rtol):
        raise MismatchError(f"bench methods: the prumerge oracle differs from reference.prumerge_ref at "
                            f"{point.label} (first {n} rows)")


def _tome_ref_frames(point: Point, counts: torch.Tensor) -> list[int]:
    """Frames (flat b*T + t) on which tome_ref checks the loop: all at small points, else a few telling ones."""
    B, T, N = point["B"], point["T"], point["N"]
    flat = counts.reshape(-1).tolist()
    if B * T * N <= TOME_REF_ALL:
        return list(range(B * T))
    nonzero = [f for f, k in enumerate(flat) if k > 0]
    picks = [nonzero[0], nonzero[-1], min(nonzero, key=lambda f: flat[f]), max(nonzero, key=lambda f: flat[f])]
    return sorted(set(picks))[:TOME_REF_FRAMES]


def check_tome_loop_against_reference(point: Point, inputs: dict[str, Any], loop: MethodOutput) -> list[int]:
    """Compares the loop's rows and representatives with ``reference.tome_ref`` frame by frame.

    Returns the frames checked; raises :class:`MismatchError` on a difference.
    """
    tokens, keys = inputs["tokens"], inputs["merge_keys"]
    keys = tokens if keys is None else keys
    B, T, N, _ = tokens.shape
    counts = loop.frame_counts
    offsets = torch.cat([counts.new_zeros(1), counts.reshape(-1).cumsum(0)]).tolist()
    frames = _tome_ref_frames(point, counts)
    atol, rtol = TOLERANCES[tokens.dtype]
    for f in frames:
        b, t = divmod(f, T)
        one = (slice(b, b + 1), slice(t, t + 1))
        rows, reps = ref.tome_ref(tokens[one], keys[one], counts[one])
        lo, hi = offsets[f], offsets[f + 1]
        got_rows, got_reps = loop.tokens[lo:hi], loop.indices[lo:hi] - f * N
        if not torch.equal(got_reps, reps.to(got_reps.device)):
            raise MismatchError(f"bench methods: the tome loop at {point.label}, frame {f}: representatives differ "
                                f"from reference.tome_ref")
        try:
            torch.testing.assert_close(got_rows, rows, atol=atol, rtol=rtol)
        except AssertionError as exc:
            raise MismatchError(f"bench methods: the tome loop at {point.label}, frame {f}: rows differ from "
                                f"reference.tome_ref beyond {dtype_name(tokens.dtype)} tolerance: "
                                f"{str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else exc}") from None
    return frames


def make_case(point: Point, device: torch.device) -> Case:
    inputs = make_inputs(point, device)
    method = point["method"]
    kw = _prune_kwargs(point, inputs)
    if method in ("topk", "random"):
        expected = Expected(*kvtp_kernels.prune(inputs["tokens"], inputs["scores"], inputs["budget"],
                                                backend="reference", **kw)[:5])
    else:
        # counts, indices and offsets: the reference prune (top-k by token_scores for prumerge)
        base = kvtp_kernels.prune(inputs["tokens"], inputs["scores"], inputs["budget"], temperature=TEMPERATURE,
                                  token_scores=inputs["token_scores"], backend="reference")
        if method == "prumerge":
            rows = prumerge_oracle_rows(inputs["tokens"], inputs["merge_keys"], inputs["token_scores"], base.indices,
                                        NUM_NEIGHBORS)
            spot_check_prumerge_oracle(point, inputs, base.indices, rows)
            expected = Expected(rows, base.indices, base.frame_counts, base.cu_seqlens, base.frame_cu_seqlens)
        else:
            loop = tome_loop(inputs["tokens"], inputs["scores"], inputs["budget"], inputs["merge_keys"], TEMPERATURE)
            if not torch.equal(loop.frame_counts, base.frame_counts):
                raise MismatchError(f"bench methods: the tome loop's counts differ from the reference at {point.label}")
            inputs["tome_ref_frames"] = check_tome_loop_against_reference(point, inputs, loop)
            expected = Expected(loop.tokens, loop.indices, base.frame_counts, base.cu_seqlens, base.frame_cu_seqlens)
    K = kept_per_video(point)
    if expected.tokens.shape[0] != point["B"] * K:
        raise AssertionError(f"bench methods: the oracle kept {expected.tokens.shape[0]} rows at {point.label}, "
                             f"expected B*K = {point['B'] * K}")
    return Case(point, device, inputs, expected)


def check(case: Case, provider: Provider, output: Any) -> None:
    """Indices and counts equal; merged rows within tolerance, copied rows bit-equal."""
    expected: Expected = case.expected
    label = f"bench methods: provider {provider.name!r} at {case.point.label}"
    fields = [("indices", output[1], expected.indices), ("frame_counts", output[2], expected.frame_counts)]
    if isinstance(output, kvtp_kernels.PrunedTokens):
        fields += [("cu_seqlens", output.cu_seqlens, expected.cu_seqlens),
                   ("frame_cu_seqlens", output.frame_cu_seqlens, expected.frame_cu_seqlens)]
    merging = case.point["method"] in MERGING
    if not merging:
        fields.insert(0, ("tokens", output[0], expected.tokens))
    for name, got, want in fields:
        if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
            raise MismatchError(f"{label}: `{name}` differs from the oracle: got {got.dtype} {tuple(got.shape)}, "
                                f"expected {want.dtype} {tuple(want.shape)}")
    if merging:
        atol, rtol = TOLERANCES[case.point.dtype]
        try:
            torch.testing.assert_close(output[0], expected.tokens, atol=atol, rtol=rtol)
        except AssertionError as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[:4])
            raise MismatchError(f"{label}: merged rows differ from the oracle beyond the "
                                f"{dtype_name(case.point.dtype)} tolerance (atol={atol}, rtol={rtol}): {detail}"
                                ) from None


def bytes_moved(point: Point) -> int:
    B, T, N, D = (point[k] for k in "BTND")
    s = torch.empty((), dtype=point.dtype).element_size()
    kept = B * kept_per_video(point) * D * s
    method = point["method"]
    if method == "topk":
        return 2 * kept + 4 * B * T * N
    if method == "random":
        return 2 * kept
    key_bytes = SIGLIP_DK * s if point["keys"] == "siglip" else 0
    weights = 4 if method == "prumerge" else 0
    return B * T * N * (D * s + key_bytes + weights) + kept


# ----------------------------------------------------------------------------------
# Providers
# ----------------------------------------------------------------------------------
def _only(*methods: str):
    def skip(point: Point, config: RunConfig) -> str | None:
        return None if point["method"] in methods else f"not a {point['method']} provider"
    return skip


def _build_authors_loop(case: Case):
    i = case.inputs
    return functools.partial(prumerge_authors_loop, i["tokens"], i["scores"], i["budget"], i["token_scores"],
                             i["merge_keys"], NUM_NEIGHBORS, TEMPERATURE)


def _build_torch(case: Case):
    i = case.inputs
    return functools.partial(prumerge_torch, i["tokens"], i["scores"], i["budget_tokens"], i["token_scores"],
                             i["merge_keys"], NUM_NEIGHBORS, TEMPERATURE)


def _build_loop(case: Case):
    i = case.inputs
    return functools.partial(tome_loop, i["tokens"], i["scores"], i["budget"], i["merge_keys"], TEMPERATURE)


def _build_ours(case: Case):
    i = case.inputs
    return functools.partial(kvtp_kernels.prune, i["tokens"], i["scores"], i["budget"],
                             **_prune_kwargs(case.point, i))


def _skip_ours(point: Point, config: RunConfig) -> str | None:
    if config.device.type == "cpu":
        return None if ops.HAS_CPP else f"C++ extension not built ({ops.CPP_IMPORT_ERROR})"
    if not ops.HAS_TRITON:
        return f"triton backend unavailable ({ops.TRITON_IMPORT_ERROR})"
    if point["method"] == "prumerge" and not hasattr(torch.ops.kvtp, "merge_neighbors_triton"):
        return "kvtp::merge_neighbors_triton is not registered (Triton PruMerge kernel missing)"
    return None


PROVIDERS = [
    Provider("authors_loop", "baseline", _build_authors_loop, skip=_only("prumerge"),
             description="prumerge: the authors' loop over frames and over every kept token (cat, mm, topk(32))"),
    Provider("torch", "baseline", _build_torch, skip=_only("prumerge"), optional=True,
             description="prumerge: vectorised PyTorch (padded float64 bmm, topk, embedding_bag)"),
    Provider("loop", "baseline", _build_loop, skip=_only("tome"),
             description="tome: frame-by-frame, round-by-round bipartite matching, one merge per destination"),
    Provider("ours", "ours", _build_ours, skip=_skip_ours,
             description="kvtp_kernels.prune(method=...): C++ on CPU, Triton on CUDA (ToMe: batched PyTorch)"),
]
PROVIDERS_OF = {"prumerge": ("authors_loop", "torch", "ours"), "tome": ("loop", "ours"), "random": ("ours",),
                "topk": ("ours",)}


# ----------------------------------------------------------------------------------
# Report, plot, flags
# ----------------------------------------------------------------------------------
def _applicable(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if r.provider in PROVIDERS_OF[r.point["method"]]]


def _group_key(point: Point) -> tuple:
    return (point.dtype, point["method"], point.get("keys"), point.shape)


def _headline_like(point: Point, results: Sequence[Result]) -> bool:
    """The headline, or, when a method ran only at a reduced point (quick CPU ToMe), that point."""
    if is_headline(point):
        return True
    same = [r.point for r in results if r.point["method"] == point["method"] and r.point.dtype == point.dtype]
    return not any(is_headline(p) for p in same) and point == same[0]


def headline_tables(results: Sequence[Result]) -> list[str]:
    rows_by_group: dict[tuple, list[Result]] = {}
    for r in _applicable(results):
        if _headline_like(r.point, results):
            rows_by_group.setdefault(_group_key(r.point), []).append(r)
    cuda = any(r.sync_free is not None for r in results)
    parts = []
    for rows in rows_by_group.values():
        point = rows[0].point
        keys = f", keys {point['keys']}" if point.get("keys") else ""
        note = "" if is_headline(point) else " (reduced quick point; the headline runs with --full or --tome-headline)"
        title = (f"### {point['method']}: {dtype_name(point.dtype)}{keys}, {point.shape_str} beta={point['beta']} "
                 f"(K={kept_per_video(point)} per video, {rows[0].bytes_moved / 1e6:.1f} MB moved){note}")
        parts.append(title + "\n\n" + provider_table(rows, cuda=cuda, gbps_digits=2))
    return parts


def speedup_table(results: Sequence[Result]) -> str | None:
    """One row per (method, dtype, keys, baseline) at the headline: t_baseline / t_ours."""
    rows = []
    groups: dict[tuple, dict[str, Result]] = {}
    for r in _applicable(results):
        if _headline_like(r.point, results):
            groups.setdefault(_group_key(r.point), {})[r.provider] = r
    for at in groups.values():
        ours = at.get("ours")
        for name, r in at.items():
            if r.role != "baseline":
                continue
            p = r.point
            where = p.shape_str if not is_headline(p) else "headline"
            if ours is None or ours.timing is None or r.timing is None:
                why = "; ".join(x.provider + ": " + x.status for x in (r, ours) if x is not None and not x.ok)
                rows.append([p["method"], dtype_name(p.dtype), p.get("keys") or "-", where, name, ms(
                    r.timing and r.timing.median_ms), ms(ours and ours.timing and ours.timing.median_ms),
                    f"n/a ({why or 'not run'})"])
                continue
            rows.append([p["method"], dtype_name(p.dtype), p.get("keys") or "-", where, name, ms(r.timing.median_ms),
                         ms(ours.timing.median_ms), f"{r.timing.median_ms / ours.timing.median_ms:.2f}x"])
    if not rows:
        return None
    return "### speedups of ours (t_baseline / t_ours, median)\n\n" + format_table(
        ["method", "dtype", "keys", "point", "baseline", "baseline ms", "ours ms", "speedup"], rows)


def report(results: list[Result], config: RunConfig, env: Environment) -> str:
    parts = [*headline_tables(results), speedup_table(results)]
    return join_report(parts, _applicable(results), env, max_points=64)


def plot(results: list[Result], path: Path) -> None:
    """Headline latency per method, one bar per provider (log scale), one panel per dtype."""
    from matplotlib.figure import Figure

    timed = [r for r in _applicable(results) if r.timing is not None and _headline_like(r.point, results)]
    dtypes = list(dict.fromkeys(r.point.dtype for r in timed))
    if not dtypes:
        return
    providers = list(dict.fromkeys(r.provider for r in timed))
    colors = {name: f"C{i % 10}" for i, name in enumerate(providers)}
    fig = Figure(figsize=(6.5 * len(dtypes), 4.2))
    axes = fig.subplots(1, len(dtypes), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        groups: dict[tuple, list[Result]] = {}
        for r in timed:
            if r.point.dtype == dtype:
                groups.setdefault(_group_key(r.point), []).append(r)
        labels, seen = [], set()
        for gi, rows in enumerate(groups.values()):
            width = 0.8 / max(3, len(rows))
            for pi, r in enumerate(rows):
                ax.bar(gi + (pi - (len(rows) - 1) / 2) * width, r.timing.median_ms, width, color=colors[r.provider],
                       label=None if r.provider in seen else r.provider)
                seen.add(r.provider)
            p = rows[0].point
            labels.append("\n".join([p["method"]] + ([f"keys={p['keys']}"] if p.get("keys") else [])
                                     + ([] if is_headline(p) else [p.shape_str])))
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("median latency (ms)")
        ax.set_title(dtype_name(dtype), fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("kvtp within-frame methods at " + " ".join(f"{k}={v}" for k, v in HEADLINE.items()), fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


BENCHMARK = register_module(
    globals(), name="methods",
    description="within-frame methods under KVTP's counts: ours vs the authors' per-token loops")


if __name__ == "__main__":
    main([BENCHMARK], prog="python -m bench.bench_methods", description=__doc__.split("\n\n")[0])
