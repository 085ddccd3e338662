"""Model-agnostic KVTP for a VLM's LLM input: video features + placeholder mask -> pruned inputs.

Any VLM that splices projected video tokens into a placeholder span of its prompt
can use KVTP through :func:`prune_video_inputs`:

    inputs: the embedded prompts ``inputs_embeds`` [B, L, D] (placeholder positions
            included, any content), the placeholder mask [B, L], the attention mask,
            and the video features [V, T, N, D] (or a list of V [T_v, N, D] for videos
            of different lengths), plus optional frame scores / token importance.
    output: shortened ``inputs_embeds`` [B, L', D], ``attention_mask`` [B, L'],
            ``position_ids`` [B, L'] (and labels, if given), where each sample's
            placeholder span is replaced by its video's K kept tokens (+ newlines).

It runs :func:`kvtp_kernels.prune` (one call per distinct frame count T) and
:func:`kvtp_kernels.pack_multimodal` (one call, padded output). Video v goes to
the v-th sample that has a placeholder span (the order in which HF's
``masked_scatter`` fills placeholders); samples without a span keep their text
untouched; one video per sample.

Models whose positions are not the token index (M-RoPE), whose placeholders are split
(one span per frame) or that take their kept rows through their own encoder call use the
keep-mask path instead (:func:`.keep_mask.prune_to_keep_mask`, wired by
:mod:`.keep_mask_adapter` for Qwen-VL and LLaVA-NeXT-Video).

Wiring another VLM (what :mod:`.llava_onevision` does for LLaVA-Video):

1. Find the entry points that fix the sequence length (``forward`` and
   ``generate``) and wrap them on the instance with ``functools.wraps`` so that
   signatures, which ``generate`` inspects, are kept.
2. In the wrapper, when video pixels are present: embed the prompt
   (``model.get_input_embeddings()(input_ids)``), compute the video features
   with the model's own vision path (for HF models, ``get_video_features``), and
   reshape them to [V, T, N, D] (split off any newline rows the model appends:
   pass the model's newline embedding as ``newline`` and pick the ``layout``
   that reproduces its newline placement).
3. Call :func:`prune_video_inputs` and then the original forward/generate with
   ``inputs_embeds``, the new ``attention_mask`` and (for forward, if the user
   gave them) ``position_ids``; drop the video pixels so the model does not
   encode them again. Keep image inputs: the model fills image placeholders
   itself (text rows, image placeholders included, are copied bit for bit).
4. For generate, re-prepend the prompt ids to the returned new tokens (HF
   returns only new tokens when given ``inputs_embeds``).

Host syncs: :func:`locate_videos` reads per-sample counts (one ``tolist``) to map
samples to videos and to check every placeholder span; the padding side is read
from the mask's first/last column; packing reads its summary once; the
accounting reads the output lengths and keep counts; videos of different lengths
read their offsets once more to merge the per-length prune calls. These are a few
small integration-level reads per call (the prompt is processed once), not
per-token work; the kernels themselves stay sync-free in exact mode.

This module holds the cut itself; its pieces, re-exported here, live in
:mod:`.settings` (settings, accounting, results), :mod:`.placement` (where the
videos sit in the prompt), :mod:`.frames` (pixels for a tower or the predictor) and
:mod:`.pruning` (per-video arguments, one prune call per shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .._errors import as_int
from .._errors import describe as _describe
from .._numerics import offsets_from_counts
from ..api import PrunedTokens
from ..options import LAYOUTS
from ..pack import pack_multimodal
from .frames import predictor_scores, renormalize_pixels, video_pixel_values
from .placement import infer_padding_side, locate_videos, placeholder_length
from .pruning import check_video_scores, group_by_shape, prune_by_shape, prune_group
from .settings import (
    KVTPSettings,
    KVTPStats,
    VideoPlacement,
    VideoPruneResult,
    _fail,
    count_prefill_flops,
    resolve_settings,
)

__all__ = [
    "LAYOUTS",
    "KVTPSettings",
    "KVTPStats",
    "VideoPlacement",
    "VideoPruneResult",
    "infer_padding_side",
    "locate_videos",
    "placeholder_length",
    "predictor_scores",
    "prune_video_inputs",
    "renormalize_pixels",
    "video_pixel_values",
]


def prune_video_inputs(
    inputs_embeds: torch.Tensor,
    video_mask: torch.Tensor,
    video_features: torch.Tensor | Sequence[torch.Tensor],
    *,
    attention_mask: torch.Tensor | None = None,
    scores: torch.Tensor | Sequence[torch.Tensor] | None = None,
    token_scores: torch.Tensor | Sequence[torch.Tensor] | None = None,
    settings: KVTPSettings | None = None,
    newline: torch.Tensor | None = None,
    grid_width: int | None = None,
    placeholders_per_video: Sequence[int] | None = None,
    padding_side: str | None = None,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    placement: VideoPlacement | None = None,
    flops_config: Any = None,
) -> VideoPruneResult:
    """Replace each sample's video placeholder span by its KVTP-pruned video.

    Args:
        inputs_embeds: [B, L, D] embedded prompts (float32/16, bfloat16); text rows
            (image placeholders included) are copied bit for bit.
        video_mask: [B, L] bool/int, nonzero on the video placeholder positions
            (one contiguous span per sample with a video, none otherwise).
        video_features: [V, T, N, D] or a sequence of V [T_v, N, D] tensors (videos
            of different lengths): the projected tokens of every frame, without
            newline rows. Cast to the dtype/device of ``inputs_embeds`` (as HF's
            ``masked_scatter`` path does).
        attention_mask: [B, L] (1 = token) or None (no padding).
        scores: frame relevance logits, [V, T] or V tensors [T_v]; None = uniform
            (every frame gets K/T tokens by largest remainder: plain per-frame top-k).
        token_scores: within-frame importance, [V, T, N] or V [T_v, N]; None =
            distinctiveness (``kvtp_kernels.prune``'s default).
        settings: :class:`KVTPSettings` (budget, temperature, allocation, m, layout, backend).
        newline: [D] newline embedding; required unless ``settings.layout == "none"``.
        grid_width: W of the N = H x W token grid (layout "grid").
        placeholders_per_video: expected span length of each video (V ints); None:
            :func:`placeholder_length` of the layout. Checked per sample.
        padding_side: "left" / "right" for the output; None: that of ``attention_mask``.
        labels: [B, L] optional; moved with the text rows.
        placement: a :class:`VideoPlacement` already computed (skips the sync).
        flops_config: an LLM config for the FLOPs accounting (None: no FLOPs).

    Returns:
        :class:`VideoPruneResult`.

    Raises:
        ValueError: naming the argument: bad shapes, a placeholder count that does
            not match its video, several spans in one sample, a layout "frame" with
            videos of different lengths, a budget larger than a video.
    """
    settings = resolve_settings(settings)
    inputs = _check_inputs(inputs_embeds, video_mask, video_features, attention_mask, settings.layout, newline,
                           grid_width)
    score_list, token_list = check_video_scores(inputs.features, scores, token_scores, unit="frame", tokens="N")
    placement, padding_side = _plan_placement(inputs, placement, settings.layout, placeholders_per_video,
                                              padding_side)
    pruned = _prune_videos(inputs.features, score_list, token_list, settings)
    packed = pack_multimodal(inputs.embeds, inputs.attention_mask, inputs.video_mask, pruned, newline=inputs.newline,
                             layout=settings.layout, grid_width=inputs.grid_width, tokens_per_frame=inputs.N,
                             sample_to_video=placement.sample_to_video, output="padded", padding_side=padding_side)
    new_labels = None if labels is None else _move_labels(labels, packed.source_index, inputs.embeds, ignore_index)
    stats = count_prefill_flops(_stats(placement, packed.cu_seqlens, pruned, inputs.features), flops_config)
    return VideoPruneResult(packed.embeds, packed.attention_mask, packed.position_ids, new_labels, pruned, packed,
                            stats)


class _Inputs(NamedTuple):
    """The checked inputs of :func:`prune_video_inputs`, on the embeddings' device (features in their dtype)."""

    embeds: torch.Tensor
    video_mask: torch.Tensor
    attention_mask: torch.Tensor | None
    features: list[torch.Tensor]
    N: int
    newline: torch.Tensor | None
    grid_width: int | None


def _check_inputs(inputs_embeds, video_mask, video_features, attention_mask, layout: str, newline,
                  grid_width) -> _Inputs:
    """Check the prompt, the masks, the features and the layout's newline / grid width."""
    if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3 or not inputs_embeds.is_floating_point():
        _fail("inputs_embeds", "a float [B, L, D] tensor", _describe(inputs_embeds))
    B, L, D = inputs_embeds.shape
    dtype, device = inputs_embeds.dtype, inputs_embeds.device
    if not isinstance(video_mask, torch.Tensor) or tuple(video_mask.shape) != (B, L):
        _fail("video_mask", f"a [B, L] = [{B}, {L}] tensor", _describe(video_mask))
    video_mask = video_mask.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    features, N = _check_features(video_features, D, device, dtype)
    frame_counts = [f.shape[0] for f in features]
    if layout == "frame" and len(set(frame_counts)) > 1:
        _fail("layout", "'video', 'grid' or 'none' for videos of different lengths (the 'frame' layout writes "
              "the same number of newlines for every video)", f"'frame' with frame counts {frame_counts}")
    if layout == "grid":
        grid_width = as_int(_fail, "grid_width", grid_width, what="an int >= 1 for layout='grid'")
        if grid_width < 1:
            _fail("grid_width", "an int >= 1 for layout='grid'", repr(grid_width))
    if layout != "none" and (not isinstance(newline, torch.Tensor) or newline.numel() != D):
        _fail("newline", f"a [D = {D}] tensor for layout={layout!r}", _describe(newline))
    newline = newline.reshape(D).to(device=device, dtype=dtype) if layout != "none" else None
    return _Inputs(inputs_embeds, video_mask, attention_mask, features, N, newline, grid_width)


def _check_features(video_features, D: int, device, dtype) -> tuple[list[torch.Tensor], int]:
    """Video features -> (a list of [T_v, N, D] in the embeddings' dtype and device, N)."""
    if isinstance(video_features, torch.Tensor):
        if video_features.dim() != 4:
            _fail("video_features", "a [V, T, N, D] tensor or a sequence of [T_v, N, D]", _describe(video_features))
        features = list(video_features.unbind(0))
    elif isinstance(video_features, (list, tuple)) and len(video_features) > 0:
        features = list(video_features)
    else:
        _fail("video_features", "a [V, T, N, D] tensor or a non-empty sequence of [T_v, N, D]",
              _describe(video_features))
    N = None
    for v, f in enumerate(features):
        if not isinstance(f, torch.Tensor) or f.dim() != 3 or f.shape[-1] != D or not f.is_floating_point() or (
                N is not None and f.shape[1] != N) or min(f.shape) == 0:
            _fail(f"video_features[{v}]", f"a non-empty float [T_v, N, D = {D}] tensor"
                  + (f" with N = {N}" if N is not None else ""), _describe(f))
        N = f.shape[1]
        features[v] = f.to(device=device, dtype=dtype)
    return features, N


def _plan_placement(inputs: _Inputs, placement: VideoPlacement | None, layout: str,
                    placeholders_per_video: Sequence[int] | None,
                    padding_side: str | None) -> tuple[VideoPlacement, str]:
    """Locate the videos (unless given), check every span's length, pick the output's padding side."""
    features, N = inputs.features, inputs.N
    V = len(features)
    frame_counts = [f.shape[0] for f in features]
    if placement is None:
        placement = locate_videos(inputs.video_mask, inputs.attention_mask, V)
    expected = ([placeholder_length(T, N, layout, inputs.grid_width) for T in frame_counts]
                if placeholders_per_video is None else list(placeholders_per_video))
    if len(expected) != V:
        _fail("placeholders_per_video", f"V = {V} ints", repr(expected))
    for b, v in enumerate(placement.sample_to_video):
        if v >= 0 and placement.span_lengths[b] != expected[v]:
            _fail("input_ids", f"{expected[v]} video placeholder tokens in sample {b} (its video {v} has "
                  f"T = {frame_counts[v]} frames x N = {N} tokens)", f"{placement.span_lengths[b]} placeholders")
    if padding_side is None:
        padding_side = infer_padding_side(inputs.attention_mask)
    return placement, padding_side


def _prune_videos(features: list[torch.Tensor], scores: list | None, token_scores: list | None,
                  settings: KVTPSettings) -> PrunedTokens:
    """Prune several videos (possibly of different lengths) -> PrunedTokens over [V, T_max, N] indices."""
    groups = group_by_shape(features)
    if len(groups) == 1:
        return prune_group(features, next(iter(groups.values())), scores, token_scores, settings)
    # Mixed lengths: rows video by video, indices re-expressed in [V, T_max, N].
    N = features[0].shape[1]
    T_max = max(T for T, _ in groups)
    per_video = prune_by_shape(features, scores, token_scores, settings)
    tokens = torch.cat([rows for rows, _, _ in per_video])
    indices = torch.cat([local + v * T_max * N for v, (_, local, _) in enumerate(per_video)])
    frame_counts = torch.tensor([counts + [0] * (T_max - len(counts)) for _, _, counts in per_video],
                                dtype=torch.int32, device=features[0].device)
    cu_seqlens, frame_cu = offsets_from_counts(frame_counts)
    max_seqlen = max(rows.shape[0] for rows, _, _ in per_video)
    return PrunedTokens(tokens, indices, frame_counts, cu_seqlens, frame_cu, max_seqlen)


def _move_labels(labels, source_index: torch.Tensor, embeds: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Labels [B, L] -> [B, L'] moved with their text rows, ``ignore_index`` elsewhere."""
    B, L = embeds.shape[:2]
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != (B, L):
        _fail("labels", f"a [B, L] = [{B}, {L}] tensor", _describe(labels))
    src = source_index
    is_text = (src >= 0) & (src < B * L)
    moved = labels.to(embeds.device).reshape(-1).index_select(0, src.clamp(0, B * L - 1).reshape(-1)).view_as(src)
    return torch.where(is_text, moved, torch.full_like(moved, ignore_index))


def _stats(placement: VideoPlacement, cu_seqlens: torch.Tensor, pruned: PrunedTokens,
           features: list[torch.Tensor]) -> KVTPStats:
    """The accounting (host numbers; one small read)."""
    after = cu_seqlens.diff().tolist()
    counts = pruned.frame_counts.tolist()
    before = placement.text_lengths
    V = len(features)
    video_before, video_after = [0] * V, [0] * V
    for b, v in enumerate(placement.sample_to_video):
        if v >= 0:
            video_before[v] = placement.span_lengths[b]
            video_after[v] = after[b] - (before[b] - placement.span_lengths[b])
    return KVTPStats(list(before), after, video_before, video_after,
                     [c[:f.shape[0]] for c, f in zip(counts, features)], list(placement.sample_to_video))
