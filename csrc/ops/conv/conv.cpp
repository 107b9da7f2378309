// Convolution's single dispatch point: validate every argument, split groups, then run CPU, CUDA or emulator.
#include "ops/conv/conv.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <utility>

#include "core/parallel.h"
#include "core/validate.h"
#include "ops/conv/conv_math.h"

namespace ck {
namespace {

constexpr int64_t kMaxParam = int64_t(1) << 31;
const char* const kDims[2] = {"hw", "dhw"};

void check_params(const ConvParams& p) {
  CK_CHECK_VALUE(p.nd == 2 || p.nd == 3, "convolution has 2 or 3 spatial dims, got ", p.nd);
  const char* dims = kDims[p.nd - 2];
  for (int i = 0; i < p.nd; ++i) {
    CK_CHECK_VALUE(p.stride[i] > 0 && p.stride[i] < kMaxParam, "stride must be positive and below 2^31, got ",
                   p.stride[i], " for dim ", dims[i]);
    CK_CHECK_VALUE(p.dilation[i] > 0 && p.dilation[i] < kMaxParam, "dilation must be positive and below 2^31, got ",
                   p.dilation[i], " for dim ", dims[i]);
    CK_CHECK_VALUE(p.pad_lo[i] >= 0 && p.pad_hi[i] >= 0 && p.pad_lo[i] < kMaxParam && p.pad_hi[i] < kMaxParam,
                   "padding must be non-negative and below 2^31, got ", p.pad_lo[i], " and ", p.pad_hi[i], " for dim ",
                   dims[i]);
  }
  CK_CHECK_VALUE(p.groups > 0, "groups must be positive, got ", p.groups);
  CK_CHECK_VALUE(int(p.pad_mode) >= 0 && int(p.pad_mode) <= 3,
                 "padding_mode must be 0 (zeros), 1 (reflect), 2 (replicate) or 3 (circular)");
  CK_CHECK_VALUE(int(p.act) >= 0 && int(p.act) <= 2, "activation must be 0 (none), 1 (relu) or 2 (leaky_relu)");
  CK_CHECK_VALUE(p.act != Act::leaky_relu || p.slope >= 0.0, "negative_slope must be >= 0 for a fused leaky ReLU "
                 "(its gradient is read from the output), got ", p.slope);
}

struct Shape {
  int ndim = 0;
  int64_t s[kMaxDims] = {};
};

Shape shape_of(const std::vector<int64_t>& v, const char* name) {
  CK_CHECK_VALUE(v.size() <= size_t(kMaxDims), name, ": too many dimensions");
  Shape r;
  r.ndim = int(v.size());
  for (int i = 0; i < r.ndim; ++i) r.s[i] = v[i];
  return r;
}

Shape shape_of(const TensorView& t) {
  Shape r;
  r.ndim = t.ndim;
  for (int i = 0; i < t.ndim; ++i) r.s[i] = t.shape[i];
  return r;
}

std::string str_shape(const Shape& s) {
  TensorView v;
  v.ndim = s.ndim;
  for (int i = 0; i < s.ndim; ++i) v.shape[i] = s.s[i];
  return shape_str(v);
}

// The whole convolution (all groups) from the input-side shape (N, Cin, *in) and the weight's shape.
struct Problem {
  ConvGeom g;           // one group; x_bs / y_bs cover all channels
  int64_t groups = 1;
  int64_t cin_total = 0, cout_total = 0;
  int64_t k_elems = 1;  // kd * kh * kw
  int64_t out_shape[5] = {};
  int64_t hi[3] = {0, 0, 0};
  int nd = 2;
};

Problem make_problem(const Shape& xs, const char* xname, const Shape& ws, const ConvParams& p) {
  check_params(p);
  const int nd = p.nd;
  const char* dims = nd == 2 ? "(N, C, H, W)" : "(N, C, D, H, W)";
  CK_CHECK_VALUE(xs.ndim == nd + 2, xname, ": expected a ", nd + 2, "D tensor ", dims, ", got shape ", str_shape(xs));
  CK_CHECK_VALUE(ws.ndim == nd + 2, "weight: expected a ", nd + 2, "D tensor (C_out, C_in / groups, ",
                 nd == 2 ? "kH, kW" : "kD, kH, kW", "), got shape ", str_shape(ws));
  Problem r;
  r.nd = nd;
  r.groups = p.groups;
  r.cin_total = xs.s[1];
  r.cout_total = ws.s[0];
  CK_CHECK_VALUE(r.cin_total > 0, xname, ": the channel dimension is empty, shape ", str_shape(xs));
  CK_CHECK_VALUE(r.cout_total > 0, "weight: the output-channel dimension is empty, shape ", str_shape(ws));
  CK_CHECK_VALUE(r.cin_total % p.groups == 0, xname, ": ", r.cin_total, " input channels are not divisible by groups=",
                 p.groups);
  CK_CHECK_VALUE(r.cout_total % p.groups == 0, "weight: ", r.cout_total,
                 " output channels are not divisible by groups=", p.groups);
  CK_CHECK_VALUE(ws.s[1] * p.groups == r.cin_total, "weight: expected ", r.cin_total / p.groups,
                 " input channels per group (", xname, " has ", r.cin_total, " channels, groups=", p.groups,
                 "), got weight of shape ", str_shape(ws));
  ConvGeom& g = r.g;
  g.N = xs.s[0];
  g.Cin = r.cin_total / p.groups;
  g.Cout = r.cout_total / p.groups;
  g.pad = p.pad_mode;
  const int off = 3 - nd;
  int64_t n_in = 1, n_out = 1;
  // Sizes that overflow int64 name the tensor (x, or out for the input of a transposed convolution's problem).
  const std::string in_size = str(xname, ": the number of elements"), out_size = "the output's number of elements "
                              "(check stride, padding and dilation)";
  r.out_shape[0] = g.N;
  r.out_shape[1] = r.cout_total;
  for (int i = 0; i < nd; ++i) {
    const int a = off + i;
    const char dim = kDims[nd - 2][i];
    g.in[a] = xs.s[2 + i];
    g.k[a] = ws.s[2 + i];
    CK_CHECK_VALUE(g.in[a] > 0, xname, ": spatial dimensions must be non-empty, got shape ", str_shape(xs));
    CK_CHECK_VALUE(g.k[a] > 0 && g.k[a] < kMaxParam, "weight: kernel dimensions must be in [1, 2^31), got shape ",
                   str_shape(ws));
    g.s[a] = p.stride[i];
    g.d[a] = p.dilation[i];
    g.lo[a] = p.pad_lo[i];
    r.hi[a] = p.pad_hi[i];
    if (p.pad_mode == PadMode::reflect)
      CK_CHECK_VALUE(p.pad_lo[i] < g.in[a] && p.pad_hi[i] < g.in[a], "padding: reflect padding must be smaller "
                     "than the input size, got padding ", std::max(p.pad_lo[i], p.pad_hi[i]), " for dim ", dim,
                     " of size ", g.in[a]);
    if (p.pad_mode == PadMode::circular)
      CK_CHECK_VALUE(p.pad_lo[i] <= g.in[a] && p.pad_hi[i] <= g.in[a], "padding: circular padding must be at most "
                     "the input size, got padding ", std::max(p.pad_lo[i], p.pad_hi[i]), " for dim ", dim,
                     " of size ", g.in[a]);
    const int64_t span = checked_mul(g.d[a], g.k[a] - 1, "dilation * (kernel_size - 1)");
    CK_CHECK_VALUE(g.in[a] + g.lo[a] + r.hi[a] > span, "weight, dilation: the kernel (size ", g.k[a], ", dilation ", g.d[a],
                   ") is larger than the padded input (", g.in[a], " + padding ", g.lo[a] + r.hi[a], ") along dim ",
                   dim, " of ", xname, " ", str_shape(xs));
    g.out[a] = conv::out_size(g.in[a], g.k[a], g.s[a], g.d[a], g.lo[a], r.hi[a]);
    r.out_shape[2 + i] = g.out[a];
    r.k_elems = checked_mul(r.k_elems, g.k[a], "weight: the kernel size");
    n_in = checked_mul(n_in, g.in[a], in_size.c_str());
    n_out = checked_mul(n_out, g.out[a], out_size.c_str());
  }
  g.x_bs = checked_mul(r.cin_total, n_in, in_size.c_str());
  g.y_bs = checked_mul(r.cout_total, n_out, out_size.c_str());
  checked_mul(g.N, g.x_bs, in_size.c_str());
  checked_mul(g.N, g.y_bs, out_size.c_str());
  checked_mul(r.cout_total, checked_mul(g.Cin, r.k_elems, "weight: the weight size"), "weight: the weight size");
  return r;
}

void check_dense(const TensorView& t, const char* name) {
  CK_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous tensor (the Python API converts other layouts)");
}

// Dense planes (every dim from 2 on contiguous), channels and batch items at least a plane apart: how the forward
// reads its input (conv::input_plane), so a slab of rows of a taller tensor needs no copy.
void check_plane_dense(const TensorView& t, const char* name) {
  int64_t expect = 1;
  bool ok = t.ndim >= 2;
  for (int d = t.ndim - 1; ok && d >= 2; --d) {
    ok = t.shape[d] == 1 || t.strides[d] == expect;
    expect *= t.shape[d];
  }
  if (ok && t.numel() > 0) {
    ok = (t.shape[1] == 1 || t.strides[1] >= expect) &&
         (t.shape[0] == 1 || t.strides[0] >= (t.shape[1] - 1) * t.strides[1] + expect);
  }
  CK_CHECK_VALUE(ok, name, ": expected dense planes (contiguous from dim 2 on, channels and batch items not "
                 "overlapping); the Python API converts other layouts");
}

// dense: contiguous, else dense planes (check_plane_dense, for inputs read through a ConvInput).
void check_tensor(const TensorView& t, const char* name, const int64_t* shape, int ndim, const TensorView& ref,
                  const char* ref_name, bool dense = true) {
  check_same_dtype(t, name, ref, ref_name);
  check_shape(t, name, shape, ndim);
  check_same_device(t, name, ref, ref_name);
  if (dense)
    check_dense(t, name);
  else
    check_plane_dense(t, name);
}

void check_output(const TensorView& t, const char* name, std::initializer_list<std::pair<const TensorView*, const char*>> inputs) {
  check_writable(t, name);
  for (auto& in : inputs)
    if (in.first->ndim) check_no_overlap(t, name, *in.first, in.second);
}

// Whether every element of a dense float tensor in host memory is finite.
bool all_finite(const TensorView& t) {
  const int64_t n = t.numel();
  bool ok = true;
  if (t.dtype == DType::f32) {
    const float* v = static_cast<const float*>(t.data);
    for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(v[i]);
  } else {
    const double* v = static_cast<const double*>(t.data);
    for (int64_t i = 0; i < n; ++i) ok &= std::isfinite(v[i]);
  }
  return ok;
}

int64_t plane_in(const ConvGeom& g) { return g.in[0] * g.in[1] * g.in[2]; }
int64_t plane_out(const ConvGeom& g) { return g.out[0] * g.out[1] * g.out[2]; }

template <class P>
P offset(P p, int64_t elems, DType dt) {
  using C = std::conditional_t<std::is_const<std::remove_pointer_t<P>>::value, const char*, char*>;
  return p ? static_cast<P>(static_cast<C>(p) + elems * dtype_size(dt)) : p;
}

std::atomic<int> g_algo{int(ConvAlgo::automatic)};

// Runs f(gi) for every group. On the CPU, many groups (depthwise layers, the U-Net's nearest-neighbour upsampling
// as a depthwise transposed convolution) run in parallel, one whole kernel call per thread (a kernel's own
// parallel_for runs serially inside), instead of a parallel region per group: hundreds of fork/joins over tiny
// groups cost more than their work, and far more on a loaded host where a barrier waits for a descheduled thread.
template <class F>
void for_groups(int64_t groups, Backend be, const F& f) {
  if (be == Backend::cpu && groups > 1 && groups >= 2 * int64_t(num_threads())) {
    parallel_for(groups, 1, [&](int64_t b, int64_t e) {
      for (int64_t gi = b; gi < e; ++gi) f(gi);
    });
    return;
  }
  for (int64_t gi = 0; gi < groups; ++gi) f(gi);
}

// The same convolution with parameters that cannot matter set to 1: the stride of a dim with one output (only
// output 0 exists, which reads -lo + k d) and the dilation of a one-tap dim. A stride of 2^31 - 1 giving a 1x1
// output then runs the ordinary kernels. A stride equal to the kernel stays: such a layer keeps its disjoint-tap
// kernel whatever its size, so a slab of one row rounds as the whole image does (streamed inference relies on it).
ConvGeom tidy(ConvGeom g) {
  for (int a = 0; a < 3; ++a) {
    if (g.out[a] == 1 && g.k[a] != g.s[a]) g.s[a] = 1;
    if (g.k[a] == 1) g.d[a] = 1;
  }
  return g;
}

// Whether the gradient of the input goes through a workspace of the padded input's size, folded back afterwards:
// for padding modes other than zeros, except on the CPU for sparse geometries, whose gather kernel maps every tap
// through the padding mode itself (a padded input of 2^31 x 2^31 for a 1-pixel image never exists).
bool needs_fold(const Problem& r, const ConvParams& p, Backend be) {
  return p.pad_mode != PadMode::zeros && !(be == Backend::cpu && conv_sparse_geometry(tidy(r.g)));
}

// The algorithm a backend runs g with: the process-wide choice, or gather for sparse geometries on the CPU.
ConvAlgo algo_for(const ConvGeom& g, Backend be) {
  return be == Backend::cpu && conv_sparse_geometry(g) ? ConvAlgo::gather : conv_algorithm();
}

}  // namespace

bool conv_sparse_geometry(const ConvGeom& g) {
  bool disjoint = true;
  for (int a = 0; a < 3; ++a) disjoint = disjoint && g.k[a] == g.s[a] && (g.k[a] == 1 || g.d[a] == 1);
  if (disjoint) return false;
  const int64_t span = (g.k[2] - 1) * g.d[2];
  const int64_t fwd = (std::min<int64_t>(g.out[2], 24) - 1) * g.s[2] + span + 1;
  const int64_t bwd = std::min<int64_t>(g.in[2], 24) + span;
  return std::max(fwd, bwd) > kGatherWidth;
}

ConvAlgo conv_set_algorithm(ConvAlgo a) {
  CK_CHECK_VALUE(int(a) >= 0 && int(a) <= 2, "algorithm must be 0 (auto), 1 (direct) or 2 (winograd)");
  return ConvAlgo(g_algo.exchange(int(a)));
}
ConvAlgo conv_algorithm() { return ConvAlgo(g_algo.load()); }

// ---- channel parts and transposed geometry ------------------------------------------------------------------

namespace {

std::vector<std::string> part_names(size_t n) {
  std::vector<std::string> names;
  for (size_t i = 0; i < n; ++i) names.push_back(n == 1 ? std::string("x") : str("x[", i, "]"));
  return names;
}

// The shape of the input the parts form together (channels added up); every part is checked against the first.
// planes_apart: the parts may have channels apart (check_plane_dense), else they must be contiguous.
Shape parts_shape(const std::vector<TensorView>& xs, const std::vector<std::string>& names, const ConvParams& p,
                  bool planes_apart = false) {
  CK_CHECK_VALUE(!xs.empty() && xs.size() <= size_t(kMaxParts), "x: expected 1 to ", kMaxParts,
                 " channel parts, got ", xs.size());
  CK_CHECK_VALUE(xs.size() == 1 || p.groups == 1, "groups: an input given as channel parts needs groups=1, got ",
                 p.groups);
  const TensorView& x0 = xs[0];
  check_dtype(x0, names[0].c_str(), {DType::f32, DType::f64});
  Shape s = shape_of(x0);
  for (size_t i = 1; i < xs.size(); ++i) {
    const TensorView& xi = xs[i];
    const char* n = names[i].c_str();
    check_same_dtype(xi, n, x0, names[0].c_str());
    check_same_device(xi, n, x0, names[0].c_str());
    bool same = xi.ndim == x0.ndim && x0.ndim >= 2 && xi.shape[0] == x0.shape[0];
    for (int d = 2; same && d < x0.ndim; ++d) same = xi.shape[d] == x0.shape[d];
    CK_CHECK_VALUE(same, n, ": channel parts must agree in every dim but the channels, got ", shape_str(xi),
                   " and ", names[0], " ", shape_str(x0));
    CK_CHECK_VALUE(xi.shape[1] > 0, n, ": a channel part must have channels, got shape ", shape_str(xi));
    s.s[1] += xi.shape[1];
  }
  if (xs.size() > 1) CK_CHECK_VALUE(x0.shape[1] > 0, names[0], ": a channel part must have channels, got shape ",
                                    shape_str(x0));
  for (size_t i = 0; i < xs.size(); ++i) {
    if (planes_apart)
      check_plane_dense(xs[i], names[i].c_str());
    else
      check_dense(xs[i], names[i].c_str());
  }
  return s;
}

// The parts as a ConvInput for group gi (one part when groups > 1).
ConvInput input_of(const std::vector<TensorView>& xs, const ConvGeom& g, int64_t gi) {
  ConvInput in;
  in.parts = int(xs.size());
  const int64_t plane = plane_in(g);
  for (size_t i = 0; i < xs.size(); ++i) {
    const TensorView& x = xs[i];
    // channels apart (a slab of a taller tensor): read through cs; single channels / items have any stride
    const int64_t cs = x.shape[1] > 1 && x.strides[1] != plane ? x.strides[1] : 0;
    in.data[i] = offset(static_cast<const void*>(x.data), gi * g.Cin * (cs ? cs : plane), x.dtype);
    in.cs[i] = cs;
    in.bs[i] = x.shape[0] > 1 ? x.strides[0] : x.shape[1] * plane;
    in.c_begin[i + 1] = in.c_begin[i] + (xs.size() == 1 ? g.Cin : xs[i].shape[1]);
  }
  return in;
}

void check_output_parts(const TensorView& y, const char* name, const std::vector<TensorView>& xs,
                        const std::vector<std::string>& names,
                        std::initializer_list<std::pair<const TensorView*, const char*>> others) {
  check_output(y, name, others);
  for (size_t i = 0; i < xs.size(); ++i) check_no_overlap(y, name, xs[i], names[i].c_str());
}

// The activation's derivative for a gradient function: p.act with the forward's output (the shape of gy).
ActGrad act_grad_of(const ConvParams& p, const TensorView& output, const TensorView& gy) {
  if (p.act == Act::none) {
    CK_CHECK_VALUE(output.ndim == 0, "output: given, but no activation is fused");
    return {};
  }
  CK_CHECK_VALUE(output.ndim, "output: the gradient through a fused activation needs the forward's output");
  check_tensor(output, "output", gy.shape, gy.ndim, gy, "grad_output");
  return ActGrad{output.data, p.act, p.slope};
}

// The same activation for group gi: y advanced like gy.
ActGrad act_for_group(ActGrad a, int64_t elems, DType dt) {
  a.y = offset(a.y, elems, dt);
  return a;
}

// The problem of the gradient of one channel part: gx covers the weight's input channels [c0, c0 + its channels).
// Validated as the whole input, then narrowed to the part.
Problem part_problem(const Shape& gx_shape, const char* name, const Shape& w_shape, const ConvParams& p, int64_t c0,
                     int64_t* w_cin) {
  Shape whole = gx_shape;
  const bool part = c0 != 0 || (gx_shape.ndim >= 2 && w_shape.ndim >= 2 && gx_shape.s[1] != w_shape.s[1] * p.groups);
  if (part) {
    CK_CHECK_VALUE(p.groups == 1, "groups: the gradient of a channel part needs groups=1, got ", p.groups);
    CK_CHECK_VALUE(gx_shape.ndim >= 2 && w_shape.ndim >= 2 && c0 >= 0 && gx_shape.s[1] > 0 &&
                       c0 + gx_shape.s[1] <= w_shape.s[1],
                   name, ": channels [", c0, ", ", c0 + (gx_shape.ndim >= 2 ? gx_shape.s[1] : 0),
                   ") are not input channels of the weight ", str_shape(w_shape));
    whole.s[1] = w_shape.s[1];
  }
  Problem r = make_problem(whole, name, w_shape, p);
  *w_cin = r.g.Cin;
  if (part) {
    r.cin_total = r.g.Cin = gx_shape.s[1];
    r.g.x_bs = r.cin_total * plane_in(r.g);
  }
  return r;
}

// The transposed convolution x -> y as the convolution y -> x it is the input gradient of: g.in = y's spatial
// size, g.out = x's, g.Cin = y's channels per group, g.Cout = x's. Validates y's size against torch's rule.
Problem transposed_problem(const Shape& xs, const Shape& ws, const Shape& ys, const ConvParams& p) {
  check_params(p);
  const int nd = p.nd;
  CK_CHECK_VALUE(p.pad_mode == PadMode::zeros, "padding_mode: a transposed convolution supports only zeros");
  const char* dims = nd == 2 ? "(N, C, H, W)" : "(N, C, D, H, W)";
  CK_CHECK_VALUE(xs.ndim == nd + 2, "x: expected a ", nd + 2, "D tensor ", dims, ", got shape ", str_shape(xs));
  CK_CHECK_VALUE(ws.ndim == nd + 2, "weight: expected a ", nd + 2, "D tensor (C_in, C_out / groups, ",
                 nd == 2 ? "kH, kW" : "kD, kH, kW", "), got shape ", str_shape(ws));
  CK_CHECK_VALUE(xs.s[1] > 0 && xs.s[1] % p.groups == 0, "x: ", xs.s[1], " input channels, not a positive multiple of "
                 "groups=", p.groups);
  CK_CHECK_VALUE(ws.s[0] == xs.s[1], "weight: expected ", xs.s[1], " input channels (the channels of x), got weight "
                 "of shape ", str_shape(ws));
  CK_CHECK_VALUE(ws.s[1] > 0, "weight: the output-channel dimension is empty, shape ", str_shape(ws));
  CK_CHECK_VALUE(ys.ndim == nd + 2 && ys.s[0] == xs.s[0] && ys.s[1] == ws.s[1] * p.groups, "out: expected shape (",
                 xs.s[0], ", ", ws.s[1] * p.groups, ", ...), got ", str_shape(ys));
  // Validated as the convolution y -> x (the weight is that convolution's), then its output sized from x.
  Problem r = make_problem(ys, "out", ws, p);
  for (int i = 0; i < nd; ++i) {
    const int a = 3 - nd + i;
    const int64_t base = checked_add(checked_mul(xs.s[2 + i] - 1, r.g.s[a], "x: (size - 1) * stride") - 2 * r.g.lo[a],
                                     r.g.d[a] * (r.g.k[a] - 1) + 1, "out: the output size");
    const int64_t extra = std::max(r.g.s[a], r.g.d[a]);
    CK_CHECK_VALUE(xs.s[2 + i] > 0 && ys.s[2 + i] >= base && ys.s[2 + i] - base < extra, "out: size ", ys.s[2 + i],
                   " along dim ", kDims[nd - 2][i], " is not (in - 1) * stride - 2 * padding + dilation * (kernel - 1)"
                   " + output_padding + 1 with 0 <= output_padding < max(stride, dilation) for input size ",
                   xs.s[2 + i]);
    r.g.out[a] = xs.s[2 + i];
    r.out_shape[2 + i] = xs.s[2 + i];
  }
  r.g.y_bs = checked_mul(xs.s[1], plane_out(r.g), "the input size");
  return r;
}

}  // namespace

std::vector<int64_t> conv_output_shape(const std::vector<int64_t>& x_shape, const std::vector<int64_t>& w_shape,
                                       const ConvParams& p) {
  Problem r = make_problem(shape_of(x_shape, "x"), "x", shape_of(w_shape, "weight"), p);
  return std::vector<int64_t>(r.out_shape, r.out_shape + p.nd + 2);
}

std::vector<int64_t> conv_grad_input_workspace_shape(const std::vector<int64_t>& x_shape,
                                                     const std::vector<int64_t>& w_shape, const ConvParams& p,
                                                     int64_t channel_offset, bool cpu) {
  int64_t w_cin = 0;
  Problem r = part_problem(shape_of(x_shape, "x"), "x", shape_of(w_shape, "weight"), p, channel_offset, &w_cin);
  if (!needs_fold(r, p, cpu ? Backend::cpu : Backend::cuda)) return {};
  std::vector<int64_t> s = {r.g.N, r.cin_total};
  for (int i = 0; i < p.nd; ++i) {
    const int a = 3 - p.nd + i;
    s.push_back(r.g.in[a] + r.g.lo[a] + r.hi[a]);
  }
  return s;
}

std::vector<int64_t> conv_transpose_output_shape(const std::vector<int64_t>& x_shape,
                                                 const std::vector<int64_t>& w_shape, const ConvParams& p,
                                                 const std::vector<int64_t>& output_padding) {
  const Shape xs = shape_of(x_shape, "x"), ws = shape_of(w_shape, "weight");
  CK_CHECK_VALUE(int(output_padding.size()) == p.nd, "output_padding: expected ", p.nd, " values, got ",
                 output_padding.size());
  CK_CHECK_VALUE(xs.ndim == p.nd + 2 && ws.ndim == p.nd + 2, "x and weight: expected ", p.nd + 2, "D shapes, got ",
                 str_shape(xs), " and ", str_shape(ws));
  check_params(p);
  Shape ys = xs;
  ys.s[1] = checked_mul(ws.s[1], p.groups, "the output channels");
  for (int i = 0; i < p.nd; ++i) {
    const int64_t s = p.stride[i], d = p.dilation[i], k = ws.s[2 + i], op = output_padding[i];
    CK_CHECK_VALUE(op >= 0 && op < std::max(s, d), "output_padding: must be smaller than either stride or dilation, "
                   "got ", op, " with stride ", s, " and dilation ", d, " for dim ", kDims[p.nd - 2][i]);
    CK_CHECK_VALUE(k > 0 && k < kMaxParam && s > 0 && s < kMaxParam && d > 0 && d < kMaxParam,
                   "weight, stride, dilation: expected positive sizes, got kernel ", k, ", stride ", s, ", dilation ", d);
    // padding < 2^31 (check_params), d * (k - 1) < 2^62: only the stride product and the final sum can overflow.
    const int64_t y = checked_add(checked_mul(xs.s[2 + i] - 1, s, "out: (input size - 1) * stride") - 2 * p.pad_lo[i],
                                  d * (k - 1) + op + 1, "out: the output size");
    CK_CHECK_VALUE(xs.s[2 + i] > 0 && y > 0, "the output would be empty along dim ", kDims[p.nd - 2][i], " (input ",
                   xs.s[2 + i], ", kernel ", k, ", stride ", s, ", padding ", p.pad_lo[i], ", dilation ", d, ")");
    ys.s[2 + i] = y;
  }
  transposed_problem(xs, ws, ys, p);  // every other check, as the op will run it
  return std::vector<int64_t>(ys.s, ys.s + ys.ndim);
}

void conv_forward(const std::vector<TensorView>& xs, const TensorView& w, const TensorView& b, const TensorView& y,
                  const ConvParams& p, bool use_emu, void* stream) {
  const std::vector<std::string> names = part_names(xs.size());
  Shape whole = parts_shape(xs, names, p, true);
  const TensorView& x = xs[0];
  Problem r = make_problem(whole, names[0].c_str(), shape_of(w), p);
  check_same_dtype(w, "weight", x, names[0].c_str());
  check_same_device(w, "weight", x, names[0].c_str());
  check_dense(w, "weight");
  if (b.ndim) {
    const int64_t bs[1] = {r.cout_total};
    check_tensor(b, "bias", bs, 1, x, names[0].c_str());
  }
  check_same_dtype(y, "out", x, names[0].c_str());
  check_shape(y, "out", r.out_shape, p.nd + 2);
  check_same_device(y, "out", x, names[0].c_str());
  check_plane_dense(y, "out");
  check_output_parts(y, "out", xs, names, {{&w, "weight"}, {&b, "bias"}});
  Backend be = pick_backend(x, use_emu);
  ConvGeom g = tidy(r.g);
  if (g.N == 0) return;
  // out may be a slab of rows of a taller tensor (planes apart): written in place, on the CPU
  const int64_t y_cs = y.shape[1] > 1 && y.strides[1] != plane_out(g) ? y.strides[1] : 0;
  CK_CHECK_VALUE(y_cs == 0 || be == Backend::cpu, "out: planes apart (a slab of a taller tensor) are written only "
                 "by the CPU kernels; pass a contiguous out");
  if (g.N > 1) g.y_bs = y.strides[0];
  const int64_t wg = g.Cout * g.Cin * r.k_elems;
  const ConvAlgo algo = algo_for(g, be);
  for_groups(r.groups, be, [&](int64_t gi) {
    ConvForwardArgs a{g,
                      x.dtype,
                      input_of(xs, g, gi),
                      offset(static_cast<const void*>(w.data), gi * wg, x.dtype),
                      b.ndim ? offset(static_cast<const void*>(b.data), gi * g.Cout, x.dtype) : nullptr,
                      offset(y.data, gi * g.Cout * (y_cs ? y_cs : plane_out(g)), x.dtype),
                      p.act,
                      p.slope,
                      algo,
                      x.device.index,
                      y_cs};
    if (be == Backend::cpu)
      CK_CPU_CALL(conv_forward_cpu, a);
    else
      kernels<ConvKernels>(be, "conv").forward(a, stream);
  });
}

namespace {

// The gradient of the input for a validated problem r (gx one part of width r.cin_total, weight rows w_cin wide,
// starting at input channel c0), with the fold of non-zero padding modes through `workspace`; b (per gx channel,
// may be null) is added: the transposed convolution.
void grad_input_run(const Problem& r, const ConvParams& p, const TensorView& gy, const ActGrad& act,
                    const TensorView& w, int64_t w_cin, int64_t c0, const void* b, const TensorView& gx,
                    const TensorView& workspace, Backend be, void* stream) {
  ConvGeom g = r.g;
  const bool padded = needs_fold(r, p, be);
  if (g.N == 0) return;
  ConvFoldArgs fold{};
  void* target = gx.data;
  if (padded) {
    // The gradient of the padded input: a zero-padded problem on the padded size, folded back afterwards.
    fold.planes = g.N * r.cin_total;
    fold.pad = p.pad_mode;
    fold.dtype = gx.dtype;
    fold.gp = workspace.data;
    fold.gx = gx.data;
    fold.device = gx.device.index;
    for (int a = 0; a < 3; ++a) {
      fold.in[a] = g.in[a];
      fold.lo[a] = g.lo[a];
      fold.hi[a] = r.hi[a];
      g.in[a] += g.lo[a] + r.hi[a];
      g.lo[a] = 0;
    }
    g.pad = PadMode::zeros;
    g.x_bs = r.cin_total * plane_in(g);
    target = workspace.data;
  }
  g = tidy(g);
  ConvAlgo algo = algo_for(g, be);
  // The direct and Winograd kernels multiply every tap, those that fall on padding or between strided outputs
  // too, by a zero; with a NaN or inf weight that product is NaN where torch, which sums the products of real
  // positions only, has a number. Such weights (a diverged training) take the gather path, which forms only those.
  if (be == Backend::cpu && algo != ConvAlgo::gather && !all_finite(w)) algo = ConvAlgo::gather;
  const int64_t wg = g.Cout * w_cin * r.k_elems;
  for_groups(r.groups, be, [&](int64_t gi) {
    ConvGradInputArgs a{g,
                        gx.dtype,
                        offset(static_cast<const void*>(gy.data), gi * g.Cout * plane_out(g), gx.dtype),
                        act_for_group(act, gi * g.Cout * plane_out(g), gx.dtype),
                        offset(static_cast<const void*>(w.data), gi * wg + c0 * r.k_elems, gx.dtype),
                        w_cin,
                        offset(b, gi * g.Cin, gx.dtype),
                        offset(target, gi * g.Cin * plane_in(g), gx.dtype),
                        algo,
                        gx.device.index};
    if (be == Backend::cpu)
      CK_CPU_CALL(conv_grad_input_cpu, a);
    else
      kernels<ConvKernels>(be, "conv").grad_input(a, stream);
  });
  if (padded) {
    if (be == Backend::cpu)
      CK_CPU_CALL(conv_fold_cpu, fold);
    else
      kernels<ConvKernels>(be, "conv").fold(fold, stream);
  }
}

// The weight gradient for a validated problem r over input parts `in_of(gi)`; gb may be null.
template <class InputOf>
void grad_weight_run(const Problem& r, const TensorView& gy, const ActGrad& act, const InputOf& in_of,
                     const TensorView& gw, void* gb, Backend be, void* stream) {
  const ConvGeom g = tidy(r.g);
  const ConvAlgo algo = algo_for(g, be);
  const int64_t wg = g.Cout * g.Cin * r.k_elems;
  for_groups(r.groups, be, [&](int64_t gi) {
    ConvGradWeightArgs a{g,
                         gw.dtype,
                         offset(static_cast<const void*>(gy.data), gi * g.Cout * plane_out(g), gw.dtype),
                         act_for_group(act, gi * g.Cout * plane_out(g), gw.dtype),
                         in_of(gi),
                         offset(gw.data, gi * wg, gw.dtype),
                         offset(gb, gi * g.Cout, gw.dtype),
                         algo,
                         gw.device.index};
    if (be == Backend::cpu)
      CK_CPU_CALL(conv_grad_weight_cpu, a);
    else
      kernels<ConvKernels>(be, "conv").grad_weight(a, stream);
  });
}

}  // namespace

void conv_grad_input(const TensorView& gy, const TensorView& w, const TensorView& gx, const TensorView& workspace,
                     const ConvParams& p, bool use_emu, void* stream, int64_t channel_offset,
                     const TensorView& output) {
  check_dtype(gx, "grad_input", {DType::f32, DType::f64});
  int64_t w_cin = 0;
  Problem r = part_problem(shape_of(gx), "grad_input", shape_of(w), p, channel_offset, &w_cin);
  check_dense(gx, "grad_input");
  check_tensor(gy, "grad_output", r.out_shape, p.nd + 2, gx, "grad_input");
  check_same_dtype(w, "weight", gx, "grad_input");
  check_same_device(w, "weight", gx, "grad_input");
  check_dense(w, "weight");
  check_output(gx, "grad_input", {{&gy, "grad_output"}, {&w, "weight"}, {&output, "output"}});
  const ActGrad act = act_grad_of(p, output, gy);
  Backend be = pick_backend(gx, use_emu);
  if (needs_fold(r, p, be)) {
    int64_t ws_shape[5] = {r.g.N, r.cin_total, 1, 1, 1};
    for (int i = 0; i < p.nd; ++i) {
      const int a = 3 - p.nd + i;
      ws_shape[2 + i] = r.g.in[a] + r.g.lo[a] + r.hi[a];
    }
    CK_CHECK_VALUE(workspace.ndim, "workspace: padding_mode ", int(p.pad_mode),
                   " needs a workspace of the padded input's shape for the gradient of the input");
    check_tensor(workspace, "workspace", ws_shape, p.nd + 2, gx, "grad_input");
    check_output(workspace, "workspace", {{&gy, "grad_output"}, {&w, "weight"}, {&gx, "grad_input"}});
  } else {
    CK_CHECK_VALUE(workspace.ndim == 0, "workspace: given, but ",
                   p.pad_mode == PadMode::zeros ? "zero padding" : "this geometry on the CPU", " needs none");
  }
  grad_input_run(r, p, gy, act, w, w_cin, channel_offset, nullptr, gx, workspace, be, stream);
}

void conv_grad_weight(const TensorView& gy, const std::vector<TensorView>& xs, const TensorView& gw,
                      const TensorView& gb, const ConvParams& p, bool use_emu, void* stream,
                      const TensorView& output) {
  const std::vector<std::string> names = part_names(xs.size());
  Shape whole = parts_shape(xs, names, p);
  const TensorView& x = xs[0];
  const char* xn = names[0].c_str();
  Problem r = make_problem(whole, xn, shape_of(gw), p);
  check_tensor(gy, "grad_output", r.out_shape, p.nd + 2, x, xn);
  check_same_dtype(gw, "grad_weight", x, xn);
  check_same_device(gw, "grad_weight", x, xn);
  check_dense(gw, "grad_weight");
  check_output_parts(gw, "grad_weight", xs, names, {{&gy, "grad_output"}, {&output, "output"}});
  const ActGrad act = act_grad_of(p, output, gy);
  if (gb.ndim) {
    const int64_t bs[1] = {r.cout_total};
    check_tensor(gb, "grad_bias", bs, 1, x, xn);
    check_output_parts(gb, "grad_bias", xs, names, {{&gy, "grad_output"}, {&gw, "grad_weight"}, {&output, "output"}});
  }
  Backend be = pick_backend(x, use_emu);
  grad_weight_run(r, gy, act, [&](int64_t gi) { return input_of(xs, r.g, gi); }, gw, gb.ndim ? gb.data : nullptr,
                  be, stream);
}

void conv_transpose_forward(const TensorView& x, const TensorView& w, const TensorView& b, const TensorView& y,
                            const ConvParams& p, bool use_emu, void* stream) {
  check_dtype(x, "x", {DType::f32, DType::f64});
  check_dense(x, "x");
  Problem r = transposed_problem(shape_of(x), shape_of(w), shape_of(y), p);
  check_same_dtype(w, "weight", x, "x");
  check_same_device(w, "weight", x, "x");
  check_dense(w, "weight");
  if (b.ndim) {
    const int64_t bs[1] = {y.shape[1]};
    check_tensor(b, "bias", bs, 1, x, "x");
  }
  check_tensor(y, "out", y.shape, y.ndim, x, "x");
  check_output(y, "out", {{&x, "x"}, {&w, "weight"}, {&b, "bias"}});
  Backend be = pick_backend(x, use_emu);
  grad_input_run(r, p, x, ActGrad{}, w, r.g.Cin, 0, b.ndim ? b.data : nullptr, y, TensorView{}, be, stream);
}

// A transposed convolution's grad_output (dense planes, checked) as the one-part input of group gi, at its own
// batch and channel strides: the gradient of one channel part of a wider tensor (a U-Net's upsampling, whose
// output the next convolution reads next to the skip) arrives as such a view, and is read without a copy.
// (batch stride, channel stride) of a tensor with dense planes of `plane` elements; a dim of size 1 gets the
// dense stride whatever its own (torch leaves those free).
std::pair<int64_t, int64_t> plane_strides(const TensorView& t, int64_t plane) {
  const int64_t cs = t.shape[1] == 1 ? plane : t.strides[1];
  return {t.shape[0] == 1 ? t.shape[1] * cs : t.strides[0], cs};
}

ConvInput grad_output_input(const TensorView& gy, int64_t gi, int64_t channels, int64_t plane) {
  const auto [bs, cs] = plane_strides(gy, plane);
  ConvInput in = single_input(offset(static_cast<const void*>(gy.data), gi * channels * cs, gy.dtype), bs, channels);
  in.cs[0] = cs == plane ? 0 : cs;
  return in;
}

void conv_transpose_grad_input(const TensorView& gy, const TensorView& w, const TensorView& gx, const ConvParams& p,
                               bool use_emu, void* stream) {
  check_dtype(gx, "grad_input", {DType::f32, DType::f64});
  check_dense(gx, "grad_input");
  check_plane_dense(gy, "grad_output");
  Problem r = transposed_problem(shape_of(gx), shape_of(w), shape_of(gy), p);
  check_tensor(gy, "grad_output", gy.shape, gy.ndim, gx, "grad_input", false);
  check_same_dtype(w, "weight", gx, "grad_input");
  check_same_device(w, "weight", gx, "grad_input");
  check_dense(w, "weight");
  check_output(gx, "grad_input", {{&gy, "grad_output"}, {&w, "weight"}});
  Backend be = pick_backend(gx, use_emu);
  const ConvGeom g = tidy(r.g);
  if (g.N == 0) return;
  // The convolution y -> x: forward kernels with the transposed problem's geometry.
  const int64_t wg = g.Cout * g.Cin * r.k_elems;
  const ConvAlgo algo = algo_for(g, be);
  for_groups(r.groups, be, [&](int64_t gi) {
    ConvForwardArgs a{g,
                      gx.dtype,
                      grad_output_input(gy, gi, g.Cin, plane_in(g)),
                      offset(static_cast<const void*>(w.data), gi * wg, gx.dtype),
                      nullptr,
                      offset(gx.data, gi * g.Cout * plane_out(g), gx.dtype),
                      Act::none,
                      0.0,
                      algo,
                      gx.device.index};
    if (be == Backend::cpu)
      CK_CPU_CALL(conv_forward_cpu, a);
    else
      kernels<ConvKernels>(be, "conv").forward(a, stream);
  });
}

void conv_transpose_grad_weight(const TensorView& gy, const TensorView& x, const TensorView& gw,
                                const ConvParams& p, bool use_emu, void* stream) {
  check_dtype(x, "x", {DType::f32, DType::f64});
  check_dense(x, "x");
  check_plane_dense(gy, "grad_output");
  Problem r = transposed_problem(shape_of(x), shape_of(gw), shape_of(gy), p);
  check_tensor(gy, "grad_output", gy.shape, gy.ndim, x, "x", false);
  check_same_dtype(gw, "grad_weight", x, "x");
  check_same_device(gw, "grad_weight", x, "x");
  check_dense(gw, "grad_weight");
  check_output(gw, "grad_weight", {{&gy, "grad_output"}, {&x, "x"}});
  Backend be = pick_backend(x, use_emu);
  // The convolution y -> x's weight gradient: its input is gy (the transposed output), its output gradient x.
  const ConvGeom& g = r.g;
  grad_weight_run(r, x, ActGrad{}, [&](int64_t gi) { return grad_output_input(gy, gi, g.Cin, plane_in(g)); }, gw,
                  nullptr, be, stream);
}

void conv_bias_grad(const TensorView& gy, const TensorView& gb, bool use_emu, void* stream) {
  check_dtype(gy, "grad_output", {DType::f32, DType::f64});
  CK_CHECK_VALUE(gy.ndim >= 2, "grad_output: expected (N, C, ...), got shape ", shape_str(gy));
  check_plane_dense(gy, "grad_output");
  const int64_t bs[1] = {gy.shape[1]};
  check_tensor(gb, "grad_bias", bs, 1, gy, "grad_output");
  check_output(gb, "grad_bias", {{&gy, "grad_output"}});
  Backend be = pick_backend(gy, use_emu);
  int64_t plane = 1;
  for (int i = 2; i < gy.ndim; ++i) plane = checked_mul(plane, gy.shape[i], "the plane size");
  const auto [gy_bs, gy_cs] = plane_strides(gy, plane);
  ConvBiasGradArgs a{gy.shape[0], gy.shape[1], plane, gy_bs, gy_cs, gy.dtype, gy.data, gb.data, gy.device.index};
  if (a.C == 0) return;
  if (be == Backend::cpu)
    CK_CPU_CALL(conv_bias_grad_cpu, a);
  else
    kernels<ConvKernels>(be, "conv").bias_grad(a, stream);
}

}  // namespace ck
