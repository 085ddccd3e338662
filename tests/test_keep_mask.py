"""The core's keep-mask path (kvtp_kernels.integrations.keep_mask) without a model.

Expected keep decisions come from the pure-PyTorch reference (kvtp_kernels.reference)
per video; the re-batching is checked against per-sample torch indexing.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers_models import reference_video_flags

from kvtp_kernels.integrations import KVTPSettings, prune_to_keep_mask

V_ID = 9


def reference_flags(features, budget, scores=None):
    return torch.cat([reference_video_flags(f, budget, None if scores is None else scores[v])
                      for v, f in enumerate(features)])


def layout():
    """Three samples: [text, video 0 as 2 spans (per frame), text, video 1], [no video], [video 2, text]; left padded.

    Video 0: T=2, N=3 (split per frame, text between); video 1: T=3, N=2; video 2: T=2, N=3.
    """
    rows = [[1, 2, *[V_ID] * 3, 3, *[V_ID] * 3, 4, *[V_ID] * 6, 5],
            [1, 2, 3],
            [1, *[V_ID] * 6, 6, 7]]
    L = max(map(len, rows))
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = torch.tensor(r)
        mask[b, L - len(r):] = 1
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 3, 8, generator=g), torch.randn(3, 2, 8, generator=g), torch.randn(2, 3, 8, generator=g)]
    return ids, mask, features


@pytest.mark.parametrize("side", ["left", "right"])
def test_keep_mask_rebatching_and_rows(side):
    ids, mask, features = layout()
    video_mask = ids == V_ID
    out = prune_to_keep_mask(video_mask, features, attention_mask=mask, settings=KVTPSettings(budget=0.5),
                             padding_side=side)
    flags = reference_flags(features, 0.5)
    keep = mask.bool().clone()
    keep[video_mask] = flags
    assert torch.equal(out.keep, keep)
    lengths = keep.sum(1).tolist()
    assert out.stats.sequence_lengths_after == lengths and out.stats.sequence_lengths_before == mask.sum(1).tolist()
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    taken = out.take(positions, pad=-1)
    three = out.take(torch.stack([positions, 2 * positions, 3 * positions]), pad=-1)
    for b, n in enumerate(lengths):
        sl = slice(taken.shape[1] - n, None) if side == "left" else slice(0, n)
        assert torch.equal(taken[b, sl], positions[b][keep[b]])  # original positions, in order
        assert torch.equal(three[2, b, sl], 3 * positions[b][keep[b]])
        assert bool((out.attention_mask[b, sl] == 1).all()) and int(out.attention_mask[b].sum()) == n
        assert bool((taken[b][out.attention_mask[b] == 0] == -1).all())
    all_rows = torch.cat([f.reshape(-1, 8) for f in features])
    torch.testing.assert_close(out.features, all_rows[flags], rtol=0, atol=0)  # kept rows in placeholder order
    torch.testing.assert_close(out.select_rows(all_rows * 2), all_rows[flags] * 2, rtol=0, atol=0)
    assert out.kept_per_video == [math.floor(0.5 * 6 + 0.5)] * 3
    assert out.stats.sample_to_video == [0, -1, 2]
    assert [sum(c) for c in out.frame_counts] == out.kept_per_video


def test_scores_move_the_budget_between_frames():
    ids, mask, features = layout()
    scores = [torch.tensor([5.0, -5.0]), torch.tensor([0.0, 0.0, 9.0]), torch.tensor([-3.0, 3.0])]
    out = prune_to_keep_mask(ids == V_ID, features, attention_mask=mask, scores=scores,
                             settings=KVTPSettings(budget=0.5, temperature=1.0))
    expected = reference_flags(features, 0.5, scores)
    assert torch.equal(out.keep[ids == V_ID], expected)
    assert out.frame_counts[0][0] > out.frame_counts[0][1] and out.frame_counts[1][2] == 2


def test_errors_name_the_argument():
    ids, mask, features = layout()
    video_mask = ids == V_ID
    with pytest.raises(ValueError, match="`input_ids` must be 17 video placeholder tokens.*6, 6, 5.*got 18"):
        prune_to_keep_mask(video_mask, [features[0], features[1], torch.randn(1, 5, 8)], attention_mask=mask)
    with pytest.raises(ValueError, match="`attention_mask` must be 1 on every video placeholder position"):
        prune_to_keep_mask(video_mask, features, attention_mask=mask * (ids != V_ID))
    with pytest.raises(ValueError, match=r"`scores\[1\]` must be a \[T_v = 3\] tensor"):
        prune_to_keep_mask(video_mask, features, attention_mask=mask, scores=[torch.zeros(2)] * 3)
    with pytest.raises(ValueError, match=r"`video_features\[2\]` must be a non-empty float \[T_v, N_v, D\] tensor "
                                         "with D = 8"):
        prune_to_keep_mask(video_mask, [*features[:2], torch.randn(2, 3, 4)], attention_mask=mask)
    with pytest.raises(ValueError, match="`padding_side` must be 'left' or 'right'"):
        prune_to_keep_mask(video_mask, features, padding_side="middle")
