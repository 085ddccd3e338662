"""KVTP in the Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL with deepstack): apply_kvtp on tiny random models.

The expected outputs come from the UNPATCHED model: budget 1.0 must equal it; budget
< 1 must equal it run on the whole prompt with the dropped video tokens masked out of
attention (a 2-D mask with holes) and the M-RoPE positions of the whole prompt (the
definition of pruning). Which tokens are dropped is computed independently, with the
pure-PyTorch reference (kvtp_kernels.reference) on the model's own video features.
"""

from __future__ import annotations

import copy
import math

import pytest
import tiny_models
import torch
import transformers
from helpers_models import reference_keep_mask
from tiny_models import (
    BOS,
    EOS,
    PAD,
    QWEN_FAMILIES,
    QWEN_IDS,
    kvtp,
    qwen_image_span,
    qwen_pixels,
    qwen_token_types,
    qwen_video_span,
    tiny_qwen_model,
)

from kvtp_kernels.integrations import apply_kvtp, is_kvtp_applied, remove_kvtp

pytestmark = pytest.mark.usefixtures("one_thread")
VIDEO = QWEN_IDS["video_token_id"]


@pytest.fixture(scope="module", params=QWEN_FAMILIES)
def family_model(request):
    return request.param, tiny_qwen_model(request.param)


# ----------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------
def make_batch(family, grids, texts, image=None, side="left", seed=0):
    """One video per sample (grids[b] = (t, h, w)), text around it; optionally an image (h, w) in sample 0."""
    rows = []
    for b, (grid, (pre, post)) in enumerate(zip(grids, texts)):
        img = qwen_image_span(*image) if image is not None and b == 0 else []
        rows.append([BOS, *pre, *img, *qwen_video_span(family, *grid), *post])
    ids, mask = tiny_models.pad_rows(rows, side)
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values_videos=qwen_pixels(grids, seed),
                  video_grid_thw=torch.tensor(grids), mm_token_type_ids=qwen_token_types(ids))
    if family == "qwen2_5_vl":  # 2 s per temporal patch: temporal positions step by tokens_per_second * 2 = 4
        inputs["second_per_grid_ts"] = torch.full((len(grids),), 2.0)
    if image is not None:
        inputs.update(pixel_values=qwen_pixels([(1, *image)], seed + 1), image_grid_thw=torch.tensor([(1, *image)]))
    return inputs


TEXTS = [([4, 5, 6], [7, 8, 9]), ([4, 10, 11, 12, 13], [7])]


def reference_keep(model, inputs, budget):
    """The keep mask [B, L] that KVTP must produce: reference pruning of the model's own features, uniform scores."""
    with torch.no_grad():
        pooled = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"],
                                                return_dict=True).pooler_output
    features = [pooled[v].reshape(t, (h // 2) * (w // 2), -1)
                for v, (t, h, w) in enumerate(inputs["video_grid_thw"].tolist())]
    return reference_keep_mask(inputs, VIDEO, features, budget)


def full_positions(model, inputs):
    with torch.no_grad():
        positions, _ = model.model.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), video_grid_thw=inputs["video_grid_thw"],
            second_per_grid_ts=inputs.get("second_per_grid_ts"), attention_mask=inputs["attention_mask"])
    return positions


def masked_reference(model, inputs, keep, new_tokens=0):
    """The unpruned model with the dropped tokens masked out and the original positions.

    -> (logits [B, L, V] of the prompt, greedy new tokens [B, new_tokens]); no cache: the
    whole sequence each step; PAD after EOS, as generate.
    """
    positions = full_positions(model, inputs)
    call = {**inputs, "attention_mask": keep.long(), "position_ids": positions}
    with torch.no_grad():
        logits = model(**call).logits
        ids, mask, pos, out = call["input_ids"], keep.long(), positions, []
        done = torch.zeros(ids.shape[0], 1, dtype=torch.bool)
        for _ in range(new_tokens):
            step = model(**{**call, "input_ids": ids, "attention_mask": mask, "position_ids": pos,
                            "mm_token_type_ids": qwen_token_types(ids)}).logits[:, -1]
            token = step.argmax(-1, keepdim=True).masked_fill(done, PAD)  # as generate: padding after EOS
            done |= token == EOS
            out.append(token)
            ids = torch.cat([ids, token], 1)
            mask = torch.cat([mask, torch.ones_like(token)], 1)
            pos = torch.cat([pos, pos[:, :, -1:] + 1], 2)
    return logits, (torch.cat(out, 1) if out else None)


def kept_logits(logits, mask):
    """Per sample, the logits of the non-padding positions in order."""
    return [logits[b][mask[b].bool()] for b in range(logits.shape[0])]


# ----------------------------------------------------------------------------------
# budget 1.0 equals the unpatched model
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_budget_one_equals_unpatched(family_model, side):
    family, model = family_model
    for grids in ([(2, 4, 6)], [(2, 4, 6), (3, 4, 4)]):  # B=1; B=2 with different T' and N
        inputs = make_batch(family, grids, TEXTS[: len(grids)], side=side)
        with torch.no_grad():
            expected = model(**inputs).logits
            with kvtp(model, budget=1.0):
                actual = model(**inputs).logits
                stats = model.kvtp_stats
        mask = inputs["attention_mask"].bool()
        torch.testing.assert_close(actual[mask], expected[mask], rtol=0, atol=1e-5)
        assert stats.sequence_lengths_after == stats.sequence_lengths_before == mask.sum(1).tolist()
        assert stats.video_tokens_after == stats.video_tokens_before == [t * (h // 2) * (w // 2)
                                                                         for t, h, w in grids]


def test_budget_one_generate_equals_unpatched(family_model):
    family, model = family_model
    inputs = make_batch(family, [(2, 4, 6), (3, 4, 4)], TEXTS)
    with torch.no_grad():
        expected = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        with kvtp(model, budget=1.0):
            actual = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(actual, expected)


# ----------------------------------------------------------------------------------
# budget < 1 equals the unpruned model with the dropped tokens masked out
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("image", [None, (4, 4)], ids=["video", "video+image"])
def test_pruned_forward_equals_masked_unpruned(family_model, image):
    family, model = family_model
    grids = [(3, 4, 6), (2, 6, 4)]
    inputs = make_batch(family, grids, TEXTS, image=image)
    keep = reference_keep(model, inputs, 0.3)
    expected, _ = masked_reference(model, inputs, keep)
    with torch.no_grad(), kvtp(model, budget=0.3):
        out = model(**inputs)
        stats = model.kvtp_stats
    lengths = keep.sum(1).tolist()
    assert stats.sequence_lengths_after == lengths
    assert out.logits.shape[1] == max(lengths)
    for b, L in enumerate(lengths):
        actual_rows = out.logits[b, out.logits.shape[1] - L:]  # left padded (the input's side)
        torch.testing.assert_close(actual_rows, expected[b][keep[b]], rtol=0, atol=1e-5)
    assert stats.video_tokens_after == [math.floor(0.3 * t * (h // 2) * (w // 2) + 0.5) for t, h, w in grids]


def test_pruned_generate_equals_masked_unpruned(family_model):
    family, model = family_model
    inputs = make_batch(family, [(3, 4, 6), (2, 6, 4)], TEXTS, image=(4, 4))
    keep = reference_keep(model, inputs, 0.25)
    _, expected = masked_reference(model, inputs, keep, new_tokens=4)
    with torch.no_grad(), kvtp(model, budget=0.25):
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    L = inputs["input_ids"].shape[1]
    assert torch.equal(out[:, :L], inputs["input_ids"])  # the unpruned prompt, as unpatched
    assert torch.equal(out[:, L:], expected)


def test_positions_are_the_unpruned_ones(family_model):
    """What the language model receives: the kept tokens' M-RoPE positions of the whole prompt, text not shifted."""
    family, model = family_model
    inputs = make_batch(family, [(3, 4, 6)], TEXTS[:1])
    keep = reference_keep(model, inputs, 0.2)
    positions = full_positions(model, inputs)
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    try:
        with torch.no_grad(), kvtp(model, budget=0.2):
            model(**inputs)
    finally:
        hook.remove()
    torch.testing.assert_close(seen[0], positions[:, keep].reshape(3, 1, -1), rtol=0, atol=0)
    assert seen[0][:, 0, -1].tolist() == positions[:, 0, -1].tolist()  # the last text token is not shifted
    if family != "qwen3_vl":  # one grid per video (Qwen3-VL: one per temporal patch, timestamps between)
        video = positions[0, 0][inputs["input_ids"][0] == VIDEO]
        step = 4 if family == "qwen2_5_vl" else 1  # temporal position step per temporal patch
        assert sorted(set((video - video[0]).tolist())) == [0, step, 2 * step]


def test_zero_token_frames_keep_their_markers():
    """Qwen3-VL: a temporal patch that keeps nothing keeps its timestamp and <vision_start><vision_end>."""
    family = "qwen3_vl"
    model = tiny_qwen_model(family)
    inputs = make_batch(family, [(3, 4, 4)], TEXTS[:1])
    keep = reference_keep(model, inputs, 2)  # K = 2 tokens of 3 x 4: at least one frame keeps none
    expected, tokens = masked_reference(model, inputs, keep, new_tokens=3)
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        with torch.no_grad(), kvtp(model, budget=2):
            out = model(**inputs)
            counts = model.kvtp_stats.kept_per_frame[0]
            generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        hook.remove()
    assert 0 in counts and sum(counts) == 2
    torch.testing.assert_close(out.logits[0], expected[0][keep[0]], rtol=0, atol=1e-5)
    assert torch.equal(generated[:, inputs["input_ids"].shape[1]:], tokens)
    dropped = inputs["input_ids"][0][~keep[0]]
    assert bool((dropped == VIDEO).all())  # markers and timestamps all kept
    assert seen[0] == int(keep.sum())


def test_deepstack_pruned_with_the_same_mask():
    """Qwen3-VL: every deepstack level reaches the LLM with exactly the kept video rows."""
    model = tiny_qwen_model("qwen3_vl")
    inputs = make_batch("qwen3_vl", [(2, 4, 6)], TEXTS[:1])
    keep = reference_keep(model, inputs, 0.5)
    with torch.no_grad():
        full = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"],
                                              return_dict=True).deepstack_features
    full = [torch.cat(list(level)) if isinstance(level, (list, tuple)) else level for level in full]
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append((kw["visual_pos_masks"], kw["deepstack_visual_embeds"])), with_kwargs=True)
    try:
        with torch.no_grad(), kvtp(model, budget=0.5):
            model(**inputs)
    finally:
        hook.remove()
    positions, embeds = seen[0]
    kept_video = keep[0][inputs["input_ids"][0] == VIDEO]
    assert int(positions.sum()) == int(kept_video.sum())
    assert len(embeds) == len(full) == 2
    for level, expected in zip(embeds, full):
        torch.testing.assert_close(level, expected[kept_video], rtol=0, atol=0)


# ----------------------------------------------------------------------------------
# Beams, restore, errors
# ----------------------------------------------------------------------------------
def test_beams_and_return_sequences(family_model):
    family, model = family_model
    inputs = make_batch(family, [(2, 4, 6), (3, 4, 4)], TEXTS)
    kw = dict(max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    with torch.no_grad():
        expected = model.generate(**inputs, **kw)
        with kvtp(model, budget=1.0):
            actual = model.generate(**inputs, **kw)
        with kvtp(model, budget=0.3):
            pruned = model.generate(**inputs, **kw)
    assert torch.equal(actual, expected)
    assert pruned.shape == expected.shape
    assert torch.equal(pruned[:, : inputs["input_ids"].shape[1]], inputs["input_ids"].repeat_interleave(2, 0))


def test_remove_kvtp_restores_the_instance(family_model):
    family, model = family_model
    inputs = make_batch(family, [(2, 4, 6)], TEXTS[:1])
    before = dict(model.__dict__)
    with torch.no_grad():
        expected = model(**inputs).logits
        apply_kvtp(model, budget=0.2)
        assert is_kvtp_applied(model) and "forward" in model.__dict__
        model(**inputs)
        remove_kvtp(model)
        after = model(**inputs).logits
    assert not is_kvtp_applied(model)
    assert set(model.__dict__) == set(before)
    assert all(model.__dict__[k] is before[k] for k in before if k != "_modules")
    assert "get_video_features" not in model.model.__dict__
    torch.testing.assert_close(after, expected, rtol=0, atol=0)


def test_errors(family_model):
    family, model = family_model
    with pytest.raises(ValueError, match="`layout` must be None or 'none'.*got 'grid'"):
        apply_kvtp(model, layout="grid")
    assert not is_kvtp_applied(model)
    inputs = make_batch(family, [(2, 4, 6)], TEXTS[:1])
    with kvtp(model, budget=0.5):
        with pytest.raises(RuntimeError, match="already patched"):
            apply_kvtp(model)
        with pytest.raises(ValueError, match="`video_grid_thw` must be a \\[V, 3\\] tensor"):
            model(**{**inputs, "video_grid_thw": None})
        with pytest.raises(ValueError, match="`input_ids` must be .*12 video placeholder tokens.*got 11"):
            ids = inputs["input_ids"].clone()
            ids[0, (ids[0] == VIDEO).nonzero()[0]] = 4
            model(**{**inputs, "input_ids": ids, "mm_token_type_ids": qwen_token_types(ids)})
        with pytest.raises(ValueError, match="`mm_encoder_outputs` must be without a 'video' entry"):
            model(input_ids=inputs["input_ids"], mm_encoder_outputs={"video": object()})
        with pytest.raises(ValueError, match="`position_ids` must be None with video input to generate"):
            model.generate(**inputs, position_ids=torch.zeros(3, 1, inputs["input_ids"].shape[1], dtype=torch.long))


def test_unsupported_model_names_the_supported_ones():
    torch.manual_seed(0)
    text = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1))
    with pytest.raises(TypeError, match="must be one of LlavaOnevisionForConditionalGeneration, "
                                        "Qwen2VLForConditionalGeneration.*got Qwen2ForCausalLM, which has no video"):
        apply_kvtp(text)


def test_deep_copy_is_patched_on_its_own():
    """The patched methods are bound: a deep copy runs its own weights and is unpatched on its own."""
    model = tiny_qwen_model("qwen2_vl")
    inputs = make_batch("qwen2_vl", [(2, 4, 6)], TEXTS[:1])
    apply_kvtp(model, budget=0.5)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.lm_head.weight.mul_(2.0)
        ours, theirs = model(**inputs).logits, twin(**inputs).logits
    torch.testing.assert_close(theirs, 2.0 * ours, rtol=1e-5, atol=1e-5)
    assert theirs.shape[1] == model.kvtp_stats.sequence_lengths_after[0] < inputs["input_ids"].shape[1]
    remove_kvtp(twin)
    assert is_kvtp_applied(model) and not is_kvtp_applied(twin)


def test_two_videos_in_one_sample_and_labels(family_model):
    """Sample 0 holds two videos, sample 1 one, sample 2 none: pruned = masked unpruned; budget 1.0 gives the
    unpatched loss."""
    family, model = family_model
    grids = [(2, 4, 4), (1, 4, 6), (2, 6, 4)]
    rows = [[BOS, 4, *qwen_video_span(family, *grids[0]), 5, *qwen_video_span(family, *grids[1]), 6, 7],
            [BOS, 8, 9, *qwen_video_span(family, *grids[2]), 10],
            [BOS, 11, 12, 13]]  # text only
    L = max(map(len, rows))
    ids = torch.full((3, L), PAD)
    mask = torch.zeros((3, L), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = torch.tensor(r)
        mask[b, L - len(r):] = 1
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values_videos=qwen_pixels(grids, 3),
                  video_grid_thw=torch.tensor(grids), mm_token_type_ids=qwen_token_types(ids))
    keep = reference_keep(model, inputs, 0.4)
    expected, _ = masked_reference(model, inputs, keep)
    labels = torch.where(mask.bool() & (ids != VIDEO), ids, -100)
    with torch.no_grad():
        unpatched = model(**inputs, labels=labels)
        with kvtp(model, budget=0.4):
            out = model(**inputs).logits
            stats = model.kvtp_stats
        with kvtp(model, budget=1.0):
            full = model(**inputs, labels=labels)
    for b, n in enumerate(keep.sum(1).tolist()):
        torch.testing.assert_close(out[b, out.shape[1] - n:], expected[b][keep[b]], rtol=0, atol=1e-5)
    assert stats.video_tokens_before == [t * (h // 2) * (w // 2) for t, h, w in grids]
    assert stats.sample_to_video == [0, 2, -1]
    assert stats.sequence_lengths_after[2] == stats.sequence_lengths_before[2] == 4
    torch.testing.assert_close(full.loss, unpatched.loss, rtol=0, atol=1e-5)


def test_rope_deltas_continue_a_pruned_prefill(family_model):
    """After a pruned forward, model.model.rope_deltas places the next token where HF's unpatched cached step does
    (the unpruned prompt's max position + 1), so a plain cached decoding step (no position_ids) continues as the
    masked unpruned model does."""
    family, model = family_model
    inputs = make_batch(family, [(3, 4, 6)], TEXTS[:1])
    keep = reference_keep(model, inputs, 0.3)
    positions = full_positions(model, inputs)
    with torch.no_grad(), kvtp(model, budget=0.3):
        call = {k: v for k, v in inputs.items() if k != "attention_mask"}
        out = model(**call, use_cache=True)
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        step = model(input_ids=first, past_key_values=out.past_key_values, use_cache=True,
                     mm_token_type_ids=torch.zeros_like(first, dtype=torch.int32)).logits[:, -1]
    with torch.no_grad():  # the unpruned model, dropped tokens masked, the new token at the max position + 1
        ids = torch.cat([inputs["input_ids"], first], 1)
        expected = model(**{**inputs, "input_ids": ids, "mm_token_type_ids": qwen_token_types(ids),
                            "attention_mask": torch.cat([keep.long(), torch.ones_like(first)], 1),
                            "position_ids": torch.cat([positions, positions.amax((0, 2)).expand(3, 1, 1) + 1],
                                                      2)}).logits[:, -1]
    torch.testing.assert_close(step, expected, rtol=0, atol=1e-5)


def test_threads_share_a_patched_model():
    """Concurrent generate calls on one patched model each get their own pruned result and stats."""
    from concurrent.futures import ThreadPoolExecutor

    from kvtp_kernels.integrations import collect_stats

    model = tiny_qwen_model("qwen2_vl")
    batches = [make_batch("qwen2_vl", [(2, 4, 6)], TEXTS[:1], seed=s) for s in range(4)]
    with kvtp(model, budget=0.3), torch.no_grad():
        alone = [model.generate(**b, max_new_tokens=3, do_sample=False) for b in batches]

        def run(b):
            with collect_stats() as calls:
                return model.generate(**b, max_new_tokens=3, do_sample=False), calls

        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(run, batches))
    for expected, (got, calls) in zip(alone, together):
        assert torch.equal(got, expected) and len(calls) == 1
