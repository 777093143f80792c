#include "max_pool_gradient.h"

#include <algorithm>

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

void max_pool_gradient_cpu(const float* x, const int64_t x_shape[4], const float* g,
                           const int64_t g_shape[4], const ConvGeometry& geo, float* dx,
                           const Parallel& parallel) {
  const int64_t H = x_shape[2], W = x_shape[3], Ho = g_shape[2], Wo = g_shape[3];
  const int64_t planes = x_shape[0] * x_shape[1];
  const int64_t kh = geo.kernel[0], kw = geo.kernel[1], sh = geo.strides[0], sw = geo.strides[1];
  const int64_t dh = geo.dilations[0], dw = geo.dilations[1], ph = geo.pads[0], pw = geo.pads[1];
  parallel.run(planes, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* xp = x + p * H * W;
      const float* gp = g + p * Ho * Wo;
      float* dp = dx + p * H * W;
      std::fill(dp, dp + H * W, 0.f);
      for (int64_t oy = 0; oy < Ho; ++oy) {
        const int64_t y0 = oy * sh - ph;
        for (int64_t ox = 0; ox < Wo; ++ox) {
          const int64_t x0 = ox * sw - pw;
          int64_t best = -1;
          float best_value = 0.f;
          for (int64_t i = 0; i < kh; ++i) {
            const int64_t y = y0 + i * dh;
            if (y < 0 || y >= H) continue;
            for (int64_t j = 0; j < kw; ++j) {
              const int64_t xx = x0 + j * dw;
              if (xx < 0 || xx >= W) continue;
              const float v = xp[y * W + xx];
              if (best < 0 || v > best_value) {
                best = y * W + xx;
                best_value = v;
              }
            }
          }
          if (best >= 0) dp[best] += gp[oy * Wo + ox];
        }
      }
    }
  });
}

}  // namespace onnx_saliency
