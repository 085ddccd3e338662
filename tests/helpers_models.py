"""Helpers the model-integration tests share (tests/test_qwen_vl.py, tests/test_llava_next_video.py)."""

from __future__ import annotations

import math

import torch

from kvtp_kernels import reference as ref


def reference_keep_mask(inputs: dict, video_token: int, features, budget) -> torch.Tensor:
    """The keep mask [B, L] that KVTP must produce: reference pruning (uniform scores) of each video's [T, N, D].

    ``features``: the model's own video features, one [T, N, D] per video in placeholder order.
    """
    flags = []
    for tokens in features:
        T, N = tokens.shape[:2]
        K = budget if isinstance(budget, int) else math.floor(budget * T * N + 0.5)
        counts = ref.keep_counts_ref(torch.zeros(1, T), K, N, 2.0, 0, False, budget)
        _, indices, *_ = ref.prune_tokens_ref(tokens[None], counts, None)
        f = torch.zeros(T * N, dtype=torch.bool)
        f[indices] = True
        flags.append(f)
    keep = inputs["attention_mask"].bool().clone()
    keep[inputs["input_ids"] == video_token] = torch.cat(flags)
    return keep
