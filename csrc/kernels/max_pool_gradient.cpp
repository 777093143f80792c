#include "max_pool_gradient.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace onnx_saliency {
namespace {

// Floor- and ceil-mode output sizes of a pool over `in` (a ceil-mode runtime may drop a last
// window that starts in the end padding; either size is accepted).
void pool_out_sizes(int64_t in, int64_t k, int64_t s, int64_t p0, int64_t p1, int64_t d,
                    int64_t& floor_size, int64_t& ceil_size) {
  const int64_t span = in + p0 + p1 - d * (k - 1) - 1;
  floor_size = span / s + 1;
  ceil_size = (span + s - 1) / s + 1;
}

}  // namespace

namespace {

// The checks both pool backward ops share: a valid geometry, no negative dimension, and `name`'s
// spatial size (g's, or s's) one that pooling x gives. "" or one sentence.
std::string geometry_problem(const char* op, const int64_t x_shape[4], const int64_t g_shape[4],
                             const ConvGeometry& geo) {
  for (int i = 0; i < 2; ++i) {
    if (geo.kernel[i] < 1 || geo.strides[i] < 1 || geo.dilations[i] < 1) {
      return std::string(op) + ": kernel_shape, strides and dilations must be positive.";
    }
  }
  for (int i = 0; i < 4; ++i) {
    if (geo.pads[i] < 0) return std::string(op) + ": pads must be non-negative.";
    if (x_shape[i] < 0 || g_shape[i] < 0) return std::string(op) + ": negative dimension.";
  }
  return "";
}

std::string grid_problem(const char* op, const char* name, const int64_t x_shape[4],
                         const int64_t g_shape[4], const ConvGeometry& geo) {
  for (int i = 0; i < 2; ++i) {
    int64_t lo, hi;
    pool_out_sizes(x_shape[2 + i], geo.kernel[i], geo.strides[i], geo.pads[i], geo.pads[2 + i],
                   geo.dilations[i], lo, hi);
    if (lo < 1 || g_shape[2 + i] < lo || g_shape[2 + i] > hi) {
      return std::string(op) + ": " + name + "'s spatial dim " + std::to_string(i) + " is " +
             std::to_string(g_shape[2 + i]) + ", but pooling x gives " + std::to_string(lo) +
             (hi != lo ? " (or " + std::to_string(hi) + " in ceil mode)" : "") + ".";
    }
  }
  return "";
}

}  // namespace

std::string max_pool_gradient_check(const int64_t x_shape[4], const int64_t g_shape[4],
                                    const ConvGeometry& geo) {
  const char* op = "MaxPoolGradient";
  std::string err = geometry_problem(op, x_shape, g_shape, geo);
  if (!err.empty()) return err;
  if (x_shape[0] != g_shape[0] || x_shape[1] != g_shape[1]) {
    return std::string(op) + ": x and g must share batch and channels, got x [" +
           std::to_string(x_shape[0]) + "," + std::to_string(x_shape[1]) + ",...] and g [" +
           std::to_string(g_shape[0]) + "," + std::to_string(g_shape[1]) + ",...].";
  }
  return grid_problem(op, "g", x_shape, g_shape, geo);
}

std::string max_pool_relevance_check(const int64_t x_shape[4], const int64_t s_shape[4],
                                     const ConvGeometry& geo) {
  const char* op = "MaxPoolRelevance";
  std::string err = geometry_problem(op, x_shape, s_shape, geo);
  if (!err.empty()) return err;
  if (s_shape[1] != 1) {
    return std::string(op) + ": s must have one channel [N,1,Ho,Wo], got " +
           std::to_string(s_shape[1]) + ".";
  }
  if (s_shape[0] != x_shape[0]) return std::string(op) + ": x and s must share the batch size.";
  return grid_problem(op, "s", x_shape, s_shape, geo);
}

namespace {

// The taps [lo, hi) of window o along one axis that land inside [0, size).
struct TapRange {
  int64_t start, lo, hi;  // start: the window's first input position (may be in the padding)
};

std::vector<TapRange> tap_ranges(int64_t out, int64_t size, int64_t k, int64_t s, int64_t p,
                                 int64_t d) {
  std::vector<TapRange> ranges(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    const int64_t start = o * s - p;
    int64_t lo = 0, hi = k;
    while (lo < k && start + lo * d < 0) ++lo;
    while (hi > lo && start + (hi - 1) * d >= size) --hi;
    ranges[static_cast<size_t>(o)] = {start, lo, hi};
  }
  return ranges;
}

// The first maximum of window (r, c) in row-major order: start at the first tap, replace only
// when strictly greater (branch-free: the comparison is unpredictable on real data). Returns its
// position in the plane; `value` gets x there.
inline int64_t window_argmax(const float* xp, int64_t W, const TapRange& r, const TapRange& c,
                             int64_t dh, int64_t dw, float& value) {
  int64_t best = (r.start + r.lo * dh) * W + c.start + c.lo * dw;
  value = xp[best];
  for (int64_t i = r.lo; i < r.hi; ++i) {
    const int64_t row = (r.start + i * dh) * W + c.start;
    for (int64_t j = c.lo; j < c.hi; ++j) {
      const int64_t at = row + j * dw;
      const float v = xp[at];
      const bool greater = v > value;
      value = greater ? v : value;
      best = greater ? at : best;
    }
  }
  return best;
}

}  // namespace

void max_pool_gradient_cpu(const float* x, const int64_t x_shape[4], const float* g,
                           const int64_t g_shape[4], const ConvGeometry& geo, float* dx,
                           const Parallel& parallel) {
  const int64_t H = x_shape[2], W = x_shape[3], Ho = g_shape[2], Wo = g_shape[3];
  const int64_t planes = x_shape[0] * x_shape[1];
  const int64_t dh = geo.dilations[0], dw = geo.dilations[1];
  const auto rows = tap_ranges(Ho, H, geo.kernel[0], geo.strides[0], geo.pads[0], dh);
  const auto cols = tap_ranges(Wo, W, geo.kernel[1], geo.strides[1], geo.pads[1], dw);
  parallel.run(planes, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* xp = x + p * H * W;
      const float* gp = g + p * Ho * Wo;
      float* dp = dx + p * H * W;
      std::fill(dp, dp + H * W, 0.f);
      for (int64_t oy = 0; oy < Ho; ++oy) {
        const TapRange r = rows[static_cast<size_t>(oy)];
        if (r.lo >= r.hi) continue;
        for (int64_t ox = 0; ox < Wo; ++ox) {
          const TapRange c = cols[static_cast<size_t>(ox)];
          if (c.lo >= c.hi) continue;
          float value;
          dp[window_argmax(xp, W, r, c, dh, dw, value)] += gp[oy * Wo + ox];
        }
      }
    }
  });
}

void max_pool_relevance_cpu(const float* x, const int64_t x_shape[4], const float* s,
                            const int64_t s_shape[4], const ConvGeometry& geo, float* out,
                            const Parallel& parallel) {
  const int64_t N = x_shape[0], C = x_shape[1], H = x_shape[2], W = x_shape[3];
  const int64_t Ho = s_shape[2], Wo = s_shape[3];
  const int64_t dh = geo.dilations[0], dw = geo.dilations[1];
  const auto rows = tap_ranges(Ho, H, geo.kernel[0], geo.strides[0], geo.pads[0], dh);
  const auto cols = tap_ranges(Wo, W, geo.kernel[1], geo.strides[1], geo.pads[1], dw);
  // One task per (image, block of input rows): it scans every window that reaches into its rows,
  // over all channels in order, and keeps the maxima that fall in them (deterministic sums; a
  // window across two blocks is scanned by both).
  constexpr int64_t kRows = 8;
  const int64_t blocks = (H + kRows - 1) / kRows;
  parallel.run(N * blocks, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks, y0 = (t % blocks) * kRows, y1 = std::min(H, y0 + kRows);
      float* op = out + n * H * W;
      const int64_t lo = y0 * W, hi = y1 * W;  // this task's positions in the plane
      std::fill(op + lo, op + hi, 0.f);
      const float* sp = s + n * Ho * Wo;
      for (int64_t c = 0; c < C; ++c) {
        const float* xp = x + (n * C + c) * H * W;
        for (int64_t oy = 0; oy < Ho; ++oy) {
          const TapRange r = rows[static_cast<size_t>(oy)];
          if (r.lo >= r.hi || r.start + (r.hi - 1) * dh < y0 || r.start + r.lo * dh >= y1) continue;
          for (int64_t ox = 0; ox < Wo; ++ox) {
            const TapRange cr = cols[static_cast<size_t>(ox)];
            if (cr.lo >= cr.hi) continue;
            float value;
            const int64_t best = window_argmax(xp, W, r, cr, dh, dw, value);
            if (best >= lo && best < hi) op[best] += sp[oy * Wo + ox] * std::fabs(value);
          }
        }
      }
    }
  });
}

}  // namespace onnx_saliency
