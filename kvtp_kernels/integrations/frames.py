"""Video frames for a vision tower and for the relevance predictor (no HF processor needed).

:func:`video_pixel_values` (uint8 frames -> a tower's normalised pixels, through
:func:`kvtp_kernels.pixels.frames_to_pixels`), :func:`renormalize_pixels` (one tower's
normalisation -> another's) and :func:`predictor_scores` (frame scores and token
importance of V videos from a predictor).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from .._errors import as_int
from .._errors import describe as _describe
from ..pixels import frames_to_pixels
from .settings import _fail

__all__ = ["predictor_scores", "renormalize_pixels", "video_pixel_values"]



def _channel_values(values: Sequence[float], name: str, device: torch.device) -> torch.Tensor:
    """One or three numbers (RGB) -> float32 [3, 1, 1] on ``device``."""
    t = torch.as_tensor(values, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(3)
    if t.numel() != 3:
        _fail(name, "one or three numbers (RGB)", repr(values))
    return t.reshape(3, 1, 1)


def renormalize_pixels(pixel_values: torch.Tensor, source_mean: Sequence[float], source_std: Sequence[float],
                       target_mean: Sequence[float], target_std: Sequence[float]) -> torch.Tensor:
    """Pixels normalised for one vision tower -> normalised for another (same size).

    ``x01 = x * source_std + source_mean`` (back to [0, 1]), then
    ``(x01 - target_mean) / target_std``. Channels are dimension -3: [..., 3, H, W].
    """
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() < 3 or pixel_values.shape[-3] != 3:
        _fail("pixel_values", "a float [..., 3, H, W] tensor", _describe(pixel_values))

    channel = functools.partial(_channel_values, device=pixel_values.device)
    x = pixel_values.float() * channel(source_std, "source_std") + channel(source_mean, "source_mean")
    return (x - channel(target_mean, "target_mean")) / channel(target_std, "target_std")


def video_pixel_values(frames: torch.Tensor, image_size: int, mean: Sequence[float] = (0.5, 0.5, 0.5),
                       std: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
    """Processor-free video preprocessing: uint8 RGB frames -> normalised pixel values for a vision tower.

    Each frame is resized to ``image_size`` x ``image_size`` (bicubic with
    antialiasing, rounded to whole grey levels like PIL's uint8 output; the aspect
    ratio is not kept, like HF's LLaVA-OneVision video processor), scaled to [0, 1]
    and normalised with ``mean`` / ``std`` (SigLIP's 0.5 / 0.5 by default; pass the
    checkpoint's processor values).

    Args:
        frames: uint8 [T, H, W, 3] (e.g. from :func:`kvtp_kernels.load_video`) or [V, T, H, W, 3].

    Returns:
        float32 [T, 3, S, S] (or [V, T, 3, S, S]); add a leading video dimension for
        ``pixel_values_videos``.
    """
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.dim() not in (4, 5) or frames.shape[-1] != 3 or frames.numel() == 0:
        _fail("frames", "non-empty uint8 RGB frames [T, H, W, 3] or [V, T, H, W, 3]", _describe(frames))
    image_size = as_int(_fail, "image_size", image_size, what="an int >= 1")
    if image_size < 1:
        _fail("image_size", "an int >= 1", repr(image_size))
    lead = frames.shape[:-3]
    channel = functools.partial(_channel_values, device=frames.device)
    x = frames_to_pixels(frames.reshape(-1, *frames.shape[-3:]), image_size, channel(mean, "mean"),
                         channel(std, "std"))
    return x.reshape(*lead, 3, image_size, image_size)


def predictor_scores(
    predictor: Any,
    frames: Sequence[torch.Tensor],
    queries: Sequence[Any],
    *,
    token_grid: tuple[int, int] | None = None,
    token_pool: str | None = None,
    use_fusion_head: bool | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Frame scores and token importance of V videos from a :class:`~kvtp_kernels.predictor.FrameRelevancePredictor`.

    Videos with the same frame count share one predictor pass (no autograd).

    Args:
        predictor: the predictor.
        frames: V entries, each uint8 RGB frames [T_v, H, W, 3] (any size: the
            predictor resizes them) or the predictor's pixel values float
            [T_v, 3, S, S] (S = ``predictor.image_size``).
        queries: V queries (strings, which need the predictor's tokenizer, or token ids).
        token_grid: the LLM's token grid (h, w) for the token importance (None: the
            predictor's config).
        token_pool: how the patch attention is resampled to it (None: the config's).

    Returns:
        ``(scores, token_scores)``: V float64 [T_v] frame logits; V float32
        [T_v, h*w] token importances (None when the predictor gives none).

    Raises:
        ValueError: pixel values whose size is not the predictor's image size, or
            frames that are neither uint8 [T, H, W, 3] nor float [T, 3, S, S].
    """
    V = len(frames)
    if len(queries) != V:
        _fail("queries", f"one query per video (V = {V})", f"{len(queries)}")
    S = int(predictor.image_size)
    frames = [f if isinstance(f, torch.Tensor) else torch.as_tensor(f) for f in frames]
    pixels = _predictor_pixels(frames, S)
    scores: list[Any] = [None] * V
    importance: list[Any] = [None] * V
    with torch.no_grad():
        for ids in _groups_by_length(frames).values():
            px = [predictor.preprocess(frames[v]) if pixels[v] is None else pixels[v].to(predictor.device)
                  for v in ids]
            out = predictor(torch.stack(px), [queries[v] for v in ids], token_grid=token_grid,
                            token_pool=token_pool, use_fusion_head=use_fusion_head)
            for j, v in enumerate(ids):
                scores[v] = out.scores[j]
                importance[v] = out.token_importance[j] if out.token_importance is not None else None
    return scores, (importance if all(t is not None for t in importance) else None)


def _predictor_pixels(frames: list[torch.Tensor], S: int) -> list[torch.Tensor | None]:
    """Each video's pixel values as given (float [T, 3, S, S]), or None for uint8 frames the predictor resizes."""
    pixels: list[torch.Tensor | None] = []
    for v, f in enumerate(frames):
        if f.dtype == torch.uint8 and f.dim() == 4 and f.shape[-1] == 3:
            pixels.append(None)  # preprocessed per group
        elif f.is_floating_point() and f.dim() == 4 and f.shape[1] == 3:
            if tuple(f.shape[-2:]) != (S, S):
                _fail(f"kvtp_frames[{v}]", f"the predictor's pixel values [T, 3, {S}, {S}] (its image_size is {S}), "
                      "or raw uint8 frames [T, H, W, 3] that the predictor resizes", _describe(f))
            pixels.append(f)
        else:
            _fail(f"kvtp_frames[{v}]", "uint8 RGB frames [T, H, W, 3] or the predictor's float pixel values "
                  f"[T, 3, {S}, {S}]", _describe(f))
    return pixels


def _groups_by_length(frames: list[torch.Tensor]) -> dict[int, list[int]]:
    """Frame count -> the videos with it (one predictor pass each); a video without frames is an error."""
    groups: dict[int, list[int]] = {}
    for v, f in enumerate(frames):
        T = f.shape[0]
        if T == 0:
            _fail(f"kvtp_frames[{v}]", "at least one frame", _describe(f))
        groups.setdefault(T, []).append(v)
    return groups
