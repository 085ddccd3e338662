"""Within-frame methods beyond top-k (METHOD.md section 3): ToMe, batched.

:func:`tome_merge` runs bipartite soft matching in every frame of the batch at once,
with no Python loop over frames and no host sync, on any device. It follows
:func:`kvtp_kernels.reference.tome_ref` (the literal per-frame oracle) decision for
decision; the speed comes from three observations:

- the frames run in lockstep for a fixed number of rounds, ``ceil(log2 N) + 1``: each
  round merges ``r = min(n - k, |A|)`` tokens of a frame with n > k, which at least
  halves the excess, and a finished frame merges nothing (``r = 0``);
- the keys never need re-reading: merging is linear, so the Gram matrix ``G = K K^T``
  of the merged keys is the size-weighted merge of G's rows and then its columns, and
  cosines come from ``G[a, b] / sqrt(G[a, a] G[b, b])``; one float64 Gram per frame
  up front, O(N^2) per round after that;
- tokens are touched once, at the end: sizes start at 1, so a survivor is the plain
  mean of the original tokens it absorbed; the rounds only track who merged into whom.
"""

from __future__ import annotations

import math

import torch

from ._numerics import NORM_EPS, rank

#: Elements per float64 chunk of the final member sums (32 MiB).
_CHUNK_ELEMENTS = 2**22


def tome_rounds(num_tokens: int) -> int:
    """Rounds that bring any frame of N tokens down to any k >= 1."""
    return math.ceil(math.log2(num_tokens)) + 1 if num_tokens > 1 else 0


def tome_merge(tokens: torch.Tensor, merge_keys: torch.Tensor, counts: torch.Tensor, total_rows: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ToMe: every frame merged down to ``counts`` tokens.

    Args:
        tokens: [B, T, N, D] any float dtype. merge_keys: [B, T, N, Dk].
        counts: int32 [B, T], each in [0, N]. total_rows: ``counts.sum()`` (static size).

    Returns:
        (rows [total_rows, D] in the dtype of ``tokens``, survivors' flat indices int64
        [total_rows]), in (video, frame, raster) order; decisions and the members'
        sums in float64, rounded once.
    """
    B, T, N, D = tokens.shape
    F, dev = B * T, tokens.device
    keys = merge_keys.reshape(F, N, -1).double()
    G = keys @ keys.transpose(1, 2)  # [F, N, N] Gram of the (merged) keys
    S = torch.ones(F, N, dtype=torch.float64, device=dev)  # sizes
    alive = torch.ones(F, N, dtype=torch.bool, device=dev)
    owner = torch.arange(N, device=dev).expand(F, N).clone()  # the survivor each original token merged into
    k = counts.reshape(F).long()
    pos_in_frame = torch.arange(N, device=dev)
    frame_base = torch.arange(F, device=dev)[:, None] * N
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=dev)
    for _ in range(tome_rounds(N)):
        n = alive.sum(dim=1)
        parity = (alive.long().cumsum(dim=1) - 1) % 2
        is_a, is_b = alive & (parity == 0), alive & (parity == 1)
        r = torch.minimum(n - k, is_a.sum(dim=1)).clamp_min(0)
        r = torch.where((k > 0) & is_b.any(dim=1), r, 0)
        norm = torch.diagonal(G, dim1=1, dim2=2).clamp_min(0).sqrt().clamp_min(NORM_EPS)
        cos = G / (norm[:, :, None] * norm[:, None, :])
        cos = torch.where(torch.isnan(cos), float("-inf"), cos)
        cos = torch.where(is_a[:, :, None] & is_b[:, None, :], cos, float("-inf"))
        best, dest = cos.max(dim=2)  # the first maximum: ties go to the lower b
        merged = is_a & (rank(torch.where(is_a, best, nan)) < r[:, None])
        target = torch.where(merged, dest, pos_in_frame)  # [F, N]: where each current token goes
        owner = target.gather(1, owner)
        # Size-weighted means of the keys' Gram: rows, then columns (merging is linear).
        flat = (frame_base + target).reshape(-1)
        size = torch.zeros(F * N, dtype=torch.float64, device=dev).index_add_(0, flat, S.reshape(-1)).view(F, N)
        G = torch.zeros_like(G).view(F * N, N).index_add_(0, flat, (G * S[..., None]).view(F * N, N)).view(F, N, N)
        G = G.transpose(1, 2).contiguous()
        G = torch.zeros_like(G).view(F * N, N).index_add_(0, flat, (G * S[..., None]).view(F * N, N)).view(F, N, N)
        alive = alive & ~merged
        size = torch.where(alive, size, 1.0)
        G = G / (size[:, :, None] * size[:, None, :])
        S = torch.where(alive, size, 0.0)
    alive = alive & (k[:, None] > 0)
    # Every size starts at 1, so a survivor is the plain mean of the original tokens it
    # absorbed: one pass over the tokens at the end instead of one per round, summed
    # straight into the output slots. The sums are float64 and, on the CPU, run in
    # ascending token order (index_add_ adds its source rows in order), exactly as
    # reference.tome_ref forms them: the rows equal the reference bit for bit.
    alive_flat = alive.reshape(-1)
    slot = torch.where(alive_flat, alive_flat.long().cumsum(0) - 1, total_rows)  # dead frames: a spare row
    member_slot = slot[(frame_base + owner).reshape(-1)]
    flat = tokens.reshape(F * N, D)
    sums = torch.zeros(total_rows + 1, D, dtype=torch.float64, device=dev)
    step = max(1, _CHUNK_ELEMENTS // max(D, 1))  # float64 copies of the tokens in bounded chunks
    for lo in range(0, F * N, step):
        sums.index_add_(0, member_slot[lo:lo + step], flat[lo:lo + step].double())
    # Survivors in raster order, without a sync: a stable sort puts them first.
    order = torch.sort((~alive_flat).byte(), stable=True).indices[:total_rows]
    rows = sums[:total_rows] / S.reshape(-1)[order, None]
    return rows.to(tokens.dtype), order
