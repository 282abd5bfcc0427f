// Gaussian KL on CUDA: one warp per row for the forward's row sum, one thread per element for the
// backward. First version: correct and deterministic; tuned row sizes and vector loads come next.
#include "common.cuh"

namespace vaecuda {
namespace cuda {

template <typename T, bool Prior>
__global__ void kl_forward_kernel(KLArgs a) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  A* out = static_cast<A*>(a.out);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); r < a.rows;
       r += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const T* mu = static_cast<const T*>(a.mu) + a.v_mu.row_offset(r);
    const T* lv = static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r);
    const T* pm = Prior ? static_cast<const T*>(a.prior_mu) + a.v_prior_mu.row_offset(r) : nullptr;
    const T* pl = Prior ? static_cast<const T*>(a.prior_logvar) + a.v_prior_logvar.row_offset(r) : nullptr;
    A acc = A(0);
    for (int64_t j = lane; j < a.cols; j += 32) {
      const A m = at(mu, j, a.v_mu.col_stride);
      const A l = at(lv, j, a.v_logvar.col_stride);
      const A t = Prior ? kl_normal(m, l, at(pm, j, a.v_prior_mu.col_stride), at(pl, j, a.v_prior_logvar.col_stride))
                        : kl_std_normal(m, l);
      if (a.elementwise)
        out[r * a.cols + j] = t;
      else
        acc += t;
    }
    if (!a.elementwise) {
      acc = warp_sum(acc);
      if (lane == 0) out[r] = acc;
    }
  }
}

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

void launch(const KLArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  dispatch_float(a.dtype, [&](auto t) {
    using T = decltype(t);
    const unsigned int grid = blocks_for(a.rows, kWarpsPerBlock);
    if (a.prior_mu)
      kl_forward_kernel<T, true><<<grid, kThreads, 0, stream>>>(a);
    else
      kl_forward_kernel<T, false><<<grid, kThreads, 0, stream>>>(a);
  });
  check_launch("gaussian_kl");
}

void launch(const KLBackwardArgs& b, cudaStream_t stream) {
  if (b.in.rows * b.in.cols == 0) return;
  dispatch_float(b.in.dtype, [&](auto t) {
    using T = decltype(t);
    const unsigned int grid = blocks_for(b.in.rows * b.in.cols, kThreads);
    if (b.in.prior_mu)
      kl_backward_kernel<T, true><<<grid, kThreads, 0, stream>>>(b);
    else
      kl_backward_kernel<T, false><<<grid, kThreads, 0, stream>>>(b);
  });
  check_launch("gaussian_kl_backward");
}

}  // namespace cuda
}  // namespace vaecuda
