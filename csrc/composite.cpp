// Device-generic kernels: operators whose work is a few ATen or pyae calls on any device,
// registered for CompositeExplicitAutograd (autograd in autograd.cpp, fake kernels in
// pyae/ops.py).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "checks.h"
#include "ops.h"

namespace pyae {
namespace {

at::Tensor weight_decay_composite(at::TensorList weights) {
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
EncoderOutputs masked_sigmoid_encoder_composite(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, double q,
    const at::Tensor& seed, const c10::optional<at::Tensor>& squared_row_norms) {
  return sigmoid_encoder(mask_noise(x, q, seed), weight, bias, squared_row_norms);
}

std::vector<at::Tensor> weight_decay_backward_composite(const at::Tensor& grad, at::TensorList weights) {
  check_weight_decay_backward_inputs(grad, weights);
  std::vector<at::Tensor> grads;
  grads.reserve(weights.size());
  // A 0-dim grad broadcasts on the device: no host synchronization.
  for (const at::Tensor& weight : weights) grads.push_back(at::mul(weight, grad.reshape({})));
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CompositeExplicitAutograd, m) {
  m.impl("weight_decay", &weight_decay_composite);
  m.impl("weight_decay_backward", &weight_decay_backward_composite);
  m.impl("masked_sigmoid_encoder", &masked_sigmoid_encoder_composite);
}

}  // namespace pyae
