// cellkern._cuda and cellkern._emu: the same file built twice, exporting the kernel tables of cuda/tables.h
// (compiled by nvcc for _cuda, by g++ against the emulator for _emu) plus per-module extras.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "cuda/device_tables.h"

#if defined(CK_MODULE_CUDA)
#include "cuda/status.h"
#define CK_MODULE_NAME _cuda
#else
#include "emu/selftest.h"
#define CK_MODULE_NAME _emu
#endif

namespace py = pybind11;

PYBIND11_MODULE(CK_MODULE_NAME, m) {
  m.def("kernel_tables", [] {
    py::dict d;
    for (const auto& t : ck::device_tables()) d[t.op] = py::capsule(static_cast<const void*>(&t.table), "cellkern.kernel_table");
    return d;
  });
#if defined(CK_MODULE_CUDA)
  m.def("status", [] {
    ck::CudaStatus s = ck::query_cuda_status();
    py::dict d;
    d["device_count"] = s.device_count;
    d["error"] = s.error;
    d["error_name"] = s.error_name;
    d["error_string"] = s.error_string;
    d["runtime_version"] = s.runtime_version;
    d["driver_version"] = s.driver_version;
    return d;
  });
  m.attr("architectures") = CK_CUDA_ARCHS;
#else
  // Self-tests of the emulator itself (tests/emu): host vectors in, host vectors out.
  namespace st = ck::selftest;
  using F = std::vector<float>;
  using I = std::vector<int>;
  auto t = m.def_submodule("selftest", "kernels that prove the emulator right and able to fail");
  py::call_guard<py::gil_scoped_release> nogil;
  t.def("reverse", [](const F& in, bool sync) { F out(in.size()); st::reverse(in.data(), out.data(), int(in.size()), sync); return out; }, nogil);
  t.def("neighbour_sum", [](const F& in, int n, int iters, bool second_sync) { F out(n); st::neighbour_sum(in.data(), out.data(), n, iters, second_sync); return out; }, nogil);
  t.def("early_return", [] { F out(32); st::early_return(out.data()); }, nogil);
  t.def("divergent_barrier", [] { F out(32); st::divergent_barrier(out.data()); }, nogil);
  t.def("warp_deadlock", [] { I out(32); st::warp_deadlock(out.data()); }, nogil);
  t.def("bad_launch", [] { F out(2048); st::bad_launch(out.data()); }, nogil);
  t.def("warp_ops", [](const I& in, int blocks, int threads) { I out(6 * in.size()); st::warp_ops(in.data(), out.data(), blocks, threads); return out; }, nogil);
  t.def("segment_sum", [](const F& in, int blocks, int threads) { F out(in.size()); st::segment_sum(in.data(), out.data(), blocks, threads); return out; }, nogil);
  t.def("atomics", [](const I& in, int bins, int blocks) { I hist(bins, 0); float total = 0; st::atomics(in.data(), int(in.size()), hist.data(), bins, &total, blocks); return py::make_tuple(hist, total); });
  t.def("block_isolation", [](int blocks, int threads) { I out(size_t(blocks) * threads); st::block_isolation(out.data(), blocks, threads); return out; }, nogil);
  t.def("order", [](int threads) { I ticket(threads); int counter = 0; st::order(ticket.data(), &counter, threads); return ticket; }, nogil);
  t.def("block_sum", [](const F& in, int blocks, int threads) { F out(blocks); I pos(blocks); st::block_sum(in.data(), out.data(), pos.data(), blocks, threads); return py::make_tuple(out, pos); });
#endif
}
