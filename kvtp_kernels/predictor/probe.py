"""Within-frame token importance from SigLIP's attention-pooling probe, resampled to the LLM's token grid.

The probe's attention is recomputed from the pooling head's input (captured by a forward
pre-hook during the one vision pass, see :meth:`FrameRelevancePredictor.encode_frames`)
and the head's own weights, instead of hooking ``nn.MultiheadAttention``'s output, so it
does not depend on how the head calls its attention (``need_weights``), and costs one
[P, D] x [D, heads] product per frame (see :func:`probe_attention`). The authors run a
second, untuned SigLIP for this; we read it off the same pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import TOKEN_POOLS, _describe, _fail

__all__ = ["probe_attention", "resample_token_importance"]


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
