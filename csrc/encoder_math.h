// The elementwise math of the sigmoid encoder, shared by the CPU and CUDA kernels so that
// both compute exactly the same formulas (DESIGN.md). acc_t is the accumulation type:
// float for float/half/bfloat16 inputs, double for double.
#pragma once

#include <c10/macros/Macros.h>
#include <cmath>

namespace pyae {

// 1 / (1 + exp(-a)) saturates cleanly: exp overflows to +inf for a << 0 and the quotient
// is then exactly 0, never NaN.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t sigmoid(acc_t a) {
  return acc_t(1) / (acc_t(1) + std::exp(-a));
}

// sigmoid'(a) written in terms of h = sigmoid(a).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t sigmoid_slope(acc_t h) {
  return h * (acc_t(1) - h);
}

// Gradient with respect to the pre-activation a_il of one element:
//   delta = (g_h + g_rho / B) * d  +  g_c * (2 / B) * c_l * d^2 * (1 - 2h)
// activation_grad is g_h + g_rho / B, contractive_coef is g_c * (2 / B) * c_l; each is 0
// when the corresponding output received no gradient.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t pre_activation_grad(acc_t h, acc_t activation_grad, acc_t contractive_coef) {
  const acc_t d = sigmoid_slope(h);
  return activation_grad * d + contractive_coef * d * d * (acc_t(1) - acc_t(2) * h);
}

}  // namespace pyae
