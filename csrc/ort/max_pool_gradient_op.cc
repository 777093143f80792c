// ai.onnx_saliency::MaxPoolGradient and ::MaxPoolRelevance (CPU and CUDA side by side), thin
// adapters over csrc/kernels/max_pool_gradient.
//   MaxPoolGradient   inputs x [N,C,H,W] (the pool's input), g [N,C,Ho,Wo]
//                     output dx [N,C,H,W], g routed to each window's first maximum
//   MaxPoolRelevance  inputs x [N,C,H,W], s [N,1,Ho,Wo]
//                     output [N,1,H,W], Σ_c of s·|x| routed to each window's first maximum
//   attrs (both): kernel_shape, strides, pads, dilations (as the MaxPool's; defaults 1x1, 1, 0, 1);
//   all float32.
#include "max_pool_gradient.h"
#include "ort_common.h"

#include <type_traits>

namespace onnx_saliency::ort {
namespace {

// The two ops differ in their check, their output shape and the kernel they call.
struct Gradient {
  static constexpr const char* kOp = "MaxPoolGradient";
  static constexpr const char* kInputs = "MaxPoolGradient: expects 2 inputs (x, g).";
  static std::string check(const int64_t* xs, const int64_t* gs, const ConvGeometry& geo) {
    return max_pool_gradient_check(xs, gs, geo);
  }
  static std::vector<int64_t> out_shape(const std::vector<int64_t>& xs) { return xs; }
  static void cpu(const float* x, const int64_t* xs, const float* g, const int64_t* gs,
                  const ConvGeometry& geo, float* out, const Parallel& parallel) {
    max_pool_gradient_cpu(x, xs, g, gs, geo, out, parallel);
  }
  static std::string cuda(const float* x, const int64_t* xs, const float* g, const int64_t* gs,
                          const ConvGeometry& geo, float* out, void* stream) {
    return max_pool_gradient_cuda(x, xs, g, gs, geo, out, stream);
  }
};

struct Relevance {
  static constexpr const char* kOp = "MaxPoolRelevance";
  static constexpr const char* kInputs = "MaxPoolRelevance: expects 2 inputs (x, s).";
  static std::string check(const int64_t* xs, const int64_t* ss, const ConvGeometry& geo) {
    return max_pool_relevance_check(xs, ss, geo);
  }
  static std::vector<int64_t> out_shape(const std::vector<int64_t>& xs) {
    return {xs[0], 1, xs[2], xs[3]};
  }
  static void cpu(const float* x, const int64_t* xs, const float* s, const int64_t* ss,
                  const ConvGeometry& geo, float* out, const Parallel& parallel) {
    max_pool_relevance_cpu(x, xs, s, ss, geo, out, parallel);
  }
  static std::string cuda(const float* x, const int64_t* xs, const float* s, const int64_t* ss,
                          const ConvGeometry& geo, float* out, void* stream) {
    return max_pool_relevance_cuda(x, xs, s, ss, geo, out, stream);
  }
};

template <class Kind, bool Cuda>
struct MaxPoolKernel {
  ConvGeometry geo;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(Kind::kOp, [&]() -> OrtStatusPtr {
      Ort::KernelContext ctx(context);
      if (ctx.GetInputCount() != 2) return error(Kind::kInputs);
      std::vector<int64_t> xs, gs;
      std::string err;
      if (!float4d(ctx.GetInput(0), Kind::kOp, "x", xs, err) ||
          !float4d(ctx.GetInput(1), Kind::kOp, "the second input", gs, err)) {
        return error(err);
      }
      err = Kind::check(xs.data(), gs.data(), geo);
      if (!err.empty()) return error(err);
      auto out = ctx.GetOutput(0, Kind::out_shape(xs));
      const float* x = ctx.GetInput(0).GetTensorData<float>();
      const float* g = ctx.GetInput(1).GetTensorData<float>();
      float* result = out.template GetTensorMutableData<float>();
      if constexpr (Cuda) {
        err = Kind::cuda(x, xs.data(), g, gs.data(), geo, result, ctx.GetGPUComputeStream());
        return err.empty() ? nullptr : failure(err);
      } else {
        Kind::cpu(x, xs.data(), g, gs.data(), geo, result, OrtParallel(ctx));
        return nullptr;
      }
    });
  }
};

template <class Kind>
struct MaxPoolOp {
  template <bool Cuda>
  struct For : FloatOp<For<Cuda>, MaxPoolKernel<Kind, Cuda>, Cuda, 2> {
    OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
      return guarded(Kind::kOp, [&]() -> OrtStatusPtr {
        ConvGeometry geo;
        const std::string err = read_geometry(Kind::kOp, info, geo);
        if (!err.empty()) return error(err);
        *kernel = new MaxPoolKernel<Kind, Cuda>{geo};
        return nullptr;
      });
    }
    const char* GetName() const { return Kind::kOp; }

    static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) {
      return guarded(Kind::kOp, [&]() -> OrtStatusPtr {
        if (ctx.GetInputCount() != 2) return error(Kind::kInputs);
        auto x = ctx.GetInputShape(0);
        if (x.size() != 4) return error(std::string(Kind::kOp) + ": input x must be 4-D [N,C,H,W].");
        if constexpr (std::is_same_v<Kind, Relevance>) x[1] = Ort::ShapeInferContext::SymbolicInteger(int64_t{1});
        return ctx.SetOutputShape(0, unknown_dims_as_symbols(x)).release();
      });
    }
  };
};

}  // namespace

void add_max_pool_gradient_ops(Ort::CustomOpDomain& domain) {
  add_cpu_and_cuda<MaxPoolOp<Gradient>::For>(domain);
  add_cpu_and_cuda<MaxPoolOp<Relevance>::For>(domain);
}

}  // namespace onnx_saliency::ort
