// CPU backend of the fused sigmoid decoder + reconstruction loss: one pass over (B, n) forward
// (reconstruction and per-tile loss sums), one pass backward (the logits' gradient).

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/tiles.h"
#include "kernel_math.h"

namespace pyae {
namespace {

using cpu::accumulation_dtype;
using cpu::sum_row_tiles;
using cpu::TileGrid;

std::tuple<at::Tensor, at::Tensor> sigmoid_reconstruction_loss_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in, bool cross_entropy) {
  check_reconstruction_loss_inputs(logits_in, target_in);
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const int64_t B = logits.size(0), n = logits.size(1);
  const TileGrid grid(B, n);
  const auto acc_options = logits.options().dtype(accumulation_dtype(logits.scalar_type()));
  // partials[t][j]: the loss summed over the rows of row tile t, for feature j.
  at::Tensor partials = at::zeros({grid.row_tiles, n}, acc_options);
  at::Tensor totals = at::empty({n}, acc_options);
  at::Tensor reconstruction = at::empty_like(logits);
  at::Tensor loss = at::empty({}, logits.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "pyae_sigmoid_reconstruction_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    const scalar_t* x = target.const_data_ptr<scalar_t>();
    scalar_t* xhat = reconstruction.mutable_data_ptr<scalar_t>();
    acc_t* partial = partials.mutable_data_ptr<acc_t>();
    grid.for_each_tile([&](int64_t r0, int64_t r1, int64_t c0, int64_t c1, int64_t row_tile) {
      acc_t* loss_sum = partial + row_tile * n;
      for (int64_t i = r0; i < r1; ++i) {
        const int64_t offset = i * n;
        for (int64_t j = c0; j < c1; ++j) {
          const auto terms = sigmoid_loss_terms(
              static_cast<acc_t>(z[offset + j]), static_cast<acc_t>(x[offset + j]), cross_entropy);
          xhat[offset + j] = static_cast<scalar_t>(terms.reconstruction);
          loss_sum[j] += terms.loss;
        }
      }
    });
    acc_t* total = totals.mutable_data_ptr<acc_t>();
    sum_row_tiles(partial, grid.row_tiles, 1, n, total);
    acc_t sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += total[j];
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(sum / static_cast<acc_t>(B));
  });
  return {reconstruction, loss};
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
      for (int64_t e = first; e < last; ++e) {
        const acc_t upstream = g ? static_cast<acc_t>(g[e]) : acc_t(0);
        out[e] = static_cast<scalar_t>(sigmoid_loss_logit_grad(
            static_cast<acc_t>(xhat[e]), static_cast<acc_t>(x[e]), upstream, loss_scale, cross_entropy));
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
