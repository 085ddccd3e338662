// Torch-free helpers of the headers in include/kvtp/ (KVTP_HD: __host__ __device__ under nvcc,
// for pack.h, whose row body the CPU and CUDA pack_rows kernels share).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define KVTP_HD __host__ __device__ __forceinline__
#else
#define KVTP_HD inline
#endif

namespace kvtp {

// F.normalize's default epsilon: vector norms are clamped to at least this value.
constexpr double kNormEps = 1e-12;
// Frame probabilities below this count as zero (keeps N / (K*p) finite in float64).
constexpr double kProbFlush = 1e-200;

template <typename T>
KVTP_HD T min_of(T a, T b) { return b < a ? b : a; }
template <typename T>
KVTP_HD T max_of(T a, T b) { return a < b ? b : a; }
KVTP_HD double clamp_to(double v, double lo, double hi) { return min_of(max_of(v, lo), hi); }
KVTP_HD double nan_to_neg_inf(double v) { return std::isnan(v) ? -INFINITY : v; }

}  // namespace kvtp
