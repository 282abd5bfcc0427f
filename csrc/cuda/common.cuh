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

// Fixed shuffle tree: the same inputs give the same bits on every run.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
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

inline unsigned int blocks_for(int64_t work, int64_t per_block) {
  const int64_t b = (work + per_block - 1) / per_block;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > 65535 * 32 ? 65535 * 32 : b));  // grid-stride beyond
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
