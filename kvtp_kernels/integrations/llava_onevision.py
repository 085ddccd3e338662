"""KVTP inside HF transformers' LLaVA-Video / LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``).

One line keeps ``budget`` of every video's tokens in each ``forward`` and ``generate`` call::

    from kvtp_kernels.integrations import apply_kvtp, remove_kvtp

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(...)
    apply_kvtp(model, budget=0.2, predictor=predictor, processor=processor)
    out = model.generate(**processor(text=prompt, videos=video, return_tensors="pt"), max_new_tokens=64)
    print(model.kvtp_stats.summary())      # tokens and prefill FLOPs before / after
    remove_kvtp(model)                     # the exact original model again

What is patched: the instance's ``forward`` and ``generate`` (the two entry points
that receive ``input_ids``, whose length fixes the mask, positions and cache), which
embed the prompt, prune every video with
:func:`~kvtp_kernels.integrations.core.prune_video_inputs` and run the original
methods on ``inputs_embeds``. Why there, how ``generate`` and the KV cache stay
consistent, and what ``forward`` returns: ``docs/llava_onevision.md``.

Frame scores and token importance
---------------------------------
With a :class:`~kvtp_kernels.predictor.FrameRelevancePredictor`, every video is
scored against its query on the same frames, and the predictor's
attention-pooling importance (resampled bilinearly to the LLM's pooled grid, as
HF pools the tokens) picks the tokens inside each frame. Per call:

- ``kvtp_query=``: a string for all samples, or a list with one per sample;
  without it the query is the sample's prompt text, decoded with the tokenizer of
  the ``processor`` given to :func:`apply_kvtp` (non-special, non-placeholder
  tokens; with a chat template that includes the role words);
- ``kvtp_frames=``: the raw uint8 frames [V, T, H, W, 3] (or a list of [T_v, H,
  W, 3]; the predictor resizes them) or the predictor's pixel values
  [V, T, 3, S, S]. Without it they are derived from ``pixel_values_videos`` by
  undoing the ``processor``'s normalisation (its ``image_mean`` / ``image_std``)
  and applying the predictor's, which needs frames of the predictor's image size.

Without a predictor every frame gets the same score: each frame keeps K/T tokens
(largest remainder for the rest), chosen by distinctiveness
(``1 - cos(token, frame mean)``): plain per-frame top-k.

Videos of different lengths: pass ``pixel_values_videos`` as a list of
[T_v, 3, H, W] tensors (HF needs one tensor, so one length per batch); each video
then needs ``T_v*N + 1`` placeholders. One video per sample.

Accounting: after each call ``model.kvtp_stats`` is a
:class:`~kvtp_kernels.integrations.core.KVTPStats` (tokens per sample and per
video before/after, kept tokens per frame, LLM prefill FLOPs before/after from the
model's text config, :mod:`~kvtp_kernels.integrations.flops`). That attribute is shared
by every thread using the model; ``with collect_stats() as calls:`` gives each caller
its own (:mod:`~kvtp_kernels.integrations.recording`).

Copies: ``copy.deepcopy`` of a patched model is a patched model of its own (its
``forward`` / ``generate`` are bound methods that ``deepcopy`` re-binds to the copy).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from . import _compat
from ._compat import MIN_TRANSFORMERS
from .core import prune_video_inputs
from .frames import predictor_scores, renormalize_pixels
from .patching import (
    PATCH_ATTR,
    Patch,
    check_no_cache,
    count_lengths_from_prompt,
    install_patch,
    original_method,
    saved_methods,
    video_call,
    with_prompt,
)
from .placement import check_attention_mask, locate_videos
from .predictor_inputs import given_frames, video_queries
from .recording import record_stats
from .settings import KVTPSettings, VideoPlacement, _describe_arg, _fail

__all__ = ["MIN_TRANSFORMERS", "install"]



@dataclasses.dataclass
class _Patch(Patch):
    """What apply_kvtp keeps on the model: :class:`.patching.Patch` and the pooled grid."""

    grid: int  # pooled grid side: N = grid * grid


def install(model: Any, settings: KVTPSettings, predictor: Any, tokenizer: Any, mean: tuple | None,
            std: tuple | None) -> None:
    """Patch the instance's forward / generate (called by :func:`~.dispatch.apply_kvtp` after its checks)."""
    vision = model.config.vision_config
    grid = math.ceil((vision.image_size // vision.patch_size) / 2)  # HF's apply_pooling: bilinear to ceil(g/2)
    install_patch(model, _Patch(settings, predictor, tokenizer, mean, std, saved_methods(model), grid), _forward,
                  _generate)


# ----------------------------------------------------------------------------------
# Wrappers
# ----------------------------------------------------------------------------------
def _has_video(call: dict) -> bool:
    mm = call.get("mm_encoder_outputs") or {}
    return call.get("pixel_values_videos") is not None or mm.get("video") is not None


def _intercept(model, name: str, args: tuple, kwargs: dict) -> tuple[_Patch, Any, dict | None, Any, Any]:
    """-> (the patch, the original method, the bound call when it has video else None, kvtp_query, kvtp_frames)."""
    original = original_method(model, name)
    return (model.__dict__[PATCH_ATTR], original, *video_call(original, args, kwargs, _has_video))


def _without_video(call: dict) -> None:
    """Drop the video inputs (the pruned tokens are in inputs_embeds)."""
    for key in ("input_ids", "pixel_values_videos", "image_sizes_videos", "inputs_embeds"):
        call.pop(key, None)
    mm = call.get("mm_encoder_outputs")
    if mm is not None and mm.get("video") is not None:
        rest = {k: v for k, v in mm.items() if k != "video"}
        if rest:
            call["mm_encoder_outputs"] = rest
        else:  # dropped, not None: releases before 5.18 have no such parameter
            call.pop("mm_encoder_outputs")


def _forward(model, *args, **kwargs):
    patch, original, call, query, frames = _intercept(model, "forward", args, kwargs)
    if call is None:
        return original(*args, **kwargs)
    check_no_cache(call)
    user_mask, user_positions, labels = call.get("attention_mask"), call.get("position_ids"), call.get("labels")
    result, placement = _prepare(model, patch, call, query, frames, padding_side=None, labels=labels)
    _without_video(call)
    call["inputs_embeds"] = result.inputs_embeds
    mask = result.attention_mask
    call["attention_mask"] = None if user_mask is None and bool(mask.ne(0).all()) else mask
    if user_positions is not None:
        call["position_ids"] = _renumber_positions(user_positions, result.position_ids, result.attention_mask,
                                                   placement)
    if labels is not None:
        call["labels"] = result.labels
    return _compat.with_video_features(original(**call), result.pruned.tokens)


def _generate(model, *args, **kwargs):
    patch, original, call, query, frames = _intercept(model, "generate", args, kwargs)
    if call is None:
        return original(*args, **kwargs)
    prompt_ids = call.pop("inputs", None)
    if prompt_ids is None:
        prompt_ids = call.get("input_ids")
    if prompt_ids is not None:
        if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2 or prompt_ids.is_floating_point():
            _fail("input_ids", "an integer [B, L] tensor", _describe_arg(prompt_ids))
        call["input_ids"] = prompt_ids
    with torch.no_grad():  # as HF's generate, which runs under no_grad
        result, _ = _prepare(model, patch, call, query, frames, padding_side="left", labels=None)
    _without_video(call)
    call.pop("position_ids", None)  # generate derives them from the new mask (cumsum), as packed
    call["inputs_embeds"] = result.inputs_embeds
    call["attention_mask"] = result.attention_mask
    if prompt_ids is not None:
        count_lengths_from_prompt(model, call, prompt_ids.shape[1])
    out = original(**call)
    return out if prompt_ids is None else with_prompt(out, prompt_ids, 0)


def _renumber_positions(user: torch.Tensor, packed: torch.Tensor, mask: torch.Tensor,
                        placement: VideoPlacement) -> torch.Tensor:
    """Contiguous positions over the pruned sequence, starting at each sample's first given position."""
    if not isinstance(user, torch.Tensor) or user.dim() != 2:
        _fail("position_ids", "a [B, L] tensor (1-D RoPE positions)", _describe_arg(user))
    first = torch.tensor(placement.first_positions, dtype=torch.long, device=user.device)
    start = user.gather(1, first[:, None]).to(packed.device)
    return torch.where(mask.ne(0), packed + start, torch.zeros_like(packed))


# ----------------------------------------------------------------------------------
# Building the pruned inputs
# ----------------------------------------------------------------------------------
def _split_videos(videos: Any) -> list[torch.Tensor]:
    """``pixel_values_videos`` (a [V, T, 3, H, W] tensor or a list of [T_v, 3, H, W]) -> V tensors [T_v, 3, H, W]."""
    if isinstance(videos, torch.Tensor):
        if videos.dim() != 5:
            _fail("pixel_values_videos", "a [V, T, 3, H, W] tensor or a list of [T_v, 3, H, W] tensors",
                  _describe_arg(videos))
        return list(videos.unbind(0))
    if not isinstance(videos, (list, tuple)) or len(videos) == 0:
        _fail("pixel_values_videos", "a [V, T, 3, H, W] tensor or a non-empty list of [T_v, 3, H, W]",
              _describe_arg(videos))
    videos = [v[0] if isinstance(v, torch.Tensor) and v.dim() == 5 and v.shape[0] == 1 else v for v in videos]
    for i, v in enumerate(videos):
        if not isinstance(v, torch.Tensor) or v.dim() != 4 or v.shape[0] == 0:
            _fail(f"pixel_values_videos[{i}]", "a [T_v, 3, H, W] tensor", _describe_arg(v))
    return videos


def _video_features(model, patch: _Patch, call: dict) -> list[torch.Tensor]:
    """The model's own video features, split per video: V tensors [T_v, N, D] (newline row removed)."""
    N = patch.grid * patch.grid
    newline = int(_compat.video_features_end_with_newline())
    mm = call.get("mm_encoder_outputs") or {}
    if mm.get("video") is not None:
        pooled = getattr(mm["video"], "pooler_output", mm["video"])
        if not isinstance(pooled, torch.Tensor) or pooled.dim() != 3 or (pooled.shape[1] - newline) % N:
            _fail("mm_encoder_outputs['video'].pooler_output", f"a [V, T*N{' + 1' * newline}, D] tensor (what "
                  f"get_video_features returns) with N = {N}", _describe_arg(pooled))
        T = (pooled.shape[1] - newline) // N
        return [f[: T * N].reshape(T, N, -1) for f in pooled.unbind(0)]
    videos = _split_videos(call["pixel_values_videos"])
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(videos):
        groups.setdefault(tuple(v.shape), []).append(i)
    features: list[Any] = [None] * len(videos)
    for shape, ids in groups.items():
        T = shape[0]
        pixels = torch.stack([videos[i] for i in ids]) if len(ids) > 1 else videos[ids[0]][None]
        out = _compat.get_video_features(
            model, pixels, vision_feature_layer=call.get("vision_feature_layer"),
            vision_feature_select_strategy=call.get("vision_feature_select_strategy"), return_dict=True)
        pooled = out.pooler_output
        if pooled.shape[1] != T * N + newline:
            raise RuntimeError(f"kvtp_kernels.integrations: get_video_features returned {pooled.shape[1]} tokens per "
                               f"video, expected T*N{' + 1' * newline} = {T}*{N}{' + 1' * newline} (this "
                               "transformers version pools differently)")
        for j, i in enumerate(ids):
            features[i] = pooled[j, : T * N].reshape(T, N, -1)
    return features


def _predictor_frames(patch: _Patch, frames: Any, call: dict, frame_counts: list[int]) -> list[torch.Tensor]:
    """V frame tensors for the predictor: ``kvtp_frames`` or the re-normalised ``pixel_values_videos``."""
    V = len(frame_counts)
    S = patch.predictor.image_size
    if frames is not None:
        if isinstance(frames, torch.Tensor) and frames.dim() == 4 and V == 1:
            frames = [frames]
        frames = given_frames(frames, V, f"V = {V} videos: [V, T, H, W, 3] uint8 / [V, T, 3, {S}, {S}] float, "
                              "or a list")
        for v, f in enumerate(frames):
            if f.dim() < 1 or f.shape[0] != frame_counts[v]:
                _fail(f"kvtp_frames[{v}]", f"{frame_counts[v]} frames (those of video {v})", _describe_arg(f))
        return frames
    videos = call.get("pixel_values_videos")
    if videos is None:
        _fail("kvtp_frames", "given with mm_encoder_outputs (the predictor needs the frames)", "None")
    videos = _split_videos(videos)
    size = tuple(videos[0].shape[-2:])
    if size != (S, S):
        _fail("predictor", f"a predictor whose image size matches the video frames ({size[0]}x{size[1]} in "
              "pixel_values_videos), or pass kvtp_frames= with the raw uint8 frames (the predictor resizes them)",
              f"a predictor with image_size {S}")
    if patch.pixel_mean is None:
        _fail("kvtp_frames", "given, or apply_kvtp(..., processor=) given so that pixel_values_videos can be "
              "re-normalised for the predictor (its image_mean / image_std)", "neither")
    config = patch.predictor.config
    return [renormalize_pixels(v, patch.pixel_mean, patch.pixel_std, config.image_mean, config.image_std)
            for v in videos]


def _prepare(model, patch: _Patch, call: dict, query: Any, frames: Any, *, padding_side: str | None,
             labels: torch.Tensor | None):
    """The pruned inputs of one call -> (VideoPruneResult, VideoPlacement); records model.kvtp_stats."""
    input_ids, inputs_embeds = call.get("input_ids"), call.get("inputs_embeds")
    attention_mask = call.get("attention_mask")
    embed = model.get_input_embeddings()
    config = model.config
    if input_ids is None and inputs_embeds is None:
        _fail("input_ids", "given (or inputs_embeds) with video input", "neither")
    if inputs_embeds is None:
        inputs_embeds = embed(input_ids)
    if input_ids is not None:
        video_mask = input_ids.to(inputs_embeds.device) == config.video_token_id
    else:  # as HF does for embeddings input: the placeholders are the video token's embedding
        token = embed(torch.tensor(config.video_token_id, device=inputs_embeds.device))
        video_mask = (inputs_embeds == token).all(-1)
    check_attention_mask(attention_mask)

    features = _video_features(model, patch, call)
    placement = locate_videos(video_mask, attention_mask, len(features))
    frame_counts = [f.shape[0] for f in features]
    scores = token_scores = None
    if patch.predictor is not None:
        samples = [b for b, v in enumerate(placement.sample_to_video) if v >= 0]  # video order
        queries = video_queries(patch.tokenizer, query, input_ids, attention_mask, video_mask, samples,
                                [config.image_token_id], len(placement.sample_to_video))
        predictor_frames = _predictor_frames(patch, frames, call, frame_counts)
        scores, token_scores = predictor_scores(patch.predictor, predictor_frames, queries,
                                                token_grid=(patch.grid, patch.grid), token_pool="bilinear")
    N = patch.grid * patch.grid
    result = prune_video_inputs(
        inputs_embeds, video_mask, features, attention_mask=attention_mask, scores=scores, token_scores=token_scores,
        settings=patch.settings, newline=model.model.image_newline, grid_width=patch.grid,
        placeholders_per_video=[T * N + 1 for T in frame_counts], padding_side=padding_side, labels=labels,
        placement=placement, flops_config=config)
    record_stats(model, result.stats)
    return result, placement
