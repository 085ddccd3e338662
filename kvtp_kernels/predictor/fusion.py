"""The Local and Global Context Fusion Head (METHOD.md section 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .config import _check_clip_size, _describe, _fail
from .similarity import relevance_logits

__all__ = ["FUSION_EPS", "ContextFusionHead"]

#: The fusion head's normalisation epsilon (METHOD.md section 1: ``f / (|f| + 1e-6)``).
FUSION_EPS = 1e-6


class ContextFusionHead(nn.Module):
    """Local (clip) and global (video) context for each frame, fused into its score.

    METHOD.md section 1::

        e_t = f_t / (|f_t| + 1e-6)
        l_t = sum_{j in clip(t)} softmax_j(e_t . e_j / (tau_l * sqrt(E))) f_j
        g_t = sum_{j in 1..T}    softmax_j(e_t . e_j / (tau_g * sqrt(E))) f_j
        s_t = w_f * s_t(f) + w_l * s_t(l) + w_g * s_t(g)

    with clips of ``clip_size`` consecutive frames (the last may be shorter),
    ``tau = exp(tau')``, ``tau'`` learnable (parameters ``log_tau_local`` and
    ``log_tau_global``, initialised to 0) and each ``s_t(.)`` the SigLIP-style logit
    of :func:`relevance_logits`. Computed in float64 (T x T x E is tiny next to the towers).

    Args:
        clip_size: C, frames per clip (default 8).
        weights: (w_f, w_l, w_g), default (0.9, 0.05, 0.05).
    """

    def __init__(self, clip_size: int = 8, weights: Sequence[float] = (0.9, 0.05, 0.05)):
        super().__init__()
        _check_clip_size(clip_size)
        weights = tuple(weights)
        if len(weights) != 3 or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
            _fail("fusion weights", "three finite numbers (frame, local, global)", repr(weights))
        self.clip_size = clip_size
        self.weights = tuple(float(w) for w in weights)
        self.log_tau_local = nn.Parameter(torch.zeros(1))
        self.log_tau_global = nn.Parameter(torch.zeros(1))

    def extra_repr(self) -> str:
        return f"clip_size={self.clip_size}, weights={self.weights}"

    def contexts(self, frame_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local and global context embeddings.

        Args:
            frame_embeds: [B, T, E] any float dtype.

        Returns:
            ``(local, global)``, each float64 [B, T, E].
        """
        if not isinstance(frame_embeds, torch.Tensor) or frame_embeds.dim() != 3 or frame_embeds.shape[1] == 0:
            _fail("frame_embeds", "a [B, T, E] tensor with T > 0",
                  _describe(frame_embeds))
        f = frame_embeds.double()
        T, E = f.shape[1], f.shape[2]
        e = f / (f.norm(dim=-1, keepdim=True) + FUSION_EPS)
        sim = e @ e.transpose(-1, -2) / math.sqrt(E)  # [B, T, T]
        tau_local = self.log_tau_local.double().exp()
        tau_global = self.log_tau_global.double().exp()
        clip = torch.arange(T, device=f.device) // self.clip_size
        same_clip = clip[:, None] == clip[None, :]
        local_w = (sim / tau_local).masked_fill(~same_clip, float("-inf")).softmax(dim=-1)
        global_w = (sim / tau_global).softmax(dim=-1)
        return local_w @ f, global_w @ f

    def forward(
        self,
        frame_embeds: torch.Tensor,
        query_embeds: torch.Tensor,
        logit_scale: torch.Tensor | float | None = None,
        logit_bias: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Fused frame logits, float64 [B, T] (see the class docstring).

        Args:
            frame_embeds: [B, T, E]; query_embeds: [B, C, E];
            logit_scale / logit_bias: as in :func:`relevance_logits`.
        """
        local, global_ = self.contexts(frame_embeds)
        w_f, w_l, w_g = self.weights
        return (w_f * relevance_logits(frame_embeds, query_embeds, logit_scale, logit_bias)
                + w_l * relevance_logits(local, query_embeds, logit_scale, logit_bias)
                + w_g * relevance_logits(global_, query_embeds, logit_scale, logit_bias))
