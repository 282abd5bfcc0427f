// Shared pieces of the CUDA kernels: storage types and conversions, warp sums, launch checks, dtype
// dispatch. Torch-free (like every .cu here), so CI can compile the kernels with nvcc alone.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../kernel_args.h"
#include "../vae_math.h"

namespace vaecuda {
namespace cuda {

using namespace ::vaecuda::math;

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(uint8_t v) { return static_cast<float>(v); }

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Element j of an operand whose row starts at p.
template <typename T>
__device__ __forceinline__ auto at(const T* p, int64_t j, int64_t stride) -> decltype(to_acc(p[0])) {
  return to_acc(p[j * stride]);
}

// The (seed, offset) of a sampling call: read on the device when rng_state lives there (so a
// captured graph replays with whatever the tensor holds), else the host copy.
__device__ __forceinline__ void stream_key(const ReparamArgs& a, uint64_t& seed, uint64_t& offset) {
  seed = a.rng_state ? static_cast<uint64_t>(a.rng_state[0]) : a.seed;
  offset = a.rng_state ? static_cast<uint64_t>(a.rng_state[1]) : a.offset;
}

inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("vaecuda: CUDA kernel ") + kernel + " failed to launch: " +
                             cudaGetErrorString(err));
}

// Grids of at most VAECUDA_MAX_BLOCKS blocks: past that every kernel loops grid-stride. (The CPU
// emulation in tests/cuda_emu makes it a variable, to run those loops with one and two blocks.)
#ifndef VAECUDA_MAX_BLOCKS
#define VAECUDA_MAX_BLOCKS (int64_t(65535) * 32)
#endif
inline unsigned int blocks_for(int64_t work, int64_t per_block) {
  const int64_t b = (work + per_block - 1) / per_block, cap = VAECUDA_MAX_BLOCKS;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > cap ? cap : b));
}

// ---------------------------------------------------------------------------------------------------
// Rows and quads. Every kernel walks its [rows, cols] operands in quads: 4 consecutive columns of a
// row (a row's last quad is short when cols % 4 != 0). An operand is "quad-ready" when each of its
// quads is one aligned vector load (16 bytes for float, 8 for 16-bit types, 4 for uint8): columns
// contiguous, cols % 4 == 0, an aligned base and row strides that keep every row aligned. Otherwise
// the same quads are read as 4 strided scalar loads. The layout decides only how a quad is loaded:
// the arithmetic, and so the bits, depend on the values and cols alone.

template <typename T>
struct alignas(4 * sizeof(T)) Pack4 {
  T v[4];
};

template <typename T>
inline bool quad_ready(const void* p, const RowView& v, int64_t cols) {
  if (cols % 4 != 0 || v.col_stride != 1 || reinterpret_cast<uintptr_t>(p) % sizeof(Pack4<T>) != 0) return false;
  for (int d = 0; d < v.ndim; ++d)
    if (v.strides[d] % 4 != 0) return false;
  return true;
}
// A contiguous [rows, cols] output the op allocated.
template <typename T>
inline bool quad_ready_out(const void* p, int64_t cols) {
  return cols % 4 == 0 && reinterpret_cast<uintptr_t>(p) % sizeof(Pack4<T>) == 0;
}

// Columns j .. j+3 of a row starting at `row` (column stride `stride`), in the accumulation type;
// columns past the row's end read as 0.
template <typename T, typename A>
__device__ __forceinline__ void load_quad(const T* row, int64_t j, int64_t cols, int64_t stride, bool ready,
                                          A (&out)[4]) {
  if (ready) {
    const Pack4<T> p = *reinterpret_cast<const Pack4<T>*>(row + j);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = static_cast<A>(to_acc(p.v[i]));
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = j + i < cols ? static_cast<A>(to_acc(row[(j + i) * stride])) : A(0);
  }
}

template <typename T, typename A>
__device__ __forceinline__ void store_quad(T* row, int64_t j, int64_t cols, bool ready, const A (&v)[4]) {
  if (ready) {
    Pack4<T> p;
#pragma unroll
    for (int i = 0; i < 4; ++i) p.v[i] = from_acc<T>(v[i]);
    *reinterpret_cast<Pack4<T>*>(row + j) = p;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (j + i < cols) row[j + i] = from_acc<T>(v[i]);
  }
}

// Additions that are never fused with a multiply into an FMA: a row sum is the same sequence of
// roundings in every kernel that computes it (the KL of reparameterize_with_kl equals gaussian_kl's).
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

// acc plus the terms of the columns of the quad at j that exist, in order. A whole quad (every quad
// when cols % 4 == 0) skips the 64-bit test per column: the bf16 Bernoulli forward, bound by
// instruction issue, 43.0 -> 41.2 instructions per element along its common path (sm_90).
template <typename A>
__device__ __forceinline__ A add_quad(A acc, const A (&t)[4], int64_t j, int64_t cols) {
  if (j + 4 <= cols) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc = add_rn(acc, t[i]);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (j + i < cols) acc = add_rn(acc, t[i]);
  }
  return acc;
}

// Row kernels give each row `lanes` threads: 8 or 16 (a sub-warp, rows of up to 32 or 64 columns, so
// that latent widths like 64 leave no lane idle), 32 (a warp, up to 1024) or the whole block (wider
// rows). Lane l takes quads l, l + lanes, ... in order.
inline int lanes_per_row(int64_t cols) {
  const int64_t quads = (cols + 3) / 4;
  return quads <= 8 ? 8 : quads <= 16 ? 16 : quads <= 256 ? 32 : kThreads;
}
inline unsigned int row_blocks(int64_t rows, int lanes) { return blocks_for(rows, kThreads / lanes); }

// The sum over a row's `lanes` threads by a fixed tree; the total lands in the row's first thread.
// Every thread of the block calls it the same number of times (it shuffles across whole warps and,
// for a block per row, synchronizes the block).
template <typename A>
__device__ __forceinline__ A row_sum(A v, int lanes) {
  if (lanes <= 32) {
    for (int o = lanes / 2; o > 0; o >>= 1) v = add_rn(v, __shfl_down_sync(0xffffffffu, v, o, lanes));
    return v;
  }
  __shared__ A part[kWarpsPerBlock];
  for (int o = 16; o > 0; o >>= 1) v = add_rn(v, __shfl_down_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < kWarpsPerBlock; ++w) v = add_rn(v, part[w]);
  __syncthreads();
  return v;
}

// The row loop of every row kernel: `lanes` threads per row, kThreads / lanes rows to a block, grid-
// stride over groups of rows, so that every thread of a block runs the same iterations (row_sum shuffles
// whole warps and, for a block per row, synchronizes the block). lane_sum(r, lane) runs for real rows
// only and returns that lane's part of row r; with `sum` set, write(r, total) gets each row's total in
// the row's first thread.
template <typename A, typename LaneSum, typename Write>
__device__ __forceinline__ void for_each_row(int64_t rows, int lanes, bool sum, LaneSum&& lane_sum, Write&& write) {
  const int per_block = kThreads / lanes, lane = threadIdx.x % lanes;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * per_block; first < rows;
       first += static_cast<int64_t>(gridDim.x) * per_block) {
    const int64_t r = first + threadIdx.x / lanes;
    const bool valid = r < rows;
    A acc = valid ? lane_sum(r, lane) : A(0);
    if (sum) {
      acc = row_sum(acc, lanes);
      if (valid && lane == 0) write(r, acc);
    }
  }
}

// A lane's quads first, first + step, ... (< end) of one row, software-pipelined: the next quad's
// loads are issued before the current quad's body runs, so they are in flight while it computes, and a
// lane waits on its loads with two quads' worth outstanding instead of one. For the sampling kernels,
// whose ~85-95 instructions per element (Philox, Box-Muller, exp) take about as long as their memory
// traffic, a warp that waited for its loads between quads would leave the memory system idle; for the
// KL and Bernoulli kernels, of few instructions per element, one quad's loads a lane (8 bytes an
// operand in bf16) are too few bytes in flight per SM to cover the memory's latency. load(q, in) fills
// an In; body(q, in) uses it. Same quads, same order.
// Unrolled by two, the buffers trading roles: a loop of one body would copy the next quad's inputs
// into the current one's registers and zero the next buffer on every quad (~18 instructions a quad
// in the sampling backward's SASS for sm_90, ~4 an element); here each buffer is zeroed once a row.
template <typename In, typename Load, typename Body>
__device__ __forceinline__ void pipelined_quads(int64_t first, int64_t end, int64_t step, Load&& load, Body&& body) {
  In a{}, b{};
  if (first < end) load(first, a);
  for (int64_t q = first; q < end; q += 2 * step) {
    const int64_t q1 = q + step;
    if (q1 < end) load(q1, b);
    body(q, a);
    if (q1 >= end) break;
    if (q1 + step < end) load(q1 + step, a);
    body(q1, b);
  }
}

// dtype dispatch (kernel_args.h) with CUDA's 16-bit storage types.
template <typename F>
void dispatch_float(Dtype t, F&& f) {
  ::vaecuda::dispatch_float<__half, __nv_bfloat16>(t, f);
}
template <typename F>
void dispatch_target(Dtype t, F&& f) {
  ::vaecuda::dispatch_target<__half, __nv_bfloat16>(t, f);
}

}  // namespace cuda
}  // namespace vaecuda
