// The host-side shape of the two encoder operators, shared by every backend.
//
// Each operator is "matrix products around one fused pass": the products go to at::mm /
// at::addmm (MKL or oneDNN on CPU, cuBLAS on CUDA), and a Backend supplies the fused pass
// over (B, k):
//
//   struct Backend {
//     // hidden holds the pre-activations on entry and h = sigmoid(a) on exit (in place).
//     // Returns mean_activation (k,) in hidden's dtype, contractive () in hidden's dtype,
//     // and c = ||W_l||^2 (k,) in the accumulation dtype, computed from weight; when
//     // given_norms holds c, the contractive term reads it instead, and the third result is
//     // an empty (0,) tensor. h is rounded to hidden's dtype before it enters the sums, as in
//     // the backward.
//     static std::tuple<at::Tensor, at::Tensor, at::Tensor> activate_and_reduce(
//         at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& given_norms);
//     // Returns delta_a (B, k); the column sums of delta_a (= grad_bias) when
//     // want_column_sums; and row_scale_l = g_c * (2/B) * sum_i d_il^2 when want_row_scale
//     // and grad_contractive is given. Each absent result is an undefined tensor. The
//     // upstream gradient of h_il is grad_hidden_il + grad_hidden_row_l (either may be
//     // absent; grad_hidden_row is a grad_hidden broadcast along the batch). c is
//     // squared_row_norms when given, else computed from weight (needed only with
//     // grad_contractive).
//     static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_pass(
//         const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& squared_row_norms,
//         const c10::optional<at::Tensor>& grad_hidden, const c10::optional<at::Tensor>& grad_hidden_row,
//         const c10::optional<at::Tensor>& grad_mean_activation, const c10::optional<at::Tensor>& grad_contractive,
//         bool want_column_sums, bool want_row_scale);
//   };
//
// All tensors handed to a Backend are contiguous and validated.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>
#include <utility>

#include "checks.h"

namespace pyae {

inline c10::optional<at::Tensor> contiguous_or_none(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(t->contiguous()) : c10::nullopt;
}

// (rows, row): grad_hidden as the Backend takes it. A grad_hidden broadcast along the batch
// (stride 0: a loss of hidden.sum() or of hidden.mean(0)) is one row of upstream gradients,
// read as such instead of materialized.
inline std::pair<c10::optional<at::Tensor>, c10::optional<at::Tensor>> split_broadcast_rows(
    const c10::optional<at::Tensor>& grad_hidden) {
  if (grad_hidden.has_value() && grad_hidden->size(0) > 1 && grad_hidden->stride(0) == 0) {
    return {c10::nullopt, grad_hidden->select(0, 0).contiguous()};
  }
  return {contiguous_or_none(grad_hidden), c10::nullopt};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sigmoid_encoder_forward(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& given_norms) {
  check_encoder_inputs(x, weight, bias);
  if (given_norms.has_value()) check_squared_row_norms(*given_norms, weight);
  const at::Tensor weight_c = weight.contiguous();
  // addmm folds the bias into the product; either result is a fresh contiguous (B, k) buffer
  // that the fused pass overwrites with h.
  at::Tensor hidden = bias.has_value() ? at::addmm(*bias, x, weight_c.t()) : at::mm(x, weight_c.t());
  c10::optional<at::Tensor> given_norms_c;
  if (given_norms.has_value()) given_norms_c = given_norms->contiguous();
  auto [mean_activation, contractive, squared_row_norms] = Backend::activate_and_reduce(hidden, weight_c, given_norms_c);
  return {hidden, mean_activation, contractive, squared_row_norms};
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sigmoid_encoder_backward(
    const c10::optional<at::Tensor>& grad_hidden,
    const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive,
    const at::Tensor& x,
    const at::Tensor& weight,
    const at::Tensor& hidden,
    const c10::optional<at::Tensor>& squared_row_norms,
    bool squared_row_norms_is_input,
    std::array<bool, 4> output_mask) {
  check_encoder_backward_inputs(grad_hidden, grad_mean_activation, grad_contractive, x, weight, hidden,
                                squared_row_norms);
  TORCH_CHECK_VALUE(!squared_row_norms_is_input || squared_row_norms.has_value(),
                    "pyae: squared_row_norms_is_input needs the squared_row_norms the forward was given");
  const auto [want_grad_x, want_grad_weight, want_grad_bias, want_grad_norms_asked] = output_mask;
  const bool want_grad_norms = want_grad_norms_asked && squared_row_norms_is_input;
  // Outputs of an operator must not alias each other: each unwanted gradient is its own
  // (empty) tensor.
  const auto not_wanted = [&x] { return at::empty({0}, x.options()); };
  if (!want_grad_x && !want_grad_weight && !want_grad_bias && !want_grad_norms) {
    return {not_wanted(), not_wanted(), not_wanted(), not_wanted()};
  }
  const at::Tensor weight_c = weight.contiguous();
  const auto [grad_hidden_rows, grad_hidden_row] = split_broadcast_rows(grad_hidden);
  auto [delta, grad_bias, row_scale] = Backend::backward_pass(
      hidden.contiguous(), weight_c, contiguous_or_none(squared_row_norms), grad_hidden_rows, grad_hidden_row,
      contiguous_or_none(grad_mean_activation), contiguous_or_none(grad_contractive), want_grad_bias,
      squared_row_norms_is_input ? want_grad_norms : want_grad_weight);

  at::Tensor grad_x = want_grad_x ? at::mm(delta, weight_c) : not_wanted();
  at::Tensor grad_weight;
  if (!want_grad_weight) {
    grad_weight = not_wanted();
  } else {
    // The contractive penalty depends on weight directly through c_l = ||W_l||^2, which adds
    // diag(row_scale) @ weight to the product term (unless c was an input of its own). It is
    // added in place: a weight-sized temporary (and addmm's copy of it) cost more than the
    // rest of the fused pass at small batches.
    grad_weight = at::mm(delta.t(), x);
    if (row_scale.defined() && !squared_row_norms_is_input) grad_weight.addcmul_(weight_c, row_scale.unsqueeze(1));
  }
  // d contractive / d c_l = g_c (1/B) sum_i d_il^2 = row_scale_l / 2, in c's dtype.
  at::Tensor grad_norms = not_wanted();
  if (want_grad_norms) {
    grad_norms = row_scale.defined() ? row_scale.to(squared_row_norms->scalar_type()).mul_(0.5)
                                     : at::zeros_like(*squared_row_norms);
  }
  return {grad_x, grad_weight, want_grad_bias ? grad_bias : not_wanted(), grad_norms};
}

// The fused pass of sigmoid_encoder_backward alone (sigmoid_encoder_preactivation_backward):
// delta, its column sums, and d loss / d c for a given c.
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> sigmoid_encoder_preactivation_backward(
    const c10::optional<at::Tensor>& grad_hidden,
    const c10::optional<at::Tensor>& grad_mean_activation,
    const c10::optional<at::Tensor>& grad_contractive,
    const at::Tensor& hidden,
    const c10::optional<at::Tensor>& squared_row_norms) {
  check_encoder_preactivation_backward_inputs(grad_hidden, grad_mean_activation, grad_contractive, hidden,
                                              squared_row_norms);
  // The Backend reads the weight only to compute c, which is given here whenever it is
  // needed: a (k, 0) stand-in carries the row count.
  const at::Tensor no_weight = at::empty({hidden.size(1), 0}, hidden.options());
  const auto [grad_hidden_rows, grad_hidden_row] = split_broadcast_rows(grad_hidden);
  auto [delta, grad_bias, row_scale] = Backend::backward_pass(
      hidden.contiguous(), no_weight, contiguous_or_none(squared_row_norms), grad_hidden_rows, grad_hidden_row,
      contiguous_or_none(grad_mean_activation), contiguous_or_none(grad_contractive), /*want_column_sums=*/true,
      /*want_row_scale=*/squared_row_norms.has_value());
  // d contractive / d c_l = row_scale_l / 2, in c's dtype (as sigmoid_encoder_backward's).
  at::Tensor grad_norms = at::empty({0}, hidden.options());
  if (squared_row_norms.has_value()) {
    grad_norms = row_scale.defined() ? row_scale.to(squared_row_norms->scalar_type()).mul_(0.5)
                                     : at::zeros_like(*squared_row_norms);
  }
  return {delta, grad_bias, grad_norms};
}

}  // namespace pyae
