"""KVTP in LLaVA-NeXT-Video (1-D RoPE, 16 pooled tokens per frame): apply_kvtp on a tiny random model.

As for the Qwen-VL family: budget 1.0 equals the unpatched model; budget < 1 equals the
unpatched model on the whole prompt with the dropped video tokens masked out of
attention and the positions of the whole prompt (the token index in forward, the mask's
cumulative sum in generate); the dropped tokens come from the pure-PyTorch reference.
"""

from __future__ import annotations

import math

import pytest
import tiny_models
import torch
from helpers_models import reference_keep_mask
from tiny_models import BOS, EOS, PAD, SIZE, VIDEO, N, kvtp, tiny_llava_next_video_model

from kvtp_kernels.integrations import _compat, apply_kvtp, is_kvtp_applied

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = [([4, 5, 6], [7, 8, 9]), ([4, 10, 11, 12, 13], [7])]


@pytest.fixture(scope="module")
def model():
    return tiny_llava_next_video_model()


def make_batch(T, texts, side="left", seed=0):
    rows = [[BOS, *pre, *[VIDEO] * (T * N), *post] for pre, post in texts]
    ids, mask = tiny_models.pad_rows(rows, side)
    g = torch.Generator().manual_seed(seed)
    return dict(input_ids=ids, attention_mask=mask, pixel_values_videos=torch.randn(len(rows), T, 3, SIZE, SIZE,
                                                                                    generator=g))


def reference_keep(model, inputs, budget):
    with torch.no_grad():
        pooled = _compat.get_video_features(model.model, inputs["pixel_values_videos"], vision_feature_layer=-1,
                                            vision_feature_select_strategy="full", return_dict=True).pooler_output
    T = inputs["pixel_values_videos"].shape[1]
    features = [rows.reshape(T, N, -1) for rows in pooled]  # [T, N, D]; [T*N, D] from transformers 5.21
    return reference_keep_mask(inputs, VIDEO, features, budget)


def masked_reference(model, inputs, keep, positions, new_tokens=0):
    """The unpruned model, dropped tokens masked out, the given positions [B, L]; greedy steps without cache."""
    with torch.no_grad():
        logits = model(**{**inputs, "attention_mask": keep.long(), "position_ids": positions}).logits
        ids, mask, pos, out = inputs["input_ids"], keep.long(), positions, []
        done = torch.zeros(ids.shape[0], 1, dtype=torch.bool)
        for _ in range(new_tokens):
            step = model(**{**inputs, "input_ids": ids, "attention_mask": mask, "position_ids": pos}).logits[:, -1]
            token = step.argmax(-1, keepdim=True).masked_fill(done, PAD)
            done |= token == EOS
            out.append(token)
            ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
    return logits, (torch.cat(out, 1) if out else None)


def test_budget_one_equals_unpatched(model):
    inputs = make_batch(3, TEXTS)
    with torch.no_grad():
        expected = model(**inputs).logits
        expected_ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        with kvtp(model, budget=1.0):
            actual = model(**inputs).logits
            actual_ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            stats = model.kvtp_stats
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(actual[mask], expected[mask], rtol=0, atol=1e-5)
    assert torch.equal(actual_ids, expected_ids)
    assert stats.video_tokens_after == stats.video_tokens_before == [3 * N] * 2


def test_pruned_forward_and_generate_equal_masked_unpruned(model):
    inputs = make_batch(4, TEXTS, seed=1)
    keep = reference_keep(model, inputs, 0.2)
    B, L = inputs["input_ids"].shape
    forward_positions = torch.arange(L).expand(B, L)  # what the unpatched forward uses
    mask = inputs["attention_mask"]
    generate_positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # what the unpatched generate uses
    expected, _ = masked_reference(model, inputs, keep, forward_positions)
    _, expected_ids = masked_reference(model, inputs, keep, generate_positions, new_tokens=4)
    with torch.no_grad(), kvtp(model, budget=0.2):
        out = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        stats = model.kvtp_stats
    lengths = keep.sum(1).tolist()
    assert stats.sequence_lengths_after == lengths
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[b, out.shape[1] - n:], expected[b][keep[b]], rtol=0, atol=1e-5)
    assert torch.equal(generated[:, :L], inputs["input_ids"])
    assert torch.equal(generated[:, L:], expected_ids)
    assert stats.video_tokens_after == [math.floor(0.2 * 4 * N + 0.5)] * 2


def test_beams_and_remove_kvtp(model):
    inputs = make_batch(2, TEXTS)
    kw = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    with torch.no_grad():
        expected = model(**inputs).logits
        with kvtp(model, budget=0.3):
            pruned = model.generate(**inputs, **kw)
        assert not is_kvtp_applied(model) and "forward" not in model.__dict__
        assert "get_video_features" not in model.model.__dict__
        after = model(**inputs).logits
    assert pruned.shape[0] == 4
    assert torch.equal(pruned[:, : inputs["input_ids"].shape[1]], inputs["input_ids"].repeat_interleave(2, 0))
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


def test_errors(model):
    with pytest.raises(ValueError, match="`layout` must be None or 'none'.*got 'video'"):
        apply_kvtp(model, layout="video")
    inputs = make_batch(2, TEXTS[:1])
    with kvtp(model, budget=0.5):
        with pytest.raises(ValueError, match="`pixel_values_videos` must be a \\[V, T, 3, H, W\\] tensor"):
            model(**{**inputs, "pixel_values_videos": inputs["pixel_values_videos"][0]})
        with pytest.raises(ValueError, match="`input_ids` must be 32 video placeholder tokens.*got 31"):
            ids = inputs["input_ids"].clone()
            ids[0, (ids[0] == VIDEO).nonzero()[0]] = 4
            model(**{**inputs, "input_ids": ids})


def test_beams_at_budget_one_equal_unpatched_beams(model):
    """Where the unpatched model's own beam search runs (5.17, 5.21 on; 5.18's expansion of LLaVA-NeXT-Video's
    [T, N, D] features fails inside transformers), the patched one at budget 1.0 gives the same sequences."""
    inputs = make_batch(2, TEXTS)
    kw = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    with torch.no_grad():
        try:
            expected = model.generate(**inputs, **kw)
        except ValueError as exc:  # transformers' own failure, not KVTP's
            assert "non-empty list of Tensors" in str(exc)
            expected = None
        with kvtp(model, budget=1.0):
            actual = model.generate(**inputs, **kw)
    assert actual.shape[0] == 4
    if expected is not None:
        assert torch.equal(actual, expected)
