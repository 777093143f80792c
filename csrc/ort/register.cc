// The custom-op library's entry point: RegisterCustomOps adds the domain ai.onnx_saliency
// (version 1) with the ops of every op file (NormGrad, RectifiedConvTranspose, MaxPoolGradient,
// MaxPoolRelevance), CPU kernels always, CUDA kernels when built with CUDA. Built against ORT C
// API version ORT_API_VERSION of the headers found at build time (see CMakeLists.txt); it loads
// into every runtime at or above that version.
#include <mutex>
#include <string>
#include <vector>

#include "ort_common.h"

namespace onnx_saliency::ort {

// One entry point per op file: adds its ops (add_op, ort_common.h).
void add_normgrad_ops(Ort::CustomOpDomain& domain);
void add_rectified_conv_transpose_ops(Ort::CustomOpDomain& domain);
void add_max_pool_gradient_ops(Ort::CustomOpDomain& domain);

}  // namespace onnx_saliency::ort

namespace {

std::mutex g_mutex;

}  // namespace

extern "C" {

#if defined(_WIN32)
__declspec(dllexport)
#else
__attribute__((visibility("default")))
#endif
OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {  // runtime older than our headers: report with the version-1 API
    return api_base->GetApi(1)->CreateStatus(
        ORT_FAIL, ("onnx-saliency's custom-op library needs ONNX Runtime C API version " +
                  std::to_string(ORT_API_VERSION) + " or newer.").c_str());
  }
  Ort::InitApi(api);
  using namespace onnx_saliency::ort;
  return guarded("RegisterCustomOps", [&]() -> OrtStatusPtr {
    std::lock_guard<std::mutex> lock(g_mutex);
    // One domain object per registration, kept alive for the process (ORT keeps a pointer).
    static std::vector<Ort::CustomOpDomain> domains;
    Ort::CustomOpDomain domain{kDomain};
    add_normgrad_ops(domain);
    add_rectified_conv_transpose_ops(domain);
    add_max_pool_gradient_ops(domain);
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(domain);
    domains.push_back(std::move(domain));
    return nullptr;
  });
}

// The C API version this library was built against.
#if defined(_WIN32)
__declspec(dllexport)
#else
__attribute__((visibility("default")))
#endif
int OnnxSaliencyOrtApiVersion() { return ORT_API_VERSION; }

}  // extern "C"
