"""The relevance predictor for the keep-mask families: frame scores per frame unit, token importance per grid.

(:func:`video_queries` and :func:`given_frames` serve LLaVA-OneVision too.)

For each video of a call (:mod:`.keep_mask_adapter`):

- the query: ``kvtp_query=`` (a string, or one per sample) or the sample's prompt text
  decoded with the tokenizer given to ``apply_kvtp(processor=)`` (placeholders,
  special tokens and padding left out);
- the frames: ``kvtp_frames=`` (V entries of uint8 RGB [F_v, H, W, 3], which the
  predictor resizes, or its pixel values [F_v, 3, S, S]) or recovered from
  ``pixel_values_videos`` (the family un-flattens its patches; the processor's
  ``image_mean`` / ``image_std`` undo the normalisation, back to uint8 frames);
- the predictor scores every raw frame and gives its token importance on the video's
  (h', w') token grid (area pooling: each LLM token covers a block of patches);
  both are pooled (mean) over the frames of a frame unit: a Qwen-VL temporal patch
  holds ``temporal_patch_size`` = 2 frames (an odd count is padded by repeating the
  last frame, as the processor does), a LLaVA-NeXT-Video unit is one frame.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch

from .frames import predictor_scores, renormalize_pixels
from .settings import _describe_arg, _fail

__all__ = ["given_frames", "pool_per_unit", "predictor_inputs", "video_queries", "video_samples"]


def video_samples(video_mask: torch.Tensor, sizes: list[int]) -> list[int]:
    """The sample holding each video's first placeholder (videos fill placeholders batch-major)."""
    per_sample = video_mask.sum(1).tolist()
    cum, total = [], 0
    for n in per_sample:
        total += n
        cum.append(total)
    out, start = [], 0
    for n in sizes:
        out.append(bisect.bisect_right(cum, start))
        start += n
    return out


def pool_per_unit(values: torch.Tensor, units: int, per_unit: int) -> torch.Tensor:
    """[F, ...] per raw frame -> [units, ...]: the mean over each unit's ``per_unit`` frames (last frame repeated)."""
    F = values.shape[0]
    if math.ceil(F / per_unit) != units:
        _fail("kvtp_frames", f"{units} frame units of {per_unit} frames ({units * per_unit - per_unit + 1} to "
              f"{units * per_unit} frames)", f"{F} frames")
    pad = units * per_unit - F
    if pad:
        values = torch.cat([values, values[-1:].expand(pad, *values.shape[1:])])
    return values.reshape(units, per_unit, *values.shape[1:]).mean(1)


def video_queries(tokenizer: Any, query: Any, input_ids: torch.Tensor | None, attention_mask, video_mask,
                  samples: list[int], skip_ids: list[int], batch: int) -> list[Any]:
    """One query per video: ``kvtp_query`` (a string, or one per sample) or the prompt of the video's sample.

    ``samples``: the sample of each video; the prompt is decoded without its video
    placeholders, the tokens ``skip_ids`` and padding.
    """
    if query is not None:
        if isinstance(query, str):
            return [query] * len(samples)
        if not isinstance(query, (list, tuple)) or len(query) != batch:
            _fail("kvtp_query", f"a string or a list of B = {batch} strings (one per sample)",
                  repr(query) if not isinstance(query, (list, tuple)) else f"a list of {len(query)}")
        return [query[b] for b in samples]
    if tokenizer is None or input_ids is None:
        _fail("kvtp_query", "given (the predictor needs each video's question), or apply_kvtp(..., processor=) "
              "given so that the prompt can be decoded", "neither")
    keep = ~video_mask.bool()
    for token in skip_ids:
        keep &= input_ids.ne(token)
    if attention_mask is not None:
        keep &= attention_mask.ne(0)
    out = []
    for b in samples:
        text = tokenizer.decode(input_ids[b][keep[b]].tolist(), skip_special_tokens=True).strip()
        if not text:
            _fail("kvtp_query", f"given for sample {b}, whose prompt has no text to use as the query", "None")
        out.append(text)
    return out


def given_frames(frames: Any, num_videos: int, expected: str) -> list[torch.Tensor]:
    """``kvtp_frames`` -> ``num_videos`` tensors: a 5-D [V, ...] tensor or a sequence of V (``expected``: in words)."""
    if isinstance(frames, torch.Tensor) and frames.dim() == 5:
        frames = list(frames.unbind(0))
    if not isinstance(frames, (list, tuple)) or len(frames) != num_videos:
        _fail("kvtp_frames", expected,
              _describe_arg(frames) if not isinstance(frames, (list, tuple)) else f"a list of {len(frames)}")
    return [f if isinstance(f, torch.Tensor) else torch.as_tensor(f) for f in frames]


def _to_uint8(frames: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised [F, 3, H, W] -> uint8 RGB [F, H, W, 3]."""
    x01 = renormalize_pixels(frames, mean, std, (0.0,), (1.0,))
    return (x01 * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def predictor_inputs(model, patch, call: dict, query: Any, frames: Any, features: list[torch.Tensor],
                     input_ids: torch.Tensor, attention_mask, video_mask: torch.Tensor,
                     thw: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """-> (V frame-unit scores [T_v], V token importances [T_v, N_v]) for :func:`prune_to_keep_mask`.

    ``video_mask``: the placeholders (``input_ids == video_token_id``); ``thw``: the family's
    ``check_inputs`` result (Qwen-VL: ``video_grid_thw`` on the host).
    """
    family, predictor = patch.family, patch.predictor
    config = model.config
    V = len(features)
    samples = video_samples(video_mask, [f.shape[0] * f.shape[1] for f in features])
    skip_ids = [getattr(config, name) for name in ("image_token_id", "vision_start_token_id", "vision_end_token_id")
                if getattr(config, name, None) is not None]
    queries = video_queries(patch.tokenizer, query, input_ids, attention_mask, video_mask, samples, skip_ids,
                            input_ids.shape[0])
    per_unit = family.frames_per_unit(config)
    if frames is not None:
        frames = given_frames(frames, V, f"V = {V} videos: a list of uint8 [F, H, W, 3] or the predictor's "
                              "[F, 3, S, S]")
    else:
        if patch.pixel_mean is None:
            _fail("kvtp_frames", "given, or apply_kvtp(..., processor=) given so that the frames can be recovered "
                  "from pixel_values_videos (its image_mean / image_std)", "neither")
        frames = [_to_uint8(f, patch.pixel_mean, patch.pixel_std) for f in family.frames_from_pixels(model, call, thw)]
    grids = family.token_grids(model, call, thw)
    scores: list[Any] = [None] * V
    importance: list[Any] = [None] * V
    for grid in dict.fromkeys(grids):
        ids = [v for v in range(V) if grids[v] == grid]
        s, imp = predictor_scores(predictor, [frames[v] for v in ids], [queries[v] for v in ids],
                                  token_grid=grid, token_pool="area")
        for j, v in enumerate(ids):
            T, N = features[v].shape[:2]
            scores[v] = pool_per_unit(s[j], T, per_unit)
            if imp is not None:
                importance[v] = pool_per_unit(imp[j], T, per_unit).reshape(T, N)
    return scores, (importance if all(i is not None for i in importance) else None)
