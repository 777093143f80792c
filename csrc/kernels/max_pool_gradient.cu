// CUDA twins of max_pool_gradient.cpp: one thread per input location sums g (MaxPoolGradient) or
// s·|x| over the channels (MaxPoolRelevance) over the windows that contain it and whose first
// maximum it is (gather: no atomics, deterministic).
#include "cuda_check.cuh"
#include "max_pool_gradient.h"

namespace onnx_saliency {
namespace {

// The first maximum (row-major) of the window starting at (y0, x0) over the taps inside the
// plane only (bounded by H · W, whatever the kernel's size); -1 when none.
__device__ int64_t window_argmax(const float* xp, int64_t H, int64_t W, int64_t y0, int64_t x0,
                                 const ConvGeometry& geo) {
  const int64_t dh = geo.dilations[0], dw = geo.dilations[1];
  const Window row = taps_inside(y0, geo.kernel[0], dh, H);
  const Window col = taps_inside(x0, geo.kernel[1], dw, W);
  int64_t best = -1;
  float best_value = 0.f;
  for (int64_t i = row.lo; i < row.hi; ++i) {
    const int64_t y = y0 + i * dh;
    for (int64_t j = col.lo; j < col.hi; ++j) {
      const int64_t x = x0 + j * dw;
      const float v = xp[y * W + x];
      if (best < 0 || v > best_value) {
        best = y * W + x;
        best_value = v;
      }
    }
  }
  return best;
}

// Σ w[window] over the windows containing input (y, xx) (= q in the plane) whose first maximum
// is q: the windows' weights routed back to q.
__device__ float routed(const float* xp, const float* w, int64_t q, int64_t y, int64_t xx,
                        int64_t H, int64_t W, int64_t Ho, int64_t Wo, const ConvGeometry& geo) {
  int64_t oy0, oy1, ox0, ox1;
  windows_covering(y, geo.kernel[0], geo.strides[0], geo.pads[0], geo.dilations[0], Ho, oy0, oy1);
  windows_covering(xx, geo.kernel[1], geo.strides[1], geo.pads[1], geo.dilations[1], Wo, ox0, ox1);
  float sum = 0.f;
  for (int64_t oy = oy0; oy <= oy1; ++oy) {
    const int64_t y0 = oy * geo.strides[0] - geo.pads[0];
    if ((y - y0) % geo.dilations[0] != 0) continue;
    for (int64_t ox = ox0; ox <= ox1; ++ox) {
      const int64_t x0 = ox * geo.strides[1] - geo.pads[1];
      if ((xx - x0) % geo.dilations[1] != 0) continue;
      if (window_argmax(xp, H, W, y0, x0, geo) == q) sum += w[oy * Wo + ox];
    }
  }
  return sum;
}

__global__ void gather_kernel(const float* x, const float* g, int64_t planes, int64_t H, int64_t W,
                              int64_t Ho, int64_t Wo, ConvGeometry geo, float* dx) {
  const int64_t hw = H * W;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < planes * hw;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = t / hw, q = t % hw;
    dx[t] = routed(x + p * hw, g + p * Ho * Wo, q, q / W, q % W, H, W, Ho, Wo, geo);
  }
}

__global__ void relevance_kernel(const float* x, const float* s, int64_t N, int64_t C, int64_t H,
                                 int64_t W, int64_t Ho, int64_t Wo, ConvGeometry geo, float* out) {
  const int64_t hw = H * W;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * hw;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / hw, q = t % hw;
    float sum = 0.f;
    for (int64_t c = 0; c < C; ++c) {
      const float* xp = x + (n * C + c) * hw;
      sum += routed(xp, s + n * Ho * Wo, q, q / W, q % W, H, W, Ho, Wo, geo) * fabsf(xp[q]);
    }
    out[t] = sum;
  }
}

}  // namespace

std::string max_pool_relevance_cuda(const float* x, const int64_t x_shape[4], const float* s,
                                    const int64_t s_shape[4], const ConvGeometry& geo, float* out,
                                    void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t N = x_shape[0], H = x_shape[2], W = x_shape[3];
  if (N * H * W == 0) return "";
  relevance_kernel<<<grid_for(N * H * W), kThreads, 0, stream>>>(
      x, s, N, x_shape[1], H, W, s_shape[2], s_shape[3], geo, out);
  return cuda_error("MaxPoolRelevance", cudaGetLastError());
}

std::string max_pool_gradient_cuda(const float* x, const int64_t x_shape[4], const float* g,
                                   const int64_t g_shape[4], const ConvGeometry& geo, float* dx,
                                   void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t planes = x_shape[0] * x_shape[1], H = x_shape[2], W = x_shape[3];
  if (planes * H * W == 0) return "";
  gather_kernel<<<grid_for(planes * H * W), kThreads, 0, stream>>>(x, g, planes, H, W, g_shape[2],
                                                                   g_shape[3], geo, dx);
  return cuda_error("MaxPoolGradient", cudaGetLastError());
}

}  // namespace onnx_saliency
