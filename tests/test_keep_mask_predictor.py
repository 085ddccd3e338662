"""The relevance predictor serving the keep-mask families (Qwen-VL, LLaVA-NeXT-Video).

Frame scores are pooled per frame unit (Qwen-VL: the 2 frames of a temporal patch),
token importance is resampled to each video's non-square (h', w') token grid, frames
come from kvtp_frames= or are recovered from the flattened pixel_values_videos. The
expected keep decisions are computed here from the predictor's own outputs with
plain torch pooling and the pure-PyTorch reference pruning.
"""

from __future__ import annotations

import math
import types

import pytest
import tiny_models
import torch
from helpers_models import reference_video_flags
from tiny_models import BOS, QWEN_IDS, WORDS, qwen_token_types, qwen_video_span, siglip_tokenizer, tiny_qwen_model

from kvtp_kernels import reference as ref
from kvtp_kernels.integrations import apply_kvtp, remove_kvtp
from kvtp_kernels.integrations.qwen_vl import QwenVL

pytestmark = pytest.mark.usefixtures("one_thread")
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
P, TP, M = 2, 2, 2  # patch, temporal patch, merge of the tiny Qwen-VL models


def patchify(frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 [F, H, W, 3] -> (normalised flattened patches [t*h*w, 3*TP*P*P], grid (t, h, w)), as Qwen's processor.

    Rows walk (t, block row, block col, row in block, col in block) over the 2x2 merge
    blocks of P x P patches; each row holds (channel, frame in patch, y, x).
    """
    F, H, W, _ = frames.shape
    if F % TP:
        frames = torch.cat([frames, frames[-1:].expand(TP - F % TP, -1, -1, -1)])
    x = (frames.permute(0, 3, 1, 2).float() / 255.0 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None,
                                                                                                            None]
    t, h, w = x.shape[0] // TP, H // P, W // P
    rows = []
    for ti in range(t):
        for bh in range(h // M):
            for bw in range(w // M):
                for mh in range(M):
                    for mw in range(M):
                        y0, x0 = (bh * M + mh) * P, (bw * M + mw) * P
                        block = x[ti * TP:(ti + 1) * TP, :, y0:y0 + P, x0:x0 + P]  # [TP, C, P, P]
                        rows.append(block.permute(1, 0, 2, 3).reshape(-1))
    return torch.stack(rows), (t, h, w)


def video_frames(F, H, W, seed):
    return torch.randint(0, 256, (F, H, W, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_frames_recovered_from_flattened_patches():
    model = tiny_qwen_model("qwen2_vl")
    videos = [video_frames(4, 8, 12, 0), video_frames(3, 12, 8, 1)]  # 3 frames: the last repeated
    pieces = [patchify(v) for v in videos]
    call = {"pixel_values_videos": torch.cat([p for p, _ in pieces]),
            "video_grid_thw": torch.tensor([g for _, g in pieces])}
    recovered = QwenVL.frames_from_pixels(model, call)
    for frames, got in zip(videos, recovered):
        x01 = got * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
        back = (x01 * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        assert back.shape[0] == 4
        assert torch.equal(back[: frames.shape[0]], frames)
        assert torch.equal(back[frames.shape[0]:], frames[-1:].expand(4 - frames.shape[0], -1, -1, -1))


def expected_keep(predictor, frames_list, grids, ids, budget, query):
    """Predictor scores/importance per frame, mean over each temporal patch, reference prune -> keep mask."""
    flags = []
    for frames, (t, h, w) in zip(frames_list, grids):
        with torch.no_grad():
            out = predictor(predictor.preprocess(frames)[None], [query], token_grid=(h // M, w // M),
                            token_pool="area")
        F = frames.shape[0]
        s, imp = out.scores[0], out.token_importance[0]
        if F % TP:
            s, imp = torch.cat([s, s[-1:]]), torch.cat([imp, imp[-1:]])
        s = (s[0::2] + s[1::2]) / 2
        imp = (imp[0::2] + imp[1::2]) / 2
        N = (h // M) * (w // M)
        flags.append(reference_video_flags(torch.zeros(t, N, 1), budget, s.double(), imp.reshape(t, N)))
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[ids == QWEN_IDS["video_token_id"]] = torch.cat(flags)
    return keep


@pytest.mark.parametrize("source", ["kvtp_frames", "pixel_values_videos"])
def test_qwen_predictor_scores_per_temporal_patch(source):
    family = "qwen2_5_vl"
    model = tiny_qwen_model(family)
    predictor = tiny_models.tiny_predictor(tokenizer=siglip_tokenizer(WORDS), use_fusion_head=False)
    frames = video_frames(6, 8, 12, 2)  # 3 temporal patches of a 4 x 6 patch grid: 2 x 3 tokens
    pixels, grid = patchify(frames)
    ids = torch.tensor([[BOS, 4, 5, *qwen_video_span(family, *grid), 6, 7]])
    inputs = dict(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=torch.tensor([grid]),
                  mm_token_type_ids=qwen_token_types(ids))
    query = "what is the man doing"
    keep = expected_keep(predictor, [frames], [grid], ids, 0.5, query)
    extra = {"kvtp_frames": [frames]} if source == "kvtp_frames" else {}
    processor = types.SimpleNamespace(image_mean=MEAN, image_std=STD)
    with torch.no_grad():
        positions, _ = model.model.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                                  video_grid_thw=inputs["video_grid_thw"])
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    apply_kvtp(model, budget=0.5, predictor=predictor, processor=processor)
    try:
        with torch.no_grad():
            model(**inputs, kvtp_query=query, **extra)
        stats = model.kvtp_stats
    finally:
        remove_kvtp(model)
        hook.remove()
    video = keep[0][ids[0] == QWEN_IDS["video_token_id"]].reshape(3, 6)
    assert stats.kept_per_frame == [video.sum(1).tolist()]
    assert len(set(stats.kept_per_frame[0])) > 1  # the predictor's scores moved the budget between patches
    torch.testing.assert_close(seen[0], positions[:, keep].reshape(3, 1, -1), rtol=0, atol=0)  # the same tokens


def test_predictor_needs_a_query_or_a_tokenizer():
    model = tiny_qwen_model("qwen2_vl")
    predictor = tiny_models.tiny_predictor(tokenizer=siglip_tokenizer(WORDS), use_fusion_head=False)
    frames = video_frames(2, 8, 8, 3)
    pixels, grid = patchify(frames)
    ids = torch.tensor([[BOS, 4, *qwen_video_span("qwen2_vl", *grid), 6]])
    apply_kvtp(model, budget=0.5, predictor=predictor)
    try:
        with pytest.raises(ValueError, match="`kvtp_query` must be given"):
            model(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=torch.tensor([grid]))
        with pytest.raises(ValueError, match="`kvtp_frames` must be given, or apply_kvtp\\(..., processor=\\)"):
            model(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=torch.tensor([grid]), kvtp_query="a")
        with pytest.raises(ValueError, match="`kvtp_frames` must be 1 frame units of 2 frames.*got 3 frames"):
            model(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=torch.tensor([grid]), kvtp_query="a",
                  kvtp_frames=[video_frames(3, 8, 8, 4)])
    finally:
        remove_kvtp(model)


def test_llava_next_video_predictor_one_frame_per_unit():
    """LLaVA-NeXT-Video: a frame is a unit; scores and importance (on its 4x4 grid) come straight from the predictor."""
    model = tiny_models.tiny_llava_next_video_model()
    predictor = tiny_models.tiny_predictor(tokenizer=siglip_tokenizer(WORDS), use_fusion_head=False)
    frames = video_frames(3, 40, 40, 5)
    pixels = tiny_models.video_pixel_values_for_tests(frames)
    N = tiny_models.N
    ids = torch.tensor([[BOS, 4, *[tiny_models.VIDEO] * (3 * N), 6]])
    query = "where is the red car"
    with torch.no_grad():
        out = predictor(predictor.preprocess(frames)[None], [query], token_grid=(4, 4), token_pool="area")
    K = math.floor(0.4 * 3 * N + 0.5)
    counts = ref.keep_counts_ref(out.scores.double(), K, N, 2.0, 0, False, 0.4)
    apply_kvtp(model, budget=0.4, predictor=predictor)
    try:
        with torch.no_grad():
            model(input_ids=ids, pixel_values_videos=pixels, kvtp_query=query, kvtp_frames=[frames])
        stats = model.kvtp_stats
    finally:
        remove_kvtp(model)
    assert stats.kept_per_frame == counts.tolist()
    assert stats.kept_per_frame != [[7, 6, 6]]  # not the uniform split: the predictor moved the budget
