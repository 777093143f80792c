// ai.onnx_saliency::NormGrad (CPU and CUDA side by side), a thin adapter over csrc/kernels/normgrad.
//   inputs:  g [N,K,Ho,Wo] float32, a [N,C,H,W] float32
//   attrs:   mode = "identity" | "conv" | "selective" (default identity);
//            kernel_shape, strides, pads, dilations (conv mode; defaults 1x1, 1, 0, 1)
//   output:  [N,1,Ho,Wo] float32 (see normgrad.h for the formulas)
#include "normgrad.h"
#include "ort_common.h"

namespace onnx_saliency::ort {
namespace {

constexpr const char* kOp = "NormGrad";

template <bool Cuda>
struct NormGradKernel {
  NormGradMode mode;
  ConvGeometry geo;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(kOp, [&]() -> OrtStatusPtr {
      Ort::KernelContext ctx(context);
      if (ctx.GetInputCount() != 2) return error("NormGrad: expects 2 inputs (g, a).");
      std::vector<int64_t> gs, as;
      std::string err;
      if (!float4d(ctx.GetInput(0), kOp, "g", gs, err) ||
          !float4d(ctx.GetInput(1), kOp, "a", as, err)) {
        return error(err);
      }
      err = normgrad_check(gs.data(), as.data(), geo, mode);
      if (!err.empty()) return error(err);
      auto out = ctx.GetOutput(0, {gs[0], 1, gs[2], gs[3]});
      const float* g = ctx.GetInput(0).GetTensorData<float>();
      const float* a = ctx.GetInput(1).GetTensorData<float>();
      float* o = out.GetTensorMutableData<float>();
      if constexpr (Cuda) {
        err = normgrad_cuda(g, gs.data(), a, as.data(), geo, mode, o, ctx.GetGPUComputeStream());
        return err.empty() ? nullptr : failure(err);
      } else {
        normgrad_cpu(g, gs.data(), a, as.data(), geo, mode, o, OrtParallel(ctx));
        return nullptr;
      }
    });
  }
};

template <bool Cuda>
struct NormGradOp
    : FloatOp<NormGradOp<Cuda>, NormGradKernel<Cuda>, Cuda, 2> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return guarded(kOp, [&]() -> OrtStatusPtr {
      std::string mode = "identity";
      NormGradMode m;
      ConvGeometry geo;
      std::string err = read_attr(info, kOp, "mode", mode);
      if (err.empty()) err = normgrad_mode(mode, m);
      if (err.empty()) err = read_geometry(kOp, info, geo);
      if (!err.empty()) return error(err);
      *kernel = new NormGradKernel<Cuda>{m, geo};
      return nullptr;
    });
  }
  const char* GetName() const { return kOp; }

  // Output shape [N, 1, Ho, Wo] taken from g.
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) {
    return guarded(kOp, [&]() -> OrtStatusPtr {
      if (ctx.GetInputCount() != 2) return error("NormGrad: expects 2 inputs (g, a).");
      const auto& g = ctx.GetInputShape(0);
      if (g.size() != 4) return error("NormGrad: input g must be 4-D [N,K,Ho,Wo].");
      Ort::ShapeInferContext::Shape out{g[0], int64_t{1}, g[2], g[3]};
      return ctx.SetOutputShape(0, unknown_dims_as_symbols(out)).release();
    });
  }
};

}  // namespace

void add_normgrad_ops(Ort::CustomOpDomain& domain) {
  add_cpu_and_cuda<NormGradOp>(domain);
}

}  // namespace onnx_saliency::ort
