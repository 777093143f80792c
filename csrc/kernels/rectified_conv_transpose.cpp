#include "rectified_conv_transpose.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

#include "parallel.h"

namespace onnx_saliency {

std::string rectified_conv_transpose_check(const int64_t g_shape[4], const int64_t z_shape[4],
                                           const int64_t a_shape[4], const ConvGeometry& geo,
                                           int64_t group) {
  for (int i = 0; i < 4; ++i) {
    if (g_shape[i] < 0 || z_shape[i] < 0 || a_shape[i] < 0) {
      return "RectifiedConvTranspose: shapes must be non-negative.";
    }
    if (g_shape[i] != z_shape[i]) {
      return "RectifiedConvTranspose: g and z (the conv's output) must have the same shape.";
    }
  }
  if (g_shape[0] != a_shape[0]) return "RectifiedConvTranspose: g and a have different batch sizes.";
  if (group < 1 || g_shape[1] % group != 0 || a_shape[1] % group != 0) {
    std::ostringstream msg;
    msg << "RectifiedConvTranspose: group " << group << " must divide both the output channels ("
        << g_shape[1] << ") and the input channels (" << a_shape[1] << ").";
    return msg.str();
  }
  return check_geometry("RectifiedConvTranspose", geo, a_shape[2], a_shape[3], g_shape[2],
                        g_shape[3]);
}

void rectified_conv_transpose_cpu(const float* g, const float* z, const int64_t g_shape[4],
                                  const float* a, const int64_t a_shape[4],
                                  const ConvGeometry& geo, int64_t group, float epsilon,
                                  float* out, int threads) {
  const int64_t N = g_shape[0], K = g_shape[1], Ho = g_shape[2], Wo = g_shape[3];
  const int64_t C = a_shape[1], H = a_shape[2], W = a_shape[3];
  const int64_t G = group, Kg = K / G, Cg = C / G;
  const int64_t out_hw = Ho * Wo, in_hw = H * W;
  const int64_t kh = geo.kernel[0], kw = geo.kernel[1], sh = geo.strides[0], sw = geo.strides[1];
  const int64_t ph = geo.pads[0], pw = geo.pads[1], dh = geo.dilations[0], dw = geo.dilations[1];
  std::vector<float> abs_sum(static_cast<size_t>(N * G * in_hw));
  std::vector<float> ratio(static_cast<size_t>(N * G * out_hw));

  // 1. abs_sum[n, j, q] = sum_{c in j} |a[n, c, q]|, one task per input row.
  parallel_for(N * G * H, threads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ng = t / H, y = t % H, n = ng / G, j = ng % G;
      float* dst = abs_sum.data() + ng * in_hw + y * W;
      std::fill(dst, dst + W, 0.0f);
      for (int64_t c = j * Cg; c < (j + 1) * Cg; ++c) {
        const float* src = a + (n * C + c) * in_hw + y * W;
        for (int64_t x = 0; x < W; ++x) dst[x] += std::fabs(src[x]);
      }
    }
  });
  // 2. ratio[n, j, v] = S_j(v) / (D_j(v) + eps), one task per output row.
  parallel_for(N * G * Ho, threads, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ng = t / Ho, oy = t % Ho, n = ng / G, j = ng % G;
      float* dst = ratio.data() + ng * out_hw + oy * Wo;
      std::fill(dst, dst + Wo, 0.0f);
      for (int64_t k = j * Kg; k < (j + 1) * Kg; ++k) {
        const float* gr = g + (n * K + k) * out_hw + oy * Wo;
        const float* zr = z + (n * K + k) * out_hw + oy * Wo;
        for (int64_t x = 0; x < Wo; ++x) dst[x] += gr[x] * zr[x];
      }
      const float* as = abs_sum.data() + ng * in_hw;
      for (int64_t ox = 0; ox < Wo; ++ox) {
        float d = 0.0f;
        for (int64_t ky = 0; ky < kh; ++ky) {
          const int64_t y = oy * sh - ph + ky * dh;
          if (y < 0 || y >= H) continue;
          for (int64_t kx = 0; kx < kw; ++kx) {
            const int64_t x = ox * sw - pw + kx * dw;
            if (x >= 0 && x < W) d += as[y * W + x];
          }
        }
        dst[ox] /= d + epsilon;
      }
    }
  });
  // 3. out[n, c, q] = sign(a) * sum over the windows covering q of ratio, one task per input row.
  parallel_for(N * G * H, threads, [&](int64_t t0, int64_t t1) {
    std::vector<float> spread(static_cast<size_t>(W));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ng = t / H, y = t % H, n = ng / G, j = ng % G;
      const float* r = ratio.data() + ng * out_hw;
      std::fill(spread.begin(), spread.end(), 0.0f);
      for (int64_t ky = 0; ky < kh; ++ky) {
        const int64_t num_y = y + ph - ky * dh;
        if (num_y < 0 || num_y % sh != 0 || num_y / sh >= Ho) continue;
        const float* rr = r + (num_y / sh) * Wo;
        for (int64_t x = 0; x < W; ++x) {
          float acc = 0.0f;
          for (int64_t kx = 0; kx < kw; ++kx) {
            const int64_t num_x = x + pw - kx * dw;
            if (num_x >= 0 && num_x % sw == 0 && num_x / sw < Wo) acc += rr[num_x / sw];
          }
          spread[x] += acc;
        }
      }
      for (int64_t c = j * Cg; c < (j + 1) * Cg; ++c) {
        const float* src = a + (n * C + c) * in_hw + y * W;
        float* dst = out + (n * C + c) * in_hw + y * W;
        for (int64_t x = 0; x < W; ++x) {
          const float s = static_cast<float>((src[x] > 0.0f) - (src[x] < 0.0f));
          dst[x] = s * spread[x];
        }
      }
    }
  });
}

}  // namespace onnx_saliency
