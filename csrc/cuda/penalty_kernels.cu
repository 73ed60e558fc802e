// CUDA backend of the KL sparsity penalty of the encoder's mean activations (kernel_math.h's
// KlSparsity): one block adds the per-unit terms, each thread in index order and the threads
// in a fixed tree, so the sum is deterministic; the backward is elementwise. The upstream
// gradient is read on the device: no host synchronization, and both operators can be
// captured in a CUDA graph.

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
#include "kernel_math.h"

namespace pyae {
namespace {

using at::ceil_div;

constexpr int kKlThreads = 256;

template <typename scalar_t, typename acc_t>
__global__ void kl_sparsity_kernel(const scalar_t* __restrict__ rho_hat, int64_t count, KlSparsity<acc_t> kl,
                                   scalar_t* __restrict__ penalty) {
  __shared__ acc_t partial[kKlThreads];
  acc_t sum = 0;
  for (int64_t l = threadIdx.x; l < count; l += kKlThreads) sum += kl.term(static_cast<acc_t>(rho_hat[l]));
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kKlThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) *penalty = static_cast<scalar_t>(partial[0]);
}

template <typename scalar_t, typename acc_t>
__global__ void kl_sparsity_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rho_hat,
                                            int64_t count, KlSparsity<acc_t> kl, scalar_t* __restrict__ out) {
  const acc_t upstream = static_cast<acc_t>(*grad);
  for (int64_t l = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; l < count;
       l += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[l] = static_cast<scalar_t>(upstream * kl.slope(static_cast<acc_t>(rho_hat[l])));
  }
}

at::Tensor kl_sparsity_cuda(const at::Tensor& mean_activation_in, double target) {
  check_kl_sparsity_inputs(mean_activation_in, target);
  const c10::cuda::CUDAGuard device_guard(mean_activation_in.device());
  const at::Tensor mean_activation = mean_activation_in.contiguous();
  at::Tensor penalty = at::empty({}, mean_activation.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean_activation.scalar_type(), "pyae_kl_sparsity_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    kl_sparsity_kernel<scalar_t, acc_t><<<1, kKlThreads, 0, stream>>>(
        mean_activation.const_data_ptr<scalar_t>(), mean_activation.numel(), make_kl_sparsity<scalar_t, acc_t>(target),
        penalty.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return penalty;
}

at::Tensor kl_sparsity_backward_cuda(const at::Tensor& grad, const at::Tensor& mean_activation_in, double target) {
  check_kl_sparsity_backward_inputs(grad, mean_activation_in, target);
  const c10::cuda::CUDAGuard device_guard(mean_activation_in.device());
  const at::Tensor mean_activation = mean_activation_in.contiguous();
  at::Tensor grad_mean_activation = at::empty_like(mean_activation);
  const int64_t count = mean_activation.numel();
  if (count == 0) return grad_mean_activation;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div<int64_t>(count, kKlThreads), 1024));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean_activation.scalar_type(), "pyae_kl_sparsity_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    kl_sparsity_backward_kernel<scalar_t, acc_t><<<blocks, kKlThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), mean_activation.const_data_ptr<scalar_t>(), count,
        make_kl_sparsity<scalar_t, acc_t>(target), grad_mean_activation.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_mean_activation;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CUDA, m) {
  m.impl("kl_sparsity", &kl_sparsity_cuda);
  m.impl("kl_sparsity_backward", &kl_sparsity_backward_cuda);
}

}  // namespace pyae
