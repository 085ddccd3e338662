"""``apply_kvtp`` / ``remove_kvtp``: one entry point, one small adapter per model family.

- ``LlavaOnevisionForConditionalGeneration``: :mod:`.llava_onevision` (frame unit 1
  frame, 1-D positions renumbered 0..L');
- ``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``,
  ``Qwen3VLForConditionalGeneration``: :mod:`.qwen_vl` (frame unit one temporal patch
  of 2 frames, the M-RoPE positions of the unpruned prompt kept);
- ``LlavaNextVideoForConditionalGeneration``: :mod:`.llava_next_video` (frame unit 1
  frame, the 1-D positions of the unpruned prompt kept).

The last two share :mod:`.keep_mask_adapter` (the wrappers over the core's keep mask).

Every adapter wraps the instance's ``forward`` and ``generate`` and records what it
replaced, so :func:`remove_kvtp` restores the instance exactly, whatever the family.
"""

from __future__ import annotations

from typing import Any

from ._compat import require_transformers
from .keep_mask_adapter import install as install_keep_mask
from .llava_next_video import LLAVA_NEXT_VIDEO_CLASSES, LlavaNextVideo
from .llava_onevision import install as install_llava_onevision
from .patching import from_processor, is_kvtp_applied, remove_kvtp
from .qwen_vl import QWEN_VL_CLASSES, QwenVL
from .settings import KVTPSettings

__all__ = ["SUPPORTED_MODELS", "apply_kvtp", "is_kvtp_applied", "remove_kvtp"]

#: The model classes apply_kvtp accepts (names in transformers).
SUPPORTED_MODELS = ("LlavaOnevisionForConditionalGeneration", *QWEN_VL_CLASSES, *LLAVA_NEXT_VIDEO_CLASSES)


def _family(transformers: Any, model: Any) -> str | None:
    for name in SUPPORTED_MODELS:
        cls = getattr(transformers, name, None)
        if cls is not None and isinstance(model, cls):
            return name
    return None


def apply_kvtp(
    model: Any,
    *,
    budget: float | int = 0.2,
    predictor: Any = None,
    temperature: float = 2.0,
    allocation: str = "exact",
    min_tokens_per_frame: int = 0,
    layout: str | None = None,
    processor: Any = None,
    backend: str | None = None,
    method: str = "topk",
    merge: str = "paper",
    num_neighbors: int | None = None,
) -> Any:
    """Patch one VLM instance so every ``forward`` / ``generate`` call with video prunes it with KVTP.

    Args:
        model: an instance of a class in :data:`SUPPORTED_MODELS`.
        budget: float in (0, 1]: keep ``K = floor(beta*T*N + 1/2)`` of each video's
            T*N tokens (T frame units of N tokens; LLaVA-OneVision's newline is extra);
            int: K itself.
        predictor: a :class:`~kvtp_kernels.predictor.FrameRelevancePredictor`, or
            None for uniform frame scores (plain per-frame top-k by distinctiveness).
        temperature, allocation, min_tokens_per_frame: as :func:`kvtp_kernels.prune`.
        layout: LLaVA-OneVision's newline layout of the pruned video: None / "video"
            (HF's one newline per video), "grid" (original LLaVA-Video: after every
            grid row that kept a token), "frame" or "none". The Qwen-VL family and
            LLaVA-NeXT-Video have no newline tokens: None or "none".
        processor: optional HF processor or tokenizer: its tokenizer decodes the
            prompt into the predictor's query (when ``kvtp_query`` is not given),
            its video processor's ``image_mean`` / ``image_std`` let the predictor's
            frames be derived from ``pixel_values_videos`` (when ``kvtp_frames`` is
            not given).
        backend: ``kvtp_kernels.prune``'s backend (None: by device).
        method, merge, num_neighbors: the within-frame method, as
            :func:`kvtp_kernels.prune`: "topk" (default), "prumerge" (the paper's
            best; needs the predictor's token importance as its merge weights),
            "tome" or "random".

    Returns:
        the same model, patched in place (:func:`remove_kvtp` undoes it exactly).

    Raises:
        ImportError: transformers missing or older than 5.17.
        TypeError: a model class not in :data:`SUPPORTED_MODELS`, a predictor of the wrong type.
        ValueError: bad settings (budget, temperature, allocation, layout, method).
        RuntimeError: the model is already patched.
    """
    transformers = require_transformers("kvtp_kernels.integrations.apply_kvtp")
    family = _check_model(transformers, model)
    llava_onevision = family == "LlavaOnevisionForConditionalGeneration"
    settings = KVTPSettings(budget, temperature, allocation, min_tokens_per_frame, _layout(family, layout), backend,
                            method, merge, num_neighbors)
    _check_predictor(method, predictor)
    tokenizer, mean, std = from_processor(processor)
    if llava_onevision:
        install_llava_onevision(model, settings, predictor, tokenizer, mean, std)
    else:
        adapter = LlavaNextVideo() if family in LLAVA_NEXT_VIDEO_CLASSES else QwenVL(family)
        install_keep_mask(model, adapter, settings, predictor, tokenizer, mean, std)
    return model


def _check_model(transformers: Any, model: Any) -> str:
    """The model's family (a name of :data:`SUPPORTED_MODELS`); an unsupported or patched model is an error."""
    family = _family(transformers, model)
    if family is None:
        name = type(model).__name__
        what = "has no video input (no get_video_features)" if not callable(
            getattr(model, "get_video_features", None)) else "is not wired yet (kvtp_kernels.integrations.core " \
                                                              "and keep_mask explain how)"
        raise TypeError(f"kvtp_kernels.integrations.apply_kvtp: `model` must be one of {', '.join(SUPPORTED_MODELS)}; "
                        f"got {name}, which {what}")
    if is_kvtp_applied(model):
        raise RuntimeError("kvtp_kernels.integrations.apply_kvtp: the model is already patched; call "
                           "remove_kvtp(model) first to change the settings")
    return family


def _layout(family: str, layout: str | None) -> str:
    """The family's layout: LLaVA-OneVision's default "video"; the others have no newlines ("none")."""
    llava_onevision = family == "LlavaOnevisionForConditionalGeneration"
    if not llava_onevision and layout not in (None, "none"):
        raise ValueError(f"kvtp_kernels.integrations.apply_kvtp: `layout` must be None or 'none' for {family} "
                         f"(its video has no newline tokens); got {layout!r}")
    if layout is None:
        layout = "video" if llava_onevision else "none"
    return layout


def _check_predictor(method: str, predictor: Any) -> None:
    """A FrameRelevancePredictor or None; prumerge needs one."""
    if method == "prumerge" and predictor is None:
        raise ValueError("kvtp_kernels.integrations.apply_kvtp: `method` 'prumerge' needs a `predictor`: its token "
                         "importance (SigLIP attention pooling) gives the merge weights; got predictor=None")
    if predictor is not None:
        from ..predictor import FrameRelevancePredictor

        if not isinstance(predictor, FrameRelevancePredictor):
            raise TypeError(f"kvtp_kernels.integrations.apply_kvtp: `predictor` must be a FrameRelevancePredictor "
                            f"or None; got {type(predictor).__name__}")
