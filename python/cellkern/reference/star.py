"""Slow, obviously-correct NumPy/SciPy oracles for star-convex polygons (StarDist semantics).

The fast C++/CUDA kernels in ``csrc/ops/star`` and ``cellkern.star`` are tested against these functions.
They follow StarDist 0.9.2 (``stardist.geometry``, ``stardist.nms``, ``stardist.matching``); where we
deliberately differ (exact polygon overlap in NMS, float64 matching scores) the docstring says so.

Conventions (StarDist's, all 2D coordinates are (row, col) = (y, x)):

* ray k of ``n_rays`` has angle ``phi_k = 2*pi*k/n_rays``; its unit step is ``(sin phi_k, cos phi_k)`` in
  (row, col), i.e. k = 0 points along +col, and k = n_rays/4 along +row.
* a polygon is ``(dist (n_rays,), point (2,))``; its vertices are ``point + dist[k] * (sin phi_k, cos phi_k)``,
  stored as ``coord (2, n_rays)`` (row 0: rows, row 1: cols).
* label images: 0 is background, objects are positive integers.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = [
    "ray_angles",
    "star_dist_ref",
    "star_dist3d_ref",
    "rays_golden_spiral",
    "dist_to_coord_ref",
    "polygon_area",
    "star_polygon_intersection_area",
    "polygons_to_label_ref",
    "non_maximum_suppression_ref",
    "edt_prob_ref",
    "MatchingStats",
    "matching_ref",
    "matching_dataset_ref",
]


# ----------------------------------------------------------------------------------------------------------
# helpers


def _normalize_grid(grid, ndim: int) -> tuple:
    grid = (grid,) * ndim if np.isscalar(grid) else tuple(grid)
    if len(grid) != ndim or not all(int(g) == g and g >= 1 for g in grid):
        raise ValueError(f"grid must be {ndim} positive integers, got {grid!r}")
    return tuple(int(g) for g in grid)


def ray_angles(n_rays: int) -> np.ndarray:
    """Ray angles ``2*pi*k/n_rays`` (float64), exactly as ``np.linspace(0, 2pi, n, endpoint=False)``."""
    return np.linspace(0, 2 * np.pi, n_rays, endpoint=False)


def _check_labels(labels, ndim: int) -> np.ndarray:
    lbl = np.asarray(labels)
    if lbl.ndim != ndim or not np.issubdtype(lbl.dtype, np.integer):
        raise ValueError(f"labels must be a {ndim}D integer array, got {lbl.dtype} {lbl.shape}")
    if lbl.size and lbl.min() < 0:
        raise ValueError("labels must be non-negative")
    return lbl


# ----------------------------------------------------------------------------------------------------------
# star distances (ray marching)


def star_dist_ref(labels, n_rays: int = 32, grid=(1, 1)) -> np.ndarray:
    """Distance from each (grid-subsampled) pixel to its object's boundary along ``n_rays`` rays.

    Returns float32 ``((H-1)//gy+1, (W-1)//gx+1, n_rays)``; background pixels get 0.

    StarDist's exact stepping (``c_star_dist`` in stardist2d.cpp / the OpenCL kernel), reproduced in float32:

    * ``st = float32(2*pi / n_rays)`` (double division, rounded once), ``phi = float32(k) * st`` in float32,
      unit step ``(sr, sc) = (sin phi, cos phi)`` correctly rounded to float32 (computed in float64 here).
      StarDist calls glibc ``sinf``/``cosf``, which are off by one ulp for a few angles (e.g. ray 3 of 64,
      5 of 96, 6 of 128); for those rays its distances differ from ours by <= ~5e-7, all else is bit-identical.
      Fast kernels should take this float32 step table from the host rather than call sinf/cosf themselves.
    * start at offset (0, 0); repeat ``r += sr; c += sc`` (float32 accumulation, not ``n * step``) and look at
      pixel ``(rint(i*gy + r), rint(j*gx + c))`` (``lrint``: round half to even). Stop at the first position
      that is outside the image or has a different label (background, or another object).
    * sub-step correction for the overshoot: ``t = 0.5 / max(|sr|, |sc|)``, ``r += (t - 1) * sr`` (same for
      c), and the distance is ``sqrt(r*r + c*c)`` in float32. So a ray that leaves after m unit steps reports
      ``m - 1 + t``: e.g. for an axis-aligned ray it is the distance from the pixel centre to the edge of the
      last object pixel (``m - 0.5``).

    Difference to StarDist: StarDist casts labels to uint16 (ids above 65535 wrap around); we compare the
    labels as given.
    """
    lbl = _check_labels(labels, 2)
    if int(n_rays) < 3:
        raise ValueError("need n_rays >= 3")
    n_rays = int(n_rays)
    gy, gx = _normalize_grid(grid, 2)
    H, W = lbl.shape
    out = np.zeros(((H - 1) // gy + 1, (W - 1) // gx + 1, n_rays), np.float32)
    if lbl.size == 0:
        return out

    # origins of the output grid and their labels; only object pixels march
    oi, oj = np.nonzero(lbl[::gy, ::gx])
    oy = (oi * gy).astype(np.float32)  # int -> float, as C++ does in `i*grid_y + x`
    ox = (oj * gx).astype(np.float32)
    value = lbl[oi * gy, oj * gx]

    st = np.float32(2 * np.pi / n_rays)
    one, half = np.float32(1), np.float32(0.5)
    for k in range(n_rays):
        phi = np.float32(k) * st
        sr = np.float32(np.sin(np.float64(phi)))
        sc = np.float32(np.cos(np.float64(phi)))
        t_corr = half / max(abs(sr), abs(sc))
        # march all origins of this ray together; `idx` are the ones still inside their object
        idx = np.arange(len(value))
        r = np.zeros(len(value), np.float32)
        c = np.zeros(len(value), np.float32)
        while idx.size:
            r[idx] += sr
            c[idx] += sc
            ii = np.rint(oy[idx] + r[idx]).astype(np.int64)
            jj = np.rint(ox[idx] + c[idx]).astype(np.int64)
            inside = (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W)
            same = np.zeros_like(inside)
            same[inside] = lbl[ii[inside], jj[inside]] == value[idx[inside]]
            stop = idx[~same]
            rs = r[stop] + (t_corr - one) * sr
            cs = c[stop] + (t_corr - one) * sc
            out[oi[stop], oj[stop], k] = np.sqrt(rs * rs + cs * cs)
            idx = idx[same]
    return out


def rays_golden_spiral(n: int = 70, anisotropy=None) -> np.ndarray:
    """Unit ray directions ``(n, 3)`` float32 in (z, y, x) order on a golden spiral (StarDist's Rays_GoldenSpiral).

    Vertex i: ``z = linspace(-1, 1, n)[i]``, ``rho = sqrt(1 - z^2)``, ``phi = i * (3 - sqrt 5) * pi``,
    direction ``(z, rho sin phi, rho cos phi)``, divided by ``anisotropy`` (z, y, x) if given and normalised.
    The first and last rays point along -z and +z.
    """
    n = int(n)
    if n < 4:
        raise ValueError("need n >= 4 rays")
    golden = (3.0 - np.sqrt(5.0)) * np.pi
    phi = golden * np.arange(n)
    z = np.linspace(-1, 1, n)
    rho = np.sqrt(1.0 - z**2)
    verts = np.stack([z, rho * np.sin(phi), rho * np.cos(phi)], axis=1)
    if anisotropy is not None:
        verts = verts / np.asarray(anisotropy, np.float64)
    verts = verts / np.linalg.norm(verts, axis=1, keepdims=True)
    return verts.astype(np.float32)


def star_dist3d_ref(labels, rays, grid=(1, 1, 1)) -> np.ndarray:
    """3D star distances ``((D-1)//gz+1, (H-1)//gy+1, (W-1)//gx+1, n_rays)`` float32 along unit ``rays`` (z,y,x).

    ``rays``: an ``(n_rays, 3)`` array (e.g. :func:`rays_golden_spiral`) or an object with ``.vertices``.

    StarDist's 3D convention (``c_star_dist3d`` in stardist3d.cpp) differs from 2D: float32 offsets
    ``(z, y, x) += ray`` are accumulated until ``rint(origin + offset)`` leaves the image or the object, and
    the distance is the length of the *rounded* offset, ``sqrt(rint(z)^2 + rint(y)^2 + rint(x)^2)`` -- the
    integer offset of the first voxel outside, with no sub-step correction. So an axis-aligned ray in an
    object whose last voxel is m voxels away reports m + 1 (2D would report m + 0.5).
    """
    lbl = _check_labels(labels, 3)
    verts = np.asarray(getattr(rays, "vertices", rays), np.float32)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError("rays must be (n_rays, 3) in (z, y, x) order")
    gz, gy, gx = _normalize_grid(grid, 3)
    shape = lbl.shape
    out_shape = tuple((s - 1) // g + 1 for s, g in zip(shape, (gz, gy, gx)))
    out = np.zeros(out_shape + (len(verts),), np.float32)
    if lbl.size == 0:
        return out

    o = np.nonzero(lbl[::gz, ::gy, ::gx])
    origin = [(oc * g).astype(np.float32) for oc, g in zip(o, (gz, gy, gx))]
    value = lbl[o[0] * gz, o[1] * gy, o[2] * gx]
    for n, step in enumerate(verts):
        idx = np.arange(len(value))
        pos = np.zeros((3, len(value)), np.float32)
        while idx.size:
            pos[:, idx] += step[:, None]
            vox = [np.rint(origin[a][idx] + pos[a, idx]).astype(np.int64) for a in range(3)]
            inside = np.ones(idx.size, bool)
            for a in range(3):
                inside &= (vox[a] >= 0) & (vox[a] < shape[a])
            same = np.zeros_like(inside)
            same[inside] = lbl[tuple(v[inside] for v in vox)] == value[idx[inside]]
            stop = idx[~same]
            d2 = (np.rint(pos[:, stop]).astype(np.int64) ** 2).sum(axis=0)
            out[o[0][stop], o[1][stop], o[2][stop], n] = np.sqrt(d2.astype(np.float64)).astype(np.float32)
            idx = idx[same]
    return out


# ----------------------------------------------------------------------------------------------------------
# polygons


def dist_to_coord_ref(dist, points, scale_dist=(1, 1)) -> np.ndarray:
    """Polygon vertices ``(n_polys, 2, n_rays)`` float32 from ``dist (n_polys, n_rays)`` and ``points (n_polys, 2)``.

    ``coord[i, 0, k] = points[i, 0] + dist[i, k] * sin(phi_k) * scale_dist[0]`` (rows) and
    ``coord[i, 1, k] = points[i, 1] + dist[i, k] * cos(phi_k) * scale_dist[1]`` (cols).

    The float32 rounding steps are StarDist's (offset rounded to float32, then scaled and rounded, then the
    centre added and rounded), so vertices are bit-identical and rasterisation agrees pixel for pixel.
    """
    dist = np.asarray(dist)
    points = np.asarray(points)
    if dist.ndim != 2 or points.ndim != 2 or points.shape[1] != 2 or len(dist) != len(points):
        raise ValueError("need dist (n_polys, n_rays) and points (n_polys, 2)")
    phis = ray_angles(dist.shape[1])
    trig = np.stack([np.sin(phis), np.cos(phis)])  # (2, n_rays) float64
    offset = (dist[:, None, :] * trig).astype(np.float32)
    scale = np.asarray(scale_dist).reshape(1, 2, 1)
    offset = (offset * scale).astype(np.float32)  # StarDist: `coord *= scale` in place on float32
    return (offset + points[:, :, None]).astype(np.float32)  # StarDist: `coord += points` in place


def polygon_area(coord) -> np.ndarray:
    """Area (float64, shoelace formula, unsigned) of polygon(s) with vertices ``coord (..., 2, n_vertices)``."""
    c = np.asarray(coord, np.float64)
    y, x = c[..., 0, :], c[..., 1, :]
    return 0.5 * np.abs(np.sum(y * np.roll(x, -1, axis=-1) - x * np.roll(y, -1, axis=-1), axis=-1))


def _fan_triangles(dist, point) -> np.ndarray:
    """The n triangles (centre, v_k, v_k+1) of a star-convex polygon as ``(n, 3, 2)`` float64 (row, col).

    The rays are ordered by angle and each sector spans 2*pi/n < pi, so the triangles are convex, have
    disjoint interiors and their union is the polygon: area(A and B) = sum over pairs of triangle overlaps.
    """
    d = np.asarray(dist, np.float64)
    phis = ray_angles(len(d))
    v = np.asarray(point, np.float64)[None, :] + d[:, None] * np.stack([np.sin(phis), np.cos(phis)], axis=1)
    centre = np.broadcast_to(np.asarray(point, np.float64), v.shape)
    return np.stack([centre, v, np.roll(v, -1, axis=0)], axis=1)


def _triangle_pair_areas(ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """Exact intersection areas of triangle pairs ``ta[p]``, ``tb[p]`` (each ``(P, 3, 2)``, (row, col)), float64.

    The intersection of two convex polygons is the convex polygon whose vertices are (a) vertices of one
    inside (or on) the other and (b) crossings of an edge of one with an edge of the other. Collect these
    (at most 3 + 3 + 9 points), sort them by angle around their mean and apply the shoelace formula.

    Robustness: the tests are inclusive with a tolerance of ``1e-10 * (1 + max |coordinate|)`` pixels. A
    vertex lying exactly on the other triangle's edge (common: fans share centres, rays are axis-aligned)
    may test as outside by rounding, and dropping it would lose real area; including a point that is
    within the tolerance of both triangles moves the area by at most ~tolerance x perimeter. Duplicate
    points (a vertex on an edge is found twice) only add zero-length edges. Zero-area triangles give 0.
    """
    P = len(ta)
    ay, ax, by, bx = ta[..., 0], ta[..., 1], tb[..., 0], tb[..., 1]  # (P, 3) each
    tol = 1e-10 * (1.0 + np.maximum(np.abs(ta).max(axis=(1, 2)), np.abs(tb).max(axis=(1, 2))))  # (P,) pixels

    def edges(ty, tx):
        ey, ex = np.roll(ty, -1, axis=1) - ty, np.roll(tx, -1, axis=1) - tx  # edge e: t[e] -> t[e+1]
        return ey, ex, np.maximum(np.hypot(ey, ex), 1e-300)

    def inside(qy, qx, ty, tx):
        """(P, 3): is point q[:, n] in triangle t, up to `tol` -- signed distances to all edges of one sign?"""
        ey, ex, el = edges(ty, tx)
        dist = (ex[:, None, :] * (qy[:, :, None] - ty[:, None, :])
                - ey[:, None, :] * (qx[:, :, None] - tx[:, None, :])) / el[:, None, :]
        t = tol[:, None, None]
        return np.all(dist >= -t, axis=2) | np.all(dist <= t, axis=2)

    # edge crossings: edge i of a (p + t r) against edge j of b (q + u s), all 3 x 3 at once
    ry, rx, rl = (e[:, :, None] for e in edges(ay, ax))
    sy, sx, sl = (e[:, None, :] for e in edges(by, bx))
    wy, wx = by[:, None, :] - ay[:, :, None], bx[:, None, :] - ax[:, :, None]  # q - p
    den = ry * sx - rx * sy
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = (wy * sx - wx * sy) / den
        u = (wy * rx - wx * ry) / den
        tt, tu = tol[:, None, None] / rl, tol[:, None, None] / sl  # tolerance in units of each edge
        # Parallel edges have no crossing of their own: the points they share are vertices of one triangle on
        # the other, collected in (a). Nearly parallel ones must be skipped too, not only den == 0: two collinear
        # edges whose float64 directions differ in the last bit give |den| ~ 1e-16 and a crossing anywhere on the
        # line, possibly outside both triangles (found by the NMS tests: a fan centre on the other fan's edge).
        parallel = np.abs(den) <= 1e-12 * rl * sl
        hit = (t >= -tt) & (t <= 1 + tt) & (u >= -tu) & (u <= 1 + tu) & ~parallel
        cy = np.where(hit, ay[:, :, None] + t * ry, 0.0).reshape(P, 9)
        cx = np.where(hit, ax[:, :, None] + t * rx, 0.0).reshape(P, 9)

    py = np.concatenate([ay, by, cy], axis=1)  # (P, 15)
    px = np.concatenate([ax, bx, cx], axis=1)
    ok = np.concatenate([inside(ay, ax, by, bx), inside(by, bx, ay, ax), hit.reshape(P, 9)], axis=1)
    py, px = np.where(ok, py, 0.0), np.where(ok, px, 0.0)

    count = ok.sum(axis=1)
    n = np.maximum(count, 1)
    my, mx = py.sum(axis=1) / n, px.sum(axis=1) / n
    ang = np.where(ok, np.arctan2(py - my[:, None], px - mx[:, None]), np.inf)  # unused slots sort last ...
    flat = np.argsort(ang, axis=1) + 15 * np.arange(P)[:, None]
    py, px = py.ravel()[flat], px.ravel()[flat]
    used = np.arange(15)[None, :] < count[:, None]
    last = np.maximum(count - 1, 0) + 15 * np.arange(P)
    py = np.where(used, py, py.ravel()[last][:, None])  # ... and repeat the last point
    px = np.where(used, px, px.ravel()[last][:, None])
    area = 0.5 * np.abs(np.sum(px * np.roll(py, -1, axis=1) - py * np.roll(px, -1, axis=1), axis=1))

    def tri_area(ty, tx):
        return np.abs((ty[:, 1] - ty[:, 0]) * (tx[:, 2] - tx[:, 0]) - (tx[:, 1] - tx[:, 0]) * (ty[:, 2] - ty[:, 0]))

    area[(count < 3) | (tri_area(ay, ax) == 0) | (tri_area(by, bx) == 0)] = 0.0
    return area


def _intersection_areas_one_to_many(tri_a: np.ndarray, tris_b: np.ndarray, chunk: int = 60000) -> np.ndarray:
    """Exact area(A and B_j) for one fan ``tri_a (n, 3, 2)`` against fans ``tris_b (J, m, 3, 2)``."""
    J = len(tris_b)
    lo_a, hi_a = tri_a.min(axis=1), tri_a.max(axis=1)  # (n, 2)
    lo_b, hi_b = tris_b.min(axis=2), tris_b.max(axis=2)  # (J, m, 2)
    # only triangle pairs whose bounding boxes touch can overlap
    touch = np.all((lo_a[None, :, None] <= hi_b[:, None, :]) & (lo_b[:, None, :] <= hi_a[None, :, None]), axis=-1)
    jj, ka, kb = np.nonzero(touch)  # (J, n, m) pair list
    area = np.zeros(J)
    for s in range(0, len(jj), chunk):
        sl = slice(s, s + chunk)
        pair = _triangle_pair_areas(tri_a[ka[sl]], tris_b[jj[sl], kb[sl]])
        area += np.bincount(jj[sl], weights=pair, minlength=J)
    return area


def star_polygon_intersection_area(dist_a, point_a, dist_b, point_b) -> float:
    """Exact (float64) area of the intersection of two star-convex polygons given as (dist, centre).

    Both polygons are split into their fans of triangles around their centres and every pair of
    (convex) triangles is intersected exactly; see :func:`_triangle_pair_areas`.
    """
    tri_a = _fan_triangles(dist_a, point_a)
    tri_b = _fan_triangles(dist_b, point_b)
    return float(_intersection_areas_one_to_many(tri_a, tri_b[None])[0])


def _rasterize_polygon(rows: np.ndarray, cols: np.ndarray, shape) -> tuple:
    """Pixels ``(rr, cc)`` whose centres are inside or on a polygon: ``skimage.draw.polygon``'s rule.

    skimage (>= 0.16) uses O'Rourke's crossing test ("Computational Geometry in C", ch. 7), re-implemented
    here: shift the polygon so the pixel centre is the origin; an edge (prev -> cur) whose end rows straddle
    0 as ``(y > 0)`` differ crosses the +col half-line when ``(x_cur*y_prev - x_prev*y_cur) / (y_prev - y_cur)
    > 0``, and an edge whose end rows straddle 0 as ``(y < 0)`` differ crosses the -col half-line when that
    value is < 0. The centre is inside when the number of right crossings is odd, on an edge when the left
    and right parities differ, and on a vertex when within 1e-12 of one; all three are drawn (the polygon
    is closed). Arithmetic in float64, in skimage's order. Only rows in
    ``[max(0, int(min r)), min(H-1, ceil(max r))]`` (likewise cols) are tested, so nothing outside is returned.
    """
    r = np.asarray(rows, np.float64)
    c = np.asarray(cols, np.float64)
    r0, r1 = int(max(0, r.min())), min(shape[0] - 1, int(np.ceil(r.max())))
    c0, c1 = int(max(0, c.min())), min(shape[1] - 1, int(np.ceil(c.max())))
    if r1 < r0 or c1 < c0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    py = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    px = np.arange(c0, c1 + 1, dtype=np.float64)[None, :]
    eps = 1e-12
    on_vertex = np.zeros((py.shape[0], px.shape[1]), bool)
    right = np.zeros_like(on_vertex)  # parity of crossings of the +col half-line
    left = np.zeros_like(on_vertex)  # parity of crossings of the -col half-line
    x1, y1 = c[-1] - px, r[-1] - py  # previous vertex, relative to the pixel centre
    for i in range(len(r)):
        x0, y0 = c[i] - px, r[i] - py
        on_vertex |= (-eps < x0) & (x0 < eps) & (-eps < y0) & (y0 < eps)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = (x0 * y1 - x1 * y0) / (y1 - y0)  # only used where the edge straddles, so y1 != y0
        right ^= ((y0 > 0) != (y1 > 0)) & (xcross > 0)
        left ^= ((y0 < 0) != (y1 < 0)) & (xcross < 0)
        x1, y1 = x0, y0
    rr, cc = np.nonzero(on_vertex | right | (right != left))
    return rr + r0, cc + c0


def polygons_to_label_ref(dist, points, shape, prob=None, thresh=-np.inf, scale_dist=(1, 1)) -> np.ndarray:
    """Rasterise star-convex polygons into an int32 label image of ``shape`` (StarDist's ``polygons_to_label``).

    * polygons with ``prob > thresh`` are kept (strict); ``prob=None`` means all are kept, in the given order;
    * the i-th *kept* polygon (in the given order) gets label ``i + 1`` -- labels follow the input order, not
      the probability order;
    * polygons are painted in ascending probability (stable sort, so equal probabilities paint in input
      order) and later ones overwrite earlier ones: the highest probability wins on overlap;
    * a pixel belongs to a polygon if its centre is inside or on the boundary (``skimage.draw.polygon``'s
      rule, see :func:`_rasterize_polygon`), using the float32 vertices of :func:`dist_to_coord_ref`.
    Labels may be missing from the output when a polygon is completely painted over or has no pixel centre.
    """
    dist = np.asarray(dist)
    points = np.asarray(points)
    if dist.ndim != 2 or points.ndim != 2 or points.shape[1] != 2 or len(dist) != len(points):
        raise ValueError("need dist (n_polys, n_rays) and points (n_polys, 2)")
    prob = np.full(len(points), np.inf) if prob is None else np.asarray(prob)
    if prob.shape != (len(points),):
        raise ValueError("prob must be (n_polys,)")
    keep = prob > thresh
    dist, points, prob = dist[keep], points[keep], prob[keep]
    lbl = np.zeros(tuple(shape), np.int32)
    if len(dist) == 0:
        return lbl
    coord = dist_to_coord_ref(dist, points, scale_dist=scale_dist)
    for i in np.argsort(prob, kind="stable"):
        rr, cc = _rasterize_polygon(coord[i, 0], coord[i, 1], lbl.shape)
        lbl[rr, cc] = i + 1
    return lbl


# ----------------------------------------------------------------------------------------------------------
# non-maximum suppression


def _border_slices(b, ndim: int) -> tuple:
    """StarDist's candidate border: ``b`` cells excluded on each side (int, or per axis (before, after))."""
    if b is None:
        return (slice(None),) * ndim
    if np.isscalar(b):
        b = ((int(b), int(b)),) * ndim
    return tuple(slice(lo if lo > 0 else None, -hi if hi > 0 else None) for lo, hi in b)


def non_maximum_suppression_ref(dist, prob, grid=(1, 1), b=2, nms_thresh=0.4, prob_thresh=0.5,
                                criterion="smaller"):
    """Greedy NMS of star-convex polygons with exact overlaps. Returns ``(points, probs, dists)``.

    * ``dist (Ny, Nx, n_rays)`` and ``prob (Ny, Nx)`` live on the prediction grid; candidate cells have
      ``prob > prob_thresh`` and are at least ``b`` cells from the border (``b`` an int, ``None``, or
      ``((top, bottom), (left, right))``, as StarDist's ``_ind_prob_thresh``).
    * candidates are sorted by prob, descending, with a *stable* sort: equal probabilities keep raster
      (row-major) order, so the earlier cell wins a tie. (StarDist uses ``np.argsort(scores)[::-1]``, an
      unstable sort reversed: its tie order is unspecified.)
    * each candidate that is not suppressed yet is kept and suppresses every later candidate j with
      ``overlap(i, j) > nms_thresh``, where overlap is ``area(i and j) / min(area_i, area_j)``
      (``criterion='smaller'``, StarDist's rule) or ``area(i and j) / area(i or j)`` (``'iou'``).
      A pair where either polygon has zero area has overlap 0. Negative distances count as 0.
    * areas are exact in float64: polygon centre at ``grid * cell index`` (pixels), vertices
      ``centre + d_k (sin phi_k, cos phi_k)`` in float64, intersections via fans of triangles
      (:func:`star_polygon_intersection_area`). Only pairs whose circumscribed circles (radius max d) meet
      are examined -- a pruning that cannot change the result.

    Returned arrays are in the kept (descending prob) order: ``points (N, 2)`` int pixel coordinates
    (cell index * grid), ``probs (N,)`` and ``dists (N, n_rays)`` as given.

    Difference to StarDist (``c_non_max_suppression_inds`` in stardist2d.cpp): StarDist computes the vertices
    in float32, *truncates them to integers* (``ClipperLib::IntPoint``), computes areas of these integer
    polygons and their intersection with the Clipper library (whose intersection vertices are again
    rounded to integers), in float32, with ``overlap = inter / min(area_i + 1e-10, area_j + 1e-10)``.
    Its overlaps are therefore off by up to about (perimeter x 1 px) / area, so pairs near ``nms_thresh``
    can be decided differently; this oracle is the exact one.
    """
    dist = np.asarray(dist)
    prob = np.asarray(prob)
    if prob.ndim != 2 or dist.ndim != 3 or dist.shape[:2] != prob.shape:
        raise ValueError("need prob (Ny, Nx) and dist (Ny, Nx, n_rays)")
    if criterion not in ("smaller", "iou"):
        raise ValueError("criterion must be 'smaller' or 'iou'")
    grid = _normalize_grid(grid, 2)
    n_rays = dist.shape[-1]

    mask = prob > prob_thresh
    border = np.zeros_like(mask)
    border[_border_slices(b, 2)] = True
    mask &= border
    cells = np.argwhere(mask)  # row-major order
    scores = prob[mask]
    dists = dist[mask]
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    cells, scores, dists = cells[order], scores[order], dists[order]
    points = cells * np.asarray(grid)[None, :]

    n = len(points)
    geom = np.maximum(dists.astype(np.float64), 0)  # a negative distance counts as 0 (as StarDist's NMS)
    fans = np.stack([_fan_triangles(d, p) for d, p in zip(geom, points)]) if n else np.zeros((0, n_rays, 3, 2))
    phis = ray_angles(n_rays)
    verts = points[:, :, None] + geom[:, None, :] * np.stack([np.sin(phis), np.cos(phis)])
    areas = polygon_area(verts)
    radius = geom.max(axis=1) if n else np.zeros(0)

    suppressed = np.zeros(n, bool)
    for i in range(n):
        if suppressed[i]:
            continue
        j = np.arange(i + 1, n)
        j = j[~suppressed[j]]
        near = np.hypot(*(points[j] - points[i]).T) <= radius[i] + radius[j]
        j = j[near]
        if j.size == 0:
            continue
        inter = _intersection_areas_one_to_many(fans[i], fans[j])
        if criterion == "smaller":
            denom = np.minimum(areas[i], areas[j])
        else:
            denom = areas[i] + areas[j] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = np.where(np.minimum(areas[i], areas[j]) > 0, inter / denom, 0.0)
        suppressed[j[overlap > nms_thresh]] = True

    keep = ~suppressed
    return points[keep], scores[keep], dists[keep]


def edt_prob_ref(labels) -> np.ndarray:
    """Per-object normalised Euclidean distance transform (float32), StarDist's ``edt_prob`` (scipy variant).

    Inside object l: distance to the nearest pixel that is not l, divided by the object's maximum (+1e-10);
    0 on background. The image border is *not* treated as background (StarDist's scipy path). Needs scipy.
    """
    from scipy.ndimage import distance_transform_edt, find_objects  # scipy is optional for cellkern

    lbl = np.asarray(labels)
    prob = np.zeros(lbl.shape, np.float32)
    for obj, sl in enumerate(find_objects(lbl), 1):
        if sl is None:
            continue
        # grow the box by one pixel on sides that are not the image border, so the object is surrounded
        grow = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(sl, lbl.shape))
        m = lbl[grow] == obj
        d = distance_transform_edt(m)
        d = d / (d[m].max() + 1e-10)
        prob[grow][m] = d[m]
    return prob


# ----------------------------------------------------------------------------------------------------------
# matching metrics


class MatchingStats(NamedTuple):
    """Matching metrics between a ground-truth and a predicted label image (StarDist's ``Matching``)."""

    criterion: str
    thresh: float
    fp: int
    tp: int
    fn: int
    precision: float
    recall: float
    accuracy: float
    f1: float
    n_true: int
    n_pred: int
    mean_true_score: float
    mean_matched_score: float
    panoptic_quality: float


def _relabel_sequential(y: np.ndarray) -> tuple:
    """Map the labels of ``y`` to 0..K (0 stays 0); returns (relabelled, K)."""
    ids, inv = np.unique(y, return_inverse=True)
    if ids.size and ids[0] == 0:
        return inv.reshape(y.shape), len(ids) - 1
    return inv.reshape(y.shape) + 1, len(ids)


def _score_matrix(y_true, y_pred, criterion: str) -> np.ndarray:
    """(n_true, n_pred) float64 matrix of IoU / intersection-over-true / intersection-over-pred."""
    t, nt = _relabel_sequential(np.asarray(y_true))
    p, npred = _relabel_sequential(np.asarray(y_pred))
    overlap = np.bincount((t * (npred + 1) + p).ravel(), minlength=(nt + 1) * (npred + 1))
    overlap = overlap.reshape(nt + 1, npred + 1).astype(np.float64)
    size_true = overlap.sum(axis=1, keepdims=True)
    size_pred = overlap.sum(axis=0, keepdims=True)
    if criterion == "iou":
        denom = size_true + size_pred - overlap
    elif criterion == "iot":
        denom = np.broadcast_to(size_true, overlap.shape)
    elif criterion == "iop":
        denom = np.broadcast_to(size_pred, overlap.shape)
    else:
        raise ValueError(f"unknown criterion {criterion!r} (iou, iot, iop)")
    scores = np.divide(overlap, denom, out=np.zeros_like(overlap), where=denom > 0)
    return scores[1:, 1:]


def _ratio(a, b) -> float:
    return float(a) / float(b) if b > 0 else 0.0


def _stats(criterion, thresh, tp, n_true, n_pred, sum_matched) -> MatchingStats:
    fp, fn = n_pred - tp, n_true - tp
    # StarDist: precision/recall/accuracy/f1 are 0 when tp == 0
    return MatchingStats(
        criterion=criterion, thresh=thresh, fp=int(fp), tp=int(tp), fn=int(fn),
        precision=_ratio(tp, tp + fp) if tp > 0 else 0.0,
        recall=_ratio(tp, tp + fn) if tp > 0 else 0.0,
        accuracy=_ratio(tp, tp + fp + fn) if tp > 0 else 0.0,
        f1=_ratio(2 * tp, 2 * tp + fp + fn) if tp > 0 else 0.0,
        n_true=int(n_true), n_pred=int(n_pred),
        mean_true_score=_ratio(sum_matched, n_true),
        mean_matched_score=_ratio(sum_matched, tp),
        panoptic_quality=_ratio(sum_matched, tp + fp / 2 + fn / 2),
    )


def _match(scores: np.ndarray, thresh: float) -> tuple:
    """(tp, sum of matched scores) of the optimal one-to-one assignment at ``thresh``.

    StarDist's cost: maximise the number of pairs with score >= thresh first, then their total score
    (``cost = -(score >= thresh) - score / (2 * n_matched)``; the second term sums to < 1).
    """
    from scipy.optimize import linear_sum_assignment  # scipy is optional for cellkern

    n_true, n_pred = scores.shape
    n_matched = min(n_true, n_pred)
    if n_matched == 0:
        return 0, 0.0
    cost = -(scores >= thresh).astype(np.float64) - scores / (2 * n_matched)
    ti, pi = linear_sum_assignment(cost)
    s = scores[ti, pi]
    ok = s >= thresh
    return int(np.count_nonzero(ok)), float(np.sum(s[ok]))


def matching_ref(y_true, y_pred, thresh=0.5, criterion="iou"):
    """Instance matching metrics between label images (StarDist's ``matching``), optimal assignment (needs scipy).

    ``thresh`` a number -> :class:`MatchingStats`; a sequence -> tuple of them. A pair (true t, pred p)
    can match when ``score(t, p) >= thresh`` (criterion ``'iou'``, ``'iot'`` = inter/true, ``'iop'`` =
    inter/pred); the one-to-one assignment maximises the number of matches, then their total score.
    tp = matches, fp = n_pred - tp, fn = n_true - tp; precision tp/(tp+fp), recall tp/(tp+fn),
    accuracy tp/(tp+fp+fn), f1 2tp/(2tp+fp+fn) (all 0 when tp = 0); mean_matched_score = sum of matched
    scores / tp, mean_true_score = the same / n_true, panoptic_quality = sum / (tp + fp/2 + fn/2).

    Scores are float64 here; StarDist stores them as float32, so a score that equals ``thresh`` exactly
    (e.g. IoU 7/10 at 0.7) can match here and not in StarDist, and the means differ in the ~7th digit.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} have different shapes")
    for y in (y_true, y_pred):
        _check_labels(y, y.ndim)
    scores = _score_matrix(y_true, y_pred, criterion)
    n_true, n_pred = scores.shape

    def single(thr):
        thr = 0.0 if thr is None else float(thr)
        tp, sum_matched = _match(scores, thr)
        return _stats(criterion, thr, tp, n_true, n_pred, sum_matched)

    return single(thresh) if thresh is None or np.isscalar(thresh) else tuple(single(t) for t in thresh)


def matching_dataset_ref(y_true: Sequence, y_pred: Sequence, thresh=0.5, criterion="iou", by_image=False):
    """Matching metrics over a list of image pairs (StarDist's ``matching_dataset``).

    ``by_image=False``: tp, fp, fn, n_true, n_pred and the matched-score sums are added over all images and
    the ratios computed from the totals. ``by_image=True``: counts are still added, but precision, recall,
    accuracy, f1 and the three score means are the average of the per-image values.
    Returns :class:`MatchingStats` (or a tuple of them for a sequence of thresholds).
    """
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred must have the same length")
    threshs = (thresh,) if np.isscalar(thresh) else tuple(thresh)
    scores = [_score_matrix(t, p, criterion) for t, p in zip(y_true, y_pred)]
    results = []
    for thr in threshs:
        thr = float(thr)
        per_image = []  # (tp, n_true, n_pred, sum of matched scores) per image
        for s in scores:
            tp, sum_matched = _match(s, thr)
            per_image.append((tp, s.shape[0], s.shape[1], sum_matched))
        totals = [sum(v) for v in zip(*per_image)] if per_image else [0, 0, 0, 0.0]
        total = _stats(criterion, thr, *totals)
        if by_image and per_image:
            stats = [_stats(criterion, thr, *v) for v in per_image]
            avg = {k: float(np.mean([getattr(m, k) for m in stats])) for k in
                   ("precision", "recall", "accuracy", "f1", "mean_true_score", "mean_matched_score",
                    "panoptic_quality")}
            total = total._replace(**avg)
        results.append(total)
    return results[0] if np.isscalar(thresh) else tuple(results)
