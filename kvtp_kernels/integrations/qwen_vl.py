"""The Qwen-VL family for the keep-mask adapter: Qwen2-VL, Qwen2.5-VL, Qwen3-VL (with deepstack).

What these models need (transformers 5.17 to 5.24; the wrappers are
:mod:`.keep_mask_adapter`'s):

- frame unit: one temporal patch (``temporal_patch_size`` = 2 frames), T' =
  ``video_grid_thw[v, 0]``; N = (h/2)*(w/2) tokens per unit after the 2x2 merge,
  different per video (non-square grids); ``get_video_features`` returns each
  video's rows in (t, h, w) raster order (Qwen2.5-VL's window order is undone before
  the merger), so they reshape to [T', N, D];
- placeholders: Qwen2/2.5-VL one ``<vision_start><video_pad>*T'N<vision_end>`` span per
  video; Qwen3-VL a timestamp + ``<vision_start><video_pad>*N<vision_end>`` per temporal
  patch. Markers and timestamps are text: they stay, also around a patch that keeps nothing;
- positions (M-RoPE): the model's own ``get_rope_index`` on the UNPRUNED prompt (with
  ``second_per_grid_ts`` for Qwen2.5-VL); kept tokens keep their (t, h, w) position,
  text after a video is not shifted. ``forward`` gets the 3 rows, ``generate`` 4 (a
  gap-free row first, which HF uses for the mask), and ``model.model.rope_deltas`` is
  set to the unpruned prompt's max position + 1 - pruned length (what HF caches for
  decoding: a cached step then lands where it lands unpatched);
  ``second_per_grid_ts`` is dropped and ``video_grid_thw`` replaced by a stand-in, so
  nothing recomputes positions; ``mm_token_type_ids`` (made from the ids when not
  given) is shortened with the ids;
- Qwen3-VL's deepstack levels are pruned with the same keep mask and handed back with
  the kept rows, so the model injects them at the kept positions, as unpatched;
- images beside the video go through untouched: the model encodes them, their
  positions are part of ``get_rope_index``'s.
"""

from __future__ import annotations

from typing import Any

import torch

from ._compat import deepstack_levels, deepstack_like
from .keep_mask import KeepMaskResult
from .settings import _describe_arg, _fail

__all__ = ["QWEN_VL_CLASSES", "QwenVL", "token_types"]

#: The model classes of this family -> their placeholder spans ("video": one per video, "frame": one per patch).
QWEN_VL_CLASSES = {
    "Qwen2VLForConditionalGeneration": "video",
    "Qwen2_5_VLForConditionalGeneration": "video",
    "Qwen3VLForConditionalGeneration": "frame",
}


def token_types(input_ids: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    """``mm_token_type_ids`` as the processor makes them: int32, 0 text, 1 image, 2 video placeholders."""
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types = types.masked_fill(input_ids == image_token_id, 1)
    return types.masked_fill(input_ids == video_token_id, 2)


class QwenVL:
    """Layout of one Qwen-VL model class (``spans``: "video" or "frame")."""

    def __init__(self, class_name: str):
        self.spans = QWEN_VL_CLASSES[class_name]

    @staticmethod
    def token_grids(model, call: dict, thw: list[list[int]]) -> list[tuple[int, int]]:
        """(h', w') token grid of each video (after the spatial merge); ``thw``: :meth:`check_inputs`'s."""
        merge = int(model.config.vision_config.spatial_merge_size)
        return [(h // merge, w // merge) for _, h, w in thw]

    @staticmethod
    def frames_per_unit(config) -> int:
        """Raw frames per frame unit (a temporal patch)."""
        return int(config.vision_config.temporal_patch_size)

    @staticmethod
    def frames_from_pixels(model, call: dict, thw: list[list[int]] | None = None) -> list[torch.Tensor]:
        """The processor's flattened patches -> V normalised frames [t*t_p, C, h*p, w*p].

        Rows of a video are (t, h/m, w/m, m, m) and columns (C, t_p, p, p) (m the spatial
        merge, p the patch size, t_p the temporal patch): the order the vision tower's
        patch embedding and 2x2 merger read them in. ``thw``: ``video_grid_thw`` on the
        host (None: read from the call).
        """
        vision = model.config.vision_config
        p, tp, m, C = (int(vision.patch_size), int(vision.temporal_patch_size), int(vision.spatial_merge_size),
                       int(vision.in_channels))
        pixels, out, start = call["pixel_values_videos"], [], 0
        for t, h, w in (call["video_grid_thw"].tolist() if thw is None else thw):
            rows = pixels[start:start + t * h * w]
            start += t * h * w
            x = rows.reshape(t, h // m, w // m, m, m, C, tp, p, p).permute(0, 6, 5, 1, 3, 7, 2, 4, 8)
            out.append(x.reshape(t * tp, C, h * p, w * p))
        return out

    def check_inputs(self, model, call: dict, video_mask: torch.Tensor) -> list[list[int]]:
        """Check the video inputs -> ``video_grid_thw`` on the host (V lists [t, h, w]: the call's one read of it)."""
        pixels, grid = call.get("pixel_values_videos"), call.get("video_grid_thw")
        if not isinstance(pixels, torch.Tensor) or pixels.dim() != 2:
            _fail("pixel_values_videos", "the processor's flattened patches [sum t*h*w, C*t_p*p*p]",
                  _describe_arg(pixels))
        if not isinstance(grid, torch.Tensor) or grid.dim() != 2 or grid.shape[1] != 3:
            _fail("video_grid_thw", "a [V, 3] tensor (t, h, w per video) with pixel_values_videos", _describe_arg(grid))
        thw = grid.tolist()
        if sum(t * h * w for t, h, w in thw) != pixels.shape[0]:
            _fail("video_grid_thw", f"grids whose t*h*w sum to the {pixels.shape[0]} rows of pixel_values_videos",
                  f"{thw}")
        merge = int(model.config.vision_config.spatial_merge_size)
        expected = sum(t * h * w // (merge * merge) for t, h, w in thw)
        found = int(video_mask.sum())
        if found != expected:
            _fail("input_ids", f"{expected} video placeholder tokens (sum of t*(h/{merge})*(w/{merge}) over "
                  f"video_grid_thw = {thw})", f"{found}")
        types = call.get("mm_token_type_ids")
        if types is not None and (not isinstance(types, torch.Tensor) or types.shape != video_mask.shape):
            _fail("mm_token_type_ids", f"a [B, L] = {list(video_mask.shape)} tensor like input_ids",
                  _describe_arg(types))
        return thw

    @staticmethod
    def _token_types(model, call: dict, input_ids: torch.Tensor) -> torch.Tensor:
        if call.get("mm_token_type_ids") is not None:
            return call["mm_token_type_ids"]
        return token_types(input_ids, model.config.image_token_id, model.config.video_token_id)

    def positions(self, model, call: dict, input_ids, attention_mask, generating: bool) -> torch.Tensor:
        """M-RoPE positions [3, B, L] of the unpruned prompt, as the unpatched model computes them."""
        call["mm_token_type_ids"] = self._token_types(model, call, input_ids)
        positions, _ = model.model.get_rope_index(
            input_ids, mm_token_type_ids=call["mm_token_type_ids"], image_grid_thw=call.get("image_grid_thw"),
            video_grid_thw=call["video_grid_thw"], second_per_grid_ts=call.get("second_per_grid_ts"),
            attention_mask=attention_mask)
        return positions

    @staticmethod
    def features(model, call: dict, thw: list[list[int]]) -> tuple[Any, list[torch.Tensor]]:
        """The model's own video features -> (its output, V tensors [T', N, D] in (t, h, w) raster order)."""
        pixels, grid = call["pixel_values_videos"], call["video_grid_thw"]
        merge = int(model.config.vision_config.spatial_merge_size)
        inner = model.model  # the class's method: another thread's call may be handing over kept rows
        out = type(inner).get_video_features(inner, pixels, grid, return_dict=True)
        features = []
        for v, (t, h, w) in enumerate(thw):
            N = (h // merge) * (w // merge)
            rows = out.pooler_output[v]
            if rows.shape[0] != t * N:
                raise RuntimeError(f"kvtp_kernels.integrations: get_video_features returned {rows.shape[0]} rows "
                                   f"for video {v}, expected t*(h/{merge})*(w/{merge}) = {t * N}")
            features.append(rows.reshape(t, N, rows.shape[-1]))
        return out, features

    @staticmethod
    def shorten(model, call: dict, result: KeepMaskResult, positions: torch.Tensor) -> None:
        call["mm_token_type_ids"] = result.take(call["mm_token_type_ids"])
        call.pop("second_per_grid_ts", None)
        # HF's rope_deltas: a cached step without positions goes to cache length + delta = the unpruned
        # prompt's max position + 1, as unpatched (pruned lengths, the same next position)
        lengths = result.attention_mask.sum(1, keepdim=True)
        model.model.rope_deltas = positions.amax(dim=(0, 2)).unsqueeze(1) + 1 - lengths

    @staticmethod
    def generate_positions(result: KeepMaskResult, positions: torch.Tensor) -> torch.Tensor:
        """[4, B, L']: the gap-free row HF builds for the mask, then the kept M-RoPE rows."""
        mask = result.attention_mask
        sequential = (mask.cumsum(-1) - 1).masked_fill(mask.eq(0), 0)
        return torch.cat([sequential[None], result.take(positions)], 0)

    def stand_in(self, out: Any, result: KeepMaskResult, dtype: torch.dtype):
        """-> (get_video_features stand-in returning the kept rows, the call's stand-in pixels and grid).

        Video v gets ``s_v`` pixel rows holding the value v and the grid row (s_v, 1, 1),
        s_v = its placeholder spans that keep a token (1; for Qwen3-VL its patches with
        k_t > 0): 5.17's generate splits pixel rows per sample by the grid and counts
        videos by the ``<vision_start>`` + placeholder pairs of the (pruned) ids.
        """
        kept = list(result.features.split(result.kept_per_video))
        deep = getattr(out, "deepstack_features", None)
        deep_kept = None if deep is None else [list(result.select_rows(rows).split(result.kept_per_video))
                                               for rows in deepstack_levels(deep)]
        counts = [1 if self.spans == "video" else sum(1 for k in frames if k > 0) for frames in result.frame_counts]
        device = result.features.device
        pixels = torch.cat([torch.full((max(s, 1), 1), float(v), dtype=dtype, device=device)
                            for v, s in enumerate(counts)])
        grid = torch.tensor([[max(s, 1), 1, 1] for s in counts], dtype=torch.long, device=device)

        def get_video_features(pixel_values_videos, video_grid_thw=None, **kwargs):
            sizes = video_grid_thw.prod(-1).tolist()
            ids = [int(chunk[0, 0]) for chunk in pixel_values_videos.split(sizes)]
            fields = {"pooler_output": tuple(kept[v] for v in ids)}
            if deep_kept is not None:
                fields["deepstack_features"] = deepstack_like(deep, [[level[v] for v in ids] for level in deep_kept])
            return type(out)(**fields)

        return get_video_features, {"pixel_values_videos": pixels, "video_grid_thw": grid}
