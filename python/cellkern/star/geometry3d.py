"""3D star-convex geometry helpers (StarDist's geom3d): polyhedron vertices, per-voxel volumes/centroids, OBJ export."""
from __future__ import annotations

import numbers

import numpy as np

from ._checks import COORD_MAX, DIST_MAX_3D, check_range, host_array
from .rays import rays_from_json

__all__ = ["dist_to_coord3d", "dist_to_volume", "dist_to_centroid", "export_to_obj_file3d",
           "dist_to_coord3D", "export_to_obj_file3D"]

_CHUNK = 1 << 22  # (elements x faces) per block: bounds the temporaries of the per-voxel reductions


def _rays_arrays(rays, name="rays"):
    """(vertices (n, 3) float64, faces (F, 3) int64) of a Rays object (cellkern's or StarDist's)."""
    if not (hasattr(rays, "vertices") and hasattr(rays, "faces")):
        raise TypeError(f"{name}: expected a Rays object with .vertices and .faces (e.g. "
                        f"cellkern.star.Rays_GoldenSpiral), got {type(rays).__name__}")
    v = np.asarray(rays.vertices, np.float64)
    f = np.asarray(rays.faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"{name}.vertices: expected shape (n_rays, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"{name}.faces: expected integer (n_faces, 3), got {f.dtype} {f.shape}")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"{name}.faces: vertex index out of range")
    return v, f.astype(np.int64)


def _reals(x, name):
    """x as a float64 numpy array: TypeError unless it holds real numbers (torch tensors: copied to the host)."""
    a = host_array(x, name)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return a.astype(np.float64, copy=False)


def _dist(dist):
    """3D distances in the documented range (finite, |d| <= 2^10), float64."""
    d = _reals(dist, "dist")
    check_range(d, "dist", DIST_MAX_3D, what="distances")
    return d


def _vertices(rays_vertices, name="rays_vertices"):
    v = np.asarray(getattr(rays_vertices, "vertices", rays_vertices), np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"{name}: expected (n_rays, 3) directions in (z, y, x), got shape {v.shape}")
    return v


def dist_to_coord3d(dist, points, rays_vertices):
    """Polyhedron vertices ``points[:, None] + dist[..., None] * rays_vertices``: (m, n_rays, 3) float64 (z, y, x).

    ``dist`` (m, n_rays), ``points`` (m, 3) centres, ``rays_vertices`` (n_rays, 3) (or a Rays object)."""
    d = _dist(dist)
    p = _reals(points, "points")
    check_range(p, "points", COORD_MAX, what="centre coordinates")
    v = _vertices(rays_vertices)
    if d.ndim != 2 or d.shape[1] != len(v):
        raise ValueError(f"dist: expected shape (m, n_rays={len(v)}), got {d.shape}")
    if p.shape != (len(d), 3):
        raise ValueError(f"points: expected shape ({len(d)}, 3) to match dist, got {p.shape}")
    return p[:, None, :] + d[..., None] * v


dist_to_coord3D = dist_to_coord3d


def _face_weights(d, verts, faces):
    """Per face ``-det(d_a v_a, d_b v_b, d_c v_c) / 6``: the signed volume of its tetrahedron with the centre."""
    det = np.linalg.det(verts[faces])  # trilinear: one det of unit rays per face, scaled by d_a d_b d_c
    return -(d[:, faces[:, 0]] * d[:, faces[:, 1]] * d[:, faces[:, 2]]) * (det / 6.0)


def _per_voxel(dist, rays, fn, width):
    """``fn(block (k, n_rays), verts, faces) -> (k, width)`` over the flattened leading dims of ``dist``, in blocks."""
    verts, faces = _rays_arrays(rays)
    d = _dist(dist)
    if d.ndim == 0 or d.shape[-1] != len(verts):
        raise ValueError(f"dist: the last dimension should have length n_rays = {len(verts)}, got shape {d.shape}")
    flat = d.reshape(-1, len(verts))
    out = np.empty((len(flat), width))
    step = max(1, _CHUNK // max(1, len(faces)))
    for i in range(0, len(flat), step):
        out[i:i + step] = fn(flat[i:i + step], verts, faces)
    return out.reshape(d.shape[:-1] + ((width,) if width > 1 else ()))


def dist_to_volume(dist, rays):
    """Volumes of the polyhedra ``dist`` (Z, Y, X, n_rays) (any leading shape) around every voxel: float64 of
    shape ``dist.shape[:-1]``, the sum of the faces' signed tetrahedra.

    StarDist's ``dist_to_volume`` computes the same in float32 (in C): they agree to a relative 1e-5."""
    return _per_voxel(dist, rays, lambda d, v, f: _face_weights(d, v, f).sum(axis=1, keepdims=True), 1)


def dist_to_centroid(dist, rays, mode="absolute"):
    """Centroids (z, y, x) of the polyhedra ``dist`` (Z, Y, X, n_rays) around every voxel: float64 (Z, Y, X, 3).

    ``mode='relative'``: relative to the voxel (any leading shape of ``dist``); ``'absolute'``: plus the voxel's
    index (z, y, x) (``dist`` must be 4D). The centroid is the volume-weighted mean of the faces' tetrahedra's
    centroids ``(0 + A + B + C) / 4``. StarDist's ``dist_to_centroid`` computes it in float32 (in C): they agree
    to about 1e-5 of the polyhedron's size."""
    if mode not in ("absolute", "relative"):
        raise ValueError(f"mode: expected 'absolute' or 'relative', got {mode!r}")
    d = _dist(dist)
    if mode == "absolute" and d.ndim != 4:
        raise ValueError(f"dist: mode='absolute' needs a 4D (Z, Y, X, n_rays) array, got shape {d.shape}")

    def centroid(block, verts, faces):
        w = _face_weights(block, verts, faces)  # (k, F)
        # sum_f w_f (A_f + B_f + C_f) / 4 regrouped per ray: ray r collects the weights of the faces holding it
        incidence = np.zeros((len(faces), len(verts)))
        np.add.at(incidence, (np.repeat(np.arange(len(faces)), 3), faces.ravel()), 1.0)
        per_ray = (w @ incidence) * block  # (k, n_rays)
        return (per_ray @ verts) / (4.0 * w.sum(axis=1, keepdims=True))

    res = _per_voxel(d, rays, centroid, 3)
    if mode == "absolute":
        res += np.stack(np.meshgrid(*(np.arange(s) for s in d.shape[:3]), indexing="ij"), axis=-1)
    return res


def _polys_arrays(polys):
    if not isinstance(polys, dict):
        raise TypeError(f"polys: expected a dict with 'dist', 'points' and 'rays' (or 'rays_vertices' and "
                        f"'rays_faces'), as StarDist3D.predict_instances returns, got {type(polys).__name__}")
    missing = [k for k in ("dist", "points") if k not in polys]
    if missing:
        raise ValueError(f"polys: missing key(s) {missing}")
    if "rays_vertices" in polys and "rays_faces" in polys:  # StarDist's keys first, as its exporter reads them
        verts, faces = _vertices(polys["rays_vertices"], "polys['rays_vertices']"), np.asarray(polys["rays_faces"])
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"polys['rays_faces']: expected integer (n_faces, 3), got {faces.dtype} {faces.shape}")
    elif "rays" in polys:
        rays = polys["rays"]
        rays = rays_from_json(rays) if isinstance(rays, (dict, str)) else rays
        verts, faces = _rays_arrays(rays, "polys['rays']")
    else:
        raise ValueError("polys: needs 'rays' (a Rays object) or 'rays_vertices' and 'rays_faces'")
    return dist_to_coord3d(polys["dist"], polys["points"], verts), verts, faces.astype(np.int64)


def export_to_obj_file3d(polys, fname=None, scale=1, single_mesh=True, uv_map=False, name="poly"):
    """Wavefront OBJ text of the polyhedra in ``polys`` (StarDist's ``export_to_obj_file3D``); written to ``fname``
    if given, and returned.

    ``polys``: a dict with ``dist`` (m, n_rays), ``points`` (m, 3) and ``rays`` (a Rays object or its json) or
    StarDist's ``rays_vertices`` and ``rays_faces`` (StarDist3D.predict_instances' details). ``scale``: the voxel
    size (z, y, x) (or one number) the coordinates are multiplied by.

    StarDist's layout: an ``o {name}_{i}`` line before the first polyhedron (``single_mesh``) or before each;
    per polyhedron its n_rays vertices ``v x y z`` (x first) with ``max(1, int(1 - log10(min(scale))))`` decimals,
    with ``uv_map`` n_rays texture coordinates ``vt u v`` (a spherical map of the scaled rays), then its faces
    (1-based, counting every vertex written before). With ``uv_map`` the output is StarDist's character for
    character given the same float64 arrays (faces ``f a/a b/b c/c``; StarDist computes float32 input in float32,
    which can move a printed last digit); without it the faces are plain ``f a b c``, where StarDist writes
    ``a/a`` references to texture coordinates it did not write (invalid OBJ) -- the same mesh otherwise.
    """
    coord, verts, faces = _polys_arrays(polys)
    if isinstance(scale, numbers.Number):
        scale = (scale,) * 3
    scale = _scale(scale)
    coord = coord * scale
    decimals = int(max(1, 1 - np.log10(np.min(scale))))
    vline = f"v {{:.{decimals}f}} {{:.{decimals}f}} {{:.{decimals}f}}\n"
    uv = ""
    if uv_map:
        sv = scale * verts
        sv /= np.linalg.norm(sv, axis=1, keepdims=True)
        u = 1 - (0.5 + 0.5 * np.arctan2(sv[:, 0], sv[:, 2]) / np.pi)
        w = 1 - (0.5 - np.arcsin(sv[:, 1]) / np.pi)
        uv = "".join(f"vt {a:.4f} {b:.4f}\n" for a, b in zip(u, w))
    fline = "f {0}/{0} {1}/{1} {2}/{2}\n" if uv_map else "f {0} {1} {2}\n"
    parts = []
    for i, xs in enumerate(coord):
        if i == 0 or not single_mesh:
            parts.append(f"o {name}_{i:d}\n")
        parts.extend(vline.format(x, y, z) for z, y, x in xs)
        parts.append(uv)
        parts.extend(fline.format(*f) for f in (faces + 1 + i * len(verts)).tolist())
    text = "".join(parts)
    if fname is not None:
        with open(fname, "w") as fh:
            fh.write(text)
    return text


def _scale(scale):
    try:
        s = np.asarray(scale, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"scale: expected a number or 3 numbers (z, y, x), got {scale!r}") from None
    if s.shape != (3,) or not np.all(np.isfinite(s)) or not np.all(s > 0):
        raise ValueError(f"scale: expected a positive number or 3 positive numbers (z, y, x), got {scale!r}")
    return s


export_to_obj_file3D = export_to_obj_file3d
