// Gaussian KL on CUDA. Forward: a row kernel (a sub-warp, a warp or a block per row, by the row's
// width) summing each row in quads, vector loads where the operands allow. Backward: one thread per
// quad of 4 elements, or per element when cols % 4 != 0.
#include "common.cuh"

namespace vaecuda {
namespace cuda {

struct KLPlan {
  int lanes = 32;
  bool ready[4] = {};  // mu, logvar, prior_mu, prior_logvar
};

template <typename T, bool Prior>
__device__ __forceinline__ void kl_quad(const KLArgs& a, const KLPlan& plan, int64_t r, int64_t j,
                                        typename Acc<T>::type (&t)[4]) {
  using A = typename Acc<T>::type;
  A m[4], l[4];
  load_quad(static_cast<const T*>(a.mu) + a.v_mu.row_offset(r), j, a.cols, a.v_mu.col_stride, plan.ready[0], m);
  load_quad(static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r), j, a.cols, a.v_logvar.col_stride,
            plan.ready[1], l);
  if constexpr (Prior) {
    A pm[4], pl[4];
    load_quad(static_cast<const T*>(a.prior_mu) + a.v_prior_mu.row_offset(r), j, a.cols,
              a.v_prior_mu.col_stride, plan.ready[2], pm);
    load_quad(static_cast<const T*>(a.prior_logvar) + a.v_prior_logvar.row_offset(r), j, a.cols,
              a.v_prior_logvar.col_stride, plan.ready[3], pl);
#pragma unroll
    for (int i = 0; i < 4; ++i) t[i] = kl_normal(m[i], l[i], pm[i], pl[i]);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) t[i] = kl_std_normal(m[i], l[i]);
  }
}

template <typename T, bool Prior>
__global__ void kl_forward_kernel(KLArgs a, KLPlan plan) {
  using A = typename Acc<T>::type;
  A* out = static_cast<A*>(a.out);
  const int64_t quads = (a.cols + 3) / 4;
  for_each_row<A>(
      a.rows, plan.lanes, !a.elementwise,
      [&](int64_t r, int lane) {
        A acc = A(0);
        for (int64_t q = lane; q < quads; q += plan.lanes) {
          const int64_t j = 4 * q;
          A t[4];
          kl_quad<T, Prior>(a, plan, r, j, t);
          if (a.elementwise) {
#pragma unroll
            for (int i = 0; i < 4; ++i)
              if (j + i < a.cols) out[r * a.cols + j + i] = t[i];
          } else {
#pragma unroll
            for (int i = 0; i < 4; ++i)
              if (j + i < a.cols) acc = add_rn(acc, t[i]);
          }
        }
        return acc;
      },
      [&](int64_t r, A total) { out[r] = total; });
}

struct KLBackwardPlan {
  KLPlan in;
  bool grad_ready = false;  // elementwise gradient [rows, cols] as quads
  bool out_ready = false;   // the [rows, cols] gradients written as quads
};

// One thread per quad (cols % 4 == 0: a quad never straddles rows).
template <typename T, bool Prior>
__global__ void kl_backward_quads(KLBackwardArgs b, KLBackwardPlan plan) {
  using A = typename Acc<T>::type;
  const KLArgs& a = b.in;
  for_each_quad(a.rows, a.cols, [&](int64_t r, int64_t j) {
    A m[4], l[4], g[4];
    load_quad(static_cast<const T*>(a.mu) + a.v_mu.row_offset(r), j, a.cols, a.v_mu.col_stride, plan.in.ready[0], m);
    load_quad(static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r), j, a.cols, a.v_logvar.col_stride,
              plan.in.ready[1], l);
    const A* grow = static_cast<const A*>(b.grad) + b.v_grad.row_offset(r);
    if (a.elementwise) {
      load_quad(grow, j, a.cols, b.v_grad.col_stride, plan.grad_ready, g);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) g[i] = grow[0];
    }
    A gm[4], gl[4], gpm[4], gpl[4];
    if constexpr (Prior) {
      A pm[4], pl[4];
      load_quad(static_cast<const T*>(a.prior_mu) + a.v_prior_mu.row_offset(r), j, a.cols,
                a.v_prior_mu.col_stride, plan.in.ready[2], pm);
      load_quad(static_cast<const T*>(a.prior_logvar) + a.v_prior_logvar.row_offset(r), j, a.cols,
                a.v_prior_logvar.col_stride, plan.in.ready[3], pl);
#pragma unroll
      for (int i = 0; i < 4; ++i) kl_normal_grad(m[i], l[i], pm[i], pl[i], g[i], gm[i], gl[i], gpm[i], gpl[i]);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) kl_std_normal_grad(m[i], l[i], g[i], gm[i], gl[i]);
    }
    const int64_t e = r * a.cols + j;
    if (b.d_mu) store_quad(static_cast<T*>(b.d_mu) + e, 0, 4, plan.out_ready, gm);
    if (b.d_logvar) store_quad(static_cast<T*>(b.d_logvar) + e, 0, 4, plan.out_ready, gl);
    if constexpr (Prior) {
      if (b.d_prior_mu) store_quad(static_cast<T*>(b.d_prior_mu) + e, 0, 4, plan.out_ready, gpm);
      if (b.d_prior_logvar) store_quad(static_cast<T*>(b.d_prior_logvar) + e, 0, 4, plan.out_ready, gpl);
    }
  });
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
      const unsigned int grid = blocks_for(n / 4, kThreads);
      if (b.in.prior_mu)
        kl_backward_quads<T, true><<<grid, kThreads, 0, stream>>>(b, plan);
      else
        kl_backward_quads<T, false><<<grid, kThreads, 0, stream>>>(b, plan);
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
