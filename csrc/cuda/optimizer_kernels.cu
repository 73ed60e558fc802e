// CUDA kernels of the fused optimizer updates (sgd_update_, adam_update_): one launch per
// parameter. A parameter without row decays or norms is updated by a flat grid-stride
// kernel; otherwise a warp takes each row: it updates the row with that row's decay, then
// takes the row's squared norm with the same code the encoder uses (cuda/row_norms.cuh), so
// both give the same bits. Each element is updated independently; the one sum (a row's norm)
// is a fixed warp butterfly: deterministic. Adam reads its step count on the device and no
// launch waits on the host: a step can be captured in a CUDA graph.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ceil_div.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "checks.h"
#include "cuda/row_norms.cuh"
#include "ops.h"
#include "update_math.h"

namespace pyae {
namespace {

using at::ceil_div;
using cuda_detail::is_aligned;
using cuda_detail::kNormThreads;
using cuda_detail::kNormWarps;
using cuda_detail::pack_width;
using cuda_detail::warp_squared_norm;
using cuda_detail::with_width;

constexpr int kFlatThreads = 256;
constexpr int64_t kMaxFlatBlocks = 4096;

// One element of SGD's update; kMomentum picks the loop with the buffer. grad is null when
// the gradient is already in the buffer (update_math.h).
template <typename scalar_t, bool kMomentum>
struct SgdElement {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* param;
  const scalar_t* grad;
  scalar_t* buffer;
  SgdCoefficients<acc_t> k;

  __device__ __forceinline__ void prepare() {}
  __device__ __forceinline__ void operator()(int64_t i, acc_t decay) const {
    acc_t b = kMomentum ? static_cast<acc_t>(buffer[i]) : acc_t(0);
    const acc_t g = grad != nullptr ? static_cast<acc_t>(grad[i]) : acc_t(0);
    param[i] = static_cast<scalar_t>(sgd_update<kMomentum>(static_cast<acc_t>(param[i]), g, decay, &b, k));
    if constexpr (kMomentum) buffer[i] = static_cast<scalar_t>(b);
  }
};

// One element of Adam's update; the coefficients come from the step count on the device.
template <typename scalar_t>
struct AdamElement {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* param;
  const scalar_t* grad;
  scalar_t* exp_avg;
  scalar_t* exp_avg_sq;
  const float* step;
  double lr, beta1, beta2, eps;
  AdamCoefficients<acc_t> k;

  __device__ __forceinline__ void prepare() {
    k = AdamCoefficients<acc_t>::make(lr, beta1, beta2, eps, static_cast<double>(*step));
  }
  __device__ __forceinline__ void operator()(int64_t i, acc_t decay) const {
    acc_t m = static_cast<acc_t>(exp_avg[i]), v = static_cast<acc_t>(exp_avg_sq[i]);
    param[i] = static_cast<scalar_t>(
        adam_update(static_cast<acc_t>(param[i]), static_cast<acc_t>(grad[i]), decay, &m, &v, k));
    exp_avg[i] = static_cast<scalar_t>(m);
    exp_avg_sq[i] = static_cast<scalar_t>(v);
  }
};

template <typename Element>
__global__ void __launch_bounds__(kFlatThreads) flat_update_kernel(Element element, int64_t numel,
                                                                   typename Element::acc_t decay) {
  element.prepare();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    element(i, decay);
  }
}

// Warp w of block b updates row b * kNormWarps + w with decay + 2 r_row (r may be null), then
// writes the row's squared norm into norms (when not null).
template <typename Element, int WVEC, typename scalar_t>
__global__ void __launch_bounds__(kNormThreads) row_update_kernel(
    Element element, const scalar_t* __restrict__ values, int64_t rows, int64_t cols, typename Element::acc_t decay,
    const typename Element::acc_t* __restrict__ row_grads, typename Element::acc_t* __restrict__ norms) {
  using acc_t = typename Element::acc_t;
  element.prepare();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kNormWarps + threadIdx.x / 32;
  if (row >= rows) return;  // warp-uniform
  const int lane = threadIdx.x % 32;
  const acc_t row_decay = row_grads != nullptr ? decay + acc_t(2) * row_grads[row] : decay;
  for (int64_t j = lane; j < cols; j += 32) element(row * cols + j, row_decay);
  if (norms == nullptr) return;  // grid-uniform
  __syncwarp();  // the row's new values, written by every lane, are visible to the warp
  const acc_t c = warp_squared_norm<WVEC>(values + row * cols, cols, lane);
  if (lane == 0) norms[row] = c;
}

template <typename scalar_t, typename Element>
void launch_update(const at::Tensor& param, double weight_decay, const c10::optional<at::Tensor>& row_grads,
                   const at::Tensor& norms, const Element& element) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t numel = param.numel();
  if (numel == 0) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const acc_t decay = static_cast<acc_t>(weight_decay);
  const bool want_norms = norms.defined() && norms.numel() > 0;
  if (!row_grads.has_value() && !want_norms) {
    const auto blocks = static_cast<unsigned>(std::min(ceil_div<int64_t>(numel, kFlatThreads), kMaxFlatBlocks));
    flat_update_kernel<<<blocks, kFlatThreads, 0, stream>>>(element, numel, decay);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t rows = param.size(0), cols = numel / rows;
  const scalar_t* values = param.const_data_ptr<scalar_t>();
  // The norm's vector width is chosen as squared_row_norms chooses it, so that both sum in
  // the same order.
  constexpr int kWide = pack_width<scalar_t>();
  const bool wide = cols % kWide == 0 && is_aligned(values, kWide * sizeof(scalar_t));
  with_width<kWide>(wide, [&](auto width) {
    constexpr int WVEC = decltype(width)::value;
    row_update_kernel<Element, WVEC><<<static_cast<unsigned>(ceil_div<int64_t>(rows, kNormWarps)), kNormThreads, 0,
                                       stream>>>(
        element, values, rows, cols, decay, row_grads.has_value() ? row_grads->const_data_ptr<acc_t>() : nullptr,
        want_norms ? norms.mutable_data_ptr<acc_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void sgd_update_cuda(
    at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
    const OptionalTensorList& squared_row_norm_grads, at::ArrayRef<double> weight_decays,
    at::TensorList squared_row_norms, double lr, double momentum, double dampening, bool nesterov, bool first_step) {
  check_sgd_update_inputs(params, grads, momentum_buffers, squared_row_norm_grads, weight_decays, squared_row_norms,
                          momentum, nesterov);
  const bool has_momentum = momentum != 0.0;
  const bool gradient_in_buffer = grads.empty();
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& param = params[i];
    const c10::cuda::CUDAGuard device_guard(param.device());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "pyae_sgd_update_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto k = SgdCoefficients<acc_t>::make(lr, momentum, dampening, nesterov, first_step, gradient_in_buffer);
      scalar_t* p = param.mutable_data_ptr<scalar_t>();
      const scalar_t* g = gradient_in_buffer ? nullptr : grads[i].const_data_ptr<scalar_t>();
      const auto row_grads = entry_or_none(squared_row_norm_grads, i);
      const at::Tensor norms = entry_or_undefined(squared_row_norms, i);
      if (has_momentum) {
        launch_update<scalar_t>(param, weight_decays[i], row_grads, norms,
                                SgdElement<scalar_t, true>{p, g, momentum_buffers[i].mutable_data_ptr<scalar_t>(), k});
      } else {
        launch_update<scalar_t>(param, weight_decays[i], row_grads, norms, SgdElement<scalar_t, false>{p, g, nullptr, k});
      }
    });
  }
}

void adam_update_cuda(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
    at::TensorList steps, const OptionalTensorList& squared_row_norm_grads, at::ArrayRef<double> weight_decays,
    at::TensorList squared_row_norms, double lr, double beta1, double beta2, double eps) {
  check_adam_update_inputs(params, grads, exp_avgs, exp_avg_sqs, steps, squared_row_norm_grads, weight_decays,
                           squared_row_norms);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& param = params[i];
    const c10::cuda::CUDAGuard device_guard(param.device());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "pyae_adam_update_cuda", [&] {
      AdamElement<scalar_t> element{param.mutable_data_ptr<scalar_t>(), grads[i].const_data_ptr<scalar_t>(),
                                    exp_avgs[i].mutable_data_ptr<scalar_t>(),
                                    exp_avg_sqs[i].mutable_data_ptr<scalar_t>(), steps[i].const_data_ptr<float>(),
                                    lr, beta1, beta2, eps, {}};
      launch_update<scalar_t>(param, weight_decays[i], entry_or_none(squared_row_norm_grads, i),
                              entry_or_undefined(squared_row_norms, i), element);
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CUDA, m) {
  m.impl("sgd_update_", &sgd_update_cuda);
  m.impl("adam_update_", &adam_update_cuda);
}

}  // namespace pyae
