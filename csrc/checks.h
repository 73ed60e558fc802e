// Argument checks shared by every backend. They raise ValueError or TypeError in Python
// (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE) and name the offending argument.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <initializer_list>
#include <limits>
#include <string>
#include <utility>

#include <ATen/core/List.h>

namespace pyae {

// The four dtypes every kernel has (float8 and the other floating types are refused here,
// not deep inside a dtype dispatch).
inline void check_floating(const at::Tensor& t, const char* name) {
  const at::ScalarType dtype = t.scalar_type();
  TORCH_CHECK_TYPE(
      dtype == at::kDouble || dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, "pyae: ", name,
      " must be a floating-point tensor (float64, float32, float16 or bfloat16), got ", dtype);
}

inline void check_same_dtype_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_TYPE(
      t.scalar_type() == ref.scalar_type(), "pyae: ", name, " has dtype ", t.scalar_type(), " but ", ref_name,
      " has dtype ", ref.scalar_type(), "; they must match");
  TORCH_CHECK_VALUE(
      t.device() == ref.device(), "pyae: ", name, " is on ", t.device(), " but ", ref_name, " is on ", ref.device(),
      "; they must be on the same device");
}

inline void check_encoder_inputs(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  check_floating(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 2, "pyae: x must be 2-D (batch, features), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(0) > 0, "pyae: x must hold at least one row: the batch mean of an empty batch is undefined");
  TORCH_CHECK_VALUE(weight.dim() == 2, "pyae: weight must be 2-D (hidden, features), got shape ", weight.sizes());
  check_same_dtype_device(weight, "weight", x, "x");
  TORCH_CHECK_VALUE(
      weight.size(1) == x.size(1), "pyae: x has ", x.size(1), " features but weight expects ", weight.size(1),
      " (weight is (hidden, features) = ", weight.sizes(), ")");
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    check_same_dtype_device(b, "bias", x, "x");
    TORCH_CHECK_VALUE(
        b.dim() == 1 && b.size(0) == weight.size(0), "pyae: bias must have shape (", weight.size(0),
        ",) to match weight's ", weight.size(0), " hidden units, got ", b.sizes());
  }
}

// c_l = ||weight_l||^2 given with a (k, n) weight: (k,) in the accumulation dtype of the
// weight's, on its device.
// c = ||W_l||^2: (rows,) in the accumulation dtype of reference (the weight, or the hidden
// activations whose columns are the weight's rows), on its device.
inline void check_squared_row_norms(const at::Tensor& squared_row_norms, const at::Tensor& reference,
                                    const char* reference_name, int64_t rows) {
  const at::ScalarType accumulation = at::toOpMathType(reference.scalar_type());
  TORCH_CHECK_TYPE(
      squared_row_norms.scalar_type() == accumulation, "pyae: squared_row_norms must have dtype ", accumulation,
      " (the accumulation dtype of the ", reference_name, "'s ", reference.scalar_type(), "), got ",
      squared_row_norms.scalar_type());
  TORCH_CHECK_VALUE(
      squared_row_norms.device() == reference.device(), "pyae: squared_row_norms is on ", squared_row_norms.device(),
      " but ", reference_name, " is on ", reference.device(), "; they must be on the same device");
  TORCH_CHECK_VALUE(
      squared_row_norms.dim() == 1 && squared_row_norms.size(0) == rows,
      "pyae: squared_row_norms must have shape (", rows, ",), got ", squared_row_norms.sizes());
}

inline void check_squared_row_norms(const at::Tensor& squared_row_norms, const at::Tensor& weight) {
  check_squared_row_norms(squared_row_norms, weight, "weight", weight.size(0));
}

// The upstream gradients of the encoder's outputs (hidden, mean_activation, contractive),
// against hidden (B, k).
inline void check_encoder_output_grads(
    const c10::optional<at::Tensor>& grad_hidden,
    const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive,
    const at::Tensor& hidden) {
  if (grad_hidden.has_value()) {
    check_same_dtype_device(*grad_hidden, "grad_hidden", hidden, "hidden");
    TORCH_CHECK_VALUE(
        grad_hidden->sizes() == hidden.sizes(), "pyae: grad_hidden must have hidden's shape ", hidden.sizes(),
        ", got ", grad_hidden->sizes());
  }
  if (grad_mean_activation.has_value()) {
    check_same_dtype_device(*grad_mean_activation, "grad_mean_activation", hidden, "hidden");
    TORCH_CHECK_VALUE(
        grad_mean_activation->dim() == 1 && grad_mean_activation->size(0) == hidden.size(1),
        "pyae: grad_mean_activation must have shape (", hidden.size(1), ",), got ", grad_mean_activation->sizes());
  }
  if (grad_contractive.has_value()) {
    check_same_dtype_device(*grad_contractive, "grad_contractive", hidden, "hidden");
    TORCH_CHECK_VALUE(
        grad_contractive->numel() == 1, "pyae: grad_contractive must be a scalar, got shape ",
        grad_contractive->sizes());
  }
}

inline void check_encoder_backward_inputs(
    const c10::optional<at::Tensor>& grad_hidden,
    const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive,
    const at::Tensor& x,
    const at::Tensor& weight,
    const at::Tensor& hidden,
    const c10::optional<at::Tensor>& squared_row_norms) {
  check_encoder_inputs(x, weight, c10::nullopt);
  check_same_dtype_device(hidden, "hidden", x, "x");
  TORCH_CHECK_VALUE(
      hidden.dim() == 2 && hidden.size(0) == x.size(0) && hidden.size(1) == weight.size(0),
      "pyae: hidden must have shape (", x.size(0), ", ", weight.size(0), "), got ", hidden.sizes());
  check_encoder_output_grads(grad_hidden, grad_mean_activation, grad_contractive, hidden);
  if (squared_row_norms.has_value()) check_squared_row_norms(*squared_row_norms, weight);
}

// sigmoid_encoder_preactivation_backward's: hidden (B, k) and c, which the contractive
// term's gradient needs (there is no weight to compute it from).
inline void check_encoder_preactivation_backward_inputs(
    const c10::optional<at::Tensor>& grad_hidden,
    const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive,
    const at::Tensor& hidden,
    const c10::optional<at::Tensor>& squared_row_norms) {
  check_floating(hidden, "hidden");
  TORCH_CHECK_VALUE(hidden.dim() == 2, "pyae: hidden must be 2-D (batch, hidden units), got shape ", hidden.sizes());
  check_encoder_output_grads(grad_hidden, grad_mean_activation, grad_contractive, hidden);
  TORCH_CHECK_VALUE(!grad_contractive.has_value() || squared_row_norms.has_value(),
                    "pyae: sigmoid_encoder_preactivation_backward needs squared_row_norms (the c the forward used) "
                    "when grad_contractive is given");
  if (squared_row_norms.has_value()) check_squared_row_norms(*squared_row_norms, hidden, "hidden", hidden.size(1));
}

inline void check_reconstruction_loss_inputs(const at::Tensor& logits, const at::Tensor& target) {
  check_floating(logits, "logits");
  TORCH_CHECK_VALUE(logits.dim() == 2, "pyae: logits must be 2-D (batch, features), got shape ", logits.sizes());
  TORCH_CHECK_VALUE(logits.size(0) > 0, "pyae: logits must hold at least one row: the batch mean of an empty batch is undefined");
  check_same_dtype_device(target, "target", logits, "logits");
  TORCH_CHECK_VALUE(
      target.sizes() == logits.sizes(), "pyae: target must have logits' shape ", logits.sizes(), ", got ",
      target.sizes());
}

inline void check_reconstruction_loss_backward_inputs(
    const c10::optional<at::Tensor>& grad_reconstruction,
    const c10::optional<at::Tensor>& grad_loss,
    const at::Tensor& reconstruction,
    const at::Tensor& target) {
  check_reconstruction_loss_inputs(reconstruction, target);
  if (grad_reconstruction.has_value()) {
    check_same_dtype_device(*grad_reconstruction, "grad_reconstruction", reconstruction, "reconstruction");
    TORCH_CHECK_VALUE(
        grad_reconstruction->sizes() == reconstruction.sizes(), "pyae: grad_reconstruction must have shape ",
        reconstruction.sizes(), ", got ", grad_reconstruction->sizes());
  }
  if (grad_loss.has_value()) {
    check_same_dtype_device(*grad_loss, "grad_loss", reconstruction, "reconstruction");
    TORCH_CHECK_VALUE(grad_loss->numel() == 1, "pyae: grad_loss must be a scalar, got shape ", grad_loss->sizes());
  }
}

inline void check_kl_sparsity_inputs(const at::Tensor& mean_activation, double target) {
  check_floating(mean_activation, "mean_activation");
  TORCH_CHECK_VALUE(target > 0.0 && target < 1.0, "pyae: target must lie in (0, 1), got ", target);
}

inline void check_kl_sparsity_backward_inputs(const at::Tensor& grad, const at::Tensor& mean_activation, double target) {
  check_kl_sparsity_inputs(mean_activation, target);
  check_same_dtype_device(grad, "grad", mean_activation, "mean_activation");
  TORCH_CHECK_VALUE(grad.numel() == 1, "pyae: grad must be a scalar, got shape ", grad.sizes());
}

inline void check_mask_noise_inputs(const at::Tensor& x, double q, const at::Tensor& seed) {
  check_floating(x, "x");
  TORCH_CHECK_VALUE(q >= 0.0 && q <= 1.0, "pyae: q must lie in [0, 1], got ", q);
  TORCH_CHECK_TYPE(seed.scalar_type() == at::kLong, "pyae: seed must be an int64 tensor, got ", seed.scalar_type());
  TORCH_CHECK_VALUE(seed.numel() == 1, "pyae: seed must hold one value, got shape ", seed.sizes());
  TORCH_CHECK_VALUE(
      seed.device() == x.device(), "pyae: seed is on ", seed.device(), " but x is on ", x.device(),
      "; they must be on the same device");
}

inline void check_weight_decay_inputs(at::TensorList weights) {
  TORCH_CHECK_VALUE(!weights.empty(), "pyae: weight_decay needs at least one weight tensor");
  for (size_t i = 0; i < weights.size(); ++i) {
    const std::string name = "weights[" + std::to_string(i) + "]";
    check_floating(weights[i], name.c_str());
    if (i > 0) check_same_dtype_device(weights[i], name.c_str(), weights[0], "weights[0]");
  }
}

inline void check_weight_decay_backward_inputs(const at::Tensor& grad, at::TensorList weights) {
  check_weight_decay_inputs(weights);
  check_same_dtype_device(grad, "grad", weights[0], "weights[0]");
  TORCH_CHECK_VALUE(grad.numel() == 1, "pyae: grad must be a scalar, got shape ", grad.sizes());
}

// What autoencoder_loss checks itself, under its own argument names (its parts check the
// rest: the norms' dtype and shape, the seed). Under autocast (same_dtypes false) the
// arguments may differ in dtype, as the parts' own autocast kernels allow: each part casts
// what it is given, then checks.
inline void check_autoencoder_loss_inputs(
    const at::Tensor& x, const at::Tensor& target, const at::Tensor& encoder_weight,
    const c10::optional<at::Tensor>& encoder_bias, const at::Tensor& decoder_weight,
    const c10::optional<at::Tensor>& decoder_bias, double noise_level, const c10::optional<at::Tensor>& seed,
    double contractive_weight, c10::optional<double> sparsity_target, double sparsity_weight,
    const c10::optional<at::Tensor>& weight_decay_term, double weight_decay, bool same_dtypes = true) {
  const auto check_same_dtype_device = [same_dtypes](const at::Tensor& t, const char* name, const at::Tensor& ref,
                                                     const char* ref_name) {
    if (same_dtypes) {
      pyae::check_same_dtype_device(t, name, ref, ref_name);
    } else {
      check_floating(t, name);
      TORCH_CHECK_VALUE(t.device() == ref.device(), "pyae: ", name, " is on ", t.device(), " but ", ref_name,
                        " is on ", ref.device(), "; they must be on the same device");
    }
  };
  check_floating(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 2, "pyae: x must be 2-D (batch, features), got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.size(0) > 0, "pyae: x must hold at least one row: the batch mean of an empty batch is undefined");
  check_same_dtype_device(target, "target", x, "x");
  TORCH_CHECK_VALUE(target.sizes() == x.sizes(), "pyae: target must have x's shape ", x.sizes(), ", got ", target.sizes());
  const int64_t n = x.size(1);
  check_same_dtype_device(encoder_weight, "encoder_weight", x, "x");
  TORCH_CHECK_VALUE(
      encoder_weight.dim() == 2 && encoder_weight.size(1) == n, "pyae: encoder_weight must be (hidden, ", n,
      ") for x's ", n, " features, got shape ", encoder_weight.sizes());
  const int64_t k = encoder_weight.size(0);
  check_same_dtype_device(decoder_weight, "decoder_weight", x, "x");
  TORCH_CHECK_VALUE(
      decoder_weight.dim() == 2 && decoder_weight.size(0) == n && decoder_weight.size(1) == k,
      "pyae: decoder_weight must be (", n, ", ", k, ") to decode ", k, " hidden units into x's ", n,
      " features, got shape ", decoder_weight.sizes());
  const auto check_bias = [&](const c10::optional<at::Tensor>& bias, const char* name, int64_t size) {
    if (!bias.has_value()) return;
    check_same_dtype_device(*bias, name, x, "x");
    TORCH_CHECK_VALUE(
        bias->dim() == 1 && bias->size(0) == size, "pyae: ", name, " must have shape (", size, ",), got ",
        bias->sizes());
  };
  check_bias(encoder_bias, "encoder_bias", k);
  check_bias(decoder_bias, "decoder_bias", n);
  if (seed.has_value()) {
    TORCH_CHECK_VALUE(noise_level >= 0.0 && noise_level <= 1.0, "pyae: noise_level must lie in [0, 1], got ",
                      noise_level);
  }
  const auto check_weight = [](double weight, const char* name) {
    TORCH_CHECK_VALUE(weight >= 0.0 && weight < std::numeric_limits<double>::infinity(), "pyae: ", name,
                      " must be finite and >= 0, got ", weight);
  };
  check_weight(contractive_weight, "contractive_weight");
  check_weight(sparsity_weight, "sparsity_weight");
  check_weight(weight_decay, "weight_decay");
  if (sparsity_target.has_value()) {
    TORCH_CHECK_VALUE(*sparsity_target > 0.0 && *sparsity_target < 1.0, "pyae: sparsity_target must lie in (0, 1), got ",
                      *sparsity_target);
  }
  if (weight_decay_term.has_value()) {
    check_same_dtype_device(*weight_decay_term, "weight_decay_term", x, "x");
    TORCH_CHECK_VALUE(weight_decay_term->dim() == 0, "pyae: weight_decay_term must be a 0-dim tensor, got shape ",
                      weight_decay_term->sizes());
  }
}

inline void check_squared_row_norms_input(const at::Tensor& weight) {
  check_floating(weight, "weight");
  TORCH_CHECK_VALUE(weight.dim() == 2, "pyae: weight must be 2-D (rows, columns), got shape ", weight.sizes());
}

// The lists of a fused optimizer update (pyae.cpp's sgd_update_): state holds the lists of
// per-parameter state tensors (momentum buffers; Adam's averages) with their names, each
// empty or one tensor per parameter of the parameter's dtype, device and shape; every tensor
// contiguous; squared_row_norm_grads and squared_row_norms empty or one entry per parameter,
// (size(0),) in the accumulation dtype for parameters of 2 or more dimensions (an absent
// gradient, an empty (0,) norms tensor: none).
inline void check_update_inputs(
    at::TensorList params, at::TensorList grads, std::initializer_list<std::pair<at::TensorList, const char*>> state,
    const c10::List<c10::optional<at::Tensor>>& squared_row_norm_grads, at::ArrayRef<double> weight_decays,
    at::TensorList squared_row_norms, bool grads_optional = false) {
  const size_t count = params.size();
  const auto check_count = [count](size_t size, const char* name) {
    TORCH_CHECK_VALUE(size == count, "pyae: ", name, " must hold one entry per parameter (", count, "), got ", size);
  };
  if (!grads.empty() || !grads_optional) check_count(grads.size(), "grads");
  check_count(weight_decays.size(), "weight_decays");
  if (!squared_row_norm_grads.empty()) check_count(squared_row_norm_grads.size(), "squared_row_norm_grads");
  if (!squared_row_norms.empty()) check_count(squared_row_norms.size(), "squared_row_norms");
  for (const auto& [list, name] : state) {
    if (!list.empty()) check_count(list.size(), name);
  }
  for (size_t i = 0; i < count; ++i) {
    const at::Tensor& p = params[i];
    const std::string index = "[" + std::to_string(i) + "]";
    const std::string param_name = "params" + index;
    check_floating(p, param_name.c_str());
    TORCH_CHECK_VALUE(p.is_contiguous() && p.layout() == at::kStrided, "pyae: ", param_name,
                      " must be a contiguous dense tensor");
    const auto check_like = [&](const at::Tensor& t, const std::string& name) {
      check_same_dtype_device(t, name.c_str(), p, param_name.c_str());
      TORCH_CHECK_VALUE(t.sizes() == p.sizes(), "pyae: ", name, " must have the shape of ", param_name, ", ",
                        p.sizes(), ", got ", t.sizes());
      TORCH_CHECK_VALUE(t.is_contiguous() && t.layout() == at::kStrided, "pyae: ", name,
                        " must be a contiguous dense tensor");
    };
    if (!grads.empty()) check_like(grads[i], "grads" + index);
    for (const auto& [list, name] : state) {
      if (!list.empty()) check_like(list[i], std::string(name) + index);
    }
    const at::ScalarType accumulation = at::toOpMathType(p.scalar_type());
    const auto check_row_vector = [&](const at::Tensor& t, const std::string& name) {
      TORCH_CHECK_VALUE(p.dim() >= 2, "pyae: ", name, " is given but ", param_name, " has no rows (", p.dim(),
                        " dimension)");
      TORCH_CHECK_TYPE(t.scalar_type() == accumulation, "pyae: ", name, " must have dtype ", accumulation, ", got ",
                       t.scalar_type());
      TORCH_CHECK_VALUE(t.device() == p.device() && t.dim() == 1 && t.size(0) == p.size(0) && t.is_contiguous(),
                        "pyae: ", name, " must be contiguous of shape (", p.size(0), ",) on ", p.device(), ", got ",
                        t.sizes(), " on ", t.device());
    };
    if (!squared_row_norm_grads.empty()) {
      const c10::optional<at::Tensor> r = squared_row_norm_grads.get(i);
      if (r.has_value()) check_row_vector(*r, "squared_row_norm_grads" + index);
    }
    if (!squared_row_norms.empty() && squared_row_norms[i].numel() > 0) {
      check_row_vector(squared_row_norms[i], "squared_row_norms" + index);
    }
  }
}

inline void check_sgd_update_inputs(
    at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
    const c10::List<c10::optional<at::Tensor>>& squared_row_norm_grads, at::ArrayRef<double> weight_decays,
    at::TensorList squared_row_norms, double momentum, bool nesterov) {
  TORCH_CHECK_VALUE(momentum == 0.0 || momentum_buffers.size() == params.size(),
                    "pyae: sgd_update_ with momentum needs one momentum buffer per parameter");
  // No grads: the momentum buffers already hold the gradient's share (a fused step's
  // products accumulated into them), which only the plain momentum form can take.
  TORCH_CHECK_VALUE(!grads.empty() || params.empty() || (momentum != 0.0 && !nesterov),
                    "pyae: sgd_update_ without grads (the gradient already in the momentum buffers) needs momentum > 0 "
                    "and nesterov=False");
  check_update_inputs(params, grads, {{momentum_buffers, "momentum_buffers"}}, squared_row_norm_grads, weight_decays,
                      squared_row_norms, /*grads_optional=*/true);
}

// Adam's lists, and each step count t: a float32 scalar tensor on the parameter's device.
inline void check_adam_update_inputs(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
    at::TensorList steps, const c10::List<c10::optional<at::Tensor>>& squared_row_norm_grads,
    at::ArrayRef<double> weight_decays, at::TensorList squared_row_norms) {
  TORCH_CHECK_VALUE(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size() &&
                        steps.size() == params.size(),
                    "pyae: adam_update_ needs one exp_avg, exp_avg_sq and step per parameter");
  check_update_inputs(params, grads, {{exp_avgs, "exp_avgs"}, {exp_avg_sqs, "exp_avg_sqs"}}, squared_row_norm_grads,
                      weight_decays, squared_row_norms);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& step = steps[i];
    TORCH_CHECK_VALUE(step.numel() == 1 && step.scalar_type() == at::kFloat && step.device() == params[i].device(),
                      "pyae: steps[", i, "] must be a float32 scalar tensor on ", params[i].device(), ", got ",
                      step.scalar_type(), " of shape ", step.sizes(), " on ", step.device());
  }
}

}  // namespace pyae
