"""Max-pooling 2D/3D: numpy and torch entry points; torch custom ops with autograd and fake kernels."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .. import _C
from ._common import (batched, check_device, dense, dl, emu_flag, empty, host_array, is_channels_last, is_tensor,
                      memory_format, np_empty, ntuple, stream_of, torch)

__all__ = ["max_pool2d", "max_pool3d"]

# Index modes of the kernels: none; uint8 position inside the window (what autograd saves, 8x smaller than
# torch's int64); torch's int64 flat index into the input plane (return_indices=True).
NONE, LOCAL, FLAT = 0, 1, 2


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2D max-pooling with ``torch.nn.functional.max_pool2d``'s semantics (NaN propagates; ties keep the first
    position), on a torch tensor (differentiable; N,C,H,W or C,H,W; contiguous or channels_last) or a numpy
    array (returns numpy)."""
    return _max_pool(x, 2, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """3D max-pooling with ``torch.nn.functional.max_pool3d``'s semantics; see max_pool2d."""
    return _max_pool(x, 3, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def _params(nd, kernel_size, stride, padding, dilation):
    k = ntuple(kernel_size, nd, "kernel_size")
    s = k if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else ntuple(stride, nd, "stride")
    return k, s, ntuple(padding, nd, "padding"), ntuple(dilation, nd, "dilation")


def _max_pool(x, nd, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    k, s, p, d = _params(nd, kernel_size, stride, padding, dilation)
    ceil_mode = bool(ceil_mode)
    if isinstance(x, np.ndarray):
        return _max_pool_numpy(host_array(x, "x"), nd, k, s, p, d, ceil_mode, return_indices)
    if not is_tensor(x):
        raise TypeError(f"x: expected a torch.Tensor or numpy.ndarray, got {'None' if x is None else type(x).__name__}")
    check_device(x, "x")
    xb, unbatched = batched(x, nd)
    needs_grad = torch.is_grad_enabled() and xb.requires_grad
    if return_indices:
        mode = FLAT
    elif needs_grad:
        mode = LOCAL if k[0] * k[1] * (k[2] if nd == 3 else 1) <= 256 else FLAT
    else:
        mode = NONE
    out, idx = torch.ops.cellkern.max_pool(xb, k, s, p, d, ceil_mode, mode)
    if unbatched:
        out, idx = out[0], idx[0] if return_indices else idx
    return (out, idx) if return_indices else out


def _max_pool_numpy(x, nd, k, s, p, d, ceil_mode, return_indices):
    xb, unbatched = batched(x, nd)
    xb = np.ascontiguousarray(xb)
    shape = _C.max_pool_output_shape(list(xb.shape), k, s, p, d, ceil_mode)
    out = np_empty(shape, xb.dtype, "out")
    idx = np_empty(shape, np.int64, "indices") if return_indices else None
    _C.max_pool_forward(xb, out, idx, k, s, p, d, ceil_mode, FLAT if return_indices else NONE, emu_flag(xb), 0)
    if unbatched:
        out = out[0]
        idx = idx[0] if idx is not None else None
    return (out, idx) if return_indices else out


# ---- torch custom ops ----------------------------------------------------------------------------------------

def _out_size(n, k, s, p, d, ceil_mode):
    # Mirrors pool_math.h's out_size for the fake kernel, which sees symbolic sizes under torch.compile.
    o = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (o - 1) * s >= n + p:
        o = o - 1
    return o


if torch is not None:

    @torch.library.custom_op("cellkern::max_pool", mutates_args=())
    def _max_pool_op(x: torch.Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
                     dilation: List[int], ceil_mode: bool, index_mode: int) -> Tuple[torch.Tensor, torch.Tensor]:
        nd = len(kernel_size)
        x = dense(x, nd)
        cl = is_channels_last(x, nd)
        shape = _C.max_pool_output_shape(list(x.shape), kernel_size, stride, padding, dilation, ceil_mode)
        out = empty(shape, x.dtype, x.device, "out", cl)
        if index_mode == NONE:
            idx = torch.empty(0, dtype=torch.uint8, device=x.device)
        else:
            idx = empty(shape, torch.uint8 if index_mode == LOCAL else torch.int64, x.device, "indices", cl)
        _C.max_pool_forward(dl(x), dl(out), dl(idx) if index_mode != NONE else None, kernel_size, stride, padding,
                            dilation, ceil_mode, index_mode, emu_flag(x), stream_of(x))
        return out, idx

    @_max_pool_op.register_fake
    def _(x, kernel_size, stride, padding, dilation, ceil_mode, index_mode):
        nd = len(kernel_size)
        shape = list(x.shape[:2]) + [_out_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i],
                                               ceil_mode) for i in range(nd)]
        mf = memory_format(is_channels_last(x, nd), nd)
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=mf)
        if index_mode == NONE:
            return out, torch.empty(0, dtype=torch.uint8, device=x.device)
        idx = torch.empty(shape, dtype=torch.uint8 if index_mode == LOCAL else torch.int64, device=x.device,
                          memory_format=mf)
        return out, idx

    @torch.library.custom_op("cellkern::max_pool_backward", mutates_args=())
    def _max_pool_backward_op(grad_out: torch.Tensor, indices: torch.Tensor, input_shape: List[int],
                              channels_last: bool, kernel_size: List[int], stride: List[int], padding: List[int],
                              dilation: List[int], ceil_mode: bool, index_mode: int) -> torch.Tensor:
        nd = len(kernel_size)
        mf = memory_format(channels_last, nd)
        grad_out = grad_out.contiguous(memory_format=mf)
        indices = indices.contiguous(memory_format=mf)
        grad_in = empty(input_shape, grad_out.dtype, grad_out.device, "grad_input", channels_last)
        _C.max_pool_backward(dl(grad_out), dl(indices), dl(grad_in), kernel_size, stride, padding, dilation,
                             ceil_mode, index_mode, emu_flag(grad_in), stream_of(grad_in))
        return grad_in

    @_max_pool_backward_op.register_fake
    def _(grad_out, indices, input_shape, channels_last, kernel_size, stride, padding, dilation, ceil_mode,
          index_mode):
        mf = memory_format(channels_last, len(kernel_size))
        return torch.empty(input_shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=mf)

    def _setup_context(ctx, inputs, output):
        x, kernel_size, stride, padding, dilation, ceil_mode, index_mode = inputs
        _, idx = output
        nd = len(kernel_size)
        ctx.mark_non_differentiable(idx)
        ctx.save_for_backward(idx)
        ctx.args = (list(x.shape), is_channels_last(x, nd), kernel_size, stride, padding, dilation,
                    ceil_mode, index_mode)

    def _backward(ctx, grad_out, _grad_idx):
        (idx,) = ctx.saved_tensors
        if ctx.args[-1] == NONE:
            raise RuntimeError("cellkern::max_pool was called without indices (index_mode=0), so it cannot be "
                               "differentiated; use cellkern.ops.max_pool2d/3d, which choose the mode")
        grad_in = torch.ops.cellkern.max_pool_backward(grad_out, idx, *ctx.args)
        return grad_in, None, None, None, None, None, None

    torch.library.register_autograd("cellkern::max_pool", _backward, setup_context=_setup_context)

    def _flat_indices(idx, input_shape, kernel_size, stride, padding, dilation, index_mode):
        """torch's int64 flat indices from either index mode (used by the double backward)."""
        if index_mode == FLAT:
            return idx
        nd = len(kernel_size)
        local = idx.long()
        flat = torch.zeros_like(local)
        sizes = input_shape[2:]
        rem = local
        for i in reversed(range(nd)):  # local = ((kd * KH) + kh) * KW + kw
            kpos = rem % kernel_size[i]
            rem = rem // kernel_size[i]
            view = [1] * (nd + 2)
            view[2 + i] = -1
            o = torch.arange(idx.shape[2 + i], device=idx.device).view(view)
            pos = o * stride[i] - padding[i] + kpos * dilation[i]
            scale = 1
            for j in range(i + 1, nd):
                scale *= sizes[j]
            flat = flat + pos * scale
        return flat

    def _setup_backward_context(ctx, inputs, output):
        grad_out, idx, input_shape, channels_last, kernel_size, stride, padding, dilation, ceil_mode, mode = inputs
        ctx.save_for_backward(idx)
        ctx.args = (input_shape, kernel_size, stride, padding, dilation, mode)

    def _backward_backward(ctx, grad_grad_in):
        # max_pool_backward is linear in grad_out: its own gradient gathers at the argmax positions.
        (idx,) = ctx.saved_tensors
        input_shape, kernel_size, stride, padding, dilation, mode = ctx.args
        flat = _flat_indices(idx, input_shape, kernel_size, stride, padding, dilation, mode)
        g = grad_grad_in.reshape(input_shape[0], input_shape[1], -1)
        ggo = g.gather(2, flat.reshape(flat.shape[0], flat.shape[1], -1)).view(flat.shape)
        return ggo, None, None, None, None, None, None, None, None, None

    torch.library.register_autograd("cellkern::max_pool_backward", _backward_backward,
                                    setup_context=_setup_backward_context)
