// The elementwise arithmetic of the fused optimizer updates (sgd_update_, adam_update_), in
// one place for every backend; torch.optim.SGD's and Adam's formulas, in the accumulation
// type acc_t.
//
// Every weight-side term a regularized autoencoder leaves to the update is a decay of the
// parameter's row: the gradient the update uses is grad + decay_l * p with
//   decay_l = weight_decay + 2 * r_l,
// where r_l = d loss / d c_l is the gradient the encoder gave its squared row norm
// c_l = ||p_l||^2 (d c_l / d p_l = 2 p_l: the chain rule through c), 0 when there is none.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace pyae {

// SGD with momentum (torch.optim.SGD, maximize=False), written so that one loop serves every
// setting without branches:
//   buf = buffer_keep * buf + gradient_share * g
//       (buffer_keep = momentum, gradient_share = 1 - dampening; on the first step 0 and 1:
//        buf = g, torch's clone of the first gradient)
//   step = nesterov ? g + momentum * buf : buf;   p -= lr * step.
// Without momentum there is no buffer and step = g.
//
// With the gradient already in the buffer (gradient_in_buffer: a fused training step
// accumulated its products there, buf = momentum * buf + (1 - dampening) * grad, or grad on
// the first step), the update gets grad = 0 and buffer_keep = 1, so that it adds the decay
// terms' share alone: buf += gradient_share * decay * p, then p -= lr * buf (no nesterov).
template <typename acc_t>
struct SgdCoefficients {
  acc_t lr, buffer_keep, gradient_share, nesterov_gradient, nesterov_buffer;

  static SgdCoefficients make(double lr, double momentum, double dampening, bool nesterov, bool first_step,
                              bool gradient_in_buffer = false) {
    return {static_cast<acc_t>(lr), static_cast<acc_t>(gradient_in_buffer ? 1.0 : first_step ? 0.0 : momentum),
            static_cast<acc_t>(first_step ? 1.0 : 1.0 - dampening), static_cast<acc_t>(nesterov ? 1.0 : 0.0),
            static_cast<acc_t>(nesterov ? momentum : 1.0)};
  }
};

// Returns the updated parameter; updates *buffer (when momentum is on).
template <bool kMomentum, typename acc_t>
C10_HOST_DEVICE inline acc_t sgd_update(acc_t p, acc_t grad, acc_t decay, acc_t* buffer,
                                        const SgdCoefficients<acc_t>& k) {
  const acc_t g = grad + decay * p;
  if constexpr (!kMomentum) {
    return p - k.lr * g;
  } else {
    const acc_t buf = k.buffer_keep * *buffer + k.gradient_share * g;
    *buffer = buf;
    return p - k.lr * (k.nesterov_gradient * g + k.nesterov_buffer * buf);
  }
}

// Adam (torch.optim.Adam: L2 weight decay, amsgrad=False): with t the step count after this
// step, step_size = lr / (1 - beta1^t) and root_correction = sqrt(1 - beta2^t),
//   m = m + (1 - beta1) (g - m);  v = beta2 v + (1 - beta2) g^2;
//   p -= step_size * m / (sqrt(v) / root_correction + eps).
template <typename acc_t>
struct AdamCoefficients {
  acc_t beta1, beta2, eps, step_size, root_correction;

  C10_HOST_DEVICE static AdamCoefficients make(double lr, double beta1, double beta2, double eps, double step) {
    const double correction1 = 1.0 - std::pow(beta1, step);
    const double correction2 = 1.0 - std::pow(beta2, step);
    return {static_cast<acc_t>(beta1), static_cast<acc_t>(beta2), static_cast<acc_t>(eps),
            static_cast<acc_t>(lr / correction1), static_cast<acc_t>(std::sqrt(correction2))};
  }
};

template <typename acc_t>
C10_HOST_DEVICE inline acc_t adam_update(acc_t p, acc_t grad, acc_t decay, acc_t* exp_avg, acc_t* exp_avg_sq,
                                         const AdamCoefficients<acc_t>& k) {
  const acc_t g = grad + decay * p;
  const acc_t m = *exp_avg + (acc_t(1) - k.beta1) * (g - *exp_avg);
  const acc_t v = k.beta2 * *exp_avg_sq + (acc_t(1) - k.beta2) * g * g;
  *exp_avg = m;
  *exp_avg_sq = v;
  return p - k.step_size * m / (std::sqrt(v) / k.root_correction + k.eps);
}

}  // namespace pyae
