// CUDA backend of the sigmoid encoder operators: the fused passes over (B, k).
//
// The matrix products stay in cuBLAS (encoder_host.h); these kernels do everything around
// them, in as few launches and memory passes as possible:
//
//   forward   activate_kernel            h = sigmoid(a) in place, per-chunk column sums of h, d^2
//             forward_finalize_kernel    mean_activation, c_l = ||W_l||^2, contractive scalar
//   backward  squared_row_norms_kernel   c_l (only when grad_contractive is given and the
//                                        forward's c is not)
//             delta_kernel               delta_a, per-chunk column sums of delta_a, d^2
//             backward_finalize_kernel   grad_bias, row_scale (only when either is wanted)
//
// The KL sparsity penalty of the mean activations is in cuda/penalty_kernels.cu.
//
// Determinism: every floating-point sum is taken in an order fixed by the shapes alone.
// The (B, k) passes split the rows into chunks whose size depends only on (B, k) and the
// dtype (not on pointer alignment, not on the device), each thread adds its rows
// in ascending order, the row lanes of a block are combined in lane order, each chunk writes
// its own partial column sums (no floating atomics), and the finalize kernels add the chunks
// in chunk order. The one atomic is an integer ticket that elects which block of the forward
// finalize adds the per-block contractive terms; that block adds them in block order, so the
// choice of block does not change the result.
//
// No host synchronization anywhere: grad_contractive is read through its device pointer
// inside the kernels, every launch goes to the current stream, and the workspace comes from
// the caching allocator, so both operators can be captured in a CUDA graph.

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
#include <type_traits>

#include "cuda/host_helpers.h"
#include "cuda/row_norms.cuh"
#include "cuda/vector_access.cuh"
#include "encoder_host.h"
#include "kernel_math.h"

namespace pyae {
namespace {

using at::ceil_div;
using cuda_detail::all_aligned;
using cuda_detail::data_or_null;
using cuda_detail::is_aligned;
using cuda_detail::load_pack;
using cuda_detail::opmath_options;
using cuda_detail::Pack;
using cuda_detail::store_pack;
using cuda_detail::kNormThreads;
using cuda_detail::kNormWarps;
using cuda_detail::pack_width;
using cuda_detail::warp_squared_norm;
using cuda_detail::with_width;

// ---------------------------------------------------------------------------------------
// Geometry of the fused (B, k) passes.
//
// A block is kColumnThreads x kRowLanes threads. Thread (tx, ty) owns VEC consecutive
// columns, so a warp (one ty) reads 32 * VEC consecutive elements of one row: coalesced,
// with VEC-wide vector loads. The ty lanes walk the rows of the block's chunk with stride
// kRowLanes. blockIdx.x picks the column tile, blockIdx.y the row chunk.
constexpr int kColumnThreads = 32;
constexpr int kRowLanes = 4;
constexpr int kPassThreads = kColumnThreads * kRowLanes;  // 128
// Chunking aims at about kTargetBlocks blocks (about 4 blocks of 128 threads per SM of a
// 132-SM H100/H200; B=256, k=1000 gets 256 blocks), but never fewer than kMinRowsPerChunk
// rows per chunk, which bounds the partial-sum workspace to 2 / kMinRowsPerChunk floats
// per element of (B, k). Both are constants, so the chunking is a function of the shapes.
constexpr int64_t kTargetBlocks = 512;
constexpr int64_t kMinRowsPerChunk = 2 * kRowLanes;

// The finalize kernels: a block of kFinalizeColumns columns x kFinalizeLanes lanes, lane ty
// adds chunks ty, ty + kFinalizeLanes, ... of its column.
constexpr int kFinalizeColumns = 16;
constexpr int kFinalizeLanes = 16;
constexpr int kFinalizeThreads = kFinalizeColumns * kFinalizeLanes;  // 256
constexpr int kFinalizeWarps = kFinalizeThreads / 32;

// Rows each lane loads before it computes: enough bytes in flight per thread (~64) to cover
// memory latency at the large sizes, where a pass has only ~4 blocks per SM. The delta pass
// reads two arrays (h and grad_hidden), so it gets there with half the rows.
template <typename scalar_t, int VEC>
constexpr int row_unroll(int streams) {
  return (VEC * sizeof(scalar_t) >= 16 ? 4 : 8) / streams;
}
// The passes launch about kTargetBlocks = 512 blocks: 4 resident blocks per SM (registers
// <= 128 per thread) run them in a single wave on 132 SMs.
constexpr int kPassMinBlocksPerSM = 4;

// ---------------------------------------------------------------------------------------
// Device helpers shared by the kernels.

// Where thread (tx, ty) of a (B, k) pass works: its block's column tile (blockIdx.x) starts
// at column tile_begin, the thread's VEC columns at col, and its block's row chunk
// (blockIdx.y) is rows [row_begin, row_end).
template <int VEC>
struct PassBlock {
  static constexpr int kTile = kColumnThreads * VEC;
  int tx, ty;
  int64_t tile_begin, col, row_begin, row_end;

  __device__ __forceinline__ PassBlock(int64_t B, int64_t rows_per_chunk)
      : tx(threadIdx.x),
        ty(threadIdx.y),
        tile_begin(static_cast<int64_t>(blockIdx.x) * kTile),
        col(tile_begin + tx * VEC),
        row_begin(static_cast<int64_t>(blockIdx.y) * rows_per_chunk),
        row_end(row_begin + rows_per_chunk < B ? row_begin + rows_per_chunk : B) {}
};

// Combines the kRowLanes lane sums of a block in lane order and writes the block's chunk
// partials: partials[chunk][j][col], j = 0 (h or delta) and 1 (d^2). All threads of the
// block share the writes so that they are coalesced.
template <typename acc_t, int kTile>
__device__ __forceinline__ void store_chunk_partials(
    const acc_t (&lane_sums)[kRowLanes][2][kTile], acc_t* __restrict__ partials, int64_t k, int64_t tile_begin,
    int64_t chunk) {
  const int tid = threadIdx.y * kColumnThreads + threadIdx.x;
  for (int o = tid; o < 2 * kTile; o += kPassThreads) {
    const int j = o / kTile;
    const int c = o % kTile;
    const int64_t col = tile_begin + c;
    if (col < k) {
      acc_t total = lane_sums[0][j][c];
#pragma unroll
      for (int lane = 1; lane < kRowLanes; ++lane) total += lane_sums[lane][j][c];
      partials[(chunk * 2 + j) * k + col] = total;
    }
  }
}

// One step of a thread's walk down its block's row chunk: f(u, row) for each of the kUnroll
// rows r + u * kRowLanes, u ascending, that are in the chunk (row < row_end). A pass calls it
// twice per step, once for the loads, then once for the compute and stores.
template <int kUnroll, typename F>
__device__ __forceinline__ void for_each_row(int64_t r, int64_t row_end, const F& f) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t row = r + u * kRowLanes;
    if (row < row_end) f(u, row);
  }
}

// The end of a (B, k) pass, called by every thread of the block: the thread's column sums
// (sum0: h or delta, sum1: d^2) go to row ty of the block's lane sums, then
// store_chunk_partials writes the partials of the block's chunk.
template <int VEC, typename acc_t>
__device__ __forceinline__ void store_block_sums(
    const PassBlock<VEC>& block, const acc_t (&sum0)[VEC], const acc_t (&sum1)[VEC], acc_t* __restrict__ partials,
    int64_t k) {
  constexpr int kTile = PassBlock<VEC>::kTile;
  __shared__ acc_t lane_sums[kRowLanes][2][kTile];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    lane_sums[block.ty][0][block.tx * VEC + v] = sum0[v];
    lane_sums[block.ty][1][block.tx * VEC + v] = sum1[v];
  }
  __syncthreads();
  store_chunk_partials<acc_t, kTile>(lane_sums, partials, k, block.tile_begin, blockIdx.y);
}

// Thread (tx, ty) of a finalize block adds chunks ty, ty + kFinalizeLanes, ... of column
// tile_begin + tx into lane_sums[ty][j][tx]; the caller syncs and combines the lanes.
template <typename acc_t>
__device__ __forceinline__ void sum_chunk_lanes(
    const acc_t* __restrict__ partials, int64_t chunks, int64_t k, int64_t tile_begin,
    acc_t (&lane_sums)[kFinalizeLanes][2][kFinalizeColumns]) {
  const int tx = threadIdx.x % kFinalizeColumns;
  const int ty = threadIdx.x / kFinalizeColumns;
  const int64_t col = tile_begin + tx;
  acc_t s0 = 0, s1 = 0;
  if (col < k) {
    for (int64_t chunk = ty; chunk < chunks; chunk += kFinalizeLanes) {
      s0 += partials[(chunk * 2) * k + col];
      s1 += partials[(chunk * 2 + 1) * k + col];
    }
  }
  lane_sums[ty][0][tx] = s0;
  lane_sums[ty][1][tx] = s1;
}

template <typename acc_t>
__device__ __forceinline__ acc_t combine_lanes(const acc_t (&lane_sums)[kFinalizeLanes][2][kFinalizeColumns], int j, int c) {
  acc_t total = lane_sums[0][j][c];
#pragma unroll
  for (int lane = 1; lane < kFinalizeLanes; ++lane) total += lane_sums[lane][j][c];
  return total;
}

// ---------------------------------------------------------------------------------------
// Forward.

// hidden (B, k) holds a on entry and h = sigmoid(a) on exit. Block (tile, chunk) writes
// partials[chunk][0][l] = sum_i h_il and partials[chunk][1][l] = sum_i d_il^2 over the rows
// of its chunk, for the columns of its tile. h is rounded to scalar_t before it enters the
// sums, as on the CPU and in both backwards. Block (0, 0) also zeroes the ticket counter of
// the finalize kernel that follows on the same stream.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kPassThreads, kPassMinBlocksPerSM) activate_kernel(
    scalar_t* __restrict__ hidden, int64_t B, int64_t k, int64_t rows_per_chunk,
    at::opmath_type<scalar_t>* __restrict__ partials, unsigned int* __restrict__ counter) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kUnroll = row_unroll<scalar_t, VEC>(1);
  const PassBlock<VEC> block(B, rows_per_chunk);
  const int64_t col = block.col, row_end = block.row_end;
  acc_t h_sum[VEC] = {}, d2_sum[VEC] = {};

  if (col < k) {
    for (int64_t r = block.row_begin + block.ty; r < row_end; r += kRowLanes * kUnroll) {
      // Issue all loads of the group first: the stores below go to the same array, and
      // the compiler could not otherwise move later loads above them.
      Pack<scalar_t, VEC> a[kUnroll];
      for_each_row<kUnroll>(r, row_end, [&](int u, int64_t row) { a[u] = load_pack<VEC>(hidden + row * k + col); });
      for_each_row<kUnroll>(r, row_end, [&](int u, int64_t row) {
        Pack<scalar_t, VEC> out;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          const scalar_t rounded = static_cast<scalar_t>(sigmoid(static_cast<acc_t>(a[u].val[v])));
          const acc_t h = static_cast<acc_t>(rounded);
          const acc_t d = sigmoid_slope(h);
          out.val[v] = rounded;
          h_sum[v] += h;
          d2_sum[v] += d * d;
        }
        store_pack<VEC>(hidden + row * k + col, out);
      });
    }
  }

  store_block_sums(block, h_sum, d2_sum, partials, k);
  if (blockIdx.x == 0 && blockIdx.y == 0 && block.tx == 0 && block.ty == 0) *counter = 0u;
}

// Block b owns columns [16 b, 16 b + 16): it adds the chunk partials of its columns (chunk
// order, then lane order), writes mean_activation_l = S_h,l / B, computes and writes
// c_l = ||W_l||^2 for its 16 rows of weight (a warp per row; or reads them from given_norms
// when that is not null, and writes none), and publishes its term
// sum_l c_l * S_d2,l to
// block_terms[b]. The last block to finish (integer ticket) adds block_terms in block order
// with a tree and writes contractive = total / B.
template <typename scalar_t, int WVEC>
__global__ void __launch_bounds__(kFinalizeThreads) forward_finalize_kernel(
    const at::opmath_type<scalar_t>* __restrict__ partials, int64_t chunks, const scalar_t* __restrict__ weight,
    const at::opmath_type<scalar_t>* __restrict__ given_norms, int64_t B, int64_t k, int64_t n,
    scalar_t* __restrict__ mean_activation,
    at::opmath_type<scalar_t>* __restrict__ squared_row_norms, at::opmath_type<scalar_t>* __restrict__ block_terms,
    unsigned int* __restrict__ counter,
    scalar_t* __restrict__ contractive) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t lane_sums[kFinalizeLanes][2][kFinalizeColumns];
  __shared__ acc_t norms[kFinalizeColumns];
  __shared__ acc_t column_terms[kFinalizeColumns];
  __shared__ acc_t tree[kFinalizeThreads];
  __shared__ bool is_last;

  const int tid = threadIdx.x;
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.x) * kFinalizeColumns;
  const acc_t batch = static_cast<acc_t>(B);

  sum_chunk_lanes(partials, chunks, k, tile_begin, lane_sums);

  // c_l for the block's rows: warp w takes rows w, w + kFinalizeWarps, ... (warp-uniform
  // branches, so the shuffles see full warps).
  const int warp = tid / 32, lane = tid % 32;
  for (int r = warp; r < kFinalizeColumns; r += kFinalizeWarps) {
    const int64_t row = tile_begin + r;
    acc_t c = 0;
    if (row < k) c = given_norms != nullptr ? given_norms[row] : warp_squared_norm<WVEC>(weight + row * n, n, lane);
    if (lane == 0) norms[r] = c;
  }
  __syncthreads();

  if (tid < kFinalizeColumns) {
    const int64_t col = tile_begin + tid;
    acc_t term = 0;
    if (col < k) {
      mean_activation[col] = static_cast<scalar_t>(combine_lanes(lane_sums, 0, tid) / batch);
      if (given_norms == nullptr) squared_row_norms[col] = norms[tid];
      term = norms[tid] * combine_lanes(lane_sums, 1, tid);
    }
    column_terms[tid] = term;
  }
  __syncthreads();

  if (tid == 0) {
    acc_t block_term = 0;
#pragma unroll
    for (int c = 0; c < kFinalizeColumns; ++c) block_term += column_terms[c];
    block_terms[blockIdx.x] = block_term;
    // Make the term visible device-wide before taking a ticket, so that the block that
    // draws the last ticket sees every term.
    __threadfence();
    is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last) return;  // block-uniform

  __threadfence();
  acc_t sum = 0;
  for (int64_t b = tid; b < gridDim.x; b += kFinalizeThreads) sum += __ldcg(block_terms + b);  // L2, not a stale L1
  tree[tid] = sum;
  __syncthreads();
#pragma unroll
  for (int stride = kFinalizeThreads / 2; stride > 0; stride >>= 1) {
    if (tid < stride) tree[tid] += tree[tid + stride];
    __syncthreads();
  }
  if (tid == 0) *contractive = static_cast<scalar_t>(tree[0] / batch);
}

// ---------------------------------------------------------------------------------------
// Backward.

// c_l = ||W_l||^2, one warp per row.
template <typename scalar_t, int WVEC>
__global__ void __launch_bounds__(kNormThreads) squared_row_norms_kernel(
    const scalar_t* __restrict__ weight, int64_t k, int64_t n, at::opmath_type<scalar_t>* __restrict__ norms) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kNormWarps + threadIdx.x / 32;
  if (row >= k) return;  // warp-uniform
  const int lane = threadIdx.x % 32;
  const auto c = warp_squared_norm<WVEC>(weight + row * n, n, lane);
  if (lane == 0) norms[row] = c;
}

// delta_il = pre_activation_grad(h_il, g_h,il + g_row,l + g_rho,l / B, g_c * (2/B) * c_l),
// with each absent gradient (null pointer) read as zero (g_row: a grad_hidden broadcast
// along the batch). When partials is not null, block (tile, chunk)
// also writes partials[chunk][0][l] = sum_i delta_il and partials[chunk][1][l] = sum_i d_il^2
// over its chunk's rows. g_c is read here, on the device, so the host never waits for it.
template <typename scalar_t, int VEC>
__global__ void __launch_bounds__(kPassThreads, kPassMinBlocksPerSM) delta_kernel(
    const scalar_t* __restrict__ hidden, const scalar_t* __restrict__ grad_hidden,
    const scalar_t* __restrict__ grad_hidden_row, const scalar_t* __restrict__ grad_mean_activation,
    const scalar_t* __restrict__ grad_contractive,
    const at::opmath_type<scalar_t>* __restrict__ row_norms, scalar_t* __restrict__ delta, int64_t B, int64_t k,
    int64_t rows_per_chunk, at::opmath_type<scalar_t>* __restrict__ partials) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kUnroll = row_unroll<scalar_t, VEC>(2);
  const PassBlock<VEC> block(B, rows_per_chunk);
  const int64_t col = block.col, row_end = block.row_end;
  const bool reduce = partials != nullptr;
  acc_t delta_sum[VEC] = {}, d2_sum[VEC] = {};

  if (col < k) {
    // Per-column terms, the same expressions as the CPU backend.
    const acc_t inv_batch = acc_t(1) / static_cast<acc_t>(B);
    const acc_t contractive_scale =
        grad_contractive != nullptr ? static_cast<acc_t>(*grad_contractive) * 2 * inv_batch : acc_t(0);
    acc_t rho_term[VEC], coef[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      rho_term[v] = grad_mean_activation != nullptr ? static_cast<acc_t>(grad_mean_activation[col + v]) * inv_batch
                                                    : acc_t(0);
      if (grad_hidden_row != nullptr) rho_term[v] += static_cast<acc_t>(grad_hidden_row[col + v]);
      coef[v] = grad_contractive != nullptr ? row_norms[col + v] * contractive_scale : acc_t(0);
    }

    for (int64_t r = block.row_begin + block.ty; r < row_end; r += kRowLanes * kUnroll) {
      Pack<scalar_t, VEC> h[kUnroll], g[kUnroll];
      for_each_row<kUnroll>(r, row_end, [&](int u, int64_t row) {
        h[u] = load_pack<VEC>(hidden + row * k + col);
        if (grad_hidden != nullptr) g[u] = load_pack<VEC>(grad_hidden + row * k + col);
      });
      for_each_row<kUnroll>(r, row_end, [&](int u, int64_t row) {
        Pack<scalar_t, VEC> out;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          const acc_t value = static_cast<acc_t>(h[u].val[v]);
          const acc_t upstream = (grad_hidden != nullptr ? static_cast<acc_t>(g[u].val[v]) : acc_t(0)) + rho_term[v];
          const acc_t delta_il = pre_activation_grad(value, upstream, coef[v]);
          out.val[v] = static_cast<scalar_t>(delta_il);
          if (reduce) {
            const acc_t d = sigmoid_slope(value);
            delta_sum[v] += delta_il;
            d2_sum[v] += d * d;
          }
        }
        store_pack<VEC>(delta + row * k + col, out);
      });
    }
  }

  if (!reduce) return;  // grid-uniform
  store_block_sums(block, delta_sum, d2_sum, partials, k);
}

// Adds the chunk partials of the delta pass (chunk order, then lane order):
// grad_bias_l = sum_i delta_il, row_scale_l = g_c * (2/B) * sum_i d_il^2. Either output may
// be null (not wanted).
template <typename scalar_t>
__global__ void __launch_bounds__(kFinalizeThreads) backward_finalize_kernel(
    const at::opmath_type<scalar_t>* __restrict__ partials, int64_t chunks, int64_t B, int64_t k,
    const scalar_t* __restrict__ grad_contractive, scalar_t* __restrict__ grad_bias, scalar_t* __restrict__ row_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t lane_sums[kFinalizeLanes][2][kFinalizeColumns];
  const int tid = threadIdx.x;
  const int64_t tile_begin = static_cast<int64_t>(blockIdx.x) * kFinalizeColumns;

  sum_chunk_lanes(partials, chunks, k, tile_begin, lane_sums);
  __syncthreads();

  const int64_t col = tile_begin + tid;
  if (tid < kFinalizeColumns && col < k) {
    if (grad_bias != nullptr) grad_bias[col] = static_cast<scalar_t>(combine_lanes(lane_sums, 0, tid));
    if (row_scale != nullptr) {
      const acc_t contractive_scale = static_cast<acc_t>(*grad_contractive) * 2 * (acc_t(1) / static_cast<acc_t>(B));
      row_scale[col] = static_cast<scalar_t>(contractive_scale * combine_lanes(lane_sums, 1, tid));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Host side.

// The geometry of a (B, k) pass. The row chunking is computed for the dtype's wide vector
// width whatever width is launched, so it is a function of (B, k, dtype) alone: a column's
// sum runs in the same order whether or not the pointers allowed vector loads.
struct PassGrid {
  int64_t column_tiles, chunks, rows_per_chunk;

  PassGrid(int64_t B, int64_t k, int wide_width, int vec) {
    const int64_t wide_tiles = ceil_div(k, static_cast<int64_t>(kColumnThreads) * wide_width);
    const int64_t wanted = ceil_div(kTargetBlocks, wide_tiles);
    const int64_t most = ceil_div(B, kMinRowsPerChunk);
    rows_per_chunk = ceil_div(B, std::max<int64_t>(1, std::min(wanted, most)));
    chunks = ceil_div(B, rows_per_chunk);  // <= kTargetBlocks, well under gridDim.y's 65535
    column_tiles = ceil_div(k, static_cast<int64_t>(kColumnThreads) * vec);
    TORCH_CHECK(
        column_tiles <= std::numeric_limits<int32_t>::max(), "pyae: too many hidden units for one CUDA grid: ", k);
  }
  dim3 grid() const { return dim3(static_cast<unsigned>(column_tiles), static_cast<unsigned>(chunks)); }
  static dim3 block() { return dim3(kColumnThreads, kRowLanes); }
};

struct CudaBackend {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> activate_and_reduce(
      at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& given_norms) {
    const c10::cuda::CUDAGuard device_guard(hidden.device());
    const int64_t B = hidden.size(0), k = hidden.size(1), n = weight.size(1);
    const auto acc_options = opmath_options(hidden);
    at::Tensor mean_activation = at::empty({k}, hidden.options());
    at::Tensor squared_row_norms = at::empty({given_norms.has_value() ? 0 : k}, acc_options);
    if (k == 0) {
      // Nothing to activate; the penalty of zero hidden units is 0.
      return {mean_activation, at::zeros({}, hidden.options()), squared_row_norms};
    }
    at::Tensor contractive = at::empty({}, hidden.options());
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(), "pyae_sigmoid_encoder_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      constexpr int kWide = pack_width<scalar_t>();
      scalar_t* h = hidden.mutable_data_ptr<scalar_t>();
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      const bool wide_rows = k % kWide == 0 && is_aligned(h, kWide * sizeof(scalar_t));
      const bool wide_weight = n % kWide == 0 && is_aligned(w, kWide * sizeof(scalar_t));
      const PassGrid pass(B, k, kWide, wide_rows ? kWide : 1);
      const int64_t finalize_blocks = ceil_div<int64_t>(k, kFinalizeColumns);

      // One workspace: chunk partials (chunks, 2, k) | one term per finalize block | the
      // finalize's ticket counter (an unsigned int in the last slot).
      at::Tensor workspace = at::empty({pass.chunks * 2 * k + finalize_blocks + 1}, acc_options);
      acc_t* partials = workspace.mutable_data_ptr<acc_t>();
      acc_t* block_terms = partials + pass.chunks * 2 * k;
      unsigned int* counter = reinterpret_cast<unsigned int*>(block_terms + finalize_blocks);

      with_width<kWide>(wide_rows, [&](auto width) {
        constexpr int VEC = decltype(width)::value;
        activate_kernel<scalar_t, VEC>
            <<<pass.grid(), PassGrid::block(), 0, stream>>>(h, B, k, pass.rows_per_chunk, partials, counter);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      with_width<kWide>(wide_weight, [&](auto width) {
        constexpr int WVEC = decltype(width)::value;
        forward_finalize_kernel<scalar_t, WVEC><<<static_cast<unsigned>(finalize_blocks), kFinalizeThreads, 0, stream>>>(
            partials, pass.chunks, w, given_norms.has_value() ? given_norms->const_data_ptr<acc_t>() : nullptr, B, k, n,
            mean_activation.mutable_data_ptr<scalar_t>(),
            given_norms.has_value() ? nullptr : squared_row_norms.mutable_data_ptr<acc_t>(), block_terms, counter,
            contractive.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
    return {mean_activation, contractive, squared_row_norms};
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_pass(
      const at::Tensor& hidden,
      const at::Tensor& weight,
      const c10::optional<at::Tensor>& squared_row_norms,
      const c10::optional<at::Tensor>& grad_hidden,
      const c10::optional<at::Tensor>& grad_hidden_row,
      const c10::optional<at::Tensor>& grad_mean_activation,
      const c10::optional<at::Tensor>& grad_contractive,
      bool want_column_sums,
      bool want_row_scale) {
    const c10::cuda::CUDAGuard device_guard(hidden.device());
    const int64_t B = hidden.size(0), k = hidden.size(1), n = weight.size(1);
    const bool has_contractive = grad_contractive.has_value();
    want_row_scale = want_row_scale && has_contractive;
    const bool reduce = want_column_sums || want_row_scale;

    at::Tensor delta = at::empty({B, k}, hidden.options());
    at::Tensor grad_bias, row_scale;
    if (want_column_sums) grad_bias = at::empty({k}, hidden.options());
    if (want_row_scale) row_scale = at::empty({k}, hidden.options());
    if (k == 0) return {delta, grad_bias, row_scale};
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, hidden.scalar_type(), "pyae_sigmoid_encoder_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          constexpr int kWide = pack_width<scalar_t>();
          constexpr size_t kWideBytes = kWide * sizeof(scalar_t);
          const scalar_t* h = hidden.const_data_ptr<scalar_t>();
          const scalar_t* g_h = data_or_null<scalar_t>(grad_hidden);
          const scalar_t* g_row = data_or_null<scalar_t>(grad_hidden_row);
          const scalar_t* g_rho = data_or_null<scalar_t>(grad_mean_activation);
          const scalar_t* g_c = data_or_null<scalar_t>(grad_contractive);
          const scalar_t* w = weight.const_data_ptr<scalar_t>();
          scalar_t* out = delta.mutable_data_ptr<scalar_t>();
          const bool wide_rows = k % kWide == 0 && all_aligned(kWideBytes, h, out, g_h);
          const bool wide_weight = n % kWide == 0 && is_aligned(w, kWideBytes);
          const PassGrid pass(B, k, kWide, wide_rows ? kWide : 1);

          // One workspace: c (k,) when g_c is given without the forward's c | chunk
          // partials (chunks, 2, k) when a column sum is wanted.
          const bool compute_norms = has_contractive && !squared_row_norms.has_value();
          const int64_t norms_size = compute_norms ? k : 0;
          const int64_t partials_size = reduce ? pass.chunks * 2 * k : 0;
          at::Tensor workspace = at::empty({norms_size + partials_size}, opmath_options(hidden));
          const acc_t* norms = nullptr;
          if (has_contractive) {
            norms = compute_norms ? workspace.mutable_data_ptr<acc_t>() : squared_row_norms->const_data_ptr<acc_t>();
          }
          acc_t* partials = reduce ? workspace.mutable_data_ptr<acc_t>() + norms_size : nullptr;

          if (compute_norms) {
            with_width<kWide>(wide_weight, [&](auto width) {
              constexpr int WVEC = decltype(width)::value;
              squared_row_norms_kernel<scalar_t, WVEC>
                  <<<static_cast<unsigned>(ceil_div<int64_t>(k, kNormWarps)), kNormThreads, 0, stream>>>(
                      w, k, n, workspace.mutable_data_ptr<acc_t>());
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            });
          }
          with_width<kWide>(wide_rows, [&](auto width) {
            constexpr int VEC = decltype(width)::value;
            delta_kernel<scalar_t, VEC><<<pass.grid(), PassGrid::block(), 0, stream>>>(
                h, g_h, g_row, g_rho, g_c, norms, out, B, k, pass.rows_per_chunk, partials);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
          if (reduce) {
            backward_finalize_kernel<scalar_t>
                <<<static_cast<unsigned>(ceil_div<int64_t>(k, kFinalizeColumns)), kFinalizeThreads, 0, stream>>>(
                    partials, pass.chunks, B, k, g_c, want_column_sums ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr,
                    want_row_scale ? row_scale.mutable_data_ptr<scalar_t>() : nullptr);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        });
    return {delta, grad_bias, row_scale};
  }
};

at::Tensor squared_row_norms_cuda(const at::Tensor& weight) {
  check_squared_row_norms_input(weight);
  const c10::cuda::CUDAGuard device_guard(weight.device());
  const at::Tensor weight_c = weight.contiguous();
  const int64_t k = weight_c.size(0), n = weight_c.size(1);
  at::Tensor norms = at::empty({k}, opmath_options(weight_c));
  if (k == 0) return norms;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight_c.scalar_type(), "pyae_squared_row_norms_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kWide = pack_width<scalar_t>();
    const scalar_t* w = weight_c.const_data_ptr<scalar_t>();
    const bool wide_weight = n % kWide == 0 && is_aligned(w, kWide * sizeof(scalar_t));
    with_width<kWide>(wide_weight, [&](auto width) {
      constexpr int WVEC = decltype(width)::value;
      squared_row_norms_kernel<scalar_t, WVEC>
          <<<static_cast<unsigned>(ceil_div<int64_t>(k, kNormWarps)), kNormThreads, 0,
             at::cuda::getCurrentCUDAStream()>>>(w, k, n, norms.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return norms;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyae, CUDA, m) {
  m.impl("sigmoid_encoder", &sigmoid_encoder_forward<CudaBackend>);
  m.impl("sigmoid_encoder_backward", &sigmoid_encoder_backward<CudaBackend>);
  m.impl("sigmoid_encoder_preactivation_backward", &sigmoid_encoder_preactivation_backward<CudaBackend>);
  m.impl("squared_row_norms", &squared_row_norms_cuda);
}

}  // namespace pyae
