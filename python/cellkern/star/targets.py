"""Star-convex training targets: star_dist (2D) and star_dist3d (rays on a sphere), StarDist's semantics."""
from __future__ import annotations

import numbers

import numpy as np

from .. import _C
from ..ops import star as _p
from ..reference.star import rays_golden_spiral

__all__ = ["star_dist", "star_dist3d", "rays_golden_spiral"]


def _grid(grid, nd):
    if grid is None:
        return [1] * nd
    if isinstance(grid, numbers.Integral):
        grid = (int(grid),) * nd
    grid = tuple(grid)
    if len(grid) != nd or not all(isinstance(g, numbers.Integral) and int(g) >= 1 for g in grid):
        raise ValueError(f"grid: expected {nd} positive integers, got {grid!r}")
    return [int(g) for g in grid]


def star_dist(labels, n_rays=32, grid=None, *, out=None):
    """Distance from every pixel of an object to the object's boundary along ``n_rays`` equally spaced rays.

    ``labels``: a 2D integer label image (numpy array or torch tensor, CPU or CUDA; 0 is background, any other
    value an object id; values are only compared for equality). Returns float32 ``((H-1)//gy+1, (W-1)//gx+1,
    n_rays)`` (same type and device as ``labels``); background pixels get 0. A 3D label image is passed on to
    :func:`star_dist3d` with ``n_rays`` as its rays.

    StarDist's semantics exactly (``stardist.geometry.star_dist``): ray k has angle ``phi = f32(k) * f32(2 pi /
    n_rays)`` and unit step ``(sin phi, cos phi)`` in (row, col), correctly rounded to float32; the offset is
    accumulated in float32 from the origin ``(i*gy, j*gx)`` and the pixel at ``lrint(origin + offset)`` (round
    half to even) is tested; the march stops at the first pixel outside the image or with a different label,
    then backs off ``1 - 0.5 / max(|sin|, |cos|)`` of a step (an axis ray leaving after m steps reports
    m - 0.5). Results are bit-identical to :func:`cellkern.reference.star_dist_ref`; StarDist itself calls glibc's
    ``sinf``/``cosf``, one ulp off for a few angles, which moves those rays' distances by ~1e-7. StarDist casts
    labels to uint16 (ids above 65535 wrap); here every integer dtype is compared as is.

    ``out``: an optional preallocated float32 output to reuse (it is overwritten).
    """
    lab = _p.as_array(labels, "labels", kind="int")
    if lab.ndim == 3:
        return star_dist3d(lab, n_rays, grid, out=out)
    if lab.ndim != 2:
        raise ValueError(f"labels: expected a 2D (H, W) or 3D (D, H, W) label image, got shape {tuple(lab.shape)}")
    if not isinstance(n_rays, numbers.Integral) or int(n_rays) < 3:
        raise ValueError(f"n_rays: expected an integer >= 3, got {n_rays!r}")
    return _run(lab, _p.ray_steps_2d(int(n_rays)), _grid(grid, 2), out)


def star_dist3d(labels, rays=96, grid=None, *, anisotropy=None, out=None):
    """3D star distances ``((D-1)//gz+1, (H-1)//gy+1, (W-1)//gx+1, n_rays)`` float32 along unit rays (z, y, x).

    ``rays``: an int (that many rays on StarDist's golden spiral, :func:`rays_golden_spiral`, optionally with
    ``anisotropy``), an ``(n_rays, 3)`` array, or an object with ``.vertices`` (StarDist's ``Rays_*``).

    StarDist's 3D semantics (``stardist.geometry.star_dist3D``): float32 offsets accumulate ``+= ray`` until
    ``lrint(origin + offset)`` leaves the image or the object; the distance is the length of the *rounded*
    offset of that first voxel outside, with no half-step back-off (an axis ray in an object whose last voxel is
    m voxels away reports m + 1).
    """
    lab = _p.as_array(labels, "labels", kind="int")
    if lab.ndim != 3:
        raise ValueError(f"labels: expected a 3D (D, H, W) label image, got shape {tuple(lab.shape)}")
    if isinstance(rays, numbers.Integral):
        if int(rays) < 1:
            raise ValueError(f"rays: expected a positive number of rays, got {rays}")
        verts = rays_golden_spiral(int(rays), anisotropy)
    else:
        verts = np.asarray(getattr(rays, "vertices", rays))
        if verts.ndim != 2 or verts.shape[1] != 3 or len(verts) == 0:
            raise ValueError(f"rays: expected (n_rays, 3) unit vectors in (z, y, x) order, got shape {verts.shape}")
        if not np.all(np.isfinite(verts)):
            raise ValueError("rays: must be finite")
        verts = verts.astype(np.float32)
        if np.any(np.abs(verts) > 1):
            raise ValueError("rays: components must lie in [-1, 1] (unit vectors)")
    return _run(lab, verts, _grid(grid, 3), out)


def _run(lab, steps, grid, out):
    shape = tuple(int(s) for s in lab.shape)
    nd = len(shape)
    offs, pos, dist = _p.ray_tables(steps, shape)
    n_rays = len(steps)
    out_shape = tuple((s - 1) // g + 1 if s > 0 else 0 for s, g in zip(shape, grid)) + (n_rays,)
    itemsize = lab.element_size() if _p.is_torch(lab) else lab.dtype.itemsize
    padded = _p.workspace("star_dist.padded", (_C.star_padded_bytes(list(shape), itemsize),), np.uint8, lab)
    if out is None:
        # numpy: calloc'ed zeros, and the kernel skips background pixels, so pages it never writes are never
        # touched (most of a sparse image). torch: empty, and the kernel writes the zeros.
        zero_background = _p.is_torch(lab)
        res = _p.new_empty(out_shape, np.float32, lab) if zero_background else _p.new_zeros(out_shape, np.float32, lab)
    else:
        res, zero_background = out, True
        if tuple(res.shape) != out_shape:
            raise ValueError(f"out: expected shape {out_shape}, got {tuple(res.shape)}")
    offs, pos, dist = (_p.to_device(t, lab) for t in (offs, pos, dist))
    _C.star_dist(_p.dlp(lab), _p.dlp(padded), _p.dlp(offs), _p.dlp(pos), _p.dlp(dist), _p.dlp(res), grid,
                 zero_background, _p.emu_for(lab), _p.stream_for(lab))
    return res
