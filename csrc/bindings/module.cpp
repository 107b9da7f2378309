// cellkern._C: the CPU module, and the single entry point for every op (it dispatches to _cuda/_emu tables).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/interop.h"
#include "core/check.h"
#include "core/cpu_isa.h"
#include "core/parallel.h"
#include "core/registry.h"
#include "ops/pool/pool.h"

namespace py = pybind11;
using namespace ck;

namespace {

using Ints = std::vector<int64_t>;

Backend backend_from(const std::string& s) {
  if (s == "cuda") return Backend::cuda;
  if (s == "emu") return Backend::emu;
  CK_CHECK_VALUE(s == "cpu", "unknown backend '", s, "' (cpu, cuda or emu)");
  return Backend::cpu;
}

void copy_dims(const Ints& v, int nd, int64_t* dst, const char* name) {
  CK_CHECK_VALUE(int(v.size()) == nd, name, ": expected ", nd, " values, got ", v.size());
  for (int i = 0; i < nd; ++i) dst[i] = v[i];
}

PoolParams pool_params(const Ints& kernel, const Ints& stride, const Ints& padding, const Ints& dilation,
                       bool ceil_mode) {
  PoolParams p;
  p.nd = int(kernel.size());
  CK_CHECK_VALUE(p.nd == 2 || p.nd == 3, "kernel_size: expected 2 or 3 values, got ", kernel.size());
  copy_dims(kernel, p.nd, p.kernel, "kernel_size");
  copy_dims(stride, p.nd, p.stride, "stride");
  copy_dims(padding, p.nd, p.padding, "padding");
  copy_dims(dilation, p.nd, p.dilation, "dilation");
  p.ceil_mode = ceil_mode;
  return p;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "cellkern CPU kernels and the dispatch point of every op";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ck::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  m.def(
      "max_pool_forward",
      [](py::handle x, py::handle out, py::handle idx, const Ints& kernel, const Ints& stride, const Ints& padding,
         const Ints& dilation, bool ceil_mode, int mode, bool emu, uintptr_t stream) {
        Keepalive keep;
        TensorView xv = view(x, "x", keep), ov = view(out, "out", keep), iv = view(idx, "indices", keep);
        PoolParams p = pool_params(kernel, stride, padding, dilation, ceil_mode);
        ensure_backend(xv, emu);
        py::gil_scoped_release nogil;
        max_pool_forward(xv, ov, iv, p, PoolIndex(mode), emu, reinterpret_cast<void*>(stream));
      },
      py::arg("x"), py::arg("out"), py::arg("indices"), py::arg("kernel_size"), py::arg("stride"),
      py::arg("padding"), py::arg("dilation"), py::arg("ceil_mode"), py::arg("index_mode"), py::arg("emu") = false,
      py::arg("stream") = 0,
      "Max-pool x into out (and indices: index_mode 0 none, 1 uint8 window position, 2 int64 flat index).");
  m.def(
      "max_pool_backward",
      [](py::handle grad_out, py::handle idx, py::handle grad_in, const Ints& kernel, const Ints& stride,
         const Ints& padding, const Ints& dilation, bool ceil_mode, int mode, bool emu, uintptr_t stream) {
        Keepalive keep;
        TensorView gv = view(grad_out, "grad_output", keep), iv = view(idx, "indices", keep),
                   gi = view(grad_in, "grad_input", keep);
        PoolParams p = pool_params(kernel, stride, padding, dilation, ceil_mode);
        ensure_backend(gi, emu);
        py::gil_scoped_release nogil;
        max_pool_backward(gv, iv, gi, p, PoolIndex(mode), emu, reinterpret_cast<void*>(stream));
      },
      py::arg("grad_output"), py::arg("indices"), py::arg("grad_input"), py::arg("kernel_size"), py::arg("stride"),
      py::arg("padding"), py::arg("dilation"), py::arg("ceil_mode"), py::arg("index_mode"), py::arg("emu") = false,
      py::arg("stream") = 0, "Scatter grad_output through the indices into grad_input (overwritten).");

  m.def(
      "max_pool_output_shape",
      [](const Ints& shape, const Ints& kernel, const Ints& stride, const Ints& padding, const Ints& dilation,
         bool ceil_mode) { return max_pool_output_shape(shape, pool_params(kernel, stride, padding, dilation, ceil_mode)); },
      py::arg("shape"), py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      py::arg("ceil_mode"), "Output shape of max-pooling an input of this shape (validates the parameters).");

  m.def("set_num_threads", &ck::set_num_threads, py::arg("n"),
        "Threads for cellkern's OpenMP regions (0 = OpenMP's default).");
  m.def("get_num_threads", &ck::num_threads);
  m.def("cpu_isa", [] { return std::string(cpu_isa_name()); });
  m.def(
      "set_cpu_isa",
      [](const std::string& name) {
        CK_CHECK_VALUE(name == "avx2" || name == "base", "cpu isa must be 'avx2' or 'base', got '", name, "'");
        return set_cpu_isa(name == "avx2" ? CpuIsa::avx2 : CpuIsa::base);
      },
      py::arg("name"), "Choose the CPU kernel variant; returns False if this CPU or build lacks it.");
  m.def("build_info", [] {
    py::dict d;
#ifdef _OPENMP
    d["openmp"] = _OPENMP;
#else
    d["openmp"] = py::none();
#endif
#ifdef CK_HAVE_AVX2
    d["avx2_compiled"] = true;
#else
    d["avx2_compiled"] = false;
#endif
    d["compiler"] = __VERSION__;
    return d;
  });

  m.def(
      "_register_backend",
      [](const std::string& name, py::dict tables) {
        Backend b = backend_from(name);
        for (auto item : tables) {
          auto cap = py::reinterpret_borrow<py::capsule>(item.second);
          const auto* t = static_cast<const KernelTable*>(cap.get_pointer());
          register_kernels(b, py::cast<std::string>(item.first), *t);
        }
      },
      py::arg("name"), py::arg("tables"));
  m.def(
      "_set_backend_error",
      [](const std::string& name, const std::string& reason) { set_backend_error(backend_from(name), reason); },
      py::arg("name"), py::arg("reason"));
}
