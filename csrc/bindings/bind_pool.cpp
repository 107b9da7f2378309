// Python bindings of max-pooling: DLPack views in, GIL released around the kernels.
#include "bindings/binders.h"
#include "bindings/interop.h"
#include "ops/pool/pool.h"

namespace py = pybind11;

namespace ck {
namespace {

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

void bind_pool(py::module_& m) {
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
      py::arg("x"), py::arg("out"), py::arg("indices"), py::arg("kernel_size"), py::arg("stride"), py::arg("padding"),
      py::arg("dilation"), py::arg("ceil_mode"), py::arg("index_mode"), py::arg("emu") = false, py::arg("stream") = 0,
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
         bool ceil_mode) {
        return max_pool_output_shape(shape, pool_params(kernel, stride, padding, dilation, ceil_mode));
      },
      py::arg("shape"), py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
      py::arg("ceil_mode"), "Output shape of max-pooling an input of this shape (validates the parameters).");
}

}  // namespace ck
