#include "geometry.h"

#include <sstream>

namespace onnx_saliency {

std::string check_geometry(const char* op, const ConvGeometry& geo, int64_t in_h, int64_t in_w,
                           int64_t out_h, int64_t out_w) {
  for (int i = 0; i < 2; ++i) {
    if (geo.kernel[i] < 1 || geo.strides[i] < 1 || geo.dilations[i] < 1) {
      return std::string(op) + ": kernel_shape, strides and dilations must be positive.";
    }
    if (geo.pads[i] < 0 || geo.pads[i + 2] < 0) return std::string(op) + ": pads must be non-negative.";
  }
  const int64_t in[2] = {in_h, in_w}, out[2] = {out_h, out_w};
  for (int i = 0; i < 2; ++i) {
    const int64_t want = conv_out_size(in[i], geo.kernel[i], geo.strides[i], geo.pads[i],
                                       geo.pads[i + 2], geo.dilations[i]);
    if (want != out[i]) {
      std::ostringstream msg;
      msg << op << ": the output-side tensor has spatial size " << out[i] << " on axis " << 2 + i
          << " but the convolution of the input-side tensor gives " << want << ".";
      return msg.str();
    }
  }
  return "";
}

}  // namespace onnx_saliency
