// Tiling shared by the CPU kernels.
//
// Reductions over the batch are split into fixed tiles of kRowsPerTile rows by
// kColumnsPerTile columns. Each tile writes its own partial sums and the partials are added
// in tile order afterwards, so results are bitwise reproducible whatever the number of
// threads, and the tiles are independent work items for at::parallel_for.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/ScalarType.h>

#include <algorithm>
#include <cstdint>

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

  // Calls body(row_begin, row_end, column_begin, column_end, row_tile) for every tile, in parallel.
  template <typename Body>
  void for_each_tile(const Body& body) const {
    at::parallel_for(0, tiles(), 1, [&](int64_t first, int64_t last) {
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

// output = sigmoid(input) for (B, m) contiguous tensors (output may be input: in place).
//
// ATen's sigmoid is vectorized for the CPU at hand (AVX2, AVX-512), which an extension built
// with default flags cannot match for exp. Its vector loop and its scalar tail can differ in
// the last bit, so it runs on slabs of whole rows fixed by the shape, each below ATen's
// parallel grain (so each is one serial call): where the tails fall then depends on the
// shape alone, never on the number of threads, and results stay bitwise reproducible.
inline void sigmoid_in_fixed_slabs(const at::Tensor& input, const at::Tensor& output) {
  const int64_t rows = input.size(0), columns = input.size(1);
  const int64_t rows_per_slab = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(columns, 1));
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per_slab) {
    const int64_t count = std::min(rows_per_slab, rows - r0);
    at::Tensor out = output.narrow(0, r0, count);
    at::sigmoid_out(out, input.narrow(0, r0, count));
  }
}

// float for float/half/bfloat16, double for double: the type partial sums are kept in.
inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace cpu
}  // namespace pyae
