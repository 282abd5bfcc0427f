// One launcher per kernel and backend. The op code (csrc/<op>.cpp) fills the arguments once and
// calls launch(args, device); cpu/launch.cpp and cuda/*.cu implement the backends.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include "kernel_args.h"

#if defined(VAECUDA_WITH_CUDA)
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace vaecuda {

namespace cpu {
void launch(const KLArgs& a);
void launch(const KLBackwardArgs& a);
void launch(const ReparamArgs& a);
void launch(const ReparamBackwardArgs& a);
void launch(const BernoulliArgs& a);
void launch(const BernoulliBackwardArgs& a);
void normals(uint64_t seed, uint64_t offset, int64_t first, int64_t count, float* out);
const char* isa_name();
}  // namespace cpu

#if defined(VAECUDA_WITH_CUDA)
// csrc/cuda/*.cu: torch-free, so they take the stream to launch on.
namespace cuda {
void launch(const KLArgs& a, cudaStream_t stream);
void launch(const KLBackwardArgs& a, cudaStream_t stream);
void launch(const ReparamArgs& a, cudaStream_t stream);
void launch(const ReparamBackwardArgs& a, cudaStream_t stream);
void launch(const BernoulliArgs& a, cudaStream_t stream);
void launch(const BernoulliBackwardArgs& a, cudaStream_t stream);
void normals(const int64_t* rng_state, int64_t first, int64_t count, float* out, cudaStream_t stream);
}  // namespace cuda
#endif

template <typename Args>
void launch(const Args& args, const c10::Device& device) {
  if (device.is_cpu()) return cpu::launch(args);
#if defined(VAECUDA_WITH_CUDA)
  if (device.is_cuda()) return cuda::launch(args, c10::cuda::getCurrentCUDAStream(device.index()).stream());
#endif
  TORCH_CHECK(false, "vaecuda: no kernels for device ", device);
}

}  // namespace vaecuda
