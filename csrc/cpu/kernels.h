// The CPU kernels' interface: a table of functions, one table per instruction set (isa_avx2.cpp,
// isa_default.cpp), chosen once at load time. Each function processes rows [row_begin, row_end);
// cpu/launch.cpp splits the rows across threads with at::parallel_for.
#pragma once

#include <cstdint>

#include "../kernel_args.h"

namespace vaecuda {
namespace cpu {

struct Kernels {
  const char* isa;
  void (*gaussian_kl)(const KLArgs&, int64_t row_begin, int64_t row_end);
  void (*gaussian_kl_backward)(const KLBackwardArgs&, int64_t row_begin, int64_t row_end);
  void (*reparameterize)(const ReparamArgs&, int64_t row_begin, int64_t row_end);
  void (*reparameterize_backward)(const ReparamBackwardArgs&, int64_t row_begin, int64_t row_end);
  void (*bernoulli_log_prob)(const BernoulliArgs&, int64_t row_begin, int64_t row_end);
  void (*bernoulli_log_prob_backward)(const BernoulliBackwardArgs&, int64_t row_begin, int64_t row_end);
  // Standard normals of flat elements [first, first + count) of the stream (seed, offset), as
  // float32: exposed so tests can compare the kernels' noise with the reference bit for bit.
  void (*normals)(uint64_t seed, uint64_t offset, int64_t first, int64_t count, float* out);
};

namespace isa_avx2 {
extern const Kernels kernels;
}
namespace isa_default {
extern const Kernels kernels;
}

// The table for this processor: AVX2+FMA+F16C when it has them, else the baseline x86-64 one.
const Kernels& kernels();

}  // namespace cpu
}  // namespace vaecuda
