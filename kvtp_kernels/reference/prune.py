"""Pure-PyTorch reference of the pruning and merging ops (METHOD.md sections 1-4).

One ``*_ref`` function per op. Each is at once the test oracle that every faster
backend (C++ CPU kernel, Triton kernel) is compared against bit for bit, the CPU
fallback behind ``backend="reference"``, and a benchmark baseline. They favour
clarity over speed but stay vectorised (no Python loop over frames or tokens).

The numerics are part of the contract, because all backends must return identical
``frame_counts`` and ``indices``:

- frame probabilities, keep-count allocation, frame similarity and the default
  token score are computed in float64;
- token scores are compared in float64 (a lossless upcast of any float dtype);
- every sum that decides an integer is compared against an integer with a
  tolerance-free rule that degrades gracefully (see :func:`exact_counts_ref`).

Backends may still differ where a real-valued share lies within float64 rounding
(~1e-16 relative) of a rounding boundary; random data never gets there in practice
and exact ties (uniform scores, equal token scores) resolve identically everywhere.

Formulas: ``../shared/docs/METHOD.md`` sections 1-4.
"""

from __future__ import annotations

import torch

from .._numerics import NORM_EPS, PROB_FLUSH, frame_logits64, normalized64, offsets_from_counts
from .._numerics import rank as rank_ref


# ----------------------------------------------------------------------------------
# Section 1: query-frame relevance
# ----------------------------------------------------------------------------------
def frame_scores_ref(
    frame_embeds: torch.Tensor,
    query_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float | None = None,
    logit_bias: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """SigLIP-style frame relevance logits (METHOD.md section 1), in float64.

    ``s[b, t] = max_c( exp(logit_scale) * cos(q[b, c], f[b, t]) + logit_bias )``

    Args:
        frame_embeds: [B, T, E] frame embeddings (any float dtype).
        query_embeds: [B, C, E] embeddings of the C chunks of each video's query.
        logit_scale: log of the multiplicative scale (SigLIP stores it as a log);
            ``None`` means 0, i.e. a scale of 1.
        logit_bias: additive bias; ``None`` means 0.

    Returns:
        float64 [B, T]. Norms are clamped at 1e-12 like ``F.normalize``.
    """
    device = frame_embeds.device
    return frame_logits64(frame_embeds, query_embeds, _scalar64(logit_scale, device).exp(),
                          _scalar64(logit_bias, device))


def _scalar64(value: torch.Tensor | float | None, device: torch.device) -> torch.Tensor:
    if value is None:
        return torch.zeros((), dtype=torch.float64, device=device)
    if isinstance(value, torch.Tensor):
        return value.detach().to(device=device, dtype=torch.float64).reshape(())
    return torch.tensor(float(value), dtype=torch.float64, device=device)


# ----------------------------------------------------------------------------------
# Section 2: frame scores -> per-frame keep counts
# ----------------------------------------------------------------------------------
def frame_probs_ref(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """``p = softmax(s / tau)`` over the last dim, in float64, with defined NaN/inf.

    NaN scores count as ``-inf``; probabilities below 1e-200 are flushed to 0. When
    the largest score is infinite (``+inf``, or ``-inf`` because every score is
    ``-inf``/NaN) the frames holding that largest score share the probability
    equally; otherwise
    ``p_t = exp((s_t - max) / tau) / sum_j exp((s_j - max) / tau)``.
    """
    s = scores.double()
    s = torch.where(torch.isnan(s), float("-inf"), s)
    mx = s.amax(dim=-1, keepdim=True)
    e = torch.exp((s - mx) / temperature)
    p = e / e.sum(dim=-1, keepdim=True)
    p = torch.where(p < PROB_FLUSH, 0.0, p)
    at_max = (s == mx).double()
    uniform = at_max / at_max.sum(dim=-1, keepdim=True)
    return torch.where(torch.isinf(mx), uniform, p)


def exact_counts_ref(probs: torch.Tensor, budget: int, num_tokens: int, min_tokens: int) -> torch.Tensor:
    """Exact allocation (METHOD.md section 2, ``allocation="exact"``).

    Integers ``k_t`` with ``sum_t k_t = K`` and ``m <= k_t <= N``, as close as possible
    to the capped proportional share ``x_t = clamp(lam * K * p_t, m, N)`` with
    ``sum_t x_t = K``, rounded by largest remainder (ties to the lower frame index).

    How ``lam`` is found (every backend follows these steps):

    1. ``a_t = K * p_t``. ``g(lam) = sum_t clamp(lam * a_t, m, N)`` (``m`` where
       ``a_t == 0``) is piecewise linear and non-decreasing, with breakpoints at
       ``m / a_t`` and ``N / a_t``.
    2. ``lo`` = the largest candidate in ``{0} U {m/a_t} U {N/a_t}`` with
       ``g(lo) <= K``, ``hi`` the smallest candidate above it. On (lo, hi) every
       frame's state is fixed; it is read at ``mid = (lo + hi) / 2`` (``2*lo + 1``
       when there is no ``hi``), away from the breakpoints' rounding: capped at N
       (``mid*a_t >= N``), at the floor m (``a_t == 0`` or ``mid*a_t <= m``), or free.
    3. ``lam = (K - N*#capped - m*#floor) / sum_free a_t`` (``lo`` if none is free),
       kept inside [lo, hi] against rounding; ``x_t`` = N, m, or
       ``clamp(lam * a_t, m, N)`` for the capped, floored and free frames.
    4. If even ``lam -> inf`` cannot reach K (frames with ``p_t == 0`` exist and all
       others are capped) the zero-probability frames share the rest equally.
    5. ``k_t = floor(x_t)`` plus one for the ``R = K - sum floor(x)`` frames with the
       largest fractional part among those below N (ties: lower frame index).

    Args:
        probs: float64 [B, T] frame probabilities (rows sum to 1).
        budget: K, tokens kept per video; ``m*T <= K <= N*T``.
        num_tokens: N, tokens per frame.
        min_tokens: m, the per-frame minimum.

    Returns:
        int32 [B, T].
    """
    K, N, m = int(budget), int(num_tokens), int(min_tokens)
    a = K * probs.double()  # [B, T]
    pos = a > 0

    def g(lam: torch.Tensor) -> torch.Tensor:  # lam [B, C] -> [B, C]
        x = (lam[..., :, None] * a[..., None, :]).clamp(m, N)
        return torch.where(pos[..., None, :], x, float(m)).sum(dim=-1)

    safe_a = torch.where(pos, a, 1.0)
    cand = torch.cat(
        [torch.zeros_like(a[..., :1]), torch.where(pos, m / safe_a, 0.0), torch.where(pos, N / safe_a, 0.0)],
        dim=-1,
    )
    below = g(cand) <= K
    lo = torch.where(below, cand, -1.0).amax(dim=-1, keepdim=True)  # [B, 1]
    hi = torch.where(cand > lo, cand, float("inf")).amin(dim=-1, keepdim=True)
    mid = torch.where(torch.isinf(hi), 2 * lo + 1, 0.5 * (lo + hi))
    x_mid = mid * a
    capped = pos & (x_mid >= N)
    floored = ~pos | (x_mid <= m)
    free = ~capped & ~floored
    s_free = torch.where(free, a, 0.0).sum(dim=-1, keepdim=True)
    n_capped = capped.sum(dim=-1, keepdim=True).double()
    n_floored = floored.sum(dim=-1, keepdim=True).double()
    lam = torch.where(s_free > 0, (K - N * n_capped - m * n_floored) / torch.where(s_free > 0, s_free, 1.0), lo)
    lam = torch.minimum(torch.maximum(lam, lo), hi)
    x = torch.where(capped, float(N), torch.where(floored, float(m), (lam * a).clamp(m, N)))

    # Step 4: frames with p == 0 take what the saturated others cannot hold.
    n_zero = (~pos).sum(dim=-1, keepdim=True)
    capacity = N * pos.sum(dim=-1, keepdim=True) + m * n_zero
    overflow = K > capacity
    share = m + (K - capacity).double() / n_zero.clamp_min(1).double()
    x = torch.where(overflow, torch.where(pos, float(N), share), x)

    return largest_remainder_ref(x, K, N)


def largest_remainder_ref(x: torch.Tensor, budget: int, num_tokens: int) -> torch.Tensor:
    """Round real shares ``x`` [B, T] (summing to ~K) to integers summing to K.

    ``k_t = floor(x_t) + [rank_t < R]`` with ``R = clamp(K - sum floor(x), 0, T)`` and
    ``rank_t`` the position of frame t when the frames below N are ordered by
    fractional part, largest first, ties to the lower frame index.
    """
    T = x.shape[-1]
    f = torch.floor(x)
    frac = x - f
    fi = f.long()
    remainder = (budget - fi.sum(dim=-1, keepdim=True)).clamp(0, T)
    eligible = fi < num_tokens
    idx = torch.arange(T, device=x.device)
    # j beats t: eligible_j and (frac_j > frac_t or (frac_j == frac_t and j < t))
    beats = eligible[..., None, :] & (
        (frac[..., None, :] > frac[..., :, None])
        | ((frac[..., None, :] == frac[..., :, None]) & (idx[None, :] < idx[:, None]))
    )
    rank = beats.sum(dim=-1)
    bump = eligible & (rank < remainder)
    return (fi + bump.long()).to(torch.int32)


def paper_counts_ref(probs: torch.Tensor, ratio: float, num_tokens: int, min_tokens: int) -> torch.Tensor:
    """The authors' allocation (``allocation="paper"``), METHOD.md section 2.

    ``k_t = max(m, floor(N * min(ratio * T * p_t, 1)))``. The sum is data dependent
    (at most K, less when the cap cuts a dominant frame).

    Returns:
        int32 [B, T].
    """
    T = probs.shape[-1]
    r = (float(ratio) * T) * probs.double()
    k = torch.floor(num_tokens * r.clamp_max(1.0))
    return k.clamp_min(min_tokens).to(torch.int32)


def keep_counts_ref(
    scores: torch.Tensor,
    budget: int,
    num_tokens: int,
    temperature: float,
    min_tokens: int,
    paper: bool,
    ratio: float,
) -> torch.Tensor:
    """Frame logits [B, T] -> int32 keep counts [B, T] (exact or paper allocation)."""
    p = frame_probs_ref(scores, temperature)
    if paper:
        return paper_counts_ref(p, ratio, num_tokens, min_tokens)
    return exact_counts_ref(p, budget, num_tokens, min_tokens)


# ----------------------------------------------------------------------------------
# Section 3: choosing tokens inside a frame
# ----------------------------------------------------------------------------------
def distinctiveness_ref(tokens: torch.Tensor) -> torch.Tensor:
    """Default token score ``1 - cos(x_ti, mean_i x_ti)`` in float64.

    Args:
        tokens: [..., N, D].

    Returns:
        float64 [..., N]. Norms are clamped at 1e-12 (a zero token scores 1).
    """
    x = tokens.double()
    mu = x.mean(dim=-2, keepdim=True)
    dot = (x * mu).sum(dim=-1)
    denom = x.norm(dim=-1).clamp_min(NORM_EPS) * mu.norm(dim=-1).clamp_min(NORM_EPS)
    return 1.0 - dot / denom


def topk_mask_ref(token_scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean [..., N] mask of the ``counts[...]`` best tokens of each row (order of :func:`rank_ref`)."""
    return rank_ref(token_scores) < counts[..., None].long()


def cosine_gram_ref(keys: torch.Tensor) -> torch.Tensor:
    """float64 [..., N, N] cosine similarities of the rows of ``keys`` [..., N, Dk] (norms clamped at 1e-12)."""
    k = normalized64(keys)
    return k @ k.transpose(-1, -2)


def prumerge_ref(
    tokens: torch.Tensor,
    merge_keys: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    num_neighbors: int,
    mean: bool,
) -> torch.Tensor:
    """PruMerge's merge step for the kept tokens (METHOD.md section 3).

    Each kept token i absorbs its ``num_neighbors`` most similar other tokens j of the
    same frame (cosine of ``merge_keys`` in float64; order of :func:`rank_ref`, so ties
    go to the lower index and NaN similarities last):

    - ``mean=False`` (the authors' "paper" merge): ``y_i = x_i + sum_j a_j x_j``;
    - ``mean=True``: the a-weighted mean of i and its neighbours, written
      ``y_i = x_i + sum_j (a_j / W) (x_j - x_i)`` with ``W = a_i + sum_j a_j``
      (``y_i = x_i`` when W == 0), so that no neighbours gives exactly ``x_i``.

    Args:
        tokens: [B, T, N, D]. merge_keys: [B, T, N, Dk]. weights: [B, T, N] (the a's).
        indices: int64 [R]: flat indices (into B*T*N) of the kept tokens.
        num_neighbors: in [0, N - 1].

    Returns:
        [R, D] in the dtype of ``tokens`` (computed in float64, rounded once).
    """
    B, T, N, D = tokens.shape
    frame, token = indices // N, indices % N
    x = tokens.reshape(B * T, N, D).double()
    a = weights.reshape(B * T, N).double()
    cos = cosine_gram_ref(merge_keys.reshape(B * T, N, -1))[frame, token]  # [R, N]
    rank = rank_ref(cos)
    rank = rank - (rank.gather(1, token[:, None]) < rank).long()  # rank among the other tokens
    neighbor = (rank < num_neighbors) & (torch.arange(N, device=tokens.device) != token[:, None])
    aj = torch.where(neighbor, a[frame], 0.0)  # [R, N]
    xi = x[frame, token]
    if mean:
        w = a[frame, token] + aj.sum(dim=-1)
        coef = torch.where(w[:, None] != 0, aj / torch.where(w != 0, w, 1.0)[:, None], 0.0)
    else:
        coef = aj
    # Rows in chunks of ~256 MB of [rows, N, D] float64. Non-neighbours are zeroed, not
    # multiplied by 0: a NaN/inf token nobody picked stays out.
    y = torch.empty_like(xi)
    step = max(1, 2**25 // max(1, N * D))
    for lo in range(0, indices.shape[0], step):
        sl = slice(lo, lo + step)
        xj = x[frame[sl]] - xi[sl, None, :] if mean else x[frame[sl]]  # [rows, N, D]
        xj = torch.where(neighbor[sl, :, None], xj, 0.0)
        y[sl] = xi[sl] + torch.einsum("rn,rnd->rd", coef[sl], xj)
    return y.to(tokens.dtype)


def tome_ref(tokens: torch.Tensor, merge_keys: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe inside each frame down to ``counts[b, t]`` tokens (METHOD.md section 3).

    Literal bipartite soft matching, frame by frame (an oracle, not a fast path):
    while a frame has n > k tokens, split them by position into A (even) and B (odd);
    each a in A picks its most similar b in B (cosine of the keys; ties to the lower
    b); the r = min(n - k, |A|) pairs with the highest similarity (ties to the lower
    a) merge a into b as size-weighted means of tokens and keys (sizes add); a survivor's
    row is therefore the mean of the original tokens it holds, formed as their float64
    sum in raster order divided by their count (as ``methods.tome_merge`` forms it, so
    the two agree bit for bit on the CPU). The survivors keep their raster order; a
    survivor's index is its own position (the representative of everything merged into
    it). k = 0 keeps nothing.

    Returns:
        (rows [sum k, D] in the dtype of ``tokens`` (float64 math), indices int64 of
        the representatives into the B*T*N rows), frames in (video, frame) order.
    """
    B, T, N, D = tokens.shape
    x = tokens.reshape(B * T, N, D).double()
    keys = merge_keys.reshape(B * T, N, -1).double()
    rows, reps = [], []
    for f, k in enumerate(counts.reshape(-1).tolist()):
        if k == 0:
            continue
        alive = list(range(N))
        K, S = keys[f].clone(), [1.0] * N
        members = {i: [i] for i in range(N)}  # the original tokens each survivor holds
        while len(alive) > k:
            A, Bs = alive[0::2], alive[1::2]
            r = min(len(alive) - k, len(A))
            norm = K.norm(dim=-1).clamp_min(NORM_EPS)
            pairs = []
            for a in A:
                sims = [float((K[a] @ K[b]) / (norm[a] * norm[b])) for b in Bs]
                sims = [float("-inf") if v != v else v for v in sims]
                j = max(range(len(Bs)), key=lambda q: (sims[q], -q))
                pairs.append((sims[j], a, Bs[j]))
            chosen = sorted(pairs, key=lambda e: (-e[0], e[1]))[:r]
            for b in sorted({b for _, _, b in chosen}):
                group = [a for _, a, bb in chosen if bb == b]
                size = S[b] + sum(S[a] for a in group)
                K[b] = (S[b] * K[b] + sum(S[a] * K[a] for a in group)) / size
                S[b] = size
                members[b] = sorted(members[b] + [m for a in group for m in members[a]])
            merged = {a for _, a, _ in chosen}
            alive = [i for i in alive if i not in merged]
        # A survivor's row: the size-weighted mean of the merged tokens, which (sizes
        # start at 1) is the plain mean of its original tokens: summed one by one in
        # float64 in raster order, divided by the count, rounded once.
        out = torch.empty((len(alive), D), dtype=torch.float64, device=tokens.device)
        for q, i in enumerate(alive):
            acc = torch.zeros(D, dtype=torch.float64, device=tokens.device)
            for m in members[i]:
                acc = acc + x[f, m]
            out[q] = acc / float(len(members[i]))
        rows.append(out)
        reps.append(torch.tensor(alive, dtype=torch.long) + f * N)
    if not rows:
        return tokens.new_zeros((0, D)), torch.zeros(0, dtype=torch.long, device=tokens.device)
    return torch.cat(rows).to(tokens.dtype), torch.cat(reps).to(tokens.device)


# ----------------------------------------------------------------------------------
# Section 4: the prune output
# ----------------------------------------------------------------------------------
def prune_tokens_ref(
    tokens: torch.Tensor,
    counts: torch.Tensor,
    token_scores: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep ``counts[b, t]`` tokens of each frame and pack them.

    Args:
        tokens: [B, T, N, D] any float dtype, any strides.
        counts: int32 [B, T], each in [0, N].
        token_scores: [B, T, N] or ``None`` for :func:`distinctiveness_ref`.

    Returns:
        ``(packed [sum K_b, D], indices int64 [sum K_b], frame_counts int32 [B, T],
        cu_seqlens int32 [B + 1], frame_cu_seqlens int32 [B*T + 1])``; rows in
        (video, frame, raster) order, ``indices`` into the flattened B*T*N rows.
    """
    B, T, N, D = tokens.shape
    if token_scores is None:
        token_scores = distinctiveness_ref(tokens)
    keep = topk_mask_ref(token_scores, counts)
    indices = keep.reshape(-1).nonzero().squeeze(-1)
    packed = tokens.reshape(B * T * N, D).index_select(0, indices)
    counts = counts.to(torch.int32)
    return packed, indices, counts.clone(), *offsets_from_counts(counts)
