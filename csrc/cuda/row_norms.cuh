// Squared row norms c_l = ||W_l||^2 on CUDA, shared by the encoder's kernels and the fused
// optimizer updates (which compute the next step's c with the same code, so both give the
// same bits), with the vector-width helpers they pick their loads with.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>
#include <type_traits>

#include "cuda/vector_access.cuh"

namespace pyae {
namespace cuda_detail {

// Squared row norms: one warp per row of weight.
constexpr int kNormThreads = 256;
constexpr int kNormWarps = kNormThreads / 32;

// Vector width in elements: 16-byte loads for float and double, 8-byte loads for the
// 16-bit types (wider would halve the column tiles and leave SMs idle at k = 1000).
template <typename scalar_t>
constexpr int pack_width() {
  return sizeof(scalar_t) >= 8 ? 2 : 4;
}

// Calls f(std::integral_constant<int, W>) with W = wide_width when wide, else 1: the kernels
// take their vector width as a template argument.
template <int kWide, typename F>
void with_width(bool wide, const F& f) {
  if (wide) {
    f(std::integral_constant<int, kWide>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// ||row||^2 over n elements by one warp: each lane adds a strided slice in order, then a
// fixed xor butterfly combines the lanes (every lane ends with the same total).
template <int VEC, typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> warp_squared_norm(const scalar_t* __restrict__ row, int64_t n, int lane) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t total = 0;
  const int64_t packs = n / VEC;  // the host picks VEC > 1 only when VEC divides n
#pragma unroll 4
  for (int64_t p = lane; p < packs; p += 32) {
    const Pack<scalar_t, VEC> w = load_pack<VEC>(row + p * VEC);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const acc_t x = static_cast<acc_t>(w.val[v]);
      total += x * x;
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) total += __shfl_xor_sync(0xffffffffu, total, offset);
  return total;
}

}  // namespace cuda_detail
}  // namespace pyae
