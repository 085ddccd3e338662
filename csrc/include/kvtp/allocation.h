// Frame scores -> per-frame keep counts for one video (METHOD.md section 2).
//
// Torch-free, raw pointers, float64 throughout; each function handles one video of
// T frames and is O(T^2) with no allocation beyond the caller's scratch. Used by the
// CPU kernels (prune_cpu.cpp); the GPU path is the Triton kernel, which follows the
// same steps. kvtp_kernels/reference/ holds the same math vectorised
// (exact_counts_ref etc.); tests compare all three bit for bit.
#pragma once

#include "kvtp/common.h"

namespace kvtp {

// p_t = softmax_t(s_t / tau) with NaN scores counted as -inf, probabilities below
// kProbFlush set to 0, and, when the largest score is infinite, the frames at that
// score sharing the probability equally.
KVTP_HD void frame_probs(const double* scores, int64_t T, double tau, double* probs) {
  double mx = -INFINITY;
  for (int64_t t = 0; t < T; ++t) mx = max_of(mx, nan_to_neg_inf(scores[t]));
  if (std::isinf(mx)) {
    int64_t at_max = 0;
    for (int64_t t = 0; t < T; ++t) at_max += (nan_to_neg_inf(scores[t]) == mx);
    for (int64_t t = 0; t < T; ++t) {
      probs[t] = (nan_to_neg_inf(scores[t]) == mx) ? 1.0 / static_cast<double>(at_max) : 0.0;
    }
    return;
  }
  double sum = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    probs[t] = std::exp((nan_to_neg_inf(scores[t]) - mx) / tau);
    sum += probs[t];
  }
  for (int64_t t = 0; t < T; ++t) {
    const double p = probs[t] / sum;
    probs[t] = p < kProbFlush ? 0.0 : p;
  }
}

// g(lam) = sum_t clamp(lam * a_t, m, N), with a frame of a_t == 0 contributing m.
KVTP_HD double capped_share_sum(const double* a, int64_t T, double lam, double m, double N) {
  double g = 0.0;
  for (int64_t t = 0; t < T; ++t) g += a[t] > 0.0 ? clamp_to(lam * a[t], m, N) : m;
  return g;
}

// Largest-remainder rounding of real shares x (summing to ~K) to integers summing
// to K: k_t = floor(x_t) + [rank_t < R], R = clamp(K - sum floor(x), 0, T), rank_t
// the position of frame t among the frames below N ordered by fractional part,
// largest first, ties to the lower frame index.
KVTP_HD void largest_remainder(const double* x, int64_t T, int64_t K, int64_t N, int32_t* counts) {
  int64_t floor_sum = 0;
  for (int64_t t = 0; t < T; ++t) floor_sum += static_cast<int64_t>(std::floor(x[t]));
  const int64_t remainder = min_of(max_of(K - floor_sum, int64_t(0)), T);
  for (int64_t t = 0; t < T; ++t) {
    const double ft = std::floor(x[t]);
    const int64_t kt = static_cast<int64_t>(ft);
    const double frac_t = x[t] - ft;
    int64_t rank = 0;
    if (kt < N) {
      for (int64_t j = 0; j < T; ++j) {
        const double fj = std::floor(x[j]);
        if (static_cast<int64_t>(fj) >= N) continue;
        const double frac_j = x[j] - fj;
        rank += (frac_j > frac_t) || (frac_j == frac_t && j < t);
      }
    }
    counts[t] = static_cast<int32_t>(kt + ((kt < N && rank < remainder) ? 1 : 0));
  }
}

// Exact allocation: sum_t k_t = K, m <= k_t <= N, closest to the capped share
// x_t = clamp(lam * K * p_t, m, N) with sum_t x_t = K (see exact_counts_ref for the
// five steps, followed here one by one). `x` is caller scratch of T doubles.
KVTP_HD void exact_counts(const double* probs, int64_t T, int64_t K, int64_t N, int64_t m, double* x,
                          int32_t* counts) {
  const double Kd = static_cast<double>(K), Nd = static_cast<double>(N), md = static_cast<double>(m);
  // Step 1: a_t = K * p_t (kept in x until step 3 overwrites it).
  double* a = x;
  int64_t n_zero = 0;
  for (int64_t t = 0; t < T; ++t) {
    a[t] = Kd * probs[t];
    n_zero += !(a[t] > 0.0);
  }
  // Step 4 first: if the positive frames all capped at N cannot reach K, the zero-
  // probability frames share the rest equally.
  const int64_t capacity = N * (T - n_zero) + m * n_zero;
  if (K > capacity) {
    const double share = md + static_cast<double>(K - capacity) / static_cast<double>(n_zero);
    for (int64_t t = 0; t < T; ++t) a[t] = a[t] > 0.0 ? Nd : share;
    largest_remainder(a, T, K, N, counts);
    return;
  }
  // Step 2: lo = largest candidate with g(lo) <= K, hi = smallest candidate above it.
  double lo = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    if (!(a[t] > 0.0)) continue;
    const double c1 = md / a[t], c2 = Nd / a[t];
    if (c1 > lo && capped_share_sum(a, T, c1, md, Nd) <= Kd) lo = c1;
    if (c2 > lo && capped_share_sum(a, T, c2, md, Nd) <= Kd) lo = c2;
  }
  double hi = INFINITY;
  for (int64_t t = 0; t < T; ++t) {
    if (!(a[t] > 0.0)) continue;
    const double c1 = md / a[t], c2 = Nd / a[t];
    if (c1 > lo) hi = min_of(hi, c1);
    if (c2 > lo) hi = min_of(hi, c2);
  }
  const double mid = std::isinf(hi) ? 2.0 * lo + 1.0 : 0.5 * (lo + hi);
  // Step 3: frame states on (lo, hi), read at mid; solve the linear piece for lam.
  double n_capped = 0.0, n_floored = 0.0, s_free = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    const bool pos = a[t] > 0.0;
    const double xm = mid * a[t];
    if (pos && xm >= Nd) {
      n_capped += 1.0;
    } else if (!pos || xm <= md) {
      n_floored += 1.0;
    } else {
      s_free += a[t];
    }
  }
  double lam = s_free > 0.0 ? (Kd - Nd * n_capped - md * n_floored) / s_free : lo;
  lam = min_of(max_of(lam, lo), hi);
  for (int64_t t = 0; t < T; ++t) {
    const bool pos = a[t] > 0.0;
    const double xm = mid * a[t];
    if (pos && xm >= Nd) {
      a[t] = Nd;
    } else if (!pos || xm <= md) {
      a[t] = md;
    } else {
      a[t] = clamp_to(lam * a[t], md, Nd);
    }
  }
  // Step 5.
  largest_remainder(a, T, K, N, counts);
}

// The authors' rule (allocation="paper"): k_t = max(m, floor(N * min(ratio*T*p_t, 1))).
KVTP_HD void paper_counts(const double* probs, int64_t T, double ratio, int64_t N, int64_t m, int32_t* counts) {
  const double scale = ratio * static_cast<double>(T);
  for (int64_t t = 0; t < T; ++t) {
    const double r = scale * probs[t];
    const int64_t k = static_cast<int64_t>(std::floor(static_cast<double>(N) * min_of(r, 1.0)));
    counts[t] = static_cast<int32_t>(max_of(k, m));
  }
}

}  // namespace kvtp
