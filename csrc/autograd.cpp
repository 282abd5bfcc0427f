// Autograd for the vaecuda ops, in C++ (the Autograd dispatch key), so a call costs one dispatcher
// hop and no Python: measured against torch.library.register_autograd in benchmarks/binding_path.py.
// torch.compile and opcheck still work: the forward and backward are ops with fake kernels
// (vaecuda/_registrations.py), which AOTAutograd traces through this code.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/library.h>

namespace vaecuda {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
Tensor maybe(bool wanted, const Tensor& t) { return wanted ? t : Tensor(); }

// Whether a backward may scale its own saved buffer in place by the upstream gradient g: not when
// the graph is retained (the buffer must survive for the next backward), nor when g is batched by
// vmap (is_grads_batched, vectorized jacobians: the batched product does not fit the buffer).
bool scale_saved_in_place(const Tensor& g) {
  return !torch::autograd::get_current_graph_task_keep_graph() &&
         !g.key_set().has_any(c10::DispatchKeySet({c10::DispatchKey::Batched, c10::DispatchKey::FuncTorchBatched,
                                                    c10::DispatchKey::BatchedNestedTensor}));
}

// The backward ops compute first derivatives only. Called with create_graph=True, their outputs get
// a grad_fn that raises when (and only when) a second derivative is actually asked for.
struct NoDoubleBackward : torch::autograd::Function<NoDoubleBackward> {
  template <typename Compute>
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, const char* name, Compute c) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["op"] = std::string(name);
    return c();
  }
  static variable_list backward(AutogradContext* ctx, variable_list) {
    TORCH_CHECK(false, "vaecuda: the second derivative of ", ctx->saved_data["op"].toStringRef(),
                " is not implemented (its backward ran with create_graph=True and was differentiated again)");
  }
};

template <typename Compute>
variable_list first_derivatives(const char* name, const variable_list& inputs, Compute compute) {
  variable_list tracked;  // the defined inputs that require grad: the graph hangs off these
  if (at::GradMode::is_enabled())
    for (const auto& t : inputs)
      if (t.defined() && t.requires_grad()) tracked.push_back(t);
  if (tracked.empty()) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return compute();
  }
  return NoDoubleBackward::apply(at::TensorList(tracked), name, compute);
}

// ---------------------------------------------------------------------------------------------------
using KLSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, bool);
using KLBwdSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                            const OptTensor&, const OptTensor&, bool,
                                                            std::array<bool, 4>);

// On the CPU, with the prior N(0, I), mu and logvar of one shape and float32/float64 (as for the
// Bernoulli term below), the forward also writes d/dlogvar = (e^logvar - 1) / 2 per element when
// logvar requires grad, from the exponential it computes anyway; the backward is then d mu = g mu
// and d logvar = g times that buffer (in place when the graph is not retained), with no second
// exponential: the exponential is what the CPU kernels' time goes to. When only mu requires grad,
// the backward is g mu alone. On a GPU the op is bound by bytes and launches instead, so the
// backward op (one kernel, no saved buffer) stays.
using KLGradSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, bool);

struct GaussianKL : torch::autograd::Function<GaussianKL> {
  // direct: take the path above (decided by the caller, where grad mode is still the user's: apply
  // runs forward with grad mode off); the saved d/dlogvar is made only if logvar requires grad
  static Tensor forward(AutogradContext* ctx, const Tensor& mu, const Tensor& logvar, const OptTensor& prior_mu,
                        const OptTensor& prior_logvar, bool elementwise, bool direct) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["elementwise"] = elementwise;
    if (direct && logvar.requires_grad()) {
      static auto fg = op<KLGradSig>("vaecuda::_gaussian_kl_and_grad");
      auto [out, dlv] = fg.call(mu, logvar, elementwise);
      ctx->save_for_backward({mu, logvar, Tensor(), Tensor(), dlv});
      return out;
    }
    static auto kl = op<KLSig>("vaecuda::gaussian_kl");
    if (direct)  // only mu requires grad: the backward is g mu
      ctx->save_for_backward({mu, logvar, Tensor(), Tensor(), Tensor()});
    else
      ctx->save_for_backward({mu, logvar, prior_mu.value_or(Tensor()), prior_logvar.value_or(Tensor())});
    return kl.call(mu, logvar, prior_mu, prior_logvar, elementwise);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<KLBwdSig>("vaecuda::gaussian_kl_backward");
    const variable_list s = ctx->get_saved_variables();
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      s[2].defined() && ctx->needs_input_grad(2),
                                      s[3].defined() && ctx->needs_input_grad(3)};
    const bool elementwise = ctx->saved_data["elementwise"].toBool();
    if (s.size() == 5 && !at::GradMode::is_enabled()) {
      const Tensor g = elementwise ? grads[0] : grads[0].unsqueeze(-1);  // per row: [*batch, 1]
      Tensor dmu, dlv;
      if (mask[0]) dmu = at::mul(g, s[0]);
      if (mask[1] && s[4].defined())  // the saved buffer is this node's own: in place unless it must survive
        dlv = scale_saved_in_place(g) ? s[4].mul_(g) : at::mul(g, s[4]);
      return {dmu, dlv, Tensor(), Tensor(), Tensor(), Tensor()};
    }
    auto [dmu, dlv, dpm, dpl] = bwd.call(grads[0], s[0], s[1], opt(s[2]), opt(s[3]), elementwise, mask);
    return {maybe(mask[0], dmu), maybe(mask[1], dlv), maybe(mask[2], dpm), maybe(mask[3], dpl), Tensor(), Tensor()};
  }
};

Tensor gaussian_kl_autograd(const Tensor& mu, const Tensor& logvar, const OptTensor& prior_mu,
                            const OptTensor& prior_logvar, bool elementwise) {
  const at::ScalarType t = mu.scalar_type();
  const bool direct = at::GradMode::is_enabled() && (mu.requires_grad() || logvar.requires_grad()) && mu.is_cpu() &&
                      !prior_mu && !prior_logvar && mu.sym_sizes() == logvar.sym_sizes() &&
                      (t == at::kFloat || t == at::kDouble);
  return GaussianKL::apply(mu, logvar, prior_mu, prior_logvar, elementwise, direct);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> gaussian_kl_backward_autograd(
    const Tensor& grad, const Tensor& mu, const Tensor& logvar, const OptTensor& prior_mu,
    const OptTensor& prior_logvar, bool elementwise, std::array<bool, 4> mask) {
  static auto bwd = op<KLBwdSig>("vaecuda::gaussian_kl_backward");
  auto r = first_derivatives("gaussian_kl", {grad, mu, logvar, prior_mu.value_or(Tensor()),
                                             prior_logvar.value_or(Tensor())}, [&]() -> variable_list {
    auto [a, b, c, d] = bwd.call(grad, mu, logvar, prior_mu, prior_logvar, elementwise, mask);
    return {a, b, c, d};
  });
  return {r[0], r[1], r[2], r[3]};
}

// ---------------------------------------------------------------------------------------------------
using ReparamSig = Tensor(const Tensor&, const Tensor&, const Tensor&, std::optional<c10::SymInt>);
using ReparamKLSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                std::optional<c10::SymInt>);
using ReparamBwdSig = std::tuple<Tensor, Tensor>(const OptTensor&, const OptTensor&, const Tensor&, const Tensor&,
                                                 const Tensor&, std::optional<c10::SymInt>, std::array<bool, 2>);

// Saves only mu, logvar and the two-element rng_state: the backward regenerates eps.
template <bool WithKL>
struct Reparameterize : torch::autograd::Function<Reparameterize<WithKL>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& mu, const Tensor& logvar,
                               const Tensor& rng_state, std::optional<c10::SymInt> n_samples) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({mu, logvar, rng_state});
    ctx->saved_data["n_samples"] = n_samples ? c10::IValue(*n_samples) : c10::IValue();  // symbolic under tracing
    ctx->set_materialize_grads(false);
    if constexpr (WithKL) {
      static auto f = op<ReparamKLSig>("vaecuda::reparameterize_with_kl");
      auto [z, kl] = f.call(mu, logvar, rng_state, n_samples);
      return {z, kl};
    } else {
      static auto f = op<ReparamSig>("vaecuda::reparameterize");
      return {f.call(mu, logvar, rng_state, n_samples)};
    }
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<ReparamBwdSig>("vaecuda::reparameterize_backward");
    const variable_list s = ctx->get_saved_variables();
    const c10::IValue& ns = ctx->saved_data["n_samples"];
    const std::optional<c10::SymInt> n_samples = ns.isNone() ? std::nullopt : std::optional<c10::SymInt>(ns.toSymInt());
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    const OptTensor gkl = WithKL ? opt(grads[1]) : std::nullopt;
    if (!grads[0].defined() && !gkl) return {Tensor(), Tensor(), Tensor(), Tensor()};
    // One sample and no KL gradient: d mu is the upstream gradient itself (as torch's add returns it),
    // so no kernel copies it: the backward moves 12 bytes per fp32 element instead of 20.
    // (sizes compared as symbols: plain sizes() would fix the batch of a compiled graph)
    if (!n_samples && !gkl && mask[0] && grads[0].sym_sizes() == s[0].sym_sizes()) {
      if (!mask[1]) return {grads[0], Tensor(), Tensor(), Tensor()};
      auto [unused, dlv] = bwd.call(opt(grads[0]), gkl, s[0], s[1], s[2], n_samples, {false, true});
      return {grads[0], dlv, Tensor(), Tensor()};
    }
    auto [dmu, dlv] = bwd.call(opt(grads[0]), gkl, s[0], s[1], s[2], n_samples, mask);
    return {maybe(mask[0], dmu), maybe(mask[1], dlv), Tensor(), Tensor()};
  }
};

Tensor reparameterize_autograd(const Tensor& mu, const Tensor& logvar, const Tensor& rng_state,
                               std::optional<c10::SymInt> n_samples) {
  return Reparameterize<false>::apply(mu, logvar, rng_state, n_samples)[0];
}

std::tuple<Tensor, Tensor> reparameterize_with_kl_autograd(const Tensor& mu, const Tensor& logvar,
                                                           const Tensor& rng_state,
                                                           std::optional<c10::SymInt> n_samples) {
  auto r = Reparameterize<true>::apply(mu, logvar, rng_state, n_samples);
  return {r[0], r[1]};
}

std::tuple<Tensor, Tensor> reparameterize_backward_autograd(const OptTensor& grad_z, const OptTensor& grad_kl,
                                                            const Tensor& mu, const Tensor& logvar,
                                                            const Tensor& rng_state,
                                                            std::optional<c10::SymInt> n_samples,
                                                            std::array<bool, 2> mask) {
  static auto bwd = op<ReparamBwdSig>("vaecuda::reparameterize_backward");
  auto r = first_derivatives("reparameterize",
                             {grad_z.value_or(Tensor()), grad_kl.value_or(Tensor()), mu, logvar},
                             [&]() -> variable_list {
                               auto [a, b] = bwd.call(grad_z, grad_kl, mu, logvar, rng_state, n_samples, mask);
                               return {a, b};
                             });
  return {r[0], r[1]};
}

// ---------------------------------------------------------------------------------------------------
using BernSig = Tensor(const Tensor&, const Tensor&, int64_t, bool);
using BernBwdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, int64_t, bool,
                                              std::array<bool, 2>);

using BernGradSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t, bool);

// When float32/float64 logits require grad, the forward also writes d/dlogits per element from the
// exponentials it computes anyway (Liger-style), and the backward is one multiply by the per-row
// upstream gradient, in place when the graph is not retained.
// The cost: one saved tensor the size of logits. A backward that builds a graph (create_graph=True)
// takes the backward op instead, so that a second derivative raises rather than comes out wrong.
struct BernoulliLogProb : torch::autograd::Function<BernoulliLogProb> {
  // saved_grad: decided by the caller, where grad mode is still the user's (apply runs forward with
  // grad mode off)
  static Tensor forward(AutogradContext* ctx, const Tensor& logits, const Tensor& target, int64_t event_dims,
                        bool probs, bool saved_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["event_dims"] = event_dims;
    ctx->saved_data["probs"] = probs;
    if (saved_grad) {
      static auto fg = op<BernGradSig>("vaecuda::_bernoulli_log_prob_and_grad");
      auto [out, dl] = fg.call(logits, target, event_dims, probs);
      ctx->save_for_backward({logits, target, dl});
      return out;
    }
    static auto f = op<BernSig>("vaecuda::bernoulli_log_prob");
    ctx->save_for_backward({logits, target});
    return f.call(logits, target, event_dims, probs);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto bwd = op<BernBwdSig>("vaecuda::bernoulli_log_prob_backward");
    const variable_list s = ctx->get_saved_variables();
    const int64_t event_dims = ctx->saved_data["event_dims"].toInt();
    const bool probs = ctx->saved_data["probs"].toBool();
    const std::array<bool, 2> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    if (s.size() == 3 && mask[0] && !at::GradMode::is_enabled()) {
      // [*batch] -> [*batch, 1, ...]; symbolic sizes, so a compiled graph stays dynamic in the batch
      std::vector<c10::SymInt> shape(grads[0].sym_sizes().begin(), grads[0].sym_sizes().end());
      shape.resize(shape.size() + static_cast<size_t>(event_dims), c10::SymInt(1));
      const Tensor g = grads[0].reshape_symint(shape);
      // The saved d/dlogits is this node's own buffer: scale it in place when allowed, sparing a
      // logits-sized allocation (page faults on the CPU) and a pass.
      const Tensor dl = scale_saved_in_place(g) ? s[2].mul_(g) : s[2] * g;
      Tensor dx;
      if (mask[1]) dx = std::get<1>(bwd.call(grads[0], s[0], s[1], event_dims, probs, {false, true}));
      return {dl, maybe(mask[1], dx), Tensor(), Tensor(), Tensor()};
    }
    auto [dl, dx] = bwd.call(grads[0], s[0], s[1], event_dims, probs, mask);
    return {maybe(mask[0], dl), maybe(mask[1], dx), Tensor(), Tensor(), Tensor()};
  }
};

Tensor bernoulli_log_prob_autograd(const Tensor& logits, const Tensor& target, int64_t event_dims, bool probs) {
  // float32/float64 only: a float16/bfloat16 gradient saved in the forward would meet the float32
  // upstream gradient in a mixed-dtype multiply, which torch's CPU path runs ~20x slower than a
  // plain one (measured: 265 ms for [4096, 12288]); the backward op, one rounding, is cheaper.
  const at::ScalarType t = logits.scalar_type();
  const bool saved_grad = at::GradMode::is_enabled() && logits.requires_grad() &&
                          (t == at::kFloat || t == at::kDouble);
  return BernoulliLogProb::apply(logits, target, event_dims, probs, saved_grad);
}

std::tuple<Tensor, Tensor> bernoulli_log_prob_backward_autograd(const Tensor& grad, const Tensor& logits,
                                                                const Tensor& target, int64_t event_dims,
                                                                bool probs, std::array<bool, 2> mask) {
  static auto bwd = op<BernBwdSig>("vaecuda::bernoulli_log_prob_backward");
  auto r = first_derivatives("bernoulli_log_prob", {grad, logits, target}, [&]() -> variable_list {
    auto [a, b] = bwd.call(grad, logits, target, event_dims, probs, mask);
    return {a, b};
  });
  return {r[0], r[1]};
}

// ---------------------------------------------------------------------------------------------------
// _scale: alpha * x, the cheapest op through this same binding path (Python wrapper, dispatcher,
// C++ autograd, one kernel each way); the benchmarks use it as the floor for per-call overhead.
struct Scale : torch::autograd::Function<Scale> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, double alpha) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto f = op<Tensor(const Tensor&, double)>("vaecuda::_scale");
    ctx->saved_data["alpha"] = alpha;
    return f.call(x, alpha);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto f = op<Tensor(const Tensor&, double)>("vaecuda::_scale");
    return {f.call(grads[0], ctx->saved_data["alpha"].toDouble()), Tensor()};
  }
};

Tensor scale_autograd(const Tensor& x, double alpha) { return Scale::apply(x, alpha); }

}  // namespace

TORCH_LIBRARY_IMPL(vaecuda, Autograd, m) {
  m.impl("gaussian_kl", &gaussian_kl_autograd);
  m.impl("gaussian_kl_backward", &gaussian_kl_backward_autograd);
  m.impl("reparameterize", &reparameterize_autograd);
  m.impl("reparameterize_with_kl", &reparameterize_with_kl_autograd);
  m.impl("reparameterize_backward", &reparameterize_backward_autograd);
  m.impl("bernoulli_log_prob", &bernoulli_log_prob_autograd);
  m.impl("bernoulli_log_prob_backward", &bernoulli_log_prob_backward_autograd);
  m.impl("_scale", &scale_autograd);
  // The forwards that also return a gradient serve the autograd above, below it; called directly
  // with inputs that require grad, a backward through them raises instead of leaving grads unset.
  m.impl("_gaussian_kl_and_grad", torch::autograd::autogradNotImplementedFallback());
  m.impl("_bernoulli_log_prob_and_grad", torch::autograd::autogradNotImplementedFallback());
}

}  // namespace vaecuda
