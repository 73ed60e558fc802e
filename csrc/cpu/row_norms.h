// Squared row norms c_l = ||W_l||^2 on the CPU, shared by the encoder's kernels and the fused
// optimizer updates (which compute the next step's c with this same code, so both give the
// same bits).
#pragma once

#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>

#include "cpu/tiles.h"

namespace pyae {
namespace cpu {
// Internal linkage: each translation unit gets its own copy of the multiversioned loop (GCC's
// target_clones resolvers are not shared across units).
namespace {

// sum_j value(j)^2 for j in [0, n), accumulated in acc_t: the one summation order of every
// squared row norm on the CPU (the encoder's, squared_row_norms', and the fused updates',
// which produce each value as they write it), so that they all give the same bits. A single
// running sum is a serial dependency chain the compiler may not reorder; kLanes independent
// partial sums (added up in a fixed order at the end) vectorize. Always inlined, so that it
// is compiled for the caller's target (PYAE_CPU_MULTIVERSION) with the caller's loop.
template <typename acc_t, typename Value>
C10_ALWAYS_INLINE acc_t squared_norm_of(int64_t n, const Value& value) {
  constexpr int64_t kLanes = 16;
  acc_t lanes[kLanes] = {};
  const int64_t full = n - n % kLanes;
  for (int64_t j = 0; j < full; j += kLanes) {
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      const acc_t w = value(j + lane);
      lanes[lane] += w * w;
    }
  }
  for (int64_t j = full; j < n; ++j) {
    const acc_t w = value(j);
    lanes[j - full] += w * w;
  }
  acc_t total = 0;
  for (int64_t lane = 0; lane < kLanes; ++lane) total += lanes[lane];
  return total;
}

// c_l = ||weight_l||^2 for the rows [first, last).
template <typename scalar_t, typename acc_t>
PYAE_CPU_MULTIVERSION void squared_norms_of_rows(const scalar_t* __restrict weight, int64_t n, int64_t first,
                                                 int64_t last, acc_t* __restrict out) {
  for (int64_t l = first; l < last; ++l) {
    const scalar_t* __restrict row = weight + l * n;
    out[l] = squared_norm_of<acc_t>(n, [row](int64_t j) { return static_cast<acc_t>(row[j]); });
  }
}

template <typename scalar_t, typename acc_t>
void squared_row_norms_of(const scalar_t* weight, int64_t k, int64_t n, acc_t* out) {
  at::parallel_for(0, k, std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)), [&](int64_t first, int64_t last) {
    squared_norms_of_rows(weight, n, first, last, out);
  });
}

}  // namespace
}  // namespace cpu
}  // namespace pyae
