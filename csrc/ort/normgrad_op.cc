// ai.onnx_saliency::NormGrad, the adapter (ort_common.h) over csrc/kernels/normgrad.
//   attrs:  mode = "identity" | "conv" | "selective" (default identity);
//           kernel_shape, strides, pads, dilations (conv mode; defaults 1x1, 1, 0, 1)
//   output: [N,1,Ho,Wo] (see normgrad.h for the formulas)
#include "normgrad.h"
#include "ort_common.h"

namespace onnx_saliency::ort {
namespace {

struct NormGrad {
  static constexpr const char* kName = "NormGrad";
  static constexpr Input kInputs[] = {{"g", "[N,K,Ho,Wo]"}, {"a", "[N,C,H,W]"}};
  static constexpr Output kOutput = {0, true};

  struct Attributes {
    NormGradMode mode = NormGradMode::Identity;
    ConvGeometry geo;
  };

  static std::string read(const NodeAttributes& node, Attributes& at) {
    std::string mode = "identity";
    std::string err = node.read("mode", mode);
    if (err.empty()) err = normgrad_mode(mode, at.mode);
    if (err.empty()) err = node.geometry(at.geo);
    return err;
  }
  static std::string check(const Inputs<2>& in, const Attributes& at) {
    return normgrad_check(in.shape(0), in.shape(1), at.geo, at.mode);
  }
  static void cpu(const Inputs<2>& in, const Attributes& at, float* out, const Parallel& parallel) {
    normgrad_cpu(in.data[0], in.shape(0), in.data[1], in.shape(1), at.geo, at.mode, out, parallel);
  }
  static std::string cuda(const Inputs<2>& in, const Attributes& at, float* out, void* stream) {
    return normgrad_cuda(in.data[0], in.shape(0), in.data[1], in.shape(1), at.geo, at.mode, out,
                         stream);
  }
};

}  // namespace

void add_normgrad_ops(Ort::CustomOpDomain& domain) { add_op<NormGrad>(domain); }

}  // namespace onnx_saliency::ort
