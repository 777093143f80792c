// NormGrad: per-location weight-gradient norms (docs/methods.md §1), plain C++ over pointers.
//
// Inputs (NCHW, float32, contiguous):
//   g  [N, K, Ho, Wo]  backward signal at the layer's output
//   a  [N, C, H,  W ]  activation at the layer's input (identity/selective: the tapped tensor,
//                      same shape as g)
// Output: out [N, 1, Ho, Wo]
//   identity:  out = ||g_u||_2 * ||a_u||_2                      (virtual 1x1 identity conv)
//   conv:      out = ||g_v||_2 * ||P_k(a)_v||_2                 (the real conv's k x k patch,
//              ||P_k(a)_v||^2 = box-sum of sum_c a^2 over the strided, padded, dilated window)
//   selective: out = || max(a_u * g_u, 0) ||_2                  (elementwise over channels)
#pragma once

#include <cstdint>
#include <string>

#include "geometry.h"
#include "parallel.h"

namespace onnx_saliency {

enum class NormGradMode { Identity = 0, Conv = 1, Selective = 2 };

// The mode named `name` ("identity", "conv" or "selective"); "" or one sentence.
std::string normgrad_mode(const std::string& name, NormGradMode& mode);

// Checks mode, shapes and geometry (bounded in every mode); "" when valid, else one sentence.
std::string normgrad_check(const int64_t g_shape[4], const int64_t a_shape[4],
                           const ConvGeometry& geo, NormGradMode mode);

// Computes the map on the CPU; call normgrad_check first. Loops run on `parallel`; an empty g or a
// gives zeros.
void normgrad_cpu(const float* g, const int64_t g_shape[4], const float* a,
                  const int64_t a_shape[4], const ConvGeometry& geo, NormGradMode mode,
                  float* out, const Parallel& parallel = ThreadParallel());

// The CUDA twin (normgrad.cu): device pointers, enqueued on `stream` (a cudaStream_t).
// Returns an empty string, or the CUDA error. Only defined when built with CUDA.
std::string normgrad_cuda(const float* g, const int64_t g_shape[4], const float* a,
                          const int64_t a_shape[4], const ConvGeometry& geo, NormGradMode mode,
                          float* out, void* stream);

}  // namespace onnx_saliency
