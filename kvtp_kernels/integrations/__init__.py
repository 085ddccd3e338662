"""KVTP inside model code: a model-agnostic core and the HF transformers integrations built on it.

- :mod:`.core`: video features [V, T, N, D] + the placeholder mask + the embedded
  prompt -> shortened ``inputs_embeds``, attention mask, position ids and
  accounting (:func:`prune_video_inputs`); how to wire another VLM is in its docstring.
  Its pieces: :mod:`.settings` (:class:`KVTPSettings`, :class:`KVTPStats`, the results),
  :mod:`.placement` (where the videos sit in the prompt), :mod:`.frames` (pixels for a
  vision tower or the predictor, :func:`predictor_scores`), :mod:`.pruning` (one prune
  call per video shape, shared with the keep-mask path).
- :mod:`.keep_mask`: the keep-mask path (any placeholder layout, several spans per
  sample, original positions kept, 1-D or M-RoPE): :func:`prune_to_keep_mask`.
- :mod:`.dispatch`: :func:`apply_kvtp` / :func:`remove_kvtp`, one entry point for
  every supported class (:data:`SUPPORTED_MODELS`), one adapter per family:
  :mod:`.llava_onevision` (LLaVA-Video, LLaVA-OneVision), :mod:`.qwen_vl`
  (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).
- :mod:`.flops`: LLM prefill FLOPs from a config and a sequence length.
- :mod:`.lmms_eval` (needs lmms-eval; its model args in :mod:`.lmms_eval_args`): KVTP as an
  lmms-eval model.

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
from .dispatch import SUPPORTED_MODELS, apply_kvtp, is_kvtp_applied, remove_kvtp
from .flops import (
    DecoderShape,
    KVTPFlops,
    decoder_shape,
    kvtp_prefill_flops,
    prefill_flops,
    prefill_flops_ratio,
    vision_tower_flops,
)
from .keep_mask import KeepMaskResult, prune_to_keep_mask
from .recording import collect_stats

__all__ = [
    "DecoderShape",
    "KVTPFlops",
    "KVTPSettings",
    "KVTPStats",
    "KeepMaskResult",
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
    "SUPPORTED_MODELS",
    "prune_to_keep_mask",
    "remove_kvtp",
    "renormalize_pixels",
    "video_pixel_values",
    "vision_tower_flops",
]
