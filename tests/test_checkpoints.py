"""kvtp_kernels.integrations.checkpoints: the per-family token / FLOPs accounting from config values."""

from __future__ import annotations

import math

import pytest

from kvtp_kernels.integrations.checkpoints import VIDEO_VLMS, video_prefill_reduction
from kvtp_kernels.integrations.flops import prefill_flops

BY_NAME = {vlm.name: vlm for vlm in VIDEO_VLMS}


@pytest.mark.parametrize("name, units, N, text", [
    ("llava-hf/LLaVA-Video-7B-Qwen2-hf", 64, 196, 64 + 1),          # one newline per video (HF)
    ("Qwen/Qwen2-VL-7B-Instruct", 32, (448 // 28) ** 2, 64 + 2),    # <vision_start> <vision_end>
    ("Qwen/Qwen3-VL-8B-Instruct", 32, (448 // 32) ** 2, 64 + 32 * 8),  # timestamp + markers per temporal patch
    ("llava-hf/LLaVA-NeXT-Video-7B-hf", 64, 12 * 12, 64),
])
def test_tokens_and_flops_at_beta_02(name, units, N, text):
    vlm = BY_NAME[name]
    got_units, got_N, f = video_prefill_reduction(vlm, num_frames=64, budget=0.2, text_tokens=64, frame_pixels=448)
    K = math.floor(0.2 * units * N + 0.5)
    assert (got_units, got_N, f.kept_video_tokens) == (units, N, K)
    assert (f.tokens_before, f.tokens_after) == (text + units * N, text + K)
    assert f.flops_before == prefill_flops(vlm.text, text + units * N)
    assert f.flops_after == prefill_flops(vlm.text, text + K)


def test_llava_video_row_is_the_documented_one():
    """The README's LLaVA-Video-7B figure (64 x 196, 64-token prompt, K = 2509): 17.8% of the prefill FLOPs."""
    _, _, f = video_prefill_reduction(BY_NAME["llava-hf/LLaVA-Video-7B-Qwen2-hf"])
    assert (f.tokens_before, f.tokens_after, f.kept_video_tokens) == (12609, 2574, 2509)
    assert round(f.ratio, 3) == 0.178
