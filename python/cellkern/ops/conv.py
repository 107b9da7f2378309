"""Convolution and transposed convolution 2D/3D: numpy and torch entry points; torch custom ops with autograd and
fake kernels."""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from .. import _C
from ._common import (batched, check_same_device, check_tensor, dl, emu_flag, empty, host_array, is_channels_last,
                      is_tensor, memory_format, np_empty, ntuple, stream_of, torch)

__all__ = ["conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d"]

PADDING_MODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}
ACTIVATIONS = {None: 0, "none": 0, "relu": 1, "leaky_relu": 2}


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", activation=None,
           negative_slope=0.01):
    """2D convolution with ``torch.nn.functional.conv2d``'s arguments, plus ``padding_mode`` ('zeros', 'reflect',
    'replicate', 'circular', as torch.nn.Conv2d) and an activation fused into the same pass (None, 'relu' or
    'leaky_relu' with ``negative_slope`` >= 0). ``padding`` is an int, a pair, 'valid' or 'same'.

    Takes torch tensors (differentiable in x, weight and bias; (N, C, H, W) or (C, H, W); any layout, channels_last
    in gives channels_last out) or numpy arrays (forward only, returns numpy).

    ``x`` may also be a list (or tuple) of up to 4 tensors or arrays that agree in every dim but the channels: the
    convolution of their concatenation along the channels, which is never materialised (the kernels read each part
    in place; gradients flow to every part). A U-Net decoder's [upsampled, skip]. Needs ``groups=1``."""
    return _conv(x, weight, bias, 2, stride, padding, dilation, groups, padding_mode, activation, negative_slope)


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", activation=None,
           negative_slope=0.01):
    """3D convolution with ``torch.nn.functional.conv3d``'s arguments; see conv2d."""
    return _conv(x, weight, bias, 3, stride, padding, dilation, groups, padding_mode, activation, negative_slope)


def _params(nd, weight_shape, stride, padding, dilation, groups, padding_mode, activation, negative_slope):
    s = ntuple(stride, nd, "stride")
    d = ntuple(dilation, nd, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            lo = hi = [0] * nd
        elif padding == "same":
            if any(v != 1 for v in s):
                raise ValueError("padding='same' is not supported for strided convolutions")
            k = list(weight_shape[2:]) if len(weight_shape) == nd + 2 else [1] * nd
            lo = [d[i] * (k[i] - 1) // 2 for i in range(nd)]  # torch puts the odd pixel on the right
            hi = [d[i] * (k[i] - 1) - lo[i] for i in range(nd)]
        else:
            raise ValueError(f"padding: expected an int, {nd} ints, 'valid' or 'same', got {padding!r}")
    else:
        lo = hi = ntuple(padding, nd, "padding")
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool):
        raise ValueError(f"groups: expected an int, got {groups!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode: expected one of {sorted(PADDING_MODES)}, got {padding_mode!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected None, 'relu' or 'leaky_relu', got {activation!r}")
    act = ACTIVATIONS[activation]
    slope = float(negative_slope)
    if act == 2 and not slope >= 0:
        raise ValueError(f"negative_slope must be >= 0 for a fused leaky ReLU (its gradient is read from the "
                         f"output), got {negative_slope!r}")
    return s, list(lo), list(hi), d, int(groups), PADDING_MODES[padding_mode], act, slope


def _parts(x, nd):
    """(list of parts, is_numpy): x itself as one part, or the parts of a list input (types checked)."""
    if not isinstance(x, (list, tuple)):
        return [x], isinstance(x, np.ndarray)
    arrays = all(isinstance(p, np.ndarray) for p in x)
    tensors = torch is not None and all(isinstance(p, torch.Tensor) for p in x)
    if not (arrays or tensors) or len(x) == 0:
        kinds = sorted({type(p).__name__ for p in x})
        if len(x) and not any(isinstance(p, np.ndarray) or (torch is not None and isinstance(p, torch.Tensor))
                              for p in x):
            raise TypeError(f"x: expected a torch.Tensor or numpy.ndarray, or a list of them (channel parts), got a "
                            f"{type(x).__name__} of {kinds}")
        if len(x) == 0:
            raise ValueError("x: expected a tensor or a non-empty list of channel parts")
        raise TypeError(f"x: the channel parts must be all torch tensors or all numpy arrays, got {kinds}")
    if len(x) > 4:
        raise ValueError(f"x: at most 4 channel parts are supported, got {len(x)}")
    return list(x), arrays


def _batched_parts(xs, nd):
    """The parts with a batch dim, and whether one was added (the same for every part)."""
    out = [batched(p, nd, "x" if len(xs) == 1 else f"x[{i}]") for i, p in enumerate(xs)]
    if len({u for _, u in out}) > 1:
        raise ValueError(f"x: channel parts mix batched and unbatched shapes: {[tuple(p.shape) for p in xs]}")
    return [p for p, _ in out], out[0][1]


def _whole_shape(xs):
    """The shape of the parts' concatenation along dim 1 (the kernels check that the other dims agree)."""
    shape = list(xs[0].shape)
    shape[1] = sum(int(p.shape[1]) for p in xs)
    return shape


def _dl_parts(xs):
    return dl(xs[0]) if len(xs) == 1 else [dl(p) for p in xs]


def _part_names(xs):
    return ["x"] if len(xs) == 1 else [f"x[{i}]" for i in range(len(xs))]


def _check_torch_args(xs, weight, bias):
    """Kinds and devices of a torch call's tensors, before anything reaches the custom op (whose dispatch would
    route a meta tensor among them to the fake kernel and return uninitialised memory)."""
    names = _part_names(xs)
    for n, p in zip(names, xs):
        if not is_tensor(p):
            raise TypeError(f"{n}: expected a torch.Tensor or numpy.ndarray, got {'None' if p is None else type(p).__name__}")
        check_tensor(p, n)
    if isinstance(weight, np.ndarray):
        raise TypeError("weight: expected a torch.Tensor when x is a torch.Tensor, got numpy.ndarray")
    check_tensor(weight, "weight")
    check_tensor(bias, "bias", none_ok=True)
    check_same_device(*zip(names, xs), ("weight", weight), ("bias", bias))


def _conv(x, weight, bias, nd, stride, padding, dilation, groups, padding_mode, activation, negative_slope):
    xs, numpy_in = _parts(x, nd)
    if numpy_in:
        return _conv_numpy(xs, weight, bias, nd, stride, padding, dilation, groups, padding_mode, activation,
                           negative_slope)
    _check_torch_args(xs, weight, bias)
    params = _params(nd, tuple(weight.shape), stride, padding, dilation, groups, padding_mode, activation,
                     negative_slope)
    xbs, unbatched = _batched_parts(xs, nd)
    y = torch.ops.cellkern.conv(xbs, weight, bias, *params)
    return y[0] if unbatched else y


def _conv_numpy(xs, weight, bias, nd, stride, padding, dilation, groups, padding_mode, activation, negative_slope):
    if not isinstance(weight, np.ndarray) or (bias is not None and not isinstance(bias, np.ndarray)):
        raise TypeError("weight and bias: expected numpy arrays when x is a numpy array")
    xs = [host_array(p, n) for n, p in zip(_part_names(xs), xs)]
    weight = host_array(weight, "weight")
    bias = None if bias is None else host_array(bias, "bias")
    s, lo, hi, d, groups, mode, act, slope = _params(nd, weight.shape, stride, padding, dilation, groups,
                                                     padding_mode, activation, negative_slope)
    xbs, unbatched = _batched_parts(xs, nd)
    xbs = [np.ascontiguousarray(p) for p in xbs]
    w = np.ascontiguousarray(weight)
    b = None if bias is None else np.ascontiguousarray(bias)
    shape = _C.conv_output_shape(_whole_shape(xbs), list(w.shape), s, lo, hi, d, groups, mode)
    out = np_empty(shape, xbs[0].dtype, "out")
    _C.conv_forward(xbs[0] if len(xbs) == 1 else xbs, w, b, out, s, lo, hi, d, groups, mode, act, slope,
                    emu_flag(xbs[0]), 0)
    return out[0] if unbatched else out


def conv_into(xs, weight, bias, stride, padding_lo, padding_hi, dilation, groups, padding_mode, activation,
              negative_slope, out):
    """``torch.ops.cellkern.conv``'s forward written into ``out`` (no autograd): on the CPU ``out`` may be a slab of
    rows of a taller tensor (its planes apart), as the streamed inference assembles a layer's rows in place."""
    xc = [_planes(p) for p in xs]
    _C.conv_forward(_dl_parts(xc), dl(_dense(weight)), dl(None if bias is None else _dense(bias)), dl(out), stride,
                    padding_lo, padding_hi, dilation, groups, padding_mode, activation, negative_slope, emu_flag(xc[0]),
                    stream_of(xc[0]))
    return out


# ---- torch custom ops ----------------------------------------------------------------------------------------

def _out_size(n, k, s, d, lo, hi):
    # Mirrors conv_math.h's out_size for the fake kernel, which sees symbolic sizes under torch.compile.
    return (n + lo + hi - d * (k - 1) - 1) // s + 1


def _dense(t):
    return t if t.is_contiguous() else t.contiguous()


def _planes(t):
    """t if the forward kernels can read it in place (dense planes, channels and batch items apart: a slab of rows
    of a taller tensor, as the streamed inference passes), else a contiguous copy."""
    if t.is_contiguous():
        return t
    shape, strides = t.shape, t.stride()
    expect = 1
    for d in range(t.dim() - 1, 1, -1):
        if shape[d] != 1 and strides[d] != expect:
            return t.contiguous()
        expect *= shape[d]
    if t.dim() < 2 or (shape[1] != 1 and strides[1] < expect) or (
            shape[0] != 1 and strides[0] < (shape[1] - 1) * strides[1] + expect):
        return t.contiguous()
    return t


if torch is not None:

    @torch.library.custom_op("cellkern::conv", mutates_args=())
    def _conv_op(xs: List[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
                 padding_lo: List[int], padding_hi: List[int], dilation: List[int], groups: int, padding_mode: int,
                 activation: int, negative_slope: float) -> torch.Tensor:
        nd = len(stride)
        x = xs[0]
        cl = is_channels_last(x, nd)
        xc, wc = [_planes(p) for p in xs], _dense(weight)
        bc = None if bias is None else _dense(bias)
        shape = _C.conv_output_shape(_whole_shape(xc), list(wc.shape), stride, padding_lo, padding_hi, dilation,
                                     groups, padding_mode)
        y = empty(shape, x.dtype, x.device, "out")
        _C.conv_forward(_dl_parts(xc), dl(wc), dl(bc), dl(y), stride, padding_lo, padding_hi, dilation, groups,
                        padding_mode, activation, negative_slope, emu_flag(x), stream_of(x))
        # The kernels compute NC(D)HW; channels_last callers get their layout back (as torch's conv does).
        return y.contiguous(memory_format=memory_format(True, nd)) if cl else y

    @_conv_op.register_fake
    def _(xs, weight, bias, stride, padding_lo, padding_hi, dilation, groups, padding_mode, activation,
          negative_slope):
        nd = len(stride)
        x = xs[0]
        shape = [x.shape[0], weight.shape[0]] + [
            _out_size(x.shape[2 + i], weight.shape[2 + i], stride[i], dilation[i], padding_lo[i], padding_hi[i])
            for i in range(nd)]
        return torch.empty(shape, dtype=x.dtype, device=x.device,
                           memory_format=memory_format(is_channels_last(x, nd), nd))

    # The gradients of a convolution with a fused activation take its output: grad_out is the gradient of the
    # activated output, and the kernels apply the activation's derivative as they read it (never materialised).
    @torch.library.custom_op("cellkern::conv_grad_input", mutates_args=())
    def _conv_grad_input_op(grad_out: torch.Tensor, weight: torch.Tensor, input_shape: List[int], stride: List[int],
                            padding_lo: List[int], padding_hi: List[int], dilation: List[int], groups: int,
                            padding_mode: int, channel_offset: int, output: Optional[torch.Tensor],
                            activation: int, negative_slope: float) -> torch.Tensor:
        gy, wc = _dense(grad_out), _dense(weight)
        out = None if output is None else _dense(output)
        gx = empty(input_shape, gy.dtype, gy.device, "grad_input")
        ws_shape = _C.conv_grad_input_workspace_shape(input_shape, list(wc.shape), stride, padding_lo, padding_hi,
                                                      dilation, groups, padding_mode, channel_offset,
                                                      gy.device.type == "cpu" and not emu_flag(gy))
        ws = empty(ws_shape, gy.dtype, gy.device, "workspace (the padded input's gradient)") if ws_shape else None
        _C.conv_grad_input(dl(gy), dl(wc), dl(gx), dl(ws), stride, padding_lo, padding_hi, dilation, groups,
                           padding_mode, activation, negative_slope, emu_flag(gy), stream_of(gy), channel_offset,
                           dl(out))
        return gx

    @_conv_grad_input_op.register_fake
    def _(grad_out, weight, input_shape, stride, padding_lo, padding_hi, dilation, groups, padding_mode,
          channel_offset, output, activation, negative_slope):
        return torch.empty(input_shape, dtype=grad_out.dtype, device=grad_out.device)

    @torch.library.custom_op("cellkern::conv_grad_weight", mutates_args=())
    def _conv_grad_weight_op(grad_out: torch.Tensor, xs: List[torch.Tensor], weight_shape: List[int],
                             with_bias: bool, stride: List[int], padding_lo: List[int], padding_hi: List[int],
                             dilation: List[int], groups: int, padding_mode: int, output: Optional[torch.Tensor],
                             activation: int, negative_slope: float) -> Tuple[torch.Tensor, torch.Tensor]:
        gy, xc = _dense(grad_out), [_dense(p) for p in xs]
        out = None if output is None else _dense(output)
        gw = empty(weight_shape, gy.dtype, gy.device, "grad_weight")
        gb = torch.empty(weight_shape[0] if with_bias else 0, dtype=gy.dtype, device=gy.device)
        _C.conv_grad_weight(dl(gy), _dl_parts(xc), dl(gw), dl(gb) if with_bias else None, stride, padding_lo,
                            padding_hi, dilation, groups, padding_mode, activation, negative_slope, emu_flag(gy),
                            stream_of(gy), dl(out))
        return gw, gb

    @_conv_grad_weight_op.register_fake
    def _(grad_out, xs, weight_shape, with_bias, stride, padding_lo, padding_hi, dilation, groups, padding_mode,
          output, activation, negative_slope):
        gw = torch.empty(weight_shape, dtype=grad_out.dtype, device=grad_out.device)
        return gw, torch.empty(weight_shape[0] if with_bias else 0, dtype=grad_out.dtype, device=grad_out.device)

    def _setup_context(ctx, inputs, output):
        xs, weight, bias, stride, lo, hi, dilation, groups, mode, act, slope = inputs
        # A fused activation's gradient is read from the output, so only then is the output kept alive.
        ctx.save_for_backward(weight, output if act else None, *xs)
        ctx.args = (stride, lo, hi, dilation, groups, mode)
        ctx.act = (act, slope)
        ctx.has_bias = bias is not None

    def _backward(ctx, grad_out):
        weight, y, *xs = ctx.saved_tensors
        grad_out = _dense(grad_out)  # once here, not in each gradient op (a split view arrives strided)
        act = (y, *ctx.act)  # (None, 0, slope) without an activation
        needs_x = ctx.needs_input_grad[0]
        gxs = [None] * len(xs)
        if len(xs) > 1 and all(needs_x):
            # Every part needs its gradient: one pass over the whole width, split into views, reads and transforms
            # grad_out once instead of once per part (the Winograd input transform is most of the work at 32
            # channels).
            shape = list(xs[0].shape)
            shape[1] = sum(int(x.shape[1]) for x in xs)
            gx = torch.ops.cellkern.conv_grad_input(grad_out, weight, shape, *ctx.args, 0, *act)
            gxs = list(torch.split(gx, [int(x.shape[1]) for x in xs], dim=1))
            # The parts after the first as tensors of their own: a U-Net's skip tensor also feeds the pooling, and
            # autograd adds the two gradients in place only into a dense tensor that holds its storage alone (a
            # strided view made torch allocate the sum: 29-43 ms of a 750 ms training step, the copies ~4 ms).
            for i in range(1, len(gxs)):
                own = empty(list(gxs[i].shape), gx.dtype, gx.device, "grad_input", is_channels_last(gx, gx.dim() - 2))
                gxs[i] = own.copy_(gxs[i])
        else:
            offset = 0
            for i, x in enumerate(xs):  # one pass per part, from the weight's matching input channels
                if needs_x[i]:
                    gxs[i] = torch.ops.cellkern.conv_grad_input(grad_out, weight, list(x.shape), *ctx.args, offset,
                                                                *act)
                offset += x.shape[1]
        gw = gb = None
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            gw, gb = torch.ops.cellkern.conv_grad_weight(grad_out, xs, list(weight.shape), ctx.has_bias, *ctx.args,
                                                         *act)
            if not ctx.needs_input_grad[1]:
                gw = None
            if not (ctx.has_bias and ctx.needs_input_grad[2]):
                gb = None
        return gxs, gw, gb, None, None, None, None, None, None, None, None

    torch.library.register_autograd("cellkern::conv", _backward, setup_context=_setup_context)


# ---- transposed convolution ----------------------------------------------------------------------------------

def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2D transposed convolution with ``torch.nn.functional.conv_transpose2d``'s arguments and semantics (``weight``
    of shape (C_in, C_out / groups, kH, kW); output size (in - 1) * stride - 2 * padding + dilation * (k - 1) +
    output_padding + 1): the gradient of conv2d with respect to its input, plus the bias, on the same kernels.
    Kernel == stride (the U-Net's 2x2 / stride-2 upsampling) has its own CPU path. Torch tensors (differentiable in
    x, weight and bias; channels_last in gives channels_last out) or numpy arrays (forward only)."""
    return _conv_transpose(x, weight, bias, 2, stride, padding, output_padding, groups, dilation)


def conv_transpose3d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """3D transposed convolution with ``torch.nn.functional.conv_transpose3d``'s arguments; see conv_transpose2d."""
    return _conv_transpose(x, weight, bias, 3, stride, padding, output_padding, groups, dilation)


def _transpose_params(nd, stride, padding, output_padding, groups, dilation):
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool):
        raise ValueError(f"groups: expected an int, got {groups!r}")
    return (ntuple(stride, nd, "stride"), ntuple(padding, nd, "padding"), ntuple(output_padding, nd, "output_padding"),
            ntuple(dilation, nd, "dilation"), int(groups))


def _conv_transpose(x, weight, bias, nd, stride, padding, output_padding, groups, dilation):
    s, p, op, d, groups = _transpose_params(nd, stride, padding, output_padding, groups, dilation)
    if isinstance(x, np.ndarray):
        if not isinstance(weight, np.ndarray) or (bias is not None and not isinstance(bias, np.ndarray)):
            raise TypeError("weight and bias: expected numpy arrays when x is a numpy array")
        x, weight = host_array(x, "x"), host_array(weight, "weight")
        bias = None if bias is None else host_array(bias, "bias")
        xb, unbatched = batched(x, nd)
        xb, w = np.ascontiguousarray(xb), np.ascontiguousarray(weight)
        b = None if bias is None else np.ascontiguousarray(bias)
        out = np_empty(_C.conv_transpose_output_shape(list(xb.shape), list(w.shape), s, p, op, d, groups), xb.dtype,
                       "out")
        _C.conv_transpose_forward(xb, w, b, out, s, p, d, groups, emu_flag(xb), 0)
        return out[0] if unbatched else out
    _check_torch_args([x], weight, bias)
    xb, unbatched = batched(x, nd)
    y = torch.ops.cellkern.conv_transpose(xb, weight, bias, s, p, op, d, groups)
    return y[0] if unbatched else y


if torch is not None:

    def _transpose_size(n, k, s, p, d, op):
        return (n - 1) * s - 2 * p + d * (k - 1) + op + 1

    @torch.library.custom_op("cellkern::conv_transpose", mutates_args=())
    def _conv_transpose_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
                           padding: List[int], output_padding: List[int], dilation: List[int],
                           groups: int) -> torch.Tensor:
        nd = len(stride)
        cl = is_channels_last(x, nd)
        xc, wc = _dense(x), _dense(weight)
        bc = None if bias is None else _dense(bias)
        shape = _C.conv_transpose_output_shape(list(xc.shape), list(wc.shape), stride, padding, output_padding,
                                               dilation, groups)
        y = empty(shape, x.dtype, x.device, "out")
        _C.conv_transpose_forward(dl(xc), dl(wc), dl(bc), dl(y), stride, padding, dilation, groups, emu_flag(xc),
                                  stream_of(xc))
        return y.contiguous(memory_format=memory_format(True, nd)) if cl else y

    @_conv_transpose_op.register_fake
    def _(x, weight, bias, stride, padding, output_padding, dilation, groups):
        nd = len(stride)
        shape = [x.shape[0], weight.shape[1] * groups] + [
            _transpose_size(x.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i], output_padding[i])
            for i in range(nd)]
        return torch.empty(shape, dtype=x.dtype, device=x.device,
                           memory_format=memory_format(is_channels_last(x, nd), nd))

    @torch.library.custom_op("cellkern::conv_transpose_grad_input", mutates_args=())
    def _conv_transpose_grad_input_op(grad_out: torch.Tensor, weight: torch.Tensor, input_shape: List[int],
                                      stride: List[int], padding: List[int], dilation: List[int],
                                      groups: int) -> torch.Tensor:
        gy, wc = _planes(grad_out), _dense(weight)
        gx = empty(input_shape, gy.dtype, gy.device, "grad_input")
        _C.conv_transpose_grad_input(dl(gy), dl(wc), dl(gx), stride, padding, dilation, groups, emu_flag(gy),
                                     stream_of(gy))
        return gx

    @_conv_transpose_grad_input_op.register_fake
    def _(grad_out, weight, input_shape, stride, padding, dilation, groups):
        return torch.empty(input_shape, dtype=grad_out.dtype, device=grad_out.device)

    @torch.library.custom_op("cellkern::conv_transpose_grad_weight", mutates_args=())
    def _conv_transpose_grad_weight_op(grad_out: torch.Tensor, x: torch.Tensor, weight_shape: List[int],
                                       stride: List[int], padding: List[int], dilation: List[int],
                                       groups: int) -> torch.Tensor:
        gy, xc = _planes(grad_out), _dense(x)
        gw = empty(weight_shape, gy.dtype, gy.device, "grad_weight")
        _C.conv_transpose_grad_weight(dl(gy), dl(xc), dl(gw), stride, padding, dilation, groups, emu_flag(gy),
                                      stream_of(gy))
        return gw

    @_conv_transpose_grad_weight_op.register_fake
    def _(grad_out, x, weight_shape, stride, padding, dilation, groups):
        return torch.empty(weight_shape, dtype=grad_out.dtype, device=grad_out.device)

    @torch.library.custom_op("cellkern::conv_bias_grad", mutates_args=())
    def _conv_bias_grad_op(grad_out: torch.Tensor) -> torch.Tensor:
        gy = _planes(grad_out)
        gb = torch.empty(gy.shape[1], dtype=gy.dtype, device=gy.device)
        _C.conv_bias_grad(dl(gy), dl(gb), emu_flag(gy), stream_of(gy))
        return gb

    @_conv_bias_grad_op.register_fake
    def _(grad_out):
        return torch.empty(grad_out.shape[1], dtype=grad_out.dtype, device=grad_out.device)

    def _transpose_setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, output_padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None

    def _transpose_backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        # Once here, not in each of the three gradient ops. A channel part of a wider gradient (the decoder's
        # convolution reads the upsampled tensor next to the skip) is read in place.
        grad_out = _planes(grad_out)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.cellkern.conv_transpose_grad_input(grad_out, weight, list(x.shape), *ctx.args)
        if ctx.needs_input_grad[1]:
            gw = torch.ops.cellkern.conv_transpose_grad_weight(grad_out, x, list(weight.shape), *ctx.args)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = torch.ops.cellkern.conv_bias_grad(grad_out)
        return gx, gw, gb, None, None, None, None, None

    torch.library.register_autograd("cellkern::conv_transpose", _transpose_backward,
                                    setup_context=_transpose_setup_context)
