"""Slow, obviously-correct NumPy/SciPy oracles and torch.nn rebuilds of the networks that the fast kernels and
models are tested (and benchmarked) against (shipped)."""

from .star import MatchingStats  # noqa: F401
from .star import dist_to_coord_ref  # noqa: F401
from .star import edt_prob_ref  # noqa: F401
from .star import matching_dataset_ref  # noqa: F401
from .star import matching_ref  # noqa: F401
from .star import non_maximum_suppression_ref  # noqa: F401
from .star import polygon_area  # noqa: F401
from .star import polygons_to_label_ref  # noqa: F401
from .star import ray_angles  # noqa: F401
from .star import rays_golden_spiral  # noqa: F401
from .star import star_dist3d_ref  # noqa: F401
from .star import star_dist_ref  # noqa: F401
from .star import star_polygon_intersection_area  # noqa: F401
from .star3d import inside_polyhedron, nms3d, polyhedron_volume, polyhedron_voxels  # noqa: F401
from .star3d import polyhedron_to_label as polyhedron_to_label_ref  # noqa: F401

# The torch.nn rebuilds load on first use: the NumPy oracles above work without torch.
_TORCH = {"ReferenceUNet": "unet", "gradient_extents": "unet", "ReferenceStarDist": "stardist",
          "padded_conv_gathered": "conv"}


def __getattr__(name):
    if name in _TORCH:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_TORCH[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
