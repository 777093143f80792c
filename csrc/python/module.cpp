// pybind11 bindings: the kernels of csrc/kernels on NumPy arrays (onnx_saliency._kernels).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>
#include <vector>

#include "normgrad.h"

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style>;

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
  return FloatArray::ensure(x);
}

template <size_t N>
void fill(int64_t* dst, const std::vector<int64_t>& src, const char* what) {
  if (src.size() != N) {
    throw py::value_error(std::string(what) + " must have " + std::to_string(N) + " values.");
  }
  for (size_t i = 0; i < N; ++i) dst[i] = src[i];
}

FloatArray normgrad(const py::array& g_in, const py::array& a_in, const std::string& mode,
                    const std::vector<int64_t>& kernel_shape, const std::vector<int64_t>& strides,
                    const std::vector<int64_t>& pads, const std::vector<int64_t>& dilations,
                    int threads) {
  FloatArray g = as_float32(g_in, "g"), a = as_float32(a_in, "a");
  auto gs = shape4(g, "g"), as = shape4(a, "a");
  onnx_saliency::NormGradMode m;
  if (mode == "identity") m = onnx_saliency::NormGradMode::Identity;
  else if (mode == "conv") m = onnx_saliency::NormGradMode::Conv;
  else if (mode == "selective") m = onnx_saliency::NormGradMode::Selective;
  else throw py::value_error("mode must be 'identity', 'conv' or 'selective', not '" + mode + "'.");
  onnx_saliency::ConvGeometry geo;
  fill<2>(geo.kernel, kernel_shape, "kernel_shape");
  fill<2>(geo.strides, strides, "strides");
  fill<4>(geo.pads, pads, "pads");
  fill<2>(geo.dilations, dilations, "dilations");
  std::string err = onnx_saliency::normgrad_check(gs.data(), as.data(), geo, m);
  if (!err.empty()) throw py::value_error(err);
  FloatArray out({gs[0], int64_t{1}, gs[2], gs[3]});
  const float* gp = g.data();
  const float* ap = a.data();
  float* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    onnx_saliency::normgrad_cpu(gp, gs.data(), ap, as.data(), geo, m, op, threads);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "onnx-saliency's C++ kernels on NumPy arrays.";
  m.def("normgrad", &normgrad, py::arg("g"), py::arg("a"), py::arg("mode") = "identity",
        py::arg("kernel_shape") = std::vector<int64_t>{1, 1},
        py::arg("strides") = std::vector<int64_t>{1, 1},
        py::arg("pads") = std::vector<int64_t>{0, 0, 0, 0},
        py::arg("dilations") = std::vector<int64_t>{1, 1}, py::arg("threads") = 0,
        R"doc(Per-location NormGrad map [N,1,Ho,Wo] (float32).

identity:  ||g_u|| * ||a_u||          (g, a same shape)
conv:      ||g_v|| * ||P_k(a)_v||      (a = the conv's input; its kernel/strides/pads/dilations)
selective: ||max(a_u * g_u, 0)||)doc");
}
