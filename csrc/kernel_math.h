// The elementwise math of pyae's kernels (docs/design.md), in one place for every backend. acc_t is
// the accumulation type: float for float/half/bfloat16 inputs, double for double. The CUDA
// kernels use all of it; the CPU kernels take their exp and log from vectorized paths instead
// (ATen's sigmoid, see cpu/tiles.h, and cpu/decoder_kernels.cpp's log) and use the rest.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <limits>

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

// The sigmoid decoder's output and its reconstruction loss for one element, from the
// logit z and the target x:
//   cross-entropy: -x log sigmoid(z) - (1 - x) log(1 - sigmoid(z)) = max(z, 0) - x z + log1p(exp(-|z|))
//   squared error: (sigmoid(z) - x)^2
// One exp serves both the sigmoid and the softplus, and neither overflows for any z.
template <typename acc_t>
struct SigmoidLossTerms {
  acc_t reconstruction;
  acc_t loss;
};

template <typename acc_t>
C10_HOST_DEVICE inline SigmoidLossTerms<acc_t> sigmoid_loss_terms(acc_t z, acc_t x, bool cross_entropy) {
  const acc_t e = std::exp(-std::abs(z));  // in (0, 1]
  const acc_t xhat = z >= acc_t(0) ? acc_t(1) / (acc_t(1) + e) : e / (acc_t(1) + e);
  if (cross_entropy) {
    return {xhat, (z > acc_t(0) ? z : acc_t(0)) - x * z + std::log1p(e)};
  }
  const acc_t error = xhat - x;
  return {xhat, error * error};
}

// Gradient with respect to the logit z of one element, from the saved reconstruction
// xhat = sigmoid(z): grad_reconstruction * s + (grad_loss / B) * dloss/dxhat-chain, with
// s = xhat (1 - xhat); the cross-entropy's chain collapses to xhat - x. loss_scale is
// grad_loss / B (0 when the loss received no gradient).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t sigmoid_loss_logit_grad(
    acc_t xhat, acc_t x, acc_t grad_reconstruction, acc_t loss_scale, bool cross_entropy) {
  const acc_t s = sigmoid_slope(xhat);
  const acc_t error = xhat - x;
  const acc_t dloss = cross_entropy ? error : acc_t(2) * error * s;
  return grad_reconstruction * s + loss_scale * dloss;
}

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the
// generator behind curand and torch's at::philox_engine): the four output words for the key
// `seed` and the counter {0, 0, subsequence}, the words at::philox_engine(seed, subsequence, 0)
// returns on its first four calls. A pure function of its arguments, with no branches, so a
// loop over subsequences vectorizes and every device and thread draws the same words.
struct PhiloxWords {
  uint32_t word[4];
};

C10_HOST_DEVICE inline PhiloxWords philox4x32(uint64_t seed, uint64_t subsequence) {
  uint32_t c0 = 0, c1 = 0, c2 = static_cast<uint32_t>(subsequence), c3 = static_cast<uint32_t>(subsequence >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t next0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t next2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = next0;
    c2 = next2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Masking noise keeps element e when the first Philox word of subsequence e is at least this
// threshold, q * 2^32, so that it is dropped with probability q (0 keeps all, 1 drops all).
// (One block per element and three words unused: a loop over elements vectorizes, and it
// measured faster on a CPU than spreading each block's four words over four elements.)
inline uint64_t mask_noise_threshold(double q) {
  return static_cast<uint64_t>(std::llround(q * 4294967296.0));
}

// The Bernoulli KL sparsity penalty of one hidden unit, KL(rho || rho_hat), and its
// derivative. rho_hat is clamped into [eps, 1 - eps], eps the machine epsilon of the
// input's dtype (both bounds are exact in every floating dtype), so saturated units give a
// large but finite penalty; the derivative is the slope on the closed interval and 0
// outside it (a unit stuck at exactly 0 or 1 gets no push from this term); a NaN rho_hat gives a
// NaN penalty (so a NaN loss) and a 0 slope.
template <typename acc_t>
struct KlSparsity {
  acc_t target, log_target, log1m_target, low, high;

  C10_HOST_DEVICE acc_t term(acc_t rho_hat) const {
    const acc_t r = rho_hat < low ? low : (rho_hat > high ? high : rho_hat);
    return target * (log_target - std::log(r)) + (acc_t(1) - target) * (log1m_target - std::log1p(-r));
  }

  C10_HOST_DEVICE acc_t slope(acc_t rho_hat) const {
    const bool inside = rho_hat >= low && rho_hat <= high;
    return inside ? -target / rho_hat + (acc_t(1) - target) / (acc_t(1) - rho_hat) : acc_t(0);
  }
};

// The constants for a target rho in (0, 1) and inputs of dtype scalar_t (host side).
template <typename scalar_t, typename acc_t>
inline KlSparsity<acc_t> make_kl_sparsity(double target) {
  const double eps = static_cast<double>(std::numeric_limits<scalar_t>::epsilon());
  return {static_cast<acc_t>(target), static_cast<acc_t>(std::log(target)), static_cast<acc_t>(std::log1p(-target)),
          static_cast<acc_t>(eps), static_cast<acc_t>(1.0 - eps)};
}

}  // namespace pyae
