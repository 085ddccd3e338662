"""Where the videos sit in a prompt: placeholder spans, padding side, the placeholder count of a layout."""

from __future__ import annotations

import torch

from .._errors import describe as _describe
from .settings import VideoPlacement, _describe_arg, _fail

__all__ = ["check_attention_mask", "infer_padding_side", "locate_videos", "placeholder_length", "token_mask"]


def placeholder_length(num_frames: int, tokens_per_frame: int, layout: str, grid_width: int | None = None) -> int:
    """Tokens of an unpruned video block: T*N plus the layout's newlines.

    "video": T*N + 1; "frame": T*(N + 1); "grid": T*(N + N/W) (one per grid row);
    "none": T*N.
    """
    T, N = num_frames, tokens_per_frame
    if layout == "video":
        return T * N + 1
    if layout == "frame":
        return T * (N + 1)
    if layout == "grid":
        if not grid_width:
            _fail("grid_width", "an int >= 1 for layout='grid'", repr(grid_width))
        return T * (N + -(-N // grid_width))
    return T * N


def infer_padding_side(attention_mask: torch.Tensor | None) -> str:
    """"left" when every row ends with a token (left padding or none), "right" when every row starts with one.

    Raises:
        ValueError: a mask padded on both sides (or with a row that is all padding).
    """
    if attention_mask is None or attention_mask.shape[1] == 0:
        return "left"
    mask = attention_mask.ne(0)
    ends, starts = mask[:, -1].all(), mask[:, 0].all()
    if bool(ends):
        return "left"
    if bool(starts):
        return "right"
    _fail("attention_mask", "left- or right-padded (every row ending, or every row starting, with a token)",
          "rows padded on both sides")


def check_attention_mask(attention_mask) -> None:
    """With video input the attention mask is None or a 2-D [B, L] tensor (4-D masks are not supported)."""
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
        _fail("attention_mask", "a 2-D [B, L] mask with video input (4-D masks are not supported)",
              _describe_arg(attention_mask))


def token_mask(attention_mask: torch.Tensor | None, vmask: torch.Tensor) -> torch.Tensor:
    """bool [B, L] on ``vmask``'s device: True on tokens (every position without a mask)."""
    B, L = vmask.shape
    if attention_mask is None:
        return torch.ones_like(vmask)
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (B, L):
        _fail("attention_mask", f"a 2-D [B, L] = [{B}, {L}] tensor (4-D masks are not supported with video)",
              _describe(attention_mask))
    return attention_mask.to(vmask.device).ne(0)


def locate_videos(video_mask: torch.Tensor, attention_mask: torch.Tensor | None, num_videos: int) -> VideoPlacement:
    """Map samples to videos and check every placeholder span (one host sync).

    Video v belongs to the v-th sample (in batch order) that has placeholder
    positions. Each sample has at most one contiguous span, inside its attention mask.

    Args:
        video_mask: [B, L] bool/int, nonzero at the video placeholder positions.
        attention_mask: [B, L] or None (every position is a token).
        num_videos: V, videos given with the batch.
    """
    if not isinstance(video_mask, torch.Tensor) or video_mask.dim() != 2:
        _fail("video_mask", "a [B, L] tensor", _describe(video_mask))
    vmask = video_mask.ne(0)
    tmask = token_mask(attention_mask, vmask)
    starts = vmask.clone()
    starts[:, 1:] &= ~vmask[:, :-1]
    outside = (vmask & ~tmask).any(1)
    first = tmask.to(torch.uint8).argmax(1)
    table = torch.stack([vmask.sum(1), starts.sum(1), tmask.sum(1), outside.long(), first], 1)
    rows = table.tolist()  # the one host sync
    sample_to_video, v = [], 0
    for b, (count, runs, _text, out, _first) in enumerate(rows):
        if runs > 1:
            _fail("input_ids", "at most one video placeholder span per sample (KVTP prunes one video per sample)",
                  f"{runs} separate spans in sample {b}")
        if out:
            _fail("attention_mask", "1 on every video placeholder position", f"placeholders masked out in sample {b}")
        sample_to_video.append(v if count else -1)
        v += 1 if count else 0
    if v != num_videos:
        _fail("input_ids", f"one video placeholder span per video ({num_videos} videos given)",
              f"{v} samples with video placeholders")
    return VideoPlacement(sample_to_video, [r[0] for r in rows], [r[2] for r in rows], [r[4] for r in rows])
