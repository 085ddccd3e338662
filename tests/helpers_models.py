"""Helpers the model-integration tests share (tests/test_qwen_vl.py, tests/test_llava_next_video.py)."""

from __future__ import annotations

import math

import torch

from kvtp_kernels import reference as ref


def reference_video_flags(tokens, budget, scores=None, token_scores=None) -> torch.Tensor:
    """The keep flags [T*N] of one video that reference pruning gives: ``tokens`` [T, N, D],
    ``budget`` a ratio beta (K = floor(beta*T*N + 1/2)) or K itself (an int), frame
    ``scores`` [T] (None: uniform), ``token_scores`` [T, N] (None: distinctiveness).
    """
    T, N = tokens.shape[:2]
    K = budget if isinstance(budget, int) else math.floor(budget * T * N + 0.5)
    s = torch.zeros(1, T) if scores is None else scores[None]
    counts = ref.keep_counts_ref(s, K, N, 2.0, 0, False, budget)
    _, indices, *_ = ref.prune_tokens_ref(tokens[None], counts, None if token_scores is None else token_scores[None])
    flags = torch.zeros(T * N, dtype=torch.bool)
    flags[indices] = True
    return flags


def reference_keep_mask(inputs: dict, video_token: int, features, budget) -> torch.Tensor:
    """The keep mask [B, L] that KVTP must produce: reference pruning (uniform scores) of each video's [T, N, D].

    ``features``: the model's own video features, one [T, N, D] per video in placeholder order.
    """
    keep = inputs["attention_mask"].bool().clone()
    keep[inputs["input_ids"] == video_token] = torch.cat([reference_video_flags(tokens, budget) for tokens in features])
    return keep
