"""Registration of the kvtp torch ops (``torch.ops.kvtp.*``).

Every op exists once per backend, with one shared schema:

=========================  ===========================  ==================================
op                         backend                      implementation
=========================  ===========================  ==================================
``keep_counts``            C++, CPU dispatch key        ``csrc/prune_cpu.cpp``
``keep_counts_ref``        pure PyTorch, any device     :mod:`kvtp_kernels.reference`
``keep_counts_triton``     Triton (CUDA, interpreter)   :mod:`kvtp_kernels.kernels.prune_triton`
``prune_tokens``           C++, CPU dispatch key        ``csrc/prune_cpu.cpp``
``prune_tokens_ref``       pure PyTorch, any device     :mod:`kvtp_kernels.reference`
``prune_tokens_triton``    Triton (CUDA, interpreter)   :mod:`kvtp_kernels.kernels.prune_triton`
``merge_neighbors``        C++, CPU dispatch key        ``csrc/merge_cpu.cpp``
``merge_neighbors_ref``    pure PyTorch, any device     :mod:`kvtp_kernels.reference`
``merge_neighbors_triton`` Triton (CUDA, interpreter)   :mod:`kvtp_kernels.kernels.merge_triton`
``tome_merge``             batched PyTorch, any device  :mod:`kvtp_kernels.methods`
``tome_merge_ref``         per-frame loop (oracle)      :mod:`kvtp_kernels.reference`
``pack_plan``/``pack_rows`` C++ CPU + CUDA              ``csrc/pack_*`` (see :mod:`kvtp_kernels.pack`)
=========================  ===========================  ==================================

Schemas (C++ ops define them in ``csrc/ops.cpp``; Python ops infer the same one)::

    keep_counts(Tensor? scores, Tensor? frame_embeds, Tensor? query_embeds,
                Tensor? logit_scale, Tensor? logit_bias, int num_tokens, int budget,
                float ratio, float temperature, int min_tokens, bool paper) -> Tensor

    prune_tokens(Tensor tokens, Tensor? scores, Tensor? frame_embeds,
                 Tensor? query_embeds, Tensor? logit_scale, Tensor? logit_bias,
                 Tensor? token_scores, Tensor? frame_counts, int budget,
                 int total_rows, float temperature, int min_tokens)
        -> (Tensor packed, Tensor indices, Tensor frame_counts,
            Tensor cu_seqlens, Tensor frame_cu_seqlens)

    merge_neighbors(Tensor tokens, Tensor merge_keys, Tensor weights, Tensor indices,
                    int num_neighbors, bool mean) -> Tensor merged        # PruMerge

    tome_merge(Tensor tokens, Tensor merge_keys, Tensor counts, int total_rows)
        -> (Tensor merged, Tensor indices)                               # ToMe

Argument conventions (the front door, :mod:`kvtp_kernels.api`, checks them for users; every op
checks them again itself, see :mod:`kvtp_kernels._opchecks`):

- ``tokens`` [B, T, N, D]; frame relevance comes from ``scores`` [B, T], or, when it
  is ``None``, from ``frame_embeds`` [B, T, E] and ``query_embeds`` [B, C, E] with
  ``logit_scale`` / ``logit_bias`` float64 tensors of one element (METHOD.md section 1).
- ``frame_counts`` int32 [B, T]: when given it is used as is (paper mode's second
  step) and ``budget`` is ignored; otherwise counts come from the exact allocation
  with ``budget`` = K tokens per video.
- ``total_rows`` fixes the packed size (``B*K`` in exact mode, ``sum(frame_counts)``
  otherwise), so every output shape is static: the fakes below need no data.
- ``keep_counts`` with ``paper=True`` uses ``ratio`` (beta); otherwise ``budget``.
"""

from __future__ import annotations

import torch

from . import _opchecks, methods
from . import reference as ref

try:  # the C++ extension registers kvtp::keep_counts and kvtp::prune_tokens
    from . import _C  # noqa: F401

    HAS_CPP = True
    CPP_IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    HAS_CPP = False
    CPP_IMPORT_ERROR = str(exc)


# ----------------------------------------------------------------------------------
# Shape-only fakes, shared by every backend
# ----------------------------------------------------------------------------------
def _num_frames(scores, frame_embeds) -> tuple[int, int]:
    src = scores if scores is not None else frame_embeds
    return src.shape[0], src.shape[1]


def _keep_counts_fake(scores, frame_embeds, query_embeds, logit_scale, logit_bias,
                      num_tokens, budget, ratio, temperature, min_tokens, paper):
    _opchecks.check_keep_counts(scores, frame_embeds, query_embeds, logit_scale, logit_bias, num_tokens, budget,
                                ratio, temperature, min_tokens, paper)
    B, T = _num_frames(scores, frame_embeds)
    device = (scores if scores is not None else frame_embeds).device
    return torch.empty((B, T), dtype=torch.int32, device=device)


def _prune_tokens_fake(tokens, scores, frame_embeds, query_embeds, logit_scale, logit_bias,
                       token_scores, frame_counts, budget, total_rows, temperature, min_tokens):
    _opchecks.check_prune_tokens(tokens, scores, frame_embeds, query_embeds, logit_scale, logit_bias, token_scores,
                                 frame_counts, budget, total_rows, temperature, min_tokens)
    B, T, _, D = tokens.shape
    dev = tokens.device
    return (
        tokens.new_empty((total_rows, D)),
        torch.empty((total_rows,), dtype=torch.int64, device=dev),
        torch.empty((B, T), dtype=torch.int32, device=dev),
        torch.empty((B + 1,), dtype=torch.int32, device=dev),
        torch.empty((B * T + 1,), dtype=torch.int32, device=dev),
    )


# ----------------------------------------------------------------------------------
# Autograd: pruning is a row selection, so the gradient of the packed rows scatters
# back to the kept rows of ``tokens`` (zeros elsewhere). Nothing else is differentiable.
# ----------------------------------------------------------------------------------
def _prune_setup_context(ctx, inputs, output):
    ctx.tokens_shape = inputs[0].shape
    ctx.save_for_backward(output[1])


def _prune_backward(ctx, grad_packed, *_unused):
    (indices,) = ctx.saved_tensors
    B, T, N, D = ctx.tokens_shape
    grad = grad_packed.new_zeros((B * T * N, D)).index_copy_(0, indices, grad_packed)
    return (grad.view(B, T, N, D),) + (None,) * 11


def register_prune_autograd(op_name: str) -> None:
    torch.library.register_autograd(op_name, _prune_backward, setup_context=_prune_setup_context)


# ----------------------------------------------------------------------------------
# Reference ops (pure PyTorch)
# ----------------------------------------------------------------------------------
def resolve_scores_ref(scores, frame_embeds, query_embeds, logit_scale, logit_bias) -> torch.Tensor:
    """Frame logits [B, T]: ``scores`` itself, or the fused similarity of section 1."""
    if scores is not None:
        return scores
    return ref.frame_scores_ref(frame_embeds, query_embeds, logit_scale, logit_bias)


@torch.library.custom_op("kvtp::keep_counts_ref", mutates_args=())
def keep_counts_ref(
    scores: torch.Tensor | None,
    frame_embeds: torch.Tensor | None,
    query_embeds: torch.Tensor | None,
    logit_scale: torch.Tensor | None,
    logit_bias: torch.Tensor | None,
    num_tokens: int,
    budget: int,
    ratio: float,
    temperature: float,
    min_tokens: int,
    paper: bool,
) -> torch.Tensor:
    _opchecks.check_keep_counts(scores, frame_embeds, query_embeds, logit_scale, logit_bias, num_tokens, budget,
                                ratio, temperature, min_tokens, paper)
    s = resolve_scores_ref(scores, frame_embeds, query_embeds, logit_scale, logit_bias)
    return ref.keep_counts_ref(s, budget, num_tokens, temperature, min_tokens, paper, ratio)


@torch.library.custom_op("kvtp::prune_tokens_ref", mutates_args=())
def prune_tokens_ref(
    tokens: torch.Tensor,
    scores: torch.Tensor | None,
    frame_embeds: torch.Tensor | None,
    query_embeds: torch.Tensor | None,
    logit_scale: torch.Tensor | None,
    logit_bias: torch.Tensor | None,
    token_scores: torch.Tensor | None,
    frame_counts: torch.Tensor | None,
    budget: int,
    total_rows: int,
    temperature: float,
    min_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _opchecks.check_prune_tokens(tokens, scores, frame_embeds, query_embeds, logit_scale, logit_bias, token_scores,
                                 frame_counts, budget, total_rows, temperature, min_tokens, data=True)
    if frame_counts is None:
        s = resolve_scores_ref(scores, frame_embeds, query_embeds, logit_scale, logit_bias)
        frame_counts = ref.keep_counts_ref(s, budget, tokens.shape[2], temperature, min_tokens, False, 0.0)
    out = ref.prune_tokens_ref(tokens, frame_counts, token_scores)
    if out[0].shape[0] != total_rows:
        raise RuntimeError(f"kvtp::prune_tokens_ref: total_rows={total_rows} but the counts sum to {out[0].shape[0]}")
    return out


keep_counts_ref.register_fake(_keep_counts_fake)
prune_tokens_ref.register_fake(_prune_tokens_fake)
register_prune_autograd("kvtp::prune_tokens_ref")

# ----------------------------------------------------------------------------------
# Within-frame merging methods (METHOD.md section 3).
#
# Autograd: both merges are linear in the tokens once their decisions (who is kept,
# who merges into whom: piecewise constant in the keys) are fixed. The backward pass
# recomputes the op's own PyTorch formulation under autograd and differentiates it:
# PruMerge (every backend: prumerge_ref, whose values all backends equal) w.r.t.
# ``tokens`` and ``weights``; ToMe w.r.t. ``tokens``. The keys get no gradient (their
# only effect is through argmax/top-k decisions, whose derivative is zero where it
# exists), nor do indices and counts.
# ----------------------------------------------------------------------------------
def _merge_setup_context(ctx, inputs, output):
    tokens, merge_keys, weights, indices, num_neighbors, mean = inputs
    ctx.num_neighbors, ctx.mean = num_neighbors, mean
    ctx.save_for_backward(tokens, merge_keys, weights, indices)


def _merge_backward(ctx, grad):
    tokens, merge_keys, weights, indices = ctx.saved_tensors
    want_x, want_a = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    with torch.enable_grad():
        x = tokens.detach().requires_grad_(want_x)
        a = weights.detach().requires_grad_(want_a)
        y = ref.prumerge_ref(x, merge_keys.detach(), a, indices, ctx.num_neighbors, ctx.mean)
        wrt = [t for t, want in ((x, want_x), (a, want_a)) if want]
        got = list(torch.autograd.grad(y, wrt, grad)) if wrt else []
    gx = got.pop(0) if want_x else None
    ga = got.pop(0) if want_a else None
    return gx, None, ga, None, None, None


def _tome_setup_context(ctx, inputs, output):
    tokens, merge_keys, counts, total_rows = inputs
    ctx.total_rows = total_rows
    ctx.save_for_backward(tokens, merge_keys, counts)


def _tome_backward_with(fn):
    def backward(ctx, grad_rows, _grad_indices):
        tokens, merge_keys, counts = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        with torch.enable_grad():
            x = tokens.detach().requires_grad_(True)
            rows = fn(x, merge_keys.detach(), counts, ctx.total_rows)[0]
            (gx,) = torch.autograd.grad(rows, [x], grad_rows)
        return gx, None, None, None

    return backward


def register_merge_autograd(op_name: str) -> None:
    torch.library.register_autograd(op_name, _merge_backward, setup_context=_merge_setup_context)


def _merge_neighbors_fake(tokens, merge_keys, weights, indices, num_neighbors, mean):
    _opchecks.check_merge_neighbors(tokens, merge_keys, weights, indices, num_neighbors, mean)
    return tokens.new_empty((indices.shape[0], tokens.shape[-1]))


def _tome_merge_fake(tokens, merge_keys, counts, total_rows):
    _opchecks.check_tome_merge(tokens, merge_keys, counts, total_rows)
    return (tokens.new_empty((total_rows, tokens.shape[-1])),
            torch.empty((total_rows,), dtype=torch.int64, device=tokens.device))


@torch.library.custom_op("kvtp::merge_neighbors_ref", mutates_args=())
def merge_neighbors_ref(
    tokens: torch.Tensor,
    merge_keys: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    num_neighbors: int,
    mean: bool,
) -> torch.Tensor:
    _opchecks.check_merge_neighbors(tokens, merge_keys, weights, indices, num_neighbors, mean, data=True)
    return ref.prumerge_ref(tokens, merge_keys, weights, indices, num_neighbors, mean)


@torch.library.custom_op("kvtp::tome_merge_ref", mutates_args=())
def tome_merge_ref(
    tokens: torch.Tensor, merge_keys: torch.Tensor, counts: torch.Tensor, total_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    _opchecks.check_tome_merge(tokens, merge_keys, counts, total_rows, data=True)
    return ref.tome_ref(tokens, merge_keys, counts)


@torch.library.custom_op("kvtp::tome_merge", mutates_args=())
def tome_merge(
    tokens: torch.Tensor, merge_keys: torch.Tensor, counts: torch.Tensor, total_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    _opchecks.check_tome_merge(tokens, merge_keys, counts, total_rows, data=True)
    return methods.tome_merge(tokens, merge_keys, counts, total_rows)


merge_neighbors_ref.register_fake(_merge_neighbors_fake)
tome_merge_ref.register_fake(_tome_merge_fake)
tome_merge.register_fake(_tome_merge_fake)
register_merge_autograd("kvtp::merge_neighbors_ref")
torch.library.register_autograd("kvtp::tome_merge_ref",
                                _tome_backward_with(lambda x, k, c, r: ref.tome_ref(x, k, c)),
                                setup_context=_tome_setup_context)
torch.library.register_autograd("kvtp::tome_merge", _tome_backward_with(methods.tome_merge),
                                setup_context=_tome_setup_context)

# ----------------------------------------------------------------------------------
# C++ ops: schemas and CPU kernels live in csrc/; fakes and autograd are added here.
# ----------------------------------------------------------------------------------
if HAS_CPP:
    torch.library.register_fake("kvtp::keep_counts")(_keep_counts_fake)
    torch.library.register_fake("kvtp::prune_tokens")(_prune_tokens_fake)
    torch.library.register_fake("kvtp::merge_neighbors")(_merge_neighbors_fake)
    register_prune_autograd("kvtp::prune_tokens")
    register_merge_autograd("kvtp::merge_neighbors")

# ----------------------------------------------------------------------------------
# Triton ops: optional (triton may be missing, e.g. on a CPU-only install).
# ----------------------------------------------------------------------------------
try:
    from .kernels import merge_triton as _merge_triton  # registers kvtp::merge_neighbors_triton
    from .kernels import prune_triton as _prune_triton  # registers the *_triton ops

    HAS_TRITON = True
    TRITON_IMPORT_ERROR: str | None = None
except ImportError as exc:
    _prune_triton = _merge_triton = None
    HAS_TRITON = False
    TRITON_IMPORT_ERROR = str(exc)

if HAS_TRITON:
    register_prune_autograd("kvtp::prune_tokens_triton")
    register_merge_autograd("kvtp::merge_neighbors_triton")
