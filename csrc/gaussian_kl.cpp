// vaecuda::gaussian_kl and its backward: shapes, outputs and kernel arguments, the same for every
// device; the kernels themselves are in cpu/ and cuda/.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "geometry.h"
#include "launch.h"

namespace vaecuda {
namespace {

struct KLProblem {
  std::vector<int64_t> full;  // broadcast shape of all operands, [*batch, D]
  KLArgs args;
  std::vector<at::Tensor> keep;  // tensors the views point into
};

KLProblem kl_problem(const at::Tensor& mu, const at::Tensor& logvar, const std::optional<at::Tensor>& prior_mu,
                     const std::optional<at::Tensor>& prior_logvar, bool elementwise) {
  check_float_operand(mu, "mu", mu, "mu");
  check_float_operand(logvar, "logvar", mu, "mu");
  TORCH_CHECK(prior_mu.has_value() == prior_logvar.has_value(),
              "vaecuda: pass both prior_mu and prior_logvar, or neither");
  KLProblem p;
  p.full = broadcast_with(mu.sizes(), logvar, "logvar", "mu");
  const bool prior = prior_mu.has_value();
  if (prior) {
    check_float_operand(*prior_mu, "prior_mu", mu, "mu");
    check_float_operand(*prior_logvar, "prior_logvar", mu, "mu");
    p.full = broadcast_with(p.full, *prior_mu, "prior_mu", "mu");
    p.full = broadcast_with(p.full, *prior_logvar, "prior_logvar", "mu");
  }
  TORCH_CHECK(!p.full.empty(), "vaecuda: mu must have at least one dim (the latent dim), got a scalar");
  KLArgs& a = p.args;
  a.cols = p.full.back();
  a.rows = prod(p.full, 0, p.full.size() - 1);
  a.dtype = kernel_dtype(mu.scalar_type());
  a.elementwise = elementwise;
  auto bind = [&](const at::Tensor& t, const void*& ptr, RowView& v) {
    auto [view, held] = make_row_view(t, p.full, 1);
    v = view;
    ptr = held.data_ptr();
    p.keep.push_back(held);
  };
  bind(mu, a.mu, a.v_mu);
  bind(logvar, a.logvar, a.v_logvar);
  if (prior) {
    bind(*prior_mu, a.prior_mu, a.v_prior_mu);
    bind(*prior_logvar, a.prior_logvar, a.v_prior_logvar);
  }
  return p;
}

// The forward; with `with_d_logvar` (prior N(0, I) only) also d out / d logvar per element, from the
// same exponentials, in the broadcast shape and mu's dtype (else undefined).
std::tuple<at::Tensor, at::Tensor> kl_forward(const at::Tensor& mu, const at::Tensor& logvar,
                                              const std::optional<at::Tensor>& prior_mu,
                                              const std::optional<at::Tensor>& prior_logvar, bool elementwise,
                                              bool with_d_logvar) {
  c10::DeviceGuard guard(mu.device());
  KLProblem p = kl_problem(mu, logvar, prior_mu, prior_logvar, elementwise);
  at::IntArrayRef out_shape = p.full;
  if (!elementwise) out_shape = out_shape.slice(0, p.full.size() - 1);
  at::Tensor out = at::empty(out_shape, mu.options().dtype(acc_dtype(mu.scalar_type())));
  p.args.out = out.data_ptr();
  at::Tensor d_logvar;
  if (with_d_logvar) {
    d_logvar = at::empty(p.full, mu.options());
    p.args.d_logvar = d_logvar.data_ptr();
  }
  launch(p.args, mu.device());
  return {out, d_logvar};
}

at::Tensor gaussian_kl(const at::Tensor& mu, const at::Tensor& logvar, const std::optional<at::Tensor>& prior_mu,
                       const std::optional<at::Tensor>& prior_logvar, bool elementwise) {
  return std::get<0>(kl_forward(mu, logvar, prior_mu, prior_logvar, elementwise, false));
}

// KL(q || N(0, I)) and its unscaled d/dlogvar in one pass, for a backward that is then two
// multiplies (autograd.cpp; CPU only: there the exponential is the cost, on a GPU the bytes are).
std::tuple<at::Tensor, at::Tensor> gaussian_kl_and_grad(const at::Tensor& mu, const at::Tensor& logvar,
                                                        bool elementwise) {
  return kl_forward(mu, logvar, std::nullopt, std::nullopt, elementwise, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gaussian_kl_backward(
    const at::Tensor& grad, const at::Tensor& mu, const at::Tensor& logvar,
    const std::optional<at::Tensor>& prior_mu, const std::optional<at::Tensor>& prior_logvar, bool elementwise,
    std::array<bool, 4> output_mask) {
  c10::DeviceGuard guard(mu.device());
  KLProblem p = kl_problem(mu, logvar, prior_mu, prior_logvar, elementwise);
  const at::IntArrayRef out_shape = elementwise ? at::IntArrayRef(p.full)
                                                : at::IntArrayRef(p.full).slice(0, p.full.size() - 1);
  check_grad(grad, "grad", out_shape, mu);
  const at::Tensor* inputs[4] = {&mu, &logvar, prior_mu ? &*prior_mu : nullptr,
                                 prior_logvar ? &*prior_logvar : nullptr};
  if (is_half(mu.scalar_type())) {
    bool reduced = false;
    for (int i = 0; i < 4; ++i) reduced |= output_mask[i] && inputs[i] && inputs[i]->sizes() != p.full;
    if (reduced) {
      auto r = gaussian_kl_backward(grad, mu.to(at::kFloat), logvar.to(at::kFloat), to_float(prior_mu),
                                    to_float(prior_logvar), elementwise, output_mask);
      return {std::get<0>(r).to(mu.scalar_type()), std::get<1>(r).to(mu.scalar_type()),
              std::get<2>(r).to(mu.scalar_type()), std::get<3>(r).to(mu.scalar_type())};
    }
  }
  KLBackwardArgs b;
  b.in = p.args;
  const at::ScalarType acc = acc_dtype(mu.scalar_type());
  const at::Tensor g = grad.scalar_type() == acc ? grad : grad.to(acc);
  auto [gv, gheld] = make_row_view(g, out_shape, elementwise ? 1 : 0);
  b.grad = gheld.data_ptr();
  b.v_grad = gv;
  void** outs[4] = {&b.d_mu, &b.d_logvar, &b.d_prior_mu, &b.d_prior_logvar};
  at::Tensor full_grads[4];
  for (int i = 0; i < 4; ++i) {
    if (output_mask[i] && inputs[i]) {
      full_grads[i] = at::empty(p.full, mu.options());
      *outs[i] = full_grads[i].data_ptr();
    }
  }
  launch(b, mu.device());
  at::Tensor result[4];
  for (int i = 0; i < 4; ++i)
    result[i] = full_grads[i].defined() ? reduce_to(full_grads[i], *inputs[i]) : at::empty({0}, mu.options());
  return {result[0], result[1], result[2], result[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(vaecuda, CPU, m) {
  m.impl("gaussian_kl", &gaussian_kl);
  m.impl("_gaussian_kl_and_grad", &gaussian_kl_and_grad);
  m.impl("gaussian_kl_backward", &gaussian_kl_backward);
}
#if defined(VAECUDA_WITH_CUDA)
TORCH_LIBRARY_IMPL(vaecuda, CUDA, m) {
  m.impl("gaussian_kl", &gaussian_kl);
  m.impl("gaussian_kl_backward", &gaussian_kl_backward);
}
#endif

}  // namespace vaecuda
