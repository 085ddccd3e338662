"""Pruning V videos with one :class:`~.settings.KVTPSettings`: per-video arguments, their checks, one prune per shape.

Shared by the core's two cuts (:func:`~.core.prune_video_inputs` and
:func:`~.keep_mask.prune_to_keep_mask`): videos of the same shape (T, N) are
stacked into one :func:`kvtp_kernels.prune` call.
"""

from __future__ import annotations

from typing import Any

import torch

from .._errors import describe as _describe
from ..api import PrunedTokens, prune
from .settings import KVTPSettings, _fail

__all__ = ["check_video_scores", "group_by_shape", "per_video", "prune_by_shape", "prune_group"]


def per_video(arg: str, value: Any, num_videos: int) -> list:
    """A [V, ...] tensor or a sequence of V items -> a list of V items."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != num_videos:
            _fail(arg, f"a [V, ...] tensor or a sequence of V = {num_videos} entries (one per video)",
                  _describe(value))
        return list(value.unbind(0))
    if isinstance(value, (list, tuple)):
        if len(value) != num_videos:
            _fail(arg, f"one entry per video (V = {num_videos})", f"{len(value)} entries")
        return list(value)
    _fail(arg, "a tensor or a sequence of per-video tensors", _describe(value))


def check_video_scores(features: list[torch.Tensor], scores: Any, token_scores: Any, *, unit: str,
                       tokens: str) -> tuple[list | None, list | None]:
    """Frame scores [T_v] and token scores [T_v, N_v] of each video [T_v, N_v, D] -> two lists (or None).

    ``unit`` names what a score is for ("frame", "frame unit"), ``tokens`` the token count ("N", "N_v").
    """
    V = len(features)
    score_list = None if scores is None else per_video("scores", scores, V)
    token_list = None if token_scores is None else per_video("token_scores", token_scores, V)
    for v, f in enumerate(features):
        T, N = f.shape[:2]
        if score_list is not None and (not isinstance(score_list[v], torch.Tensor)
                                       or tuple(score_list[v].shape) != (T,)):
            _fail(f"scores[{v}]", f"a [T_v = {T}] tensor (one score per {unit} of video {v})",
                  _describe(score_list[v]))
        if token_list is not None and (not isinstance(token_list[v], torch.Tensor)
                                       or tuple(token_list[v].shape) != (T, N)):
            _fail(f"token_scores[{v}]", f"a [T_v, {tokens}] = [{T}, {N}] tensor (video {v})",
                  _describe(token_list[v]))
    return score_list, token_list


def group_by_shape(features: list[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    """(T, N) -> the videos [T, N, D] of that shape, in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for v, f in enumerate(features):
        groups.setdefault((f.shape[0], f.shape[1]), []).append(v)
    return groups


def prune_group(features: list[torch.Tensor], ids: list[int], scores: list | None, token_scores: list | None,
                settings: KVTPSettings) -> PrunedTokens:
    """One :func:`kvtp_kernels.prune` call over the videos ``ids`` (one shape); no scores: uniform frames."""
    tokens = torch.stack([features[v] for v in ids])
    device = tokens.device
    T = tokens.shape[1]
    if scores is None:
        s = torch.zeros((len(ids), T), dtype=torch.float32, device=device)  # uniform frame probabilities
    else:
        s = torch.stack([scores[v].to(device) for v in ids])
    ts = None  # tome and random choose tokens without scores
    if token_scores is not None and settings.method in ("topk", "prumerge"):
        ts = torch.stack([token_scores[v].to(device) for v in ids])
    merge_kw = dict(merge=settings.merge, num_neighbors=settings.num_neighbors) if settings.method == "prumerge" \
        else {}
    return prune(tokens, s, settings.budget, token_scores=ts, temperature=settings.temperature,
                 allocation=settings.allocation, min_tokens_per_frame=settings.min_tokens_per_frame,
                 method=settings.method, backend=settings.backend, **merge_kw)


def prune_by_shape(features: list[torch.Tensor], scores: list | None, token_scores: list | None,
                   settings: KVTPSettings) -> list[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """Prune V videos [T_v, N_v, D], one :func:`prune_group` per shape -> per video (kept rows [K_v, D],
    local indices [K_v] into its T_v*N_v rows, host list of the tokens kept in each of its T_v frames).

    One host read per shape group (the per-video row offsets and frame counts).
    """
    out: list[Any] = [None] * len(features)
    for (T, N), ids in group_by_shape(features).items():
        pruned = prune_group(features, ids, scores, token_scores, settings)
        G = len(ids)
        host = torch.cat([pruned.cu_seqlens, pruned.frame_counts.reshape(-1)]).tolist()
        for j, v in enumerate(ids):
            lo, hi = host[j], host[j + 1]
            counts = host[G + 1 + j * T:G + 1 + (j + 1) * T]
            out[v] = (pruned.tokens[lo:hi], pruned.indices[lo:hi] - j * T * N, counts)
    return out
