// Bernoulli log-likelihood on CUDA. Forward (with d/dlogits when asked): a row kernel, a warp per row
// up to 1024 pixels and a whole block per row beyond (the 12288 pixels of a 64x64 RGB image), summing
// quads of 4 pixels read with vector loads where the operands allow. Backward op: a row kernel too when
// cols % 4 == 0, else one thread per element.
#include "common.cuh"

namespace vaecuda {
namespace cuda {

struct BernoulliPlan {
  int lanes = 32;
  bool logits_ready = false, target_ready = false;
  bool out_ready = false, target_out_ready = false;  // d_logits, d_target
};

// A quad's logits and targets, loaded one quad ahead (pipelined_quads).
template <typename A>
struct BernoulliQuad {
  A l[4], x[4];
};

// Each lane walks its quads of a row with the next quad's loads in flight (pipelined_quads): with
// 16-bit logits and targets a lane's two loads are 8 bytes each, too few in flight per SM to cover
// the memory's latency when each waits for the exponentials of the quad before. Same quads, same sums.
// Launch bounds: 4 blocks of 256 threads per SM (<= 64 registers a thread; 2 for float64 logits).
template <typename TL, typename TX, bool Probs>
__global__ void __launch_bounds__(kThreads, sizeof(TL) == 8 ? 2 : 4)
    bernoulli_forward_kernel(BernoulliArgs a, BernoulliPlan plan) {
  using A = typename Acc<TL>::type;
  const int64_t quads = (a.cols + 3) / 4;
  for_each_row<A>(
      a.rows, plan.lanes, true,
      [&](int64_t r, int lane) {
        const TL* l = static_cast<const TL*>(a.logits) + a.v_logits.row_offset(r);
        const TX* x = static_cast<const TX*>(a.target) + a.v_target.row_offset(r);
        TL* dl = a.d_logits ? static_cast<TL*>(a.d_logits) + r * a.cols : nullptr;
        A acc = A(0);
        pipelined_quads<BernoulliQuad<A>>(
            lane, quads, plan.lanes,
            [&](int64_t q, BernoulliQuad<A>& in) {
              load_quad(l, 4 * q, a.cols, a.v_logits.col_stride, plan.logits_ready, in.l);
              load_quad(x, 4 * q, a.cols, a.v_target.col_stride, plan.target_ready, in.x);
            },
            [&](int64_t q, const BernoulliQuad<A>& in) {
              const int64_t j = 4 * q;
              A t[4];
              if (dl) {  // the gradient too, from the same exponentials
                A g[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) t[i] = bernoulli_term_and_grad<Probs, A>(in.l[i], in.x[i], g[i]);
                store_quad(dl, j, a.cols, plan.out_ready, g);
              } else {
#pragma unroll
                for (int i = 0; i < 4; ++i) t[i] = bernoulli_term<Probs, A>(in.l[i], in.x[i]);
              }
              acc = add_quad(acc, t, j, a.cols);
            });
        return acc;
      },
      [&](int64_t r, A total) { static_cast<A*>(a.out)[r] = total; });
}

// cols % 4 == 0 (a quad never straddles rows): a row kernel like the forward, its lanes one quad's loads
// ahead, for the same reason (a backward of a few instructions per element waits on its loads).
// Launch bounds: 5 blocks of 256 threads per SM (<= 48 registers, the occupancy of the one-thread-per-
// quad kernel before it; 2 for float64 logits). ptxas keeps 4-12 bytes of the kernel's setup in local
// memory, stored once and reloaded once a row, outside the quad loop (sm_80, sm_90).
template <typename TL, typename TX, bool Probs>
__global__ void __launch_bounds__(kThreads, sizeof(TL) == 8 ? 2 : 5)
    bernoulli_backward_rows(BernoulliBackwardArgs b, BernoulliPlan plan) {
  using A = typename Acc<TL>::type;
  const BernoulliArgs& a = b.in;
  const int64_t quads = a.cols / 4;
  for_each_row<A>(
      a.rows, plan.lanes, false,
      [&](int64_t r, int lane) {
        const TL* l = static_cast<const TL*>(a.logits) + a.v_logits.row_offset(r);
        const TX* x = static_cast<const TX*>(a.target) + a.v_target.row_offset(r);
        const A g = static_cast<const A*>(b.grad)[b.v_grad.row_offset(r)];
        pipelined_quads<BernoulliQuad<A>>(
            lane, quads, plan.lanes,
            [&](int64_t q, BernoulliQuad<A>& in) {
              load_quad(l, 4 * q, a.cols, a.v_logits.col_stride, plan.logits_ready, in.l);
              if (b.d_logits) load_quad(x, 4 * q, a.cols, a.v_target.col_stride, plan.target_ready, in.x);
            },
            [&](int64_t q, const BernoulliQuad<A>& in) {
              const int64_t e = r * a.cols + 4 * q;
              if (b.d_logits) {
                A d[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) d[i] = g * bernoulli_term_grad_input<Probs, A>(in.l[i], in.x[i]);
                store_quad(static_cast<TL*>(b.d_logits) + e, 0, 4, plan.out_ready, d);
              }
              if constexpr (!std::is_same<TX, uint8_t>::value) {
                if (b.d_target) {
                  using AX = typename Acc<TX>::type;
                  AX d[4];
#pragma unroll
                  for (int i = 0; i < 4; ++i) d[i] = static_cast<AX>(g * bernoulli_term_grad_target<Probs, A>(in.l[i]));
                  store_quad(static_cast<TX*>(b.d_target) + e, 0, 4, plan.target_out_ready, d);
                }
              }
            });
        return A(0);
      },
      [](int64_t, A) {});
}

template <typename TL, typename TX, bool Probs>
__global__ void bernoulli_backward_kernel(BernoulliBackwardArgs b) {
  using A = typename Acc<TL>::type;
  const BernoulliArgs& a = b.in;
  const int64_t n = a.rows * a.cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / a.cols, j = e - r * a.cols;
    const A g = static_cast<const A*>(b.grad)[b.v_grad.row_offset(r)];
    const A l = at(static_cast<const TL*>(a.logits) + a.v_logits.row_offset(r), j, a.v_logits.col_stride);
    if (b.d_logits) {
      const A x = static_cast<A>(at(static_cast<const TX*>(a.target) + a.v_target.row_offset(r), j, a.v_target.col_stride));
      static_cast<TL*>(b.d_logits)[e] = from_acc<TL>(g * bernoulli_term_grad_input<Probs, A>(l, x));
    }
    if constexpr (!std::is_same<TX, uint8_t>::value) {
      if (b.d_target)
        static_cast<TX*>(b.d_target)[e] =
            from_acc<TX>(static_cast<typename Acc<TX>::type>(g * bernoulli_term_grad_target<Probs, A>(l)));
    }
  }
}

template <typename TL, typename TX>
BernoulliPlan bernoulli_plan(const BernoulliArgs& a) {
  BernoulliPlan p;
  p.lanes = lanes_per_row(a.cols);
  p.logits_ready = quad_ready<TL>(a.logits, a.v_logits, a.cols);
  p.target_ready = quad_ready<TX>(a.target, a.v_target, a.cols);
  return p;
}

void launch(const BernoulliArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  dispatch_float(a.logits_dtype, [&](auto tl) {
    dispatch_target(a.target_dtype, [&](auto tx) {
      using TL = decltype(tl);
      using TX = decltype(tx);
      BernoulliPlan plan = bernoulli_plan<TL, TX>(a);
      plan.out_ready = a.d_logits && quad_ready_out<TL>(a.d_logits, a.cols);
      const unsigned int grid = row_blocks(a.rows, plan.lanes);
      if (a.probs)
        bernoulli_forward_kernel<TL, TX, true><<<grid, kThreads, 0, stream>>>(a, plan);
      else
        bernoulli_forward_kernel<TL, TX, false><<<grid, kThreads, 0, stream>>>(a, plan);
    });
  });
  check_launch("bernoulli_log_prob");
}

void launch(const BernoulliBackwardArgs& b, cudaStream_t stream) {
  const int64_t n = b.in.rows * b.in.cols;
  if (n == 0) return;
  dispatch_float(b.in.logits_dtype, [&](auto tl) {
    dispatch_target(b.in.target_dtype, [&](auto tx) {
      using TL = decltype(tl);
      using TX = decltype(tx);
      if (b.in.cols % 4 == 0) {
        BernoulliPlan plan = bernoulli_plan<TL, TX>(b.in);
        plan.out_ready = !b.d_logits || quad_ready_out<TL>(b.d_logits, b.in.cols);
        plan.target_out_ready = !b.d_target || quad_ready_out<TX>(b.d_target, b.in.cols);
        const unsigned int grid = row_blocks(b.in.rows, plan.lanes);
        if (b.in.probs)
          bernoulli_backward_rows<TL, TX, true><<<grid, kThreads, 0, stream>>>(b, plan);
        else
          bernoulli_backward_rows<TL, TX, false><<<grid, kThreads, 0, stream>>>(b, plan);
      } else {
        const unsigned int grid = blocks_for(n, kThreads);
        if (b.in.probs)
          bernoulli_backward_kernel<TL, TX, true><<<grid, kThreads, 0, stream>>>(b);
        else
          bernoulli_backward_kernel<TL, TX, false><<<grid, kThreads, 0, stream>>>(b);
      }
    });
  });
  check_launch("bernoulli_log_prob_backward");
}

}  // namespace cuda
}  // namespace vaecuda
