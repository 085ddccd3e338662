"""Devices, dtypes, and loading what ``kvtp eval`` runs: a video LLM (:class:`VideoModel`) and the
relevance predictor."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import torch

from ..integrations._compat import require_transformers
from ..options import MODEL_DTYPES, check_device
from .errors import EvalError

__all__ = [
    "DEFAULT_MEAN_STD",
    "DTYPES",
    "MODEL_CLASSES",
    "VideoModel",
    "load_predictor",
    "load_video_model",
    "processor_normalization",
    "resolve_device",
    "resolve_dtype",
]

DTYPES = {name: getattr(torch, name) for name in MODEL_DTYPES if name != "auto"}  # --dtype's, but auto
DEFAULT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # SigLIP's, LLaVA-OneVision's processor default
_PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json")


def _require_transformers():
    return require_transformers("kvtp eval", EvalError)


def resolve_device(device: str | None) -> torch.device:
    """None / "auto" -> cuda when available, else cpu."""
    return check_device(EvalError, device, auto=(None, "auto"), expected="auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """None / "auto" -> bfloat16 on CUDA, float32 on CPU."""
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise EvalError(f"--dtype must be auto or one of {list(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def processor_normalization(name_or_path: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """``(image_mean, image_std, source)`` from the checkpoint's (video) processor config files.

    Looks in ``video_preprocessor_config.json``, ``preprocessor_config.json`` and
    ``processor_config.json`` (top level or under ``video_processor`` / ``image_processor``);
    falls back to 0.5 / 0.5 (SigLIP's, what LLaVA-OneVision checkpoints use).
    """
    for filename in _PROCESSOR_FILES:
        if os.path.isdir(name_or_path):
            path = os.path.join(name_or_path, filename)
            path = path if os.path.isfile(path) else None
        else:
            from transformers.utils import cached_file

            path = cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)
        if not path:
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError):
            continue
        for section in (data, data.get("video_processor"), data.get("image_processor")):
            if isinstance(section, dict) and section.get("image_mean") and section.get("image_std"):
                mean, std = section["image_mean"], section["image_std"]
                mean = (float(mean),) * 3 if isinstance(mean, (int, float)) else tuple(float(m) for m in mean)
                std = (float(std),) * 3 if isinstance(std, (int, float)) else tuple(float(s) for s in std)
                return mean, std, filename
    return DEFAULT_MEAN_STD[0], DEFAULT_MEAN_STD[1], "default (0.5, 0.5)"


@dataclasses.dataclass
class VideoModel:
    """A loaded LlavaOnevision model and what preprocessing needs to know about it.

    Attributes:
        model: the ``LlavaOnevisionForConditionalGeneration`` (eval mode).
        tokenizer: its tokenizer.
        image_size: S, the vision tower's input size (frames are resized to S x S).
        tokens_per_frame: N = ceil(S/patch / 2)^2 (HF's 2x bilinear pooling).
        pixel_mean, pixel_std: the processor's normalisation.
        video_token_id: the placeholder id (``config.video_token_id``).
        pad_token_id: id used for left padding.
        device, dtype: where it runs.
    """

    model: Any
    tokenizer: Any
    image_size: int
    tokens_per_frame: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    video_token_id: int
    pad_token_id: int
    device: torch.device
    dtype: torch.dtype
    inputs: Any = None  # the family's input builder (video_inputs.py)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, pixel_mean=DEFAULT_MEAN_STD[0],
                   pixel_std=DEFAULT_MEAN_STD[1]) -> VideoModel:
        """Wrap an already built model (e.g. a tiny random one)."""
        vision = model.config.vision_config
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        if pad is None:
            pad = getattr(model.config.get_text_config(), "pad_token_id", None)
        if pad is None and tokenizer is not None:
            pad = getattr(tokenizer, "eos_token_id", None)
        parameter = next(model.parameters())
        from .video_inputs import video_inputs_for

        inputs = video_inputs_for(model, pixel_mean, pixel_std)
        return cls(model, tokenizer, int(getattr(vision, "image_size", 0)), inputs.tokens_per_frame or 0,
                   tuple(pixel_mean), tuple(pixel_std), int(model.config.video_token_id),
                   int(pad if pad is not None else 0), parameter.device, parameter.dtype, inputs)

    def placeholders(self, num_frames: int) -> int:
        """Video placeholder tokens for T frames of a LLaVA family: T*N, + 1 for LLaVA-OneVision
        (HF appends one newline per video; LLaVA-NeXT-Video appends none).

        Raises:
            EvalError: a Qwen-VL model (its count depends on the frame size: ``inputs.span``).
        """
        if not hasattr(self.inputs, "placeholders"):
            raise EvalError(f"VideoModel.placeholders: a LLaVA family counts T*N (+1) placeholders; "
                            f"{type(self.model).__name__} has its own layout: use inputs.span(frames)")
        return self.inputs.placeholders(num_frames)

    def pixel_values(self, videos: Sequence[torch.Tensor]) -> torch.Tensor:
        """V uint8 [T, H, W, 3] videos of one length -> [V, T, 3, S, S] on the model's device and dtype
        (a LLaVA family's :meth:`.video_inputs.LlavaInputs.tensors`)."""
        return self.inputs.tensors(videos, None, device=self.device, dtype=self.dtype)["pixel_values_videos"]


#: ``config.model_type`` -> the class ``kvtp eval`` / ``kvtp demo`` load (the classes apply_kvtp supports).
MODEL_CLASSES = {
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}


def load_video_model(name_or_path: str, *, device: torch.device, dtype: torch.dtype,
                     attn_implementation: str | None = None) -> VideoModel:
    """Load a checkpoint of a supported family (hub name or directory; the class chosen by its config's
    ``model_type``, :data:`MODEL_CLASSES`) and its tokenizer with ``from_pretrained``.

    Raises:
        EvalError: not found, not a llava_onevision model, no tokenizer.
    """
    transformers = _require_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise EvalError(f"--model {name_or_path!r}: cannot load its config ({exc})") from exc
    if config.model_type not in MODEL_CLASSES:
        raise EvalError(f"--model {name_or_path!r} is a {config.model_type!r} model; KVTP's HF integration supports "
                        f"{', '.join(MODEL_CLASSES.values())} (model types {', '.join(MODEL_CLASSES)})")
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = getattr(transformers, MODEL_CLASSES[config.model_type]).from_pretrained(name_or_path, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise EvalError(f"--model {name_or_path!r}: cannot load the model or its tokenizer ({exc})") from exc
    model = model.to(device).eval()
    mean, std, _ = processor_normalization(name_or_path)
    return VideoModel.from_model(model, tokenizer, pixel_mean=mean, pixel_std=std)


def load_predictor(name_or_path: str, *, device: torch.device, dtype: torch.dtype = torch.float32) -> Any:
    """A :class:`~kvtp_kernels.predictor.FrameRelevancePredictor` from a hub name or a saved directory."""
    from ..predictor import FrameRelevancePredictor

    try:
        predictor = FrameRelevancePredictor.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise EvalError(f"--predictor {name_or_path!r}: cannot load it ({exc})") from exc
    if predictor.tokenizer is None:
        raise EvalError(f"--predictor {name_or_path!r} has no tokenizer (save one next to it): the questions are text")
    return predictor.to(device=device, dtype=dtype).eval()
