// Reparameterized sampling on CUDA. The noise of z's flat element e is element e & 3 of Philox group
// e >> 2, so it depends on the flat index alone, never on the grid.
//
// cols % 4 == 0 (every latent width a model is likely to use): a quad of 4 columns of one row is one
// Philox group in every sample, so each thread takes quads and draws one group per quad and sample,
// forward and backward. Both are row kernels whose lanes walk a row's quads with the next quad's loads
// in flight (pipelined_quads); the forward also sums the row's KL when asked (one read of mu and logvar,
// one launch, the KL op's very bits). Otherwise: one thread per group (forward, KL as a second launch)
// or per element (backward).
#include "common.cuh"

namespace vaecuda {
namespace cuda {

void launch(const KLArgs& a, cudaStream_t stream);  // gaussian_kl.cu

struct ReparamPlan {
  int lanes = 32;
  bool mu_ready = false, logvar_ready = false, z_ready = false;
  bool grad_z_ready = false, out_ready = false;  // backward
};

// A quad's inputs, loaded one quad ahead (pipelined_quads).
template <typename A>
struct QuadIn {
  A m[4], l[4], g[4];  // mu, logvar; the backward's upstream gradient of sample 0
};

// One: one sample (a template flag, as in the backward: the common loop then has no sample loop and no
// 64-bit sample index). Launch bounds: 4 blocks of 256 threads per SM (<= 64 registers a thread; 2 for
// float64), at which ptxas spills nothing (sm_80, sm_90).
template <typename T, bool One>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 8 ? 2 : 4)
    reparam_rows_kernel(ReparamArgs a, ReparamPlan plan) {
  using A = typename Acc<T>::type;
  uint64_t seed, offset;
  stream_key(a, seed, offset);
  const int64_t per_row = a.cols / 4, plane = a.rows * a.cols, samples = One ? 1 : a.samples;
  T* z = static_cast<T*>(a.z);
  A* kl = static_cast<A*>(a.kl);
  for_each_row<A>(
      a.rows, plan.lanes, kl != nullptr,
      [&](int64_t r, int lane) {
        const T* mu = static_cast<const T*>(a.mu) + a.v_mu.row_offset(r);
        const T* lv = static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r);
        A acc = A(0);
        pipelined_quads<QuadIn<A>>(
            lane, per_row, plan.lanes,
            [&](int64_t q, QuadIn<A>& in) {
              load_quad(mu, 4 * q, a.cols, a.v_mu.col_stride, plan.mu_ready, in.m);
              load_quad(lv, 4 * q, a.cols, a.v_logvar.col_stride, plan.logvar_ready, in.l);
            },
            [&](int64_t q, const QuadIn<A>& in) {
              A s[4];
#pragma unroll
              for (int i = 0; i < 4; ++i) s[i] = std_from_logvar(in.l[i]);
              const int64_t e = r * a.cols + 4 * q;  // flat index in sample 0; a multiple of 4
              for (int64_t k = 0; k < samples; ++k) {
                const F4 eps = normal_group(seed, offset, static_cast<uint64_t>((k * plane + e) >> 2));
                A zq[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) zq[i] = in.m[i] + s[i] * static_cast<A>(eps.v[i]);
                store_quad(z + k * plane + e, 0, 4, plan.z_ready, zq);
              }
              if (kl) {
#pragma unroll
                // as gaussian_kl.cu: the same function of the same sd, so the same bits
                // (tests/test_reparameterize.py checks that they agree)
                for (int i = 0; i < 4; ++i) acc = add_rn(acc, kl_std_normal_sd(in.m[i], in.l[i], s[i]));
              }
            });
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
  const A sd = std_from_logvar(l);  // one exponential for both terms
  dmu = gsum;
  dlv = gse * A(0.5) * sd;
  if (grad_kl) {
    A kl_dmu, kl_dlv;
    kl_std_normal_grad_sd(m, sd, *grad_kl, kl_dmu, kl_dlv);
    dmu = add_rn(dmu, kl_dmu);  // two roundings, as the CPU kernels (no FMA across the sum)
    dlv = add_rn(dlv, kl_dlv);
  }
}

// The backward as a row kernel like the forward (no row sum): each lane walks its quads of a row, one
// quad's loads ahead, and draws one Philox group per quad and sample. KL: a KL gradient comes back
// (sample+KL), so mu is read too; One: one sample. Template flags, so that the common loops hold no
// registers for what they do not do. Launch bounds, blocks of 256 threads per SM: one sample 4 (<= 64
// registers a thread), K samples 3 (<= 80) or, with a KL gradient, 2; float64 2, or 1 for K samples:
// the tightest at which ptxas spills nothing inside the quad loop (sm_80, sm_90; since the loop is
// unrolled by two, K samples and KL+one sample park 4-20 bytes of row setup in local memory, loaded
// once a row, not a quad).
template <typename T, bool KL, bool One>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 8 ? (One ? 2 : 1) : One ? 4 : KL ? 2 : 3)
    reparam_backward_rows(ReparamBackwardArgs b, ReparamPlan plan) {
  using A = typename Acc<T>::type;
  const ReparamArgs& a = b.in;
  uint64_t seed, offset;
  stream_key(a, seed, offset);
  const int64_t per_row = a.cols / 4, plane = a.rows * a.cols, samples = One ? 1 : a.samples;
  const T* grad_z = static_cast<const T*>(b.grad_z);
  for_each_row<A>(
      a.rows, plan.lanes, false,
      [&](int64_t r, int lane) {
        // mu enters only the KL's gradient; sample 0's upstream gradient is loaded ahead with the quad
        const T* mu = KL ? static_cast<const T*>(a.mu) + a.v_mu.row_offset(r) : nullptr;
        const T* lv = static_cast<const T*>(a.logvar) + a.v_logvar.row_offset(r);
        const T* gz0 = grad_z ? grad_z + b.v_grad_z.row_offset(r) : nullptr;
        const A* gkl = KL ? static_cast<const A*>(b.grad_kl) + b.v_grad_kl.row_offset(r) : nullptr;
        pipelined_quads<QuadIn<A>>(
            lane, per_row, plan.lanes,
            [&](int64_t q, QuadIn<A>& in) {
              if (KL) load_quad(mu, 4 * q, a.cols, a.v_mu.col_stride, plan.mu_ready, in.m);
              load_quad(lv, 4 * q, a.cols, a.v_logvar.col_stride, plan.logvar_ready, in.l);
              if (gz0) load_quad(gz0, 4 * q, a.cols, b.v_grad_z.col_stride, plan.grad_z_ready, in.g);
            },
            [&](int64_t q, const QuadIn<A>& in) {
              const int64_t j = 4 * q, e = r * a.cols + j;
              A gsum[4] = {}, gse[4] = {};
              for (int64_t k = 0; gz0 && k < samples; ++k) {
                A gz[4];
                if (k == 0) {
#pragma unroll
                  for (int i = 0; i < 4; ++i) gz[i] = in.g[i];
                } else {
                  load_quad(grad_z + b.v_grad_z.row_offset(k * a.rows + r), j, a.cols, b.v_grad_z.col_stride,
                            plan.grad_z_ready, gz);
                }
#pragma unroll
                for (int i = 0; i < 4; ++i) gsum[i] += gz[i];
                if (b.d_logvar) {
                  const F4 eps = normal_group(seed, offset, static_cast<uint64_t>((k * plane + e) >> 2));
#pragma unroll
                  for (int i = 0; i < 4; ++i) gse[i] += gz[i] * static_cast<A>(eps.v[i]);
                }
              }
              A dmu[4], dlv[4];
#pragma unroll
              for (int i = 0; i < 4; ++i) reparam_grads(in.m[i], in.l[i], gsum[i], gse[i], gkl, dmu[i], dlv[i]);
              if (b.d_mu) store_quad(static_cast<T*>(b.d_mu) + e, 0, 4, plan.out_ready, dmu);
              if (b.d_logvar) store_quad(static_cast<T*>(b.d_logvar) + e, 0, 4, plan.out_ready, dlv);
            });
        return A(0);
      },
      [](int64_t, A) {});
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
      const unsigned int blocks = row_blocks(a.rows, plan.lanes);
      if (a.samples == 1) reparam_rows_kernel<T, true><<<blocks, kThreads, 0, stream>>>(a, plan);
      else reparam_rows_kernel<T, false><<<blocks, kThreads, 0, stream>>>(a, plan);
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
      const unsigned int blocks = row_blocks(b.in.rows, plan.lanes);
      const bool one = b.in.samples == 1;
      if (b.grad_kl && one) reparam_backward_rows<T, true, true><<<blocks, kThreads, 0, stream>>>(b, plan);
      else if (b.grad_kl) reparam_backward_rows<T, true, false><<<blocks, kThreads, 0, stream>>>(b, plan);
      else if (one) reparam_backward_rows<T, false, true><<<blocks, kThreads, 0, stream>>>(b, plan);
      else reparam_backward_rows<T, false, false><<<blocks, kThreads, 0, stream>>>(b, plan);
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
