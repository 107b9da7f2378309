"""torch's convolution of a padded input whose padding is too large to materialise (the tests' oracle for strides and
paddings of 2**30 and beyond)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def padded_conv_gathered(x, w, b, stride, dilation, lohi, groups=1, mode="zeros"):
    """``conv(pad(x, lohi, mode), w, b, stride, 0, dilation, groups)`` without building the padded input: along each
    spatial dim, output o's taps ``o * s - lo + k * d`` are mapped into the input as ``mode`` does (zeros: an
    appended zero element; replicate: clamped; reflect: mirrored without the edge; circular: modulo), only those
    positions are gathered, and a convolution whose stride is the kernel size runs on them. Differentiable in x, w
    and b. ``x (N, C, *sp)`` or unbatched ``(C, *sp)``; ``lohi``: per dim (before, after). An empty output raises
    ValueError, as torch."""
    nd = w.dim() - 2
    stride = (stride,) * nd if isinstance(stride, int) else tuple(stride)
    dilation = (dilation,) * nd if isinstance(dilation, int) else tuple(dilation)
    for i in range(nd):
        dim = x.dim() - nd + i
        n, k, (lo, hi) = x.shape[dim], w.shape[2 + i], lohi[i]
        out = (n + lo + hi - dilation[i] * (k - 1) - 1) // stride[i] + 1
        if out <= 0 or n == 0:
            raise ValueError("padded_conv_gathered: the output is empty")
        pos = (torch.arange(out)[:, None] * stride[i] + torch.arange(k)[None, :] * dilation[i] - lo).reshape(-1)
        if mode == "zeros":
            x = torch.cat([x, torch.zeros_like(x.narrow(dim, 0, 1))], dim)
            idx = torch.where((pos >= 0) & (pos < n), pos, torch.full_like(pos, n))
        elif mode == "replicate":
            idx = pos.clamp(0, n - 1)
        elif mode == "reflect":
            if max(lo, hi) >= n:
                raise ValueError("padded_conv_gathered: reflect padding must be smaller than the input")
            idx = torch.where(pos < 0, -pos, torch.where(pos >= n, 2 * (n - 1) - pos, pos))
        elif mode == "circular":
            if max(lo, hi) > n:
                raise ValueError("padded_conv_gathered: circular padding must be at most the input")
            idx = pos % n
        else:
            raise ValueError(f"padded_conv_gathered: unknown mode {mode!r}")
        x = x.index_select(dim, idx)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return conv(x, w, b, tuple(w.shape[2:]), 0, 1, groups)
