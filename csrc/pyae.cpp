// The pyae operator library: every schema lives here, with the C++ entry point of each
// operator (ops.h); the kernels are in cpu/ and cuda/ (the device-generic ones in
// composite.cpp), autograd in autograd.cpp, autocast in autocast.cpp.
//
// Conventions (docs/design.md): x is (B, n), weight is (k, n) in the nn.Linear layout, bias is (k,).
//   a = x @ weight.T + bias,  h = sigmoid(a),  d = h * (1 - h),  c_l = ||weight_l||^2
//   mean_activation_l = (1/B) sum_i h_il
//   contractive       = (1/B) sum_i sum_l d_il^2 c_l      (mean squared Frobenius norm of dh/dx)
//   kl_sparsity       = sum_l KL(rho || mean_activation_l)  (Bernoulli KL against the target rho)
//   weight_decay      = (1/2) sum_W ||W||^2                   (gradient: W)
// The fused optimizer updates (sgd_update_, adam_update_) follow torch.optim.SGD and Adam.

#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops.h"

extern "C" {
// `import pyae._C` loads this shared object, whose static initializers register the
// operators below. The module itself exposes nothing.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "pyae's compiled operators; use them through torch.ops.pyae or pyae.ops",
      -1,    // no per-module state
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(pyae, m) {
  // Forward of the sigmoid encoder with the statistics of both regularizers, in one call:
  // one matrix product (bias folded in) and one fused pass over (B, k). The fourth output,
  // c = ||W_l||^2 (k,) in the accumulation dtype (float for float16/bfloat16), is what the
  // contractive term was computed with: the backward reuses it instead of reading the weight
  // once more. It is not differentiable (like native_layer_norm's mean and rstd).
  //
  // squared_row_norms may instead be given, (k,) in the accumulation dtype: c is then an
  // input of its own, read instead of the weight's rows (no pass over the weight), and the
  // contractive term's dependence on c reaches c's gradient instead of the weight's. This is
  // how a fused optimizer update (sgd_update_, adam_update_) that computes the next step's
  // norms while it writes the weight, and applies the chain rule through c in the same pass,
  // spares a training step both of the term's passes over the weight. The fourth output is
  // then an empty (0,) tensor.
  m.def(
      "sigmoid_encoder(Tensor x, Tensor weight, Tensor? bias, Tensor? squared_row_norms=None) -> "
      "(Tensor hidden, Tensor mean_activation, Tensor contractive, Tensor squared_row_norms)");
  // Its backward. Any upstream gradient may be None (that output was unused). A grad_hidden
  // broadcast along the batch (stride 0, as from hidden.sum()) is read as one row, never
  // materialized. squared_row_norms is the c the forward used, or None to recompute it from
  // the weight; squared_row_norms_is_input says whether the forward was given it (its share
  // of the gradient then goes to grad_squared_row_norms, not to grad_weight). output_mask
  // says which of (grad_x, grad_weight, grad_bias, grad_squared_row_norms) are wanted; an
  // unwanted one comes back as an empty tensor of shape (0,) and costs nothing.
  m.def(
      "sigmoid_encoder_backward(Tensor? grad_hidden, Tensor? grad_mean_activation, "
      "Tensor? grad_contractive, Tensor x, Tensor weight, Tensor hidden, Tensor? squared_row_norms, "
      "bool squared_row_norms_is_input, bool[4] output_mask) -> "
      "(Tensor grad_x, Tensor grad_weight, Tensor grad_bias, Tensor grad_squared_row_norms)");

  // The fused pass of that backward alone, without its products: the gradient at the
  // pre-activations a, delta (B, k), its column sums (the bias' gradient) and the gradient
  // of the given c, d loss / d c_l (an empty (0,) tensor when c is not given). For a caller
  // that makes the products itself: a fused training step accumulates delta.T @ x straight
  // into the optimizer's momentum buffer (pyae/optim.py). c must be given with
  // grad_contractive (there is no weight to compute it from). Not differentiable.
  m.def(
      "sigmoid_encoder_preactivation_backward(Tensor? grad_hidden, Tensor? grad_mean_activation, "
      "Tensor? grad_contractive, Tensor hidden, Tensor? squared_row_norms) -> "
      "(Tensor grad_preactivation, Tensor grad_bias, Tensor grad_squared_row_norms)");

  // The sigmoid decoder's activation fused with its reconstruction loss, from the logits
  // z = h @ W'.T + c: reconstruction = sigmoid(z), and the loss summed over the features and
  // averaged over the batch, cross-entropy (computed stably from z) or squared error. One
  // pass over (B, n); the backward needs only the reconstruction and the target.
  m.def(
      "sigmoid_reconstruction_loss(Tensor logits, Tensor target, bool cross_entropy) -> "
      "(Tensor reconstruction, Tensor loss)");
  // Its backward: the gradient with respect to the logits (the target is data and gets
  // none). Either upstream gradient may be None.
  m.def(
      "sigmoid_reconstruction_loss_backward(Tensor? grad_reconstruction, Tensor? grad_loss, "
      "Tensor reconstruction, Tensor target, bool cross_entropy) -> Tensor grad_logits");

  // The sparsity penalty of the mean activations: sum_l KL(target || mean_activation_l) for
  // Bernoulli variables, target in (0, 1). mean_activation (any shape; usually (k,)) is
  // clamped into [eps, 1 - eps], eps the machine epsilon of its dtype, so saturated units
  // give a large but finite penalty; the gradient is the penalty's slope on the closed
  // interval and 0 outside it. One launch each way instead of a dozen small ops.
  m.def("kl_sparsity(Tensor mean_activation, float target) -> Tensor");
  // Its backward: grad * (-target / rho + (1 - target) / (1 - rho)) inside the interval.
  m.def("kl_sparsity_backward(Tensor grad, Tensor mean_activation, float target) -> Tensor grad_mean_activation");

  // Masking noise, the denoising autoencoder's corruption: each element of x is set to 0 with
  // probability q, independently, by a Philox4x32-10 word per element (kernel_math.h) drawn
  // from the int64 scalar seed (a tensor on x's device, read there: no host synchronization)
  // and the element's row-major index. One pass, the same mask on every device and thread
  // count; the backward is the same operator applied to the gradient (same seed, same mask).
  m.def("mask_noise(Tensor x, float q, Tensor seed) -> Tensor");
  // The sigmoid encoder of mask_noise(x, q, seed): the denoising autoencoder's corrupted
  // encoder. Its autograd keeps x (the clean input, kept anyway) and the seed rather than the
  // corrupted input, and recomputes the mask in the backward: a training step then keeps
  // exactly what an uncorrupted one keeps.
  m.def(
      "masked_sigmoid_encoder(Tensor x, Tensor weight, Tensor? bias, float q, Tensor seed, "
      "Tensor? squared_row_norms=None) -> "
      "(Tensor hidden, Tensor mean_activation, Tensor contractive, Tensor squared_row_norms)");

  // A one-hidden-layer autoencoder's whole training objective, the composition of the
  // operators above, as one operator with one autograd node: at small batches a step is
  // bound by the host work per operator and per autograd node, not by the arithmetic.
  //   hidden = sigmoid_encoder(x, encoder_weight, encoder_bias, squared_row_norms), of
  //            mask_noise(x, noise_level, seed) when seed is given (masking noise, the mask
  //            recomputed in the backward);
  //   reconstruction, reconstruction_term = sigmoid_reconstruction_loss(
  //            hidden @ decoder_weight.T + decoder_bias, target, cross_entropy);
  //   sparsity_term = kl_sparsity(mean_activation, sparsity_target) when a target is given
  //            (an empty (0,) tensor otherwise); contractive_term is the encoder's;
  //   loss = reconstruction_term + weight_decay * weight_decay_term + sparsity_weight *
  //          sparsity_term + contractive_weight * contractive_term, each penalty added only
  //          when its weight is nonzero (and given), in this order.
  // weight_decay_term is a value computed elsewhere (weight_decay(), or the optimizer's
  // norms): its gradient is weight_decay times the loss's. The target is data (no gradient).
  // squared_row_norms out: as the encoder's fourth output. The same numbers as calling the
  // operators one by one; under autocast it is that composition, each part cast by its own
  // policy (autocast.cpp).
  m.def(
      "autoencoder_loss(Tensor x, Tensor target, Tensor encoder_weight, Tensor? encoder_bias, "
      "Tensor decoder_weight, Tensor? decoder_bias, Tensor? squared_row_norms, float noise_level, Tensor? seed, "
      "bool cross_entropy, float contractive_weight, float? sparsity_target, float sparsity_weight, "
      "Tensor? weight_decay_term, float weight_decay) -> "
      "(Tensor loss, Tensor reconstruction, Tensor hidden, Tensor mean_activation, Tensor reconstruction_term, "
      "Tensor sparsity_term, Tensor contractive_term, Tensor squared_row_norms)");

  // Weight decay: (1/2) sum over the given weight matrices of ||W||^2 (never biases), whose
  // gradient is exactly W (times the upstream gradient). One read of each weight forward and
  // one pass backward: torch ops' pow(2).sum() or dot(w, w) make weight-sized temporaries and
  // (for dot) two products where one suffices. Device-generic (csrc/composite.cpp).
  m.def("weight_decay(Tensor[] weights) -> Tensor");
  // Its backward: grad * W for each weight.
  m.def("weight_decay_backward(Tensor grad, Tensor[] weights) -> Tensor[]");

  // c_l = ||weight_l||^2 of a (k, n) weight, (k,) in the accumulation dtype: the encoder's
  // squared_row_norms, to be given to it.
  m.def("squared_row_norms(Tensor weight) -> Tensor");

  // Fused optimizer updates: one pass over each parameter that applies the whole update in
  // place, with torch.optim's arithmetic (update_math.h), and takes in the same pass what a
  // regularized autoencoder's weight-side terms need (pyae/optim.py):
  //   - the gradient g = grad + weight_decays[i] * p, plus 2 * r_l * p_l for every row l when
  //     squared_row_norm_grads[i] = r is given (the chain rule through c_l = ||p_l||^2, the
  //     share of the gradient that the encoder leaves to its squared_row_norms input);
  //   - the squared row norms of the updated parameter written into squared_row_norms[i]
  //     when that is a (size(0),) tensor (an empty (0,) tensor: none): the next step's c, at
  //     no extra pass over memory.
  // Lists hold one entry per parameter (squared_row_norm_grads, squared_row_norms and
  // momentum_buffers may be empty: none at all). Every tensor of an entry has the
  // parameter's dtype, device and shape and is contiguous; r and the norms are (size(0),)
  // in the accumulation dtype, for parameters of 2 or more dimensions (rows along dim 0).
  //
  // SGD: with momentum, buf = g on the first step, else momentum * buf + (1 - dampening) * g;
  // the step is buf, or g + momentum * buf with nesterov; p -= lr * step. grads may be
  // empty with momentum (no nesterov): the buffers then already hold the gradient's share
  // (momentum * buf + (1 - dampening) * grad, or grad on the first step: a fused training
  // step accumulated its products there), and the update adds the decay terms' share.
  m.def(
      "sgd_update_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "Tensor?[] squared_row_norm_grads, float[] weight_decays, Tensor(c!)[] squared_row_norms, float lr, "
      "float momentum, float dampening, bool nesterov, bool first_step) -> ()");
  // Adam (L2 weight decay and no amsgrad, as torch.optim.Adam's defaults): m += (1 - beta1) (g - m),
  // v = beta2 v + (1 - beta2) g^2, p -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)
  // with t = steps[i], a float32 scalar tensor on the parameter's device that the caller has
  // already advanced (read on the device: no host synchronization).
  m.def(
      "adam_update_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor[] steps, Tensor?[] squared_row_norm_grads, float[] weight_decays, Tensor(d!)[] squared_row_norms, "
      "float lr, float beta1, float beta2, float eps) -> ()");
}

// The C++ entry points of ops.h (torchvision's pattern): each looks its operator up once,
// typed by its own declaration, and calls it through the dispatcher.
namespace pyae {

#define PYAE_OPERATOR(name) \
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("pyae::" #name, "").typed<decltype(name)>()

EncoderOutputs sigmoid_encoder(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& squared_row_norms) {
  PYAE_OPERATOR(sigmoid_encoder);
  return op.call(x, weight, bias, squared_row_norms);
}

EncoderOutputs masked_sigmoid_encoder(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, double q,
    const at::Tensor& seed, const c10::optional<at::Tensor>& squared_row_norms) {
  PYAE_OPERATOR(masked_sigmoid_encoder);
  return op.call(x, weight, bias, q, seed, squared_row_norms);
}

std::tuple<at::Tensor, at::Tensor> sigmoid_reconstruction_loss(
    const at::Tensor& logits, const at::Tensor& target, bool cross_entropy) {
  PYAE_OPERATOR(sigmoid_reconstruction_loss);
  return op.call(logits, target, cross_entropy);
}

at::Tensor kl_sparsity(const at::Tensor& mean_activation, double target) {
  PYAE_OPERATOR(kl_sparsity);
  return op.call(mean_activation, target);
}

at::Tensor mask_noise(const at::Tensor& x, double q, const at::Tensor& seed) {
  PYAE_OPERATOR(mask_noise);
  return op.call(x, q, seed);
}

AutoencoderLossOutputs autoencoder_loss(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& encoder_weight,
    const c10::optional<at::Tensor>& encoder_bias, const at::Tensor& decoder_weight,
    const c10::optional<at::Tensor>& decoder_bias, const c10::optional<at::Tensor>& squared_row_norms,
    double noise_level, const c10::optional<at::Tensor>& seed, bool cross_entropy, double contractive_weight,
    c10::optional<double> sparsity_target, double sparsity_weight, const c10::optional<at::Tensor>& weight_decay_term,
    double weight_decay) {
  PYAE_OPERATOR(autoencoder_loss);
  return op.call(x, target, encoder_weight, encoder_bias, decoder_weight, decoder_bias, squared_row_norms, noise_level,
                 seed, cross_entropy, contractive_weight, sparsity_target, sparsity_weight, weight_decay_term,
                 weight_decay);
}

at::Tensor weight_decay(at::TensorList weights) {
  PYAE_OPERATOR(weight_decay);
  return op.call(weights);
}

at::Tensor squared_row_norms(const at::Tensor& weight) {
  PYAE_OPERATOR(squared_row_norms);
  return op.call(weight);
}

void sgd_update_(
    at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
    const OptionalTensorList& squared_row_norm_grads, at::ArrayRef<double> weight_decays,
    at::TensorList squared_row_norms, double lr, double momentum, double dampening, bool nesterov, bool first_step) {
  PYAE_OPERATOR(sgd_update_);
  op.call(params, grads, momentum_buffers, squared_row_norm_grads, weight_decays, squared_row_norms, lr, momentum,
          dampening, nesterov, first_step);
}

void adam_update_(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
    at::TensorList steps, const OptionalTensorList& squared_row_norm_grads, at::ArrayRef<double> weight_decays,
    at::TensorList squared_row_norms, double lr, double beta1, double beta2, double eps) {
  PYAE_OPERATOR(adam_update_);
  op.call(params, grads, exp_avgs, exp_avg_sqs, steps, squared_row_norm_grads, weight_decays, squared_row_norms, lr,
          beta1, beta2, eps);
}

namespace detail {

EncoderGradients sigmoid_encoder_backward(
    const c10::optional<at::Tensor>& grad_hidden, const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& hidden, const c10::optional<at::Tensor>& squared_row_norms, bool squared_row_norms_is_input,
    std::array<bool, 4> output_mask) {
  PYAE_OPERATOR(sigmoid_encoder_backward);
  return op.call(grad_hidden, grad_mean_activation, grad_contractive, x, weight, hidden, squared_row_norms,
                 squared_row_norms_is_input, output_mask);
}

EncoderPreactivationGradients sigmoid_encoder_preactivation_backward(
    const c10::optional<at::Tensor>& grad_hidden, const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive, const at::Tensor& hidden,
    const c10::optional<at::Tensor>& squared_row_norms) {
  PYAE_OPERATOR(sigmoid_encoder_preactivation_backward);
  return op.call(grad_hidden, grad_mean_activation, grad_contractive, hidden, squared_row_norms);
}

at::Tensor sigmoid_reconstruction_loss_backward(
    const c10::optional<at::Tensor>& grad_reconstruction, const c10::optional<at::Tensor>& grad_loss,
    const at::Tensor& reconstruction, const at::Tensor& target, bool cross_entropy) {
  PYAE_OPERATOR(sigmoid_reconstruction_loss_backward);
  return op.call(grad_reconstruction, grad_loss, reconstruction, target, cross_entropy);
}

at::Tensor kl_sparsity_backward(const at::Tensor& grad, const at::Tensor& mean_activation, double target) {
  PYAE_OPERATOR(kl_sparsity_backward);
  return op.call(grad, mean_activation, target);
}

std::vector<at::Tensor> weight_decay_backward(const at::Tensor& grad, at::TensorList weights) {
  PYAE_OPERATOR(weight_decay_backward);
  return op.call(grad, weights);
}

}  // namespace detail

#undef PYAE_OPERATOR

}  // namespace pyae
