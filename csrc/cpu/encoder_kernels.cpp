// CPU backend of the sigmoid encoder operators: the fused passes over (B, k), in the row
// tiles of tiles.h (reproducible whatever the number of threads). The KL sparsity penalty of
// the mean activations is in cpu/penalty_kernels.cpp.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/row_norms.h"
#include "cpu/tiles.h"
#include "encoder_host.h"
#include "kernel_math.h"

namespace pyae {
namespace {

using cpu::RowTiles;
using cpu::squared_row_norms_of;
using cpu::sum_row_tiles;

// Adds sum_i h_il and sum_i d_il^2 over rows [r0, r1) into h_sum[l], d2_sum[l]. The
// restrict-qualified pointers and the branch-free body let the compiler vectorize along l.
template <typename scalar_t, typename acc_t>
PYAE_CPU_MULTIVERSION void add_activation_sums(const scalar_t* __restrict h, acc_t* __restrict h_sum,
                                               acc_t* __restrict d2_sum, int64_t r0, int64_t r1, int64_t k) {
  for (int64_t i = r0; i < r1; ++i) {
    const scalar_t* __restrict row = h + i * k;
    for (int64_t l = 0; l < k; ++l) {
      const acc_t value = static_cast<acc_t>(row[l]);
      const acc_t d = sigmoid_slope(value);
      h_sum[l] += value;
      d2_sum[l] += d * d;
    }
  }
}

// delta_il for rows [r0, r1), and its column sums together with those of d_il^2.
// kHasGradHidden picks the loop without the (absent) grad_hidden stream.
template <bool kHasGradHidden, typename scalar_t, typename acc_t>
PYAE_CPU_MULTIVERSION void delta_rows(const scalar_t* __restrict h, const scalar_t* __restrict g_h,
                                      const acc_t* __restrict column_term, const acc_t* __restrict coef,
                                      scalar_t* __restrict out, acc_t* __restrict delta_sum, acc_t* __restrict d2_sum,
                                      int64_t r0, int64_t r1, int64_t k) {
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t offset = i * k;
    for (int64_t l = 0; l < k; ++l) {
      const acc_t value = static_cast<acc_t>(h[offset + l]);
      acc_t upstream = column_term[l];
      if constexpr (kHasGradHidden) upstream += static_cast<acc_t>(g_h[offset + l]);
      const acc_t delta_il = pre_activation_grad(value, upstream, coef[l]);
      const acc_t d = sigmoid_slope(value);
      out[offset + l] = static_cast<scalar_t>(delta_il);
      delta_sum[l] += delta_il;
      d2_sum[l] += d * d;
    }
  }
}

struct CpuBackend {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> activate_and_reduce(
      at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& given_norms) {
    const int64_t B = hidden.size(0), k = hidden.size(1), n = weight.size(1);
    const RowTiles tiles(B);
    const auto acc_options = hidden.options().dtype(at::toOpMathType(hidden.scalar_type()));
    // One workspace (allocations are much of a small batch's cost): the partial sums of each
    // row tile t, partials[t][0] = sum_i h_il and partials[t][1] = sum_i d_il^2, then their
    // totals (2, k).
    at::Tensor workspace = at::empty({(tiles.count + 1) * 2 * k}, acc_options);
    at::Tensor mean_activation = at::empty({k}, hidden.options());
    at::Tensor contractive = at::empty({}, hidden.options());
    at::Tensor squared_row_norms = at::empty({given_norms.has_value() ? 0 : k}, acc_options);

    // Per tile: ATen's vectorized sigmoid in place (see tiles.h), then the column sums of
    // the rounded h while the tile is in cache, which vectorize from plain C++: together
    // they beat one pass with a scalar exp.
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "pyae_sigmoid_encoder_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* h = hidden.const_data_ptr<scalar_t>();
      acc_t* partial = workspace.mutable_data_ptr<acc_t>();
      acc_t* total = partial + tiles.count * 2 * k;
      tiles.for_each([&](int64_t r0, int64_t r1, int64_t tile) {
        cpu::sigmoid_rows(hidden, hidden, r0, r1);
        acc_t* h_sum = partial + tile * 2 * k;
        std::fill(h_sum, h_sum + 2 * k, acc_t(0));
        add_activation_sums(h, h_sum, h_sum + k, r0, r1, k);
      });
      sum_row_tiles(partial, tiles.count, 2, k, total);
      const acc_t* c;
      if (given_norms.has_value()) {
        c = given_norms->const_data_ptr<acc_t>();
      } else {
        squared_row_norms_of(weight.const_data_ptr<scalar_t>(), k, n, squared_row_norms.mutable_data_ptr<acc_t>());
        c = squared_row_norms.const_data_ptr<acc_t>();
      }

      scalar_t* mean = mean_activation.mutable_data_ptr<scalar_t>();
      acc_t penalty = 0;
      for (int64_t l = 0; l < k; ++l) {
        mean[l] = static_cast<scalar_t>(total[l] / B);
        penalty += c[l] * total[k + l];
      }
      *contractive.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(penalty / B);
    });
    return {mean_activation, contractive, squared_row_norms};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_pass(
      const at::Tensor& hidden,
      const at::Tensor& weight,
      const c10::optional<at::Tensor>& squared_row_norms,
      const c10::optional<at::Tensor>& grad_hidden,
      const c10::optional<at::Tensor>& grad_hidden_row,
      const c10::optional<at::Tensor>& grad_mean_activation,
      const c10::optional<at::Tensor>& grad_contractive,
      bool want_column_sums,
      bool want_row_scale) {
    const int64_t B = hidden.size(0), k = hidden.size(1), n = weight.size(1);
    const RowTiles tiles(B);
    const auto acc_options = hidden.options().dtype(at::toOpMathType(hidden.scalar_type()));
    const bool has_contractive = grad_contractive.has_value();
    want_row_scale = want_row_scale && has_contractive;
    // partials[t][0]: sum_i delta_il, partials[t][1]: sum_i d_il^2, for row tile t. The sums
    // cost nothing next to the pass's memory traffic, so they are always taken.
    const bool sums = want_column_sums || want_row_scale;
    // One workspace: the row tiles' partial sums (count, 2, k) | their totals (2, k) | the
    // per-column terms g_h,row_l + g_rho_l / B and g_c * (2/B) * c_l, (2, k).
    at::Tensor workspace = at::empty({(tiles.count + 2) * 2 * k}, acc_options);
    at::Tensor delta = at::empty_like(hidden);
    at::Tensor grad_bias, row_scale;
    if (want_column_sums) grad_bias = at::empty({k}, hidden.options());
    if (want_row_scale) row_scale = at::empty({k}, hidden.options());

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "pyae_sigmoid_encoder_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const acc_t inv_batch = acc_t(1) / static_cast<acc_t>(B);
      acc_t* partial = workspace.mutable_data_ptr<acc_t>();
      acc_t* total = partial + tiles.count * 2 * k;
      acc_t* column_term = total + 2 * k;
      acc_t* coef = column_term + k;
      std::fill(column_term, column_term + 2 * k, acc_t(0));
      if (grad_mean_activation.has_value()) {
        const scalar_t* g_rho = grad_mean_activation->const_data_ptr<scalar_t>();
        for (int64_t l = 0; l < k; ++l) column_term[l] = static_cast<acc_t>(g_rho[l]) * inv_batch;
      }
      if (grad_hidden_row.has_value()) {
        const scalar_t* g_row = grad_hidden_row->const_data_ptr<scalar_t>();
        for (int64_t l = 0; l < k; ++l) column_term[l] += static_cast<acc_t>(g_row[l]);
      }
      acc_t contractive_scale = 0;
      if (has_contractive) {
        contractive_scale = static_cast<acc_t>(grad_contractive->const_data_ptr<scalar_t>()[0]) * 2 * inv_batch;
        if (squared_row_norms.has_value()) {
          const acc_t* c = squared_row_norms->const_data_ptr<acc_t>();
          std::copy(c, c + k, coef);
        } else {
          squared_row_norms_of(weight.const_data_ptr<scalar_t>(), k, n, coef);
        }
        for (int64_t l = 0; l < k; ++l) coef[l] *= contractive_scale;
      }

      const scalar_t* h = hidden.const_data_ptr<scalar_t>();
      scalar_t* out = delta.mutable_data_ptr<scalar_t>();
      tiles.for_each([&](int64_t r0, int64_t r1, int64_t tile) {
        acc_t* delta_sum = partial + tile * 2 * k;
        std::fill(delta_sum, delta_sum + 2 * k, acc_t(0));
        if (grad_hidden.has_value()) {
          delta_rows<true>(h, grad_hidden->const_data_ptr<scalar_t>(), column_term, coef, out, delta_sum,
                           delta_sum + k, r0, r1, k);
        } else {
          delta_rows<false>(h, static_cast<const scalar_t*>(nullptr), column_term, coef, out, delta_sum,
                            delta_sum + k, r0, r1, k);
        }
      });
      if (sums) {
        sum_row_tiles(partial, tiles.count, 2, k, total);
        if (want_column_sums) {
          scalar_t* bias_grad = grad_bias.data_ptr<scalar_t>();
          for (int64_t l = 0; l < k; ++l) bias_grad[l] = static_cast<scalar_t>(total[l]);
        }
        if (want_row_scale) {
          scalar_t* scale = row_scale.data_ptr<scalar_t>();
          for (int64_t l = 0; l < k; ++l) scale[l] = static_cast<scalar_t>(contractive_scale * total[k + l]);
        }
      }
    });
    return {delta, grad_bias, row_scale};
  }
};

at::Tensor squared_row_norms_cpu(const at::Tensor& weight) {
  check_squared_row_norms_input(weight);
  const at::Tensor weight_c = weight.contiguous();
  const int64_t k = weight_c.size(0), n = weight_c.size(1);
  at::Tensor norms = at::empty({k}, weight_c.options().dtype(at::toOpMathType(weight_c.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight_c.scalar_type(), "pyae_squared_row_norms_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    squared_row_norms_of(weight_c.const_data_ptr<scalar_t>(), k, n, norms.mutable_data_ptr<acc_t>());
  });
  return norms;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CPU, m) {
  m.impl("sigmoid_encoder", &sigmoid_encoder_forward<CpuBackend>);
  m.impl("sigmoid_encoder_backward", &sigmoid_encoder_backward<CpuBackend>);
  m.impl("sigmoid_encoder_preactivation_backward", &sigmoid_encoder_preactivation_backward<CpuBackend>);
  m.impl("squared_row_norms", &squared_row_norms_cpu);
}

}  // namespace pyae
