#include "max_pool_gradient.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace onnx_saliency {
namespace {

// The checks both pool backward ops share: no negative dimension, element counts that fit, and
// bounded attributes. "" or one sentence.
std::string geometry_problem(const char* op, const char* name, const int64_t x_shape[4],
                             const int64_t g_shape[4], const ConvGeometry& geo) {
  std::string err = check_shape(op, "x", x_shape);
  if (err.empty()) err = check_shape(op, name, g_shape);
  if (err.empty()) err = check_attributes(op, geo);
  if (!err.empty()) return err;
  if (x_shape[2] * x_shape[3] > INT32_MAX) {
    return std::string(op) + ": x's planes (H·W) must have fewer than 2^31 elements.";
  }
  return "";
}

// `name`'s spatial size (g's, or s's) one that pooling x gives, in floor or ceil mode (a ceil-mode
// runtime may drop a last window that starts in the end padding: either size is accepted).
std::string grid_problem(const char* op, const char* name, const int64_t x_shape[4],
                         const int64_t g_shape[4], const ConvGeometry& geo) {
  for (int i = 0; i < 2; ++i) {
    int64_t span;
    std::string err = check_window_fits(op, geo, i, x_shape[2 + i], span);
    if (!err.empty()) return err;
    const int64_t s = geo.strides[i], lo = span / s + 1, hi = lo + (span % s != 0);
    if (g_shape[2 + i] < lo || g_shape[2 + i] > hi) {
      return std::string(op) + ": " + name + "'s spatial dim " + std::to_string(i) + " is " +
             std::to_string(g_shape[2 + i]) + ", but pooling x gives " + std::to_string(lo) +
             (hi != lo ? " (or " + std::to_string(hi) + " in ceil mode)" : "") + ".";
    }
  }
  // the kernels' scratch: window maxima per row of x and window column
  if (!count_fits({x_shape[2], g_shape[3]})) {
    return std::string(op) + ": the scratch for these shapes has more than 2^60 elements.";
  }
  return "";
}

}  // namespace

std::string max_pool_gradient_check(const int64_t x_shape[4], const int64_t g_shape[4],
                                    const ConvGeometry& geo) {
  const char* op = "MaxPoolGradient";
  std::string err = geometry_problem(op, "g", x_shape, g_shape, geo);
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
  std::string err = geometry_problem(op, "s", x_shape, s_shape, geo);
  if (!err.empty()) return err;
  if (s_shape[1] != 1) {
    return std::string(op) + ": s must have one channel [N,1,Ho,Wo], got " +
           std::to_string(s_shape[1]) + ".";
  }
  if (s_shape[0] != x_shape[0]) return std::string(op) + ": x and s must share the batch size.";
  return grid_problem(op, "s", x_shape, s_shape, geo);
}

namespace {

// best, at := cand, cand_at where cand > best (strictly greater: the first maximum stays);
// branch-free, since on real data the comparison is unpredictable.
inline void keep_first_max(float cand, int32_t cand_at, float& best, int32_t& at) {
  const int32_t take = -static_cast<int32_t>(cand > best);
  at = (cand_at & take) | (at & ~take);
  best = cand > best ? cand : best;
}

// The first maximum, in row-major order (strictly greater wins), of every window of one plane,
// found separably: first along each input row over the windows' columns, then down each
// window's rows over those row maxima. The earliest row holding the window's maximum, and in it
// the earliest column, is the row-major first maximum: equal to a tap-by-tap scan for every
// input without NaN. Both passes run over contiguous arrays, independent across windows.
class PlaneMaxima {
 public:
  PlaneMaxima(const ConvGeometry& geo, int64_t H, int64_t W, int64_t Ho, int64_t Wo)
      : H_(H), W_(W), Wo_(Wo), kw_(geo.kernel[1]), sw_(geo.strides[1]), pl_(geo.pads[1]),
        dh_(geo.dilations[0]), dw_(geo.dilations[1]),
        rows_(windows_along(Ho, H, geo.kernel[0], geo.strides[0], geo.pads[0], dh_)),
        cols_(windows_along(Wo, W, kw_, sw_, pl_, dw_)) {
    full_begin_ = Wo;
    for (int64_t ox = 0; ox < Wo; ++ox) {  // the windows with every column tap inside the row
      const Window& c = cols_[static_cast<size_t>(ox)];
      if (c.lo == 0 && c.hi == kw_) {
        full_begin_ = std::min(full_begin_, ox);
        full_end_ = ox + 1;
      }
    }
    if (full_end_ <= full_begin_) full_begin_ = full_end_ = 0;
  }

  // The plane rows that windows [oy0, oy1) read: [first, last) (empty when none).
  void row_span(int64_t oy0, int64_t oy1, int64_t& first, int64_t& last) const {
    first = H_, last = 0;
    for (int64_t oy = oy0; oy < oy1; ++oy) {
      const Window& r = rows_[static_cast<size_t>(oy)];
      if (r.lo >= r.hi) continue;
      first = std::min(first, r.start + r.lo * dh_);
      last = std::max(last, r.start + (r.hi - 1) * dh_ + 1);
    }
  }

  // Windows [oy0, oy1) of plane xp: value() and position() (in the plane) per window at
  // (oy - oy0)·Wo + ox; position -1 for a window with no tap inside the plane.
  void compute(const float* xp, int64_t oy0, int64_t oy1) {
    int64_t first, last;
    row_span(oy0, oy1, first, last);
    const size_t n_rows = static_cast<size_t>(std::max<int64_t>(0, last - first));
    row_value_.resize(n_rows * static_cast<size_t>(Wo_));
    row_at_.resize(n_rows * static_cast<size_t>(Wo_));
    for (int64_t y = first; y < last; ++y) row_pass(xp, y, (y - first) * Wo_);
    const size_t n_windows = static_cast<size_t>((oy1 - oy0) * Wo_);
    value_.resize(n_windows);
    at_.resize(n_windows);
    for (int64_t oy = oy0; oy < oy1; ++oy) column_pass(oy, (oy - oy0) * Wo_, first);
  }

  const float* value() const { return value_.data(); }
  const int32_t* position() const { return at_.data(); }

 private:
  // Row maxima of plane row y over every window's column taps, into slot `slot`.
  void row_pass(const float* __restrict xp, int64_t y, int64_t slot) {
    float* __restrict v = row_value_.data() + slot;
    int32_t* __restrict a = row_at_.data() + slot;
    const float* __restrict row = xp + y * W_;
    const int32_t base = static_cast<int32_t>(y * W_);
    for (int64_t ox = 0; ox < Wo_; ++ox) {  // windows cut by the padding
      if (ox == full_begin_) ox = full_end_;
      if (ox >= Wo_) break;
      const Window& c = cols_[static_cast<size_t>(ox)];
      int32_t best = -1;
      for (int64_t j = c.lo; j < c.hi; ++j) {
        const int32_t col = static_cast<int32_t>(c.start + j * dw_);
        if (best < 0 || row[col] > row[best]) best = col;
      }
      a[ox] = best < 0 ? -1 : base + best;
      v[ox] = best < 0 ? 0.f : row[best];
    }
    switch (kw_) {  // the full windows, with the common widths unrolled
      case 2: return full_row_pass<2>(row, base, v, a);
      case 3: return full_row_pass<3>(row, base, v, a);
      default: return full_row_pass<0>(row, base, v, a);
    }
  }

  template <int KW>
  void full_row_pass(const float* __restrict row, int32_t base, float* __restrict v,
                     int32_t* __restrict a) const {
    const int32_t kw = KW > 0 ? KW : static_cast<int32_t>(kw_);
    const int32_t sw = static_cast<int32_t>(sw_), dw = static_cast<int32_t>(dw_);
    // the first full window's start, in int64: full windows start inside the row, ox·sw may not
    const int32_t start = static_cast<int32_t>(full_begin_ * sw_ - pl_);
    for (int32_t ox = static_cast<int32_t>(full_begin_); ox < full_end_; ++ox) {
      const int32_t col = start + (ox - static_cast<int32_t>(full_begin_)) * sw;
      float best = row[col];
      int32_t at = col;
      for (int32_t j = 1; j < kw; ++j) keep_first_max(row[col + j * dw], col + j * dw, best, at);
      v[ox] = best;
      a[ox] = base + at;
    }
  }

  // Window row oy down its row taps over the row maxima, into slot `slot`; `first`: the plane
  // row of row slot 0.
  void column_pass(int64_t oy, int64_t slot, int64_t first) {
    float* __restrict v = value_.data() + slot;
    int32_t* __restrict a = at_.data() + slot;
    const Window& r = rows_[static_cast<size_t>(oy)];
    if (r.lo >= r.hi) {
      std::fill(a, a + Wo_, -1);
      return;
    }
    const int64_t y0 = r.start + r.lo * dh_ - first;
    std::copy_n(row_value_.data() + y0 * Wo_, Wo_, v);
    std::copy_n(row_at_.data() + y0 * Wo_, Wo_, a);
    for (int64_t i = r.lo + 1; i < r.hi; ++i) {
      const int64_t y = r.start + i * dh_ - first;
      const float* __restrict rv = row_value_.data() + y * Wo_;
      const int32_t* __restrict ra = row_at_.data() + y * Wo_;
      for (int64_t ox = 0; ox < Wo_; ++ox) keep_first_max(rv[ox], ra[ox], v[ox], a[ox]);
    }
  }

  int64_t H_, W_, Wo_, kw_, sw_, pl_, dh_, dw_;
  std::vector<Window> rows_, cols_;
  int64_t full_begin_ = 0, full_end_ = 0;
  std::vector<float> row_value_, value_;
  std::vector<int32_t> row_at_, at_;
};

}  // namespace

void max_pool_gradient_cpu(const float* x, const int64_t x_shape[4], const float* g,
                           const int64_t g_shape[4], const ConvGeometry& geo, float* dx,
                           const Parallel& parallel) {
  const int64_t H = x_shape[2], W = x_shape[3], Ho = g_shape[2], Wo = g_shape[3];
  const int64_t planes = x_shape[0] * x_shape[1];
  parallel.run(planes, [&](int64_t begin, int64_t end) {
    PlaneMaxima maxima(geo, H, W, Ho, Wo);
    for (int64_t p = begin; p < end; ++p) {
      const float* gp = g + p * Ho * Wo;
      float* dp = dx + p * H * W;
      std::fill(dp, dp + H * W, 0.f);
      maxima.compute(x + p * H * W, 0, Ho);
      const int32_t* pos = maxima.position();
      for (int64_t w = 0; w < Ho * Wo; ++w) {  // windows in order: deterministic sums
        if (pos[w] >= 0) dp[pos[w]] += gp[w];
      }
    }
  });
}

void max_pool_relevance_cpu(const float* x, const int64_t x_shape[4], const float* s,
                            const int64_t s_shape[4], const ConvGeometry& geo, float* out,
                            const Parallel& parallel) {
  const int64_t N = x_shape[0], C = x_shape[1], H = x_shape[2], W = x_shape[3];
  const int64_t Ho = s_shape[2], Wo = s_shape[3];
  // One task per (image, block of input rows): it takes every window that reaches into its rows,
  // over all channels in order, and keeps the maxima that fall in them (deterministic sums; a
  // window across two blocks is scanned by both).
  constexpr int64_t kRows = 16;
  const int64_t blocks = (H + kRows - 1) / kRows;
  parallel.run(N * blocks, [&](int64_t begin, int64_t end) {
    PlaneMaxima maxima(geo, H, W, Ho, Wo);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks, y0 = (t % blocks) * kRows, y1 = std::min(H, y0 + kRows);
      float* op = out + n * H * W;
      const int64_t lo = y0 * W, hi = y1 * W;  // this task's positions in the plane
      std::fill(op + lo, op + hi, 0.f);
      int64_t oy0 = 0, oy1 = 0;  // the windows reaching into rows [y0, y1): contiguous
      for (int64_t oy = 0; oy < Ho; ++oy) {
        int64_t first, last;
        maxima.row_span(oy, oy + 1, first, last);
        if (first >= y1 || last <= y0) continue;
        if (oy1 == 0) oy0 = oy;
        oy1 = oy + 1;
      }
      const float* sp = s + n * Ho * Wo + oy0 * Wo;
      for (int64_t c = 0; c < C; ++c) {
        maxima.compute(x + (n * C + c) * H * W, oy0, oy1);
        const int32_t* pos = maxima.position();
        const float* value = maxima.value();
        for (int64_t w = 0; w < (oy1 - oy0) * Wo; ++w) {
          if (pos[w] >= lo && pos[w] < hi) op[pos[w]] += sp[w] * std::fabs(value[w]);
        }
      }
    }
  });
}

}  // namespace onnx_saliency
