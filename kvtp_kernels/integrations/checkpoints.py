"""Config values of the real checkpoints each supported family ships as, for token and FLOPs accounting without weights.

The numbers are the checkpoints' ``config.json`` values (the LLM's ``text_config`` and
the vision sizes that fix the tokens per frame unit), transcribed with their source. They were
typed in without hub access (none here): Qwen2.5-VL-7B's match a public module dump and
Qwen3-VL-8B's layer count and hidden size another project's code, but Qwen3-VL-8B's MLP
size, head counts and vocabulary were not checked against its config.json: check them
before quoting that row;
:func:`video_prefill_reduction` turns them into the prefill tokens and LLM FLOPs of a
video prompt before / after KVTP (:func:`~kvtp_kernels.integrations.flops.kvtp_prefill_flops`).
``python python/video_vlm_flops.py`` prints the table.
"""

from __future__ import annotations

import dataclasses
import math

from .flops import LLAVA_VIDEO_7B, KVTPFlops, kvtp_prefill_flops

__all__ = ["VIDEO_VLMS", "VideoVLM", "video_prefill_reduction"]


@dataclasses.dataclass(frozen=True)
class VideoVLM:
    """One checkpoint's geometry.

    Attributes:
        name: the hub id.  source: where the values come from.
        text: the LLM sizes (``text_config``): layers, hidden, MLP, heads, KV heads, vocab.
        frames_per_unit: raw frames per frame unit (Qwen-VL: ``temporal_patch_size`` = 2).
        pixels_per_token: side of the square of pixels one LLM token covers
            (``patch_size * spatial_merge_size``), or None for a fixed input size.
        fixed_grid: tokens per side for a fixed input size (LLaVA: ceil(image/patch / pool)).
        unit_text_tokens: text kept around each frame unit (Qwen3-VL: timestamp + markers).
        video_text_tokens: text kept around each video (markers, newline).
    """

    name: str
    source: str
    text: dict
    frames_per_unit: int
    pixels_per_token: int | None
    fixed_grid: int | None
    unit_text_tokens: int
    video_text_tokens: int

    def tokens_per_unit(self, frame_pixels: int) -> int:
        """N: LLM tokens of one frame unit of ``frame_pixels`` x ``frame_pixels`` frames."""
        side = self.fixed_grid if self.pixels_per_token is None else frame_pixels // self.pixels_per_token
        return side * side


_QWEN2_7B_TEXT = {"num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944,
                  "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064}

#: The checkpoints (config.json values; Qwen3-VL's timestamp "<t.t seconds>" is counted as 6 tokens + 2 markers).
VIDEO_VLMS = (
    VideoVLM("llava-hf/LLaVA-Video-7B-Qwen2-hf", "LLAVA_VIDEO_7B (flops.py); SigLIP 384/14 -> 27x27, bilinear to "
             "14x14", LLAVA_VIDEO_7B, 1, None, 14, 0, 1),
    VideoVLM("Qwen/Qwen2-VL-7B-Instruct", "huggingface.co/Qwen/Qwen2-VL-7B-Instruct/blob/main/config.json "
             "(patch_size 14, spatial_merge_size 2, temporal_patch_size 2)", _QWEN2_7B_TEXT, 2, 28, None, 0, 2),
    VideoVLM("Qwen/Qwen2.5-VL-7B-Instruct", "huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/config.json "
             "(patch_size 14, spatial_merge_size 2, temporal_patch_size 2)", _QWEN2_7B_TEXT, 2, 28, None, 0, 2),
    VideoVLM("Qwen/Qwen3-VL-8B-Instruct", "huggingface.co/Qwen/Qwen3-VL-8B-Instruct/blob/main/config.json "
             "(text_config; patch_size 16, spatial_merge_size 2, temporal_patch_size 2)",
             {"num_hidden_layers": 36, "hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936}, 2, 32, None, 8, 0),
    VideoVLM("llava-hf/LLaVA-NeXT-Video-7B-hf", "huggingface.co/llava-hf/LLaVA-NeXT-Video-7B-hf/blob/main/config.json "
             "(Vicuna-7B text; CLIP 336/14 -> 24x24, spatial_pool_stride 2)",
             {"num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 32064}, 1, None, 12, 0, 0),
)


def video_prefill_reduction(vlm: VideoVLM, *, num_frames: int = 64, budget: float | int = 0.2,
                            text_tokens: int = 64, frame_pixels: int = 448) -> tuple[int, int, KVTPFlops]:
    """-> (frame units T', tokens per unit N, :class:`KVTPFlops`) of one video prompt before / after KVTP.

    The LLM sees ``text_tokens`` of prompt, the video's T'*N tokens (K after KVTP) and
    the text the layout keeps around units and the video (markers, timestamps, newline).
    """
    units = math.ceil(num_frames / vlm.frames_per_unit)
    N = vlm.tokens_per_unit(frame_pixels)
    text = text_tokens + units * vlm.unit_text_tokens + vlm.video_text_tokens
    return units, N, kvtp_prefill_flops(vlm.text, units, N, budget, text_tokens=text, newline_tokens=0)
