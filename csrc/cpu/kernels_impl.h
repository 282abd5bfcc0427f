// CPU kernel bodies. Included once per instruction set by isa_*.cpp, inside a namespace named by
// VAE_CPU_ISA, so each instruction set gets its own symbols.
//
// How they vectorize: work is done in blocks of kBlock elements of one row. A first loop computes each
// element's term into a small stack buffer (a plain elementwise loop over contiguous memory, which GCC
// vectorizes); a second loop adds the buffer into kLanes partial sums, lane j % kLanes for column j.
// The summation order is therefore fixed by the column index alone: contiguous and strided inputs,
// every instruction set and any thread split give the same bits.
//
// Requires, before inclusion: <cstdint>, <cstring>, <cmath>, kernels.h, and VAE_CPU_ISA defined.

#include "../vae_math.h"
#if defined(VAE_PHILOX_X8)
#include "philox_avx2.h"
#endif

namespace vaecuda {
namespace cpu {
namespace VAE_CPU_ISA {
namespace {

using namespace ::vaecuda::math;

constexpr int64_t kBlock = 256;  // elements per block: a multiple of kLanes
constexpr int kLanes = 16;

// ---------------------------------------------------------------------------------------------------
// Storage types and conversions.
using f16 = _Float16;
using bf16 = uint16_t;  // bfloat16 bits

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(f16 v) { return static_cast<float>(v); }
inline float to_acc(bf16 v) { return bits_float(static_cast<int32_t>(static_cast<uint32_t>(v) << 16)); }
inline float to_acc(uint8_t v) { return static_cast<float>(v); }

template <typename T> inline T from_acc(typename Acc<T>::type v);
template <> inline float from_acc<float>(float v) { return v; }
template <> inline double from_acc<double>(double v) { return v; }
template <> inline f16 from_acc<f16>(float v) { return static_cast<f16>(v); }
template <> inline bf16 from_acc<bf16>(float v) {
  // round to nearest even, NaN kept quiet (as c10::BFloat16 does)
  const uint32_t u = static_cast<uint32_t>(float_bits(v));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<bf16>(v != v ? 0x7FC0u : rounded);
}

// ---------------------------------------------------------------------------------------------------
// Fixed-order partial sums.
template <typename A>
struct LaneSum {
  A acc[kLanes];
  LaneSum() {
    for (int l = 0; l < kLanes; ++l) acc[l] = A(0);
  }
  // Adds tmp[0, n) for columns c0 .. c0 + n, with c0 a multiple of kLanes.
  void add(const A* tmp, int64_t n) {
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
      for (int l = 0; l < kLanes; ++l) acc[l] += tmp[j + l];
    for (int l = 0; j + l < n; ++l) acc[l] += tmp[j + l];
  }
  A total() {
    for (int w = kLanes / 2; w > 0; w /= 2)
      for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
    return acc[0];
  }
};

// Calls body(c0, n) for the blocks of one row.
template <typename F>
inline void for_each_block(int64_t cols, F&& body) {
  for (int64_t c0 = 0; c0 < cols; c0 += kBlock) body(c0, cols - c0 < kBlock ? cols - c0 : kBlock);
}

// Element j of an operand whose row starts at p: stride 1 known at compile time when every operand
// of the call is contiguous along its row (the vectorized path), else the operand's own stride.
template <bool RowContig, typename T>
inline auto at(const T* p, int64_t j, int64_t stride) -> decltype(to_acc(p[0])) {
  return to_acc(p[RowContig ? j : j * stride]);
}

inline bool contiguous_rows(const RowView& v) { return v.col_stride == 1; }

// Rows packed back to back (row r at r * cols): a group of short rows is one contiguous range.
inline bool packed_rows(const RowView& v, int64_t cols, int64_t rows) {
  return v.col_stride == 1 && ((v.ndim == 1 && v.strides[0] == cols) || rows <= 1);
}

// ---------------------------------------------------------------------------------------------------
// Standard normals of flat elements [first, first + count), count <= kBlock.
void normals_block(uint64_t seed, uint64_t offset, int64_t first, int64_t count, float* out) {
  // a block spans at most kBlock / 4 + 2 groups; the x8 generator rounds up to a multiple of 16
  constexpr int kGroups = kBlock / 4 + 16;
  const uint64_t g0 = static_cast<uint64_t>(first) >> 2;
  const int64_t ng = ((first + count + 3) >> 2) - static_cast<int64_t>(g0);
  uint32_t wa[2 * kGroups], wb[2 * kGroups];
#if defined(VAE_PHILOX_X8)
  philox_words_x8(seed, offset, g0, ng, wa, wb);
#else
  for (int64_t i = 0; i < ng; ++i) {
    const U32x4 w = philox_group(seed, offset, g0 + static_cast<uint64_t>(i));
    wa[2 * i] = w.x;
    wb[2 * i] = w.y;
    wa[2 * i + 1] = w.z;
    wb[2 * i + 1] = w.w;
  }
#endif
  float tmp[4 * kGroups];
  for (int64_t p = 0; p < 2 * ng; ++p) {
    const F2 v = box_muller(wa[p], wb[p]);
    tmp[2 * p] = v.a;
    tmp[2 * p + 1] = v.b;
  }
  std::memcpy(out, tmp + (first & 3), static_cast<size_t>(count) * sizeof(float));
}

void normals(uint64_t seed, uint64_t offset, int64_t first, int64_t count, float* out) {
  for (int64_t i = 0; i < count; i += kBlock)
    normals_block(seed, offset, first + i, count - i < kBlock ? count - i : kBlock, out + i);
}

// ---------------------------------------------------------------------------------------------------
// Gaussian KL.
template <typename T, bool Prior, bool RowContig>
void kl_rows(const KLArgs& a, int64_t r0, int64_t r1) {
  using A = typename Acc<T>::type;
  A tmp[kBlock];
  for (int64_t r = r0; r < r1; ++r) {
    const T* mu = static_cast<const T*>(a.mu) + a.v_mu.row_offset(r);
    const T* lv = static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r);
    const T* pm = Prior ? static_cast<const T*>(a.prior_mu) + a.v_prior_mu.row_offset(r) : nullptr;
    const T* pl = Prior ? static_cast<const T*>(a.prior_logvar) + a.v_prior_logvar.row_offset(r) : nullptr;
    A* out = static_cast<A*>(a.out);
    LaneSum<A> sum;
    for_each_block(a.cols, [&](int64_t c0, int64_t n) {
      if (!Prior && a.d_logvar) {  // d/dlogvar too, from the same exponentials (KLArgs::d_logvar)
        T* d = static_cast<T*>(a.d_logvar) + r * a.cols + c0;
        for (int64_t j = c0; j < c0 + n; ++j) {
          A g;
          tmp[j - c0] = kl_std_normal_and_grad(at<RowContig>(mu, j, a.v_mu.col_stride),
                                               at<RowContig>(lv, j, a.v_logvar.col_stride), g);
          d[j - c0] = from_acc<T>(g);
        }
      } else {
        for (int64_t j = c0; j < c0 + n; ++j) {
          const A m = at<RowContig>(mu, j, a.v_mu.col_stride);
          const A l = at<RowContig>(lv, j, a.v_logvar.col_stride);
          tmp[j - c0] = Prior ? kl_normal(m, l, at<RowContig>(pm, j, a.v_prior_mu.col_stride),
                                          at<RowContig>(pl, j, a.v_prior_logvar.col_stride))
                              : kl_std_normal(m, l);
        }
      }
      if (a.elementwise)
        std::memcpy(out + r * a.cols + c0, tmp, static_cast<size_t>(n) * sizeof(A));
      else
        sum.add(tmp, n);
    });
    if (!a.elementwise) out[r] = sum.total();
  }
}

template <typename T, bool Prior, bool RowContig, bool GradPerElement>
void kl_backward_rows(const KLBackwardArgs& b, int64_t r0, int64_t r1) {
  using A = typename Acc<T>::type;
  const KLArgs& a = b.in;
  A gm[kBlock], gl[kBlock], gpm[kBlock], gpl[kBlock];
  T* outs[4] = {static_cast<T*>(b.d_mu), static_cast<T*>(b.d_logvar), static_cast<T*>(b.d_prior_mu),
                static_cast<T*>(b.d_prior_logvar)};
  const A* grads[4] = {gm, gl, gpm, gpl};
  for (int64_t r = r0; r < r1; ++r) {
    const T* mu = static_cast<const T*>(a.mu) + a.v_mu.row_offset(r);
    const T* lv = static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r);
    const T* pm = Prior ? static_cast<const T*>(a.prior_mu) + a.v_prior_mu.row_offset(r) : nullptr;
    const T* pl = Prior ? static_cast<const T*>(a.prior_logvar) + a.v_prior_logvar.row_offset(r) : nullptr;
    const A* g = static_cast<const A*>(b.grad) + b.v_grad.row_offset(r);
    for_each_block(a.cols, [&](int64_t c0, int64_t n) {
      // all gradients of the block in one branch-free loop, then a store loop per wanted output
      for (int64_t j = c0; j < c0 + n; ++j) {
        const A gj = GradPerElement ? at<RowContig>(g, j, b.v_grad.col_stride) : g[0];
        const A m = at<RowContig>(mu, j, a.v_mu.col_stride);
        const A l = at<RowContig>(lv, j, a.v_logvar.col_stride);
        if (Prior)
          kl_normal_grad(m, l, at<RowContig>(pm, j, a.v_prior_mu.col_stride),
                         at<RowContig>(pl, j, a.v_prior_logvar.col_stride), gj, gm[j - c0], gl[j - c0],
                         gpm[j - c0], gpl[j - c0]);
        else
          kl_std_normal_grad(m, l, gj, gm[j - c0], gl[j - c0]);
      }
      for (int i = 0; i < (Prior ? 4 : 2); ++i)
        if (outs[i])
          for (int64_t j = 0; j < n; ++j) outs[i][r * a.cols + c0 + j] = from_acc<T>(grads[i][j]);
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// Reparameterized sampling (+ KL to N(0, I)). Each row of mu/logvar is read once for all samples:
// the samples' loop runs over a block while it sits in L1.
template <typename T, bool WithKL, bool RowContig>
void reparam_rows(const ReparamArgs& a, int64_t r0, int64_t r1) {
  using A = typename Acc<T>::type;
  A m[kBlock], sd[kBlock], tmp[kBlock];
  float eps[kBlock];
  T* z = static_cast<T*>(a.z);
  const int64_t plane = a.rows * a.cols;  // elements per sample
  if (RowContig && a.cols < kBlock && packed_rows(a.v_mu, a.cols, a.rows) &&
      packed_rows(a.v_logvar, a.cols, a.rows)) {
    // Short packed rows (latent widths): whole groups of rows per block, so the noise is generated
    // in long vector runs. Same arithmetic, and the same lane order per row, as the general path.
    const int64_t per_group = kBlock / a.cols;
    for (int64_t rb = r0; rb < r1; rb += per_group) {
      const int64_t nr = r1 - rb < per_group ? r1 - rb : per_group;
      const int64_t n = nr * a.cols, e0 = rb * a.cols;
      const T* mu = static_cast<const T*>(a.mu) + e0;
      const T* lv = static_cast<const T*>(a.logvar) + e0;
      for (int64_t j = 0; j < n; ++j) {
        const A l = to_acc(lv[j]);
        m[j] = to_acc(mu[j]);
        sd[j] = std_from_logvar(l);
        if (WithKL) tmp[j] = kl_std_normal_sd(m[j], l, sd[j]);  // the KL op's bits, from sd
      }
      for (int64_t k = 0; k < a.samples; ++k) {
        const int64_t first = k * plane + e0;
        normals_block(a.seed, a.offset, first, n, eps);
        for (int64_t j = 0; j < n; ++j) z[first + j] = from_acc<T>(m[j] + sd[j] * static_cast<A>(eps[j]));
      }
      if (WithKL) {
        for (int64_t i = 0; i < nr; ++i) {
          LaneSum<A> sum;
          sum.add(tmp + i * a.cols, a.cols);
          static_cast<A*>(a.kl)[rb + i] = sum.total();
        }
      }
    }
    return;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const T* mu = static_cast<const T*>(a.mu) + a.v_mu.row_offset(r);
    const T* lv = static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r);
    LaneSum<A> sum;
    for_each_block(a.cols, [&](int64_t c0, int64_t n) {
      for (int64_t j = 0; j < n; ++j) {
        const A l = at<RowContig>(lv, c0 + j, a.v_logvar.col_stride);
        m[j] = at<RowContig>(mu, c0 + j, a.v_mu.col_stride);
        sd[j] = std_from_logvar(l);
        if (WithKL) tmp[j] = kl_std_normal_sd(m[j], l, sd[j]);  // the KL op's bits, from sd
      }
      if (WithKL) sum.add(tmp, n);
      for (int64_t k = 0; k < a.samples; ++k) {
        const int64_t first = k * plane + r * a.cols + c0;
        normals_block(a.seed, a.offset, first, n, eps);
        for (int64_t j = 0; j < n; ++j) z[first + j] = from_acc<T>(m[j] + sd[j] * static_cast<A>(eps[j]));
      }
    });
    if (WithKL) static_cast<A*>(a.kl)[r] = sum.total();
  }
}

// The last step of the sampling backward for n elements: d mu = gsum (+ the KL's), d logvar =
// gse sd / 2 (+ the KL's). Branch-free loops per output, so they vectorize; the KL terms only
// when a KL gradient came back (gk null otherwise).
template <typename T, bool RowContig, typename A>
inline void reparam_grads_out(const T* mu, int64_t s_mu, const T* lv, int64_t s_lv, const A* gsum, const A* gse,
                              const A* gk, int64_t n, T* dmu, T* dlv) {
  if (dmu) {
    if (gk) {
      for (int64_t j = 0; j < n; ++j) {
        A kl_dmu, kl_dlv;
        kl_std_normal_grad(at<RowContig>(mu, j, s_mu), at<RowContig>(lv, j, s_lv), gk[j], kl_dmu, kl_dlv);
        dmu[j] = from_acc<T>(gsum[j] + kl_dmu);
      }
    } else {
      for (int64_t j = 0; j < n; ++j) dmu[j] = from_acc<T>(gsum[j]);
    }
  }
  if (dlv) {
    if (gk) {
      for (int64_t j = 0; j < n; ++j) {
        const A sd = std_from_logvar(at<RowContig>(lv, j, s_lv));  // one exponential for both terms
        A kl_dmu, kl_dlv;
        kl_std_normal_grad_sd(at<RowContig>(mu, j, s_mu), sd, gk[j], kl_dmu, kl_dlv);
        dlv[j] = from_acc<T>(gse[j] * A(0.5) * sd + kl_dlv);
      }
    } else {
      for (int64_t j = 0; j < n; ++j)
        dlv[j] = from_acc<T>(gse[j] * A(0.5) * std_from_logvar(at<RowContig>(lv, j, s_lv)));
    }
  }
}

// d mu = sum_k gz_k (+ gkl mu); d logvar = sum_k gz_k eps_k sd / 2 (+ gkl (e^lv - 1) / 2).
// eps is regenerated only when d logvar is wanted.
template <typename T, bool RowContig>
void reparam_backward_rows(const ReparamBackwardArgs& b, int64_t r0, int64_t r1) {
  using A = typename Acc<T>::type;
  const ReparamArgs& a = b.in;
  A gsum[kBlock], gse[kBlock], gk[kBlock];
  float eps[kBlock];
  const int64_t plane = a.rows * a.cols;
  T* dmu = static_cast<T*>(b.d_mu);
  T* dlv = static_cast<T*>(b.d_logvar);
  if (RowContig && a.cols < kBlock && packed_rows(a.v_mu, a.cols, a.rows) &&
      packed_rows(a.v_logvar, a.cols, a.rows) &&
      (!b.grad_z || packed_rows(b.v_grad_z, a.cols, a.rows * a.samples))) {
    // Short packed rows: groups of rows per block, as in reparam_rows; same arithmetic per element.
    const int64_t per_group = kBlock / a.cols;
    for (int64_t rb = r0; rb < r1; rb += per_group) {
      const int64_t nr = r1 - rb < per_group ? r1 - rb : per_group;
      const int64_t n = nr * a.cols, e0 = rb * a.cols;
      for (int64_t j = 0; j < n; ++j) gsum[j] = gse[j] = A(0);
      if (b.grad_z) {
        for (int64_t k = 0; k < a.samples; ++k) {
          const T* gz = static_cast<const T*>(b.grad_z) + k * plane + e0;
          for (int64_t j = 0; j < n; ++j) gsum[j] += to_acc(gz[j]);
          if (dlv) {
            normals_block(a.seed, a.offset, k * plane + e0, n, eps);
            for (int64_t j = 0; j < n; ++j) gse[j] += to_acc(gz[j]) * static_cast<A>(eps[j]);
          }
        }
      }
      if (b.grad_kl)
        for (int64_t i = 0; i < nr; ++i) {
          const A g = static_cast<const A*>(b.grad_kl)[b.v_grad_kl.row_offset(rb + i)];
          for (int64_t j = 0; j < a.cols; ++j) gk[i * a.cols + j] = g;
        }
      reparam_grads_out<T, true>(static_cast<const T*>(a.mu) + e0, 1, static_cast<const T*>(a.logvar) + e0, 1,
                                 gsum, gse, b.grad_kl ? gk : nullptr, n, dmu ? dmu + e0 : nullptr,
                                 dlv ? dlv + e0 : nullptr);
    }
    return;
  }
  for (int64_t r = r0; r < r1; ++r) {
    const T* mu = static_cast<const T*>(a.mu) + a.v_mu.row_offset(r);
    const T* lv = static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r);
    const A gkl = b.grad_kl ? static_cast<const A*>(b.grad_kl)[b.v_grad_kl.row_offset(r)] : A(0);
    for_each_block(a.cols, [&](int64_t c0, int64_t n) {
      for (int64_t j = 0; j < n; ++j) gsum[j] = gse[j] = A(0);
      if (b.grad_z) {
        for (int64_t k = 0; k < a.samples; ++k) {
          const T* gz = static_cast<const T*>(b.grad_z) + b.v_grad_z.row_offset(k * a.rows + r);
          const int64_t stride = b.v_grad_z.col_stride;
          for (int64_t j = 0; j < n; ++j) gsum[j] += at<RowContig>(gz, c0 + j, stride);
          if (dlv) {
            normals_block(a.seed, a.offset, k * plane + r * a.cols + c0, n, eps);
            for (int64_t j = 0; j < n; ++j) gse[j] += at<RowContig>(gz, c0 + j, stride) * static_cast<A>(eps[j]);
          }
        }
      }
      const int64_t o = r * a.cols + c0;
      if (b.grad_kl)
        for (int64_t j = 0; j < n; ++j) gk[j] = gkl;
      const int64_t s_mu = a.v_mu.col_stride, s_lv = a.v_logvar.col_stride;
      reparam_grads_out<T, RowContig>(mu + (RowContig ? c0 : c0 * s_mu), s_mu, lv + (RowContig ? c0 : c0 * s_lv),
                                      s_lv, gsum, gse, b.grad_kl ? gk : nullptr, n, dmu ? dmu + o : nullptr,
                                      dlv ? dlv + o : nullptr);
    });
  }
}

// ---------------------------------------------------------------------------------------------------
// Bernoulli log-likelihood.
template <typename TL, typename TX, bool RowContig, bool Probs>
void bernoulli_rows(const BernoulliArgs& a, int64_t r0, int64_t r1) {
  using A = typename Acc<TL>::type;
  A tmp[kBlock];
  A* out = static_cast<A*>(a.out);
  TL* dl = static_cast<TL*>(a.d_logits);
  for (int64_t r = r0; r < r1; ++r) {
    const TL* l = static_cast<const TL*>(a.logits) + a.v_logits.row_offset(r);
    const TX* x = static_cast<const TX*>(a.target) + a.v_target.row_offset(r);
    LaneSum<A> sum;
    for_each_block(a.cols, [&](int64_t c0, int64_t n) {
      if (dl) {  // the gradient too, from the same exponentials (see BernoulliArgs::d_logits)
        TL* d = dl + r * a.cols + c0;
        for (int64_t j = 0; j < n; ++j) {
          A g;
          tmp[j] = bernoulli_term_and_grad<Probs, A>(at<RowContig>(l, c0 + j, a.v_logits.col_stride),
                                                     static_cast<A>(at<RowContig>(x, c0 + j, a.v_target.col_stride)), g);
          d[j] = from_acc<TL>(g);
        }
      } else {
        for (int64_t j = 0; j < n; ++j)
          tmp[j] = bernoulli_term<Probs, A>(at<RowContig>(l, c0 + j, a.v_logits.col_stride),
                                            static_cast<A>(at<RowContig>(x, c0 + j, a.v_target.col_stride)));
      }
      sum.add(tmp, n);
    });
    out[r] = sum.total();
  }
}

template <typename TL, typename TX, bool RowContig, bool Probs>
void bernoulli_backward_rows(const BernoulliBackwardArgs& b, int64_t r0, int64_t r1) {
  using A = typename Acc<TL>::type;
  const BernoulliArgs& a = b.in;
  TL* dl = static_cast<TL*>(b.d_logits);
  TX* dx = static_cast<TX*>(b.d_target);
  for (int64_t r = r0; r < r1; ++r) {
    const TL* l = static_cast<const TL*>(a.logits) + a.v_logits.row_offset(r);
    const TX* x = static_cast<const TX*>(a.target) + a.v_target.row_offset(r);
    const A g = static_cast<const A*>(b.grad)[b.v_grad.row_offset(r)];
    const int64_t o = r * a.cols;
    if (dl)
      for (int64_t j = 0; j < a.cols; ++j)
        dl[o + j] = from_acc<TL>(g * bernoulli_term_grad_input<Probs, A>(
                                         at<RowContig>(l, j, a.v_logits.col_stride),
                                         static_cast<A>(at<RowContig>(x, j, a.v_target.col_stride))));
    if (dx)
      if constexpr (!std::is_same<TX, uint8_t>::value)
        for (int64_t j = 0; j < a.cols; ++j)
          dx[o + j] = from_acc<TX>(static_cast<typename Acc<TX>::type>(
              g * bernoulli_term_grad_target<Probs, A>(at<RowContig>(l, j, a.v_logits.col_stride))));
  }
}

// ---------------------------------------------------------------------------------------------------
// dtype dispatch (kernel_args.h) with this backend's 16-bit storage types.
template <typename F>
void dispatch_float(Dtype t, F&& f) {
  ::vaecuda::dispatch_float<f16, bf16>(t, f);
}
template <typename F>
void dispatch_target(Dtype t, F&& f) {
  ::vaecuda::dispatch_target<f16, bf16>(t, f);
}

void gaussian_kl(const KLArgs& a, int64_t r0, int64_t r1) {
  const bool prior = a.prior_mu != nullptr;
  const bool contig = contiguous_rows(a.v_mu) && contiguous_rows(a.v_logvar) &&
                      (!prior || (contiguous_rows(a.v_prior_mu) && contiguous_rows(a.v_prior_logvar)));
  dispatch_float(a.dtype, [&](auto t) {
    using T = decltype(t);
    if (prior)
      contig ? kl_rows<T, true, true>(a, r0, r1) : kl_rows<T, true, false>(a, r0, r1);
    else
      contig ? kl_rows<T, false, true>(a, r0, r1) : kl_rows<T, false, false>(a, r0, r1);
  });
}

void gaussian_kl_backward(const KLBackwardArgs& b, int64_t r0, int64_t r1) {
  const KLArgs& a = b.in;
  const bool prior = a.prior_mu != nullptr;
  const bool per_element = a.elementwise;
  const bool contig = contiguous_rows(a.v_mu) && contiguous_rows(a.v_logvar) &&
                      (!prior || (contiguous_rows(a.v_prior_mu) && contiguous_rows(a.v_prior_logvar))) &&
                      (!per_element || contiguous_rows(b.v_grad));
  dispatch_float(a.dtype, [&](auto t) {
    using T = decltype(t);
#define VAE_KL_BWD(P, C)                                                                       \
  (per_element ? kl_backward_rows<T, P, C, true>(b, r0, r1) : kl_backward_rows<T, P, C, false>(b, r0, r1))
    if (prior)
      contig ? VAE_KL_BWD(true, true) : VAE_KL_BWD(true, false);
    else
      contig ? VAE_KL_BWD(false, true) : VAE_KL_BWD(false, false);
#undef VAE_KL_BWD
  });
}

void reparameterize(const ReparamArgs& a, int64_t r0, int64_t r1) {
  const bool contig = contiguous_rows(a.v_mu) && contiguous_rows(a.v_logvar);
  dispatch_float(a.dtype, [&](auto t) {
    using T = decltype(t);
    if (a.kl)
      contig ? reparam_rows<T, true, true>(a, r0, r1) : reparam_rows<T, true, false>(a, r0, r1);
    else
      contig ? reparam_rows<T, false, true>(a, r0, r1) : reparam_rows<T, false, false>(a, r0, r1);
  });
}

void reparameterize_backward(const ReparamBackwardArgs& b, int64_t r0, int64_t r1) {
  const bool contig = contiguous_rows(b.in.v_mu) && contiguous_rows(b.in.v_logvar) &&
                      (!b.grad_z || contiguous_rows(b.v_grad_z));
  dispatch_float(b.in.dtype, [&](auto t) {
    using T = decltype(t);
    contig ? reparam_backward_rows<T, true>(b, r0, r1) : reparam_backward_rows<T, false>(b, r0, r1);
  });
}

void bernoulli_log_prob(const BernoulliArgs& a, int64_t r0, int64_t r1) {
  const bool contig = contiguous_rows(a.v_logits) && contiguous_rows(a.v_target);
  dispatch_float(a.logits_dtype, [&](auto tl) {
    dispatch_target(a.target_dtype, [&](auto tx) {
      using TL = decltype(tl);
      using TX = decltype(tx);
      if (a.probs)
        contig ? bernoulli_rows<TL, TX, true, true>(a, r0, r1) : bernoulli_rows<TL, TX, false, true>(a, r0, r1);
      else
        contig ? bernoulli_rows<TL, TX, true, false>(a, r0, r1) : bernoulli_rows<TL, TX, false, false>(a, r0, r1);
    });
  });
}

void bernoulli_log_prob_backward(const BernoulliBackwardArgs& b, int64_t r0, int64_t r1) {
  const bool contig = contiguous_rows(b.in.v_logits) && contiguous_rows(b.in.v_target);
  dispatch_float(b.in.logits_dtype, [&](auto tl) {
    dispatch_target(b.in.target_dtype, [&](auto tx) {
      using TL = decltype(tl);
      using TX = decltype(tx);
      if (b.in.probs)
        contig ? bernoulli_backward_rows<TL, TX, true, true>(b, r0, r1)
               : bernoulli_backward_rows<TL, TX, false, true>(b, r0, r1);
      else
        contig ? bernoulli_backward_rows<TL, TX, true, false>(b, r0, r1)
               : bernoulli_backward_rows<TL, TX, false, false>(b, r0, r1);
    });
  });
}

}  // namespace

extern const Kernels kernels = {
    VAE_CPU_ISA_NAME,     gaussian_kl,        gaussian_kl_backward, reparameterize, reparameterize_backward,
    bernoulli_log_prob, bernoulli_log_prob_backward, normals,
};

}  // namespace VAE_CPU_ISA
}  // namespace cpu
}  // namespace vaecuda
