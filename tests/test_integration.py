"""KVTP inside HF transformers: apply_kvtp / remove_kvtp on LlavaOnevisionForConditionalGeneration, and the core.

Everything runs on a tiny random LlavaOnevision on CPU (no download): Qwen2 text
(hidden 64, 2 layers, GQA 4/2 heads), SigLIP vision (64 px in 8 px patches: an 8x8
grid, pooled by HF to 4x4 = 16 tokens per frame). Expected outputs are built
independently: video features from the model's own get_video_features, pruning
with the pure-PyTorch reference (kvtp_kernels.reference), sequences with torch.cat,
and the unpatched model run on them.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import subprocess
import sys
import threading

import pytest
import tiny_models
import torch
import transformers
from tiny_models import (
    BOS,
    GRID,
    IMAGE,
    SIZE,
    VIDEO,
    WORDS,
    N,
    kvtp,
    sample_video,
    siglip_tokenizer,
    tiny_llava_model,
)

from kvtp_kernels import load_video
from kvtp_kernels import reference as ref
from kvtp_kernels.integrations import (
    KVTPSettings,
    _compat,
    apply_kvtp,
    collect_stats,
    is_kvtp_applied,
    prune_video_inputs,
    remove_kvtp,
    video_pixel_values,
)

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE_GRID_PINPOINTS = [[SIZE, SIZE], [SIZE, 2 * SIZE], [2 * SIZE, SIZE]]


# ----------------------------------------------------------------------------------
# Tiny models and tokenizers (tiny_models.py: this file's small vocabularies, no fusion head)
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return tiny_llava_model(max_position_embeddings=1024, image_grid_pinpoints=IMAGE_GRID_PINPOINTS)


def tiny_predictor(image_size=28):
    return tiny_models.tiny_predictor(tokenizer=siglip_tokenizer(WORDS), image_size=image_size,
                                      use_fusion_head=False)


def llm_tokenizer():
    return tiny_models.llm_tokenizer(words=WORDS)


@pytest.fixture(scope="module")
def predictor():
    return tiny_predictor()


@pytest.fixture(autouse=True)
def _unpatch_shared_model(request):
    """The module's model is shared: a test that fails while it is patched must not fail the next ones."""
    yield
    if "model" in request.fixturenames:
        shared = request.getfixturevalue("model")
        if is_kvtp_applied(shared):
            remove_kvtp(shared)


# ----------------------------------------------------------------------------------
# Batches and the independent expected inputs
# ----------------------------------------------------------------------------------
def video_prompt(pre, post, T):
    return [BOS, *pre, *[VIDEO] * (T * N + 1), *post]


def batch(rows, side="left"):
    """Token lists -> (input_ids, attention_mask) padded with PAD on `side`."""
    return tiny_models.pad_rows(rows, side)


def videos(*frame_counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(T, 3, SIZE, SIZE, generator=g) for T in frame_counts]


def features_of(model, video):
    """The model's own video features [T, N, D] (newline row dropped)."""
    with torch.no_grad():
        pooled = _compat.get_video_features(model, video[None], return_dict=True).pooler_output
    T = video.shape[0]
    assert pooled.shape[1] == T * N + int(_compat.video_features_end_with_newline())
    return pooled[0, : T * N].reshape(T, N, -1)


def reference_prune(tokens, budget, scores=None, token_scores=None, temperature=2.0):
    """The pure-PyTorch reference: keep counts, then the kept rows [K, D] in (frame, raster) order."""
    T = tokens.shape[0]
    K = math.floor(budget * T * N + 0.5)
    s = torch.zeros(1, T) if scores is None else scores[None]
    counts = ref.keep_counts_ref(s, K, N, temperature, 0, False, budget)
    packed, indices, *_ = ref.prune_tokens_ref(tokens[None], counts, None if token_scores is None
                                               else token_scores[None])
    return packed, indices, counts[0]


def expected_inputs(model, input_ids, attention_mask, video_rows, side="left"):
    """torch.cat per sample: text before the span, the video rows + newline, text after; padded."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(input_ids)
    newline = model.model.image_newline.detach()
    sequences, v = [], 0
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool()
        positions = keep.nonzero().squeeze(1)
        span = ((input_ids[b] == VIDEO) & keep).nonzero().squeeze(1)
        if span.numel():
            before, after = positions[positions < span[0]], positions[positions > span[-1]]
            sequences.append(torch.cat([embeds[b, before], video_rows[v], newline[None], embeds[b, after]]))
            v += 1
        else:
            sequences.append(embeds[b, positions])
    L = max(s.shape[0] for s in sequences)
    out = torch.zeros(len(sequences), L, embeds.shape[-1])
    mask = torch.zeros(len(sequences), L, dtype=torch.long)
    for b, s in enumerate(sequences):
        sl = slice(L - s.shape[0], L) if side == "left" else slice(0, s.shape[0])
        out[b, sl] = s
        mask[b, sl] = 1
    return out, mask


def capture_llm_inputs(model):
    """Records what the language model receives (inputs_embeds, attention_mask) on each call."""
    seen = []

    def hook(_module, args, kwargs):
        seen.append((kwargs.get("inputs_embeds"), kwargs.get("attention_mask")))

    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def assert_logits_equal(actual, expected, mask, atol=1e-5):
    assert actual.shape == expected.shape
    keep = mask.bool()
    torch.testing.assert_close(actual[keep], expected[keep], rtol=0, atol=atol)


PROMPTS = [([4, 5, 6], [7, 8, 9]), ([4, 5, 6, 10, 11, 12], [7, 8]), ([4], [13])]


# ----------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 3])
def test_budget_one_equals_unpatched(model, batch_size):
    T = 4
    ids, mask = batch([video_prompt(pre, post, T) for pre, post in PROMPTS[:batch_size]])
    pixels = torch.stack(videos(*[T] * batch_size))
    labels = torch.where(mask.bool() & (ids != VIDEO), ids, -100)  # video rows carry no label (as in training)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, labels=labels)
        with kvtp(model, budget=1.0):
            actual = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, labels=labels)
            stats = model.kvtp_stats
    assert_logits_equal(actual.logits, expected.logits, mask)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=0, atol=1e-5)
    assert stats.video_tokens_after == stats.video_tokens_before == [T * N + 1] * batch_size
    assert stats.sequence_lengths_after == stats.sequence_lengths_before == mask.sum(1).tolist()
    assert stats.flops_ratio == 1.0


@pytest.mark.parametrize("budget", [0.2, 0.25])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_budget_below_one_equals_unpatched_on_reference_pruned_features(model, batch_size, budget):
    T = 5
    ids, mask = batch([video_prompt(pre, post, T) for pre, post in PROMPTS[:batch_size]])
    clips = videos(*[T] * batch_size, seed=1)
    rows = [reference_prune(features_of(model, clip), budget)[0] for clip in clips]
    embeds, new_mask = expected_inputs(model, ids, mask, rows)
    with torch.no_grad():
        expected = model(inputs_embeds=embeds, attention_mask=new_mask).logits
        with kvtp(model, budget=budget):
            actual = model(input_ids=ids, attention_mask=mask, pixel_values_videos=torch.stack(clips))
    assert_logits_equal(actual.logits, expected, new_mask)
    K = math.floor(budget * T * N + 0.5)
    torch.testing.assert_close(_compat.video_features_of(actual), torch.cat(rows), rtol=0, atol=0)
    assert all(r.shape[0] == K for r in rows)


def test_language_model_receives_k_plus_newline_tokens(model):
    T = 4
    ids, mask = batch([video_prompt(pre, post, T) for pre, post in PROMPTS])
    pixels = torch.stack(videos(T, T, T, seed=2))
    newline = model.model.image_newline.detach()
    seen, handle = capture_llm_inputs(model)
    try:
        with torch.no_grad(), kvtp(model, budget=0.2):
            model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels)
            stats = model.kvtp_stats
    finally:
        handle.remove()
    (embeds, llm_mask), = seen
    K = math.floor(0.2 * T * N + 0.5)  # 13 of 64
    text = (mask.bool() & (ids != VIDEO)).sum(1)
    assert llm_mask.sum(1).tolist() == (text + K + 1).tolist()
    is_newline = (embeds == newline).all(-1) & llm_mask.bool()
    assert is_newline.sum(1).tolist() == [1, 1, 1]
    assert stats.video_tokens_after == [K + 1] * 3 and stats.video_tokens_before == [T * N + 1] * 3
    assert [sum(c) for c in stats.kept_per_frame] == [K] * 3
    # uniform scores without a predictor: K/T per frame, the remainder to the first frames
    assert stats.kept_per_frame[0] == [4, 3, 3, 3]


def test_grid_layout_newline_after_each_kept_grid_row(model):
    T = 3
    ids, mask = batch([video_prompt(*PROMPTS[0], T)])
    clip = videos(T, seed=3)[0]
    _, indices, _ = reference_prune(features_of(model, clip), 0.2)
    grid_rows = len({(i // N, i % N // GRID) for i in indices.tolist()})
    seen, handle = capture_llm_inputs(model)
    try:
        with torch.no_grad(), kvtp(model, budget=0.2, layout="grid"):
            model(input_ids=ids, attention_mask=mask, pixel_values_videos=clip[None])
            stats = model.kvtp_stats
    finally:
        handle.remove()
    (embeds, _), = seen
    K = math.floor(0.2 * T * N + 0.5)
    assert (embeds[0] == model.model.image_newline.detach()).all(-1).sum() == grid_rows
    assert stats.video_tokens_after == [K + grid_rows]


def test_videos_of_different_lengths(model):
    rows = [video_prompt(*PROMPTS[0], 4), video_prompt(*PROMPTS[1], 2), video_prompt(*PROMPTS[2], 3)]
    ids, mask = batch(rows)
    clips = videos(4, 2, 3, seed=4)
    pruned = [reference_prune(features_of(model, clip), 0.25)[0] for clip in clips]
    embeds, new_mask = expected_inputs(model, ids, mask, pruned)
    with torch.no_grad():
        expected = model(inputs_embeds=embeds, attention_mask=new_mask).logits
        with kvtp(model, budget=0.25):
            actual = model(input_ids=ids, attention_mask=mask, pixel_values_videos=clips)
            stats = model.kvtp_stats
    assert_logits_equal(actual.logits, expected, new_mask)
    assert stats.video_tokens_after == [math.floor(0.25 * T * N + 0.5) + 1 for T in (4, 2, 3)]
    assert [len(c) for c in stats.kept_per_frame] == [4, 2, 3]


def image_inputs(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(1, 2, 3, SIZE, SIZE, generator=g)  # base + one anyres patch (64x64 image)
    image_sizes = torch.tensor([[SIZE, SIZE]])
    with torch.no_grad():
        count = model.get_image_features(pixel_values, image_sizes, return_dict=True).pooler_output[0].shape[0]
    return pixel_values, image_sizes, count


def mixed_batch(model, T):
    """Sample 0: video; sample 1: image; sample 2: text only."""
    pixel_values, image_sizes, image_tokens = image_inputs(model)
    rows = [video_prompt(*PROMPTS[0], T), [BOS, 4, *[IMAGE] * image_tokens, 5, 6], [BOS, 7, 8, 9, 10]]
    ids, mask = batch(rows)
    return ids, mask, pixel_values, image_sizes


@pytest.mark.parametrize("budget", [1.0, 0.2])
def test_batch_mixing_video_image_and_text(model, budget):
    T = 3
    ids, mask, pixel_values, image_sizes = mixed_batch(model, T)
    clip = videos(T, seed=6)[0]
    rows = [reference_prune(features_of(model, clip), budget)[0]]
    embeds, new_mask = expected_inputs(model, ids, mask, rows)
    with torch.no_grad():
        # the unpatched model fills the images itself (embeddings input: placeholders found by their embedding)
        expected = model(inputs_embeds=embeds, attention_mask=new_mask, pixel_values=pixel_values,
                         image_sizes=image_sizes).logits
        unpatched = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_sizes=image_sizes,
                          pixel_values_videos=clip[None]).logits
        with kvtp(model, budget=budget):
            actual = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, image_sizes=image_sizes,
                           pixel_values_videos=clip[None])
            stats = model.kvtp_stats
    assert_logits_equal(actual.logits, expected, new_mask)
    if budget == 1.0:
        assert_logits_equal(actual.logits, unpatched, mask)
    assert stats.sample_to_video == [0, -1, -1]
    assert stats.sequence_lengths_after[1:] == stats.sequence_lengths_before[1:]


def test_right_padding_labels_and_position_ids(model):
    T = 2
    ids, mask = batch([video_prompt(pre, post, T) for pre, post in PROMPTS], side="right")
    pixels = torch.stack(videos(T, T, T, seed=7))
    labels = torch.where(mask.bool() & (ids != VIDEO), ids, -100)
    positions = (mask.cumsum(1) - 1).clamp_min(0) + 3  # e.g. an offset prompt
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, labels=labels,
                         position_ids=positions)
        with kvtp(model, budget=1.0):
            actual = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, labels=labels,
                           position_ids=positions)
    assert_logits_equal(actual.logits, expected.logits, mask)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=0, atol=1e-5)


def _pixels_and_other_inputs(model, seed, other):
    """Pruned logits of a two-video batch from ``input_ids`` + pixels, and from ``other(ids, mask, pixels)``."""
    T = 3
    ids, mask = batch([video_prompt(pre, post, T) for pre, post in PROMPTS[:2]])
    pixels = torch.stack(videos(T, T, seed=seed))
    with torch.no_grad(), kvtp(model, budget=0.3):
        from_pixels = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels).logits
        from_other = model(**other(ids, mask, pixels)).logits
    return from_pixels, from_other


def test_embeddings_input_finds_the_placeholders_by_embedding(model):
    def embeddings(ids, mask, pixels):
        return dict(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask, pixel_values_videos=pixels)

    from_ids, from_embeds = _pixels_and_other_inputs(model, 15, embeddings)
    torch.testing.assert_close(from_embeds, from_ids, rtol=0, atol=0)


def test_precomputed_video_features(model):
    def features(ids, mask, pixels):
        encoded = _compat.get_video_features(model.model, pixels, return_dict=True)
        return dict(input_ids=ids, attention_mask=mask, mm_encoder_outputs={"video": encoded})

    from_pixels, from_features = _pixels_and_other_inputs(model, 8, features)
    torch.testing.assert_close(from_features, from_pixels, rtol=0, atol=0)


# ----------------------------------------------------------------------------------
# Generate
# ----------------------------------------------------------------------------------
def greedy_loop(model, embeds, mask, steps, **first_kwargs):
    """Greedy decoding by hand with the KV cache, positions = cumsum of the mask (what generate uses)."""
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    tokens = []
    with torch.no_grad():
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **first_kwargs)
        for _ in range(steps):
            next_token = out.logits[:, -1].argmax(-1)
            tokens.append(next_token)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=next_token[:, None], attention_mask=mask, position_ids=positions,
                        past_key_values=out.past_key_values, use_cache=True)
    return torch.stack(tokens, 1)


def test_generate_equals_manual_loop_over_pruned_embeddings(model):
    T, steps = 4, 5
    ids, mask, pixel_values, image_sizes = mixed_batch(model, T)
    ids2, mask2 = batch([video_prompt(*PROMPTS[1], T)])
    rows_ = [ids[0, mask[0].bool()].tolist(), ids[1, mask[1].bool()].tolist(), ids2[0].tolist()]
    ids, mask = batch(rows_)  # samples: video, image, video
    clips = videos(T, T, seed=9)
    pruned = [reference_prune(features_of(model, clip), 0.2)[0] for clip in clips]
    embeds, new_mask = expected_inputs(model, ids, mask, pruned)
    expected = greedy_loop(model, embeds, new_mask, steps, pixel_values=pixel_values, image_sizes=image_sizes)
    with kvtp(model, budget=0.2):
        actual = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixel_values,
                                image_sizes=image_sizes, pixel_values_videos=torch.stack(clips),
                                max_new_tokens=steps, do_sample=False)
    assert actual.shape == (3, ids.shape[1] + steps)
    assert torch.equal(actual[:, : ids.shape[1]], ids)  # the prompt ids, as unpatched generate returns them
    assert torch.equal(actual[:, ids.shape[1]:], expected)


def test_generate_budget_one_and_lengths_count_the_original_prompt(model):
    T = 3
    ids, mask = batch([video_prompt(pre, post, T) for pre, post in PROMPTS])
    pixels = torch.stack(videos(T, T, T, seed=10))
    kwargs = dict(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, do_sample=False)
    expected = model.generate(**kwargs, max_length=ids.shape[1] + 4)
    with kvtp(model, budget=1.0):
        actual = model.generate(**kwargs, max_length=ids.shape[1] + 4)
        as_dict = model.generate(**kwargs, max_new_tokens=4, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(actual, expected)
    assert torch.equal(as_dict.sequences, expected) and len(as_dict.scores) == 4


def test_remove_kvtp_restores_the_model_exactly(model):
    T = 3
    ids, mask = batch([video_prompt(pre, post, T) for pre, post in PROMPTS])
    pixels = torch.stack(videos(T, T, T, seed=11))
    before_dict = dict(model.__dict__)
    state_keys = list(model.state_dict())
    forward_signature = inspect.signature(model.forward)
    generate_signature = inspect.signature(model.generate)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels).logits
    tokens = model.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, max_new_tokens=3,
                            do_sample=False)

    apply_kvtp(model, budget=0.2, predictor=tiny_predictor(), processor=llm_tokenizer())
    assert is_kvtp_applied(model)
    assert list(model.state_dict()) == state_keys  # the predictor is not registered as a submodule
    assert inspect.signature(model.forward) == forward_signature
    assert inspect.signature(model.generate) == generate_signature
    with torch.no_grad():
        pruned = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels,
                       kvtp_frames=torch.randint(0, 256, (3, T, 20, 24, 3), dtype=torch.uint8)).logits
    assert pruned.shape[1] < logits.shape[1]
    with pytest.raises(RuntimeError, match="already patched"):
        apply_kvtp(model)
    remove_kvtp(model)

    assert not is_kvtp_applied(model)
    assert model.__dict__.keys() == before_dict.keys()
    assert all(model.__dict__[k] is v for k, v in before_dict.items())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels).logits,
                                   logits, rtol=0, atol=0)
    assert torch.equal(model.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels,
                                      max_new_tokens=3, do_sample=False), tokens)
    with pytest.raises(ValueError, match="not patched"):
        remove_kvtp(model)


def test_deepcopy_of_a_patched_model_runs_its_own_weights():
    model = tiny_llava_model(seed=3)
    T = 3
    ids, mask = batch([video_prompt(pre, post, T) for pre, post in PROMPTS[:2]])
    pixels = torch.stack(videos(T, T, seed=12))

    def logits(m):
        with torch.no_grad():
            return m(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels).logits

    apply_kvtp(model, budget=0.3)
    twin = copy.deepcopy(model)
    assert is_kvtp_applied(twin) and twin.forward.__self__ is twin and twin.generate.__self__ is twin
    original = logits(model)
    torch.testing.assert_close(logits(twin), original, rtol=0, atol=0)  # same weights, same pruned pipeline
    with torch.no_grad():
        twin.lm_head.weight.mul_(-2.0)
    changed = logits(twin)
    assert changed.shape == original.shape and not torch.allclose(changed, original)  # the copy's own weights
    torch.testing.assert_close(logits(model), original, rtol=0, atol=0)
    remove_kvtp(twin)  # the copy's own patch: the original stays patched
    assert is_kvtp_applied(model) and not is_kvtp_applied(twin)
    assert logits(twin).shape[1] > original.shape[1]
    remove_kvtp(model)


def test_collect_stats_is_per_thread(model):
    """Threads sharing one patched model: model.kvtp_stats is whichever call came last, collect_stats is exact."""
    lengths = {0: 2, 1: 5}
    inputs = {}
    for worker, T in lengths.items():
        ids, mask = batch([video_prompt(*PROMPTS[worker], T)])
        inputs[worker] = (ids, mask, torch.stack(videos(T, seed=20 + worker)))
    results, errors = {}, []
    start = threading.Barrier(len(lengths))

    def run(worker):
        try:
            ids, mask, pixels = inputs[worker]
            start.wait()
            with collect_stats() as calls, torch.no_grad():
                for _ in range(6):
                    model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels)
            results[worker] = calls
        except Exception as exc:  # reported below: a thread's exception would otherwise vanish
            errors.append(exc)

    with kvtp(model, budget=0.5):
        threads = [threading.Thread(target=run, args=(w,)) for w in lengths]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with collect_stats() as outer, collect_stats() as inner, torch.no_grad():
            ids, mask, pixels = inputs[0]
            model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels)
        assert len(outer) == len(inner) == 1 and outer[0] is inner[0] is model.kvtp_stats
    assert not errors, errors
    for worker, T in lengths.items():
        calls = results[worker]
        assert len(calls) == 6
        assert all(stats.video_tokens_before == [T * N + 1] for stats in calls)
        assert all(len(stats.kept_per_frame[0]) == T for stats in calls)


def test_text_only_calls_go_straight_through(model):
    ids, mask = batch([[BOS, 4, 5, 6], [BOS, 7, 8]])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        with kvtp(model, budget=0.2):
            actual = model(input_ids=ids, attention_mask=mask).logits
            assert model.kvtp_stats is None
            tokens = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert torch.equal(tokens, model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False))


# ----------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------
def test_predictor_scores_and_token_importance_pick_the_tokens(model, predictor):
    T = 4
    prompts = [([4, 5, 6, 7], [8]), ([9, 10], [11, 12])]  # "what is the man" / "doing in"
    ids, mask = batch([video_prompt(pre, post, T) for pre, post in prompts])
    clips = videos(T, T, seed=12)
    raw = torch.randint(0, 256, (2, T, 30, 40, 3), dtype=torch.uint8)
    tokenizer = llm_tokenizer()
    queries = [tokenizer.decode(ids[b][mask[b].bool() & (ids[b] != VIDEO)].tolist(), skip_special_tokens=True)
               for b in range(2)]
    assert queries == ["what is the man dog", "cat doing in video"]
    with torch.no_grad():
        out = predictor(predictor.preprocess(raw), queries, token_grid=(GRID, GRID), token_pool="bilinear")
    rows = [reference_prune(features_of(model, clips[v]), 0.2, out.scores[v], out.token_importance[v])[0]
            for v in range(2)]
    embeds, new_mask = expected_inputs(model, ids, mask, rows)
    uniform = [reference_prune(features_of(model, clips[v]), 0.2)[0] for v in range(2)]
    assert any(r.shape != u.shape or not torch.equal(r, u) for r, u in zip(rows, uniform))  # the scores matter
    with torch.no_grad():
        expected = model(inputs_embeds=embeds, attention_mask=new_mask).logits
        with kvtp(model, budget=0.2, predictor=predictor, processor=tokenizer):
            decoded = model(input_ids=ids, attention_mask=mask, pixel_values_videos=torch.stack(clips),
                            kvtp_frames=raw).logits
            counts = model.kvtp_stats.kept_per_frame
            explicit = model(input_ids=ids, attention_mask=mask, pixel_values_videos=torch.stack(clips),
                             kvtp_frames=list(raw), kvtp_query=queries).logits
    assert_logits_equal(decoded, expected, new_mask)
    assert_logits_equal(explicit, expected, new_mask)
    K = math.floor(0.2 * T * N + 0.5)
    expected_counts = ref.keep_counts_ref(out.scores, K, N, 2.0, 0, False, 0.2).tolist()
    assert counts == expected_counts


@pytest.mark.parametrize("merge", ["paper", "mean"])
def test_prumerge_with_the_predictors_attention(model, predictor, merge):
    """method="prumerge" (the paper's best): top-k by the predictor's token importance, then each kept
    token absorbs its nearest tokens; the LLM gets exactly the rows of the reference PruMerge."""
    T = 4
    ids, mask = batch([video_prompt([4, 5, 6], [7], T)])
    clip = videos(T, seed=21)[0]
    raw = torch.randint(0, 256, (1, T, 30, 40, 3), dtype=torch.uint8)
    with torch.no_grad():
        out = predictor(predictor.preprocess(raw), ["the man"], token_grid=(GRID, GRID), token_pool="bilinear")
    features = features_of(model, clip)
    _, indices, counts = reference_prune(features, 0.2, out.scores[0], out.token_importance[0])
    merged = ref.prumerge_ref(features[None], features[None], out.token_importance[0][None], indices,
                              min(32, N - 1), merge == "mean")
    embeds, new_mask = expected_inputs(model, ids, mask, [merged])
    with torch.no_grad():
        expected = model(inputs_embeds=embeds, attention_mask=new_mask).logits
        with kvtp(model, budget=0.2, predictor=predictor, method="prumerge", merge=merge, backend="reference"):
            got = model(input_ids=ids, attention_mask=mask, pixel_values_videos=clip[None], kvtp_frames=raw,
                        kvtp_query="the man").logits
            assert model.kvtp_stats.kept_per_frame == [counts.tolist()]
    assert_logits_equal(got, expected, new_mask)


def test_prumerge_needs_a_predictor(model):
    with pytest.raises(ValueError, match="'prumerge' needs a `predictor`"):
        apply_kvtp(model, method="prumerge")
    assert not is_kvtp_applied(model)


def test_predictor_frames_from_pixel_values_videos(model):
    """Without kvtp_frames, the predictor's pixels are the LLM's, re-normalised (same image size)."""
    predictor = tiny_predictor(image_size=SIZE)
    T = 3
    ids, mask = batch([video_prompt(*PROMPTS[0], T)])
    raw = torch.randint(0, 256, (T, 48, 80, 3), dtype=torch.uint8)
    clip_mean, clip_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    pixels = video_pixel_values(raw, SIZE, clip_mean, clip_std)
    processor = clip_image_processor()
    with torch.no_grad():
        with kvtp(model, budget=0.2, predictor=predictor, processor=processor):
            derived = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels[None],
                            kvtp_query="red car").logits
        with kvtp(model, budget=0.2, predictor=predictor):
            given = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels[None],
                          kvtp_query="red car", kvtp_frames=video_pixel_values(raw, SIZE)[None]).logits
    torch.testing.assert_close(derived, given, rtol=0, atol=1e-5)


def clip_image_processor():
    """LLaVA-OneVision's image processor (PIL backend: no torchvision needed); mean / std of OpenAI CLIP."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    return LlavaOnevisionImageProcessorPil()


def test_real_video_end_to_end(model, predictor):
    """A real video decoded with PyAV, processor-free preprocessing, the predictor, generate."""
    frames, _ = load_video(sample_video(), fps=1.0, max_frames=4)  # uint8 [4, 144, 176, 3]
    T = frames.shape[0]
    pixels = video_pixel_values(frames, SIZE)[None]
    ids, mask = batch([video_prompt([4, 5, 6, 7, 10], [], T)])  # "what is the man doing"
    with torch.no_grad():
        out = predictor.predict(frames, ["what is the man doing"], token_grid=(GRID, GRID), token_pool="bilinear")
    rows = [reference_prune(features_of(model, pixels[0]), 0.2, out.scores[0], out.token_importance[0])[0]]
    embeds, new_mask = expected_inputs(model, ids, mask, rows)
    expected = greedy_loop(model, embeds, new_mask, 3)
    with kvtp(model, budget=0.2, predictor=predictor, processor=llm_tokenizer()):
        actual = model.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, kvtp_frames=frames,
                                max_new_tokens=3, do_sample=False)
        stats = model.kvtp_stats
    assert torch.equal(actual[:, ids.shape[1]:], expected)
    K = math.floor(0.2 * T * N + 0.5)
    assert stats.video_tokens_after == [K + 1] and sum(stats.kept_per_frame[0]) == K
    assert stats.kept_per_frame[0] != [K // T + (t < K % T) for t in range(T)]  # not the uniform split
    assert 0 < stats.flops_ratio < stats.token_ratio < 1


# ----------------------------------------------------------------------------------
# The model-agnostic core
# ----------------------------------------------------------------------------------
def test_core_with_any_model_shapes():
    """No model: features [V, T, N, D], a placeholder mask, right padding, labels, layout 'none'."""
    torch.manual_seed(0)
    B, L, D, T, n = 3, 12, 8, 2, 4
    embeds = torch.randn(B, L, D)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 9:] = 0
    video_mask = torch.zeros(B, L, dtype=torch.bool)
    video_mask[0, 2:10] = True  # T*n = 8 placeholders (layout "none": no newline)
    video_mask[2, 1:9] = True
    features = torch.randn(2, T, n, D)
    scores = torch.tensor([[0.0, 5.0], [1.0, 0.0]])
    labels = torch.arange(B * L).reshape(B, L)
    out = prune_video_inputs(embeds, video_mask, features, attention_mask=mask, scores=scores,
                             settings=KVTPSettings(budget=0.5, layout="none"), labels=labels)
    K = 4
    for b, v in ((0, 0), (2, 1)):
        counts = ref.keep_counts_ref(scores[v:v + 1], K, n, 2.0, 0, False, 0.5)
        kept, *_ = ref.prune_tokens_ref(features[v:v + 1], counts, None)
        span = video_mask[b].nonzero().squeeze(1)
        expected = torch.cat([embeds[b, : span[0]], kept, embeds[b, span[-1] + 1:]])
        torch.testing.assert_close(out.inputs_embeds[b, : expected.shape[0]], expected, rtol=0, atol=0)
        expected_labels = torch.cat([labels[b, : span[0]], torch.full((K,), -100), labels[b, span[-1] + 1:]])
        assert torch.equal(out.labels[b, : expected.shape[0]], expected_labels)
    assert out.attention_mask.sum(1).tolist() == [8, 9, 8]
    assert torch.equal(out.inputs_embeds[1, :9], embeds[1, :9])
    assert out.stats.sample_to_video == [0, -1, 1]
    assert out.position_ids[1].tolist() == list(range(9)) + [0] * (out.inputs_embeds.shape[1] - 9)


# ----------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------
def test_model_without_video_support_is_refused():
    text = transformers.Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(TypeError, match="no video input"):
        apply_kvtp(transformers.Qwen2ForCausalLM(text))
    with pytest.raises(TypeError, match="LlavaOnevisionForConditionalGeneration"):
        apply_kvtp(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("budget", [0.0, 1.5, -0.1, 0, -3, True, "0.2", float("nan")])
def test_budget_out_of_range(model, budget):
    with pytest.raises(ValueError, match="budget"):
        apply_kvtp(model, budget=budget)
    assert not is_kvtp_applied(model)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"layout": "rows"}, "layout"), ({"allocation": "greedy"}, "allocation"), ({"temperature": 0.0}, "temperature"),
    ({"min_tokens_per_frame": -1}, "min_tokens_per_frame"), ({"predictor": object()}, "predictor"),
    ({"method": "fastv"}, "method"), ({"merge": "sum"}, "merge"), ({"num_neighbors": -2}, "num_neighbors"),
    ({"processor": object()}, "processor")])
def test_bad_settings(model, kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        apply_kvtp(model, **kwargs)
    assert not is_kvtp_applied(model)


def test_predictor_image_size_mismatch(model, predictor):
    T = 2
    ids, mask = batch([video_prompt(*PROMPTS[0], T)])
    pixels = torch.stack(videos(T, seed=13))
    with kvtp(model, predictor=predictor, processor=clip_image_processor()):
        with pytest.raises(ValueError, match=r"predictor.*image size.*64x64.*image_size 28"):
            model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, kvtp_query="a car")
        with pytest.raises(ValueError, match=r"kvtp_frames\[0\].*\[T, 3, 28, 28\]"):
            model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, kvtp_query="a car",
                  kvtp_frames=pixels)
        with pytest.raises(ValueError, match=r"kvtp_frames\[0\].*2 frames"):
            model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, kvtp_query="a car",
                  kvtp_frames=torch.zeros(1, 3, 10, 10, 3, dtype=torch.uint8))
    with kvtp(model, predictor=predictor):
        with pytest.raises(ValueError, match="kvtp_query"):
            model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, kvtp_frames=pixels)


def test_placeholder_count_must_match_the_video(model):
    T = 3
    pixels = torch.stack(videos(T, seed=14))
    short = [BOS, 4, *[VIDEO] * (T * N), 5]  # the newline placeholder is missing
    split = [BOS, 4, *[VIDEO] * 10, 5, *[VIDEO] * (T * N - 9), 6]
    with kvtp(model):
        with pytest.raises(ValueError, match=rf"{T * N + 1} video placeholder tokens in sample 0.*{T * N} placeh"):
            model(input_ids=torch.tensor([short]), pixel_values_videos=pixels)
        with pytest.raises(ValueError, match="one video placeholder span per sample"):
            model(input_ids=torch.tensor([split]), pixel_values_videos=pixels)
        with pytest.raises(ValueError, match="1 samples with video placeholders"):
            model(input_ids=torch.tensor([video_prompt([4], [5], T)]), pixel_values_videos=pixels.repeat(2, 1, 1, 1, 1))
    with kvtp(model, budget=T * N + 1), pytest.raises(ValueError, match=rf"budget.*<= T\*N = {T}\*{N}"):
        model(input_ids=torch.tensor([video_prompt([4], [5], T)]), pixel_values_videos=pixels)  # K > T*N


def test_importing_kvtp_kernels_does_not_import_transformers():
    code = ("import sys; import kvtp_kernels; assert kvtp_kernels.apply_kvtp; import kvtp_kernels.integrations; "
            "assert 'transformers' not in sys.modules, 'transformers imported'; "
            "sys.modules['transformers'] = None\n"
            "try:\n    kvtp_kernels.integrations.apply_kvtp(object())\n"
            "except ImportError as e:\n    assert 'needs transformers' in str(e), e\nelse:\n    raise SystemExit(1)")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr


def test_settings_accept_numpy_and_tensor_scalars():
    """Issue 14 item 6: numbers.Integral / numbers.Real / 0-d CPU tensors, stored as Python numbers."""
    import numpy as np

    s = KVTPSettings(budget=np.float32(0.25), temperature=np.float64(1.5), min_tokens_per_frame=np.int64(1),
                     num_neighbors=torch.tensor(3))
    assert (s.budget, s.temperature, s.min_tokens_per_frame, s.num_neighbors) == (0.25, 1.5, 1, 3)
    assert type(s.budget) is float and type(s.num_neighbors) is int
    assert KVTPSettings(budget=np.int64(40)).budget == 40
    with pytest.raises(ValueError, match=r"`min_tokens_per_frame` must be an int >= 0; got np.float32\(1.5\)"):
        KVTPSettings(min_tokens_per_frame=np.float32(1.5))
