"""Training StarDist models: data sampling and augmentation, the training loop (DDP-ready), threshold search."""
from .._optional import require as _require

_require("torch", "cellkern.train")  # fails here with the pip command, not deep inside
from .augment import (Augmentation, add_noise, adjust_intensity, elastic_offsets, flip_rotate, gaussian_blur,
                      resample, zoom_coordinates)
from .data import PairedImages, random_crop_corner, read_array
from .fit import fit, plot_history
from .thresholds import optimize_thresholds

__all__ = ["fit", "optimize_thresholds", "plot_history", "Augmentation", "PairedImages", "random_crop_corner",
           "read_array", "zoom_coordinates", "elastic_offsets", "resample", "flip_rotate", "adjust_intensity",
           "gaussian_blur", "add_noise"]
