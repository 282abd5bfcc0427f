// Reparameterized sampling on CUDA. The noise of z's flat element e is element e & 3 of Philox group
// e >> 2, so it depends on the flat index alone, never on the grid.
//
// cols % 4 == 0 (every latent width a model is likely to use): a quad of 4 columns of one row is one
// Philox group in every sample, so each thread takes quads and draws one group per quad and sample,
// forward and backward. The forward is a row kernel, which also sums the row's KL when asked (one
// read of mu and logvar, one launch, the KL op's very bits); the backward one thread per quad.
// Otherwise: one thread per group (forward, KL as a second launch) or per element (backward).
#include "common.cuh"

namespace vaecuda {
namespace cuda {

void launch(const KLArgs& a, cudaStream_t stream);  // gaussian_kl.cu

struct ReparamPlan {
  int lanes = 32;
  bool mu_ready = false, logvar_ready = false, z_ready = false;
  bool grad_z_ready = false, out_ready = false;  // backward
};

template <typename T>
__global__ void reparam_rows_kernel(ReparamArgs a, ReparamPlan plan) {
  using A = typename Acc<T>::type;
  uint64_t seed, offset;
  stream_key(a, seed, offset);
  const int64_t per_row = a.cols / 4, plane = a.rows * a.cols;
  T* z = static_cast<T*>(a.z);
  A* kl = static_cast<A*>(a.kl);
  for_each_row<A>(
      a.rows, plan.lanes, kl != nullptr,
      [&](int64_t r, int lane) {
        const T* mu = static_cast<const T*>(a.mu) + a.v_mu.row_offset(r);
        const T* lv = static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r);
        A acc = A(0);
        for (int64_t q = lane; q < per_row; q += plan.lanes) {
          const int64_t j = 4 * q;
          A m[4], l[4], s[4];
          load_quad(mu, j, a.cols, a.v_mu.col_stride, plan.mu_ready, m);
          load_quad(lv, j, a.cols, a.v_logvar.col_stride, plan.logvar_ready, l);
#pragma unroll
          for (int i = 0; i < 4; ++i) s[i] = std_from_logvar(l[i]);
          const int64_t e = r * a.cols + j;  // flat index in sample 0; a multiple of 4
          for (int64_t k = 0; k < a.samples; ++k) {
            const F4 eps = normal_group(seed, offset, static_cast<uint64_t>((k * plane + e) >> 2));
            A zq[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) zq[i] = m[i] + s[i] * static_cast<A>(eps.v[i]);
            store_quad(z + k * plane + e, 0, 4, plan.z_ready, zq);
          }
          if (kl) {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc = add_rn(acc, kl_std_normal(m[i], l[i]));  // as gaussian_kl.cu:
            // the same expression, so the same code (tests/test_reparameterize.py checks the bits agree)
          }
        }
        return acc;
      },
      [&](int64_t r, A total) { kl[r] = total; });
}

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

// The gradients of one element or quad from its upstream sums: gsum = sum_k dz, gse = sum_k dz * eps.
template <typename A>
__device__ __forceinline__ void reparam_grads(A m, A l, A gsum, A gse, const A* grad_kl, A& dmu, A& dlv) {
  dmu = gsum;
  dlv = gse * A(0.5) * std_from_logvar(l);
  if (grad_kl) {
    A kl_dmu, kl_dlv;
    kl_std_normal_grad(m, l, *grad_kl, kl_dmu, kl_dlv);
    dmu = add_rn(dmu, kl_dmu);  // two roundings, as the CPU kernels (no FMA across the sum)
    dlv = add_rn(dlv, kl_dlv);
  }
}

template <typename T>
__global__ void reparam_backward_quads(ReparamBackwardArgs b, ReparamPlan plan) {
  using A = typename Acc<T>::type;
  const ReparamArgs& a = b.in;
  uint64_t seed, offset;
  stream_key(a, seed, offset);
  const int64_t plane = a.rows * a.cols;
  for_each_quad(a.rows, a.cols, [&](int64_t r, int64_t j) {
    const int64_t e = r * a.cols + j;
    A m[4] = {}, l[4], gsum[4] = {}, gse[4] = {};
    if (b.grad_kl)  // mu enters only the KL's gradient
      load_quad(static_cast<const T*>(a.mu) + a.v_mu.row_offset(r), j, a.cols, a.v_mu.col_stride, plan.mu_ready, m);
    load_quad(static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r), j, a.cols, a.v_logvar.col_stride,
              plan.logvar_ready, l);
    if (b.grad_z) {
      for (int64_t k = 0; k < a.samples; ++k) {
        A gz[4];
        load_quad(static_cast<const T*>(b.grad_z) + b.v_grad_z.row_offset(k * a.rows + r), j, a.cols,
                  b.v_grad_z.col_stride, plan.grad_z_ready, gz);
#pragma unroll
        for (int i = 0; i < 4; ++i) gsum[i] += gz[i];
        if (b.d_logvar) {
          const F4 eps = normal_group(seed, offset, static_cast<uint64_t>((k * plane + e) >> 2));
#pragma unroll
          for (int i = 0; i < 4; ++i) gse[i] += gz[i] * static_cast<A>(eps.v[i]);
        }
      }
    }
    const A* gkl = b.grad_kl ? static_cast<const A*>(b.grad_kl) + b.v_grad_kl.row_offset(r) : nullptr;
    A dmu[4], dlv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) reparam_grads(m[i], l[i], gsum[i], gse[i], gkl, dmu[i], dlv[i]);
    if (b.d_mu) store_quad(static_cast<T*>(b.d_mu) + e, 0, 4, plan.out_ready, dmu);
    if (b.d_logvar) store_quad(static_cast<T*>(b.d_logvar) + e, 0, 4, plan.out_ready, dlv);
  });
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
    const A m = b.grad_kl ? at(static_cast<const T*>(a.mu) + a.v_mu.row_offset(r), j, a.v_mu.col_stride) : A(0);
    const A l = at(static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r), j, a.v_logvar.col_stride);
    const A* gkl = b.grad_kl ? static_cast<const A*>(b.grad_kl) + b.v_grad_kl.row_offset(r) : nullptr;
    A dmu, dlv;
    reparam_grads(m, l, gsum, gse, gkl, dmu, dlv);
    if (b.d_mu) static_cast<T*>(b.d_mu)[e] = from_acc<T>(dmu);
    if (b.d_logvar) static_cast<T*>(b.d_logvar)[e] = from_acc<T>(dlv);
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

template <typename T>
ReparamPlan reparam_plan(const ReparamArgs& a) {
  ReparamPlan p;
  p.lanes = lanes_per_row(a.cols);
  p.mu_ready = quad_ready<T>(a.mu, a.v_mu, a.cols);
  p.logvar_ready = quad_ready<T>(a.logvar, a.v_logvar, a.cols);
  return p;
}

void launch(const ReparamArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  if (a.cols % 4 == 0) {  // zero columns too: the row kernel then writes each row's KL, 0
    dispatch_float(a.dtype, [&](auto t) {
      using T = decltype(t);
      ReparamPlan plan = reparam_plan<T>(a);
      plan.z_ready = quad_ready_out<T>(a.z, a.cols);
      reparam_rows_kernel<T><<<row_blocks(a.rows, plan.lanes), kThreads, 0, stream>>>(a, plan);
    });
    check_launch("reparameterize");
    return;
  }
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
    using T = decltype(t);
    if (b.in.cols % 4 == 0) {
      ReparamPlan plan = reparam_plan<T>(b.in);
      plan.grad_z_ready = b.grad_z && quad_ready<T>(b.grad_z, b.v_grad_z, b.in.cols);
      plan.out_ready = (!b.d_mu || quad_ready_out<T>(b.d_mu, b.in.cols)) &&
                       (!b.d_logvar || quad_ready_out<T>(b.d_logvar, b.in.cols));
      reparam_backward_quads<T><<<blocks_for(plane / 4, kThreads), kThreads, 0, stream>>>(b, plan);
    } else {
      reparam_backward_kernel<T><<<blocks_for(plane, kThreads), kThreads, 0, stream>>>(b);
    }
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
