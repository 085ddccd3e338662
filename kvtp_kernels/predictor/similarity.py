"""Frame relevance logits: SigLIP's similarity of frame and query-chunk embeddings (METHOD.md section 1)."""

from __future__ import annotations

import torch

from .._numerics import frame_logits64

__all__ = ["relevance_logits"]


def _logit_param(value: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor:
    if value is None:
        return torch.zeros((), dtype=torch.float64, device=like.device)
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=torch.float64).reshape(())
    return torch.tensor(float(value), dtype=torch.float64, device=like.device)


Param = torch.Tensor | float | None


def relevance_logits(frame_embeds: torch.Tensor, query_embeds: torch.Tensor, logit_scale: Param = None,
                     logit_bias: Param = None) -> torch.Tensor:
    """``s[b, t] = max_c(exp(logit_scale) * cos(q[b, c], f[b, t]) + logit_bias)`` in float64.

    The same operations, in the same order, as
    :func:`kvtp_kernels.reference.frame_scores_ref` (so the result is bit-identical to
    it and to what ``prune``'s fused path computes), except that gradients flow into
    ``logit_scale`` and ``logit_bias`` too (the reference detaches them).

    Args:
        frame_embeds: [B, T, E] any float dtype.
        query_embeds: [B, C, E] (C query chunks).
        logit_scale: log scale (SigLIP's parameter, exp() applied here); None = 0.
        logit_bias: additive bias; None = 0.

    Returns:
        float64 [B, T].
    """
    return frame_logits64(frame_embeds, query_embeds, _logit_param(logit_scale, frame_embeds).exp(),
                          _logit_param(logit_bias, frame_embeds))
