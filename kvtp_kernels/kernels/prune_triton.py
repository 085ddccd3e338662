"""Triton backend of ``kvtp::keep_counts`` and ``kvtp::prune_tokens`` (METHOD.md sections 1-4).

Two ops, registered with the public ``torch.library.triton_op`` + ``wrap_triton``:

- ``kvtp::keep_counts_triton``: one launch of ``_plan_kernel``, grid ``(B,)``: one program
  per video computes its T keep counts (exact or paper allocation) and stores them.
- ``kvtp::prune_tokens_triton``: three launches, no host sync, every output size static
  (``total_rows``), so CUDA graphs and ``torch.compile(fullgraph=True)`` work:

  1. ``_plan_kernel``, grid ``(B + B*T*S,)``. Programs ``0 .. B-1`` do the per-video
     work once: frame logits (given, or the fused SigLIP similarity: O(T*C*E) per
     video), softmax, exact allocation (or the given counts), and the offsets
     ``frame_cu_seqlens`` / ``cu_seqlens``. Without ``token_scores`` the other B*T*S
     programs each take one frame and one of S slices of D and write that slice's
     share of the distinctiveness sums (``<x_i, mu>``, ``|x_i|^2`` per token, ``|mu|^2``;
     ``mu`` is complete inside a slice because a program holds all N tokens of its
     columns) to a float64 workspace: D split across CTAs, every token byte read once.
  2. ``_select_kernel``, grid ``(B*T,)``: reads its frame's count and first output row
     (written by launch 1: the counts exist once, nothing recomputes them), the token
     scores (given, or the S partial sums added in a fixed order, up to 8 slices loaded
     at once, so the result does not depend on scheduling), ranks the N tokens by
     comparison counts (float32 ones for float32 or narrower given scores: exact),
     and writes ``indices`` of the kept ones in raster order.
  3. ``_copy_rows_kernel``, grid ``(cdiv(total_rows, ROWS), cdiv(D, BLOCK_DC))``: every
     program copies a [ROWS, BLOCK_DC] tile of kept rows (one index load per row, then
     the tile's loads all in flight). At the headline (B=1, T=64, N=196, D=3584, bf16,
     beta=0.2) that is 157 x 7 = 1099 CTAs of 4 warps, 16 KB of loads each.

Numerics follow :mod:`kvtp_kernels.reference` (the contract): every decision in float64
with the reference's operation order where it decides an integer (sums may associate
differently: float64 rounding, which the reference allows). Products that feed a sum or
an add (similarity and distinctiveness sums, ``scale * cos + bias``) are rounded on
their own (``_mul_rn``: libdevice ``mul_rn`` on a GPU), as the reference and the
interpreter round them, instead of being contracted into FMAs by the GPU compiler.
Python floats are passed as their IEEE bits (``_f64_bits``) because Triton types a
Python float argument as fp32. Offsets are int64 (B*T*N*D may exceed 2^31). Tokens are
read with their own strides (no copy) and moved with plain loads and stores, so packed
rows are bit-identical to the input rows.

Inputs whose values decide a store address (counts, offsets, scores, indices) are loaded
in the kernel bodies, never in a called @triton.jit helper: torch.compile's mutation
analysis of user kernels (torch._higher_order_ops.triton_kernel_wrap) follows a store
address back through every argument of a called function, and would otherwise think the
input is written and clone it.
"""

import struct

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .. import _opchecks
from .._numerics import PROB_FLUSH, cdiv, fit, next_pow2, pow2
from . import _traffic
from ._common import _INTERPRETER_TILE, _INTERPRETING, _NORM_EPS, _widen, copy_tile

# Kernels may read module globals only as constexprs. A float64 value: it enters the
# kernels through tl.full(..., tl.float64) (a bare float literal is fp32).
_PROB_FLUSH = tl.constexpr(PROB_FLUSH)

# Exact allocation of long videos (BLOCK_T >= _SEARCH_FROM): a threshold found in the bits
# of a non-negative float64 (bit 63 clear: 0 .. +inf as int64, in order), 3 bits per round
# (bits 62-60 first, probes above +inf masked): 21 rounds of 8 probes ([8, BLOCK_T] float64
# tiles: 16 probes spill at BLOCK_T = 1024). Below it the O(T^2) sweeps cost less (2 T^2
# vs 2 x 168 T probe-frame pairs).
# The rounds are ``range(60, -1, -3)``: each probes digit ``(bits >> shift) & 7``.
_SEARCH_FROM = 256
_SEARCH_ROUNDS = len(range(60, -1, -3))
_SEARCH_PROBES = tl.constexpr(8)
_INF_BITS = tl.constexpr(0x7FF0000000000000)

# The interpreter has no libdevice; numpy rounds every product anyway.
_EXPLICIT_RN = tl.constexpr(not _INTERPRETING)

# Register tiles on a GPU, in elements per thread (x 32 x num_warps = elements per tile),
# by the register cost of what is done on them (ptxas -v, sm_90a): float64
# compare-and-select sweeps (g(lam), ranks) cost ~7 registers per element, tiles loaded
# and reduced in float64 ~4, native-dtype copies ~1.
# frame embeddings [BLOCK_T, BLOCK_E] (native dtype, widened per element): 32 when the
# per-video programs launch alone (~240 registers, one CTA per video anyway), 16 beside
# the distinctiveness programs (the launch's register count is the larger of the two roles)
_GPU_EMBED_PER_THREAD = 32
_GPU_EMBED_PER_THREAD_SHARED = 16
# long videos (16-warp plan launch, [BLOCK_T] float64 vectors of the allocation live
# beside the tile): 32 spilled ~600 bytes at T = 1024 on every architecture, 16 does not
_GPU_EMBED_PER_THREAD_LONG = 16
_GPU_DISTINCT_PER_THREAD = 16  # distinctiveness chunk [BLOCK_N, BLOCK_D] (native dtype, widened per element)
_GPU_COMPARE_PER_THREAD = 4  # g(lam) [BLOCK_T, 2, CHUNK_T], ranks [BLOCK_T, CHUNK_T], [BLOCK_N, CHUNK_N]
_GPU_COPY_BYTES_PER_THREAD = 128  # copy tile: 8 loads of 16 bytes in flight per thread
# Distinctiveness programs resident at once: 2 per SM of a 132-SM H100 (8 warps at <= 128
# registers); the slices of D are chosen for whole waves of them. At most 64 slices.
_GPU_DISTINCT_SLOTS = 2 * 132
_GPU_MAX_SPLITS = 64
# The select kernel adds the partial sums of up to this many slices per step (loaded together).
_MAX_SPLITS_PER_STEP = 8
_NUM_WARPS_PLAN = 8
# Long videos: the per-video float64 vectors of the allocation ([BLOCK_T] each, a dozen
# live at once) need 16 warps from BLOCK_T = 512 on, or they spill.
_NUM_WARPS_PLAN_LONG = 16
_LONG_VIDEO = 512


def _plan_warps(T: int) -> int:
    return _NUM_WARPS_PLAN_LONG if next_pow2(T) >= _LONG_VIDEO else _NUM_WARPS_PLAN
_NUM_WARPS_SELECT = 4
_NUM_WARPS_COPY = 4


# ----------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------
def _f64_bits(value: float) -> int:
    """IEEE-754 bits of a Python float as a signed int64.

    Triton types a Python float argument as fp32; the kernels take float64 parameters
    as these bits and bitcast them back (exact).
    """
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


@triton.jit
def _mul_rn(a, b):
    """``a * b`` rounded to nearest on its own (broadcast shapes).

    On a GPU a product feeding an add would otherwise be contracted into an FMA, which
    rounds once instead of twice: near-ties (ranks, counts, similarity maxima) could then
    resolve differently from the reference and from the interpreter.
    """
    a, b = tl.broadcast(a, b)
    if _EXPLICIT_RN:
        product = libdevice.mul_rn(a, b)
    else:
        product = a * b
    return product


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
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, VEC_E: tl.constexpr,
):
    """Frame logits of video ``b`` as float64 [BLOCK_T] (lanes >= T are padding).

    ``scores[b, t]``, or the fused SigLIP similarity (METHOD.md section 1)
    ``s_t = max_c( exp(logit_scale) * <q_c, f_t> / (|q_c| |f_t|) + logit_bias )`` with
    norms clamped at 1e-12 (``F.normalize``). Called once per video: O(T*C*E). One pass
    over E per query chunk, [BLOCK_T, BLOCK_E] tiles of frame embeddings loaded two
    ahead of the math; the products are added inside each thread into [BLOCK_T,
    BLOCK_E / VEC_E] accumulators and reduced across lanes once per query chunk.
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
            qf = tl.full([BLOCK_T, BLOCK_E // VEC_E], 0.0, tl.float64)
            ff = tl.full([BLOCK_T, BLOCK_E // VEC_E], 0.0, tl.float64)
            qq = tl.full([BLOCK_E], 0.0, tl.float64)
            offs_e = tl.arange(0, BLOCK_E)
            f_ahead1 = tl.load(frame_rows + offs_e.to(tl.int64)[None, :] * stride_fe,
                               mask=valid_t[:, None] & (offs_e < E)[None, :], other=0.0)
            q_ahead1 = tl.load(q_row + offs_e.to(tl.int64) * stride_qe, mask=offs_e < E, other=0.0)
            offs_e += BLOCK_E
            f_ahead2 = tl.load(frame_rows + offs_e.to(tl.int64)[None, :] * stride_fe,
                               mask=valid_t[:, None] & (offs_e < E)[None, :], other=0.0)
            q_ahead2 = tl.load(q_row + offs_e.to(tl.int64) * stride_qe, mask=offs_e < E, other=0.0)
            for e0 in range(0, E, BLOCK_E):
                f = _widen(f_ahead1, True)  # [BLOCK_T, BLOCK_E]
                q = _widen(q_ahead1, True)  # [BLOCK_E]
                f_ahead1 = f_ahead2
                q_ahead1 = q_ahead2
                offs_e = e0 + 2 * BLOCK_E + tl.arange(0, BLOCK_E)
                f_ahead2 = tl.load(frame_rows + offs_e.to(tl.int64)[None, :] * stride_fe,
                                   mask=valid_t[:, None] & (offs_e < E)[None, :], other=0.0)
                q_ahead2 = tl.load(q_row + offs_e.to(tl.int64) * stride_qe, mask=offs_e < E, other=0.0)
                qf += tl.sum(tl.reshape(_mul_rn(f, q[None, :]), [BLOCK_T, BLOCK_E // VEC_E, VEC_E]), axis=2)
                ff += tl.sum(tl.reshape(_mul_rn(f, f), [BLOCK_T, BLOCK_E // VEC_E, VEC_E]), axis=2)
                qq += _mul_rn(q, q)
            q_norm = tl.maximum(tl.sqrt(tl.sum(qq, axis=0)), eps, propagate_nan=tl.PropagateNan.ALL)
            f_norm = tl.maximum(tl.sqrt(tl.sum(ff, axis=1)), eps, propagate_nan=tl.PropagateNan.ALL)
            logit = _mul_rn(scale, tl.sum(qf, axis=1) / (q_norm * f_norm)) + bias
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
                  BLOCK_T: tl.constexpr, CHUNK_T: tl.constexpr, SEARCH: tl.constexpr):
    """Exact allocation (METHOD.md section 2), step by step as ``exact_counts_ref``.

    ``k_t`` integers with ``sum_t k_t = K`` and ``m <= k_t <= N``: ``a_t = K p_t``; the
    breakpoints ``m/a_t`` and ``N/a_t`` of ``g(lam) = sum_t clamp(lam a_t, m, N)`` bracket
    the solution (``lo`` = largest candidate with ``g <= K``, ``hi`` the next); every
    frame's state (capped / floored / free) is read at the midpoint; ``lam`` solves the
    linear piece; frames with ``p = 0`` share what saturated frames cannot hold; largest
    remainder rounding, ties to the lower frame index. Two ways to the same lo and the
    same R frames: g at all 2T candidates and the remainder by comparison ranks, O(T^2)
    (frames swept in chunks of CHUNK_T), or (SEARCH, long videos) a search over the bits
    of a float64 threshold, _SEARCH_ROUNDS rounds of _SEARCH_PROBES probes, O(T) each.

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

    # Step 2: lo = the largest candidate with g <= K. Frame j adds clamp(lam a_j, m, N) if
    # a_j > 0, m if a_j == 0, nothing if it is padding. The candidate 0 has g(0) = m*T <= K,
    # so lo >= 0 and 0 stands in for "not below".
    if SEARCH:
        # g is non-decreasing in lam (so is its float64 evaluation: every term and every
        # rounded add is), so lo is the largest candidate <= lam*, the largest float64 with
        # g <= K: found digit by digit in its bits (3 bits per round), O(T) per probe.
        # Above the largest candidate every frame is saturated (g is flat there): probes are
        # evaluated at most there, which keeps lam * a finite.
        top_bits = tl.cast(tl.max(tl.max(cand, axis=1), axis=0), tl.int64, bitcast=True)
        lam_bits = tl.full([], 0, tl.int64)
        for shift in range(60, -1, -3):  # a loop, not unrolled (compile time)
            probe = lam_bits + (tl.arange(0, _SEARCH_PROBES).to(tl.int64) << shift)
            lam = tl.cast(tl.minimum(probe, top_bits), tl.float64, bitcast=True)
            x = tl.minimum(tl.maximum(lam[:, None] * safe_a[None, :], m), N)
            g_probe = tl.sum(tl.where(pos[None, :], x, tl.where(valid_t, m, 0.0)[None, :]), axis=1)
            ok = (probe <= _INF_BITS) & (g_probe <= K)
            lam_bits = tl.max(tl.where(ok, probe, 0), axis=0)
        below = tl.cast(cand, tl.int64, bitcast=True) <= lam_bits
    else:
        # g at every candidate, O(T^2): chunks of frames come out of the register vectors
        # with tl.gather
        g = tl.full([BLOCK_T, 2], 0.0, tl.float64)
        for chunk in range(BLOCK_T // CHUNK_T):
            offs_j = chunk * CHUNK_T + tl.arange(0, CHUNK_T)
            a_j = tl.gather(a, offs_j, 0)
            pos_j = tl.gather(pos_i, offs_j, 0) != 0
            other_j = tl.where(offs_j < T, m, 0.0)
            x = tl.minimum(tl.maximum(cand[:, :, None] * a_j[None, None, :], m), N)
            g += tl.sum(tl.where(pos_j[None, None, :], x, other_j[None, None, :]), axis=2)
        below = g <= K
    lo = tl.max(tl.where(pos[:, None] & below, cand, 0.0))
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
    if SEARCH:
        # the R eligible frames with the largest (frac, then lower index): frac >= 0, so
        # its bits order like it; theta = the largest bits with >= R eligible fracs at or
        # above it (digit by digit), then ties at theta by index
        frac_bits = tl.cast(frac, tl.int64, bitcast=True)
        theta = tl.full([], 0, tl.int64)
        for shift in range(60, -1, -3):  # a loop, not unrolled (compile time)
            probe = theta + (tl.arange(0, _SEARCH_PROBES).to(tl.int64) << shift)
            at_or_above = tl.sum((eligible[None, :] & (frac_bits[None, :] >= probe[:, None])).to(tl.int64), axis=1)
            ok = at_or_above >= remainder
            theta = tl.max(tl.where(ok, probe, 0), axis=0)
        above = eligible & (frac_bits > theta)
        tie = (eligible & (frac_bits == theta)).to(tl.int64)
        need = remainder - tl.sum(above.to(tl.int64), axis=0)
        bump = above | ((tie != 0) & (tl.cumsum(tie, axis=0) <= need))
    else:
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



# ----------------------------------------------------------------------------------
# Sections 1-3: counts and offsets per video, distinctiveness partial sums
# ----------------------------------------------------------------------------------
@triton.jit
def _plan_kernel(
    counts_ptr, frame_cu_seqlens_ptr, cu_seqlens_ptr,
    scores_ptr, stride_sb, stride_st,
    frame_ptr, stride_fb, stride_ft, stride_fe,
    query_ptr, stride_qb, stride_qc, stride_qe,
    scale_ptr, bias_ptr,
    counts_in_ptr, stride_cb, stride_ct,
    tokens_ptr, stride_tb, stride_tt, stride_tn, stride_td,
    partial_ptr,
    B, T, N, D, E, C, budget, min_tokens, temperature_bits, ratio_frames_bits, split_cols, num_splits,
    FROM_EMBEDS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, PAPER: tl.constexpr,
    COUNTS_GIVEN: tl.constexpr, WRITE_OFFSETS: tl.constexpr, DISTINCT: tl.constexpr,
    BLOCK_T: tl.constexpr, CHUNK_T: tl.constexpr, SEARCH: tl.constexpr, BLOCK_E: tl.constexpr,
    VEC_E: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, VEC: tl.constexpr,
):
    """Grid (B + B*T*S,): per-video counts and offsets, then distinctiveness partial sums.

    Program ``b < B`` (METHOD.md sections 1-2): ``counts[b, :]`` int32, computed (exact
    allocation with K = ``budget``, or paper allocation) or copied from ``counts_in``
    (COUNTS_GIVEN); with WRITE_OFFSETS also ``frame_cu_seqlens[b*T + 1 + t]`` and
    ``cu_seqlens[b + 1]``, from ``row0 = b*K`` (exact) or the sum of the earlier videos'
    given counts.

    Program ``B + f*S + s`` (DISTINCT; METHOD.md section 3): frame f, columns
    ``[s*split_cols, (s+1)*split_cols)`` of D. ``partial[f*S + s] = (<x_i, mu>_slice
    [N], |x_i|^2_slice [N], |mu|^2_slice)`` float64, mu the column means of the slice.
    Each chunk [BLOCK_N, BLOCK_D] holds every token of its columns, so mu is complete in
    it; the products are added into [BLOCK_N, BLOCK_D / VEC] accumulators inside each
    thread (VEC = the elements of one 16-byte load) and reduced across lanes once, after
    the last chunk.
    """
    pid = tl.program_id(0).to(tl.int64)
    if pid < B:
        b = pid
        offs_t = tl.arange(0, BLOCK_T)
        valid_t = offs_t < T
        if COUNTS_GIVEN:
            counts = tl.load(counts_in_ptr + b * stride_cb + offs_t.to(tl.int64) * stride_ct,
                             mask=valid_t, other=0).to(tl.int32)
        else:
            s = _frame_logits(b, scores_ptr, stride_sb, stride_st,
                              frame_ptr, stride_fb, stride_ft, stride_fe,
                              query_ptr, stride_qb, stride_qc, stride_qe,
                              scale_ptr, bias_ptr, T, E, C,
                              FROM_EMBEDS, HAS_SCALE, HAS_BIAS, BLOCK_T, BLOCK_E, VEC_E)
            # floats arrive as their IEEE bits (see _f64_bits); the widening cast sign-extends,
            # which is right whether Triton typed the int as i32 or i64
            temperature = tl.cast(tl.cast(temperature_bits, tl.int64), tl.float64, bitcast=True)
            p = _frame_probs(s, valid_t, temperature)
            if PAPER:
                ratio_frames = tl.cast(tl.cast(ratio_frames_bits, tl.int64), tl.float64, bitcast=True)
                counts = _paper_counts(p, valid_t, ratio_frames, N, min_tokens)
            else:
                counts = _exact_counts(p, valid_t, T, budget, N, min_tokens, BLOCK_T, CHUNK_T, SEARCH)
        tl.store(counts_ptr + b * T + offs_t, counts, mask=valid_t)
        if WRITE_OFFSETS:
            if COUNTS_GIVEN:
                row0 = tl.full([], 0, tl.int64)
                for f0 in range(0, b * T, BLOCK_F):  # every frame of the earlier videos, flat (b, t) order
                    offs_f = f0 + tl.arange(0, BLOCK_F).to(tl.int64)
                    fb = offs_f // T
                    ft = offs_f - fb * T
                    earlier = tl.load(counts_in_ptr + fb * stride_cb + ft * stride_ct, mask=offs_f < b * T, other=0)
                    row0 += tl.sum(earlier.to(tl.int64), axis=0)
            else:
                row0 = b * budget
            ends = row0 + tl.cumsum(counts.to(tl.int64), axis=0)
            tl.store(frame_cu_seqlens_ptr + b * T + 1 + offs_t, ends.to(tl.int32), mask=valid_t)
            last = row0 + tl.sum(counts.to(tl.int64), axis=0)
            tl.store(cu_seqlens_ptr + b + 1, last.to(tl.int32))
            tl.store(cu_seqlens_ptr, 0, mask=b == 0)
            tl.store(frame_cu_seqlens_ptr, 0, mask=b == 0)
    elif DISTINCT:
        work = pid - B
        f = work // num_splits
        split = work - f * num_splits
        fb = f // T
        ft = f - fb * T
        offs_n = tl.arange(0, BLOCK_N)
        valid_n = offs_n < N
        rows = tokens_ptr + fb * stride_tb + ft * stride_tt + offs_n.to(tl.int64)[:, None] * stride_tn
        d_lo = split * split_cols
        d_hi = tl.minimum(d_lo + split_cols, D)
        dot = tl.full([BLOCK_N, BLOCK_D // VEC], 0.0, tl.float64)
        sq_norm = tl.full([BLOCK_N, BLOCK_D // VEC], 0.0, tl.float64)
        mu_sq = tl.full([], 0.0, tl.float64)
        # typed like the tokens: `other` is converted after broadcasting to the tile
        zero = tl.full([], 0.0, tokens_ptr.dtype.element_ty)
        # Two chunks are loaded ahead of the one being reduced (loop-carried: Triton does not
        # software-pipeline loads that feed no dot), so that each thread keeps 2 x BLOCK_N x
        # BLOCK_D / threads elements of loads in flight during the float64 math.
        cols = d_lo + tl.arange(0, BLOCK_D)
        x_ahead1 = tl.load(rows + cols.to(tl.int64)[None, :] * stride_td,
                           mask=valid_n[:, None] & (cols < d_hi)[None, :], other=zero)
        cols += BLOCK_D
        x_ahead2 = tl.load(rows + cols.to(tl.int64)[None, :] * stride_td,
                           mask=valid_n[:, None] & (cols < d_hi)[None, :], other=zero)
        for d0 in range(d_lo, d_hi, BLOCK_D):
            x = _widen(x_ahead1, True)
            x_ahead1 = x_ahead2
            cols = d0 + 2 * BLOCK_D + tl.arange(0, BLOCK_D)
            x_ahead2 = tl.load(rows + cols.to(tl.int64)[None, :] * stride_td,
                               mask=valid_n[:, None] & (cols < d_hi)[None, :], other=zero)
            mu = tl.sum(x, axis=0) / N  # torch.mean: sum, then divide
            dot += tl.sum(tl.reshape(_mul_rn(x, mu[None, :]), [BLOCK_N, BLOCK_D // VEC, VEC]), axis=2)
            sq_norm += tl.sum(tl.reshape(_mul_rn(x, x), [BLOCK_N, BLOCK_D // VEC, VEC]), axis=2)
            mu_sq += tl.sum(_mul_rn(mu, mu), axis=0)
        out = partial_ptr + work * (2 * N + 1)
        tl.store(out + offs_n, tl.sum(dot, axis=1), mask=valid_n)
        tl.store(out + N + offs_n, tl.sum(sq_norm, axis=1), mask=valid_n)
        tl.store(out + 2 * N, mu_sq)


# ----------------------------------------------------------------------------------
# Section 3: rank the tokens of a frame, list the kept ones
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
def _select_kernel(
    token_scores_ptr, stride_xb, stride_xt, stride_xn,
    partial_ptr, counts_ptr, frame_cu_seqlens_ptr, indices_ptr,
    T, N, total_rows, num_splits,
    HAS_TOKEN_SCORES: tl.constexpr, RANK_F32: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_N: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Grid (B*T,): ``indices`` of the kept tokens of frame ``f`` (METHOD.md sections 3-4).

    ``k_f = counts[f]`` and the frame's first output row ``frame_cu_seqlens[f]`` come from
    ``_plan_kernel``. Token scores: ``token_scores``, or the distinctiveness
    ``1 - <x_i, mu> / (max(|x_i|, 1e-12) max(|mu|, 1e-12))`` from the S partial sums,
    BLOCK_S slices at a time (each group summed in a fixed tree, the groups in order:
    deterministic). Kept tokens (rank < k_f) get their
    output rows in raster order with ``tl.cumsum`` over the keep flags. RANK_F32: the
    given token scores are float32, float16 or bfloat16, so float32 holds them exactly and
    orders them as float64 does (ranks only compare): the comparisons run in float32.
    """
    f = tl.program_id(0).to(tl.int64)
    b = f // T
    t = f - b * T
    offs_n = tl.arange(0, BLOCK_N)
    valid_n = offs_n < N
    keep = tl.load(counts_ptr + f).to(tl.int64)
    row0 = tl.load(frame_cu_seqlens_ptr + f).to(tl.int64)
    if HAS_TOKEN_SCORES:
        score = tl.load(token_scores_ptr + b * stride_xb + t * stride_xt + offs_n.to(tl.int64) * stride_xn,
                        mask=valid_n, other=0.0)
        score = score.to(tl.float32) if RANK_F32 else score.to(tl.float64)
    else:
        dot = tl.full([BLOCK_N], 0.0, tl.float64)
        sq_norm = tl.full([BLOCK_N], 0.0, tl.float64)
        mu_sq = tl.full([], 0.0, tl.float64)
        # BLOCK_S slices per step, loaded together (their loads all in flight), summed in a
        # fixed tree; the steps in order
        for s0 in range(0, num_splits, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            valid_s = offs_s < num_splits
            part = partial_ptr + (f * num_splits + offs_s.to(tl.int64)) * (2 * N + 1)  # [BLOCK_S] slice rows
            both = valid_s[:, None] & valid_n[None, :]
            dot += tl.sum(tl.load(part[:, None] + offs_n[None, :], mask=both, other=0.0), axis=0)
            sq_norm += tl.sum(tl.load(part[:, None] + N + offs_n[None, :], mask=both, other=0.0), axis=0)
            mu_sq += tl.sum(tl.load(part + 2 * N, mask=valid_s, other=0.0), axis=0)
        eps = tl.full([], _NORM_EPS, tl.float64)
        norm_x = tl.maximum(tl.sqrt(sq_norm), eps, propagate_nan=tl.PropagateNan.ALL)
        norm_mu = tl.maximum(tl.sqrt(mu_sq), eps, propagate_nan=tl.PropagateNan.ALL)
        score = 1.0 - dot / (norm_x * norm_mu)
    rank = _token_ranks(score, N, BLOCK_N, CHUNK_N)
    kept = valid_n & (rank.to(tl.int64) < keep)
    kept_i = kept.to(tl.int32)
    slot = tl.cumsum(kept_i, axis=0) - kept_i  # output row of each kept token, minus row0
    in_bounds = row0 + slot < total_rows  # guards against inconsistent given counts
    tl.store(indices_ptr + row0 + slot, f * N + offs_n, mask=kept & in_bounds)


# ----------------------------------------------------------------------------------
# Section 4: copy the kept rows
# ----------------------------------------------------------------------------------
@triton.jit
def _copy_rows_kernel(
    tokens_ptr, stride_tb, stride_tt, stride_tn, stride_td,
    indices_ptr, packed_ptr,
    T, N, D, num_rows, total_rows,
    FLAT_ROWS: tl.constexpr, ROWS: tl.constexpr, BLOCK_DC: tl.constexpr,
):
    """Grid (cdiv(total_rows, ROWS), cdiv(D, BLOCK_DC)): ``packed[r, d] = tokens[indices[r], d]``.

    One [ROWS, BLOCK_DC] tile per program: one index load per row, then every load of
    the tile is issued before the first store (16 bytes per load when the rows are
    16-byte aligned), so the copy keeps ROWS * BLOCK_DC * element-size bytes in flight
    per CTA with nothing in front of it. FLAT_ROWS: token (b, t, n) lies at ``flat *
    stride_tn`` (frames and videos packed without gaps), which spares the divisions.
    Rows whose index is outside ``[0, B*T*N)`` (inconsistent given counts) are skipped.
    """
    offs_r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    offs_d = tl.program_id(1).to(tl.int64) * BLOCK_DC + tl.arange(0, BLOCK_DC)
    row_ok = offs_r < total_rows
    flat = tl.load(indices_ptr + offs_r, mask=row_ok, other=0)
    row_ok &= (flat >= 0) & (flat < num_rows)
    if FLAT_ROWS:
        src = flat * stride_tn
    else:
        frame = flat // N
        n = flat - frame * N
        b = frame // T
        src = b * stride_tb + (frame - b * T) * stride_tt + n * stride_tn
    mask = row_ok[:, None] & (offs_d < D)[None, :]
    values = tl.load(tokens_ptr + src[:, None] + offs_d[None, :] * stride_td, mask=mask)
    tl.store(packed_ptr + offs_r[:, None] * D + offs_d[None, :], values, mask=mask)


# ----------------------------------------------------------------------------------
# Host side: tile sizes and the two ops
# ----------------------------------------------------------------------------------
def _per_thread(elements: int, num_warps: int) -> int:
    """``elements`` per thread as a tile budget; the interpreter's big tile instead."""
    return _INTERPRETER_TILE if _INTERPRETING else elements * 32 * num_warps


def _frame_blocks(T: int, E: int, embed_size: int, with_distinct: bool = False) -> dict:
    """Block sizes of the frame-logit and keep-count code of ``_plan_kernel`` (sections 1-2).

    ``embed_size``: bytes per element of the frame embeddings (VEC_E = one 16-byte load);
    ``with_distinct``: the launch also runs distinctiveness programs.
    """
    block_t = pow2(T)
    compare = _per_thread(_GPU_COMPARE_PER_THREAD, _plan_warps(T))
    embed = _GPU_EMBED_PER_THREAD_SHARED if with_distinct else _GPU_EMBED_PER_THREAD
    if _plan_warps(T) == _NUM_WARPS_PLAN_LONG:
        embed = min(embed, _GPU_EMBED_PER_THREAD_LONG)
    block_e = fit(_per_thread(embed, _plan_warps(T)), block_t, E)
    return dict(
        BLOCK_T=block_t,
        CHUNK_T=min(block_t, fit(compare // 2, block_t, T)),  # g tile: [BLOCK_T, 2, CHUNK_T]
        SEARCH=block_t >= _SEARCH_FROM,  # exact allocation by threshold search (_exact_counts)
        BLOCK_E=block_e,
        VEC_E=max(1, min(block_e, 16 // embed_size)),
        BLOCK_F=fit(_per_thread(8, _plan_warps(T)), 1, 1 << 30),  # earlier frames' given counts
    )


def _distinct_plan(B: int, T: int, N: int, D: int, element_size: int) -> tuple[int, int, dict]:
    """(S slices of D, columns per slice, blocks) of the distinctiveness programs.

    A chunk is [BLOCK_N, BLOCK_D] (all tokens of BLOCK_D columns) and a slice is a run of
    whole chunks. S minimises the modelled time ``waves * (chunks per slice + 2)`` with
    ``_GPU_DISTINCT_SLOTS`` programs resident at once (the 2: a program's first loads and
    its final reductions, about two chunks' time; ties: fewer slices, fewer partial sums);
    one slice per frame in the interpreter.
    """
    block_n = pow2(N)
    block_d = fit(_per_thread(_GPU_DISTINCT_PER_THREAD, _plan_warps(T)), block_n, D)
    vec = max(1, min(block_d, 16 // element_size))
    chunks = cdiv(D, block_d)
    splits = 1
    if not _INTERPRETING:
        frames = B * T
        splits = min(range(1, min(chunks, _GPU_MAX_SPLITS) + 1),
                     key=lambda s: cdiv(frames * s, _GPU_DISTINCT_SLOTS) * (cdiv(chunks, s) + 2))
    split_cols = cdiv(chunks, splits) * block_d
    return cdiv(D, split_cols), split_cols, dict(BLOCK_N=block_n, BLOCK_D=block_d, VEC=vec)


def _copy_blocks(total_rows: int, D: int, element_size: int) -> dict:
    """[ROWS, BLOCK_DC] copy tile: ``_GPU_COPY_BYTES_PER_THREAD`` bytes per thread.

    BLOCK_DC is the power of two (64 B to 2 KB of a row) that pads D the least (ties: the
    wider), so that no column of a row is masked when D allows it (D = 3584: 512).
    """
    tile = _GPU_COPY_BYTES_PER_THREAD * 32 * _NUM_WARPS_COPY // element_size
    widths = [w for w in (1 << k for k in range(12)) if 64 <= w * element_size <= 2048] or [1]
    rows, block_dc = copy_tile(total_rows, D, widths, lambda w: max(1, min(tile // w, pow2(total_rows, lo=1))),
                               _INTERPRETING)
    return dict(ROWS=rows, BLOCK_DC=block_dc)


def _embed_size(frame_embeds: torch.Tensor | None) -> int:
    return frame_embeds.element_size() if frame_embeds is not None else 8


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


def _launch_plan(grid, counts, frame_cu_seqlens, cu_seqlens, frame_inputs, counts_in, tokens, partial,
                 sizes: dict, **flags) -> None:
    """One launch of ``_plan_kernel`` (see its docstring for the roles of its programs)."""
    torch.library.wrap_triton(_plan_kernel)[grid](
        counts, frame_cu_seqlens, cu_seqlens, *frame_inputs, *counts_in, *tokens, partial,
        sizes["B"], sizes["T"], sizes["N"], sizes["D"], sizes["E"], sizes["C"], sizes["budget"],
        sizes["min_tokens"], _f64_bits(sizes["temperature"]), _f64_bits(sizes["ratio_frames"]),
        sizes["split_cols"], sizes["splits"],
        num_warps=_plan_warps(sizes["T"]), **flags,
    )


def keep_counts(a) -> torch.Tensor:
    """``kvtp::keep_counts_triton`` (``a``: its arguments by name, schema in :mod:`kvtp_kernels.ops`):
    int32 [B, T] keep counts, ``_plan_kernel``'s per-video programs alone (METHOD.md sections 1-2)."""
    _opchecks.check_keep_counts(**vars(a))
    src = a.scores if a.scores is not None else a.frame_embeds
    B, T = src.shape[0], src.shape[1]
    E, C, frame_inputs, flags = _frame_args(a.scores, a.frame_embeds, a.query_embeds, a.logit_scale, a.logit_bias)
    counts = torch.empty((B, T), dtype=torch.int32, device=src.device)
    sizes = dict(B=B, T=T, N=a.num_tokens, D=1, E=E, C=C, budget=a.budget, min_tokens=a.min_tokens,
                 temperature=a.temperature, ratio_frames=float(a.ratio) * T,  # beta*T as the reference forms it
                 split_cols=1, splits=1)
    _launch_plan((B,), counts, counts, counts, frame_inputs, (counts, 0, 0), (src, 0, 0, 0, 0), counts, sizes,
                 PAPER=bool(a.paper), COUNTS_GIVEN=False, WRITE_OFFSETS=False, DISTINCT=False,
                 BLOCK_N=16, BLOCK_D=16, VEC=1, **flags, **_frame_blocks(T, E, _embed_size(a.frame_embeds)))
    return counts


def prune_tokens(a) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``kvtp::prune_tokens_triton``: plan, select and copy, three launches, no host sync (METHOD.md sections 1-4).

    ``a``: the op's arguments by name. ``frame_counts`` None: exact allocation with K =
    ``budget`` per video, computed once per video by ``_plan_kernel``. Given: used as is.
    ``total_rows`` fixes the packed size.
    """
    _opchecks.check_prune_tokens(**vars(a), data=True)
    tokens, token_scores, frame_counts, total_rows = a.tokens, a.token_scores, a.frame_counts, a.total_rows
    B, T, N, D = tokens.shape
    device = tokens.device
    packed = tokens.new_empty((total_rows, D))
    indices = torch.empty((total_rows,), dtype=torch.int64, device=device)
    counts = torch.empty((B, T), dtype=torch.int32, device=device)
    cu_seqlens = torch.empty((B + 1,), dtype=torch.int32, device=device)
    frame_cu_seqlens = torch.empty((B * T + 1,), dtype=torch.int32, device=device)

    # 1. counts and offsets per video; distinctiveness partial sums per (frame, slice of D)
    counts_given = frame_counts is not None
    if counts_given:  # the frame logits are not needed: placeholders for their arguments
        E, C, frame_inputs, flags = _frame_args(frame_counts, None, None, None, None)
        counts_in = (frame_counts, *frame_counts.stride())
    else:
        E, C, frame_inputs, flags = _frame_args(a.scores, a.frame_embeds, a.query_embeds, a.logit_scale,
                                                a.logit_bias)
        counts_in = (counts, 0, 0)
    distinct = token_scores is None
    splits, split_cols, distinct_blocks = _distinct_plan(B, T, N, D, tokens.element_size())
    if distinct:
        partial = torch.empty((B * T * splits, 2 * N + 1), dtype=torch.float64, device=device)
    else:
        splits, partial = 0, counts  # a placeholder
    sizes = dict(B=B, T=T, N=N, D=D, E=E, C=C, budget=a.budget, min_tokens=a.min_tokens, temperature=a.temperature,
                 ratio_frames=0.0, split_cols=split_cols, splits=max(splits, 1))
    _launch_plan((B + B * T * splits,), counts, frame_cu_seqlens, cu_seqlens, frame_inputs, counts_in,
                 (tokens, *tokens.stride()), partial, sizes,
                 PAPER=False, COUNTS_GIVEN=counts_given, WRITE_OFFSETS=True, DISTINCT=distinct,
                 **flags, **_frame_blocks(T, E, _embed_size(a.frame_embeds), distinct), **distinct_blocks)

    # 2. ranks and indices per frame
    block_n = pow2(N)
    compare = _per_thread(_GPU_COMPARE_PER_THREAD, _NUM_WARPS_SELECT)
    score_args = (token_scores, *token_scores.stride()) if token_scores is not None else (tokens, 0, 0, 0)
    torch.library.wrap_triton(_select_kernel)[(B * T,)](
        *score_args, partial, counts, frame_cu_seqlens, indices,
        T, N, total_rows, max(splits, 1),
        HAS_TOKEN_SCORES=not distinct, RANK_F32=not distinct and token_scores.element_size() <= 4,
        BLOCK_S=min(pow2(splits, lo=1), _MAX_SPLITS_PER_STEP), BLOCK_N=block_n,
        CHUNK_N=min(block_n, fit(compare, block_n, N)),
        num_warps=_NUM_WARPS_SELECT,
    )

    # 3. the kept rows, spread over the whole GPU
    if total_rows > 0:
        stride_tb, stride_tt, stride_tn, _ = tokens.stride()
        flat_rows = (T == 1 or stride_tt == N * stride_tn) and (B == 1 or stride_tb == T * N * stride_tn)
        blocks = _copy_blocks(total_rows, D, tokens.element_size())
        grid = (cdiv(total_rows, blocks["ROWS"]), cdiv(D, blocks["BLOCK_DC"]))
        torch.library.wrap_triton(_copy_rows_kernel)[grid](
            tokens, *tokens.stride(), indices, packed,
            T, N, D, B * T * N, total_rows,
            FLAT_ROWS=flat_rows, num_warps=_NUM_WARPS_COPY, **blocks,
        )
    return packed, indices, counts, cu_seqlens, frame_cu_seqlens


# ----------------------------------------------------------------------------------
# Traffic of each launch (kvtp_kernels.kernels._traffic; read by bench.kernel_report)
# ----------------------------------------------------------------------------------
def _video_fp64_ops(v: dict) -> float:
    """float64 operations of one per-video program of ``_plan_kernel`` (padded lanes included).

    Frame logits from embeddings: 4 per frame-embedding element and query chunk (two
    rounded products, two adds); softmax ~30 per frame; exact allocation: the g(lam) sweep
    (2 BLOCK_T candidates x BLOCK_T frames x 5: product, clamp, select, add) and the
    remainder ranks (BLOCK_T^2 x 4), or with SEARCH g at 21 x 8 probes (x BLOCK_T x 5; the
    remainder's search compares integers; the 42 rounds' CTA-wide reductions are not
    modelled); paper allocation ~5 per frame.
    """
    block_t = v["BLOCK_T"]
    ops = 30.0 * block_t
    if v["FROM_EMBEDS"]:
        ops += 4.0 * v["C"] * block_t * v["E"] + 2.0 * v["C"] * v["E"]
    if v["COUNTS_GIVEN"]:
        return ops
    if v["PAPER"]:
        return ops + 5.0 * block_t
    if v["SEARCH"]:
        return ops + 5.0 * _SEARCH_ROUNDS * int(_SEARCH_PROBES) * block_t
    return ops + 14.0 * block_t * block_t


def _plan_traffic(v: dict, grid: tuple) -> _traffic.Traffic:
    """``_plan_kernel``: B per-video programs (serial, one SM each) and the distinctiveness programs.

    Per video: its T frame scores (or C passes over its T x E frame embeddings and the C
    query rows, or its given counts: with WRITE_OFFSETS also every earlier video's, one
    BLOCK_F chunk per loop trip); writes T counts and, with WRITE_OFFSETS, T + 1 frame
    offsets and its video offset. The token tensor is read only by the DISTINCT programs:
    every token once (B*T*N*D elements; each program its frame's N rows of one slice of
    D), and each writes its (2N + 1) float64 partial sums.
    """
    B, T, N, D = v["B"], v["T"], v["N"], v["D"]
    if v["COUNTS_GIVEN"]:
        es = v["counts_in_ptr"].element_size()
        per_video = T * es + ((B - 1) * T * es if v["WRITE_OFFSETS"] else 0)
        total = B * T * es + ((B * (B - 1) // 2) * T * es if v["WRITE_OFFSETS"] else 0)
        trips = 1 + (cdiv((B - 1) * T, v["BLOCK_F"]) if v["WRITE_OFFSETS"] else 0)
        unique = B * T * es
    elif v["FROM_EMBEDS"]:
        E, C = v["E"], v["C"]
        frames, queries = v["frame_ptr"].element_size(), v["query_ptr"].element_size()
        per_video = C * (T * E * frames + E * queries) + 8 * (v["HAS_SCALE"] + v["HAS_BIAS"])
        total = B * per_video
        trips = C  # each query chunk's pipeline over E starts with a round trip
        unique = B * (T + C) * E * frames
    else:
        es = v["scores_ptr"].element_size()
        per_video = T * es
        total = B * T * es
        trips = 1
        unique = total
    written = B * T * 4 + (((B * T + 1) + (B + 1)) * 4 if v["WRITE_OFFSETS"] else 0)
    read, fp64 = unique, 0.0
    if v["DISTINCT"]:
        programs = max(int(grid[0]) - B, 0)
        read += B * T * N * D * v["tokens_ptr"].element_size()
        written += programs * (2 * N + 1) * 8
        fp64 = 5.0 * B * T * v["BLOCK_N"] * D  # column sum, x*mu and x*x rounded and added
    return _traffic.Traffic(read=read, written=written, l2_read=total - unique, serial_read=per_video,
                            serial_trips=trips, serial_fp64=_video_fp64_ops(v), fp64=fp64)


def _select_traffic(v: dict, grid: tuple) -> _traffic.Traffic:
    """``_select_kernel``: per frame its count and first row, then its N token scores (given:
    N elements of ``token_scores``; distinctiveness: S x (2N + 1) float64 partial sums,
    the token tensor is a placeholder and not read); writes one int64 index per kept row
    (``total_rows`` in all). The loads are independent: one round trip, then the ranks
    (BLOCK_N^2 x 2 comparisons per frame: float64 ones, unless RANK_F32)."""
    frames, N = int(grid[0]), v["N"]
    read = 2 * frames * 4
    if v["HAS_TOKEN_SCORES"]:
        read += frames * N * v["token_scores_ptr"].element_size()
    else:
        read += frames * v["num_splits"] * (2 * N + 1) * 8
    fp64 = 0.0 if v["RANK_F32"] else 2.0 * frames * v["BLOCK_N"] ** 2
    return _traffic.Traffic(read=read, written=v["total_rows"] * 8, prologue_trips=1, fp64=fp64)


def _copy_traffic(v: dict, grid: tuple) -> _traffic.Traffic:
    """``_copy_rows_kernel``: the ``total_rows`` kept rows, read once and written once, and
    their int64 indices (one round trip before a program's row loads can issue)."""
    rows, row_bytes = v["total_rows"], v["D"] * v["packed_ptr"].element_size()
    return _traffic.Traffic(read=rows * 8 + rows * row_bytes, written=rows * row_bytes, prologue_trips=1)


TRAFFIC = {"_plan_kernel": _plan_traffic, "_select_kernel": _select_traffic, "_copy_rows_kernel": _copy_traffic}
