"""Star-convex polyhedra (StarDist 3D): rasterisation into a label volume and greedy NMS, CPU and CUDA."""
from __future__ import annotations

import functools
import numbers

import numpy as np

from .. import _C
from ..ops import star as _p
from ..ops._common import torch
from ._checks import (COORD_MAX, DIST_MAX_3D, check_devices, check_range, host_array, prob_threshold,
                      ray_count, unit_threshold)

__all__ = ["polyhedron_to_label", "decode3d", "non_maximum_suppression_3d", "non_maximum_suppression_3d_sparse",
           "non_maximum_suppression_3d_inds", "relabel_image_stardist3D", "relabel_image_stardist3d",
           "last_nms3d_stats", "polyhedron_volumes"]

_MODES = {"full": 0, "kernel": 1, "bbox": 2}
_CRITERIA = {"smaller": 0, "iou": 1}
_RES = 32             # cube-map cells per side for the face guess
MAX_DIST = DIST_MAX_3D  # documented range of distances (2^10, see cellkern.star._checks)
_last_stats: dict = {}


def last_nms3d_stats() -> dict:
    """What the last CPU 3D NMS did: candidates, kept, pairs met in the bucket grid, pairs rejected by boxes, voxels
    tested, pairs stopped early, whether the offset table was used, and the wall time of its phases (ms)."""
    return dict(_last_stats)


# ---- the ray set ---------------------------------------------------------------------------------------------

def _rays_arrays(rays):
    """(vertices (R, 3) float64, faces (F, 3) int64) of a Rays object (cellkern's or StarDist's), validated."""
    if not (hasattr(rays, "vertices") and hasattr(rays, "faces")):
        raise TypeError(f"rays: expected a Rays object with .vertices and .faces (e.g. "
                        f"cellkern.star.Rays_GoldenSpiral), got {type(rays).__name__}")
    v = np.asarray(rays.vertices, np.float64)
    f = np.asarray(rays.faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"rays.vertices: expected (n_rays >= 4, 3), got {v.shape}")
    ray_count(len(v), "rays.vertices: n_rays", 4)
    if not np.all(np.isfinite(v)):
        raise ValueError("rays.vertices: must be finite")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) < 4 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"rays.faces: expected integer (n_faces >= 4, 3), got {f.dtype} {f.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError("rays.faces: vertex index out of range")
    return v, f.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _tables_host(vb: bytes, fb: bytes, n_rays: int):
    """The kernels' ray tables (see csrc/ops/star3d/star3d.h): float32 vertices, faces, per face the inverse of the
    matrix of its (float32) rays and its determinant, face neighbours across each edge, and a cube map of
    directions to a nearby face. Raises ValueError for faces that do not tile the sphere of directions."""
    verts = np.frombuffer(vb, np.float64).reshape(n_rays, 3)
    faces = np.frombuffer(fb, np.int64).reshape(-1, 3)
    v32 = verts.astype(np.float32)
    # StarDist orients every face with det(rays) < 0 (reorder_faces); its inside test depends on it, so faces
    # given the other way round are flipped
    flip = np.linalg.det(v32.astype(np.float64)[faces]) > 0
    faces = np.where(flip[:, None], faces[:, ::-1], faces)
    M = np.transpose(v32.astype(np.float64)[faces], (0, 2, 1))  # columns: the face's rays
    det = np.linalg.det(M)
    if np.any(np.abs(det) < 1e-12):
        raise ValueError("rays: a face's rays are coplanar with the centre (a degenerate ray set, such as "
                         "Rays_Cartesian's pole rings); use Rays_GoldenSpiral, Rays_Octo or Rays_Tetra")
    finv = np.linalg.inv(M)
    # neighbours: the face across the edge opposite vertex k
    edges = {}
    for fi, tri in enumerate(faces.tolist()):
        for k in range(3):
            e = frozenset((tri[(k + 1) % 3], tri[(k + 2) % 3]))
            edges.setdefault(e, []).append(fi)
    if any(len(fs) != 2 for fs in edges.values()):
        raise ValueError("rays.faces: must triangulate a closed surface (every edge in exactly two faces)")
    adj = np.empty((len(faces), 3), np.int32)
    for fi, tri in enumerate(faces.tolist()):
        for k in range(3):
            a, b = edges[frozenset((tri[(k + 1) % 3], tri[(k + 2) % 3]))]
            adj[fi, k] = b if a == fi else a
    # cube map: cell centres of each side, in the coordinates csrc/ops/star3d/star3d_math.h cube_cell reads
    c = (np.arange(_RES) + 0.5) / _RES * 2 - 1
    s, r = np.meshgrid(c, c, indexing="ij")
    dirs = []
    for axis in range(3):
        for sign in (1.0, -1.0):
            u = np.empty((_RES, _RES, 3))
            u[..., axis] = sign
            others = [j for j in range(3) if j != axis]
            u[..., others[0]], u[..., others[1]] = s, r
            dirs.append(u.reshape(-1, 3))
    dirs = np.concatenate(dirs)
    best = np.empty(len(dirs), np.int32)
    worst = np.inf
    # 128 directions at a time: this table is built on a call's first use of a ray set, and bigger chunks (a
    # chunk's temporary is 128 x faces x 3 float64) made it the largest allocation of a whole 3D NMS call
    for i0 in range(0, len(dirs), 128):
        co = np.einsum("fij,nj->nfi", finv, dirs[i0:i0 + 128]).min(axis=2)
        best[i0:i0 + 128] = co.argmax(axis=1)
        worst = min(worst, float(co.max(axis=1).min()))
    if worst < -1e-9:
        raise ValueError("rays: the faces' cones do not cover every direction (not a star-convex ray set)")
    return (v32, faces.astype(np.int32), np.ascontiguousarray(finv.reshape(-1, 9)), det,
            adj, best.reshape(6, _RES, _RES))


def _tables(rays, like):
    v, f = _rays_arrays(rays)
    host = _tables_host(np.ascontiguousarray(v).tobytes(), np.ascontiguousarray(f).tobytes(), len(v))
    return tuple(_p.dlp(_p.to_device(t, like)) for t in host)


def polyhedron_volumes(dist, rays):
    """Analytic volumes (n,) float64 of the polyhedra with distances ``dist (n, n_rays)`` (StarDist's
    polyhedron_volume: the signed tetrahedra of the faces, in float64)."""
    D = _p.as_array(dist, "dist", ndim=2, kind="float")
    D = D.cpu().numpy() if _p.is_torch(D) else D
    _finite_range(D, "dist")
    out = np.empty(len(D), np.float64)
    _C.star3d_volumes(_tables(rays, D), D, out)
    return out


# ---- polyhedron_to_label -------------------------------------------------------------------------------------

def _finite_range(D, name):
    """Finite distances within +-MAX_DIST (StarDist's float32 rule stays exact enough; the NMS bitmaps grow with
    the cube of the largest one), checked through the extremes: no temporary the size of ``D``."""
    check_range(D, name, MAX_DIST, what="distances")


def _shape3(shape):
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape: expected 3 integers, got {shape!r}") from None
    if len(shape) != 3 or min(shape) < 0:
        raise ValueError(f"shape: expected 3 non-negative sizes, got {shape}")
    return shape


def polyhedron_to_label(dist, points, rays, shape, prob=None, thr=-np.inf, labels=None, mode="full",
                        verbose=False, overlap_label=None, *, origin=(0, 0, 0)):
    """Paint star-convex polyhedra into a label volume: StarDist's ``polyhedron_to_label``, same arguments.

    ``dist (n, n_rays)`` (> 0), ``points (n, 3)`` centres (z, y, x), ``rays`` a Rays object (cellkern's or
    StarDist's: its vertices and faces), ``shape`` (nz, ny, nx). Polyhedra with ``prob >= thr`` are painted; where
    they overlap the most probable wins (StarDist's order, ``np.argsort(prob)[::-1]``); ``labels`` default to
    1..n in input order; with ``overlap_label`` voxels covered by two or more polyhedra get that label. ``mode``:
    'full' (the polyhedron), 'kernel' (the intersection of its faces' half-spaces) or 'bbox'.

    Which voxels: StarDist's rule, evaluated in float32 as StarDist does (a voxel centre inside one of the
    tetrahedra (centre, face), or in the kernel), so the labels equal StarDist's -- except that StarDist also
    requires the voxel inside the convex hull computed by Qhull, which only differs on a hull face within float32
    rounding (not reproduced). Fast: each voxel is located in its face's cone by a walk over the faces and decided
    by one plane test; only voxels within rounding distance of a face or a cone boundary run StarDist's full test.

    ``origin`` (cellkern's extra): the output is the window of ``shape`` at voxel ``origin`` of a larger volume,
    painted voxel for voxel as that volume would be (big volumes rendered block by block).

    Returns an int32 volume (a torch tensor on the input's device for torch input; StarDist returns int32 too,
    and uint16 zeros when there are no points). Inputs on CUDA run the CUDA kernels.
    """
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {tuple(_MODES)}, got {mode!r} (StarDist's 'hull' and 'debug' "
                         "modes are not provided)")
    shape = _shape3(shape)
    try:
        origin = [int(o) for o in origin]
    except (TypeError, ValueError):
        raise TypeError(f"origin: expected 3 integers, got {origin!r}") from None
    if len(origin) != 3 or min(origin) < 0:
        raise ValueError(f"origin: expected 3 non-negative integers, got {origin}")
    check_devices(("dist", dist), ("points", points), ("prob", prob), ("labels", labels))
    thr = prob_threshold(thr, "thr")
    like = dist if _p.is_torch(dist) else None
    n_in = len(points) if not _p.is_torch(points) else int(points.shape[0])
    if n_in == 0:
        return _p.new_zeros(shape, np.uint16, like) if like is None else torch.zeros(shape, dtype=torch.int32,
                                                                                     device=like.device)
    D = _p.as_array(dist, "dist", ndim=(1, 2), kind="float")
    P = _p.as_array(points, "points", ndim=(1, 2), kind="float")
    D = D.reshape(1, -1) if D.ndim == 1 else D
    P = P.reshape(1, -1) if P.ndim == 1 else P
    v, _ = _rays_arrays(rays)
    if D.shape[1] != len(v):
        raise ValueError(f"dist: {D.shape[1]} rays, but rays has {len(v)}")
    if P.shape != (D.shape[0], 3):
        raise ValueError(f"points: expected ({D.shape[0]}, 3), got {tuple(P.shape)}")
    _finite_range(D, "dist")
    check_range(P, "points", COORD_MAX, what="centre coordinates")
    if float(D.min()) <= 0:
        raise ValueError("dist: distances must be positive (StarDist's polyhedron_to_label rule)")
    n = D.shape[0]
    prob = np.ones(n) if prob is None else _real(prob, "prob")
    if prob.shape != (n,):
        raise ValueError(f"prob: expected ({n},), got {prob.shape}")
    if labels is None:
        labels = np.arange(1, n + 1)
    labels = np.asarray(labels.cpu() if _p.is_torch(labels) else labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected ({n},) integers, got {labels.dtype} {labels.shape}")
    if n and (labels.min() < np.iinfo(np.int32).min or labels.max() > np.iinfo(np.int32).max):
        raise ValueError("labels: must fit int32")
    if overlap_label is not None and not isinstance(overlap_label, numbers.Integral):
        raise TypeError(f"overlap_label: expected an integer or None, got {overlap_label!r}")
    keep = np.where(prob >= thr)[0]
    order = keep[np.argsort(prob[keep])[::-1]]  # StarDist's paint order, ties included
    idx = order if like is None else torch.from_numpy(order).to(D.device)
    d32 = (D.to(torch.float32) if _p.is_torch(D) else D.astype(np.float32))[idx]
    p32 = (P.to(torch.float32) if _p.is_torch(P) else P.astype(np.float32))[idx]
    if _p.is_torch(d32):
        p32 = p32.to(d32.device)
    lab = _p.to_device(np.ascontiguousarray(labels[order], np.int32), d32)
    out = _p.new_zeros(shape, np.int32, d32)
    if len(order) == 0:
        return out
    hull = _hull_vertices(d32, p32, rays, shape, origin)
    on_device = (_p.is_torch(d32) and d32.device.type == "cuda") or _p.emu_for(d32)
    rank = _p.new_empty(shape, np.int32, d32) if on_device else None
    count = _p.new_empty(shape, np.int32, d32) if on_device and overlap_label is not None else None
    _C.star3d_polyhedron_to_label(_tables(rays, d32), _p.dlp(_contig(d32)), _p.dlp(_contig(p32)), _p.dlp(lab),
                                  _p.dlp(None if hull is None else _p.to_device(hull, d32)), _p.dlp(out), origin, _MODES[mode], overlap_label is not None,
                                  0 if overlap_label is None else int(overlap_label), _p.dlp(rank), _p.dlp(count),
                                  _p.emu_for(d32), _p.stream_for(d32))
    return out


def _hull_vertices(d32, p32, rays, shape, origin):
    """(n, n_rays) uint8 marking the vertices that sit exactly on a voxel centre of the output that StarDist's
    convex-hull test puts outside the hull (None when there are none). A voxel at a vertex lies on the hull, so
    StarDist's Qhull plane test (``normal . p + offset > 0`` for some facet) decides it by rounding; scipy's
    ConvexHull runs the same Qhull with StarDist's (empty) options, so the same test here gives StarDist's
    answer. Happens with integer distances along axis-aligned rays (star_dist3d's poles) from integer centres;
    a network's distances practically never."""
    d = (d32.cpu().numpy() if _p.is_torch(d32) else d32).astype(np.float32)
    c = (p32.cpu().numpy() if _p.is_torch(p32) else p32).astype(np.float32)
    v = np.asarray(rays.vertices, np.float32)
    pv = c[:, None, :] + d[:, :, None] * v[None]  # StarDist's float32 vertices
    lo, hi = np.asarray(origin, np.float32), np.asarray(origin, np.float32) + np.asarray(shape, np.float32) - 1
    cand = np.all((pv == np.round(pv)) & (pv >= lo) & (pv <= hi), axis=2)
    rows = np.where(cand.any(axis=1))[0]
    if len(rows) == 0:
        return None
    from scipy.spatial import ConvexHull, QhullError

    mask = np.zeros(cand.shape, np.uint8)
    for i in rows:
        try:
            e = ConvexHull(pv[i].astype(np.float64), qhull_options="").equations
        except QhullError:  # flat: StarDist's Qhull fails as well and its hull test rejects every voxel
            mask[i, cand[i]] = 1
            continue
        for k in np.where(cand[i])[0]:
            z, y, x = (float(t) for t in pv[i, k])
            mask[i, k] = bool(np.any(((e[:, 0] * z + e[:, 1] * y) + e[:, 2] * x) + e[:, 3] > 0))
    return mask if mask.any() else None


def _contig(x):
    return x.contiguous() if _p.is_torch(x) else np.ascontiguousarray(x)


def relabel_image_stardist3D(lbl, rays, verbose=False, **kwargs):
    """Each object of ``lbl`` replaced by its star-convex polyhedron (StarDist's ``relabel_image_stardist3D``):
    the distances at the (integer-truncated) centroid of each label, painted with its label. ``kwargs`` go to
    star_dist3d (e.g. ``grid``)."""
    from .targets import star_dist3d

    lbl = np.asarray(lbl)
    if lbl.ndim != 3:
        raise ValueError(f"lbl: expected a 3D label volume, got shape {lbl.shape}")
    if not np.issubdtype(lbl.dtype, np.integer):
        raise TypeError(f"lbl: expected integer labels, got {lbl.dtype}")
    dist_all = star_dist3d(lbl, rays, **kwargs)
    ids = np.unique(lbl)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return np.zeros(lbl.shape, np.uint16)
    # centroids as scipy/skimage compute them, truncated to int as StarDist does
    from scipy import ndimage

    cents = np.array(ndimage.center_of_mass(np.ones(lbl.shape), lbl, ids)).reshape(-1, 3)
    points = cents.astype(int)
    dist = np.maximum(dist_all[tuple(points.T)], 1e-3)
    return polyhedron_to_label(dist, points, rays, lbl.shape, labels=ids, verbose=verbose)


relabel_image_stardist3d = relabel_image_stardist3D


# ---- NMS ---------------------------------------------------------------------------------------------------------

def _buckets(points, reach):
    """A bucket grid over the centres (side >= 2 reach, so overlapping pairs sit in neighbouring buckets), ranks
    grouped by bucket in ascending order. The side grows when the centres are spread thin, so the grid stays
    O(n) in size."""
    n = len(points)
    side = 2.0 * reach + 2
    lo = points.min(axis=0)
    ext = points.max(axis=0) - lo
    while True:
        nb = np.floor(ext / side).astype(np.int64) + 1
        if int(np.prod(nb.astype(np.float64))) <= 4 * n + 64:
            break
        side *= 2
    cell = np.minimum(np.floor((points - lo) / side).astype(np.int64), nb - 1)
    key = (cell[:, 0] * nb[1] + cell[:, 1]) * nb[2] + cell[:, 2]
    items = np.argsort(key, kind="stable").astype(np.int64)
    start = np.zeros(int(np.prod(nb)) + 1, np.int64)
    np.cumsum(np.bincount(key, minlength=int(np.prod(nb))), out=start[1:])
    return start, items, [int(b) for b in nb], float(side), [float(o) for o in lo]


def _nms_sorted(dist, points, rays, thresh, criterion, thresh_name="nms_thresh"):
    """Keep mask (n,) bool of candidates already in rank order (dist (n, R) float32/64, points (n, 3))."""
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion: expected 'smaller' or 'iou', got {criterion!r}")
    thresh = unit_threshold(thresh, thresh_name)
    check_devices(("dist", dist), ("points", points))
    D = _p.as_array(dist, "dist", ndim=2, kind="float")
    v, _ = _rays_arrays(rays)
    if D.shape[1] != len(v):
        raise ValueError(f"dist: {D.shape[1]} rays, but rays has {len(v)}")
    n = int(D.shape[0])
    pts = np.asarray(points.cpu() if _p.is_torch(points) else points, np.float64).reshape(-1, 3)
    if len(pts) != n:
        raise ValueError(f"points: expected ({n}, 3), got {pts.shape}")
    if n == 0:
        return np.zeros(0, bool)
    check_range(pts, "points", COORD_MAX, what="centre coordinates")
    _finite_range(D, "dist")
    if float(D.min()) < 0:  # a negative distance counts as 0 (the polyhedron is flat along that ray)
        D = D.clamp(min=0) if _p.is_torch(D) else np.maximum(D, 0)
    reach = float(np.ceil(float(D.max()))) if n else 0.0
    start, items, nb, side, origin = _buckets(pts, reach)
    like = D
    on_device = (_p.is_torch(D) and D.device.type == "cuda") or _p.emu_for(D)
    state = _p.new_zeros((n,), np.uint8, like)
    geom = _p.new_empty((n, 8), np.float64, like) if on_device else None
    flags = _p.new_zeros((2,), np.int32, like) if on_device else None
    stats = _C.star3d_nms(_tables(rays, like), _p.dlp(D), _p.dlp(_p.to_device(pts, like)), thresh,
                          _CRITERIA[criterion], _p.dlp(_p.to_device(start, like)),
                          _p.dlp(_p.to_device(items, like)), nb, side, origin, reach, _p.dlp(state),
                          _p.dlp(geom), _p.dlp(flags), _p.emu_for(D), _p.stream_for(D))
    if not on_device:
        _last_stats.clear()
        _last_stats.update(stats)
        _last_stats["candidates"] = n
    state = state.cpu().numpy() if _p.is_torch(state) else state
    return state == 1


def _real(x, name, keep_dtype=False):
    """A host copy of a real array (numpy, sequence or torch tensor), float64 unless keep_dtype: TypeError for
    anything else."""
    a = host_array(x, name)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return a if keep_dtype else a.astype(np.float64, copy=False)


def _grid3(grid):
    if isinstance(grid, numbers.Integral):
        grid = (int(grid),) * 3
    grid = tuple(grid)
    if len(grid) != 3 or not all(isinstance(g, numbers.Integral) and int(g) >= 1 for g in grid):
        raise ValueError(f"grid: expected 3 positive integers, got {grid!r}")
    return np.array([int(g) for g in grid], np.int64)


def _border_window(shape, b):
    """StarDist's border as the window of cells left (slices): b cells excluded on each side (an int, None, or per
    axis (before, after))."""
    if b is None:
        return tuple(slice(0, n) for n in shape)
    if isinstance(b, numbers.Integral):
        b = ((int(b), int(b)),) * len(shape)
    try:
        b = [(int(x), int(y)) for x, y in b]
    except (TypeError, ValueError):
        raise ValueError(f"b: expected an int, None or per-axis (before, after) pairs, got {b!r}") from None
    if len(b) != len(shape) or min(min(p) for p in b) < 0:
        raise ValueError(f"b: expected {len(shape)} non-negative (before, after) pairs, got {b!r}")
    return tuple(slice(min(x, n), max(min(x, n), n - y)) for (x, y), n in zip(b, shape))


def non_maximum_suppression_3d(dist, prob, rays, grid=(1, 1, 1), b=2, nms_thresh=0.5, prob_thresh=0.5,
                               use_bbox=True, use_kdtree=True, verbose=False, *, criterion="smaller",
                               stable=False, return_inds=False):
    """Greedy NMS of star-convex polyhedra: StarDist's ``non_maximum_suppression_3d``, same arguments and returns.

    ``dist (Z, Y, X, n_rays)`` and ``prob (Z, Y, X)`` on the prediction grid; cell c is the polyhedron centred at
    voxel ``c * grid``. Candidates: ``prob > prob_thresh`` at least ``b`` cells from the border, visited in
    StarDist's order (``np.argsort(prob)[::-1]``; ``stable=True``: descending probability, ties in raster order,
    which does not depend on the array's extent); each one not yet suppressed is kept and suppresses every later
    one whose overlap exceeds ``nms_thresh``: the voxel count of both polyhedra's intersection over the smaller
    analytic volume (StarDist's measure; ``criterion='iou'``: over the union). Voxels are the integer voxel centres
    inside a polyhedron, boundary included (1e-9 relative), not clipped to the volume. StarDist decides most pairs
    by continuous-volume bounds of the same measure before rendering, so a pair near the threshold can go the
    other way there. Distances must be finite and within +-2^10 (negative ones count as 0). ``use_bbox``,
    ``use_kdtree`` and ``verbose`` are accepted for compatibility (pruning always uses boxes and a bucket grid).

    Returns ``(points (N, 3) int64, prob (N,), dist (N, n_rays))`` of the kept polyhedra in rank order (with
    ``return_inds`` also their flat cell indices into ``prob``).
    How: kept polyhedra become voxel bitmaps over their boxes; each later candidate in a neighbouring bucket with
    a meeting box counts its voxels in the bitmap (listed from a table of integer offsets sorted by length,
    inner voxels first) and stops as soon as the count decides; OpenMP over the candidates of each kept one.
    """
    prob_thresh = prob_threshold(prob_thresh, "prob_thresh")
    unit_threshold(nms_thresh, "nms_thresh")  # before any work (checked again where used)
    check_devices(("dist", dist), ("prob", prob))
    P = _p.as_array(prob, "prob", ndim=3, kind="float")
    D = _p.as_array(dist, "dist", ndim=4, kind="float")
    v, _ = _rays_arrays(rays)
    if tuple(D.shape) != tuple(P.shape) + (len(v),):
        raise ValueError(f"dist: expected shape {tuple(P.shape)} + ({len(v)},), got {tuple(D.shape)}")
    g = _grid3(grid)
    Ph = P.cpu().numpy() if _p.is_torch(P) else P
    # candidates of the window only (no mask the size of the grid): flat indices in raster order
    win = _border_window(Ph.shape, b)
    local = np.nonzero(Ph[win] > prob_thresh)
    flat = np.ravel_multi_index(tuple(c + w.start for c, w in zip(local, win)), Ph.shape) if Ph.size else \
        np.zeros(0, np.int64)
    del local
    probi = Ph.reshape(-1)[flat]
    order = np.argsort(-probi.astype(np.float64), kind="stable") if stable else np.argsort(probi)[::-1]
    flat, probi = flat[order], probi[order]
    Dflat = D.reshape(-1, len(v))
    disti = Dflat[torch.from_numpy(flat).to(D.device)] if _p.is_torch(D) else Dflat[flat]
    points = np.stack(np.unravel_index(flat, Ph.shape), axis=1).astype(np.int64) * g
    keep = _nms_sorted(disti, points, rays, nms_thresh, criterion)
    if verbose:
        print(f"keeping {int(keep.sum())}/{len(keep)} polyhedra")
    k = np.where(keep)[0]
    out = (points[k], probi[k], (disti[torch.from_numpy(k).to(D.device)] if _p.is_torch(D) else disti[k]))
    return out + (flat[k],) if return_inds else out


def decode3d(prob, dist, rays, grid=(1, 1, 1), prob_thresh=0.5, nms_thresh=0.4, shape=None, b=2,
             criterion="smaller"):
    """3D StarDist instances: ``(labels int32 shape, {"points" (K, 3), "prob" (K,), "dist" (K, n_rays)})``.

    :func:`non_maximum_suppression_3d` (descending probability, ties in raster order) then
    :func:`polyhedron_to_label`; label k + 1 is the k-th kept polyhedron. ``shape`` defaults to the prediction
    grid times ``grid``."""
    g = _grid3(grid)
    if len(np.shape(prob)) != 3:
        raise ValueError(f"prob: expected (Z, Y, X), got shape {tuple(np.shape(prob))}")
    shape = tuple(int(s) for s in (shape if shape is not None else np.array(np.shape(prob)) * g))
    points, probs, dists = non_maximum_suppression_3d(dist, prob, rays, g, b=b, nms_thresh=nms_thresh,
                                                      prob_thresh=prob_thresh, criterion=criterion, stable=True)
    if len(points):
        labels = polyhedron_to_label(dists, points, rays, shape, labels=np.arange(1, len(points) + 1),
                                     prob=np.arange(len(points), 0, -1, dtype=np.float64))
    else:
        labels = np.zeros(shape, np.int32)
    return labels, {"points": points, "prob": probs, "dist": dists}


def non_maximum_suppression_3d_sparse(dist, prob, points, rays, b=2, nms_thresh=0.5, use_kdtree=True,
                                      verbose=False, *, criterion="smaller"):
    """StarDist's ``non_maximum_suppression_3d_sparse``: NMS of a list of polyhedra ``dist (n, n_rays)``,
    ``prob (n,)``, ``points (n, 3)`` (any float centres). Returns ``(points, prob, dist, inds)`` of the kept ones
    in rank order, ``inds`` their indices in the input. ``b`` is accepted and unused, as in StarDist."""
    unit_threshold(nms_thresh, "nms_thresh")
    check_devices(("dist", dist), ("prob", prob), ("points", points))
    D = _p.as_array(dist, "dist", ndim=2, kind="float")
    pr = _real(prob, "prob")
    pts = _real(points, "points", keep_dtype=True)
    if pr.ndim != 1 or pts.ndim != 2 or pts.shape[1:] != (3,) or not len(pr) == len(pts) == D.shape[0]:
        raise ValueError(f"dist (n, n_rays), prob (n,) and points (n, 3) must agree; got {tuple(D.shape)}, "
                         f"{pr.shape}, {pts.shape}")
    order = np.argsort(pr)[::-1]
    Ds = D[torch.from_numpy(order.copy()).to(D.device)] if _p.is_torch(D) else D[order]
    keep = _nms_sorted(Ds, pts[order], rays, nms_thresh, criterion)
    k = order[keep]
    return pts[k], np.asarray(prob)[k] if not _p.is_torch(prob) else prob[torch.from_numpy(k)], \
        (D[torch.from_numpy(k).to(D.device)] if _p.is_torch(D) else D[k]), k


def non_maximum_suppression_3d_inds(dist, points, rays, scores, thresh=0.5, use_bbox=True, use_kdtree=True,
                                    verbose=1, *, criterion="smaller"):
    """StarDist's ``non_maximum_suppression_3d_inds``: the boolean mask (n,) of the polyhedra that survive, in
    input order (``scores`` None: all equal)."""
    unit_threshold(thresh, "thresh")
    check_devices(("dist", dist), ("points", points), ("scores", scores))
    D = _p.as_array(dist, "dist", ndim=2, kind="float")
    n = int(D.shape[0])
    sc = np.ones(n) if scores is None else _real(scores, "scores")
    pts = _real(points, "points", keep_dtype=True)
    if sc.shape != (n,) or pts.shape != (n, 3):
        raise ValueError(f"scores ({n},) and points ({n}, 3) must match dist ({n}, n_rays); got {sc.shape}, "
                         f"{pts.shape}")
    order = np.argsort(sc)[::-1]
    Ds = D[torch.from_numpy(order.copy()).to(D.device)] if _p.is_torch(D) else D[order]
    keep = _nms_sorted(Ds, pts[order], rays, thresh, criterion, "thresh")
    out = np.zeros(n, bool)
    out[order] = keep
    return out
