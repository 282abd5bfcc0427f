// Bernoulli log-likelihood on CUDA: one warp per row for the forward's row sum, one thread per
// element for the backward. First version: correct and deterministic; wide-row blocks and vector
// loads come next.
#include "common.cuh"

namespace vaecuda {
namespace cuda {

template <typename TL, typename TX, bool Probs>
__global__ void bernoulli_forward_kernel(BernoulliArgs a) {
  using A = typename Acc<TL>::type;
  const int lane = threadIdx.x & 31;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); r < a.rows;
       r += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const TL* l = static_cast<const TL*>(a.logits) + a.v_logits.row_offset(r);
    const TX* x = static_cast<const TX*>(a.target) + a.v_target.row_offset(r);
    A acc = A(0);
    TL* dl = a.d_logits ? static_cast<TL*>(a.d_logits) + r * a.cols : nullptr;
    for (int64_t j = lane; j < a.cols; j += 32) {
      const A v = at(l, j, a.v_logits.col_stride), xv = static_cast<A>(at(x, j, a.v_target.col_stride));
      if (dl) {  // the gradient too, from the same exponentials
        A g;
        acc += bernoulli_term_and_grad<Probs, A>(v, xv, g);
        dl[j] = from_acc<TL>(g);
      } else {
        acc += bernoulli_term<Probs, A>(v, xv);
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) static_cast<A*>(a.out)[r] = acc;
  }
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

void launch(const BernoulliArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  dispatch_float(a.logits_dtype, [&](auto tl) {
    dispatch_target(a.target_dtype, [&](auto tx) {
      if (a.probs)
        bernoulli_forward_kernel<decltype(tl), decltype(tx), true>
            <<<blocks_for(a.rows, kWarpsPerBlock), kThreads, 0, stream>>>(a);
      else
        bernoulli_forward_kernel<decltype(tl), decltype(tx), false>
            <<<blocks_for(a.rows, kWarpsPerBlock), kThreads, 0, stream>>>(a);
    });
  });
  check_launch("bernoulli_log_prob");
}

void launch(const BernoulliBackwardArgs& b, cudaStream_t stream) {
  if (b.in.rows * b.in.cols == 0) return;
  dispatch_float(b.in.logits_dtype, [&](auto tl) {
    dispatch_target(b.in.target_dtype, [&](auto tx) {
      if (b.in.probs)
        bernoulli_backward_kernel<decltype(tl), decltype(tx), true>
            <<<blocks_for(b.in.rows * b.in.cols, kThreads), kThreads, 0, stream>>>(b);
      else
        bernoulli_backward_kernel<decltype(tl), decltype(tx), false>
            <<<blocks_for(b.in.rows * b.in.cols, kThreads), kThreads, 0, stream>>>(b);
    });
  });
  check_launch("bernoulli_log_prob_backward");
}

}  // namespace cuda
}  // namespace vaecuda
