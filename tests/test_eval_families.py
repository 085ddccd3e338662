"""kvtp eval and kvtp demo on every supported family: the model class chosen by the checkpoint's config.

Saved tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL / LLaVA-NeXT-Video checkpoints are run
end to end on real sample clips (processor-free inputs from
kvtp_kernels/evaluation/video_inputs.py); the flattened Qwen patches are checked against
the adapter's inverse and an explicit loop.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from tiny_models import (
    QWEN_FAMILIES,
    read_jsonl,
    sample_video,
    save_tiny_family_model,
    tiny_qwen_model,
    write_jsonl,
)

from kvtp_kernels.cli import main
from kvtp_kernels.evaluation.video_inputs import QwenVLInputs, patchify
from kvtp_kernels.integrations.qwen_vl import QwenVL

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILIES = [*QWEN_FAMILIES, "llava_next_video"]


def test_patchify_is_the_inverse_of_the_adapters_recovery():
    model = tiny_qwen_model("qwen2_vl")
    frames = torch.randn(4, 3, 8, 12)
    rows = patchify(frames, 2, 2, 2)
    assert rows.shape == (2 * 4 * 6, 3 * 2 * 2 * 2)
    # row 1 of the first 2x2 block is patch (y=0, x=1) of temporal patch 0: channels, then the 2 frames, y, x
    torch.testing.assert_close(rows[1], frames[0:2, :, 0:2, 2:4].permute(1, 0, 2, 3).reshape(-1), rtol=0, atol=0)
    # row 4 starts the next block to the right: patch (y=0, x=2)
    torch.testing.assert_close(rows[4], frames[0:2, :, 0:2, 4:6].permute(1, 0, 2, 3).reshape(-1), rtol=0, atol=0)
    back = QwenVL.frames_from_pixels(model, {"pixel_values_videos": rows, "video_grid_thw": torch.tensor([[2, 4, 6]])})
    torch.testing.assert_close(back[0], frames, rtol=0, atol=0)


def test_qwen_frames_are_resized_to_whole_tokens_within_the_pixel_range():
    inputs = QwenVLInputs(tiny_qwen_model("qwen2_vl"), (0.5,) * 3, (0.5,) * 3)  # 4 px per token
    for H, W in ((144, 176), (20, 30), (400, 100)):
        h, w = inputs.resized(H, W)
        assert h % 4 == 0 and w % 4 == 0
        assert 128 * 16 <= h * w <= 768 * 16
        assert abs(h / w - H / W) / (H / W) < 0.15  # the aspect ratio is kept (up to whole tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_kvtp_eval_and_demo_choose_the_model_by_config(tmp_path, family, capsys):
    model_dir = save_tiny_family_model(tmp_path / family, family)
    rows = [{"id": "c1", "video": sample_video("carphone_pristine.mp4"), "question": "what is the man doing ?",
             "options": ["running", "a phone"], "answer": "B"},
            {"id": "c2", "video": sample_video("carphone_pristine.mp4"), "question": "who is in the video ?",
             "options": ["a man", "a dog", "a car"], "answer": "A"}]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    output = tmp_path / "preds.jsonl"
    argv = ["eval", "--data", data, "--model", model_dir, "--budget", "0.25", "--max-frames", "4", "--batch-size",
            "2", "--output", str(output), "--no-progress", "--prompt-format", "plain"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    records = read_jsonl(output)
    assert [r["id"] for r in records] == ["c1", "c2"]
    for r in records:
        kept = r["kvtp"]["kept_per_frame"]
        units = 2 if family in QWEN_FAMILIES else 4  # 4 frames: 2 temporal patches, or 4 frames
        assert len(kept) == units
        video_tokens = r["full"]["vision_tokens"]
        K = math.floor(0.25 * video_tokens + 0.5)
        assert sum(kept) == K and r["kvtp"]["vision_tokens"] == K
        assert r["kvtp"]["llm_tokens"] == r["full"]["llm_tokens"] - video_tokens + K
        assert r["kvtp"]["prefill_flops"] < r["full"]["prefill_flops"]
        assert r["full"]["prediction"] in "ABC"[:len(r["options"])]
        assert ("vision_flops" in r["full"]) == (family == "llava_next_video")
    assert "subset" in out

    assert main(["demo", "--model", model_dir, "--video", sample_video("carphone_pristine.mp4"), "--max-frames",
                 "4", "--repeats", "1", "--question", "what is the man doing ?"]) == 0
    demo = capsys.readouterr().out
    assert f"model: {model_dir}" in demo
    kept = [int(x) for x in re.findall(r"\d+", next(line for line in demo.splitlines()
                                                  if line.startswith("kept per frame")))]
    assert len(kept) == (2 if family in QWEN_FAMILIES else 4)


def test_qwen3_timestamps_follow_the_frame_times():
    seen = []

    def tokenizer(text, add_special_tokens=False):
        seen.append(text)
        return {"input_ids": [7] * len(seen)}

    inputs = QwenVLInputs(tiny_qwen_model("qwen3_vl"), (0.5,) * 3, (0.5,) * 3)
    frames = torch.zeros(3, 40, 40, 3, dtype=torch.uint8)  # 3 frames: 2 temporal patches (the last frame repeated)
    span = inputs.span(frames, [0.0, 2.0, 4.0], tokenizer)
    assert seen == ["<1.0 seconds>", "<4.0 seconds>"]
    n = inputs.video_tokens(frames) // 2
    ids = inputs.ids
    assert span == [7, ids["vision_start_token_id"], *[ids["video_token_id"]] * n, ids["vision_end_token_id"],
                    7, 7, ids["vision_start_token_id"], *[ids["video_token_id"]] * n, ids["vision_end_token_id"]]
