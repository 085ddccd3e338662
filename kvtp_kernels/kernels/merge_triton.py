"""Triton backend of ``kvtp::merge_neighbors``: PruMerge's merge step (METHOD.md section 3).

For every kept token i (a row of ``indices``) the ``num_neighbors`` = M most similar OTHER
tokens j of its frame (cosine of ``merge_keys``; higher first, ties to the lower index, NaN
last: the order of ``_numerics.rank``) are folded into it:

- ``mean=False`` (the authors' merge): ``y_i = x_i + sum_j a_j x_j``;
- ``mean=True``: ``y_i = x_i + sum_j (a_j / W) (x_j - x_i)``, ``W = a_i + sum_j a_j``, and
  ``y_i = x_i`` (bit for bit) when ``W == 0``.

Two launches per call (one when ``num_neighbors == 0``), no host sync:

A. ``_merge_select_kernel``, grid ``(B*T, P)``: program ``(f, p)`` takes the blocks p, p + P,
   p + 2P, ... of ROWS kept rows of frame f (16 warps; 8 without float64 MMA or with
   Triton < 3.7: ``select_warps``); P = ``cdiv(N, ROWS)`` (on a GPU: one block per
   program). Each program

   1. finds its frame's rows ``[row_begin, row_end)`` of ``indices`` on the device: the
      lower bounds of ``f*N`` and ``(f+1)*N`` in the sorted ``indices``, by a SEARCH-ary
      search (one step of SEARCH probes while R <= SEARCH, two up to SEARCH^2 rows, ...);
      programs with no block of rows stop here; for each block:
   2. computes the dot products of its ROWS keys with the frame's N keys as a float64
      ``tl.dot`` ([ROWS, BLOCK_K] x [BLOCK_K, BLOCK_N] per chunk of Dk; DMMA ``mma.sync
      m8n8k4.f64`` on sm_80+), and the frame's squared key norms in the same pass, then
      ``cos = dot / (max(|k_i|, 1e-12) * max(|k_j|, 1e-12))``;
   3. selects the M neighbours of each row without sorting: every cosine becomes an
      unsigned 64-bit key that orders like ``_numerics.rank`` (NaN just above the excluded self
      and padding lanes), a 64-step MSB-first bisection finds each row's M-th largest key
      v* (the interpreter decides RADIX_BITS bits per step), and the neighbours are the
      keys > v* plus the lowest-index keys == v* up to M (an exclusive ``tl.cumsum`` of
      the ties);
   4. lists the neighbours in raster order and writes, per kept row, the M neighbour
      tokens (int32), their coefficients (a_j, or a_j / W) and whether the row merges at
      all (W != 0) to a workspace of R x M pairs (12-16 bytes each: ~0.5 MB at the
      headline, against the 36 MB of kept rows).

B. ``_merge_rows_kernel``, grid ``(cdiv(R, 8), cdiv(D, BLOCK_D))``: a warp takes two kept
   rows and BLOCK_D columns (16 bytes per lane), the M neighbour rows read one after the
   other (the next one's loads issued before this one's math) and accumulated in
   registers. No CTA-wide step: no barrier, no shuffle, every SM busy (4396 CTAs at the
   headline).
   Only neighbours are read (unlike ``W @ X_frame`` with zero weights, where 0 * NaN would
   let a non-finite token poison every row of its frame).

Numerics. Cosines and the neighbour selection are float64, as in the reference, but the
order of operations differs (``tl.dot`` of the raw keys, then one division, where the
reference normalises first and multiplies in BLAS order), so cosines may differ by a few
float64 ulps. Neighbour sets are therefore identical to the reference's except when two
cosines of a row lie within that rounding of each other without being equal in both:
in practice only for keys that are exact duplicates or exact multiples of each other,
whose cosines tie in exact arithmetic and which the two implementations may then round
apart (ties that are exact in both resolve identically: zero keys (cosine 0), NaN or infinite
keys (NaN rows and columns), keys scaled by powers of two). float64 keys beyond ~1e154
(squared norm overflows) or below ~1e-154 (products underflow) are outside this
guarantee. The output is accumulated
in float32 for float16/bfloat16 tokens and in float64 for float32/float64 tokens, and
rounded once to the tokens' dtype (the reference: float64, rounded once); with
``num_neighbors == 0`` the kept rows are copied, bit for bit.

Preconditions (what ``prune`` produces; not checked here because checking needs a host
sync): ``indices`` lie in ``[0, B*T*N)`` and come frame by frame (raster order inside a
frame is not needed). Rows whose index lies outside ``[0, B*T*N)`` are left unwritten;
rows of a frame that is not contiguous in ``indices`` get unspecified values; nothing is
read out of bounds (neighbour tokens are checked against ``[0, N)``).

Cost at the headline, worked by hand: bench/README.md ("PruMerge's cost, by hand"); the
kernel report (``python -m bench.kernel_report``) models it from the compiled kernels.

Inputs are loaded only in the kernel body (helpers get values), so torch.compile's
mutation analysis of user kernels sees only the outputs and workspaces as written (see
:mod:`kvtp_kernels.kernels.prune_triton`). Offsets are int64.
"""

import torch
import triton
import triton.language as tl

from .. import _opchecks
from .._numerics import cdiv, fit, pow2
from . import _traffic
from ._common import _INTERPRETER_TILE, _INTERPRETING, _NORM_EPS, _widen, copy_tile

# Register tiles of the select kernel on a GPU, in elements per thread (x 32 x num_warps =
# elements per tile). 16 warps, one CTA per SM: the [ROWS, BLOCK_N] float64 tiles of steps
# 2-3 (dot accumulator, cosines, keys) are fixed by N (16 x 256 / 512 threads = 8 per
# thread at N <= 256); tests/test_merge_triton.py compiles every variant for sm_90 and
# checks that none spills.
_GPU_F64_PER_THREAD = 8  # key chunk [BLOCK_K, BLOCK_N]: 16 x 256 at N = 196
# Optional 3-D compare tiles: [ROWS, 2^RADIX_BITS, BLOCK_N] (several key bits per bisection
# step) and [ROWS, BLOCK_M, BLOCK_N] (all neighbour lanes at once). Above this budget the
# kernel takes one bit / one neighbour per step on [ROWS, BLOCK_N] tiles: on a GPU, always
# once N > 16; the interpreter, where each step costs ~1 ms, takes the wide ones.
_GPU_COMPARE_PER_THREAD = 4
# Kept rows per select program. Each program reads all N keys of its frame once and does
# ROWS x N x Dk float64 MMA work on them: at ROWS = 16 that is ~20 flop per byte of bf16
# keys, about the ratio of H100's float64 tensor rate to its L2 bandwidth.
_GPU_ROWS = 16
_GPU_SEARCH = 256  # probes per step of the row-range search: 2 steps up to 65536 kept rows
_MIN_DOT = 16  # smallest K of a float64 tl.dot on every Triton 3.x (3.8 allows 4)
_NUM_WARPS_SELECT = 16
# GPUs without float64 MMA (sm_86, sm_89, sm_120: tl.dot in float64 becomes FMAs on
# register tiles) need more registers per thread for the same tiles: 16 warps (128
# registers at most) spilled 656 bytes on sm_89; 8 warps take ~200 registers and none.
# Triton before 3.7 (the lent GPU machines run 3.6) lowers the float64 tl.dot to FMAs on
# every GPU (no DMMA in its PTX for sm_90): 16 warps spilled 128 bytes on sm_90 there,
# 8 warps fit (255 registers).
_NUM_WARPS_SELECT_NO_DMMA = 8
_DMMA_CAPABILITIES = (80, 90, 100, 103)
_TRITON_BEFORE_3_7 = tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7)
# The rows kernel: 4 warps, 8 kept rows (2 per warp); a lane loads 16 bytes of a row per
# neighbour (BLOCK_D = 32 x 16 bytes / _GPU_ROWS_LANE_DIVISOR). 8 consecutive rows mostly
# share a frame, so their neighbours' rows are read from L2 once per CTA and then hit L1.
# 16 rows per CTA would need ~160 registers (3 CTAs per SM), 4 leaves L1 reuse unused.
# Tests set the divisor higher to take several column tiles at small D.
_NUM_WARPS_ROWS = 4
_GPU_ROWS_PER_CTA = 8
_GPU_ROWS_LANE_DIVISOR = 1
# Under TRITON_INTERPRET=1 (``_INTERPRETING``) the same kernels run with much bigger
# tiles: all rows of a frame in one program (see kernels/_common.py).


@triton.jit
def _merge_select_kernel(
    keys_ptr, stride_kb, stride_kt, stride_kn, stride_kd,
    weights_ptr, stride_wb, stride_wt, stride_wn,
    indices_ptr, stride_i,
    neighbors_ptr, coefs_ptr, merging_ptr,
    T, N, Dk, R, num_neighbors,
    MEAN: tl.constexpr, COEF_F64: tl.constexpr,
    SEARCH: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr, RADIX_BITS: tl.constexpr, LIST_3D: tl.constexpr,
):
    """Grid (B*T, P): neighbour lists of the kept rows ``row_begin + (blk + i*P)*ROWS + r`` of frame f.

    Writes, for every kept row r of the frame, ``neighbors[r, m]`` (int32 token of its m-th
    neighbour, raster order), ``coefs[r, m]`` (a_j, or a_j / W for MEAN) and
    ``merging[r]`` (int32: 0 when MEAN and W == 0, the row is then x_i itself).
    Every load of an input sits in this body (see the module docstring); ``_widen`` gets
    values only.
    """
    frame = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    b = frame // T
    t = frame - b * T

    # ---- 1. this frame's rows: lower bounds of frame*N and (frame+1)*N in `indices` ----
    # The answer c (rows with index below the bound) lies in [base, base + width]; a step
    # probes SEARCH evenly spaced rows (stride `step`), each probe q tests c >= q, which
    # leaves a window of width step - 1.
    bound = (frame + tl.arange(0, 2).to(tl.int64)) * N
    base = tl.full([2], 0, tl.int64)
    width = tl.full([2], 0, tl.int64) + R
    probe = tl.arange(1, SEARCH + 1).to(tl.int64)
    while tl.max(width, axis=0) > 0:
        step = (width + SEARCH - 1) // SEARCH
        offset = probe[None, :] * step[:, None]  # [2, SEARCH]
        live = (offset <= width[:, None]) & (width[:, None] > 0)
        value = tl.load(indices_ptr + (base[:, None] + offset - 1) * stride_i, mask=live, other=0)
        below = tl.sum((live & (value < bound[:, None])).to(tl.int64), axis=1)
        new_base = base + below * step
        width = tl.where(width > 0, tl.minimum(step - 1, base + width - new_base), 0)
        base = new_base
    row_begin, row_end = tl.split(base)

    # blocks blk, blk + P, ... of ROWS rows (P programs per frame)
    for row0 in range(row_begin + blk * ROWS, row_end, tl.num_programs(1) * ROWS):
        offs_r = row0 + tl.arange(0, ROWS)
        row_ok = offs_r < row_end
        flat = tl.load(indices_ptr + offs_r * stride_i, mask=row_ok, other=0)
        row_ok &= (flat >= frame * N) & (flat < frame * N + N)  # only if `indices` is not sorted by frame
        tok = tl.where(row_ok, flat - frame * N, 0)  # token of each row inside the frame
        # ---- 2. cosines [ROWS, BLOCK_N] in float64 ----
        offs_n = tl.arange(0, BLOCK_N)
        valid_n = offs_n < N
        frame_keys = keys_ptr + b * stride_kb + t * stride_kt
        key_zero = tl.full([], 0.0, keys_ptr.dtype.element_ty)
        dots = tl.full([ROWS, BLOCK_N], 0.0, tl.float64)
        sq_norm = tl.full([BLOCK_N], 0.0, tl.float64)
        row_keys = frame_keys + tok[:, None] * stride_kn  # [ROWS, 1]
        col_keys = frame_keys + offs_n.to(tl.int64)[None, :] * stride_kn  # [1, BLOCK_N]
        offs_k = tl.arange(0, BLOCK_K)
        k_rows_next = tl.load(row_keys + offs_k.to(tl.int64)[None, :] * stride_kd,
                              mask=row_ok[:, None] & (offs_k < Dk)[None, :], other=key_zero)
        k_frame_next = tl.load(col_keys + offs_k.to(tl.int64)[:, None] * stride_kd,
                               mask=(offs_k < Dk)[:, None] & valid_n[None, :], other=key_zero)
        for k0 in range(0, Dk, BLOCK_K):
            # The chunk is loaded one iteration ahead and carried by the loop. Besides
            # overlapping the loads with the float64 MMA, this is needed: Triton's MMA layout
            # pass follows a dot operand back through elementwise ops to its load and sizes
            # the operand's kWidth by the loaded (16-bit) type, which sm_90 codegen rejects
            # for a float64 dot ("fp64 don't support largeK MMA", triton 3.8); it stops at
            # loop-carried values.
            k_rows = _widen(k_rows_next, True)  # [ROWS, BLOCK_K]
            k_frame = _widen(k_frame_next, True)  # [BLOCK_K, BLOCK_N]
            offs_k = k0 + BLOCK_K + tl.arange(0, BLOCK_K)
            valid_k = offs_k < Dk
            k_rows_next = tl.load(row_keys + offs_k.to(tl.int64)[None, :] * stride_kd,
                                  mask=row_ok[:, None] & valid_k[None, :], other=key_zero)
            k_frame_next = tl.load(col_keys + offs_k.to(tl.int64)[:, None] * stride_kd,
                                   mask=valid_k[:, None] & valid_n[None, :], other=key_zero)
            dots = tl.dot(k_rows, k_frame, dots, out_dtype=tl.float64)  # triton < 3.7 defaults to fp32
            sq_norm += tl.sum(k_frame * k_frame, axis=0)
        eps = tl.full([], _NORM_EPS, tl.float64)
        norm = tl.maximum(tl.sqrt(sq_norm), eps, propagate_nan=tl.PropagateNan.ALL)
        is_self = offs_n[None, :] == tok[:, None]
        norm_i = tl.sum(tl.where(is_self, norm[None, :], 0.0), axis=1)  # the same value as column i
        cos = dots / (norm_i[:, None] * norm[None, :])

        # ---- 3. the M best other tokens of each row ----
        # Unsigned keys in the order of _numerics.rank: a float's bits with the sign bit set
        # (>= 0) or all bits flipped (< 0) compare like the float; NaN -> 1, below -inf;
        # self and padding -> 0, below everything. (-0.0 would sort below +0.0, but no
        # cosine is -0.0: the dot accumulates onto +0.0, and +0.0 + -0.0 = +0.0.)
        bits = cos.to(tl.uint64, bitcast=True)
        sign = tl.full([], 1 << 63, tl.uint64)
        all_bits = tl.full([], (1 << 64) - 1, tl.uint64)
        key = tl.where((bits & sign) != 0, bits ^ all_bits, bits | sign)
        key = tl.where(cos != cos, tl.full([], 1, tl.uint64), key)
        key = tl.where(valid_n[None, :] & ~is_self, key, tl.full([], 0, tl.uint64))
        # v* = the largest v with #{key >= v} >= M, i.e. the M-th largest key, bit by bit
        # (M <= N - 1 other tokens have keys >= 1, so v* >= 1: self and padding never pass)
        # (RADIX_BITS bits per step; 1 on a GPU: [ROWS, BLOCK_N] tiles, 64 steps)
        thresh = tl.full([ROWS], 0, tl.uint64)
        for step in range(64 // RADIX_BITS):
            shift = tl.cast(64 - RADIX_BITS * (step + 1), tl.uint64)
            if RADIX_BITS == 1:
                cand = thresh | (tl.full([], 1, tl.uint64) << shift)
                count = tl.sum((key >= cand[:, None]).to(tl.int32), axis=1)
                thresh = tl.where(count >= num_neighbors, cand, thresh)
            else:
                # all 2^RADIX_BITS digits at once; digit 0 (thresh itself) always passes
                digits = tl.arange(0, 1 << RADIX_BITS).to(tl.uint64)
                cand = thresh[:, None] | (digits[None, :] << shift)  # [ROWS, RADIX]
                count = tl.sum((key[:, None, :] >= cand[:, :, None]).to(tl.int32), axis=2)
                digit = tl.sum((count >= num_neighbors).to(tl.int32), axis=1) - 1
                thresh = thresh | (digit.to(tl.uint64) << shift)
        above = key > thresh[:, None]
        tie = key == thresh[:, None]
        n_above = tl.sum(above.to(tl.int32), axis=1)
        tie_i = tie.to(tl.int32)
        tie_before = tl.cumsum(tie_i, axis=1) - tie_i
        neighbor = above | (tie & (tie_before < (num_neighbors - n_above)[:, None]))

        # ---- 4. neighbour lists, weights, merged rows ----
        seen = tl.cumsum(neighbor.to(tl.int32), axis=1)  # neighbours at lanes <= n
        offs_m = tl.arange(0, BLOCK_M)
        m_ok = offs_m < num_neighbors
        # nbr[r, m] = lane of row r's (m+1)-th neighbour = #{lanes n : seen[r, n] <= m}
        if LIST_3D:
            nbr = tl.sum((seen[:, None, :] <= offs_m[None, :, None]).to(tl.int32), axis=2)
        else:
            nbr = tl.full([ROWS, BLOCK_M], 0, tl.int32)
            for m in range(num_neighbors):
                lane = tl.sum((seen <= m).to(tl.int32), axis=1)
                nbr = tl.where(offs_m[None, :] == m, lane[:, None], nbr)
        pair_ok = row_ok[:, None] & m_ok[None, :]
        frame_weights = weights_ptr + b * stride_wb + t * stride_wt
        w_zero = tl.full([], 0.0, weights_ptr.dtype.element_ty)
        a_j = _widen(tl.load(frame_weights + nbr.to(tl.int64) * stride_wn, mask=pair_ok, other=w_zero), True)
        if MEAN:
            a_i = _widen(tl.load(frame_weights + tok * stride_wn, mask=row_ok, other=w_zero), True)
            total = a_i + tl.sum(a_j, axis=1)
            nonzero = total != 0.0
            coef = tl.where(nonzero[:, None], a_j / tl.where(nonzero, total, 1.0)[:, None], 0.0)
        else:
            nonzero = row_ok
            coef = a_j
        if not COEF_F64:
            coef = coef.to(tl.float32)
        lists = offs_r[:, None] * num_neighbors + offs_m[None, :]
        tl.store(neighbors_ptr + lists, nbr, mask=pair_ok)
        tl.store(coefs_ptr + lists, coef, mask=pair_ok)
        tl.store(merging_ptr + offs_r, nonzero.to(tl.int32), mask=row_ok)


@triton.jit
def _merge_rows_kernel(
    tokens_ptr, stride_tb, stride_tt, stride_tn, stride_td,
    indices_ptr, stride_i,
    neighbors_ptr, coefs_ptr, merging_ptr,
    out_ptr,
    T, N, D, R, num_rows, num_neighbors,
    MEAN: tl.constexpr, HAS_NEIGHBORS: tl.constexpr, ACC_F64: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Grid (cdiv(R, ROWS), cdiv(D, BLOCK_D)): ``out[r, d-chunk]`` for ROWS kept rows.

    On a GPU a [ROWS, BLOCK_D] tile puts a row's BLOCK_D columns across the 32 lanes of
    one warp, 16 bytes per lane (ROWS = 2 x num_warps: two rows per warp): the rows' M
    neighbours are read one after the other (the next one's loads issued before this
    one's math, its token two steps ahead) and accumulated in registers, float32 for
    float16/bfloat16 tokens and float64 for float32/float64 ones; then rounded once to the
    tokens' dtype.

    - ``mean=False``: ``y = x_i + sum_m coefs[r, m] x_j``;
    - ``mean=True``:  ``y = x_i + sum_m coefs[r, m] (x_j - x_i)``, or ``x_i`` itself (bit for
      bit) where ``merging[r] == 0``; without neighbours every row is ``x_i``, copied.

    Only neighbours are read (unlike ``W @ X_frame`` with zero weights, where 0 * NaN would
    let a non-finite token poison every row of its frame). Rows whose index lies outside
    ``[0, B*T*N)`` are not written, neighbour tokens outside ``[0, N)`` are not read.
    """
    offs_r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    offs_d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    valid_d = offs_d < D
    row_ok = offs_r < R
    flat = tl.load(indices_ptr + offs_r * stride_i, mask=row_ok, other=0)
    row_ok &= (flat >= 0) & (flat < num_rows)
    flat = tl.where(row_ok, flat, 0)
    frame = flat // N
    b = frame // T
    frame_tokens = tokens_ptr + b * stride_tb + (frame - b * T) * stride_tt  # [ROWS]
    cols = offs_d[None, :] * stride_td
    tile_ok = row_ok[:, None] & valid_d[None, :]
    x_i = tl.load(frame_tokens[:, None] + (flat - frame * N)[:, None] * stride_tn + cols, mask=tile_ok)
    out_tile = out_ptr + offs_r[:, None] * D + offs_d[None, :]
    if HAS_NEIGHBORS:
        xi = _widen(x_i, ACC_F64)
        acc = tl.zeros([ROWS, BLOCK_D], tl.float64 if ACC_F64 else tl.float32)
        # Neighbour m's row is loaded one step ahead of its math and its token two steps
        # ahead, so that the dependent loads (token, then row) never stall a step.
        lists = neighbors_ptr + offs_r * num_neighbors
        j = tl.load(lists, mask=row_ok, other=0)
        ok_next = row_ok & (j >= 0) & (j < N)
        coef_next = tl.load(coefs_ptr + offs_r * num_neighbors, mask=ok_next, other=0.0)
        x_next = tl.load(frame_tokens[:, None] + tl.where(ok_next, j, 0).to(tl.int64)[:, None] * stride_tn + cols,
                         mask=ok_next[:, None] & valid_d[None, :], other=0.0)
        j_ahead = tl.load(lists + 1, mask=row_ok & (num_neighbors > 1), other=-1)
        for m in range(num_neighbors):
            coef = coef_next
            x_j = _widen(x_next, ACC_F64)
            ok = ok_next
            ok_next = row_ok & (j_ahead >= 0) & (j_ahead < N)  # j_ahead = -1 past the last neighbour
            coef_next = tl.load(coefs_ptr + offs_r * num_neighbors + m + 1, mask=ok_next, other=0.0)
            x_next = tl.load(frame_tokens[:, None] + tl.where(ok_next, j_ahead, 0).to(tl.int64)[:, None] * stride_tn
                             + cols, mask=ok_next[:, None] & valid_d[None, :], other=0.0)
            j_ahead = tl.load(lists + m + 2, mask=row_ok & (m + 2 < num_neighbors), other=-1)
            c = coef.to(acc.dtype)[:, None]
            if MEAN:
                # per neighbour, like the reference; skipped lanes must not form 0 * (0 - inf)
                acc += tl.where(ok[:, None], c * (x_j - xi), 0.0)
            else:
                acc += tl.where(ok[:, None], c * x_j, 0.0)
        y = (xi + acc).to(out_ptr.dtype.element_ty)
        if MEAN:
            merging = tl.load(merging_ptr + offs_r, mask=row_ok, other=0) != 0
            y = tl.where(merging[:, None], y, x_i)  # W == 0: x_i itself
        tl.store(out_tile, y, mask=tile_ok)
    else:
        tl.store(out_tile, x_i, mask=tile_ok)  # no neighbours: y_i = x_i, bit for bit


# ----------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------
def select_warps(capability: int | None) -> int:
    """Warps of ``_merge_select_kernel`` for a GPU of compute capability ``capability``
    (major * 10 + minor; None: not known, e.g. the interpreter) with this Triton: 16 where
    float64 MMA exists (sm_80, sm_90, sm_100), 8 elsewhere and with Triton < 3.7, so that
    the kernel does not spill (``bench.kernel_report`` compiles what this returns)."""
    if capability is None or (capability in _DMMA_CAPABILITIES and not _TRITON_BEFORE_3_7):
        return _NUM_WARPS_SELECT
    return _NUM_WARPS_SELECT_NO_DMMA


def _target_capability(device: torch.device) -> int | None:
    """Compute capability the kernels are launched (or, offline, compiled) for.

    CUDA tensors: their device's. The interpreter: None. Otherwise (CPU tensors with the
    interpreter off: an offline compile such as ``bench.kernel_report``, which installs a
    stand-in driver naming a capability): Triton's active target.
    """
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    if _INTERPRETING:
        return None
    try:
        target = triton.runtime.driver.active.get_current_target()
    except Exception:  # no driver at all: the defaults
        return None
    return int(target.arch) if isinstance(target.arch, int) else None


def _select_blocks(R: int, N: int, Dk: int, num_neighbors: int, num_warps: int = _NUM_WARPS_SELECT) -> dict:
    """Tile sizes of ``_merge_select_kernel`` (see ``_GPU_*``); the interpreter gets big ones."""
    block_n = pow2(N)
    if _INTERPRETING:
        f64 = search = _INTERPRETER_TILE
        compare = 2 * _INTERPRETER_TILE  # 8 key bits per step at N <= 32
        rows = block_n  # every kept row of a frame in one program
    else:
        threads = 32 * num_warps
        f64 = _GPU_F64_PER_THREAD * threads
        compare = _GPU_COMPARE_PER_THREAD * threads
        search = _GPU_SEARCH
        rows = _GPU_ROWS
    block_m = pow2(num_neighbors, lo=1)
    return dict(
        SEARCH=min(search, pow2(R)),
        ROWS=rows,
        BLOCK_N=block_n,
        BLOCK_K=fit(f64, block_n, Dk, lo=_MIN_DOT),
        BLOCK_M=block_m,
        RADIX_BITS=max([1] + [bits for bits in (2, 4, 8) if rows * (1 << bits) * block_n <= compare]),
        LIST_3D=rows * block_m * block_n <= compare,
    )


def _rows_blocks(R: int, D: int, element_size: int) -> dict:
    """[ROWS, BLOCK_D] tiles of ``_merge_rows_kernel``: two rows per warp, 16 bytes per lane.

    BLOCK_D: 32 lanes x 16 bytes, halved while that pads D less (D = 3584 bf16: 256).
    """
    widest = max(1, 32 * 16 // element_size // _GPU_ROWS_LANE_DIVISOR)
    widths = [widest >> k for k in range(4) if widest >> k >= 1]
    rows, block_d = copy_tile(R, D, widths, lambda w: _GPU_ROWS_PER_CTA, _INTERPRETING)
    return dict(ROWS=rows, BLOCK_D=block_d)


def merge_neighbors(a) -> torch.Tensor:
    """``kvtp::merge_neighbors_triton``: PruMerge's merge of the kept rows, two launches (one
    without neighbours), no host sync (METHOD.md section 3).

    Args (``a``, by name):
        tokens: [B, T, N, D] float32/float16/bfloat16 (or float64), any strides.
        merge_keys: [B, T, N, Dk] any float dtype, any strides.
        weights: [B, T, N] the a's, any float dtype, any strides.
        indices: int64 [R], flat indices into B*T*N of the kept tokens, frame by frame.
        num_neighbors: M in [0, N - 1].
        mean: False: ``x_i + sum_j a_j x_j``; True: the a-weighted mean of i and its neighbours.

    Returns:
        [R, D] in the dtype of ``tokens``.
    """
    _opchecks.check_merge_neighbors(**vars(a))
    tokens, merge_keys, weights, indices, mean = a.tokens, a.merge_keys, a.weights, a.indices, a.mean
    B, T, N, D = tokens.shape
    device = tokens.device
    R = indices.shape[0]
    Dk = merge_keys.shape[3]
    out = tokens.new_empty((R, D))
    if R == 0 or D == 0:
        return out
    acc_f64 = tokens.dtype in (torch.float32, torch.float64)
    M = a.num_neighbors
    # 1. neighbour lists (a workspace of R x M tokens and coefficients, 12-16 bytes per pair)
    neighbors = torch.empty((R, max(M, 1)), dtype=torch.int32, device=device)
    coefs = torch.empty((R, max(M, 1)), dtype=torch.float64 if acc_f64 else torch.float32, device=device)
    merging = torch.empty((R,), dtype=torch.int32, device=device)
    if M > 0:
        num_warps = select_warps(_target_capability(device))
        blocks = _select_blocks(R, N, Dk, M, num_warps)
        # P = cdiv(N, ROWS) programs per frame, one per block a frame can have: KVTP's counts
        # range from 0 to N per frame, and a frame keeping N rows would otherwise run its
        # blocks one after the other (at 16 x 256 x 3584 float64 MACs, ~58 us each at an
        # SM's share of the DMMA peak). Programs past their frame's rows stop after the search.
        grid = (B * T, cdiv(N, blocks["ROWS"]))
        torch.library.wrap_triton(_merge_select_kernel)[grid](
            merge_keys, *merge_keys.stride(),
            weights, *weights.stride(),
            indices, indices.stride(0),
            neighbors, coefs, merging,
            T, N, Dk, R, M,
            MEAN=bool(mean), COEF_F64=acc_f64,
            num_warps=num_warps, **blocks,
        )
    # 2. the merged rows, a warp per row, spread over the whole GPU
    blocks = _rows_blocks(R, D, tokens.element_size())
    grid = (cdiv(R, blocks["ROWS"]), cdiv(D, blocks["BLOCK_D"]))
    torch.library.wrap_triton(_merge_rows_kernel)[grid](
        tokens, *tokens.stride(),
        indices, indices.stride(0),
        neighbors, coefs, merging,
        out,
        T, N, D, R, B * T * N, M,
        MEAN=bool(mean), HAS_NEIGHBORS=M > 0, ACC_F64=acc_f64,
        num_warps=_NUM_WARPS_ROWS, **blocks,
    )
    return out


# ----------------------------------------------------------------------------------
# Traffic of each launch (kvtp_kernels.kernels._traffic; read by bench.kernel_report)
# ----------------------------------------------------------------------------------
def _search_steps(R: int, search: int) -> int:
    """Loop trips of step 1's row-range search (each one dependent round trip)."""
    steps, width = 0, R
    while width > 0:
        width = cdiv(width, search) - 1
        steps += 1
    return steps


def _select_traffic(v: dict, grid: tuple) -> _traffic.Traffic:
    """``_merge_select_kernel``: blocks of ROWS kept rows against all N keys of their frame.

    Which frame keeps how many rows is device data: the model takes ``R / ROWS`` full
    blocks plus half a block of padding per frame (capped at the grid). A block reads its
    frame's N keys (BLOCK_N x Dk float64 MMA work per row) and its rows' keys; DRAM sees
    every key once (the blocks of a frame share them in L2, the rest is ``l2_read``), the
    weights of the neighbours (at most the frame's N), the indices and, per program, the
    search probes (2 x SEARCH int64 per step, L2). Writes R x M neighbour tokens (int32)
    and coefficients, and R flags. Not modelled: the integer work of the 64-step
    bisection and the list (compare-and-count over [ROWS, BLOCK_N] tiles per step).
    """
    frames, programs = int(grid[0]), int(grid[0]) * int(grid[1])
    N, Dk, R, M, rows = v["N"], v["Dk"], v["R"], v["num_neighbors"], v["ROWS"]
    ks, ws = v["keys_ptr"].element_size(), v["weights_ptr"].element_size()
    blocks = min(programs, cdiv(R, rows) + frames * (rows - 1) // (2 * rows))
    steps = _search_steps(R, v["SEARCH"])
    keys = frames * N * Dk * ks
    read = keys + R * 8 + min(R * M, frames * N) * ws
    l2 = blocks * (N + rows) * Dk * ks - keys + programs * steps * 2 * v["SEARCH"] * 8
    dk = cdiv(Dk, v["BLOCK_K"]) * v["BLOCK_K"]
    return _traffic.Traffic(read=read, written=R * M * (4 + v["coefs_ptr"].element_size()) + R * 4,
                            l2_read=max(l2, 0), prologue_trips=steps + 2,
                            fp64=2.0 * blocks * v["BLOCK_N"] * Dk + 4.0 * blocks * rows * v["BLOCK_N"],
                            fp64_mma=2.0 * blocks * rows * v["BLOCK_N"] * dk)


def _rows_traffic(v: dict, grid: tuple) -> _traffic.Traffic:
    """``_merge_rows_kernel``: each kept row, its M neighbour rows and their coefficients.

    DRAM: a token row at most once (the kept rows and their neighbours lie in the kept
    rows' frames: at most ``num_rows`` = B*T*N rows, at most R x (M + 1)), the lists and
    the indices once, R output rows. L2: a CTA's ROWS rows share their frame's rows, so it
    loads at most min(ROWS x M, N) distinct neighbour rows per column tile (L1 serves the
    rest), and every column tile re-reads the rows' indices and lists. Two dependent round
    trips (index and list, then the rows). float64 work only for float32/float64 tokens.
    """
    R, M, D, es = v["R"], v["num_neighbors"], v["D"], v["tokens_ptr"].element_size()
    lists = R * 8 + (R * M * (4 + v["coefs_ptr"].element_size()) + (R * 4 if v["MEAN"] else 0)
                     if v["HAS_NEIGHBORS"] else 0)
    if v["HAS_NEIGHBORS"]:
        token_rows = min(v["num_rows"], R * (M + 1))
        l2_rows = int(grid[0]) * min(v["ROWS"] * M, v["N"]) * D * es
    else:
        token_rows, l2_rows = R, 0
    read = token_rows * D * es + lists
    l2 = max(l2_rows - (token_rows - R) * D * es, 0) + (int(grid[1]) - 1) * lists
    fp64 = 3.0 * R * M * D if v["HAS_NEIGHBORS"] and v["ACC_F64"] else 0.0
    return _traffic.Traffic(read=read, written=R * D * v["out_ptr"].element_size(), l2_read=l2,
                            prologue_trips=2, fp64=fp64)


TRAFFIC = {"_merge_select_kernel": _select_traffic, "_merge_rows_kernel": _rows_traffic}
