#include "ort_common.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <mutex>
#include <sstream>

namespace onnx_saliency::ort {

namespace {

// True when the C API call succeeded; a failure status (attribute absent, or of another type)
// is released.
bool ok(OrtStatus* status) {
  if (status == nullptr) return true;
  Ort::GetApi().ReleaseStatus(status);
  return false;
}

// Whether attribute `name` is set under any of the types these ops read, or as a float list.
bool is_set(const OrtKernelInfo* info, const char* name) {
  const OrtApi& api = Ort::GetApi();
  int64_t i;
  float f;
  size_t size = 0;
  return ok(api.KernelInfoGetAttribute_int64(info, name, &i)) ||
         ok(api.KernelInfoGetAttribute_float(info, name, &f)) ||
         ok(api.KernelInfoGetAttribute_string(info, name, nullptr, &size)) ||
         ok(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) ||
         ok(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &size));
}

// "" when `read` succeeded or the attribute is absent, else the wrong-type sentence.
std::string typed(bool read, const OrtKernelInfo* info, const char* op, const char* name,
                  const char* type) {
  if (read || !is_set(info, name)) return "";
  return std::string(op) + ": attribute " + name + " must be " + type + ".";
}

}  // namespace

std::string read_attr(const OrtKernelInfo* info, const char* op, const char* name,
                      int64_t& value) {
  int64_t v = 0;
  const bool read = ok(Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &v));
  if (read) value = v;
  return typed(read, info, op, name, "an int");
}

std::string read_attr(const OrtKernelInfo* info, const char* op, const char* name, float& value) {
  float v = 0;
  const bool read = ok(Ort::GetApi().KernelInfoGetAttribute_float(info, name, &v));
  if (read) value = v;
  return typed(read, info, op, name, "a float");
}

std::string read_attr(const OrtKernelInfo* info, const char* op, const char* name,
                      std::string& value) {
  const OrtApi& api = Ort::GetApi();
  size_t size = 0;
  bool read = ok(api.KernelInfoGetAttribute_string(info, name, nullptr, &size));
  if (read) {
    std::string v(size, '\0');
    read = ok(api.KernelInfoGetAttribute_string(info, name, v.data(), &size));
    v.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
    if (read) value = v;
  }
  return typed(read, info, op, name, "a string");
}

std::string read_attr(const OrtKernelInfo* info, const char* op, const char* name,
                      std::vector<int64_t>& value) {
  const OrtApi& api = Ort::GetApi();
  size_t size = 0, floats = 0;
  bool read = ok(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size));
  if (read && size == 0) {  // ORT reads a list of another type as an empty list of ints
    read = !ok(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &floats)) || floats == 0;
  }
  if (read) {
    std::vector<int64_t> v(size);
    read = size == 0 || ok(api.KernelInfoGetAttributeArray_int64(info, name, v.data(), &size));
    if (read) value = v;
  }
  return typed(read, info, op, name, "a list of ints");
}

std::string read_geometry(const char* op, const OrtKernelInfo* info, ConvGeometry& geo) {
  struct List {
    const char* name;
    int64_t* dst;
    std::vector<int64_t> value;  // the default
  };
  for (List list : {List{"kernel_shape", geo.kernel, {1, 1}}, List{"strides", geo.strides, {1, 1}},
                    List{"pads", geo.pads, {0, 0, 0, 0}},
                    List{"dilations", geo.dilations, {1, 1}}}) {
    const size_t want = list.value.size();
    const std::string err = read_attr(info, op, list.name, list.value);
    if (!err.empty()) return err;
    if (list.value.size() != want) {
      return std::string(op) + ": attribute " + list.name + " needs " + std::to_string(want) +
             " values (2-D only), got " + std::to_string(list.value.size()) + ".";
    }
    std::copy(list.value.begin(), list.value.end(), list.dst);
  }
  return check_attributes(op, geo);
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
    FirstError first;  // an exception must not leave ORT's worker threads
  };
  Payload payload{&body, total, std::min<int64_t>(total, 64), {}};
  auto chunk = [](void* data, size_t i) {
    auto* p = static_cast<Payload*>(data);
    const int64_t begin = p->total * static_cast<int64_t>(i) / p->chunks;
    const int64_t end = p->total * (static_cast<int64_t>(i) + 1) / p->chunks;
    if (begin < end) p->first.run(*p->body, begin, end);
  };
  ctx_.ParallelFor(chunk, static_cast<size_t>(payload.chunks), 0, &payload);
  payload.first.rethrow();
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
