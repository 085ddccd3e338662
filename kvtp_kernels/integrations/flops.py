"""Prefill FLOPs of a decoder-only LLM (and of a ViT vision tower), from a config.

What is counted: the matrix multiplications, 2 FLOPs per multiply-add, of a
prefill of ``n`` tokens through ``L`` decoder layers with hidden size ``d``,
``H`` query heads and ``H_kv`` key/value heads of size ``h`` (grouped-query
attention), and MLP size ``m``::

    per layer:
      q, o projections      2 * n * d * (H*h)          each
      k, v projections      2 * n * d * (H_kv*h)       each   (GQA: smaller than q)
      scores  Q K^T         2 * H * h * P
      values  softmax(.) V  2 * H * h * P
      MLP                   3 * 2 * n * d * m  (SwiGLU: gate, up, down; 2 * 2 * n * d * m ungated)
    lm_head (optional)      2 * d * vocab * lm_head_tokens

with ``P`` the number of (query, key) pairs: ``n*(n+1)/2`` for causal attention
(what a FlashAttention prefill computes, the default) or ``n*n`` (``causal=False``,
the convention of FastV-style estimates ``4nd^2 + 2n^2d + 2ndm``, which also
ignores GQA and the gate). Biases, norms, softmax, RoPE and residual adds are not
counted: they are linear in ``n`` with tiny constants (< 0.5% of the total for a
7B model). The lm_head is left out by default: ``generate`` computes the logits of
one position per sequence at prefill (``logits_to_keep=1``), a plain ``forward``
of all ``n``; pass ``lm_head_tokens`` to include either.

Worked numbers (``python python/llava_video_kvtp.py`` prints them; tests/test_flops.py
checks them): LLaVA-Video-7B (Qwen2-7B), 64 frames x 196 tokens + 1 newline and a
64-token prompt, beta = 0.2 (K = 2509 of 12544 video tokens kept; 12609 -> 2574 LLM
tokens): the LLM prefill needs 17.8% of the unpruned FLOPs (causal; 15.9% counting
full n^2 attention); 72B: 18.7% (17.3%). The paper quotes ~36% / ~23% (METHOD.md
section 5). Those figures are matched in shape once the SigLIP-so400m tower over the
64 frames, which pruning does not shorten, is added to both sides
(:func:`vision_tower_flops`): 32.4% for 7B, 20.4% for 72B; the paper's ratio most
likely counts more than the LLM prefill.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

from .._errors import fail

__all__ = [
    "LLAVA_VIDEO_7B",
    "LLAVA_VIDEO_72B",
    "SIGLIP_SO400M",
    "DecoderShape",
    "KVTPFlops",
    "decoder_shape",
    "kvtp_prefill_flops",
    "prefill_flops",
    "prefill_flops_ratio",
    "vision_tower_flops",
]

#: Text configs of LLaVA-Video's LLMs (Qwen2-7B / Qwen2-72B, their config.json values).
LLAVA_VIDEO_7B = {"num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944,
                  "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064}
LLAVA_VIDEO_72B = {"num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 29568,
                   "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 152064}
#: SigLIP-so400m-patch14-384, LLaVA-Video's vision tower (27x27 = 729 patches per frame).
SIGLIP_SO400M = {"num_hidden_layers": 27, "hidden_size": 1152, "intermediate_size": 4304,
                 "num_attention_heads": 16, "image_size": 384, "patch_size": 14}


_fail = functools.partial(fail, "kvtp_kernels.integrations.flops")


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    """The sizes that fix a decoder layer's matmul FLOPs.

    Attributes:
        num_layers: L.  hidden_size: d.  intermediate_size: m (MLP).
        num_heads: H.  num_kv_heads: H_kv (GQA; = H for multi-head attention).
        head_dim: h (default d / H).  vocab_size: for the optional lm_head.
        gated_mlp: SwiGLU-style gate/up/down (Llama, Qwen2, Mistral) vs. two matrices.
    """

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int = 0
    gated_mlp: bool = True


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def decoder_shape(config: Any, *, gated_mlp: bool | None = None) -> DecoderShape:
    """A :class:`DecoderShape` from a transformers config, a dict of its fields, or a DecoderShape.

    A multimodal config (e.g. LlavaOnevisionConfig) is reduced to its text config
    (``get_text_config()`` / ``text_config``). Fields read: ``num_hidden_layers``,
    ``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
    ``num_key_value_heads`` (default: the heads), ``head_dim`` (default: d / H),
    ``vocab_size``. ``gated_mlp=None`` assumes the gated MLP of Llama-family models.
    """
    if isinstance(config, DecoderShape):
        return config if gated_mlp is None else dataclasses.replace(config, gated_mlp=gated_mlp)
    if not isinstance(config, Mapping):
        if callable(getattr(config, "get_text_config", None)):
            config = config.get_text_config()
        elif getattr(config, "text_config", None) is not None:
            config = config.text_config
    elif isinstance(config.get("text_config"), Mapping):
        config = config["text_config"]
    values = {}
    for name in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads"):
        value = _get(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(f"config.{name}", "an int >= 1 (a decoder-only LLM config)", repr(value))
        values[name] = value
    heads = values["num_attention_heads"]
    kv_heads = _get(config, "num_key_value_heads") or heads
    head_dim = _get(config, "head_dim") or values["hidden_size"] // heads
    if heads % kv_heads:
        _fail("config.num_key_value_heads", f"a divisor of num_attention_heads = {heads}", kv_heads)
    return DecoderShape(values["num_hidden_layers"], values["hidden_size"], values["intermediate_size"], heads,
                        int(kv_heads), int(head_dim), int(_get(config, "vocab_size") or 0),
                        True if gated_mlp is None else bool(gated_mlp))


def _check_length(arg: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        _fail(arg, "an int >= 0 (tokens)", repr(n))
    return n


def prefill_flops(config: Any, seq_len: int, *, causal: bool = True, lm_head_tokens: int = 0,
                  gated_mlp: bool | None = None) -> int:
    """Matmul FLOPs of one prefill of ``seq_len`` tokens (module docstring for the formula).

    Args:
        config: transformers config (text or multimodal), dict, or :class:`DecoderShape`.
        seq_len: n, tokens of the sequence (one sample; sum the samples of a batch,
            since attention does not cross samples).
        causal: count n(n+1)/2 (query, key) pairs (default) or n^2.
        lm_head_tokens: positions whose logits are computed (0: lm_head not counted).
        gated_mlp: see :func:`decoder_shape`.

    Returns:
        FLOPs as a Python int (exact).
    """
    shape = decoder_shape(config, gated_mlp=gated_mlp)
    n = _check_length("seq_len", seq_len)
    _check_length("lm_head_tokens", lm_head_tokens)
    d, h = shape.hidden_size, shape.head_dim
    q_width, kv_width = shape.num_heads * h, shape.num_kv_heads * h
    projections = 2 * n * d * (2 * q_width + 2 * kv_width)
    pairs = n * (n + 1) // 2 if causal else n * n
    attention = 2 * 2 * q_width * pairs
    mlp = (3 if shape.gated_mlp else 2) * 2 * n * d * shape.intermediate_size
    lm_head = 2 * d * shape.vocab_size * lm_head_tokens
    return shape.num_layers * (projections + attention + mlp) + lm_head


def prefill_flops_ratio(config: Any, seq_len_after: int, seq_len_before: int, **kwargs: Any) -> float:
    """``prefill_flops(after) / prefill_flops(before)`` (keyword arguments as :func:`prefill_flops`)."""
    before = prefill_flops(config, seq_len_before, **kwargs)
    if before == 0:
        _fail("seq_len_before", "> 0", seq_len_before)
    return prefill_flops(config, seq_len_after, **kwargs) / before


def vision_tower_flops(config: Any, num_images: int, *, num_layers: int | None = None) -> int:
    """Matmul FLOPs of a ViT (SigLIP / CLIP) over ``num_images`` images: the fixed cost pruning leaves.

    Tokens per image = (image_size // patch_size)^2 (plus nothing: SigLIP has no
    CLS token); per layer q/k/v/o projections, full (non-causal) attention and a
    two-matrix MLP, plus the patch embedding. The multimodal projector and the
    attention-pooling head are not counted (under 1% of the tower).

    Args:
        config: a vision config (SiglipVisionConfig, a multimodal config's
            ``vision_config``) or a dict with ``num_hidden_layers``, ``hidden_size``,
            ``intermediate_size``, ``image_size``, ``patch_size``.
        num_images: frames (all videos of the call).
        num_layers: layers that run (default all; LLaVA drops the last one).
    """
    if not isinstance(config, Mapping) and getattr(config, "vision_config", None) is not None:
        config = config.vision_config
    values = {}
    for name in ("num_hidden_layers", "hidden_size", "intermediate_size", "image_size", "patch_size"):
        value = _get(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(f"vision config.{name}", "an int >= 1", repr(value))
        values[name] = value
    _check_length("num_images", num_images)
    layers = values["num_hidden_layers"] if num_layers is None else _check_length("num_layers", num_layers)
    d, m = values["hidden_size"], values["intermediate_size"]
    p = values["image_size"] // values["patch_size"]
    n = p * p
    per_layer = 2 * n * d * 4 * d + 2 * 2 * d * n * n + 2 * 2 * n * d * m
    patch_embed = 2 * n * d * 3 * values["patch_size"] ** 2
    return num_images * (layers * per_layer + patch_embed)


@dataclasses.dataclass(frozen=True)
class KVTPFlops:
    """Prefill accounting of one video prompt before/after KVTP.

    Attributes:
        tokens_before / tokens_after: sequence length the LLM sees.
        kept_video_tokens: K.
        flops_before / flops_after: :func:`prefill_flops` of each.
        fixed_flops: cost pruning does not change (e.g. the vision tower), added to
            both sides of :attr:`total_ratio`.
    """

    tokens_before: int
    tokens_after: int
    kept_video_tokens: int
    flops_before: int
    flops_after: int
    fixed_flops: int = 0

    @property
    def ratio(self) -> float:
        """LLM prefill FLOPs after / before."""
        return self.flops_after / self.flops_before

    @property
    def total_ratio(self) -> float:
        """(LLM after + fixed) / (LLM before + fixed)."""
        return (self.flops_after + self.fixed_flops) / (self.flops_before + self.fixed_flops)


def kvtp_prefill_flops(config: Any, num_frames: int, tokens_per_frame: int, budget: float | int, *,
                       text_tokens: int = 0, newline_tokens: int = 1, fixed_flops: int = 0,
                       **kwargs: Any) -> KVTPFlops:
    """FLOPs of one prompt with a T x N video, unpruned vs. KVTP at ``budget``.

    Unpruned the LLM sees ``text_tokens + T*N + newline_tokens`` tokens, pruned
    ``text_tokens + K + newline_tokens`` with ``K = floor(beta*T*N + 1/2)`` (or K =
    ``budget`` for an int), i.e. the "video" newline layout of HF LlavaOnevision
    (one newline; pass ``newline_tokens`` for others). ``kwargs`` go to
    :func:`prefill_flops`.
    """
    T = _check_length("num_frames", num_frames)
    N = _check_length("tokens_per_frame", tokens_per_frame)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        _fail("budget", "a float ratio in (0, 1] or an int token count", repr(budget))
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            _fail("budget", "in (0, 1] as a ratio", repr(budget))
        K = math.floor(budget * T * N + 0.5)
    else:
        if not 0 < budget <= T * N:
            _fail("budget", f"in [1, T*N = {T * N}] as a token count", repr(budget))
        K = budget
    before = text_tokens + T * N + newline_tokens
    after = text_tokens + K + newline_tokens
    return KVTPFlops(before, after, K, prefill_flops(config, before, **kwargs),
                     prefill_flops(config, after, **kwargs), fixed_flops)
