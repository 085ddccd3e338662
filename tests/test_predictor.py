"""FrameRelevancePredictor, ContextFusionHead, the training loss and entry point.

Everything runs on tiny random SigLIP configs (no download): a 28x28 image in 4x4
patches (a 7x7 grid: odd, like so400m's 27x27) and an 8-token text window so that
chunking is exercised with short queries.
"""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers
from tiny_models import WORDS, sample_video, siglip_tokenizer, tiny_predictor, tiny_siglip_config
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

import kvtp_kernels
from kvtp_kernels import reference as ref
from kvtp_kernels.predictor import (
    ContextFusionHead,
    FrameRelevancePredictor,
    PredictorConfig,
    RelevanceExample,
    TrainConfig,
    clip_softmax_pool,
    probe_attention,
    read_relevance_labels,
    relevance_logits,
    relevance_loss,
    resample_token_importance,
    train_predictor,
)
from kvtp_kernels.predictor import train as train_module
from kvtp_kernels.video import load_video

pytestmark = pytest.mark.usefixtures("one_thread")
WINDOW = 8
IMAGE = 28
GRID = 7


def tiny_tokenizer():
    return siglip_tokenizer(WORDS)


def make_predictor(seed=0, tokenizer=None, **config):
    return tiny_predictor(seed, tokenizer, image_size=IMAGE, max_position_embeddings=WINDOW, logit_scale=1.7,
                          **config)


@pytest.fixture(scope="module")
def predictor():
    return make_predictor(use_fusion_head=False)


def random_frames(*shape):
    return torch.randint(0, 256, (*shape, 3), dtype=torch.uint8)


# ----------------------------------------------------------------------------------
# Scores against SiglipModel's own outputs
# ----------------------------------------------------------------------------------
def test_scores_match_siglip_model(predictor):
    frames = random_frames(2, 3, 40, 30)
    ids = [torch.tensor([3, 5, 7, 1]), torch.tensor([9, 4, 1])]
    pixels = predictor.preprocess(frames)
    with torch.no_grad():
        out = predictor(pixels, ids)
        for b in range(2):
            chunk = F.pad(ids[b], (0, WINDOW - len(ids[b])), value=0)[None]  # max-length padding with pad id 0
            direct = predictor.siglip(input_ids=chunk, pixel_values=pixels[b])
            torch.testing.assert_close(out.scores[b], direct.logits_per_image[:, 0].double(), rtol=1e-5, atol=1e-5)
            image = predictor.siglip.get_image_features(pixel_values=pixels[b]).pooler_output
            torch.testing.assert_close(out.frame_embeds[b], image, rtol=1e-6, atol=1e-6)
    assert out.scores.dtype == torch.float64 and out.scores.shape == (2, 3)
    assert out.query_embeds.shape == (2, 1, 32)
    assert not out.fusion_applied


def test_scores_are_bitwise_the_reference_formula(predictor):
    for dtype in (torch.float32, torch.bfloat16):
        f = torch.randn(3, 19, 32).to(dtype)
        q = torch.randn(3, 2, 32).to(dtype)
        expected = ref.frame_scores_ref(f, q, predictor.logit_scale, predictor.logit_bias)
        assert torch.equal(predictor.scores(f, q), expected)
        assert torch.equal(relevance_logits(f, q, 0.3, None), ref.frame_scores_ref(f, q, 0.3, None))


def test_logit_scale_and_bias_get_gradients(predictor):
    f, q = torch.randn(1, 4, 32), torch.randn(1, 2, 32)
    scale = torch.tensor([0.5], requires_grad=True)
    bias = torch.tensor([0.1], requires_grad=True)
    relevance_logits(f, q, scale, bias).sum().backward()
    assert scale.grad is not None and bias.grad is not None and bias.grad.item() == pytest.approx(4.0)


def test_preprocess_is_siglip_normalisation(predictor):
    frames = random_frames(2, IMAGE, IMAGE)  # already the model's size: no resize, exact
    pixels = predictor.preprocess(frames)
    expected = (frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    assert torch.equal(pixels, expected)
    resized = predictor.preprocess(random_frames(1, 2, 50, 70))
    assert resized.shape == (1, 2, 3, IMAGE, IMAGE) and resized.min() >= -1 and resized.max() <= 1


def test_preprocess_close_to_siglips_pil_processor(predictor):
    frames, _ = load_video(sample_video(), max_frames=4)  # 176x144 -> 28x28
    expected = SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})(
        images=list(frames.numpy()), return_tensors="pt")["pixel_values"]
    grey_levels = (predictor.preprocess(frames) - expected).abs() * 127.5
    assert grey_levels.max() <= 2.01 and grey_levels.mean() < 0.2


# ----------------------------------------------------------------------------------
# Query chunking
# ----------------------------------------------------------------------------------
def test_chunk_token_ids(predictor):
    chunks = predictor.chunk_token_ids(torch.arange(3, 22))  # 19 ids, window 8 -> 3 chunks
    expected = torch.tensor([list(range(3, 11)), list(range(11, 19)), [19, 20, 21, 0, 0, 0, 0, 0]])
    assert torch.equal(chunks, expected)
    assert predictor.chunk_token_ids(torch.arange(3, 11)).shape == (1, WINDOW)


def test_long_query_is_max_over_manual_chunks(predictor):
    ids = torch.randint(3, 40, (19,))
    pixels = predictor.preprocess(random_frames(5, 20, 20))
    with torch.no_grad():
        out = predictor(pixels, ids)
        per_chunk = []
        for start in range(0, 19, WINDOW):
            chunk = F.pad(ids[start:start + WINDOW], (0, WINDOW - len(ids[start:start + WINDOW])), value=0)
            per_chunk.append(predictor.siglip(input_ids=chunk[None], pixel_values=pixels).logits_per_image[:, 0])
        expected = torch.stack(per_chunk).amax(dim=0).double()
    assert out.query_embeds.shape == (1, 3, 32)
    torch.testing.assert_close(out.scores[0], expected, rtol=1e-5, atol=1e-5)
    # the max really is over chunks: some frame's best chunk is not the first one
    assert not torch.allclose(per_chunk[0].double(), expected)


def test_batch_of_queries_with_different_chunk_counts(predictor):
    ids = [torch.randint(3, 40, (19,)), torch.randint(3, 40, (4,)), torch.randint(3, 40, (9,))]
    frame_embeds = torch.randn(3, 6, 32)
    with torch.no_grad():
        together = predictor.encode_queries(ids)
        assert together.shape == (3, 3, 32)
        batched = predictor.scores(frame_embeds, together)
        for b in range(3):
            alone = predictor.encode_queries(ids[b])
            torch.testing.assert_close(predictor.scores(frame_embeds[b:b + 1], alone)[0], batched[b],
                                       rtol=1e-6, atol=1e-6)


def test_string_queries_with_a_tokenizer():
    predictor = make_predictor(tokenizer=tiny_tokenizer(), use_fusion_head=False)
    ids = predictor.tokenize(["what is the dog doing", "red car"])
    assert [t.tolist() for t in ids] == [[3, 4, 5, 7, 9, 1], [12, 13, 1]]
    with torch.no_grad():
        assert torch.equal(predictor.encode_queries("what is the dog doing"), predictor.encode_queries(ids[0]))


# ----------------------------------------------------------------------------------
# Context fusion head
# ----------------------------------------------------------------------------------
def test_fusion_head_hand_computed():
    # Orthogonal frames of norm 2 (E = 3): e_t . e_j = a * delta_tj, a = (2 / (2 + 1e-6))^2.
    # Clips of 2: {0, 1}, {2}. With tau_l = 0.5, tau_g = 2 and x = a / sqrt(3):
    #   l_0 = (exp(x/0.5) f_0 + f_1) / (exp(x/0.5) + 1), l_2 = f_2 (its clip is itself),
    #   g_0 = (exp(x/2) f_0 + f_1 + f_2) / (exp(x/2) + 2).
    head = ContextFusionHead(clip_size=2)
    with torch.no_grad():
        head.log_tau_local.fill_(math.log(0.5))
        head.log_tau_global.fill_(math.log(2.0))
    f = 2.0 * torch.eye(3, dtype=torch.float64)[None]
    local, global_ = head.contexts(f)
    x = (2 / (2 + 1e-6)) ** 2 / math.sqrt(3)
    tau_l = math.exp(head.log_tau_local.item())  # 0.5 up to float32 rounding of its log
    tau_g = math.exp(head.log_tau_global.item())
    assert tau_l == pytest.approx(0.5) and tau_g == pytest.approx(2.0)
    wl, wg = math.exp(x / tau_l), math.exp(x / tau_g)
    torch.testing.assert_close(local[0, 0], torch.tensor([2 * wl, 2, 0], dtype=torch.float64) / (wl + 1))
    torch.testing.assert_close(local[0, 1], torch.tensor([2, 2 * wl, 0], dtype=torch.float64) / (wl + 1))
    torch.testing.assert_close(local[0, 2], torch.tensor([0, 0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(global_[0, 0], torch.tensor([2 * wg, 2, 2], dtype=torch.float64) / (wg + 2))
    torch.testing.assert_close(global_[0, 2], torch.tensor([2, 2, 2 * wg], dtype=torch.float64) / (wg + 2))

    # Fused score with the query q = (1, 0, 0), scale exp(0.7), bias -0.2:
    # s(v) = e^0.7 * v_0 / |v| - 0.2, then 0.9 s(f) + 0.05 s(l) + 0.05 s(g).
    q = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)

    def s(v):
        return math.exp(0.7) * v[0] / math.sqrt(sum(c * c for c in v)) - 0.2

    l0 = [2 * wl / (wl + 1), 2 / (wl + 1), 0.0]
    g0 = [2 * wg / (wg + 2), 2 / (wg + 2), 2 / (wg + 2)]
    expected0 = 0.9 * s([2.0, 0.0, 0.0]) + 0.05 * s(l0) + 0.05 * s(g0)
    scores = head(f, q, torch.tensor([0.7], dtype=torch.float64), -0.2)
    assert scores.dtype == torch.float64 and scores.shape == (1, 3)
    assert scores[0, 0].item() == pytest.approx(expected0, rel=1e-12)
    # frame 2: its local context is itself, cos(q, f_2) = 0
    g2 = [2 / (wg + 2), 2 / (wg + 2), 2 * wg / (wg + 2)]
    assert scores[0, 2].item() == pytest.approx(0.95 * s([0, 0, 2.0]) + 0.05 * s(g2), rel=1e-12)


def test_fusion_head_matches_formula_loops():
    """Random case against a scalar, loop-by-loop transcription of METHOD.md section 1."""
    torch.manual_seed(1)
    T, E, C = 11, 5, 4
    head = ContextFusionHead(clip_size=C, weights=(0.6, 0.3, 0.1))
    with torch.no_grad():
        head.log_tau_local.fill_(0.3)
        head.log_tau_global.fill_(-0.4)
    f = torch.randn(1, T, E, dtype=torch.float64)
    q = torch.randn(1, 2, E, dtype=torch.float64)
    fl = f[0].tolist()
    norm = [math.sqrt(sum(x * x for x in v)) for v in fl]
    e = [[x / (n + 1e-6) for x in v] for v, n in zip(fl, norm)]

    def attend(t, members, tau):
        logits = [sum(a * b for a, b in zip(e[t], e[j])) / (tau * math.sqrt(E)) for j in members]
        m = max(logits)
        w = [math.exp(x - m) for x in logits]
        return [sum(w[k] * fl[j][d] for k, j in enumerate(members)) / sum(w) for d in range(E)]

    def score(v):
        nv = math.sqrt(sum(x * x for x in v))
        best = -math.inf
        for qc in q[0].tolist():
            nq = math.sqrt(sum(x * x for x in qc))
            best = max(best, math.exp(0.25) * sum(a * b for a, b in zip(qc, v)) / (nq * nv) + 0.5)
        return best

    tau_l, tau_g = math.exp(head.log_tau_local.item()), math.exp(head.log_tau_global.item())  # float32 params
    got = head(f, q, 0.25, 0.5)[0]
    for t in range(T):
        clip = list(range(t // C * C, min(T, t // C * C + C)))
        expected = (0.6 * score(fl[t]) + 0.3 * score(attend(t, clip, tau_l))
                    + 0.1 * score(attend(t, list(range(T)), tau_g)))
        assert got[t].item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_predictor_scores_use_the_head():
    predictor = make_predictor(clip_size=3, fusion_weights=(0.5, 0.25, 0.25))
    f, q = torch.randn(2, 7, 32), torch.randn(2, 2, 32)
    with torch.no_grad():
        local, global_ = predictor.fusion_head.contexts(f)
        args = (predictor.logit_scale, predictor.logit_bias)
        expected = (0.5 * relevance_logits(f, q, *args) + 0.25 * relevance_logits(local, q, *args)
                    + 0.25 * relevance_logits(global_, q, *args))
        assert torch.equal(predictor.scores(f, q), expected)
        assert torch.equal(predictor.scores(f, q, use_fusion_head=False), relevance_logits(f, q, *args))
        assert not torch.equal(predictor.scores(f, q), predictor.scores(f, q, use_fusion_head=False))


# ----------------------------------------------------------------------------------
# Token importance from the pooling head
# ----------------------------------------------------------------------------------
def test_token_importance_is_the_pooling_heads_attention(predictor):
    pixels = predictor.preprocess(random_frames(2, 3, 30, 30))
    captured = []
    attention = predictor.siglip.vision_model.head.attention
    # the authors' way: a hook on the head's nn.MultiheadAttention, in a separate pass
    handle = attention.register_forward_hook(lambda m, i, o: captured.append(o[1]))
    try:
        with torch.no_grad():
            predictor.siglip.get_image_features(pixel_values=pixels.reshape(6, 3, IMAGE, IMAGE))
    finally:
        handle.remove()
    weights = captured[0][:, 0]  # [6, 49], averaged over the 4 heads
    with torch.no_grad():
        enc = predictor.encode_frames(pixels, token_grid=GRID)
    assert enc.token_importance.shape == (2, 3, GRID * GRID)
    torch.testing.assert_close(enc.token_importance.reshape(6, -1), weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(enc.token_importance.sum(-1), torch.ones(2, 3))


def test_probe_attention_matches_multihead_attention():
    torch.manual_seed(3)
    predictor = make_predictor()
    head = predictor.siglip.vision_model.head
    hidden = torch.randn(5, 49, 32)
    with torch.no_grad():
        _, weights = head.attention(head.probe.repeat(5, 1, 1), hidden, hidden, need_weights=True,
                                    average_attn_weights=True)
        got = probe_attention(head, hidden, frames_per_chunk=2)
    torch.testing.assert_close(got, weights[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grid, pool", [(3, "average"), ((4, 4), "bilinear"), ((2, 5), "area"), (None, "average")])
def test_token_importance_on_llm_grid(predictor, grid, pool):
    pixels = predictor.preprocess(random_frames(2, 4, 33, 21))
    with torch.no_grad():
        out = predictor(pixels, [torch.tensor([3, 4, 1]), torch.tensor([5, 1])], token_grid=grid, token_pool=pool)
        full = predictor.encode_frames(pixels, token_grid=GRID).token_importance
    th, tw = (GRID, GRID) if grid is None else ((grid, grid) if isinstance(grid, int) else grid)
    imp = out.token_importance
    assert imp.shape == (2, 4, th * tw) and imp.dtype == torch.float32
    assert (imp >= 0).all() and torch.isfinite(imp).all()
    if pool == "average" and grid == 3:  # 7x7 -> 3x3 with 2x2 windows, last row/column dropped (LLaVA-Video)
        cell = full.reshape(2, 4, GRID, GRID)[:, :, 2:4, 4:6].mean(dim=(-1, -2))
        torch.testing.assert_close(imp[..., 1 * 3 + 2], cell)


def test_resample_llava_grids():
    attn = torch.rand(3, 27 * 27).softmax(-1)
    avg = resample_token_importance(attn, (27, 27), (13, 13), "average")
    torch.testing.assert_close(avg, F.avg_pool2d(attn.reshape(3, 1, 27, 27), 2).reshape(3, 169))
    bil = resample_token_importance(attn, (27, 27), (14, 14), "bilinear")
    assert bil.shape == (3, 196) and (bil >= 0).all()
    with pytest.raises(ValueError, match="token_grid.*integer-stride.*14x14"):
        resample_token_importance(attn, (27, 27), (14, 14), "average")
    with pytest.raises(ValueError, match="token_pool"):
        resample_token_importance(attn, (27, 27), (14, 14), "bicubic")


def test_one_vision_pass_for_all_frames_of_all_videos(predictor):
    calls = []
    handle = predictor.siglip.vision_model.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs["pixel_values"].shape[0]), with_kwargs=True)
    try:
        out = predictor.predict(random_frames(3, 5, 16, 16), [torch.tensor([3, 1])] * 3, token_grid=3)
    finally:
        handle.remove()
    assert calls == [15]
    assert out.token_importance.shape == (3, 5, 9)


# ----------------------------------------------------------------------------------
# The fused prune path
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", None])
def test_fused_prune_path_equals_scores_path(predictor, backend):
    frames = random_frames(2, 9, 24, 24)
    ids = [torch.randint(3, 40, (13,)), torch.randint(3, 40, (5,))]
    out = predictor.predict(frames, ids, token_grid=3)
    tokens = torch.randn(2, 9, 9, 16)
    for budget in (0.2, 0.5, 17):
        via_scores = kvtp_kernels.prune(tokens, predictor.scores(out.frame_embeds, out.query_embeds), budget,
                                        token_scores=out.token_importance, backend=backend)
        fused = kvtp_kernels.prune(tokens, None, budget, token_scores=out.token_importance,
                                   frame_embeds=out.frame_embeds, query_embeds=out.query_embeds,
                                   logit_scale=out.logit_scale, logit_bias=out.logit_bias, backend=backend)
        assert torch.equal(fused.frame_counts, via_scores.frame_counts)
        assert torch.equal(fused.indices, via_scores.indices)
        assert torch.equal(fused.tokens, via_scores.tokens)
        helper = kvtp_kernels.prune(tokens, budget=budget, backend=backend, **out.prune_kwargs())
        assert torch.equal(helper.indices, via_scores.indices)
    # relevance actually varies the counts (not a uniform split)
    assert via_scores.frame_counts.unique().numel() > 1


def test_prune_kwargs_with_the_head_passes_scores():
    predictor = make_predictor()
    out = predictor.predict(random_frames(1, 6, 20, 20), torch.tensor([3, 5, 1]))
    assert out.fusion_applied
    kwargs = out.prune_kwargs()
    assert set(kwargs) == {"scores", "token_scores"} and torch.equal(kwargs["scores"], out.scores)
    tokens = torch.randn(1, 6, GRID * GRID, 8)
    a = kvtp_kernels.prune(tokens, budget=0.3, backend="reference", **kwargs)
    b = kvtp_kernels.prune(tokens, out.scores, 0.3, token_scores=out.token_importance, backend="reference")
    assert torch.equal(a.indices, b.indices)


# ----------------------------------------------------------------------------------
# Loss and training
# ----------------------------------------------------------------------------------
def test_clip_softmax_pool_hand_computed():
    s = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    pooled = clip_softmax_pool(s, 2)
    e1, e2 = math.exp(1), math.exp(2)
    torch.testing.assert_close(pooled, torch.tensor([(e1 * 1 + e2 * 2) / (e1 + e2), 3.0], dtype=torch.float64))
    batched = clip_softmax_pool(torch.stack([s, s.flip(0)]), 2)
    assert batched.shape == (2, 2) and batched[1, 1].item() == 1.0


def test_relevance_loss_hand_computed():
    s = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    labels = torch.tensor([4, 0, 1])  # clips {0, 1}, {2}: y_c = 4, 1; mean(y) = 5/3
    p0 = (math.exp(1) * 1 + math.exp(2) * 2) / (math.exp(1) + math.exp(2))

    def log_sigmoid(x):
        return -math.log1p(math.exp(-x))

    expected = -(log_sigmoid(p0 * (4 - 5 / 3)) + log_sigmoid(3 * (1 - 5 / 3))) / 2
    assert relevance_loss(s, labels, clip_size=2).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="labels.*0..5"):
        relevance_loss(s, torch.tensor([0, 6, 1]), clip_size=2)
    with pytest.raises(ValueError, match="shape"):
        relevance_loss(s, torch.tensor([0, 1]), clip_size=2)


def synthetic_examples(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        T = 5 + i
        frames = torch.randint(0, 256, (T, 20, 20, 3), dtype=torch.uint8, generator=g)
        ids = torch.randint(3, 40, (4 + 3 * i,), generator=g)
        labels = torch.randint(0, 6, (T,), generator=g)
        out.append(RelevanceExample(frames, ids, labels, f"synthetic {i}"))
    return out


@pytest.mark.parametrize("mode, lr", [("all", 1e-2), ("logits", 0.1)])
def test_training_decreases_the_loss(mode, lr):
    predictor = make_predictor(clip_size=3)
    examples = synthetic_examples()
    config = TrainConfig(train=mode, epochs=6, lr=lr, batch_size=len(examples), progress=False)
    losses = train_predictor(predictor, examples, config)  # full batch: one step per epoch
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.02, losses
    assert all(p.requires_grad for p in predictor.parameters())  # flags restored


def test_training_the_head_moves_its_temperatures():
    predictor = make_predictor(clip_size=3)
    before = [p.detach().clone() for p in predictor.siglip.parameters()]
    config = TrainConfig(train="head", epochs=2, lr=0.1, batch_size=2, progress=False)
    losses = train_predictor(predictor, synthetic_examples(), config)
    assert len(losses) == 4
    assert predictor.fusion_head.log_tau_local.item() != 0 and predictor.fusion_head.log_tau_global.item() != 0
    assert all(torch.equal(a, b) for a, b in zip(before, predictor.siglip.parameters()))  # towers frozen


def test_training_rejects_wrong_label_count():
    ex = synthetic_examples(1)[0]
    ex.labels = ex.labels[:-1]
    with pytest.raises(ValueError, match="synthetic 0.*4 labels.*5 frames"):
        train_predictor(make_predictor(), [ex], TrainConfig(progress=False))


# ----------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    predictor = make_predictor(tokenizer=tiny_tokenizer(), clip_size=3, fusion_weights=(0.7, 0.2, 0.1),
                               token_grid=(3, 3))
    with torch.no_grad():
        predictor.fusion_head.log_tau_local.fill_(0.25)
        predictor.fusion_head.log_tau_global.fill_(-0.5)
    predictor.save_pretrained(tmp_path)
    assert {"config.json", "kvtp_predictor.json", "kvtp_fusion_head.safetensors"} <= set(os.listdir(tmp_path))
    loaded = FrameRelevancePredictor.from_pretrained(tmp_path).eval()
    assert loaded.config == predictor.config
    assert loaded.tokenizer is not None
    for (name, a), (_, b) in zip(predictor.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    frames = random_frames(1, 7, 30, 30)
    a = predictor.predict(frames, "where is the red car")
    b = loaded.predict(frames, "where is the red car")
    # same weights; float32 CPU kernels may round differently on differently aligned (memory-mapped) weights
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.token_importance, b.token_importance, rtol=1e-6, atol=1e-7)
    assert a.token_importance.shape == (1, 7, 9)
    # overrides at load time; no tokenizer when asked for none
    plain = FrameRelevancePredictor.from_pretrained(tmp_path, tokenizer=None, config={"use_fusion_head": False})
    assert plain.tokenizer is None and plain.config.use_fusion_head is False and plain.config.clip_size == 3
    with pytest.raises(ValueError, match="unknown keys.*clip_sise"):
        FrameRelevancePredictor.from_pretrained(tmp_path, config={"clip_sise": 4})


def test_plain_siglip_checkpoint_loads_with_defaults(tmp_path):
    torch.manual_seed(0)
    transformers.SiglipModel(tiny_siglip_config(IMAGE, WINDOW)).save_pretrained(tmp_path)
    loaded = FrameRelevancePredictor.from_pretrained(tmp_path)
    assert loaded.tokenizer is None and loaded.config == PredictorConfig()
    assert loaded.fusion_head.log_tau_local.item() == 0.0


# ----------------------------------------------------------------------------------
# Real video, end to end
# ----------------------------------------------------------------------------------
def test_real_video_through_the_predictor():
    frames, times = load_video(sample_video(), fps=1.0, max_frames=8)
    assert frames.shape[0] == 4
    predictor = make_predictor(tokenizer=tiny_tokenizer(), token_grid=3)
    out = predictor.predict(frames, "who is in the car")
    assert out.scores.shape == (1, 4) and torch.isfinite(out.scores).all()
    assert out.token_importance.shape == (1, 4, 9) and (out.token_importance >= 0).all()
    tokens = torch.randn(1, 4, 9, 16)
    pruned = kvtp_kernels.prune(tokens, budget=0.25, backend="reference", **out.prune_kwargs())
    assert pruned.tokens.shape == (9, 16)


def write_csv(path, rows, header=("video", "query", "labels")):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def test_training_entry_point_end_to_end(tmp_path, capsys):
    model_dir = tmp_path / "model"
    make_predictor(tokenizer=tiny_tokenizer(), clip_size=2).save_pretrained(model_dir)
    video = sample_video()
    labels = tmp_path / "labels.csv"
    write_csv(labels, [[video, "what is the man doing", "0 3 5 1"], [video, "where is the red car", "[5, 5, 0, 0]"]])
    out_dir = tmp_path / "run"
    code = train_module.main([str(labels), "--model", str(model_dir), "--output-dir", str(out_dir), "--epochs", "2",
                              "--batch-size", "1", "--train", "logits", "--max-frames", "8", "--device", "cpu"])
    assert code == 0
    err = capsys.readouterr().err
    assert "trained 4 steps" in err and "training" in err  # the progress bar went to stderr
    for checkpoint in (out_dir / "epoch-1", out_dir / "epoch-2", out_dir):
        loaded = FrameRelevancePredictor.from_pretrained(checkpoint)
        assert loaded.config.clip_size == 2 and loaded.tokenizer is not None
    trained = FrameRelevancePredictor.from_pretrained(out_dir)
    assert trained.siglip.logit_bias.item() != pytest.approx(-0.4)  # it was trained and saved


def test_training_entry_point_reports_an_undecodable_video(tmp_path, capsys):
    model_dir = tmp_path / "model"
    make_predictor(tokenizer=tiny_tokenizer()).save_pretrained(model_dir)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"video": "broken.mp4", "query": "a dog", "labels": [1, 2]}) + "\n")
    with pytest.raises(SystemExit) as info:
        train_module.main([str(labels), "--model", str(model_dir), "--output-dir", str(tmp_path / "run"),
                           "--no-progress"])
    assert info.value.code == 2
    assert "broken.mp4" in capsys.readouterr().err


def test_training_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "kvtp_kernels.predictor.train", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--output-dir" in result.stdout and "--train" in result.stdout
    assert "RuntimeWarning" not in result.stderr


# ----------------------------------------------------------------------------------
# Label files and bad input
# ----------------------------------------------------------------------------------
def test_label_files_csv_json_jsonl(tmp_path):
    video = sample_video()
    write_csv(tmp_path / "a.csv", [[video, "q one", "1,2;3 4"]])
    (tmp_path / "b.json").write_text(json.dumps([{"video": video, "query": "q two", "labels": [0, 5.0]}]))
    row = {"video": os.path.basename(video), "query": "q", "labels": "5"}
    (tmp_path / "c.jsonl").write_text("\n" + json.dumps(row))
    os.symlink(video, tmp_path / os.path.basename(video))  # relative paths resolve next to the label file
    (a,), (b,), (c,) = (read_relevance_labels(tmp_path / n) for n in ("a.csv", "b.json", "c.jsonl"))
    assert a.labels.tolist() == [1, 2, 3, 4] and a.query == "q one" and a.origin.endswith("a.csv: line 2")
    assert b.labels.tolist() == [0, 5] and b.video == video
    assert c.labels.tolist() == [5] and c.video == str(tmp_path / os.path.basename(video))
    assert c.origin.endswith("c.jsonl: line 2")


#: Label files that read_relevance_labels refuses: (name, content, the error it raises).
_CSV_LABEL_ERRORS = [
    ("h.csv", "video,query\nx,y\n", r"h\.csv: line 1 \(header\): missing column\(s\) \['labels'\]"),
    ("r.csv", "video,query,labels\n{v},a dog,0 1 6\n", r"r\.csv: line 2: column 'labels': label 2 is 6, outside 0..5"),
    ("n.csv", "video,query,labels\n{v},a dog,0 -1\n", r"n\.csv: line 2: column 'labels': label 1 is -1, outside"),
    ("f.csv", "video,query,labels\n{v},a dog,0 2.5\n", r"f\.csv: line 2: column 'labels': label 1 must be an integer"),
    ("e.csv", "video,query,labels\n{v},a dog,\n", r"e\.csv: line 2: column 'labels' must be a non-empty list"),
    ("q.csv", "video,query,labels\n{v}, ,1\n", r"q\.csv: line 2: column 'query' must be a non-empty string"),
    ("s.csv", "video,query,labels\n{v},a dog\n", r"s\.csv: line 2: missing column\(s\) \['labels'\]"),
    ("m.csv", "video,query,labels\nnowhere.mp4,a dog,1\n", r"m\.csv: line 2: column 'video': no such file"),
    ("z.csv", "video,query,labels\n", r"z\.csv: no examples"),
]
_OTHER_LABEL_ERRORS = [
    ("k.jsonl", '{{"video": "{v}", "query": "a"}}\n', r"k\.jsonl: line 1: missing column\(s\) \['labels'\]"),
    ("j.json", '[{{"video": "{v}", "query": "a", "labels": [9]}}]', r"j\.json: item 0: column 'labels': label 0 is 9"),
    ("o.json", '{{"video": "{v}"}}', r"o\.json: must hold a JSON list"),
    ("t.txt", "", r"must end in \.csv, \.json"),
]


@pytest.mark.parametrize("name, content, pattern", _CSV_LABEL_ERRORS + _OTHER_LABEL_ERRORS)
def test_label_file_errors(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_text(content.format(v=sample_video()))
    with pytest.raises(ValueError, match=pattern):
        read_relevance_labels(path)


def test_bad_inputs_get_clear_errors(predictor):
    with pytest.raises(ValueError, match=r"`queries\[1\]` must be a non-empty string"):
        make_predictor(tokenizer=tiny_tokenizer()).tokenize(["a dog", "  "])
    with pytest.raises(ValueError, match=r"queries\[0\].*non-empty"):
        predictor.encode_queries([torch.tensor([], dtype=torch.long)])
    with pytest.raises(ValueError, match="need a tokenizer"):
        predictor.encode_queries("a dog")
    with pytest.raises(ValueError, match="frames of mixed sizes: frames\\[1\\] is 20x30"):
        predictor.preprocess([random_frames(20, 20), random_frames(20, 30)])
    with pytest.raises(ValueError, match="zero frames"):
        predictor.preprocess([])
    with pytest.raises(ValueError, match="`frames` must be non-empty"):
        predictor.preprocess(torch.zeros(0, 20, 20, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="`frames` must be uint8 RGB"):
        predictor.preprocess(torch.zeros(2, 20, 20, 3))
    with pytest.raises(ValueError, match=r"`pixel_values` must be a float \[B, T, 3, 28, 28\]"):
        predictor.encode_frames(torch.zeros(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="`queries` must be 2 queries"):
        predictor(predictor.preprocess(random_frames(2, 2, 20, 20)), torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="token_grid"):
        predictor.encode_frames(predictor.preprocess(random_frames(1, 20, 20)), token_grid=0)
    with pytest.raises(ValueError, match="text_window"):
        make_predictor(text_window=WINDOW + 1)
    with pytest.raises(ValueError, match="train='head' needs"):
        train_predictor(predictor, synthetic_examples(1), TrainConfig(train="head", progress=False))
