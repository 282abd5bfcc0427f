// A CPU emulation of the bits of the CUDA runtime the vaecuda kernels use: one std::thread per CUDA
// thread of a block (a pool kept across launches), blocks run one after another, __syncthreads and warp
// shuffles by barriers.
#pragma once
#include <barrier>
#include <cmath>
#include <math.h>  // log, log1p, expf: float overloads in the global namespace, as CUDA's
#include <cstdint>
#include <cstring>
#include <functional>
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
inline int64_t emu_max_blocks = int64_t(65535) * 32;  // VAECUDA_MAX_BLOCKS in the emulated build

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

// The intrinsics of vae_math.h's device branches (the driver is built with VAECUDA_EMULATE_DEVICE_MATH,
// so the kernels run the math the GPU runs): each IEEE-rounded operation is the host's (the build
// passes -ffp-contract=off), __fmaf_rn and fmaf a true fused multiply-add (std::fma). expf, logf and
// log1pf are the host C library's (within 1 ulp; CUDA's expf within 2): their branches run here, not
// CUDA's last bits.
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
inline float __fdividef(float a, float b) { volatile float r = a / b; return r; }  // CUDA's: within 2 ulp
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __uint2float_rn(unsigned u) { return static_cast<float>(u); }
inline unsigned __umulhi(unsigned a, unsigned b) {  // the high 32 bits of the 64-bit product
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, sizeof(i)); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof(f)); return f; }

// The CUDA threads of a block: one std::thread each, made once and kept for every launch of that block
// size (creating 256 threads per launch cost most of the run). run(job) has each call job(t), t its
// thread index, and returns when all are done.
struct EmuPool {
  unsigned size = 0;
  std::unique_ptr<std::barrier<>> go, done;
  std::vector<std::thread> threads;
  std::function<void(unsigned)> job;
  bool stop = false;

  void resize(unsigned n) {
    if (n == size) return;
    shutdown();
    size = n;
    go = std::make_unique<std::barrier<>>(n + 1);
    done = std::make_unique<std::barrier<>>(n + 1);
    for (unsigned t = 0; t < n; ++t)
      threads.emplace_back([this, t]() {
        threadIdx = {t, 0, 0};
        for (;;) {
          go->arrive_and_wait();
          if (stop) return;
          job(t);
          done->arrive_and_wait();
        }
      });
  }
  void run(std::function<void(unsigned)> f) {
    job = std::move(f);
    go->arrive_and_wait();
    done->arrive_and_wait();
  }
  void shutdown() {
    if (!size) return;
    stop = true;
    go->arrive_and_wait();
    for (auto& t : threads) t.join();
    threads.clear();
    stop = false;
    size = 0;
  }
  ~EmuPool() { shutdown(); }
};
inline EmuPool emu_pool;

template <typename... KArgs, typename... Args>
void emu_launch(void (*kernel)(KArgs...), unsigned grid, unsigned block, int, cudaStream_t, Args... args) {
  if (block == 0 || block > 1024 || block % 32 != 0 || grid == 0) std::abort();
  gridDim = {grid, 1, 1};
  blockDim = {block, 1, 1};
  // each thread runs the kernel for block 0, 1, ... in turn; the block's barrier between two blocks
  // keeps them one after another (a block's __shared__ statics are the next block's)
  std::barrier<> bb(block);
  std::vector<EmuWarp> warps(block / 32);
  for (auto& w : warps) w.bar = std::make_unique<std::barrier<>>(32);
  emu_block_barrier = &bb;
  emu_warps = &warps;
  emu_pool.resize(block);
  emu_pool.run([&](unsigned) {
    for (unsigned b = 0; b < grid; ++b) {
      blockIdx = {b, 0, 0};
      kernel(args...);
      bb.arrive_and_wait();
    }
  });
}
