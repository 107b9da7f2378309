"""Greedy non-maximum suppression of star-convex polygons (StarDist's rule, exact overlaps), CPU and CUDA."""
from __future__ import annotations

import numbers

import numpy as np

from .. import _C
from ..ops import star as _p
from ..ops._common import torch

__all__ = ["non_maximum_suppression", "last_nms_stats"]

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


def non_maximum_suppression(dist, prob, grid=(1, 1), b=2, nms_thresh=0.4, prob_thresh=0.5, criterion="smaller",
                            return_inds=False):
    """Keep the most probable star-convex polygons and drop those overlapping a kept one too much.

    ``dist (Ny, Nx, n_rays)`` and ``prob (Ny, Nx)`` (float32/float64; numpy arrays, or torch tensors on CPU or
    CUDA) live on the prediction grid; cell (i, j) is the polygon centred at pixel ``(i*gy, j*gx)`` with vertices
    ``centre + dist[i, j, k] (sin phi_k, cos phi_k)``, ``phi_k = 2 pi k / n_rays``.

    StarDist's semantics (``stardist.nms.non_maximum_suppression``): candidates are the cells with
    ``prob > prob_thresh`` at least ``b`` cells from the border (``b`` an int, None, or ((top, bottom), (left,
    right))); they are visited in descending probability and each one not yet suppressed is kept and suppresses
    every later candidate j with ``overlap > nms_thresh``, where overlap is ``area(i and j) / min(area_i,
    area_j)`` (``criterion='smaller'``, StarDist's) or ``area(i and j) / area(i or j)`` (``'iou'``).

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
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion: expected 'smaller' or 'iou', got {criterion!r}")
    crit = _CRITERIA[criterion]
    try:
        nms_thresh, prob_thresh = float(nms_thresh), float(prob_thresh)
    except (TypeError, ValueError):
        raise ValueError("nms_thresh and prob_thresh must be numbers") from None
    if not 0 <= nms_thresh <= 1:
        raise ValueError(f"nms_thresh: must be in [0, 1], got {nms_thresh}")
    if np.isnan(prob_thresh):
        raise ValueError("prob_thresh: must not be NaN")
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
    return (points, probs, dists, keep) if return_inds else (points, probs, dists)


def _cuda_candidates(P, thresh, y0, y1, x0, x1):
    """Candidate cells on the GPU with torch: masked by threshold and border, stable sort by descending prob."""
    ny, nx = P.shape
    mask = torch.zeros_like(P, dtype=torch.bool)
    mask[y0:y1, x0:x1] = P[y0:y1, x0:x1] > (float(np.float32(thresh)) if P.dtype == torch.float32 else thresh)
    cells = torch.nonzero(mask.reshape(-1)).reshape(-1)
    order = torch.sort(P.reshape(-1)[cells], descending=True, stable=True).indices
    return cells[order].contiguous()
