// CPU backend of the KL sparsity penalty of the encoder's mean activations (kernel_math.h's
// KlSparsity). A handful of values (one per hidden unit): the forward is one serial sum in
// index order, the backward is elementwise.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "checks.h"
#include "kernel_math.h"

namespace pyae {
namespace {

at::Tensor kl_sparsity_cpu(const at::Tensor& mean_activation_in, double target) {
  check_kl_sparsity_inputs(mean_activation_in, target);
  const at::Tensor mean_activation = mean_activation_in.contiguous();
  at::Tensor penalty = at::empty({}, mean_activation.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean_activation.scalar_type(), "pyae_kl_sparsity_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const KlSparsity<acc_t> kl = make_kl_sparsity<scalar_t, acc_t>(target);
    const scalar_t* rho_hat = mean_activation.const_data_ptr<scalar_t>();
    acc_t total = 0;
    for (int64_t l = 0; l < mean_activation.numel(); ++l) total += kl.term(static_cast<acc_t>(rho_hat[l]));
    *penalty.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(total);
  });
  return penalty;
}

at::Tensor kl_sparsity_backward_cpu(const at::Tensor& grad, const at::Tensor& mean_activation_in, double target) {
  check_kl_sparsity_backward_inputs(grad, mean_activation_in, target);
  const at::Tensor mean_activation = mean_activation_in.contiguous();
  at::Tensor grad_mean_activation = at::empty_like(mean_activation);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean_activation.scalar_type(), "pyae_kl_sparsity_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const KlSparsity<acc_t> kl = make_kl_sparsity<scalar_t, acc_t>(target);
    const acc_t upstream = static_cast<acc_t>(grad.const_data_ptr<scalar_t>()[0]);
    const scalar_t* rho_hat = mean_activation.const_data_ptr<scalar_t>();
    scalar_t* out = grad_mean_activation.mutable_data_ptr<scalar_t>();
    for (int64_t l = 0; l < mean_activation.numel(); ++l) {
      out[l] = static_cast<scalar_t>(upstream * kl.slope(static_cast<acc_t>(rho_hat[l])));
    }
  });
  return grad_mean_activation;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CPU, m) {
  m.impl("kl_sparsity", &kl_sparsity_cpu);
  m.impl("kl_sparsity_backward", &kl_sparsity_backward_cpu);
}

}  // namespace pyae
