// The CPU kernels compiled for AVX2 + FMA + F16C (8 floats per vector, hardware half conversion).
// Only kernels_impl.h and the math header come after the target pragma: torch's headers never see it,
// so no inline function of theirs is emitted here with instructions an older processor lacks.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define VAE_HAVE_FMA 1
#define VAE_PHILOX_X8 1
#define VAE_CPU_ISA isa_avx2
#define VAE_CPU_ISA_NAME "avx2"
#include "kernels_impl.h"
#pragma GCC pop_options
#endif
