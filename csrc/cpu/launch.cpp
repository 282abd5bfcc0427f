// The CPU launchers: split rows across torch's intra-op threads, run this processor's kernel table.
#include <ATen/Parallel.h>

#include "../launch.h"
#include "kernels.h"

namespace vaecuda {
namespace cpu {
namespace {

// Rows per task: about 32K elements, so small problems run inline on the calling thread (no
// thread-pool hand-off, which would cost more than the work) and large ones split evenly.
int64_t grain(int64_t elements_per_row) {
  constexpr int64_t kElements = 32768;
  return std::max<int64_t>(1, kElements / std::max<int64_t>(1, elements_per_row));
}

template <typename Args, typename Fn>
void run_rows(const Args& a, int64_t rows, int64_t elements_per_row, Fn fn) {
  if (rows == 0) return;
  at::parallel_for(0, rows, grain(elements_per_row), [&](int64_t b, int64_t e) { fn(a, b, e); });
}

}  // namespace

const char* isa_name() { return kernels().isa; }

void launch(const KLArgs& a) { run_rows(a, a.rows, a.cols, kernels().gaussian_kl); }
void launch(const KLBackwardArgs& a) { run_rows(a, a.in.rows, a.in.cols, kernels().gaussian_kl_backward); }
void launch(const ReparamArgs& a) { run_rows(a, a.rows, a.cols * a.samples, kernels().reparameterize); }
void launch(const ReparamBackwardArgs& a) {
  run_rows(a, a.in.rows, a.in.cols * a.in.samples, kernels().reparameterize_backward);
}
void launch(const BernoulliArgs& a) { run_rows(a, a.rows, a.cols, kernels().bernoulli_log_prob); }
void launch(const BernoulliBackwardArgs& a) {
  run_rows(a, a.in.rows, a.in.cols, kernels().bernoulli_log_prob_backward);
}

void normals(uint64_t seed, uint64_t offset, int64_t first, int64_t count, float* out) {
  constexpr int64_t kChunk = 4096;
  at::parallel_for(0, (count + kChunk - 1) / kChunk, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const int64_t n = std::min(kChunk, count - c * kChunk);
      kernels().normals(seed, offset, first + c * kChunk, n, out + c * kChunk);
    }
  });
}

}  // namespace cpu
}  // namespace vaecuda
