// Tiling shared by the CPU kernels.
//
// The passes over a (B, m) tensor split its rows into fixed tiles of kRowsPerTile whole
// rows: contiguous memory that the prefetchers stream, and independent work items for
// at::parallel_for. Reductions over the batch write one partial sum per tile and column, and
// the partials are added in tile order afterwards, so results are bitwise reproducible
// whatever the number of threads.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>

// The hot loops are compiled for several x86-64 levels (AVX-512, AVX2 + FMA, and the
// baseline's SSE2), and the loader picks the best the CPU runs (GCC's target_clones, an
// ifunc): an extension is built with baseline flags, which would leave these loops at a
// quarter of the vector width ATen's own kernels use. The choice is made once per machine,
// so results stay reproducible on it. (GCC 11 named the x86-64 levels; older compilers, other
// compilers and other architectures build the baseline loops alone.)
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && defined(__linux__)
#define PYAE_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYAE_CPU_MULTIVERSION
#endif

namespace pyae {
namespace cpu {

constexpr int64_t kRowsPerTile = 64;

struct RowTiles {
  int64_t rows, count;
  explicit RowTiles(int64_t rows) : rows(rows), count((rows + kRowsPerTile - 1) / kRowsPerTile) {}

  // Calls body(row_begin, row_end, tile) for every tile, in parallel. The caller's
  // thread-local state (inference mode, dispatch keys) goes with each worker, since bodies
  // call ATen (sigmoid_rows); where the tiles would run serially anyway they run here,
  // without that state's capture (whose cost is much of a small batch's pass).
  template <typename Body>
  void for_each(const Body& body) const {
    const auto run = [&](int64_t first, int64_t last) {
      for (int64_t tile = first; tile < last; ++tile) {
        const int64_t row_begin = tile * kRowsPerTile;
        body(row_begin, std::min(row_begin + kRowsPerTile, rows), tile);
      }
    };
    if (count <= 1 || at::get_num_threads() <= 1 || at::in_parallel_region()) {
      run(0, count);
      return;
    }
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, count, 1, [&](int64_t first, int64_t last) {
      const at::ThreadLocalStateGuard state_guard(caller_state);
      run(first, last);
    });
  }
};

// partials is (row_tiles, count, k): adds the row tiles in order into totals (count, k).
template <typename acc_t>
void sum_row_tiles(const acc_t* partials, int64_t row_tiles, int64_t count, int64_t k, acc_t* totals) {
  at::parallel_for(0, count * k, 1024, [&](int64_t first, int64_t last) {
    for (int64_t j = first; j < last; ++j) {
      acc_t total = 0;
      for (int64_t tile = 0; tile < row_tiles; ++tile) {
        total += partials[tile * count * k + j];
      }
      totals[j] = total;
    }
  });
}

// output = sigmoid(input) on rows [r0, r1) of two (B, m) contiguous tensors (output may be
// input: in place), called from a RowTiles::for_each body.
//
// ATen's sigmoid is vectorized for the CPU at hand, with a vector loop and a scalar tail that
// can differ in the last bit. Inside a parallel region it runs serially on the tile, so
// where its tails fall depends on the tiles, a function of the shape alone: results stay
// bitwise the same whatever the number of threads. The tile is then hot in cache for the
// pass that follows.
inline void sigmoid_rows(const at::Tensor& input, const at::Tensor& output, int64_t r0, int64_t r1) {
  if (r0 == 0 && r1 == input.size(0)) {  // one tile: no views to make
    at::Tensor out = output;
    at::sigmoid_out(out, input);
    return;
  }
  at::Tensor out = output.narrow(0, r0, r1 - r0);
  at::sigmoid_out(out, input.narrow(0, r0, r1 - r0));
}

}  // namespace cpu
}  // namespace pyae
