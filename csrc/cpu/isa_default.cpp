// The CPU kernels for any x86-64 (or other) processor: the baseline instruction set.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels.h"

#define VAE_CPU_ISA isa_default
#define VAE_CPU_ISA_NAME "default"
#include "kernels_impl.h"
