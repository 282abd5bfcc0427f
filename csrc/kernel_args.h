// The arguments of every vaecuda kernel, CPU and CUDA alike: plain structs of raw pointers and
// RowViews, filled once by the device-independent op code (csrc/<op>.cpp) and handed to a backend's
// launcher. Torch-free, so the CPU kernel units and nvcc see the same definitions.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "row_view.h"

namespace vaecuda {

// Storage types the kernels read and write. Loss outputs and the per-row gradients that come back
// for them are in the accumulation type: float for f32/f16/bf16 inputs, double for f64.
enum class Dtype : uint8_t { f32, f64, f16, bf16, u8 };

struct KLArgs {
  int64_t rows = 0, cols = 0;
  Dtype dtype = Dtype::f32;                        // of mu, logvar and the prior
  const void* mu = nullptr;
  const void* logvar = nullptr;
  const void* prior_mu = nullptr;                  // both null: the prior is N(0, I)
  const void* prior_logvar = nullptr;
  RowView v_mu, v_logvar, v_prior_mu, v_prior_logvar;
  bool elementwise = false;                        // out is [rows, cols] instead of [rows]
  void* out = nullptr;                             // contiguous, accumulation type
  void* d_logvar = nullptr;                        // CPU, prior N(0, I) only: null, or also d out / d logvar
                                                   // per element, unscaled: contiguous [rows, cols] in dtype
};

struct KLBackwardArgs {
  KLArgs in;                                       // .out unused
  const void* grad = nullptr;                      // accumulation type; [rows] or [rows, cols]
  RowView v_grad;
  void* d_mu = nullptr;                            // contiguous [rows, cols] in dtype, null: not wanted
  void* d_logvar = nullptr;
  void* d_prior_mu = nullptr;
  void* d_prior_logvar = nullptr;
};

struct ReparamArgs {
  int64_t rows = 0, cols = 0, samples = 1;
  Dtype dtype = Dtype::f32;
  uint64_t seed = 0, offset = 0;                   // the stream, when rng_state is on the host
  const int64_t* rng_state = nullptr;              // or (seed, offset) in device memory: CUDA reads it
                                                   // in the kernel, so captured graphs stay valid
  const void* mu = nullptr;
  const void* logvar = nullptr;
  RowView v_mu, v_logvar;
  void* z = nullptr;                               // contiguous [samples, rows, cols] in dtype
  void* kl = nullptr;                              // contiguous [rows], accumulation type, or null
};

struct ReparamBackwardArgs {
  ReparamArgs in;                                  // .z and .kl unused
  const void* grad_z = nullptr;                    // [samples * rows, cols] view in dtype, or null
  RowView v_grad_z;
  const void* grad_kl = nullptr;                   // [rows] view, accumulation type, or null
  RowView v_grad_kl;
  void* d_mu = nullptr;                            // contiguous [rows, cols] in dtype, null: not wanted
  void* d_logvar = nullptr;
};

struct BernoulliArgs {
  int64_t rows = 0, cols = 0;
  Dtype logits_dtype = Dtype::f32;
  Dtype target_dtype = Dtype::f32;                 // any float dtype, or u8 for uint8 and bool
  bool probs = false;                              // `logits` holds probabilities in [0, 1]
  const void* logits = nullptr;
  const void* target = nullptr;
  RowView v_logits, v_target;
  void* out = nullptr;                             // contiguous [rows], accumulation type
  void* d_logits = nullptr;                        // or null; else also d out / d logits per element,
                                                   // contiguous [rows, cols] in logits dtype
};

struct BernoulliBackwardArgs {
  BernoulliArgs in;                                // .out unused
  const void* grad = nullptr;                      // [rows] view, accumulation type
  RowView v_grad;
  void* d_logits = nullptr;                        // contiguous [rows, cols] in logits dtype, or null
  void* d_target = nullptr;                        // contiguous [rows, cols] in target dtype, or null
};

// The dtype switch of every kernel entry point, CPU and CUDA: calls f with a value of the storage
// type for t. Half and BFloat16 are the backend's 16-bit storage types.
template <typename Half, typename BFloat16, typename F>
void dispatch_float(Dtype t, F&& f) {
  switch (t) {
    case Dtype::f32: f(float{}); break;
    case Dtype::f64: f(double{}); break;
    case Dtype::f16: f(Half{}); break;
    case Dtype::bf16: f(BFloat16{}); break;
    default: throw std::invalid_argument("vaecuda: unsupported dtype for a kernel");  // validated before
  }
}
// Targets: any float dtype, or uint8 (which bool tensors share).
template <typename Half, typename BFloat16, typename F>
void dispatch_target(Dtype t, F&& f) {
  if (t == Dtype::u8)
    f(uint8_t{});
  else
    dispatch_float<Half, BFloat16>(t, f);
}

}  // namespace vaecuda
