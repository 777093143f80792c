#include "rectified_conv_transpose.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

#include "parallel.h"

namespace onnx_saliency {

namespace {

// For each input position t along one axis, the windows with a tap on it, by ascending tap (so
// descending window): window[offset[t] .. offset[t + 1]). Built from the taps inside the input:
// its size is at most (number of windows) · min(k, size).
struct Coverage {
  std::vector<int64_t> offset, window;
};

Coverage coverage(const std::vector<Window>& windows, int64_t size, int64_t d) {
  Coverage c;
  c.offset.assign(static_cast<size_t>(size + 1), 0);
  for (const Window& w : windows) {
    for (int64_t i = w.lo; i < w.hi; ++i) ++c.offset[static_cast<size_t>(w.start + i * d + 1)];
  }
  for (int64_t t = 0; t < size; ++t) c.offset[t + 1] += c.offset[t];
  c.window.resize(static_cast<size_t>(c.offset[size]));
  std::vector<int64_t> next(c.offset.begin(), c.offset.end() - 1);
  for (int64_t o = static_cast<int64_t>(windows.size()) - 1; o >= 0; --o) {
    const Window& w = windows[static_cast<size_t>(o)];
    for (int64_t i = w.lo; i < w.hi; ++i) c.window[next[w.start + i * d]++] = o;
  }
  return c;
}

}  // namespace

std::string rectified_conv_transpose_check(const int64_t g_shape[4], const int64_t z_shape[4],
                                           const int64_t a_shape[4], const ConvGeometry& geo,
                                           int64_t group, float epsilon) {
  const char* op = "RectifiedConvTranspose";
  std::string err = check_shape(op, "g", g_shape);
  if (err.empty()) err = check_shape(op, "z", z_shape);
  if (err.empty()) err = check_shape(op, "a", a_shape);
  if (err.empty()) err = check_epsilon(op, epsilon);
  if (!err.empty()) return err;
  for (int i = 0; i < 4; ++i) {
    if (g_shape[i] != z_shape[i]) {
      return "RectifiedConvTranspose: g and z (the conv's output) must have the same shape.";
    }
  }
  if (g_shape[0] != a_shape[0]) return "RectifiedConvTranspose: g and a have different batch sizes.";
  err = check_attribute(op, "group", group, 1);
  if (!err.empty()) return err;
  if (g_shape[1] % group != 0 || a_shape[1] % group != 0) {
    std::ostringstream msg;
    msg << "RectifiedConvTranspose: group " << group << " must divide both the output channels ("
        << g_shape[1] << ") and the input channels (" << a_shape[1] << ").";
    return msg.str();
  }
  err = check_geometry(op, geo, a_shape[2], a_shape[3], g_shape[2], g_shape[3]);
  if (!err.empty()) return err;
  // the scratch: per (image, group) sums by input row and output column, and the reverse
  const int64_t N = a_shape[0], H = a_shape[2], W = a_shape[3], Ho = g_shape[2], Wo = g_shape[3];
  if (!count_fits({N, group, H, Wo}) || !count_fits({N, group, Ho, W}) || !count_fits({H, Ho}) ||
      !count_fits({W, Wo})) {
    return "RectifiedConvTranspose: the scratch for these shapes has more than 2^60 elements.";
  }
  return "";
}

void rectified_conv_transpose_cpu(const float* g, const float* z, const int64_t g_shape[4],
                                  const float* a, const int64_t a_shape[4],
                                  const ConvGeometry& geo, int64_t group, float epsilon,
                                  float* out, const Parallel& parallel) {
  const int64_t N = g_shape[0], K = g_shape[1], Ho = g_shape[2], Wo = g_shape[3];
  const int64_t C = a_shape[1], H = a_shape[2], W = a_shape[3];
  const int64_t out_hw = Ho * Wo, in_hw = H * W;
  if (N * C * in_hw == 0) return;
  if (K * out_hw == 0) {  // no output channel: S = 0
    std::fill(out, out + N * C * in_hw, 0.0f);
    return;
  }
  const int64_t G = group, Kg = K / G, Cg = C / G;
  const int64_t kh = geo.kernel[0], kw = geo.kernel[1], sh = geo.strides[0], sw = geo.strides[1];
  const int64_t ph = geo.pads[0], pw = geo.pads[1], dh = geo.dilations[0], dw = geo.dilations[1];
  // The windows' taps inside a along each axis, and for each input row / column the windows
  // reading it: every loop below is bounded by the tensors' sizes, whatever the kernel's.
  const std::vector<Window> row_windows = windows_along(Ho, H, kh, sh, ph, dh);
  const std::vector<Window> col_windows = windows_along(Wo, W, kw, sw, pw, dw);
  const Coverage row_cover = coverage(row_windows, H, dh);
  const Coverage col_cover = coverage(col_windows, W, dw);
  // The window sums with the all-ones kernel are separable: a pass along x, then one along y
  // (kh + kw reads per location instead of kh * kw).
  std::vector<float> row_box(static_cast<size_t>(N * G * H * Wo));   // sum_kx |a| per (y, ox)
  std::vector<float> ratio(static_cast<size_t>(N * G * out_hw));     // S / (D + eps) per (oy, ox)
  std::vector<float> row_spread(static_cast<size_t>(N * G * Ho * W)); // sum_kx ratio per (oy, x)
  constexpr int64_t kBlock = 2048;
  const int64_t out_blocks = (out_hw + kBlock - 1) / kBlock;

  // 1. per input row: sum_{c in j} |a| over the row, then its box-sum along x.
  parallel.run(N * G * H, [&](int64_t t0, int64_t t1) {
    std::vector<float> abs_row(static_cast<size_t>(W));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ng = t / H, y = t % H, n = ng / G, j = ng % G;
      std::fill(abs_row.begin(), abs_row.end(), 0.0f);
      for (int64_t c = j * Cg; c < (j + 1) * Cg; ++c) {
        const float* src = a + (n * C + c) * in_hw + y * W;
        for (int64_t x = 0; x < W; ++x) abs_row[x] += std::fabs(src[x]);
      }
      float* dst = row_box.data() + (ng * H + y) * Wo;
      for (int64_t ox = 0; ox < Wo; ++ox) {
        const Window& col = col_windows[static_cast<size_t>(ox)];
        float acc = 0.0f;
        for (int64_t kx = col.lo; kx < col.hi; ++kx) acc += abs_row[col.start + kx * dw];
        dst[ox] = acc;
      }
    }
  });
  // 2. ratio = S / (D + eps), S streamed over the group's output channels by blocks of positions,
  //    D the box-sum of row_box along y.
  parallel.run(N * G * out_blocks, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ng = t / out_blocks, n = ng / G, j = ng % G;
      const int64_t begin = (t % out_blocks) * kBlock, len = std::min(out_hw, begin + kBlock) - begin;
      float* dst = ratio.data() + ng * out_hw + begin;
      std::fill(dst, dst + len, 0.0f);
      for (int64_t k = j * Kg; k < (j + 1) * Kg; ++k) {
        const float* gr = g + (n * K + k) * out_hw + begin;
        const float* zr = z + (n * K + k) * out_hw + begin;
        for (int64_t i = 0; i < len; ++i) dst[i] += gr[i] * zr[i];
      }
      const float* rb = row_box.data() + ng * H * Wo;
      for (int64_t i = 0; i < len; ++i) {
        const int64_t oy = (begin + i) / Wo, ox = (begin + i) % Wo;
        const Window& row = row_windows[static_cast<size_t>(oy)];
        float d = 0.0f;
        for (int64_t ky = row.lo; ky < row.hi; ++ky) d += rb[(row.start + ky * dh) * Wo + ox];
        dst[i] /= d + epsilon;
      }
    }
  });
  // 3. per output row: spread the ratio along x onto the input columns.
  parallel.run(N * G * Ho, [&](int64_t t0, int64_t t1) {
    const int64_t* offset = col_cover.offset.data();
    const int64_t* window = col_cover.window.data();
    for (int64_t t = t0; t < t1; ++t) {
      const float* r = ratio.data() + t * Wo;
      float* dst = row_spread.data() + t * W;
      for (int64_t x = 0; x < W; ++x) {
        float acc = 0.0f;
        for (int64_t e = offset[x]; e < offset[x + 1]; ++e) acc += r[window[e]];
        dst[x] = acc;
      }
    }
  });
  // 4. out[n, c, q] = sign(a) * (row_spread summed along y), by blocks of input rows.
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(H, kBlock / std::max<int64_t>(W, 1)));
  const int64_t row_blocks = (H + rows - 1) / rows;
  parallel.run(N * G * row_blocks, [&](int64_t t0, int64_t t1) {
    std::vector<float> spread(static_cast<size_t>(rows * W));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ng = t / row_blocks, n = ng / G, j = ng % G;
      const int64_t y0 = (t % row_blocks) * rows, y1 = std::min(H, y0 + rows);
      const float* rs = row_spread.data() + ng * Ho * W;
      std::fill(spread.begin(), spread.end(), 0.0f);
      for (int64_t y = y0; y < y1; ++y) {
        float* sp = spread.data() + (y - y0) * W;
        for (int64_t e = row_cover.offset[y]; e < row_cover.offset[y + 1]; ++e) {
          const float* row = rs + row_cover.window[e] * W;
          for (int64_t x = 0; x < W; ++x) sp[x] += row[x];
        }
      }
      const int64_t len = (y1 - y0) * W;
      for (int64_t c = j * Cg; c < (j + 1) * Cg; ++c) {
        const float* in = a + (n * C + c) * in_hw + y0 * W;
        float* dst = out + (n * C + c) * in_hw + y0 * W;
        for (int64_t i = 0; i < len; ++i) {
          dst[i] = static_cast<float>((in[i] > 0.0f) - (in[i] < 0.0f)) * spread[i];
        }
      }
    }
  });
}

}  // namespace onnx_saliency
