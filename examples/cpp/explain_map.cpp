// explain_map: run a saved onnx-saliency explainer graph from C++.
//
//   explain_map EXPLAINER.onnx IMAGE.npy TARGET OUT.npy [MAP_NAME]
//
// IMAGE.npy: float32 [N,C,H,W], already preprocessed as the model expects. TARGET: class index
// (-1: each image's top-1). Writes the map named MAP_NAME (default: the first of the graph's
// onnx_saliency.maps metadata) as a
// float32 .npy [N,H,W]; fails (exit 1) when the graph's `finite` flag is false for an image or
// the target is out of range. The custom-op library (fused NormGrad / RectifiedConvTranspose) is
// registered from the path the onnx_saliency CMake package recorded.
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: explain_map EXPLAINER.onnx IMAGE.npy TARGET OUT.npy [MAP_NAME]\n";
    return 2;
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "explain_map");
    Ort::SessionOptions options;
    options.RegisterCustomOpsLibrary(OSAL_CUSTOM_OP_LIBRARY);
    Ort::Session session(env, argv[1], options);

    std::vector<int64_t> shape;
    std::vector<float> image = read_npy(argv[2], shape);
    if (shape.size() != 4) throw std::runtime_error("IMAGE.npy must be [N,C,H,W]");
    std::vector<int64_t> target(static_cast<size_t>(shape[0]), std::stoll(argv[3]));

    Ort::AllocatorWithDefaultOptions alloc;
    std::string image_name = session.GetInputNameAllocated(0, alloc).get();
    std::string target_name = session.GetInputNameAllocated(1, alloc).get();
    // outputs are read by name: the first map's name comes from the graph's metadata
    // onnx_saliency.maps, a JSON list of the map names in order
    std::string map_name = argc > 5 ? argv[5] : "";
    if (map_name.empty()) {
      auto maps = session.GetModelMetadata().LookupCustomMetadataMapAllocated("onnx_saliency.maps",
                                                                              alloc);
      std::string list = maps ? maps.get() : "";
      auto open = list.find('"'), close = list.find('"', open + 1);
      if (open == std::string::npos || close == std::string::npos) {
        throw std::runtime_error("the graph has no onnx_saliency.maps metadata; give MAP_NAME");
      }
      map_name = list.substr(open + 1, close - open - 1);
    }

    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    int64_t tshape[1] = {shape[0]};
    Ort::Value inputs[2] = {
        Ort::Value::CreateTensor<float>(mem, image.data(), image.size(), shape.data(), 4),
        Ort::Value::CreateTensor<int64_t>(mem, target.data(), target.size(), tshape, 1)};
    const char* in_names[2] = {image_name.c_str(), target_name.c_str()};
    // "finite" (bool [N]): false where the image's maps or logits hold NaN/Inf (float32
    // overflow inside the model). An out-of-range TARGET makes Run itself fail.
    const char* out_names[2] = {map_name.c_str(), "finite"};
    auto outputs = session.Run(Ort::RunOptions{nullptr}, in_names, inputs, 2, out_names, 2);
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
