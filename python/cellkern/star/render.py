"""Star-convex polygons to pixels: dist_to_coord, polygons_to_label, polygons_to_label_coord,
relabel_image_stardist, ray_angles (StarDist's rules and signatures), and decode (NMS + labels)."""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

from .. import _C
from ..ops import star as _p
from ..ops._common import torch
from ._checks import MAX_RAYS as _MAX_RAYS
from ._checks import COORD_MAX, DIST_MAX_2D, check_devices, check_range, host_array, prob_threshold, ray_count
from .nms import non_maximum_suppression

__all__ = ["dist_to_coord", "polygons_to_label", "polygons_to_label_coord", "relabel_image_stardist", "ray_angles",
           "decode"]


def _scale(scale_dist):
    try:
        sy, sx = (float(v) for v in scale_dist)
    except (TypeError, ValueError):
        raise ValueError(f"scale_dist: expected 2 numbers, got {scale_dist!r}") from None
    if not (np.isfinite(sy) and np.isfinite(sx)):
        raise ValueError("scale_dist: must be finite")
    return sy, sx


def _polys(dist, points):
    check_devices(("dist", dist), ("points", points))
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
        try:
            P = np.asarray(points)
        except (TypeError, ValueError):
            raise TypeError("points: expected a regular (n_polys, 2) array of numbers") from None
        if P.ndim != 2 or P.shape[1] != 2:
            raise ValueError(f"points: expected shape (n_polys, 2), got {P.shape}")
        if not (np.issubdtype(P.dtype, np.integer) or np.issubdtype(P.dtype, np.floating)):
            raise TypeError(f"points: expected an integer or float array, got {P.dtype}")
        P = np.ascontiguousarray(P, np.float64)
    if D.shape[0] != P.shape[0]:
        raise ValueError(f"dist and points: {D.shape[0]} and {P.shape[0]} polygons")
    if not 3 <= D.shape[1] <= _MAX_RAYS:
        raise ValueError(f"dist: need 3 to {_MAX_RAYS} rays, got {D.shape[1]}")
    return D, P


def _check_polys(D, P, sy, sx):
    """The documented 2D range (see cellkern.star._checks): finite centres and distances, |centre| <= 2^22 and
    |distance x scale_dist| <= 2^22 px, read through the extremes."""
    check_range(P, "points", COORD_MAX, what="centre coordinates")
    check_range(D, "dist", DIST_MAX_2D, scale=max(abs(sy), abs(sx)), what="distances")


def dist_to_coord(dist, points, scale_dist=(1, 1)):
    """Polygon vertices ``(n_polys, 2, n_rays)`` float32 (row 0: rows, row 1: cols) from ``dist (n_polys, n_rays)``
    and centres ``points (n_polys, 2)``: ``points + dist_k * (sin phi_k, cos phi_k) * scale_dist``, phi_k =
    2 pi k / n_rays, with StarDist's float32 rounding steps (bit-identical to ``stardist.geometry.dist_to_coord``).
    numpy arrays or torch tensors (CPU or CUDA). Finite, ``|points| <= 2^22`` and ``|dist * scale_dist| <= 2^22``
    px (the documented 2D range), else ValueError."""
    D, P = _polys(dist, points)
    sy, sx = _scale(scale_dist)
    _check_polys(D, P, sy, sx)
    n, n_rays = (int(s) for s in D.shape)
    coord = _p.new_empty((n, 2, n_rays), np.float32, D)
    trig = _p.to_device(_p.trig_table(n_rays), D)
    _C.star_dist_to_coord(_p.dlp(D), _p.dlp(P), _p.dlp(trig), sy, sx, _p.dlp(coord), _p.emu_for(D), _p.stream_for(D))
    return coord


def polygons_to_label(dist, points, *args, prob=None, shape=None, thr=-np.inf, scale_dist=(1, 1), origin=(0, 0)):
    """Rasterise star-convex polygons into an int32 label image of ``shape`` (StarDist's ``polygons_to_label``).

    ``dist (n_polys, n_rays)``, ``points (n_polys, 2)`` (pixel centres, (row, col)), ``prob (n_polys,)`` or None.
    Call it with StarDist's signature, ``(dist, points, shape, prob=None, thr=-inf, scale_dist=(1, 1))``, all four
    positional if you like, or with cellkern's older order ``(dist, points, prob, shape)``: a positional pair of
    ints third (a tuple, list or torch.Size; or an integer array of length 2, unless there are two polygons and
    a shape tuple follows it) is the shape.

    * polygons with ``prob > thr`` are kept (NaN probabilities never are); ``prob=None`` keeps all (but with
      ``thr=inf`` none, as StarDist, whose missing prob is +inf);
    * the i-th kept polygon (input order) gets label i + 1;
    * where polygons overlap the higher probability wins (ties: the later one in input order);
    * a pixel belongs to a polygon when its centre is inside or on the boundary (``skimage.draw.polygon``'s rule)
      of the float32 vertices of :func:`dist_to_coord`.

    ``origin (oy, ox)``: the result is the window ``[oy, oy + H) x [ox, ox + W)`` of the label image an origin of
    (0, 0) would paint over a larger image, pixel for pixel (``points`` stay in image coordinates; the vertices
    and skimage's rule are evaluated there, so block-wise rendering of a big image equals the whole one).

    numpy arrays or torch tensors (CPU or CUDA); returns the same kind. ``thr``: any number but NaN. The kept
    polygons must lie in the documented range (ValueError otherwise, see :mod:`cellkern.star._checks`): finite,
    ``|points| <= 2^22`` and ``|dist * scale_dist| <= 2^22`` px; a negative distance puts its vertex on the
    opposite side of the centre, as in StarDist.

    How: vertices in one pass, then the image is cut into bands of rows, each listing the polygons that touch it in
    paint order and painting them row by row from the few edges crossing the row (skimage's formula evaluated
    exactly only next to a crossing). CUDA: one block per polygon testing its bounding box with skimage's rule,
    keeping the highest paint rank per pixel with atomicMax.
    """
    if args and _is_shape_arg(args[0], args[1:], dist):  # StarDist's order: (shape, prob, thr, scale_dist)
        if len(args) > 4:
            raise TypeError("polygons_to_label takes at most 6 positional arguments "
                            "(dist, points, shape, prob, thr, scale_dist)")
        if shape is not None:
            _twice("shape")
        shape = args[0]
        if len(args) > 1:
            prob = args[1] if prob is None else _twice("prob")
        if len(args) > 2:
            thr = args[2] if _is_default(thr, -np.inf) else _twice("thr")
        if len(args) > 3:
            scale_dist = args[3] if _is_default(scale_dist, (1, 1)) else _twice("scale_dist")
    elif args:  # cellkern's order: (prob, shape)
        if len(args) > 2:
            raise TypeError("polygons_to_label: in the order (dist, points, prob, shape) at most 4 positional "
                            "arguments; StarDist's order is (dist, points, shape, prob, thr, scale_dist)")
        prob = args[0] if prob is None else _twice("prob")
        if len(args) > 1:
            shape = args[1] if shape is None else _twice("shape")
    thr = prob_threshold(thr, "thr")
    check_devices(("dist", dist), ("points", points), ("prob", prob))
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
    if prob is None and thr == np.inf:  # StarDist: no prob means +inf each, and +inf > +inf keeps nothing
        D, P, prob = D[:0], P[:0], None
    if prob is None:
        keep = None
    else:
        pr = prob.detach() if _p.is_torch(prob) else np.asarray(prob)
        if (pr.dtype.is_complex or pr.dtype == torch.bool) if _p.is_torch(pr) else \
                not (np.issubdtype(pr.dtype, np.integer) or np.issubdtype(pr.dtype, np.floating)):
            raise TypeError(f"prob: expected real scores, got {pr.dtype}")
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
    else:
        if keep is not None:
            D, P = np.ascontiguousarray(D[keep]), np.ascontiguousarray(P[keep])
            order = np.argsort(np.asarray(pr)[keep], kind="stable").astype(np.int64)
        else:
            order = np.arange(D.shape[0], dtype=np.int64)
    _check_polys(D, P, sy, sx)  # the kept polygons only, as before: dropped ones may hold anything
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


def _is_default(v, default):
    try:
        return bool(np.all(np.asarray(v, dtype=float) == np.asarray(default, dtype=float)))
    except (TypeError, ValueError):
        return False


def _is_int_pair(x):
    return (isinstance(x, (tuple, list)) and len(x) == 2
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in x))


def _is_shape_arg(x, rest, dist):
    """Is the third positional argument of polygons_to_label a shape (StarDist's order) rather than prob?"""
    if _is_int_pair(x):
        return True
    if isinstance(x, np.ndarray) and x.shape == (2,) and np.issubdtype(x.dtype, np.integer):
        try:
            n_polys = len(dist)
        except TypeError:
            n_polys = None
        # with two polygons it may be their probabilities: then a shape tuple follows (cellkern's order)
        return n_polys != 2 or not (rest and _is_int_pair(rest[0]))
    return False


def ray_angles(n_rays=32):
    """StarDist's ray angles ``2 pi k / n_rays``, k = 0 .. n_rays - 1 (float64; ray k points along
    ``(sin, cos)`` in (row, col))."""
    return np.linspace(0, 2 * np.pi, ray_count(n_rays, "n_rays", 0), endpoint=False)


_ROW_BLOCK_CELLS = 1 << 21  # (crossing, column) pairs per block of rows in _polygon_mask


def _polygon_mask(r, c, H, W):
    """The pixels of an image (H, W) that ``skimage.draw.polygon(r, c, (H, W))`` returns, as ``(mask, r0, c0)``
    over the clipped bounding box (None when empty).

    skimage tests every pixel centre of the box with O'Rourke's crossing rule: for each edge (vertex i-1 ->
    vertex i), relative to the centre, ``xcross = (x0 y1 - x1 y0) / (y1 - y0)`` counts towards the right
    crossings when ``(y0 > 0) != (y1 > 0)`` and ``xcross > 0``, towards the left ones when ``(y0 < 0) != (y1 < 0)``
    and ``xcross < 0``; a centre within 1e-12 of a vertex, inside (odd right count) or on an edge (right and left
    parities differ) is drawn. Here the straddling (edge, row) pairs are found per row first -- a few per row --
    and only those are evaluated over the columns, with the same float64 expressions, so the pixels are
    skimage's exactly."""
    r0, r1 = int(max(0.0, float(r.min()))), min(H - 1, int(math.ceil(float(r.max()))))
    c0, c1 = int(max(0.0, float(c.min()))), min(W - 1, int(math.ceil(float(c.max()))))
    if r1 < r0 or c1 < c0:
        return None
    rows = np.arange(r0, r1 + 1, dtype=np.float64)
    cols = np.arange(c0, c1 + 1, dtype=np.float64)
    r_prev, c_prev = np.roll(r, 1), np.roll(c, 1)
    mask = np.zeros((len(rows), len(cols)), bool)
    step = max(1, _ROW_BLOCK_CELLS // (4 * len(cols)))
    for b in range(0, len(rows), step):
        y = rows[b:b + step]
        y0, y1 = r[None, :] - y[:, None], r_prev[None, :] - y[:, None]  # (rows, edges)
        right, left = (y0 > 0) != (y1 > 0), (y0 < 0) != (y1 < 0)
        k, e = np.nonzero(right | left)  # row-major: grouped by row
        if len(k) == 0:
            continue
        a0, a1 = y0[k, e][:, None], y1[k, e][:, None]
        x0, x1 = c[e][:, None] - cols[None, :], c_prev[e][:, None] - cols[None, :]
        xcross = (x0 * a1 - x1 * a0) / (a1 - a0)
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        odd_r = np.logical_xor.reduceat(right[k, e][:, None] & (xcross > 0), starts, axis=0)
        odd_l = np.logical_xor.reduceat(left[k, e][:, None] & (xcross < 0), starts, axis=0)
        mask[b + k[starts]] = odd_r | (odd_r != odd_l)
    # centres within 1e-12 of a vertex: only the pixel nearest to it can be
    vy, vx = np.rint(r), np.rint(c)
    eps = 1e-12
    hit = (np.abs(r - vy) < eps) & (np.abs(c - vx) < eps) & (vy >= r0) & (vy <= r1) & (vx >= c0) & (vx <= c1)
    mask[vy[hit].astype(np.int64) - r0, vx[hit].astype(np.int64) - c0] = True
    return mask, r0, c0


def polygons_to_label_coord(coord, shape, labels=None):
    """Paint polygons given by their vertices ``coord (n_polys, 2, n_vertices)`` (row 0: rows, row 1: columns,
    e.g. from :func:`dist_to_coord`) into an int32 label image of ``shape`` (H, W) (StarDist's
    ``polygons_to_label_coord``): polygon i gets ``labels[i] + 1`` (``labels`` default ``0 .. n_polys - 1``), in
    input order, so where polygons overlap the later one wins; its pixels are ``skimage.draw.polygon``'s (centre
    inside or on the boundary). Any simple or self-intersecting polygons, not only star-convex ones. numpy
    (torch tensors are copied to the host)."""
    C = host_array(coord, "coord")
    if C.dtype == bool or not (np.issubdtype(C.dtype, np.integer) or np.issubdtype(C.dtype, np.floating)):
        raise TypeError(f"coord: expected a real array, got {C.dtype}")
    if C.ndim != 3 or C.shape[1] != 2 or C.shape[2] < 1:
        raise ValueError(f"coord: expected shape (n_polys, 2, n_vertices >= 1), got {C.shape}")
    try:
        H, W = (operator.index(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape: expected (H, W), got {shape!r}") from None
    if H < 0 or W < 0:
        raise ValueError(f"shape: must be non-negative, got {shape!r}")
    n = len(C)
    if labels is None:
        lab = np.arange(n)
    else:
        lab = host_array(labels, "labels")
        if lab.dtype == bool or not np.issubdtype(lab.dtype, np.integer):
            raise TypeError(f"labels: expected non-negative integers, got {lab.dtype}")
        if lab.shape != (n,):
            raise ValueError(f"labels: expected shape ({n},), got {lab.shape}")
        if n and lab.min() < 0:
            raise ValueError("labels: must be non-negative")
    C = C.astype(np.float64)
    if not np.isfinite(C).all():
        raise ValueError("coord: non-finite vertices")
    out = np.zeros((H, W), np.int32)
    if H == 0 or W == 0:
        return out
    for i in range(n):
        m = _polygon_mask(C[i, 0], C[i, 1], H, W)
        if m is not None:
            mask, r0, c0 = m
            out[r0:r0 + mask.shape[0], c0:c0 + mask.shape[1]][mask] = lab[i] + 1
    return out


def relabel_image_stardist(lbl, n_rays, **kwargs):
    """Each object of a 2D label image replaced by its star-convex polygon (StarDist's
    ``relabel_image_stardist``): the ``n_rays`` star distances at the object's centroid (truncated to integer
    pixel coordinates), rendered with :func:`polygons_to_label`; objects are numbered 1, 2, ... in ascending
    order of their labels (later ones painted over earlier ones). ``kwargs``: StarDist's ``star_dist`` options;
    ``mode`` is accepted and ignored (one implementation here) and ``grid`` must be 1 (the distances are read at
    full-resolution centroids). Labels beyond 65535 stay distinct (StarDist casts to uint16)."""
    mode = kwargs.pop("mode", None)
    grid = kwargs.pop("grid", None)
    if kwargs:
        raise TypeError(f"relabel_image_stardist: unexpected keyword arguments {sorted(kwargs)}")
    if mode is not None and mode not in ("cpp", "python", "opencl"):
        raise ValueError(f"mode: expected 'cpp', 'python' or 'opencl', got {mode!r}")
    if grid is not None and tuple(np.broadcast_to(np.asarray(grid), (2,))) != (1, 1):
        raise ValueError(f"grid: relabel_image_stardist reads distances at full-resolution centroids; got {grid!r}")
    a = host_array(lbl, "lbl")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"lbl: expected an integer label image, got {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"lbl: expected a 2D label image, got shape {a.shape}")
    if a.size and a.min() < 0:
        raise ValueError("lbl: labels must be non-negative")
    n_rays = ray_count(n_rays, "n_rays", 3)
    from .targets import star_dist

    rr, cc = np.nonzero(a)
    ids, k = np.unique(a[rr, cc], return_inverse=True)
    if len(ids) == 0:
        return np.zeros(a.shape, np.int32)
    count = np.bincount(k)
    # integer coordinate sums are exact in float64, so the means equal regionprops' centroids bit for bit
    points = np.stack([np.bincount(k, weights=rr) / count, np.bincount(k, weights=cc) / count], 1).astype(np.int64)
    dist = star_dist(np.ascontiguousarray(a), int(n_rays))[points[:, 0], points[:, 1]]
    return polygons_to_label(dist, points, a.shape)


def decode(prob, dist, grid=(1, 1), prob_thresh=0.5, nms_thresh=0.4, shape=None, b=2, criterion="smaller"):
    """A StarDist prediction to instances: NMS (with this function's ``nms_thresh``, 0.4 by default, passed on
    explicitly), then polygons_to_label. Returns ``(labels, details)`` with
    details ``points``, ``prob``, ``dist`` of the kept polygons (descending probability; label k + 1 is the k-th
    kept polygon). ``shape`` defaults to the prediction grid times ``grid`` (the input image size)."""
    points, probs, dists = non_maximum_suppression(dist, prob, grid=grid, b=b, nms_thresh=nms_thresh,
                                                   prob_thresh=prob_thresh, criterion=criterion)
    if shape is None:
        g = (grid, grid) if isinstance(grid, numbers.Integral) else tuple(grid)
        shape = (int(prob.shape[0]) * int(g[0]), int(prob.shape[1]) * int(g[1]))
    labels = polygons_to_label(dists, points, probs, shape=shape)
    return labels, {"points": points, "prob": probs, "dist": dists}
