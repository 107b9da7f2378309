"""Drop-in torch.nn.Conv2d/Conv3d and ConvTranspose2d/3d on cellkern's kernels: same arguments, parameters, init
and state_dict; the convolutions add an optional fused activation and accept a list of inputs split along
channels (a concatenation that is never materialised)."""
from __future__ import annotations

import torch

from .. import ops

__all__ = ["Conv2d", "Conv3d", "ConvTranspose2d", "ConvTranspose3d"]


class _ConvMixin:
    """Replaces torch's forward; construction (and so parameter names, shapes and init) is torch's own."""

    _op = None

    def _init_activation(self, activation, negative_slope):
        if activation not in (None, "relu", "leaky_relu"):
            raise ValueError(f"activation: expected None, 'relu' or 'leaky_relu', got {activation!r}")
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        """x: a tensor, or a list of tensors that together are the input concatenated along channels."""
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


class _ConvTransposeMixin:
    """Replaces torch's forward of ConvTranspose*d; construction, parameters and state_dict are torch's own."""

    _op = None
    _nd = 2

    def forward(self, x, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError(f"padding_mode: only 'zeros' is supported for {type(self).__name__}")
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, self._nd,
                                              self.dilation)
        return type(self)._op(x, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups,
                              self.dilation)


class ConvTranspose2d(_ConvTransposeMixin, torch.nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d on cellkern's kernels (same arguments and state_dict)."""

    _op = staticmethod(ops.conv_transpose2d)
    _nd = 2


class ConvTranspose3d(_ConvTransposeMixin, torch.nn.ConvTranspose3d):
    """torch.nn.ConvTranspose3d on cellkern's kernels (same arguments and state_dict)."""

    _op = staticmethod(ops.conv_transpose3d)
    _nd = 3
