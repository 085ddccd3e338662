"""Processor-free video inputs of each supported model family, for ``kvtp eval`` and ``kvtp demo``.

Decoded uint8 frames [T, H, W, 3] -> the placeholder tokens of the prompt and the
tensors the model's ``forward`` takes, without an HF processor (the checkpoint's
processor mean / std are read from its files by :func:`.evaluate.processor_normalization`):

- LLaVA-OneVision / LLaVA-NeXT-Video: frames resized to the vision tower's S x S,
  ``pixel_values_videos`` [V, T, 3, S, S]; ``T*N`` placeholders (+1 newline for
  LLaVA-OneVision, which HF appends);
- Qwen2-VL / Qwen2.5-VL / Qwen3-VL: frames resized (aspect kept) to multiples of
  ``patch_size * spatial_merge_size`` pixels holding between 128 and 768 tokens' worth
  of pixels (the processors' default range), the frame count padded to a multiple of
  ``temporal_patch_size`` by repeating the last frame, patches flattened as the
  processor does (the inverse of :meth:`kvtp_kernels.integrations.qwen_vl.QwenVL.frames_from_pixels`);
  ``<vision_start> <video_pad> x T'N <vision_end>`` per video (Qwen3-VL: a
  ``<t.t seconds>`` timestamp and a span per temporal patch), ``video_grid_thw``,
  ``mm_token_type_ids`` and, for Qwen2.5-VL, ``second_per_grid_ts``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..pixels import frames_to_pixels

__all__ = ["LlavaInputs", "QwenVLInputs", "patchify", "video_inputs_for"]

QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
LLAVA_TYPES = ("llava_onevision", "llava_next_video")


class LlavaInputs:
    """LLaVA-OneVision (one newline per video) and LLaVA-NeXT-Video (none): square frames of the tower's size."""

    def __init__(self, model: Any, mean: Sequence[float], std: Sequence[float]):
        config = model.config
        vision = config.vision_config
        stride = getattr(config, "spatial_pool_stride", 2)
        side = math.ceil((vision.image_size // vision.patch_size) / stride)
        self.image_size, self.tokens_per_frame = int(vision.image_size), side * side
        self.newlines = 1 if config.model_type == "llava_onevision" else 0
        self.video_token_id, self.mean, self.std = int(config.video_token_id), tuple(mean), tuple(std)
        self.vision_config = vision

    def placeholders(self, num_frames: int) -> int:
        """Placeholders of a video of ``num_frames`` frames: T*N + the family's newlines."""
        return num_frames * self.tokens_per_frame + self.newlines

    def video_tokens(self, frames: torch.Tensor) -> int:
        """Placeholders of one video (uint8 [T, H, W, 3])."""
        return self.placeholders(frames.shape[0])

    def span(self, frames: torch.Tensor, stamps: Sequence[float] | None = None, tokenizer: Any = None) -> list[int]:
        return [self.video_token_id] * self.video_tokens(frames)

    def tensors(self, videos: Sequence[torch.Tensor], ids: torch.Tensor, stamps=None, *, device, dtype) -> dict:
        from ..integrations import video_pixel_values

        pixels = torch.stack([video_pixel_values(v, self.image_size, self.mean, self.std) for v in videos])
        return {"pixel_values_videos": pixels.to(device=device, dtype=dtype)}

    def tower_flops(self, num_frames: int) -> int | None:
        from ..integrations import vision_tower_flops

        return vision_tower_flops(self.vision_config, num_frames)


def patchify(frames: torch.Tensor, patch: int, temporal: int, merge: int) -> torch.Tensor:
    """Normalised frames [F, C, H, W] -> flattened patches [t*h*w, C*tp*p*p].

    F a multiple of ``temporal``, H and W of ``patch*merge``.
    """
    F, C, H, W = frames.shape
    t, hb, wb = F // temporal, H // (patch * merge), W // (patch * merge)
    x = frames.reshape(t, temporal, C, hb, merge, patch, wb, merge, patch).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * hb * merge * wb * merge, C * temporal * patch * patch)


class QwenVLInputs:
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: temporal patches of 2 frames, per-video (h, w) grids."""

    def __init__(self, model: Any, mean: Sequence[float], std: Sequence[float]):
        config = model.config
        vision = config.vision_config
        self.model_type = config.model_type
        self.patch, self.temporal = int(vision.patch_size), int(vision.temporal_patch_size)
        self.merge = int(vision.spatial_merge_size)
        self.factor = self.patch * self.merge
        self.ids = {k: int(getattr(config, k)) for k in ("video_token_id", "vision_start_token_id",
                                                         "vision_end_token_id", "image_token_id")}
        self.video_token_id = self.ids["video_token_id"]
        self.mean, self.std = tuple(mean), tuple(std)
        self.tokens_per_frame = None  # depends on each video's resolution

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) -> multiples of the token size holding 128 to 768 tokens' worth of pixels, aspect kept."""
        f = self.factor
        h, w = max(f, round(height / f) * f), max(f, round(width / f) * f)
        low, high = 128 * f * f, 768 * f * f
        if h * w > high:
            scale = math.sqrt(height * width / high)
            h, w = max(f, math.floor(height / scale / f) * f), max(f, math.floor(width / scale / f) * f)
        elif h * w < low:
            scale = math.sqrt(low / (height * width))
            h, w = math.ceil(height * scale / f) * f, math.ceil(width * scale / f) * f
        return h, w

    def grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        h, w = self.resized(height, width)
        return math.ceil(num_frames / self.temporal), h // self.patch, w // self.patch

    def video_tokens(self, frames: torch.Tensor) -> int:
        """Video placeholders of one video (uint8 [T, H, W, 3]): T' * N."""
        t, h, w = self.grid(*frames.shape[:3])
        return t * (h // self.merge) * (w // self.merge)

    def span(self, frames: torch.Tensor, stamps: Sequence[float] | None = None, tokenizer: Any = None) -> list[int]:
        """The prompt tokens of one video; ``stamps``: frame times in seconds (None: one frame per second)."""
        num_frames = frames.shape[0]
        t, h, w = self.grid(*frames.shape[:3])
        n = (h // self.merge) * (w // self.merge)
        start, end, video = self.ids["vision_start_token_id"], self.ids["vision_end_token_id"], self.video_token_id
        if self.model_type != "qwen3_vl":
            return [start, *[video] * (t * n), end]
        if tokenizer is None:
            raise ValueError("Qwen3-VL prompts need the tokenizer for their per-patch timestamps")
        times = list(stamps) if stamps is not None else [float(i) for i in range(num_frames)]
        times += [times[-1]] * (t * self.temporal - len(times))
        out = []
        for i in range(t):
            moment = sum(times[i * self.temporal:(i + 1) * self.temporal]) / self.temporal
            out += list(tokenizer(f"<{moment:.1f} seconds>", add_special_tokens=False)["input_ids"])
            out += [start, *[video] * n, end]
        return out

    def tensors(self, videos: Sequence[torch.Tensor], ids: torch.Tensor, stamps=None, *, device, dtype) -> dict:
        rows, grids, seconds = [], [], []
        for v, frames in enumerate(videos):
            F, H, W, _ = frames.shape
            h, w = self.resized(H, W)
            x = frames_to_pixels(frames, (h, w), torch.tensor(self.mean)[:, None, None],
                                 torch.tensor(self.std)[:, None, None])
            pad = (-F) % self.temporal
            if pad:
                x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
            rows.append(patchify(x, self.patch, self.temporal, self.merge))
            grids.append(self.grid(F, H, W))
            s = stamps[v] if stamps is not None else None  # frame times; None: one frame per second
            step = float(s[1] - s[0]) if s is not None and len(s) > 1 else 1.0
            seconds.append(step * self.temporal)
        from ..integrations.qwen_vl import token_types

        types = token_types(ids, self.ids["image_token_id"], self.video_token_id)
        out = {"pixel_values_videos": torch.cat(rows).to(device=device, dtype=dtype),
               "video_grid_thw": torch.tensor(grids, device=device), "mm_token_type_ids": types.to(device)}
        if self.model_type == "qwen2_5_vl":
            out["second_per_grid_ts"] = torch.tensor(seconds, device=device)
        return out

    def tower_flops(self, num_frames: int) -> int | None:
        return None  # a windowed / 3-D-patch ViT: not what vision_tower_flops counts


def video_inputs_for(model: Any, mean: Sequence[float], std: Sequence[float]):
    """The input builder of ``model``'s family (by ``config.model_type``)."""
    model_type = model.config.model_type
    if model_type in QWEN_TYPES:
        return QwenVLInputs(model, mean, std)
    if model_type in LLAVA_TYPES:
        return LlavaInputs(model, mean, std)
    raise ValueError(f"kvtp_kernels.evaluation: no video inputs for model type {model_type!r}; supported: "
                     f"{', '.join(LLAVA_TYPES + QWEN_TYPES)}")
