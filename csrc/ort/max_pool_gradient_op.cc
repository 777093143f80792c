// ai.onnx_saliency::MaxPoolGradient and ::MaxPoolRelevance, the adapters (ort_common.h) over
// csrc/kernels/max_pool_gradient: one Spec for the two, which differ in their second input, their
// output's channels and the kernels they call.
//   MaxPoolGradient   output dx [N,C,H,W]: g routed to each window's first maximum of x
//   MaxPoolRelevance  output [N,1,H,W]: Σ_c of s·|x| routed to each window's first maximum
//   attrs (both): kernel_shape, strides, pads, dilations (as the MaxPool's; defaults 1x1, 1, 0, 1)
#include "max_pool_gradient.h"
#include "ort_common.h"

namespace onnx_saliency::ort {
namespace {

template <bool Relevance>
struct MaxPool {
  static constexpr const char* kName = Relevance ? "MaxPoolRelevance" : "MaxPoolGradient";
  static constexpr Input kInputs[] = {
      {"x", "[N,C,H,W]"},
      Relevance ? Input{"s", "[N,1,Ho,Wo]", "the second input"}
                : Input{"g", "[N,C,Ho,Wo]", "the second input"}};
  static constexpr Output kOutput = {0, Relevance};

  using Attributes = ConvGeometry;

  static std::string read(const NodeAttributes& node, ConvGeometry& geo) {
    return node.geometry(geo);
  }
  static std::string check(const Inputs<2>& in, const ConvGeometry& geo) {
    return (Relevance ? max_pool_relevance_check : max_pool_gradient_check)(in.shape(0),
                                                                             in.shape(1), geo);
  }
  static void cpu(const Inputs<2>& in, const ConvGeometry& geo, float* out,
                  const Parallel& parallel) {
    (Relevance ? max_pool_relevance_cpu : max_pool_gradient_cpu)(in.data[0], in.shape(0),
                                                                 in.data[1], in.shape(1), geo, out,
                                                                 parallel);
  }
  static std::string cuda(const Inputs<2>& in, const ConvGeometry& geo, float* out, void* stream) {
    return (Relevance ? max_pool_relevance_cuda : max_pool_gradient_cuda)(
        in.data[0], in.shape(0), in.data[1], in.shape(1), geo, out, stream);
  }
};

}  // namespace

void add_max_pool_gradient_ops(Ort::CustomOpDomain& domain) {
  add_op<MaxPool<false>>(domain);
  add_op<MaxPool<true>>(domain);
}

}  // namespace onnx_saliency::ort
