"""KVTP inside HF transformers' Qwen-VL family: Qwen2-VL, Qwen2.5-VL and Qwen3-VL (with deepstack).

The adapter that :func:`~kvtp_kernels.integrations.apply_kvtp` installs on a
``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration`` or
``Qwen3VLForConditionalGeneration`` instance. It wraps the instance's ``forward`` and
``generate`` (the sequence length is fixed by ``input_ids`` before the vision
encoder runs, as for LLaVA) and copies no HF code.

What these models need (METHOD.md's pruning, on their layout):

- frame unit: one temporal patch (``temporal_patch_size`` = 2 frames), T' =
  ``video_grid_thw[v, 0]``; N = (h/2)*(w/2) tokens per unit after the 2x2 merge,
  different per video; ``get_video_features`` returns each video's rows in (t, h, w)
  raster order, so they reshape to [T', N, D];
- placeholders: Qwen2/2.5-VL one ``<video_pad>`` span per video, Qwen3-VL one span
  per temporal patch (timestamp text and ``<vision_start>``/``<vision_end>``
  between): the core's keep-mask path (:mod:`.keep_mask`) takes any layout;
  markers and timestamps are text and stay, also around a frame that keeps nothing;
- positions (M-RoPE): computed with the model's own ``get_rope_index`` on the
  UNPRUNED prompt; every kept token keeps its (t, h, w) position and the text after
  a video is not shifted. They are passed explicitly: ``forward`` gets 3 rows,
  ``generate`` 4 (a gap-free row for the mask, then t, h, w), and
  ``model.model.rope_deltas`` is set to max kept position + 1 - pruned length, what
  HF caches for decoding;
- the pruned rows reach the model through its own ``get_video_features`` call: for
  the call the inner model's ``get_video_features`` is an instance attribute that
  returns the kept rows (and Qwen3-VL's deepstack levels pruned with the same mask,
  so the model scatters and injects them itself, as unpatched). The call carries a
  stand-in ``pixel_values_videos`` whose rows name their video, with a stand-in
  ``video_grid_thw`` of one row per kept span (:func:`_stand_in`): whatever
  ``generate`` does with pixel rows for beams or ``num_return_sequences`` (repeat
  them per sample, or encode first and repeat the outputs) maps back to the right
  videos. Positions are explicit, so nothing recomputes them from the stand-in grid;
  ``second_per_grid_ts`` is dropped.

Images beside the video go through untouched (the model encodes them; their M-RoPE
positions are part of ``get_rope_index``'s). ``mm_token_type_ids`` (made from the
ids when not given) is shortened with ``input_ids``. ``forward`` returns logits over
the pruned sequence; ``generate`` returns the unpruned prompt ids + new tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
from typing import Any

import torch

from .._errors import describe
from ._compat import deepstack_levels, deepstack_like, passed_cache, with_sequences
from .core import KVTPSettings, _fail, infer_padding_side
from .keep_mask import KeepMaskResult, prune_to_keep_mask

__all__ = ["QWEN_VL_CLASSES", "QwenVLPatch", "install"]

#: The model classes this adapter serves, with their frame-span layout.
QWEN_VL_CLASSES = {
    "Qwen2VLForConditionalGeneration": "video",
    "Qwen2_5_VLForConditionalGeneration": "video",
    "Qwen3VLForConditionalGeneration": "frame",
}
KVTP_KWARGS = ("kvtp_query", "kvtp_frames")

_describe = functools.partial(describe, device=False)


@dataclasses.dataclass
class QwenVLPatch:
    """What apply_kvtp keeps on a Qwen-VL model."""

    settings: KVTPSettings
    predictor: Any
    tokenizer: Any
    pixel_mean: tuple[float, ...] | None
    pixel_std: tuple[float, ...] | None
    saved: dict[str, tuple[bool, Any]]
    spans: str  # "video": one placeholder span per video; "frame": one per temporal patch
    busy: bool = False  # inside a wrapped call: the original generate calls the (wrapped) forward


def install(model: Any, patch_factory, settings: KVTPSettings, predictor: Any, tokenizer: Any,
            mean: tuple | None, std: tuple | None, saved: dict) -> QwenVLPatch:
    """Wrap the instance's forward / generate (called by apply_kvtp after its checks)."""
    patch = QwenVLPatch(settings, predictor, tokenizer, mean, std, saved, QWEN_VL_CLASSES[type(model).__name__])
    original_forward, original_generate = model.forward, model.generate
    patch_factory(patch)
    model.__dict__["forward"] = _wrap_forward(model, patch, original_forward)
    model.__dict__["generate"] = _wrap_generate(model, patch, original_generate)
    return patch


# ----------------------------------------------------------------------------------
# Wrappers
# ----------------------------------------------------------------------------------
def _bound_call(signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple[dict | None, tuple]:
    """-> (the call as keywords when it carries video pixels, else None; the kvtp keyword arguments)."""
    extra = tuple(kwargs.pop(name, None) for name in KVTP_KWARGS)
    if not args and kwargs.get("pixel_values_videos") is None:
        return None, extra
    bound = signature.bind(*args, **kwargs)
    call: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise TypeError(f"kvtp_kernels.integrations: unexpected extra positional arguments {value!r}")
        else:
            call[name] = value
    return (call if call.get("pixel_values_videos") is not None else None), extra


def _check_no_cache(call: dict) -> None:
    cache = passed_cache(call)
    if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
        raise ValueError("kvtp_kernels.integrations: video input with a non-empty `past_key_values` is not "
                         "supported (the pruned prompt must be the first thing in the cache); use generate(), "
                         "or run the video prompt first")


def _wrap_forward(model, patch: QwenVLPatch, original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def forward(*args, **kwargs):
        if patch.busy:  # a step of our own generate: the call is already pruned
            return original(*args, **kwargs)
        call, (query, frames) = _bound_call(signature, args, kwargs)
        if call is None:
            return original(*args, **kwargs)
        _check_no_cache(call)
        side = infer_padding_side(call.get("attention_mask"))
        prepared = _prepare(model, patch, call, query, frames, padding_side=side)
        result = prepared.result
        user_positions = call.get("position_ids")
        positions = prepared.positions if user_positions is None else _check_positions(user_positions, result)
        call["position_ids"] = result.take(positions)
        if call.get("labels") is not None:
            call["labels"] = result.take(call["labels"], pad=-100)
        if call.get("attention_mask") is None and bool(result.attention_mask.ne(0).all()):
            call["attention_mask"] = None
        with prepared.feeding(model, patch):
            return original(**call)

    return forward


def _wrap_generate(model, patch: QwenVLPatch, original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def generate(*args, **kwargs):
        call, (query, frames) = _bound_call(signature, args, kwargs)
        if call is None:
            return original(*args, **kwargs)
        _check_no_cache(call)
        if call.get("inputs") is not None:
            call["input_ids"] = call.pop("inputs")
        if call.get("position_ids") is not None:
            _fail("position_ids", "None with video input to generate (KVTP computes the M-RoPE positions of the "
                  "unpruned prompt itself)", _describe(call["position_ids"]))
        prompt_ids = call.get("input_ids")
        with torch.no_grad():  # as HF's generate
            prepared = _prepare(model, patch, call, query, frames, padding_side="left")
        result = prepared.result
        mask = result.attention_mask
        sequential = (mask.cumsum(-1) - 1).masked_fill(mask.eq(0), 0)
        call["position_ids"] = torch.cat([sequential[None], result.take(prepared.positions)], 0)
        from .llava_onevision import _count_lengths_from_prompt

        _count_lengths_from_prompt(model, call, prompt_ids.shape[1])
        with prepared.feeding(model, patch):
            out = original(**call)
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        repeat = sequences.shape[0] // prompt_ids.shape[0]  # num_return_sequences / beams
        new_tokens = sequences[:, call["input_ids"].shape[1]:]
        prompt = prompt_ids.to(sequences.device).repeat_interleave(repeat, dim=0)
        return with_sequences(out, torch.cat([prompt, new_tokens], dim=1))

    return generate


def _check_positions(user: Any, result: KeepMaskResult) -> torch.Tensor:
    B, L = result.keep.shape
    if not isinstance(user, torch.Tensor) or user.dim() not in (2, 3) or tuple(user.shape[-2:]) != (B, L):
        _fail("position_ids", f"[B, L], [3, B, L] or [4, B, L] positions of the unpruned prompt (B, L = {B}, {L})",
              _describe(user))
    return user


# ----------------------------------------------------------------------------------
# Building the pruned call
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Prepared:
    result: KeepMaskResult
    positions: torch.Tensor  # [3, B, L] M-RoPE positions of the unpruned prompt
    feeder: Any  # the get_video_features stand-in

    @contextlib.contextmanager
    def feeding(self, model, patch: QwenVLPatch):
        """For one original call: the inner get_video_features returns the kept rows; the wrappers pass through."""
        inner = model.model.__dict__
        had, old = "get_video_features" in inner, inner.get("get_video_features")
        inner["get_video_features"] = self.feeder
        patch.busy = True
        try:
            yield
        finally:
            patch.busy = False
            if had:
                inner["get_video_features"] = old
            else:
                inner.pop("get_video_features", None)


def _check_video_inputs(call: dict) -> None:
    pixels, grid = call.get("pixel_values_videos"), call.get("video_grid_thw")
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 2:
        _fail("pixel_values_videos", "the processor's flattened patches [sum t*h*w, C*t_p*p*p]", _describe(pixels))
    if not isinstance(grid, torch.Tensor) or grid.dim() != 2 or grid.shape[1] != 3:
        _fail("video_grid_thw", "a [V, 3] tensor (t, h, w per video) with pixel_values_videos", _describe(grid))
    if int(grid.prod(-1).sum()) != pixels.shape[0]:
        _fail("video_grid_thw", f"grids whose t*h*w sum to the {pixels.shape[0]} rows of pixel_values_videos",
              f"{grid.tolist()}")


def _video_features(model, call: dict) -> tuple[Any, list[torch.Tensor]]:
    """The model's own video features -> (its output, V tensors [T', N, D] in (t, h, w) raster order)."""
    pixels, grid = call["pixel_values_videos"], call["video_grid_thw"]
    merge = int(model.config.vision_config.spatial_merge_size)
    out = model.model.get_video_features(pixels, grid, return_dict=True)
    pooled = out.pooler_output
    features = []
    for v, (t, h, w) in enumerate(grid.tolist()):
        N = (h // merge) * (w // merge)
        rows = pooled[v]
        if rows.shape[0] != t * N:
            raise RuntimeError(f"kvtp_kernels.integrations: get_video_features returned {rows.shape[0]} rows for "
                               f"video {v}, expected t*(h/{merge})*(w/{merge}) = {t * N}")
        features.append(rows.reshape(t, N, rows.shape[-1]))
    return out, features


def _mm_token_type_ids(model, call: dict, input_ids: torch.Tensor) -> torch.Tensor:
    given = call.get("mm_token_type_ids")
    if given is not None:
        if not isinstance(given, torch.Tensor) or given.shape != input_ids.shape:
            _fail("mm_token_type_ids", f"a [B, L] = {list(input_ids.shape)} tensor like input_ids", _describe(given))
        return given
    config = model.config
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types = types.masked_fill(input_ids == config.image_token_id, 1)
    return types.masked_fill(input_ids == config.video_token_id, 2)


def _prepare(model, patch: QwenVLPatch, call: dict, query: Any, frames: Any, *, padding_side: str) -> _Prepared:
    """Prune the call's videos; rewrite ``call`` for the original method; record model.kvtp_stats."""
    input_ids = call.get("input_ids")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        _fail("input_ids", "an integer [B, L] tensor with video input (Qwen-VL needs the ids for M-RoPE)",
              _describe(input_ids))
    if call.get("inputs_embeds") is not None:
        _fail("inputs_embeds", "None with video input (pass input_ids: the M-RoPE positions are computed from them)",
              _describe(call["inputs_embeds"]))
    attention_mask = call.get("attention_mask")
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
        _fail("attention_mask", "a 2-D [B, L] mask with video input (4-D masks are not supported)",
              _describe(attention_mask))
    _check_video_inputs(call)
    config = model.config
    merge = int(config.vision_config.spatial_merge_size)
    expected = int((call["video_grid_thw"].prod(-1) // (merge * merge)).sum())
    found = int((input_ids == config.video_token_id).sum())
    if found != expected:
        _fail("input_ids", f"{expected} video placeholder tokens (sum of t*(h/{merge})*(w/{merge}) over "
              f"video_grid_thw = {call['video_grid_thw'].tolist()})", f"{found}")
    types = _mm_token_type_ids(model, call, input_ids)
    with torch.no_grad():
        positions, _ = model.model.get_rope_index(
            input_ids, mm_token_type_ids=types, image_grid_thw=call.get("image_grid_thw"),
            video_grid_thw=call["video_grid_thw"], second_per_grid_ts=call.get("second_per_grid_ts"),
            attention_mask=attention_mask)
    out, features = _video_features(model, call)
    scores = token_scores = None
    if patch.predictor is not None:
        from .qwen_vl_predictor import predictor_inputs

        scores, token_scores = predictor_inputs(model, patch, call, query, frames, features, input_ids,
                                                attention_mask)
    video_mask = input_ids == config.video_token_id
    result = prune_to_keep_mask(video_mask, features, attention_mask=attention_mask, scores=scores,
                                token_scores=token_scores, settings=patch.settings, padding_side=padding_side,
                                flops_config=config.text_config)
    model.__dict__["kvtp_stats"] = result.stats

    pad = config.text_config.pad_token_id if getattr(config.text_config, "pad_token_id", None) is not None else 0
    call["input_ids"] = result.take(input_ids, pad=pad)
    call["mm_token_type_ids"] = result.take(types)
    mask = result.attention_mask
    call["attention_mask"] = mask if attention_mask is None else mask.to(attention_mask.dtype)
    kept_positions = result.take(positions)
    lengths = mask.sum(1, keepdim=True)
    model.model.rope_deltas = kept_positions.amax(dim=(0, 2)).unsqueeze(1) + 1 - lengths
    call.pop("second_per_grid_ts", None)
    feeder, stand_in_pixels, stand_in_grid = _stand_in(out, result, patch.spans, features[0].dtype)
    call["pixel_values_videos"] = stand_in_pixels
    call["video_grid_thw"] = stand_in_grid
    return _Prepared(result, positions, feeder)


def _stand_in(out: Any, result: KeepMaskResult, spans: str, dtype: torch.dtype):
    """-> (get_video_features stand-in returning the kept rows, stand-in pixels, stand-in grid).

    Video v gets ``s_v`` stand-in pixel rows holding the value v and the grid row
    (s_v, 1, 1), s_v = its placeholder spans that keep a token (1 per video; for
    Qwen3-VL its frames with k_t > 0): HF splits pixel rows per sample by the grid and
    counts videos by the ``<vision_start>`` + placeholder pairs of the (pruned) ids.
    """
    kept = list(result.features.split(result.kept_per_video))
    deep = getattr(out, "deepstack_features", None)
    deep_kept = None if deep is None else [list(result.select_rows(rows).split(result.kept_per_video))
                                           for rows in deepstack_levels(deep)]
    counts = [1 if spans == "video" else sum(1 for k in frames if k > 0) for frames in result.frame_counts]
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

    return get_video_features, pixels, grid
