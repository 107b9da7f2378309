"""nn.Modules built on cellkern's ops (needs torch)."""
from .layers import MaxPool2d, MaxPool3d

__all__ = ["MaxPool2d", "MaxPool3d"]
