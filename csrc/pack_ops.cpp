// kvtp::pack_plan and kvtp::pack_rows (schemas in ops.cpp): the plan (ATen, any device) and the
// argument checks shared by the CPU and CUDA kernels of pack_rows (METHOD.md section 4).
//
// pack_plan turns masks and the PrunedTokens offsets into the small tables of
// include/kvtp/pack.h: per-sample counts, the text rank prefix, the grid newline
// prefix, cu_seqlens, and a 4-number summary that the Python wrapper reads in its
// one device-to-host sync (output size and the first invalid sample). It is written
// in ATen ops, so CPU and CUDA run the very same code and every output size is
// static. pack_rows (pack_cpu.cpp, pack_cuda.cu) then writes the output rows.
// Fakes and autograd are registered in kvtp_kernels/pack.py.
#include "pack_ops.h"

#include <torch/library.h>

#include <limits>
#include <string>

namespace kvtp {
namespace {

int32_t parse_layout(c10::string_view layout) {
  if (layout == "none") return kLayoutNone;
  if (layout == "video") return kLayoutVideo;
  if (layout == "frame") return kLayoutFrame;
  TORCH_CHECK(layout == "grid", "kvtp: `layout` must be one of grid, frame, video, none; got ", std::string(layout));
  return kLayoutGrid;
}

at::Tensor as_bool(const at::Tensor& mask) { return mask.scalar_type() == at::kBool ? mask : mask.ne(0); }

void check_offsets(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(t.dim() == 1 && t.scalar_type() == dtype && t.device() == device,
              "kvtp: `", name, "` must be a 1-D ", dtype, " tensor on ", device, "; got ", t.scalar_type(), " ",
              t.sizes(), " on ", t.device());
}

// Error codes of the summary (kvtp_kernels/pack.py turns them into ValueErrors).
constexpr int64_t kVideoWithoutSpan = 1;    // the sample has a video but no placeholder position
constexpr int64_t kSpanWithoutVideo = 2;    // placeholder positions but no video
constexpr int64_t kSpanNotContiguous = 3;   // placeholder positions in more than one run
constexpr int64_t kSpanOutsideText = 4;     // a placeholder position where text_mask is 0

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pack_plan(
    const std::optional<at::Tensor>& text_mask, const at::Tensor& video_mask,
    const std::optional<at::Tensor>& sample_video, const at::Tensor& video_cu_seqlens,
    const at::Tensor& video_indices, c10::string_view layout, int64_t num_frames, int64_t grid_width,
    int64_t tokens_per_frame) {
  const int32_t layout_code = parse_layout(layout);
  TORCH_CHECK(video_mask.dim() == 2 && video_mask.size(0) >= 1,
              "kvtp: `video_mask` must be [B, L] with B >= 1; got ", video_mask.sizes());
  const int64_t B = video_mask.size(0), L = video_mask.size(1);
  const at::Device device = video_mask.device();
  TORCH_CHECK(L <= std::numeric_limits<int32_t>::max(), "kvtp: L=", L, " exceeds int32 text ranks");
  if (text_mask.has_value()) {
    TORCH_CHECK(text_mask->sizes() == video_mask.sizes() && text_mask->device() == device,
                "kvtp: `text_mask` must be [B, L] = ", video_mask.sizes(), " on ", device, "; got ",
                text_mask->sizes(), " on ", text_mask->device());
  }
  check_offsets(video_cu_seqlens, "video_cu_seqlens", at::kInt, device);
  check_offsets(video_indices, "video_indices", at::kLong, device);
  const int64_t V = video_cu_seqlens.size(0) - 1;
  TORCH_CHECK(V >= 0, "kvtp: `video_cu_seqlens` must have V + 1 >= 1 entries");
  const int64_t Kt = video_indices.size(0);
  const auto long_opts = video_mask.options().dtype(at::kLong);

  // Text: kept = text & !video; text_rank = its inclusive prefix count per sample.
  const at::Tensor vmask = as_bool(video_mask);
  const at::Tensor tmask = text_mask.has_value() ? as_bool(*text_mask) : at::Tensor();
  const at::Tensor kept = tmask.defined() ? tmask.logical_and(vmask.logical_not()) : vmask.logical_not();
  const at::Tensor text_rank = kept.cumsum(1, at::kInt);
  const at::Tensor text_len =
      L > 0 ? text_rank.select(1, L - 1).to(at::kLong) : at::zeros({B}, long_opts);

  // Span: its first position, whether it exists, is one run, and lies in the text.
  const at::Tensor has_span = vmask.any(1);
  const at::Tensor span_first = L > 0 ? vmask.to(at::kByte).argmax(1) : at::zeros({B}, long_opts);
  // text_rank at the span's first position counts the kept text before it (that
  // position itself is not kept); without a span the video block would go last.
  const at::Tensor text_before =
      L > 0 ? at::where(has_span, text_rank.gather(1, span_first.unsqueeze(1)).squeeze(1).to(at::kLong), text_len)
            : text_len;
  at::Tensor run_starts = vmask.clone();
  if (L > 1) run_starts.slice(1, 1).logical_and_(vmask.slice(1, 0, L - 1).logical_not());
  const at::Tensor split_span = run_starts.sum(1) > 1;
  const at::Tensor outside_text =
      tmask.defined() ? vmask.logical_and(tmask.logical_not()).any(1) : at::zeros({B}, vmask.options());

  // Video of each sample (identity when sample_video is None), its rows and newlines.
  at::Tensor video;
  if (sample_video.has_value()) {
    TORCH_CHECK(sample_video->dim() == 1 && sample_video->size(0) == B && sample_video->device() == device,
                "kvtp: `sample_video` must be [B] = [", B, "] on ", device, "; got ", sample_video->sizes(), " on ",
                sample_video->device());
    video = sample_video->to(at::kLong);
  } else {
    TORCH_CHECK(V == B, "kvtp: without `sample_video`, video b belongs to sample b: needs V == B; got V=", V,
                ", B=", B);
    video = at::arange(B, long_opts);
  }
  const at::Tensor has_video = video.ge(0);
  at::Tensor first_row = at::zeros({B}, long_opts), end_row = at::zeros({B}, long_opts);
  const at::Tensor cu64 = video_cu_seqlens.to(at::kLong);
  if (V > 0) {
    // Clamped into [0, Kt] so that inconsistent offsets never index out of bounds here;
    // pack_multimodal reports them (ValueError) and pack_rows re-checks on the CPU.
    const at::Tensor v = video.clamp(0, V - 1);
    first_row = at::where(has_video, cu64.index_select(0, v), 0).clamp(0, Kt);
    end_row = at::where(has_video, cu64.index_select(0, v + 1), 0).clamp(0, Kt);
    end_row = at::maximum(end_row, first_row);
  }
  const at::Tensor rows = end_row - first_row;

  at::Tensor newline_cu = at::empty({0}, long_opts);
  at::Tensor newlines;
  switch (layout_code) {
    case kLayoutGrid: {
      TORCH_CHECK(grid_width >= 1 && tokens_per_frame >= 1, "kvtp: the grid layout needs grid_width >= 1 and ",
                  "tokens_per_frame >= 1; got ", grid_width, " and ", tokens_per_frame);
      // A grid row is (frame, n / grid_width); rows of one video are sorted by
      // flat index, so row i ends its grid row when row i + 1 has another key
      // (another frame, another grid row, or another video).
      const int64_t rows_per_frame = (tokens_per_frame + grid_width - 1) / grid_width;
      const at::Tensor key = at::floor_divide(video_indices, tokens_per_frame) * rows_per_frame +
                             at::floor_divide(at::remainder(video_indices, tokens_per_frame), grid_width);
      at::Tensor ends = at::ones({Kt}, long_opts);
      if (Kt > 1) ends.slice(0, 0, Kt - 1).copy_(key.slice(0, 0, Kt - 1).ne(key.slice(0, 1)));
      newline_cu = at::cat({at::zeros({1}, long_opts), ends.cumsum(0)});
      newlines = newline_cu.index_select(0, end_row) - newline_cu.index_select(0, first_row);
      break;
    }
    case kLayoutFrame:
      newlines = at::full({B}, num_frames, long_opts);
      break;
    case kLayoutVideo:
      newlines = at::ones({B}, long_opts);
      break;
    default:
      newlines = at::zeros({B}, long_opts);
  }
  const at::Tensor video_len = at::where(has_video, rows + newlines, 0);
  const at::Tensor seq_len = text_len + video_len;
  const at::Tensor sample_info =
      at::stack({text_before, at::where(has_video, video, -1), first_row, rows, video_len, seq_len}, 1);
  TORCH_INTERNAL_ASSERT(sample_info.size(1) == kPackFields);
  const at::Tensor cu_seqlens = at::cat({at::zeros({1}, long_opts), seq_len.cumsum(0)}).to(at::kInt);

  // Per-sample error code; the later `where` wins, so the list ends with the most basic.
  at::Tensor code = at::zeros({B}, long_opts);
  code = at::where(outside_text, kSpanOutsideText, code);
  code = at::where(split_span, kSpanNotContiguous, code);
  code = at::where(has_span.logical_and(has_video.logical_not()), kSpanWithoutVideo, code);
  code = at::where(has_video.logical_and(has_span.logical_not()), kVideoWithoutSpan, code);
  const at::Tensor bad = code.ne(0);
  const at::Tensor first_bad = bad.to(at::kByte).argmax();  // 0 when none is bad
  const at::Tensor summary = at::stack({seq_len.sum(), seq_len.max(), at::where(bad.any(), first_bad, -1),
                                        code.index_select(0, first_bad.reshape({1})).squeeze(0)});
  return {cu_seqlens, sample_info, text_rank, newline_cu, summary};
}

}  // namespace

PackRowsCall prepare_pack_rows(const at::Tensor& text_embeds, const at::Tensor& video_tokens,
                               const std::optional<at::Tensor>& newline, const at::Tensor& cu_seqlens,
                               const at::Tensor& sample_info, const at::Tensor& text_rank,
                               const at::Tensor& frame_cu_seqlens, const at::Tensor& newline_cu,
                               c10::string_view layout, int64_t num_frames, int64_t length, bool padded,
                               bool left_padding) {
  const int32_t layout_code = parse_layout(layout);
  TORCH_CHECK(text_embeds.dim() == 3, "kvtp: `text_embeds` must be [B, L, D]; got ", text_embeds.sizes());
  const int64_t B = text_embeds.size(0), L = text_embeds.size(1), D = text_embeds.size(2);
  const at::Device device = text_embeds.device();
  const auto dtype = text_embeds.scalar_type();
  // Rows are copied as raw bytes, so D must be the unit-stride dimension.
  TORCH_CHECK(D <= 1 || text_embeds.stride(2) == 1, "kvtp: `text_embeds` needs unit stride along D; got strides ",
              text_embeds.strides());
  TORCH_CHECK(video_tokens.dim() == 2 && video_tokens.size(1) == D && video_tokens.scalar_type() == dtype &&
                  video_tokens.device() == device && (D <= 1 || video_tokens.stride(1) == 1),
              "kvtp: `video_tokens` must be [Kt, D=", D, "] ", dtype, " on ", device,
              " with unit stride along D; got ", video_tokens.scalar_type(), " ", video_tokens.sizes(), " strides ",
              video_tokens.strides(), " on ", video_tokens.device());
  if (newline.has_value()) {
    TORCH_CHECK(newline->dim() == 1 && newline->size(0) == D && newline->scalar_type() == dtype &&
                    newline->device() == device && newline->is_contiguous(),
                "kvtp: `newline` must be a contiguous [D=", D, "] ", dtype, " tensor on ", device, "; got ",
                newline->scalar_type(), " ", newline->sizes(), " on ", newline->device());
  }
  TORCH_CHECK(layout_code == kLayoutNone || newline.has_value(), "kvtp: layout ", std::string(layout),
              " needs `newline`");
  TORCH_CHECK(sample_info.dim() == 2 && sample_info.size(0) == B && sample_info.size(1) == kPackFields &&
                  sample_info.scalar_type() == at::kLong && sample_info.is_contiguous() &&
                  sample_info.device() == device,
              "kvtp: `sample_info` must be a contiguous int64 [B, ", kPackFields, "] from pack_plan; got ",
              sample_info.scalar_type(), " ", sample_info.sizes());
  TORCH_CHECK(text_rank.dim() == 2 && text_rank.size(0) == B && text_rank.size(1) == L &&
                  text_rank.scalar_type() == at::kInt && text_rank.is_contiguous() && text_rank.device() == device,
              "kvtp: `text_rank` must be a contiguous int32 [B, L] from pack_plan; got ", text_rank.scalar_type(), " ",
              text_rank.sizes());
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) == B + 1 && cu_seqlens.scalar_type() == at::kInt &&
                  cu_seqlens.is_contiguous() && cu_seqlens.device() == device,
              "kvtp: `cu_seqlens` must be a contiguous int32 [B + 1]; got ", cu_seqlens.scalar_type(), " ",
              cu_seqlens.sizes());
  TORCH_CHECK(frame_cu_seqlens.dim() == 1 && frame_cu_seqlens.size(0) >= 1 &&
                  frame_cu_seqlens.scalar_type() == at::kInt && frame_cu_seqlens.is_contiguous() &&
                  frame_cu_seqlens.device() == device,
              "kvtp: `frame_cu_seqlens` must be a contiguous int32 [V*T + 1]; got ", frame_cu_seqlens.scalar_type(),
              " ", frame_cu_seqlens.sizes());
  TORCH_CHECK(layout_code != kLayoutGrid ||
                  (newline_cu.dim() == 1 && newline_cu.size(0) == video_tokens.size(0) + 1 &&
                   newline_cu.scalar_type() == at::kLong && newline_cu.is_contiguous() &&
                   newline_cu.device() == device),
              "kvtp: the grid layout needs `newline_cu` int64 [Kt + 1] from pack_plan; got ", newline_cu.sizes());
  TORCH_CHECK(num_frames >= 0 && length >= 0, "kvtp: `num_frames` and `length` must be >= 0; got ", num_frames,
              " and ", length);

  PackRowsCall call{};
  const auto index_opts = text_embeds.options().dtype(at::kLong);
  const auto opts = text_embeds.options();
  call.embeds = padded ? at::empty({B, length, D}, opts) : at::empty({length, D}, opts);
  call.source_index = padded ? at::empty({B, length}, index_opts) : at::empty({length}, index_opts);
  call.position_ids = at::empty_like(call.source_index);
  call.rows = padded ? B * length : length;

  PackPlanView& plan = call.plan;
  plan.sample_info = sample_info.data_ptr<int64_t>();
  plan.text_rank = text_rank.data_ptr<int32_t>();
  plan.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
  plan.frame_cu = frame_cu_seqlens.data_ptr<int32_t>();
  plan.newline_cu = layout_code == kLayoutGrid ? newline_cu.data_ptr<int64_t>() : nullptr;
  plan.batch = B;
  plan.text_len = L;
  plan.num_frames = num_frames;
  plan.video_rows = video_tokens.size(0);
  plan.length = length;
  plan.layout = layout_code;
  plan.padded = padded;
  plan.left_padding = left_padding;

  PackRowsIO& io = call.io;
  const int64_t elem = text_embeds.element_size();
  io.text = static_cast<const char*>(text_embeds.const_data_ptr());
  io.text_stride_b = text_embeds.stride(0) * elem;
  io.text_stride_l = text_embeds.stride(1) * elem;
  io.video = static_cast<const char*>(video_tokens.const_data_ptr());
  io.video_stride = video_tokens.stride(0) * elem;
  io.newline = newline.has_value() ? static_cast<const char*>(newline->const_data_ptr()) : nullptr;
  io.out = static_cast<char*>(call.embeds.data_ptr());
  io.row_bytes = D * elem;
  io.source_index = call.source_index.data_ptr<int64_t>();
  io.position_ids = call.position_ids.data_ptr<int64_t>();
  return call;
}

}  // namespace kvtp

// The plan is device-generic ATen code: the same function serves both backends.
TORCH_LIBRARY_IMPL(kvtp, CPU, m) { m.impl("pack_plan", &kvtp::pack_plan); }
#ifdef KVTP_WITH_CUDA
TORCH_LIBRARY_IMPL(kvtp, CUDA, m) { m.impl("pack_plan", &kvtp::pack_plan); }
#endif
