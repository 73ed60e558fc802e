// Autograd for pyae's forward operators, for every device. Each backward is itself an
// operator (sigmoid_encoder_backward, sigmoid_reconstruction_loss_backward,
// kl_sparsity_backward, weight_decay_backward; mask_noise is its own backward), called
// through the dispatcher, so torch.compile traces it into the backward graph like an aten op.
//
// Why C++ rather than torch.library.register_autograd: at MNIST sizes on a GPU a training
// step is bound by host overhead, and a Python autograd function costs tens of microseconds
// per call and per backward node (on the CPU a tiny regularized step took 231 us of host time
// with the Python registration, 182 us with this file).
//
// Only what the backward kernels read is saved: x, weight and hidden for the encoder (the
// clean x and the seed, not the corrupted input, for the masked encoder); the
// reconstruction and the target for the decoder's loss; the mean activations for the
// sparsity penalty; the weights for weight decay; the seed for the masking noise. Outputs
// that did not reach the loss get undefined gradients (set_materialize_grads(false)), and
// the backward kernels skip their terms instead of reading zeros.

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <tuple>

namespace pyae {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

c10::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// The operators the encoder's autograd calls, looked up once.
using EncoderOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

const auto& encoder_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyae::sigmoid_encoder", "")
          .typed<EncoderOutputs(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&)>();
  return op;
}

const auto& encoder_backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pyae::sigmoid_encoder_backward", "")
          .typed<EncoderOutputs(const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, std::array<bool, 3>)>();
  return op;
}

const auto& mask_noise_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyae::mask_noise", "")
                             .typed<at::Tensor(const at::Tensor&, double, const at::Tensor&)>();
  return op;
}

// The encoder's gradients with respect to (its input, weight, bias) for the upstream
// gradients `grads` of (hidden, mean_activation, contractive); needs_input_grad counts tensor
// inputs only, so without a bias there is no index 2.
variable_list encoder_gradients(AutogradContext* ctx, const variable_list& grads, const at::Tensor& input,
                                const at::Tensor& weight, const at::Tensor& hidden, bool has_bias) {
  const std::array<bool, 3> output_mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                           has_bias && ctx->needs_input_grad(2)};
  auto [grad_input, grad_weight, grad_bias] =
      encoder_backward_op().call(defined_or_none(grads[0]), defined_or_none(grads[1]), defined_or_none(grads[2]),
                                 input, weight, hidden, output_mask);
  return {output_mask[0] ? grad_input : at::Tensor(), output_mask[1] ? grad_weight : at::Tensor(),
          output_mask[2] ? grad_bias : at::Tensor()};
}

class SigmoidEncoderFunction : public torch::autograd::Function<SigmoidEncoderFunction> {
 public:
  static variable_list forward(
      AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [hidden, mean_activation, contractive] = encoder_op().call(x, weight, bias);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, weight, hidden});
    ctx->saved_data["has_bias"] = bias.has_value();
    return {hidden, mean_activation, contractive};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return encoder_gradients(ctx, grads, saved[0], saved[1], saved[2], ctx->saved_data["has_bias"].toBool());
  }
};

// The encoder of the masked input. The corrupted input lives only inside forward and inside
// backward (recomputed from x and the seed: one cheap elementwise pass), never between them.
class MaskedSigmoidEncoderFunction : public torch::autograd::Function<MaskedSigmoidEncoderFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, double q, const at::Tensor& seed) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [hidden, mean_activation, contractive] = encoder_op().call(mask_noise_op().call(x, q, seed), weight, bias);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, weight, hidden, seed});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["q"] = q;
    return {hidden, mean_activation, contractive};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double q = ctx->saved_data["q"].toDouble();
    const at::Tensor& x = saved[0];
    const at::Tensor& seed = saved[3];
    variable_list result = encoder_gradients(ctx, grads, mask_noise_op().call(x, q, seed), saved[1], saved[2],
                                             ctx->saved_data["has_bias"].toBool());
    // d corrupted / d x is the mask itself: the input's gradient goes through the same mask.
    if (result[0].defined()) result[0] = mask_noise_op().call(result[0], q, seed);
    result.push_back(at::Tensor());  // q
    result.push_back(at::Tensor());  // seed
    return result;
  }
};

class SigmoidReconstructionLossFunction : public torch::autograd::Function<SigmoidReconstructionLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target, bool cross_entropy) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("pyae::sigmoid_reconstruction_loss", "")
                               .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, bool)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [reconstruction, loss] = op.call(logits, target, cross_entropy);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({reconstruction, target});
    ctx->saved_data["cross_entropy"] = cross_entropy;
    return {reconstruction, loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("pyae::sigmoid_reconstruction_loss_backward", "")
                               .typed<at::Tensor(const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                                 const at::Tensor&, const at::Tensor&, bool)>();
    TORCH_CHECK(
        !ctx->needs_input_grad(1),
        "pyae.ops.sigmoid_reconstruction_loss treats its target as data and has no gradient for it; use "
        "pyae.functional.sigmoid_reconstruction, which falls back to torch ops for such targets");
    at::Tensor grad_logits;
    if (ctx->needs_input_grad(0)) {
      const auto saved = ctx->get_saved_variables();
      grad_logits = op.call(defined_or_none(grads[0]), defined_or_none(grads[1]), saved[0], saved[1],
                            ctx->saved_data["cross_entropy"].toBool());
    }
    return {grad_logits, at::Tensor(), at::Tensor()};
  }
};

class KlSparsityFunction : public torch::autograd::Function<KlSparsityFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mean_activation, double target) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("pyae::kl_sparsity", "")
                               .typed<at::Tensor(const at::Tensor&, double)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({mean_activation});
    ctx->saved_data["target"] = target;
    return op.call(mean_activation, target);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("pyae::kl_sparsity_backward", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double)>();
    const auto saved = ctx->get_saved_variables();
    return {op.call(grads[0], saved[0], ctx->saved_data["target"].toDouble()), at::Tensor()};
  }
};

class MaskNoiseFunction : public torch::autograd::Function<MaskNoiseFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double q, const at::Tensor& seed) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({seed});
    ctx->saved_data["q"] = q;
    return mask_noise_op().call(x, q, seed);
  }

  // The mask is a function of the seed and the index alone: the gradient is the incoming
  // gradient through the same mask, the same operator again.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {mask_noise_op().call(grads[0], ctx->saved_data["q"].toDouble(), saved[0]), at::Tensor(), at::Tensor()};
  }
};

class WeightDecayFunction : public torch::autograd::Function<WeightDecayFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList weights) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("pyae::weight_decay", "")
                               .typed<at::Tensor(at::TensorList)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward(weights.vec());
    return op.call(weights);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("pyae::weight_decay_backward", "")
                               .typed<std::vector<at::Tensor>(const at::Tensor&, at::TensorList)>();
    const auto weights = ctx->get_saved_variables();
    auto weight_grads = op.call(grads[0], weights);
    for (size_t i = 0; i < weight_grads.size(); ++i) {
      if (!ctx->needs_input_grad(i)) weight_grads[i] = at::Tensor();
    }
    return weight_grads;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> sigmoid_encoder_autograd(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  auto outputs = SigmoidEncoderFunction::apply(x, weight, bias);
  return {outputs[0], outputs[1], outputs[2]};
}

std::tuple<at::Tensor, at::Tensor> sigmoid_reconstruction_loss_autograd(
    const at::Tensor& logits, const at::Tensor& target, bool cross_entropy) {
  auto outputs = SigmoidReconstructionLossFunction::apply(logits, target, cross_entropy);
  return {outputs[0], outputs[1]};
}

at::Tensor kl_sparsity_autograd(const at::Tensor& mean_activation, double target) {
  return KlSparsityFunction::apply(mean_activation, target);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_sigmoid_encoder_autograd(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, double q,
    const at::Tensor& seed) {
  auto outputs = MaskedSigmoidEncoderFunction::apply(x, weight, bias, q, seed);
  return {outputs[0], outputs[1], outputs[2]};
}

at::Tensor mask_noise_autograd(const at::Tensor& x, double q, const at::Tensor& seed) {
  return MaskNoiseFunction::apply(x, q, seed);
}

at::Tensor weight_decay_autograd(at::TensorList weights) {
  return WeightDecayFunction::apply(weights);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, Autograd, m) {
  m.impl("sigmoid_encoder", &sigmoid_encoder_autograd);
  m.impl("sigmoid_reconstruction_loss", &sigmoid_reconstruction_loss_autograd);
  m.impl("kl_sparsity", &kl_sparsity_autograd);
  m.impl("mask_noise", &mask_noise_autograd);
  m.impl("masked_sigmoid_encoder", &masked_sigmoid_encoder_autograd);
  m.impl("weight_decay", &weight_decay_autograd);
}

}  // namespace pyae
