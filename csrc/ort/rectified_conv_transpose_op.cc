// ai.onnx_saliency::RectifiedConvTranspose (the fused TSGB-Conv backward), the adapter
// (ort_common.h) over csrc/kernels/rectified_conv_transpose.
//   inputs: g, z (the conv's output), a (the conv's input)
//   attrs:  kernel_shape, strides, pads, dilations, group (default 1), epsilon (default 1e-10)
//   output: [N,C,H,W] = sign(a) * ConvTranspose(S / (D + eps), ones)  (rectified_conv_transpose.h)
#include "ort_common.h"
#include "rectified_conv_transpose.h"

namespace onnx_saliency::ort {
namespace {

struct RectifiedConvTranspose {
  static constexpr const char* kName = "RectifiedConvTranspose";
  static constexpr Input kInputs[] = {
      {"g", "[N,K,Ho,Wo]"}, {"z", "[N,K,Ho,Wo]"}, {"a", "[N,C,H,W]"}};
  static constexpr Output kOutput = {2, false};

  struct Attributes {
    ConvGeometry geo;
    int64_t group = 1;
    float epsilon = 1e-10f;
  };

  static std::string read(const NodeAttributes& node, Attributes& at) {
    std::string err = node.geometry(at.geo);
    if (err.empty()) err = node.read("group", at.group);
    if (err.empty()) err = check_attribute(kName, "group", at.group, 1);
    if (err.empty()) err = node.read("epsilon", at.epsilon);
    if (err.empty()) err = check_epsilon(kName, at.epsilon);
    return err;
  }
  static std::string check(const Inputs<3>& in, const Attributes& at) {
    return rectified_conv_transpose_check(in.shape(0), in.shape(1), in.shape(2), at.geo, at.group,
                                          at.epsilon);
  }
  static void cpu(const Inputs<3>& in, const Attributes& at, float* out, const Parallel& parallel) {
    rectified_conv_transpose_cpu(in.data[0], in.data[1], in.shape(0), in.data[2], in.shape(2),
                                 at.geo, at.group, at.epsilon, out, parallel);
  }
  static std::string cuda(const Inputs<3>& in, const Attributes& at, float* out, void* stream) {
    return rectified_conv_transpose_cuda(in.data[0], in.data[1], in.shape(0), in.data[2],
                                         in.shape(2), at.geo, at.group, at.epsilon, out, stream);
  }
};

}  // namespace

void add_rectified_conv_transpose_ops(Ort::CustomOpDomain& domain) {
  add_op<RectifiedConvTranspose>(domain);
}

}  // namespace onnx_saliency::ort
