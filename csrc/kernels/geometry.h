// Convolution geometry shared by the kernels (2-D kernel, strides, pads and dilations in ONNX
// order) and the checks every op runs before a kernel touches memory, for the pybind11 and the
// ONNX Runtime adapters alike. Each check returns "" when valid, else one sentence naming the op.
//
// Once the checks pass, nothing the kernels compute overflows, and their loops are bounded by the
// sizes of the tensors actually passed: attributes are bounded, tensor sizes checked, and the
// kernels visit only the taps of a window that land inside the input (taps_inside).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define OSAL_HOST_DEVICE __host__ __device__
#else
#define OSAL_HOST_DEVICE
#endif

namespace onnx_saliency {

struct ConvGeometry {
  int64_t kernel[2] = {1, 1};
  int64_t strides[2] = {1, 1};
  int64_t pads[4] = {0, 0, 0, 0};  // top, left, bottom, right (ONNX order)
  int64_t dilations[2] = {1, 1};
};

// Bounds: kernel_shape, strides, dilations (and group) in [1, kMaxAttribute], pads in
// [0, kMaxAttribute]; a tensor's dims multiply (zeros counted as one) to at most kMaxElements.
constexpr int64_t kMaxAttribute = INT32_MAX;
constexpr int64_t kMaxElements = int64_t{1} << 60;

// Whether the product of `dims` is at most kMaxElements, zeros counted as one (so that every
// partial product of them fits too). Products of dims are computed with overflow checks.
bool count_fits(std::initializer_list<int64_t> dims);

// Input `name` of `op`: no negative dimension and an element count that fits.
std::string check_shape(const char* op, const char* name, const int64_t shape[4]);

// Integer attribute `name` of `op` within [lowest, kMaxAttribute] (lowest 1 or 0).
std::string check_attribute(const char* op, const std::string& name, int64_t value,
                            int64_t lowest);

// Every attribute of `geo` within its bounds.
std::string check_attributes(const char* op, const ConvGeometry& geo);

// epsilon (a stabiliser added to a denominator) finite and non-negative.
std::string check_epsilon(const char* op, float epsilon);

// in + p_begin + p_end − d·(k − 1) − 1, the room a window's start has along one axis; false
// when it is negative (the dilated kernel is larger than the padded input) or overflows.
bool window_span(int64_t in, int64_t k, int64_t p_begin, int64_t p_end, int64_t d, int64_t& span);

// Output size of a convolution over an input of size `in`: floor(span / s) + 1, or -1 when the
// dilated kernel is larger than the padded input (or the arithmetic overflows).
int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p_begin, int64_t p_end, int64_t d);

// `span` of window_span on axis 2 + axis (0 or 1) of an input of size `in`, or the sentence
// saying that the dilated kernel is larger than the padded input.
std::string check_window_fits(const char* op, const ConvGeometry& geo, int axis, int64_t in,
                              int64_t& span);

// check_attributes, then that an input of spatial size (in_h, in_w) convolves to (out_h, out_w).
std::string check_geometry(const char* op, const ConvGeometry& geo, int64_t in_h, int64_t in_w,
                           int64_t out_h, int64_t out_w);

// A window along one axis: its first input position (possibly in the padding) and its taps
// [lo, hi) that land inside the input.
struct Window {
  int64_t start, lo, hi;
};

// The window that starts at `start` (kernel k, dilation d) over an input of size `size`, in O(1):
// hi − lo ≤ min(k, size), however large k is.
OSAL_HOST_DEVICE inline Window taps_inside(int64_t start, int64_t k, int64_t d, int64_t size) {
  const int64_t lo = start >= 0 ? 0 : (d - 1 - start) / d;
  int64_t hi = start >= size ? 0 : (size - 1 - start) / d + 1;
  if (hi > k) hi = k;
  return {start, lo, hi > lo ? hi : lo};
}

// Window o (of out) along one axis: taps_inside(o·s − p, ...).
OSAL_HOST_DEVICE inline Window window_at(int64_t o, int64_t size, int64_t k, int64_t s, int64_t p,
                                         int64_t d) {
  return taps_inside(o * s - p, k, d, size);
}

// window_at for every window o in [0, out) (host code).
std::vector<Window> windows_along(int64_t out, int64_t size, int64_t k, int64_t s, int64_t p,
                                  int64_t d);

// The windows [first, last] (of out, along one axis) whose span reaches input position t: window
// o has a tap on t when (t + p − o·s) is a multiple of d. At most out of them.
OSAL_HOST_DEVICE inline void windows_covering(int64_t t, int64_t k, int64_t s, int64_t p,
                                              int64_t d, int64_t out, int64_t& first,
                                              int64_t& last) {
  const int64_t hi = t + p;                // o·s ≤ t + p
  const int64_t lo = t + p - d * (k - 1);  // o·s ≥ t + p − d(k−1)
  first = lo <= 0 ? 0 : (lo + s - 1) / s;
  last = hi < 0 ? -1 : hi / s;
  if (last > out - 1) last = out - 1;
}

}  // namespace onnx_saliency
