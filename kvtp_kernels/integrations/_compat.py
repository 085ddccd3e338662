"""Every difference between the transformers releases this package supports, in one place.

The supported range is ``MIN_TRANSFORMERS`` (5.17) to the newest 5.x release; CI tests
the oldest, the pinned one and the newest (``.ci/run``). Code elsewhere in the package
never compares versions: it calls a helper here, and each helper names the release that
introduced the difference it hides, with a test in ``tests/test_compat.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import torch

#: Oldest transformers release the integrations, the predictor and ``kvtp eval`` support.
MIN_TRANSFORMERS = (5, 17)
MIN_TRANSFORMERS_STR = ".".join(map(str, MIN_TRANSFORMERS))


def parse_version(version: str) -> tuple[int, ...]:
    """``"5.18.0"`` -> ``(5, 18, 0)``; pre-release and local suffixes are dropped (``"5.25.0.dev0"`` -> (5, 25, 0))."""
    parts = []
    for piece in version.split(".")[:3]:
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def require_transformers(feature: str, error: type[Exception] = ImportError):
    """Import transformers, or raise ``error`` naming ``feature``, the installed release and the minimum."""
    try:
        import transformers
    except ImportError as exc:
        raise error(f"{feature} needs transformers >= {MIN_TRANSFORMERS_STR} "
                    "(pip install 'kvtp-kernels[hf]')") from exc
    if parse_version(transformers.__version__)[:2] < MIN_TRANSFORMERS:
        raise error(f"{feature} supports transformers >= {MIN_TRANSFORMERS_STR}; found "
                    f"{transformers.__version__} (pip install -U 'transformers>={MIN_TRANSFORMERS_STR}')")
    return transformers


# ----------------------------------------------------------------------------------
# The differences, one helper each (feature-detected from the installed classes, so a
# backport or a dev build behaves by what it has, not by its version string)
# ----------------------------------------------------------------------------------
def video_features_keyword(get_video_features) -> str:
    """The name of ``get_video_features``' pixel argument.

    5.18.0 renamed it ``pixel_values`` -> ``pixel_values_videos`` (LLaVA-OneVision).
    """
    params = inspect.signature(get_video_features).parameters
    return "pixel_values_videos" if "pixel_values_videos" in params or "pixel_values" not in params else "pixel_values"


def get_video_features(model, pixel_values_videos, **kwargs):
    """``model.get_video_features`` with the pixels passed under the keyword this release uses."""
    return model.get_video_features(**{video_features_keyword(model.get_video_features): pixel_values_videos},
                                    **kwargs)


def transformers_version() -> tuple[int, ...]:
    import transformers

    return parse_version(transformers.__version__)


def video_features_end_with_newline() -> bool:
    """Whether LLaVA-OneVision's ``get_video_features`` appends the per-video ``image_newline``.

    5.18.0 moved that append from the model's ``forward`` into ``get_video_features``: its
    ``pooler_output`` is [V, T*N + 1, D] from 5.18 on and [V, T*N, D] in 5.17 (the one
    difference not visible in a signature, hence the version).
    """
    return transformers_version() >= (5, 18)


#: Keyword names under which a KV cache reaches ``forward``: 5.24.0 renamed ``past_key_values``
#: to ``cache`` (the old name is still accepted, with a deprecation warning, until 5.40).
CACHE_KEYWORDS = ("cache", "past_key_values")


def passed_cache(call: dict):
    """The KV cache a bound ``forward`` call carries, under either name, or None."""
    for name in CACHE_KEYWORDS:
        if call.get(name) is not None:
            return call[name]
    return None


def _field_names(output) -> set[str]:
    return {f.name for f in dataclasses.fields(output)} if dataclasses.is_dataclass(output) else set()


def with_video_features(output, features):
    """A copy of a VLM forward output whose video features are ``features`` (built, never assigned).

    Up to 5.23 the output has a ``video_hidden_states`` field; 5.24.0 replaced it by
    ``video_outputs`` (a ``BaseModelOutputWithPooling``) and made ``video_hidden_states`` a
    read-only property returning ``video_outputs.pooler_output``. Either way the result's
    ``video_hidden_states`` reads ``features``. A tuple output (``return_dict=False``) is
    returned unchanged: it has no named field to hold them.
    """
    names = _field_names(output)
    if "video_outputs" in names:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return dataclasses.replace(output, video_outputs=BaseModelOutputWithPooling(pooler_output=features))
    if "video_hidden_states" in names:
        return dataclasses.replace(output, video_hidden_states=features)
    return output


def video_features_of(output):
    """The video features a VLM forward output carries (``video_outputs.pooler_output`` from 5.24.0,
    ``video_hidden_states`` before; 5.24 warns that the latter's meaning changes in 5.30)."""
    if "video_outputs" in _field_names(output):
        return None if output.video_outputs is None else output.video_outputs.pooler_output
    return output.video_hidden_states


def with_sequences(output, sequences):
    """A copy of a ``generate`` output (a tensor, or a ``GenerateOutput`` dataclass) with new ``sequences``."""
    if isinstance(output, torch.Tensor):
        return sequences
    return dataclasses.replace(output, sequences=sequences)


def deepstack_levels(deepstack_features) -> list[torch.Tensor]:
    """Qwen3-VL's ``deepstack_features`` as one [rows, D] tensor per level (rows of all videos, in order).

    5.18.0 split every level per video (a tuple of [rows_v, D]); 5.17 returns one tensor per level.
    """
    return [torch.cat(list(level)) if isinstance(level, (list, tuple)) else level for level in deepstack_features]


def deepstack_like(deepstack_features, per_video: list[list[torch.Tensor]]) -> list:
    """Per level, V tensors [rows_v, D] -> the layout of this release's ``deepstack_features``
    (a tuple per level from 5.18.0, one concatenated tensor per level in 5.17)."""
    split = isinstance(deepstack_features[0], (list, tuple))
    return [tuple(level) if split else torch.cat(level) for level in per_video]


def frames_by_tokens(pooled: torch.Tensor, num_frames: int) -> torch.Tensor:
    """One video's LLaVA-NeXT-Video ``get_video_features`` rows -> [T, N, D].

    Up to 5.20 each video's ``pooler_output`` entry is [T, N, D]; 5.21.0 flattened it to [T*N, D].
    """
    return pooled.reshape(num_frames, -1, pooled.shape[-1])
