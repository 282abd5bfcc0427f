// Chooses the CPU kernel table once, from what this processor supports. VAECUDA_CPU_ISA=default
// forces the baseline kernels (tests use it to check that both tables give the same bits).
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace vaecuda {
namespace cpu {

const Kernels& kernels() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const char* forced = std::getenv("VAECUDA_CPU_ISA");
  static const Kernels& chosen = (!(forced && std::strcmp(forced, "default") == 0) &&
                                  __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
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
