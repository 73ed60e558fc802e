// CPU backend of the masking noise: one Philox word per element (kernel_math.h), in
// parallel chunks; each element's mask depends on the seed and its index alone.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

#include "checks.h"
#include "cpu/tiles.h"
#include "kernel_math.h"

namespace pyae {
namespace {

template <typename scalar_t>
PYAE_CPU_MULTIVERSION void mask_elements(const scalar_t* __restrict x, scalar_t* __restrict out, uint64_t seed,
                                         uint64_t threshold, int64_t first, int64_t last) {
  for (int64_t e = first; e < last; ++e) {
    const bool keep = philox4x32(seed, static_cast<uint64_t>(e)).word[0] >= threshold;
    out[e] = keep ? x[e] : scalar_t(0);
  }
}

at::Tensor mask_noise_cpu(const at::Tensor& x_in, double q, const at::Tensor& seed) {
  check_mask_noise_inputs(x_in, q, seed);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const uint64_t seed_value = static_cast<uint64_t>(seed.item<int64_t>());
  const uint64_t threshold = mask_noise_threshold(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pyae_mask_noise_cpu", [&] {
    const scalar_t* source = x.const_data_ptr<scalar_t>();
    scalar_t* target = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), 16384, [&](int64_t first, int64_t last) {
      mask_elements(source, target, seed_value, threshold, first, last);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CPU, m) {
  m.impl("mask_noise", &mask_noise_cpu);
}

}  // namespace pyae
