// CPU kernels of the fused optimizer updates (sgd_update_, adam_update_): one pass over each
// parameter, in row blocks run in parallel. Each element is updated independently (no sums
// across elements), and each row's squared norm is summed as its values are written, in the
// summation order the encoder uses (cpu/row_norms.h): the results are the same whatever the
// number of threads, and equal to squared_row_norms'.

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/row_norms.h"
#include "cpu/tiles.h"
#include "ops.h"
#include "update_math.h"

namespace pyae {
namespace {

// Elements per work item where a parameter is updated without row norms or row decays.
constexpr int64_t kFlatBlock = 16384;

// The update of the elements [begin, end) of one parameter; with norm, they are one row,
// and *norm receives the squared norm of the values written, summed as
// cpu::squared_norms_of_rows sums a row (the same bits as squared_row_norms), while each
// value is still in a register.
// kGrad false: no gradient tensor, the gradient is already in buf (update_math.h).
template <bool kMomentum, bool kNorm, bool kGrad, typename scalar_t, typename acc_t>
PYAE_CPU_MULTIVERSION void sgd_range(scalar_t* __restrict p, const scalar_t* __restrict g, scalar_t* __restrict buf,
                                     int64_t begin, int64_t end, acc_t decay, SgdCoefficients<acc_t> k,
                                     acc_t* __restrict norm) {
  const auto element = [=](int64_t i) {
    acc_t b = kMomentum ? static_cast<acc_t>(buf[i]) : acc_t(0);
    const acc_t grad = kGrad ? static_cast<acc_t>(g[i]) : acc_t(0);
    const scalar_t updated = static_cast<scalar_t>(sgd_update<kMomentum>(static_cast<acc_t>(p[i]), grad, decay, &b, k));
    p[i] = updated;
    if constexpr (kMomentum) buf[i] = static_cast<scalar_t>(b);
    return static_cast<acc_t>(updated);
  };
  if constexpr (kNorm) {
    *norm = cpu::squared_norm_of<acc_t>(end - begin, [&](int64_t j) { return element(begin + j); });
  } else {
    for (int64_t i = begin; i < end; ++i) element(i);
  }
}

template <bool kNorm, typename scalar_t, typename acc_t>
PYAE_CPU_MULTIVERSION void adam_range(scalar_t* __restrict p, const scalar_t* __restrict g, scalar_t* __restrict m,
                                      scalar_t* __restrict v, int64_t begin, int64_t end, acc_t decay,
                                      AdamCoefficients<acc_t> k, acc_t* __restrict norm) {
  const auto element = [=](int64_t i) {
    acc_t m_i = static_cast<acc_t>(m[i]), v_i = static_cast<acc_t>(v[i]);
    const scalar_t updated =
        static_cast<scalar_t>(adam_update(static_cast<acc_t>(p[i]), static_cast<acc_t>(g[i]), decay, &m_i, &v_i, k));
    p[i] = updated;
    m[i] = static_cast<scalar_t>(m_i);
    v[i] = static_cast<scalar_t>(v_i);
    return static_cast<acc_t>(updated);
  };
  if constexpr (kNorm) {
    *norm = cpu::squared_norm_of<acc_t>(end - begin, [&](int64_t j) { return element(begin + j); });
  } else {
    for (int64_t i = begin; i < end; ++i) element(i);
  }
}

// Runs update(begin, end, decay, norm) over the whole of param: row by row (decay =
// weight_decay + 2 r_l, and norm pointing at the row's entry of norms, or null) when the
// parameter has row decays or wants norms, else in flat blocks with decay = weight_decay
// and no norm.
template <typename scalar_t, typename Update>
void update_parameter(const at::Tensor& param, double weight_decay, const c10::optional<at::Tensor>& row_grads,
                      const at::Tensor& norms, const Update& update) {
  // norms: undefined or empty for none.
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t numel = param.numel();
  const acc_t decay = static_cast<acc_t>(weight_decay);
  const bool want_norms = norms.defined() && norms.numel() > 0;
  const bool by_rows = row_grads.has_value() || want_norms;
  if (!by_rows) {
    at::parallel_for(0, numel, kFlatBlock, [&](int64_t begin, int64_t end) { update(begin, end, decay, nullptr); });
    return;
  }
  const int64_t rows = param.size(0), cols = rows > 0 ? numel / rows : 0;
  const acc_t* r = row_grads.has_value() ? row_grads->const_data_ptr<acc_t>() : nullptr;
  acc_t* out = want_norms ? norms.mutable_data_ptr<acc_t>() : nullptr;
  at::parallel_for(0, rows, std::max<int64_t>(1, kFlatBlock / std::max<int64_t>(cols, 1)), [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      update(row * cols, (row + 1) * cols, r != nullptr ? decay + acc_t(2) * r[row] : decay,
             out != nullptr ? out + row : nullptr);
    }
  });
}

void sgd_update_cpu(
    at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
    const OptionalTensorList& squared_row_norm_grads, at::ArrayRef<double> weight_decays,
    at::TensorList squared_row_norms, double lr, double momentum, double dampening, bool nesterov, bool first_step) {
  check_sgd_update_inputs(params, grads, momentum_buffers, squared_row_norm_grads, weight_decays, squared_row_norms,
                          momentum, nesterov);
  const bool has_momentum = momentum != 0.0;
  const bool gradient_in_buffer = grads.empty();
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& param = params[i];
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "pyae_sgd_update_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto k = SgdCoefficients<acc_t>::make(lr, momentum, dampening, nesterov, first_step, gradient_in_buffer);
      scalar_t* p = param.mutable_data_ptr<scalar_t>();
      const scalar_t* g = gradient_in_buffer ? nullptr : grads[i].const_data_ptr<scalar_t>();
      scalar_t* buf = has_momentum ? momentum_buffers[i].mutable_data_ptr<scalar_t>() : nullptr;
      // The three forms: momentum with a gradient tensor, momentum with the gradient in the
      // buffer, no momentum (always a gradient tensor).
      const auto run = [&](auto norm_flag, int64_t begin, int64_t end, acc_t decay, acc_t* norm) {
        constexpr bool kNorm = decltype(norm_flag)::value;
        if (!has_momentum) {
          sgd_range<false, kNorm, true>(p, g, buf, begin, end, decay, k, norm);
        } else if (gradient_in_buffer) {
          sgd_range<true, kNorm, false>(p, g, buf, begin, end, decay, k, norm);
        } else {
          sgd_range<true, kNorm, true>(p, g, buf, begin, end, decay, k, norm);
        }
      };
      update_parameter<scalar_t>(
          param, weight_decays[i], entry_or_none(squared_row_norm_grads, i), entry_or_undefined(squared_row_norms, i),
          [&](int64_t begin, int64_t end, acc_t decay, acc_t* norm) {
            norm != nullptr ? run(std::true_type{}, begin, end, decay, norm)
                            : run(std::false_type{}, begin, end, decay, norm);
          });
    });
  }
}

void adam_update_cpu(
    at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
    at::TensorList steps, const OptionalTensorList& squared_row_norm_grads, at::ArrayRef<double> weight_decays,
    at::TensorList squared_row_norms, double lr, double beta1, double beta2, double eps) {
  check_adam_update_inputs(params, grads, exp_avgs, exp_avg_sqs, steps, squared_row_norm_grads, weight_decays,
                           squared_row_norms);
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& param = params[i];
    const double step = steps[i].item<double>();  // a CPU tensor: no synchronization
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, param.scalar_type(), "pyae_adam_update_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto k = AdamCoefficients<acc_t>::make(lr, beta1, beta2, eps, step);
      scalar_t* p = param.mutable_data_ptr<scalar_t>();
      const scalar_t* g = grads[i].const_data_ptr<scalar_t>();
      scalar_t* m = exp_avgs[i].mutable_data_ptr<scalar_t>();
      scalar_t* v = exp_avg_sqs[i].mutable_data_ptr<scalar_t>();
      update_parameter<scalar_t>(
          param, weight_decays[i], entry_or_none(squared_row_norm_grads, i), entry_or_undefined(squared_row_norms, i),
          [&](int64_t begin, int64_t end, acc_t decay, acc_t* norm) {
            norm != nullptr ? adam_range<true>(p, g, m, v, begin, end, decay, k, norm)
                            : adam_range<false>(p, g, m, v, begin, end, decay, k, norm);
          });
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CPU, m) {
  m.impl("sgd_update_", &sgd_update_cpu);
  m.impl("adam_update_", &adam_update_cpu);
}

}  // namespace pyae
