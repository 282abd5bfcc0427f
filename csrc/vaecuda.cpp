// The vaecuda operator library: every schema, declared once, and the Python module vaecuda._C that
// loads it and reports how it was built. Kernels are registered per device in <op>.cpp, autograd in
// autograd.cpp, fake (meta) kernels in vaecuda/_registrations.py.
#include <ATen/ATen.h>
#include <torch/extension.h>
#include <torch/library.h>

#include "launch.h"

#ifndef VAECUDA_CUDA_ARCHS
#define VAECUDA_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(vaecuda, m) {
  // KL(N(mu, e^logvar) || N(prior_mu, e^prior_logvar)), summed over the last dim unless elementwise;
  // no prior: N(0, I). Inputs broadcast; result in float32 (float64 for float64 inputs).
  m.def("gaussian_kl(Tensor mu, Tensor logvar, Tensor? prior_mu=None, Tensor? prior_logvar=None, "
        "bool elementwise=False) -> Tensor");
  m.def("gaussian_kl_backward(Tensor grad, Tensor mu, Tensor logvar, Tensor? prior_mu, Tensor? prior_logvar, "
        "bool elementwise, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // z = mu + exp(logvar / 2) * eps, eps from Philox keyed by rng_state = (seed, offset), int64[2].
  // n_samples=K prepends a sample dim (a SymInt: a compiled graph need not specialize on K; the
  // kernels take it as an int). _with_kl also returns the per-row KL(q || N(0, I)).
  m.def("reparameterize(Tensor mu, Tensor logvar, Tensor rng_state, SymInt? n_samples=None) -> Tensor");
  m.def("reparameterize_with_kl(Tensor mu, Tensor logvar, Tensor rng_state, SymInt? n_samples=None) "
        "-> (Tensor, Tensor)");
  m.def("reparameterize_backward(Tensor? grad_z, Tensor? grad_kl, Tensor mu, Tensor logvar, Tensor rng_state, "
        "SymInt? n_samples, bool[2] output_mask) -> (Tensor, Tensor)");
  // log p(target | logits) of independent Bernoullis, summed over the last event_dims dims; with
  // probs=True `logits` holds probabilities (log terms clamped at -100, as binary_cross_entropy).
  m.def("bernoulli_log_prob(Tensor logits, Tensor target, int event_dims=1, bool probs=False) -> Tensor");
  m.def("bernoulli_log_prob_backward(Tensor grad, Tensor logits, Tensor target, int event_dims, bool probs, "
        "bool[2] output_mask) -> (Tensor, Tensor)");
  // The forward with d/dlogits per element (unscaled), used when logits require grad.
  m.def("_bernoulli_log_prob_and_grad(Tensor logits, Tensor target, int event_dims, bool probs) "
        "-> (Tensor, Tensor)");
  // KL to N(0, I) with d/dlogvar per element (unscaled), used on the CPU when logvar requires grad.
  m.def("_gaussian_kl_and_grad(Tensor mu, Tensor logvar, bool elementwise) -> (Tensor, Tensor)");
  // Test and benchmark hooks: the sampling kernels' noise, and the cheapest op on this binding path.
  m.def("_normals(Tensor rng_state, int first, int count) -> Tensor");
  m.def("_scale(Tensor x, float alpha) -> Tensor");
}

namespace {
at::Tensor scale(const at::Tensor& x, double alpha) { return at::mul(x, alpha); }
}  // namespace

TORCH_LIBRARY_IMPL(vaecuda, CompositeExplicitAutograd, m) { m.impl("_scale", &scale); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vaecuda's compiled operators (registered as torch.ops.vaecuda.*)";
  m.def("build_info", []() {
    pybind11::dict d;
    d["torch_version"] = VAECUDA_TORCH_VERSION;
#if defined(VAECUDA_WITH_CUDA)
    d["cuda"] = true;
    d["cuda_version"] = VAECUDA_CUDA_VERSION;
#else
    d["cuda"] = false;
    d["cuda_version"] = pybind11::none();
#endif
    d["cuda_archs"] = VAECUDA_CUDA_ARCHS;
    d["cpu_isa"] = vaecuda::cpu::isa_name();
    return d;
  }, "How this extension was built: torch version, CUDA version and archs, CPU instruction set in use.");
}
