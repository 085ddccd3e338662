"""The numerics every backend shares: epsilons, the within-frame order, offsets, tile sizes.

These are part of the contract of METHOD.md (all backends return identical counts and
indices), so each is written once: the reference oracle (:mod:`kvtp_kernels.reference`),
the batched PyTorch methods, the Triton launchers and the integrations import them from
here. The C++ kernels hold the same constants in ``csrc/include/kvtp/common.h``.
"""

from __future__ import annotations

import torch

#: F.normalize's default epsilon: norms are clamped to at least this value.
NORM_EPS = 1e-12
#: Frame probabilities below this count as exactly zero, which keeps every ratio in
#: the exact allocation (N / (K*p), ...) finite in float64. No frame that could get a
#: token is affected: K * 1e-200 is far below one token.
PROB_FLUSH = 1e-200
#: The largest int32: keep counts and every offset (cu_seqlens, packed lengths) are int32.
INT32_MAX = 2**31 - 1
#: Integers up to this are exact in float64: T*N up to it keeps every count and budget exact.
FLOAT64_EXACT = 2**53


def normalized64(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float64 divided by its norm along the last dimension (clamped at NORM_EPS)."""
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def frame_logits64(frame_embeds: torch.Tensor, query_embeds: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    """``s[b, t] = max_c(scale * cos(q[b, c], f[b, t]) + bias)`` in float64 (METHOD.md section 1).

    ``frame_embeds`` [B, T, E], ``query_embeds`` [B, C, E] (any float dtype); ``scale``
    (already exponentiated) and ``bias`` are float64 scalars. -> float64 [B, T].
    """
    f = normalized64(frame_embeds)
    q = normalized64(query_embeds)
    cos = torch.einsum("bce,bte->bct", q, f)  # [B, C, T]
    return (scale * cos + bias).amax(dim=1)


def rank(scores: torch.Tensor) -> torch.Tensor:
    """Position of each entry when its row is ordered best first (int64, same shape).

    Higher score first, ties to the lower index, NaN below every number (``-inf``
    included), NaNs among themselves by index: the within-frame order of METHOD.md
    section 3, used for tokens and for merge neighbours alike.
    """
    s = scores.double()
    nan = torch.isnan(s)
    key = torch.where(nan, float("-inf"), s)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    order = torch.gather(order, -1, torch.sort(torch.gather(nan, -1, order).byte(), dim=-1, stable=True).indices)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(s.shape[-1], device=s.device).expand_as(order))
    return ranks


def offsets_from_counts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts [B, T] -> (cu_seqlens int32 [B+1], frame_cu_seqlens int32 [B*T+1]), on device, no sync."""
    zero = torch.zeros(1, dtype=torch.int32, device=counts.device)
    cu_seqlens = torch.cat([zero, counts.sum(dim=1).cumsum(0).to(torch.int32)])
    frame_cu_seqlens = torch.cat([zero, counts.reshape(-1).cumsum(0).to(torch.int32)])
    return cu_seqlens, frame_cu_seqlens


# ----------------------------------------------------------------------------------
# Tile sizes of the Triton launchers (plain integers: no triton import needed, and
# ~1.5 us a call cheaper than triton.cdiv / triton.next_power_of_2 on the host)
# ----------------------------------------------------------------------------------
def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for ``b > 0``, like ``triton.cdiv``."""
    return -(-int(a) // int(b))


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1), like ``triton.next_power_of_2``."""
    return 1 << max(int(n) - 1, 0).bit_length()


def pow2(n: int, lo: int = 16) -> int:
    """The power-of-two block that covers ``n`` elements, at least ``lo``."""
    return max(lo, next_pow2(max(int(n), 1)))


def fit(budget: int, block: int, size: int, lo: int = 1) -> int:
    """Largest power of two <= ``budget // block`` (at least ``lo``), capped at ``size``'s block."""
    return max(lo, min(pow2(size, lo=1), next_pow2(max(budget // block, 1) + 1) // 2))


def least_padding_width(D: int, widths) -> int:
    """The width in ``widths`` that pads ``D`` columns the least (ties: the wider), capped at D's block."""
    return min(min(widths, key=lambda w: (cdiv(D, w) * w, -w)), pow2(D, lo=1))
