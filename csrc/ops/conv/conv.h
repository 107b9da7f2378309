// Convolution and transposed convolution 2D/3D: parameters, the argument blocks every backend receives, and the
// C++ API.
#pragma once
#include <cstdint>
#include <vector>

#include "core/cpu_isa.h"
#include "core/dtypes.h"
#include "core/registry.h"
#include "core/tensor_view.h"

namespace ck {

// How an input position outside [0, n) reads: as torch.nn.Conv*d's padding_mode.
enum class PadMode : int32_t { zeros = 0, reflect = 1, replicate = 2, circular = 3 };
// Activation fused into the forward's store: none, ReLU, or leaky ReLU with ConvParams::slope.
enum class Act : int32_t { none = 0, relu = 1, leaky_relu = 2 };
// CPU algorithm for the forward and both gradients: auto (Winograd F(4x4, 3x3), and F(3x3, 4x4) for the weight
// gradient, for float32 3x3 stride-1 layers with enough channels, else direct), direct, or Winograd wherever it
// applies.
// gather is never set by users: the dispatch picks it for geometries whose windows reach far beyond the input
// (see conv_sparse_geometry), where the direct kernels' panels would be absurdly wide.
enum class ConvAlgo : int32_t { automatic = 0, direct = 1, winograd = 2, gather = 3 };

struct ConvParams {
  int nd = 2;  // spatial dims: 2 or 3
  int64_t stride[3] = {1, 1, 1}, dilation[3] = {1, 1, 1};
  int64_t pad_lo[3] = {0, 0, 0}, pad_hi[3] = {0, 0, 0};  // before / after each spatial dim ('same' may differ)
  int64_t groups = 1;
  PadMode pad_mode = PadMode::zeros;
  Act act = Act::none;
  double slope = 0.01;  // leaky ReLU's negative slope (>= 0, so the derivative can be read from the output)
};

// One group of a convolution, normalised to three spatial dims ordered d, h, w (2D: depth 1, kernel depth 1).
// Tensors are dense NC(D)HW; the channel stride is the spatial plane, the batch stride is explicit so that a
// group is a channel slice of the full tensors.
struct ConvGeom {
  int64_t N = 0, Cin = 0, Cout = 0;  // per group
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1};
  int64_t k[3] = {1, 1, 1}, s[3] = {1, 1, 1}, d[3] = {1, 1, 1};
  int64_t lo[3] = {0, 0, 0};  // input position of output 0, tap 0 is -lo (lo may exceed the kernel span)
  int64_t x_bs = 0, y_bs = 0;  // batch strides (elements) of the input-side and output-side tensors
  PadMode pad = PadMode::zeros;
};

// The gradient arriving at a convolution with a fused activation is the gradient of act(z); the kernels that read
// it read gy * act'(y) instead (y: the forward's output, laid out as gy; the derivative from conv_math.h), so the
// product is never materialised.
struct ActGrad {
  const void* y = nullptr;  // null: no activation
  Act act = Act::none;
  double slope = 0.0;
};

// The input side of a convolution, read in place from up to kMaxParts tensors that together are its channels (a
// torch.cat along dim 1 that is never materialised: a U-Net decoder's [upsampled, skip]). Channel c of batch item n
// lives in the part p with c_begin[p] <= c < c_begin[p + 1], at data[p] + n * bs[p] + (c - c_begin[p]) * cs[p]
// (cs[p] = 0: the planes are dense, cs = plane). A forward input may have planes apart (a slab of rows of a taller
// tensor, read in place by the streamed inference); each plane itself is always dense.
constexpr int kMaxParts = 4;
struct ConvInput {
  int parts = 1;
  const void* data[kMaxParts] = {};
  int64_t bs[kMaxParts] = {};  // batch strides (elements)
  int64_t cs[kMaxParts] = {};  // channel strides (elements); 0: dense planes
  int64_t c_begin[kMaxParts + 1] = {};
  ActGrad act;  // a one-part gradient input (the input gradient's gy): read through the activation's derivative
};

// A one-part input: `channels` planes per batch item at data, batch stride bs.
inline ConvInput single_input(const void* data, int64_t bs, int64_t channels) {
  ConvInput in;
  in.data[0] = data;
  in.bs[0] = bs;
  in.c_begin[1] = channels;
  return in;
}

// y = act(conv(x, w) + b). x: (N, Cin, in), w: (Cout, Cin, k), b: (Cout) or null, y: (N, Cout, out).
struct ConvForwardArgs {
  ConvGeom g;
  DType dtype;
  ConvInput x;
  const void* w;
  const void* b;
  void* y;
  Act act;
  double slope;
  ConvAlgo algo;
  int device;
  int64_t y_cs = 0;  // output channel stride (elements); 0: dense planes. Only the CPU writes planes apart.
};

// gx = d(sum(gy * conv(x, w))) / dx + b with zero padding: gy (N, Cout, out), gx (N, Cin, in), w[o][c][k] at
// w + (o * w_cin + c) * K + k (w_cin > Cin when gx is one channel part of a wider input), b (Cin) or null. With
// b it is the transposed convolution of gy. For the other padding modes the dispatch asks for the gradient of the
// padded input (in + lo + hi, lo = 0) and folds it.
struct ConvGradInputArgs {
  ConvGeom g;
  DType dtype;
  const void* gy;
  ActGrad act;
  const void* w;
  int64_t w_cin;
  const void* b;
  void* gx;
  ConvAlgo algo;
  int device;
};

// gw = sum over batch and space of gy * x-patches; gb = sum of gy. gw (Cout, Cin, k), gb (Cout) or null.
// Both are overwritten.
struct ConvGradWeightArgs {
  ConvGeom g;
  DType dtype;
  const void* gy;
  ActGrad act;
  ConvInput x;
  void* gw;
  void* gb;
  ConvAlgo algo;
  int device;
};

// gx[i] = sum of gp[q] over the padded positions q that read input i (the adjoint of padding). gp: (NC,
// padded), gx: (NC, in); geometry from g.in, g.lo, hi and g.pad.
struct ConvFoldArgs {
  int64_t planes;  // N * C
  int64_t in[3], lo[3], hi[3];
  PadMode pad;
  DType dtype;
  const void* gp;
  void* gx;
  int device;
};

// gb[c] = sum over n and the plane of gy[n][c] (a transposed convolution's bias gradient). gy: (N, C, plane).
struct ConvBiasGradArgs {
  int64_t N, C, plane;
  int64_t bs, cs;  // batch and channel strides of gy (elements); planes are dense
  DType dtype;
  const void* gy;
  void* gb;
  int device;
};

// The launchers a device backend (cuda, emu) registers under the name "conv".
struct ConvKernels {
  void (*forward)(const ConvForwardArgs&, void* stream);
  void (*grad_input)(const ConvGradInputArgs&, void* stream);
  void (*grad_weight)(const ConvGradWeightArgs&, void* stream);
  void (*fold)(const ConvFoldArgs&, void* stream);
  void (*bias_grad)(const ConvBiasGradArgs&, void* stream);
};

// Output shape for input/weight shapes; validates shapes and parameters (ValueError naming the argument).
std::vector<int64_t> conv_output_shape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>& w_shape,
                                       const ConvParams& p);

// Whether the direct CPU kernels would need absurdly wide panels for this geometry (a stride or dilation far beyond
// any real layer's, e.g. 2^31 - 1, or 2^30 with as much padding): the narrowest panel row, one register tile of 24
// outputs (or inputs, for the gradient of the input) along w, spans more than kGatherWidth input columns. Kernels
// equal to their stride (patchify layers, U-Net upsampling) never use panels. The CPU then runs ConvAlgo::gather,
// whose work is only the products that read real inputs.
constexpr int64_t kGatherWidth = 4096;
bool conv_sparse_geometry(const ConvGeom& g);

// The CPU algorithm choice (process-wide; tests force each path). Returns the previous one.
ConvAlgo conv_set_algorithm(ConvAlgo a);
ConvAlgo conv_algorithm();

// Every call validates all arguments, then runs on the backend the device implies (cuda tensors -> cuda; cpu
// tensors -> cpu, or emu when use_emu). Empty views (ndim 0) mean "absent" for b, gw, gb and the workspace.
// The input x of conv_forward / conv_grad_weight is a list of 1..kMaxParts channel parts (groups must be 1 for
// more than one); conv_grad_input computes the gradient of one part: gx covers the weight's input channels
// [channel_offset, channel_offset + gx channels). With p.act set, gy is the gradient of the activated output and
// `output` (the forward's output, gy's shape) gives the activation's derivative; the gradient functions' p.act is
// otherwise none.
void conv_forward(const std::vector<TensorView>& x, const TensorView& w, const TensorView& b, const TensorView& y,
                  const ConvParams& p, bool use_emu, void* stream);
void conv_grad_input(const TensorView& gy, const TensorView& w, const TensorView& gx, const TensorView& workspace,
                     const ConvParams& p, bool use_emu, void* stream, int64_t channel_offset = 0,
                     const TensorView& output = TensorView{});
// Shape of the workspace conv_grad_input needs for the gradient of x (x_shape: the part's shape) with padding
// modes other than zeros (the padded part's shape), or {}: for zero padding, and on the CPU (cpu) for geometries
// whose windows reach far beyond the input, where the gather kernel maps the padding itself.
std::vector<int64_t> conv_grad_input_workspace_shape(const std::vector<int64_t>& x_shape,
                                                     const std::vector<int64_t>& w_shape, const ConvParams& p,
                                                     int64_t channel_offset, bool cpu);
void conv_grad_weight(const TensorView& gy, const std::vector<TensorView>& x, const TensorView& gw,
                      const TensorView& gb, const ConvParams& p, bool use_emu, void* stream,
                      const TensorView& output = TensorView{});

// Transposed convolution (torch.nn.functional.conv_transpose2d/3d): the gradient of the input of the convolution
// from y to x with the same stride, padding (p.pad_lo; zeros only), dilation and groups, plus a bias. x: (N, Cin,
// in), w: (Cin, Cout / groups, k), y: (N, Cout, out) with out = (in - 1) s - 2 p + d (k - 1) + output_padding + 1
// and 0 <= output_padding < max(s, d). Its backward: the convolution itself for x, the convolution's weight
// gradient with the roles of x and y swapped for w, and per-channel sums of gy for the bias.
std::vector<int64_t> conv_transpose_output_shape(const std::vector<int64_t>& x_shape,
                                                 const std::vector<int64_t>& w_shape, const ConvParams& p,
                                                 const std::vector<int64_t>& output_padding);
void conv_transpose_forward(const TensorView& x, const TensorView& w, const TensorView& b, const TensorView& y,
                            const ConvParams& p, bool use_emu, void* stream);
void conv_transpose_grad_input(const TensorView& gy, const TensorView& w, const TensorView& gx, const ConvParams& p,
                               bool use_emu, void* stream);
void conv_transpose_grad_weight(const TensorView& gy, const TensorView& x, const TensorView& gw,
                                const ConvParams& p, bool use_emu, void* stream);
// gb = gy summed over every dim but dim 1 (gy dense, (N, C, ...)).
void conv_bias_grad(const TensorView& gy, const TensorView& gb, bool use_emu, void* stream);

}  // namespace ck

CK_CPU_DECLARE(void conv_forward_cpu(const ConvForwardArgs& a))
CK_CPU_DECLARE(void conv_grad_input_cpu(const ConvGradInputArgs& a))
CK_CPU_DECLARE(void conv_grad_weight_cpu(const ConvGradWeightArgs& a))
CK_CPU_DECLARE(void conv_fold_cpu(const ConvFoldArgs& a))
CK_CPU_DECLARE(void conv_bias_grad_cpu(const ConvBiasGradArgs& a))
