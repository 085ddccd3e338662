// CPU kernels of kvtp::keep_counts and kvtp::prune_tokens (schemas in ops.cpp).
//
// Parallel over videos (counts), frames (selection) and kept rows (gather) with
// at::parallel_for; the per-video and per-frame math is the torch-free code in
// include/kvtp/*.h. Results equal kvtp_kernels/reference/ bit for bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>
#include <vector>

#include "kvtp/allocation.h"
#include "kvtp/selection.h"

namespace kvtp {
namespace {

using OptTensor = std::optional<at::Tensor>;

// The token dtypes the kernels are instantiated for; anything else (float8, ints) is
// refused here, naming the argument, rather than by the dispatch macro.
void check_token_dtype(const at::Tensor& t, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK_VALUE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, "kvtp: `", name,
                    "` must be float32, float16, bfloat16 or float64; got ", st);
  TORCH_CHECK_VALUE(t.device().is_cpu(), "kvtp: `", name, "` must be on the CPU for this kernel; got ", t.device());
}

double scalar_or_zero(const OptTensor& t, const char* name) {
  if (!t.has_value()) return 0.0;
  TORCH_CHECK_VALUE(t->numel() == 1 && t->is_floating_point() && t->device().is_cpu(), "kvtp: `", name,
                    "` must be a floating-point CPU tensor of one element; got ", t->scalar_type(), " ", t->sizes(),
                    " on ", t->device());
  return t->item<double>();
}

// Frame logits [B, T] as contiguous float64: `scores`, or the similarity of
// METHOD.md section 1 from frame_embeds [B, T, E] and query_embeds [B, C, E].
// B and T, when >= 0, are what the caller's tokens need.
at::Tensor frame_logits(const OptTensor& scores, const OptTensor& frame_embeds, const OptTensor& query_embeds,
                        const OptTensor& logit_scale, const OptTensor& logit_bias, int64_t want_B = -1,
                        int64_t want_T = -1) {
  auto matches = [&](const at::Tensor& t) {
    return (want_B < 0 || t.size(0) == want_B) && (want_T < 0 || t.size(1) == want_T);
  };
  if (scores.has_value()) {
    TORCH_CHECK_VALUE(scores->dim() == 2 && matches(*scores) && scores->is_floating_point() &&
                          scores->device().is_cpu(),
                      "kvtp: `scores` must be a floating-point CPU tensor [B, T] (B = ", want_B, ", T = ", want_T,
                      " from `tokens`; -1: any); got ", scores->scalar_type(), " ", scores->sizes(), " on ",
                      scores->device());
    return scores->to(at::kDouble).contiguous();
  }
  TORCH_CHECK_VALUE(frame_embeds.has_value() && query_embeds.has_value(),
                    "kvtp: give `scores` or both `frame_embeds` and `query_embeds`");
  TORCH_CHECK_VALUE(frame_embeds->dim() == 3 && matches(*frame_embeds) && frame_embeds->is_floating_point() &&
                        frame_embeds->device().is_cpu(),
                    "kvtp: `frame_embeds` must be a floating-point CPU tensor [B, T, E] (B = ", want_B, ", T = ",
                    want_T, "; -1: any); got ", frame_embeds->scalar_type(), " ", frame_embeds->sizes());
  TORCH_CHECK_VALUE(query_embeds->dim() == 3 && query_embeds->is_floating_point() && query_embeds->device().is_cpu(),
                    "kvtp: `query_embeds` must be a floating-point CPU tensor [B, C, E]; got ",
                    query_embeds->scalar_type(), " ", query_embeds->sizes());
  const at::Tensor f = frame_embeds->to(at::kDouble).contiguous();
  const at::Tensor q = query_embeds->to(at::kDouble).contiguous();
  TORCH_CHECK_VALUE(f.size(0) == q.size(0) && f.size(2) == q.size(2) && q.size(1) >= 1,
                    "kvtp: `frame_embeds` [B, T, E] and `query_embeds` [B, C >= 1, E] disagree: ", f.sizes(), " vs ",
                    q.sizes());
  const int64_t B = f.size(0), T = f.size(1), E = f.size(2), C = q.size(1);
  const double ls = scalar_or_zero(logit_scale, "logit_scale"), lb = scalar_or_zero(logit_bias, "logit_bias");
  at::Tensor out = at::empty({B, T}, f.options());
  const double* fp = f.data_ptr<double>();
  const double* qp = q.data_ptr<double>();
  double* op = out.data_ptr<double>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> q_norm(C);
    for (int64_t b = b0; b < b1; ++b) {
      frame_similarity<double>(fp + b * T * E, T, E, 1, qp + b * C * E, C, E, 1, E, ls, lb, q_norm.data(),
                               op + b * T);
    }
  });
  return out;
}

// int32 [B, T] keep counts from float64 logits [B, T] (exact or paper allocation).
at::Tensor counts_from_logits(const at::Tensor& logits, int64_t num_tokens, int64_t budget, double ratio,
                              double temperature, int64_t min_tokens, bool paper) {
  const int64_t B = logits.size(0), T = logits.size(1);
  // Counts are int32 and every count, share and budget an exact float64 integer.
  TORCH_CHECK_VALUE(num_tokens >= 1 && num_tokens <= INT32_MAX, "kvtp: `num_tokens` must lie in [1, 2**31 - 1] ",
                    "(int32 counts); got ", num_tokens);
  TORCH_CHECK_VALUE(T <= (int64_t(1) << 53) / num_tokens, "kvtp: T*N must be <= 2**53 (exact float64 counts); got T=",
                    T, ", N=", num_tokens);
  TORCH_CHECK_VALUE(min_tokens >= 0 && min_tokens <= num_tokens, "kvtp: `min_tokens` must lie in [0, N=", num_tokens,
                    "]; got ", min_tokens);
  TORCH_CHECK_VALUE(temperature > 0 && std::isfinite(temperature), "kvtp: `temperature` must be > 0 and finite; got ",
                    temperature);
  TORCH_CHECK_VALUE(!paper || (ratio > 0 && ratio <= 1), "kvtp: `ratio` must lie in (0, 1] (paper allocation); got ",
                    ratio);
  TORCH_CHECK_VALUE(paper || (min_tokens * T <= budget && budget <= num_tokens * T), "kvtp: `budget` K must lie in [m*T, N*T] = [",
                    min_tokens * T, ", ", num_tokens * T, "]; got ", budget);
  at::Tensor counts = at::empty({B, T}, logits.options().dtype(at::kInt));
  const double* s = logits.data_ptr<double>();
  int32_t* k = counts.data_ptr<int32_t>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> probs(T), scratch(T);
    for (int64_t b = b0; b < b1; ++b) {
      frame_probs(s + b * T, T, temperature, probs.data());
      if (paper) {
        paper_counts(probs.data(), T, ratio, num_tokens, min_tokens, k + b * T);
      } else {
        exact_counts(probs.data(), T, budget, num_tokens, min_tokens, scratch.data(), k + b * T);
      }
    }
  });
  return counts;
}

at::Tensor keep_counts_cpu(const OptTensor& scores, const OptTensor& frame_embeds, const OptTensor& query_embeds,
                           const OptTensor& logit_scale, const OptTensor& logit_bias, int64_t num_tokens,
                           int64_t budget, double ratio, double temperature, int64_t min_tokens, bool paper) {
  return counts_from_logits(frame_logits(scores, frame_embeds, query_embeds, logit_scale, logit_bias), num_tokens,
                            budget, ratio, temperature, min_tokens, paper);
}

// Keeps counts[f] tokens of frame f (top by score, ties to the lower index, NaN
// last): writes their flat indices f*N + i, in raster order, to rows frame_cu[f].. of
// `indices`. Parallel over frames (the selection is per frame).
template <typename scalar_t>
void select_rows(const at::Tensor& tokens, const double* token_scores, const int32_t* counts, const int32_t* frame_cu,
                 at::Tensor& indices) {
  const int64_t B = tokens.size(0), T = tokens.size(1), N = tokens.size(2), D = tokens.size(3);
  const int64_t sb = tokens.stride(0), st = tokens.stride(1), sn = tokens.stride(2), sd = tokens.stride(3);
  const scalar_t* src = tokens.data_ptr<scalar_t>();
  int64_t* idx = indices.data_ptr<int64_t>();
  at::parallel_for(0, B * T, 1, [&](int64_t f0, int64_t f1) {
    std::vector<double> score(N), mu, sq_norm;
    std::vector<int64_t> order(N);
    std::vector<uint8_t> keep(N);
    for (int64_t f = f0; f < f1; ++f) {
      const int64_t k = counts[f];
      if (k == 0) continue;
      if (k < N) {
        const double* s = token_scores;
        if (s != nullptr) {
          s += f * N;
        } else {
          mu.resize(D);
          sq_norm.resize(N);
          frame_distinctiveness(src + (f / T) * sb + (f % T) * st, N, D, sn, sd, mu.data(), sq_norm.data(),
                                score.data());
          s = score.data();
        }
        // token_beats is a strict total order, so the top-k set is unique.
        std::iota(order.begin(), order.end(), int64_t(0));
        std::nth_element(order.begin(), order.begin() + (k - 1), order.end(),
                         [s](int64_t a, int64_t c) { return token_beats(s[a], a, s[c], c); });
        std::fill(keep.begin(), keep.end(), uint8_t(0));
        for (int64_t r = 0; r < k; ++r) keep[order[r]] = 1;
      } else {
        std::fill(keep.begin(), keep.end(), uint8_t(1));
      }
      int64_t row = frame_cu[f];
      for (int64_t i = 0; i < N; ++i) {
        if (keep[i]) idx[row++] = f * N + i;
      }
    }
  });
}

// out[r, :] = tokens[indices[r], :] (indices flat over B*T*N). Parallel over the output
// rows, so a keyframe that keeps most of its tokens is shared among the threads.
template <typename scalar_t>
void gather_rows(const at::Tensor& tokens, const at::Tensor& indices, at::Tensor& out) {
  const int64_t T = tokens.size(1), N = tokens.size(2), D = tokens.size(3);
  const int64_t sb = tokens.stride(0), st = tokens.stride(1), sn = tokens.stride(2), sd = tokens.stride(3);
  const scalar_t* src = tokens.data_ptr<scalar_t>();
  const int64_t* idx = indices.data_ptr<int64_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  const int64_t row_bytes = std::max<int64_t>(D * int64_t(sizeof(scalar_t)), 1);
  const int64_t grain = std::max<int64_t>(1, (int64_t(64) << 10) / row_bytes);  // ~64 KB per task
  at::parallel_for(0, out.size(0), grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t flat = idx[r], frame = flat / N, b = frame / T;
      const scalar_t* from = src + b * sb + (frame - b * T) * st + (flat - frame * N) * sn;
      scalar_t* to = dst + r * D;
      if (sd == 1) {
        std::memcpy(to, from, D * sizeof(scalar_t));
      } else {
        for (int64_t d = 0; d < D; ++d) to[d] = from[d * sd];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prune_tokens_cpu(
    const at::Tensor& tokens, const OptTensor& scores, const OptTensor& frame_embeds, const OptTensor& query_embeds,
    const OptTensor& logit_scale, const OptTensor& logit_bias, const OptTensor& token_scores,
    const OptTensor& frame_counts, int64_t budget, int64_t total_rows, double temperature, int64_t min_tokens) {
  TORCH_CHECK_VALUE(tokens.dim() == 4, "kvtp: `tokens` must be [B, T, N, D]; got shape ", tokens.sizes());
  check_token_dtype(tokens, "tokens");
  const int64_t B = tokens.size(0), T = tokens.size(1), N = tokens.size(2), D = tokens.size(3);
  TORCH_CHECK_VALUE(total_rows >= 0 && total_rows <= INT32_MAX, "kvtp: `total_rows` must lie in [0, 2**31 - 1] ",
                    "(int32 offsets); got ", total_rows);

  at::Tensor counts;
  if (frame_counts.has_value()) {
    TORCH_CHECK_VALUE(frame_counts->dim() == 2 && frame_counts->size(0) == B && frame_counts->size(1) == T &&
                          !frame_counts->is_floating_point() && !frame_counts->is_complex() &&
                          frame_counts->scalar_type() != at::kBool && frame_counts->device().is_cpu(),
                      "kvtp: `frame_counts` must be an integer CPU tensor [B, T] = [", B, ", ", T, "]; got ",
                      frame_counts->scalar_type(), " ", frame_counts->sizes(), " on ", frame_counts->device());
    // Range-checked in int64 before the int32 copy (no wrap).
    const at::Tensor wide = frame_counts->to(at::kLong);
    if (wide.numel() > 0) {
      const int64_t lo = wide.min().item<int64_t>(), hi = wide.max().item<int64_t>();
      TORCH_CHECK_VALUE(lo >= 0 && hi <= N, "kvtp: `frame_counts` must lie in [0, N=", N, "]; got min ", lo,
                        ", max ", hi);
    }
    counts = wide.to(at::kInt).contiguous();
  } else {
    counts = counts_from_logits(frame_logits(scores, frame_embeds, query_embeds, logit_scale, logit_bias, B, T), N,
                                budget, 0.0, temperature, min_tokens, /*paper=*/false);
  }
  const int32_t* k = counts.data_ptr<int32_t>();

  // Offsets: frame_cu [B*T+1] and cu [B+1], int32 (flash-attn varlen convention).
  at::Tensor frame_cu = at::empty({B * T + 1}, counts.options());
  at::Tensor cu = at::empty({B + 1}, counts.options());
  int32_t* fcu = frame_cu.data_ptr<int32_t>();
  int32_t* vcu = cu.data_ptr<int32_t>();
  int64_t total = 0;
  fcu[0] = vcu[0] = 0;
  for (int64_t f = 0; f < B * T; ++f) {
    TORCH_CHECK_VALUE(k[f] >= 0 && k[f] <= N, "kvtp: frame_counts must lie in [0, N=", N, "]; got ", k[f]);
    total += k[f];
    TORCH_CHECK_VALUE(total <= INT32_MAX, "kvtp: total kept rows exceed int32 offsets");
    fcu[f + 1] = static_cast<int32_t>(total);
    if ((f + 1) % T == 0) vcu[(f + 1) / T] = static_cast<int32_t>(total);
  }
  TORCH_CHECK_VALUE(total == total_rows, "kvtp: `total_rows`=", total_rows, " but the frame counts sum to ", total);

  at::Tensor scores64;
  if (token_scores.has_value()) {
    TORCH_CHECK_VALUE(token_scores->dim() == 3 && token_scores->size(0) == B && token_scores->size(1) == T &&
                          token_scores->size(2) == N && token_scores->is_floating_point() &&
                          token_scores->device().is_cpu(),
                      "kvtp: `token_scores` must be a floating-point CPU tensor [B, T, N] = [", B, ", ", T, ", ", N,
                      "]; got ", token_scores->scalar_type(), " ", token_scores->sizes());
    scores64 = token_scores->to(at::kDouble).contiguous();
  }
  at::Tensor out = at::empty({total_rows, D}, tokens.options());
  at::Tensor indices = at::empty({total_rows}, tokens.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "kvtp_prune_tokens_cpu", [&] {
    select_rows<scalar_t>(tokens, scores64.defined() ? scores64.data_ptr<double>() : nullptr, k, fcu, indices);
    gather_rows<scalar_t>(tokens, indices, out);
  });
  return {out, indices, counts, cu, frame_cu};
}

}  // namespace

TORCH_LIBRARY_IMPL(kvtp, CPU, m) {
  m.impl("keep_counts", &keep_counts_cpu);
  m.impl("prune_tokens", &prune_tokens_cpu);
}

}  // namespace kvtp
