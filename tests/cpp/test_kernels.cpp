// Kernel tests in C++ (run under AddressSanitizer and UndefinedBehaviorSanitizer by
// tests/test_cpp.py): conservation of RectifiedConvTranspose and MaxPoolGradient, NormGrad
// against a direct loop, and bad shapes rejected by the checks (never read out of bounds).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "max_pool_gradient.h"
#include "normgrad.h"
#include "rectified_conv_transpose.h"

using namespace onnx_saliency;

static int failures = 0;
#define EXPECT(cond)                                                  \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

int main() {
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  int cases = 0;
  for (int64_t k : {1, 2, 3, 7}) {
    for (int64_t s : {1, 2, 3}) {
      for (int64_t p : {0, 1, 3}) {
        for (int64_t group : {1, 2}) {
          ConvGeometry geo;
          geo.kernel[0] = geo.kernel[1] = k;
          geo.strides[0] = geo.strides[1] = s;
          for (auto& q : geo.pads) q = p;
          const int64_t N = 2, C = 2 * group, K = 3 * group, H = 9, W = 8;
          const int64_t Ho = conv_out_size(H, k, s, p, p, 1), Wo = conv_out_size(W, k, s, p, p, 1);
          if (Ho < 1 || Wo < 1) continue;
          int64_t gs[4] = {N, K, Ho, Wo}, as[4] = {N, C, H, W};
          EXPECT(rectified_conv_transpose_check(gs, gs, as, geo, group, 1e-10f).empty());
          std::vector<float> g(N * K * Ho * Wo), z(g.size()), a(N * C * H * W), out(a.size());
          for (auto& v : g) v = normal(rng);
          for (auto& v : z) v = normal(rng);
          for (auto& v : a) v = normal(rng);
          rectified_conv_transpose_cpu(g.data(), z.data(), gs, a.data(), as, geo, group, 1e-10f,
                                       out.data(), ThreadParallel(2));
          double lhs = 0, rhs = 0, mass = 0;
          for (size_t i = 0; i < a.size(); ++i) lhs += double(a[i]) * out[i];
          for (size_t i = 0; i < g.size(); ++i) {
            rhs += double(g[i]) * z[i];
            mass += std::fabs(double(g[i]) * z[i]);
          }
          // every window sees non-zero |a| unless it lies entirely in the padding
          if (p < k) EXPECT(std::fabs(lhs - rhs) <= 1e-4 * mass);
          // NormGrad conv mode against a direct loop at one location
          std::vector<float> ng(N * Ho * Wo);
          EXPECT(normgrad_check(gs, as, geo, NormGradMode::Conv).empty());
          normgrad_cpu(g.data(), gs, a.data(), as, geo, NormGradMode::Conv, ng.data(), ThreadParallel(2));
          double gsq = 0, asq = 0;
          for (int64_t c = 0; c < K; ++c) gsq += double(g[c * Ho * Wo]) * g[c * Ho * Wo];
          for (int64_t c = 0; c < C; ++c)
            for (int64_t y = 0; y < k; ++y)
              for (int64_t x = 0; x < k; ++x) {
                int64_t yy = y - p, xx = x - p;
                if (yy >= 0 && yy < H && xx >= 0 && xx < W) {
                  double v = a[(c * H + yy) * W + xx];
                  asq += v * v;
                }
              }
          EXPECT(std::fabs(ng[0] - std::sqrt(gsq) * std::sqrt(asq)) <= 1e-4 * (1 + ng[0]));
          ++cases;
        }
      }
    }
  }
  // MaxPoolGradient: every window routes its g to one input inside the window (floor and ceil
  // sizes): the sums agree, and dx is non-zero only where x holds its window's maximum
  for (int64_t k : {1, 2, 3}) {
    for (int64_t s : {1, 2, 3}) {
      for (int64_t p = 0; p < k && p < 2; ++p) {
        for (int64_t d : {1, 2}) {
          for (int ceil_mode : {0, 1}) {
            ConvGeometry geo;
            geo.kernel[0] = geo.kernel[1] = k;
            geo.strides[0] = geo.strides[1] = s;
            geo.dilations[0] = geo.dilations[1] = d;
            for (auto& q : geo.pads) q = p;
            const int64_t N = 2, C = 3, H = 9, W = 7;
            const int64_t span_h = H + 2 * p - d * (k - 1) - 1, span_w = W + 2 * p - d * (k - 1) - 1;
            if (span_h < 0 || span_w < 0) continue;
            const int64_t Ho = ceil_mode ? (span_h + s - 1) / s + 1 : span_h / s + 1;
            const int64_t Wo = ceil_mode ? (span_w + s - 1) / s + 1 : span_w / s + 1;
            if ((Ho - 1) * s >= H + p || (Wo - 1) * s >= W + p) continue;  // window in end pad
            int64_t xs[4] = {N, C, H, W}, gs[4] = {N, C, Ho, Wo};
            EXPECT(max_pool_gradient_check(xs, gs, geo).empty());
            std::vector<float> x(N * C * H * W), dx(x.size()), g(N * C * Ho * Wo);
            for (auto& v : x) v = std::round(normal(rng));   // ties
            for (auto& v : g) v = normal(rng);
            max_pool_gradient_cpu(x.data(), xs, g.data(), gs, geo, dx.data(), ThreadParallel(2));
            double gsum = 0, dsum = 0, gmass = 0;
            for (float v : g) gsum += v, gmass += std::fabs(v);
            for (float v : dx) dsum += v;
            EXPECT(std::fabs(gsum - dsum) <= 1e-5 * (1 + gmass));
            // MaxPoolRelevance = Σ_c x ⊙ MaxPoolGradient(x, sign(p) ⊙ s), p from the routing
            int64_t ss[4] = {N, 1, Ho, Wo};
            EXPECT(max_pool_relevance_check(xs, ss, geo).empty());
            std::vector<float> s1(N * Ho * Wo), rel(N * H * W);
            for (auto& v : s1) v = normal(rng);
            max_pool_relevance_cpu(x.data(), xs, s1.data(), ss, geo, rel.data(), ThreadParallel(2));
            double rel_sum = 0, expected = 0;   // totals: Σ_q rel = Σ_i dx_i·|x_i|, dx routing s
            for (float v : rel) rel_sum += v;
            std::vector<float> gs1(g.size());
            for (int64_t n = 0; n < N; ++n)
              for (int64_t c = 0; c < C; ++c)
                for (int64_t o = 0; o < Ho * Wo; ++o) gs1[(n * C + c) * Ho * Wo + o] = s1[n * Ho * Wo + o];
            max_pool_gradient_cpu(x.data(), xs, gs1.data(), gs, geo, dx.data(), ThreadParallel(2));
            for (size_t i = 0; i < x.size(); ++i) expected += dx[i] * std::fabs(x[i]);
            EXPECT(std::fabs(rel_sum - expected) <= 1e-4 * (1 + std::fabs(expected)));
            ++cases;
          }
        }
      }
    }
  }
  // bad inputs are reported, not computed
  ConvGeometry geo;
  geo.kernel[0] = geo.kernel[1] = 3;
  int64_t g4[4] = {1, 2, 5, 5}, a4[4] = {1, 2, 5, 5}, z_bad[4] = {1, 3, 5, 5}, neg[4] = {1, -2, 5, 5};
  EXPECT(!rectified_conv_transpose_check(g4, g4, a4, geo, 1, 1e-10f).empty());  // 3x3 no pad: 3x3 out
  EXPECT(!rectified_conv_transpose_check(g4, z_bad, a4, ConvGeometry{}, 1, 1e-10f).empty());
  EXPECT(!rectified_conv_transpose_check(g4, g4, a4, ConvGeometry{}, 3, 1e-10f).empty());
  EXPECT(!rectified_conv_transpose_check(neg, neg, a4, ConvGeometry{}, 1, 1e-10f).empty());
  EXPECT(!normgrad_check(g4, neg, ConvGeometry{}, NormGradMode::Identity).empty());
  ConvGeometry zero_stride;
  zero_stride.strides[0] = 0;
  EXPECT(!normgrad_check(g4, a4, zero_stride, NormGradMode::Conv).empty());
  int64_t pool_x[4] = {1, 2, 6, 6}, pool_g[4] = {1, 2, 4, 3}, pool_c[4] = {1, 3, 3, 3};
  ConvGeometry pool;
  pool.kernel[0] = pool.kernel[1] = pool.strides[0] = pool.strides[1] = 2;
  EXPECT(!max_pool_gradient_check(pool_x, pool_g, pool).empty());
  EXPECT(!max_pool_gradient_check(pool_x, pool_c, pool).empty());
  EXPECT(!max_pool_gradient_check(pool_x, neg, pool).empty());
  int64_t pool_s[4] = {1, 1, 3, 3}, pool_s2[4] = {1, 2, 3, 3}, pool_sb[4] = {2, 1, 3, 3};
  EXPECT(max_pool_relevance_check(pool_x, pool_s, pool).empty());
  EXPECT(!max_pool_relevance_check(pool_x, pool_s2, pool).empty());
  EXPECT(!max_pool_relevance_check(pool_x, pool_sb, pool).empty());
  // hostile attributes (issue #15): bounded, checked arithmetic, floor division, kernels larger
  // than the padded input rejected
  const int64_t big = int64_t{1} << 62, max64 = INT64_MAX;
  EXPECT(conv_out_size(4, big, 1, 0, 0, 4) == -1);            // d·(k − 1) overflows
  EXPECT(conv_out_size(4, 1, 1, max64, max64, 1) == -1);      // in + pads overflows
  EXPECT(conv_out_size(2, 3, 2, 0, 0, 1) == -1);              // span −1: no output, not 1
  EXPECT(conv_out_size(5, 3, 2, 0, 0, 1) == 2);
  ConvGeometry huge_kernel;
  huge_kernel.kernel[0] = big;
  huge_kernel.dilations[0] = 4;
  int64_t mp_x[4] = {1, 2, 4, 4}, mp_g[4] = {1, 2, 8, 4};
  EXPECT(!max_pool_gradient_check(mp_x, mp_g, huge_kernel).empty());
  int64_t ng_g[4] = {1, 2, 8, 4}, ng_a[4] = {1, 3, 4, 4};
  EXPECT(!normgrad_check(ng_g, ng_a, huge_kernel, NormGradMode::Conv).empty());
  EXPECT(!normgrad_check(g4, g4, huge_kernel, NormGradMode::Identity).empty());  // in every mode
  EXPECT(!normgrad_check(g4, g4, ConvGeometry{}, static_cast<NormGradMode>(3)).empty());
  ConvGeometry huge_pads;
  for (auto& q : huge_pads.pads) q = max64;
  int64_t a44[4] = {1, 1, 4, 4}, g22[4] = {1, 1, 2, 2};
  EXPECT(!rectified_conv_transpose_check(g22, g22, a44, huge_pads, 1, 1e-10f).empty());
  EXPECT(!rectified_conv_transpose_check(g4, g4, a4, ConvGeometry{}, 1, std::nanf("")).empty());
  EXPECT(!rectified_conv_transpose_check(g4, g4, a4, ConvGeometry{}, 1, -1.0f).empty());
  EXPECT(!rectified_conv_transpose_check(g4, g4, a4, ConvGeometry{}, big, 1e-10f).empty());
  int64_t too_many[4] = {big, big, 1, 1}, empty_huge[4] = {0, big, big, 1};
  EXPECT(!check_shape("op", "x", too_many).empty());
  EXPECT(!check_shape("op", "x", empty_huge).empty());  // zeros count as one: H·W must fit too
  // the largest valid attributes: taps inside the input only (2^62 taps before)
  ConvGeometry widest;
  for (int i = 0; i < 2; ++i) widest.kernel[i] = widest.strides[i] = kMaxAttribute;
  for (auto& q : widest.pads) q = kMaxAttribute;
  int64_t one[4] = {1, 1, 1, 1}, two[4] = {1, 1, 2, 2};
  EXPECT(normgrad_check(two, one, widest, NormGradMode::Conv).empty());
  EXPECT(rectified_conv_transpose_check(two, two, one, widest, 1, 0.0f).empty());
  EXPECT(max_pool_gradient_check(one, two, widest).empty());
  const Window w = taps_inside(-kMaxAttribute, kMaxAttribute, 1, 1);
  EXPECT(w.lo == w.hi);  // the window stops one short of the input
  const float ones[4] = {1, 1, 1, 1}, two_ones[1] = {2};
  float ng_out[4], rct_out[1], mp_out[1];
  normgrad_cpu(ones, two, two_ones, one, widest, NormGradMode::Conv, ng_out, ThreadParallel(2));
  EXPECT(ng_out[0] == 0 && ng_out[1] == 0 && ng_out[2] == 0 && ng_out[3] == 2);
  rectified_conv_transpose_cpu(ones, ones, two, two_ones, one, widest, 1, 0.0f, rct_out,
                               ThreadParallel(2));
  EXPECT(rct_out[0] == 0.5f);  // sign(2) · S/D = 1 · 1/2 from window (1, 1)
  max_pool_gradient_cpu(two_ones, one, ones, two, widest, mp_out, ThreadParallel(2));
  EXPECT(mp_out[0] == 1);
  // empty tensors are fine
  int64_t empty[4] = {0, 2, 5, 5};
  rectified_conv_transpose_cpu(nullptr, nullptr, empty, nullptr, empty, ConvGeometry{}, 1, 1e-10f,
                               nullptr, ThreadParallel(2));
  std::printf("%d geometry cases, %d failures\n", cases, failures);
  return failures == 0 && cases > 20 ? 0 : 1;
}
