// explain_map: run a saved onnx-saliency explainer graph from C++.
//
//   explain_map EXPLAINER.onnx IMAGE.npy TARGET OUT.npy [MAP_NAME] [NAME=V1,V2,... ...]
//
// IMAGE.npy: float32 [N,C,H,W], already preprocessed as the model expects. TARGET feeds the
// graph's `target` input: a class index (-1: each image's top-1; for a detection, the chosen
// candidate's best class), or N of them comma-separated; `-` for a graph without `target`.
// Each other input the graph declares (described in its onnx_saliency.target metadata) takes a
// NAME=V1,V2,... argument: for an input [N], one value for every image or one per image; for
// [N,d...], one image's values, repeated for every image (target_anchor=1668,
// target_box=108,52,172,113). Writes the map MAP_NAME (default: the first of the graph's
// onnx_saliency.maps metadata) as a float32 .npy [N,H,W]. Fails with one line, exit 1, when
// an argument is malformed or missing, a target is out of range, or the graph's `finite` flag
// is false for an image. The custom-op library (fused NormGrad / RectifiedConvTranspose) is
// registered from the path the onnx_saliency CMake package recorded.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

// Minimal .npy (version 1.x/2.x, little-endian float32, C order) reader and writer.
std::vector<float> read_npy(const std::string& path, std::vector<int64_t>& shape) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  char magic[6];
  in.read(magic, 6);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + " is not a .npy file");
  unsigned char ver[2];
  in.read(reinterpret_cast<char*>(ver), 2);
  uint32_t header_len = 0;
  if (ver[0] == 1) {
    uint16_t len16 = 0;
    in.read(reinterpret_cast<char*>(&len16), 2);
    header_len = len16;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, ' ');
  in.read(header.data(), header_len);
  if (header.find("'<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos) {
    throw std::runtime_error(path + ": need a C-order float32 array");
  }
  auto open = header.find('(', header.find("'shape'"));
  auto close = header.find(')', open);
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  std::string item;
  size_t count = 1;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(' ') == std::string::npos) continue;
    shape.push_back(std::stoll(item));
    count *= static_cast<size_t>(shape.back());
  }
  std::vector<float> data(count);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(count * sizeof(float)));
  if (!in) throw std::runtime_error(path + ": truncated data");
  return data;
}

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dims;
  size_t count = 1;
  for (auto d : shape) {
    dims += std::to_string(d) + ", ";
    count *= static_cast<size_t>(d);
  }
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
}

// "V1,V2,...": whole numbers (int64) or finite floats, nothing else.
template <typename T>
std::vector<T> parse_values(const std::string& text, const std::string& what) {
  std::vector<T> values;
  for (size_t start = 0, comma = 0; comma < text.size(); start = comma + 1) {
    comma = std::min(text.find(',', start), text.size());
    std::string item = text.substr(start, comma - start);
    char* end = nullptr;
    errno = 0;
    T v = std::is_integral_v<T> ? T(std::strtoll(item.c_str(), &end, 10))
                                : T(std::strtof(item.c_str(), &end));
    if (item.empty() || std::isspace(static_cast<unsigned char>(item[0])) ||
        end != item.c_str() + item.size() || errno != 0 || !std::isfinite(double(v))) {
      throw std::runtime_error(what + ": '" + item + "' is not " +
                               (std::is_integral_v<T> ? "an int64 integer" : "a finite number"));
    }
    values.push_back(v);
  }
  if (values.empty()) throw std::runtime_error(what + ": no values given");
  return values;
}

// The tensor for a target input of shape `dims` (dims[0]: the batch): for [N], one value for
// every image or one per image; for [N,d...], one image's values, repeated for every image.
template <typename T>
Ort::Value make_input(OrtAllocator* alloc, std::vector<int64_t> dims, int64_t n,
                      const std::string& text, const std::string& what) {
  std::vector<T> values = parse_values<T>(text, what);
  if (dims.empty()) throw std::runtime_error(what + " is a scalar, not a per-image input");
  dims[0] = n;
  size_t row = 1;
  for (size_t i = 1; i < dims.size(); ++i) {
    if (dims[i] < 0 && dims.size() != 2) throw std::runtime_error(what + " has dynamic sizes");
    if (dims[i] < 0) dims[i] = static_cast<int64_t>(values.size());
    row *= static_cast<size_t>(dims[i]);
  }
  bool per_image = dims.size() == 1 && values.size() == static_cast<size_t>(n);
  if (!per_image && values.size() != row) {
    std::string count = dims.size() == 1 ? "1 or " + std::to_string(n) : std::to_string(row);
    throw std::runtime_error(what + " takes " + count + " values, got " +
                             std::to_string(values.size()));
  }
  Ort::Value value = Ort::Value::CreateTensor<T>(alloc, dims.data(), dims.size());
  T* out = value.GetTensorMutableData<T>();
  for (size_t i = 0; i < static_cast<size_t>(n) * row; ++i) {
    out[i] = values[per_image ? i : i % row];
  }
  return value;
}

// "input 'target_box' (float32 [N,4]: <its meaning in the onnx_saliency.target JSON>)"
std::string describe(const std::string& name, ONNXTensorElementDataType type,
                     const std::vector<int64_t>& dims, const std::string& json) {
  std::string text = "input '" + name + "' (" +
      (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT   ? "float32"
       : type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? "int64"
                                                     : "type " + std::to_string(type)) + " [N";
  for (size_t d = 1; d < dims.size(); ++d) {
    text += "," + (dims[d] < 0 ? "?" : std::to_string(dims[d]));
  }
  size_t m = json.find("\"meaning\": \"", json.find("\"" + name + "\": {"));
  if (m == std::string::npos) return text + "])";
  return text + "]: " + json.substr(m + 12, json.find('"', m + 12) - m - 12) + ")";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: explain_map EXPLAINER.onnx IMAGE.npy TARGET OUT.npy [MAP_NAME] "
                 "[NAME=V1,V2,... ...]\n";
    return 2;
  }
  try {
    std::string map_name;
    std::map<std::string, std::string> given;   // NAME -> "V1,V2,..."; TARGET is target=TARGET
    if (std::strcmp(argv[3], "-") != 0) given["target"] = argv[3];
    for (int i = 5; i < argc; ++i) {
      char* eq = std::strchr(argv[i], '=');
      if (!eq && !map_name.empty()) throw std::runtime_error("more than one MAP_NAME given");
      if (!eq) map_name = argv[i];
      else if (!given.emplace(std::string(argv[i], eq), eq + 1).second) {
        throw std::runtime_error(std::string(argv[i], eq) + " is given more than once");
      }
    }
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "explain_map");
    Ort::SessionOptions options;
    options.RegisterCustomOpsLibrary(OSAL_CUSTOM_OP_LIBRARY);
    Ort::Session session(env, argv[1], options);

    std::vector<int64_t> shape;
    std::vector<float> image = read_npy(argv[2], shape);
    if (shape.size() != 4) throw std::runtime_error("IMAGE.npy must be [N,C,H,W]");

    Ort::AllocatorWithDefaultOptions alloc;
    auto meta = session.GetModelMetadata();
    auto lookup = [&](const char* key) {
      auto value = meta.LookupCustomMetadataMapAllocated(key, alloc);
      return std::string(value ? value.get() : "");
    };
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<std::string> names{session.GetInputNameAllocated(0, alloc).get()};
    std::vector<Ort::Value> inputs;
    inputs.push_back(
        Ort::Value::CreateTensor<float>(mem, image.data(), image.size(), shape.data(), 4));
    // every other input (target, target_anchor, target_box, ...) from its NAME=... argument
    for (size_t i = 1; i < session.GetInputCount(); ++i) {
      names.emplace_back(session.GetInputNameAllocated(i, alloc).get());
      Ort::TypeInfo type_info = session.GetInputTypeInfo(i);   // owns what `info` views
      auto info = type_info.GetTensorTypeAndShapeInfo();
      auto type = info.GetElementType();
      std::string what =
          describe(names.back(), type, info.GetShape(), lookup("onnx_saliency.target"));
      auto arg = given.find(names.back());
      if (arg == given.end()) {
        throw std::runtime_error(what + (names.back() == "target" ? " needs TARGET"
                                         : " needs an argument " + names.back() + "=V1,V2,..."));
      }
      if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
        inputs.push_back(make_input<int64_t>(alloc, info.GetShape(), shape[0], arg->second, what));
      } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        inputs.push_back(make_input<float>(alloc, info.GetShape(), shape[0], arg->second, what));
      } else {
        throw std::runtime_error(what + ": explain_map feeds int64 and float32 inputs only");
      }
      given.erase(arg);
    }
    if (!given.empty()) {
      std::string list;
      for (size_t i = 1; i < names.size(); ++i) list += " " + names[i];
      throw std::runtime_error("the graph has no target input '" + given.begin()->first +
                               "' (its target inputs:" + (list.empty() ? " none" : list) + ")");
    }
    // outputs are read by name: the first map's name comes from the graph's metadata
    // onnx_saliency.maps, a JSON list of the map names in order
    if (map_name.empty()) {
      std::string list = lookup("onnx_saliency.maps");
      auto open = list.find('"'), close = list.find('"', open + 1);
      if (open == std::string::npos || close == std::string::npos) {
        throw std::runtime_error("the graph has no onnx_saliency.maps metadata; give MAP_NAME");
      }
      map_name = list.substr(open + 1, close - open - 1);
    }

    std::vector<const char*> in_names;
    for (auto& name : names) in_names.push_back(name.c_str());
    // "finite" (bool [N]): false where the image's maps or logits hold NaN/Inf (float32
    // overflow inside the model). An out-of-range target makes Run itself fail.
    const char* out_names[2] = {map_name.c_str(), "finite"};
    auto outputs = session.Run(Ort::RunOptions{nullptr}, in_names.data(), inputs.data(),
                               inputs.size(), out_names, 2);
    const bool* finite = outputs[1].GetTensorData<bool>();
    for (int64_t i = 0; i < shape[0]; ++i) {
      if (!finite[i]) throw std::runtime_error("the maps of image " + std::to_string(i) +
                                               " contain NaN or Inf (float32 overflow in the model)");
    }
    auto out_shape = outputs[0].GetTensorTypeAndShapeInfo().GetShape();
    write_npy(argv[4], outputs[0].GetTensorData<float>(), out_shape);
    std::cout << "wrote " << map_name << " to " << argv[4] << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "explain_map: " << e.what() << "\n";
    return 1;
  }
}
