"""Baselines for ``kvtp_kernels.prune``, written here, each equal to ours on benchmark data.

All three compute the same thing as ``kvtp_kernels.prune(tokens, scores, budget,
token_scores=..., allocation="exact")``: exact-mode keep counts (METHOD.md section 2),
the top-k tokens of each frame (section 3), packed in (video, frame, raster) order
(section 4). Each returns ``(tokens [B*K, D], indices int64 [B*K], frame_counts int32
[B, T])``, the first three fields of ``PrunedTokens``.

- :func:`prune_naive`: what the KVTP authors' code does (``llava_arch.py``:
  ``calculate_relevance`` + ``prumerge`` / ``add_token_per_grid_prune``): a Python loop
  over frames; per frame, the keep count moved to a Python int (a device-to-host sync
  per frame, like their ``int(N * rate)``), one ``torch.topk``, a gather of the kept
  rows; ``torch.cat`` at the end. Two changes make it equal to ours: the counts are our
  exact-mode counts (``keep_counts(..., backend="reference")``, vectorised, on the
  device) instead of their ``floor(N * min(r, 1))``, and the top-k indices are sorted
  so kept rows come out in raster order (they emit score order). ``index_select``
  replaces their ``gather`` with an expanded index (same result, a little faster).
- :func:`prune_torch`: the best vectorised PyTorch we could write, no Python loop and
  no host sync: counts from the reference's vectorised allocation (float64, [B, T]),
  one stable descending sort of the token scores, the kept mask scattered back to
  raster positions, ``torch.nonzero_static`` (the output size B*K is known, so no sync)
  and one ``index_select``.
- :func:`compile_prune_torch`: ``torch.compile(prune_torch, dynamic=False)``.

Ties: ``torch.topk`` does not promise which of two equal scores it keeps, while ours
keeps the lower index. The benchmark therefore uses token scores without ties (a random
permutation of 0..B*T*N-1, or the distinctiveness of random Gaussian tokens, whose
float64 values are distinct in practice); the correctness check before timing would
catch a tie resolved differently. :func:`prune_torch` resolves ties like ours (stable
sort). Neither handles NaN token scores like ours (ours ranks NaN lowest); benchmark
data has none.

Roofs (:func:`roof_index_select`, :func:`roof_clone`): the least any prune can do once
the kept rows are known: one gather of those rows, and on GPU a ``clone()`` of the
same number of contiguous bytes (the practical bandwidth roof).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import kvtp_kernels
from kvtp_kernels import reference as ref

PruneOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def prune_naive(
    tokens: torch.Tensor,
    scores: torch.Tensor,
    budget: float | int,
    token_scores: torch.Tensor | None = None,
    temperature: float = 2.0,
) -> PruneOutput:
    """Per-frame Python loop in the style of the KVTP authors' code (see module docstring).

    Args:
        tokens: [B, T, N, D]. scores: [B, T]. budget: ratio or K, as for ``prune``.
        token_scores: [B, T, N] without ties, or None for the distinctiveness score,
            computed frame by frame.
    """
    B, T, N, _ = tokens.shape
    counts = kvtp_kernels.keep_counts(scores, budget, N, temperature=temperature, backend="reference")
    kept_rows, kept_indices = [], []
    for b in range(B):
        for t in range(T):
            k = int(counts[b, t])  # host sync, once per frame (the authors: int(N * rate_list[t]))
            frame = tokens[b, t]
            frame_scores = token_scores[b, t] if token_scores is not None else ref.distinctiveness_ref(frame)
            _, top = torch.topk(frame_scores, k)
            top = top.sort().values  # raster order, as ours emits
            kept_rows.append(frame.index_select(0, top))
            kept_indices.append(top + (b * T + t) * N)
    return torch.cat(kept_rows), torch.cat(kept_indices), counts


def prune_torch(
    tokens: torch.Tensor,
    scores: torch.Tensor,
    budget_tokens: int,
    token_scores: torch.Tensor | None = None,
    temperature: float = 2.0,
) -> PruneOutput:
    """Vectorised PyTorch, no Python loop, no host sync (see module docstring).

    Args:
        tokens: [B, T, N, D], contiguous. scores: [B, T].
        budget_tokens: K, kept tokens per video (an int, so the output size is static).
        token_scores: [B, T, N] or None for the distinctiveness score.
    """
    B, T, N, D = tokens.shape
    counts = ref.exact_counts_ref(ref.frame_probs_ref(scores, temperature), budget_tokens, N, 0)
    if token_scores is None:
        token_scores = ref.distinctiveness_ref(tokens)  # float64, as ours: the ranking must match
    order = torch.sort(token_scores, dim=-1, descending=True, stable=True).indices  # ties: lower index first
    in_top = torch.arange(N, device=tokens.device) < counts.unsqueeze(-1)  # [B, T, N] by rank
    keep = torch.empty_like(in_top).scatter_(-1, order, in_top)  # by raster position
    indices = torch.nonzero_static(keep.reshape(-1), size=B * budget_tokens).squeeze(-1)
    return tokens.reshape(B * T * N, D).index_select(0, indices), indices, counts


def compile_prune_torch() -> Callable[..., PruneOutput]:
    """``torch.compile`` of :func:`prune_torch`, one graph per shape (``dynamic=False``).

    Dynamo's caches are reset first, so each sweep point compiles afresh instead of
    piling recompilations onto one code object until dynamo's recompile limit makes it
    fall back to eager without saying so. Compilation happens on the first call (the
    harness keeps it out of the timed region and reports it as setup time).
    """
    torch._dynamo.reset()
    return torch.compile(prune_torch, dynamic=False)


def roof_index_select(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The minimum copy: gather the kept rows, indices already known. tokens: [B, T, N, D] contiguous."""
    return tokens.reshape(-1, tokens.shape[-1]).index_select(0, indices)


def roof_clone(source: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of as many bytes as the kept rows (the practical bandwidth roof on GPU)."""
    return source.clone()
