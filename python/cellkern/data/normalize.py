"""Percentile normalisation of microscopy images (csbdeep / StarDist's ``normalize``), float32 out."""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["normalize"]


def normalize(image, pmin=1.0, pmax=99.8, axis=None, eps=1e-20, clip=False):
    """``(image - p_low) / (p_high - p_low + eps)`` with p_low, p_high the ``pmin`` / ``pmax`` percentiles of the
    image (over ``axis``: None = all axes; e.g. the spatial axes to normalise each channel on its own), as
    csbdeep's ``normalize``: percentiles by ``numpy.percentile`` (linear interpolation), the arithmetic in float32,
    ``clip`` to [0, 1] optional. Returns a new float32 array.

    Raises TypeError for non-numeric images and ValueError for non-finite values, percentiles outside
    0 <= pmin < pmax <= 100 or a bad ``axis``."""
    x = np.asarray(image)
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"image: expected a real-valued (integer or float) array, got {x.dtype}")
    if x.size == 0:
        raise ValueError(f"image: expected a non-empty array, got shape {x.shape}")
    for name, v in (("pmin", pmin), ("pmax", pmax), ("eps", eps)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")
    if not 0 <= pmin < pmax <= 100:
        raise ValueError(f"pmin, pmax: expected 0 <= pmin < pmax <= 100, got pmin={pmin!r}, pmax={pmax!r}")
    if eps < 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ValueError("image: contains NaN or infinite values")
    try:
        lo, hi = np.percentile(x, [pmin, pmax], axis=axis, keepdims=True)
    except (TypeError, ValueError) as e:  # numpy's AxisError is a ValueError
        raise ValueError(f"axis: {axis!r} does not fit an image of shape {x.shape} ({e})") from None
    lo, hi = lo.astype(np.float32), hi.astype(np.float32)
    out = (x.astype(np.float32) - lo) / (hi - lo + np.float32(eps))
    if clip:
        np.clip(out, 0, 1, out=out)
    return out
