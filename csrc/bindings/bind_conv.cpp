// Python bindings of convolution and transposed convolution: DLPack views in, GIL released around the kernels.
#include <string>

#include "bindings/binders.h"
#include "bindings/interop.h"
#include "ops/conv/conv.h"

namespace py = pybind11;

namespace ck {
namespace {

ConvParams conv_params(const Ints& stride, const Ints& pad_lo, const Ints& pad_hi, const Ints& dilation,
                       int64_t groups, int pad_mode, int act, double slope) {
  ConvParams p;
  p.nd = int(stride.size());
  CK_CHECK_VALUE(p.nd == 2 || p.nd == 3, "stride: expected 2 or 3 values, got ", stride.size());
  copy_dims(stride, p.nd, p.stride, "stride");
  copy_dims(pad_lo, p.nd, p.pad_lo, "padding");
  copy_dims(pad_hi, p.nd, p.pad_hi, "padding");
  copy_dims(dilation, p.nd, p.dilation, "dilation");
  p.groups = groups;
  p.pad_mode = PadMode(pad_mode);
  p.act = Act(act);
  p.slope = slope;
  return p;
}

// x as a tensor or as a list / tuple of channel parts.
std::vector<TensorView> parts(py::handle x, Keepalive& keep) {
  static const char* const names[kMaxParts] = {"x[0]", "x[1]", "x[2]", "x[3]"};
  std::vector<TensorView> v;
  if (py::isinstance<py::list>(x) || py::isinstance<py::tuple>(x)) {
    auto seq = py::reinterpret_borrow<py::sequence>(x);
    CK_CHECK_VALUE(seq.size() >= 1 && seq.size() <= size_t(kMaxParts), "x: expected 1 to ", kMaxParts,
                   " channel parts, got ", seq.size());
    for (size_t i = 0; i < seq.size(); ++i) v.push_back(view(seq[i], names[i], keep));
  } else {
    v.push_back(view(x, "x", keep));
  }
  return v;
}

#define CK_CONV_PARAM_ARGS                                                                                  \
  py::arg("stride"), py::arg("padding_lo"), py::arg("padding_hi"), py::arg("dilation"), py::arg("groups"), \
      py::arg("padding_mode"), py::arg("activation"), py::arg("negative_slope")

}  // namespace

void bind_conv(py::module_& m) {
  m.def(
      "conv_forward",
      [](py::handle x, py::handle w, py::handle b, py::handle y, const Ints& stride, const Ints& lo, const Ints& hi,
         const Ints& dilation, int64_t groups, int pad_mode, int act, double slope, bool emu, uintptr_t stream) {
        Keepalive keep;
        std::vector<TensorView> xv = parts(x, keep);
        TensorView wv = view(w, "weight", keep), bv = view(b, "bias", keep), yv = view(y, "out", keep);
        ConvParams p = conv_params(stride, lo, hi, dilation, groups, pad_mode, act, slope);
        ensure_backend(xv[0], emu);
        py::gil_scoped_release nogil;
        conv_forward(xv, wv, bv, yv, p, emu, reinterpret_cast<void*>(stream));
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"), CK_CONV_PARAM_ARGS, py::arg("emu") = false,
      py::arg("stream") = 0,
      "out = activation(conv(x, weight) + bias), out allocated by the caller; x a tensor or a list of channel parts "
      "(read in place, as if concatenated along dim 1).");
  m.def(
      "conv_grad_input",
      [](py::handle gy, py::handle w, py::handle gx, py::handle ws, const Ints& stride, const Ints& lo,
         const Ints& hi, const Ints& dilation, int64_t groups, int pad_mode, int act, double slope, bool emu,
         uintptr_t stream, int64_t channel_offset, py::handle output) {
        Keepalive keep;
        TensorView gyv = view(gy, "grad_output", keep), wv = view(w, "weight", keep),
                   gxv = view(gx, "grad_input", keep), wsv = view(ws, "workspace", keep),
                   ov = view(output, "output", keep);
        ConvParams p = conv_params(stride, lo, hi, dilation, groups, pad_mode, act, slope);
        ensure_backend(gxv, emu);
        py::gil_scoped_release nogil;
        conv_grad_input(gyv, wv, gxv, wsv, p, emu, reinterpret_cast<void*>(stream), channel_offset, ov);
      },
      py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"), py::arg("workspace"), CK_CONV_PARAM_ARGS,
      py::arg("emu") = false, py::arg("stream") = 0, py::arg("channel_offset") = 0, py::arg("output") = py::none(),
      "grad_input = the gradient of the input (overwritten); workspace: the padded input's shape for padding "
      "modes other than zeros, else None. With an activation, grad_output is the gradient of the activated "
      "output and `output` the forward's output (its derivative is applied on the fly). For one channel part of "
      "a list input, grad_input covers the weight's input channels [channel_offset, channel_offset + C).");
  m.def(
      "conv_grad_weight",
      [](py::handle gy, py::handle x, py::handle gw, py::handle gb, const Ints& stride, const Ints& lo,
         const Ints& hi, const Ints& dilation, int64_t groups, int pad_mode, int act, double slope, bool emu,
         uintptr_t stream, py::handle output) {
        Keepalive keep;
        std::vector<TensorView> xv = parts(x, keep);
        TensorView gyv = view(gy, "grad_output", keep), gwv = view(gw, "grad_weight", keep),
                   gbv = view(gb, "grad_bias", keep), ov = view(output, "output", keep);
        ConvParams p = conv_params(stride, lo, hi, dilation, groups, pad_mode, act, slope);
        ensure_backend(xv[0], emu);
        py::gil_scoped_release nogil;
        conv_grad_weight(gyv, xv, gwv, gbv, p, emu, reinterpret_cast<void*>(stream), ov);
      },
      py::arg("grad_output"), py::arg("x"), py::arg("grad_weight"), py::arg("grad_bias"), CK_CONV_PARAM_ARGS,
      py::arg("emu") = false, py::arg("stream") = 0, py::arg("output") = py::none(),
      "grad_weight (and grad_bias unless None) = the gradients of the weight and bias (overwritten); x a tensor or "
      "a list of channel parts; activation and output as for conv_grad_input.");
  m.def(
      "conv_set_algorithm",
      [](const std::string& name) {
        ConvAlgo a = name == "auto" ? ConvAlgo::automatic : name == "direct" ? ConvAlgo::direct
                     : name == "winograd"                 ? ConvAlgo::winograd
                                                          : ConvAlgo(-1);
        CK_CHECK_VALUE(int(a) >= 0, "algorithm must be 'auto', 'direct' or 'winograd', got '", name, "'");
        const char* names[3] = {"auto", "direct", "winograd"};
        return std::string(names[int(conv_set_algorithm(a))]);
      },
      py::arg("name"),
      "CPU algorithm for the forward and input gradient: 'auto' (Winograd F(4x4,3x3) for float32 3x3 stride-1 "
      "layers with >= 16 channels in and out, else direct), 'direct', or 'winograd' wherever it applies. Returns the "
      "previous setting.");
  m.def(
      "conv_output_shape",
      [](const Ints& x_shape, const Ints& w_shape, const Ints& stride, const Ints& lo, const Ints& hi,
         const Ints& dilation, int64_t groups, int pad_mode) {
        return conv_output_shape(x_shape, w_shape, conv_params(stride, lo, hi, dilation, groups, pad_mode, 0, 0.0));
      },
      py::arg("x_shape"), py::arg("weight_shape"), py::arg("stride"), py::arg("padding_lo"), py::arg("padding_hi"),
      py::arg("dilation"), py::arg("groups"), py::arg("padding_mode"),
      "Output shape of the convolution (validates shapes and parameters).");
  m.def(
      "conv_grad_input_workspace_shape",
      [](const Ints& x_shape, const Ints& w_shape, const Ints& stride, const Ints& lo, const Ints& hi,
         const Ints& dilation, int64_t groups, int pad_mode, int64_t channel_offset, bool cpu) {
        return conv_grad_input_workspace_shape(
            x_shape, w_shape, conv_params(stride, lo, hi, dilation, groups, pad_mode, 0, 0.0), channel_offset, cpu);
      },
      py::arg("x_shape"), py::arg("weight_shape"), py::arg("stride"), py::arg("padding_lo"), py::arg("padding_hi"),
      py::arg("dilation"), py::arg("groups"), py::arg("padding_mode"), py::arg("channel_offset") = 0,
      py::arg("cpu") = true,
      "Shape of the workspace conv_grad_input needs ([] for zero padding, and for the CPU's sparse geometries); cpu: "
      "whether the call runs on the CPU kernels (not CUDA or the emulator).");
  // ---- transposed convolution: stride, padding, dilation, groups as the convolution it is the gradient of ----
  m.def(
      "conv_transpose_output_shape",
      [](const Ints& x_shape, const Ints& w_shape, const Ints& stride, const Ints& padding, const Ints& output_padding,
         const Ints& dilation, int64_t groups) {
        return conv_transpose_output_shape(x_shape, w_shape,
                                           conv_params(stride, padding, padding, dilation, groups, 0, 0, 0.0),
                                           output_padding);
      },
      py::arg("x_shape"), py::arg("weight_shape"), py::arg("stride"), py::arg("padding"), py::arg("output_padding"),
      py::arg("dilation"), py::arg("groups"),
      "Output shape of the transposed convolution (validates shapes and parameters).");
  m.def(
      "conv_transpose_forward",
      [](py::handle x, py::handle w, py::handle b, py::handle y, const Ints& stride, const Ints& padding,
         const Ints& dilation, int64_t groups, bool emu, uintptr_t stream) {
        Keepalive keep;
        TensorView xv = view(x, "x", keep), wv = view(w, "weight", keep), bv = view(b, "bias", keep),
                   yv = view(y, "out", keep);
        ConvParams p = conv_params(stride, padding, padding, dilation, groups, 0, 0, 0.0);
        ensure_backend(xv, emu);
        py::gil_scoped_release nogil;
        conv_transpose_forward(xv, wv, bv, yv, p, emu, reinterpret_cast<void*>(stream));
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("stride"), py::arg("padding"),
      py::arg("dilation"), py::arg("groups"), py::arg("emu") = false, py::arg("stream") = 0,
      "out = conv_transpose(x, weight) + bias; out's shape sets the output padding.");
  m.def(
      "conv_transpose_grad_input",
      [](py::handle gy, py::handle w, py::handle gx, const Ints& stride, const Ints& padding, const Ints& dilation,
         int64_t groups, bool emu, uintptr_t stream) {
        Keepalive keep;
        TensorView gyv = view(gy, "grad_output", keep), wv = view(w, "weight", keep),
                   gxv = view(gx, "grad_input", keep);
        ConvParams p = conv_params(stride, padding, padding, dilation, groups, 0, 0, 0.0);
        ensure_backend(gxv, emu);
        py::gil_scoped_release nogil;
        conv_transpose_grad_input(gyv, wv, gxv, p, emu, reinterpret_cast<void*>(stream));
      },
      py::arg("grad_output"), py::arg("weight"), py::arg("grad_input"), py::arg("stride"), py::arg("padding"),
      py::arg("dilation"), py::arg("groups"), py::arg("emu") = false, py::arg("stream") = 0,
      "grad_input = the gradient of the transposed convolution's input (the convolution of grad_output).");
  m.def(
      "conv_transpose_grad_weight",
      [](py::handle gy, py::handle x, py::handle gw, const Ints& stride, const Ints& padding, const Ints& dilation,
         int64_t groups, bool emu, uintptr_t stream) {
        Keepalive keep;
        TensorView gyv = view(gy, "grad_output", keep), xv = view(x, "x", keep), gwv = view(gw, "grad_weight", keep);
        ConvParams p = conv_params(stride, padding, padding, dilation, groups, 0, 0, 0.0);
        ensure_backend(xv, emu);
        py::gil_scoped_release nogil;
        conv_transpose_grad_weight(gyv, xv, gwv, p, emu, reinterpret_cast<void*>(stream));
      },
      py::arg("grad_output"), py::arg("x"), py::arg("grad_weight"), py::arg("stride"), py::arg("padding"),
      py::arg("dilation"), py::arg("groups"), py::arg("emu") = false, py::arg("stream") = 0,
      "grad_weight = the gradient of the transposed convolution's weight (overwritten).");
  m.def(
      "conv_bias_grad",
      [](py::handle gy, py::handle gb, bool emu, uintptr_t stream) {
        Keepalive keep;
        TensorView gyv = view(gy, "grad_output", keep), gbv = view(gb, "grad_bias", keep);
        ensure_backend(gyv, emu);
        py::gil_scoped_release nogil;
        conv_bias_grad(gyv, gbv, emu, reinterpret_cast<void*>(stream));
      },
      py::arg("grad_output"), py::arg("grad_bias"), py::arg("emu") = false, py::arg("stream") = 0,
      "grad_bias = grad_output summed over every dim but the channels (overwritten).");
}

}  // namespace ck
