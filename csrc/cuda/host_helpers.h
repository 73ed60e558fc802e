// Host-side helpers shared by the CUDA backends' operator functions.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/Optional.h>

namespace pyae {
namespace cuda_detail {

// t's options with the accumulation dtype (float for float, half and bfloat16; double for
// double): the dtype of the kernels' partial sums.
inline at::TensorOptions opmath_options(const at::Tensor& t) {
  return t.options().dtype(at::toOpMathType(t.scalar_type()));
}

// The data of an optional input, or null when it is absent (the kernels read a null
// pointer as an absent input).
template <typename scalar_t>
inline const scalar_t* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<scalar_t>() : nullptr;
}

}  // namespace cuda_detail
}  // namespace pyae
