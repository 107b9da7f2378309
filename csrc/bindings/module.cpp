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

// Opens a parallel region of the given kind on `threads` threads, in which one worker (not the calling thread's)
// throws an exception of the given kind: the exception must come out of the call, never std::terminate.
void test_parallel_throw(const std::string& region, const std::string& kind, int threads) {
  auto raise = [&] {
    if (kind == "bad_alloc") throw std::bad_alloc();
    if (kind == "memory") throw ck::MemoryError("test: could not allocate 123456789 bytes");
    if (kind == "value") throw ck::ValueError("test: a value error from a worker");
    if (kind == "type") throw ck::TypeError("test: a type error from a worker");
    if (kind == "none") return;
    throw ck::RuntimeError("test: a runtime error from a worker");
  };
  const int before = ck::num_threads();
  ck::set_num_threads(threads);
  struct Restore {
    int n;
    ~Restore() { ck::set_num_threads(n); }
  } restore{before};
  py::gil_scoped_release nogil;
  constexpr int64_t n = 64;
  if (region == "parallel_for") {
    ck::parallel_for(n, 1, [&](int64_t b, int64_t) {
      if (b > 0) raise();
    });
  } else if (region == "dynamic_for") {
    ck::dynamic_for(n, ck::kSerialWork + 1, [&](int64_t i) {
      if (i == n / 2) raise();
    });
  } else if (region == "run_workers") {
    ck::run_workers(threads, true, [&](int w) {
      if (w == threads - 1) raise();
    });
  } else if (region == "nested") {  // a kernel's parallel_for inside a parallel region (runs serially there)
    ck::parallel_for(n, 1, [&](int64_t b, int64_t e) {
      ck::parallel_for(e - b, 1, [&](int64_t, int64_t) {
        if (b > 0) raise();
      });
    });
  } else {
    throw ck::ValueError("region: expected parallel_for, dynamic_for, run_workers or nested, got '" + region + "'");
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "cellkern CPU kernels and the dispatch point of every op";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const ck::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const ck::MemoryError& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "out of memory: a cellkern kernel could not allocate its working memory "
                                         "(std::bad_alloc)");
    } catch (const std::length_error& e) {  // a std::vector asked for more than max_size()
      PyErr_SetString(PyExc_MemoryError, (std::string("out of memory: ") + e.what()).c_str());
    }
  });

  bind_pool(m);
  bind_conv(m);
  bind_star(m);
  bind_star3d(m);

  m.def("_test_parallel_throw", &test_parallel_throw, py::arg("region"), py::arg("kind"), py::arg("threads"),
        "Test hook: a worker of a parallel region throws `kind`; returns only if nothing was thrown.");
  m.def("set_num_threads", &ck::set_num_threads, py::arg("n"),
        "Threads for cellkern's OpenMP regions (0 = OpenMP's default).");
  m.def("get_num_threads", &ck::num_threads);
  m.def("cpu_isa", [] { return std::string(cpu_isa_name()); });
  m.def(
      "set_cpu_isa",
      [](const std::string& name) {
        CpuIsa isa;
        CK_CHECK_VALUE(cpu_isa_from_name(name.c_str(), &isa), "cpu isa must be 'avx512', 'avx2' or 'base', got '", name,
                       "'");
        return set_cpu_isa(isa);
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
