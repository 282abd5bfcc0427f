// Runs the vaecuda CUDA kernels under a CPU emulation (cuda_runtime.h beside this file) against plain
// loops over the same math (vae_math.h): every kernel, widths for 8 / 16 lanes, a warp, a block per row,
// multiples of 4 and not, five layouts, K samples, float32 throughout, bfloat16 logits/latents with
// uint8 targets for the 8- and 4-byte vector loads, float64 latents for the 32-byte ones.
// tests/test_cuda_emulated.py builds and runs it with vae_math.h's device branches
// (VAECUDA_EMULATE_DEVICE_MATH): the kernels take the math a GPU takes.
#include "gaussian_kl.cu"
#include "reparameterize.cu"
#include "bernoulli_log_prob.cu"
#include <cstdio>
#include <cstdlib>
#include <random>

using namespace vaecuda;
using namespace vaecuda::math;
// vae_math.h's device branches call log, log1p and expf unqualified: on floats they must take the float
// functions, as CUDA's overloads do, not the double ones
static_assert(std::is_same_v<decltype(log(1.0f)), float> && std::is_same_v<decltype(log1p(1.0f)), float> &&
              std::is_same_v<decltype(expf(1.0f)), float>);
static int failures = 0;
#define CHECK(cond, ...) do { if (!(cond)) { ++failures; if (failures < 20) { printf("FAIL %s:%d ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } } while (0)

// A view with one batch dim: row r starts at r * row_stride, column j at j * col_stride.
static RowView view(int64_t rows, int64_t row_stride, int64_t col_stride) {
  RowView v;
  v.ndim = 1;
  v.sizes[0] = rows;
  v.strides[0] = row_stride;
  v.col_stride = col_stride;
  return v;
}

// An operand [rows, cols] in one of 5 layouts inside its own buffer.
struct Mat {
  std::vector<float> buf;
  RowView v;
  const float* base = nullptr;
  Mat(const std::vector<float>& vals, int64_t rows, int64_t cols, int layout) {
    // 0 contiguous, 1 every other column, 2 column-major, 3 one row broadcast to all rows, 4 contiguous
    // from one element into its buffer (a base no vector load may use: the sanitized build would see one)
    if (layout == 0) { buf = vals; v = view(rows, cols, 1); }
    if (layout == 1) {
      buf.assign(2 * rows * cols + 1, 0.f);
      for (int64_t r = 0; r < rows; ++r) for (int64_t j = 0; j < cols; ++j) buf[r * 2 * cols + 2 * j] = vals[r * cols + j];
      v = view(rows, 2 * cols, 2);
    }
    if (layout == 2) {
      buf.assign(rows * cols, 0.f);
      for (int64_t r = 0; r < rows; ++r) for (int64_t j = 0; j < cols; ++j) buf[j * rows + r] = vals[r * cols + j];
      v = view(rows, 1, rows);
    }
    if (layout == 3) { buf.assign(vals.begin(), vals.begin() + cols); v.ndim = 0; v.col_stride = 1; }
    if (layout == 4) { buf.assign(1, 0.f); buf.insert(buf.end(), vals.begin(), vals.end()); v = view(rows, cols, 1); }
    base = buf.data() + (layout == 4 ? 1 : 0);
  }
};

// `count` doubles, 64-byte aligned, in an allocation of exactly their size (so AddressSanitizer sees
// a read or write one past the end); free with std::free.
static double* aligned_doubles(int64_t count) {
  void* p = nullptr;
  return posix_memalign(&p, 64, sizeof(double) * count) == 0 ? static_cast<double*>(p) : nullptr;
}

static std::vector<float> randv(int64_t n, std::mt19937& g, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// `driver --box-muller IN OUT`: the transform of each pair of uint32 words in IN (little-endian), as the
// device computes it, written to OUT as pairs of float32; tests/test_cuda_emulated.py compares them with
// vaecuda/reference.py bit for bit.
static int box_muller_file(const char* in, const char* out) {
  FILE* f = std::fopen(in, "rb");
  if (!f) return 2;
  std::vector<uint32_t> w;
  uint32_t buf[2];
  while (std::fread(buf, sizeof(uint32_t), 2, f) == 2) w.insert(w.end(), buf, buf + 2);
  std::fclose(f);
  std::vector<float> z(w.size());
  for (size_t i = 0; i < w.size(); i += 2) {
    const F2 n = box_muller(w[i], w[i + 1]);
    z[i] = n.a;
    z[i + 1] = n.b;
  }
  FILE* o = std::fopen(out, "wb");
  if (!o) return 2;
  const bool ok = std::fwrite(z.data(), sizeof(float), z.size(), o) == z.size();
  return std::fclose(o) == 0 && ok ? 0 : 2;
}

// Every check at each row width, with grids of at most `max_blocks` blocks (VAECUDA_MAX_BLOCKS is
// emu_max_blocks here).
static void run_all(int64_t max_blocks, const std::vector<int64_t>& widths) {
  emu_max_blocks = max_blocks;
  std::mt19937 g(0);
  {  // the device branch's Philox (__umulhi and a low multiply) against Random123's known answers
    // (tests/test_philox.py): the checks below compare kernels with the same header's words
    const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8},
        {~0u, ~0u, ~0u, ~0u, ~0u, ~0u, 0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD},
        {0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0,
         0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1}};
    for (const auto& v : kat) {
      const U32x4 w = philox4x32_10(U32x4{v[0], v[1], v[2], v[3]}, v[4], v[5]);
      CHECK(w.x == v[6] && w.y == v[7] && w.z == v[8] && w.w == v[9], "Philox known answer %08x", v[6]);
    }
  }
  {  // the raw normals, from a device-side (seed, offset)
    const int64_t state[2] = {-5, 7};
    std::vector<float> out(1003, -9.f);
    cuda::normals(state, (int64_t(1) << 33) + 1, 1003, out.data(), nullptr);
    for (int64_t i = 0; i < 1003; ++i) {
      const uint64_t n = (uint64_t(1) << 33) + 1 + i;
      CHECK(out[i] == normal_group(uint64_t(-5), 7, n >> 2).v[n & 3], "normals %ld", i);
    }
  }
  for (int64_t cols : widths) {
    // rows: with grids of one or two blocks, more than a block holds (32 rows of 8 lanes, 16 of 16, 8 of
    // 32, 1 of a block), so that each row loop takes its grid stride
    const int64_t rows = cols > 1000 ? 3 : cols <= 64 ? 40 : 9;
    const auto mu = randv(rows * cols, g), lv = randv(rows * cols, g);
    // ---- KL forward, all layouts (mu and logvar in the same layout; layout 3 broadcasts row 0)
    std::vector<float> first;
    for (int layout = 0; layout < 5; ++layout) {
      Mat m(mu, rows, cols, layout), l(lv, rows, cols, layout);
      std::vector<float> out(rows, -1.f);
      KLArgs a; a.rows = rows; a.cols = cols; a.dtype = Dtype::f32; a.mu = m.base; a.logvar = l.base;
      a.v_mu = m.v; a.v_logvar = l.v; a.out = out.data();
      cuda::launch(a, nullptr);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t rr = layout == 3 ? 0 : r;
        double s = 0; for (int64_t j = 0; j < cols; ++j) s += kl_std_normal(mu[rr * cols + j], lv[rr * cols + j]);
        CHECK(std::fabs(out[r] - s) <= 1e-4 * (1 + std::fabs(s)), "kl fwd cols %ld layout %d row %ld: %g vs %g", cols, layout, r, out[r], s);
      }
      if (layout == 0) first = out;
      else if (layout != 3) CHECK(std::memcmp(first.data(), out.data(), rows * 4) == 0, "kl bits differ, cols %ld layout %d", cols, layout);
      // elementwise
      std::vector<float> el(rows * cols, -1.f);
      a.elementwise = true; a.out = el.data();
      cuda::launch(a, nullptr);
      for (int64_t r = 0; r < rows; ++r) for (int64_t j = 0; j < cols; ++j) {
        const int64_t rr = layout == 3 ? 0 : r;
        CHECK(el[r * cols + j] == kl_std_normal(mu[rr * cols + j], lv[rr * cols + j]), "kl elementwise cols %ld", cols);
      }
      // backward: grad per row
      std::vector<float> gr = randv(rows, g), dmu(rows * cols, -7.f), dlv(rows * cols, -7.f);
      KLBackwardArgs b; b.in = a; b.in.elementwise = false; b.grad = gr.data();
      b.v_grad = view(rows, 1, 0);
      b.d_mu = dmu.data(); b.d_logvar = dlv.data();
      cuda::launch(b, nullptr);
      for (int64_t r = 0; r < rows; ++r) for (int64_t j = 0; j < cols; ++j) {
        const int64_t rr = layout == 3 ? 0 : r;
        float em, el2; kl_std_normal_grad(mu[rr * cols + j], lv[rr * cols + j], gr[r], em, el2);
        CHECK(dmu[r * cols + j] == em && dlv[r * cols + j] == el2, "kl bwd cols %ld layout %d (%ld,%ld): %g %g vs %g %g", cols, layout, r, j, dmu[r*cols+j], dlv[r*cols+j], em, el2);
      }
      // backward: an elementwise gradient [rows, cols] (free bits), d logvar alone
      const auto ge = randv(rows * cols, g);
      std::vector<float> dlv_e(rows * cols, -7.f);
      b.in.elementwise = true; b.grad = ge.data(); b.v_grad = view(rows, cols, 1);
      b.d_mu = nullptr; b.d_logvar = dlv_e.data();
      cuda::launch(b, nullptr);
      for (int64_t r = 0; r < rows; ++r) for (int64_t j = 0; j < cols; ++j) {
        const int64_t rr = layout == 3 ? 0 : r;
        float em, el2; kl_std_normal_grad(mu[rr * cols + j], lv[rr * cols + j], ge[r * cols + j], em, el2);
        CHECK(dlv_e[r * cols + j] == el2, "kl elementwise bwd cols %ld layout %d (%ld,%ld)", cols, layout, r, j);
      }
    }
    // ---- KL with a prior broadcast over rows ([D])
    {
      Mat m(mu, rows, cols, 0), l(lv, rows, cols, 1);
      const auto pmv = randv(cols, g), plv = randv(cols, g);
      Mat pm(pmv, 1, cols, 3), pl(plv, 1, cols, 3);
      std::vector<float> out(rows);
      KLArgs a; a.rows = rows; a.cols = cols; a.mu = m.base; a.logvar = l.base; a.prior_mu = pm.base; a.prior_logvar = pl.base;
      a.v_mu = m.v; a.v_logvar = l.v; a.v_prior_mu = pm.v; a.v_prior_logvar = pl.v; a.out = out.data();
      cuda::launch(a, nullptr);
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0; for (int64_t j = 0; j < cols; ++j) s += kl_normal(mu[r * cols + j], lv[r * cols + j], pmv[j], plv[j]);
        CHECK(std::fabs(out[r] - s) <= 1e-4 * (1 + std::fabs(s)), "kl prior cols %ld", cols);
      }
      // backward with an elementwise gradient [rows, cols] (free bits) and all four outputs
      const auto ge = randv(rows * cols, g);
      std::vector<float> d[4];
      for (auto& v : d) v.assign(rows * cols, -7.f);
      KLBackwardArgs b; b.in = a; b.in.elementwise = true; b.grad = ge.data();
      b.v_grad = view(rows, cols, 1);
      b.d_mu = d[0].data(); b.d_logvar = d[1].data(); b.d_prior_mu = d[2].data(); b.d_prior_logvar = d[3].data();
      cuda::launch(b, nullptr);
      for (int64_t r = 0; r < rows; ++r) for (int64_t j = 0; j < cols; ++j) {
        const int64_t e = r * cols + j;
        float w[4];
        kl_normal_grad(mu[e], lv[e], pmv[j], plv[j], ge[e], w[0], w[1], w[2], w[3]);
        CHECK(d[0][e] == w[0] && d[1][e] == w[1] && d[2][e] == w[2] && d[3][e] == w[3], "kl prior bwd cols %ld", cols);
      }
      // backward with a gradient per row, d mu and d prior_logvar alone
      const auto gr = randv(rows, g);
      for (auto& v : d) v.assign(rows * cols, -7.f);
      b.in.elementwise = false; b.grad = gr.data(); b.v_grad = view(rows, 1, 0);
      b.d_mu = d[0].data(); b.d_logvar = nullptr; b.d_prior_mu = nullptr; b.d_prior_logvar = d[3].data();
      cuda::launch(b, nullptr);
      for (int64_t r = 0; r < rows; ++r) for (int64_t j = 0; j < cols; ++j) {
        const int64_t e = r * cols + j;
        float w[4];
        kl_normal_grad(mu[e], lv[e], pmv[j], plv[j], gr[r], w[0], w[1], w[2], w[3]);
        CHECK(d[0][e] == w[0] && d[3][e] == w[3] && d[1][e] == -7.f && d[2][e] == -7.f, "kl prior bwd per row cols %ld", cols);
      }
    }
    // ---- sampling, K = 1 and 3, with and without KL, layouts 0-4 (3: every row is row 0); then the backward
    for (int64_t K : {1, 3}) {
      for (int layout = 0; layout < 5; ++layout) {
        const auto src = [&](int64_t p) { return layout == 3 ? p % cols : p; };  // the input element of z's p
        Mat m(mu, rows, cols, layout), l(lv, rows, cols, layout);
        std::vector<float> z(K * rows * cols, -9.f), kl(rows, -9.f);
        ReparamArgs a; a.rows = rows; a.cols = cols; a.samples = K; a.seed = 1234567; a.offset = 42;
        a.mu = m.base; a.logvar = l.base; a.v_mu = m.v; a.v_logvar = l.v; a.z = z.data(); a.kl = kl.data();
        cuda::launch(a, nullptr);
        const int64_t plane = rows * cols;
        for (int64_t e = 0; e < K * plane; ++e) {
          const int64_t p = e % plane;
          const float eps = normal_group(a.seed, a.offset, e >> 2).v[e & 3];
          const float want = mu[src(p)] + std_from_logvar(lv[src(p)]) * eps;
          CHECK(z[e] == want, "z cols %ld K %ld layout %d e %ld: %g vs %g", cols, K, layout, e, z[e], want);
        }
        {  // the key read from a device-side rng_state (as captured graphs use it) gives the same z
          const int64_t state[2] = {int64_t(a.seed), int64_t(a.offset)};
          ReparamArgs d = a; d.seed = 0; d.offset = 0; d.rng_state = state;
          std::vector<float> z2(z.size(), -9.f), kl2(rows);
          d.z = z2.data(); d.kl = kl2.data();
          cuda::launch(d, nullptr);
          CHECK(std::memcmp(z.data(), z2.data(), z.size() * 4) == 0, "z from rng_state differs, cols %ld", cols);
        }
        {  // plain sampling (no KL asked) gives the same z
          ReparamArgs d = a; d.kl = nullptr;
          std::vector<float> z3(z.size(), -9.f);
          d.z = z3.data();
          cuda::launch(d, nullptr);
          CHECK(std::memcmp(z.data(), z3.data(), z.size() * 4) == 0, "z without KL differs, cols %ld layout %d", cols, layout);
        }
        // the KL equals the KL kernel's bits
        std::vector<float> klk(rows);
        KLArgs ka; ka.rows = rows; ka.cols = cols; ka.mu = m.base; ka.logvar = l.base; ka.v_mu = m.v; ka.v_logvar = l.v; ka.out = klk.data();
        cuda::launch(ka, nullptr);
        CHECK(std::memcmp(klk.data(), kl.data(), rows * 4) == 0, "sample+kl KL bits differ from gaussian_kl, cols %ld", cols);
        // backward with grad_z [K, rows, cols] contiguous and grad_kl [rows]
        const auto gz = randv(K * plane, g), gkl = randv(rows, g);
        std::vector<float> dmu(plane, -7.f), dlv(plane, -7.f);
        ReparamBackwardArgs b; b.in = a; b.grad_z = gz.data();
        b.v_grad_z = view(K * rows, cols, 1);
        b.grad_kl = gkl.data(); b.v_grad_kl = view(rows, 1, 0);
        b.d_mu = dmu.data(); b.d_logvar = dlv.data();
        cuda::launch(b, nullptr);
        // and without the KL's gradient (plain sampling), and with the KL's gradient alone (z unused)
        std::vector<float> dmu_z(plane, -7.f), dlv_z(plane, -7.f), dmu_kl(plane, -7.f), dlv_kl(plane, -7.f);
        ReparamBackwardArgs bz = b; bz.grad_kl = nullptr; bz.d_mu = dmu_z.data(); bz.d_logvar = dlv_z.data();
        cuda::launch(bz, nullptr);
        ReparamBackwardArgs bk = b; bk.grad_z = nullptr; bk.d_mu = dmu_kl.data(); bk.d_logvar = dlv_kl.data();
        cuda::launch(bk, nullptr);
        const auto close = [](float x, float w) { return std::fabs(x - w) <= 1e-5f * (1 + std::fabs(w)); };
        for (int64_t p = 0; p < plane; ++p) {
          float gs = 0, ge = 0;
          for (int64_t k = 0; k < K; ++k) {
            const int64_t e = k * plane + p;
            gs += gz[e]; ge += gz[e] * normal_group(a.seed, a.offset, e >> 2).v[e & 3];
          }
          float km, kv; kl_std_normal_grad(mu[src(p)], lv[src(p)], gkl[p / cols], km, kv);
          const float zm = gs, zv = ge * 0.5f * std_from_logvar(lv[src(p)]), wm = zm + km, wv = zv + kv;
          CHECK(close(dmu[p], wm) && close(dlv[p], wv),
                "reparam bwd cols %ld K %ld layout %d p %ld: %g %g vs %g %g", cols, K, layout, p, dmu[p], dlv[p], wm, wv);
          CHECK(close(dmu_z[p], zm) && close(dlv_z[p], zv),
                "reparam bwd, no KL grad, cols %ld K %ld layout %d p %ld: %g %g vs %g %g", cols, K, layout, p, dmu_z[p], dlv_z[p], zm, zv);
          CHECK(dmu_kl[p] == km && dlv_kl[p] == kv,
                "reparam bwd, KL grad only, cols %ld K %ld layout %d p %ld: %g %g vs %g %g", cols, K, layout, p, dmu_kl[p], dlv_kl[p], km, kv);
        }
        {  // one output wanted (d mu or d logvar alone), and grad_z read through a column stride of 2: same bits
          std::vector<float> only_mu(plane, -7.f), only_lv(plane, -7.f), s_mu(plane, -7.f), s_lv(plane, -7.f);
          ReparamBackwardArgs b1 = b; b1.d_logvar = nullptr; b1.d_mu = only_mu.data();
          cuda::launch(b1, nullptr);
          ReparamBackwardArgs b2 = b; b2.d_mu = nullptr; b2.d_logvar = only_lv.data();
          cuda::launch(b2, nullptr);
          Mat G(gz, K * rows, cols, 1);
          ReparamBackwardArgs b3 = b; b3.grad_z = G.base; b3.v_grad_z = G.v; b3.d_mu = s_mu.data(); b3.d_logvar = s_lv.data();
          cuda::launch(b3, nullptr);
          CHECK(std::memcmp(only_mu.data(), dmu.data(), plane * 4) == 0 && std::memcmp(only_lv.data(), dlv.data(), plane * 4) == 0,
                "reparam bwd, one output, cols %ld K %ld layout %d", cols, K, layout);
          CHECK(std::memcmp(s_mu.data(), dmu.data(), plane * 4) == 0 && std::memcmp(s_lv.data(), dlv.data(), plane * 4) == 0,
                "reparam bwd, strided grad_z, cols %ld K %ld layout %d", cols, K, layout);
        }
      }
    }
    // ---- Bernoulli: logits [2, rows, cols] in layouts 0-2 and 4 (as 2*rows rows), target [rows, cols] broadcast
    {
      const int64_t R = 2 * rows;
      const auto lg = randv(R * cols, g, 3.f);
      std::vector<float> x(rows * cols);
      for (auto& v : x) v = (g() & 1) ? 1.f : 0.f;
      std::vector<float> first_out;
      for (int layout : {0, 1, 2, 4}) {
        Mat L(lg, R, cols, layout);
        std::vector<float> out(R, -9.f), dl(R * cols, -9.f);
        BernoulliArgs a; a.rows = R; a.cols = cols; a.logits = L.base; a.v_logits = L.v;
        a.target = x.data(); a.v_target.ndim = 2; a.v_target.sizes[0] = 2; a.v_target.sizes[1] = rows;
        a.v_target.strides[0] = 0; a.v_target.strides[1] = cols; a.v_target.col_stride = 1;
        a.out = out.data(); a.d_logits = dl.data();
        cuda::launch(a, nullptr);
        for (int64_t r = 0; r < R; ++r) {
          double s = 0;
          for (int64_t j = 0; j < cols; ++j) {
            float gd; s += bernoulli_term_and_grad<false, float>(lg[r * cols + j], x[(r % rows) * cols + j], gd);
            CHECK(dl[r * cols + j] == gd, "bernoulli dl cols %ld layout %d", cols, layout);
          }
          CHECK(std::fabs(out[r] - s) <= 1e-4 * (1 + std::fabs(s)), "bernoulli fwd cols %ld layout %d row %ld: %g vs %g", cols, layout, r, out[r], s);
        }
        if (layout == 0) first_out = out;
        else CHECK(std::memcmp(first_out.data(), out.data(), R * 4) == 0, "bernoulli bits differ, layout %d cols %ld", layout, cols);
        {  // no gradient asked (no grad mode): the same sums, and d_logits untouched
          std::vector<float> out2(R, -9.f);
          BernoulliArgs a2 = a; a2.d_logits = nullptr; a2.out = out2.data();
          cuda::launch(a2, nullptr);
          CHECK(std::memcmp(out2.data(), out.data(), R * 4) == 0, "bernoulli without the gradient differs, layout %d cols %ld", layout, cols);
        }
        // the backward op: d_logits and d_target, each alone, both
        const auto gr = randv(R, g);
        for (int want = 1; want < 4; ++want) {
          std::vector<float> dl2(R * cols, -9.f), dx(R * cols, -9.f);
          BernoulliBackwardArgs b; b.in = a; b.in.d_logits = nullptr; b.grad = gr.data();
          b.v_grad = view(R, 1, 0);
          b.d_logits = want & 1 ? dl2.data() : nullptr;
          b.d_target = want & 2 ? dx.data() : nullptr;
          cuda::launch(b, nullptr);
          for (int64_t e = 0; e < R * cols; ++e) {
            const int64_t r = e / cols, j = e % cols;
            const float l = lg[e], xv = x[(r % rows) * cols + j];
            const float wdl = want & 1 ? gr[r] * vaecuda::math::bernoulli_term_grad_input<false, float>(l, xv) : -9.f;
            const float wdx = want & 2 ? gr[r] * vaecuda::math::bernoulli_term_grad_target<false, float>(l) : -9.f;
            CHECK(dl2[e] == wdl, "bernoulli bwd dl cols %ld outputs %d", cols, want);
            CHECK(dx[e] == wdx, "bernoulli bwd dx cols %ld outputs %d", cols, want);
          }
        }
      }
    }
    // ---- bfloat16 latents and logits, uint8 targets: the 8- and 4-byte quads, contiguous and strided
    {
      using bf = __nv_bfloat16;
      std::vector<bf> mb(rows * cols), lb(rows * cols);
      for (int64_t i = 0; i < rows * cols; ++i) {
        mb[i] = __float2bfloat16_rn(mu[i]);
        lb[i] = __float2bfloat16_rn(lv[i]);
      }
      std::vector<bf> ms(2 * rows * cols), ls(2 * rows * cols);  // every other column of wider rows
      for (int64_t r = 0; r < rows; ++r) for (int64_t j = 0; j < cols; ++j) {
        ms[r * 2 * cols + 2 * j] = mb[r * cols + j]; ls[r * 2 * cols + 2 * j] = lb[r * cols + j];
      }
      std::vector<float> outs[2];
      for (int strided = 0; strided < 2; ++strided) {
        KLArgs a; a.rows = rows; a.cols = cols; a.dtype = Dtype::bf16;
        a.mu = strided ? ms.data() : mb.data(); a.logvar = strided ? ls.data() : lb.data();
        a.v_mu = a.v_logvar = strided ? view(rows, 2 * cols, 2) : view(rows, cols, 1);
        outs[strided].assign(rows, -1.f); a.out = outs[strided].data();
        cuda::launch(a, nullptr);
        for (int64_t r = 0; r < rows; ++r) {
          double s = 0;
          for (int64_t j = 0; j < cols; ++j)
            s += kl_std_normal(__bfloat162float(mb[r * cols + j]), __bfloat162float(lb[r * cols + j]));
          CHECK(std::fabs(outs[strided][r] - s) <= 1e-4 * (1 + std::fabs(s)), "bf16 kl cols %ld strided %d", cols, strided);
        }
      }
      CHECK(std::memcmp(outs[0].data(), outs[1].data(), rows * 4) == 0, "bf16 kl bits differ, cols %ld", cols);
      std::vector<uint8_t> xb(rows * cols);
      for (auto& v : xb) v = g() & 1;
      std::vector<float> out(rows);
      std::vector<bf> dl(rows * cols);
      BernoulliArgs b; b.rows = rows; b.cols = cols; b.logits_dtype = Dtype::bf16; b.target_dtype = Dtype::u8;
      b.logits = mb.data(); b.target = xb.data();
      b.v_logits = b.v_target = view(rows, cols, 1);
      b.out = out.data(); b.d_logits = dl.data();
      cuda::launch(b, nullptr);
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0;
        for (int64_t j = 0; j < cols; ++j) {
          float gd;
          s += bernoulli_term_and_grad<false, float>(__bfloat162float(mb[r * cols + j]), float(xb[r * cols + j]), gd);
          const float got = __bfloat162float(dl[r * cols + j]), want = __bfloat162float(__float2bfloat16_rn(gd));
          CHECK(got == want, "bf16 bernoulli dl cols %ld", cols);
        }
        CHECK(std::fabs(out[r] - s) <= 1e-4 * (1 + std::fabs(s)), "bf16 bernoulli cols %ld row %ld", cols, r);
      }
    }
    // ---- float64 KL and sampling (32-byte quads, from aligned buffers of exactly their size) and Bernoulli
    // from probabilities
    {
      double* md = aligned_doubles(rows * cols);
      double* ld = aligned_doubles(rows * cols);
      for (int64_t i = 0; i < rows * cols; ++i) { md[i] = mu[i]; ld[i] = lv[i]; }
      std::vector<double> out(rows);
      KLArgs a; a.rows = rows; a.cols = cols; a.dtype = Dtype::f64; a.mu = md; a.logvar = ld;
      a.v_mu = a.v_logvar = view(rows, cols, 1);
      a.out = out.data();
      cuda::launch(a, nullptr);
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0; for (int64_t j = 0; j < cols; ++j) s += kl_std_normal(md[r * cols + j], ld[r * cols + j]);
        CHECK(std::fabs(out[r] - s) <= 1e-12 * (1 + std::fabs(s)), "f64 kl cols %ld", cols);
      }
      {  // float64 sampling, 2 samples with the KL, and its backward
        const int64_t n = rows * cols;
        double *z = aligned_doubles(2 * n), *gz = aligned_doubles(2 * n), *dm = aligned_doubles(n), *dv = aligned_doubles(n);
        std::vector<double> kl(rows, -9.0), gk(rows);
        for (int64_t i = 0; i < 2 * n; ++i) gz[i] = 0.25 * static_cast<double>(i % 7) - 0.5;
        for (int64_t r = 0; r < rows; ++r) gk[r] = 1.0 + 0.125 * static_cast<double>(r);
        ReparamArgs a2; a2.rows = rows; a2.cols = cols; a2.samples = 2; a2.dtype = Dtype::f64; a2.seed = 99;
        a2.offset = 5; a2.mu = md; a2.logvar = ld; a2.v_mu = a2.v_logvar = view(rows, cols, 1);
        a2.z = z; a2.kl = kl.data();
        cuda::launch(a2, nullptr);
        for (int64_t e = 0; e < 2 * n; ++e) {
          const int64_t p = e % n;
          const double want = md[p] + std_from_logvar(ld[p]) * static_cast<double>(normal_group(99, 5, e >> 2).v[e & 3]);
          CHECK(z[e] == want, "f64 z cols %ld e %ld", cols, e);
        }
        for (int64_t r = 0; r < rows; ++r) CHECK(kl[r] == out[r], "f64 sample+kl KL differs from gaussian_kl, cols %ld", cols);
        ReparamBackwardArgs b2; b2.in = a2; b2.grad_z = gz; b2.v_grad_z = view(2 * rows, cols, 1);
        b2.grad_kl = gk.data(); b2.v_grad_kl = view(rows, 1, 0); b2.d_mu = dm; b2.d_logvar = dv;
        cuda::launch(b2, nullptr);
        for (int64_t p = 0; p < n; ++p) {
          double gsum = 0, gse = 0;
          for (int64_t k = 0; k < 2; ++k) {
            const int64_t e = k * n + p;
            gsum += gz[e];
            gse += gz[e] * static_cast<double>(normal_group(99, 5, e >> 2).v[e & 3]);
          }
          double km, kv;
          kl_std_normal_grad(md[p], ld[p], gk[p / cols], km, kv);
          const double wm = gsum + km, wv = gse * 0.5 * std_from_logvar(ld[p]) + kv;
          CHECK(std::fabs(dm[p] - wm) <= 1e-12 * (1 + std::fabs(wm)) && std::fabs(dv[p] - wv) <= 1e-12 * (1 + std::fabs(wv)),
                "f64 reparam bwd cols %ld p %ld: %g %g vs %g %g", cols, p, dm[p], dv[p], wm, wv);
        }
        for (double* q : {z, gz, dm, dv}) std::free(q);
      }
      std::free(md);
      std::free(ld);
      std::vector<float> p(rows * cols), x(rows * cols), o(rows), dp(rows * cols);
      std::uniform_real_distribution<float> u(0.f, 1.f);
      for (int64_t i = 0; i < rows * cols; ++i) { p[i] = u(g); x[i] = u(g); }
      p[0] = 0.f;  // log 0 clamps at -100
      BernoulliArgs b; b.rows = rows; b.cols = cols; b.probs = true; b.logits = p.data(); b.target = x.data();
      b.v_logits = b.v_target = view(rows, cols, 1);
      b.out = o.data(); b.d_logits = dp.data();
      cuda::launch(b, nullptr);
      for (int64_t r = 0; r < rows; ++r) {
        double s = 0;
        for (int64_t j = 0; j < cols; ++j) {
          float gd;
          s += bernoulli_term_and_grad<true, float>(p[r * cols + j], x[r * cols + j], gd);
          CHECK(dp[r * cols + j] == gd, "probs dp cols %ld", cols);
        }
        CHECK(std::fabs(o[r] - s) <= 1e-4 * (1 + std::fabs(s)), "probs fwd cols %ld row %ld: %g vs %g", cols, r, o[r], s);
      }
    }
    printf("max blocks %ld, cols %ld ok so far (failures %d)\n", max_blocks, cols, failures);
  }
}

int main(int argc, char** argv) {
  if (argc == 4 && std::strcmp(argv[1], "--box-muller") == 0) return box_muller_file(argv[2], argv[3]);
  if (argc == 2 && std::strcmp(argv[1], "--races") == 0) {
    // a shorter run for the ThreadSanitizer build, whose threads run ~10x slower: a sub-warp and a block
    // per row (its shared memory), two blocks striding (warp shuffles are barriers here: nothing to see)
    run_all(2, {36, 1030});
  } else {
    // the grids a GPU gets, then one and two blocks, so that every kernel's grid-stride loop takes its
    // stride (on a GPU only past 65535 * 32 blocks), alone and two blocks apart: at a width of each row
    // shape (8, 16, 32 lanes, a block), with and without a whole number of quads
    run_all(int64_t(65535) * 32, {3, 20, 32, 36, 64, 131, 784, 1030, 3072});
    for (int64_t max_blocks : {int64_t(1), int64_t(2)}) run_all(max_blocks, {3, 20, 36, 131, 1030});
  }
  printf(failures ? "FAILED: %d\n" : "all passed\n", failures);
  return failures != 0;
}
