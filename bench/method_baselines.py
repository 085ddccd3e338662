"""Baselines for ``kvtp_kernels.prune``'s within-frame methods (PruMerge, ToMe), written here from the KVTP
authors' description of their per-token loops (not copied), each equal to ours on benchmark data.

- :func:`prumerge_authors_loop`: PruMerge as the authors run it, per kept token;
- :func:`prumerge_torch`: vectorised PruMerge in PyTorch (one host sync);
- :func:`tome_loop`: the authors' ``tome``, per frame and merge round.

Each docstring lists the changes that make its output equal to ours. bench_methods.py times them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

import kvtp_kernels
from kvtp_kernels import reference as ref

NUM_NEIGHBORS = 32  # the authors' topk(32)
TEMPERATURE = 2.0


class MethodOutput(NamedTuple):
    """The fields every provider returns (the first three of ``PrunedTokens``)."""

    tokens: torch.Tensor
    indices: torch.Tensor
    frame_counts: torch.Tensor



def _counts(scores: torch.Tensor, budget: float | int, N: int, temperature: float) -> torch.Tensor:
    return kvtp_kernels.keep_counts(scores, budget, N, temperature=temperature, backend="reference")


def _kept_frames(counts: torch.Tensor):
    """(b, t, k) of every frame that keeps k > 0 tokens, in order: the authors' per-frame loop (one host sync
    per frame)."""
    B, T = counts.shape
    for b in range(B):
        for t in range(T):
            k = int(counts[b, t])  # host sync per frame
            if k:
                yield b, t, k


def prumerge_authors_loop(tokens: torch.Tensor, scores: torch.Tensor, budget: float | int, token_scores: torch.Tensor,
                          merge_keys: torch.Tensor | None, num_neighbors: int = NUM_NEIGHBORS,
                          temperature: float = TEMPERATURE) -> MethodOutput:
    """PruMerge as the KVTP authors run it (``llava_arch.py``, ``prumerge``), per kept token.

    For every frame: its count moved to a Python int (a host sync, their ``int(N * rate)``),
    ``topk`` of the attention, gathers of the kept and the other tokens, weights and
    normalised keys; then for every kept token i: ``torch.cat`` of the kept tokens before
    and after i with the non-kept ones (tokens, weights and keys), the cosines of i's
    key with them (``mm``), ``topk(32)``, and ``x_i + sum_j a_j x_j`` over those 32.

    Changes that make the output equal to ``prune(..., method="prumerge", merge="paper")``:

    - counts: KVTP's exact-mode counts (``keep_counts``, reference), not ``floor(N * rate)``;
    - the kept tokens are visited and emitted in raster order (their topk emits score order);
    - keys are normalised and cosines computed in float64, the 32 neighbours' weighted sum
      accumulated in float64 and rounded once (they do all of it in the model dtype, whose
      rounding picks a different 32nd neighbour on near-ties and adds roundings);
    - ``num_neighbors`` instead of the literal 32 (the same at N = 169 or 196).

    Ties: ``torch.topk`` does not promise which of two equal values it returns; benchmark
    data has none (softmax of random logits, float64 cosines of random keys).
    """
    _, T, N, _ = tokens.shape
    keys = tokens if merge_keys is None else merge_keys
    counts = _counts(scores, budget, N, temperature)
    rows, kept = [], []
    for b, t, k in _kept_frames(counts):
        frame, attn = tokens[b, t], token_scores[b, t]
        _, idx = torch.topk(attn, k)
        idx = idx.sort().values
        others = torch.ones(N, dtype=torch.bool, device=tokens.device)
        others[idx] = False
        compl = others.nonzero().squeeze(-1)
        key_norm = F.normalize(keys[b, t].double(), dim=-1)
        x_kept, a_kept, k_kept = frame[idx], attn[idx], key_norm[idx]
        x_rest, a_rest, k_rest = frame[compl], attn[compl], key_norm[compl]
        merged = torch.empty_like(x_kept)
        for i in range(k):
            rest_x = torch.cat([x_kept[:i], x_kept[i + 1:], x_rest])
            rest_a = torch.cat([a_kept[:i], a_kept[i + 1:], a_rest])
            rest_k = torch.cat([k_kept[:i], k_kept[i + 1:], k_rest])
            cos = torch.mm(k_kept[i:i + 1], rest_k.t())
            _, nearest = torch.topk(cos, num_neighbors, dim=1)
            nearest = nearest[0]
            cluster = rest_x[nearest].double() * rest_a[nearest].double()[:, None]
            merged[i] = (cluster.sum(dim=0) + x_kept[i].double()).to(tokens.dtype)
        rows.append(merged)
        kept.append(idx + (b * T + t) * N)
    return MethodOutput(torch.cat(rows), torch.cat(kept), counts)


def prumerge_torch(tokens: torch.Tensor, scores: torch.Tensor, budget_tokens: int, token_scores: torch.Tensor,
                   merge_keys: torch.Tensor | None, num_neighbors: int = NUM_NEIGHBORS,
                   temperature: float = TEMPERATURE) -> MethodOutput:
    """Vectorised PruMerge in PyTorch (no Python loop; one host sync for the widest frame).

    1. exact-mode counts and the kept rows like ``baselines.prune_torch`` (stable sort,
       scatter of the kept mask, ``nonzero_static``);
    2. cosines of the kept keys only against their frame: the kept keys of each frame are
       scattered into a [B*T, k_max, Dk] float64 block (k_max = the widest frame's count,
       read with one sync) and multiplied with the frame's normalised keys in one ``bmm``
       ([B*T, k_max, N]; a full Gram would cost N / k_max times more);
    3. the token itself masked with -inf, ``topk(num_neighbors)``;
    4. ``x_i + sum_j a_j x_j`` as one ``F.embedding_bag(mode="sum", per_sample_weights=a)``
       over the flat token rows (no [R, 32, D] gather is materialised), the weights in the
       tokens' dtype, ``x_i`` added in float32 and rounded once.
    """
    B, T, N, D = tokens.shape
    dev, Fr = tokens.device, B * T
    counts = ref.exact_counts_ref(ref.frame_probs_ref(scores, temperature), budget_tokens, N, 0)
    order = torch.sort(token_scores, dim=-1, descending=True, stable=True).indices
    in_top = torch.arange(N, device=dev) < counts.unsqueeze(-1)
    keep = torch.empty_like(in_top).scatter_(-1, order, in_top)
    indices = torch.nonzero_static(keep.reshape(-1), size=B * budget_tokens).squeeze(-1)
    keys = tokens if merge_keys is None else merge_keys
    key_norm = F.normalize(keys.reshape(Fr, N, -1).double(), dim=-1)
    frame, token = indices // N, indices % N
    frame_start = torch.cat([counts.new_zeros(1), counts.reshape(-1).cumsum(0)[:-1]]).long()
    slot = torch.arange(indices.shape[0], device=dev) - frame_start[frame]
    k_max = int(counts.max())  # host sync
    kept_keys = key_norm.new_zeros((Fr, k_max, key_norm.shape[-1]))
    kept_keys[frame, slot] = key_norm[frame, token]
    cos = torch.bmm(kept_keys, key_norm.transpose(1, 2))[frame, slot]  # [R, N]
    cos.scatter_(1, token[:, None], float("-inf"))
    neighbors = cos.topk(num_neighbors, dim=1).indices + (frame * N)[:, None]  # flat rows [R, M]
    flat = tokens.reshape(Fr * N, D)
    weights = token_scores.reshape(-1)[neighbors].to(tokens.dtype)
    folded = F.embedding_bag(neighbors, flat, per_sample_weights=weights, mode="sum")
    merged = (flat.index_select(0, indices).float() + folded.float()).to(tokens.dtype)
    return MethodOutput(merged, indices, counts)


def tome_loop(tokens: torch.Tensor, scores: torch.Tensor, budget: float | int, merge_keys: torch.Tensor | None,
              temperature: float = TEMPERATURE) -> MethodOutput:
    """ToMe frame by frame, round by round, one merge per destination (the authors' structure).

    The authors' ``tome``: per frame, while tokens must go, split them into two sets by
    position parity, cosines between the sets, each token's best partner (``max``),
    ``topk`` of the best similarities, then a Python loop over the destinations merging
    each one's sources (``torch.cat``-style gathers and a mean), and the survivors kept.

    Changes that make the output equal to ``prune(..., method="tome")`` (METHOD.md
    section 3, ``reference.tome_ref``): KVTP's exact-mode counts; A = even positions of
    the survivors in raster order merges into B = odd positions (they merge the odd set
    into the even one and reorder the frame as [even | odd]); r = min(n - k, |A|) per
    round; size-weighted means of tokens and keys with sizes that add (they average
    without sizes and rescale to the largest norm); float64 math rounded once; survivors
    in raster order, each represented by its own position.
    """
    _, T, N, _ = tokens.shape
    keys = tokens if merge_keys is None else merge_keys
    counts = _counts(scores, budget, N, temperature)
    rows, reps = [], []
    for b, t, k in _kept_frames(counts):
        x, kk = tokens[b, t].double(), keys[b, t].double()
        size = torch.ones(N, dtype=torch.float64, device=tokens.device)
        position = torch.arange(N, device=tokens.device)
        while x.shape[0] > k:
            n = x.shape[0]
            unit = F.normalize(kk, dim=-1)
            similarity = torch.mm(unit[0::2], unit[1::2].t())  # [|A|, |B|]
            best, partner = similarity.max(dim=1)  # the first maximum: ties to the lower b
            r = min(n - k, best.shape[0])
            _, chosen = torch.topk(best, r)
            chosen, partners = chosen.tolist(), partner[chosen].tolist()  # host sync per round
            sources: dict[int, list[int]] = {}
            for a, dest in zip(chosen, partners):
                sources.setdefault(dest, []).append(a)
            for dest, group in sources.items():
                members = [2 * dest + 1] + [2 * a for a in group]
                s = size[members]
                total = s.sum()
                x[2 * dest + 1] = (s[:, None] * x[members]).sum(dim=0) / total
                kk[2 * dest + 1] = (s[:, None] * kk[members]).sum(dim=0) / total
                size[2 * dest + 1] = total
            alive = torch.ones(n, dtype=torch.bool, device=tokens.device)
            alive[[2 * a for a in chosen]] = False
            x, kk, size, position = x[alive], kk[alive], size[alive], position[alive]
        rows.append(x.to(tokens.dtype))
        reps.append(position + (b * T + t) * N)
    return MethodOutput(torch.cat(rows), torch.cat(reps), counts)
