"""Convolution and transposed convolution 2D/3D: numpy and torch entry points; torch custom ops with autograd and
fake kernels."""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from .. import _C
from ._common import (batched, check_device, dl, emu_flag, is_channels_last, memory_format, ntuple, require_torch,
                      stream_of, torch)

__all__ = ["conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d"]

PADDING_MODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}
ACTIVATIONS = {None: 0, "none": 0, "relu": 1, "leaky_relu": 2}


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", activation=None,
           negative_slope=0.01):
    """2D convolution with ``torch.nn.functional.conv2d``'s arguments, plus ``padding_mode`` ('zeros', 'reflect',
    'replicate', 'circular', as torch.nn.Conv2d) and an activation fused into the same pass (None, 'relu' or
    'leaky_relu' with ``negative_slope`` >= 0). ``padding`` is an int, a pair, 'valid' or 'same'.

    Takes torch tensors (differentiable in x, weight and bias; (N, C, H, W) or (C, H, W); any layout, channels_last
    in gives channels_last out) or numpy arrays (forward only, returns numpy)."""
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


def _conv(x, weight, bias, nd, stride, padding, dilation, groups, padding_mode, activation, negative_slope):
    if isinstance(x, (list, tuple)):
        x = _concat_parts(x, nd)
    if isinstance(x, np.ndarray):
        return _conv_numpy(x, weight, bias, nd, stride, padding, dilation, groups, padding_mode, activation,
                           negative_slope)
    require_torch()
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
    params = _params(nd, tuple(weight.shape), stride, padding, dilation, groups, padding_mode, activation,
                     negative_slope)
    xb, unbatched = batched(x, nd)
    check_device(xb, "x")
    check_device(weight, "weight")
    y = torch.ops.cellkern.conv(xb, weight, bias, *params)
    return y[0] if unbatched else y


def _concat_parts(parts, nd):
    """PROVISIONAL: the parts of a channel-split input, concatenated (the kernels will read them in place)."""
    if not all(isinstance(p, np.ndarray) or (torch is not None and isinstance(p, torch.Tensor)) for p in parts):
        raise TypeError("x: expected a torch.Tensor or numpy.ndarray, or a list of them (channel parts), got "
                        f"a {type(parts).__name__} of {sorted({type(p).__name__ for p in parts})}")
    if len(parts) == 0:
        raise ValueError("x: expected a tensor or a non-empty list of tensors")
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate([batched(p, nd, f"x[{i}]")[0] for i, p in enumerate(parts)], axis=1)[
            0 if parts[0].ndim == nd + 1 else slice(None)]
    require_torch()
    if not all(isinstance(p, torch.Tensor) for p in parts):
        raise TypeError("x: a list input must hold only torch tensors or only numpy arrays")
    return torch.cat(parts, dim=-nd - 1)


def _conv_numpy(x, weight, bias, nd, stride, padding, dilation, groups, padding_mode, activation, negative_slope):
    if not isinstance(weight, np.ndarray) or (bias is not None and not isinstance(bias, np.ndarray)):
        raise TypeError("weight and bias: expected numpy arrays when x is a numpy array")
    s, lo, hi, d, groups, mode, act, slope = _params(nd, weight.shape, stride, padding, dilation, groups,
                                                     padding_mode, activation, negative_slope)
    xb, unbatched = batched(x, nd)
    xb = np.ascontiguousarray(xb)
    w = np.ascontiguousarray(weight)
    b = None if bias is None else np.ascontiguousarray(bias)
    shape = _C.conv_output_shape(list(xb.shape), list(w.shape), s, lo, hi, d, groups, mode)
    out = np.empty(shape, dtype=xb.dtype)
    _C.conv_forward(xb, w, b, out, s, lo, hi, d, groups, mode, act, slope, emu_flag(xb), 0)
    return out[0] if unbatched else out


# ---- torch custom ops ----------------------------------------------------------------------------------------

def _out_size(n, k, s, d, lo, hi):
    # Mirrors conv_math.h's out_size for the fake kernel, which sees symbolic sizes under torch.compile.
    return (n + lo + hi - d * (k - 1) - 1) // s + 1


def _dense(t):
    return t if t.is_contiguous() else t.contiguous()


if torch is not None:

    @torch.library.custom_op("cellkern::conv", mutates_args=())
    def _conv_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
                 padding_lo: List[int], padding_hi: List[int], dilation: List[int], groups: int, padding_mode: int,
                 activation: int, negative_slope: float) -> torch.Tensor:
        nd = len(stride)
        cl = is_channels_last(x, nd)
        xc, wc = _dense(x), _dense(weight)
        bc = None if bias is None else _dense(bias)
        shape = _C.conv_output_shape(list(xc.shape), list(wc.shape), stride, padding_lo, padding_hi, dilation, groups,
                                     padding_mode)
        y = torch.empty(shape, dtype=x.dtype, device=x.device)
        _C.conv_forward(dl(xc), dl(wc), dl(bc), dl(y), stride, padding_lo, padding_hi, dilation, groups, padding_mode,
                        activation, negative_slope, emu_flag(xc), stream_of(xc))
        # The kernels compute NC(D)HW; channels_last callers get their layout back (as torch's conv does).
        return y.contiguous(memory_format=memory_format(True, nd)) if cl else y

    @_conv_op.register_fake
    def _(x, weight, bias, stride, padding_lo, padding_hi, dilation, groups, padding_mode, activation,
          negative_slope):
        nd = len(stride)
        shape = [x.shape[0], weight.shape[0]] + [
            _out_size(x.shape[2 + i], weight.shape[2 + i], stride[i], dilation[i], padding_lo[i], padding_hi[i])
            for i in range(nd)]
        return torch.empty(shape, dtype=x.dtype, device=x.device,
                           memory_format=memory_format(is_channels_last(x, nd), nd))

    @torch.library.custom_op("cellkern::conv_grad_input", mutates_args=())
    def _conv_grad_input_op(grad_out: torch.Tensor, weight: torch.Tensor, input_shape: List[int], stride: List[int],
                            padding_lo: List[int], padding_hi: List[int], dilation: List[int], groups: int,
                            padding_mode: int) -> torch.Tensor:
        gy, wc = _dense(grad_out), _dense(weight)
        gx = torch.empty(input_shape, dtype=gy.dtype, device=gy.device)
        ws_shape = _C.conv_grad_input_workspace_shape(input_shape, list(wc.shape), stride, padding_lo, padding_hi,
                                                      dilation, groups, padding_mode)
        ws = torch.empty(ws_shape, dtype=gy.dtype, device=gy.device) if ws_shape else None
        _C.conv_grad_input(dl(gy), dl(wc), dl(gx), dl(ws), stride, padding_lo, padding_hi, dilation, groups,
                           padding_mode, 0, 0.0, emu_flag(gy), stream_of(gy))
        return gx

    @_conv_grad_input_op.register_fake
    def _(grad_out, weight, input_shape, stride, padding_lo, padding_hi, dilation, groups, padding_mode):
        return torch.empty(input_shape, dtype=grad_out.dtype, device=grad_out.device)

    @torch.library.custom_op("cellkern::conv_grad_weight", mutates_args=())
    def _conv_grad_weight_op(grad_out: torch.Tensor, x: torch.Tensor, weight_shape: List[int], with_bias: bool,
                             stride: List[int], padding_lo: List[int], padding_hi: List[int], dilation: List[int],
                             groups: int, padding_mode: int) -> Tuple[torch.Tensor, torch.Tensor]:
        gy, xc = _dense(grad_out), _dense(x)
        gw = torch.empty(weight_shape, dtype=gy.dtype, device=gy.device)
        gb = torch.empty(weight_shape[0] if with_bias else 0, dtype=gy.dtype, device=gy.device)
        _C.conv_grad_weight(dl(gy), dl(xc), dl(gw), dl(gb) if with_bias else None, stride, padding_lo, padding_hi,
                            dilation, groups, padding_mode, 0, 0.0, emu_flag(gy), stream_of(gy))
        return gw, gb

    @_conv_grad_weight_op.register_fake
    def _(grad_out, x, weight_shape, with_bias, stride, padding_lo, padding_hi, dilation, groups, padding_mode):
        gw = torch.empty(weight_shape, dtype=grad_out.dtype, device=grad_out.device)
        return gw, torch.empty(weight_shape[0] if with_bias else 0, dtype=grad_out.dtype, device=grad_out.device)

    @torch.library.custom_op("cellkern::conv_act_grad", mutates_args=())
    def _conv_act_grad_op(grad_out: torch.Tensor, out: torch.Tensor, activation: int,
                          negative_slope: float) -> torch.Tensor:
        gy, y = _dense(grad_out), _dense(out)
        gz = torch.empty_like(gy, memory_format=torch.contiguous_format)
        _C.conv_act_grad(dl(gy), dl(y), dl(gz), activation, negative_slope, emu_flag(gy), stream_of(gy))
        return gz

    @_conv_act_grad_op.register_fake
    def _(grad_out, out, activation, negative_slope):
        return torch.empty_like(grad_out, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        x, weight, bias, stride, lo, hi, dilation, groups, mode, act, slope = inputs
        # A fused activation's gradient is read from the output, so only then is the output kept alive.
        ctx.save_for_backward(x, weight, output if act else None)
        ctx.args = (stride, lo, hi, dilation, groups, mode)
        ctx.act = (act, slope)
        ctx.has_bias = bias is not None

    def _backward(ctx, grad_out):
        x, weight, y = ctx.saved_tensors
        act, slope = ctx.act
        if act:
            grad_out = torch.ops.cellkern.conv_act_grad(grad_out, y, act, slope)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.cellkern.conv_grad_input(grad_out, weight, list(x.shape), *ctx.args)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            gw, gb = torch.ops.cellkern.conv_grad_weight(grad_out, x, list(weight.shape), ctx.has_bias, *ctx.args)
            if not ctx.needs_input_grad[1]:
                gw = None
            if not (ctx.has_bias and ctx.needs_input_grad[2]):
                gb = None
        return gx, gw, gb, None, None, None, None, None, None, None, None

    torch.library.register_autograd("cellkern::conv", _backward, setup_context=_setup_context)


# ---- transposed convolution ----------------------------------------------------------------------------------

def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2D transposed convolution with ``torch.nn.functional.conv_transpose2d``'s arguments and semantics
    (``weight`` of shape (C_in, C_out / groups, kH, kW)): the gradient of conv2d with respect to its input, plus
    bias. Torch tensors (differentiable in x, weight and bias) or numpy arrays (forward only)."""
    return _conv_transpose(x, weight, bias, 2, stride, padding, output_padding, groups, dilation)


def conv_transpose3d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """3D transposed convolution with ``torch.nn.functional.conv_transpose3d``'s arguments; see conv_transpose2d."""
    return _conv_transpose(x, weight, bias, 3, stride, padding, output_padding, groups, dilation)


def _transpose_params(nd, stride, padding, output_padding, groups, dilation):
    s = ntuple(stride, nd, "stride")
    p = ntuple(padding, nd, "padding")
    op = ntuple(output_padding, nd, "output_padding")
    d = ntuple(dilation, nd, "dilation")
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool):
        raise ValueError(f"groups: expected an int, got {groups!r}")
    for i in range(nd):
        if s[i] < 1 or d[i] < 1 or p[i] < 0:
            raise ValueError(f"stride and dilation must be positive and padding non-negative, got stride={s}, "
                             f"padding={p}, dilation={d}")
        if not 0 <= op[i] < max(s[i], d[i]):
            raise ValueError(f"output_padding must be smaller than either stride or dilation, got "
                             f"output_padding={op}, stride={s}, dilation={d}")
        if op[i] >= s[i]:  # PROVISIONAL: lifted when the transposed kernels take the output shape directly
            raise ValueError(f"output_padding >= stride is not supported yet, got output_padding={op}, stride={s}")
    return s, p, op, d, int(groups)


def _transpose_shape(nd, x_shape, w_shape, s, p, op, d, groups):
    if len(x_shape) != nd + 2:
        raise ValueError(f"x: expected a {nd + 2}D tensor, got shape {tuple(x_shape)}")
    if len(w_shape) != nd + 2:
        raise ValueError(f"weight: expected a {nd + 2}D tensor (C_in, C_out / groups, k...), got {tuple(w_shape)}")
    if w_shape[0] != x_shape[1]:
        raise ValueError(f"weight: expected {x_shape[1]} input channels (x has {x_shape[1]}), got weight of shape "
                         f"{tuple(w_shape)}")
    if groups < 1 or x_shape[1] % groups:
        raise ValueError(f"groups: {x_shape[1]} input channels are not divisible by groups={groups}")
    out = [(x_shape[2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (w_shape[2 + i] - 1) + op[i] + 1 for i in range(nd)]
    if any(o <= 0 for o in out):
        raise ValueError(f"the output would be empty: input {tuple(x_shape)}, kernel {tuple(w_shape[2:])}, "
                         f"stride {s}, padding {p}")
    return [x_shape[0], w_shape[1] * groups] + out


def _conv_transpose(x, weight, bias, nd, stride, padding, output_padding, groups, dilation):
    s, p, op, d, groups = _transpose_params(nd, stride, padding, output_padding, groups, dilation)
    if isinstance(x, np.ndarray):
        if not isinstance(weight, np.ndarray) or (bias is not None and not isinstance(bias, np.ndarray)):
            raise TypeError("weight and bias: expected numpy arrays when x is a numpy array")
        xb, unbatched = batched(x, nd)
        xb, w = np.ascontiguousarray(xb), np.ascontiguousarray(weight)
        out = np.empty(_transpose_shape(nd, xb.shape, w.shape, s, p, op, d, groups), dtype=xb.dtype)
        _C.conv_grad_input(xb, w, out, None, s, p, p, d, groups, 0, 0, 0.0, emu_flag(xb), 0)
        if bias is not None:
            out += np.asarray(bias, dtype=out.dtype).reshape((1, -1) + (1,) * nd)
        return out[0] if unbatched else out
    require_torch()
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
    xb, unbatched = batched(x, nd)
    check_device(xb, "x")
    check_device(weight, "weight")
    _transpose_shape(nd, tuple(xb.shape), tuple(weight.shape), s, p, op, d, groups)
    y = torch.ops.cellkern.conv_transpose(xb, weight, bias, s, p, op, d, groups)
    return y[0] if unbatched else y


if torch is not None:

    @torch.library.custom_op("cellkern::conv_transpose", mutates_args=())
    def _conv_transpose_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
                           padding: List[int], output_padding: List[int], dilation: List[int],
                           groups: int) -> torch.Tensor:
        nd = len(stride)
        cl = is_channels_last(x, nd)
        shape = _transpose_shape(nd, tuple(x.shape), tuple(weight.shape), stride, padding, output_padding, dilation,
                                 groups)
        y = torch.empty(shape, dtype=x.dtype, device=x.device)
        _C.conv_grad_input(dl(_dense(x)), dl(_dense(weight)), dl(y), None, stride, padding, padding, dilation,
                           groups, 0, 0, 0.0, emu_flag(x), stream_of(x))
        if bias is not None:
            y += bias.view((1, -1) + (1,) * nd)  # PROVISIONAL: to be fused into the kernel's stores
        return y.contiguous(memory_format=memory_format(True, nd)) if cl else y

    @_conv_transpose_op.register_fake
    def _(x, weight, bias, stride, padding, output_padding, dilation, groups):
        nd = len(stride)
        shape = [x.shape[0], weight.shape[1] * groups] + [
            (x.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[2 + i] - 1)
            + output_padding[i] + 1 for i in range(nd)]
        return torch.empty(shape, dtype=x.dtype, device=x.device,
                           memory_format=memory_format(is_channels_last(x, nd), nd))

    def _transpose_setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, output_padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, padding, dilation, groups, 0)
        ctx.has_bias = bias is not None

    def _transpose_backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        nd = x.dim() - 2
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # The transposed convolution's input gradient is the convolution itself.
            gx = torch.ops.cellkern.conv(grad_out, weight, None, *ctx.args, 0, 0.0)
        if ctx.needs_input_grad[1]:
            gw, _ = torch.ops.cellkern.conv_grad_weight(x, grad_out, list(weight.shape), False, *ctx.args)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum(dim=[0] + list(range(2, nd + 2)))  # PROVISIONAL: a cellkern reduction kernel
        return gx, gw, gb, None, None, None, None, None

    torch.library.register_autograd("cellkern::conv_transpose", _transpose_backward,
                                    setup_context=_transpose_setup_context)
