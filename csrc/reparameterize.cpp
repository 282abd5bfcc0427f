// vaecuda::reparameterize (+ _with_kl) and its backward: shapes, outputs and kernel arguments, the
// same for every device; the kernels are in cpu/ and cuda/.
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "geometry.h"
#include "launch.h"

namespace vaecuda {
namespace {

struct ReparamProblem {
  std::vector<int64_t> full;  // broadcast shape of mu and logvar, [*batch, D]
  ReparamArgs args;
  std::vector<at::Tensor> keep;
};

ReparamProblem reparam_problem(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& rng_state,
                               std::optional<int64_t> n_samples) {
  check_float_operand(mu, "mu", mu, "mu");
  check_float_operand(logvar, "logvar", mu, "mu");
  TORCH_CHECK(!n_samples || *n_samples >= 1, "vaecuda: n_samples must be >= 1, got ", *n_samples);
  TORCH_CHECK(rng_state.device() == mu.device(), "vaecuda: rng_state is on ", rng_state.device(),
              " but mu is on ", mu.device());
  ReparamProblem p;
  p.full = broadcast_with(mu.sizes(), logvar, "logvar", "mu");
  TORCH_CHECK(!p.full.empty(), "vaecuda: mu must have at least one dim (the latent dim), got a scalar");
  ReparamArgs& a = p.args;
  a.cols = p.full.back();
  a.rows = prod(p.full, 0, p.full.size() - 1);
  a.samples = n_samples.value_or(1);
  a.dtype = kernel_dtype(mu.scalar_type());
  if (rng_state.is_cpu()) {
    std::tie(a.seed, a.offset) = read_rng_state(rng_state);
  } else {
    TORCH_CHECK(rng_state.scalar_type() == at::kLong && rng_state.numel() == 2,
                "vaecuda: rng_state must be an int64 tensor of two elements (seed, offset)");
    TORCH_CHECK(rng_state.is_contiguous(), "vaecuda: rng_state must be contiguous");
    a.rng_state = rng_state.data_ptr<int64_t>();  // read by the kernel on the device
  }
  auto [vm, hm] = make_row_view(mu, p.full, 1);
  auto [vl, hl] = make_row_view(logvar, p.full, 1);
  a.mu = hm.data_ptr();
  a.v_mu = vm;
  a.logvar = hl.data_ptr();
  a.v_logvar = vl;
  p.keep = {hm, hl};
  return p;
}

std::vector<int64_t> z_shape(const ReparamProblem& p, std::optional<int64_t> n_samples) {
  std::vector<int64_t> s = p.full;
  if (n_samples) s.insert(s.begin(), *n_samples);
  return s;
}

std::tuple<at::Tensor, at::Tensor> run(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& rng_state,
                                       std::optional<int64_t> n_samples, bool with_kl) {
  c10::DeviceGuard guard(mu.device());
  ReparamProblem p = reparam_problem(mu, logvar, rng_state, n_samples);
  at::Tensor z = at::empty(z_shape(p, n_samples), mu.options());
  at::Tensor kl;
  p.args.z = z.data_ptr();
  if (with_kl) {
    kl = at::empty(at::IntArrayRef(p.full).slice(0, p.full.size() - 1),
                   mu.options().dtype(acc_dtype(mu.scalar_type())));
    p.args.kl = kl.data_ptr();
  }
  launch(p.args, mu.device());
  return {z, kl};
}

at::Tensor reparameterize(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& rng_state,
                          std::optional<int64_t> n_samples) {
  return std::get<0>(run(mu, logvar, rng_state, n_samples, false));
}

std::tuple<at::Tensor, at::Tensor> reparameterize_with_kl(const at::Tensor& mu, const at::Tensor& logvar,
                                                          const at::Tensor& rng_state,
                                                          std::optional<int64_t> n_samples) {
  return run(mu, logvar, rng_state, n_samples, true);
}

std::tuple<at::Tensor, at::Tensor> reparameterize_backward(const std::optional<at::Tensor>& grad_z,
                                                           const std::optional<at::Tensor>& grad_kl,
                                                           const at::Tensor& mu, const at::Tensor& logvar,
                                                           const at::Tensor& rng_state,
                                                           std::optional<int64_t> n_samples,
                                                           std::array<bool, 2> output_mask) {
  c10::DeviceGuard guard(mu.device());
  ReparamProblem p = reparam_problem(mu, logvar, rng_state, n_samples);
  if (grad_z && grad_z->defined()) check_grad(*grad_z, "grad_z", z_shape(p, n_samples), mu);
  if (grad_kl && grad_kl->defined())
    check_grad(*grad_kl, "grad_kl", at::IntArrayRef(p.full).slice(0, p.full.size() - 1), mu);
  if (is_half(mu.scalar_type()) && ((output_mask[0] && mu.sizes() != p.full) ||
                                    (output_mask[1] && logvar.sizes() != p.full))) {
    auto r = reparameterize_backward(grad_z, grad_kl, mu.to(at::kFloat), logvar.to(at::kFloat), rng_state,
                                     n_samples, output_mask);
    return {std::get<0>(r).to(mu.scalar_type()), std::get<1>(r).to(mu.scalar_type())};
  }
  ReparamBackwardArgs b;
  b.in = p.args;
  at::Tensor gz, gkl;
  if (grad_z && grad_z->defined()) {
    gz = grad_z->scalar_type() == mu.scalar_type() ? *grad_z : grad_z->to(mu.scalar_type());
    auto [v, held] = make_row_view(gz, z_shape(p, n_samples), 1);
    b.grad_z = held.data_ptr();
    b.v_grad_z = v;
    gz = held;
  }
  if (grad_kl && grad_kl->defined()) {
    const at::ScalarType acc = acc_dtype(mu.scalar_type());
    gkl = grad_kl->scalar_type() == acc ? *grad_kl : grad_kl->to(acc);
    auto [v, held] = make_row_view(gkl, at::IntArrayRef(p.full).slice(0, p.full.size() - 1), 0);
    b.grad_kl = held.data_ptr();
    b.v_grad_kl = v;
    gkl = held;
  }
  at::Tensor dmu, dlv;
  if (output_mask[0]) {
    dmu = at::empty(p.full, mu.options());
    b.d_mu = dmu.data_ptr();
  }
  if (output_mask[1]) {
    dlv = at::empty(p.full, mu.options());
    b.d_logvar = dlv.data_ptr();
  }
  launch(b, mu.device());
  return {dmu.defined() ? reduce_to(dmu, mu) : at::empty({0}, mu.options()),
          dlv.defined() ? reduce_to(dlv, logvar) : at::empty({0}, mu.options())};
}

// The standard normals of flat elements [first, first + count) of the stream in rng_state, as
// float32: the noise the sampling kernels use, exposed for tests (CPU here, CUDA below).
at::Tensor normals(const at::Tensor& rng_state, int64_t first, int64_t count) {
  TORCH_CHECK(first >= 0 && count >= 0, "vaecuda: first and count must be >= 0");
  TORCH_CHECK(rng_state.is_cpu(), "vaecuda: _normals runs on the CPU");
  const auto [seed, offset] = read_rng_state(rng_state);
  at::Tensor out = at::empty({count}, rng_state.options().dtype(at::kFloat));
  cpu::normals(seed, offset, first, count, out.data_ptr<float>());
  return out;
}

#if defined(VAECUDA_WITH_CUDA)
at::Tensor normals_cuda(const at::Tensor& rng_state, int64_t first, int64_t count) {
  TORCH_CHECK(first >= 0 && count >= 0, "vaecuda: first and count must be >= 0");
  TORCH_CHECK(rng_state.scalar_type() == at::kLong && rng_state.numel() == 2,
              "vaecuda: rng_state must be an int64 tensor of two elements (seed, offset)");
  c10::DeviceGuard guard(rng_state.device());
  const at::Tensor state = rng_state.contiguous();
  at::Tensor out = at::empty({count}, rng_state.options().dtype(at::kFloat));
  cuda::normals(state.data_ptr<int64_t>(), first, count, out.data_ptr<float>(),
                c10::cuda::getCurrentCUDAStream(rng_state.device().index()).stream());
  return out;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(vaecuda, CPU, m) {
  m.impl("reparameterize", &reparameterize);
  m.impl("reparameterize_with_kl", &reparameterize_with_kl);
  m.impl("reparameterize_backward", &reparameterize_backward);
  m.impl("_normals", &normals);
}
#if defined(VAECUDA_WITH_CUDA)
TORCH_LIBRARY_IMPL(vaecuda, CUDA, m) {
  m.impl("reparameterize", &reparameterize);
  m.impl("reparameterize_with_kl", &reparameterize_with_kl);
  m.impl("reparameterize_backward", &reparameterize_backward);
  m.impl("_normals", &normals_cuda);
}
#endif

}  // namespace vaecuda
