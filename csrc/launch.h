// One launcher per kernel and backend. The op code (csrc/<op>.cpp) fills the arguments once and
// calls launch(args, device); cpu/launch.cpp and cuda/*.cu implement the backends.
#pragma once

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include "kernel_args.h"

namespace vaecuda {

#define VAE_DECLARE_LAUNCHERS                         \
  void launch(const KLArgs& a);                       \
  void launch(const KLBackwardArgs& a);               \
  void launch(const ReparamArgs& a);                  \
  void launch(const ReparamBackwardArgs& a);          \
  void launch(const BernoulliArgs& a);                \
  void launch(const BernoulliBackwardArgs& a);        \
  void normals(uint64_t seed, uint64_t offset, int64_t first, int64_t count, float* out);

namespace cpu {
VAE_DECLARE_LAUNCHERS
const char* isa_name();
}  // namespace cpu

#if defined(VAECUDA_WITH_CUDA)
namespace cuda {
VAE_DECLARE_LAUNCHERS
}  // namespace cuda
#endif

#undef VAE_DECLARE_LAUNCHERS

template <typename Args>
void launch(const Args& args, const c10::Device& device) {
  if (device.is_cpu()) return cpu::launch(args);
#if defined(VAECUDA_WITH_CUDA)
  if (device.is_cuda()) return cuda::launch(args);
#endif
  TORCH_CHECK(false, "vaecuda: no kernels for device ", device);
}

}  // namespace vaecuda
