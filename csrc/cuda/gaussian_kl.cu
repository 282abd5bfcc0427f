// Gaussian KL on CUDA. Forward: a row kernel (a sub-warp, a warp or a block per row, by the row's
// width) summing each row in quads, vector loads where the operands allow. Backward: a row kernel
// too when cols % 4 == 0, else one thread per element.
#include "common.cuh"

namespace vaecuda {
namespace cuda {

struct KLPlan {
  int lanes = 32;
  bool ready[4] = {};  // mu, logvar, prior_mu, prior_logvar
};

struct KLBackwardPlan {
  KLPlan in;
  bool grad_ready = false;  // elementwise gradient [rows, cols] as quads
  bool out_ready = false;   // the [rows, cols] gradients written as quads
};

// A row's operands, and a quad of them loaded one quad ahead (pipelined_quads): g is the backward's
// elementwise gradient.
template <typename T>
struct KLRow {
  const T *mu, *lv, *pmu, *plv;
};
template <typename A>
struct KLQuad {
  A m[4], l[4], pm[4], pl[4], g[4];
};

template <typename T, bool Prior>
__device__ __forceinline__ KLRow<T> kl_row(const KLArgs& a, int64_t r) {
  return KLRow<T>{static_cast<const T*>(a.mu) + a.v_mu.row_offset(r),
                  static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r),
                  Prior ? static_cast<const T*>(a.prior_mu) + a.v_prior_mu.row_offset(r) : nullptr,
                  Prior ? static_cast<const T*>(a.prior_logvar) + a.v_prior_logvar.row_offset(r) : nullptr};
}

template <typename T, bool Prior, typename A>
__device__ __forceinline__ void load_kl_quad(const KLArgs& a, const KLPlan& plan, const KLRow<T>& row, int64_t j,
                                             KLQuad<A>& in) {
  load_quad(row.mu, j, a.cols, a.v_mu.col_stride, plan.ready[0], in.m);
  load_quad(row.lv, j, a.cols, a.v_logvar.col_stride, plan.ready[1], in.l);
  if constexpr (Prior) {
    load_quad(row.pmu, j, a.cols, a.v_prior_mu.col_stride, plan.ready[2], in.pm);
    load_quad(row.plv, j, a.cols, a.v_prior_logvar.col_stride, plan.ready[3], in.pl);
  }
}

// Both directions are row kernels whose lanes walk a row's quads with the next quad's loads in flight
// (pipelined_quads; at the third GPU run, one quad at a time, the bf16 forward took as long as fp32's
// and the backward reached 59% of a copy's speed).
//
// Launch bounds: blocks of 256 threads per SM, the most at which ptxas spills nothing inside the quad
// loop for sm_90. Without a prior 5 (<= 48 registers, as the forward had before), 4 for an elementwise
// gradient (free bits); with a prior 4 forward and 3 (2 with an elementwise gradient) backward; float64
// 2, or 1 with a prior (4 operands of 32 bytes a quad: a few warps keep enough bytes in flight).
template <typename T, bool Prior, bool Backward, bool Elementwise = false>
constexpr int kl_blocks_per_sm() {
  if (sizeof(T) == 8) return Prior ? 1 : 2;
  if (Prior) return !Backward ? 4 : Elementwise ? 2 : 3;
  return Backward && Elementwise ? 4 : 5;
}

template <typename T, bool Prior>
__global__ void __launch_bounds__(kThreads, kl_blocks_per_sm<T, Prior, false>())
    kl_forward_kernel(KLArgs a, KLPlan plan) {
  using A = typename Acc<T>::type;
  A* out = static_cast<A*>(a.out);
  const int64_t quads = (a.cols + 3) / 4;
  for_each_row<A>(
      a.rows, plan.lanes, !a.elementwise,
      [&](int64_t r, int lane) {
        const KLRow<T> row = kl_row<T, Prior>(a, r);
        A acc = A(0);
        pipelined_quads<KLQuad<A>>(
            lane, quads, plan.lanes, [&](int64_t q, KLQuad<A>& in) { load_kl_quad<T, Prior>(a, plan, row, 4 * q, in); },
            [&](int64_t q, const KLQuad<A>& in) {
              const int64_t j = 4 * q;
              A t[4];
#pragma unroll
              for (int i = 0; i < 4; ++i)
                t[i] = Prior ? kl_normal(in.m[i], in.l[i], in.pm[i], in.pl[i]) : kl_std_normal(in.m[i], in.l[i]);
              if (a.elementwise) {
#pragma unroll
                for (int i = 0; i < 4; ++i)
                  if (j + i < a.cols) out[r * a.cols + j + i] = t[i];
              } else {
                acc = add_quad(acc, t, j, a.cols);
              }
            });
        return acc;
      },
      [&](int64_t r, A total) { out[r] = total; });
}

// cols % 4 == 0 (a quad never straddles rows). Elementwise: the gradient is [rows, cols] (free bits),
// else one value a row; a template flag, so that the common kernel holds no registers for it.
template <typename T, bool Prior, bool Elementwise>
__global__ void __launch_bounds__(kThreads, kl_blocks_per_sm<T, Prior, true, Elementwise>())
    kl_backward_rows(KLBackwardArgs b, KLBackwardPlan plan) {
  using A = typename Acc<T>::type;
  const KLArgs& a = b.in;
  const int64_t quads = a.cols / 4;
  for_each_row<A>(
      a.rows, plan.in.lanes, false,
      [&](int64_t r, int lane) {
        const KLRow<T> row = kl_row<T, Prior>(a, r);
        const A* grow = static_cast<const A*>(b.grad) + b.v_grad.row_offset(r);
        const A g_row = Elementwise ? A(0) : grow[0];  // a row's KL, or each element's (free bits)
        pipelined_quads<KLQuad<A>>(
            lane, quads, plan.in.lanes,
            [&](int64_t q, KLQuad<A>& in) {
              load_kl_quad<T, Prior>(a, plan.in, row, 4 * q, in);
              if (Elementwise) load_quad(grow, 4 * q, a.cols, b.v_grad.col_stride, plan.grad_ready, in.g);
            },
            [&](int64_t q, const KLQuad<A>& in) {
              A gm[4], gl[4], gpm[4], gpl[4];
#pragma unroll
              for (int i = 0; i < 4; ++i) {
                const A g = Elementwise ? in.g[i] : g_row;
                if constexpr (Prior)
                  kl_normal_grad(in.m[i], in.l[i], in.pm[i], in.pl[i], g, gm[i], gl[i], gpm[i], gpl[i]);
                else
                  kl_std_normal_grad(in.m[i], in.l[i], g, gm[i], gl[i]);
              }
              const int64_t e = r * a.cols + 4 * q;
              if (b.d_mu) store_quad(static_cast<T*>(b.d_mu) + e, 0, 4, plan.out_ready, gm);
              if (b.d_logvar) store_quad(static_cast<T*>(b.d_logvar) + e, 0, 4, plan.out_ready, gl);
              if constexpr (Prior) {
                if (b.d_prior_mu) store_quad(static_cast<T*>(b.d_prior_mu) + e, 0, 4, plan.out_ready, gpm);
                if (b.d_prior_logvar) store_quad(static_cast<T*>(b.d_prior_logvar) + e, 0, 4, plan.out_ready, gpl);
              }
            });
        return A(0);
      },
      [](int64_t, A) {});
}

// One thread per element, for rows whose width is not a multiple of 4.
template <typename T, bool Prior>
__global__ void kl_backward_kernel(KLBackwardArgs b) {
  using A = typename Acc<T>::type;
  const KLArgs& a = b.in;
  const int64_t n = a.rows * a.cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / a.cols, j = e - r * a.cols;
    const A* g = static_cast<const A*>(b.grad) + b.v_grad.row_offset(r);
    const A gj = a.elementwise ? g[j * b.v_grad.col_stride] : g[0];
    const A m = at(static_cast<const T*>(a.mu) + a.v_mu.row_offset(r), j, a.v_mu.col_stride);
    const A l = at(static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r), j, a.v_logvar.col_stride);
    A gm, gl, gpm = A(0), gpl = A(0);
    if (Prior)
      kl_normal_grad(m, l, at(static_cast<const T*>(a.prior_mu) + a.v_prior_mu.row_offset(r), j, a.v_prior_mu.col_stride),
                     at(static_cast<const T*>(a.prior_logvar) + a.v_prior_logvar.row_offset(r), j,
                        a.v_prior_logvar.col_stride),
                     gj, gm, gl, gpm, gpl);
    else
      kl_std_normal_grad(m, l, gj, gm, gl);
    if (b.d_mu) static_cast<T*>(b.d_mu)[e] = from_acc<T>(gm);
    if (b.d_logvar) static_cast<T*>(b.d_logvar)[e] = from_acc<T>(gl);
    if (Prior && b.d_prior_mu) static_cast<T*>(b.d_prior_mu)[e] = from_acc<T>(gpm);
    if (Prior && b.d_prior_logvar) static_cast<T*>(b.d_prior_logvar)[e] = from_acc<T>(gpl);
  }
}

template <typename T>
KLPlan kl_plan(const KLArgs& a) {
  KLPlan p;
  p.lanes = lanes_per_row(a.cols);
  p.ready[0] = quad_ready<T>(a.mu, a.v_mu, a.cols);
  p.ready[1] = quad_ready<T>(a.logvar, a.v_logvar, a.cols);
  if (a.prior_mu) {
    p.ready[2] = quad_ready<T>(a.prior_mu, a.v_prior_mu, a.cols);
    p.ready[3] = quad_ready<T>(a.prior_logvar, a.v_prior_logvar, a.cols);
  }
  return p;
}

void launch(const KLArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  dispatch_float(a.dtype, [&](auto t) {
    using T = decltype(t);
    const KLPlan plan = kl_plan<T>(a);
    const unsigned int grid = row_blocks(a.rows, plan.lanes);
    if (a.prior_mu)
      kl_forward_kernel<T, true><<<grid, kThreads, 0, stream>>>(a, plan);
    else
      kl_forward_kernel<T, false><<<grid, kThreads, 0, stream>>>(a, plan);
  });
  check_launch("gaussian_kl");
}

void launch(const KLBackwardArgs& b, cudaStream_t stream) {
  const int64_t n = b.in.rows * b.in.cols;
  if (n == 0) return;
  dispatch_float(b.in.dtype, [&](auto t) {
    using T = decltype(t);
    using A = typename Acc<T>::type;
    if (b.in.cols % 4 == 0) {
      KLBackwardPlan plan;
      plan.in = kl_plan<T>(b.in);
      plan.grad_ready = b.in.elementwise && quad_ready<A>(b.grad, b.v_grad, b.in.cols);
      plan.out_ready = true;
      for (void* p : {b.d_mu, b.d_logvar, b.d_prior_mu, b.d_prior_logvar})
        if (p) plan.out_ready = plan.out_ready && quad_ready_out<T>(p, b.in.cols);
      const unsigned int grid = row_blocks(b.in.rows, plan.in.lanes);
      const bool prior = b.in.prior_mu != nullptr, el = b.in.elementwise;
      if (prior && el) kl_backward_rows<T, true, true><<<grid, kThreads, 0, stream>>>(b, plan);
      else if (prior) kl_backward_rows<T, true, false><<<grid, kThreads, 0, stream>>>(b, plan);
      else if (el) kl_backward_rows<T, false, true><<<grid, kThreads, 0, stream>>>(b, plan);
      else kl_backward_rows<T, false, false><<<grid, kThreads, 0, stream>>>(b, plan);
    } else {
      const unsigned int grid = blocks_for(n, kThreads);
      if (b.in.prior_mu)
        kl_backward_kernel<T, true><<<grid, kThreads, 0, stream>>>(b);
      else
        kl_backward_kernel<T, false><<<grid, kThreads, 0, stream>>>(b);
    }
  });
  check_launch("gaussian_kl_backward");
}

}  // namespace cuda
}  // namespace vaecuda
