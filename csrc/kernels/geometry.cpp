#include "geometry.h"

#include <cmath>
#include <sstream>

namespace onnx_saliency {

bool count_fits(std::initializer_list<int64_t> dims) {
  int64_t count = 1;
  for (const int64_t d : dims) {
    if (d > 1 && (__builtin_mul_overflow(count, d, &count) || count > kMaxElements)) return false;
  }
  return true;
}

std::string check_shape(const char* op, const char* name, const int64_t shape[4]) {
  std::ostringstream msg;
  for (int i = 0; i < 4; ++i) {
    if (shape[i] < 0) {
      msg << op << ": input " << name << " has a negative dimension (" << shape[i] << ").";
      return msg.str();
    }
  }
  if (!count_fits({shape[0], shape[1], shape[2], shape[3]})) {
    msg << op << ": input " << name << " is too large (its dims multiply to more than 2^60).";
    return msg.str();
  }
  return "";
}

std::string check_attribute(const char* op, const std::string& name, int64_t value,
                            int64_t lowest) {
  if (value >= lowest && value <= kMaxAttribute) return "";
  std::ostringstream msg;
  msg << op << ": " << name << " must be " << (lowest > 0 ? "positive" : "non-negative")
      << " and at most " << kMaxAttribute << ", got " << value << ".";
  return msg.str();
}

namespace {

// check_attribute for values[0 .. n) of attribute `name`.
std::string check_values(const char* op, const char* name, const int64_t* values, int n,
                         int64_t lowest) {
  for (int i = 0; i < n; ++i) {
    std::string err =
        check_attribute(op, std::string(name) + "[" + std::to_string(i) + "]", values[i], lowest);
    if (!err.empty()) return err;
  }
  return "";
}

}  // namespace

std::string check_attributes(const char* op, const ConvGeometry& geo) {
  std::string err = check_values(op, "kernel_shape", geo.kernel, 2, 1);
  if (err.empty()) err = check_values(op, "strides", geo.strides, 2, 1);
  if (err.empty()) err = check_values(op, "pads", geo.pads, 4, 0);
  if (err.empty()) err = check_values(op, "dilations", geo.dilations, 2, 1);
  return err;
}

std::string check_epsilon(const char* op, float epsilon) {
  if (std::isfinite(epsilon) && epsilon >= 0.0f) return "";
  std::ostringstream msg;
  msg << op << ": epsilon must be finite and non-negative, got " << epsilon << ".";
  return msg.str();
}

bool window_span(int64_t in, int64_t k, int64_t p_begin, int64_t p_end, int64_t d, int64_t& span) {
  int64_t padded, extent;  // in + pads, and the dilated kernel's extent d·(k − 1) + 1
  return !__builtin_add_overflow(in, p_begin, &padded) &&
         !__builtin_add_overflow(padded, p_end, &padded) &&
         !__builtin_mul_overflow(d, k - 1, &extent) &&
         !__builtin_add_overflow(extent, 1, &extent) &&
         !__builtin_sub_overflow(padded, extent, &span) && span >= 0;
}

int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p_begin, int64_t p_end,
                      int64_t d) {
  int64_t span;
  if (s < 1 || !window_span(in, k, p_begin, p_end, d, span)) return -1;
  return span / s + 1;  // span ≥ 0: the division is a floor
}

std::string check_window_fits(const char* op, const ConvGeometry& geo, int axis, int64_t in,
                              int64_t& span) {
  if (window_span(in, geo.kernel[axis], geo.pads[axis], geo.pads[axis + 2], geo.dilations[axis],
                  span)) {
    return "";
  }
  std::ostringstream msg;
  msg << op << ": on axis " << 2 + axis << " the dilated kernel (" << geo.kernel[axis]
      << " taps, dilation " << geo.dilations[axis] << ") is larger than the padded input ("
      << in << " + pads " << geo.pads[axis] << " and " << geo.pads[axis + 2] << ").";
  return msg.str();
}

std::string check_geometry(const char* op, const ConvGeometry& geo, int64_t in_h, int64_t in_w,
                           int64_t out_h, int64_t out_w) {
  std::string err = check_attributes(op, geo);
  if (!err.empty()) return err;
  const int64_t in[2] = {in_h, in_w}, out[2] = {out_h, out_w};
  for (int i = 0; i < 2; ++i) {
    int64_t span;
    err = check_window_fits(op, geo, i, in[i], span);
    if (!err.empty()) return err;
    const int64_t want = span / geo.strides[i] + 1;
    if (want != out[i]) {
      std::ostringstream msg;
      msg << op << ": the output-side tensor has spatial size " << out[i] << " on axis " << 2 + i
          << " but the convolution of the input-side tensor gives " << want << ".";
      return msg.str();
    }
  }
  return "";
}

std::vector<Window> windows_along(int64_t out, int64_t size, int64_t k, int64_t s, int64_t p,
                                  int64_t d) {
  std::vector<Window> windows(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    windows[static_cast<size_t>(o)] = window_at(o, size, k, s, p, d);
  }
  return windows;
}

}  // namespace onnx_saliency
