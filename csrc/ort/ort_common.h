// Shared pieces of the ONNX Runtime adapters: attribute reading with defaults, shape checks and
// error statuses. Every failure becomes an OrtStatus; nothing throws across the C boundary.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <string>
#include <vector>

#include "geometry.h"
#include "parallel.h"

namespace onnx_saliency::ort {

constexpr const char* kDomain = "ai.onnx_saliency";
constexpr const char* kCpu = "CPUExecutionProvider";
constexpr const char* kCuda = "CUDAExecutionProvider";

inline OrtStatusPtr error(const std::string& msg) {
  return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str());
}
inline OrtStatusPtr failure(const std::string& msg) {
  return Ort::GetApi().CreateStatus(ORT_FAIL, msg.c_str());
}

// Typed attribute readers: `value` keeps its default when attribute `name` is absent; returns ""
// or, when it is set with another type, one sentence naming `op` and the attribute.
std::string read_attr(const OrtKernelInfo* info, const char* op, const char* name, int64_t& value);
std::string read_attr(const OrtKernelInfo* info, const char* op, const char* name, float& value);
std::string read_attr(const OrtKernelInfo* info, const char* op, const char* name,
                      std::string& value);
std::string read_attr(const OrtKernelInfo* info, const char* op, const char* name,
                      std::vector<int64_t>& value);

// Fills a geometry from kernel_shape/strides/pads/dilations and checks it (check_attributes);
// returns "" or one sentence.
std::string read_geometry(const char* op, const OrtKernelInfo* info, ConvGeometry& geo);

// The shape of input `i` if it is a 4-D float32 tensor, else an error sentence in `err`.
bool float4d(const Ort::ConstValue& value, const char* op, const char* what,
             std::vector<int64_t>& shape, std::string& err);

// A shape for ShapeInferContext::SetOutputShape with every unknown dimension (reported by ORT as
// int -1) replaced by a fresh symbol: an int -1 would be taken as a real size by later passes.
Ort::ShapeInferContext::Shape unknown_dims_as_symbols(const Ort::ShapeInferContext::Shape& shape);

// Runs `body` and turns any C++ exception into an ORT status.
template <class Body>
OrtStatusPtr guarded(const char* op, Body body) noexcept {
  try {
    return body();
  } catch (const Ort::Exception& e) {
    return failure(std::string(op) + ": " + e.what());
  } catch (const std::exception& e) {
    return failure(std::string(op) + ": " + e.what());
  } catch (...) {
    return failure(std::string(op) + ": unknown error.");
  }
}

// The kernels' parallel loops on ONNX Runtime's intra-op thread pool (KernelContext_ParallelFor,
// C API >= 17), so they share the cores with ORT instead of competing with its spinning workers.
class OrtParallel final : public Parallel {
 public:
  explicit OrtParallel(const Ort::KernelContext& ctx) : ctx_(ctx) {}
  void run(int64_t total, const RangeBody& body) const override;

 private:
  const Ort::KernelContext& ctx_;
};

// What every op of this library declares alike: `Inputs` float32 inputs and one float32 output,
// for the CPU or (Cuda) the CUDA provider. Op adds GetName, CreateKernelV2 and InferOutputShape.
template <class Op, class Kernel, bool Cuda, size_t Inputs>
struct FloatOp : Ort::CustomOpBase<Op, Kernel, true> {
  const char* GetExecutionProviderType() const { return Cuda ? kCuda : kCpu; }
  size_t GetInputTypeCount() const { return Inputs; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

// Adds Op<false> (CPU) and, when built with CUDA, Op<true> to `domain`; ORT keeps pointers, so the
// instances live for the process.
template <template <bool> class Op>
void add_cpu_and_cuda(Ort::CustomOpDomain& domain) {
  static Op<false> cpu;
  domain.Add(&cpu);
#ifdef OSAL_WITH_CUDA
  static Op<true> cuda;
  domain.Add(&cuda);
#endif
}

// Op registration entry points, one per op file.
void add_normgrad_ops(Ort::CustomOpDomain& domain);
void add_rectified_conv_transpose_ops(Ort::CustomOpDomain& domain);
void add_max_pool_gradient_ops(Ort::CustomOpDomain& domain);

}  // namespace onnx_saliency::ort
