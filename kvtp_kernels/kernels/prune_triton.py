"""Triton backend of ``kvtp::keep_counts`` and ``kvtp::prune_tokens`` (METHOD.md sections 1-4).

Two ops, registered with the public ``torch.library.triton_op`` + ``wrap_triton``:

- ``kvtp::keep_counts_triton``: grid ``(B,)``, one program per video computes its T keep
  counts (exact or paper allocation) and stores them.
- ``kvtp::prune_tokens_triton``: ONE launch per call, grid ``(B*T,)``, one program
  (16 warps) per frame. Each program

  1. gets its frame's keep count ``k_t`` and first output row. Exact mode
     (``frame_counts`` is None): it recomputes its video's T counts in registers (frame
     logits, softmax, exact allocation: O(T^2) compare-and-select work in
     [BLOCK_T, 2, CHUNK_T] tiles) and takes ``row0 = b*K + sum_{t'<t} k_t'``. All
     programs of a video run the same instructions on the same data, so they agree on
     every count without communicating: no second launch, no grid-wide barrier, no host
     sync, and every output size is static (``total_rows = B*K``), so CUDA graphs and
     ``torch.compile(fullgraph=True)`` work. Paper mode (``frame_counts`` given, a
     constexpr flag): it reads ``k_t`` and sums the counts of all earlier frames.
  2. scores its N tokens in float64: loads ``token_scores``, or computes the
     distinctiveness ``1 - cos(x_i, mean_i x_i)`` in ONE pass over D: a [BLOCK_N,
     BLOCK_D] tile holds every token of the frame for a chunk of columns, so the column
     means of the chunk are complete inside the tile, and ``<x_i, mu>``, ``|x_i|^2`` and
     ``|mu|^2`` accumulate in the same pass (next chunk prefetched during the math).
  3. ranks its tokens by comparison counts ([BLOCK_N, CHUNK_N] tiles; no sort, no
     top-k), keeps those with rank < ``k_t``, and gives each kept token its output row
     in raster order with ``tl.cumsum`` over the keep flags.
  4. writes ``indices``, ``frame_counts``, ``frame_cu_seqlens`` (``cu_seqlens`` from the
     video's last frame), then copies the kept rows as dense [ROWS, BLOCK_DC] tiles:
     the kept rows are compacted first, so no lane is masked for being pruned.

  Its inputs are all loaded in the kernel body (helpers get values), which keeps
  torch.compile's mutation analysis exact: only the five outputs are written, so nothing
  is cloned around the launch.

Why one program per frame: the frame is the unit whose tokens must all be seen before
any row can be placed (column mean, then rank), and it makes the prune one launch with
no inter-CTA traffic. The cost is parallelism when B*T is below the SM count (B=1,
T=64 fills 64 of an H100's 132 SMs); splitting D across CTAs would need a cross-CTA
reduction of the distinctiveness sums (a second launch or a last-CTA-done protocol).

Numerics follow :mod:`kvtp_kernels.reference` (the contract): every decision in float64
with the reference's operation order where it decides an integer (sums may associate
differently, and a GPU may contract a*b+c into an FMA: both are float64 rounding,
which the reference allows). Python floats are passed as their IEEE bits
(``_f64_bits``) because Triton types a Python float argument as fp32. Offsets are int64
(B*T*N*D may exceed 2^31). Tokens are read with their own strides (no copy) and moved
with plain loads and stores, so packed rows are bit-identical to the input rows.
"""

import os
import struct

import torch
import triton
import triton.language as tl

from .. import _opchecks, reference

# Kernels may read module globals only as constexprs. Both are float64 values, so they
# enter the kernels through tl.full(..., tl.float64) (a bare float literal is fp32).
_NORM_EPS = tl.constexpr(reference.NORM_EPS)
_PROB_FLUSH = tl.constexpr(reference.PROB_FLUSH)

# Register tiles, in elements per thread (x 32 x num_warps = elements per tile), by the
# register cost of what is done on them (ptxas -v, sm_90a): float64 compare-and-select
# sweeps (g(lam), ranks) cost ~7 registers per element, tiles loaded and reduced in
# float64 ~4, native-dtype copies ~1. The prune kernel runs 16 warps: one CTA per frame
# and, at B*T = 64 frames, one CTA per SM, so the CTA itself must keep ~25 KB of loads
# in flight; at these sizes it fits the 128 registers a 512-thread CTA may use (a few
# bytes spilled at most).
_GPU_COPY_PER_THREAD = 32  # copy tile [ROWS, BLOCK_DC], int32 slot match [ROWS, BLOCK_N]
_GPU_F64_PER_THREAD = 16  # distinctiveness [BLOCK_N, BLOCK_D], frame embeddings [BLOCK_T, BLOCK_E]
_GPU_COMPARE_PER_THREAD = 4  # g(lam) [BLOCK_T, 2, CHUNK_T], ranks [BLOCK_T, CHUNK_T], [BLOCK_N, CHUNK_N]
# Under TRITON_INTERPRET=1 every Triton op costs ~0.1-1 ms of Python whatever its size,
# so the interpreter runs the same kernels with much bigger tiles (fewer loop trips, same
# code; tests/test_prune_triton.py also runs them at the GPU sizes). Read once, like
# Triton itself, which picks the interpreter when it decorates the kernels.
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
_INTERPRETER_TILE = 1 << 17
_NUM_WARPS_PRUNE = 16
_NUM_WARPS_COUNTS = 4


# ----------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------
def _f64_bits(value: float) -> int:
    """IEEE-754 bits of a Python float as a signed int64.

    Triton types a Python float argument as fp32; the kernels take float64 parameters
    as these bits and bitcast them back (exact).
    """
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


# ----------------------------------------------------------------------------------
# Section 1: frame logits
# ----------------------------------------------------------------------------------
@triton.jit
def _frame_logits(
    b,
    scores_ptr, stride_sb, stride_st,
    frame_ptr, stride_fb, stride_ft, stride_fe,
    query_ptr, stride_qb, stride_qc, stride_qe,
    scale_ptr, bias_ptr,
    T, E, C,
    FROM_EMBEDS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """Frame logits of video ``b`` as float64 [BLOCK_T] (lanes >= T are padding).

    ``scores[b, t]``, or the fused SigLIP similarity (METHOD.md section 1)
    ``s_t = max_c( exp(logit_scale) * <q_c, f_t> / (|q_c| |f_t|) + logit_bias )`` with
    norms clamped at 1e-12 (``F.normalize``). One pass over E per query chunk: the dot
    product and both squared norms accumulate together.

    Used by ``_keep_counts_kernel``; ``_prune_tokens_kernel`` has the same code written
    out, because its store addresses depend on the logits (see its docstring).
    """
    offs_t = tl.arange(0, BLOCK_T)
    valid_t = offs_t < T
    if FROM_EMBEDS:
        eps = tl.full([], _NORM_EPS, tl.float64)
        scale = tl.full([], 1.0, tl.float64)
        if HAS_SCALE:
            scale = tl.exp(tl.load(scale_ptr).to(tl.float64))
        bias = tl.full([], 0.0, tl.float64)
        if HAS_BIAS:
            bias = tl.load(bias_ptr).to(tl.float64)
        frame_rows = frame_ptr + b * stride_fb + offs_t.to(tl.int64)[:, None] * stride_ft
        best = tl.full([BLOCK_T], float("-inf"), tl.float64)
        for c in range(C):
            q_row = query_ptr + b * stride_qb + tl.cast(c, tl.int64) * stride_qc
            qf = tl.full([BLOCK_T], 0.0, tl.float64)
            ff = tl.full([BLOCK_T], 0.0, tl.float64)
            qq = tl.full([BLOCK_E], 0.0, tl.float64)
            for e0 in range(0, E, BLOCK_E):
                offs_e = e0 + tl.arange(0, BLOCK_E)
                valid_e = offs_e < E
                q = tl.load(q_row + offs_e.to(tl.int64) * stride_qe, mask=valid_e, other=0.0).to(tl.float64)
                f = tl.load(frame_rows + offs_e.to(tl.int64)[None, :] * stride_fe,
                            mask=valid_t[:, None] & valid_e[None, :], other=0.0).to(tl.float64)
                qf += tl.sum(f * q[None, :], axis=1)
                ff += tl.sum(f * f, axis=1)
                qq += q * q
            q_norm = tl.maximum(tl.sqrt(tl.sum(qq, axis=0)), eps, propagate_nan=tl.PropagateNan.ALL)
            f_norm = tl.maximum(tl.sqrt(ff), eps, propagate_nan=tl.PropagateNan.ALL)
            logit = scale * (qf / (q_norm * f_norm)) + bias
            best = tl.maximum(best, logit, propagate_nan=tl.PropagateNan.ALL)  # torch.amax keeps NaN
        s = best
    else:
        s = tl.load(scores_ptr + b * stride_sb + offs_t.to(tl.int64) * stride_st,
                    mask=valid_t, other=0.0).to(tl.float64)
    return s


# ----------------------------------------------------------------------------------
# Section 2: frame logits -> keep counts
# ----------------------------------------------------------------------------------
@triton.jit
def _frame_probs(s, valid_t, temperature):
    """``p = softmax(s / tau)`` in float64 with the reference's NaN/inf rules.

    NaN counts as -inf; ``p < 1e-200`` is flushed to 0; when the largest logit is
    infinite the frames holding it share the probability equally.
    """
    neg_inf = float("-inf")
    s = tl.where(s != s, neg_inf, s)
    s = tl.where(valid_t, s, neg_inf)
    mx = tl.max(s, axis=0)
    mx_is_inf = (mx == float("inf")) | (mx == neg_inf)
    at_max = (valid_t & (s == mx)).to(tl.float64)
    # An infinite max makes the softmax NaN (the reference computes it, then replaces
    # it): exponentiate zeros instead, so no NaN is ever formed.
    shifted = tl.where(mx_is_inf, 0.0, s) - tl.where(mx_is_inf, 0.0, mx)
    e = tl.where(valid_t, tl.exp(shifted / temperature), 0.0)
    e_sum, n_at_max = tl.split(tl.sum(tl.join(e, at_max), axis=0))  # one reduction for both
    p = e / e_sum
    p = tl.where(p < tl.full([], _PROB_FLUSH, tl.float64), 0.0, p)
    return tl.where(mx_is_inf, at_max / n_at_max, p)


@triton.jit
def _exact_counts(p, valid_t, T, budget, num_tokens, min_tokens,
                  BLOCK_T: tl.constexpr, CHUNK_T: tl.constexpr):
    """Exact allocation (METHOD.md section 2), step by step as ``exact_counts_ref``.

    ``k_t`` integers with ``sum_t k_t = K`` and ``m <= k_t <= N``: ``a_t = K p_t``; the
    breakpoints ``m/a_t`` and ``N/a_t`` of ``g(lam) = sum_t clamp(lam a_t, m, N)`` bracket
    the solution (``lo`` = largest candidate with ``g <= K``, ``hi`` the next); every
    frame's state (capped / floored / free) is read at the midpoint; ``lam`` solves the
    linear piece; frames with ``p = 0`` share what saturated frames cannot hold; largest
    remainder rounding, ties to the lower frame index. g at the 2T candidates is
    O(T^2): frames are swept in chunks of CHUNK_T against all candidates at once.

    Returns int32 [BLOCK_T] (0 on padding lanes).
    """
    offs_t = tl.arange(0, BLOCK_T)
    K = tl.cast(budget, tl.float64)
    N = tl.cast(num_tokens, tl.float64)
    m = tl.cast(min_tokens, tl.float64)
    inf = float("inf")

    # Step 1. a is 0 on padding lanes (p is).
    a = K * p
    pos = valid_t & (a > 0)
    pos_i = pos.to(tl.int32)
    safe_a = tl.where(pos, a, 1.0)
    # [BLOCK_T, 2] candidates (m/a_t, N/a_t); frames with a_t == 0 give the candidate 0.
    cand = tl.where(pos[:, None], tl.join(m / safe_a, N / safe_a), 0.0)

    # Step 2: g at every candidate. Frame j adds clamp(lam a_j, m, N) if a_j > 0, m if
    # a_j == 0, nothing if it is padding. Chunks of frames come out of the register
    # vectors with tl.gather.
    g = tl.full([BLOCK_T, 2], 0.0, tl.float64)
    for chunk in range(BLOCK_T // CHUNK_T):
        offs_j = chunk * CHUNK_T + tl.arange(0, CHUNK_T)
        a_j = tl.gather(a, offs_j, 0)
        pos_j = tl.gather(pos_i, offs_j, 0) != 0
        other_j = tl.where(offs_j < T, m, 0.0)
        x = tl.minimum(tl.maximum(cand[:, :, None] * a_j[None, None, :], m), N)
        g += tl.sum(tl.where(pos_j[None, None, :], x, other_j[None, None, :]), axis=2)
    # the candidate 0 has g(0) = m*T <= K, so lo >= 0 and 0 stands in for "not below"
    lo = tl.max(tl.where(pos[:, None] & (g <= K), cand, 0.0))
    hi = tl.min(tl.where(pos[:, None] & (cand > lo), cand, inf))
    mid = tl.where(hi == inf, 2.0 * lo + 1.0, 0.5 * (lo + hi))

    # Step 3: states at mid, then lam on the linear piece, kept inside [lo, hi].
    x_mid = mid * a
    capped = pos & (x_mid >= N)
    floored = valid_t & ((a <= 0) | (x_mid <= m))
    free = valid_t & ~capped & ~floored
    stats = tl.join(tl.join(tl.where(free, a, 0.0), capped.to(tl.float64)),
                    tl.join(floored.to(tl.float64), pos.to(tl.float64)))
    free_capped, floored_pos = tl.split(tl.sum(stats, axis=0))  # one reduction for four sums
    s_free, n_capped = tl.split(free_capped)
    n_floored, n_pos = tl.split(floored_pos)
    lam = tl.where(s_free > 0, (K - N * n_capped - m * n_floored) / tl.where(s_free > 0, s_free, 1.0), lo)
    lam = tl.minimum(tl.maximum(lam, lo), hi)
    x = tl.where(capped, N, tl.where(floored, m, tl.minimum(tl.maximum(lam * a, m), N)))

    # Step 4: frames with p == 0 take what the saturated others cannot hold.
    n_pos_i = n_pos.to(tl.int64)
    n_zero = tl.cast(T, tl.int64) - n_pos_i
    K_i = tl.cast(budget, tl.int64)
    capacity = tl.cast(num_tokens, tl.int64) * n_pos_i + tl.cast(min_tokens, tl.int64) * n_zero
    share = m + (K_i - capacity).to(tl.float64) / tl.maximum(n_zero, 1).to(tl.float64)
    x = tl.where(K_i > capacity, tl.where(pos, N, share), x)
    x = tl.where(valid_t, x, 0.0)

    # Step 5: largest remainder (largest_remainder_ref).
    floor_x = tl.floor(x)
    frac = x - floor_x
    k = floor_x.to(tl.int32)
    remainder = K_i - tl.sum(k.to(tl.int64), axis=0)
    remainder = tl.minimum(tl.maximum(remainder, 0), tl.cast(T, tl.int64))
    eligible = valid_t & (k < num_tokens)
    eligible_i = eligible.to(tl.int32)
    rank = tl.full([BLOCK_T], 0, tl.int32)
    for chunk in range(BLOCK_T // CHUNK_T):
        offs_j = chunk * CHUNK_T + tl.arange(0, CHUNK_T)
        frac_j = tl.gather(frac, offs_j, 0)
        eligible_j = tl.gather(eligible_i, offs_j, 0) != 0
        # j beats t: eligible_j and (frac_j > frac_t or (frac_j == frac_t and j < t))
        beats = eligible_j[None, :] & ((frac_j[None, :] > frac[:, None])
                                       | ((frac_j[None, :] == frac[:, None]) & (offs_j[None, :] < offs_t[:, None])))
        rank += tl.sum(beats.to(tl.int32), axis=1)
    bump = eligible & (rank.to(tl.int64) < remainder)
    return tl.where(valid_t, k + bump.to(tl.int32), 0)


@triton.jit
def _paper_counts(p, valid_t, ratio_frames, num_tokens, min_tokens):
    """Paper allocation (METHOD.md section 2): ``max(m, floor(N * min(beta*T * p_t, 1)))``.

    ``ratio_frames`` is ``beta*T`` computed on the host exactly as the reference does.
    """
    r = ratio_frames * p
    k = tl.floor(tl.cast(num_tokens, tl.float64) * tl.minimum(r, 1.0)).to(tl.int32)
    return tl.where(valid_t, tl.maximum(k, min_tokens), 0)


@triton.jit
def _keep_counts_kernel(
    counts_ptr,
    scores_ptr, stride_sb, stride_st,
    frame_ptr, stride_fb, stride_ft, stride_fe,
    query_ptr, stride_qb, stride_qc, stride_qe,
    scale_ptr, bias_ptr,
    T, E, C, num_tokens, budget, min_tokens, temperature_bits, ratio_frames_bits,
    FROM_EMBEDS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, PAPER: tl.constexpr,
    BLOCK_T: tl.constexpr, CHUNK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """Grid (B,): ``counts[b, :]`` int32 for video b (METHOD.md section 2)."""
    b = tl.program_id(0).to(tl.int64)
    offs_t = tl.arange(0, BLOCK_T)
    valid_t = offs_t < T
    s = _frame_logits(b, scores_ptr, stride_sb, stride_st,
                      frame_ptr, stride_fb, stride_ft, stride_fe,
                      query_ptr, stride_qb, stride_qc, stride_qe,
                      scale_ptr, bias_ptr, T, E, C,
                      FROM_EMBEDS, HAS_SCALE, HAS_BIAS, BLOCK_T, BLOCK_E)
    # floats arrive as their IEEE bits (see _f64_bits); the widening cast sign-extends,
    # which is right whether Triton typed the int as i32 or i64
    temperature = tl.cast(tl.cast(temperature_bits, tl.int64), tl.float64, bitcast=True)
    p = _frame_probs(s, valid_t, temperature)
    if PAPER:
        ratio_frames = tl.cast(tl.cast(ratio_frames_bits, tl.int64), tl.float64, bitcast=True)
        counts = _paper_counts(p, valid_t, ratio_frames, num_tokens, min_tokens)
    else:
        counts = _exact_counts(p, valid_t, T, budget, num_tokens, min_tokens, BLOCK_T, CHUNK_T)
    tl.store(counts_ptr + b * T + offs_t, counts, mask=valid_t)


# ----------------------------------------------------------------------------------
# Sections 3-4: score, rank and pack one frame
# ----------------------------------------------------------------------------------
@triton.jit
def _token_ranks(score, N, BLOCK_N: tl.constexpr, CHUNK_N: tl.constexpr):
    """Rank of each token in its frame (0 = kept first), int32 [BLOCK_N].

    ``rank_i = #{j : j beats i}``, j beats i iff ``key_j > key_i`` or (``key_j == key_i``
    and ``order_j < order_i``), with ``key = -inf`` for NaN and ``order = i + BLOCK_N *
    isnan``: higher score first, ties to the lower index, NaN below every number
    (-inf included) and NaNs among themselves by index (``topk_mask_ref``).
    """
    offs_n = tl.arange(0, BLOCK_N)
    is_nan = score != score
    key = tl.where(is_nan, float("-inf"), score)
    order = offs_n + tl.where(is_nan, BLOCK_N, 0)
    rank = tl.full([BLOCK_N], 0, tl.int32)
    for chunk in range(BLOCK_N // CHUNK_N):
        offs_j = chunk * CHUNK_N + tl.arange(0, CHUNK_N)
        key_j = tl.gather(key, offs_j, 0)
        order_j = tl.gather(order, offs_j, 0)
        beats = (key_j[None, :] > key[:, None]) | (
            (key_j[None, :] == key[:, None]) & (order_j[None, :] < order[:, None]))
        beats = beats & (offs_j < N)[None, :]
        rank += tl.sum(beats.to(tl.int32), axis=1)
    return rank


@triton.jit
def _prune_tokens_kernel(
    tokens_ptr, stride_tb, stride_tt, stride_tn, stride_td,
    scores_ptr, stride_sb, stride_st,
    frame_ptr, stride_fb, stride_ft, stride_fe,
    query_ptr, stride_qb, stride_qc, stride_qe,
    scale_ptr, bias_ptr,
    token_scores_ptr, stride_xb, stride_xt, stride_xn,
    counts_in_ptr, stride_cb, stride_ct,
    packed_ptr, indices_ptr, counts_ptr, cu_seqlens_ptr, frame_cu_seqlens_ptr,
    T, N, D, E, C, budget, total_rows, min_tokens, temperature_bits,
    FROM_EMBEDS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
    COUNTS_GIVEN: tl.constexpr, HAS_TOKEN_SCORES: tl.constexpr,
    BLOCK_T: tl.constexpr, CHUNK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr,
    BLOCK_N: tl.constexpr, CHUNK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_DC: tl.constexpr,
):
    """Grid (B*T,): prune frame ``pid = b*T + t`` and write its part of every output.

    Output rows of the frame: ``row0 .. row0 + k_t - 1`` with ``row0 = b*K + sum_{t'<t}
    k_t'`` (exact mode) or the sum of all earlier frames' given counts (paper mode);
    kept tokens in raster order (METHOD.md section 4).

    Every load of an input sits in this body, not in a called @triton.jit helper: the
    output addresses depend on loaded data (counts, ranks), and torch.compile's mutation
    analysis of user kernels (torch._higher_order_ops.triton_kernel_wrap) follows a store
    address back through every argument of a called function, so a helper that loads
    ``tokens`` would make it think ``tokens`` is written and clone it. The helpers called
    here take values only.
    """
    pid = tl.program_id(0).to(tl.int64)
    b = pid // T
    t = pid - b * T

    # ---- keep count and first output row of this frame (sections 1-2) ----
    if COUNTS_GIVEN:
        keep = tl.load(counts_in_ptr + b * stride_cb + t * stride_ct).to(tl.int64)
        row0 = tl.full([], 0, tl.int64)
        for f0 in range(0, pid, BLOCK_F):  # every earlier frame, flat (b, t) order
            offs_f = f0 + tl.arange(0, BLOCK_F).to(tl.int64)
            fb = offs_f // T
            ft = offs_f - fb * T
            earlier = tl.load(counts_in_ptr + fb * stride_cb + ft * stride_ct, mask=offs_f < pid, other=0)
            row0 += tl.sum(earlier.to(tl.int64), axis=0)
    else:
        offs_t = tl.arange(0, BLOCK_T)
        valid_t = offs_t < T
        # Frame logits: the code of _frame_logits, written out (see the kernel docstring).
        if FROM_EMBEDS:
            eps = tl.full([], _NORM_EPS, tl.float64)
            scale = tl.full([], 1.0, tl.float64)
            if HAS_SCALE:
                scale = tl.exp(tl.load(scale_ptr).to(tl.float64))
            bias = tl.full([], 0.0, tl.float64)
            if HAS_BIAS:
                bias = tl.load(bias_ptr).to(tl.float64)
            frame_rows = frame_ptr + b * stride_fb + offs_t.to(tl.int64)[:, None] * stride_ft
            s = tl.full([BLOCK_T], float("-inf"), tl.float64)
            for c in range(C):
                q_row = query_ptr + b * stride_qb + tl.cast(c, tl.int64) * stride_qc
                qf = tl.full([BLOCK_T], 0.0, tl.float64)
                ff = tl.full([BLOCK_T], 0.0, tl.float64)
                qq = tl.full([BLOCK_E], 0.0, tl.float64)
                for e0 in range(0, E, BLOCK_E):
                    offs_e = e0 + tl.arange(0, BLOCK_E)
                    valid_e = offs_e < E
                    q = tl.load(q_row + offs_e.to(tl.int64) * stride_qe, mask=valid_e, other=0.0).to(tl.float64)
                    f = tl.load(frame_rows + offs_e.to(tl.int64)[None, :] * stride_fe,
                                mask=valid_t[:, None] & valid_e[None, :], other=0.0).to(tl.float64)
                    qf += tl.sum(f * q[None, :], axis=1)
                    ff += tl.sum(f * f, axis=1)
                    qq += q * q
                q_norm = tl.maximum(tl.sqrt(tl.sum(qq, axis=0)), eps, propagate_nan=tl.PropagateNan.ALL)
                f_norm = tl.maximum(tl.sqrt(ff), eps, propagate_nan=tl.PropagateNan.ALL)
                s = tl.maximum(s, scale * (qf / (q_norm * f_norm)) + bias, propagate_nan=tl.PropagateNan.ALL)
        else:
            s = tl.load(scores_ptr + b * stride_sb + offs_t.to(tl.int64) * stride_st,
                        mask=valid_t, other=0.0).to(tl.float64)
        temperature = tl.cast(tl.cast(temperature_bits, tl.int64), tl.float64, bitcast=True)
        p = _frame_probs(s, valid_t, temperature)
        counts = _exact_counts(p, valid_t, T, budget, N, min_tokens, BLOCK_T, CHUNK_T)
        # (k_t, sum_{t' < t} k_t') in one reduction
        keep, before = tl.split(tl.sum(tl.join(tl.where(offs_t == t, counts, 0),
                                               tl.where(offs_t < t, counts, 0)).to(tl.int64), axis=0))
        row0 = b * budget + before
    row_end = row0 + keep
    tl.store(counts_ptr + pid, keep.to(tl.int32))
    tl.store(frame_cu_seqlens_ptr + pid + 1, row_end.to(tl.int32))
    tl.store(cu_seqlens_ptr + b + 1, row_end.to(tl.int32), mask=t == T - 1)
    tl.store(cu_seqlens_ptr, 0, mask=pid == 0)
    tl.store(frame_cu_seqlens_ptr, 0, mask=pid == 0)

    # ---- token scores (section 3) ----
    offs_n = tl.arange(0, BLOCK_N)
    valid_n = offs_n < N
    frame_tokens = tokens_ptr + b * stride_tb + t * stride_tt
    if HAS_TOKEN_SCORES:
        score = tl.load(token_scores_ptr + b * stride_xb + t * stride_xt + offs_n.to(tl.int64) * stride_xn,
                        mask=valid_n, other=0.0).to(tl.float64)
    else:
        # Distinctiveness 1 - <x_i, mu> / (|x_i| |mu|), mu = mean_i x_i, in one pass over D:
        # a [BLOCK_N, BLOCK_D] tile holds all N tokens of a column chunk, so mu of the chunk
        # is complete in the tile, and <x_i, mu>, |x_i|^2 and |mu|^2 are sums of per-chunk
        # terms. Norms are clamped at 1e-12 (distinctiveness_ref).
        rows = frame_tokens + offs_n.to(tl.int64)[:, None] * stride_tn
        dot = tl.full([BLOCK_N], 0.0, tl.float64)
        sq_norm = tl.full([BLOCK_N], 0.0, tl.float64)
        mu_sq = tl.full([BLOCK_D], 0.0, tl.float64)
        # typed like the tokens: `other` is converted after broadcasting to the tile
        zero = tl.full([], 0.0, tokens_ptr.dtype.element_ty)
        cols = tl.arange(0, BLOCK_D)
        x_next = tl.load(rows + cols.to(tl.int64)[None, :] * stride_td,
                         mask=valid_n[:, None] & (cols < D)[None, :], other=zero)
        for d0 in range(0, D, BLOCK_D):
            # Issue the next chunk's loads before the float64 math on this one so that their
            # latency overlaps it (Triton does not software-pipeline loads that feed no dot).
            x = x_next
            cols = d0 + BLOCK_D + tl.arange(0, BLOCK_D)
            x_next = tl.load(rows + cols.to(tl.int64)[None, :] * stride_td,
                             mask=valid_n[:, None] & (cols < D)[None, :], other=zero)
            if x.dtype == tl.bfloat16:
                # bf16 is the high half of an fp32: the shift is the exact conversion (one
                # instruction, like cvt.f32.bf16); the interpreter's generic bf16 path is ~50x slower
                x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
            x = x.to(tl.float64)
            mu = tl.sum(x, axis=0) / N  # torch.mean: sum, then divide
            dot += tl.sum(x * mu[None, :], axis=1)
            sq_norm += tl.sum(x * x, axis=1)
            mu_sq += mu * mu
        eps = tl.full([], _NORM_EPS, tl.float64)
        norm_x = tl.maximum(tl.sqrt(sq_norm), eps, propagate_nan=tl.PropagateNan.ALL)
        norm_mu = tl.maximum(tl.sqrt(tl.sum(mu_sq, axis=0)), eps, propagate_nan=tl.PropagateNan.ALL)
        score = 1.0 - dot / (norm_x * norm_mu)

    # ---- top-k_t by rank, kept tokens in raster order ----
    rank = _token_ranks(score, N, BLOCK_N, CHUNK_N)
    kept = valid_n & (rank.to(tl.int64) < keep)
    kept_i = kept.to(tl.int32)
    slot = tl.cumsum(kept_i, axis=0) - kept_i  # output row of each kept token, minus row0
    in_bounds = row0 + slot < total_rows  # guards against inconsistent given counts
    tl.store(indices_ptr + row0 + slot, pid * N + offs_n, mask=kept & in_bounds)

    # ---- copy the kept rows (section 4) ----
    # Ranks of the N tokens are a permutation of 0..N-1, so exactly min(k_t, N) are kept.
    n_kept = tl.minimum(tl.maximum(keep, 0), N)
    # Kept rows are compacted into dense [ROWS, BLOCK_DC] tiles: the source token of
    # output slot r is the kept token whose slot is r (a [ROWS, BLOCK_N] match).
    for r0 in range(0, n_kept, ROWS):
        offs_r = r0 + tl.arange(0, ROWS)
        match = (slot[None, :] == offs_r[:, None]) & kept[None, :]
        src = tl.sum(tl.where(match, offs_n[None, :], 0), axis=1)
        row_ok = (offs_r < n_kept) & (row0 + offs_r < total_rows)
        src_rows = frame_tokens + src.to(tl.int64)[:, None] * stride_tn
        dst_rows = packed_ptr + (row0 + offs_r)[:, None] * D
        for d0 in range(0, D, BLOCK_DC):
            offs_d = d0 + tl.arange(0, BLOCK_DC)
            mask = row_ok[:, None] & (offs_d < D)[None, :]
            values = tl.load(src_rows + offs_d.to(tl.int64)[None, :] * stride_td, mask=mask)
            tl.store(dst_rows + offs_d[None, :], values, mask=mask)


# ----------------------------------------------------------------------------------
# Host side: tile sizes and the two ops
# ----------------------------------------------------------------------------------
def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def _fit(budget: int, block: int, size: int) -> int:
    """Largest power of two <= ``budget // block`` (at least 1), capped at ``size``'s block."""
    return max(1, min(_pow2(size, lo=1), triton.next_power_of_2(max(budget // block, 1) + 1) // 2))


def _tiles(num_warps: int) -> tuple[int, int, int]:
    """(copy, f64, compare) tile budgets in elements, see ``_GPU_COPY_PER_THREAD``."""
    if _INTERPRETING:
        return _INTERPRETER_TILE, _INTERPRETER_TILE, _INTERPRETER_TILE
    threads = 32 * num_warps
    return (_GPU_COPY_PER_THREAD * threads, _GPU_F64_PER_THREAD * threads, _GPU_COMPARE_PER_THREAD * threads)


def _frame_blocks(T: int, E: int, num_warps: int) -> dict:
    """Block sizes of the frame-logit and keep-count code (sections 1-2)."""
    _, f64, compare = _tiles(num_warps)
    block_t = _pow2(T)
    return dict(
        BLOCK_T=block_t,
        CHUNK_T=min(block_t, _fit(compare // 2, block_t, T)),  # g tile: [BLOCK_T, 2, CHUNK_T]
        BLOCK_E=_fit(f64, block_t, E),
    )


def _token_blocks(B: int, T: int, N: int, D: int, num_warps: int) -> dict:
    """Block sizes of the token code (sections 3-4)."""
    copy, f64, compare = _tiles(num_warps)
    block_n = _pow2(N)
    rows = min(32, block_n, _fit(copy, block_n, N))
    return dict(
        BLOCK_F=_fit(copy // 8, 1, B * T),  # counts of earlier frames (paper mode): up to 2048 on a GPU
        BLOCK_N=block_n,
        CHUNK_N=min(block_n, _fit(compare, block_n, N)),
        BLOCK_D=_fit(f64, block_n, D),
        ROWS=rows,
        BLOCK_DC=_fit(copy, rows, D),
    )


def _frame_args(scores, frame_embeds, query_embeds, logit_scale, logit_bias):
    """(E, C, pointer/stride args, flags) for :func:`_frame_logits` (unused ones: 0)."""
    from_embeds = scores is None
    anchor = frame_embeds if from_embeds else scores  # stands in for absent pointers
    if from_embeds:
        E, C = frame_embeds.shape[2], query_embeds.shape[1]
        args = (anchor, 0, 0, frame_embeds, *frame_embeds.stride(), query_embeds, *query_embeds.stride())
    else:
        E, C = 1, 1
        args = (scores, *scores.stride(), anchor, 0, 0, 0, anchor, 0, 0, 0)
    args += (logit_scale if logit_scale is not None else anchor,
             logit_bias if logit_bias is not None else anchor)
    flags = dict(FROM_EMBEDS=from_embeds, HAS_SCALE=logit_scale is not None, HAS_BIAS=logit_bias is not None)
    return E, C, args, flags


@torch.library.triton_op("kvtp::keep_counts_triton", mutates_args=())
def keep_counts_triton(
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
    """int32 [B, T] keep counts, one program per video (METHOD.md sections 1-2)."""
    _opchecks.check_keep_counts(**locals())
    src = scores if scores is not None else frame_embeds
    B, T = src.shape[0], src.shape[1]
    E, C, frame_args, flags = _frame_args(scores, frame_embeds, query_embeds, logit_scale, logit_bias)
    counts = torch.empty((B, T), dtype=torch.int32, device=src.device)
    torch.library.wrap_triton(_keep_counts_kernel)[(B,)](
        counts, *frame_args,
        T, E, C, num_tokens, budget, min_tokens,
        _f64_bits(temperature), _f64_bits(float(ratio) * T),  # beta*T as the reference forms it
        PAPER=bool(paper), num_warps=_NUM_WARPS_COUNTS,
        **flags, **_frame_blocks(T, E, _NUM_WARPS_COUNTS),
    )
    return counts


@torch.library.triton_op("kvtp::prune_tokens_triton", mutates_args=())
def prune_tokens_triton(
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
    """Score, rank and pack every frame in one launch (METHOD.md sections 1-4).

    ``frame_counts`` None: exact allocation with K = ``budget`` per video, recomputed
    in-kernel. Given: used as is. ``total_rows`` fixes the packed size.
    """
    _opchecks.check_prune_tokens(**locals(), data=True)
    B, T, N, D = tokens.shape
    device = tokens.device
    packed = tokens.new_empty((total_rows, D))
    indices = torch.empty((total_rows,), dtype=torch.int64, device=device)
    counts = torch.empty((B, T), dtype=torch.int32, device=device)
    cu_seqlens = torch.empty((B + 1,), dtype=torch.int32, device=device)
    frame_cu_seqlens = torch.empty((B * T + 1,), dtype=torch.int32, device=device)

    counts_given = frame_counts is not None
    if counts_given:
        # the frame logits are not needed: placeholders for their arguments
        E, C, frame_args, flags = _frame_args(frame_counts, None, None, None, None)
        count_args = (frame_counts, *frame_counts.stride())
    else:
        E, C, frame_args, flags = _frame_args(scores, frame_embeds, query_embeds, logit_scale, logit_bias)
        count_args = (tokens, 0, 0)
    score_args = (token_scores, *token_scores.stride()) if token_scores is not None else (tokens, 0, 0, 0)
    torch.library.wrap_triton(_prune_tokens_kernel)[(B * T,)](
        tokens, *tokens.stride(),
        *frame_args,
        *score_args,
        *count_args,
        packed, indices, counts, cu_seqlens, frame_cu_seqlens,
        T, N, D, E, C, budget, total_rows, min_tokens, _f64_bits(temperature),
        COUNTS_GIVEN=counts_given, HAS_TOKEN_SCORES=token_scores is not None,
        num_warps=_NUM_WARPS_PRUNE,
        **flags, **_frame_blocks(T, E, _NUM_WARPS_PRUNE), **_token_blocks(B, T, N, D, _NUM_WARPS_PRUNE),
    )
    return packed, indices, counts, cu_seqlens, frame_cu_seqlens
