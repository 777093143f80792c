// CUDA twin of rectified_conv_transpose.cpp: three launches (group |a| sums, ratio S/(D+eps),
// gather over covering windows + sign), each one thread per location, coalesced over space.
#include "cuda_check.cuh"
#include "rectified_conv_transpose.h"

namespace onnx_saliency {
namespace {

struct Dims {
  int64_t N, K, Ho, Wo, C, H, W, G;
};

__global__ void abs_sum_kernel(const float* a, Dims d, float* abs_sum) {
  const int64_t hw = d.H * d.W, Cg = d.C / d.G;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < d.N * d.G * hw;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ng = t / hw, q = t % hw, n = ng / d.G, j = ng % d.G;
    const float* src = a + (n * d.C + j * Cg) * hw + q;
    float s = 0.f;
    for (int64_t c = 0; c < Cg; ++c) s += fabsf(src[c * hw]);
    abs_sum[t] = s;
  }
}

__global__ void ratio_kernel(const float* g, const float* z, const float* abs_sum, Dims d,
                             ConvGeometry geo, float epsilon, float* ratio) {
  const int64_t out_hw = d.Ho * d.Wo, in_hw = d.H * d.W, Kg = d.K / d.G;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < d.N * d.G * out_hw;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ng = t / out_hw, v = t % out_hw, n = ng / d.G, j = ng % d.G;
    const int64_t oy = v / d.Wo, ox = v % d.Wo;
    const int64_t base = (n * d.K + j * Kg) * out_hw + v;
    float s = 0.f;
    for (int64_t k = 0; k < Kg; ++k) s += g[base + k * out_hw] * z[base + k * out_hw];
    const float* as = abs_sum + ng * in_hw;
    const int64_t dh = geo.dilations[0], dw = geo.dilations[1];
    const Window row = window_at(oy, d.H, geo.kernel[0], geo.strides[0], geo.pads[0], dh);
    const Window col = window_at(ox, d.W, geo.kernel[1], geo.strides[1], geo.pads[1], dw);
    float den = 0.f;  // the taps inside a only: bounded by a's size, whatever the kernel's
    for (int64_t ky = row.lo; ky < row.hi; ++ky) {
      const float* line = as + (row.start + ky * dh) * d.W;
      for (int64_t kx = col.lo; kx < col.hi; ++kx) den += line[col.start + kx * dw];
    }
    ratio[t] = s / (den + epsilon);
  }
}

__global__ void spread_kernel(const float* a, const float* ratio, Dims d, ConvGeometry geo,
                              float* out) {
  const int64_t out_hw = d.Ho * d.Wo, in_hw = d.H * d.W, Cg = d.C / d.G;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < d.N * d.G * in_hw;
       t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ng = t / in_hw, q = t % in_hw, n = ng / d.G, j = ng % d.G;
    const int64_t y = q / d.W, x = q % d.W;
    const float* r = ratio + ng * out_hw;
    // the windows with a tap on (y, x), by ascending tap: at most Ho · Wo candidates
    const int64_t sh = geo.strides[0], sw = geo.strides[1], ph = geo.pads[0], pw = geo.pads[1];
    int64_t oy0, oy1, ox0, ox1;
    windows_covering(y, geo.kernel[0], sh, ph, geo.dilations[0], d.Ho, oy0, oy1);
    windows_covering(x, geo.kernel[1], sw, pw, geo.dilations[1], d.Wo, ox0, ox1);
    float acc = 0.f;
    for (int64_t oy = oy1; oy >= oy0; --oy) {
      if ((y + ph - oy * sh) % geo.dilations[0] != 0) continue;
      for (int64_t ox = ox1; ox >= ox0; --ox) {
        if ((x + pw - ox * sw) % geo.dilations[1] == 0) acc += r[oy * d.Wo + ox];
      }
    }
    const int64_t base = (n * d.C + j * Cg) * in_hw + q;
    for (int64_t c = 0; c < Cg; ++c) {
      const float av = a[base + c * in_hw];
      out[base + c * in_hw] = ((av > 0.f) - (av < 0.f)) * acc;
    }
  }
}

}  // namespace

std::string rectified_conv_transpose_cuda(const float* g, const float* z,
                                          const int64_t g_shape[4], const float* a,
                                          const int64_t a_shape[4], const ConvGeometry& geo,
                                          int64_t group, float epsilon, float* out,
                                          void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const Dims d{g_shape[0], g_shape[1], g_shape[2], g_shape[3],
               a_shape[1], a_shape[2], a_shape[3], group};
  if (d.N * d.C * d.H * d.W == 0) return "";
  if (d.K * d.Ho * d.Wo == 0) {  // no output channel: S = 0
    return cuda_error("RectifiedConvTranspose",
                      cudaMemsetAsync(out, 0, sizeof(float) * d.N * d.C * d.H * d.W, stream));
  }
  const int64_t in_n = d.N * d.G * d.H * d.W, out_n = d.N * d.G * d.Ho * d.Wo;
  float* scratch = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&scratch),
                                    sizeof(float) * static_cast<size_t>(in_n + out_n), stream);
  if (err != cudaSuccess) return cuda_error("RectifiedConvTranspose", err);
  float* abs_sum = scratch;
  float* ratio = scratch + in_n;
  abs_sum_kernel<<<grid_for(in_n), kThreads, 0, stream>>>(a, d, abs_sum);
  if (out_n > 0) {
    ratio_kernel<<<grid_for(out_n), kThreads, 0, stream>>>(g, z, abs_sum, d, geo, epsilon, ratio);
  }
  spread_kernel<<<grid_for(in_n), kThreads, 0, stream>>>(a, ratio, d, geo, out);
  err = cudaGetLastError();
  cudaFreeAsync(scratch, stream);
  return cuda_error("RectifiedConvTranspose", err);
}

}  // namespace onnx_saliency
