"""What the integrations share: the pruning settings, the accounting and the results.

:class:`KVTPSettings` is checked on construction with the checks of
:func:`kvtp_kernels.prune` (:mod:`kvtp_kernels.options`); :class:`KVTPStats` is the
accounting of one call, :class:`VideoPlacement` where the videos sit in a batch and
:class:`VideoPruneResult` what :func:`~kvtp_kernels.integrations.core.prune_video_inputs`
returns.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import torch

from .. import options
from .._errors import describe as _describe
from .._errors import fail
from ..api import PrunedTokens
from ..options import ALLOCATIONS, BACKENDS, LAYOUTS, MERGES, METHODS
from ..pack import PackedInputs

__all__ = ["KVTPSettings", "KVTPStats", "VideoPlacement", "VideoPruneResult", "count_prefill_flops",
           "resolve_settings"]


_fail = functools.partial(fail, "kvtp_kernels.integrations")
#: :func:`describe` without the device, for the messages about a call's arguments (dtype and shape)
_describe_arg = functools.partial(_describe, device=False)


@dataclasses.dataclass(frozen=True)
class KVTPSettings:
    """How videos are pruned (checked on construction; the meaning is :func:`kvtp_kernels.prune`'s).

    Attributes:
        budget: float in (0, 1]: keep ``K = floor(beta*T*N + 1/2)`` of each video's
            T*N tokens; int >= 1: keep K tokens per video (must be <= T*N).
        temperature: tau of ``softmax(s / tau)`` over frame scores (> 0).
        allocation: "exact" or "paper".
        min_tokens_per_frame: m >= 0.
        layout: newlines in the pruned video block: "video" (one after the video,
            HF LlavaOnevision), "grid" (after each grid row that kept a token,
            original LLaVA-Video), "frame" (after each frame) or "none".
        backend: None (by device), "reference", "cpu" or "triton".
        method: the within-frame method: "topk", "prumerge" (needs token scores,
            e.g. a predictor's token importance), "tome" or "random".
        merge: prumerge's fold, "paper" or "mean".
        num_neighbors: prumerge's neighbours per kept token (None: min(32, N-1)).
    """

    budget: float | int = 0.2
    temperature: float = 2.0
    allocation: str = "exact"
    min_tokens_per_frame: int = 0
    layout: str = "video"
    backend: str | None = None
    method: str = "topk"
    merge: str = "paper"
    num_neighbors: int | None = None

    def __post_init__(self):
        # the same checks as kvtp_kernels.prune's (options.py); numbers stored as Python ints / floats
        def store(name, value):  # frozen: normalised values are set once, here
            object.__setattr__(self, name, value)

        store("budget", options.check_budget(_fail, self.budget))
        store("temperature", options.check_temperature(_fail, self.temperature))
        options.check_choice(_fail, "allocation", self.allocation, ALLOCATIONS)
        store("min_tokens_per_frame", options.check_min_tokens(_fail, self.min_tokens_per_frame))
        options.check_choice(_fail, "layout", self.layout, LAYOUTS)
        options.check_choice(_fail, "backend", self.backend, BACKENDS, allow_none=True)
        options.check_choice(_fail, "method", self.method, METHODS)
        options.check_choice(_fail, "merge", self.merge, MERGES)
        store("num_neighbors", options.check_num_neighbors(_fail, self.num_neighbors))


def resolve_settings(settings: KVTPSettings | None) -> KVTPSettings:
    """``settings``, or the defaults for None; anything else is an error."""
    settings = settings if settings is not None else KVTPSettings()
    if not isinstance(settings, KVTPSettings):
        _fail("settings", "a KVTPSettings", _describe(settings))
    return settings


@dataclasses.dataclass
class KVTPStats:
    """Accounting of one call (per sample and per video; plain Python numbers).

    Attributes:
        sequence_lengths_before: [B] tokens the LLM would see unpruned (non-padding).
        sequence_lengths_after: [B] tokens it sees after KVTP.
        video_tokens_before: [V] placeholder tokens of each video (its unpruned block).
        video_tokens_after: [V] kept tokens + newlines of each video.
        kept_per_frame: [V][T_v] tokens kept in each frame.
        sample_to_video: [B] video of each sample, -1 for none.
        prefill_flops_before / prefill_flops_after: LLM prefill FLOPs summed over the
            samples (:func:`~kvtp_kernels.integrations.flops.prefill_flops`, causal,
            no lm_head), or None when no config was given.
    """

    sequence_lengths_before: list[int]
    sequence_lengths_after: list[int]
    video_tokens_before: list[int]
    video_tokens_after: list[int]
    kept_per_frame: list[list[int]]
    sample_to_video: list[int]
    prefill_flops_before: int | None = None
    prefill_flops_after: int | None = None

    @property
    def tokens_before(self) -> int:
        return sum(self.sequence_lengths_before)

    @property
    def tokens_after(self) -> int:
        return sum(self.sequence_lengths_after)

    @property
    def token_ratio(self) -> float:
        """LLM tokens after / before, whole batch."""
        return self.tokens_after / max(self.tokens_before, 1)

    @property
    def video_token_ratio(self) -> float:
        """Video tokens (with newlines) after / before, whole batch."""
        return sum(self.video_tokens_after) / max(sum(self.video_tokens_before), 1)

    @property
    def flops_ratio(self) -> float | None:
        """LLM prefill FLOPs after / before, or None without a config."""
        if self.prefill_flops_before is None or self.prefill_flops_after is None:
            return None
        return self.prefill_flops_after / max(self.prefill_flops_before, 1)

    def summary(self) -> str:
        text = (f"KVTP: {self.tokens_before} -> {self.tokens_after} LLM tokens ({self.token_ratio:.1%}); "
                f"video tokens {sum(self.video_tokens_before)} -> {sum(self.video_tokens_after)}")
        if self.flops_ratio is not None:
            text += (f"; prefill {self.prefill_flops_before / 1e9:.3g} -> {self.prefill_flops_after / 1e9:.3g} "
                     f"GFLOPs ({self.flops_ratio:.1%})")
        return text


def count_prefill_flops(stats: KVTPStats, flops_config: Any) -> KVTPStats:
    """Fill ``stats``' prefill FLOPs from the sequence lengths (nothing for a None config)."""
    if flops_config is not None:
        from .flops import prefill_flops

        stats.prefill_flops_before = sum(prefill_flops(flops_config, n) for n in stats.sequence_lengths_before)
        stats.prefill_flops_after = sum(prefill_flops(flops_config, n) for n in stats.sequence_lengths_after)
    return stats


class VideoPlacement(NamedTuple):
    """Where the videos sit in the batch (host lists, from :func:`~kvtp_kernels.integrations.locate_videos`).

    Attributes:
        sample_to_video: [B] video index of each sample, -1 for a sample without one.
        span_lengths: [B] placeholder positions of each sample (0 without video).
        text_lengths: [B] non-padding positions of each sample (placeholders included).
        first_positions: [B] index of each sample's first non-padding position.
    """

    sample_to_video: list[int]
    span_lengths: list[int]
    text_lengths: list[int]
    first_positions: list[int]


class VideoPruneResult(NamedTuple):
    """What :func:`~kvtp_kernels.integrations.prune_video_inputs` returns.

    Attributes:
        inputs_embeds: [B, L', D], dtype of the input embeddings; padding rows are zeros.
        attention_mask: [B, L'], 1 on tokens, 0 on padding (dtype of the given mask, int64 without).
        position_ids: int64 [B, L']: 0, 1, ... over each sample's tokens, 0 on padding.
        labels: [B, L'] text labels moved with their rows (``ignore_index`` on video,
            newline and padding rows), or None.
        pruned: the :class:`~kvtp_kernels.api.PrunedTokens` of all videos ([V, T_max]
            frame counts; shorter videos have trailing zero-count frames).
        packed: the :class:`~kvtp_kernels.pack.PackedInputs` (``source_index`` maps every
            output row back to its text position / video row; see ``kvtp_kernels.unpack``).
        stats: :class:`KVTPStats`.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    pruned: PrunedTokens
    packed: PackedInputs
    stats: KVTPStats
