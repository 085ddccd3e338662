"""Build the LLM's input from text and pruned video tokens (METHOD.md section 4).

:func:`pack_multimodal` replaces the per-sample Python loops of LLaVA's
``prepare_inputs_labels_for_multimodal``: for every sample it writes the kept text
before the video placeholder span, the sample's pruned video tokens with newline
embeddings, then the kept text after the span, either packed across the batch
(flash-attn's varlen convention) or padded. Two torch ops do the work:

======================  ===================================================================
op                      what it does
======================  ===================================================================
``kvtp::pack_plan``     masks + PrunedTokens offsets -> per-sample counts, ``cu_seqlens``,
                        the index tables of ``csrc/include/kvtp/pack.h`` and a summary
                        (ATen ops in ``csrc/pack_ops.cpp``; the same code on CPU and CUDA)
``kvtp::pack_rows``     one pass over the output rows: each row's source by binary search,
                        a vectorised row copy (``csrc/pack_cpu.cpp``, ``csrc/pack_cuda.cu``)
======================  ===================================================================

Their schemas, fakes and autograd are :data:`kvtp_kernels.ops.PACK_PLAN` and
:data:`kvtp_kernels.ops.PACK_ROWS` (schemas defined in ``csrc/ops.cpp``). Every output
shape is fixed by the arguments (``length`` included), so both ops have shape-only
fakes. The output size itself is data dependent; :func:`pack_multimodal`
reads it, together with the validity of every sample's placeholder span, in one
device-to-host sync (``summary.tolist()``), which the caller avoids on CUDA by passing
``length``.

``source_index`` numbers the sources as one concatenation: ``b*L + l`` is text
position l of sample b, ``B*L + k`` row k of the packed video tokens, ``B*L + Kt`` the
newline, -1 padding. The backward pass is one ``index_add_`` into that concatenation
(the newline, which appears many times, accumulates), :func:`unpack` one
``index_copy_``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch

from . import ops
from ._errors import as_int
from ._numerics import INT32_MAX
from .api import PrunedTokens, _describe, _fail
from .options import LAYOUTS, OUTPUTS, PADDING_SIDES, check_choice

#: Error codes of the plan's summary (csrc/pack_ops.cpp).
_VIDEO_WITHOUT_SPAN, _SPAN_WITHOUT_VIDEO, _SPAN_NOT_CONTIGUOUS, _SPAN_OUTSIDE_TEXT = 1, 2, 3, 4
_INT_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class PackedInputs(NamedTuple):
    """What :func:`pack_multimodal` returns: the LLM's input.

    Attributes:
        embeds: ``[total, D]`` (varlen) or ``[B, L_out, D]`` (padded), dtype of the
            inputs: bit-identical copies of text rows, video rows and the newline;
            padding rows are zeros.
        cu_seqlens: int32 [B + 1]: sample offsets into the varlen rows (flash-attn);
            given for both outputs (``diff()`` = every sample's length).
        attention_mask: padded output: [B, L_out] in the dtype of ``text_mask``
            (int64 without one), 1 on tokens and 0 on padding; ``None`` for varlen.
        position_ids: int64, shape of ``embeds`` without D: 0, 1, ... within each
            sample, 0 on padding.
        source_index: int64, shape of ``embeds`` without D: ``b*L + l`` for text
            position (b, l), ``B*L + k`` for video row k, ``B*L + Kt`` for the newline,
            -1 for padding.
        max_seqlen: varlen: the longest sample, or ``length`` when the caller gave it
            (an upper bound, which flash-attn accepts); padded: ``L_out``.
        text_shape: (B, L) of ``text_embeds``; with ``num_video_rows`` it decodes
            ``source_index`` (see :func:`unpack`).
        num_video_rows: Kt, rows of the packed video tokens.
    """

    embeds: torch.Tensor
    cu_seqlens: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor
    source_index: torch.Tensor
    max_seqlen: int
    text_shape: tuple[int, int]
    num_video_rows: int


class UnpackedRows(NamedTuple):
    """What :func:`unpack` returns.

    Attributes:
        text: [B, L, D'] rows at their text positions; zeros at the placeholder
            span, at positions ``text_mask`` excludes, and where ``length`` cut rows.
        video: [Kt, D'] rows of the packed video tokens' order.
    """

    text: torch.Tensor
    video: torch.Tensor


# ----------------------------------------------------------------------------------
# Argument checks: static ones here (no data read), data ones from the plan's summary
# ----------------------------------------------------------------------------------
def _check_mask(arg: str, mask: object, B: int, L: int, device: torch.device) -> None:
    if not isinstance(mask, torch.Tensor):
        _fail(arg, "a torch.Tensor", type(mask).__name__)
    if tuple(mask.shape) != (B, L) or mask.dtype not in _INT_DTYPES or mask.device != device:
        _fail(arg, f"a bool or integer tensor of shape [B, L] = [{B}, {L}] on {device}", _describe(mask))


def _check_offsets(arg: str, t: object, dtype: torch.dtype, size: int | None, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        _fail(arg, f"a {dtype} tensor", type(t).__name__)
    if t.dtype != dtype or t.dim() != 1 or (size is not None and t.shape[0] != size) or t.device != device:
        want = "[*]" if size is None else f"[{size}]"
        _fail(arg, f"a {dtype} tensor of shape {want} on {device}", _describe(t))


def _check_video(video: PrunedTokens, D: int, dtype: torch.dtype, device: torch.device) -> tuple[int, int]:
    """-> (V videos, T frames per video)."""
    if not isinstance(video, PrunedTokens):
        _fail("video", "a PrunedTokens (from kvtp_kernels.prune) or None", type(video).__name__)
    tokens = video.tokens
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] != D:
        _fail("video.tokens", f"of shape [Kt, D] with D = {D} (the D of `text_embeds`)",
              _describe(tokens))
    if tokens.dtype != dtype or tokens.device != device:
        _fail("video.tokens", f"{dtype} on {device} (like `text_embeds`)", _describe(tokens))
    Kt = tokens.shape[0]
    _check_offsets("video.indices", video.indices, torch.int64, Kt, device)
    _check_offsets("video.cu_seqlens", video.cu_seqlens, torch.int32, None, device)
    V = video.cu_seqlens.shape[0] - 1
    if V < 1:
        _fail("video.cu_seqlens", "of shape [V + 1] with V >= 1 videos", _describe(video.cu_seqlens))
    counts = video.frame_counts
    if not isinstance(counts, torch.Tensor) or counts.dtype != torch.int32 or counts.dim() not in (1, 2) or (
            counts.dim() == 2 and counts.shape[0] != V) or (counts.dim() == 1 and V != 1):
        _fail("video.frame_counts", f"an int32 tensor of shape [V, T] with V = {V} (or [T] for one video)",
              _describe(counts))
    T = counts.shape[-1]
    _check_offsets("video.frame_cu_seqlens", video.frame_cu_seqlens, torch.int32, V * T + 1, device)
    return V, T


#: What each flag of :func:`_video_flags` asserts, with the field it names.
_VIDEO_CHECKS = (
    ("video.cu_seqlens", "offsets starting at 0"),
    ("video.cu_seqlens", "non-decreasing offsets"),
    ("video.cu_seqlens", "offsets ending at Kt = video.tokens.shape[0]"),
    ("video.frame_cu_seqlens", "offsets starting at 0, non-decreasing, ending at Kt = video.tokens.shape[0]"),
    ("video.frame_counts", "the differences of video.frame_cu_seqlens (the rows of each frame)"),
    ("video.cu_seqlens", "video.frame_cu_seqlens at every T-th entry (video v starts where its first frame does)"),
    ("video.frame_counts", "in [0, tokens_per_frame] (tokens kept per frame of N = tokens_per_frame)"),
    ("video.indices", "flat indices (v*T + t)*N + n of each row's own frame, with N = tokens_per_frame"),
)


def _video_flags(video: PrunedTokens, V: int, T: int, tokens_per_frame: int | None) -> torch.Tensor:
    """int64 [len(_VIDEO_CHECKS)]: 1 where the offsets of ``video`` hold, 0 where not. Tensor
    ops only (no sync): read together with the plan's summary."""
    cu = video.cu_seqlens.long()
    fcu = video.frame_cu_seqlens.long()
    Kt = video.tokens.shape[0]
    counts = video.frame_counts.reshape(V * T).long()
    true = torch.ones((), dtype=torch.bool, device=cu.device)
    flags = [cu[0] == 0, (cu[1:] >= cu[:-1]).all(), cu[-1] == Kt,
             (fcu[0] == 0) & (fcu[1:] >= fcu[:-1]).all() & (fcu[-1] == Kt),
             (counts == fcu[1:] - fcu[:-1]).all(),
             (fcu[::T] == cu).all() if T > 0 else (cu == 0).all()]
    if tokens_per_frame is not None:
        N = tokens_per_frame
        flags.append(((counts >= 0) & (counts <= N)).all())
        if Kt > 0 and T > 0:
            rows = torch.arange(Kt, device=cu.device)
            frame = torch.searchsorted(fcu[1:], rows, right=True)  # frame of each row
            flags.append((torch.div(video.indices, N, rounding_mode="floor") == frame).all()
                         & (video.indices >= 0).all())
        else:
            flags.append(true)
    else:
        flags += [true, true]
    return torch.stack(flags).long()


def _raise_for_video(flags: list[int], video: PrunedTokens) -> None:
    for ok, (field, expected) in zip(flags, _VIDEO_CHECKS):
        if not ok:
            value = {"video.cu_seqlens": video.cu_seqlens, "video.frame_cu_seqlens": video.frame_cu_seqlens,
                     "video.frame_counts": video.frame_counts, "video.indices": video.indices}[field]
            shown = value.reshape(-1)[:16].tolist()
            more = " ..." if value.numel() > 16 else ""
            _fail(field, f"consistent with the other PrunedTokens fields: {expected}",
                  f"{shown}{more} (Kt = {video.tokens.shape[0]} rows)")


def _check_sample_to_video(sample_to_video: object, B: int, V: int) -> list[int] | None:
    """-> the mapping as a list, or None for the identity."""
    if sample_to_video is None:
        if V != B:
            _fail("sample_to_video", f"given when the number of videos ({V}) differs from the batch size B = {B} "
                  "(None means video b belongs to sample b)", None)
        return None
    if isinstance(sample_to_video, torch.Tensor):
        if sample_to_video.device.type != "cpu":
            _fail("sample_to_video", "a sequence of ints or a CPU tensor (reading a device tensor would sync)",
                  _describe(sample_to_video))
        sample_to_video = sample_to_video.tolist()
    elif hasattr(sample_to_video, "__array__") and hasattr(sample_to_video, "tolist"):  # a numpy array
        sample_to_video = sample_to_video.tolist()
    if not isinstance(sample_to_video, Sequence) or len(sample_to_video) != B or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in sample_to_video):
        _fail("sample_to_video", f"a sequence of B = {B} ints (video of each sample, -1 for none)",
              repr(sample_to_video))
    sample_to_video = [int(v) for v in sample_to_video]
    used = sorted(v for v in sample_to_video if v != -1)
    if used != list(range(V)):
        _fail("sample_to_video", f"a mapping that names each of the {V} videos exactly once (other entries -1)",
              repr(list(sample_to_video)))
    return list(sample_to_video)


def _raise_for_sample(sample: int, code: int, sample_to_video: list[int] | None) -> None:
    video = sample if sample_to_video is None else sample_to_video[sample]
    if code == _VIDEO_WITHOUT_SPAN:
        _fail("video_mask", f"True on the placeholder positions of sample {sample}, which has video {video}",
              "no True position in that row")
    if code == _SPAN_WITHOUT_VIDEO:
        _fail("video_mask", f"all False for sample {sample}, which has no video (sample_to_video[{sample}] = -1)",
              "True positions in that row")
    if code == _SPAN_NOT_CONTIGUOUS:
        _fail("video_mask", "one contiguous run of True positions per sample (the video span)",
              f"several runs in sample {sample}")
    if code == _SPAN_OUTSIDE_TEXT:
        _fail("video_mask", "True only where `text_mask` is nonzero (the span lies inside the sample's text)",
              f"placeholder positions outside the text of sample {sample}")
    raise AssertionError(f"kvtp_kernels: unknown pack_plan error code {code}")


# ----------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------
def pack_multimodal(
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor | None,
    video_mask: torch.Tensor | None,
    video: PrunedTokens | None,
    *,
    newline: torch.Tensor | None = None,
    layout: str = "grid",
    grid_width: int | None = None,
    tokens_per_frame: int | None = None,
    sample_to_video: Sequence[int] | torch.Tensor | None = None,
    output: str = "varlen",
    padding_side: str = "right",
    length: int | None = None,
) -> PackedInputs:
    """Build the LLM input: text with each sample's pruned video spliced into its placeholder span.

    Sample b's sequence is its kept text before the span, the video block (its rows
    with newlines per ``layout``, see the module docstring), then its kept text after
    the span, where kept text = positions with ``text_mask`` nonzero and ``video_mask``
    zero, in position order (left-padded prompts work: the text need not be a prefix).

    Args:
        text_embeds: [B, L, D] float32/float16/bfloat16 (or float64): the embedded
            prompts including the (unpruned) placeholder positions. Any strides with
            unit stride along D (otherwise it is copied to be contiguous).
        text_mask: [B, L] bool or integer (HF attention mask), nonzero = text;
            ``None`` = every position.
        video_mask: [B, L] bool or integer, nonzero on the placeholder positions: one
            contiguous run inside the text for a sample with a video, none for a
            sample without. May be ``None`` when ``video`` is.
        video: the :class:`~kvtp_kernels.api.PrunedTokens` of V videos
            (``tokens`` [Kt, D] of the dtype and device of ``text_embeds``, int64
            ``indices``, int32 ``cu_seqlens`` [V + 1], ``frame_counts`` [V, T] and
            ``frame_cu_seqlens`` [V*T + 1]); ``None`` for text only.
        newline: [D], dtype of ``text_embeds``; required unless ``layout="none"``
            (ignored there).
        layout: "grid", "frame", "video" or "none".
        grid_width: W of the H x W token grid; required for ``"grid"``.
        tokens_per_frame: N of the pruned input's [.., T, N, D] (the video indices
            are ``(v*T + t)*N + n``); required for ``"grid"``.
        sample_to_video: video of each sample, -1 for a sample without one; each
            video used exactly once. A sequence of ints or a CPU tensor. ``None``:
            video b belongs to sample b (needs V == B).
        output: "varlen" ([total, D] rows + ``cu_seqlens``) or "padded"
            ([B, L_out, D] + ``attention_mask``).
        padding_side: "right" or "left" (padded output).
        length: rows of the varlen output, or ``L_out`` of the padded one. ``None``
            computes it (the longest sample for padded), which costs the call's one
            device-to-host sync. Given, there is no sync on CUDA; it may exceed what
            is needed (extra varlen rows at the end and extra padding are zero rows
            with ``source_index`` -1).

    Returns:
        :class:`PackedInputs`.

    Raises:
        ValueError: naming the argument, before any output is written (the module
            docstring lists what is checked, and when).
    """
    newline, grid_width, tokens_per_frame, length = _check_arguments(
        text_embeds, text_mask, layout, output, padding_side, newline, grid_width, tokens_per_frame, length)
    src = _video_sources(text_embeds, video_mask, video, sample_to_video, layout, tokens_per_frame, length)
    text_embeds, video_tokens = _unit_stride(text_embeds), _unit_stride(src.tokens)
    plan = ops.PACK_PLAN(
        text_mask=text_mask, video_mask=src.video_mask, sample_video=src.sample_video, video_cu_seqlens=src.cu,
        video_indices=src.indices, layout=layout, num_frames=src.num_frames, grid_width=grid_width or 0,
        tokens_per_frame=tokens_per_frame or 0)
    cu_seqlens, sample_info, text_rank, newline_cu, summary = plan
    padded = output == "padded"
    length, max_seqlen = _output_length(summary, src, video, padded, length, text_embeds.device)
    embeds, source_index, position_ids = ops.PACK_ROWS(
        text_embeds=text_embeds, video_tokens=video_tokens, newline=newline, cu_seqlens=cu_seqlens,
        sample_info=sample_info, text_rank=text_rank, frame_cu_seqlens=src.frame_cu, newline_cu=newline_cu,
        layout=layout, num_frames=src.num_frames, length=length, padded=padded, left_padding=padding_side == "left")
    attention_mask = None
    if padded:
        attention_mask = (source_index >= 0).to(text_mask.dtype if text_mask is not None else torch.int64)
    return PackedInputs(embeds, cu_seqlens, attention_mask, position_ids, source_index, max_seqlen,
                        tuple(text_embeds.shape[:2]), video_tokens.shape[0])


def _check_arguments(text_embeds, text_mask, layout, output, padding_side, newline, grid_width, tokens_per_frame,
                     length):
    """Static checks (no data read) -> (newline, grid_width, tokens_per_frame, length) as used."""
    if not isinstance(text_embeds, torch.Tensor):
        _fail("text_embeds", "a torch.Tensor of shape [B, L, D]", type(text_embeds).__name__)
    if text_embeds.dim() != 3 or not text_embeds.is_floating_point() or min(text_embeds.shape) == 0:
        _fail("text_embeds", "a non-empty floating-point tensor of shape [B, L, D]", _describe(text_embeds))
    B, L, D = text_embeds.shape
    dtype, device = text_embeds.dtype, text_embeds.device
    if text_mask is not None:
        _check_mask("text_mask", text_mask, B, L, device)
    check_choice(_fail, "layout", layout, LAYOUTS)
    check_choice(_fail, "output", output, OUTPUTS)
    check_choice(_fail, "padding_side", padding_side, PADDING_SIDES)
    if layout == "grid":
        grid_width = as_int(_fail, "grid_width", grid_width, what="an int >= 1 for layout='grid'")
        tokens_per_frame = as_int(_fail, "tokens_per_frame", tokens_per_frame, what="an int >= 1 for layout='grid'")
        for arg, value in (("grid_width", grid_width), ("tokens_per_frame", tokens_per_frame)):
            if value < 1:
                _fail(arg, "an int >= 1 for layout='grid'", repr(value))
    if length is not None:
        length = as_int(_fail, "length", length, what="None or an int >= 0")
        if length < 0:
            _fail("length", "None or an int >= 0", repr(length))
    if layout == "none":
        newline = None
    elif not isinstance(newline, torch.Tensor):
        _fail("newline", f"a [D] tensor for layout={layout!r}", type(newline).__name__)
    elif tuple(newline.shape) != (D,) or newline.dtype != dtype or newline.device != device:
        _fail("newline", f"a {dtype} tensor of shape [D] = [{D}] on {device} (like `text_embeds`)",
              _describe(newline))
    return (newline.contiguous() if newline is not None else None), grid_width, tokens_per_frame, length


def _unit_stride(rows: torch.Tensor) -> torch.Tensor:
    """Byte copies need unit stride along D (the last dimension); other strides are honoured."""
    return rows.contiguous() if rows.shape[-1] > 1 and rows.stride(-1) != 1 else rows


class _VideoSources(NamedTuple):
    """The plan's video inputs (empty ones for text only), checked."""

    tokens: torch.Tensor
    indices: torch.Tensor
    cu: torch.Tensor
    frame_cu: torch.Tensor
    num_frames: int
    video_mask: torch.Tensor
    mapping: list[int] | None
    sample_video: torch.Tensor | None
    flags: torch.Tensor | None  # consistency flags of `video` still to be read with the summary


def _video_sources(text_embeds, video_mask, video, sample_to_video, layout, tokens_per_frame,
                   length) -> _VideoSources:
    """Checks ``video``, ``video_mask`` and ``sample_to_video``; -> the plan's video inputs.

    The consistency flags of ``video`` are read here on CPU (free, before the plan);
    elsewhere they are returned, to be read with the plan's summary, and not computed
    at all when the summary is not read (``length`` given: see :func:`_output_length`).
    """
    B, L, D = text_embeds.shape
    device = text_embeds.device
    if video is None:
        if video_mask is None:
            video_mask = torch.zeros((B, L), dtype=torch.bool, device=device)
        mapping = [-1] * B if sample_to_video is None else _check_sample_to_video(sample_to_video, B, 0)
        empty = torch.zeros((1,), dtype=torch.int32, device=device)
        rows = (text_embeds.new_empty((0, D)), torch.empty((0,), dtype=torch.int64, device=device), empty, empty, 0)
    else:
        V, num_frames = _check_video(video, D, text_embeds.dtype, device)
        mapping = _check_sample_to_video(sample_to_video, B, V)
        rows = (video.tokens, video.indices, video.cu_seqlens, video.frame_cu_seqlens, num_frames)
    _check_mask("video_mask", video_mask, B, L, device)
    sample_video = None
    if mapping is not None:
        sample_video = torch.tensor(mapping, dtype=torch.int64)
        if device.type == "cuda":  # from pinned memory the copy is asynchronous: no hidden sync
            sample_video = sample_video.pin_memory().to(device, non_blocking=True)
        else:
            sample_video = sample_video.to(device)
    flags = None
    free = device.type == "cpu" and not torch.compiler.is_compiling()
    if video is not None and (free or length is None):
        flags = _video_flags(video, V, num_frames, tokens_per_frame if layout == "grid" else None)
        if free:  # free to read: before the plan
            read = flags.tolist()
            if not all(read):
                _raise_for_video(read, video)
            flags = None
    return _VideoSources(*rows, video_mask, mapping, sample_video, flags)


def _output_length(summary, src, video, padded, length, device) -> tuple[int, int | None]:
    """-> (rows or L_out of the output, max_seqlen), reading the plan's summary where needed.

    The summary is read where that is free (CPU) and where the size is needed anyway;
    under torch.compile only in the latter case, since reading it breaks the graph.
    """
    max_seqlen = length
    if length is None or (device.type == "cpu" and not torch.compiler.is_compiling()):
        read = summary if src.flags is None else torch.cat([summary, src.flags])
        total, longest, bad_sample, code, *flags = read.tolist()  # the one device-to-host sync
        if flags and not all(flags):
            _raise_for_video(flags, video)
        if bad_sample >= 0:
            _raise_for_sample(bad_sample, code, src.mapping)
        if total > INT32_MAX:
            _fail("text_embeds", f"a batch whose packed length fits int32 cu_seqlens (<= {INT32_MAX})",
                  f"{total} rows")
        needed = longest if padded else total
        if length is None:
            length = needed
            max_seqlen = longest
        elif length < needed:
            what = "the longest sample" if padded else "the packed rows"
            _fail("length", f">= {needed} ({what})", length)
    return length, max_seqlen


def unpack(values: torch.Tensor, packed: PackedInputs) -> UnpackedRows:
    """Scatter packed rows back to the layout of the sources: one ``index_copy_``.

    Args:
        values: rows laid out like ``packed.embeds`` with any last dimension D':
            [total, D'] (varlen; or a jagged nested tensor over it, e.g.
            ``torch.nested.nested_tensor_from_jagged(embeds, cu_seqlens)``) or
            [B, L_out, D'] (padded); e.g. ``packed.embeds`` itself or the LLM's
            hidden states.
        packed: the :class:`PackedInputs` that laid the rows out.

    Returns:
        :class:`UnpackedRows`: ``text`` [B, L, D'] and ``video`` [Kt, D']. Newline and
        padding rows are dropped. ``unpack(packed.embeds, packed)`` gives back the
        text rows that were packed (zeros elsewhere) and the video tokens exactly.
    """
    if isinstance(values, torch.Tensor) and values.is_nested:
        values = values.values()
    src = packed.source_index
    if not isinstance(values, torch.Tensor) or values.dim() != src.dim() + 1 or values.shape[:-1] != src.shape:
        _fail("values", f"a tensor of shape [{', '.join(map(str, src.shape))}, D'] (the rows of packed.embeds)",
              _describe(values))
    B, L = packed.text_shape
    text_rows, video_rows = B * L, packed.num_video_rows
    rows = ops.to_sources(values.reshape(-1, values.shape[-1]), src.reshape(-1), text_rows, video_rows,
                       accumulate=False)
    return UnpackedRows(rows[:text_rows].view(B, L, -1), rows[text_rows:text_rows + video_rows])
