"""How ``apply_kvtp`` patches one model instance, for every family alike.

The instance's ``forward`` and ``generate`` are replaced by bound methods
(:func:`install_method`) that find the family's patch object and the replaced method
through ``self`` at every call (:func:`original_method`): ``copy.deepcopy`` re-binds
them to the copy, so a copy runs its own weights and can be unpatched on its own.
:func:`remove_kvtp` restores what :func:`saved_methods` recorded, exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from typing import Any

import torch

from ._compat import passed_cache, with_sequences
from .recording import STATS_ATTR

__all__ = ["KVTP_KWARGS", "PATCH_ATTR", "Patch", "bind_call", "check_no_cache", "count_lengths_from_prompt",
           "from_processor", "install_method", "install_patch", "is_kvtp_applied", "original_method", "remove_kvtp",
           "saved_methods", "video_call", "with_prompt"]

#: Extra keyword arguments the patched forward / generate accept.
KVTP_KWARGS = ("kvtp_query", "kvtp_frames")
#: The instance attribute holding the family's patch object (which has ``saved``).
PATCH_ATTR = "_kvtp_patch"
PATCHED_METHODS = ("forward", "generate")


@dataclasses.dataclass
class Patch:
    """What apply_kvtp keeps on a model, every family alike (a plain object: the predictor is not a submodule).

    A family's patch adds its own fields after these.
    """

    settings: Any  # the KVTPSettings
    predictor: Any
    tokenizer: Any
    pixel_mean: tuple[float, ...] | None
    pixel_std: tuple[float, ...] | None
    saved: dict[str, tuple[bool, Any]]  # method -> (the instance had its own attribute, its value)


def install_patch(model: Any, patch: Patch, forward, generate) -> Patch:
    """Keep ``patch`` on the instance and replace its forward / generate by ``forward`` / ``generate``."""
    model.__dict__[PATCH_ATTR] = patch
    model.__dict__[STATS_ATTR] = None
    install_method(model, "forward", forward)
    install_method(model, "generate", generate)
    return patch


def saved_methods(model: Any) -> dict[str, tuple[bool, Any]]:
    """method -> (the instance had its own attribute, its value): what remove_kvtp restores."""
    return {name: (name in model.__dict__, model.__dict__.get(name)) for name in PATCHED_METHODS}


def install_method(model, name: str, body) -> None:
    """``model.<name>`` = ``body`` bound to the instance, presenting the replaced method's signature.

    A bound method (not a closure over the instance): ``copy.deepcopy`` re-binds it to the
    copy, and ``body`` finds the patch and the replaced method through ``self`` at every
    call, so a deep copy runs its own weights (and can be unpatched on its own).
    """
    current = getattr(model, name)
    signature = inspect.signature(current)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)

    @functools.wraps(current)
    def method(self, *args, **kwargs):
        return body(self, *args, **kwargs)

    del method.__wrapped__  # the signature below is the truth, not the bound original's
    method.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])
    model.__dict__[name] = types.MethodType(method, model)


def original_method(model, name: str):
    """The method apply_kvtp replaced, bound to ``model``."""
    had_own, value = model.__dict__[PATCH_ATTR].saved[name]
    return value if had_own else getattr(type(model), name).__get__(model, type(model))


def bind_call(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Positional and keyword arguments of a call -> one keyword dict (its ``**kwargs`` flattened)."""
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
    return call


def video_call(original, args: tuple, kwargs: dict, has_video) -> tuple[dict[str, Any] | None, Any, Any]:
    """A patched call -> (its arguments as keywords if ``has_video`` of them, else None; kvtp_query, kvtp_frames).

    The :data:`KVTP_KWARGS` are popped from ``kwargs``. A call with keywords only and no
    video among them (e.g. every decoding step) is not bound: no signature lookup.
    """
    query, frames = (kwargs.pop(key, None) for key in KVTP_KWARGS)
    if not args and not has_video(kwargs):
        return None, query, frames
    call = bind_call(inspect.signature(original), args, kwargs)
    return (call if has_video(call) else None), query, frames


def check_no_cache(call: dict) -> None:
    """Video input needs an empty cache: the pruned prompt must be the first thing in it."""
    cache = passed_cache(call)
    if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
        raise ValueError("kvtp_kernels.integrations: video input with a non-empty `past_key_values` is not "
                         "supported (the pruned prompt must be the first thing in the cache); use generate(), "
                         "or run the video prompt first")


def with_prompt(out: Any, prompt_ids: torch.Tensor, new_from: int) -> Any:
    """``generate``'s output with the unpruned prompt ids before its new tokens (columns from ``new_from``)."""
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    repeat = sequences.shape[0] // prompt_ids.shape[0]  # num_return_sequences / beams
    prompt = prompt_ids.to(sequences.device).repeat_interleave(repeat, dim=0)
    return with_sequences(out, torch.cat([prompt, sequences[:, new_from:]], dim=1))


def remove_kvtp(model: Any) -> Any:
    """Undo :func:`apply_kvtp`: the instance's ``forward`` / ``generate`` are what they were, no attribute is left.

    Raises:
        ValueError: the model is not patched.
    """
    patch = getattr(model, "__dict__", {}).get(PATCH_ATTR)
    if patch is None:
        raise ValueError("kvtp_kernels.integrations.remove_kvtp: `model` is not patched by apply_kvtp")
    for name, (had_own, value) in patch.saved.items():
        if had_own:
            model.__dict__[name] = value
        else:
            model.__dict__.pop(name, None)
    model.__dict__.pop(PATCH_ATTR)
    model.__dict__.pop(STATS_ATTR, None)
    return model


def is_kvtp_applied(model: Any) -> bool:
    """Whether :func:`apply_kvtp` patched this instance."""
    return PATCH_ATTR in getattr(model, "__dict__", {})


def count_lengths_from_prompt(model, call: dict, prompt_len: int) -> None:
    """``max_length`` / ``min_length`` count the prompt: keep counting the unpruned one."""
    config = call.get("generation_config")

    def setting(name):
        if call.get(name) is not None:
            return call[name]
        if config is not None and getattr(config, name, None) is not None:
            return getattr(config, name)
        return getattr(model.generation_config, name, None)

    if setting("max_new_tokens") is None and (max_length := setting("max_length")) is not None:
        if max_length <= prompt_len:
            raise ValueError(f"Input length of input_ids is {prompt_len}, but `max_length` is set to {max_length}. "
                             "Increase `max_length` or, better yet, set `max_new_tokens`.")
        call.pop("max_length", None)
        call["max_new_tokens"] = max_length - prompt_len
    if setting("min_new_tokens") is None and (min_length := setting("min_length")):
        call.pop("min_length", None)
        call["min_new_tokens"] = max(min_length - prompt_len, 0)


def from_processor(processor: Any) -> tuple[Any, tuple | None, tuple | None]:
    """-> (tokenizer or None, pixel mean, pixel std) of a processor / tokenizer / None."""
    if processor is None:
        return None, None, None
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None and callable(getattr(processor, "decode", None)):
        tokenizer = processor
    mean = std = None
    for source in (getattr(processor, "video_processor", None), getattr(processor, "image_processor", None),
                   processor):
        m, s = getattr(source, "image_mean", None), getattr(source, "image_std", None)
        if source is not None and m is not None and s is not None:
            mean, std = tuple(float(x) for x in m), tuple(float(x) for x in s)
            break
    if tokenizer is None and mean is None:
        raise TypeError(f"kvtp_kernels.integrations.apply_kvtp: `processor` must be an HF processor or tokenizer "
                        f"(with a tokenizer, or image_mean/image_std); got {type(processor).__name__}")
    return tokenizer, mean, std
