// The ONNX Runtime adapters' shared pieces: attribute reading with defaults, shape checks, error
// statuses, and CustomOp<Spec>, the one adapter every op of the library is (see "The adapter"
// below). Every failure becomes an OrtStatus; nothing throws across the C boundary.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstddef>
#include <cstdint>
#include <iterator>
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

// Whether `value` (the op's input named `what` in messages) is a 4-D float32 tensor: then its
// shape is in `shape`, else one sentence is in `err`.
bool float4d(const Ort::ConstValue& value, const char* op, const char* what,
             std::vector<int64_t>& shape, std::string& err);

// A shape for ShapeInferContext::SetOutputShape with every unknown dimension (reported by ORT as
// int -1) replaced by a fresh symbol: an int -1 would be taken as a real size by later passes.
Ort::ShapeInferContext::Shape unknown_dims_as_symbols(const Ort::ShapeInferContext::Shape& shape);

// Runs `body` and turns any C++ exception (Ort::Exception included) into an ORT status.
template <class Body>
OrtStatusPtr guarded(const char* op, Body body) noexcept {
  try {
    return body();
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

// ---- The adapter ----------------------------------------------------------------------------
// Each op file (one per kernel family, CPU and CUDA side by side) defines a Spec and adds it with
// add_op<Spec>; CustomOp<Spec, Cuda> does the rest: names, types and counts, CreateKernel (reading
// and checking the attributes once, at session start), Compute (4-D float32 inputs checked, then
// the kernel's check, the output allocated and the kernel run), shape inference, and every error
// as an OrtStatus naming the op. A Spec holds only what is the op's own:
//
//   struct MyOp {
//     static constexpr const char* kName = "MyOp";
//     static constexpr Input kInputs[] = {{"x", "[N,C,H,W]"}, {"g", "[N,C,Ho,Wo]"}};
//     static constexpr Output kOutput = {0, false};  // shaped like x
//     struct Attributes { ConvGeometry geo; };        // defaults: the op's attribute defaults
//     static std::string read(const NodeAttributes& node, Attributes& at);  // "" or a sentence
//     static std::string check(const Inputs<2>& in, const Attributes& at);  // the kernel's check
//     static void cpu(const Inputs<2>& in, const Attributes& at, float* out, const Parallel& p);
//     static std::string cuda(const Inputs<2>& in, const Attributes& at, float* out, void* stream);
//   };
//
// All inputs and the one output are float32 tensors of rank 4. `cuda` is compiled into the
// library only when it is built with CUDA (OSAL_WITH_CUDA), where add_op adds the CUDA op too.

// One input: its name (in messages) and its layout (in shape inference's rank message). `what`,
// when set, names it in Compute's messages instead ("input <what> must be 4-D ...").
struct Input {
  const char* name;
  const char* layout;
  const char* what = nullptr;
};

// The output's shape: the shape of input `like`, with one channel when `one_channel`.
struct Output {
  size_t like;
  bool one_channel;
};

// The inputs Compute hands to a Spec: their shapes (4-D) for its check, and then, for its
// kernels, their data.
template <size_t N>
struct Inputs {
  std::vector<int64_t> shapes[N];
  const float* data[N] = {};
  const int64_t* shape(size_t i) const { return shapes[i].data(); }
};

// The attributes of the node a kernel is made for; messages name `op`.
struct NodeAttributes {
  const OrtKernelInfo* info;
  const char* op;

  template <class T>
  std::string read(const char* name, T& value) const { return read_attr(info, op, name, value); }
  std::string geometry(ConvGeometry& geo) const { return read_geometry(op, info, geo); }
};

template <class Spec>
constexpr size_t input_count() { return std::size(Spec::kInputs); }

// "<op>: expects <n> inputs (<names>)."
template <class Spec>
std::string input_count_error() {
  std::string names;
  for (const Input& input : Spec::kInputs) {
    names += (names.empty() ? "" : ", ") + std::string(input.name);
  }
  return std::string(Spec::kName) + ": expects " + std::to_string(input_count<Spec>()) +
         " inputs (" + names + ").";
}

// Spec's output shape from the shape `dims` of its input kOutput.like (int or symbolic dims).
template <class Spec, class Dims>
Dims output_shape(Dims dims) {
  if (Spec::kOutput.one_channel) dims[1] = typename Dims::value_type(int64_t{1});
  return dims;
}

// A kernel of Spec (one per node and provider): the node's attributes, read and checked when it
// is created; Compute checks the inputs and runs Spec's CPU or CUDA kernel.
template <class Spec, bool Cuda>
struct OpKernel {
  typename Spec::Attributes attributes;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(Spec::kName, [&]() -> OrtStatusPtr {
      constexpr size_t n = input_count<Spec>();
      Ort::KernelContext ctx(context);
      if (ctx.GetInputCount() != n) return error(input_count_error<Spec>());
      Inputs<n> in;
      std::string err;
      for (size_t i = 0; i < n; ++i) {
        const Input& input = Spec::kInputs[i];
        if (!float4d(ctx.GetInput(i), Spec::kName, input.what ? input.what : input.name,
                     in.shapes[i], err)) {
          return error(err);
        }
      }
      err = Spec::check(in, attributes);
      if (!err.empty()) return error(err);
      auto out = ctx.GetOutput(0, output_shape<Spec>(in.shapes[Spec::kOutput.like]));
      for (size_t i = 0; i < n; ++i) in.data[i] = ctx.GetInput(i).GetTensorData<float>();
      float* result = out.template GetTensorMutableData<float>();
      if constexpr (Cuda) {
        err = Spec::cuda(in, attributes, result, ctx.GetGPUComputeStream());
        return err.empty() ? nullptr : failure(err);
      } else {
        Spec::cpu(in, attributes, result, OrtParallel(ctx));
        return nullptr;
      }
    });
  }
};

// The OrtCustomOp of Spec for the CPU or (Cuda) the CUDA execution provider.
template <class Spec, bool Cuda>
struct CustomOp : Ort::CustomOpBase<CustomOp<Spec, Cuda>, OpKernel<Spec, Cuda>, true> {
  static constexpr ONNXTensorElementDataType kFloat = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;

  const char* GetName() const { return Spec::kName; }
  const char* GetExecutionProviderType() const { return Cuda ? kCuda : kCpu; }
  size_t GetInputTypeCount() const { return input_count<Spec>(); }
  ONNXTensorElementDataType GetInputType(size_t) const { return kFloat; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return kFloat; }

  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return guarded(Spec::kName, [&]() -> OrtStatusPtr {
      typename Spec::Attributes attributes;
      const std::string err = Spec::read(NodeAttributes{info, Spec::kName}, attributes);
      if (!err.empty()) return error(err);
      *kernel = new OpKernel<Spec, Cuda>{attributes};
      return nullptr;
    });
  }

  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) {
    return guarded(Spec::kName, [&]() -> OrtStatusPtr {
      if (ctx.GetInputCount() != input_count<Spec>()) return error(input_count_error<Spec>());
      const Input& like = Spec::kInputs[Spec::kOutput.like];
      auto dims = ctx.GetInputShape(Spec::kOutput.like);
      if (dims.size() != 4) {
        return error(std::string(Spec::kName) + ": input " + like.name + " must be 4-D " +
                     like.layout + ".");
      }
      return ctx.SetOutputShape(0, unknown_dims_as_symbols(output_shape<Spec>(dims))).release();
    });
  }
};

// Adds Spec's op for the CPU and, when built with CUDA, for the CUDA provider to `domain`; ORT
// keeps pointers, so the instances live for the process.
template <class Spec>
void add_op(Ort::CustomOpDomain& domain) {
  static CustomOp<Spec, false> cpu;
  domain.Add(&cpu);
#ifdef OSAL_WITH_CUDA
  static CustomOp<Spec, true> cuda;
  domain.Add(&cuda);
#endif
}

}  // namespace onnx_saliency::ort
