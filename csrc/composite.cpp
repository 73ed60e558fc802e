// Device-generic kernels: operators whose work is a few ATen or pyae calls on any device,
// registered for CompositeExplicitAutograd (autograd in autograd.cpp, fake kernels in
// pyae/ops.py).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "checks.h"

namespace pyae {
namespace {

at::Tensor weight_decay(at::TensorList weights) {
  check_weight_decay_inputs(weights);
  at::Tensor total;
  for (const at::Tensor& weight : weights) {
    // dot of the flattened weight with itself: one read, no weight-sized temporary.
    const at::Tensor flat = weight.reshape({-1});
    at::Tensor term = at::dot(flat, flat);
    total = total.defined() ? total.add_(term) : term;
  }
  return total.mul_(0.5);
}

// Without autograd (no_grad, inference): the two operators one after the other.
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_sigmoid_encoder(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, double q,
    const at::Tensor& seed) {
  static const auto mask_noise = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("pyae::mask_noise", "")
                                     .typed<at::Tensor(const at::Tensor&, double, const at::Tensor&)>();
  static const auto encoder = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("pyae::sigmoid_encoder", "")
                                  .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                      const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&)>();
  return encoder.call(mask_noise.call(x, q, seed), weight, bias);
}

std::vector<at::Tensor> weight_decay_backward(const at::Tensor& grad, at::TensorList weights) {
  check_weight_decay_inputs(weights);
  check_same_dtype_device(grad, "grad", weights[0], "weights[0]");
  TORCH_CHECK_VALUE(grad.numel() == 1, "pyae: grad must be a scalar, got shape ", grad.sizes());
  std::vector<at::Tensor> grads;
  grads.reserve(weights.size());
  // A 0-dim grad broadcasts on the device: no host synchronization.
  for (const at::Tensor& weight : weights) grads.push_back(at::mul(weight, grad.reshape({})));
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CompositeExplicitAutograd, m) {
  m.impl("weight_decay", &weight_decay);
  m.impl("weight_decay_backward", &weight_decay_backward);
  m.impl("masked_sigmoid_encoder", &masked_sigmoid_encoder);
}

}  // namespace pyae
