// CUDA twin of normgrad.cpp: one thread per output location, channels looped (coalesced over
// space). Identity and selective modes are one launch; conv mode adds one for sum_c a^2.
#include "cuda_check.cuh"
#include "normgrad.h"

namespace onnx_saliency {
namespace {

__global__ void pointwise_kernel(const float* g, const float* a, int64_t N, int64_t K,
                                 int64_t hw, bool selective, float* out) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * hw;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / hw, i = t % hw;
    const float* gn = g + n * K * hw + i;
    const float* an = a + n * K * hw + i;
    float gs = 0.f, as = 0.f;
    for (int64_t c = 0; c < K; ++c) {
      const float gv = gn[c * hw], av = an[c * hw];
      if (selective) {
        const float q = gv * av, p = 0.5f * (q + fabsf(q));  // max(q, 0), NaN kept (as on CPU)
        gs += p * p;
      } else {
        gs += gv * gv;
        as += av * av;
      }
    }
    out[t] = selective ? sqrtf(gs) : sqrtf(gs) * sqrtf(as);
  }
}

__global__ void sumsq_kernel(const float* x, int64_t N, int64_t C, int64_t hw, float* out) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * hw;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / hw, i = t % hw;
    const float* xn = x + n * C * hw + i;
    float s = 0.f;
    for (int64_t c = 0; c < C; ++c) s += xn[c * hw] * xn[c * hw];
    out[t] = s;
  }
}

__global__ void patch_kernel(const float* g, const float* asq, int64_t N, int64_t K, int64_t Ho,
                             int64_t Wo, int64_t H, int64_t W, ConvGeometry geo, float* out) {
  const int64_t out_hw = Ho * Wo;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N * out_hw;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / out_hw, v = t % out_hw, oy = v / Wo, ox = v % Wo;
    const float* gn = g + n * K * out_hw + v;
    float gs = 0.f;
    for (int64_t k = 0; k < K; ++k) gs += gn[k * out_hw] * gn[k * out_hw];
    const float* an = asq + n * H * W;
    const int64_t dh = geo.dilations[0], dw = geo.dilations[1];
    const Window row = window_at(oy, H, geo.kernel[0], geo.strides[0], geo.pads[0], dh);
    const Window col = window_at(ox, W, geo.kernel[1], geo.strides[1], geo.pads[1], dw);
    float patch = 0.f;  // the taps inside a only: bounded by a's size, whatever the kernel's
    for (int64_t ky = row.lo; ky < row.hi; ++ky) {
      const float* line = an + (row.start + ky * dh) * W;
      for (int64_t kx = col.lo; kx < col.hi; ++kx) patch += line[col.start + kx * dw];
    }
    out[t] = sqrtf(gs) * sqrtf(patch);
  }
}

}  // namespace

std::string normgrad_cuda(const float* g, const int64_t g_shape[4], const float* a,
                          const int64_t a_shape[4], const ConvGeometry& geo, NormGradMode mode,
                          float* out, void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const int64_t N = g_shape[0], K = g_shape[1], Ho = g_shape[2], Wo = g_shape[3];
  const int64_t C = a_shape[1], H = a_shape[2], W = a_shape[3];
  if (N * Ho * Wo == 0) return "";
  if (K == 0 || C * H * W == 0) {  // an empty g or a: every norm is 0
    return cuda_error("NormGrad", cudaMemsetAsync(out, 0, sizeof(float) * N * Ho * Wo, stream));
  }
  if (mode != NormGradMode::Conv) {
    pointwise_kernel<<<grid_for(N * Ho * Wo), kThreads, 0, stream>>>(
        g, a, N, K, Ho * Wo, mode == NormGradMode::Selective, out);
    return cuda_error("NormGrad", cudaGetLastError());
  }
  float* asq = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&asq),
                                    sizeof(float) * static_cast<size_t>(N * H * W), stream);
  if (err != cudaSuccess) return cuda_error("NormGrad", err);
  sumsq_kernel<<<grid_for(N * H * W), kThreads, 0, stream>>>(a, N, C, H * W, asq);
  patch_kernel<<<grid_for(N * Ho * Wo), kThreads, 0, stream>>>(g, asq, N, K, Ho, Wo, H, W, geo,
                                                              out);
  err = cudaGetLastError();
  cudaFreeAsync(asq, stream);
  return cuda_error("NormGrad", err);
}

}  // namespace onnx_saliency
