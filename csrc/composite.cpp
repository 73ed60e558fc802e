// Device-generic kernels: operators whose work is a few ATen calls on any device, registered
// for CompositeExplicitAutograd (autograd in autograd.cpp, fake kernels in pyae/ops.py).

#include <ATen/ATen.h>
#include <torch/library.h>

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
}

}  // namespace pyae
