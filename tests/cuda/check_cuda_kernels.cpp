// The CUDA kernels against the CPU kernels, on a GPU (tests/cuda/run_on_device.sh runs it).
//
// For each kernel (NormGrad in its three modes, RectifiedConvTranspose, MaxPoolGradient,
// MaxPoolRelevance) and each geometry (random ones: kernel sizes, strides, pads, dilations,
// groups, ceil-mode pool grids, odd sizes, N up to 8; the layers of real networks; attributes
// near 2^31), the inputs are uploaded, the CUDA kernel runs on device buffers, the CPU kernel on
// the same data, and the two outputs are compared:
//   difference = max |cuda − cpu| / max |cpu|       (over the finite values; 0 when equal)
// over the case; a case fails above 1e-5, or where a NaN or an infinity stands in one output
// and not the same in the other (a tenth of the random NormGrad and RectifiedConvTranspose cases
// have NaN in one input value in 97).
// Max-pool cases are also run on small-integer data (ties everywhere: the first maximum must be
// the same position in both). Malformed inputs must be refused by the checks the ONNX Runtime
// adapter runs before any kernel (the CUDA entry points take checked inputs).
//
//   check_cuda_kernels [--cases N] [--seed S] [--batches 1,8|none] [--large]
//                      [--large-divisor D] [--timing FILE] [--repeat R]
//
// --cases: random geometries per kernel (default 300); --batches: the batch sizes of the real
// layers (default 1,8); --large: one case per kernel whose tensors hold over 2^31 elements
// (int64 indexing, grid-stride loops past the launch cap; --large-divisor D: their rows / D, for a
// dry run); --timing: the real layers' kernel
// times (CUDA events, median of R runs, default 20) as JSON lines, which
// tests/cuda/time_torch_routes.py reads to time PyTorch's route for the same math.
// Exit status: 0 all matched, 1 a case failed, 2 no device or a CUDA error.
//
// Built with OSAL_CUDA_CHECK_HOST (the target check_cuda_kernels_host, no CUDA needed), the
// "device" is host memory and the "CUDA kernel" the CPU kernel on one thread: the harness itself
// (generators, checks, comparison) tested on any machine, under the sanitizers.
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "max_pool_gradient.h"
#include "normgrad.h"
#include "rectified_conv_transpose.h"

#ifndef OSAL_CUDA_CHECK_HOST
#include <cuda_runtime.h>
#endif

using namespace onnx_saliency;

namespace {

using Shape = std::array<int64_t, 4>;

int64_t count(const Shape& s) { return s[0] * s[1] * s[2] * s[3]; }

// Host arrays whose resize leaves the new elements uninitialised (std::allocator's would zero
// them, serially: tens of GB for the large cases); every element is written before it is read.
template <class T>
struct Uninitialised : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = Uninitialised<U>;
  };
  Uninitialised() = default;
  template <class U>
  Uninitialised(const Uninitialised<U>&) {}
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) == 0) {
      ::new (static_cast<void*>(p)) U;
    } else {
      ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
  }
};
using Floats = std::vector<float, Uninitialised<float>>;

// Every element of v set to `value`, in parallel.
void set_all(Floats& v, float value) {
  ThreadParallel().run(static_cast<int64_t>(v.size()), [&](int64_t begin, int64_t end) {
    std::fill(v.begin() + begin, v.begin() + end, value);
  });
}

std::string text(const Shape& s) {
  return "[" + std::to_string(s[0]) + "," + std::to_string(s[1]) + "," + std::to_string(s[2]) +
         "," + std::to_string(s[3]) + "]";
}

// ---- the cases -----------------------------------------------------------------------------

enum class Kernel { NormGrad, RectifiedConvTranspose, MaxPoolGradient, MaxPoolRelevance };
enum class Fill { Smooth, Ties, WithNaN };

struct Case {
  Kernel kernel;
  std::string label;                // "random", or the layer it is
  Shape in0, in1;                   // NormGrad g, a; RCT g (= z), a; pools x, g (or s)
  ConvGeometry geo;
  NormGradMode mode = NormGradMode::Identity;
  int64_t group = 1;
  float epsilon = 1e-10f;
  Fill fill = Fill::Smooth;
};

const char* kernel_name(const Case& c) {
  switch (c.kernel) {
    case Kernel::NormGrad:
      return c.mode == NormGradMode::Conv       ? "NormGrad(conv)"
             : c.mode == NormGradMode::Identity ? "NormGrad(identity)"
                                                : "NormGrad(selective)";
    case Kernel::RectifiedConvTranspose: return "RectifiedConvTranspose";
    case Kernel::MaxPoolGradient: return "MaxPoolGradient";
    case Kernel::MaxPoolRelevance: return "MaxPoolRelevance";
  }
  return "?";
}

// The input shapes in the kernel's order.
std::vector<Shape> input_shapes(const Case& c) {
  if (c.kernel == Kernel::RectifiedConvTranspose) return {c.in0, c.in0, c.in1};
  return {c.in0, c.in1};
}

Shape output_shape(const Case& c) {
  switch (c.kernel) {
    case Kernel::NormGrad: return {c.in0[0], 1, c.in0[2], c.in0[3]};
    case Kernel::RectifiedConvTranspose: return c.in1;
    case Kernel::MaxPoolGradient: return c.in0;
    case Kernel::MaxPoolRelevance: return {c.in0[0], 1, c.in0[2], c.in0[3]};
  }
  return {};
}

std::string describe(const Case& c) {
  const ConvGeometry& g = c.geo;
  std::string s = std::string(kernel_name(c)) + " " + c.label + " in " + text(c.in0) + " " +
                  text(c.in1) + " kernel " + std::to_string(g.kernel[0]) + "x" +
                  std::to_string(g.kernel[1]) + " strides " + std::to_string(g.strides[0]) + "," +
                  std::to_string(g.strides[1]) + " pads " + std::to_string(g.pads[0]) + "," +
                  std::to_string(g.pads[1]) + "," + std::to_string(g.pads[2]) + "," +
                  std::to_string(g.pads[3]) + " dilations " + std::to_string(g.dilations[0]) +
                  "," + std::to_string(g.dilations[1]);
  if (c.kernel == Kernel::RectifiedConvTranspose) s += " group " + std::to_string(c.group);
  if (c.fill == Fill::Ties) s += " (tied data)";
  if (c.fill == Fill::WithNaN) s += " (with NaN)";
  return s;
}

std::string check(const Case& c) {
  switch (c.kernel) {
    case Kernel::NormGrad: return normgrad_check(c.in0.data(), c.in1.data(), c.geo, c.mode);
    case Kernel::RectifiedConvTranspose:
      return rectified_conv_transpose_check(c.in0.data(), c.in0.data(), c.in1.data(), c.geo,
                                            c.group, c.epsilon);
    case Kernel::MaxPoolGradient: return max_pool_gradient_check(c.in0.data(), c.in1.data(), c.geo);
    case Kernel::MaxPoolRelevance:
      return max_pool_relevance_check(c.in0.data(), c.in1.data(), c.geo);
  }
  return "unknown kernel";
}

void run_cpu(const Case& c, const std::vector<const float*>& in, float* out,
             const Parallel& parallel) {
  switch (c.kernel) {
    case Kernel::NormGrad:
      return normgrad_cpu(in[0], c.in0.data(), in[1], c.in1.data(), c.geo, c.mode, out, parallel);
    case Kernel::RectifiedConvTranspose:
      return rectified_conv_transpose_cpu(in[0], in[1], c.in0.data(), in[2], c.in1.data(), c.geo,
                                          c.group, c.epsilon, out, parallel);
    case Kernel::MaxPoolGradient:
      return max_pool_gradient_cpu(in[0], c.in0.data(), in[1], c.in1.data(), c.geo, out, parallel);
    case Kernel::MaxPoolRelevance:
      return max_pool_relevance_cpu(in[0], c.in0.data(), in[1], c.in1.data(), c.geo, out,
                                    parallel);
  }
}

// ---- the device ----------------------------------------------------------------------------

struct CudaFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

#ifdef OSAL_CUDA_CHECK_HOST

using Stream = void*;

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : data_(n) {}
  void upload(const Floats& v) { data_ = v; }
  void download(Floats& v) const { v = data_; }
  void set_nan() { set_all(data_, std::nanf("")); }
  float* get() { return data_.data(); }

 private:
  Floats data_;
};

std::string device_name() { return "none (host emulation: the CPU kernels on one thread)"; }
Stream make_stream() { return nullptr; }
void synchronize(Stream) {}
void free_stream(Stream) {}

std::string run_cuda(const Case& c, const std::vector<const float*>& in, float* out, Stream) {
  run_cpu(c, in, out, ThreadParallel(1));
  return "";
}

#else

using Stream = cudaStream_t;

void cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw CudaFailure(std::string(what) + ": " + cudaGetErrorString(err));
}

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    cuda_ok(cudaMalloc(reinterpret_cast<void**>(&ptr_), std::max<size_t>(n, 1) * sizeof(float)),
            "cudaMalloc");
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void upload(const Floats& v) {
    cuda_ok(cudaMemcpy(ptr_, v.data(), n_ * sizeof(float), cudaMemcpyHostToDevice), "upload");
  }
  void download(Floats& v) const {
    v.resize(n_);
    cuda_ok(cudaMemcpy(v.data(), ptr_, n_ * sizeof(float), cudaMemcpyDeviceToHost), "download");
  }
  void set_nan() {  // all bits set: a NaN in every element
    cuda_ok(cudaMemset(ptr_, 0xFF, n_ * sizeof(float)), "cudaMemset");
  }
  float* get() { return ptr_; }

 private:
  float* ptr_ = nullptr;
  size_t n_;
};

std::string device_name() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return "";
  cudaDeviceProp prop{};
  cuda_ok(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  return std::string(prop.name) + " (compute capability " + std::to_string(prop.major) + "." +
         std::to_string(prop.minor) + ", " + std::to_string(prop.multiProcessorCount) + " SMs)";
}

Stream make_stream() {
  cudaStream_t s;
  cuda_ok(cudaStreamCreate(&s), "cudaStreamCreate");
  return s;
}
void synchronize(Stream s) { cuda_ok(cudaStreamSynchronize(s), "kernel"); }
void free_stream(Stream s) { cudaStreamDestroy(s); }

std::string run_cuda(const Case& c, const std::vector<const float*>& in, float* out, Stream s) {
  switch (c.kernel) {
    case Kernel::NormGrad:
      return normgrad_cuda(in[0], c.in0.data(), in[1], c.in1.data(), c.geo, c.mode, out, s);
    case Kernel::RectifiedConvTranspose:
      return rectified_conv_transpose_cuda(in[0], in[1], c.in0.data(), in[2], c.in1.data(),
                                           c.geo, c.group, c.epsilon, out, s);
    case Kernel::MaxPoolGradient:
      return max_pool_gradient_cuda(in[0], c.in0.data(), in[1], c.in1.data(), c.geo, out, s);
    case Kernel::MaxPoolRelevance:
      return max_pool_relevance_cuda(in[0], c.in0.data(), in[1], c.in1.data(), c.geo, out, s);
  }
  return "unknown kernel";
}

#endif

// ---- data ------------------------------------------------------------------------------------

uint64_t mix(uint64_t x) {  // splitmix64: a counter-based generator, filled in parallel
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Smooth: uniform in [−2, 2) with one value in 64 exactly 0 (sign and ReLU-like ties); Ties:
// integers −2..2; WithNaN: Smooth with one value in 97 NaN.
void fill(Floats& v, uint64_t seed, Fill kind) {
  ThreadParallel().run(static_cast<int64_t>(v.size()), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint64_t h = mix(seed * 0x100000001b3ull + static_cast<uint64_t>(i));
      float x;
      if (kind == Fill::Ties) {
        x = static_cast<float>(static_cast<int>(h % 5) - 2);
      } else {
        x = (h & 63) == 0 ? 0.0f : static_cast<float>((h >> 40) * 0x1p-24 * 4.0 - 2.0);
        if (kind == Fill::WithNaN && (h >> 8) % 97 == 0) x = std::nanf("");
      }
      v[static_cast<size_t>(i)] = x;
    }
  });
}

// ---- comparison --------------------------------------------------------------------------------

struct Difference {
  double relative = 0;       // max |got − ref| / max |ref| over the finite values of ref
  int64_t worst = -1;        // where it is largest
  int64_t nonfinite_mismatches = 0;  // NaN or ±inf in one output and not the same in the other
};

Difference compare(const Floats& ref, const Floats& got) {
  Difference d;
  double peak = 0, diff = 0;
  std::mutex mutex;
  ThreadParallel().run(static_cast<int64_t>(ref.size()), [&](int64_t begin, int64_t end) {
    double part_peak = 0, part_diff = 0;
    int64_t part_worst = -1, part_mismatches = 0;
    for (int64_t i = begin; i < end; ++i) {
      const float r = ref[static_cast<size_t>(i)], g = got[static_cast<size_t>(i)];
      if (!std::isfinite(r) || !std::isfinite(g)) {
        part_mismatches += !((std::isnan(r) && std::isnan(g)) || r == g);
        continue;
      }
      part_peak = std::max(part_peak, std::fabs(double(r)));
      const double e = std::fabs(double(g) - double(r));
      if (e > part_diff) {
        part_diff = e;
        part_worst = i;
      }
    }
    std::lock_guard<std::mutex> lock(mutex);
    peak = std::max(peak, part_peak);
    d.nonfinite_mismatches += part_mismatches;
    if (part_diff > diff || (part_diff == diff && part_worst >= 0 && part_worst < d.worst)) {
      diff = part_diff;
      d.worst = part_worst;
    }
  });
  d.relative = diff == 0 ? 0 : peak == 0 ? std::numeric_limits<double>::infinity() : diff / peak;
  return d;
}

constexpr double kTolerance = 1e-5;

struct Tally {
  int cases = 0, failures = 0;
  double largest = 0;
  std::string largest_at;
};

struct Report {
  Tally per_kernel[6];
  int failures = 0;

  static int slot(const Case& c) {
    return c.kernel == Kernel::NormGrad ? static_cast<int>(c.mode) : 2 + static_cast<int>(c.kernel);
  }
  static const char* slot_name(int i) {  // the inverse of slot, through kernel_name
    Case c;
    c.kernel = i < 3 ? Kernel::NormGrad : static_cast<Kernel>(i - 2);
    if (i < 3) c.mode = static_cast<NormGradMode>(i);
    return kernel_name(c);
  }
  void add(const Case& c, const Difference& d) {
    Tally& t = per_kernel[slot(c)];
    ++t.cases;
    if (d.relative > t.largest || t.cases == 1) {
      t.largest = std::max(t.largest, d.relative);
      t.largest_at = describe(c);
    }
    if (d.relative > kTolerance || d.nonfinite_mismatches > 0) {
      ++t.failures;
      ++failures;
      std::printf("MISMATCH %s: difference %.3g (at element %lld), %lld non-finite mismatches\n",
                  describe(c).c_str(), d.relative, static_cast<long long>(d.worst),
                  static_cast<long long>(d.nonfinite_mismatches));
    }
  }
  void print() const {
    std::printf("\n%-24s %7s %9s %12s\n", "kernel", "cases", "failures", "largest diff");
    for (int i = 0; i < 6; ++i) {
      const Tally& t = per_kernel[i];
      std::printf("%-24s %7d %9d %12.3g\n", slot_name(i), t.cases, t.failures, t.largest);
    }
    for (int i = 0; i < 6; ++i) {
      if (per_kernel[i].cases) {
        std::printf("  largest %s: %s\n", slot_name(i), per_kernel[i].largest_at.c_str());
      }
    }
  }
};

// A case's inputs filled from `seed` (host) and uploaded (device); the pointers in the kernel's
// order.
struct Inputs {
  std::vector<Floats> host;
  std::vector<std::unique_ptr<DeviceBuffer>> dev;
  std::vector<const float*> host_ptrs, dev_ptrs;

  Inputs(const Case& c, uint64_t seed) {
    for (const Shape& shape : input_shapes(c)) {
      host.emplace_back(static_cast<size_t>(count(shape)));
      fill(host.back(), seed * 7 + host.size() - 1, c.fill);
      host_ptrs.push_back(host.back().data());
    }
    for (const Floats& h : host) {
      dev.push_back(std::make_unique<DeviceBuffer>(h.size()));
      dev.back()->upload(h);
      dev_ptrs.push_back(dev.back()->get());
    }
  }
};

// Runs the case on both sides; the CPU output into `ref`, the device's into `got`.
void run_both(const Case& c, uint64_t seed, Stream stream, Floats& ref, Floats& got) {
  const Inputs in(c, seed);
  const size_t n_out = static_cast<size_t>(count(output_shape(c)));
  ref.resize(n_out);  // NaN where a kernel leaves an element unwritten: a mismatch
  set_all(ref, std::nanf(""));
  run_cpu(c, in.host_ptrs, ref.data(), ThreadParallel());
  DeviceBuffer out(n_out);
  out.set_nan();
  const std::string err = run_cuda(c, in.dev_ptrs, out.get(), stream);
  if (!err.empty()) throw CudaFailure(describe(c) + ": " + err);
  synchronize(stream);
  out.download(got);
}

// ---- the geometries ------------------------------------------------------------------------------

struct Random {
  std::mt19937_64 rng;
  int64_t in(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }
  bool coin(double p = 0.5) { return std::bernoulli_distribution(p)(rng); }
};

// A random geometry whose window fits H x W, with its output size; false when it does not fit.
bool random_geometry(Random& r, int64_t H, int64_t W, bool pool, ConvGeometry& geo, int64_t& Ho,
                     int64_t& Wo) {
  for (int i = 0; i < 2; ++i) {
    geo.kernel[i] = r.in(1, 7);
    geo.strides[i] = r.in(1, 3);
    geo.dilations[i] = r.coin(0.7) ? 1 : r.in(2, 3);
    geo.pads[i] = r.in(0, pool ? geo.kernel[i] : geo.kernel[i] + 1);  // windows in the padding too
    geo.pads[i + 2] = r.in(0, pool ? geo.kernel[i] : geo.kernel[i] + 1);
  }
  const int64_t in[2] = {H, W};
  int64_t out[2];
  for (int i = 0; i < 2; ++i) {
    int64_t span;
    if (!window_span(in[i], geo.kernel[i], geo.pads[i], geo.pads[i + 2], geo.dilations[i], span)) {
      return false;
    }
    out[i] = span / geo.strides[i] + 1;
    if (pool && span % geo.strides[i] != 0 && r.coin()) ++out[i];  // ceil mode
  }
  Ho = out[0];
  Wo = out[1];
  return true;
}

Case random_case(Random& r, Kernel kernel) {
  for (;;) {
    Case c;
    c.kernel = kernel;
    c.label = "random";
    const int64_t N = r.in(1, 8), H = r.in(1, 33), W = r.in(1, 33);
    const bool pool = kernel == Kernel::MaxPoolGradient || kernel == Kernel::MaxPoolRelevance;
    int64_t Ho, Wo;
    if (!random_geometry(r, H, W, pool, c.geo, Ho, Wo)) continue;
    const double f = r.rng() % 100 / 100.0;
    // NaN only where both sides define the result: with NaN in a pool window the CPU's
    // separable argmax may pick another position than a row-major scan (max_pool_gradient.h)
    c.fill = pool ? (f < 0.4 ? Fill::Ties : Fill::Smooth) : (f < 0.1 ? Fill::WithNaN : Fill::Smooth);
    switch (kernel) {
      case Kernel::NormGrad: {
        c.mode = static_cast<NormGradMode>(r.in(0, 2));
        const int64_t K = r.in(1, 16), C = r.in(1, 16);
        if (c.mode == NormGradMode::Conv) {
          c.in0 = {N, K, Ho, Wo};
          c.in1 = {N, C, H, W};
        } else {
          c.in0 = c.in1 = {N, K, H, W};
        }
        break;
      }
      case Kernel::RectifiedConvTranspose: {
        const int64_t G = r.in(1, 4), Cg = r.coin(0.3) ? 1 : r.in(1, 6), Kg = r.in(1, 6);
        c.group = G;
        c.in0 = {N, G * Kg, Ho, Wo};
        c.in1 = {N, G * Cg, H, W};
        c.epsilon = r.coin(0.2) ? 0.0f : 1e-10f;
        break;
      }
      case Kernel::MaxPoolGradient:
        c.in0 = {N, r.in(1, 8), H, W};
        c.in1 = {N, c.in0[1], Ho, Wo};
        break;
      case Kernel::MaxPoolRelevance:
        c.in0 = {N, r.in(1, 8), H, W};
        c.in1 = {N, 1, Ho, Wo};
        break;
    }
    if (count(c.in0) * count(c.in1) == 0 || !check(c).empty()) continue;
    return c;
  }
}

ConvGeometry square(int64_t k, int64_t s, int64_t p, int64_t d = 1) {
  ConvGeometry g;
  g.kernel[0] = g.kernel[1] = k;
  g.strides[0] = g.strides[1] = s;
  for (auto& q : g.pads) q = p;
  g.dilations[0] = g.dilations[1] = d;
  return g;
}

// The layers of real networks (torchvision's ResNet-50, ResNeXt-50 32x4d, RegNetX-400MF, VGG16,
// EfficientNet-B0) at batch N: the timing table's rows.
std::vector<Case> real_layers(int64_t N) {
  std::vector<Case> cases;
  auto add = [&](Kernel k, const char* label, Shape in0, Shape in1, ConvGeometry geo,
                 NormGradMode mode = NormGradMode::Identity, int64_t group = 1) {
    cases.push_back(Case{k, label, in0, in1, geo, mode, group});
  };
  const auto NG = Kernel::NormGrad;
  add(NG, "ResNet-50 conv1 (7x7/2)", {N, 64, 112, 112}, {N, 3, 224, 224}, square(7, 2, 3),
      NormGradMode::Conv);
  add(NG, "ResNet-50 layer1.0.conv2 (3x3)", {N, 64, 56, 56}, {N, 64, 56, 56}, square(3, 1, 1),
      NormGradMode::Conv);
  add(NG, "ResNet-50 layer4.2.conv2 (3x3)", {N, 512, 7, 7}, {N, 512, 7, 7}, square(3, 1, 1),
      NormGradMode::Conv);
  add(NG, "EfficientNet-B0 blocks.2 depthwise (3x3/2)", {N, 96, 56, 56}, {N, 96, 112, 112},
      square(3, 2, 1), NormGradMode::Conv);
  add(NG, "ResNet-50 layer3 output", {N, 1024, 14, 14}, {N, 1024, 14, 14}, square(1, 1, 0));
  add(NG, "ResNet-50 layer4 output", {N, 2048, 7, 7}, {N, 2048, 7, 7}, square(1, 1, 0),
      NormGradMode::Selective);
  const auto RCT = Kernel::RectifiedConvTranspose;
  add(RCT, "ResNet-50 layer1.0.conv2 (3x3, 1 group)", {N, 64, 56, 56}, {N, 64, 56, 56},
      square(3, 1, 1));
  add(RCT, "ResNeXt-50 layer1.0.conv2 (3x3, 32 groups)", {N, 128, 56, 56}, {N, 128, 56, 56},
      square(3, 1, 1), NormGradMode::Identity, 32);
  add(RCT, "RegNetX-400MF s2 b1 (3x3/2, 4 groups)", {N, 64, 28, 28}, {N, 64, 56, 56},
      square(3, 2, 1), NormGradMode::Identity, 4);
  add(RCT, "EfficientNet-B0 blocks.3 depthwise (5x5/2)", {N, 144, 28, 28}, {N, 144, 56, 56},
      square(5, 2, 2), NormGradMode::Identity, 144);
  add(Kernel::MaxPoolGradient, "ResNet-50 maxpool (3x3/2)", {N, 64, 112, 112}, {N, 64, 56, 56},
      square(3, 2, 1));
  add(Kernel::MaxPoolGradient, "VGG16 pool1 (2x2/2)", {N, 64, 224, 224}, {N, 64, 112, 112},
      square(2, 2, 0));
  add(Kernel::MaxPoolRelevance, "ResNet-50 maxpool (3x3/2)", {N, 64, 112, 112}, {N, 1, 56, 56},
      square(3, 2, 1));
  add(Kernel::MaxPoolRelevance, "VGG16 pool5 (2x2/2)", {N, 512, 14, 14}, {N, 1, 7, 7},
      square(2, 2, 0));
  return cases;
}

// Valid geometries with attributes near 2^31 (the fuzzer's: kernels larger than the input
// balanced by pads, dilations and strides beyond it): the kernels visit only the taps inside.
// And tensors without channels.
std::vector<Case> edge_cases() {
  std::vector<Case> cases;
  const int64_t big = INT32_MAX, half = int64_t{1} << 30;
  ConvGeometry wide;  // a 2^31 − 1 kernel along H with 2^30 pads each side, stride 2^31 − 1
  wide.kernel[0] = big;
  wide.kernel[1] = 3;
  wide.pads[0] = wide.pads[2] = half;
  wide.strides[0] = big;
  wide.pads[1] = wide.pads[3] = 1;
  ConvGeometry dilated;  // two taps 2^31 − 1 apart, pads 2^30 each side of W
  dilated.kernel[1] = 2;
  dilated.dilations[1] = big;
  dilated.pads[1] = dilated.pads[3] = half;
  for (const ConvGeometry& geo : {wide, dilated}) {
    const int64_t H = 5, W = 4;
    int64_t span0, span1;
    window_span(H, geo.kernel[0], geo.pads[0], geo.pads[2], geo.dilations[0], span0);
    window_span(W, geo.kernel[1], geo.pads[1], geo.pads[3], geo.dilations[1], span1);
    const int64_t Ho = span0 / geo.strides[0] + 1, Wo = span1 / geo.strides[1] + 1;
    for (int k = 0; k < 4; ++k) {
      Case c;
      c.kernel = static_cast<Kernel>(k);
      c.label = "extreme attributes";
      c.geo = geo;
      c.mode = NormGradMode::Conv;
      c.in0 = {2, 3, Ho, Wo};
      c.in1 = {2, 3, H, W};
      if (c.kernel == Kernel::MaxPoolGradient) c.in0 = {2, 3, H, W}, c.in1 = {2, 3, Ho, Wo};
      if (c.kernel == Kernel::MaxPoolRelevance) c.in0 = {2, 3, H, W}, c.in1 = {2, 1, Ho, Wo};
      cases.push_back(c);
    }
  }
  // empty channels: every norm is 0 (NormGrad), S = 0 (RectifiedConvTranspose), nothing to write
  const ConvGeometry k3 = square(3, 1, 1);
  cases.push_back(Case{Kernel::NormGrad, "no channels", {2, 0, 5, 4}, {2, 0, 5, 4}, k3});
  cases.push_back(Case{Kernel::NormGrad, "no channels", {2, 0, 5, 4}, {2, 3, 5, 4}, k3,
                       NormGradMode::Conv});
  cases.push_back(Case{Kernel::NormGrad, "no channels", {2, 3, 5, 4}, {2, 0, 5, 4}, k3,
                       NormGradMode::Conv});
  cases.push_back(Case{Kernel::RectifiedConvTranspose, "no channels", {2, 0, 5, 4}, {2, 3, 5, 4},
                       k3});
  cases.push_back(Case{Kernel::RectifiedConvTranspose, "no channels", {2, 3, 5, 4}, {2, 0, 5, 4},
                       k3});
  cases.push_back(Case{Kernel::MaxPoolGradient, "no channels", {2, 0, 5, 4}, {2, 0, 5, 4}, k3});
  cases.push_back(Case{Kernel::MaxPoolRelevance, "no channels", {2, 0, 5, 4}, {2, 1, 5, 4}, k3});
  return cases;
}

// One case per kernel whose largest tensor holds more than 2^31 elements and whose output needs
// more than the launch cap of threads (65535·16 blocks of 256): int64 indexing and grid-stride
// loops. About 45 GB of host and 30 GB of device memory at the peak. `divisor` divides the rows
// (a dry run's smaller copy).
std::vector<Case> large_cases(int64_t divisor = 1) {
  const int64_t H = 32769 / divisor, W = 32768;  // H·W just over 2^30
  const int64_t P = 16, h = 11587 / divisor, w = 11586;  // 16 planes of h·w: over 2^31 in all
  const Shape pooled = {P, 1, (h - 2) / 2 + 1, w / 2};
  const char* label = "over 2^31 elements";
  return {
      Case{Kernel::NormGrad, label, {1, 2, H, W}, {1, 2, H, W}, square(1, 1, 0)},
      Case{Kernel::NormGrad, label, {1, 1, H, W}, {1, 2, H, W}, square(3, 1, 1),
           NormGradMode::Conv},
      Case{Kernel::RectifiedConvTranspose, label, {1, 1, H, W}, {1, 2, H, W}, square(3, 1, 1)},
      Case{Kernel::MaxPoolGradient, label, {P, 1, h, w}, pooled, square(2, 2, 0)},
      Case{Kernel::MaxPoolRelevance, label, {P, 1, h, w}, pooled, square(2, 2, 0)},
  };
}

// Inputs every check must refuse (one sentence each, printed).
std::vector<Case> malformed_cases() {
  std::vector<Case> cases;
  auto add = [&](Kernel k, Shape in0, Shape in1, ConvGeometry geo,
                 NormGradMode mode = NormGradMode::Conv, int64_t group = 1, float eps = 1e-10f) {
    cases.push_back(Case{k, "malformed", in0, in1, geo, mode, group, eps});
  };
  const ConvGeometry k3 = square(3, 1, 1);
  ConvGeometry zero_kernel = k3, zero_stride = k3, negative_pad = k3, huge_dilation = k3;
  zero_kernel.kernel[1] = 0;
  zero_stride.strides[0] = 0;
  negative_pad.pads[3] = -1;
  huge_dilation.dilations[0] = int64_t{1} << 31;
  const int64_t huge = int64_t{1} << 40;
  for (Kernel k : {Kernel::NormGrad, Kernel::RectifiedConvTranspose}) {
    add(k, {2, 4, 8, 8}, {2, 4, 8, 8}, zero_kernel);
    add(k, {2, 4, 8, 8}, {2, 4, 8, 8}, zero_stride);
    add(k, {2, 4, 8, 8}, {2, 4, 8, 8}, negative_pad);
    add(k, {2, 4, 8, 8}, {2, 4, 8, 8}, huge_dilation);
    add(k, {2, 4, 7, 8}, {2, 4, 8, 8}, k3);             // output size not the conv's
    add(k, {3, 4, 8, 8}, {2, 4, 8, 8}, k3);             // batch differs
    add(k, {2, 4, -8, 8}, {2, 4, 8, 8}, k3);            // negative dimension
    add(k, {2, 4, 8, 8}, {huge, huge, 8, 8}, k3);       // dims multiply past 2^60
    add(k, {2, 4, 1, 1}, {2, 4, 2, 2}, square(9, 1, 1));  // kernel larger than the padded input
  }
  add(Kernel::NormGrad, {2, 4, 8, 8}, {2, 5, 8, 8}, k3, NormGradMode::Identity);
  add(Kernel::NormGrad, {2, 4, 8, 8}, {2, 4, 8, 7}, k3, NormGradMode::Selective);
  add(Kernel::NormGrad, {2, 4, 8, 8}, {2, 4, 8, 8}, k3, static_cast<NormGradMode>(7));
  add(Kernel::RectifiedConvTranspose, {2, 6, 8, 8}, {2, 4, 8, 8}, k3, NormGradMode::Conv, 4);
  add(Kernel::RectifiedConvTranspose, {2, 4, 8, 8}, {2, 4, 8, 8}, k3, NormGradMode::Conv, 0);
  add(Kernel::RectifiedConvTranspose, {2, 4, 8, 8}, {2, 4, 8, 8}, k3, NormGradMode::Conv, 1,
      std::nanf(""));
  add(Kernel::RectifiedConvTranspose, {2, 4, 8, 8}, {2, 4, 8, 8}, k3, NormGradMode::Conv, 1, -1);
  const ConvGeometry pool = square(2, 2, 0);
  add(Kernel::MaxPoolGradient, {2, 4, 8, 8}, {2, 3, 4, 4}, pool);    // channels differ
  add(Kernel::MaxPoolGradient, {2, 4, 8, 8}, {2, 4, 5, 4}, pool);    // neither floor nor ceil
  add(Kernel::MaxPoolGradient, {1, 1, 65536, 32768}, {1, 1, 32768, 16384}, pool);  // plane ≥ 2^31
  add(Kernel::MaxPoolGradient, {2, 4, 8, 8}, {2, 4, 4, 4}, zero_stride);
  add(Kernel::MaxPoolRelevance, {2, 4, 8, 8}, {2, 2, 4, 4}, pool);   // s with two channels
  add(Kernel::MaxPoolRelevance, {2, 4, 8, 8}, {1, 1, 4, 4}, pool);   // batch differs
  add(Kernel::MaxPoolRelevance, {2, 4, 8, 8}, {2, 1, 4, 4}, huge_dilation);
  return cases;
}

// ---- timing --------------------------------------------------------------------------------------

// Median milliseconds of `repeat` runs of the CUDA kernel (CUDA events, after three warm-ups;
// in the host emulation a steady clock around the one-thread CPU kernel).
double time_cuda(const Case& c, int repeat, Stream stream) {
  const Inputs in(c, 11);
  const std::vector<const float*>& ptrs = in.dev_ptrs;
  DeviceBuffer out(static_cast<size_t>(count(output_shape(c))));
#ifndef OSAL_CUDA_CHECK_HOST
  cudaEvent_t start, stop;
  cuda_ok(cudaEventCreate(&start), "cudaEventCreate");
  cuda_ok(cudaEventCreate(&stop), "cudaEventCreate");
#endif
  std::vector<double> ms;
  for (int i = 0; i < repeat + 3; ++i) {
#ifdef OSAL_CUDA_CHECK_HOST
    const auto t0 = std::chrono::steady_clock::now();
    run_cuda(c, ptrs, out.get(), stream);
    const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
#else
    cuda_ok(cudaEventRecord(start, stream), "cudaEventRecord");
    const std::string err = run_cuda(c, ptrs, out.get(), stream);
    if (!err.empty()) throw CudaFailure(err);
    cuda_ok(cudaEventRecord(stop, stream), "cudaEventRecord");
    cuda_ok(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float t = 0;
    cuda_ok(cudaEventElapsedTime(&t, start, stop), "cudaEventElapsedTime");
#endif
    if (i >= 3) ms.push_back(t);
  }
#ifndef OSAL_CUDA_CHECK_HOST
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
#endif
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// One JSON line per timed case: what tests/cuda/time_torch_routes.py needs to time PyTorch.
std::string json_line(const Case& c, double ms) {
  const ConvGeometry& g = c.geo;
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "{\"kernel\": \"%s\", \"layer\": \"%s\", \"in0\": %s, \"in1\": %s, "
                "\"kernel_shape\": [%lld, %lld], \"strides\": [%lld, %lld], "
                "\"pads\": [%lld, %lld, %lld, %lld], \"dilations\": [%lld, %lld], "
                "\"group\": %lld, \"epsilon\": %g, \"cuda_ms\": %.5f}",
                kernel_name(c), c.label.c_str(), text(c.in0).c_str(),
                text(c.in1).c_str(), (long long)g.kernel[0], (long long)g.kernel[1],
                (long long)g.strides[0], (long long)g.strides[1], (long long)g.pads[0],
                (long long)g.pads[1], (long long)g.pads[2], (long long)g.pads[3],
                (long long)g.dilations[0], (long long)g.dilations[1], (long long)c.group,
                double(c.epsilon), ms);
  return buf;
}

// The comparison itself must be able to fail: a changed element, a NaN and an unwritten
// element are each reported.
bool comparison_can_fail() {
  Floats ref = {1.0f, -2.0f, 0.5f, 0.0f}, got = ref;
  got[2] = 0.5f + 4e-5f;  // 2e-5 of the peak
  if (compare(ref, got).relative <= kTolerance) return false;
  got = ref;
  got[1] = std::nanf("");
  if (compare(ref, got).nonfinite_mismatches != 1) return false;
  got = ref;
  got[0] = std::numeric_limits<float>::infinity();
  if (compare(ref, got).nonfinite_mismatches != 1) return false;
  got = ref;
  got[3] = 54321.0f;
  if (compare(ref, got).relative <= kTolerance) return false;
  Floats zeros(4, 0.0f), tiny(4, 0.0f);
  tiny[0] = 1e-30f;
  return compare(zeros, zeros).relative == 0 && compare(zeros, tiny).relative > kTolerance;
}

// "1,8" -> {1, 8}; "none" -> {}.
std::vector<int64_t> parse_batches(const std::string& list) {
  std::vector<int64_t> out;
  size_t at = 0;
  while (list != "none" && at < list.size()) {
    const size_t comma = std::min(list.find(',', at), list.size());
    out.push_back(std::max<int64_t>(1, std::atoll(list.substr(at, comma - at).c_str())));
    at = comma + 1;
  }
  return out;
}

int run(int argc, char** argv) {
  int cases = 300, repeat = 20;
  uint64_t seed = 0;
  bool large = false;
  int large_divisor = 1;
  const char* timing = nullptr;
  std::vector<int64_t> batches = {1, 8};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--cases" && has_value) cases = std::atoi(argv[++i]);
    else if (a == "--seed" && has_value) seed = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--repeat" && has_value) repeat = std::max(1, std::atoi(argv[++i]));
    else if (a == "--timing" && has_value) timing = argv[++i];
    else if (a == "--large") large = true;
    else if (a == "--large-divisor" && has_value) large_divisor = std::max(1, std::atoi(argv[++i]));
    else if (a == "--batches" && has_value) batches = parse_batches(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--cases N] [--seed S] [--batches 1,8|none] [--large] "
                           "[--large-divisor D] [--timing FILE] [--repeat R]\n", argv[0]);
      return 2;
    }
  }
  const std::string device = device_name();
  if (device.empty()) {
    std::fprintf(stderr, "check_cuda_kernels: no CUDA device is visible; nothing was checked.\n");
    return 2;
  }
  std::printf("device: %s\n", device.c_str());
  if (!comparison_can_fail()) {
    std::printf("the comparison missed a planted difference\n");
    return 1;
  }

  int refused = 0;
  for (const Case& c : malformed_cases()) {
    const std::string err = check(c);
    if (err.empty()) {
      std::printf("NOT REFUSED %s\n", describe(c).c_str());
    } else {
      ++refused;
      std::printf("refused: %s\n", err.c_str());
    }
  }
  const int malformed = static_cast<int>(malformed_cases().size());

  Report report;
  Stream stream = make_stream();
  Random r{std::mt19937_64(seed)};
  Floats ref, got;
  std::vector<Case> all;
  for (int k = 0; k < 4; ++k) {
    for (int i = 0; i < cases; ++i) all.push_back(random_case(r, static_cast<Kernel>(k)));
  }
  for (const Case& c : edge_cases()) all.push_back(c);
  for (int64_t n : batches) {
    for (Case c : real_layers(n)) {
      for (Fill f : {Fill::Smooth, Fill::Ties}) {
        if (f == Fill::Ties && c.kernel < Kernel::MaxPoolGradient) continue;
        c.fill = f;
        all.push_back(c);
      }
    }
  }
  if (large) {
    for (const Case& c : large_cases(large_divisor)) all.push_back(c);
  }
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t case_seed = seed * 1000003;
  for (const Case& c : all) {
    if (c.label == large_cases()[0].label) std::printf("large case: %s\n", describe(c).c_str());
    const std::string err = check(c);
    if (!err.empty()) {  // every generated case is valid: a refusal here is the harness's bug
      std::printf("INVALID %s: %s\n", describe(c).c_str(), err.c_str());
      ++report.failures;
      continue;
    }
    run_both(c, ++case_seed, stream, ref, got);
    report.add(c, compare(ref, got));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  report.print();
  std::printf("\nmalformed inputs refused by the checks: %d of %d\n", refused, malformed);
  std::printf("%d cases compared in %.1f s, %d failures (tolerance %.0e of each case's peak)\n",
              static_cast<int>(all.size()), seconds, report.failures, kTolerance);

  if (timing) {
    FILE* f = std::fopen(timing, "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", timing);
      return 2;
    }
    for (int64_t n : batches) {
      for (const Case& c : real_layers(n)) {
        const double ms = time_cuda(c, repeat, stream);
        std::fprintf(f, "%s\n", json_line(c, ms).c_str());
        std::printf("timed %s: %.4f ms\n", describe(c).c_str(), ms);
      }
    }
    std::fclose(f);
  }
  free_stream(stream);
  return report.failures == 0 && refused == malformed ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // lines reach a pipe as they come (a killed run too)
  try {
    return run(argc, argv);
  } catch (const CudaFailure& e) {
    std::fprintf(stderr, "check_cuda_kernels: CUDA error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "check_cuda_kernels: %s\n", e.what());
    return 2;
  }
}
