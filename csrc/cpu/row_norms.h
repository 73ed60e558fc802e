// Squared row norms c_l = ||W_l||^2 on the CPU, shared by the encoder's kernels and the fused
// optimizer updates (which compute the next step's c with this same code, so both give the
// same bits).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/tiles.h"

namespace pyae {
namespace cpu {
// Internal linkage: each translation unit gets its own copy of the multiversioned loop (GCC's
// target_clones resolvers are not shared across units).
namespace {

// c_l = ||weight_l||^2 for the rows [first, last), accumulated in acc_t. A single running
// sum is a serial dependency chain the compiler may not reorder; kLanes independent partial
// sums (added up in a fixed order at the end) vectorize and keep the result the same
// whatever the thread count.
template <typename scalar_t, typename acc_t>
PYAE_CPU_MULTIVERSION void squared_norms_of_rows(const scalar_t* __restrict weight, int64_t n, int64_t first,
                                                 int64_t last, acc_t* __restrict out) {
  constexpr int64_t kLanes = 16;
  for (int64_t l = first; l < last; ++l) {
    const scalar_t* __restrict row = weight + l * n;
    acc_t lanes[kLanes] = {};
    const int64_t full = n - n % kLanes;
    for (int64_t j = 0; j < full; j += kLanes) {
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        const acc_t w = static_cast<acc_t>(row[j + lane]);
        lanes[lane] += w * w;
      }
    }
    for (int64_t j = full; j < n; ++j) {
      const acc_t w = static_cast<acc_t>(row[j]);
      lanes[j - full] += w * w;
    }
    acc_t total = 0;
    for (int64_t lane = 0; lane < kLanes; ++lane) total += lanes[lane];
    out[l] = total;
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
