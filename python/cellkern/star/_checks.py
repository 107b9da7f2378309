"""Argument rules shared by the star API: thresholds, the documented distance and coordinate ranges, ray counts.

The ranges, and why (pixels; the kernels keep the same constants in csrc/ops/star/star.h):

* 2D distances: finite, ``|d| * |scale_dist| <= 2^22`` (4194304); 2D centres: finite, ``|points| <= 2^22``.
  Vertices then stay below 2^23, where StarDist's float32 vertices still resolve half pixels (spacing <= 0.5).
  The CPU rasteriser places each edge crossing in float64 within 11 u M of the exact one, and skimage's formula
  (the reference) within 8 u (M + |X|) (u = 2^-53, M the largest vertex coordinate, X <= M + 1 the pixel):
  about 3e-8 px at 2^23, far inside the 1e-6 px band in which it evaluates skimage's formula itself (beyond
  the range the band widens with M, so the pixels stay skimage's regardless). The NMS works in frames centred on
  a polygon: areas below pi 2^46 and products of coordinates below 2^48 lose only relative 1e-16 per operation,
  the float32 candidate boxes (widened by 1e-6 relative) and the int64 bucket indices stay far from overflow
  (beyond ~1e19 px they overflowed, and suppression silently stopped for every candidate). 2^22 is also the
  longest image side :func:`star_dist` marches (its float32 offsets stop growing near 2^23).
* 3D distances: finite, ``|d| <= 2^10`` (1024 voxels). polyhedron_to_label follows StarDist's float32 rule: its
  plane tests carry rounding of about 2^-24 d^2 on values of size d^2, i.e. ~1e-4 voxel at 2^10, and the kernels
  decide only voxels farther than their rounding band from a face by the fast float64 test. Measured (30 random
  scenes of polyhedra with spikes near the limit across a 12^3 window): equal to StarDist voxel for voxel up to
  2^10; 1 voxel differs at 2^11, 16 at 2^14, 76 at 2^16 (the earlier limit). The 3D NMS renders the kept
  polyhedra as voxel bitmaps, whose size grows with the cube of the largest distance: 2^10 keeps one bitmap
  below 2^33 voxels. 3D centres as in 2D (``|points| <= 2^22``: float32 voxel centres stay exact).
* 2D NMS of polygon lists (non_maximum_suppression_sparse / _inds): centres ``|points| <= 2^31`` (StarDist casts
  them to int32). It works in frames centred on a polygon, so only the centres' differences matter, exact for
  integer centres and within 2^-22 px for any below 2^31; no float32 vertices are involved.
* Negative distances keep StarDist's meaning: a 2D vertex lies on the opposite side (dist_to_coord,
  polygons_to_label compute ``centre + d (sin, cos)`` as StarDist); the 2D and 3D NMS count them as 0;
  polyhedron_to_label requires them positive (StarDist's rule).

Checks read the extremes (``min``/``max``, or torch's ``aminmax``, NaN propagating into them): one pass over
the data, no temporary the size of the input.

Thresholds: a real number (a Python or numpy scalar, or a 0-d array/tensor; not a bool), never NaN.
Probability thresholds (``prob_thresh``, ``thr``) compare with the given scores and may be any other value
(+-inf included: nothing or everything passes); overlap thresholds (``nms_thresh``, matching's ``thresh``)
lie in [0, 1]. Anything else raises ValueError naming the argument.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _C
from ..ops._common import torch

__all__ = ["DIST_MAX_2D", "DIST_MAX_3D", "COORD_MAX", "COORD_MAX_NMS", "MAX_RAYS", "prob_threshold", "unit_threshold", "extremes",
           "check_range", "check_devices", "ray_count", "host_array"]

DIST_MAX_2D = float(_C.star_dist_max)  # 2^22
DIST_MAX_3D = 2.0 ** 10
COORD_MAX = 2.0 ** 22
COORD_MAX_NMS = 2.0 ** 31
MAX_RAYS = int(_C.star_max_rays)  # 4096


def _number(v, name):
    if isinstance(v, (bool, np.bool_, str, bytes)) or np.ndim(v) != 0:
        raise ValueError(f"{name}: expected a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {v!r}") from None
    if math.isnan(f):
        raise ValueError(f"{name}: must not be NaN")
    return f


def prob_threshold(v, name):
    """A score threshold: any real number but NaN (+-inf allowed), as a float."""
    return _number(v, name)


def unit_threshold(v, name):
    """An overlap threshold in [0, 1], as a float."""
    f = _number(v, name)
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"{name}: must be in [0, 1], got {f:g}")
    return f


def extremes(x):
    """(min, max) of a numpy array or torch tensor as floats (NaN if it holds one); None when empty."""
    if torch is not None and isinstance(x, torch.Tensor):
        if x.numel() == 0:
            return None
        if x.dtype.is_floating_point:
            lo, hi = torch.aminmax(x.detach())
        else:
            lo, hi = x.min(), x.max()
        return float(lo), float(hi)
    if x.size == 0:
        return None
    return float(np.min(x)), float(np.max(x))


def check_range(x, name, limit, *, scale=1.0, what="values", unit="px"):
    """Raise ValueError unless every value of x is finite with ``|x| * scale <= limit``."""
    e = extremes(x)
    if e is None:
        return
    lo, hi = e
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name}: non-finite {what} (found {lo if not math.isfinite(lo) else hi})")
    worst = max(abs(lo), abs(hi))
    if worst * scale > limit:
        how = f" (times scale_dist {scale:g})" if scale != 1.0 else ""
        raise ValueError(f"{name}: {what}{how} must lie within +-{limit:.0f} {unit} = +-2^{int(math.log2(limit))} "
                         f"(cellkern's documented range), got {worst * scale:g}")


def check_devices(*named):
    """Torch tensors among (name, x) pairs: on cpu or cuda (meta and other devices: ValueError), all on one."""
    dev = None
    for name, x in named:
        if torch is not None and isinstance(x, torch.Tensor):
            if x.device.type not in ("cpu", "cuda"):
                raise ValueError(f"{name}: cellkern runs on cpu and cuda tensors, got a tensor on {x.device}")
            if dev is not None and x.device != dev[1]:
                raise ValueError(f"{name}: on {x.device}, but {dev[0]} is on {dev[1]}")
            dev = dev or (name, x.device)


def ray_count(n, name, minimum):
    """An integer ray count in [minimum, MAX_RAYS], checked before anything is allocated."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {n!r}")
    n = int(n)
    if not minimum <= n <= MAX_RAYS:
        raise ValueError(f"{name}: expected an integer in [{minimum}, {MAX_RAYS}], got {n}")
    return n


def host_array(x, name):
    """x as a numpy array on the host: torch tensors on cpu or cuda are copied (meta and other devices:
    ValueError); ragged sequences, strings and object arrays: TypeError."""
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name}: cellkern runs on cpu and cuda tensors, got a tensor on {x.device}")
        return x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an array of numbers, got a {type(x).__name__} that is not one") from None
    if a.dtype.hasobject or a.dtype.kind in "USV":
        raise TypeError(f"{name}: expected an array of numbers, got dtype {a.dtype}")
    return a
