#include "ort_common.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <sstream>

namespace onnx_saliency::ort {

namespace {

// True when the C API call succeeded; a failure status (the attribute is absent) is released.
bool ok(OrtStatus* status) {
  if (status == nullptr) return true;
  Ort::GetApi().ReleaseStatus(status);
  return false;
}

}  // namespace

std::vector<int64_t> ints_attr(const OrtKernelInfo* info, const char* name,
                               std::vector<int64_t> fallback) {
  const OrtApi& api = Ort::GetApi();
  size_t size = 0;
  if (!ok(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size))) return fallback;
  std::vector<int64_t> out(size);
  if (size == 0) return out;
  if (!ok(api.KernelInfoGetAttributeArray_int64(info, name, out.data(), &size))) return fallback;
  return out;
}

int64_t int_attr(const OrtKernelInfo* info, const char* name, int64_t fallback) {
  int64_t value = fallback;
  return ok(Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value)) ? value : fallback;
}

float float_attr(const OrtKernelInfo* info, const char* name, float fallback) {
  float value = fallback;
  return ok(Ort::GetApi().KernelInfoGetAttribute_float(info, name, &value)) ? value : fallback;
}

std::string string_attr(const OrtKernelInfo* info, const char* name, std::string fallback) {
  const OrtApi& api = Ort::GetApi();
  size_t size = 0;
  if (!ok(api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) return fallback;
  std::string out(size, '\0');
  if (!ok(api.KernelInfoGetAttribute_string(info, name, out.data(), &size))) return fallback;
  out.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  return out;
}

namespace {

std::string fill_geometry(const char* op, const std::vector<int64_t>& kernel,
                          const std::vector<int64_t>& strides, const std::vector<int64_t>& pads,
                          const std::vector<int64_t>& dilations, ConvGeometry& geo) {
  if (kernel.size() != 2 || strides.size() != 2 || pads.size() != 4 || dilations.size() != 2) {
    return std::string(op) +
           ": kernel_shape, strides and dilations need 2 values and pads 4 (2-D convolutions only).";
  }
  for (int i = 0; i < 2; ++i) {
    geo.kernel[i] = kernel[i];
    geo.strides[i] = strides[i];
    geo.dilations[i] = dilations[i];
  }
  for (int i = 0; i < 4; ++i) geo.pads[i] = pads[i];
  return "";
}

}  // namespace

std::string read_geometry(const char* op, const OrtKernelInfo* info, ConvGeometry& geo) {
  return fill_geometry(op, ints_attr(info, "kernel_shape", {1, 1}),
                       ints_attr(info, "strides", {1, 1}), ints_attr(info, "pads", {0, 0, 0, 0}),
                       ints_attr(info, "dilations", {1, 1}), geo);
}

std::string read_geometry(const char* op, Ort::ShapeInferContext& ctx, ConvGeometry& geo) {
  auto get = [&ctx](const char* name, std::vector<int64_t> fallback) {
    try {
      auto v = ctx.GetAttrInts(name);
      return v.empty() ? fallback : v;
    } catch (const Ort::Exception&) {
      return fallback;
    }
  };
  return fill_geometry(op, get("kernel_shape", {1, 1}), get("strides", {1, 1}),
                       get("pads", {0, 0, 0, 0}), get("dilations", {1, 1}), geo);
}

Ort::ShapeInferContext::Shape unknown_dims_as_symbols(const Ort::ShapeInferContext::Shape& shape) {
  static std::mutex mutex;
  static std::deque<std::string> names;  // symbols must outlive the inference pass
  static std::atomic<int64_t> counter{0};
  Ort::ShapeInferContext::Shape out;
  for (const auto& dim : shape) {
    if (dim.IsInt() && dim.AsInt() < 0) {
      std::lock_guard<std::mutex> lock(mutex);
      names.push_back("osal_unk_" + std::to_string(counter++));
      out.emplace_back(names.back().c_str());
    } else {
      out.push_back(dim);
    }
  }
  return out;
}

void OrtParallel::run(int64_t total, const RangeBody& body) const {
  if (total <= 0) return;
  struct Payload {
    const RangeBody* body;
    int64_t total, chunks;
  };
  Payload payload{&body, total, std::min<int64_t>(total, 64)};
  auto chunk = [](void* data, size_t i) {
    const auto* p = static_cast<const Payload*>(data);
    const int64_t begin = p->total * static_cast<int64_t>(i) / p->chunks;
    const int64_t end = p->total * (static_cast<int64_t>(i) + 1) / p->chunks;
    if (begin < end) (*p->body)(begin, end);
  };
  ctx_.ParallelFor(chunk, static_cast<size_t>(payload.chunks), 0, &payload);
}

bool float4d(const Ort::ConstValue& value, const char* op, const char* what,
             std::vector<int64_t>& shape, std::string& err) {
  if (!value.IsTensor()) {
    err = std::string(op) + ": input " + what + " must be a tensor.";
    return false;
  }
  auto info = value.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    err = std::string(op) + ": input " + what + " must be float32.";
    return false;
  }
  shape = info.GetShape();
  if (shape.size() != 4) {
    std::ostringstream msg;
    msg << op << ": input " << what << " must be 4-D [N,C,H,W], got rank " << shape.size() << ".";
    err = msg.str();
    return false;
  }
  return true;
}

}  // namespace onnx_saliency::ort
