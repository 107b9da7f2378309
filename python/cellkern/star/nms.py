"""Greedy non-maximum suppression of star-convex polygons (StarDist's rule, exact overlaps): on the prediction grid
(CPU and CUDA) and for lists of polygons at arbitrary centres (StarDist's sparse and inds API)."""
from __future__ import annotations

import math
import mmap
import numbers
import time

import numpy as np

from .. import _C
from ..ops import star as _p
from ..ops._common import torch
from ._checks import COORD_MAX_NMS, DIST_MAX_2D, check_range, host_array, prob_threshold, unit_threshold

__all__ = ["non_maximum_suppression", "non_maximum_suppression_sparse", "non_maximum_suppression_inds",
           "last_nms_stats"]

_CRITERIA = {"smaller": 0, "iou": 1}
_last_stats: dict = {}


def last_nms_stats() -> dict:
    """How the last CPU call decided its pairs: pairs examined, decided by bounding boxes, by the centre-axis
    bound, by the radial sweep (exact, or stopped early once decided), or by the triangle-fan fallback."""
    return dict(_last_stats)


def _border(b, ny, nx):
    """StarDist's border: b cells excluded on each side (int, None, or ((top, bottom), (left, right)))."""
    if b is None:
        return 0, ny, 0, nx
    if isinstance(b, numbers.Integral):
        b = ((int(b), int(b)),) * 2
    try:
        (t, bo), (le, ri) = b
        t, bo, le, ri = (int(v) for v in (t, bo, le, ri))
    except (TypeError, ValueError):
        raise ValueError(f"b: expected an int, None or ((top, bottom), (left, right)), got {b!r}") from None
    if min(t, bo, le, ri) < 0:
        raise ValueError(f"b: border widths must be non-negative, got {b!r}")
    return t, ny - bo, le, nx - ri


def _grid2(grid):
    if isinstance(grid, numbers.Integral):
        grid = (int(grid),) * 2
    grid = tuple(grid)
    if len(grid) != 2 or not all(isinstance(g, numbers.Integral) and int(g) >= 1 for g in grid):
        raise ValueError(f"grid: expected 2 positive integers, got {grid!r}")
    return [int(g) for g in grid]


def non_maximum_suppression(dist, prob, grid=(1, 1), b=2, nms_thresh=0.5, prob_thresh=0.5, use_bbox=True,
                            use_kdtree=True, verbose=False, *, criterion="smaller", return_inds=False):
    """Keep the most probable star-convex polygons and drop those overlapping a kept one too much.

    ``dist (Ny, Nx, n_rays)`` and ``prob (Ny, Nx)`` (float32/float64; numpy arrays, or torch tensors on CPU or
    CUDA) live on the prediction grid; cell (i, j) is the polygon centred at pixel ``(i*gy, j*gx)`` with vertices
    ``centre + dist[i, j, k] (sin phi_k, cos phi_k)``, ``phi_k = 2 pi k / n_rays``.

    StarDist's semantics (``stardist.nms.non_maximum_suppression``): candidates are the cells with
    ``prob > prob_thresh`` at least ``b`` cells from the border (``b`` an int, None, or ((top, bottom), (left,
    right))); they are visited in descending probability and each one not yet suppressed is kept and suppresses
    every later candidate j with ``overlap > nms_thresh``, where overlap is ``area(i and j) / min(area_i,
    area_j)`` (``criterion='smaller'``, StarDist's) or ``area(i and j) / area(i or j)`` (``'iou'``).

    The signature is StarDist's: ``nms_thresh`` defaults to 0.5 as there (it was 0.4 before; the models,
    :func:`~cellkern.star.decode` and the big-image prediction pass their own threshold, 0.4 by default, so they
    are unchanged). ``use_bbox`` and ``use_kdtree`` (StarDist's search accelerations) are accepted and ignored:
    the result does not depend on them. ``verbose`` prints the kept count and the time.

    Differences, documented: ties in probability keep raster order (the earlier cell wins; StarDist's order is
    unspecified); overlaps are exact in float64 (StarDist truncates vertices to integers before clipping, so its
    decisions near the threshold can differ); negative distances count as 0; a pair with a zero-area polygon has
    overlap 0. NaN probabilities are never candidates; non-finite distances at a candidate raise ValueError.

    Returns ``(points (N, 2) int64 pixel coordinates, probs (N,), dists (N, n_rays))`` in the kept (descending
    probability) order, as numpy arrays or as torch tensors on the input's device; with ``return_inds`` also the
    flat cell indices (``i * Nx + j``).

    How: candidates gathered and radix-sorted (stable) in C++, per-candidate bounding box / area / circumradius,
    a bucket grid over centres so each kept polygon only visits candidates whose boxes can meet its own, and per
    pair: boxes, then an upper bound from the slab where both polygons' projections on the centre axis overlap,
    then the exact area -- by a radial sweep in O(n) when one centre lies strictly inside the other polygon's
    kernel (the usual case), else through the two fans of triangles. On CUDA, the same pair test decides
    candidates in parallel rounds (a candidate is decided once every higher-ranked candidate that can overlap it
    is), which gives exactly the sequential result.
    """
    t_start = time.perf_counter()
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion: expected 'smaller' or 'iou', got {criterion!r}")
    crit = _CRITERIA[criterion]
    nms_thresh = unit_threshold(nms_thresh, "nms_thresh")
    prob_thresh = prob_threshold(prob_thresh, "prob_thresh")
    grid = _grid2(grid)
    P = _p.as_array(prob, "prob", ndim=2, kind="float")
    D = _p.as_array(dist, "dist", ndim=3, kind="float")
    if tuple(D.shape[:2]) != tuple(P.shape):
        raise ValueError(f"dist: expected shape {tuple(P.shape)} + (n_rays,), got {tuple(D.shape)}")
    if _p.is_torch(P) != _p.is_torch(D) or (_p.is_torch(P) and P.device != D.device):
        raise ValueError("dist and prob must both be numpy arrays or both torch tensors on the same device")
    ny, nx, n_rays = (int(s) for s in D.shape)
    if n_rays < 3:
        raise ValueError(f"dist: need at least 3 rays, got {n_rays}")
    y0, y1, x0, x1 = _border(b, ny, nx)
    on_cuda = _p.is_torch(P) and P.device.type == "cuda"

    if on_cuda:
        cand = _cuda_candidates(P, prob_thresh, y0, y1, x0, x1)
    else:
        Ph = P.numpy() if _p.is_torch(P) else P
        # room for the whole window: one pass counts and gathers; only the pages written are ever mapped
        cand = np.empty(max(0, min(y1, ny) - max(y0, 0)) * max(0, min(x1, nx) - max(x0, 0)), np.int64)
        cand = cand[:_C.star_nms_candidates(Ph, prob_thresh, y0, y1, x0, x1, cand)]
        if _p.is_torch(P):
            cand = torch.from_numpy(cand)
    count = int(cand.shape[0])
    trig = _p.to_device(_p.trig_table(n_rays), D)
    state = _p.new_empty((count,), np.uint8, D)
    emu = _p.emu_for(D)
    if on_cuda or emu:
        ws = (_p.new_empty((ny, nx), np.int32, D), _p.new_empty((count, 8), np.float64, D),
              _p.new_zeros((4,), np.int32, D))
    else:
        ws = (None, None, None)
    host_prob = None if (on_cuda or emu) else (P.numpy() if _p.is_torch(P) else P)
    stats = _C.star_nms(_p.dlp(D), _p.dlp(cand), _p.dlp(trig), grid, nms_thresh, crit, _p.dlp(state),
                        *(_p.dlp(w) if w is not None else None for w in ws), host_prob, [y0, y1, x0, x1], emu,
                        _p.stream_for(D))
    if not (on_cuda or emu):
        _last_stats.clear()
        _last_stats.update(stats)
        _last_stats["candidates"] = count
    keep = cand[state == 1]
    if _p.is_torch(keep):
        points = torch.stack([keep // nx * grid[0], keep % nx * grid[1]], 1)
    else:
        points = np.stack([keep // nx * grid[0], keep % nx * grid[1]], 1).astype(np.int64)
    probs = P.reshape(-1)[keep]
    dists = D.reshape(-1, n_rays)[keep]
    if verbose:
        print(f"keeping {int(keep.shape[0])}/{count} polygons", flush=True)
        print(f"NMS took {time.perf_counter() - t_start:.4f} s", flush=True)
    return (points, probs, dists, keep) if return_inds else (points, probs, dists)


def _cuda_candidates(P, thresh, y0, y1, x0, x1):
    """Candidate cells on the GPU with torch: masked by threshold and border, stable sort by descending prob."""
    ny, nx = P.shape
    mask = torch.zeros_like(P, dtype=torch.bool)
    mask[y0:y1, x0:x1] = P[y0:y1, x0:x1] > (float(np.float32(thresh)) if P.dtype == torch.float32 else thresh)
    cells = torch.nonzero(mask.reshape(-1)).reshape(-1)
    order = torch.sort(P.reshape(-1)[cells], descending=True, stable=True).indices
    return cells[order].contiguous()


# ---- StarDist's sparse API: polygons at arbitrary centres, in a given order --------------------------------------

# Bytes of the dense distance grid the C++ sweep reads through on the lattice path: address space only, since it
# is mapped lazily, in 4 KiB pages, and only the pages of the polygons' cells are ever touched (see _lazy_zeros).
_LATTICE_BYTES = 4 << 30
_LATTICE_BUCKETS = 1 << 22  # buckets of the C++ sweep's grid over the centres (16 bytes each)
_CLIP_CHUNK = 1 << 16       # triangle pairs per vectorised clipping batch on the numpy path


def _real_array(x, name, ndim):
    """x as a numpy array (torch tensors are copied to the host), checked to be real-valued with ndim dims."""
    if not (_p.is_torch(x) or isinstance(x, np.ndarray)) and (
            isinstance(x, (str, bytes)) or not (hasattr(x, "__array__") or isinstance(x, (list, tuple)))):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    x = host_array(x, name)
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"{name}: expected a real (integer or float) array, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {x.shape}")
    return x


def _sparse_polys(dist, points):
    D = _real_array(dist, "dist", 2)
    P = _real_array(points, "points", 2)
    if P.shape[1] != 2:
        raise ValueError(f"points: expected shape (n_polys, 2), got {P.shape}")
    if len(D) != len(P):
        raise ValueError(f"dist and points: {len(D)} and {len(P)} polygons")
    if D.shape[1] < 3:
        raise ValueError(f"dist: need at least 3 rays, got {D.shape[1]}")
    check_range(P, "points", COORD_MAX_NMS, what="centre coordinates")
    check_range(D, "dist", DIST_MAX_2D, what="distances")
    return D, P


def _greedy(D, P, thresh, crit):
    """Greedy NMS in the given order: polygon i is kept unless an earlier kept polygon overlaps it by more than
    thresh (the grid NMS's pair rule: exact float64 areas, negative distances as 0, zero-area pairs overlap 0)."""
    if len(D) == 0:
        return np.zeros(0, bool)
    keep = _greedy_lattice(D, P, thresh, crit)
    return keep if keep is not None else _greedy_numpy(D, P, thresh, crit)


def _greedy_lattice(D, P, thresh, crit):
    """The C++ sweep, when the centres are distinct points of an integer lattice (after an exact power-of-two
    scaling and a shift): the polygons are scattered into a dense distance grid of that lattice and the sweep
    visits them in the given order. None where that does not apply (or the grid would be too large)."""
    n, n_rays = D.shape
    Pf = P.astype(np.float64)
    scale = None
    for e in range(9):  # StarDist's sparse centres are grid cells (integers); halves and quarters are cheap too
        Q = Pf * float(1 << e)  # a power of two: exact, and it scales every area by the same exact factor
        if np.array_equal(Q, np.floor(Q)):
            scale = 1 << e
            break
    if scale is None:
        return None
    Q = Q - Q.min(axis=0)  # integers: exact; a translation leaves every overlap unchanged
    # the kernel's range applies to the scaled distances
    if Q.max() >= 2.0 ** 40 or max(-float(D.min()), float(D.max())) * scale > DIST_MAX_2D:
        return None
    Qi = Q.astype(np.int64)
    g = [int(np.gcd.reduce(Qi[:, a])) or 1 for a in (0, 1)]
    cells = Qi // np.asarray(g)
    ny, nx = (int(c) + 1 for c in cells.max(axis=0))
    dt = D.dtype if D.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    if ny * nx * n_rays * dt.itemsize > _LATTICE_BYTES:
        return None
    # the sweep's buckets are squares of side 2 x the mean circumradius, clamped to [8, 256] px
    side = min(256.0, max(8.0, 2 * float(np.maximum(D, 0).max(axis=1).mean()) * scale))
    if math.ceil(((ny - 1) * g[0] + 1) / side) * math.ceil(((nx - 1) * g[1] + 1) / side) > _LATTICE_BUCKETS:
        return None
    flat = np.ascontiguousarray(cells[:, 0] * nx + cells[:, 1])
    if len(np.unique(flat)) != n:  # two polygons at one centre cannot share a grid cell
        return None
    try:
        grid_d = _lazy_zeros((ny, nx, n_rays), dt)
    except (MemoryError, OSError, ValueError):
        return None
    grid_d.reshape(-1, n_rays)[flat] = D.astype(dt, copy=False) * dt.type(scale)
    state = np.zeros(n, np.uint8)
    stats = _C.star_nms(grid_d, flat, _p.trig_table(n_rays), g, thresh, _crit_code(crit), state)
    _last_stats.clear()
    _last_stats.update(stats)
    _last_stats["candidates"] = n
    return state == 1


def _lazy_zeros(shape, dtype):
    """A zeroed array on fresh anonymous pages, advised against transparent huge pages: np.zeros would ask for huge
    pages on a large buffer, and then every scattered centre would map 2 MiB instead of 4 KiB."""
    count = int(np.prod(shape))
    mm = mmap.mmap(-1, max(count * np.dtype(dtype).itemsize, 1), flags=mmap.MAP_PRIVATE)
    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
        mm.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(mm, dtype, count=count).reshape(shape)  # the array keeps the mapping alive


def _crit_code(crit):
    return crit if isinstance(crit, int) else _CRITERIA[crit]


def _greedy_numpy(D, P, thresh, crit):
    """The same greedy rule for any centres (float, repeated, far apart): exact areas from the fans of triangles
    of both polygons, neighbours from a k-d tree over the centres."""
    from scipy.spatial import cKDTree

    n, n_rays = D.shape
    crit = _crit_code(crit)
    D = np.maximum(D.astype(np.float64), 0)
    P = P.astype(np.float64)
    sn, cs = _p.trig_table(n_rays)
    off = np.stack([D * sn, D * cs], 1)  # (n, 2, n_rays): vertices relative to the centre
    area = 0.5 * np.abs(np.sum(off[:, 0] * np.roll(off[:, 1], -1, 1) - off[:, 1] * np.roll(off[:, 0], -1, 1), 1))
    radius = D.max(axis=1)
    lo, hi = P + off.min(axis=2), P + off.max(axis=2)
    tree = cKDTree(P)
    r_max = float(radius.max())
    suppressed = np.zeros(n, bool)
    for i in range(n):
        if suppressed[i] or area[i] == 0:  # kept; a zero-area polygon overlaps nothing
            continue
        js = np.asarray(tree.query_ball_point(P[i], radius[i] + r_max), np.int64)
        js = js[js > i]
        js = js[~suppressed[js] & (area[js] > 0)]
        js = js[np.all((lo[js] < hi[i]) & (lo[i] < hi[js]), axis=1)]  # boxes that only touch share no area
        if js.size == 0:
            continue
        inter = _fan_intersections(off[i], P[js] - P[i], off[js])
        small = np.minimum(area[i], area[js])
        overlap = inter / (small if crit == 0 else area[i] + area[js] - inter)
        suppressed[js[overlap > thresh]] = True
    return ~suppressed


def _fans(ctr, off):
    """Fan triangles (centre, v_k, v_k+1) of polygons: ctr (J, 2), off (J, 2, n) -> (J, n, 3, 2) (row, col)."""
    v = ctr[:, None, :] + off.transpose(0, 2, 1)
    c = np.broadcast_to(ctr[:, None, :], v.shape)
    return np.stack([c, v, np.roll(v, -1, axis=1)], axis=2)


def _fan_intersections(off_a, ctr_b, off_b):
    """area(A and B_j): A centred at the origin with vertex offsets off_a (2, n); B_j centred at ctr_b[j] (J, 2)
    with offsets off_b (J, 2, n). Each polygon is the union of its fan triangles (sectors of 2 pi / n < pi, disjoint
    interiors), so the area is the sum of the triangle-pair intersections, each convex and clipped exactly."""
    ta = _fans(np.zeros((1, 2)), off_a[None])[0]  # (n, 3, 2)
    tb = _fans(ctr_b, off_b)  # (J, n, 3, 2)

    def doubled_area(t):
        e1, e2 = t[..., 1, :] - t[..., 0, :], t[..., 2, :] - t[..., 0, :]
        return e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]

    sa, sb = doubled_area(ta), doubled_area(tb)
    lo_a, hi_a, lo_b, hi_b = ta.min(axis=1), ta.max(axis=1), tb.min(axis=2), tb.max(axis=2)
    meet = np.all((lo_a[None, :, None] < hi_b[:, None, :]) & (lo_b[:, None, :] < hi_a[None, :, None]), axis=-1)
    meet &= (sa != 0)[None, :, None] & (sb != 0)[:, None, :]
    jj, ka, kb = np.nonzero(meet)
    out = np.zeros(len(tb))
    for s in range(0, len(jj), _CLIP_CHUNK):
        j, a, b = jj[s:s + _CLIP_CHUNK], ka[s:s + _CLIP_CHUNK], kb[s:s + _CLIP_CHUNK]
        out += np.bincount(j, weights=_clip_area(ta[a], tb[j, b], np.sign(sb[j, b])), minlength=len(tb))
    return out


def _clip_area(A, B, sign):
    """Areas of triangles A (M, 3, 2) clipped to triangles B (M, 3, 2) of orientation sign (M,), Sutherland-Hodgman.

    Each step keeps the vertices on the inner side of one edge of B (on the line counts as inside) and adds the
    crossing of every edge whose ends are strictly on opposite sides: the crossing parameter lies in (0, 1), the
    clipped area is continuous in the input, and vertices shared exactly with B's edges are decided exactly.
    Polygons are packed in fixed-width rows: the first n[m] slots are the vertices, the rest repeat the last one
    (zero-length edges: no area, no crossing) and are not emitted again."""
    poly = A
    M = len(A)
    n = np.full(M, 3)
    rows = np.arange(M)[:, None]
    for e in range(3):
        a, b = B[:, e, None, :], B[:, (e + 1) % 3, None, :]
        ey, ex = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
        s = sign[:, None] * (ey * (poly[..., 1] - a[..., 1]) - ex * (poly[..., 0] - a[..., 0]))
        s_next, p_next = np.roll(s, -1, axis=1), np.roll(poly, -1, axis=1)
        cut = ((s > 0) & (s_next < 0)) | ((s < 0) & (s_next > 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(cut, s / (s - s_next), 0.0)
        k = poly.shape[1]
        pts = np.stack([poly, poly + t[..., None] * (p_next - poly)], axis=2).reshape(M, 2 * k, 2)
        valid = np.stack([(s >= 0) & (np.arange(k) < n[:, None]), cut], axis=2).reshape(M, 2 * k)
        n = valid.sum(axis=1)
        width = max(int(n.max()), 1)
        pos = np.cumsum(valid, axis=1) - 1
        packed = np.zeros((M, width, 2))
        r, c = np.nonzero(valid)
        packed[r, pos[r, c]] = pts[r, c]
        poly = packed[rows, np.minimum(np.arange(width)[None, :], np.maximum(n - 1, 0)[:, None])]
    y, x = poly[..., 0], poly[..., 1]
    return 0.5 * np.abs(np.sum(y * np.roll(x, -1, axis=1) - x * np.roll(y, -1, axis=1), axis=1))


def non_maximum_suppression_inds(dist, points, scores, thresh=0.5, use_bbox=True, use_kdtree=True, verbose=1, *,
                                 criterion="smaller"):
    """StarDist's ``non_maximum_suppression_inds``: greedy NMS of polygons ``dist (n, n_rays)`` centred at
    ``points (n, 2)`` (any real coordinates) *in the given order* -- pass them sorted by descending score. Polygon
    i is kept unless an earlier kept polygon overlaps it by more than ``thresh`` (``area(i and j) / min(area_i,
    area_j)``; ``criterion='iou'`` for intersection over union, a cellkern extra). Returns the boolean mask of kept
    polygons ``(n,)``, as StarDist.

    As in StarDist, ``scores`` (None or length n) does not reorder anything; ``use_bbox`` / ``use_kdtree`` are
    accelerations that cannot change the result (accepted, ignored); ``verbose`` (default 1, as StarDist) prints
    a one-line summary. Overlaps are exact (float64), where StarDist truncates vertices to integers: pairs near
    the threshold can be decided differently; negative distances count as 0; zero-area polygons overlap nothing.

    How: when the centres are distinct points of a lattice (integers, as StarDist's sparse candidates, or
    halves, quarters, ...) the C++ polygon NMS of :func:`non_maximum_suppression` runs on a dense grid of that
    lattice (mapped lazily: only the polygons' cells are written); otherwise a vectorised numpy path clips the
    polygons' fans of triangles exactly (slower).
    """
    t_start = time.perf_counter()
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion: expected 'smaller' or 'iou', got {criterion!r}")
    D, P = _sparse_polys(dist, points)
    if scores is not None and len(scores) != len(D):
        raise ValueError(f"scores: expected {len(D)} values, got {len(scores)}")
    thresh = unit_threshold(thresh, "thresh")
    keep = _greedy(D, P, thresh, criterion)
    if verbose:
        print(f"NMS: suppressed {int((~keep).sum())} / {len(keep)} polygons "
              f"in {time.perf_counter() - t_start:.4f} s", flush=True)
    return keep


def non_maximum_suppression_sparse(dist, prob, points, b=2, nms_thresh=0.5, use_bbox=True, use_kdtree=True,
                                   verbose=False, *, criterion="smaller"):
    """StarDist's ``non_maximum_suppression_sparse``: NMS of a list of polygons ``dist (n, n_rays)``, ``prob
    (n,)``, ``points (n, 2)`` (any real centres). Visits them in StarDist's order, ``np.argsort(prob)[::-1]``
    (descending; equal probabilities in numpy's unsorted-tie order reversed, exactly StarDist's), and keeps each
    one that no kept polygon overlaps by more than ``nms_thresh`` (see :func:`non_maximum_suppression_inds`).

    Returns ``(points[inds], prob[inds], dist[inds], inds)`` with ``inds`` (int64) the kept polygons' input
    indices in the visiting order; the arrays keep their input dtypes (numpy; torch tensors are copied to the
    host). ``b`` is accepted and ignored, as in StarDist (sparse candidates have no border); ``use_bbox`` and
    ``use_kdtree`` too. ``criterion='iou'`` is a cellkern extra.
    """
    t_start = time.perf_counter()
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion: expected 'smaller' or 'iou', got {criterion!r}")
    D, P = _sparse_polys(dist, points)
    pr = _real_array(prob, "prob", 1)
    if len(pr) != len(D):
        raise ValueError(f"prob: expected {len(D)} values, got {len(pr)}")
    nms_thresh = unit_threshold(nms_thresh, "nms_thresh")
    if verbose:
        print(f"predicting instances with nms_thresh = {nms_thresh}", flush=True)
    order = np.argsort(pr)[::-1]  # StarDist's visiting order, ties included
    keep = _greedy(D[order], P[order], nms_thresh, criterion)
    inds = order[keep].astype(np.int64)
    if verbose:
        print(f"keeping {len(inds)}/{len(D)} polygons", flush=True)
        print(f"NMS took {time.perf_counter() - t_start:.4f} s", flush=True)
    return P[inds], pr[inds], D[inds], inds
