"""Drop-in torch.nn.Conv2d/Conv3d on cellkern's kernels: same arguments, parameters, init and state_dict, plus
an optional fused activation."""
from __future__ import annotations

import torch

from .. import ops

__all__ = ["Conv2d", "Conv3d"]


class _ConvMixin:
    """Replaces torch's forward; construction (and so parameter names, shapes and init) is torch's own."""

    _op = None

    def _init_activation(self, activation, negative_slope):
        if activation not in (None, "relu", "leaky_relu"):
            raise ValueError(f"activation: expected None, 'relu' or 'leaky_relu', got {activation!r}")
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        return type(self)._op(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                              self.padding_mode, self.activation, self.negative_slope)

    def extra_repr(self):
        s = super().extra_repr()
        if self.activation is not None:
            s += f", activation={self.activation!r}"
            if self.activation == "leaky_relu":
                s += f", negative_slope={self.negative_slope}"
        return s


class Conv2d(_ConvMixin, torch.nn.Conv2d):
    """torch.nn.Conv2d on cellkern's kernels; ``activation`` (None, 'relu', 'leaky_relu') is fused into the
    convolution's output pass. A torch.nn.Conv2d state_dict loads into it and back."""

    _op = staticmethod(ops.conv2d)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, activation=None, negative_slope=0.01):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_activation(activation, negative_slope)


class Conv3d(_ConvMixin, torch.nn.Conv3d):
    """torch.nn.Conv3d on cellkern's kernels; see Conv2d."""

    _op = staticmethod(ops.conv3d)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, activation=None, negative_slope=0.01):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_activation(activation, negative_slope)
