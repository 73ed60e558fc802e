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

AutoencoderLossOutputs autoencoder_loss_from_parts(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& encoder_weight,
    const c10::optional<at::Tensor>& encoder_bias, const at::Tensor& decoder_weight,
    const c10::optional<at::Tensor>& decoder_bias, const c10::optional<at::Tensor>& squared_row_norms,
    double noise_level, const c10::optional<at::Tensor>& seed, bool cross_entropy, double contractive_weight,
    c10::optional<double> sparsity_target, double sparsity_weight, const c10::optional<at::Tensor>& weight_decay_term,
    double weight_decay, bool under_autocast) {
  check_autoencoder_loss_inputs(x, target, encoder_weight, encoder_bias, decoder_weight, decoder_bias, noise_level,
                                seed, contractive_weight, sparsity_target, sparsity_weight, weight_decay_term,
                                weight_decay, /*same_dtypes=*/!under_autocast);
  auto [hidden, mean_activation, contractive, norms] =
      seed.has_value() ? masked_sigmoid_encoder(x, encoder_weight, encoder_bias, noise_level, *seed, squared_row_norms)
                       : sigmoid_encoder(x, encoder_weight, encoder_bias, squared_row_norms);
  // at::linear, as pyae.Autoencoder's decoder and F.linear call it: the same product (addmm
  // with the bias folded in) and the same autocast policy.
  auto [reconstruction, reconstruction_term] =
      sigmoid_reconstruction_loss(at::linear(hidden, decoder_weight, decoder_bias), target, cross_entropy);
  at::Tensor loss = reconstruction_term;
  if (weight_decay_term.has_value() && weight_decay != 0.0) loss = at::add(loss, *weight_decay_term, weight_decay);
  at::Tensor sparsity_term;
  if (sparsity_target.has_value()) {
    sparsity_term = kl_sparsity(mean_activation, *sparsity_target);
    if (sparsity_weight != 0.0) loss = at::add(loss, sparsity_term, sparsity_weight);
  } else {
    sparsity_term = at::empty({0}, reconstruction_term.options());
  }
  if (contractive_weight != 0.0) loss = at::add(loss, contractive, contractive_weight);
  // An operator's outputs never alias each other.
  if (loss.is_same(reconstruction_term)) loss = loss.clone();
  return {loss, reconstruction, hidden, mean_activation, reconstruction_term, sparsity_term, contractive, norms};
}

namespace {

AutoencoderLossOutputs autoencoder_loss_composite(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& encoder_weight,
    const c10::optional<at::Tensor>& encoder_bias, const at::Tensor& decoder_weight,
    const c10::optional<at::Tensor>& decoder_bias, const c10::optional<at::Tensor>& squared_row_norms,
    double noise_level, const c10::optional<at::Tensor>& seed, bool cross_entropy, double contractive_weight,
    c10::optional<double> sparsity_target, double sparsity_weight, const c10::optional<at::Tensor>& weight_decay_term,
    double weight_decay) {
  return autoencoder_loss_from_parts(x, target, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
                                     squared_row_norms, noise_level, seed, cross_entropy, contractive_weight,
                                     sparsity_target, sparsity_weight, weight_decay_term, weight_decay,
                                     /*under_autocast=*/false);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CompositeExplicitAutograd, m) {
  m.impl("autoencoder_loss", &autoencoder_loss_composite);
  m.impl("weight_decay", &weight_decay_composite);
  m.impl("weight_decay_backward", &weight_decay_backward_composite);
  m.impl("masked_sigmoid_encoder", &masked_sigmoid_encoder_composite);
}

}  // namespace pyae
