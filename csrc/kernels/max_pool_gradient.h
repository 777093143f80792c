// MaxPoolGradient: the gradient of a 2-D MaxPool, routed to each window's first maximum
// (row-major scan, strictly greater wins: ONNX Runtime's and PyTorch's tie rule), with the
// argmax recomputed from the pool's input instead of read from an Indices tensor.
//
// Inputs (NCHW, float32, contiguous):
//   x  [N, C, H,  W ]  the pool's input
//   g  [N, C, Ho, Wo]  backward signal at the pool's output
// Output: dx [N, C, H, W], dx[p] = Σ over windows w whose first maximum is p of g[w].
// Window (oy, ox) reads x[oy·s − pad_top + i·d, ox·s − pad_left + j·d] for taps (i, j) inside x;
// padding never wins; a window entirely in the padding routes nothing. Ho, Wo are taken from g
// (floor or ceil mode alike).
#pragma once

#include <cstdint>
#include <string>

#include "geometry.h"
#include "parallel.h"

namespace onnx_saliency {

// Checks shapes and geometry; returns an empty string when valid, else one sentence.
std::string max_pool_gradient_check(const int64_t x_shape[4], const int64_t g_shape[4],
                                    const ConvGeometry& geo);

// CPU: one (n, c) plane per task, windows in order, so sums are deterministic. Window maxima are
// found separably (first maxima along each row's window columns, then down the window's rows):
// the same position as the row-major scan for every input without NaN; with NaN in a window the
// chosen position may differ (never out of the window).
void max_pool_gradient_cpu(const float* x, const int64_t x_shape[4], const float* g,
                           const int64_t g_shape[4], const ConvGeometry& geo, float* dx,
                           const Parallel& parallel = ThreadParallel());

// MaxPoolRelevance: TSGB's relevance at a MaxPool's input when the signal at its output is
// sign(p) ⊙ s, s one map per window shared by the channels (a TSGB-Conv after the pool):
//   x [N, C, H, W]  the pool's input;  s [N, 1, Ho, Wo]
//   out [N, 1, H, W], out[q] = Σ_c Σ over windows w of channel c whose first maximum is q of
//   s[w]·|x[c, q]|  = Σ_c x ⊙ MaxPoolGradient(x, sign(p) ⊙ s), without the channels.
std::string max_pool_relevance_check(const int64_t x_shape[4], const int64_t s_shape[4],
                                     const ConvGeometry& geo);
// CPU: one task per (image, block of input rows), channels in order: deterministic sums.
void max_pool_relevance_cpu(const float* x, const int64_t x_shape[4], const float* s,
                            const int64_t s_shape[4], const ConvGeometry& geo, float* out,
                            const Parallel& parallel = ThreadParallel());
// CUDA: one thread per output location, gathering over channels and windows (no atomics).
std::string max_pool_relevance_cuda(const float* x, const int64_t x_shape[4], const float* s,
                                    const int64_t s_shape[4], const ConvGeometry& geo, float* out,
                                    void* stream);

// The CUDA twin (max_pool_gradient.cu): one thread per input location gathers from the windows
// that contain it (no atomics: deterministic). Returns "" or the CUDA error.
std::string max_pool_gradient_cuda(const float* x, const int64_t x_shape[4], const float* g,
                                   const int64_t g_shape[4], const ConvGeometry& geo, float* dx,
                                   void* stream);

}  // namespace onnx_saliency
