"""What the predictor returns: one vision pass's encoding, and the scores with what ``prune`` needs."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["FrameEncoding", "PredictorOutput"]


@dataclasses.dataclass
class FrameEncoding:
    """What one vision pass gives.

    Attributes:
        frame_embeds: [B, T, E], the vision tower's dtype: pooled image embeddings.
        token_importance: float32 [B, T, th*tw] or None: probe attention resampled
            to the token grid, non-negative, raster order.
    """

    frame_embeds: torch.Tensor
    token_importance: torch.Tensor | None


@dataclasses.dataclass
class PredictorOutput:
    """What :meth:`FrameRelevancePredictor.forward` returns.

    Attributes:
        scores: float64 [B, T] frame relevance logits (with the fusion head when
            ``fusion_applied``).
        frame_embeds: [B, T, E]; query_embeds: [B, C, E] (chunk-padded by repetition).
        logit_scale, logit_bias: SigLIP's [1] parameters (scale is a log).
        token_importance: float32 [B, T, th*tw] or None.
        fusion_applied: whether ``scores`` include the fusion head.
    """

    scores: torch.Tensor
    frame_embeds: torch.Tensor
    query_embeds: torch.Tensor
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor
    token_importance: torch.Tensor | None
    fusion_applied: bool

    def prune_kwargs(self, *, token_scores: bool = True) -> dict[str, Any]:
        """Keyword arguments for :func:`kvtp_kernels.prune` (all detached).

        Without the fusion head: ``scores=None`` plus ``frame_embeds``,
        ``query_embeds``, ``logit_scale``, ``logit_bias``, so the prune kernel
        computes the similarity itself (fused path). With the head: ``scores``
        (the fused kernel computes one max over cosines, not the head's weighted
        sum). Plus ``token_scores`` (the token importance) when present and asked for.

        Use as ``prune(tokens, budget=0.2, **out.prune_kwargs())``.
        """
        if self.fusion_applied:
            kwargs: dict[str, Any] = {"scores": self.scores.detach()}
        else:
            kwargs = {"scores": None, "frame_embeds": self.frame_embeds.detach(),
                      "query_embeds": self.query_embeds.detach(), "logit_scale": self.logit_scale.detach(),
                      "logit_bias": self.logit_bias.detach()}
        if token_scores and self.token_importance is not None:
            kwargs["token_scores"] = self.token_importance.detach()
        return kwargs
