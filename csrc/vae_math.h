// The per-element math of vaecuda: Philox4x32-10, the normal transform, the Gaussian KL terms and the
// Bernoulli log-likelihood terms, each with its analytic derivative.
//
// This header is the single home of that math. The CPU kernels (csrc/cpu) and the CUDA kernels
// (csrc/cuda) both call these functions, so the two backends cannot drift apart; vaecuda/reference.py
// spells out the same math in torch ops as the test oracle. Where a function branches for the device
// (VAE_DEVICE_MATH) it says why: the correctly rounded intrinsics (same bits), a fused multiply-add
// whose product is exact (same bits), and sampling's standard deviation (CUDA's expf: a few ulp).
//
// It depends on nothing but the C++ standard library, so the CPU kernels can compile it once per
// instruction set (see csrc/cpu/isa_*.cpp) without dragging torch's headers into those units.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#define VAE_HD __host__ __device__ __forceinline__
#else
#define VAE_HD inline __attribute__((always_inline))
#endif

// The device branches below: compiled for the GPU (__CUDA_ARCH__), and in the CPU emulation of the CUDA
// kernels (tests/cuda_emu, which defines VAECUDA_EMULATE_DEVICE_MATH and the intrinsics they call), so
// that their logic runs, and their bits are checked, without a GPU. The CPU kernels never define it.
#if defined(__CUDA_ARCH__) || defined(VAECUDA_EMULATE_DEVICE_MATH)
#define VAE_DEVICE_MATH 1
#else
#define VAE_DEVICE_MATH 0
#endif

namespace vaecuda {
namespace math {

// ---------------------------------------------------------------------------------------------------
// Bit casts (well defined on host and device).
VAE_HD int32_t float_bits(float f) {
#if VAE_DEVICE_MATH
  return __float_as_int(f);
#else
  int32_t i;
  std::memcpy(&i, &f, sizeof(i));
  return i;
#endif
}

VAE_HD float bits_float(int32_t i) {
#if VAE_DEVICE_MATH
  return __int_as_float(i);
#else
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
#endif
}

// ---------------------------------------------------------------------------------------------------
// Correctly rounded float operations. The normal transform below is built only from these (plus
// exact integer and bit operations), so the CPU kernels, the CUDA kernels and the torch reference,
// which all round each operation once, produce the same bits. On the device the intrinsics forbid
// nvcc from contracting a*b+c into an FMA; on the host the build passes -ffp-contract=off.
VAE_HD float mul_rn(float a, float b) {
#if VAE_DEVICE_MATH
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
VAE_HD float add_rn(float a, float b) {
#if VAE_DEVICE_MATH
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
VAE_HD float sub_rn(float a, float b) {
#if VAE_DEVICE_MATH
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
VAE_HD float div_rn(float a, float b) {
#if VAE_DEVICE_MATH
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
VAE_HD float sqrt_rn(float a) {
#if VAE_DEVICE_MATH
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
// uint32 -> float, round to nearest even.
VAE_HD float u32_to_float_rn(uint32_t u) {
#if VAE_DEVICE_MATH
  return __uint2float_rn(u);
#else
  return static_cast<float>(u);
#endif
}

// ---------------------------------------------------------------------------------------------------
// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
// Checked against the Random123 known-answer vectors in tests/test_philox.py.
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct U32x4 {
  uint32_t x, y, z, w;
};

VAE_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
#if VAE_DEVICE_MATH
    // the two halves of each product as two 32-bit operations: ptxas joins them into one wide
    // multiply, where from a 64-bit product it moved the high half through an extra add per product
    // (20 instructions fewer per group of 4 normals, counted in the SASS for sm_90)
    const uint32_t hi0 = __umulhi(kPhiloxM0, c.x), lo0 = kPhiloxM0 * c.x;
    const uint32_t hi1 = __umulhi(kPhiloxM1, c.z), lo1 = kPhiloxM1 * c.z;
#else
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c.x;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c.z;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
#endif
    c = U32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
  }
  return c;
}

// The random words for element group `group` (flat elements 4*group .. 4*group+3) of a stream
// keyed by (seed, offset): key = seed, counter = (group, offset), each split into 32-bit halves.
// Keying by the flat element index, never a thread index, makes the samples independent of how
// the work is split, on the CPU or on any GPU.
VAE_HD U32x4 philox_group(uint64_t seed, uint64_t offset, uint64_t group) {
  return philox4x32_10(U32x4{static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                             static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// ---------------------------------------------------------------------------------------------------
// The normal transform: Box-Muller on a pair of 32-bit words (a, b).
//   u = float(a) * 2^-32 + 2^-33        in [2^-33, 1]: never 0, so the radius is finite (max 6.77)
//   r = sqrt(-2 log u)
//   theta = 2 pi (b >> 6) / 2^26        quadrant from the top 2 bits of b, the next 24 bits inside it
//   (n0, n1) = (r cos theta, r sin theta)
// log, sin and cos are polynomial approximations (errors below 1e-7 relative, see
// tests/test_philox.py) evaluated with the correctly rounded operations above, in a fixed order, so
// that every backend gets the same bits. Constants are hex literals: exactly the floats meant, so
// vaecuda/reference.py (float.fromhex) uses the same ones.
struct F2 {
  float a, b;
};

// a * b + c for a product a * b that is exact (a power-of-two factor, or few enough significant bits
// between the two): one FMA on the device, whose only rounding is then the add's, so the same bits as
// the host's multiply and add.
VAE_HD float fma_exact_product(float a, float b, float c) {
#if VAE_DEVICE_MATH
  return __fmaf_rn(a, b, c);
#else
  return add_rn(mul_rn(a, b), c);
#endif
}

// -2 log(u) for normal floats u in (0, 1]: u = 2^e * m with m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, series to s^9 (error < 3e-9).
// Computed as -2 times each term of e ln 2 + log m, the factor folded into the power-of-two
// constants (-4 s, -2 ln 2): every intermediate is exactly -2 times the one of log u, so the result has
// the bits of -2 * log(u) rounded step by step (what vaecuda/reference.py computes), with two
// operations fewer.
VAE_HD float bm_minus_2_log(float u) {
  const int32_t bits = float_bits(u);
  int32_t e = ((bits >> 23) & 0xFF) - 127;
  int32_t mbits = (bits & 0x007FFFFF) | 0x3F800000;  // m in [1, 2)
  const bool big = mbits > 0x3FB504F3;                // m > sqrt(2): halve it
  mbits = big ? mbits - 0x00800000 : mbits;
  e = big ? e + 1 : e;
  const float m = bits_float(mbits);
  const float s = div_rn(sub_rn(m, 1.0f), add_rn(m, 1.0f));
  const float z = mul_rn(s, s);
  float p = 0x1.c71c72p-4f;                            // 1/9
  p = add_rn(mul_rn(p, z), 0x1.24924ap-3f);            // 1/7
  p = add_rn(mul_rn(p, z), 0x1.99999ap-3f);            // 1/5
  p = add_rn(mul_rn(p, z), 0x1.555556p-2f);            // 1/3
  p = add_rn(mul_rn(p, z), 1.0f);
  const float logm = mul_rn(mul_rn(s, -4.0f), p);      // -2 log m
  const float ef = static_cast<float>(e);              // |e| <= 33: exact
  // e ln 2 with ln 2 split in two floats, the high part short enough that e * hi is exact
  return fma_exact_product(ef, -0x1.62e4p+0f, add_rn(mul_rn(ef, -0x1.7f7d1cp-19f), logm));
}

// (cos, sin) of y = x * pi / 2 for x in [0, 1/2], given y; Taylor series in y (error < 3e-9).
VAE_HD F2 bm_cos_sin_quarter(float y) {
  const float y2 = mul_rn(y, y);
  float s = 0x1.71de3ap-19f;                           //  1/9!
  s = add_rn(mul_rn(s, y2), -0x1.a01a02p-13f);         // -1/7!
  s = add_rn(mul_rn(s, y2), 0x1.111112p-7f);           //  1/5!
  s = add_rn(mul_rn(s, y2), -0x1.555556p-3f);          // -1/3!
  s = add_rn(mul_rn(s, y2), 1.0f);
  s = mul_rn(s, y);
  float c = -0x1.27e4fcp-22f;                          // -1/10!
  c = add_rn(mul_rn(c, y2), 0x1.a01a02p-16f);          //  1/8!
  c = add_rn(mul_rn(c, y2), -0x1.6c16c2p-10f);         // -1/6!
  c = add_rn(mul_rn(c, y2), 0x1.555556p-5f);           //  1/4!
  c = add_rn(mul_rn(c, y2), -0.5f);                    // -1/2!
  c = add_rn(mul_rn(c, y2), 1.0f);
  return F2{c, s};
}

VAE_HD F2 box_muller(uint32_t a, uint32_t b) {
  const float u = fma_exact_product(u32_to_float_rn(a), 0x1p-32f, 0x1p-33f);
  const float r = sqrt_rn(bm_minus_2_log(u));
  const uint32_t quadrant = b >> 30;
  // t = i / 2^24 in [0, 1), the next 24 bits of b; reflected to 1 - t above 1/2, where
  // cos(pi/2 t) = sin(pi/2 (1 - t)). Both are whole numbers of 2^-24 (exact integers, exact floats), so
  // that number times (pi/2 * 2^-24) is the product t * pi/2 (or (1 - t) * pi/2) rounded once, as the
  // reference computes it, with the scaling by 2^-24 folded into the constant.
  const int32_t i = static_cast<int32_t>((b >> 6) & 0x00FFFFFFu);
  const bool upper = i > 0x00800000;
  const float y = mul_rn(static_cast<float>(upper ? 0x01000000 - i : i), 0x1.921fb6p-24f);
  const F2 cs = bm_cos_sin_quarter(y);
  // Rotate by quadrant * pi / 2: (c, s) -> (c, s), (-s, c), (-c, -s), (s, -c). The reflection and an
  // odd quadrant each swap the pair; the signs are flipped on the bits (exact), so the vectorized
  // CPU loop needs two selects instead of a cascade per output.
  const uint32_t swap = (upper ? 1u : 0u) ^ (quadrant & 1u);
  const float c = swap != 0u ? cs.b : cs.a;
  const float s = swap != 0u ? cs.a : cs.b;
  const float cq = bits_float(float_bits(c) ^ static_cast<int32_t>(((quadrant + 1u) & 2u) << 30));  // q = 1, 2
  const float sq = bits_float(float_bits(s) ^ static_cast<int32_t>((quadrant & 2u) << 30));         // q = 2, 3
  return F2{mul_rn(r, cq), mul_rn(r, sq)};
}

// The 4 standard normals of element group `group`: elements 4g, 4g+1 come from words (x, y),
// elements 4g+2, 4g+3 from words (z, w); even elements take the cosine, odd ones the sine.
struct F4 {
  float v[4];
};
VAE_HD F4 normal_group(uint64_t seed, uint64_t offset, uint64_t group) {
  const U32x4 w = philox_group(seed, offset, group);
  const F2 lo = box_muller(w.x, w.y);
  const F2 hi = box_muller(w.z, w.w);
  return F4{{lo.a, lo.b, hi.a, hi.b}};
}

// a * b + c, fused where the hardware has it (CUDA; the AVX2+FMA CPU kernels), else two roundings.
// Used by the loss polynomials only, never by the normal transform above.
VAE_HD float fmadd(float a, float b, float c) {
#if VAE_DEVICE_MATH
  return fmaf(a, b, c);
#elif defined(VAE_HAVE_FMA)  // set by cpu/isa_avx2.cpp (GCC does not define __FMA__ under a target pragma)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// ---------------------------------------------------------------------------------------------------
// exp and log1p. float: branch-free polynomials that vectorize on the CPU and agree with libm to about
// one ulp (exp) and 2.5e-7 relative (log1p); NaN propagates (every clamp is written so that a NaN
// compares false and passes). double: the C library, so float64 gradcheck sees full precision.
// The polynomials are evaluated in Estrin's form (independent pairs combined by powers of the
// argument) rather than Horner's: half the dependency depth, which is what bounds a vectorized
// CPU loop over them (the Bernoulli forward ~1.3x faster in a Zen 3 micro-benchmark), at no cost in accuracy
// because the leading terms 1 + r are added last.

// e^r - 1 - r over r^2, |r| <= ln(2) / 2: the Taylor terms 1/2! .. 1/7!.
VAE_HD float exp_reduced(float r) {
  const float r2 = r * r;
  const float p23 = fmadd(r, 1.66666667e-1f, 0.5f);
  const float p45 = fmadd(r, 8.33333333e-3f, 4.16666667e-2f);
  const float p67 = fmadd(r, 1.98412698e-4f, 1.38888889e-3f);
  const float q = fmadd(r2 * r2, p67, fmadd(r2, p45, p23));
  return fmadd(r2, q, r) + 1.0f;
}

// x = n ln 2 + r: n = round(x / ln 2) by the 1.5 * 2^23 trick (the low bits of t hold n as an
// integer), r by Cody-Waite with ln 2 in two parts. |x| <= 104 here.
struct ExpSplit {
  int32_t n;
  float r;
};
VAE_HD ExpSplit exp_split(float x) {
  const float t = x * 1.44269504f + 12582912.0f;
  const float n = t - 12582912.0f;
  return ExpSplit{float_bits(t) - 0x4B400000, (x - n * 0.693359375f) + n * 2.12194440e-4f};
}

VAE_HD float fast_exp(float x) {
  x = x < -104.0f ? -104.0f : x;  // exp underflows to 0 below -103.97
  x = x > 88.8f ? 88.8f : x;      // and overflows to inf above 88.73
  const ExpSplit s = exp_split(x);
  // 2^n as two normal factors, so results in the subnormal range and up to 2^128 come out right.
  const int32_t n1 = s.n >> 1;
  const int32_t n2 = s.n - n1;
  return exp_reduced(s.r) * bits_float((n1 + 127) << 23) * bits_float((n2 + 127) << 23);
}
VAE_HD double fast_exp(double x) { return ::exp(x); }

// e^x for x <= 0 (or NaN), as the Bernoulli terms need it: no upper clamp, and 2^n (n >= -150) as
// the normal 2^(n + 64) times 2^-64, rounded once in the last multiply like fast_exp's two factors.
// On the device CUDA's expf instead, as for sampling's sd (std_from_logvar below): ~9 instructions on the
// special function unit's 2^x against ~20 for the polynomial, within 2 ulp where the polynomial is
// within about 1; the Bernoulli kernels in 16-bit dtypes are bound by instruction issue, not bytes.
// The forward's saved gradient and the backward op both take this one, so they still agree bit for bit.
VAE_HD float exp_nonpositive(float x) {
#if VAE_DEVICE_MATH
  return expf(x);
#else
  x = x < -104.0f ? -104.0f : x;
  const ExpSplit s = exp_split(x);
  return exp_reduced(s.r) * bits_float((s.n + 127 + 64) << 23) * 0x1p-64f;
#endif
}
VAE_HD double exp_nonpositive(double x) { return ::exp(x); }

// log1p(e) for e in [0, 1]: e * Q(e), Q a degree-9 Chebyshev fit of log1p(e) / e (relative error
// < 2.5e-7, exact as e -> 0), division-free so it vectorizes cheaply.
VAE_HD float log1p_unit(float e) {
  const float e2 = e * e;
  const float p01 = fmadd(e, -4.99998510e-1f, 1.0f);
  const float p23 = fmadd(e, -2.49478087e-1f, 3.33290994e-1f);
  const float p45 = fmadd(e, -1.52514517e-1f, 1.96514919e-1f);
  const float p67 = fmadd(e, -5.64350300e-2f, 1.05332285e-1f);
  const float p89 = fmadd(e, -3.21403635e-3f, 1.96491666e-2f);
  const float e4 = e2 * e2;
  const float lo = fmadd(e2, p23, p01);
  const float hi = fmadd(e2, p67, p45);
  return e * fmadd(e4 * e4, p89, fmadd(e4, hi, lo));
}
VAE_HD double log1p_unit(double e) { return ::log1p(e); }

// ---------------------------------------------------------------------------------------------------
// Reparameterized sampling: z = mu + exp(logvar / 2) * eps.
// On the device, float takes CUDA's expf (within 2 ulp of e^x: the bound the CUDA Programming Guide
// gives; ~9.5 instructions per element in nvcc 13.0's SASS for sm_90, on the special function unit's
// 2^x) where the CPU's polynomial costs ~24. The sampling kernels' issue time (counted in SASS) is
// close to their memory time, so instructions count there, and this exponential runs for every
// element in each direction. The noise does not depend on it, so it stays bit-equal across devices;
// sd, and with it z and the KL, agree with the CPU's to a few ulp. Special values (inf, NaN,
// underflow to 0) are expf's, the same as fast_exp's. float64 takes the C library on both.
template <typename T>
VAE_HD T std_from_logvar(T logvar) {
#if VAE_DEVICE_MATH
  if constexpr (std::is_same<T, float>::value) return expf(0.5f * logvar);
#endif
  return fast_exp(T(0.5) * logvar);
}

// ---------------------------------------------------------------------------------------------------
// Gaussian KL, one latent dimension.
// KL(N(mu, e^lv) || N(0, 1)) = (e^lv + mu^2 - 1 - lv) / 2
// e^lv is taken as sd^2, sd = e^(lv / 2) the standard deviation sampling computes anyway: sample+KL
// (both directions) then needs one exponential per element instead of two, and the KL op, which
// computes sd the same way, gives sample+KL's KL bit for bit. (In float on the CPU, sd^2 is within 3 ulp
// of the correctly rounded e^lv, fast_exp(lv) within 1; on the GPU, with expf's sd, a few ulp more; both
// overflow and underflow where e^lv does.) The _sd forms take an sd already computed.
template <typename T>
VAE_HD T kl_std_normal_sd(T mu, T lv, T sd) {
  return T(0.5) * (sd * sd + mu * mu - T(1) - lv);
}
template <typename T>
VAE_HD T kl_std_normal(T mu, T lv) {
  return kl_std_normal_sd(mu, lv, std_from_logvar(lv));
}
// d/dmu = mu, d/dlv = (e^lv - 1) / 2, each times the upstream gradient g.
template <typename T>
VAE_HD void kl_std_normal_grad_sd(T mu, T sd, T g, T& dmu, T& dlv) {
  dmu = g * mu;
  dlv = g * T(0.5) * (sd * sd - T(1));
}
template <typename T>
VAE_HD void kl_std_normal_grad(T mu, T lv, T g, T& dmu, T& dlv) {
  kl_std_normal_grad_sd(mu, std_from_logvar(lv), g, dmu, dlv);
}
// The term and its unscaled d/dlv = (e^lv - 1) / 2 from one exponential (the CPU forward that also
// returns the gradient): g times dlv_unit equals kl_std_normal_grad's dlv bit for bit, since the
// halving is exact.
template <typename T>
VAE_HD T kl_std_normal_and_grad(T mu, T lv, T& dlv_unit) {
  const T sd = std_from_logvar(lv);
  dlv_unit = T(0.5) * (sd * sd - T(1));
  return kl_std_normal_sd(mu, lv, sd);
}

// KL(N(mu, e^lv) || N(pmu, e^plv)) = (plv - lv + e^(lv - plv) + (mu - pmu)^2 e^-plv - 1) / 2
template <typename T>
VAE_HD T kl_normal(T mu, T lv, T pmu, T plv) {
  const T d = mu - pmu;
  return T(0.5) * (plv - lv + fast_exp(lv - plv) + d * d * fast_exp(-plv) - T(1));
}
// d/dmu = (mu - pmu) e^-plv = -d/dpmu
// d/dlv = (e^(lv - plv) - 1) / 2
// d/dplv = (1 - e^(lv - plv) - (mu - pmu)^2 e^-plv) / 2
template <typename T>
VAE_HD void kl_normal_grad(T mu, T lv, T pmu, T plv, T g, T& dmu, T& dlv, T& dpmu, T& dplv) {
  const T d = mu - pmu;
  const T ratio = fast_exp(lv - plv);
  const T inv_pvar = fast_exp(-plv);
  dmu = g * d * inv_pvar;
  dpmu = -dmu;
  dlv = g * T(0.5) * (ratio - T(1));
  dplv = g * T(0.5) * (T(1) - ratio - d * d * inv_pvar);
}

// ---------------------------------------------------------------------------------------------------
// Bernoulli log-likelihood from logits, one pixel: log p(x | l) = x l - softplus(l), with
// softplus(l) = max(l, 0) + log1p(e^-|l|): no log(sigmoid), exact for |l| up to float's range.
// A NaN logit reaches the result through x * l and log1p(e^NaN).
// e^-|l|: in (0, 1], the one exponential both softplus and the sigmoid are built from.
template <typename T>
VAE_HD T exp_minus_abs(T l) {
  return exp_nonpositive(-(l < T(0) ? -l : l));
}
template <typename T>
VAE_HD T bernoulli_log_prob(T l, T x) {
  const T pos = l > T(0) ? l : T(0);
  return x * l - pos - log1p_unit(exp_minus_abs(l));
}
// d/dl = x - sigmoid(l), sigmoid computed from e = e^-|l| on the side where it cannot overflow: one
// division where both sides are computed. On the device float takes CUDA's __fdividef, a reciprocal on
// the special function unit and a multiply, within 2 ulp for this denominator in [1, 2], where the
// correctly rounded division costs 9-14 instructions more per element (in nvcc 13.0's SASS for sm_90
// the Bernoulli backward op went from 45.9 to 36.5 per element in bf16, the fp32 forward that also
// writes the gradient from 67.5 to 53.8): the 16-bit Bernoulli kernels are bound by instruction issue. Both
// the forward's saved gradient and the backward op take this one, so they still agree bit for bit.
template <typename T>
VAE_HD T sigmoid_from_exp_abs(T l, T e) {
  const T num = l >= T(0) ? T(1) : e;
#if VAE_DEVICE_MATH
  if constexpr (std::is_same<T, float>::value) return __fdividef(num, T(1) + e);
#endif
  return num / (T(1) + e);
}
template <typename T>
VAE_HD T bernoulli_log_prob_grad_logits(T l, T x) {
  return x - sigmoid_from_exp_abs(l, exp_minus_abs(l));
}
// Both from one e^-|l| (the forward that also returns the gradient): the same bits as the two above.
template <typename T>
VAE_HD T bernoulli_log_prob_and_grad(T l, T x, T& dl) {
  const T e = exp_minus_abs(l);
  const T pos = l > T(0) ? l : T(0);
  dl = x - sigmoid_from_exp_abs(l, e);
  return x * l - pos - log1p_unit(e);
}
// d/dx = l (the target enters linearly).

// Bernoulli log-likelihood from a probability p, as torch's binary_cross_entropy computes it (for
// models that end in a sigmoid): x max(log p, -100) + (1 - x) max(log(1 - p), -100). The clamp keeps
// p = 0 or 1 finite; p outside [0, 1] or NaN gives NaN (log of a negative), never hidden. libm's
// log and log1p: this path serves compatibility, the logits path speed.
template <typename T>
VAE_HD T libm_log(T v) {
#if VAE_DEVICE_MATH
  return log(v);  // CUDA's float and double overloads
#else
  return std::log(v);
#endif
}
template <typename T>
VAE_HD T libm_log1p(T v) {
#if VAE_DEVICE_MATH
  return log1p(v);
#else
  return std::log1p(v);
#endif
}
template <typename T>
VAE_HD T clamped_log(T v) {
  const T l = libm_log(v);
  return l < T(-100) ? T(-100) : l;  // NaN stays NaN (the comparison is false)
}
template <typename T>
VAE_HD T clamped_log1m(T p) {
  const T l = libm_log1p(-p);
  return l < T(-100) ? T(-100) : l;
}
template <typename T>
VAE_HD T bernoulli_log_prob_probs(T p, T x) {
  return x * clamped_log(p) + (T(1) - x) * clamped_log1m(p);
}
// d/dp = (x - p) / max(p (1 - p), 1e-12), torch's guard against p = 0 or 1.
template <typename T>
VAE_HD T bernoulli_log_prob_probs_grad_p(T p, T x) {
  const T v = p * (T(1) - p);
  return (x - p) / (v < T(1e-12) ? T(1e-12) : v);
}
// d/dx = max(log p, -100) - max(log(1 - p), -100).
template <typename T>
VAE_HD T bernoulli_log_prob_probs_grad_x(T p) {
  return clamped_log(p) - clamped_log1m(p);
}

// The per-pixel term and its derivatives, from logits or (Probs) from probabilities: the one switch
// between the two forms, for the CPU and the CUDA kernels.
template <bool Probs, typename T>
VAE_HD T bernoulli_term(T v, T x) {
  if constexpr (Probs) return bernoulli_log_prob_probs(v, x);
  else return bernoulli_log_prob(v, x);
}
template <bool Probs, typename T>
VAE_HD T bernoulli_term_grad_input(T v, T x) {
  if constexpr (Probs) return bernoulli_log_prob_probs_grad_p(v, x);
  else return bernoulli_log_prob_grad_logits(v, x);
}
template <bool Probs, typename T>
VAE_HD T bernoulli_term_and_grad(T v, T x, T& dv) {
  if constexpr (Probs) {
    dv = bernoulli_log_prob_probs_grad_p(v, x);
    return bernoulli_log_prob_probs(v, x);
  } else {
    return bernoulli_log_prob_and_grad(v, x, dv);
  }
}
template <bool Probs, typename T>
VAE_HD T bernoulli_term_grad_target(T v) {
  if constexpr (Probs) return bernoulli_log_prob_probs_grad_x(v);
  else return v;
}

}  // namespace math
}  // namespace vaecuda
