// Shared helpers of the CUDA twins: launch geometry and error strings.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace onnx_saliency {

constexpr int kThreads = 256;

inline unsigned int grid_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}

inline std::string cuda_error(const char* op, cudaError_t err) {
  if (err == cudaSuccess) return "";
  return std::string(op) + ": CUDA error: " + cudaGetErrorString(err);
}

}  // namespace onnx_saliency
