// Every pyae operator, declared once: a C++ function per schema of pyae.cpp, defined there,
// that calls the operator through the dispatcher (so autocast, autograd and the device
// kernels all apply, as for a call from Python). Kernels and autograd call each other
// through these, never through the backends directly.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>
#include <vector>

namespace pyae {

// (hidden, mean_activation, contractive, squared_row_norms): see pyae.cpp's schemas.
using EncoderOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (grad_x, grad_weight, grad_bias, grad_squared_row_norms).
using EncoderGradients = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (grad_preactivation, grad_bias, grad_squared_row_norms).
using EncoderPreactivationGradients = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
// (loss, reconstruction, hidden, mean_activation, reconstruction_term, sparsity_term,
// contractive_term, squared_row_norms): see autoencoder_loss in pyae.cpp.
using AutoencoderLossOutputs =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// A schema's Tensor?[].
using OptionalTensorList = c10::List<c10::optional<at::Tensor>>;

// Entry i of a per-parameter list that may be empty (an empty list: no entry for anyone).
inline c10::optional<at::Tensor> entry_or_none(const OptionalTensorList& list, size_t i) {
  return list.empty() ? c10::nullopt : list.get(i);
}
inline at::Tensor entry_or_undefined(at::TensorList list, size_t i) {
  return list.empty() ? at::Tensor() : list[i];
}

EncoderOutputs sigmoid_encoder(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& squared_row_norms = c10::nullopt);

EncoderOutputs masked_sigmoid_encoder(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, double q,
    const at::Tensor& seed, const c10::optional<at::Tensor>& squared_row_norms = c10::nullopt);

std::tuple<at::Tensor, at::Tensor> sigmoid_reconstruction_loss(
    const at::Tensor& logits, const at::Tensor& target, bool cross_entropy);

at::Tensor kl_sparsity(const at::Tensor& mean_activation, double target);

at::Tensor mask_noise(const at::Tensor& x, double q, const at::Tensor& seed);

AutoencoderLossOutputs autoencoder_loss(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& encoder_weight,
    const c10::optional<at::Tensor>& encoder_bias, const at::Tensor& decoder_weight,
    const c10::optional<at::Tensor>& decoder_bias, const c10::optional<at::Tensor>& squared_row_norms,
    double noise_level, const c10::optional<at::Tensor>& seed, bool cross_entropy, double contractive_weight,
    c10::optional<double> sparsity_target, double sparsity_weight, const c10::optional<at::Tensor>& weight_decay_term,
    double weight_decay);

// The composition that autoencoder_loss is, part by part through the dispatcher
// (composite.cpp): its kernel below autograd, and under autocast (under_autocast: the
// arguments' dtypes may differ, each part casts its own) a differentiable composition whose
// parts each take their own autocast policy.
AutoencoderLossOutputs autoencoder_loss_from_parts(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& encoder_weight,
    const c10::optional<at::Tensor>& encoder_bias, const at::Tensor& decoder_weight,
    const c10::optional<at::Tensor>& decoder_bias, const c10::optional<at::Tensor>& squared_row_norms,
    double noise_level, const c10::optional<at::Tensor>& seed, bool cross_entropy, double contractive_weight,
    c10::optional<double> sparsity_target, double sparsity_weight, const c10::optional<at::Tensor>& weight_decay_term,
    double weight_decay, bool under_autocast);

at::Tensor weight_decay(at::TensorList weights);

at::Tensor squared_row_norms(const at::Tensor& weight);

void sgd_update_(
    at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
    const OptionalTensorList& squared_row_norm_grads, at::ArrayRef<double> weight_decays,
    at::TensorList squared_row_norms, double lr, double momentum, double dampening, bool nesterov, bool first_step);

void adam_update_(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
    at::TensorList steps, const OptionalTensorList& squared_row_norm_grads, at::ArrayRef<double> weight_decays,
    at::TensorList squared_row_norms, double lr, double beta1, double beta2, double eps);

// The backward operators: private to the library (autograd.cpp calls them), as torchvision
// keeps its own.
namespace detail {

EncoderGradients sigmoid_encoder_backward(
    const c10::optional<at::Tensor>& grad_hidden, const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& hidden, const c10::optional<at::Tensor>& squared_row_norms, bool squared_row_norms_is_input,
    std::array<bool, 4> output_mask);

EncoderPreactivationGradients sigmoid_encoder_preactivation_backward(
    const c10::optional<at::Tensor>& grad_hidden, const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive, const at::Tensor& hidden,
    const c10::optional<at::Tensor>& squared_row_norms);

at::Tensor sigmoid_reconstruction_loss_backward(
    const c10::optional<at::Tensor>& grad_reconstruction, const c10::optional<at::Tensor>& grad_loss,
    const at::Tensor& reconstruction, const at::Tensor& target, bool cross_entropy);

at::Tensor kl_sparsity_backward(const at::Tensor& grad, const at::Tensor& mean_activation, double target);

std::vector<at::Tensor> weight_decay_backward(const at::Tensor& grad, at::TensorList weights);

}  // namespace detail
}  // namespace pyae
