// CUDA backend of the fused sigmoid decoder + reconstruction loss (the per-element formulas
// of kernel_math.h; the CPU backend, cpu/decoder_kernels.cpp, computes the same values with
// a vectorizable series for the logarithm):
//
//   forward   loss_kernel            reconstruction = sigmoid(z), per-block sums of the loss terms
//             loss_finalize_kernel   loss = (sum of the block sums) / B, one block
//   backward  loss_backward_kernel   grad_logits, elementwise
//
// Both passes view (B, n) as a flat array of numel = B * n elements, cut into items of VEC
// consecutive elements (VEC * sizeof(scalar_t) = 16 bytes; the last item may be partial).
// A grid-stride loop gives thread t of the grid the items t, t + T, t + 2T, ... (T = the
// grid's thread count), a few of them per iteration with every load issued before any
// compute. An item is moved with one 16-byte vector access when every pointer is 16-byte
// aligned, element by element otherwise; that choice changes only the width of the memory
// accesses, never which thread handles which element nor the order it handles them in.
//
// Determinism: the loss is summed in an order fixed by (numel, dtype) alone. The grid size
// is a function of numel and the dtype (not of the device, not of pointer alignment); each
// thread adds the losses of its items in ascending element order; a block combines its
// threads with a fixed shuffle tree inside each warp and then its warps in warp order, and
// writes its own partial (no floating atomics, no atomics at all); the finalize kernel, a
// single block, combines the partials with the same fixed pattern. Same inputs, same bits.
//
// No host synchronization anywhere: grad_loss is read through its device pointer inside the
// kernel, every launch goes to the current stream, and the workspace comes from the caching
// allocator, so both operators can be captured in a CUDA graph.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ceil_div.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "checks.h"
#include "cuda/host_helpers.h"
#include "cuda/vector_access.cuh"
#include "kernel_math.h"

namespace pyae {
namespace {

using at::ceil_div;
using cuda_detail::all_aligned;
using cuda_detail::data_or_null;
using cuda_detail::load_pack;
using cuda_detail::opmath_options;
using cuda_detail::Pack;
using cuda_detail::store_pack;

// ---------------------------------------------------------------------------------------
// Geometry.

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Items per thread per loop iteration, all loads issued before any compute: 2 in the
// forward (two 16-byte loads per item, 64 bytes in flight per thread), 1 in the backward
// (up to three loads per item, 48 bytes; two items would not fit in 64 registers). Either
// keeps well over the ~16 KiB per SM in flight that full bandwidth needs.
constexpr int kForwardUnroll = 2;
constexpr int kBackwardUnroll = 1;
// At most this many blocks (smaller inputs get one thread per item); larger inputs loop.
// With at least kMinBlocksPerSM resident blocks of 256 threads per SM (registers <= 64 per
// thread), 1024 blocks fill a 132-SM H100/H200 in two waves or fewer. It also bounds the
// finalize kernel's work (4 partials per thread). A constant, not the device's SM count, so
// the grid, and with it the order of the loss sum, is a function of the shapes alone.
constexpr int64_t kMaxBlocks = 1024;
constexpr int kMinBlocksPerSM = 4;
constexpr size_t kVectorBytes = 16;

// Elements per item: 16 bytes (2 doubles, 4 floats, 8 halves or bfloat16s).
template <typename scalar_t>
constexpr int item_width() {
  return static_cast<int>(kVectorBytes / sizeof(scalar_t));
}

struct FlatGrid {
  int64_t items;
  int64_t blocks;
  FlatGrid(int64_t numel, int vec)
      : items(ceil_div<int64_t>(numel, vec)), blocks(std::min(ceil_div<int64_t>(items, kThreads), kMaxBlocks)) {}
};

// ---------------------------------------------------------------------------------------
// Device helpers.

// Elements [first, first + count) of p, count <= VEC, into the first count lanes of a pack
// (the other lanes are zero). One vector load when kVector and the item is full.
template <bool kVector, int VEC, typename scalar_t>
__device__ __forceinline__ Pack<scalar_t, VEC> load_item(const scalar_t* __restrict__ p, int64_t first, int count) {
  if (kVector && count == VEC) return load_pack<VEC>(p + first);
  Pack<scalar_t, VEC> out;
#pragma unroll
  for (int v = 0; v < VEC; ++v) out.val[v] = v < count ? p[first + v] : scalar_t(0);
  return out;
}

template <bool kVector, int VEC, typename scalar_t>
__device__ __forceinline__ void store_item(scalar_t* __restrict__ p, int64_t first, int count, const Pack<scalar_t, VEC>& in) {
  if (kVector && count == VEC) {
    store_pack<VEC>(p + first, in);
    return;
  }
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    if (v < count) p[first + v] = in.val[v];
  }
}

__device__ __forceinline__ int item_count(int64_t first, int64_t numel, int vec) {
  const int64_t left = numel - first;
  return left < vec ? static_cast<int>(left) : vec;
}

// One iteration of a pass's grid-stride loop over its kUnroll items base + u * stride:
// f(u, first, count) for each u in ascending order whose item exists, with the item's first
// element and its element count. A pass calls it twice per iteration, once for the loads,
// then once for the compute and stores.
template <int kUnroll, int VEC, typename F>
__device__ __forceinline__ void for_each_item(int64_t base, int64_t stride, int64_t items, int64_t numel, const F& f) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t item = base + u * stride;
    if (item < items) {
      const int64_t first = item * VEC;
      f(u, first, item_count(first, numel, VEC));
    }
  }
}

// The sum of value over the kThreads threads of the block, valid in thread 0: a fixed
// shuffle tree inside each warp, then the warp sums in warp order. Call once per kernel,
// by every thread of the block.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t value) {
  __shared__ acc_t warp_sums[kWarps];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  }
  return total;
}

// ---------------------------------------------------------------------------------------
// Forward.

// reconstruction = sigmoid(logits) elementwise; partials[blockIdx.x] = the block's sum of
// the per-element losses (sigmoid_loss_terms, as on the CPU; the reconstruction is rounded
// to scalar_t only when stored, the loss term is added unrounded).
template <typename scalar_t, int VEC, bool kVector, bool kCrossEntropy>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) loss_kernel(
    const scalar_t* __restrict__ logits, const scalar_t* __restrict__ target, scalar_t* __restrict__ reconstruction,
    int64_t numel, int64_t items, at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  acc_t sum = 0;

  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; base < items; base += stride * kForwardUnroll) {
    Pack<scalar_t, VEC> z[kForwardUnroll], x[kForwardUnroll];
    for_each_item<kForwardUnroll, VEC>(base, stride, items, numel, [&](int u, int64_t first, int count) {
      z[u] = load_item<kVector, VEC>(logits, first, count);
      x[u] = load_item<kVector, VEC>(target, first, count);
    });
    for_each_item<kForwardUnroll, VEC>(base, stride, items, numel, [&](int u, int64_t first, int count) {
      Pack<scalar_t, VEC> out;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        if (v < count) {
          const acc_t x_value = static_cast<acc_t>(x[u].val[v]);
          const auto terms = sigmoid_loss_terms(static_cast<acc_t>(z[u].val[v]), x_value, kCrossEntropy);
          out.val[v] = static_cast<scalar_t>(terms.reconstruction);
          // A cross-entropy target outside [0, 1] has no meaningful loss: it makes the
          // loss NaN, which the caller sees without a host synchronization here (the CPU
          // kernel raises instead).
          const bool valid = !kCrossEntropy || (x_value >= acc_t(0) && x_value <= acc_t(1));
          sum += valid ? terms.loss : std::numeric_limits<acc_t>::quiet_NaN();
        }
      }
      store_item<kVector, VEC>(reconstruction, first, count, out);
    });
  }

  sum = block_sum(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// One block: loss = (sum of the count partials) / B. Thread t adds partials t, t + kThreads,
// ... in order, then block_sum combines the threads.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) loss_finalize_kernel(
    const at::opmath_type<scalar_t>* __restrict__ partials, int count, int64_t B, scalar_t* __restrict__ loss) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t sum = 0;
  for (int b = threadIdx.x; b < count; b += kThreads) sum += partials[b];
  sum = block_sum(sum);
  if (threadIdx.x == 0) *loss = static_cast<scalar_t>(sum / static_cast<acc_t>(B));
}

// ---------------------------------------------------------------------------------------
// Backward.

// grad_logits = sigmoid_loss_logit_grad(xhat, x, g, grad_loss / B) elementwise, with an
// absent gradient (null pointer) read as zero. grad_loss is read here, on the device, so
// the host never waits for it.
template <typename scalar_t, int VEC, bool kVector, bool kCrossEntropy>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM) loss_backward_kernel(
    const scalar_t* __restrict__ grad_reconstruction, const scalar_t* __restrict__ grad_loss,
    const scalar_t* __restrict__ reconstruction, const scalar_t* __restrict__ target,
    scalar_t* __restrict__ grad_logits, int64_t numel, int64_t items, int64_t B) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const acc_t loss_scale =
      grad_loss != nullptr ? static_cast<acc_t>(*grad_loss) / static_cast<acc_t>(B) : acc_t(0);
  const bool has_grad = grad_reconstruction != nullptr;

  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; base < items; base += stride * kBackwardUnroll) {
    Pack<scalar_t, VEC> xhat[kBackwardUnroll], x[kBackwardUnroll], g[kBackwardUnroll];
    for_each_item<kBackwardUnroll, VEC>(base, stride, items, numel, [&](int u, int64_t first, int count) {
      xhat[u] = load_item<kVector, VEC>(reconstruction, first, count);
      x[u] = load_item<kVector, VEC>(target, first, count);
      if (has_grad) g[u] = load_item<kVector, VEC>(grad_reconstruction, first, count);
    });
    for_each_item<kBackwardUnroll, VEC>(base, stride, items, numel, [&](int u, int64_t first, int count) {
      Pack<scalar_t, VEC> out;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const acc_t upstream = has_grad ? static_cast<acc_t>(g[u].val[v]) : acc_t(0);
        out.val[v] = static_cast<scalar_t>(sigmoid_loss_logit_grad(
            static_cast<acc_t>(xhat[u].val[v]), static_cast<acc_t>(x[u].val[v]), upstream, loss_scale,
            kCrossEntropy));
      }
      store_item<kVector, VEC>(grad_logits, first, count, out);
    });
  }
}

// ---------------------------------------------------------------------------------------
// Host side.

// Calls f(std::bool_constant<vector>, std::bool_constant<cross_entropy>): the kernels take
// both as template arguments.
template <typename F>
void with_flags(bool vector, bool cross_entropy, const F& f) {
  if (vector) {
    if (cross_entropy) {
      f(std::true_type{}, std::true_type{});
    } else {
      f(std::true_type{}, std::false_type{});
    }
  } else {
    if (cross_entropy) {
      f(std::false_type{}, std::true_type{});
    } else {
      f(std::false_type{}, std::false_type{});
    }
  }
}

std::tuple<at::Tensor, at::Tensor> sigmoid_reconstruction_loss_cuda(
    const at::Tensor& logits_in, const at::Tensor& target_in, bool cross_entropy) {
  check_reconstruction_loss_inputs(logits_in, target_in);
  const c10::cuda::CUDAGuard device_guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), target = target_in.contiguous();
  const int64_t B = logits.size(0), n = logits.size(1), numel = logits.numel();
  at::Tensor reconstruction = at::empty({B, n}, logits.options());
  if (numel == 0) {
    // No features: nothing to reconstruct, and the loss of an empty sum is 0.
    return {reconstruction, at::zeros({}, logits.options())};
  }
  at::Tensor loss = at::empty({}, logits.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "pyae_sigmoid_reconstruction_loss_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int VEC = item_width<scalar_t>();
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    const scalar_t* x = target.const_data_ptr<scalar_t>();
    scalar_t* xhat = reconstruction.mutable_data_ptr<scalar_t>();
    const bool vector = all_aligned(kVectorBytes, z, x, xhat);
    const FlatGrid grid(numel, VEC);

    at::Tensor workspace = at::empty({grid.blocks}, opmath_options(logits));
    acc_t* partials = workspace.mutable_data_ptr<acc_t>();

    with_flags(vector, cross_entropy, [&](auto vector_access, auto ce) {
      loss_kernel<scalar_t, VEC, decltype(vector_access)::value, decltype(ce)::value>
          <<<static_cast<unsigned>(grid.blocks), kThreads, 0, stream>>>(z, x, xhat, numel, grid.items, partials);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    loss_finalize_kernel<scalar_t><<<1, kThreads, 0, stream>>>(
        partials, static_cast<int>(grid.blocks), B, loss.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {reconstruction, loss};
}

at::Tensor sigmoid_reconstruction_loss_backward_cuda(
    const c10::optional<at::Tensor>& grad_reconstruction_in,
    const c10::optional<at::Tensor>& grad_loss,
    const at::Tensor& reconstruction_in,
    const at::Tensor& target_in,
    bool cross_entropy) {
  check_reconstruction_loss_backward_inputs(grad_reconstruction_in, grad_loss, reconstruction_in, target_in);
  const c10::cuda::CUDAGuard device_guard(reconstruction_in.device());
  const at::Tensor reconstruction = reconstruction_in.contiguous(), target = target_in.contiguous();
  const c10::optional<at::Tensor> grad_reconstruction =
      grad_reconstruction_in.has_value() ? c10::optional<at::Tensor>(grad_reconstruction_in->contiguous()) : c10::nullopt;
  const int64_t B = reconstruction.size(0), n = reconstruction.size(1), numel = reconstruction.numel();
  at::Tensor grad_logits = at::empty({B, n}, reconstruction.options());
  if (numel == 0) return grad_logits;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, reconstruction.scalar_type(), "pyae_sigmoid_reconstruction_loss_backward_cuda", [&] {
        constexpr int VEC = item_width<scalar_t>();
        const scalar_t* xhat = reconstruction.const_data_ptr<scalar_t>();
        const scalar_t* x = target.const_data_ptr<scalar_t>();
        const scalar_t* g = data_or_null<scalar_t>(grad_reconstruction);
        const scalar_t* g_loss = data_or_null<scalar_t>(grad_loss);
        scalar_t* out = grad_logits.mutable_data_ptr<scalar_t>();
        const bool vector = all_aligned(kVectorBytes, xhat, x, out, g);
        const FlatGrid grid(numel, VEC);

        with_flags(vector, cross_entropy, [&](auto vector_access, auto ce) {
          loss_backward_kernel<scalar_t, VEC, decltype(vector_access)::value, decltype(ce)::value>
              <<<static_cast<unsigned>(grid.blocks), kThreads, 0, stream>>>(
                  g, g_loss, xhat, x, out, numel, grid.items, B);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CUDA, m) {
  m.impl("sigmoid_reconstruction_loss", &sigmoid_reconstruction_loss_cuda);
  m.impl("sigmoid_reconstruction_loss_backward", &sigmoid_reconstruction_loss_backward_cuda);
}

}  // namespace pyae
