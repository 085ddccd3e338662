"""Frames -> pixel values: the one resize-and-normalise the predictor and the integrations share.

LLaVA-OneVision's and SigLIP's processors resize every frame to S x S (the aspect
ratio is not kept), bicubic with antialiasing, and hand PIL's uint8 result on: so the
resized frame is clamped to [0, 255] and rounded to whole grey levels (bicubic
overshoots), then scaled to [0, 1] and normalised per channel. The Qwen-VL inputs of
``kvtp eval`` resize the same way to an (h, w) that keeps the aspect ratio.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def frames_to_pixels(frames: torch.Tensor, size: int | tuple[int, int], mean: torch.Tensor, std: torch.Tensor, *,
                     device: torch.device | None = None, frames_per_chunk: int | None = None) -> torch.Tensor:
    """uint8 RGB frames [F, H, W, 3] -> float32 pixel values [F, 3, size, size] (``size`` an int)
    or [F, 3, h, w] (``size`` an (h, w) pair).

    ``mean`` and ``std`` are float32 [3, 1, 1] on ``device`` (the frames' device when
    None). ``frames_per_chunk`` bounds how many frames are moved and resized at once
    (None: all). Arguments are the caller's to check.
    """
    device = frames.device if device is None else torch.device(device)
    count, H, W = frames.shape[:3]
    h, w = (size, size) if isinstance(size, int) else size
    out = torch.empty((count, 3, h, w), dtype=torch.float32, device=device)
    step = count if frames_per_chunk is None else frames_per_chunk
    for start in range(0, count, max(step, 1)):
        x = frames[start:start + step].to(device).permute(0, 3, 1, 2).float()
        if (H, W) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
            x = x.clamp(0.0, 255.0).round()
        out[start:start + x.shape[0]] = (x / 255.0 - mean) / std
    return out
