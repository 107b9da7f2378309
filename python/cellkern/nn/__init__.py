"""nn.Modules built on cellkern's ops (needs torch)."""
from .._optional import require as _require

_require("torch", "cellkern.nn")  # fails here with the pip command, not deep inside
from .conv import Conv2d, Conv3d, ConvTranspose2d, ConvTranspose3d
from .layers import MaxPool2d, MaxPool3d
from .unet import NearestUpsample, ReceptiveField, UNet

__all__ = ["Conv2d", "Conv3d", "ConvTranspose2d", "ConvTranspose3d", "MaxPool2d", "MaxPool3d", "NearestUpsample",
           "ReceptiveField", "UNet"]
