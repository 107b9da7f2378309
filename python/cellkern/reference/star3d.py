"""Slow, obviously-correct float64 oracles for StarDist's 3D polyhedra that the fast kernels are tested against."""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["inside_polyhedron", "polyhedron_voxels", "polyhedron_volume", "polyhedron_to_label", "nms3d"]


# ---- input checks ------------------------------------------------------------------------------------------

def _rays(rays):
    """(vertices (n, 3) float64, faces (F, 3) int64) of a Rays object (cellkern's or StarDist's)."""
    if not (hasattr(rays, "vertices") and hasattr(rays, "faces")):
        raise TypeError(f"rays: expected a Rays object with .vertices and .faces (e.g. "
                        f"cellkern.star.Rays_GoldenSpiral), got {type(rays).__name__}")
    v = np.asarray(rays.vertices, np.float64)
    f = np.asarray(rays.faces)
    if v.ndim != 2 or v.shape[1] != 3 or not np.all(np.isfinite(v)):
        raise ValueError(f"rays.vertices: expected finite (n_rays, 3), got shape {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"rays.faces: expected integer (n_faces, 3), got {f.dtype} {f.shape}")
    if f.size == 0 or f.min() < 0 or f.max() >= len(v):
        raise ValueError("rays.faces: empty, or a vertex index out of range")
    return v, f.astype(np.int64)


def _dists(dist, n_rays, name="dist"):
    """dist as float64 (m, n_rays) (a single polyhedron's (n_rays,) becomes (1, n_rays)), all finite and > 0."""
    d = np.asarray(dist, np.float64)
    if d.ndim == 1:
        d = d[None]
    if d.ndim != 2 or d.shape[1] != n_rays:
        raise ValueError(f"{name}: expected shape (n_polyhedra, n_rays={n_rays}) or (n_rays,), got {np.shape(dist)}")
    if not np.all(np.isfinite(d)) or not np.all(d > 0):
        raise ValueError(f"{name}: distances must be finite and > 0")
    return d


def _points(points, m, name="points"):
    p = np.asarray(points, np.float64)
    if p.ndim == 1:
        p = p[None]
    if p.shape != (m, 3) or not np.all(np.isfinite(p)):
        raise ValueError(f"{name}: expected finite shape ({m}, 3) (z, y, x) to match dist, got {np.shape(points)}")
    return p


def _per_polyhedron(values, m, name, default):
    if values is None:
        return default
    a = np.asarray(values)
    if a.ndim == 0:
        a = a[None]
    if a.shape != (m,):
        raise ValueError(f"{name}: expected shape ({m},), one per polyhedron, got {np.shape(values)}")
    return a


# ---- one polyhedron ----------------------------------------------------------------------------------------

def _inside_tetrahedron(p, tet, slack):
    """Points ``p`` (m, 3) within ``slack`` of every face plane of the tetrahedron ``tet`` (4, 3), on its side."""
    inside = np.ones(len(p), bool)
    for k in range(4):
        q0, q1, q2 = (tet[j] for j in range(4) if j != k)
        n = np.cross(q1 - q0, q2 - q0)
        length = np.linalg.norm(n)
        if length == 0:
            return np.zeros(len(p), bool)
        n = n / length
        if n @ (tet[k] - q0) > 0:  # make the normal point away from the opposite vertex (outward)
            n = -n
        inside &= (p - q0) @ n <= slack
    return inside


def _inside(p, center, d, verts, faces, tol):
    corners = center + d[:, None] * verts
    slack = tol * d.max()
    inside = np.zeros(len(p), bool)
    for a, b, c in faces:
        tet = np.array([center, corners[a], corners[b], corners[c]])
        if np.linalg.det(tet[1:] - tet[0]) == 0:
            continue  # a flat tetrahedron: the neighbouring faces' tetrahedra cover it
        inside |= _inside_tetrahedron(p, tet, slack)
    return inside


def inside_polyhedron(p, center, dist, rays, tol=1e-9):
    """Whether the points ``p`` (..., 3) (z, y, x) lie in the star-convex polyhedron with vertices ``center +
    dist_k * ray_k`` and the ray set's triangles, StarDist's rule: the polyhedron is the union of the tetrahedra
    (center, A, B, C) over its faces (A, B, C), and a point is inside when it is inside one of them, boundary
    included. Returns bool of shape ``p.shape[:-1]``.

    ``tol``: a point within ``tol * max(dist)`` of a tetrahedron (beyond each of its face planes by at most that)
    counts as inside it, so points on a face are inside despite rounding. float64 throughout; flat tetrahedra
    are skipped (their neighbours cover them). Nearly flat ones (Rays_Cartesian's pole rings) are ill-conditioned:
    points exactly on the pole axis may be decided either way.
    """
    verts, faces = _rays(rays)
    d = _dists(dist, len(verts))
    if len(d) != 1:
        raise ValueError(f"dist: expected one polyhedron's (n_rays,) distances, got shape {np.shape(dist)}")
    c = _points(center, 1, "center")[0]
    q = np.asarray(p, np.float64)
    if q.ndim == 0 or q.shape[-1] != 3:
        raise ValueError(f"p: expected points (..., 3) in (z, y, x), got shape {q.shape}")
    if not (isinstance(tol, numbers.Real) and tol >= 0):
        raise ValueError(f"tol: expected a number >= 0, got {tol!r}")
    return _inside(q.reshape(-1, 3), c, d[0], verts, faces, float(tol)).reshape(q.shape[:-1])


def polyhedron_voxels(center, dist, rays, tol=1e-9):
    """The integer voxel positions (m, 3) int64 (z, y, x), in raster order, inside the polyhedron (see
    :func:`inside_polyhedron`; not clipped to any volume): every integer point of the box spanned by the centre
    and the vertices (rounded outward) is tested."""
    verts, faces = _rays(rays)
    d = _dists(dist, len(verts))
    if len(d) != 1:
        raise ValueError(f"dist: expected one polyhedron's (n_rays,) distances, got shape {np.shape(dist)}")
    c = _points(center, 1, "center")[0]
    if not (isinstance(tol, numbers.Real) and tol >= 0):
        raise ValueError(f"tol: expected a number >= 0, got {tol!r}")
    # the polyhedron lies in the convex hull of its centre and vertices, hence in their bounding box (grown by
    # the tolerance, which admits points that far outside)
    pts = np.vstack([c, c + d[0][:, None] * verts])
    pad = tol * d.max() + 1e-9
    lo, hi = np.floor(pts.min(axis=0) - pad).astype(np.int64), np.ceil(pts.max(axis=0) + pad).astype(np.int64)
    box = np.stack(np.meshgrid(*(np.arange(a, b + 1) for a, b in zip(lo, hi)), indexing="ij"), -1).reshape(-1, 3)
    return box[_inside(box.astype(np.float64), c, d[0], verts, faces, float(tol))]


def polyhedron_volume(dist, rays):
    """The analytic volume of the polyhedron with distances ``dist`` (n_rays,) (or of each of (..., n_rays)):
    the sum over faces of ``|det(A, B, C)| / 6`` with ``A = dist_a * ray_a`` etc., each face's tetrahedron with the
    centre (StarDist's ``-sum det / 6`` for its outward faces, but independent of the faces' orientation)."""
    verts, faces = _rays(rays)
    d = np.asarray(dist, np.float64)
    if d.ndim == 0 or d.shape[-1] != len(verts):
        raise ValueError(f"dist: the last dimension should have length n_rays = {len(verts)}, got shape {d.shape}")
    out = np.zeros(d.shape[:-1])
    for idx in np.ndindex(*d.shape[:-1]):
        corners = d[idx][:, None] * verts
        out[idx] = sum(abs(np.linalg.det(corners[face])) for face in faces) / 6.0
    return out if d.ndim > 1 else float(out)


# ---- many polyhedra ----------------------------------------------------------------------------------------

def polyhedron_to_label(dist, points, rays, shape, prob=None, thr=-np.inf, labels=None):
    """Paint the polyhedra ``dist`` (n, n_rays) around ``points`` (n, 3) into an int32 volume of ``shape``,
    StarDist's ``polyhedron_to_label`` (mode "full"): only those with ``prob >= thr``, in the order of
    ``np.argsort(prob)[::-1]`` over them (descending probability); a voxel takes the label of the first
    polyhedron covering it and is never overwritten. ``labels`` default to 1..n in input order; ``prob`` to 1.
    Voxels are those of :func:`polyhedron_voxels`, clipped to the volume."""
    verts, faces = _rays(rays)
    shape = tuple(shape) if np.iterable(shape) else (shape,)
    if len(shape) != 3 or not all(isinstance(s, numbers.Integral) and s >= 0 for s in shape):
        raise ValueError(f"shape: expected 3 non-negative integers (Z, Y, X), got {shape!r}")
    out = np.zeros(shape, np.int32)
    if np.size(points) == 0 and np.size(dist) == 0:
        return out
    d = _dists(dist, len(verts))
    p = _points(points, len(d))
    pr = _per_polyhedron(prob, len(d), "prob", np.ones(len(d))).astype(np.float64)
    lab = _per_polyhedron(labels, len(d), "labels", np.arange(1, len(d) + 1))
    if not np.issubdtype(lab.dtype, np.integer) or np.any(lab < np.iinfo(np.int32).min) or \
            np.any(lab > np.iinfo(np.int32).max):
        raise ValueError("labels: expected integers that fit int32")
    sel = np.flatnonzero(pr >= thr)
    sel = sel[np.argsort(pr[sel])[::-1]]
    for i in sel:
        vox = polyhedron_voxels(p[i], d[i], rays)
        vox = vox[np.all((vox >= 0) & (vox < np.array(shape)), axis=1)]
        z, y, x = vox.T
        free = out[z, y, x] == 0
        out[z[free], y[free], x[free]] = lab[i]
    return out


def nms3d(dist, points, rays, scores, thresh=0.5, criterion="smaller"):
    """Greedy non-maximum suppression of polyhedra ``dist`` (n, n_rays) around ``points`` (n, 3): the boolean
    keep mask (n,) in input order.

    Candidates are visited in ``np.argsort(scores)[::-1]`` order (StarDist's, ties included; ``scores`` None: all
    equal); a candidate j is dropped when some kept i has ``overlap(i, j) > thresh``, with ``overlap = |V_i & V_j|
    / min(vol_i, vol_j)`` (criterion "smaller") or ``|V_i & V_j| / (vol_i + vol_j - |V_i & V_j|)`` ("iou"; a
    denominator <= 0 counts as infinite overlap), V the unclipped voxel sets of :func:`polyhedron_voxels` and vol
    the analytic volumes of :func:`polyhedron_volume`. cellkern's documented 3D NMS semantics; StarDist decides
    most pairs alike but bounds pairs by continuous volumes first."""
    verts, faces = _rays(rays)
    if criterion not in ("smaller", "iou"):
        raise ValueError(f"criterion: expected 'smaller' or 'iou', got {criterion!r}")
    if not isinstance(thresh, numbers.Real) or not np.isfinite(thresh):
        raise ValueError(f"thresh: expected a finite number, got {thresh!r}")
    if np.size(points) == 0 and np.size(dist) == 0:
        return np.zeros(0, bool)
    d = _dists(dist, len(verts))
    p = _points(points, len(d))
    s = _per_polyhedron(scores, len(d), "scores", np.ones(len(d))).astype(np.float64)
    vox = [set(map(tuple, polyhedron_voxels(p[i], d[i], rays).tolist())) for i in range(len(d))]
    vol = polyhedron_volume(d, rays)
    keep = np.zeros(len(d), bool)
    kept = []
    for j in np.argsort(s)[::-1]:
        for i in kept:
            inter = len(vox[i] & vox[j])
            if criterion == "smaller":
                den = min(vol[i], vol[j])
            else:
                den = vol[i] + vol[j] - inter
            ratio = inter / den if den > 0 else (np.inf if inter else 0.0)
            if ratio > thresh:
                break
        else:
            kept.append(j)
            keep[j] = True
    return keep
