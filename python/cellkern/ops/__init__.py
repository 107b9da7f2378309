"""Fast ops on numpy arrays and torch tensors; with torch installed they are torch custom ops (autograd,
torch.compile)."""
from .pool import max_pool2d, max_pool3d

__all__ = ["max_pool2d", "max_pool3d"]
