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

// The words of groups g0 .. g0 + n (n rounded up to a multiple of kPhiloxBatch) in the layout
// normals_block uses: wa[2i] = x, wb[2i] = y, wa[2i+1] = z, wb[2i+1] = w of group g0 + i.
// Two sets of 8 counters go through the rounds side by side: one set alone is bound by the latency
// of the multiply-xor chain, two keep the vector units busy (measured 1.6x on Zen 3). The round keys
// are broadcast once per call.
constexpr int kPhiloxSets = 2;
constexpr int kPhiloxBatch = 8 * kPhiloxSets;  // groups per iteration

inline void philox_words_x8(uint64_t seed, uint64_t offset, uint64_t g0, int64_t n, uint32_t* wa, uint32_t* wb) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(math::kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(math::kPhiloxM1));
  __m256i key0[10], key1[10];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    key0[round] = _mm256_set1_epi32(static_cast<int>(k0));
    key1[round] = _mm256_set1_epi32(static_cast<int>(k1));
    k0 += math::kPhiloxW0;
    k1 += math::kPhiloxW1;
  }
  const __m256i off_lo = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  const __m256i off_hi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i sign = _mm256_set1_epi32(INT32_MIN);  // flips unsigned order into signed order
  for (int64_t i = 0; i < n; i += kPhiloxBatch) {
    __m256i c0[kPhiloxSets], c1[kPhiloxSets], c2[kPhiloxSets], c3[kPhiloxSets];
    for (int s = 0; s < kPhiloxSets; ++s) {
      // counters g .. g + 7: low words g_lo + lane; the high word carries where the low one wrapped
      const uint64_t g = g0 + static_cast<uint64_t>(i + 8 * s);
      const __m256i base = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(g)));
      const __m256i lo = _mm256_add_epi32(base, lanes);
      const __m256i wrapped = _mm256_cmpgt_epi32(_mm256_xor_si256(base, sign), _mm256_xor_si256(lo, sign));
      c0[s] = lo;
      c1[s] = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(g >> 32))), wrapped);
      c2[s] = off_lo;
      c3[s] = off_hi;
    }
    for (int round = 0; round < 10; ++round) {
      for (int s = 0; s < kPhiloxSets; ++s) {
        __m256i hi0, lo0, hi1, lo1;
        mulhilo8(c0[s], m0, hi0, lo0);
        mulhilo8(c2[s], m1, hi1, lo1);
        c0[s] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[s]), key0[round]);
        c2[s] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[s]), key1[round]);
        c1[s] = lo1;
        c3[s] = lo0;
      }
    }
    for (int s = 0; s < kPhiloxSets; ++s) {
      // interleave x with z and y with w, group by group
      uint32_t* a = wa + 2 * (i + 8 * s);
      uint32_t* b = wb + 2 * (i + 8 * s);
      const __m256i xz_lo = _mm256_unpacklo_epi32(c0[s], c2[s]), xz_hi = _mm256_unpackhi_epi32(c0[s], c2[s]);
      const __m256i yw_lo = _mm256_unpacklo_epi32(c1[s], c3[s]), yw_hi = _mm256_unpackhi_epi32(c1[s], c3[s]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a), _mm256_permute2x128_si256(xz_lo, xz_hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a + 8), _mm256_permute2x128_si256(xz_lo, xz_hi, 0x31));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b), _mm256_permute2x128_si256(yw_lo, yw_hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + 8), _mm256_permute2x128_si256(yw_lo, yw_hi, 0x31));
    }
  }
}

}  // namespace
}  // namespace VAE_CPU_ISA
}  // namespace cpu
}  // namespace vaecuda
