// cellkern._C: the CPU module and the entry point of every op (ops dispatch to the _cuda/_emu tables); each op
// binds its own functions in bindings/bind_<op>.cpp.
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/binders.h"
#include "core/check.h"
#include "core/cpu_isa.h"
#include "core/parallel.h"
#include "core/registry.h"

namespace py = pybind11;
using namespace ck;

namespace {

Backend backend_from(const std::string& s) {
  if (s == "cuda") return Backend::cuda;
  if (s == "emu") return Backend::emu;
  CK_CHECK_VALUE(s == "cpu", "unknown backend '", s, "' (cpu, cuda or emu)");
  return Backend::cpu;
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

  bind_pool(m);
  bind_conv(m);
  bind_star(m);
  bind_star3d(m);

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
