// Reparameterized sampling on CUDA. The forward gives each thread one Philox group (4 consecutive
// elements of z's flat index), so the noise depends on the flat index alone, never on the grid. The
// backward regenerates eps per element. First version: correct and deterministic; the fused KL is a
// second launch, and the backward recomputes a whole group per element: both are next to tune.
#include "common.cuh"

namespace vaecuda {
namespace cuda {

void launch(const KLArgs& a, cudaStream_t stream);  // gaussian_kl.cu

template <typename T>
__global__ void reparam_forward_kernel(ReparamArgs a) {
  using A = typename Acc<T>::type;
  uint64_t seed, offset;
  stream_key(a, seed, offset);
  const int64_t plane = a.rows * a.cols;
  const int64_t total = a.samples * plane;
  T* z = static_cast<T*>(a.z);
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g * 4 < total;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const F4 eps = normal_group(seed, offset, static_cast<uint64_t>(g));
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t e = g * 4 + i;
      if (e >= total) break;
      const int64_t rem = e % plane;
      const int64_t r = rem / a.cols, j = rem - r * a.cols;
      const A m = at(static_cast<const T*>(a.mu) + a.v_mu.row_offset(r), j, a.v_mu.col_stride);
      const A l = at(static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r), j, a.v_logvar.col_stride);
      z[e] = from_acc<T>(m + std_from_logvar(l) * static_cast<A>(eps.v[i]));
    }
  }
}

template <typename T>
__global__ void reparam_backward_kernel(ReparamBackwardArgs b) {
  using A = typename Acc<T>::type;
  const ReparamArgs& a = b.in;
  uint64_t seed, offset;
  stream_key(a, seed, offset);
  const int64_t plane = a.rows * a.cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < plane;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / a.cols, j = e - r * a.cols;
    A gsum = A(0), gse = A(0);
    if (b.grad_z) {
      for (int64_t k = 0; k < a.samples; ++k) {
        const A gz = at(static_cast<const T*>(b.grad_z) + b.v_grad_z.row_offset(k * a.rows + r), j,
                        b.v_grad_z.col_stride);
        gsum += gz;
        if (b.d_logvar) {
          const uint64_t flat = static_cast<uint64_t>(k * plane + e);
          gse += gz * static_cast<A>(normal_group(seed, offset, flat >> 2).v[flat & 3]);
        }
      }
    }
    const A m = at(static_cast<const T*>(a.mu) + a.v_mu.row_offset(r), j, a.v_mu.col_stride);
    const A l = at(static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r), j, a.v_logvar.col_stride);
    A kl_dmu = A(0), kl_dlv = A(0);
    if (b.grad_kl)
      kl_std_normal_grad(m, l, static_cast<const A*>(b.grad_kl)[b.v_grad_kl.row_offset(r)], kl_dmu, kl_dlv);
    if (b.d_mu) static_cast<T*>(b.d_mu)[e] = from_acc<T>(b.grad_kl ? gsum + kl_dmu : gsum);
    if (b.d_logvar) {
      const A d = gse * A(0.5) * std_from_logvar(l);
      static_cast<T*>(b.d_logvar)[e] = from_acc<T>(b.grad_kl ? d + kl_dlv : d);
    }
  }
}

__global__ void normals_kernel(const int64_t* rng_state, int64_t first, int64_t count, float* out) {
  const uint64_t seed = static_cast<uint64_t>(rng_state[0]), offset = static_cast<uint64_t>(rng_state[1]);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t n = static_cast<uint64_t>(first + i);
    out[i] = normal_group(seed, offset, n >> 2).v[n & 3];
  }
}

void launch(const ReparamArgs& a, cudaStream_t stream) {
  const int64_t total = a.samples * a.rows * a.cols;
  if (total > 0) {
    dispatch_float(a.dtype, [&](auto t) {
      reparam_forward_kernel<decltype(t)><<<blocks_for((total + 3) / 4, kThreads), kThreads, 0, stream>>>(a);
    });
    check_launch("reparameterize");
  }
  if (a.kl) {
    KLArgs k;
    k.rows = a.rows;
    k.cols = a.cols;
    k.dtype = a.dtype;
    k.mu = a.mu;
    k.logvar = a.logvar;
    k.v_mu = a.v_mu;
    k.v_logvar = a.v_logvar;
    k.out = a.kl;
    launch(k, stream);
  }
}

void launch(const ReparamBackwardArgs& b, cudaStream_t stream) {
  const int64_t plane = b.in.rows * b.in.cols;
  if (plane == 0) return;
  dispatch_float(b.in.dtype, [&](auto t) {
    reparam_backward_kernel<decltype(t)><<<blocks_for(plane, kThreads), kThreads, 0, stream>>>(b);
  });
  check_launch("reparameterize_backward");
}

void normals(const int64_t* rng_state, int64_t first, int64_t count, float* out, cudaStream_t stream) {
  if (count == 0) return;
  normals_kernel<<<blocks_for(count, kThreads), kThreads, 0, stream>>>(rng_state, first, count, out);
  check_launch("normals");
}

}  // namespace cuda
}  // namespace vaecuda
