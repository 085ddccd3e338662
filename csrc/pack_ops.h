// Torch-side pieces shared by the CPU and CUDA kernels of kvtp::pack_rows.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "kvtp/pack.h"

namespace kvtp {

// One call of kvtp::pack_rows, ready to run: its outputs (allocated, not yet
// written), the pointer views the per-row body reads, and the number of rows.
struct PackRowsCall {
  at::Tensor embeds, source_index, position_ids;
  PackPlanView plan;
  PackRowsIO io;
  int64_t rows;
};

// Checks the arguments of kvtp::pack_rows (TORCH_CHECK; the user-facing checks with
// ValueErrors are in kvtp_kernels/pack.py) and prepares the call.
PackRowsCall prepare_pack_rows(const at::Tensor& text_embeds, const at::Tensor& video_tokens,
                               const std::optional<at::Tensor>& newline, const at::Tensor& cu_seqlens,
                               const at::Tensor& sample_info, const at::Tensor& text_rank,
                               const at::Tensor& frame_cu_seqlens, const at::Tensor& newline_cu,
                               c10::string_view layout, int64_t num_frames, int64_t length, bool padded,
                               bool left_padding);

}  // namespace kvtp
