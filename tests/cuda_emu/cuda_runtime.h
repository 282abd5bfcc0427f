// A CPU emulation of the bits of the CUDA runtime the vaecuda kernels use: one std::thread per CUDA
// thread, blocks run one after another, __syncthreads and warp shuffles by barriers.
#pragma once
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
#include <memory>

#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __forceinline__
#define __forceinline__ inline
#endif
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one at a time: a static is the block's shared memory

struct emu_dim3 { unsigned x = 0, y = 1, z = 1; };
inline thread_local emu_dim3 threadIdx, blockIdx;
inline emu_dim3 blockDim, gridDim;

#include "driver_types.h"  // cudaError_t, cudaStream_t (the toolkit's own)
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated"; }

struct EmuWarp {
  std::unique_ptr<std::barrier<>> bar;
  alignas(8) unsigned char slots[32][8];
};
inline std::barrier<>* emu_block_barrier = nullptr;
inline std::vector<EmuWarp>* emu_warps = nullptr;
inline long long emu_shuffles = 0;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <typename T>
T __shfl_down_sync(unsigned mask, T v, int delta, int width = 32) {
  if (mask != 0xffffffffu) std::abort();
  EmuWarp& w = (*emu_warps)[threadIdx.x / 32];
  const int lane = threadIdx.x % 32;
  std::memcpy(w.slots[lane], &v, sizeof(T));
  w.bar->arrive_and_wait();
  const int seg = lane / width * width;
  T r = v;
  if (lane + delta < seg + width) std::memcpy(&r, w.slots[lane + delta], sizeof(T));
  w.bar->arrive_and_wait();
  return r;
}
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
inline double __dadd_rn(double a, double b) { volatile double r = a + b; return r; }

template <typename... KArgs, typename... Args>
void emu_launch(void (*kernel)(KArgs...), unsigned grid, unsigned block, int, cudaStream_t, Args... args) {
  if (block % 32 != 0 || grid == 0) std::abort();
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> bb(block);
    std::vector<EmuWarp> warps(block / 32);
    for (auto& w : warps) w.bar = std::make_unique<std::barrier<>>(32);
    emu_block_barrier = &bb;
    emu_warps = &warps;
    std::vector<std::thread> ts;
    ts.reserve(block);
    for (unsigned t = 0; t < block; ++t)
      ts.emplace_back([&, t, b]() {
        threadIdx = {t, 0, 0};
        blockIdx = {b, 0, 0};
        kernel(args...);
      });
    for (auto& t : ts) t.join();
  }
}
