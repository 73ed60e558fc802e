// Autograd for every pyae operator, for every device.
//
// First order: each forward operator's backward is itself an operator
// (sigmoid_encoder_backward, sigmoid_reconstruction_loss_backward, kl_sparsity_backward,
// weight_decay_backward; mask_noise is its own backward), called through the dispatcher, so
// torch.compile traces it into the backward graph like an aten op. Autograd is in C++ rather
// than torch.library.register_autograd because a Python autograd function adds to every call
// and every backward node an overhead that is much of a training step at MNIST sizes.
//
// Only what the backward kernels read is saved: x, weight, hidden and the forward's squared
// row norms for the encoder (the clean x and the seed, not the corrupted input, for the
// masked encoder); the reconstruction and the target for the decoder's loss; the mean
// activations for the sparsity penalty; the weights for weight decay; the seed for the
// masking noise. Outputs that did not reach the loss get undefined gradients
// (set_materialize_grads(false)), and the backward kernels skip their terms.
//
// autoencoder_loss, the whole objective, has no backward operator of its own: its one node
// chains its parts' backward operators (and the decoder's products), and saves what the
// parts save.
//
// Higher order: the backward operators have autograd kernels too. When a backward runs
// with create_graph=True (grad mode on and a differentiable input), each computes its
// gradients with the same formulas written as differentiable ATen ops (docs/design.md), so
// double backward, Hessian-vector products and gradient penalties are exact at any order.
// Otherwise (every ordinary backward) it runs the fused kernel. The fused kernels are the
// fast path; the ATen formulas trade speed for differentiability only when it is asked for.

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "checks.h"
#include "ops.h"

namespace pyae {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

c10::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// Whether a call must be recorded for a further derivative: grad mode is on and one of the
// tensors requires grad.
bool records_graph(std::initializer_list<c10::optional<at::Tensor>> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const auto& t : tensors) {
    if (t.has_value() && t->defined() && t->requires_grad()) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------
// The backward operators' formulas as differentiable ATen ops (the double backward).

// d = h (1 - h); delta = (g_h + g_rho / B) d + g_c (2/B) c d^2 (1 - 2h); grad_x = delta W,
// grad_W = delta^T x + g_c (2/B) diag(sum_i d_il^2) W, grad_b = sum_i delta_i. c = ||W_l||^2
// is recomputed from the weight, so that its dependence on W is differentiated too; or,
// when the forward was given c as an input, c is that input, and the last term of grad_W
// becomes grad_c = g_c (1/B) sum_i d_il^2.
EncoderGradients sigmoid_encoder_backward_differentiable(
    const c10::optional<at::Tensor>& grad_hidden, const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& hidden, const c10::optional<at::Tensor>& squared_row_norms, bool squared_row_norms_is_input,
    std::array<bool, 4> output_mask) {
  const double inv_batch = 1.0 / static_cast<double>(x.size(0));
  const at::Tensor d = hidden * (1 - hidden);
  at::Tensor delta;
  const auto add = [&delta](const at::Tensor& term) { delta = delta.defined() ? delta + term : term; };
  if (grad_hidden.has_value()) add(*grad_hidden * d);
  if (grad_mean_activation.has_value()) add(grad_mean_activation->unsqueeze(0) * d * inv_batch);
  at::Tensor row_scale;
  if (grad_contractive.has_value()) {
    const at::Tensor scale = grad_contractive->reshape({}) * (2.0 * inv_batch);
    const at::Tensor d2 = d * d;
    const at::Tensor c = squared_row_norms_is_input ? squared_row_norms->to(hidden.scalar_type())
                                                    : weight.square().sum(1);
    add(scale * c * d2 * (1 - 2 * hidden));
    row_scale = scale * d2.sum(0);
  }
  if (!delta.defined()) delta = at::zeros_like(hidden);
  const auto not_wanted = [&x] { return at::empty({0}, x.options()); };
  at::Tensor grad_weight = not_wanted();
  if (output_mask[1]) {
    grad_weight = at::mm(delta.t(), x);
    if (row_scale.defined() && !squared_row_norms_is_input) grad_weight = grad_weight + row_scale.unsqueeze(1) * weight;
  }
  at::Tensor grad_norms = not_wanted();
  if (output_mask[3] && squared_row_norms_is_input) {
    grad_norms = row_scale.defined() ? (row_scale * 0.5).to(squared_row_norms->scalar_type())
                                     : at::zeros_like(*squared_row_norms);
  }
  return {output_mask[0] ? at::mm(delta, weight) : not_wanted(), grad_weight,
          output_mask[2] ? delta.sum(0) : not_wanted(), grad_norms};
}

// grad_logits = g_r s + (g_loss / B) dloss, s = xhat (1 - xhat), dloss = xhat - x for the
// cross-entropy and 2 (xhat - x) s for the squared error.
at::Tensor sigmoid_reconstruction_loss_backward_differentiable(
    const c10::optional<at::Tensor>& grad_reconstruction, const c10::optional<at::Tensor>& grad_loss,
    const at::Tensor& reconstruction, const at::Tensor& target, bool cross_entropy) {
  const at::Tensor s = reconstruction * (1 - reconstruction);
  at::Tensor grad = at::zeros_like(reconstruction);
  if (grad_reconstruction.has_value()) grad = grad + *grad_reconstruction * s;
  if (grad_loss.has_value()) {
    const at::Tensor error = reconstruction - target;
    const at::Tensor dloss = cross_entropy ? error : 2 * error * s;
    grad = grad + grad_loss->reshape({}) * (1.0 / static_cast<double>(reconstruction.size(0))) * dloss;
  }
  return grad;
}

// grad * (-rho / r + (1 - rho) / (1 - r)) on the closed interval [eps, 1 - eps], 0 outside
// (the kernels' convention). The formula is evaluated at r clamped into the interval, so
// that no infinite branch reaches the derivative outside it.
at::Tensor kl_sparsity_backward_differentiable(const at::Tensor& grad, const at::Tensor& mean_activation, double target) {
  double eps = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mean_activation.scalar_type(), "pyae_kl_eps", [&] {
    eps = static_cast<double>(std::numeric_limits<scalar_t>::epsilon());
  });
  const at::Tensor inside = at::logical_and(mean_activation >= eps, mean_activation <= 1.0 - eps);
  const at::Tensor r = mean_activation.clamp(eps, 1.0 - eps);
  const at::Tensor slope = -target / r + (1.0 - target) / (1 - r);
  return grad.reshape({}) * at::where(inside, slope, at::zeros_like(slope));
}

std::vector<at::Tensor> weight_decay_backward_differentiable(const at::Tensor& grad, at::TensorList weights) {
  std::vector<at::Tensor> grads;
  grads.reserve(weights.size());
  for (const at::Tensor& weight : weights) grads.push_back(grad.reshape({}) * weight);
  return grads;
}

// ---------------------------------------------------------------------------------------
// Autograd kernels of the backward operators: the fused kernel, or the differentiable
// formulas when the call is to be differentiated again.

EncoderGradients sigmoid_encoder_backward_autograd(
    const c10::optional<at::Tensor>& grad_hidden, const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& hidden, const c10::optional<at::Tensor>& squared_row_norms, bool squared_row_norms_is_input,
    std::array<bool, 4> output_mask) {
  const c10::optional<at::Tensor> input_norms = squared_row_norms_is_input ? squared_row_norms : c10::nullopt;
  if (records_graph({grad_hidden, grad_mean_activation, grad_contractive, x, weight, hidden, input_norms})) {
    check_encoder_backward_inputs(grad_hidden, grad_mean_activation, grad_contractive, x, weight, hidden,
                                  squared_row_norms);
    TORCH_CHECK_VALUE(!squared_row_norms_is_input || squared_row_norms.has_value(),
                      "pyae: squared_row_norms_is_input needs the squared_row_norms the forward was given");
    return sigmoid_encoder_backward_differentiable(grad_hidden, grad_mean_activation, grad_contractive, x, weight,
                                                   hidden, squared_row_norms, squared_row_norms_is_input, output_mask);
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return detail::sigmoid_encoder_backward(grad_hidden, grad_mean_activation, grad_contractive, x, weight, hidden,
                                          squared_row_norms, squared_row_norms_is_input, output_mask);
}

// The fused pass alone has no differentiable formula here: a fused training step calls it
// without grad mode. A call that would be differentiated again is refused.
EncoderPreactivationGradients sigmoid_encoder_preactivation_backward_autograd(
    const c10::optional<at::Tensor>& grad_hidden, const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive, const at::Tensor& hidden,
    const c10::optional<at::Tensor>& squared_row_norms) {
  TORCH_CHECK(!records_graph({grad_hidden, grad_mean_activation, grad_contractive, hidden, squared_row_norms}),
              "pyae: sigmoid_encoder_preactivation_backward is not differentiable; use sigmoid_encoder_backward "
              "(or the forward operators' autograd) for higher derivatives");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return detail::sigmoid_encoder_preactivation_backward(grad_hidden, grad_mean_activation, grad_contractive, hidden,
                                                        squared_row_norms);
}

at::Tensor sigmoid_reconstruction_loss_backward_autograd(
    const c10::optional<at::Tensor>& grad_reconstruction, const c10::optional<at::Tensor>& grad_loss,
    const at::Tensor& reconstruction, const at::Tensor& target, bool cross_entropy) {
  if (records_graph({grad_reconstruction, grad_loss, reconstruction, target})) {
    check_reconstruction_loss_backward_inputs(grad_reconstruction, grad_loss, reconstruction, target);
    return sigmoid_reconstruction_loss_backward_differentiable(grad_reconstruction, grad_loss, reconstruction, target,
                                                               cross_entropy);
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return detail::sigmoid_reconstruction_loss_backward(grad_reconstruction, grad_loss, reconstruction, target,
                                                      cross_entropy);
}

at::Tensor kl_sparsity_backward_autograd(const at::Tensor& grad, const at::Tensor& mean_activation, double target) {
  if (records_graph({grad, mean_activation})) {
    check_kl_sparsity_backward_inputs(grad, mean_activation, target);
    return kl_sparsity_backward_differentiable(grad, mean_activation, target);
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return detail::kl_sparsity_backward(grad, mean_activation, target);
}

std::vector<at::Tensor> weight_decay_backward_autograd(const at::Tensor& grad, at::TensorList weights) {
  bool differentiable = records_graph({grad});
  for (const at::Tensor& weight : weights) differentiable = differentiable || records_graph({weight});
  if (differentiable) {
    check_weight_decay_backward_inputs(grad, weights);
    return weight_decay_backward_differentiable(grad, weights);
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return detail::weight_decay_backward(grad, weights);
}

// ---------------------------------------------------------------------------------------
// Autograd of the forward operators.

// The encoder's gradients with respect to (its input, weight, bias, squared_row_norms) for
// the upstream gradients `grads` of (hidden, mean_activation, contractive,
// squared_row_norms). needs_input_grad counts the tensor inputs that were given, so the
// index of each optional one depends on the ones before it: norms_index is that of
// squared_row_norms (the masked encoder's seed comes before it).
variable_list encoder_gradients(AutogradContext* ctx, const variable_list& grads, const at::Tensor& input,
                                const at::Tensor& weight, const at::Tensor& hidden,
                                const at::Tensor& squared_row_norms, int64_t norms_index) {
  const bool has_bias = ctx->saved_data["has_bias"].toBool();
  const bool norms_given = ctx->saved_data["norms_given"].toBool();
  const std::array<bool, 4> output_mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                           has_bias && ctx->needs_input_grad(2),
                                           norms_given && ctx->needs_input_grad(norms_index)};
  const auto call = [&] {
    return detail::sigmoid_encoder_backward(defined_or_none(grads[0]), defined_or_none(grads[1]),
                                            defined_or_none(grads[2]), input, weight, hidden, squared_row_norms,
                                            norms_given, output_mask);
  };
  // An ordinary backward (no create_graph) goes straight to the device kernel: the backward
  // operator's autograd kernel would only decide the same and dispatch again.
  EncoderGradients gradients;
  if (at::GradMode::is_enabled()) {
    gradients = call();
  } else {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    gradients = call();
  }
  auto [grad_input, grad_weight, grad_bias, grad_norms] = gradients;
  return {output_mask[0] ? grad_input : at::Tensor(), output_mask[1] ? grad_weight : at::Tensor(),
          output_mask[2] ? grad_bias : at::Tensor(), output_mask[3] ? grad_norms : at::Tensor()};
}

variable_list encoder_outputs(AutogradContext* ctx, const EncoderOutputs& outputs) {
  auto [hidden, mean_activation, contractive, squared_row_norms] = outputs;
  ctx->mark_non_differentiable({squared_row_norms});
  ctx->set_materialize_grads(false);
  return {hidden, mean_activation, contractive, squared_row_norms};
}

// The c that the forward used: the given squared_row_norms, or the forward's own (its fourth
// output); and whether it was given.
std::pair<at::Tensor, bool> used_norms(const c10::optional<at::Tensor>& given, const EncoderOutputs& outputs) {
  return given.has_value() ? std::make_pair(*given, true) : std::make_pair(std::get<3>(outputs), false);
}

class SigmoidEncoderFunction : public torch::autograd::Function<SigmoidEncoderFunction> {
 public:
  static variable_list forward(
      AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
      const c10::optional<at::Tensor>& squared_row_norms) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const EncoderOutputs outputs = sigmoid_encoder(x, weight, bias, squared_row_norms);
    const auto [norms, given] = used_norms(squared_row_norms, outputs);
    ctx->save_for_backward({x, weight, std::get<0>(outputs), norms});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["norms_given"] = given;
    return encoder_outputs(ctx, outputs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    return encoder_gradients(ctx, grads, saved[0], saved[1], saved[2], saved[3], has_bias ? 3 : 2);
  }
};

// The encoder of the masked input. The corrupted input lives only inside forward and inside
// backward (recomputed from x and the seed: one cheap elementwise pass, and only when the
// weight's gradient needs it), never between them.
class MaskedSigmoidEncoderFunction : public torch::autograd::Function<MaskedSigmoidEncoderFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, double q, const at::Tensor& seed,
                               const c10::optional<at::Tensor>& squared_row_norms) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const EncoderOutputs outputs = sigmoid_encoder(mask_noise(x, q, seed), weight, bias, squared_row_norms);
    const auto [norms, given] = used_norms(squared_row_norms, outputs);
    ctx->save_for_backward({x, weight, std::get<0>(outputs), norms, seed});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["norms_given"] = given;
    ctx->saved_data["q"] = q;
    return encoder_outputs(ctx, outputs);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const double q = ctx->saved_data["q"].toDouble();
    const at::Tensor& x = saved[0];
    const at::Tensor& seed = saved[4];
    // Only the weight's gradient reads the (corrupted) input; the others need its shape alone.
    const at::Tensor input = ctx->needs_input_grad(1) ? mask_noise(x, q, seed) : x;
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    variable_list result = encoder_gradients(ctx, grads, input, saved[1], saved[2], saved[3], has_bias ? 4 : 3);
    // d corrupted / d x is the mask itself: the input's gradient goes through the same mask.
    if (result[0].defined()) result[0] = mask_noise(result[0], q, seed);
    // In the forward's argument order: (x, weight, bias, q, seed, squared_row_norms).
    return {result[0], result[1], result[2], at::Tensor(), at::Tensor(), result[3]};
  }
};

class SigmoidReconstructionLossFunction : public torch::autograd::Function<SigmoidReconstructionLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target, bool cross_entropy) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [reconstruction, loss] = sigmoid_reconstruction_loss(logits, target, cross_entropy);
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({reconstruction, target});
    ctx->saved_data["cross_entropy"] = cross_entropy;
    return {reconstruction, loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    TORCH_CHECK(
        !ctx->needs_input_grad(1),
        "pyae.ops.sigmoid_reconstruction_loss treats its target as data and has no gradient for it; use "
        "pyae.functional.sigmoid_reconstruction, which falls back to torch ops for such targets");
    at::Tensor grad_logits;
    if (ctx->needs_input_grad(0)) {
      const auto saved = ctx->get_saved_variables();
      grad_logits = detail::sigmoid_reconstruction_loss_backward(
          defined_or_none(grads[0]), defined_or_none(grads[1]), saved[0], saved[1],
          ctx->saved_data["cross_entropy"].toBool());
    }
    return {grad_logits, at::Tensor(), at::Tensor()};
  }
};

class KlSparsityFunction : public torch::autograd::Function<KlSparsityFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& mean_activation, double target) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({mean_activation});
    ctx->saved_data["target"] = target;
    return kl_sparsity(mean_activation, target);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {detail::kl_sparsity_backward(grads[0], saved[0], ctx->saved_data["target"].toDouble()), at::Tensor()};
  }
};

class MaskNoiseFunction : public torch::autograd::Function<MaskNoiseFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double q, const at::Tensor& seed) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({seed});
    ctx->saved_data["q"] = q;
    return mask_noise(x, q, seed);
  }

  // The mask is a function of the seed and the index alone: the gradient is the incoming
  // gradient through the same mask, the same operator again (and so differentiable again).
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return {mask_noise(grads[0], ctx->saved_data["q"].toDouble(), saved[0]), at::Tensor(), at::Tensor()};
  }
};

class WeightDecayFunction : public torch::autograd::Function<WeightDecayFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, at::TensorList weights) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward(weights.vec());
    // A term that did not reach the differentiated output (autoencoder_loss's node passes an
    // undefined gradient on when its loss was not differentiated) gives no gradient, not zeros.
    ctx->set_materialize_grads(false);
    return weight_decay(weights);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto weights = ctx->get_saved_variables();
    if (!grads[0].defined()) return variable_list(weights.size());
    auto weight_grads = detail::weight_decay_backward(grads[0], weights);
    for (size_t i = 0; i < weight_grads.size(); ++i) {
      if (!ctx->needs_input_grad(i)) weight_grads[i] = at::Tensor();
    }
    return weight_grads;
  }
};

// The whole objective (autoencoder_loss) as one node: its backward chains the parts'
// backward operators, as the parts' nodes would one by one, without the per-node host work.
// Saved: what the parts save (x, target and the seed, the two weights, hidden, the
// reconstruction, the mean activations, c), never the logits or the corrupted input.
class AutoencoderLossFunction : public torch::autograd::Function<AutoencoderLossFunction> {
  // saved_data["flags"] bits and saved_data["numbers"] entries.
  enum Flag : int64_t {
    kEncoderBias = 1, kDecoderBias = 2, kNormsGiven = 4, kMasked = 8, kWeightDecayTerm = 16,
    kSparsity = 32, kCrossEntropy = 64
  };
  enum Number { kNoiseLevel, kContractiveWeight, kSparsityTarget, kSparsityWeight, kWeightDecay };

 public:
  static variable_list forward(
      AutogradContext* ctx, const at::Tensor& x, const at::Tensor& target, const at::Tensor& encoder_weight,
      const c10::optional<at::Tensor>& encoder_bias, const at::Tensor& decoder_weight,
      const c10::optional<at::Tensor>& decoder_bias, const c10::optional<at::Tensor>& squared_row_norms,
      double noise_level, const c10::optional<at::Tensor>& seed, bool cross_entropy, double contractive_weight,
      c10::optional<double> sparsity_target, double sparsity_weight,
      const c10::optional<at::Tensor>& weight_decay_term, double weight_decay) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, reconstruction, hidden, mean_activation, reconstruction_term, sparsity_term, contractive_term, norms] =
        autoencoder_loss(x, target, encoder_weight, encoder_bias, decoder_weight, decoder_bias, squared_row_norms,
                         noise_level, seed, cross_entropy, contractive_weight, sparsity_target, sparsity_weight,
                         weight_decay_term, weight_decay);
    ctx->save_for_backward({x, target, encoder_weight, decoder_weight, hidden, reconstruction, mean_activation,
                            squared_row_norms.has_value() ? *squared_row_norms : norms,
                            seed.has_value() ? *seed : at::Tensor()});
    ctx->saved_data["flags"] =
        (encoder_bias.has_value() ? kEncoderBias : 0) | (decoder_bias.has_value() ? kDecoderBias : 0) |
        (squared_row_norms.has_value() ? kNormsGiven : 0) | (seed.has_value() ? kMasked : 0) |
        (weight_decay_term.has_value() ? kWeightDecayTerm : 0) | (sparsity_target.has_value() ? kSparsity : 0) |
        (cross_entropy ? kCrossEntropy : 0);
    ctx->saved_data["numbers"] = std::vector<double>{noise_level, contractive_weight, sparsity_target.value_or(0.0),
                                                     sparsity_weight, weight_decay};
    ctx->mark_non_differentiable({norms});
    ctx->set_materialize_grads(false);
    return {loss, reconstruction, hidden, mean_activation, reconstruction_term, sparsity_term, contractive_term, norms};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t flags = ctx->saved_data["flags"].toInt();
    const auto has = [flags](Flag flag) { return (flags & flag) != 0; };
    const c10::List<double> numbers = ctx->saved_data["numbers"].toDoubleList();
    // needs_input_grad counts the tensor inputs that were given, in the forward's order.
    int64_t next = 0;
    const auto index_if = [&next](bool given) { return given ? next++ : int64_t{-1}; };
    const int64_t x_index = index_if(true), target_index = index_if(true), encoder_weight_index = index_if(true);
    const int64_t encoder_bias_index = index_if(has(kEncoderBias)), decoder_weight_index = index_if(true);
    const int64_t decoder_bias_index = index_if(has(kDecoderBias)), norms_index = index_if(has(kNormsGiven));
    index_if(has(kMasked));
    const int64_t weight_decay_term_index = index_if(has(kWeightDecayTerm));
    const auto needs = [ctx](int64_t index) { return index >= 0 && ctx->needs_input_grad(index); };

    // An ordinary backward (no create_graph) goes straight to the device kernels; with
    // create_graph, every call below records its own differentiable graph.
    c10::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();

    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &target = saved[1], &encoder_weight = saved[2], &decoder_weight = saved[3];
    const at::Tensor &hidden = saved[4], &reconstruction = saved[5], &mean_activation = saved[6];
    const at::Tensor &norms = saved[7], &seed = saved[8];
    const at::Tensor &grad_loss = grads[0], &grad_reconstruction = grads[1], &grad_hidden = grads[2];
    const at::Tensor &grad_mean_activation = grads[3], &grad_reconstruction_term = grads[4];
    const at::Tensor &grad_sparsity_term = grads[5], &grad_contractive_term = grads[6];

    // The terms' upstream gradients: the loss's, times the term's weight where the forward
    // added the term, plus the term's own (undefined: zero).
    const auto sum = [](const at::Tensor& a, const at::Tensor& b) {
      return !a.defined() ? b : !b.defined() ? a : a + b;
    };
    const auto weighted = [&grad_loss](double weight) {
      return grad_loss.defined() && weight != 0.0 ? grad_loss * weight : at::Tensor();
    };
    const at::Tensor grad_reconstruction_total = sum(grad_loss, grad_reconstruction_term);
    const at::Tensor grad_contractive = sum(weighted(numbers[kContractiveWeight]), grad_contractive_term);
    const at::Tensor grad_sparsity =
        has(kSparsity) ? sum(weighted(numbers[kSparsityWeight]), grad_sparsity_term) : at::Tensor();

    variable_list result(15);
    if (needs(weight_decay_term_index)) result[13] = weighted(numbers[kWeightDecay]);

    const bool want_encoder =
        needs(x_index) || needs(encoder_weight_index) || needs(encoder_bias_index) || needs(norms_index);
    const bool want_decoder = needs(decoder_weight_index) || needs(decoder_bias_index);
    // The decoder: the reconstruction loss's gradient at the logits, then F.linear's.
    at::Tensor grad_hidden_total = grad_hidden;
    const bool reconstruction_reached = grad_reconstruction_total.defined() || grad_reconstruction.defined();
    TORCH_CHECK(!reconstruction_reached || !needs(target_index),
                "pyae.ops.autoencoder_loss treats its target as data and has no gradient for it; use the operators "
                "one by one (pyae.functional), which fall back to torch ops for such targets");
    if (reconstruction_reached && (want_decoder || want_encoder)) {
      const at::Tensor grad_logits = detail::sigmoid_reconstruction_loss_backward(
          defined_or_none(grad_reconstruction), defined_or_none(grad_reconstruction_total), reconstruction, target,
          has(kCrossEntropy));
      // In the order of F.linear's own backward (AddmmBackward0: the input's gradient, then
      // the weight's, then the bias').
      if (want_encoder) grad_hidden_total = sum(at::mm(grad_logits, decoder_weight), grad_hidden);
      if (needs(decoder_weight_index)) result[4] = at::mm(grad_logits.t(), hidden);
      if (needs(decoder_bias_index)) result[5] = grad_logits.sum(0);
    }
    if (!want_encoder) return result;

    // The sparsity penalty's gradient at the mean activations, then the encoder's.
    at::Tensor grad_mean = grad_mean_activation;
    if (grad_sparsity.defined()) {
      grad_mean = sum(detail::kl_sparsity_backward(grad_sparsity, mean_activation, numbers[kSparsityTarget]),
                      grad_mean_activation);
    }
    if (!grad_hidden_total.defined() && !grad_mean.defined() && !grad_contractive.defined()) return result;
    const bool masked = has(kMasked);
    const double q = numbers[kNoiseLevel];
    const std::array<bool, 4> output_mask = {needs(x_index), needs(encoder_weight_index), needs(encoder_bias_index),
                                             needs(norms_index)};
    // Only the weight's gradient reads the (corrupted) input; the others need its shape alone.
    const at::Tensor input = masked && output_mask[1] ? mask_noise(x, q, seed) : x;
    auto [grad_x, grad_encoder_weight, grad_encoder_bias, grad_norms] = detail::sigmoid_encoder_backward(
        defined_or_none(grad_hidden_total), defined_or_none(grad_mean), defined_or_none(grad_contractive), input,
        encoder_weight, hidden, norms, has(kNormsGiven), output_mask);
    // d corrupted / d x is the mask itself.
    if (output_mask[0]) result[0] = masked ? mask_noise(grad_x, q, seed) : grad_x;
    if (output_mask[1]) result[2] = grad_encoder_weight;
    if (output_mask[2]) result[3] = grad_encoder_bias;
    if (output_mask[3]) result[6] = grad_norms;
    return result;
  }
};

EncoderOutputs to_encoder_outputs(const variable_list& outputs) {
  return {outputs[0], outputs[1], outputs[2], outputs[3]};
}

EncoderOutputs sigmoid_encoder_autograd(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& squared_row_norms) {
  return to_encoder_outputs(SigmoidEncoderFunction::apply(x, weight, bias, squared_row_norms));
}

EncoderOutputs masked_sigmoid_encoder_autograd(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, double q,
    const at::Tensor& seed, const c10::optional<at::Tensor>& squared_row_norms) {
  return to_encoder_outputs(MaskedSigmoidEncoderFunction::apply(x, weight, bias, q, seed, squared_row_norms));
}

std::tuple<at::Tensor, at::Tensor> sigmoid_reconstruction_loss_autograd(
    const at::Tensor& logits, const at::Tensor& target, bool cross_entropy) {
  auto outputs = SigmoidReconstructionLossFunction::apply(logits, target, cross_entropy);
  return {outputs[0], outputs[1]};
}

at::Tensor kl_sparsity_autograd(const at::Tensor& mean_activation, double target) {
  return KlSparsityFunction::apply(mean_activation, target);
}

at::Tensor mask_noise_autograd(const at::Tensor& x, double q, const at::Tensor& seed) {
  return MaskNoiseFunction::apply(x, q, seed);
}

AutoencoderLossOutputs autoencoder_loss_autograd(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& encoder_weight,
    const c10::optional<at::Tensor>& encoder_bias, const at::Tensor& decoder_weight,
    const c10::optional<at::Tensor>& decoder_bias, const c10::optional<at::Tensor>& squared_row_norms,
    double noise_level, const c10::optional<at::Tensor>& seed, bool cross_entropy, double contractive_weight,
    c10::optional<double> sparsity_target, double sparsity_weight, const c10::optional<at::Tensor>& weight_decay_term,
    double weight_decay) {
  auto outputs = AutoencoderLossFunction::apply(x, target, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
                                                squared_row_norms, noise_level, seed, cross_entropy,
                                                contractive_weight, sparsity_target, sparsity_weight,
                                                weight_decay_term, weight_decay);
  return {outputs[0], outputs[1], outputs[2], outputs[3], outputs[4], outputs[5], outputs[6], outputs[7]};
}

at::Tensor weight_decay_autograd(at::TensorList weights) {
  return WeightDecayFunction::apply(weights);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, Autograd, m) {
  m.impl("sigmoid_encoder", &sigmoid_encoder_autograd);
  m.impl("masked_sigmoid_encoder", &masked_sigmoid_encoder_autograd);
  m.impl("sigmoid_reconstruction_loss", &sigmoid_reconstruction_loss_autograd);
  m.impl("kl_sparsity", &kl_sparsity_autograd);
  m.impl("mask_noise", &mask_noise_autograd);
  m.impl("weight_decay", &weight_decay_autograd);
  m.impl("autoencoder_loss", &autoencoder_loss_autograd);
  m.impl("sigmoid_encoder_backward", &sigmoid_encoder_backward_autograd);
  m.impl("sigmoid_encoder_preactivation_backward", &sigmoid_encoder_preactivation_backward_autograd);
  m.impl("sigmoid_reconstruction_loss_backward", &sigmoid_reconstruction_loss_backward_autograd);
  m.impl("kl_sparsity_backward", &kl_sparsity_backward_autograd);
  m.impl("weight_decay_backward", &weight_decay_backward_autograd);
}

}  // namespace pyae
