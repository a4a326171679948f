// pybind11 module `suite._C`: the private kernel layer behind suite/kernels.py.
//
// CPU entry points take numpy arrays that share memory with torch tensors (tensor.numpy()),
// declared `noconvert` so that a wrong dtype or a non-contiguous array is an error rather than a
// silent copy (the kernels write in place). CUDA entry points (built only when nvcc was found)
// take raw device pointers, sizes, the device index and the stream, so the build needs neither
// torch's C++ API nor its headers. Python checks every argument first; the checks here only
// keep memory access in bounds. The GIL is released while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "cpu/kernels.h"
#ifdef SUITE_WITH_CUDA
#include "cuda/kernels.h"
#endif

namespace py = pybind11;

namespace {

template <class T>
using carray = py::array_t<T, py::array::c_style>;

void require(bool ok, const std::string& what) {
  if (!ok) throw py::value_error("suite._C: " + what);
}

// (n, m, k) of a 3-D logits array.
void logits_shape(const carray<float>& logits, std::int64_t* n, std::int64_t* m,
                  std::int64_t* k) {
  require(logits.ndim() == 3, "logits must be 3-D (n, m, k)");
  *n = logits.shape(0);
  *m = logits.shape(1);
  *k = logits.shape(2);
  require(*k >= 1, "logits need k >= 1 classes");
}

void check_outputs(const carray<double>& loss, const carray<float>& grad_bias, std::int64_t m,
                   std::int64_t k) {
  require(loss.ndim() == 1 && loss.shape(0) == m, "loss must have shape (m,)");
  require(grad_bias.ndim() == 2 && grad_bias.shape(0) == m && grad_bias.shape(1) == k,
          "grad_bias must have shape (m, k)");
}

void softmax_xent_grad(carray<float> logits, carray<std::int64_t> labels, carray<double> loss,
                       carray<float> grad_bias, int num_threads) {
  std::int64_t n, m, k;
  logits_shape(logits, &n, &m, &k);
  require(labels.ndim() == 1 && labels.shape(0) == n, "labels must have shape (n,)");
  check_outputs(loss, grad_bias, m, k);
  const std::int64_t* y = labels.data();
  for (std::int64_t i = 0; i < n; ++i) require(y[i] >= 0 && y[i] < k, "labels out of [0, k)");
  float* z = logits.mutable_data();
  double* l = loss.mutable_data();
  float* g = grad_bias.mutable_data();
  py::gil_scoped_release release;
  suite::cpu::softmax_xent_grad(z, y, n, m, k, l, g, num_threads);
}

void sigmoid_bce_grad(carray<float> logits, carray<float> targets, carray<double> loss,
                      carray<float> grad_bias, int num_threads) {
  std::int64_t n, m, k;
  logits_shape(logits, &n, &m, &k);
  require(targets.ndim() == 2 && targets.shape(0) == n && targets.shape(1) == k,
          "targets must have shape (n, k)");
  check_outputs(loss, grad_bias, m, k);
  const float* t = targets.data();
  float* z = logits.mutable_data();
  double* l = loss.mutable_data();
  float* g = grad_bias.mutable_data();
  py::gil_scoped_release release;
  suite::cpu::sigmoid_bce_grad(z, t, n, m, k, l, g, num_threads);
}

void argmax(carray<float> logits, carray<std::int64_t> out, int num_threads) {
  std::int64_t n, m, k;
  logits_shape(logits, &n, &m, &k);
  require(out.ndim() == 2 && out.shape(0) == n && out.shape(1) == m, "out must have shape (n, m)");
  const float* z = logits.data();
  std::int64_t* o = out.mutable_data();
  py::gil_scoped_release release;
  suite::cpu::argmax(z, n, m, k, o, num_threads);
}

#ifdef SUITE_WITH_CUDA
template <class T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}
#endif

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "suite's compiled probe kernels (private; use suite.kernels).";
#ifdef SUITE_WITH_CUDA
  mod.attr("cuda_available") = true;
#else
  mod.attr("cuda_available") = false;
#endif

  mod.def("softmax_xent_grad", &softmax_xent_grad, py::arg("logits").noconvert(),
          py::arg("labels").noconvert(), py::arg("loss").noconvert(),
          py::arg("grad_bias").noconvert(), py::arg("num_threads"),
          "In place: logits (n,m,k) <- softmax - onehot(labels); writes loss (m,) and "
          "grad_bias (m,k).");
  mod.def("sigmoid_bce_grad", &sigmoid_bce_grad, py::arg("logits").noconvert(),
          py::arg("targets").noconvert(), py::arg("loss").noconvert(),
          py::arg("grad_bias").noconvert(), py::arg("num_threads"),
          "In place: logits (n,m,k) <- sigmoid - targets (n,k); writes loss (m,) and "
          "grad_bias (m,k).");
  mod.def("argmax", &argmax, py::arg("logits").noconvert(), py::arg("out").noconvert(),
          py::arg("num_threads"), "out (n,m) <- argmax over k of logits (n,m,k).");

#ifdef SUITE_WITH_CUDA
  mod.def(
      "softmax_xent_grad_cuda",
      [](std::uintptr_t logits, std::uintptr_t labels, std::uintptr_t loss,
         std::uintptr_t grad_bias, std::int64_t n, std::int64_t m, std::int64_t k, int device,
         std::uintptr_t stream) {
        py::gil_scoped_release release;
        suite::cuda::softmax_xent_grad(ptr<float>(logits), ptr<const std::int64_t>(labels), n,
                                       m, k, ptr<double>(loss), ptr<float>(grad_bias), device,
                                       stream);
      },
      py::arg("logits"), py::arg("labels"), py::arg("loss"), py::arg("grad_bias"),
      py::arg("n"), py::arg("m"), py::arg("k"), py::arg("device"), py::arg("stream"));
  mod.def(
      "sigmoid_bce_grad_cuda",
      [](std::uintptr_t logits, std::uintptr_t targets, std::uintptr_t loss,
         std::uintptr_t grad_bias, std::int64_t n, std::int64_t m, std::int64_t k, int device,
         std::uintptr_t stream) {
        py::gil_scoped_release release;
        suite::cuda::sigmoid_bce_grad(ptr<float>(logits), ptr<const float>(targets), n, m, k,
                                      ptr<double>(loss), ptr<float>(grad_bias), device, stream);
      },
      py::arg("logits"), py::arg("targets"), py::arg("loss"), py::arg("grad_bias"),
      py::arg("n"), py::arg("m"), py::arg("k"), py::arg("device"), py::arg("stream"));
  mod.def(
      "argmax_cuda",
      [](std::uintptr_t logits, std::uintptr_t out, std::int64_t n, std::int64_t m,
         std::int64_t k, int device, std::uintptr_t stream) {
        py::gil_scoped_release release;
        suite::cuda::argmax(ptr<const float>(logits), n, m, k, ptr<std::int64_t>(out), device,
                            stream);
      },
      py::arg("logits"), py::arg("out"), py::arg("n"), py::arg("m"), py::arg("k"),
      py::arg("device"), py::arg("stream"));
#endif
}
