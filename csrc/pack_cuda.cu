// CUDA kernel of kvtp::pack_rows (schema in ops.cpp): a warp per output row,
// running kvtp::pack_row (include/kvtp/pack.h), the same body as the CPU kernel.
// All 32 lanes compute the row's source (uniform branches, broadcast loads of the
// small index tables), then copy it together in 16-byte units when the rows are
// 16-byte aligned. One launch on the current stream; no host sync.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "pack_ops.h"

namespace kvtp {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 4;

__global__ void __launch_bounds__(kWarpSize * kWarpsPerBlock)
    pack_rows_kernel(PackPlanView plan, PackRowsIO io, int64_t rows) {
  const int64_t lane = threadIdx.x % kWarpSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize; r < rows;
       r += stride) {
    pack_row(plan, io, r, lane, kWarpSize);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pack_rows_cuda(
    const at::Tensor& text_embeds, const at::Tensor& video_tokens, const std::optional<at::Tensor>& newline,
    const at::Tensor& cu_seqlens, const at::Tensor& sample_info, const at::Tensor& text_rank,
    const at::Tensor& frame_cu_seqlens, const at::Tensor& newline_cu, c10::string_view layout, int64_t num_frames,
    int64_t length, bool padded, bool left_padding) {
  const c10::cuda::CUDAGuard guard(text_embeds.device());
  const PackRowsCall call = prepare_pack_rows(text_embeds, video_tokens, newline, cu_seqlens, sample_info, text_rank,
                                              frame_cu_seqlens, newline_cu, layout, num_frames, length, padded,
                                              left_padding);
  if (call.rows > 0) {
    // The grid-stride loop covers any row count; 2^20 blocks keep every SM busy.
    const int64_t blocks = std::min<int64_t>((call.rows + kWarpsPerBlock - 1) / kWarpsPerBlock, int64_t(1) << 20);
    pack_rows_kernel<<<static_cast<unsigned int>(blocks), kWarpSize * kWarpsPerBlock, 0,
                       c10::cuda::getCurrentCUDAStream()>>>(call.plan, call.io, call.rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {call.embeds, call.source_index, call.position_ids};
}

}  // namespace

TORCH_LIBRARY_IMPL(kvtp, CUDA, m) { m.impl("pack_rows", &pack_rows_cuda); }

}  // namespace kvtp
