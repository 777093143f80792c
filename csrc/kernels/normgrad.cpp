#include "normgrad.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <thread>
#include <vector>

namespace onnx_saliency {
namespace {

// Runs body(begin, end) over [0, total) split across threads.
template <class Body>
void parallel_for(int64_t total, int threads, Body body) {
  int64_t n = threads > 0 ? threads : static_cast<int64_t>(std::thread::hardware_concurrency());
  n = std::max<int64_t>(1, std::min<int64_t>(n, total));
  if (n == 1) {
    body(0, total);
    return;
  }
  std::vector<std::thread> pool;
  int64_t chunk = (total + n - 1) / n;
  for (int64_t t = 0; t < n; ++t) {
    int64_t begin = t * chunk, end = std::min(total, begin + chunk);
    if (begin < end) pool.emplace_back(body, begin, end);
  }
  for (auto& th : pool) th.join();
}

// Sum over channels of x^2 at each location of one image: out[hw] = sum_c x[c, hw]^2.
void channel_sumsq(const float* x, int64_t channels, int64_t hw, float* out) {
  std::fill(out, out + hw, 0.0f);
  for (int64_t c = 0; c < channels; ++c) {
    const float* row = x + c * hw;
    for (int64_t i = 0; i < hw; ++i) out[i] += row[i] * row[i];
  }
}

}  // namespace

int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p_begin, int64_t p_end, int64_t d) {
  return (in + p_begin + p_end - d * (k - 1) - 1) / s + 1;
}

std::string normgrad_check(const int64_t g_shape[4], const int64_t a_shape[4],
                           const ConvGeometry& geo, NormGradMode mode) {
  std::ostringstream msg;
  for (int i = 0; i < 4; ++i) {
    if (g_shape[i] < 0 || a_shape[i] < 0) return "NormGrad: shapes must be non-negative.";
  }
  if (g_shape[0] != a_shape[0]) return "NormGrad: g and a have different batch sizes.";
  if (mode != NormGradMode::Conv) {
    for (int i = 1; i < 4; ++i) {
      if (g_shape[i] != a_shape[i]) {
        return "NormGrad: in identity and selective modes g and a must have the same shape.";
      }
    }
    return "";
  }
  for (int i = 0; i < 2; ++i) {
    if (geo.kernel[i] < 1 || geo.strides[i] < 1 || geo.dilations[i] < 1) {
      return "NormGrad: kernel_shape, strides and dilations must be positive.";
    }
    if (geo.pads[i] < 0 || geo.pads[i + 2] < 0) return "NormGrad: pads must be non-negative.";
  }
  for (int i = 0; i < 2; ++i) {
    int64_t want = conv_out_size(a_shape[2 + i], geo.kernel[i], geo.strides[i], geo.pads[i],
                                 geo.pads[i + 2], geo.dilations[i]);
    if (want != g_shape[2 + i]) {
      msg << "NormGrad: g has spatial size " << g_shape[2 + i] << " on axis " << 2 + i
          << " but the convolution of a gives " << want << ".";
      return msg.str();
    }
  }
  return "";
}

void normgrad_cpu(const float* g, const int64_t g_shape[4], const float* a,
                  const int64_t a_shape[4], const ConvGeometry& geo, NormGradMode mode,
                  float* out, int threads) {
  const int64_t N = g_shape[0], K = g_shape[1], Ho = g_shape[2], Wo = g_shape[3];
  const int64_t C = a_shape[1], H = a_shape[2], W = a_shape[3];
  const int64_t out_hw = Ho * Wo, in_hw = H * W;
  parallel_for(N, threads, [&](int64_t n0, int64_t n1) {
    std::vector<float> gsq(out_hw), asq(in_hw);
    for (int64_t n = n0; n < n1; ++n) {
      const float* gn = g + n * K * out_hw;
      const float* an = a + n * C * in_hw;
      float* on = out + n * out_hw;
      if (mode == NormGradMode::Selective) {
        std::fill(on, on + out_hw, 0.0f);
        for (int64_t c = 0; c < K; ++c) {
          const float* gr = gn + c * out_hw;
          const float* ar = an + c * out_hw;
          for (int64_t i = 0; i < out_hw; ++i) {
            float p = std::max(gr[i] * ar[i], 0.0f);
            on[i] += p * p;
          }
        }
        for (int64_t i = 0; i < out_hw; ++i) on[i] = std::sqrt(on[i]);
        continue;
      }
      channel_sumsq(gn, K, out_hw, gsq.data());
      channel_sumsq(an, C, in_hw, asq.data());
      if (mode == NormGradMode::Identity) {
        for (int64_t i = 0; i < out_hw; ++i) on[i] = std::sqrt(gsq[i]) * std::sqrt(asq[i]);
        continue;
      }
      // conv: patch norm = sqrt(box-sum of asq over the (strided, dilated, padded) window)
      for (int64_t oy = 0; oy < Ho; ++oy) {
        for (int64_t ox = 0; ox < Wo; ++ox) {
          float patch = 0.0f;
          for (int64_t ky = 0; ky < geo.kernel[0]; ++ky) {
            int64_t y = oy * geo.strides[0] - geo.pads[0] + ky * geo.dilations[0];
            if (y < 0 || y >= H) continue;
            for (int64_t kx = 0; kx < geo.kernel[1]; ++kx) {
              int64_t x = ox * geo.strides[1] - geo.pads[1] + kx * geo.dilations[1];
              if (x < 0 || x >= W) continue;
              patch += asq[y * W + x];
            }
          }
          on[oy * Wo + ox] = std::sqrt(gsq[oy * Wo + ox]) * std::sqrt(patch);
        }
      }
    }
  });
}

}  // namespace onnx_saliency
