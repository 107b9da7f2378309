"""Fast ops on numpy arrays and torch tensors; with torch installed they are torch custom ops (autograd,
torch.compile)."""
from .conv import conv2d, conv3d, conv_transpose2d, conv_transpose3d
from .pool import max_pool2d, max_pool3d

__all__ = ["conv2d", "conv3d", "conv_transpose2d", "conv_transpose3d", "max_pool2d", "max_pool3d"]
