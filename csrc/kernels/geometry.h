// Convolution geometry shared by the kernels: 2-D kernel, strides, pads and dilations in ONNX order.
#pragma once

#include <cstdint>
#include <string>

namespace onnx_saliency {

struct ConvGeometry {
  int64_t kernel[2] = {1, 1};
  int64_t strides[2] = {1, 1};
  int64_t pads[4] = {0, 0, 0, 0};  // top, left, bottom, right (ONNX order)
  int64_t dilations[2] = {1, 1};
};

// Output spatial size of a convolution with this geometry over an input of size `in`.
inline int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p_begin, int64_t p_end,
                             int64_t d) {
  return (in + p_begin + p_end - d * (k - 1) - 1) / s + 1;
}

// Checks the geometry and that an input of spatial size (in_h, in_w) convolves to (out_h, out_w).
// Returns an empty string when valid, else one sentence starting with `op`.
std::string check_geometry(const char* op, const ConvGeometry& geo, int64_t in_h, int64_t in_w,
                           int64_t out_h, int64_t out_w);

}  // namespace onnx_saliency
