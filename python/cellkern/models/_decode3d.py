"""A simple, exact-on-voxels 3D StarDist decoder (candidates -> greedy NMS by voxel overlap of rasterised
star-convex polyhedra -> label volume), used until fast 3D kernels land. numpy, one candidate at a time."""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["polyhedron_faces", "rasterize", "decode3d"]

_TOL = 1e-6  # a voxel centre on a face (up to rounding) counts as inside


def polyhedron_faces(rays, anisotropy=None):
    """The triangles (F, 3) of ray indices that StarDist's polyhedra are made of: the faces of the convex hull of
    the rays before the anisotropy shaped them (StarDist triangulates the isotropic spiral), i.e. of the
    directions rays * anisotropy. A polyhedron with distances d has vertices d_k * ray_k and these faces; the
    faces' cones partition space (a linear map of the isotropic ones), so it is star-convex around its centre."""
    from scipy.spatial import ConvexHull

    r = np.asarray(rays, np.float64)
    if anisotropy is not None:
        r = r * np.asarray(anisotropy, np.float64)
    return ConvexHull(r / np.linalg.norm(r, axis=1, keepdims=True)).simplices.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _offset_table(rays_bytes, n_rays, radius, anisotropy):
    """Every integer offset u (z, y, x) with |u| <= radius, sorted by length, with the face whose cone holds its
    direction and the coefficients (a, b, c) >= 0 of u = a r_i + b r_j + c r_k on that face's unit rays.

    With distances d the polyhedron holds u exactly when a / d_i + b / d_j + c / d_k <= 1 (u is then a convex
    combination of the centre and the face's vertices d_i r_i, d_j r_j, d_k r_k), so one table serves every
    candidate: rasterising costs three look-ups per offset."""
    rays = np.frombuffer(rays_bytes, np.float64).reshape(n_rays, 3)
    faces = polyhedron_faces(rays, anisotropy)
    inv = np.linalg.inv(np.transpose(rays[faces], (0, 2, 1)))  # (F, 3, 3): u -> (a, b, c) per face
    r = int(np.ceil(radius))
    grid = np.stack(np.meshgrid(*(np.arange(-r, r + 1),) * 3, indexing="ij"), -1).reshape(-1, 3)
    length = np.linalg.norm(grid, axis=1)
    keep = length <= radius
    grid, length = grid[keep], length[keep]
    order = np.argsort(length, kind="stable")
    grid, length = grid[order], length[order]
    face = np.zeros(len(grid), np.int64)
    coef = np.zeros((len(grid), 3))
    for m0 in range(0, len(grid), 4096):  # chunks bound the (offsets, faces, 3) products' memory
        c = np.einsum("fij,mj->mfi", inv, grid[m0:m0 + 4096].astype(np.float64))
        # the face whose cone holds u has all coefficients >= 0 (up to rounding): the least negative minimum
        f = c.min(axis=2).argmax(axis=1)
        face[m0:m0 + 4096] = f
        coef[m0:m0 + 4096] = c[np.arange(len(f)), f]
    return grid, length, faces[face], np.maximum(coef, 0)


def rasterize(dist, rays, radius=None, anisotropy=None):
    """Integer offsets (n, 3) of the voxel centres inside the star-convex polyhedron with distances ``dist``
    along ``rays`` (shaped by ``anisotropy``, see polyhedron_faces) around the origin (always included).
    ``radius``: the offset table's size (>= max(dist))."""
    dist = np.maximum(np.asarray(dist, np.float64), 1e-3)
    rays = np.ascontiguousarray(rays, np.float64)
    radius = float(np.ceil(dist.max())) if radius is None else radius
    aniso = None if anisotropy is None else tuple(float(a) for a in anisotropy)
    grid, length, tri, coef = _offset_table(rays.tobytes(), len(rays), radius, aniso)
    n = np.searchsorted(length, dist.max(), side="right")
    s = (coef[:n] / dist[tri[:n]]).sum(axis=1)
    return grid[:n][s <= 1 + _TOL]


def decode3d(prob, dist, rays, grid=(1, 1, 1), prob_thresh=0.5, nms_thresh=0.4, shape=None, b=2, anisotropy=None):
    """3D StarDist instances: ``(labels int32 shape, {"points" (K, 3), "prob" (K,), "dist" (K, n_rays)})``.

    ``prob (Z, Y, X)`` and ``dist (Z, Y, X, n_rays)`` on the prediction grid; cell c is the polyhedron around voxel
    c * grid (``rays`` and ``anisotropy`` as in :func:`rasterize`). Candidates: prob > prob_thresh at least ``b``
    cells from the border, in descending probability (ties in raster order). Greedy NMS: a candidate is dropped
    when it shares more than ``nms_thresh`` of the smaller voxel count with a kept one (StarDist's overlap over
    the smaller volume, here on rasterised polyhedra, not clipped to the volume). The kept ones are painted into
    the volume, higher probability on top; label k + 1 = the k-th kept.

    The rasterisation equals StarDist's ``polyhedron_to_label`` voxel for voxel, except for voxel centres lying
    exactly on a face (common with star_dist3d's integer-length distances): here they count as inside, StarDist
    decides them by its float32 rounding (about 0.1% of the voxels).
    """
    prob, dist = np.asarray(prob), np.asarray(dist)
    rays = np.asarray(rays, np.float64)
    if prob.ndim != 3 or dist.shape != prob.shape + (len(rays),):
        raise ValueError(f"prob {prob.shape} and dist {dist.shape}: expected (Z, Y, X) and (Z, Y, X, {len(rays)})")
    g = np.asarray(grid, np.int64)
    shape = tuple(int(s) for s in (shape if shape is not None else np.array(prob.shape) * g))
    cand = np.zeros(prob.shape, bool)
    cand[tuple(slice(b, n - b) for n in prob.shape)] = True
    cand &= prob > prob_thresh
    cells = np.argwhere(cand)[np.argsort(-prob[cand], kind="stable")]
    radius = float(np.ceil(np.maximum(dist[cand], 1e-3).max())) if len(cells) else 1.0
    margin = int(radius) + 1  # voxel keys index a volume grown by this much: polyhedra are not clipped
    keyspace = tuple(s + 2 * margin for s in shape)

    def voxels(cell):
        return rasterize(dist[tuple(cell)], rays, radius, anisotropy) + cell * g

    kept, kept_keys, kept_boxes = [], [], []
    for cell in cells:
        vox = voxels(cell)
        lo, hi = vox.min(axis=0), vox.max(axis=0)
        key = np.sort(np.ravel_multi_index((vox + margin).T, keyspace))
        if not any(np.all(lo <= khi) and np.all(klo <= hi) and
                   len(np.intersect1d(key, kkey, assume_unique=True)) > nms_thresh * min(len(key), len(kkey))
                   for kkey, (klo, khi) in zip(kept_keys, kept_boxes)):
            kept.append(cell)
            kept_keys.append(key)
            kept_boxes.append((lo, hi))
    labels = np.zeros(shape, np.int32)
    for k in reversed(range(len(kept))):  # lowest probability first: higher ones paint over it
        vox = voxels(kept[k])
        labels[tuple(vox[np.all((vox >= 0) & (vox < shape), axis=1)].T)] = k + 1
    kept = np.array(kept, np.int64).reshape(-1, 3)
    return labels, {"points": kept * g, "prob": prob[tuple(kept.T)], "dist": dist[tuple(kept.T)]}
