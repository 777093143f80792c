// ai.onnx_saliency::RectifiedConvTranspose (CPU and CUDA side by side), a thin adapter over
// csrc/kernels/rectified_conv_transpose (the fused TSGB-Conv backward).
//   inputs:  g [N,K,Ho,Wo], z [N,K,Ho,Wo] (the conv's output), a [N,C,H,W] (the conv's input)
//   attrs:   kernel_shape, strides, pads, dilations, group (default 1), epsilon (default 1e-10)
//   output:  [N,C,H,W] = sign(a) * ConvTranspose(S / (D + eps), ones)  (rectified_conv_transpose.h)
#include "ort_common.h"
#include "rectified_conv_transpose.h"

namespace onnx_saliency::ort {
namespace {

constexpr const char* kOp = "RectifiedConvTranspose";

template <bool Cuda>
struct RectifiedConvTransposeKernel {
  ConvGeometry geo;
  int64_t group;
  float epsilon;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guarded(kOp, [&]() -> OrtStatusPtr {
      Ort::KernelContext ctx(context);
      if (ctx.GetInputCount() != 3) return error("RectifiedConvTranspose: expects 3 inputs (g, z, a).");
      std::vector<int64_t> gs, zs, as;
      std::string err;
      if (!float4d(ctx.GetInput(0), kOp, "g", gs, err) ||
          !float4d(ctx.GetInput(1), kOp, "z", zs, err) ||
          !float4d(ctx.GetInput(2), kOp, "a", as, err)) {
        return error(err);
      }
      err = rectified_conv_transpose_check(gs.data(), zs.data(), as.data(), geo, group, epsilon);
      if (!err.empty()) return error(err);
      auto out = ctx.GetOutput(0, as);
      const float* g = ctx.GetInput(0).GetTensorData<float>();
      const float* z = ctx.GetInput(1).GetTensorData<float>();
      const float* a = ctx.GetInput(2).GetTensorData<float>();
      float* o = out.GetTensorMutableData<float>();
      if constexpr (Cuda) {
        err = rectified_conv_transpose_cuda(g, z, gs.data(), a, as.data(), geo, group, epsilon, o,
                                            ctx.GetGPUComputeStream());
        return err.empty() ? nullptr : failure(err);
      } else {
        rectified_conv_transpose_cpu(g, z, gs.data(), a, as.data(), geo, group, epsilon, o,
                                     OrtParallel(ctx));
        return nullptr;
      }
    });
  }
};

template <bool Cuda>
struct RectifiedConvTransposeOp
    : FloatOp<RectifiedConvTransposeOp<Cuda>, RectifiedConvTransposeKernel<Cuda>, Cuda, 3> {
  OrtStatusPtr CreateKernelV2(const OrtApi&, const OrtKernelInfo* info, void** kernel) const {
    return guarded(kOp, [&]() -> OrtStatusPtr {
      ConvGeometry geo;
      int64_t group = 1;
      float eps = 1e-10f;
      std::string err = read_geometry(kOp, info, geo);
      if (err.empty()) err = read_attr(info, kOp, "group", group);
      if (err.empty()) err = check_attribute(kOp, "group", group, 1);
      if (err.empty()) err = read_attr(info, kOp, "epsilon", eps);
      if (err.empty()) err = check_epsilon(kOp, eps);
      if (!err.empty()) return error(err);
      *kernel = new RectifiedConvTransposeKernel<Cuda>{geo, group, eps};
      return nullptr;
    });
  }
  const char* GetName() const { return kOp; }

  // Output shape = the shape of a (input 2).
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) {
    return guarded(kOp, [&]() -> OrtStatusPtr {
      if (ctx.GetInputCount() != 3) return error("RectifiedConvTranspose: expects 3 inputs (g, z, a).");
      const auto& a = ctx.GetInputShape(2);
      if (a.size() != 4) return error("RectifiedConvTranspose: input a must be 4-D [N,C,H,W].");
      return ctx.SetOutputShape(0, unknown_dims_as_symbols(a)).release();
    });
  }
};

}  // namespace

void add_rectified_conv_transpose_ops(Ort::CustomOpDomain& domain) {
  add_cpu_and_cuda<RectifiedConvTransposeOp>(domain);
}

}  // namespace onnx_saliency::ort
