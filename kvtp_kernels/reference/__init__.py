"""Pure-PyTorch reference of every KVTP op: the contract the faster backends are tested against.

One ``*_ref`` function per op: :mod:`.prune` (frame relevance, keep counts, token
selection, PruMerge and ToMe; METHOD.md sections 1-4) and :mod:`.pack` (the LLM input
of section 4). Production code does not import this package except for
``backend="reference"``, whose ops (:mod:`kvtp_kernels.ops`) run these functions; the
numerics they share with the other backends live in :mod:`kvtp_kernels._numerics`.
"""

from .pack import pack_multimodal_ref
from .prune import (
    cosine_gram_ref,
    distinctiveness_ref,
    exact_counts_ref,
    frame_probs_ref,
    frame_scores_ref,
    keep_counts_ref,
    largest_remainder_ref,
    paper_counts_ref,
    prumerge_ref,
    prune_tokens_ref,
    rank_ref,
    tome_ref,
    topk_mask_ref,
)

__all__ = [
    "cosine_gram_ref", "distinctiveness_ref", "exact_counts_ref", "frame_probs_ref", "frame_scores_ref",
    "keep_counts_ref", "largest_remainder_ref", "pack_multimodal_ref", "paper_counts_ref", "prumerge_ref",
    "prune_tokens_ref", "rank_ref", "tome_ref", "topk_mask_ref",
]
