// CPU kernel of kvtp::merge_neighbors: PruMerge's merge step (METHOD.md section 3).
//
// For each kept token i (a row of `indices`), the num_neighbors most similar other
// tokens j of its frame (cosine of merge_keys, float64, ranked with token_beats: ties
// to the lower index, NaN last) are folded into it:
//   mean == false ("paper"): y_i = x_i + sum_j a_j x_j
//   mean == true:            y_i = x_i + sum_j (a_j / W) (x_j - x_i),  W = a_i + sum_j a_j
// Sums are float for 16-bit tokens, double otherwise, rounded once to the output dtype.
// Reference: kvtp_kernels/reference/prune.py prumerge_ref.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "kvtp/selection.h"

namespace kvtp {
namespace {

// Cosine similarity of every kept token's key with every key of its frame: float64
// [R, N]. One GEMM per run of rows from the same frame (rows come frame by frame).
at::Tensor kept_cosines(const at::Tensor& merge_keys, const at::Tensor& indices, int64_t N) {
  const int64_t F = merge_keys.size(0) * merge_keys.size(1), Dk = merge_keys.size(3), R = indices.size(0);
  const at::Tensor keys = merge_keys.reshape({F, N, Dk}).to(at::kDouble);
  // cos = <k_i, k_j> / (max(|k_i|, eps) max(|k_j|, eps)): the GEMM on raw keys, then one
  // scaling of the [R, N] block (cheaper than normalising all B*T*N keys first).
  const at::Tensor inv_norm = keys.norm(2, {-1}).clamp_min(kNormEps).reciprocal();  // [F, N]
  at::Tensor cos = at::empty({R, N}, keys.options());
  const int64_t* idx = indices.data_ptr<int64_t>();
  for (int64_t r0 = 0; r0 < R;) {
    const int64_t f = idx[r0] / N;
    int64_t r1 = r0 + 1;
    while (r1 < R && idx[r1] / N == f) ++r1;
    const at::Tensor frame_keys = keys[f];
    const at::Tensor rows = indices.slice(0, r0, r1) - f * N;
    at::Tensor block = cos.slice(0, r0, r1);
    at::mm_out(block, frame_keys.index_select(0, rows), frame_keys.t());
    block.mul_(inv_norm[f].index_select(0, rows).unsqueeze(1)).mul_(inv_norm[f].unsqueeze(0));
    r0 = r1;
  }
  return cos;
}

// Sums in float for 16-bit tokens, in double for float/double tokens (rounded once).
template <typename scalar_t>
struct MergeAcc {
  using type = double;
};
template <>
struct MergeAcc<c10::Half> {
  using type = float;
};
template <>
struct MergeAcc<c10::BFloat16> {
  using type = float;
};

template <typename scalar_t>
void merge_rows(const at::Tensor& tokens, const double* weights, const int64_t* idx, const double* cos, int64_t R,
                int64_t num_neighbors, bool mean, at::Tensor& out) {
  const int64_t T = tokens.size(1), N = tokens.size(2), D = tokens.size(3);
  const int64_t sb = tokens.stride(0), st = tokens.stride(1), sn = tokens.stride(2), sd = tokens.stride(3);
  const scalar_t* src = tokens.data_ptr<scalar_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  at::parallel_for(0, R, 1, [&](int64_t r0, int64_t r1) {
    std::vector<int64_t> others(N > 0 ? N - 1 : 0);
    using acc_t = typename MergeAcc<scalar_t>::type;
    std::vector<acc_t> acc(D), xi_acc(D);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t f = idx[r] / N, i = idx[r] % N;
      const scalar_t* frame = src + (f / T) * sb + (f % T) * st;
      const double* c = cos + r * N;
      const double* a = weights + f * N;
      // The other tokens of the frame, best first; only the first num_neighbors matter.
      std::iota(others.begin(), others.begin() + i, int64_t(0));
      std::iota(others.begin() + i, others.end(), i + 1);
      if (num_neighbors > 0 && num_neighbors < N - 1) {
        std::nth_element(others.begin(), others.begin() + (num_neighbors - 1), others.end(),
                         [c](int64_t p, int64_t q) { return token_beats(c[p], p, c[q], q); });
      }
      const scalar_t* xi = frame + i * sn;
      double total = a[i];
      for (int64_t n = 0; n < num_neighbors; ++n) total += a[others[n]];
      for (int64_t d = 0; d < D; ++d) xi_acc[d] = acc[d] = static_cast<acc_t>(xi[d * sd]);
      if (!mean || total != 0.0) {
        for (int64_t n = 0; n < num_neighbors; ++n) {
          const int64_t j = others[n];
          const scalar_t* xj = frame + j * sn;
          const acc_t w = static_cast<acc_t>(mean ? a[j] / total : a[j]);
          if (mean) {
            for (int64_t d = 0; d < D; ++d) acc[d] += w * (static_cast<acc_t>(xj[d * sd]) - xi_acc[d]);
          } else {
            for (int64_t d = 0; d < D; ++d) acc[d] += w * static_cast<acc_t>(xj[d * sd]);
          }
        }
      }
      scalar_t* y = dst + r * D;
      for (int64_t d = 0; d < D; ++d) y[d] = static_cast<scalar_t>(acc[d]);
    }
  });
}

at::Tensor merge_neighbors_cpu(const at::Tensor& tokens, const at::Tensor& merge_keys, const at::Tensor& weights,
                               const at::Tensor& indices, int64_t num_neighbors, bool mean) {
  TORCH_CHECK_VALUE(tokens.dim() == 4, "kvtp: `tokens` must be [B, T, N, D]; got shape ", tokens.sizes());
  const auto st = tokens.scalar_type();
  TORCH_CHECK_VALUE(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                    "kvtp: `tokens` must be float32, float16, bfloat16 or float64; got ", st);
  const int64_t B = tokens.size(0), T = tokens.size(1), N = tokens.size(2), D = tokens.size(3);
  TORCH_CHECK_VALUE(tokens.device().is_cpu() && merge_keys.device().is_cpu() && weights.device().is_cpu() &&
                        indices.device().is_cpu(),
                    "kvtp: `tokens`, `merge_keys`, `weights` and `indices` must be CPU tensors; got ", tokens.device(),
                    ", ", merge_keys.device(), ", ", weights.device(), ", ", indices.device());
  TORCH_CHECK_VALUE(merge_keys.dim() == 4 && merge_keys.size(0) == B && merge_keys.size(1) == T &&
                        merge_keys.size(2) == N && merge_keys.is_floating_point(),
                    "kvtp: `merge_keys` must be a floating-point tensor [B, T, N, Dk] = [", B, ", ", T, ", ", N,
                    ", *]; got ", merge_keys.scalar_type(), " ", merge_keys.sizes());
  TORCH_CHECK_VALUE(weights.dim() == 3 && weights.size(0) == B && weights.size(1) == T && weights.size(2) == N &&
                        weights.is_floating_point(),
                    "kvtp: `weights` must be a floating-point tensor [B, T, N] = [", B, ", ", T, ", ", N, "]; got ",
                    weights.scalar_type(), " ", weights.sizes());
  TORCH_CHECK_VALUE(indices.dim() == 1 && indices.scalar_type() == at::kLong, "kvtp: `indices` must be int64 [R]; got ",
                    indices.scalar_type(), " ", indices.sizes());
  TORCH_CHECK_VALUE(num_neighbors >= 0 && num_neighbors < std::max<int64_t>(N, 1),
                    "kvtp: `num_neighbors` must lie in [0, N-1] = [0, ", N - 1, "]; got ", num_neighbors);
  const at::Tensor idx = indices.contiguous();
  const int64_t R = idx.size(0);
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK_VALUE(ip[r] >= 0 && ip[r] < B * T * N, "kvtp: `indices` must lie in [0, B*T*N) = [0, ", B * T * N,
                      "); got ", ip[r]);
    TORCH_CHECK_VALUE(r == 0 || ip[r] / N >= ip[r - 1] / N,
                      "kvtp: `indices` must come frame by frame (sorted by frame)");
  }
  at::Tensor out = at::empty({R, D}, tokens.options());
  if (R == 0) return out;
  const at::Tensor cos = kept_cosines(merge_keys, idx, N);
  const at::Tensor a = weights.to(at::kDouble).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tokens.scalar_type(), "kvtp_merge_neighbors_cpu", [&] {
    merge_rows<scalar_t>(tokens, a.data_ptr<double>(), ip, cos.data_ptr<double>(), R, num_neighbors, mean, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kvtp, CPU, m) { m.impl("merge_neighbors", &merge_neighbors_cpu); }

}  // namespace kvtp
