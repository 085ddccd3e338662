// CPU kernel of kvtp::pack_rows (schema in pack_ops.cpp): at::parallel_for over the
// output rows, each row produced by kvtp::pack_row (include/kvtp/pack.h), the same
// body the CUDA kernel runs with a warp per row.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "pack_ops.h"

namespace kvtp {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> pack_rows_cpu(
    const at::Tensor& text_embeds, const at::Tensor& video_tokens, const std::optional<at::Tensor>& newline,
    const at::Tensor& cu_seqlens, const at::Tensor& sample_info, const at::Tensor& text_rank,
    const at::Tensor& frame_cu_seqlens, const at::Tensor& newline_cu, c10::string_view layout, int64_t num_frames,
    int64_t length, bool padded, bool left_padding) {
  const PackRowsCall call = prepare_pack_rows(text_embeds, video_tokens, newline, cu_seqlens, sample_info, text_rank,
                                              frame_cu_seqlens, newline_cu, layout, num_frames, length, padded,
                                              left_padding);
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
