"""The LLaVA-NeXT-Video family for the keep-mask adapter (``LlavaNextVideoForConditionalGeneration``).

What this model needs (the wrappers are :mod:`.keep_mask_adapter`'s):

- frame unit: one frame; ``get_video_features`` returns per video [T, N, D] ([T*N, D]
  from 5.21.0; the vision tower's patch grid pooled by ``spatial_pool_stride``), no
  newline rows;
- placeholders: ``<video>`` x T*N per video, filled in order;
- positions: 1-D. The unpruned prompt's are what the unpatched model uses: in
  ``forward`` the token index 0..L-1 (or the caller's ``position_ids``), in
  ``generate`` the attention mask's cumulative sum - 1; kept tokens keep theirs,
  the text after the video is not shifted.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._compat import frames_by_tokens, video_features_keyword
from .keep_mask import KeepMaskResult
from .settings import _describe_arg, _fail

__all__ = ["LLAVA_NEXT_VIDEO_CLASSES", "LlavaNextVideo"]

LLAVA_NEXT_VIDEO_CLASSES = ("LlavaNextVideoForConditionalGeneration",)


class LlavaNextVideo:
    """Layout of ``LlavaNextVideoForConditionalGeneration``."""

    @staticmethod
    def token_grids(model, call: dict, thw: None) -> list[tuple[int, int]]:
        """(h', w') pooled token grid of each video."""
        vision = model.config.vision_config
        side = math.ceil((vision.image_size // vision.patch_size) / model.config.spatial_pool_stride)
        return [(side, side)] * call["pixel_values_videos"].shape[0]

    @staticmethod
    def frames_per_unit(config) -> int:
        return 1

    @staticmethod
    def frames_from_pixels(model, call: dict, thw: None = None) -> list[torch.Tensor]:
        """V normalised frames [T, 3, H, W]."""
        return list(call["pixel_values_videos"].unbind(0))

    @staticmethod
    def check_inputs(model, call: dict, video_mask: torch.Tensor) -> None:
        pixels = call.get("pixel_values_videos")
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 5:
            _fail("pixel_values_videos", "a [V, T, 3, H, W] tensor", _describe_arg(pixels))

    @staticmethod
    def positions(model, call: dict, input_ids, attention_mask, generating: bool) -> torch.Tensor:
        """[B, L] positions of the unpruned prompt, as the unpatched forward / generate computes them."""
        B, L = input_ids.shape
        if generating and attention_mask is not None:
            return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask.eq(0), 0)
        return torch.arange(L, device=input_ids.device).expand(B, L)

    @staticmethod
    def features(model, call: dict, thw: None) -> tuple[Any, list[torch.Tensor]]:
        """The model's own video features -> (its output, V tensors [T, N, D])."""
        config = model.config
        layer = call.get("vision_feature_layer")
        strategy = call.get("vision_feature_select_strategy")
        inner = model.model  # the class's method: another thread's call may be handing over kept rows
        method = type(inner).get_video_features.__get__(inner)
        out = method(**{video_features_keyword(method): call["pixel_values_videos"]},
                     vision_feature_layer=config.vision_feature_layer if layer is None else layer,
                     vision_feature_select_strategy=(config.vision_feature_select_strategy if strategy is None
                                                     else strategy),
                     return_dict=True)
        frames = call["pixel_values_videos"].shape[1]
        return out, [frames_by_tokens(f, frames) for f in out.pooler_output]

    @staticmethod
    def shorten(model, call: dict, result: KeepMaskResult, positions: torch.Tensor) -> None:
        return None

    @staticmethod
    def generate_positions(result: KeepMaskResult, positions: torch.Tensor) -> torch.Tensor:
        return result.take(positions)

    @staticmethod
    def stand_in(out: Any, result: KeepMaskResult, dtype: torch.dtype):
        """-> (get_video_features stand-in returning the kept rows, the call's stand-in pixels).

        One stand-in "video" [1, 1, 1, 1] per video holding its index: generate repeats
        pixel rows per sample (5.17) or the outputs (5.18 on); rows are [K_v, 1, D] so
        that the model's ``flatten(0, 1)`` gives [K_v, D] and their length counts tokens.
        """
        kept = [rows[:, None] for rows in result.features.split(result.kept_per_video)]
        V = len(kept)
        pixels = torch.arange(V, dtype=dtype, device=result.features.device).reshape(V, 1, 1, 1, 1)

        def get_video_features(pixel_values_videos=None, **kwargs):
            if pixel_values_videos is None:  # 5.17 names the argument pixel_values
                pixel_values_videos = kwargs.pop("pixel_values")
            ids = [int(v) for v in pixel_values_videos.reshape(-1).tolist()]
            return type(out)(pooler_output=tuple(kept[v] for v in ids))

        return get_video_features, {"pixel_values_videos": pixels}

