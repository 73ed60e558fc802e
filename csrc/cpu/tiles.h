// Tiling shared by the CPU kernels.
//
// Reductions over the batch are split into fixed tiles of kRowsPerTile rows by
// kColumnsPerTile columns. Each tile writes its own partial sums and the partials are added
// in tile order afterwards, so results are bitwise reproducible whatever the number of
// threads, and the tiles are independent work items for at::parallel_for.
#pragma once

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

// float for float/half/bfloat16, double for double: the type partial sums are kept in.
inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace cpu
}  // namespace pyae
