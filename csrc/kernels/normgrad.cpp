#include "normgrad.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "parallel.h"

namespace onnx_saliency {
namespace {

constexpr int64_t kBlock = 1024;  // spatial positions per task

int64_t blocks(int64_t hw) { return (hw + kBlock - 1) / kBlock; }

// out[i] = sum_c x[c, i]^2 for i in [begin, end) of one image with `channels` planes of size hw.
void channel_sumsq(const float* x, int64_t channels, int64_t hw, int64_t begin, int64_t end,
                   float* out) {
  std::fill(out + begin, out + end, 0.0f);
  for (int64_t c = 0; c < channels; ++c) {
    const float* row = x + c * hw;
    for (int64_t i = begin; i < end; ++i) out[i] += row[i] * row[i];
  }
}

}  // namespace

std::string normgrad_mode(const std::string& name, NormGradMode& mode) {
  if (name == "identity") mode = NormGradMode::Identity;
  else if (name == "conv") mode = NormGradMode::Conv;
  else if (name == "selective") mode = NormGradMode::Selective;
  else return "NormGrad: mode must be identity, conv or selective, not '" + name + "'.";
  return "";
}

std::string normgrad_check(const int64_t g_shape[4], const int64_t a_shape[4],
                           const ConvGeometry& geo, NormGradMode mode) {
  if (mode != NormGradMode::Identity && mode != NormGradMode::Conv &&
      mode != NormGradMode::Selective) {
    return "NormGrad: mode must be identity, conv or selective.";
  }
  std::string err = check_shape("NormGrad", "g", g_shape);
  if (err.empty()) err = check_shape("NormGrad", "a", a_shape);
  if (!err.empty()) return err;
  if (g_shape[0] != a_shape[0]) return "NormGrad: g and a have different batch sizes.";
  if (mode != NormGradMode::Conv) {
    for (int i = 1; i < 4; ++i) {
      if (g_shape[i] != a_shape[i]) {
        return "NormGrad: in identity and selective modes g and a must have the same shape.";
      }
    }
    return check_attributes("NormGrad", geo);
  }
  return check_geometry("NormGrad", geo, a_shape[2], a_shape[3], g_shape[2], g_shape[3]);
}

void normgrad_cpu(const float* g, const int64_t g_shape[4], const float* a,
                  const int64_t a_shape[4], const ConvGeometry& geo, NormGradMode mode,
                  float* out, const Parallel& parallel) {
  const int64_t N = g_shape[0], K = g_shape[1], Ho = g_shape[2], Wo = g_shape[3];
  const int64_t C = a_shape[1], H = a_shape[2], W = a_shape[3];
  const int64_t out_hw = Ho * Wo, in_hw = H * W;
  if (N * out_hw == 0) return;
  if (K == 0 || C * in_hw == 0) {  // an empty g or a: every norm is 0
    std::fill(out, out + N * out_hw, 0.0f);
    return;
  }

  if (mode != NormGradMode::Conv) {  // one pass over both tensors, blocked over space
    const int64_t nb = blocks(out_hw);
    parallel.run(N * nb, [&](int64_t t0, int64_t t1) {
      std::vector<float> gsq(kBlock), asq(kBlock);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / nb, begin = (t % nb) * kBlock, end = std::min(out_hw, begin + kBlock);
        const float* gn = g + n * K * out_hw;
        const float* an = a + n * C * in_hw;
        float* on = out + n * out_hw;
        const int64_t len = end - begin;
        std::fill(gsq.begin(), gsq.end(), 0.0f);
        std::fill(asq.begin(), asq.end(), 0.0f);
        float* gs = gsq.data();
        float* as = asq.data();
        if (mode == NormGradMode::Selective) {
          for (int64_t c = 0; c < K; ++c) {
            const float* gr = gn + c * out_hw + begin;
            const float* ar = an + c * out_hw + begin;
            for (int64_t i = 0; i < len; ++i) {
              const float p = gr[i] * ar[i];
              const float q = 0.5f * (p + std::fabs(p));  // max(p, 0), exact and branch-free
              gs[i] += q * q;
            }
          }
        } else {
          for (int64_t c = 0; c < K; ++c) {
            const float* gr = gn + c * out_hw + begin;
            const float* ar = an + c * out_hw + begin;
            for (int64_t i = 0; i < len; ++i) {
              gs[i] += gr[i] * gr[i];
              as[i] += ar[i] * ar[i];
            }
          }
        }
        if (mode == NormGradMode::Selective) {
          for (int64_t i = 0; i < len; ++i) on[begin + i] = std::sqrt(gsq[i]);
        } else {
          for (int64_t i = 0; i < len; ++i) on[begin + i] = std::sqrt(gsq[i]) * std::sqrt(asq[i]);
        }
      }
    });
    return;
  }

  // conv: phase 1 the channel sums of squares of g and a; phase 2 the patch box-sums.
  std::vector<float> gsq(static_cast<size_t>(N * out_hw)), asq(static_cast<size_t>(N * in_hw));
  const int64_t nbg = blocks(out_hw), nba = blocks(in_hw);
  parallel.run(N * (nbg + nba), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / (nbg + nba), b = t % (nbg + nba);
      if (b < nbg) {
        channel_sumsq(g + n * K * out_hw, K, out_hw, b * kBlock,
                      std::min(out_hw, (b + 1) * kBlock), gsq.data() + n * out_hw);
      } else {
        const int64_t ba = b - nbg;
        channel_sumsq(a + n * C * in_hw, C, in_hw, ba * kBlock,
                      std::min(in_hw, (ba + 1) * kBlock), asq.data() + n * in_hw);
      }
    }
  });
  // the taps inside a, per output column (per output row below): loops bounded by a's size
  const int64_t dh = geo.dilations[0], dw = geo.dilations[1];
  const std::vector<Window> cols = windows_along(Wo, W, geo.kernel[1], geo.strides[1], geo.pads[1], dw);
  parallel.run(N * Ho, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / Ho, oy = t % Ho;
      const float* an = asq.data() + n * in_hw;
      const float* gn = gsq.data() + n * out_hw;
      const Window row = window_at(oy, H, geo.kernel[0], geo.strides[0], geo.pads[0], dh);
      for (int64_t ox = 0; ox < Wo; ++ox) {
        const Window& col = cols[static_cast<size_t>(ox)];
        float patch = 0.0f;
        for (int64_t ky = row.lo; ky < row.hi; ++ky) {
          const float* line = an + (row.start + ky * dh) * W;
          for (int64_t kx = col.lo; kx < col.hi; ++kx) patch += line[col.start + kx * dw];
        }
        out[n * out_hw + oy * Wo + ox] = std::sqrt(gn[oy * Wo + ox]) * std::sqrt(patch);
      }
    }
  });
}

}  // namespace onnx_saliency
