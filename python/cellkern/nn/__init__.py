"""nn.Modules built on cellkern's ops (needs torch)."""
from .conv import Conv2d, Conv3d, ConvTranspose2d, ConvTranspose3d
from .layers import MaxPool2d, MaxPool3d

__all__ = ["Conv2d", "Conv3d", "ConvTranspose2d", "ConvTranspose3d", "MaxPool2d", "MaxPool3d"]
