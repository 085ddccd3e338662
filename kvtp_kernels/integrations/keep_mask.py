"""The core's keep-mask path: prune videos to a keep mask over the prompt, keep every kept token's original position.

:func:`~kvtp_kernels.integrations.core.prune_video_inputs` replaces one placeholder
span per sample by the pruned video and renumbers positions 0..L'. Models whose
positions are not the token index (M-RoPE in the Qwen-VL family: a video token sits
at (t, h, w), text after a video continues at start + max(h', w')) and models whose
placeholders are split (Qwen3-VL: one span per frame, timestamps between) need
another cut, which this module makes:

    inputs:  the placeholder mask [B, L] (any number of spans per sample, any
             layout), the attention mask, and the features of V videos in the order
             ``masked_scatter`` fills the placeholders (batch-major), each
             [T_v, N_v, D] (frame count and tokens per frame may differ per video).
    output:  a keep mask [B, L] (text: every non-padding position; video: the kept
             tokens), the kept features [sum K_v, D] in placeholder order, and a
             left- (or right-) padded re-batching ``index`` [B, L'] of the kept
             positions, with which the caller gathers anything aligned with the
             prompt: ``input_ids``, ``mm_token_type_ids``, labels, and the positions
             computed on the UNPRUNED prompt (1-D [B, L] or M-RoPE [3, B, L]), so
             that every kept token keeps its original position (:meth:`KeepMaskResult.take`).

Videos are pruned with :func:`kvtp_kernels.prune`, one call per distinct shape
(T_v, N_v). Merging methods (prumerge, tome) give each kept row the position of its
representative token. Per-level side features (Qwen3-VL's deepstack) are pruned
with the same mask by :meth:`KeepMaskResult.select_rows`.

Host syncs: one per call for the placeholder count, one per shape group for the
per-video row offsets and frame counts, one for the lengths of the re-batched prompt.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from .._errors import describe as _describe
from .placement import token_mask
from .pruning import check_video_scores, prune_by_shape
from .settings import KVTPSettings, KVTPStats, _fail, count_prefill_flops, resolve_settings

__all__ = ["KeepMaskResult", "prune_to_keep_mask"]


@dataclasses.dataclass
class KeepMaskResult:
    """What :func:`prune_to_keep_mask` returns.

    Attributes:
        keep: bool [B, L], True at the positions the LLM still sees (padding is False).
        index: int64 [B, L'], source position of each output position (0 on padding).
        attention_mask: int64 [B, L'], 1 on kept positions, 0 on padding.
        features: [sum K_v, D] kept (or merged) video rows in placeholder order.
        video_rows: int64 [sum K_v], each kept row's index into the concatenated
            unpruned rows of all videos (sum T_v*N_v; the representative for merges).
        kept_per_video: V ints K_v.
        frame_counts: V int lists [T_v]: tokens kept in each frame.
        stats: :class:`~kvtp_kernels.integrations.core.KVTPStats`.
    """

    keep: torch.Tensor
    index: torch.Tensor
    attention_mask: torch.Tensor
    features: torch.Tensor
    video_rows: torch.Tensor
    kept_per_video: list[int]
    frame_counts: list[list[int]]
    stats: KVTPStats

    def take(self, value: torch.Tensor, pad: int | float = 0) -> torch.Tensor:
        """Re-batch a prompt-aligned tensor [..., B, L] (ids, positions [3, B, L], labels) -> [..., B, L'].

        Padding positions get ``pad``.
        """
        B, L = self.keep.shape
        if not isinstance(value, torch.Tensor) or value.dim() < 2 or tuple(value.shape[-2:]) != (B, L):
            _fail("value", f"a [..., B, L] = [..., {B}, {L}] tensor aligned with the prompt", _describe(value))
        index = self.index.to(value.device).expand(*value.shape[:-2], *self.index.shape)
        out = value.gather(-1, index)
        return out.masked_fill(self.attention_mask.to(value.device).eq(0), pad)

    def select_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows [sum T_v*N_v, ...] aligned with the unpruned video features -> the kept ones [sum K_v, ...]."""
        if not isinstance(rows, torch.Tensor) or rows.dim() < 1:
            _fail("rows", "a tensor with one row per unpruned video token", _describe(rows))
        return rows.index_select(0, self.video_rows.to(rows.device))


def prune_to_keep_mask(
    video_mask: torch.Tensor,
    video_features: Sequence[torch.Tensor],
    *,
    attention_mask: torch.Tensor | None = None,
    scores: torch.Tensor | Sequence[torch.Tensor] | None = None,
    token_scores: torch.Tensor | Sequence[torch.Tensor] | None = None,
    settings: KVTPSettings | None = None,
    padding_side: str = "left",
    flops_config: Any = None,
) -> KeepMaskResult:
    """Prune every video and return the keep mask over the prompt, the kept rows and the re-batching.

    Args:
        video_mask: [B, L] bool/int, nonzero at video placeholder positions (any
            number of spans per sample; filled batch-major by the videos in order).
        video_features: V tensors [T_v, N_v, D] (frame unit x tokens per frame),
            rows in the order of their placeholders.
        attention_mask: [B, L] (1 = token) or None; placeholders must be inside it.
        scores: frame logits, V tensors [T_v] (or [V, T]); None: uniform.
        token_scores: within-frame importance, V tensors [T_v, N_v]; None: distinctiveness.
        settings: :class:`~kvtp_kernels.integrations.core.KVTPSettings` (its layout is not used).
        padding_side: "left" (what generation needs) or "right" for the re-batched prompt.
        flops_config: an LLM config for the FLOPs accounting (None: no FLOPs).

    Raises:
        ValueError: naming the argument: shapes, a placeholder count that differs
            from the videos' T_v*N_v, placeholders outside the attention mask.
    """
    settings = resolve_settings(settings)
    if padding_side not in ("left", "right"):
        _fail("padding_side", "'left' or 'right'", repr(padding_side))
    vmask, tmask, features = _check_inputs(video_mask, attention_mask, video_features)
    score_list, token_list = check_video_scores(features, scores, token_scores, unit="frame unit", tokens="N_v")
    sizes = [f.shape[0] * f.shape[1] for f in features]
    _check_placeholders(vmask, tmask, sizes)

    per_video = prune_by_shape(features, score_list, token_list, settings)
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    rows = torch.cat([local.to(vmask.device) + offsets[v] for v, (_, local, _) in enumerate(per_video)])
    keep = _keep(vmask, tmask, rows, offsets[-1])
    index, new_mask, host = _rebatch(keep, vmask, tmask, padding_side)

    kept = torch.cat([tokens for tokens, _, _ in per_video])
    kept_per_video = [tokens.shape[0] for tokens, _, _ in per_video]
    frame_counts = [counts for _, _, counts in per_video]
    video_of_sample = _first_video_per_sample(host[2], offsets)
    stats = count_prefill_flops(KVTPStats(host[1], host[0], sizes, kept_per_video, frame_counts, video_of_sample),
                                flops_config)
    return KeepMaskResult(keep, index, new_mask, kept, rows, kept_per_video, frame_counts, stats)


def _check_inputs(video_mask, attention_mask, video_features) -> tuple[torch.Tensor, torch.Tensor, list]:
    """-> (placeholder mask, token mask: bool [B, L] on the placeholder mask's device; V features [T_v, N_v, D])."""
    if not isinstance(video_mask, torch.Tensor) or video_mask.dim() != 2:
        _fail("video_mask", "a [B, L] tensor", _describe(video_mask))
    vmask = video_mask.ne(0)
    tmask = token_mask(attention_mask, vmask)
    if not isinstance(video_features, (list, tuple)) or len(video_features) == 0:
        _fail("video_features", "a non-empty sequence of [T_v, N_v, D] tensors", _describe(video_features))
    features = list(video_features)
    D = None
    for v, f in enumerate(features):
        if not isinstance(f, torch.Tensor) or f.dim() != 3 or not f.is_floating_point() or min(f.shape) == 0 or (
                D is not None and f.shape[-1] != D):
            _fail(f"video_features[{v}]", "a non-empty float [T_v, N_v, D] tensor" + (f" with D = {D}" if D else ""),
                  _describe(f))
        D = f.shape[-1]
    return vmask, tmask, features


def _check_placeholders(vmask: torch.Tensor, tmask: torch.Tensor, sizes: list[int]) -> None:
    """As many placeholders as the videos' T_v*N_v, all inside the attention mask (one host read)."""
    placeholders, outside = torch.stack([vmask.sum(), (vmask & ~tmask).sum()]).tolist()
    if placeholders != sum(sizes):
        _fail("input_ids", f"{sum(sizes)} video placeholder tokens (the videos' T_v*N_v = {sizes})",
              f"{placeholders}")
    if outside:
        _fail("attention_mask", "1 on every video placeholder position", f"{outside} placeholders masked out")


def _keep(vmask: torch.Tensor, tmask: torch.Tensor, rows: torch.Tensor, total: int) -> torch.Tensor:
    """bool [B, L]: every token, less the placeholders whose video row (of ``total``) is not in ``rows``."""
    flags = torch.zeros(total, dtype=torch.bool, device=vmask.device)
    flags[rows] = True
    keep = tmask.clone()
    keep[vmask] = flags
    return keep


def _rebatch(keep: torch.Tensor, vmask: torch.Tensor, tmask: torch.Tensor,
             padding_side: str) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """-> (index [B, L'], attention mask [B, L'], host [kept, tokens, placeholders] per sample)."""
    B = keep.shape[0]
    device = keep.device
    lengths = keep.sum(1)
    before = tmask.sum(1)
    host = torch.stack([lengths, before, vmask.sum(1)]).tolist()
    L_out = max(host[0]) if B else 0
    start = (L_out - lengths) if padding_side == "left" else torch.zeros_like(lengths)
    b_idx, l_idx = keep.nonzero(as_tuple=True)
    col = keep.long().cumsum(1)[b_idx, l_idx] - 1 + start[b_idx]
    index = torch.zeros((B, L_out), dtype=torch.long, device=device)
    new_mask = torch.zeros((B, L_out), dtype=torch.long, device=device)
    index[b_idx, col] = l_idx
    new_mask[b_idx, col] = 1
    return index, new_mask, host


def _first_video_per_sample(placeholders_per_sample: list[int], offsets: list[int]) -> list[int]:
    """[B] the first video whose placeholders start in each sample (-1 for none); ``offsets``: [V+1]."""
    out, filled = [], 0
    for count in placeholders_per_sample:
        out.append(bisect.bisect_left(offsets, filled) if count else -1)
        filled += count
    return out
