// Chooses the CPU kernel table once, from what this processor supports.
#include "kernels.h"

namespace vaecuda {
namespace cpu {

const Kernels& kernels() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const Kernels& chosen = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                  __builtin_cpu_supports("f16c"))
                                     ? isa_avx2::kernels
                                     : isa_default::kernels;
  return chosen;
#else
  return isa_default::kernels;
#endif
}

}  // namespace cpu
}  // namespace vaecuda
