// Torch-side helpers shared by the CPU and CUDA ops: broadcast shapes, RowViews over tensors, dtype
// rules and the checks every backend repeats before launching anything.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

#include "kernel_args.h"
#include "row_view.h"

namespace vaecuda {

// The dtype of a loss output (and of the gradient that comes back for it): float32 for
// float32/float16/bfloat16 inputs, float64 for float64.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool is_kernel_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline Dtype kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Dtype::f32;
    case at::kDouble: return Dtype::f64;
    case at::kHalf: return Dtype::f16;
    case at::kBFloat16: return Dtype::bf16;
    case at::kByte:
    case at::kBool: return Dtype::u8;
    default: TORCH_CHECK(false, "vaecuda: unsupported dtype ", t);
  }
}

// An operand as a RowView over the broadcast shape `full`, whose last `event_dims` dims are the
// columns. Returns the view and the tensor it points into: the operand itself, or in the rare
// layouts a RowView cannot express (event dims that do not collapse to one stride, more than
// kMaxRowDims batch dims after merging) a contiguous copy.
inline std::pair<RowView, at::Tensor> make_row_view(const at::Tensor& t, at::IntArrayRef full,
                                                    int64_t event_dims) {
  const int64_t nd = static_cast<int64_t>(full.size());
  const int64_t nb = nd - event_dims;
  for (int64_t s : full)
    if (s == 0) return {RowView{}, t};  // no element is ever read (and empty tensors' strides are arbitrary)
  auto attempt = [&](const at::Tensor& x, RowView& v) {
    const int64_t shift = nd - x.dim();
    std::vector<int64_t> st(nd, 0);
    for (int64_t i = 0; i < nd; ++i) {
      const int64_t xi = i - shift;
      if (xi >= 0 && x.size(xi) == full[i] && full[i] != 1) st[i] = x.stride(xi);
    }
    // columns: the event dims must collapse to one stride
    int64_t col_stride = 0;
    int64_t inner = -1;  // innermost event dim of size > 1 seen so far
    for (int64_t i = nd - 1; i >= nb; --i) {
      if (full[i] == 1) continue;
      if (inner < 0) {
        col_stride = st[i];
      } else if (st[i] != st[inner] * full[inner]) {
        return false;
      }
      inner = i;
    }
    // rows: drop size-1 dims, merge dims that are contiguous with the next one
    std::vector<std::pair<int64_t, int64_t>> dims;  // (size, stride), outermost first
    for (int64_t i = 0; i < nb; ++i) {
      if (full[i] == 1) continue;
      if (!dims.empty() && dims.back().second == st[i] * full[i]) {
        dims.back() = {dims.back().first * full[i], st[i]};
      } else {
        dims.emplace_back(full[i], st[i]);
      }
    }
    if (static_cast<int64_t>(dims.size()) > kMaxRowDims) return false;
    if (inner < 0) col_stride = 1;  // one column: any stride addresses it; 1 keeps the contiguous paths
    v = RowView{};
    v.ndim = static_cast<int32_t>(dims.size());
    for (size_t d = 0; d < dims.size(); ++d) {
      v.sizes[d] = dims[d].first;
      v.strides[d] = dims[d].second;
    }
    v.col_stride = col_stride;
    return true;
  };
  RowView v;
  if (attempt(t, v)) return {v, t};
  at::Tensor c = t.contiguous();
  if (attempt(c, v)) return {v, c};
  c = t.expand(full).contiguous();
  TORCH_INTERNAL_ASSERT(attempt(c, v), "vaecuda: no row view for a contiguous tensor");
  return {v, c};
}

// The product of dims [begin, end) of a shape.
inline int64_t prod(at::IntArrayRef s, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end; ++i) p *= s[i];
  return p;
}

// The broadcast shape of `full` and `t`, with a message that names the argument.
inline std::vector<int64_t> broadcast_with(at::IntArrayRef full, const at::Tensor& t, const char* name,
                                           const char* full_name) {
  const size_t nd = std::max(full.size(), static_cast<size_t>(t.dim()));
  std::vector<int64_t> out(nd, 1);
  for (size_t i = 0; i < nd; ++i) {
    const int64_t a = i < nd - full.size() ? 1 : full[i - (nd - full.size())];
    const int64_t b = i < nd - t.dim() ? 1 : t.size(i - (nd - t.dim()));
    TORCH_CHECK(a == b || a == 1 || b == 1, "vaecuda: ", name, " of shape ", t.sizes(),
                " does not broadcast with ", full_name, " of shape ", full);
    out[i] = a == 1 ? b : a;
  }
  return out;
}

inline void check_float_operand(const at::Tensor& t, const char* name, const at::Tensor& like,
                                const char* like_name) {
  TORCH_CHECK(is_kernel_float(t.scalar_type()), "vaecuda: ", name,
              " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "vaecuda: ", name, " has dtype ", t.scalar_type(),
              " but ", like_name, " has ", like.scalar_type(), "; cast them to one dtype");
  TORCH_CHECK(t.device() == like.device(), "vaecuda: ", name, " is on ", t.device(), " but ", like_name,
              " is on ", like.device());
}

// An upstream gradient handed to a backward op (by autograd, or by a caller of torch.ops.vaecuda.*):
// on the inputs' device, a float dtype, and broadcastable to the output's shape, so that no kernel
// reads past it or reads host memory from the device.
inline void check_grad(const at::Tensor& grad, const char* name, at::IntArrayRef out_shape,
                       const at::Tensor& like) {
  TORCH_CHECK(grad.device() == like.device(), "vaecuda: ", name, " is on ", grad.device(),
              " but the inputs are on ", like.device());
  TORCH_CHECK(is_kernel_float(grad.scalar_type()), "vaecuda: ", name,
              " must be float32, float64, float16 or bfloat16, got ", grad.scalar_type());
  const int64_t shift = static_cast<int64_t>(out_shape.size()) - grad.dim();
  bool ok = shift >= 0;
  for (int64_t i = 0; ok && i < grad.dim(); ++i) ok = grad.size(i) == 1 || grad.size(i) == out_shape[i + shift];
  TORCH_CHECK(ok, "vaecuda: ", name, " of shape ", grad.sizes(), " does not broadcast to the output's shape ",
              out_shape);
}

inline bool is_half(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// Half-precision gradients that must be summed over broadcast dims are computed in float32 and
// rounded once, after the sum (as autograd through the float32 reference would).
inline std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(t->to(at::kFloat)) : std::nullopt;
}
// Sums a gradient computed at the broadcast shape back to the shape of the input it belongs to.
inline at::Tensor reduce_to(const at::Tensor& grad, const at::Tensor& input) {
  return grad.sizes() == input.sizes() ? grad : at::sum_to(grad, input.sizes());
}

// The (seed, offset) pair of an int64 rng_state tensor of two elements, read on the host.
inline std::pair<uint64_t, uint64_t> read_rng_state(const at::Tensor& rng_state) {
  TORCH_CHECK(rng_state.scalar_type() == at::kLong && rng_state.numel() == 2,
              "vaecuda: rng_state must be an int64 tensor of two elements (seed, offset), got ",
              rng_state.scalar_type(), " of shape ", rng_state.sizes());
  const at::Tensor s = rng_state.is_contiguous() ? rng_state : rng_state.contiguous();
  const int64_t* p = s.data_ptr<int64_t>();
  return {static_cast<uint64_t>(p[0]), static_cast<uint64_t>(p[1])};
}

}  // namespace vaecuda
