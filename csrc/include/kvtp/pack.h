// Packing pruned video tokens and text into the LLM's input (METHOD.md section 4), torch-free.
//
// Every output row is produced by pack_row(), the one per-row body that the CPU
// kernel (pack_cpu.cpp, a thread per range of rows) and the CUDA kernel
// (pack_cuda.cu, a warp per row) both run. It answers "where does output row r come
// from" from small per-sample tables by binary searches, then copies that row.
//
// Source codes (the public `source_index`): the sources of a pack are numbered as
// one virtual concatenation
//     [ text positions (B*L rows) | video rows (Kt rows) | the newline (1 row) ]
// so row r of the output is   b*L + l       text position l of sample b,
//                             B*L + k       row k of the packed video tokens,
//                             B*L + Kt      the newline embedding,
//                             -1            padding (a zero row).
//
// Within sample b the sequence is: kept text before the video span, the video block
// (the sample's video rows, with newlines per layout), kept text after the span,
// where "kept text" = text_mask & !video_mask. The per-sample table (PackField) and
// the prefix counts below are built with ATen ops in pack_ops.cpp.
#pragma once

#include <cstdint>

#include "kvtp/common.h"

#if defined(__CUDACC__) || defined(__HIPCC__)
#include <vector_types.h>
#endif

namespace kvtp {

// Where newline embeddings go inside a video block.
enum PackLayout : int32_t {
  kLayoutNone = 0,   // no newline
  kLayoutVideo = 1,  // one after the video (HF LlavaOnevision), also when it kept no token
  kLayoutFrame = 2,  // one after every frame, also after frames that kept no token
  kLayoutGrid = 3,   // one after every grid row (frame, n / grid_width) that kept a token (LLaVA-Video)
};

// Columns of the per-sample table sample_info, int64 [B, kPackFields].
enum PackField : int32_t {
  kFieldTextBefore = 0,  // kept text rows before the video span (all of them when there is no video)
  kFieldVideo = 1,       // index of the sample's video, -1 for none
  kFieldVideoRow = 2,    // first row of that video in the packed video tokens
  kFieldVideoRows = 3,   // its kept rows K
  kFieldVideoLen = 4,    // length of the video block: K + its newlines (0 without a video)
  kFieldSeqLen = 5,      // the sample's output length: kept text + video block
  kPackFields = 6,
};

// The index tables of one pack (device or host pointers, all read-only).
struct PackPlanView {
  const int64_t* sample_info;  // [B, kPackFields]
  const int32_t* text_rank;    // [B, L]: kept text positions in [0, l] of sample b (inclusive count)
  const int32_t* cu_seqlens;   // [B + 1]: output offsets of the samples (varlen)
  const int32_t* frame_cu;     // [V*T + 1]: frame offsets into the video rows (PrunedTokens.frame_cu_seqlens)
  const int64_t* newline_cu;   // [Kt + 1]: grid layout, newlines after video rows < i; unused otherwise
  int64_t batch;               // B
  int64_t text_len;            // L
  int64_t num_frames;          // T, frames per video
  int64_t video_rows;          // Kt, rows of the packed video tokens
  int64_t length;              // rows (varlen) or padded length L_out (padded) of the output
  int32_t layout;              // PackLayout
  bool padded;                 // [B, L_out] output instead of [length] rows
  bool left_padding;           // padded output: padding before the sequence
};

// Byte pointers and byte strides of the sources and outputs of one pack.
struct PackRowsIO {
  const char* text;            // text_embeds [B, L, D], unit stride along D
  int64_t text_stride_b;       // bytes
  int64_t text_stride_l;       // bytes
  const char* video;           // video tokens [Kt, D], unit stride along D
  int64_t video_stride;        // bytes
  const char* newline;         // [D] contiguous; nullptr when the layout has none
  char* out;                   // embeds, contiguous rows of row_bytes
  int64_t row_bytes;           // D * element size
  int64_t* source_index;       // one per output row
  int64_t* position_ids;       // one per output row
};

// Number of i in [lo, hi) with key(i) <= value, for key non-decreasing in i; i.e.
// the first i in [lo, hi) whose key exceeds value (hi when none does).
template <typename Key>
KVTP_HD int64_t first_above(int64_t lo, int64_t hi, int64_t value, const Key& key) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (key(mid) <= value) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

struct RankKey {  // text_rank row of one sample
  const int32_t* rank;
  KVTP_HD int64_t operator()(int64_t l) const { return rank[l]; }
};
struct Int32Key {  // an int32 offset array
  const int32_t* offsets;
  KVTP_HD int64_t operator()(int64_t i) const { return offsets[i]; }
};
struct FrameStartKey {  // frame layout: block offset of frame t = rows of frames < t + their newlines
  const int32_t* frame_cu;  // frame_cu + v*T
  KVTP_HD int64_t operator()(int64_t t) const { return (frame_cu[t] - frame_cu[0]) + t; }
};
struct GridRowKey {  // grid layout: block offset of video row i = rows before it + newlines before it
  const int64_t* newline_cu;
  int64_t first_row;
  KVTP_HD int64_t operator()(int64_t i) const {
    return (i - first_row) + (newline_cu[i] - newline_cu[first_row]);
  }
};

// Source code of offset `o` of a video block (0 <= o < info[kFieldVideoLen]).
KVTP_HD int64_t video_block_source(const PackPlanView& p, const int64_t* info, int64_t o) {
  const int64_t video_base = p.batch * p.text_len;
  const int64_t newline = video_base + p.video_rows;
  const int64_t first_row = info[kFieldVideoRow], rows = info[kFieldVideoRows];
  switch (p.layout) {
    case kLayoutFrame: {
      // Frame starts are strictly increasing (every frame adds its newline), so
      // the frame holding o is the last one starting at or before it.
      const int32_t* fcu = p.frame_cu + info[kFieldVideo] * p.num_frames;
      const FrameStartKey key{fcu};
      const int64_t t = first_above(0, p.num_frames, o, key) - 1;
      const int64_t within = o - key(t);
      return within < fcu[t + 1] - fcu[t] ? video_base + fcu[t] + within : newline;
    }
    case kLayoutGrid: {
      // Row offsets are strictly increasing; o is either the last row at or before
      // it, or the newline that follows that row (which then ends its grid row).
      const GridRowKey key{p.newline_cu, first_row};
      const int64_t i = first_above(first_row, first_row + rows, o, key) - 1;
      return key(i) == o ? video_base + i : newline;
    }
    case kLayoutVideo:
      return o < rows ? video_base + first_row + o : newline;
    default:  // kLayoutNone
      return video_base + first_row + o;
  }
}

// Source code of row `local` (0 <= local < seq_len) of sample b's sequence.
KVTP_HD int64_t sample_row_source(const PackPlanView& p, int64_t b, int64_t local) {
  const int64_t* info = p.sample_info + b * kPackFields;
  const int64_t before = info[kFieldTextBefore], video_len = info[kFieldVideoLen];
  if (local >= before && local < before + video_len) return video_block_source(p, info, local - before);
  // The rank-th kept text position (0-based) is the first l whose inclusive count exceeds rank.
  const int64_t rank = local < before ? local : local - video_len;
  return b * p.text_len + first_above(0, p.text_len, rank, RankKey{p.text_rank + b * p.text_len});
}

// Output row r -> (sample, offset in its sequence); false for a padding row.
KVTP_HD bool locate_row(const PackPlanView& p, int64_t r, int64_t* sample, int64_t* local) {
  if (p.padded) {
    const int64_t b = r / p.length, j = r - b * p.length;
    const int64_t seq_len = p.sample_info[b * kPackFields + kFieldSeqLen];
    const int64_t o = p.left_padding ? j - (p.length - seq_len) : j;
    *sample = b;
    *local = o;
    return o >= 0 && o < seq_len;
  }
  // Samples of length 0 share their offset with the next one; the last sample
  // starting at or before r is the one that holds it.
  if (r >= p.cu_seqlens[p.batch]) return false;  // rows past the total (a caller-given length)
  const int64_t b = first_above(0, p.batch, r, Int32Key{p.cu_seqlens}) - 1;
  *sample = b;
  *local = r - p.cu_seqlens[b];
  return true;
}

// ---------------------------------------------------------------------------------
// Row copy: bytes, in the widest unit (16, 8, 4, 2 or 1 bytes) that the alignment of
// both rows and the row size allow; `lane` of `lanes` cooperating threads takes every
// lanes-th unit, so a warp reads 512 contiguous bytes per step with 16-byte loads.
// kCopyBatch units per thread are loaded into registers before any of them is stored:
// the loads are independent, so a GPU thread keeps kCopyBatch loads in flight (with one
// load then one store per step, a store through a char-derived pointer may alias the
// next load, and the compiler serialises them). The rows of one pack never overlap
// (the output is a fresh tensor), which is what __restrict__ states.
// ---------------------------------------------------------------------------------
#if defined(__CUDACC__) || defined(__HIPCC__)
using Bytes16 = uint4;  // a 128-bit load/store on the GPU
#else
struct alignas(16) Bytes16 {
  uint64_t lo, hi;
};
#endif

constexpr int64_t kCopyBatch = 4;  // 4 x 16 bytes in flight per GPU thread, 2 KB per warp

template <typename Unit>
KVTP_HD void copy_units(char* __restrict__ dst, const char* __restrict__ src, int64_t nbytes, int64_t lane,
                        int64_t lanes) {
  Unit* __restrict__ to = reinterpret_cast<Unit*>(dst);
  const int64_t n = nbytes / static_cast<int64_t>(sizeof(Unit));
  if (src == nullptr) {
    const Unit zero{};
    for (int64_t i = lane; i < n; i += lanes) to[i] = zero;
    return;
  }
  const Unit* __restrict__ from = reinterpret_cast<const Unit*>(src);
  int64_t i = lane;
  for (; i + (kCopyBatch - 1) * lanes < n; i += kCopyBatch * lanes) {
    Unit batch[kCopyBatch];
#if defined(__CUDACC__) || defined(__HIPCC__)
#pragma unroll
#endif
    for (int64_t k = 0; k < kCopyBatch; ++k) batch[k] = from[i + k * lanes];
#if defined(__CUDACC__) || defined(__HIPCC__)
#pragma unroll
#endif
    for (int64_t k = 0; k < kCopyBatch; ++k) to[i + k * lanes] = batch[k];
  }
  for (; i < n; i += lanes) to[i] = from[i];
}

// dst[0:nbytes] = src[0:nbytes], or zeros when src is nullptr.
KVTP_HD void copy_row_bytes(char* dst, const char* src, int64_t nbytes, int64_t lane, int64_t lanes) {
  const uint64_t bits = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                        static_cast<uint64_t>(nbytes);
  if ((bits & 15) == 0) {
    copy_units<Bytes16>(dst, src, nbytes, lane, lanes);
  } else if ((bits & 7) == 0) {
    copy_units<uint64_t>(dst, src, nbytes, lane, lanes);
  } else if ((bits & 3) == 0) {
    copy_units<uint32_t>(dst, src, nbytes, lane, lanes);
  } else if ((bits & 1) == 0) {
    copy_units<uint16_t>(dst, src, nbytes, lane, lanes);
  } else {
    copy_units<uint8_t>(dst, src, nbytes, lane, lanes);
  }
}

// Row base address of a source code (nullptr for padding).
KVTP_HD const char* source_row(const PackPlanView& p, const PackRowsIO& io, int64_t source) {
  if (source < 0) return nullptr;
  const int64_t text_rows = p.batch * p.text_len;
  if (source < text_rows) {
    const int64_t b = source / p.text_len, l = source - b * p.text_len;
    return io.text + b * io.text_stride_b + l * io.text_stride_l;
  }
  if (source < text_rows + p.video_rows) return io.video + (source - text_rows) * io.video_stride;
  return io.newline;
}

// The per-row body: output row r, its source code and its position id. All `lanes`
// threads compute the same source (uniform control flow, broadcast loads) and
// share the copy; lane 0 writes the indices.
KVTP_HD void pack_row(const PackPlanView& p, const PackRowsIO& io, int64_t r, int64_t lane, int64_t lanes) {
  int64_t b = 0, local = 0;
  const bool used = locate_row(p, r, &b, &local);
  const int64_t source = used ? sample_row_source(p, b, local) : -1;
  copy_row_bytes(io.out + r * io.row_bytes, source_row(p, io, source), io.row_bytes, lane, lanes);
  if (lane == 0) {
    io.source_index[r] = source;
    io.position_ids[r] = used ? local : 0;
  }
}

}  // namespace kvtp
