// Scores that decide what is kept (METHOD.md sections 1 and 3), torch-free.
//
// Element types are template parameters (float, c10::Half, c10::BFloat16, ...:
// anything convertible to float/double); strides are in elements. All arithmetic
// is float64, as in kvtp_kernels/reference/. Used by the CPU kernels (prune_cpu.cpp,
// merge_cpu.cpp); the GPU path is the Triton kernels.
#pragma once

#include "kvtp/common.h"

namespace kvtp {

template <typename scalar_t>
KVTP_HD double to_double(scalar_t v) { return static_cast<double>(static_cast<float>(v)); }
template <>
KVTP_HD double to_double<double>(double v) { return v; }

// Within-frame ranking: does token j (score sj) beat token i (score si)? Higher
// score first, ties to the lower index, NaN below every number (-inf included).
KVTP_HD bool token_beats(double sj, int64_t j, double si, int64_t i) {
  const bool nan_j = std::isnan(sj), nan_i = std::isnan(si);
  if (nan_j || nan_i) return nan_j ? (nan_i && j < i) : true;
  return sj > si || (sj == si && j < i);
}

// Sum of f(d) for d in [0, D) in a fixed association: 8 interleaved partial sums (so
// the compiler can vectorise without -ffast-math), combined pairwise. Deterministic.
template <typename F>
KVTP_HD double lane_sum(int64_t D, F f) {
  double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += f(d + k);
  }
  for (int k = 0; d < D; ++d, ++k) acc[k] += f(d);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Default token score of one frame: 1 - cos(x_i, mean_i x_i).
// x: [N, D] with strides (stride_n, stride_d); mu: scratch of D doubles;
// sq_norm: scratch of N doubles; out: N doubles.
template <typename scalar_t>
void frame_distinctiveness(const scalar_t* x, int64_t N, int64_t D, int64_t stride_n, int64_t stride_d, double* mu,
                           double* sq_norm, double* out) {
  for (int64_t d = 0; d < D; ++d) mu[d] = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    const scalar_t* row = x + i * stride_n;
    sq_norm[i] = lane_sum(D, [&](int64_t d) {  // one read of the row: column sums and |x_i|^2
      const double v = to_double(row[d * stride_d]);
      mu[d] += v;
      return v * v;
    });
  }
  for (int64_t d = 0; d < D; ++d) mu[d] /= static_cast<double>(N);
  const double mu_norm = max_of(std::sqrt(lane_sum(D, [&](int64_t d) { return mu[d] * mu[d]; })), kNormEps);
  for (int64_t i = 0; i < N; ++i) {
    const scalar_t* row = x + i * stride_n;
    const double dot = lane_sum(D, [&](int64_t d) { return to_double(row[d * stride_d]) * mu[d]; });
    out[i] = 1.0 - dot / (max_of(std::sqrt(sq_norm[i]), kNormEps) * mu_norm);
  }
}

// Query-frame relevance of one video (METHOD.md section 1):
//   s_t = max_c( exp(logit_scale) * cos(q_c, f_t) + logit_bias ).
// f: [T, E] (strides ft, fe); q: [C, E] (strides qc, qe); q_norm: scratch of C doubles.
template <typename scalar_t>
void frame_similarity(const scalar_t* f, int64_t T, int64_t ft, int64_t fe, const scalar_t* q, int64_t C,
                      int64_t qc, int64_t qe, int64_t E, double logit_scale, double logit_bias, double* q_norm,
                      double* scores) {
  const double scale = std::exp(logit_scale);
  for (int64_t c = 0; c < C; ++c) {
    double s = 0.0;
    for (int64_t e = 0; e < E; ++e) {
      const double v = to_double(q[c * qc + e * qe]);
      s += v * v;
    }
    q_norm[c] = max_of(std::sqrt(s), kNormEps);
  }
  for (int64_t t = 0; t < T; ++t) {
    double f_sq = 0.0;
    for (int64_t e = 0; e < E; ++e) {
      const double v = to_double(f[t * ft + e * fe]);
      f_sq += v * v;
    }
    const double f_norm = max_of(std::sqrt(f_sq), kNormEps);
    double best = -INFINITY;
    for (int64_t c = 0; c < C; ++c) {
      double dot = 0.0;
      for (int64_t e = 0; e < E; ++e) dot += to_double(q[c * qc + e * qe]) * to_double(f[t * ft + e * fe]);
      const double v = scale * (dot / (q_norm[c] * f_norm)) + logit_bias;
      best = (std::isnan(v) || std::isnan(best)) ? NAN : max_of(best, v);  // NaN propagates, like torch.amax
    }
    scores[t] = best;
  }
}

}  // namespace kvtp
