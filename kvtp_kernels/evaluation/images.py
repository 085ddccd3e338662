"""Frames as base64 data URLs for the HTTP annotator: JPEG through Pillow when installed, else a PNG
written with the standard library."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import torch

from ..options import IMAGE_FORMATS

__all__ = ["encode_image", "has_pillow"]


def _png(pixels: torch.Tensor) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (8-bit RGB, no filtering, zlib level 6): stdlib only."""
    H, W, _ = pixels.shape
    rows = torch.cat([torch.zeros((H, 1), dtype=torch.uint8), pixels.reshape(H, W * 3)], dim=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.numpy().tobytes(), 6))
            + chunk(b"IEND", b""))


def has_pillow() -> bool:
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


def encode_image(frame: torch.Tensor, *, max_side: int | None = 384, image_format: str = "auto") -> str:
    """uint8 [H, W, 3] -> a ``data:image/...;base64,`` URL (resized so the longer side is <= ``max_side``).

    ``image_format``: "jpeg" (quality 90, needs Pillow), "png" (stdlib), "auto" (JPEG when Pillow
    is installed, else PNG).
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}; got {image_format!r}")
    frame = torch.as_tensor(frame)
    if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[-1] != 3:
        raise ValueError(f"encode_image: expected a uint8 [H, W, 3] frame; got {frame.dtype} {tuple(frame.shape)}")
    H, W = frame.shape[:2]
    if max_side is not None and max(H, W) > max_side:
        scale = max_side / max(H, W)
        size = (max(1, round(H * scale)), max(1, round(W * scale)))
        x = frame.permute(2, 0, 1)[None].float()
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        frame = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
    frame = frame.contiguous().cpu()
    if image_format == "jpeg" or (image_format == "auto" and has_pillow()):
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(frame.numpy()).save(buffer, format="JPEG", quality=90)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return "data:image/png;base64," + base64.b64encode(_png(frame)).decode("ascii")

