#include "max_pool_gradient.h"

#include <algorithm>
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

std::string max_pool_gradient_check(const int64_t x_shape[4], const int64_t g_shape[4],
                                    const ConvGeometry& geo) {
  const char* op = "MaxPoolGradient";
  for (int i = 0; i < 2; ++i) {
    if (geo.kernel[i] < 1 || geo.strides[i] < 1 || geo.dilations[i] < 1) {
      return std::string(op) + ": kernel_shape, strides and dilations must be positive.";
    }
  }
  for (int i = 0; i < 4; ++i) {
    if (geo.pads[i] < 0) return std::string(op) + ": pads must be non-negative.";
    if (x_shape[i] < 0 || g_shape[i] < 0) return std::string(op) + ": negative dimension.";
  }
  if (x_shape[0] != g_shape[0] || x_shape[1] != g_shape[1]) {
    return std::string(op) + ": x and g must share batch and channels, got x [" +
           std::to_string(x_shape[0]) + "," + std::to_string(x_shape[1]) + ",...] and g [" +
           std::to_string(g_shape[0]) + "," + std::to_string(g_shape[1]) + ",...].";
  }
  for (int i = 0; i < 2; ++i) {
    int64_t lo, hi;
    pool_out_sizes(x_shape[2 + i], geo.kernel[i], geo.strides[i], geo.pads[i], geo.pads[2 + i],
                   geo.dilations[i], lo, hi);
    if (lo < 1 || g_shape[2 + i] < lo || g_shape[2 + i] > hi) {
      return std::string(op) + ": g's spatial dim " + std::to_string(i) + " is " +
             std::to_string(g_shape[2 + i]) + ", but pooling x gives " + std::to_string(lo) +
             (hi != lo ? " (or " + std::to_string(hi) + " in ceil mode)" : "") + ".";
    }
  }
  return "";
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
          // first maximum in row-major order: start at the first tap, replace only when
          // strictly greater (branch-free: the comparison is unpredictable on real data)
          int64_t best = (r.start + r.lo * dh) * W + c.start + c.lo * dw;
          float best_value = xp[best];
          for (int64_t i = r.lo; i < r.hi; ++i) {
            const int64_t row = (r.start + i * dh) * W + c.start;
            for (int64_t j = c.lo; j < c.hi; ++j) {
              const int64_t at = row + j * dw;
              const float v = xp[at];
              const bool greater = v > best_value;
              best_value = greater ? v : best_value;
              best = greater ? at : best;
            }
          }
          dp[best] += gp[oy * Wo + ox];
        }
      }
    }
  });
}

}  // namespace onnx_saliency
