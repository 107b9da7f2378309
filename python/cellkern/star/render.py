"""Star-convex polygons to pixels: dist_to_coord, polygons_to_label (StarDist's rules), and decode (NMS + labels)."""
from __future__ import annotations

import numbers
import operator

import numpy as np

from .. import _C
from ..ops import star as _p
from ..ops._common import torch
from .nms import non_maximum_suppression

__all__ = ["dist_to_coord", "polygons_to_label", "decode"]


def _scale(scale_dist):
    try:
        sy, sx = (float(v) for v in scale_dist)
    except (TypeError, ValueError):
        raise ValueError(f"scale_dist: expected 2 numbers, got {scale_dist!r}") from None
    if not (np.isfinite(sy) and np.isfinite(sx)):
        raise ValueError("scale_dist: must be finite")
    return sy, sx


def _polys(dist, points):
    D = _p.as_array(dist, "dist", ndim=2, kind="float")
    if _p.is_torch(points) or _p.is_torch(D):
        if not (_p.is_torch(points) and _p.is_torch(D)):
            raise ValueError("dist and points must both be numpy arrays or both torch tensors")
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"points: expected shape (n_polys, 2), got {tuple(points.shape)}")
        if points.device != D.device:
            raise ValueError("points and dist must be on the same device")
        if points.dtype.is_complex or points.dtype == torch.bool:
            raise TypeError(f"points: expected a real array, got {points.dtype}")
        P = points.detach().to(torch.float64).contiguous()
    else:
        P = np.asarray(points)
        if P.ndim != 2 or P.shape[1] != 2:
            raise ValueError(f"points: expected shape (n_polys, 2), got {P.shape}")
        if not (np.issubdtype(P.dtype, np.integer) or np.issubdtype(P.dtype, np.floating)):
            raise TypeError(f"points: expected an integer or float array, got {P.dtype}")
        P = np.ascontiguousarray(P, np.float64)
    if D.shape[0] != P.shape[0]:
        raise ValueError(f"dist and points: {D.shape[0]} and {P.shape[0]} polygons")
    if D.shape[1] < 3:
        raise ValueError(f"dist: need at least 3 rays, got {D.shape[1]}")
    return D, P


def dist_to_coord(dist, points, scale_dist=(1, 1)):
    """Polygon vertices ``(n_polys, 2, n_rays)`` float32 (row 0: rows, row 1: cols) from ``dist (n_polys, n_rays)``
    and centres ``points (n_polys, 2)``: ``points + dist_k * (sin phi_k, cos phi_k) * scale_dist``, phi_k =
    2 pi k / n_rays, with StarDist's float32 rounding steps (bit-identical to ``stardist.geometry.dist_to_coord``).
    numpy arrays or torch tensors (CPU or CUDA)."""
    D, P = _polys(dist, points)
    sy, sx = _scale(scale_dist)
    n, n_rays = (int(s) for s in D.shape)
    coord = _p.new_empty((n, 2, n_rays), np.float32, D)
    trig = _p.to_device(_p.trig_table(n_rays), D)
    _C.star_dist_to_coord(_p.dlp(D), _p.dlp(P), _p.dlp(trig), sy, sx, _p.dlp(coord), _p.emu_for(D), _p.stream_for(D))
    return coord


def polygons_to_label(dist, points, *args, prob=None, shape=None, thr=-np.inf, scale_dist=(1, 1), origin=(0, 0)):
    """Rasterise star-convex polygons into an int32 label image of ``shape`` (StarDist's ``polygons_to_label``).

    ``dist (n_polys, n_rays)``, ``points (n_polys, 2)`` (pixel centres, (row, col)), ``prob (n_polys,)`` or None.
    Call it as ``(dist, points, prob, shape)`` or with StarDist's order ``(dist, points, shape, prob=...)`` (a
    positional pair of ints is taken as the shape). Semantics, bit-identical to StarDist:

    * polygons with ``prob > thr`` are kept (NaN probabilities never are); ``prob=None`` keeps all;
    * the i-th kept polygon (input order) gets label i + 1;
    * where polygons overlap the higher probability wins (ties: the later one in input order);
    * a pixel belongs to a polygon when its centre is inside or on the boundary (``skimage.draw.polygon``'s rule)
      of the float32 vertices of :func:`dist_to_coord`.

    ``origin (oy, ox)``: the result is the window ``[oy, oy + H) x [ox, ox + W)`` of the label image an origin of
    (0, 0) would paint over a larger image, pixel for pixel (``points`` stay in image coordinates; the vertices
    and skimage's rule are evaluated there, so block-wise rendering of a big image equals the whole one).

    numpy arrays or torch tensors (CPU or CUDA); returns the same kind. Raises ValueError for non-finite
    coordinates of kept polygons.

    How: vertices in one pass, then the image is cut into bands of rows, each listing the polygons that touch it in
    paint order and painting them row by row from the few edges crossing the row (skimage's formula evaluated
    exactly only next to a crossing). CUDA: one block per polygon testing its bounding box with skimage's rule,
    keeping the highest paint rank per pixel with atomicMax.
    """
    if len(args) > 2:
        raise TypeError("polygons_to_label takes at most 4 positional arguments (dist, points, prob, shape)")
    if args and _looks_like_shape(args[0]):  # StarDist's order: (dist, points, shape[, prob])
        if shape is not None:
            _twice("shape")
        shape = args[0]
        if len(args) > 1:
            prob = args[1] if prob is None else _twice("prob")
    elif args:
        prob = args[0] if prob is None else _twice("prob")
        if len(args) > 1:
            shape = args[1] if shape is None else _twice("shape")
    if shape is None:
        raise ValueError("shape: the label image shape (H, W) is required")
    try:
        H, W = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape: expected (H, W), got {shape!r}") from None
    if H < 0 or W < 0:
        raise ValueError(f"shape: must be non-negative, got {shape!r}")
    try:
        oy, ox = (operator.index(v) for v in origin)
    except (TypeError, ValueError):
        raise ValueError(f"origin: expected 2 ints (oy, ox), got {origin!r}") from None
    if oy < 0 or ox < 0:
        raise ValueError(f"origin: must be non-negative, got {origin!r}")
    D, P = _polys(dist, points)
    sy, sx = _scale(scale_dist)
    n = int(D.shape[0])
    if prob is None:
        keep = None
    else:
        pr = prob.detach() if _p.is_torch(prob) else np.asarray(prob)
        if tuple(pr.shape) != (n,):
            raise ValueError(f"prob: expected shape ({n},), got {tuple(pr.shape)}")
        keep = pr > thr
    if _p.is_torch(D):
        if keep is not None:
            keep = keep.to(D.device) if _p.is_torch(keep) else torch.from_numpy(np.asarray(keep)).to(D.device)
            D, P, pk = D[keep].contiguous(), P[keep].contiguous(), pr.to(D.device)[keep]
            order = torch.argsort(pk, stable=True)
        else:
            order = torch.arange(D.shape[0], device=D.device)
        order = order.to(torch.int64).contiguous()
        finite = bool(torch.isfinite(D).all()) and bool(torch.isfinite(P).all())
    else:
        if keep is not None:
            D, P = np.ascontiguousarray(D[keep]), np.ascontiguousarray(P[keep])
            order = np.argsort(np.asarray(pr)[keep], kind="stable").astype(np.int64)
        else:
            order = np.arange(D.shape[0], dtype=np.int64)
        finite = bool(np.isfinite(D).all() and np.isfinite(P).all())
    if not finite:
        raise ValueError("dist/points: non-finite values in a kept polygon")
    labels = _p.new_zeros((H, W), np.int32, D)
    if D.shape[0] == 0 or H == 0 or W == 0:
        return labels
    coord = _p.new_empty((int(D.shape[0]), 2, int(D.shape[1])), np.float32, D)
    trig = _p.to_device(_p.trig_table(int(D.shape[1])), D)
    _C.star_polygons_to_label(_p.dlp(D), _p.dlp(P), _p.dlp(trig), _p.dlp(order), sy, sx, _p.dlp(coord),
                              _p.dlp(labels), oy, ox, _p.emu_for(D), _p.stream_for(D))
    return labels


def _twice(name):
    raise TypeError(f"polygons_to_label: {name} given twice")


def _looks_like_shape(x):
    try:
        return len(x) == 2 and all(isinstance(v, numbers.Integral) for v in x) and not hasattr(x, "dtype")
    except TypeError:
        return False


def decode(prob, dist, grid=(1, 1), prob_thresh=0.5, nms_thresh=0.4, shape=None, b=2, criterion="smaller"):
    """A StarDist prediction to instances: NMS, then polygons_to_label. Returns ``(labels, details)`` with
    details ``points``, ``prob``, ``dist`` of the kept polygons (descending probability; label k + 1 is the k-th
    kept polygon). ``shape`` defaults to the prediction grid times ``grid`` (the input image size)."""
    points, probs, dists = non_maximum_suppression(dist, prob, grid=grid, b=b, nms_thresh=nms_thresh,
                                                   prob_thresh=prob_thresh, criterion=criterion)
    if shape is None:
        g = (grid, grid) if isinstance(grid, numbers.Integral) else tuple(grid)
        shape = (int(prob.shape[0]) * int(g[0]), int(prob.shape[1]) * int(g[1]))
    labels = polygons_to_label(dists, points, probs, shape=shape)
    return labels, {"points": points, "prob": probs, "dist": dists}
