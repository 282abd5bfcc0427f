// vaecuda::bernoulli_log_prob and its backward: shapes, outputs and kernel arguments, the same for
// every device; the kernels are in cpu/ and cuda/. `logits` holds probabilities when `probs` is set.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "geometry.h"
#include "launch.h"

namespace vaecuda {
namespace {

struct BernoulliProblem {
  BernoulliArgs args;
  std::vector<at::Tensor> keep;
};

BernoulliProblem bernoulli_problem(const at::Tensor& logits, const at::Tensor& target, int64_t event_dims,
                                   bool probs) {
  TORCH_CHECK(is_kernel_float(logits.scalar_type()),
              "vaecuda: logits must be float32, float64, float16 or bfloat16, got ", logits.scalar_type());
  const at::ScalarType tt = target.scalar_type();
  TORCH_CHECK(is_kernel_float(tt) || tt == at::kByte || tt == at::kBool,
              "vaecuda: target must be a float tensor, bool or uint8, got ", tt);
  TORCH_CHECK(target.device() == logits.device(), "vaecuda: target is on ", target.device(),
              " but logits is on ", logits.device());
  TORCH_CHECK(event_dims >= 1 && event_dims <= logits.dim(), "vaecuda: event_dims must be in [1, logits.dim()=",
              logits.dim(), "], got ", event_dims);
  const std::vector<int64_t> full = broadcast_with(logits.sizes(), target, "target", "logits");
  TORCH_CHECK(at::IntArrayRef(full) == logits.sizes(), "vaecuda: target of shape ", target.sizes(),
              " must broadcast to logits' shape ", logits.sizes());
  BernoulliProblem p;
  BernoulliArgs& a = p.args;
  const size_t nb = full.size() - static_cast<size_t>(event_dims);
  a.rows = prod(full, 0, nb);
  a.cols = prod(full, nb, full.size());
  a.logits_dtype = kernel_dtype(logits.scalar_type());
  a.probs = probs;
  a.target_dtype = kernel_dtype(tt);
  auto [vl, hl] = make_row_view(logits, full, event_dims);
  auto [vx, hx] = make_row_view(target, full, event_dims);
  a.logits = hl.data_ptr();
  a.v_logits = vl;
  a.target = hx.data_ptr();
  a.v_target = vx;
  p.keep = {hl, hx};
  return p;
}

// The forward; with `d_logits` defined (the logits' shape and dtype) also d out / d logits per
// element, from the same exponentials.
at::Tensor bernoulli_forward(const at::Tensor& logits, const at::Tensor& target, int64_t event_dims, bool probs,
                             const at::Tensor& d_logits) {
  c10::DeviceGuard guard(logits.device());
  BernoulliProblem p = bernoulli_problem(logits, target, event_dims, probs);
  at::Tensor out = at::empty(logits.sizes().slice(0, logits.dim() - event_dims),
                             logits.options().dtype(acc_dtype(logits.scalar_type())));
  p.args.out = out.data_ptr();
  if (d_logits.defined()) p.args.d_logits = d_logits.data_ptr();
  launch(p.args, logits.device());
  return out;
}

at::Tensor bernoulli_log_prob(const at::Tensor& logits, const at::Tensor& target, int64_t event_dims, bool probs) {
  return bernoulli_forward(logits, target, event_dims, probs, at::Tensor());
}

// The forward and d/dlogits in one pass, for a backward that is then one multiply (autograd.cpp).
std::tuple<at::Tensor, at::Tensor> bernoulli_log_prob_and_grad(const at::Tensor& logits, const at::Tensor& target,
                                                               int64_t event_dims, bool probs) {
  at::Tensor dl = at::empty(logits.sizes(), logits.options());
  return {bernoulli_forward(logits, target, event_dims, probs, dl), dl};
}

std::tuple<at::Tensor, at::Tensor> bernoulli_log_prob_backward(const at::Tensor& grad, const at::Tensor& logits,
                                                               const at::Tensor& target, int64_t event_dims,
                                                               bool probs, std::array<bool, 2> output_mask) {
  c10::DeviceGuard guard(logits.device());
  BernoulliProblem p = bernoulli_problem(logits, target, event_dims, probs);
  check_grad(grad, "grad", logits.sizes().slice(0, logits.dim() - event_dims), logits);
  if (output_mask[1] && is_half(target.scalar_type()) && target.sizes() != logits.sizes()) {
    auto r = bernoulli_log_prob_backward(grad, logits, target.to(at::kFloat), event_dims, probs, output_mask);
    return {std::get<0>(r), std::get<1>(r).to(target.scalar_type())};
  }
  BernoulliBackwardArgs b;
  b.in = p.args;
  const at::ScalarType acc = acc_dtype(logits.scalar_type());
  const at::Tensor g = grad.scalar_type() == acc ? grad : grad.to(acc);
  auto [gv, gheld] = make_row_view(g, logits.sizes().slice(0, logits.dim() - event_dims), 0);
  b.grad = gheld.data_ptr();
  b.v_grad = gv;
  at::Tensor dl, dx;
  if (output_mask[0]) {
    dl = at::empty(logits.sizes(), logits.options());
    b.d_logits = dl.data_ptr();
  }
  if (output_mask[1] && at::isFloatingType(target.scalar_type())) {
    dx = at::empty(logits.sizes(), target.options());
    b.d_target = dx.data_ptr();
  }
  launch(b, logits.device());
  return {dl.defined() ? dl : at::empty({0}, logits.options()),
          dx.defined() ? reduce_to(dx, target) : at::empty({0}, target.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(vaecuda, CPU, m) {
  m.impl("bernoulli_log_prob", &bernoulli_log_prob);
  m.impl("_bernoulli_log_prob_and_grad", &bernoulli_log_prob_and_grad);
  m.impl("bernoulli_log_prob_backward", &bernoulli_log_prob_backward);
}
#if defined(VAECUDA_WITH_CUDA)
TORCH_LIBRARY_IMPL(vaecuda, CUDA, m) {
  m.impl("bernoulli_log_prob", &bernoulli_log_prob);
  m.impl("_bernoulli_log_prob_and_grad", &bernoulli_log_prob_and_grad);
  m.impl("bernoulli_log_prob_backward", &bernoulli_log_prob_backward);
}
#endif

}  // namespace vaecuda
