"""The predictor's settings (saved as ``kvtp_predictor.json``), its file names, and its argument checks."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

from .._errors import describe, fail

__all__ = ["CONFIG_NAME", "HEAD_WEIGHTS_NAME", "TOKEN_POOLS", "PredictorConfig"]

#: Files that :meth:`FrameRelevancePredictor.save_pretrained` adds next to SigLIP's own.
CONFIG_NAME = "kvtp_predictor.json"
HEAD_WEIGHTS_NAME = "kvtp_fusion_head.safetensors"
#: How the probe attention over the patch grid is resampled to the LLM's token grid.
TOKEN_POOLS = ("average", "bilinear", "area")


_fail = functools.partial(fail, "kvtp_kernels.predictor")
_describe = functools.partial(describe, device=False)


def _as_grid(value: int | Sequence[int], arg: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(value) if isinstance(value, (tuple, list)) else value
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        _fail(arg, "an int >= 1 or a pair (height, width) of them", repr(value))
    return value


def _check_clip_size(clip_size: object) -> None:
    if isinstance(clip_size, bool) or not isinstance(clip_size, int) or clip_size < 1:
        _fail("clip_size", "an int >= 1", repr(clip_size))


@dataclasses.dataclass
class PredictorConfig:
    """Settings of :class:`FrameRelevancePredictor`, saved as ``kvtp_predictor.json``.

    Attributes:
        use_fusion_head: score with the :class:`ContextFusionHead` (True) or with the
            plain SigLIP similarity (False; the form prune's fused path computes).
        clip_size: C, frames per clip of the fusion head (and of the training loss).
        fusion_weights: (w_frame, w_local, w_global).
        text_window: tokens per query chunk; None = the text tower's
            ``max_position_embeddings`` (64 for SigLIP).
        image_mean, image_std: per-channel normalisation after scaling to [0, 1]
            (SigLIP: 0.5, 0.5).
        token_grid: the LLM's token grid (h, w) for token importance, or None for
            SigLIP's own patch grid (e.g. (13, 13) for LLaVA-Video with average
            pooling, (14, 14) with HF's bilinear pooling).
        token_pool: "average", "bilinear" or "area" (see :func:`resample_token_importance`).
    """

    use_fusion_head: bool = True
    clip_size: int = 8
    fusion_weights: tuple[float, float, float] = (0.9, 0.05, 0.05)
    text_window: int | None = None
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    token_grid: tuple[int, int] | None = None
    token_pool: str = "average"

    def __post_init__(self):
        if not isinstance(self.use_fusion_head, bool):
            _fail("use_fusion_head", "a bool", repr(self.use_fusion_head))
        _check_clip_size(self.clip_size)
        self.fusion_weights = tuple(float(w) for w in self.fusion_weights)
        if len(self.fusion_weights) != 3 or not all(math.isfinite(w) for w in self.fusion_weights):
            _fail("fusion_weights", "three finite numbers", repr(self.fusion_weights))
        if self.text_window is not None and (isinstance(self.text_window, bool)
                                             or not isinstance(self.text_window, int) or self.text_window < 1):
            _fail("text_window", "None or an int >= 1", repr(self.text_window))
        for name in ("image_mean", "image_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or (name == "image_std" and min(value) <= 0):
                _fail(name, "three numbers (RGB)" + (", all > 0" if name == "image_std" else ""), repr(value))
            setattr(self, name, value)
        if self.token_grid is not None:
            self.token_grid = _as_grid(self.token_grid, "token_grid")
        if self.token_pool not in TOKEN_POOLS:
            _fail("token_pool", f"one of {TOKEN_POOLS}", repr(self.token_pool))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> PredictorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"kvtp_kernels.predictor: {source}: unknown keys {unknown}; expected a subset of "
                             f"{sorted(known)}")
        return cls(**data)
