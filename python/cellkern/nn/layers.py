"""Drop-in nn.Modules for torch.nn's layers, running cellkern's kernels (same arguments, same state_dict)."""
from __future__ import annotations

import torch

from .. import ops


class _MaxPoolNd(torch.nn.Module):
    _nd = 2

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, x):
        f = ops.max_pool2d if self._nd == 2 else ops.max_pool3d
        return f(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class MaxPool2d(_MaxPoolNd):
    """torch.nn.MaxPool2d on cellkern's kernels."""
    _nd = 2


class MaxPool3d(_MaxPoolNd):
    """torch.nn.MaxPool3d on cellkern's kernels."""
    _nd = 3
