"""The public front door: ``keep_counts`` and ``prune``.

Everything here runs on the host before any kernel: argument checks (each error
names the argument, what was expected and what was given; nothing is written when
one is raised), budget resolution and backend choice. The work itself is torch ops
(see :mod:`kvtp_kernels.ops`): one per call for topk/random in exact mode; paper mode
adds a keep-counts op and one host sync; prumerge adds the merge op; tome is a
keep-counts op and the ToMe op.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from typing import NamedTuple

import torch

from . import ops, options
from ._errors import as_int, fail
from ._errors import describe as _describe
from ._numerics import FLOAT64_EXACT, INT32_MAX, offsets_from_counts
from .options import ALLOCATIONS, BACKENDS, MERGES, METHODS, SCORE_DTYPES, TOKEN_DTYPES


class PrunedTokens(NamedTuple):
    """What :func:`prune` returns (METHOD.md section 4).

    Attributes:
        tokens: [sum_b K_b, D], dtype of the input: kept rows in (video, frame,
            raster) order, bit-identical copies of the input rows.
        indices: int64 [sum_b K_b]: flat index of each kept row into the input's
            B*T*N rows (``t*N + n`` for a single video).
        frame_counts: int32 [B, T] ([T] for a single video): tokens kept per frame.
        cu_seqlens: int32 [B + 1]: video offsets into ``tokens`` (flash-attn varlen).
        frame_cu_seqlens: int32 [B*T + 1]: frame offsets into ``tokens``.
        max_seqlen: int: the largest K_b (no sync needed in exact mode: it is K).
    """

    tokens: torch.Tensor
    indices: torch.Tensor
    frame_counts: torch.Tensor
    cu_seqlens: torch.Tensor
    frame_cu_seqlens: torch.Tensor
    max_seqlen: int


# ----------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------
_fail = functools.partial(fail, "kvtp_kernels")


def _check_tensor(arg: str, t: object, *, shape: tuple, device: torch.device | None, floating: bool = True) -> None:
    """``shape`` entries: int = exact size, None = any size. Builds no message unless it fails
    (sizes may be symbolic under torch.compile)."""
    if not isinstance(t, torch.Tensor):
        _fail(arg, "a torch.Tensor", type(t).__name__)
    if t.dim() != len(shape) or any(s is not None and s != g for s, g in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        _fail(arg, f"of shape {want}", _describe(t))
    if floating and t.dtype not in SCORE_DTYPES:
        _fail(arg, "a floating-point tensor (float32, float16, bfloat16 or float64)", _describe(t))
    if device is not None and t.device != device:
        _fail(arg, f"on {device} (the device of `tokens`)", _describe(t))


def resolve_budget(budget: object, num_frames: int, num_tokens: int, min_tokens: int) -> tuple[int, float]:
    """Budget -> (K tokens per video, ratio beta).

    A float in (0, 1] is a ratio: ``K = floor(beta*T*N + 1/2)``. An int is K itself
    (``ratio = K / (T*N)`` for paper mode). K must lie in [m*T, N*T].
    """
    T, N, m = num_frames, num_tokens, min_tokens
    budget = options.check_budget(_fail, budget)
    if isinstance(budget, float):
        K = math.floor(budget * T * N + 0.5)
        ratio = budget
    else:
        if budget > N * T:
            _fail("budget", f"<= T*N = {T}*{N} = {T * N} as a token count", repr(budget))
        K = budget
        ratio = K / (T * N)
    if K < m * T:
        _fail("budget", f"at least min_tokens_per_frame*T = {m}*{T} = {m * T} tokens per video",
              f"{budget!r} (K = {K})")
    return K, ratio


def _check_common(temperature, allocation, min_tokens_per_frame, num_tokens) -> tuple[float, int]:
    """-> (temperature as a float, min_tokens_per_frame as an int)."""
    temperature = options.check_temperature(_fail, temperature)
    options.check_choice(_fail, "allocation", allocation, ALLOCATIONS)
    m = options.check_min_tokens(_fail, min_tokens_per_frame)
    if m > num_tokens:
        _fail("min_tokens_per_frame", f"<= N = {num_tokens} (tokens per frame)", repr(m))
    return temperature, m


def _as_logit_param(arg: str, value: object, device: torch.device) -> torch.Tensor | None:
    """A float or one-element tensor -> float64 tensor of shape [1] on ``device`` (no sync)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            _fail(arg, "a float or a floating-point tensor with one element", _describe(value))
        if value.device != device:
            _fail(arg, f"on {device} (the device of `tokens`)", _describe(value))
        return value.detach().reshape(1).to(torch.float64)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        _fail(arg, "a finite float or a one-element tensor", repr(value))
    return torch.full((1,), float(value), dtype=torch.float64, device=device)


def _check_frame_inputs(scores, frame_embeds, query_embeds, logit_scale, logit_bias, B, T, device):
    """Checks the frame-relevance inputs; returns logit_scale/bias as tensors."""
    if scores is not None:
        for arg, value in (("frame_embeds", frame_embeds), ("query_embeds", query_embeds),
                           ("logit_scale", logit_scale), ("logit_bias", logit_bias)):
            if value is not None:
                _fail(arg, "None when `scores` is given (pass scores=None to score frames from embeddings)",
                      "a value")
        _check_tensor("scores", scores, shape=(B, T), device=device)
        return None, None
    if frame_embeds is None or query_embeds is None:
        _fail("scores", "a [B, T] tensor, or None together with both `frame_embeds` and `query_embeds`",
              f"None with frame_embeds={'set' if frame_embeds is not None else None}, "
              f"query_embeds={'set' if query_embeds is not None else None}")
    _check_tensor("frame_embeds", frame_embeds, shape=(B, T, None), device=device)
    E = frame_embeds.shape[-1]
    _check_tensor("query_embeds", query_embeds, shape=(B, None, E), device=device)
    if query_embeds.shape[1] == 0 or E == 0:
        _fail("query_embeds", "non-empty (at least one chunk, E > 0)", _describe(query_embeds))
    return _as_logit_param("logit_scale", logit_scale, device), _as_logit_param("logit_bias", logit_bias, device)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_backend(backend: str | None, device: torch.device) -> str:
    """``None`` -> "triton" for CUDA tensors, "cpu" (C++) for CPU tensors."""
    if backend is None:
        backend = "triton" if device.type == "cuda" else "cpu"
        if backend == "cpu" and device.type != "cpu":
            backend = "reference"
    options.check_choice(_fail, "backend", backend, BACKENDS, allow_none=True)
    if backend == "cpu":
        if device.type != "cpu":
            _fail("backend", f"'triton' or 'reference' for tensors on {device} ('cpu' runs the C++ CPU kernel)",
                  repr(backend))
        if not ops.HAS_CPP:
            raise RuntimeError(f"kvtp_kernels: the C++ extension is not built ({ops.CPP_IMPORT_ERROR}); "
                               "reinstall with `pip install --no-build-isolation -e .` or use backend='reference'")
    if backend == "triton":
        if not ops.HAS_TRITON:
            raise RuntimeError(f"kvtp_kernels: backend='triton' needs triton ({ops.TRITON_IMPORT_ERROR})")
        if device.type != "cuda" and not _interpreting():
            _fail("backend", "'cpu' or 'reference' for CPU tensors (or set TRITON_INTERPRET=1 before "
                  "importing kvtp_kernels to run the Triton kernels in the interpreter)", repr(backend))
    return backend


def _check_count_bounds(T, N) -> None:
    """Counts are int32 and every count, share and budget is an exact float64 integer."""
    if N > INT32_MAX:
        _fail("num_tokens", f"<= 2**31 - 1 = {INT32_MAX} (per-frame counts are int32)", repr(N))
    if T * N > FLOAT64_EXACT:
        _fail("num_tokens", f"such that T*N <= 2**53 (exact float64 counts; T = {T})", repr(N))


class _PruneCall(NamedTuple):
    """A checked :func:`prune` call: batched inputs and resolved settings."""

    x: torch.Tensor  # tokens [B, T, N, D]
    batched: bool
    frames: dict  # scores, frame_embeds, query_embeds, logit_scale, logit_bias as the ops take them
    token_scores: torch.Tensor | None
    merge_keys: torch.Tensor
    num_neighbors: int | None
    generator: object
    K: int
    ratio: float
    temperature: float
    min_tokens: int
    allocation: str
    method: str
    mean: bool
    backend: str


# ----------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------
def keep_counts(
    scores: torch.Tensor,
    budget: int | float,
    num_tokens: int,
    *,
    temperature: float = 2.0,
    allocation: str = "exact",
    min_tokens_per_frame: int = 0,
    backend: str | None = None,
) -> torch.Tensor:
    """Per-frame keep counts from frame relevance logits (METHOD.md section 2).

    Args:
        scores: [B, T] or [T] frame logits, any float dtype, any device. NaN counts
            as -inf; when the largest score is infinite the frames holding it share
            the probability equally (all -inf/NaN: uniform).
        budget: float in (0, 1] = ratio beta (K = floor(beta*T*N + 1/2) tokens per
            video), or int = K.
        num_tokens: N, tokens per frame.
        temperature: tau in ``p = softmax(s / tau)``, > 0.
        allocation: "exact" (sum = K, m <= k <= N, largest remainder) or "paper"
            (``max(m, floor(N * min(beta*T*p, 1)))``, sum <= K).
        min_tokens_per_frame: m.
        backend: None (by device), "reference", "cpu" or "triton".

    Returns:
        int32 [B, T] (or [T]) on the device of ``scores``.
    """
    if not isinstance(scores, torch.Tensor):
        _fail("scores", "a torch.Tensor of shape [B, T] or [T]", type(scores).__name__)
    if scores.dim() not in (1, 2):
        _fail("scores", "of shape [B, T] or [T]", _describe(scores))
    batched = scores.dim() == 2
    s = scores if batched else scores.unsqueeze(0)
    B, T = s.shape
    if B == 0 or T == 0:
        _fail("scores", "non-empty (B > 0, T > 0)", _describe(scores))
    _check_tensor("scores", s, shape=(B, T), device=None)
    num_tokens = options.check_number(_fail, "num_tokens", num_tokens, lo=1, integer=True)
    _check_count_bounds(T, num_tokens)
    temperature, m = _check_common(temperature, allocation, min_tokens_per_frame, num_tokens)
    K, ratio = resolve_budget(budget, T, num_tokens, m)
    backend = select_backend(backend, s.device)
    counts = ops.KEEP_COUNTS(backend, scores=s, frame_embeds=None, query_embeds=None, logit_scale=None,
                             logit_bias=None, num_tokens=num_tokens, budget=K, ratio=ratio, temperature=temperature,
                             min_tokens=m, paper=allocation == "paper")
    return counts if batched else counts.squeeze(0)


def prune(
    tokens: torch.Tensor,
    scores: torch.Tensor | None,
    budget: int | float,
    *,
    token_scores: torch.Tensor | None = None,
    temperature: float = 2.0,
    allocation: str = "exact",
    min_tokens_per_frame: int = 0,
    frame_embeds: torch.Tensor | None = None,
    query_embeds: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float | None = None,
    logit_bias: torch.Tensor | float | None = None,
    method: str = "topk",
    merge_keys: torch.Tensor | None = None,
    merge: str = "paper",
    num_neighbors: int | None = None,
    generator: torch.Generator | int | None = None,
    backend: str | None = None,
) -> PrunedTokens:
    """KVTP: keep a relevance-dependent number of tokens per frame and pack them.

    Args:
        tokens: [B, T, N, D] or [T, N, D] vision tokens; float32, float16, bfloat16
            (or float64); any strides.
        scores: [B, T] / [T] frame relevance logits (any float dtype), or ``None``
            when ``frame_embeds`` and ``query_embeds`` are given.
        budget: float in (0, 1] = ratio kept per video (K = floor(beta*T*N + 1/2)),
            or int = K tokens kept per video.
        token_scores: [B, T, N] / [T, N] importance of each token in its frame
            (higher is kept first; ties to the lower index; NaN lowest). Default:
            distinctiveness ``1 - cos(x, mean of the frame)`` (METHOD.md section 3).
            Required by ``method="prumerge"`` (they are its merge weights a_j).
        temperature: tau of the frame softmax (> 0).
        allocation: "exact" (default; sum of counts = K, static output size, no host
            sync) or "paper" (the authors' rule; one device-to-host sync to size
            the output).
        min_tokens_per_frame: m, every frame keeps at least m tokens (exact mode:
            m <= k_t <= N; paper mode: ``max(m, k_t)``).
        frame_embeds: [B, T, E] frame embeddings, with ``query_embeds`` [B, C, E]
            (C query chunks): frame logits are then computed in the same kernel as
            ``max_c exp(logit_scale) * cos(q_c, f_t) + logit_bias``.
        logit_scale, logit_bias: floats or one-element tensors (SigLIP's
            ``logit_scale`` is a log scale); default 0.
        method: what happens inside a frame once KVTP has fixed its count k_t:
            "topk" (keep the k_t best by ``token_scores``), "random" (k_t uniformly
            at random, raster order; seeded by ``generator``), "prumerge" (top-k by
            ``token_scores``, then every kept token absorbs its ``num_neighbors``
            most similar tokens of the frame), "tome" (bipartite soft matching down
            to k_t tokens, size-weighted means; output ordered by representative).
            For merging methods ``indices`` names each row's representative token.
        merge_keys: [B, T, N, Dk] / [T, N, Dk] keys whose cosine similarity drives
            prumerge/tome (default: the tokens themselves).
        merge: prumerge's fold: "paper" (``x_i + sum_j a_j x_j``, unnormalised, as
            the authors do) or "mean" (a-weighted mean of i and its neighbours).
        num_neighbors: prumerge's neighbours per kept token, in [0, N-1]; default
            ``min(32, N-1)`` (the authors use 32).
        generator: ``method="random"`` only: a ``torch.Generator`` on the tokens'
            device (``torch.rand``), or an int seed (a counter-based hash of the seed and
            the token's position: the same draw on every device and backend, and it
            traces under ``torch.compile(fullgraph=True)``); None: the global generator.
        backend: None picks by device (CUDA -> "triton", CPU -> "cpu", the C++
            kernel); "reference", "cpu" or "triton" force one.

    Returns:
        :class:`PrunedTokens`. For [T, N, D] input, ``frame_counts`` is [T].
    """
    a = _check_prune(tokens, scores, budget, token_scores, temperature, allocation, min_tokens_per_frame,
                     frame_embeds, query_embeds, logit_scale, logit_bias, method, merge_keys, merge, num_neighbors,
                     generator, backend)
    counts, total, max_seqlen = _plan_counts(a)
    packed, indices, frame_counts, cu_seqlens, frame_cu_seqlens = _run_method(a, counts, total)
    if not a.batched:
        frame_counts = frame_counts.squeeze(0)
    return PrunedTokens(packed, indices, frame_counts, cu_seqlens, frame_cu_seqlens, max_seqlen)


def _check_prune(tokens, scores, budget, token_scores, temperature, allocation, min_tokens_per_frame, frame_embeds,
                 query_embeds, logit_scale, logit_bias, method, merge_keys, merge, num_neighbors, generator,
                 backend) -> _PruneCall:
    """Checks every argument of :func:`prune`, in the order errors are reported; -> the
    batched inputs and the resolved settings (K, ratio, backend, ...)."""
    if not isinstance(tokens, torch.Tensor):
        _fail("tokens", "a torch.Tensor of shape [B, T, N, D] or [T, N, D]", type(tokens).__name__)
    if tokens.dim() not in (3, 4):
        _fail("tokens", "of shape [B, T, N, D] or [T, N, D]", _describe(tokens))
    if tokens.dtype not in TOKEN_DTYPES:
        _fail("tokens", "a floating-point tensor (float32, float16, bfloat16 or float64)", _describe(tokens))
    batched = tokens.dim() == 4
    x = tokens if batched else tokens.unsqueeze(0)
    B, T, N, D = x.shape
    if min(B, T, N, D) == 0:
        _fail("tokens", "non-empty (B, T, N, D > 0)", _describe(tokens))
    device = x.device

    def batch(arg, t):
        if t is None or batched:
            return t
        if not isinstance(t, torch.Tensor):
            _fail(arg, "a torch.Tensor", type(t).__name__)
        return t.unsqueeze(0)

    s, fe, qe = batch("scores", scores), batch("frame_embeds", frame_embeds), batch("query_embeds", query_embeds)
    ls, lb = _check_frame_inputs(s, fe, qe, logit_scale, logit_bias, B, T, device)
    ts = batch("token_scores", token_scores)
    if ts is not None:
        _check_tensor("token_scores", ts, shape=(B, T, N), device=device)
    _check_count_bounds(T, N)
    temperature, m = _check_common(temperature, allocation, min_tokens_per_frame, N)
    K, ratio = resolve_budget(budget, T, N, m)
    if B * K > INT32_MAX:
        _fail("budget", f"such that B*K fits int32 cu_seqlens (<= {INT32_MAX})", f"B*K = {B * K}")
    keys, n_neighbors, generator = _check_method(method, ts, batch("merge_keys", merge_keys), merge, num_neighbors,
                                                 generator, B, T, N, device)
    backend = select_backend(backend, device)
    if allocation == "paper" and torch.compiler.is_compiling():
        _fail("allocation", "'exact' under torch.compile: 'paper' sizes its output from the counts with a "
              "device-to-host sync, which a compiled graph cannot hold (call prune outside the compiled region, "
              "or use allocation='exact', whose output size is static)", repr(allocation))
    return _PruneCall(x=x, batched=batched, frames=dict(scores=s, frame_embeds=fe, query_embeds=qe,
                                                             logit_scale=ls, logit_bias=lb),
                           token_scores=ts, merge_keys=x if keys is None else keys, num_neighbors=n_neighbors,
                           generator=generator, K=K, ratio=ratio, temperature=temperature, min_tokens=m,
                           allocation=allocation, method=method, mean=merge == "mean", backend=backend)


def _keep_counts_op(a: _PruneCall, paper: bool) -> torch.Tensor:
    return ops.KEEP_COUNTS(a.backend, **a.frames, num_tokens=a.x.shape[2], budget=a.K, ratio=a.ratio,
                           temperature=a.temperature, min_tokens=a.min_tokens, paper=paper)


def _plan_counts(a: _PruneCall) -> tuple[torch.Tensor | None, int, int]:
    """-> (frame counts, or None when the prune op allocates them itself; total rows; max_seqlen).

    Exact mode knows its sizes statically (B*K rows, K per video); paper mode computes the
    counts first, then reads their sums in one host sync for the data-dependent size.
    """
    if a.allocation == "exact":
        return None, a.x.shape[0] * a.K, a.K
    counts = _keep_counts_op(a, paper=True)
    per_video = counts.sum(dim=1, dtype=torch.int64).tolist()  # the one host sync
    return counts, sum(per_video), max(per_video)


def _run_method(a: _PruneCall, counts: torch.Tensor | None, total: int) -> tuple:
    """The within-frame method's ops -> (packed, indices, frame_counts, cu_seqlens, frame_cu_seqlens)."""
    if a.method == "tome":
        if counts is None:
            counts = _keep_counts_op(a, paper=False)
        packed, indices = ops.TOME_MERGE(a.backend, tokens=a.x, merge_keys=a.merge_keys, counts=counts,
                                         total_rows=total)
        return packed, indices, counts, *offsets_from_counts(counts)
    token_scores = a.token_scores
    if a.method == "random":
        token_scores = _random_scores(a.generator, tuple(a.x.shape[:3]), a.x.device)
    packed, indices, frame_counts, cu_seqlens, frame_cu_seqlens = ops.PRUNE_TOKENS(
        a.backend, tokens=a.x, **a.frames, token_scores=token_scores, frame_counts=counts, budget=a.K,
        total_rows=total, temperature=a.temperature, min_tokens=a.min_tokens)
    if a.method == "prumerge":
        packed = ops.MERGE_NEIGHBORS(a.backend, tokens=a.x, merge_keys=a.merge_keys, weights=token_scores,
                                     indices=indices, num_neighbors=a.num_neighbors, mean=a.mean)
    return packed, indices, frame_counts, cu_seqlens, frame_cu_seqlens


def _check_method(method, token_scores, merge_keys, merge, num_neighbors, generator, B, T, N, device):
    """Checks the within-frame method's arguments; returns (merge_keys, num_neighbors)."""
    options.check_choice(_fail, "method", method, METHODS)
    merging = method in ("prumerge", "tome")
    if merge_keys is not None:
        if not merging:
            _fail("merge_keys", f"None for method={method!r} (only 'prumerge' and 'tome' merge)", "a tensor")
        _check_tensor("merge_keys", merge_keys, shape=(B, T, N, None), device=device)
        if merge_keys.shape[-1] == 0:
            _fail("merge_keys", "non-empty (Dk > 0)", _describe(merge_keys))
    if generator is not None and method != "random":
        _fail("generator", f"None for method={method!r} (only 'random' draws)", repr(generator))
    if method == "random":
        if token_scores is not None:
            _fail("token_scores", "None for method='random' (tokens are drawn uniformly)", "a tensor")
        if isinstance(generator, torch.Generator) and generator.device.type != device.type:
            _fail("generator", f"a torch.Generator on {device.type} (the device of `tokens`)",
                  f"a generator on {generator.device}")
        if generator is not None and not isinstance(generator, torch.Generator):
            generator = as_int(_fail, "generator", generator, what="a torch.Generator or an int seed")
    if method == "tome" and token_scores is not None:
        _fail("token_scores", "None for method='tome' (ToMe merges by key similarity, not by score)", "a tensor")
    if method == "prumerge":
        if token_scores is None:
            _fail("token_scores", "given for method='prumerge': they are its merge weights a_j (e.g. the "
                  "attention of SigLIP's pooling head, FrameRelevancePredictor's token importance); "
                  "there is no default", None)
        options.check_choice(_fail, "merge", merge, MERGES)
        if num_neighbors is None:
            num_neighbors = min(32, N - 1)
        num_neighbors = options.check_num_neighbors(_fail, num_neighbors)
        if num_neighbors > N - 1:
            _fail("num_neighbors", f"<= N-1 = {N - 1} (the other tokens of a frame)", repr(num_neighbors))
    elif num_neighbors is not None:
        _fail("num_neighbors", f"None for method={method!r} (only 'prumerge' has neighbours)", repr(num_neighbors))
    return merge_keys, num_neighbors, generator


def _random_scores(generator, shape, device) -> torch.Tensor:
    """iid uniform token scores in [0, 1): their top-k is a uniformly random k-subset.

    A ``torch.Generator`` draws with ``torch.rand``. An int seed draws from a counter-based
    hash of (seed, flat position) in int64 tensor ops: no generator object, so it traces
    under ``torch.compile(fullgraph=True)``, and the same seed gives the same scores on
    every device and backend.
    """
    if generator is None or isinstance(generator, torch.Generator):  # None: the global generator
        return torch.rand(shape, generator=generator, device=device)
    return hashed_uniform(generator, shape, device)


_M32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash (xor-shift-multiply, multiplier < 2**27 so int64 never overflows);
    works on Python ints and int64 tensors of values in [0, 2**32)."""
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def hashed_uniform(seed: int, shape, device) -> torch.Tensor:
    """float64 values in [0, 1) (53 random bits each) from ``seed`` and the flat position."""
    seed &= 2**64 - 1
    k1 = _mix32((seed & _M32) ^ _mix32((seed >> 32) ^ 0x9E3779B9))
    k2 = _mix32(k1 ^ 0x85EBCA6B)
    idx = torch.arange(math.prod(shape), dtype=torch.int64, device=device)
    a = _mix32(_mix32((idx & _M32) ^ k1) ^ (idx >> 32))
    b = _mix32(a ^ k2)
    return ((a << 21) + (b >> 11)).to(torch.float64).mul_(2.0**-53).view(shape)
