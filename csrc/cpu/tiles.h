// Tiling shared by the CPU kernels.
//
// Reductions over the batch are split into fixed tiles of kRowsPerTile rows by
// kColumnsPerTile columns. Each tile writes its own partial sums and the partials are added
// in tile order afterwards, so results are bitwise reproducible whatever the number of
// threads, and the tiles are independent work items for at::parallel_for.
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
// so results stay reproducible on it.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PYAE_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYAE_CPU_MULTIVERSION
#endif

namespace pyae {
namespace cpu {

constexpr int64_t kRowsPerTile = 64;
constexpr int64_t kColumnsPerTile = 512;

struct TileGrid {
  int64_t rows, columns, row_tiles, column_tiles;
  TileGrid(int64_t rows, int64_t columns)
      : rows(rows),
        columns(columns),
        row_tiles((rows + kRowsPerTile - 1) / kRowsPerTile),
        column_tiles((columns + kColumnsPerTile - 1) / kColumnsPerTile) {}
  int64_t tiles() const { return row_tiles * column_tiles; }

  // Calls body(row_begin, row_end, column_begin, column_end, row_tile) for every tile, in
  // parallel. The caller's thread-local state (inference mode, dispatch keys) goes with each
  // worker, since bodies call ATen (sigmoid_tile).
  template <typename Body>
  void for_each_tile(const Body& body) const {
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, tiles(), 1, [&](int64_t first, int64_t last) {
      const at::ThreadLocalStateGuard state_guard(caller_state);
      for (int64_t tile = first; tile < last; ++tile) {
        const int64_t row_tile = tile / column_tiles;
        const int64_t column_begin = (tile % column_tiles) * kColumnsPerTile;
        const int64_t row_begin = row_tile * kRowsPerTile;
        body(row_begin, std::min(row_begin + kRowsPerTile, rows), column_begin,
             std::min(column_begin + kColumnsPerTile, columns), row_tile);
      }
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

// output = sigmoid(input) on the tile [r0, r1) x [c0, c1) of two (B, m) contiguous tensors
// (output may be input: in place), called from a for_each_tile body.
//
// ATen's sigmoid is vectorized for the CPU at hand, with a vector loop and a scalar tail that
// can differ in the last bit. Inside a parallel region it runs serially on the tile, so
// where its tails fall depends on the tile grid, a function of the shape alone: results stay
// bitwise the same whatever the number of threads. The tile is then hot in cache for the
// pass that follows.
inline void sigmoid_tile(const at::Tensor& input, const at::Tensor& output, int64_t r0, int64_t r1, int64_t c0,
                         int64_t c1) {
  at::Tensor out = output.narrow(0, r0, r1 - r0).narrow(1, c0, c1 - c0);
  at::sigmoid_out(out, input.narrow(0, r0, r1 - r0).narrow(1, c0, c1 - c0));
}

// float for float/half/bfloat16, double for double: the type partial sums are kept in.
inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace cpu
}  // namespace pyae
