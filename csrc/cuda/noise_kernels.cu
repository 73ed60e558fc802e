// CUDA backend of the masking noise: one Philox word per element (kernel_math.h), the same
// words as the CPU kernel, so a seed gives the same mask on either device. The seed is read
// on the device: no host synchronization, and the operator can be captured in a CUDA graph.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
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

constexpr int kMaskThreads = 256;

template <typename scalar_t>
__global__ void mask_noise_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                  const int64_t* __restrict__ seed, uint64_t threshold, int64_t count) {
  const uint64_t key = static_cast<uint64_t>(*seed);
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool keep = philox4x32(key, static_cast<uint64_t>(e)).word[0] >= threshold;
    out[e] = keep ? x[e] : scalar_t(0);
  }
}

at::Tensor mask_noise_cuda(const at::Tensor& x_in, double q, const at::Tensor& seed) {
  check_mask_noise_inputs(x_in, q, seed);
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t count = x.numel();
  if (count == 0) return out;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((count + kMaskThreads - 1) / kMaskThreads, 8LL * sms));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pyae_mask_noise_cuda", [&] {
    mask_noise_kernel<scalar_t><<<blocks, kMaskThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), seed.const_data_ptr<int64_t>(),
        mask_noise_threshold(q), count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CUDA, m) {
  m.impl("mask_noise", &mask_noise_cuda);
}

}  // namespace pyae
