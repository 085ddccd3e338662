"""The ``forward`` / ``generate`` wrappers of the keep-mask families (Qwen-VL, LLaVA-NeXT-Video).

One adapter, parametrised by a small family object (:mod:`.qwen_vl`,
:mod:`.llava_next_video`) that knows the model's layout: its positions of the
unpruned prompt, its video features as [T, N, D] per video, and how the kept rows are
handed back. What every family shares, and why:

- the sequence length is fixed by ``input_ids`` before the vision encoder runs, so
  the instance's ``forward`` and ``generate`` are replaced by bound methods that present
  the originals' signatures (which ``generate`` inspects) and call them; no HF code is
  copied;
- the prompt is cut with the core's keep mask (:mod:`.keep_mask`): text and every
  kept video token stay, each with its position in the UNPRUNED prompt (computed
  the way the unpatched model computes it), passed explicitly to the original method;
  ``generate`` extends them by last + 1 per step, as it does unpatched;
- the kept rows reach the model through its own ``get_video_features`` call: for
  the duration of the original call the inner model's ``get_video_features`` is an
  instance attribute returning the kept rows (and any per-level side features, e.g.
  Qwen3-VL's deepstack, pruned with the same mask), so the model scatters and uses
  them exactly as unpatched. The call carries stand-in ``pixel_values_videos`` whose
  rows name their video: whatever ``generate`` does for beams or
  ``num_return_sequences`` (repeat pixel rows per sample, or encode first and repeat
  the outputs) maps back to the right videos;
- the hand-over is an instance attribute, so the original calls of one model run one
  at a time (a lock; the pruning itself runs concurrently); a thread's own forward
  steps inside its ``generate`` pass straight through;
- ``generate`` returns the unpruned prompt ids + the new tokens (as unpatched);
  ``forward`` returns logits over the pruned sequence (padding on the input's side),
  labels moved with their rows.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
from typing import Any

import torch

from . import patching
from .keep_mask import KeepMaskResult, prune_to_keep_mask
from .placement import check_attention_mask, infer_padding_side
from .recording import record_stats
from .settings import KVTPSettings, _describe_arg, _fail

__all__ = ["KeepMaskPatch", "install"]


@dataclasses.dataclass
class KeepMaskPatch(patching.Patch):
    """What apply_kvtp keeps on a keep-mask-family model: :class:`.patching.Patch` and the family."""

    family: Any  # the family object (qwen_vl.QwenVL, llava_next_video.LlavaNextVideo)
    #: the thread inside an original call (whose own forward steps pass straight through), or None
    busy: int | None = None
    #: one original call at a time per model: the kept rows are handed over through an instance attribute
    lock: Any = dataclasses.field(default_factory=threading.RLock, repr=False, compare=False)

    def __deepcopy__(self, memo):
        fields = {f.name: copy.deepcopy(getattr(self, f.name), memo) for f in dataclasses.fields(self)
                  if f.name not in ("busy", "lock")}
        return KeepMaskPatch(**fields)


def install(model: Any, family: Any, settings: KVTPSettings, predictor: Any, tokenizer: Any,
            mean: tuple | None, std: tuple | None) -> KeepMaskPatch:
    """Patch the instance's forward / generate (called by apply_kvtp after its checks).

    As for LLaVA-OneVision (:func:`.patching.install_method`): bound methods that find the
    patch and the replaced method through ``self``, so a deep copy is patched on its own.
    """
    patch = KeepMaskPatch(settings, predictor, tokenizer, mean, std, patching.saved_methods(model), family)
    return patching.install_patch(model, patch, _forward, _generate)


# ----------------------------------------------------------------------------------
# Wrappers
# ----------------------------------------------------------------------------------
def _has_pixels(call: dict) -> bool:
    return call.get("pixel_values_videos") is not None


def _video_call(original, args: tuple, kwargs: dict) -> tuple[dict | None, Any, Any]:
    """-> (the call as keywords when it carries video pixels, else None; kvtp_query; kvtp_frames)."""
    if (kwargs.get("mm_encoder_outputs") or {}).get("video") is not None:
        _fail("mm_encoder_outputs", "without a 'video' entry on a model patched by apply_kvtp (KVTP prunes the "
              "features it computes from pixel_values_videos; pass those instead)", "a 'video' entry")
    return patching.video_call(original, args, kwargs, _has_pixels)


def _forward(model, *args, **kwargs):
    patch = model.__dict__[patching.PATCH_ATTR]
    original = patching.original_method(model, "forward")
    if patch.busy == threading.get_ident():  # a step of our own generate: the call is already pruned
        return original(*args, **kwargs)
    call, query, frames = _video_call(original, args, kwargs)
    if call is None:
        return original(*args, **kwargs)
    patching.check_no_cache(call)
    side = infer_padding_side(call.get("attention_mask"))
    user_positions = call.get("position_ids")
    prepared = _prepare(model, patch, call, query, frames, padding_side=side, generating=False)
    result = prepared.result
    positions = prepared.positions if user_positions is None else _check_positions(user_positions, result)
    call["position_ids"] = result.take(positions)
    if call.get("labels") is not None:
        call["labels"] = result.take(call["labels"], pad=-100)
    with prepared.feeding(model, patch):
        return original(**call)


def _generate(model, *args, **kwargs):
    patch = model.__dict__[patching.PATCH_ATTR]
    original = patching.original_method(model, "generate")
    call, query, frames = _video_call(original, args, kwargs)
    if call is None:
        return original(*args, **kwargs)
    patching.check_no_cache(call)
    if call.get("inputs") is not None:
        call["input_ids"] = call.pop("inputs")
    if call.get("position_ids") is not None:
        _fail("position_ids", "None with video input to generate (KVTP computes the positions of the unpruned "
              "prompt itself)", _describe_arg(call["position_ids"]))
    prompt_ids = call.get("input_ids")
    with torch.no_grad():  # as HF's generate
        prepared = _prepare(model, patch, call, query, frames, padding_side="left", generating=True)
    call["position_ids"] = patch.family.generate_positions(prepared.result, prepared.positions)
    patching.count_lengths_from_prompt(model, call, prompt_ids.shape[1])
    with prepared.feeding(model, patch):
        out = original(**call)
    return patching.with_prompt(out, prompt_ids, call["input_ids"].shape[1])


def _check_positions(user: Any, result: KeepMaskResult) -> torch.Tensor:
    B, L = result.keep.shape
    if not isinstance(user, torch.Tensor) or user.dim() not in (2, 3) or tuple(user.shape[-2:]) != (B, L):
        _fail("position_ids", f"[B, L], [3, B, L] or [4, B, L] positions of the unpruned prompt (B, L = {B}, {L})",
              _describe_arg(user))
    return user


# ----------------------------------------------------------------------------------
# Building the pruned call
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class _Prepared:
    result: KeepMaskResult
    positions: torch.Tensor  # positions of the unpruned prompt ([B, L] or M-RoPE [3, B, L])
    feeder: Any  # the get_video_features stand-in

    @contextlib.contextmanager
    def feeding(self, model, patch: KeepMaskPatch):
        """For one original call: the inner get_video_features returns the kept rows; the wrappers pass through."""
        inner = model.model.__dict__
        with patch.lock:
            had, old = "get_video_features" in inner, inner.get("get_video_features")
            inner["get_video_features"] = self.feeder
            patch.busy = threading.get_ident()
            try:
                yield
            finally:
                patch.busy = None
                if had:
                    inner["get_video_features"] = old
                else:
                    inner.pop("get_video_features", None)


def _prepare(model, patch: KeepMaskPatch, call: dict, query: Any, frames: Any, *, padding_side: str,
             generating: bool) -> _Prepared:
    """Prune the call's videos; rewrite ``call`` for the original method; record model.kvtp_stats."""
    family = patch.family
    input_ids = call.get("input_ids")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        _fail("input_ids", "an integer [B, L] tensor with video input (the placeholders and positions come from it)",
              _describe_arg(input_ids))
    if call.get("inputs_embeds") is not None:
        _fail("inputs_embeds", "None with video input (pass input_ids: the positions are computed from them)",
              _describe_arg(call["inputs_embeds"]))
    attention_mask = call.get("attention_mask")
    check_attention_mask(attention_mask)
    config = model.config
    video_mask = input_ids == config.video_token_id
    thw = family.check_inputs(model, call, video_mask)
    with torch.no_grad():
        positions = family.positions(model, call, input_ids, attention_mask, generating)
    out, features = family.features(model, call, thw)
    scores = token_scores = None
    if patch.predictor is not None:
        from .predictor_inputs import predictor_inputs

        scores, token_scores = predictor_inputs(model, patch, call, query, frames, features, input_ids,
                                                attention_mask, video_mask, thw)
    result = prune_to_keep_mask(video_mask, features, attention_mask=attention_mask, scores=scores,
                                token_scores=token_scores, settings=patch.settings, padding_side=padding_side,
                                flops_config=config.text_config)
    record_stats(model, result.stats)

    text = config.text_config
    pad = text.pad_token_id if getattr(text, "pad_token_id", None) is not None else 0
    call["input_ids"] = result.take(input_ids, pad=pad)
    mask = result.attention_mask
    call["attention_mask"] = mask if attention_mask is None else mask.to(attention_mask.dtype)
    family.shorten(model, call, result, positions)
    feeder, stand_ins = family.stand_in(out, result, features[0].dtype)
    call.update(stand_ins)
    return _Prepared(result, positions, feeder)
