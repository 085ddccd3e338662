// CPU kernel of kvtp::pack_rows (schema in ops.cpp): at::parallel_for over the
// output rows, each row produced by kvtp::pack_row (include/kvtp/pack.h), the same
// body the CUDA kernel runs with a warp per row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "pack_ops.h"

namespace kvtp {
namespace {

// The values of the plan (sample_info, cu_seqlens, text_rank, frame_cu_seqlens,
// newline_cu) that pack_row follows as offsets: pack_plan makes them consistent, but
// pack_rows is a public op, so on the CPU (where reading them costs no sync) every
// value an index is formed from is checked before a row is written.
void check_plan_values(const PackPlanView& p, int64_t frame_cu_len) {
  const int64_t B = p.batch, L = p.text_len, Kt = p.video_rows, T = p.num_frames;
  TORCH_CHECK_VALUE(p.cu_seqlens[0] == 0, "kvtp: `cu_seqlens` must start at 0; got ", p.cu_seqlens[0]);
  TORCH_CHECK_VALUE(p.frame_cu[0] >= 0, "kvtp: `frame_cu_seqlens` must start at >= 0; got ", p.frame_cu[0]);
  for (int64_t i = 1; i < frame_cu_len; ++i) {
    TORCH_CHECK_VALUE(p.frame_cu[i] >= p.frame_cu[i - 1] && p.frame_cu[i] <= Kt,
                      "kvtp: `frame_cu_seqlens` must be non-decreasing offsets in [0, Kt=", Kt, "]; entry ", i, " is ",
                      p.frame_cu[i], " after ", p.frame_cu[i - 1]);
  }
  if (p.layout == kLayoutGrid) {
    TORCH_CHECK_VALUE(p.newline_cu[0] == 0, "kvtp: `newline_cu` must start at 0; got ", p.newline_cu[0]);
    for (int64_t i = 1; i <= Kt; ++i) {
      const int64_t step = p.newline_cu[i] - p.newline_cu[i - 1];
      TORCH_CHECK_VALUE(step == 0 || step == 1, "kvtp: `newline_cu` must grow by 0 or 1 per video row; entry ", i,
                        " is ", p.newline_cu[i], " after ", p.newline_cu[i - 1]);
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t* info = p.sample_info + b * kPackFields;
    const int64_t before = info[kFieldTextBefore], video = info[kFieldVideo], first = info[kFieldVideoRow];
    const int64_t rows = info[kFieldVideoRows], video_len = info[kFieldVideoLen], seq_len = info[kFieldSeqLen];
    const int32_t* rank = p.text_rank + b * L;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t step = rank[l] - (l > 0 ? rank[l - 1] : 0);
      TORCH_CHECK_VALUE(step == 0 || step == 1, "kvtp: `text_rank` of sample ", b,
                        " must count kept positions (steps of 0 or 1); position ", l, " has ", rank[l]);
    }
    const int64_t text_len = L > 0 ? rank[L - 1] : 0;
    TORCH_CHECK_VALUE(video >= -1 && first >= 0 && rows >= 0 && first + rows <= Kt,
                      "kvtp: `sample_info` row ", b, " names video ", video, " rows [", first, ", ", first + rows,
                      ") outside the ", Kt, " video rows");
    int64_t want_len = 0;
    if (video >= 0) {
      switch (p.layout) {
        case kLayoutGrid:
          want_len = rows + (p.newline_cu[first + rows] - p.newline_cu[first]);
          break;
        case kLayoutFrame:
          TORCH_CHECK_VALUE(T >= 1 && (video + 1) * T < frame_cu_len && p.frame_cu[video * T] == first &&
                                p.frame_cu[(video + 1) * T] == first + rows,
                            "kvtp: `sample_info` row ", b, " (video ", video, ", rows [", first, ", ", first + rows,
                            ")) disagrees with `frame_cu_seqlens` (", frame_cu_len, " entries, T=", T, ")");
          want_len = rows + T;
          break;
        case kLayoutVideo:
          want_len = rows + 1;
          break;
        default:
          want_len = rows;
      }
    } else {
      TORCH_CHECK_VALUE(rows == 0, "kvtp: `sample_info` row ", b, " has no video but ", rows, " video rows");
    }
    TORCH_CHECK_VALUE(video_len == want_len && before >= 0 && before <= text_len &&
                          seq_len == text_len + video_len,
                      "kvtp: `sample_info` row ", b, " is inconsistent: text before ", before, ", video block ",
                      video_len, " (the layout needs ", want_len, "), length ", seq_len, " with ", text_len,
                      " kept text positions");
    TORCH_CHECK_VALUE(p.cu_seqlens[b + 1] - p.cu_seqlens[b] == seq_len, "kvtp: `cu_seqlens` step ", b, " is ",
                      p.cu_seqlens[b + 1] - p.cu_seqlens[b], " but `sample_info` says ", seq_len);
    if (p.padded) {
      TORCH_CHECK_VALUE(seq_len <= p.length, "kvtp: `length` ", p.length, " is shorter than sample ", b, " (",
                        seq_len, " rows)");
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pack_rows_cpu(
    const at::Tensor& text_embeds, const at::Tensor& video_tokens, const std::optional<at::Tensor>& newline,
    const at::Tensor& cu_seqlens, const at::Tensor& sample_info, const at::Tensor& text_rank,
    const at::Tensor& frame_cu_seqlens, const at::Tensor& newline_cu, c10::string_view layout, int64_t num_frames,
    int64_t length, bool padded, bool left_padding) {
  const PackRowsCall call = prepare_pack_rows(text_embeds, video_tokens, newline, cu_seqlens, sample_info, text_rank,
                                              frame_cu_seqlens, newline_cu, layout, num_frames, length, padded,
                                              left_padding);
  check_plan_values(call.plan, frame_cu_seqlens.size(0));
  // Enough rows per task that a task moves at least ~64 KiB.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(call.io.row_bytes, 1));
  at::parallel_for(0, call.rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) pack_row(call.plan, call.io, r, /*lane=*/0, /*lanes=*/1);
  });
  return {call.embeds, call.source_index, call.position_ids};
}

}  // namespace

TORCH_LIBRARY_IMPL(kvtp, CPU, m) { m.impl("pack_rows", &pack_rows_cpu); }

}  // namespace kvtp
