// How a kernel finds element (row, col) of one operand without copying it: every vaecuda op sees its
// operands as a matrix [rows, cols] (rows = the batch dims flattened, cols = the reduced event dims),
// and each operand keeps its own strides, so broadcast (stride 0) and non-contiguous inputs are read
// in place. Torch-free so the CPU kernels and CUDA kernels can both take it by value.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define VAE_RV_HD __host__ __device__ __forceinline__
#else
#define VAE_RV_HD inline
#endif

namespace vaecuda {

constexpr int kMaxRowDims = 6;

struct RowView {
  int32_t ndim = 0;                  // batch dims left after merging; 0: every row starts at offset 0
  int64_t sizes[kMaxRowDims] = {};   // innermost last
  int64_t strides[kMaxRowDims] = {};
  int64_t col_stride = 0;            // 0 when the operand is broadcast along the event dims

  VAE_RV_HD int64_t row_offset(int64_t row) const {
    if (ndim == 1) return row * strides[0];  // the common case: one merged batch dim
    int64_t off = 0;
    for (int32_t d = ndim - 1; d >= 0; --d) {
      const int64_t i = row % sizes[d];
      row /= sizes[d];
      off += i * strides[d];
    }
    return off;
  }
};

}  // namespace vaecuda
