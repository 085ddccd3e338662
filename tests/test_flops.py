"""Prefill FLOPs: hand-computed, against torch's FlopCounterMode on real HF modules, and the LLaVA-Video numbers."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from kvtp_kernels.integrations.flops import (
    LLAVA_VIDEO_7B,
    LLAVA_VIDEO_72B,
    SIGLIP_SO400M,
    DecoderShape,
    decoder_shape,
    kvtp_prefill_flops,
    prefill_flops,
    prefill_flops_ratio,
    vision_tower_flops,
)


def test_hand_computed_tiny_shape():
    # L=1, d=4, H=2, H_kv=1, h=2, m=8, n=3
    shape = DecoderShape(num_layers=1, hidden_size=4, intermediate_size=8, num_heads=2, num_kv_heads=1, head_dim=2,
                         vocab_size=10)
    q = o = 2 * 3 * 4 * 4  # 2 n d (H h)
    k = v = 2 * 3 * 4 * 2  # 2 n d (H_kv h)
    causal_pairs, full_pairs = 6, 9
    mlp = 3 * 2 * 3 * 4 * 8
    assert prefill_flops(shape, 3) == q + k + v + o + 2 * 2 * 4 * causal_pairs + mlp
    assert prefill_flops(shape, 3, causal=False) == q + k + v + o + 2 * 2 * 4 * full_pairs + mlp
    assert prefill_flops(shape, 3, lm_head_tokens=1) == prefill_flops(shape, 3) + 2 * 4 * 10
    assert prefill_flops(shape, 3, gated_mlp=False) == prefill_flops(shape, 3) - 2 * 3 * 4 * 8
    assert prefill_flops(shape, 0) == 0


@pytest.mark.parametrize("n", [1, 7, 19])
def test_matches_flop_counter_on_a_qwen2_forward(n):
    """A forward computes all n logits and full n x n scores (eager attention): that is what the counter sees."""
    config = transformers.Qwen2Config(vocab_size=50, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 50, (1, n)))
    rotary = sum(counter.get_flop_counts()["Qwen2ForCausalLM.model.rotary_emb"].values())  # not a layer matmul
    assert counter.get_total_flops() - rotary == prefill_flops(config, n, causal=False, lm_head_tokens=n)


def test_vision_tower_matches_flop_counter():
    config = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=28, patch_size=4,
                                             attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.SiglipVisionModel(config).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=torch.randn(3, 3, 28, 28))
    head = sum(counter.get_flop_counts()["SiglipVisionModel.head"].values())  # pooling head: not counted
    assert counter.get_total_flops() - head == vision_tower_flops(config, 3)


def test_config_forms_agree():
    text = transformers.Qwen2Config(**LLAVA_VIDEO_7B)
    llava = transformers.LlavaOnevisionConfig(text_config=text.to_dict())
    expected = prefill_flops(LLAVA_VIDEO_7B, 1000)
    assert prefill_flops(text, 1000) == prefill_flops(llava, 1000) == prefill_flops({"text_config": LLAVA_VIDEO_7B},
                                                                                    1000) == expected
    shape = decoder_shape(llava)
    assert (shape.num_heads, shape.num_kv_heads, shape.head_dim) == (28, 4, 128)


def test_llava_video_7b_and_72b_at_beta_02():
    """64 frames x 196 tokens (+1 newline), a 64-token prompt, beta = 0.2: METHOD.md section 5 / paper Table 1."""
    fixed = vision_tower_flops(SIGLIP_SO400M, 64)
    seven = kvtp_prefill_flops(LLAVA_VIDEO_7B, 64, 196, 0.2, text_tokens=64, fixed_flops=fixed)
    big = kvtp_prefill_flops(LLAVA_VIDEO_72B, 64, 196, 0.2, text_tokens=64, fixed_flops=fixed)
    K = math.floor(0.2 * 64 * 196 + 0.5)
    assert K == 2509 and seven.kept_video_tokens == K
    assert (seven.tokens_before, seven.tokens_after) == (64 + 12544 + 1, 64 + K + 1)
    # Qwen2-7B: per token and layer 2*d*(2*3584 + 2*512) + 6*d*m linear FLOPs, 4*3584 per attention pair
    linear = 28 * (2 * 3584 * (2 * 3584 + 2 * 512) + 6 * 3584 * 18944)
    pairs = lambda n: n * (n + 1) // 2  # noqa: E731
    assert seven.flops_before == linear * 12609 + 28 * 4 * 3584 * pairs(12609)
    print(f"7B: LLM prefill {seven.ratio:.1%}, with SigLIP {seven.total_ratio:.1%} (paper ~36%); "
          f"72B: {big.ratio:.1%}, with SigLIP {big.total_ratio:.1%} (paper ~23%)")
    assert 0.17 < seven.ratio < 0.19 and 0.17 < big.ratio < 0.20
    # Pruning 80% leaves more than 20%: the text, the newline and the attention term's offset.
    assert seven.ratio > (64 + K + 1) / (64 + 12544 + 1) * 0.85
    # With the vision tower counted on both sides the ratios land near the paper's 36% / 23%.
    assert 0.30 < seven.total_ratio < 0.36 and 0.19 < big.total_ratio < 0.23
    assert prefill_flops_ratio(LLAVA_VIDEO_7B, seven.tokens_after, seven.tokens_before) == seven.ratio


@pytest.mark.parametrize("call, pattern", [
    (lambda: prefill_flops({"hidden_size": 8}, 3), "num_hidden_layers"),
    (lambda: prefill_flops(LLAVA_VIDEO_7B, -1), "seq_len"),
    (lambda: prefill_flops({**LLAVA_VIDEO_7B, "num_key_value_heads": 5}, 3), "num_key_value_heads"),
    (lambda: prefill_flops_ratio(LLAVA_VIDEO_7B, 3, 0), "seq_len_before"),
    (lambda: kvtp_prefill_flops(LLAVA_VIDEO_7B, 4, 4, 1.5), "budget"),
    (lambda: kvtp_prefill_flops(LLAVA_VIDEO_7B, 4, 4, 17), "budget"),
    (lambda: vision_tower_flops({"hidden_size": 8}, 1), "num_hidden_layers"),
])
def test_errors(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
