// ai.onnx_saliency::MaxPoolGradient (CPU and CUDA side by side), a thin adapter over
// csrc/kernels/max_pool_gradient.
//   inputs:  x [N,C,H,W] float32 (the pool's input), g [N,C,Ho,Wo] float32
//   attrs:   kernel_shape, strides, pads, dilations (as the MaxPool's; defaults 1x1, 1, 0, 1)
//   output:  dx [N,C,H,W] float32, g routed to each window's first maximum
#include "max_pool_gradient.h"
#include "ort_common.h"

namespace onnx_saliency::ort {
namespace {

constexpr const char* kOp = "MaxPoolGradient";

template <bool Cuda>
struct MaxPoolGradientKernel {
  ConvGeometry geo;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(kOp, [&]() -> OrtStatusPtr {
      Ort::KernelContext ctx(context);
      if (ctx.GetInputCount() != 2) return error("MaxPoolGradient: expects 2 inputs (x, g).");
      std::vector<int64_t> xs, gs;
      std::string err;
      if (!float4d(ctx.GetInput(0), kOp, "x", xs, err) ||
          !float4d(ctx.GetInput(1), kOp, "g", gs, err)) {
        return error(err);
      }
      err = max_pool_gradient_check(xs.data(), gs.data(), geo);
      if (!err.empty()) return error(err);
      auto out = ctx.GetOutput(0, xs);
      const float* x = ctx.GetInput(0).GetTensorData<float>();
      const float* g = ctx.GetInput(1).GetTensorData<float>();
      float* dx = out.GetTensorMutableData<float>();
      if constexpr (Cuda) {
        err = max_pool_gradient_cuda(x, xs.data(), g, gs.data(), geo, dx, ctx.GetGPUComputeStream());
        return err.empty() ? nullptr : failure(err);
      } else {
        max_pool_gradient_cpu(x, xs.data(), g, gs.data(), geo, dx, OrtParallel(ctx));
        return nullptr;
      }
    });
  }
};

template <bool Cuda>
struct MaxPoolGradientOp
    : FloatOp<MaxPoolGradientOp<Cuda>, MaxPoolGradientKernel<Cuda>, Cuda, 2> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return guarded(kOp, [&]() -> OrtStatusPtr {
      ConvGeometry geo;
      const std::string err = read_geometry(kOp, info, geo);
      if (!err.empty()) return error(err);
      *kernel = new MaxPoolGradientKernel<Cuda>{geo};
      return nullptr;
    });
  }
  const char* GetName() const { return kOp; }

  // Output shape: x's.
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) {
    return guarded(kOp, [&]() -> OrtStatusPtr {
      if (ctx.GetInputCount() != 2) return error("MaxPoolGradient: expects 2 inputs (x, g).");
      const auto& x = ctx.GetInputShape(0);
      if (x.size() != 4) return error("MaxPoolGradient: input x must be 4-D [N,C,H,W].");
      return ctx.SetOutputShape(0, unknown_dims_as_symbols(x)).release();
    });
  }
};

}  // namespace

void add_max_pool_gradient_ops(Ort::CustomOpDomain& domain) {
  add_cpu_and_cuda<MaxPoolGradientOp>(domain);
}

}  // namespace onnx_saliency::ort
