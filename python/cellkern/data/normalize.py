"""Percentile normalisation of microscopy images (csbdeep's ``normalize``): exact percentiles, in memory or streamed."""
from __future__ import annotations

import itertools
import math
import numbers

import numpy as np

__all__ = ["normalize", "normalize_block", "percentiles"]

# Private knobs (tests shrink them to force the streamed paths on small inputs).
_IN_MEMORY_LIMIT = 1 << 30  # numpy arrays (not memmaps) up to this many bytes are partitioned in memory (one copy)
_BLOCK_BYTES = 64 << 20  # streamed blocks are grown from the chunk / slab unit up to about this many bytes
_REFINE_LIMIT = 1 << 22  # a histogram window holding at most this many elements is gathered and partitioned
_HIST_BITS = 16  # 2**16 = 65536 bins per histogram pass

_SIGN = np.uint64(1 << 63)
_LOW63 = np.int64((1 << 63) - 1)


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype == bool or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise TypeError(f"image: expected a real-valued (integer or float) array, got {dtype}")
    return dtype


def _check_finite(x):
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError("image: contains NaN or infinite values")


def _interpolate(n, q, order_stats):
    """numpy.percentile's default 'linear' method on n sorted values per row, bit for bit (index rules of
    numpy's ``_get_indexes`` / ``_get_gamma``, arithmetic of its ``_lerp``, all float64). ``order_stats(ranks)``
    gives the float64 values of the sorted ranks (a sorted int array) as (rows, len(ranks))."""
    h = (n - 1) * (q / 100)
    top = h >= n - 1
    prev = np.where(top, -1.0, np.floor(h))  # numpy takes the last value (index -1) at and beyond the top...
    t = h - prev  # ...so its weight there is h + 1; harmless (both neighbours are the maximum) but kept exact
    k = np.where(top, n - 1, prev).astype(np.int64)
    k1 = np.where(top, n - 1, k + 1)
    ranks = np.unique(np.concatenate([k, k1]))
    v = order_stats(ranks)
    a, b = v[:, np.searchsorted(ranks, k)], v[:, np.searchsorted(ranks, k1)]
    d = b - a  # fetched even for t == 0: numpy computes a + (b - a) * 0, which is NaN if b - a overflows
    return np.where(t >= 0.5, b - d * (1 - t), a + d * t)


def _partitioned(x2, ranks):
    """Order statistics of each row of a 2-D numpy array by np.partition; +0.0 turns -0.0 into 0.0 so the result
    depends only on the values, not on which of two equal zeros the partition happens to leave at a rank."""
    return np.partition(x2, ranks, axis=1)[:, ranks].astype(np.float64) + 0.0


def _keys(x):
    """float64 values -> uint64 keys with the same order (the IEEE bit pattern, negatives flipped), so histogram
    bins are exact integer ranges: monotone, no rounding, and each pass narrows a window by 2**16 keys."""
    b = (np.asarray(x, np.float64) + 0.0).view(np.int64)  # -0.0 -> 0.0: equal values share one key
    return (b ^ ((b >> 63) & _LOW63)).view(np.uint64) ^ _SIGN


def _unkey(k):
    b = (np.array([k], np.uint64) ^ _SIGN).view(np.int64)
    return float((b ^ ((b >> 63) & _LOW63)).view(np.float64)[0])


def _blocks(image, ca):
    """Yield (first channel, block as (channels, elements) numpy array) over the image in blocks of about
    _BLOCK_BYTES: dask chunks as they are, chunk-aligned multiples of a chunked array's chunks (zarr's shards
    where it has them), else slabs along the first non-channel axis (memmaps, large numpy arrays)."""
    shape, nd = tuple(image.shape), len(image.shape)
    chunks = getattr(image, "chunks", None)
    if chunks and isinstance(chunks[0], tuple):  # dask: computing one chunk at a time bounds the memory
        edges = [np.cumsum((0,) + c).tolist() for c in chunks]
    else:
        if chunks:  # zarr (h5py alike): whole chunks only, so no chunk is decoded twice
            unit, order = list(getattr(image, "shards", None) or chunks), range(nd - 1, -1, -1)
        else:
            a0 = next((a for a in range(nd) if a != ca), 0)
            unit, order = [1 if a == a0 else s for a, s in enumerate(shape)], [a0]
        for a in order:  # grow the unit along the last axes first while it fits the budget
            m = max(1, _BLOCK_BYTES // (np.dtype(image.dtype).itemsize * math.prod(unit)))
            unit[a] = min(shape[a], unit[a] * m)
        edges = [list(range(0, s, u)) + [s] for s, u in zip(shape, unit)]
    for box in itertools.product(*(zip(e[:-1], e[1:]) for e in edges)):
        blk = np.asarray(image[tuple(slice(a, b) for a, b in box)])
        if ca is None:
            yield 0, blk.reshape(1, -1)
        else:
            yield box[ca][0], np.moveaxis(blk, ca, 0).reshape(blk.shape[ca], -1)


def _scan(image, ca, windows, fn):
    """One pass over the image: fn(window, keys of row c within [lo, hi]) for each window (c, lo, hi), per block."""
    byrow = {}
    for w in windows:
        byrow.setdefault(w[0], []).append(w)
    for c0, blk in _blocks(image, ca):
        for c, row in enumerate(_keys(blk), c0):
            for w in byrow.get(c, ()):
                fn(w, row[(row >= np.uint64(w[1])) & (row <= np.uint64(w[2]))])


def _shift(lo, hi):
    return max(0, (hi - lo).bit_length() - _HIST_BITS)  # bins of 2**shift keys: at most 2**_HIST_BITS of them


def _streamed(image, ca, nrows, n, ranks):
    """Order statistics (nrows, len(ranks)) of an image read block by block; exact whatever the blocks."""
    dtype = np.dtype(image.dtype)
    if dtype.kind in "iu" and dtype.itemsize <= 2:  # small integers: one pass of value counts
        off = int(np.iinfo(dtype).min)
        counts = np.zeros((nrows, 1 << (8 * dtype.itemsize)), np.int64)
        for c0, blk in _blocks(image, ca):
            for c, row in enumerate(blk, c0):
                counts[c] += np.bincount(row.astype(np.intp) - off, minlength=counts.shape[1])
        return np.array([np.searchsorted(cs, ranks, side="right") + off for cs in counts.cumsum(1)], np.float64)

    # Everything else as float64 keys (casting int64 to float64 keeps the order, and the result is the percentile
    # of the float64 values). Pass 1: min / max per row and the NaN check; ranks 0 and n - 1 are then known.
    kmin, kmax = [None] * nrows, [None] * nrows
    for c0, blk in _blocks(image, ca):
        _check_finite(blk)
        for c, lo, hi in zip(range(c0, c0 + len(blk)), _keys(blk.min(1)).tolist(), _keys(blk.max(1)).tolist()):
            kmin[c] = lo if kmin[c] is None else min(kmin[c], lo)
            kmax[c] = hi if kmax[c] is None else max(kmax[c], hi)
    # Each wanted rank r of row c has a window: the closed key range [lo, hi] holding it, `below` elements of the
    # row under lo and `cnt` within. Histogram passes cut a window into 2**16 bins and keep r's bin, so the width
    # loses 16 bits a pass (at most 4 passes) until it holds one value or few enough elements to gather.
    state = {(c, j): [kmax[c] if r == n - 1 else kmin[c], kmin[c] if r == 0 else kmax[c], 0, n]
             for c in range(nrows) for j, r in enumerate(ranks.tolist())}
    while True:
        todo = {(c, lo, hi) for (c, _), (lo, hi, _, cnt) in state.items() if lo < hi and cnt > _REFINE_LIMIT}
        if not todo:
            break
        hist = {w: np.zeros(((w[2] - w[1]) >> _shift(w[1], w[2])) + 1, np.int64) for w in todo}

        def count(w, sel):
            bins = (sel - np.uint64(w[1])) >> np.uint64(_shift(w[1], w[2]))
            hist[w] += np.bincount(bins.astype(np.intp), minlength=len(hist[w]))

        _scan(image, ca, todo, count)
        cums = {w: h.cumsum() for w, h in hist.items()}
        for (c, j), (lo, hi, below, cnt) in state.items():
            if (c, lo, hi) in hist:
                cum, s = cums[c, lo, hi], _shift(lo, hi)
                b = int(np.searchsorted(cum, ranks[j] - below, side="right"))  # the bin holding rank j
                lo2, below2 = lo + (b << s), below + (int(cum[b - 1]) if b else 0)
                state[c, j] = [lo2, min(hi, lo2 + (1 << s) - 1), below2, int(cum[b]) - (below2 - below)]
    # Last pass: gather the elements of the windows still holding several values, and partition them.
    got = {(c, lo, hi): [] for (c, _), (lo, hi, _, _) in state.items() if lo < hi}
    if got:
        _scan(image, ca, got, lambda w, sel: got[w].append(sel))
    out = np.empty((nrows, len(ranks)))
    for (c, j), (lo, hi, below, _) in state.items():
        if lo == hi:
            out[c, j] = _unkey(lo)
        else:
            v = np.concatenate(got[c, lo, hi])
            out[c, j] = _unkey(np.partition(v, ranks[j] - below)[ranks[j] - below])
    return out


def percentiles(image, qs, channel_axis=None):
    """Exact percentiles ``qs`` (in [0, 100]) of an image: numpy.percentile's default 'linear' method on the image
    cast to float64, bit for bit, over all elements (``channel_axis`` None: shape (len(qs),)) or per channel
    along ``channel_axis`` (shape (C, len(qs))). float64 out.

    ``image``: a numpy array, numpy memmap, zarr (or other chunked, sliceable) array or dask array. A numpy array
    of up to _IN_MEMORY_LIMIT bytes is partitioned in memory; anything else is read in blocks of about
    _BLOCK_BYTES (chunk-aligned for zarr, one chunk at a time for dask, slabs for memmaps), never whole:
    integers of <= 16 bits by value counts in one pass, other data by a min / max pass, up to four 65536-bin
    histogram passes and one gather pass. The result depends only on the multiset of values (-0.0 counts as
    0.0), so it is the same for any chunking, streamed or not.

    Raises TypeError for non-numeric (or bool) images and ValueError for empty images, NaN / infinite values,
    percentiles outside [0, 100] or a bad ``channel_axis``."""
    try:
        q = np.asarray(qs, dtype=np.float64)
    except (TypeError, ValueError):
        q = None
    if q is None or q.ndim != 1 or q.size == 0 or not np.all((q >= 0) & (q <= 100)):
        raise ValueError(f"qs: expected a non-empty sequence of percentiles in [0, 100], got {qs!r}")
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        image = np.asarray(image)
    _check_dtype(image.dtype)
    shape = tuple(image.shape)
    if math.prod(shape) == 0:
        raise ValueError(f"image: expected a non-empty array, got shape {shape}")
    ca = None
    if channel_axis is not None:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, numbers.Integral) \
                or not -len(shape) <= channel_axis < len(shape):
            raise ValueError(f"channel_axis: {channel_axis!r} does not fit an image of shape {shape}")
        ca = int(channel_axis) % len(shape)
    nrows = 1 if ca is None else shape[ca]
    n = math.prod(shape) // nrows
    if type(image) is np.ndarray and image.nbytes <= _IN_MEMORY_LIMIT:
        _check_finite(image)
        x2 = image.reshape(1, -1) if ca is None else np.moveaxis(image, ca, 0).reshape(nrows, -1)
        out = _interpolate(n, q, lambda r: _partitioned(x2, r))
    else:
        out = _interpolate(n, q, lambda r: _streamed(image, ca, nrows, n, r))
    return out[0] if ca is None else out


def normalize_block(block, lo, hi, eps=1e-20, clip=False):
    """The elementwise part of ``normalize``: ``(block - lo) / (hi - lo + eps)`` in float32 (lo, hi, eps cast to
    float32 first; lo, hi scalars or arrays broadcasting against the block, e.g. (C, 1, 1) per channel), then
    ``clip`` to [0, 1] optional. Each element's result depends only on that element, so the blocks of a big image
    normalised one by one with its ``percentiles`` equal ``normalize`` of the whole image bit for bit."""
    lo32, hi32 = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
    x = np.asarray(block)
    _check_dtype(x.dtype)
    out = np.asarray((x.astype(np.float32) - lo32) / (hi32 - lo32 + np.float32(eps)), np.float32)
    if clip:
        np.clip(out, 0, 1, out=out)
    return out


def normalize(image, pmin=1.0, pmax=99.8, axis=None, eps=1e-20, clip=False):
    """``(image - p_low) / (p_high - p_low + eps)`` with p_low, p_high the ``pmin`` / ``pmax`` percentiles of the
    image (over ``axis``: None = all axes; e.g. the spatial axes to normalise each channel on its own), as
    csbdeep's ``normalize``: percentiles by numpy's default 'linear' method computed in float64 (exactly
    ``numpy.percentile`` of the float64-cast image, see ``percentiles``) then cast to float32, the arithmetic in
    float32 (``normalize_block``), ``clip`` to [0, 1] optional. Returns a new float32 array.

    Raises TypeError for non-numeric images and ValueError for non-finite values, percentiles outside
    0 <= pmin < pmax <= 100 or a bad ``axis``."""
    x = np.asarray(image)
    _check_dtype(x.dtype)
    if x.size == 0:
        raise ValueError(f"image: expected a non-empty array, got shape {x.shape}")
    for name, v in (("pmin", pmin), ("pmax", pmax), ("eps", eps)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")
    if not 0 <= pmin < pmax <= 100:
        raise ValueError(f"pmin, pmax: expected 0 <= pmin < pmax <= 100, got pmin={pmin!r}, pmax={pmax!r}")
    if eps < 0:
        raise ValueError(f"eps: expected a number >= 0, got {eps!r}")
    _check_finite(x)
    try:
        red = tuple(range(x.ndim)) if axis is None else np.lib.array_utils.normalize_axis_tuple(axis, x.ndim)
    except (TypeError, ValueError) as e:  # numpy's AxisError is a ValueError
        raise ValueError(f"axis: {axis!r} does not fit an image of shape {x.shape} ({e})") from None
    keep = [a for a in range(x.ndim) if a not in red]
    x2 = np.transpose(x, keep + list(red)).reshape(math.prod(x.shape[a] for a in keep), -1)  # rows: kept positions
    lo, hi = _interpolate(x2.shape[1], np.array([pmin, pmax], np.float64), lambda r: _partitioned(x2, r)).T
    kd = [1 if a in red else s for a, s in enumerate(x.shape)]  # keepdims shape, broadcasting against x
    return normalize_block(x, lo.reshape(kd), hi.reshape(kd), eps, clip)
