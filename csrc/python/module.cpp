// pybind11 bindings: the kernels of csrc/kernels on NumPy arrays (onnx_saliency._kernels), and
// the path of the ONNX Runtime custom-op library built beside this module.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>
#include <vector>

#include "max_pool_gradient.h"
#include "normgrad.h"
#include "rectified_conv_transpose.h"

#ifndef OSAL_ORT_LIBRARY_NAME
#define OSAL_ORT_LIBRARY_NAME ""
#endif
#ifndef OSAL_ORT_API_VERSION
#define OSAL_ORT_API_VERSION 0
#endif

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style>;
using onnx_saliency::ConvGeometry;

namespace {

std::array<int64_t, 4> shape4(const py::array& x, const char* what) {
  if (x.ndim() != 4) {
    throw py::value_error(std::string(what) + " must be a 4-D [N,C,H,W] array, got rank " +
                          std::to_string(x.ndim()) + ".");
  }
  return {x.shape(0), x.shape(1), x.shape(2), x.shape(3)};
}

FloatArray as_float32(const py::array& x, const char* what) {
  if (!py::isinstance<py::array_t<float>>(x)) {
    throw py::type_error(std::string(what) + " must be a float32 array.");
  }
  return FloatArray::ensure(x);  // C-contiguous (copies only a non-contiguous view)
}

template <size_t N>
void fill(int64_t* dst, const std::vector<int64_t>& src, const char* op, const char* what) {
  if (src.size() != N) {
    throw py::value_error(std::string(op) + ": " + what + " must have " + std::to_string(N) +
                          " values.");
  }
  for (size_t i = 0; i < N; ++i) dst[i] = src[i];
}

// The geometry attributes (values checked by the op's check).
ConvGeometry geometry(const char* op, const std::vector<int64_t>& kernel_shape,
                      const std::vector<int64_t>& strides, const std::vector<int64_t>& pads,
                      const std::vector<int64_t>& dilations) {
  ConvGeometry geo;
  fill<2>(geo.kernel, kernel_shape, op, "kernel_shape");
  fill<2>(geo.strides, strides, op, "strides");
  fill<4>(geo.pads, pads, op, "pads");
  fill<2>(geo.dilations, dilations, op, "dilations");
  return geo;
}

FloatArray normgrad(const py::array& g_in, const py::array& a_in, const std::string& mode,
                    const std::vector<int64_t>& kernel_shape, const std::vector<int64_t>& strides,
                    const std::vector<int64_t>& pads, const std::vector<int64_t>& dilations,
                    int threads) {
  FloatArray g = as_float32(g_in, "g"), a = as_float32(a_in, "a");
  auto gs = shape4(g, "g"), as = shape4(a, "a");
  onnx_saliency::NormGradMode m;
  ConvGeometry geo = geometry("NormGrad", kernel_shape, strides, pads, dilations);
  std::string err = onnx_saliency::normgrad_mode(mode, m);
  if (err.empty()) err = onnx_saliency::normgrad_check(gs.data(), as.data(), geo, m);
  if (!err.empty()) throw py::value_error(err);
  FloatArray out({gs[0], int64_t{1}, gs[2], gs[3]});
  const float* gp = g.data();
  const float* ap = a.data();
  float* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    onnx_saliency::normgrad_cpu(gp, gs.data(), ap, as.data(), geo, m, op,
                                onnx_saliency::ThreadParallel(threads));
  }
  return out;
}

FloatArray rectified_conv_transpose(const py::array& g_in, const py::array& z_in,
                                    const py::array& a_in, const std::vector<int64_t>& kernel_shape,
                                    const std::vector<int64_t>& strides,
                                    const std::vector<int64_t>& pads,
                                    const std::vector<int64_t>& dilations, int64_t group,
                                    float epsilon, int threads) {
  FloatArray g = as_float32(g_in, "g"), z = as_float32(z_in, "z"), a = as_float32(a_in, "a");
  auto gs = shape4(g, "g"), zs = shape4(z, "z"), as = shape4(a, "a");
  ConvGeometry geo = geometry("RectifiedConvTranspose", kernel_shape, strides, pads, dilations);
  std::string err = onnx_saliency::rectified_conv_transpose_check(gs.data(), zs.data(), as.data(),
                                                                  geo, group, epsilon);
  if (!err.empty()) throw py::value_error(err);
  FloatArray out({as[0], as[1], as[2], as[3]});
  const float* gp = g.data();
  const float* zp = z.data();
  const float* ap = a.data();
  float* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    onnx_saliency::rectified_conv_transpose_cpu(gp, zp, gs.data(), ap, as.data(), geo, group,
                                                epsilon, op, onnx_saliency::ThreadParallel(threads));
  }
  return out;
}

// MaxPoolGradient (Relevance = false) or MaxPoolRelevance (true): x and the pool-grid input g
// (s for the relevance), checked, run on std::threads.
template <bool Relevance>
FloatArray max_pool_backward(const py::array& x_in, const py::array& g_in,
                             const std::vector<int64_t>& kernel_shape,
                             const std::vector<int64_t>& strides, const std::vector<int64_t>& pads,
                             const std::vector<int64_t>& dilations, int threads) {
  const char* second = Relevance ? "s" : "g";
  FloatArray x = as_float32(x_in, "x"), g = as_float32(g_in, second);
  auto xs = shape4(x, "x"), gs = shape4(g, second);
  ConvGeometry geo = geometry(Relevance ? "MaxPoolRelevance" : "MaxPoolGradient", kernel_shape,
                              strides, pads, dilations);
  std::string err = Relevance ? onnx_saliency::max_pool_relevance_check(xs.data(), gs.data(), geo)
                              : onnx_saliency::max_pool_gradient_check(xs.data(), gs.data(), geo);
  if (!err.empty()) throw py::value_error(err);
  FloatArray out({xs[0], Relevance ? int64_t{1} : xs[1], xs[2], xs[3]});
  const float* xp = x.data();
  const float* gp = g.data();
  float* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    const onnx_saliency::ThreadParallel parallel(threads);
    if constexpr (Relevance) {
      onnx_saliency::max_pool_relevance_cpu(xp, xs.data(), gp, gs.data(), geo, op, parallel);
    } else {
      onnx_saliency::max_pool_gradient_cpu(xp, xs.data(), gp, gs.data(), geo, op, parallel);
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "onnx-saliency's C++ kernels on NumPy arrays, and the custom-op library's path.";
  auto k1 = std::vector<int64_t>{1, 1};
  auto p0 = std::vector<int64_t>{0, 0, 0, 0};
  m.def("normgrad", &normgrad, py::arg("g"), py::arg("a"), py::arg("mode") = "identity",
        py::arg("kernel_shape") = k1, py::arg("strides") = k1, py::arg("pads") = p0,
        py::arg("dilations") = k1, py::arg("threads") = 0,
        R"doc(Per-location NormGrad map [N,1,Ho,Wo] (float32).

identity:  ||g_u|| * ||a_u||          (g, a same shape)
conv:      ||g_v|| * ||P_k(a)_v||      (a = the conv's input; its kernel/strides/pads/dilations)
selective: ||max(a_u * g_u, 0)||)doc");
  m.def("rectified_conv_transpose", &rectified_conv_transpose, py::arg("g"), py::arg("z"),
        py::arg("a"), py::arg("kernel_shape") = k1, py::arg("strides") = k1, py::arg("pads") = p0,
        py::arg("dilations") = k1, py::arg("group") = 1, py::arg("epsilon") = 1e-10f,
        py::arg("threads") = 0,
        R"doc(The TSGB-Conv backward [N,C,H,W] (float32) of a conv with input a, output z.

out = sign(a) * ConvTranspose(S / (D + eps), ones), S = sum_k g*z over each group's output
channels, D = box-sum over the conv window of sum_c |a| over the group's input channels.)doc");
  m.def("max_pool_gradient", &max_pool_backward<false>, py::arg("x"), py::arg("g"),
        py::arg("kernel_shape") = k1, py::arg("strides") = k1, py::arg("pads") = p0,
        py::arg("dilations") = k1, py::arg("threads") = 0,
        R"doc(The 2-D MaxPool backward [N,C,H,W] (float32): g [N,C,Ho,Wo] routed to the first
maximum (row-major, padding never wins) of each window of x, overlapping windows adding up.)doc");
  m.def("max_pool_relevance", &max_pool_backward<true>, py::arg("x"), py::arg("s"),
        py::arg("kernel_shape") = k1, py::arg("strides") = k1, py::arg("pads") = p0,
        py::arg("dilations") = k1, py::arg("threads") = 0,
        R"doc(TSGB's relevance [N,1,H,W] (float32) at a MaxPool's input x when its output carries
sign(p)*s, s [N,1,Ho,Wo]: sum over channels of s*|x| routed to each window's first maximum.)doc");
  m.def("library_path", [m]() -> py::object {
        std::string name = OSAL_ORT_LIBRARY_NAME;
        if (name.empty()) return py::none();
        py::object os_path = py::module_::import("os.path");
        py::object here = os_path.attr("dirname")(m.attr("__file__"));
        py::object path = os_path.attr("join")(here, name);
        if (!os_path.attr("exists")(path).cast<bool>()) return py::none();
        return path;
      },
      "Path of the ONNX Runtime custom-op library (for "
      "SessionOptions.register_custom_ops_library), or None if it was not built.");
  m.attr("ORT_API_VERSION") = OSAL_ORT_API_VERSION;
#ifdef OSAL_BUILT_WITH_CUDA
  m.attr("CUDA") = true;
#else
  m.attr("CUDA") = false;
#endif
}
