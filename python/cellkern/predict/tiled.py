"""The tiled runner (tiles in batches, halos cropped, cores written into a preallocated output) and the whole-image
forward pass it is bit-equal to."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from .. import _pool
from .plan import plan_tiles

__all__ = ["predict_tiled", "predict_whole"]


def _reflect(idx, size):
    """numpy.pad's 'reflect' mode as an index map: positions past the end mirror back without repeating the edge."""
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * size - 2
    j = np.mod(idx, period)
    return np.where(j >= size, period - j, j)


def _check_image(model, image):
    if getattr(model, "output_channels", None) is None:
        # StarDist's outputs live on its prediction grid and come as a (prob, dist) pair: not handled here yet
        raise TypeError(f"model: expected a cellkern.nn.UNet (an output per input pixel), got {type(model).__name__}")
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
    """One no-grad, eval-mode forward of a (N, C, *spatial) float32 numpy batch -> float32 numpy (N, C_out, ...)."""
    p = next(model.parameters())
    t = torch.from_numpy(x)
    if p.device.type != "cpu":
        t = t.pin_memory().to(p.device, non_blocking=True)
    with torch.no_grad():
        y = model(t.to(p.dtype))
    y = y[0] if isinstance(y, (tuple, list)) else y
    return y.float().cpu().numpy() if p.device.type != "cpu" or y.dtype != torch.float32 else y.numpy()


class _Eval:
    """Model in eval mode for the block, restored afterwards."""

    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)


def predict_whole(model, image):
    """One forward pass over the whole image ``(C, *spatial)``, reflect-padded at the end to multiples of the
    down-sampling factor, output cropped back: ``(C_out, *spatial)`` float32 numpy. What :func:`predict_tiled`
    equals."""
    spatial = _check_image(model, image)
    factor = tuple(model.downsampling_factor)
    ranges = [(0, -(-s // f) * f) for s, f in zip(spatial, factor)]
    x = _read(image, ranges, spatial)
    with _Eval(model):
        y = _forward(model, x[None])[0]
    return np.ascontiguousarray(y[(slice(None),) + tuple(slice(0, s) for s in spatial)])


def predict_tiled(model, image, tile_size=None, batch_size=1, memory_budget=None, out=None, progress=False):
    """Run ``model`` (a :class:`cellkern.nn.UNet`, or a model with the same ``ndim``, ``in_channels``,
    ``output_channels``, ``downsampling_factor``, ``input_interval(lo, hi, dim, numeric)`` and ``receptive_field()``)
    over ``image (C, *spatial)`` (numpy,
    memory-mapped, zarr or dask array; read one tile at a time) tile by tile, per :func:`plan_tiles`.

    Returns ``out`` (or a new float32 numpy array) of shape ``(C_out, *spatial)``: on CPU float32 bit-equal to
    :func:`predict_whole`. ``out`` may be any array with numpy-style slice assignment (numpy, memmap, zarr); its
    shape is checked before anything is written. Tiles of one shape run together in batches of ``batch_size``
    (the buffer pool reuses their activations from batch to batch; between shapes it is emptied, so memory stays
    at one batch's working set). ``progress``: a tqdm bar over tiles."""
    spatial = _check_image(model, image)
    plan = plan_tiles(model, spatial, tile_size, memory_budget, batch_size)
    with _Eval(model):
        c_out = model.output_channels
        want = (c_out,) + spatial
        if out is None:
            out = np.empty(want, np.float32)
        elif tuple(getattr(out, "shape", ())) != want:
            raise ValueError(f"out: expected shape {want}, got {tuple(getattr(out, 'shape', ()))}")
        groups = defaultdict(list)
        for tile in plan.tiles:
            groups[tuple(b - a for _, _, a, b in tile)].append(tile)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plan), desc="tiles", unit="tile")
        try:
            for tiles in groups.values():
                for k in range(0, len(tiles), batch_size):
                    batch = tiles[k:k + batch_size]
                    x = np.stack([_read(image, [(a, b) for _, _, a, b in t], spatial) for t in batch])
                    y = _forward(model, x)
                    for t, yt in zip(batch, y):
                        crop = tuple(slice(c0 - a, c1 - a) for c0, c1, a, _ in t)
                        out[(slice(None),) + tuple(slice(c0, c1) for c0, c1, _, _ in t)] = yt[(slice(None),) + crop]
                    del x, y
                    if bar is not None:
                        bar.update(len(batch))
                _pool.empty_cache()  # the next shape cannot reuse these buffers
        finally:
            if bar is not None:
                bar.close()
    return out
