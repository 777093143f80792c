// RectifiedConvTranspose: the TSGB-Conv backward of a convolution, fused in one op (docs/methods.md §5).
//
// Inputs (NCHW, float32, contiguous):
//   g  [N, K, Ho, Wo]  modified backward signal at the conv's output (ĝ_z)
//   z  [N, K, Ho, Wo]  the conv's forward output, bias included
//   a  [N, C, H,  W ]  the conv's forward input
// Geometry: the conv's kernel_shape, strides, pads, dilations and group (K and C divisible by
// group; Ho, Wo = the conv output size of H, W). epsilon: stabiliser (TSGB uses 1e-10).
// Output: out [N, C, H, W], for channel c of group j (c in j's C/group input channels):
//   S_j(v) = sum_{k in j} g[k, v] * z[k, v]                 relevance of output location v
//   D_j(v) = sum_{q in window(v)} sum_{c' in j} |a[c', q]|   (box-sum of the group's |a|)
//   out[c, q] = sign(a[c, q]) * sum_{v : q in window(v)} S_j(v) / (D_j(v) + epsilon)
// i.e. sign(a) * ConvTranspose(S / (D + eps), ones_{k x k}) cropped to a's size. Conservation:
// sum a * out = sum_v S(v) * D(v) / (D(v) + eps) ~= sum g * z. The weights enter only through z.
#pragma once

#include <cstdint>
#include <string>

#include "geometry.h"
#include "parallel.h"

namespace onnx_saliency {

// Checks shapes, group, epsilon and geometry; "" when valid, else one sentence.
std::string rectified_conv_transpose_check(const int64_t g_shape[4], const int64_t z_shape[4],
                                           const int64_t a_shape[4], const ConvGeometry& geo,
                                           int64_t group, float epsilon);

// Computes out on the CPU; call the check first. Loops run on `parallel`; an empty g gives zeros.
void rectified_conv_transpose_cpu(const float* g, const float* z, const int64_t g_shape[4],
                                  const float* a, const int64_t a_shape[4],
                                  const ConvGeometry& geo, int64_t group, float epsilon,
                                  float* out, const Parallel& parallel = ThreadParallel());

// The CUDA twin (rectified_conv_transpose.cu): device pointers, enqueued on `stream`.
// Returns an empty string, or the CUDA error. Only defined when built with CUDA.
std::string rectified_conv_transpose_cuda(const float* g, const float* z,
                                          const int64_t g_shape[4], const float* a,
                                          const int64_t a_shape[4], const ConvGeometry& geo,
                                          int64_t group, float epsilon, float* out, void* stream);

}  // namespace onnx_saliency
