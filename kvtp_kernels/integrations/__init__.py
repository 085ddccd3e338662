"""KVTP inside model code: a model-agnostic core and the HF transformers integrations built on it.

- :mod:`.core`: video features [V, T, N, D] + the placeholder mask + the embedded
  prompt -> shortened ``inputs_embeds``, attention mask, position ids and
  accounting (:func:`prune_video_inputs`); how to wire another VLM is in its docstring.
- :mod:`.llava_onevision`: :func:`apply_kvtp` / :func:`remove_kvtp` for HF's
  ``LlavaOnevisionForConditionalGeneration`` (LLaVA-Video, LLaVA-OneVision).
- :mod:`.flops`: LLM prefill FLOPs from a config and a sequence length.

Nothing here imports transformers at import time; :func:`apply_kvtp` does, and
refuses releases older than 5.17 (:mod:`._compat` holds every difference
between the supported releases).
"""

from .core import (
    KVTPSettings,
    KVTPStats,
    VideoPlacement,
    VideoPruneResult,
    infer_padding_side,
    locate_videos,
    placeholder_length,
    predictor_scores,
    prune_video_inputs,
    renormalize_pixels,
    video_pixel_values,
)
from .flops import (
    DecoderShape,
    KVTPFlops,
    decoder_shape,
    kvtp_prefill_flops,
    prefill_flops,
    prefill_flops_ratio,
    vision_tower_flops,
)
from .llava_onevision import apply_kvtp, is_kvtp_applied, remove_kvtp
from .recording import collect_stats

__all__ = [
    "DecoderShape",
    "KVTPFlops",
    "KVTPSettings",
    "KVTPStats",
    "VideoPlacement",
    "VideoPruneResult",
    "apply_kvtp",
    "collect_stats",
    "decoder_shape",
    "infer_padding_side",
    "is_kvtp_applied",
    "kvtp_prefill_flops",
    "locate_videos",
    "placeholder_length",
    "predictor_scores",
    "prefill_flops",
    "prefill_flops_ratio",
    "prune_video_inputs",
    "remove_kvtp",
    "renormalize_pixels",
    "video_pixel_values",
    "vision_tower_flops",
]
