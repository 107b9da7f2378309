"""The tiled runner (tiles in batches, halos cropped, cores written into a preallocated output) and the whole-image
forward pass it is bit-equal to."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from .. import _pool
from .plan import output_spec, plan_tiles

__all__ = ["predict_tiled", "predict_whole", "run_tiles"]


def _reflect(idx, size):
    """numpy.pad's 'reflect' mode as an index map: positions past the end mirror back without repeating the edge."""
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * size - 2
    j = np.mod(idx, period)
    return np.where(j >= size, period - j, j)


def _check_image(model, image):
    output_spec(model)  # TypeError for what is not a model we can tile
    nd = model.ndim
    shape = getattr(image, "shape", None)
    if shape is None or not hasattr(image, "__getitem__"):
        raise TypeError(f"image: expected an array (numpy, memmap, zarr or dask) of shape (C, *spatial), got "
                        f"{type(image).__name__}")
    dtype = np.dtype(getattr(image, "dtype", np.float32))
    if dtype == bool or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise TypeError(f"image: expected a real-valued (integer or float) array, got {dtype}")
    channels = getattr(model, "in_channels", None) or model.config.n_channel_in
    if len(shape) != nd + 1 or shape[0] != channels:
        raise ValueError(f"image: expected shape ({channels}, *{nd} spatial sizes), got {tuple(shape)}")
    if 0 in shape:
        raise ValueError(f"image: expected a non-empty image, got shape {tuple(shape)}")
    return tuple(int(s) for s in shape[1:])


def _cells(spatial, grid):
    return tuple(-(-s // g) for s, g in zip(spatial, grid))


def _read(image, ranges, spatial):
    """The (C, *tile) float32 block of the image reflect-padded at the end, for tile ranges [(a, b), ...]: one read of
    the hull of the source positions, then a gather only on axes that run past the image."""
    idx = [_reflect(np.arange(a, b), s) for (a, b), s in zip(ranges, spatial)]
    hull = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    block = np.asarray(image[(slice(None),) + hull])  # computes a dask slice, reads a zarr one
    for d, (i, h) in enumerate(zip(idx, hull)):
        if not (len(i) == h.stop - h.start and i[0] == h.start and np.all(np.diff(i) == 1)):
            block = np.take(block, i - h.start, axis=d + 1)
    return np.ascontiguousarray(block, dtype=np.float32)


def _forward(model, x):
    """One no-grad, eval-mode forward of a (N, C, *spatial) float32 numpy batch -> float32 numpy (N, C_out, ...);
    a model returning a tuple (StarDist's logit and distances) has its outputs concatenated along channels."""
    p = next(model.parameters())
    t = torch.from_numpy(x)
    if p.device.type != "cpu":
        t = t.pin_memory().to(p.device, non_blocking=True)
    with torch.no_grad():
        y = model(t.to(p.dtype))
    y = torch.cat(tuple(y), 1) if isinstance(y, (tuple, list)) else y
    return y.float().cpu().numpy() if p.device.type != "cpu" or y.dtype != torch.float32 else y.numpy()


class _Eval:
    """Model in eval mode for the block, restored afterwards."""

    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)


def predict_whole(model, image, transform=None):
    """One forward pass over the whole image ``(C, *spatial)``, reflect-padded at the end to multiples of the
    down-sampling factor, output cropped back: ``(C_out, *cells)`` float32 numpy, ``cells`` = ``spatial`` for a
    U-Net, ``ceil(spatial / grid)`` for a StarDist model (see :func:`cellkern.predict.plan.output_spec`).
    ``transform``: applied to the float32 input before the forward (elementwise, e.g. a normalisation with
    global constants, or the tiles would differ). What :func:`predict_tiled` equals."""
    spatial = _check_image(model, image)
    factor = tuple(model.downsampling_factor)
    ranges = [(0, -(-s // f) * f) for s, f in zip(spatial, factor)]
    x = _read(image, ranges, spatial)
    if transform is not None:
        x = transform(x)
    with _Eval(model):
        y = _forward(model, x[None])[0]
    return np.ascontiguousarray(y[(slice(None),) + tuple(slice(0, c) for c in _cells(spatial, output_spec(model)[1]))])


def run_tiles(model, image, plan, tiles, out, batch_size=1, transform=None, bar=None):
    """Run ``tiles`` of ``plan`` (tuples of (core_lo, core_hi, tile_lo, tile_hi) per axis) in batches of tiles of
    one shape and write their output cells into ``out (C_out, *cells)``. The model must be in eval mode."""
    grid, spatial = plan.grid, plan.shape
    groups = defaultdict(list)
    for tile in tiles:
        groups[tuple(b - a for _, _, a, b in tile)].append(tile)
    for group in groups.values():
        for k in range(0, len(group), batch_size):
            batch = group[k:k + batch_size]
            x = np.stack([_read(image, [(a, b) for _, _, a, b in t], spatial) for t in batch])
            if transform is not None:
                x = transform(x)
            y = _forward(model, x)
            for t, yt in zip(batch, y):
                # cores and tiles start on multiples of the grid: cell c0 / g of the image is cell (c0 - a) / g here
                dst = tuple(slice(c0 // g, -(-c1 // g)) for (c0, c1, _, _), g in zip(t, grid))
                src = tuple(slice((c0 - a) // g, (c0 - a) // g + d.stop - d.start) for (c0, _, a, _), g, d
                            in zip(t, grid, dst))
                out[(slice(None),) + dst] = yt[(slice(None),) + src]
            del x, y
            if bar is not None:
                bar.update(len(batch))
        _pool.empty_cache()  # the next shape cannot reuse these buffers
    return out


STRATEGIES = ("auto", "stream", "tiles")


def _tile_volume(plan):
    """Input elements the tiles of ``plan`` read (halos included): the work a run of it does."""
    return sum(math.prod(b - a for _, _, a, b in tile) for tile in plan.tiles)


def _stream_reads_less(model, image, tile_size, memory_budget, batch_size):
    """Whether streaming reads no more voxels than the tiles would: it recomputes no halo along its axis, but when a
    whole cross-section does not fit the budget its columns carry halos on the other axes (a 64 x 512^2 volume in
    the default budget: 128^2 columns with 160-voxel halos, 7.6x its voxels; tiles of that budget read ~645x, so it
    still streams). Tiles that cannot be planned (tile_size and memory_budget both given): stream."""
    from .stream import stream_plan

    spatial = _check_image(model, image)
    cores, _ = stream_plan(model, spatial, tile_size=tile_size, memory_budget=memory_budget)
    streamed = _tile_volume(plan_tiles(model, spatial, tuple(cores)))
    try:
        tiled = _tile_volume(plan_tiles(model, spatial, tile_size, memory_budget, batch_size))
    except ValueError:
        return True
    return streamed <= tiled


def predict_tiled(model, image, tile_size=None, batch_size=1, memory_budget=None, out=None, progress=False,
                  transform=None, strategy="auto"):
    """Run ``model`` (a :class:`cellkern.nn.UNet` or a StarDist model, or a model with the same ``ndim``,
    ``in_channels``, ``output_channels``, ``downsampling_factor``, ``input_interval(lo, hi, dim, numeric)`` and
    ``receptive_field()``) over ``image (C, *spatial)`` (numpy, memory-mapped, zarr or dask array; read one tile at
    a time) tile by tile, per :func:`plan_tiles`.

    Returns ``out`` (or a new float32 numpy array) of shape ``(C_out, *cells)`` (as :func:`predict_whole`): on CPU
    float32 bit-equal to :func:`predict_whole`. ``out`` may be any array with numpy-style slice assignment (numpy,
    memmap, zarr); its shape is checked before anything is written. ``transform``: applied to every float32 input
    batch (elementwise only, see :func:`predict_whole`). ``progress``: a tqdm bar.

    ``strategy``: ``"stream"`` runs :func:`cellkern.predict.stream.predict_streamed`: slabs along the first axis,
    each layer's rows computed once (no halo is recomputed along that axis), column tiles of ``tile_size[1:]``
    across the others only when a whole cross-section does not fit ``memory_budget``; ``batch_size`` is not used.
    ``"tiles"``: tiles with halos on every axis, of one shape together in batches of ``batch_size`` (the buffer pool
    reuses their activations from batch to batch; between shapes it is emptied, so memory stays at one batch's
    working set). ``"auto"`` (default): ``"stream"`` for the models it can run (a cellkern U-Net or StarDist model
    with zero padding), else ``"tiles"``. Both are bit-equal to :func:`predict_whole` on CPU float32."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if strategy != "tiles":
        from .stream import StreamUnsupported, graph_of, predict_streamed

        try:
            graph_of(model)
        except (TypeError, StreamUnsupported):
            if strategy == "stream":
                raise
        else:
            if strategy == "stream" or _stream_reads_less(model, image, tile_size, memory_budget, batch_size):
                return predict_streamed(model, image, tile_size=tile_size, memory_budget=memory_budget, out=out,
                                        progress=progress, transform=transform)
    spatial = _check_image(model, image)
    plan = plan_tiles(model, spatial, tile_size, memory_budget, batch_size)
    c_out, grid = output_spec(model)
    want = (c_out,) + _cells(spatial, grid)
    if out is None:
        out = np.empty(want, np.float32)
    elif tuple(getattr(out, "shape", ())) != want:
        raise ValueError(f"out: expected shape {want}, got {tuple(getattr(out, 'shape', ()))}")
    bar = None
    if progress:
        from .._optional import require

        tqdm = require("tqdm.auto", "predict_tiled(progress=True)").tqdm

        bar = tqdm(total=len(plan), desc="tiles", unit="tile")
    try:
        with _Eval(model):
            run_tiles(model, image, plan, plan.tiles, out, batch_size, transform, bar)
    finally:
        if bar is not None:
            bar.close()
    return out
