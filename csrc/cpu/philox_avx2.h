// Philox4x32-10 for 8 consecutive counters at once with AVX2 intrinsics: the same function as
// math::philox4x32_10 (tests/test_philox.py checks the kernels' noise against the reference bit for
// bit), written out because GCC's own vectorization of the 32x32->64-bit products is ~1.4x slower.
// Included by kernels_impl.h in the AVX2 unit only.
#pragma once

#include <immintrin.h>

namespace vaecuda {
namespace cpu {
namespace VAE_CPU_ISA {
namespace {

// (hi, lo) 32-bit halves of a * m per lane; m holds the same multiplier in every lane.
inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                       // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// The words of groups g0 .. g0 + n (n rounded up to a multiple of 8) in the layout normals_block
// uses: wa[2i] = x, wb[2i] = y, wa[2i+1] = z, wb[2i+1] = w of group g0 + i.
inline void philox_words_x8(uint64_t seed, uint64_t offset, uint64_t g0, int64_t n, uint32_t* wa, uint32_t* wb) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(math::kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(math::kPhiloxM1));
  for (int64_t i = 0; i < n; i += 8) {
    alignas(32) uint32_t lo[8], hi[8];
    for (int l = 0; l < 8; ++l) {
      const uint64_t g = g0 + static_cast<uint64_t>(i + l);
      lo[l] = static_cast<uint32_t>(g);
      hi[l] = static_cast<uint32_t>(g >> 32);
    }
    __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
    __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        k0 += math::kPhiloxW0;
        k1 += math::kPhiloxW1;
      }
      __m256i hi0, lo0, hi1, lo1;
      mulhilo8(c0, m0, hi0, lo0);
      mulhilo8(c2, m1, hi1, lo1);
      const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c0 = n0;
      c1 = lo1;
      c2 = n2;
      c3 = lo0;
    }
    // interleave x with z and y with w, group by group
    const __m256i xz_lo = _mm256_unpacklo_epi32(c0, c2), xz_hi = _mm256_unpackhi_epi32(c0, c2);
    const __m256i yw_lo = _mm256_unpacklo_epi32(c1, c3), yw_hi = _mm256_unpackhi_epi32(c1, c3);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(wa + 2 * i), _mm256_permute2x128_si256(xz_lo, xz_hi, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(wa + 2 * i + 8), _mm256_permute2x128_si256(xz_lo, xz_hi, 0x31));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(wb + 2 * i), _mm256_permute2x128_si256(yw_lo, yw_hi, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(wb + 2 * i + 8), _mm256_permute2x128_si256(yw_lo, yw_hi, 0x31));
  }
}

}  // namespace
}  // namespace VAE_CPU_ISA
}  // namespace cpu
}  // namespace vaecuda
