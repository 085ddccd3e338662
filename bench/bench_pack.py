"""Benchmark of ``kvtp_kernels.pack_multimodal``: splicing pruned video tokens into the text.

Each sample's LLM input is its kept text before the video placeholder, the pruned video
tokens with newline embeddings (layout "grid": after every grid row that kept a token,
LLaVA-Video's ``image_newline``; "video": once after the video, HF LlavaOnevision), then
the kept text after it, packed across the batch (varlen) or padded (METHOD.md section 4).

==============  ========  =====================================================================
provider        role      what is timed
==============  ========  =====================================================================
loop            baseline  the KVTP authors' way (``llava_arch.py``: ``add_token_per_grid_*``
                          and ``prepare_inputs_labels_for_multimodal``), re-written here: per
                          video a Python loop over frames and kept tokens appending newlines
                          at row changes, ``torch.stack``; per sample boolean-mask slicing of
                          the text and ``torch.cat``; padding by ``torch.cat`` of zeros and
                          ``torch.stack``
reference       baseline  ``reference.pack_multimodal_ref``: vectorised pure PyTorch (one
                          scatter of every source to its output row, one gather); pack.py has
                          no backend switch, so it is called directly, with the arguments
                          ``pack_multimodal`` would pass it (as ``tests/test_pack.py`` does)
ours            ours      ``kvtp_kernels.pack_multimodal``: ``kvtp::pack_plan`` +
                          ``kvtp::pack_rows`` (C++ on CPU, CUDA kernel on GPU)
roof_clone      roof      ``clone()`` of as many contiguous bytes as the output embeddings
==============  ========  =====================================================================

Inputs: B prompts of ~100 text tokens (14-20 before the video's single placeholder
position, 75-96 after it, right-padded to the longest with an int64 HF attention mask),
and B videos pruned by ``kvtp_kernels.prune`` (T=64 frames of N = 196 or 169 tokens,
beta = 0.2, token scores a random permutation), whose kept rows are random D-wide
embeddings. Correctness before timing: ``embeds`` bit-equal to the reference's, and
``cu_seqlens``, ``position_ids`` and the padded output's ``attention_mask`` equal (ours
and reference: ``source_index`` too).

Bytes moved (GB/s numerator): every output row written plus every non-padding output
row read, ``(rows_out + rows_filled) * D * s``; position ids and masks (<= 16 bytes a
row against 7168 for a bfloat16 row at D = 3584) are left out. The output size depends
on which grid rows kept tokens, so it is read from the point's case (the data are
seeded by the point).

Run ``python -m bench.bench_pack --help``; ``python -m bench.run`` runs this with every
other registered benchmark.
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
from kvtp_kernels.api import PrunedTokens
from kvtp_kernels.options import OUTPUTS

from .core import Case, MismatchError, Point, Provider, Result, RunConfig, dtype_name, register_module
from .harness import main, subset_option
from .measure import Environment
from .report import format_table, join_report, ms, plot_lines, provider_table, speedup

#: The headline: a batch of 8 LLaVA-Video-7B prompts, each with one pruned video.
HEADLINE = {"B": 8, "T": 64, "N": 196, "D": 3584, "beta": 0.2}
HEADLINE_PARAMS = {"layout": "grid", "output": "varlen"}
#: The layouts swept: two of kvtp_kernels.options.LAYOUTS (every output of OUTPUTS is swept).
SWEPT_LAYOUTS = ("grid", "video")
DTYPES = (torch.bfloat16, torch.float32)
SWEEP = {"B": (1, 4, 8), "N": (169, 196)}
#: Quick run: the headline only (layout, output, B); the other layouts, outputs and B under --full.
QUICK = (("grid", "varlen", 8),)
GRID_WIDTH = {196: 14, 169: 13}
#: Prompt: text tokens before the placeholder (system prompt; the authors splice at 14),
#: and after it (question and answer prefix); drawn per sample.
TEXT_BEFORE = (14, 20)
TEXT_AFTER = (75, 96)
TEMPERATURE = 2.0


class PackOutput(NamedTuple):
    """What the check compares (source_index: None for the loop, which has no such table)."""

    embeds: torch.Tensor
    cu_seqlens: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor
    source_index: torch.Tensor | None


def make_point(dtype: torch.dtype, layout: str, output: str, **shape: Any) -> Point:
    sizes = {**HEADLINE, **shape}
    beta = sizes.pop("beta")
    return Point.make(dtype, sizes, beta=beta, layout=layout, output=output)


def is_headline(point: Point) -> bool:
    return all(point[k] == v for k, v in {**HEADLINE, **HEADLINE_PARAMS}.items())


# ----------------------------------------------------------------------------------
# Points
# ----------------------------------------------------------------------------------
def points(config: RunConfig) -> list[Point]:
    dtypes = config.dtypes or (DTYPES if config.full else (torch.bfloat16,))
    layouts = config.options.get("layouts") or SWEPT_LAYOUTS
    outputs = config.options.get("outputs") or OUTPUTS
    out = []
    for dtype in dtypes:
        if config.full:
            for layout, output, B, N in itertools.product(layouts, outputs, *SWEEP.values()):
                out.append(make_point(dtype, layout, output, B=B, N=N))
        else:
            out += [make_point(dtype, layout, output, B=B) for layout, output, B in QUICK
                    if layout in layouts and output in outputs]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pack")
    subset_option(group, "--layouts", SWEPT_LAYOUTS, "both")
    subset_option(group, "--outputs", OUTPUTS, "both")


# ----------------------------------------------------------------------------------
# Inputs and the oracle
# ----------------------------------------------------------------------------------
#: Rows of each point's output, filled when its case is built: (rows written, rows read).
_OUTPUT_ROWS: dict[Point, tuple[int, int]] = {}


def make_inputs(point: Point, device: torch.device) -> dict[str, Any]:
    """pack_multimodal's arguments for the point (deterministic: seeded by the point's label)."""
    B, T, N, D = (point[k] for k in "BTND")
    dtype = point.dtype
    seed = zlib.crc32(point.label.encode())
    gen = torch.Generator().manual_seed(seed)  # CPU draws for sizes: the same on every device
    before = torch.randint(TEXT_BEFORE[0], TEXT_BEFORE[1] + 1, (B,), generator=gen).tolist()
    after = torch.randint(TEXT_AFTER[0], TEXT_AFTER[1] + 1, (B,), generator=gen).tolist()
    L = max(b + 1 + a for b, a in zip(before, after))
    text_mask = torch.zeros(B, L, dtype=torch.int64)
    video_mask = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        text_mask[b, :before[b] + 1 + after[b]] = 1  # right padding
        video_mask[b, before[b]] = True  # the single placeholder position (LLaVA's <image>)
    # Which tokens each frame keeps: KVTP's counts, top-k of a random permutation (no ties).
    scores = torch.randn(B, T, generator=gen)
    token_scores = torch.randperm(B * T * N, generator=gen).reshape(B, T, N).float()
    picked = kvtp_kernels.prune(torch.zeros(B, T, N, 1), scores, point["beta"], token_scores=token_scores,
                                temperature=TEMPERATURE, backend="reference")
    dgen = torch.Generator(device=device).manual_seed(seed)
    video_tokens = torch.randn(picked.tokens.shape[0], D, generator=dgen, device=device, dtype=dtype)
    video = PrunedTokens(video_tokens, *(x.to(device) for x in picked[1:5]), picked.max_seqlen)
    return {
        "text_embeds": torch.randn(B, L, D, generator=dgen, device=device, dtype=dtype),
        "text_mask": text_mask.to(device),
        "video_mask": video_mask.to(device),
        "video": video,
        "newline": torch.randn(D, generator=dgen, device=device, dtype=dtype),
        "layout": point["layout"],
        "grid_width": GRID_WIDTH.get(N, math.isqrt(N)),
        "tokens_per_frame": N,
        "output": point["output"],
    }


def run_reference(inputs: dict[str, Any]) -> PackOutput:
    """``reference.pack_multimodal_ref`` with the arguments pack_multimodal passes (video b -> sample b)."""
    i, video = inputs, inputs["video"]
    B = i["text_embeds"].shape[0]
    sample_video = torch.arange(B, device=i["text_embeds"].device)
    padded = i["output"] == "padded"
    embeds, cu_seqlens, position_ids, source_index = ref.pack_multimodal_ref(
        i["text_embeds"], i["text_mask"], i["video_mask"], sample_video, video.tokens, video.indices,
        video.cu_seqlens, video.frame_cu_seqlens, i["newline"], i["layout"], i["grid_width"], i["tokens_per_frame"],
        padded, False)
    mask = (source_index >= 0).to(i["text_mask"].dtype) if padded else None
    return PackOutput(embeds, cu_seqlens, mask, position_ids, source_index)


def make_case(point: Point, device: torch.device) -> Case:
    inputs = make_inputs(point, device)
    expected = run_reference(inputs)
    rows_out = expected.embeds.reshape(-1, point["D"]).shape[0]
    rows_read = int((expected.source_index >= 0).sum())
    _OUTPUT_ROWS[point] = (rows_out, rows_read)
    return Case(point, device, inputs, expected)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bit pattern, so that equality is exact (signed zeros, NaN payloads)."""
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[t.element_size()])


def check(case: Case, provider: Provider, output: Any) -> None:
    """embeds bit-equal; cu_seqlens, position_ids, attention_mask (padded), source_index equal."""
    if provider.check == "none":
        return
    expected: PackOutput = case.expected
    if isinstance(output, kvtp_kernels.PackedInputs):
        output = PackOutput(output.embeds, output.cu_seqlens, output.attention_mask, output.position_ids,
                            output.source_index)
    label = f"bench pack: provider {provider.name!r} at {case.point.label}"
    for name in PackOutput._fields:
        got, want = getattr(output, name), getattr(expected, name)
        if got is None and (want is None or name == "source_index"):
            continue  # the loop builds no source_index
        if got is None or want is None:
            raise MismatchError(f"{label}: `{name}` is {'missing' if got is None else 'unexpected'}")
        if got.dtype != want.dtype or got.shape != want.shape:
            raise MismatchError(f"{label}: `{name}` is {got.dtype} {tuple(got.shape)}, expected {want.dtype} "
                                f"{tuple(want.shape)}")
        same = torch.equal(_bits(got), _bits(want)) if got.is_floating_point() else torch.equal(got, want)
        if not same:
            raise MismatchError(f"{label}: `{name}` differs from reference.pack_multimodal_ref"
                                + (" (not bit-identical)" if got.is_floating_point() else ""))


def bytes_moved(point: Point) -> int:
    if point not in _OUTPUT_ROWS:
        make_case(point, torch.device("cpu"))
    rows_out, rows_read = _OUTPUT_ROWS[point]
    return (rows_out + rows_read) * point["D"] * torch.empty((), dtype=point.dtype).element_size()


# ----------------------------------------------------------------------------------
# Baselines (written here from the authors' description of their loops, not copied)
# ----------------------------------------------------------------------------------
def pack_loop(text_embeds: torch.Tensor, text_mask: torch.Tensor, video_mask: torch.Tensor, video: PrunedTokens,
              newline: torch.Tensor, layout: str, grid_width: int, tokens_per_frame: int, output: str) -> PackOutput:
    """The authors' splicing: per-video token loops, then per-sample slicing and ``torch.cat``.

    1. Video blocks (``add_token_per_grid_prune`` / ``_random``): for each frame, its
       bounds moved to Python ints (host syncs), then a loop over its kept tokens that
       appends each row and, where the next token lies in another grid row (a tensor
       comparison per token, a sync on GPU), the newline; ``torch.stack``. "video":
       the video's rows and one newline, ``torch.cat``.
    2. Per sample (``prepare_inputs_labels_for_multimodal``): the text kept by the
       attention mask (boolean indexing), split at the placeholder, ``torch.cat`` of
       text before, the video block, text after.
    3. varlen: ``torch.cat`` of the samples, offsets and ``arange`` position ids per
       sample; padded: each sample ``torch.cat`` with zeros to the longest,
       ``torch.stack``, mask and position ids filled sample by sample.

    Changes that make the output equal to ``pack_multimodal``'s (METHOD.md section 4):
    the tokens are walked in (frame, raster) order, not score order (theirs can put a
    newline at nearly every token); a newline also ends each frame's last kept row,
    and a frame that kept nothing gets none (their ``_prune`` variant omits the first,
    their ``_random`` variant adds one for empty frames); video b goes with sample b
    and the placeholder is a position of ``video_mask`` (theirs: an ``input_ids`` value).
    """
    B, L, D = text_embeds.shape
    V, T = video.frame_counts.shape
    N, W = tokens_per_frame, grid_width
    fcu, cu = video.frame_cu_seqlens, video.cu_seqlens
    blocks = []
    for v in range(V):
        if layout == "grid":
            pieces = []
            for t in range(T):
                lo, hi = int(fcu[v * T + t]), int(fcu[v * T + t + 1])  # host syncs per frame
                if hi == lo:
                    continue
                frame_tokens = video.tokens[lo:hi]
                grid_rows = video.indices[lo:hi] % N // W
                for i in range(hi - lo - 1):
                    pieces.append(frame_tokens[i])
                    if grid_rows[i] != grid_rows[i + 1]:
                        pieces.append(newline)
                pieces.append(frame_tokens[-1])
                pieces.append(newline)
            blocks.append(torch.stack(pieces) if pieces else text_embeds.new_zeros((0, D)))
        elif layout == "video":
            blocks.append(torch.cat([video.tokens[int(cu[v]):int(cu[v + 1])], newline[None]]))
        else:
            raise ValueError(f"pack_loop: layout {layout!r} is not benchmarked")
    seqs = []
    positions = torch.arange(L, device=text_embeds.device)
    for b in range(B):
        kept = text_mask[b].bool() & ~video_mask[b]
        span = video_mask[b].nonzero().squeeze(-1)
        first, last = int(span[0]), int(span[-1])
        before = text_embeds[b][kept & (positions < first)]
        after = text_embeds[b][kept & (positions > last)]
        seqs.append(torch.cat([before, blocks[b], after]))
    lengths = [s.shape[0] for s in seqs]
    dev = text_embeds.device
    cu_seqlens = torch.tensor([0] + lengths, device=dev).cumsum(0).to(torch.int32)
    if output == "varlen":
        position_ids = torch.cat([torch.arange(n, device=dev) for n in lengths])
        return PackOutput(torch.cat(seqs), cu_seqlens, None, position_ids, None)
    longest = max(lengths)
    padded, mask = [], torch.zeros((B, longest), dtype=text_mask.dtype, device=dev)
    position_ids = torch.zeros((B, longest), dtype=torch.int64, device=dev)
    for b, (seq, n) in enumerate(zip(seqs, lengths)):
        padded.append(torch.cat([seq, seq.new_zeros((longest - n, D))]))
        mask[b, :n] = 1
        position_ids[b, :n] = torch.arange(n, device=dev)
    return PackOutput(torch.stack(padded), cu_seqlens, mask, position_ids, None)


# ----------------------------------------------------------------------------------
# Providers
# ----------------------------------------------------------------------------------
def _video_args(case: Case) -> tuple:
    i = case.inputs
    return (i["text_embeds"], i["text_mask"], i["video_mask"], i["video"])


def _build_loop(case: Case):
    i = case.inputs
    return functools.partial(pack_loop, *_video_args(case), i["newline"], i["layout"], i["grid_width"],
                             i["tokens_per_frame"], i["output"])


def _build_reference(case: Case):
    return functools.partial(run_reference, case.inputs)


def _build_ours(case: Case):
    i = case.inputs
    return functools.partial(kvtp_kernels.pack_multimodal, *_video_args(case), newline=i["newline"],
                             layout=i["layout"], grid_width=i["grid_width"], tokens_per_frame=i["tokens_per_frame"],
                             output=i["output"])


def _build_roof_clone(case: Case):
    source = torch.empty_like(case.expected.embeds)
    source.zero_()  # touched once, outside the timed region
    return source.clone


def _skip_ours(point: Point, config: RunConfig) -> str | None:
    if not ops.HAS_CPP:
        return f"C++ extension not built ({ops.CPP_IMPORT_ERROR})"
    if config.device.type == "cuda" and not getattr(ops._C, "WITH_CUDA", False):
        return "the C++ extension was built without CUDA (kvtp::pack_rows has no CUDA kernel)"
    return None


PROVIDERS = [
    Provider("loop", "baseline", _build_loop,
             description="the authors' way: per-token newline loop, per-sample slicing + torch.cat, stack"),
    Provider("reference", "baseline", _build_reference,
             description="reference.pack_multimodal_ref: vectorised PyTorch (one scatter, one gather)"),
    Provider("ours", "ours", _build_ours, skip=_skip_ours,
             description="kvtp_kernels.pack_multimodal: pack_plan + pack_rows (C++ on CPU, CUDA on GPU)"),
    Provider("roof_clone", "roof", _build_roof_clone, check="none",
             description="clone() of as many contiguous bytes as the output embeddings"),
]


# ----------------------------------------------------------------------------------
# Report, plot, flags
# ----------------------------------------------------------------------------------
def point_table(rows: Sequence[Result]) -> str:
    cuda = any(r.sync_free is not None for r in rows)
    p = rows[0].point
    rows_out, rows_read = _OUTPUT_ROWS.get(p, (None, None))
    size = "" if rows_out is None else f", {rows_out} rows out ({rows_read} filled)"
    title = (f"### {'headline' if is_headline(p) else 'point'}: {dtype_name(p.dtype)}, layout {p['layout']}, "
             f"{p['output']}, {p.shape_str} beta={p['beta']}{size}, {rows[0].bytes_moved / 1e6:.1f} MB moved")
    return title + "\n\n" + provider_table(rows, cuda=cuda)


def speedup_table(results: Sequence[Result]) -> str | None:
    rows = []
    by_point: dict[Point, dict[str, Result]] = {}
    for r in results:
        by_point.setdefault(r.point, {})[r.provider] = r
    for point, at in by_point.items():
        ours = at.get("ours")
        for name in ("loop", "reference"):
            r = at.get(name)
            if r is None:
                continue
            ratio = speedup(r, ours)
            rows.append([dtype_name(point.dtype), point["layout"], point["output"], str(point["B"]), str(point["N"]),
                         name, ms(r.timing and r.timing.median_ms), ms(ours and ours.timing and ours.timing.median_ms),
                         "-" if ratio is None else f"{ratio:.2f}x"])
    if not rows:
        return None
    return "### speedups of ours (t_baseline / t_ours, median)\n\n" + format_table(
        ["dtype", "layout", "output", "B", "N", "baseline", "baseline ms", "ours ms", "speedup"], rows)


def report(results: list[Result], config: RunConfig, env: Environment) -> str:
    by_point: dict[Point, list[Result]] = {}
    for r in results:
        by_point.setdefault(r.point, []).append(r)
    shown = [p for p in by_point if p["B"] == HEADLINE["B"] and p["N"] == HEADLINE["N"]]
    parts = [point_table(by_point[p]) for p in sorted(shown, key=lambda p: not is_headline(p))[:8]]
    return join_report([*parts, speedup_table(results)], results, env, max_points=48)


def plot(results: list[Result], path: Path) -> None:
    """Latency against B at N = 196, one panel per (dtype, layout, output) swept over B."""
    swept: dict[tuple, set[int]] = {}
    for r in results:
        if r.point["N"] == HEADLINE["N"]:
            swept.setdefault((r.point.dtype, r.point["layout"], r.point["output"]), set()).add(r.point["B"])
    keep = {key for key, bs in swept.items() if len(bs) > 1}
    plot_lines(results, path, x="B",
               panel=lambda p: f"{dtype_name(p.dtype)}, layout {p['layout']}, {p['output']}",
               keep=lambda p: p["N"] == HEADLINE["N"] and (p.dtype, p["layout"], p["output"]) in keep,
               title=f"kvtp pack_multimodal, T={HEADLINE['T']} N={HEADLINE['N']} D={HEADLINE['D']} "
                     f"beta={HEADLINE['beta']}")


BENCHMARK = register_module(
    globals(), name="pack",
    description="kvtp_kernels.pack_multimodal vs the authors' splicing loop and the vectorised reference")


if __name__ == "__main__":
    main([BENCHMARK], prog="python -m bench.bench_pack", description=__doc__.split("\n\n")[0])
