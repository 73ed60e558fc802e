// Autocast for every pyae operator, on the CPU (bfloat16 by default) and CUDA (float16 or
// bfloat16). Each kernel casts its arguments by the policy below, then calls the operator
// again with the autocast keys excluded, so that neither the operator nor the ATen calls
// inside it (the encoder's matrix products) are cast a second time (torchvision's pattern).
//
// The policy, as PyTorch's own lists sort its operators:
//   - the encoders (sigmoid_encoder, masked_sigmoid_encoder) are bound by their matrix
//     product: they run in the autocast dtype, with float accumulation inside the fused
//     pass (like mm and linear);
//   - the reconstruction loss, the KL penalty and weight decay run in float32 (like
//     binary_cross_entropy_with_logits, kl_div and norm): the loss is float32;
//   - mask_noise and the backward operators run in the dtype they are given (a backward's
//     dtypes are those its forward ran in), with autocast off inside them;
//   - autoencoder_loss is the exception to "cast, then exclude": it calls its parts with
//     autocast still on, and each part casts its own by the rules above (the decoder's
//     product as at::linear's).
// float64 arguments are never cast (autocast's own rule).

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "ops.h"

namespace pyae {
namespace {

// Autocast stays off for everything this kernel calls.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

template <c10::DeviceType kDevice, typename T>
auto cast(at::ScalarType dtype, const T& argument) {
  return at::autocast::cached_cast(dtype, argument, kDevice);
}

template <c10::DeviceType kDevice>
at::ScalarType autocast_dtype() {
  return at::autocast::get_autocast_dtype(kDevice);
}

// Given squared row norms stay in float32, the accumulation dtype of the autocast dtypes
// (a float32 weight's norms, computed before its cast, are the more accurate ones).
template <c10::DeviceType kDevice>
EncoderOutputs sigmoid_encoder_autocast(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& squared_row_norms) {
  const NoAutocast no_autocast;
  const at::ScalarType dtype = autocast_dtype<kDevice>();
  return sigmoid_encoder(cast<kDevice>(dtype, x), cast<kDevice>(dtype, weight), cast<kDevice>(dtype, bias),
                         cast<kDevice>(at::kFloat, squared_row_norms));
}

template <c10::DeviceType kDevice>
EncoderOutputs masked_sigmoid_encoder_autocast(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, double q,
    const at::Tensor& seed, const c10::optional<at::Tensor>& squared_row_norms) {
  const NoAutocast no_autocast;
  const at::ScalarType dtype = autocast_dtype<kDevice>();
  return masked_sigmoid_encoder(cast<kDevice>(dtype, x), cast<kDevice>(dtype, weight), cast<kDevice>(dtype, bias), q,
                                seed, cast<kDevice>(at::kFloat, squared_row_norms));
}

template <c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor> sigmoid_reconstruction_loss_autocast(
    const at::Tensor& logits, const at::Tensor& target, bool cross_entropy) {
  const NoAutocast no_autocast;
  return sigmoid_reconstruction_loss(cast<kDevice>(at::kFloat, logits), cast<kDevice>(at::kFloat, target),
                                     cross_entropy);
}

template <c10::DeviceType kDevice>
at::Tensor kl_sparsity_autocast(const at::Tensor& mean_activation, double target) {
  const NoAutocast no_autocast;
  return kl_sparsity(cast<kDevice>(at::kFloat, mean_activation), target);
}

template <c10::DeviceType kDevice>
at::Tensor weight_decay_autocast(at::TensorList weights) {
  const NoAutocast no_autocast;
  return weight_decay(cast<kDevice>(at::kFloat, weights));
}

// The whole objective: its parts one by one, through the dispatcher with autocast still on,
// so that each part takes its own policy above (and the product of the decoder at::linear's),
// exactly as a module that calls them one by one; autograd records the parts.
template <c10::DeviceType kDevice>
AutoencoderLossOutputs autoencoder_loss_autocast(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& encoder_weight,
    const c10::optional<at::Tensor>& encoder_bias, const at::Tensor& decoder_weight,
    const c10::optional<at::Tensor>& decoder_bias, const c10::optional<at::Tensor>& squared_row_norms,
    double noise_level, const c10::optional<at::Tensor>& seed, bool cross_entropy, double contractive_weight,
    c10::optional<double> sparsity_target, double sparsity_weight, const c10::optional<at::Tensor>& weight_decay_term,
    double weight_decay) {
  return autoencoder_loss_from_parts(x, target, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
                                     squared_row_norms, noise_level, seed, cross_entropy, contractive_weight,
                                     sparsity_target, sparsity_weight, weight_decay_term, weight_decay,
                                     /*under_autocast=*/true);
}

// mask_noise and the backward operators: the same call with autocast off, whatever the
// operator (a boxed kernel).
void call_without_autocast(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const NoAutocast no_autocast;
  op.callBoxed(stack);
}

template <c10::DeviceType kDevice>
void register_autocast(torch::Library& m) {
  m.impl("sigmoid_encoder", &sigmoid_encoder_autocast<kDevice>);
  m.impl("masked_sigmoid_encoder", &masked_sigmoid_encoder_autocast<kDevice>);
  m.impl("sigmoid_reconstruction_loss", &sigmoid_reconstruction_loss_autocast<kDevice>);
  m.impl("kl_sparsity", &kl_sparsity_autocast<kDevice>);
  m.impl("weight_decay", &weight_decay_autocast<kDevice>);
  m.impl("autoencoder_loss", &autoencoder_loss_autocast<kDevice>);
  for (const char* name : {"mask_noise", "sigmoid_encoder_backward", "sigmoid_encoder_preactivation_backward",
                           "sigmoid_reconstruction_loss_backward", "kl_sparsity_backward", "weight_decay_backward",
                           "squared_row_norms"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&call_without_autocast>());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, AutocastCPU, m) {
  register_autocast<c10::DeviceType::CPU>(m);
}

TORCH_LIBRARY_IMPL(pyae, AutocastCUDA, m) {
  register_autocast<c10::DeviceType::CUDA>(m);
}

}  // namespace pyae
