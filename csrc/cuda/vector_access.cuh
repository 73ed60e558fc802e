// Vector memory access shared by the CUDA kernels.
//
// A Pack<T, N> is N consecutive elements moved with one N * sizeof(T)-byte load or store.
// Callers must check is_aligned on the base pointer (and keep offsets multiples of N)
// before taking the vector path, and fall back to element-wise access otherwise.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>

namespace pyae {
namespace cuda_detail {

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T val[N];
};

template <int VEC, typename scalar_t>
__device__ __forceinline__ Pack<scalar_t, VEC> load_pack(const scalar_t* p) {
  return *reinterpret_cast<const Pack<scalar_t, VEC>*>(p);
}

template <int VEC, typename scalar_t>
__device__ __forceinline__ void store_pack(scalar_t* p, const Pack<scalar_t, VEC>& v) {
  *reinterpret_cast<Pack<scalar_t, VEC>*>(p) = v;
}

inline bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// Whether every pointer is aligned to bytes, a null pointer (an absent input) counting as
// aligned: the condition for the vector path of a kernel that reads or writes them all.
template <typename... T>
inline bool all_aligned(size_t bytes, const T*... p) {
  return ((p == nullptr || is_aligned(p, bytes)) && ...);
}

}  // namespace cuda_detail
}  // namespace pyae
