// CPU backend of the fused sigmoid decoder + reconstruction loss: forward, ATen's vectorized
// sigmoid and one pass for the per-tile loss sums; backward, one pass for the logits' gradient.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>

#include "checks.h"
#include "cpu/tiles.h"
#include "kernel_math.h"

namespace pyae {
namespace {

using cpu::sum_row_tiles;
using cpu::RowTiles;

// log(s) for s in [1/2, 1], from the series 2 atanh(u) = log(s), u = (s - 1) / (s + 1) in
// [-1/3, 0]: arithmetic only, so loops over it vectorize (glibc's log does not). Eight terms
// leave a relative error below 2e-9 there, under float's rounding; double uses std::log.
inline float log_upper_half(float s) {
  const float u = (s - 1.0f) / (s + 1.0f);
  const float u2 = u * u;
  float series = 1.0f / 15.0f;
  series = series * u2 + 1.0f / 13.0f;
  series = series * u2 + 1.0f / 11.0f;
  series = series * u2 + 1.0f / 9.0f;
  series = series * u2 + 1.0f / 7.0f;
  series = series * u2 + 1.0f / 5.0f;
  series = series * u2 + 1.0f / 3.0f;
  series = series * u2 + 1.0f;
  return 2.0f * u * series;
}

inline double log_upper_half(double s) {
  return std::log(s);
}

// Adds each element's loss over rows [r0, r1) into loss_sum[j], from the
// logits z, the targets x and the reconstruction xhat = sigmoid(z):
//   cross-entropy: max(z, 0) - x z + log1p(exp(-|z|)), where log1p(exp(-|z|)) =
//                  -log(sigmoid(|z|)) = -log(max(xhat, 1 - xhat))
//   squared error: (xhat - x)^2
// Returns whether a cross-entropy target lies outside [0, 1] (the pass reads every target
// anyway, so the check costs nothing here; the caller raises).
template <typename scalar_t, typename acc_t>
PYAE_CPU_MULTIVERSION bool add_loss_sums(const scalar_t* __restrict z, const scalar_t* __restrict x,
                                         const scalar_t* __restrict xhat, acc_t* __restrict loss_sum, int64_t r0,
                                         int64_t r1, int64_t n, bool cross_entropy) {
  int out_of_range = 0;
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t offset = i * n;
    if (cross_entropy) {
      for (int64_t j = 0; j < n; ++j) {
        const acc_t logit = static_cast<acc_t>(z[offset + j]);
        const acc_t target = static_cast<acc_t>(x[offset + j]);
        const acc_t probability = static_cast<acc_t>(xhat[offset + j]);
        const acc_t upper = std::max(probability, acc_t(1) - probability);
        loss_sum[j] += std::max(logit, acc_t(0)) - target * logit - log_upper_half(upper);
        out_of_range |= static_cast<int>(target < acc_t(0)) | static_cast<int>(target > acc_t(1));
      }
    } else {
      for (int64_t j = 0; j < n; ++j) {
        const acc_t error = static_cast<acc_t>(xhat[offset + j]) - static_cast<acc_t>(x[offset + j]);
        loss_sum[j] += error * error;
      }
    }
  }
  return out_of_range != 0;
}

std::tuple<at::Tensor, at::Tensor> sigmoid_reconstruction_loss_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in, bool cross_entropy) {
  check_reconstruction_loss_inputs(logits_in, target_in);
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const int64_t B = logits.size(0), n = logits.size(1);
  const RowTiles tiles(B);
  const auto acc_options = logits.options().dtype(at::toOpMathType(logits.scalar_type()));
  // One workspace: partials[t][j], the loss summed over the rows of row tile t for feature
  // j, then their totals (n,).
  at::Tensor workspace = at::empty({(tiles.count + 1) * n}, acc_options);
  at::Tensor reconstruction = at::empty_like(logits);
  at::Tensor loss = at::empty({}, logits.options());

  // Per tile: the sigmoid by ATen's vectorized kernel (tiles.h), then one vectorizable pass
  // for the loss while the tile is in cache.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "pyae_sigmoid_reconstruction_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    const scalar_t* x = target.const_data_ptr<scalar_t>();
    const scalar_t* xhat = reconstruction.const_data_ptr<scalar_t>();
    acc_t* partial = workspace.mutable_data_ptr<acc_t>();
    acc_t* total = partial + tiles.count * n;
    std::atomic<bool> target_out_of_range{false};
    tiles.for_each([&](int64_t r0, int64_t r1, int64_t tile) {
      cpu::sigmoid_rows(logits, reconstruction, r0, r1);
      std::fill(partial + tile * n, partial + (tile + 1) * n, acc_t(0));
      if (add_loss_sums(z, x, xhat, partial + tile * n, r0, r1, n, cross_entropy)) {
        target_out_of_range.store(true, std::memory_order_relaxed);
      }
    });
    if (target_out_of_range.load()) {
      const auto [low, high] = at::aminmax(target);
      TORCH_CHECK_VALUE(false, "pyae: cross_entropy needs targets in [0, 1], got values in [", low.item<double>(),
                        ", ", high.item<double>(), "]");
    }
    sum_row_tiles(partial, tiles.count, 1, n, total);
    acc_t sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += total[j];
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(sum / static_cast<acc_t>(B));
  });
  return {reconstruction, loss};
}

// The logits' gradient for elements [first, last). kHasGradReconstruction picks the loop
// without the (absent) upstream gradient of the reconstruction.
template <bool kHasGradReconstruction, typename scalar_t, typename acc_t>
PYAE_CPU_MULTIVERSION void logit_grads(const scalar_t* __restrict xhat, const scalar_t* __restrict x,
                                       const scalar_t* __restrict g, acc_t loss_scale, bool cross_entropy,
                                       scalar_t* __restrict out, int64_t first, int64_t last) {
  for (int64_t e = first; e < last; ++e) {
    const acc_t upstream = kHasGradReconstruction ? static_cast<acc_t>(g[e]) : acc_t(0);
    out[e] = static_cast<scalar_t>(sigmoid_loss_logit_grad(static_cast<acc_t>(xhat[e]), static_cast<acc_t>(x[e]),
                                                           upstream, loss_scale, cross_entropy));
  }
}

at::Tensor sigmoid_reconstruction_loss_backward_cpu(
    const c10::optional<at::Tensor>& grad_reconstruction_in,
    const c10::optional<at::Tensor>& grad_loss,
    const at::Tensor& reconstruction_in,
    const at::Tensor& target_in,
    bool cross_entropy) {
  check_reconstruction_loss_backward_inputs(grad_reconstruction_in, grad_loss, reconstruction_in, target_in);
  const at::Tensor reconstruction = reconstruction_in.contiguous(), target = target_in.contiguous();
  const c10::optional<at::Tensor> grad_reconstruction =
      grad_reconstruction_in.has_value() ? c10::optional<at::Tensor>(grad_reconstruction_in->contiguous()) : c10::nullopt;
  const int64_t B = reconstruction.size(0), numel = reconstruction.numel();
  at::Tensor grad_logits = at::empty_like(reconstruction);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, reconstruction.scalar_type(), "pyae_sigmoid_reconstruction_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t loss_scale =
        grad_loss.has_value() ? static_cast<acc_t>(grad_loss->const_data_ptr<scalar_t>()[0]) / static_cast<acc_t>(B) : acc_t(0);
    const scalar_t* xhat = reconstruction.const_data_ptr<scalar_t>();
    const scalar_t* x = target.const_data_ptr<scalar_t>();
    const scalar_t* g = grad_reconstruction.has_value() ? grad_reconstruction->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out = grad_logits.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, numel, 32768, [&](int64_t first, int64_t last) {
      if (g != nullptr) {
        logit_grads<true>(xhat, x, g, loss_scale, cross_entropy, out, first, last);
      } else {
        logit_grads<false>(xhat, x, g, loss_scale, cross_entropy, out, first, last);
      }
    });
  });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CPU, m) {
  m.impl("sigmoid_reconstruction_loss", &sigmoid_reconstruction_loss_cpu);
  m.impl("sigmoid_reconstruction_loss_backward", &sigmoid_reconstruction_loss_backward_cpu);
}

}  // namespace pyae
