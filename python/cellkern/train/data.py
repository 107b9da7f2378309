"""Training data for cellkern.train: image/mask pairs given as arrays or file paths, checked once, loaded on demand
into a small cache, normalised once per load; foreground-biased random crops."""
from __future__ import annotations

import numbers
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..data import normalize

__all__ = ["read_array", "PairedImages", "random_crop_corner", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".npy")


def read_array(path) -> np.ndarray:
    """One image or mask from a file: TIFF (tifffile) or .npy. Every file read of cellkern.train goes through here."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".tif", ".tiff"):
        from .._optional import require

        return require("tifffile", f"reading {p.name}").imread(p)
    if suffix == ".npy":
        return np.load(p, allow_pickle=False)
    raise ValueError(f"{p}: unsupported file type {suffix!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")


def _is_path(item):
    return isinstance(item, (str, os.PathLike))


class PairedImages:
    """Images ``X`` and label masks ``Y`` (equal-length sequences of numpy arrays or file paths) for a model with
    ``ndim`` spatial axes and ``n_channels`` input channels.

    Nothing is loaded at construction. :meth:`check` reads every pair once (one at a time) to validate it and to
    record its shape and foreground size, so bad data fails before training starts. :meth:`get` returns
    ``(image float32 normalised (*spatial, C), labels (*spatial), foreground flat indices)``, loading through
    :func:`read_array` into an LRU cache of at most ``cache_size`` pairs (default: all pairs when every item is an
    in-memory array, else 16); an image is normalised (percentiles ``pmin``/``pmax`` per channel over the whole
    image) once per load.
    """

    def __init__(self, X, Y, ndim, n_channels=1, pmin=1.0, pmax=99.8, cache_size=None, names=("X", "Y")):
        self.names = names
        for seq, name in zip((X, Y), names):
            if isinstance(seq, (str, os.PathLike, np.ndarray)) or not hasattr(seq, "__len__"):
                raise TypeError(f"{name}: expected a sequence (list) of arrays or file paths, got {type(seq).__name__}")
        if len(X) != len(Y):
            raise ValueError(f"{names[0]} and {names[1]}: {len(X)} images but {len(Y)} masks")
        if len(X) == 0:
            raise ValueError(f"{names[0]}: empty training set (no images)")
        for seq, name in zip((X, Y), names):
            for i, item in enumerate(seq):
                if not (_is_path(item) or isinstance(item, np.ndarray)):
                    raise TypeError(f"{name}[{i}]: expected a numpy array or a file path, got {type(item).__name__}")
                if _is_path(item) and not Path(item).is_file():
                    raise FileNotFoundError(f"{name}[{i}]: no such file: {item}")
        self.X, self.Y = list(X), list(Y)
        self.ndim, self.n_channels = int(ndim), int(n_channels)
        self.pmin, self.pmax = float(pmin), float(pmax)
        lazy = any(_is_path(v) for v in self.X + self.Y)
        self.cache_size = int(cache_size) if cache_size is not None else (16 if lazy else len(self.X))
        if self.cache_size < 1:
            raise ValueError(f"cache_size: expected a positive integer, got {cache_size!r}")
        self._cache = OrderedDict()
        self.shapes = None  # spatial shape of every pair, filled by check()
        self.n_foreground = None

    def __len__(self):
        return len(self.X)

    def _raw(self, i):
        x, y = self.X[i], self.Y[i]
        x = read_array(x) if _is_path(x) else x
        y = read_array(y) if _is_path(y) else y
        return self._validate(i, np.asarray(x), np.asarray(y))

    def _validate(self, i, x, y):
        nx, ny = self.names
        if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"{ny}[{i}]: masks must be integer label images (0 = background), got dtype {y.dtype}")
        if y.ndim != self.ndim:
            raise ValueError(f"{ny}[{i}]: expected a {self.ndim}D label image, got shape {y.shape}")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)) or x.dtype == bool:
            raise TypeError(f"{nx}[{i}]: expected a real-valued image, got dtype {x.dtype}")
        if x.ndim == self.ndim and self.n_channels == 1:
            x = x[..., None]
        if x.ndim != self.ndim + 1 or x.shape[-1] != self.n_channels:
            raise ValueError(f"{nx}[{i}]: expected shape (*spatial{', C' if self.n_channels > 1 else ''}) with "
                             f"{self.ndim} spatial axes and {self.n_channels} channel(s), got {x.shape}")
        if x.shape[:-1] != y.shape:
            raise ValueError(f"{ny}[{i}]: mask shape {y.shape} does not match image {nx}[{i}] shape {x.shape[:-1]}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ValueError(f"{nx}[{i}]: image contains NaN or infinite values")
        if y.size and y.min() < 0:
            raise ValueError(f"{ny}[{i}]: labels must be non-negative")
        return x, y

    def check(self, progress=False):
        """Reads every pair once: validates it and records ``shapes`` and ``n_foreground``. Returns self."""
        from .._optional import require

        tqdm = require("tqdm.auto", "PairedImages.check").tqdm

        shapes, fg = [], []
        for i in tqdm(range(len(self)), desc="checking data", disable=not progress, leave=False):
            entry = self._cache.get(i)
            labels = entry[1] if entry is not None else self._load(i)[1]
            shapes.append(tuple(labels.shape))
            fg.append(int(np.count_nonzero(labels)))
        self.shapes, self.n_foreground = shapes, fg
        return self

    def _load(self, i):
        x, y = self._raw(i)
        axis = tuple(range(self.ndim))  # per channel over all spatial axes
        entry = (normalize(x, self.pmin, self.pmax, axis=axis), y, np.flatnonzero(y))
        self._cache[i] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def get(self, i):
        """``(image (*spatial, C) float32 normalised, labels (*spatial), foreground flat indices)`` of pair i."""
        entry = self._cache.get(i)
        if entry is None:
            return self._load(i)
        self._cache.move_to_end(i)
        return entry


def random_crop_corner(shape, size, rng, foreground=None, foreground_prob=0.0):
    """Corner of a random crop of ``size`` inside an image of ``shape`` (``size <= shape`` per axis).

    With probability ``foreground_prob`` (and a non-empty ``foreground``, flat indices into ``shape``) the crop is
    placed around a foreground pixel drawn uniformly: centred on it, shifted only where the image border requires
    (so the pixel always lies inside the crop). Otherwise the corner is uniform over all positions (StarDist's
    ``train_foreground_only`` sampling)."""
    shape, size = np.asarray(shape, np.int64), np.asarray(size, np.int64)
    if np.any(size > shape):
        raise ValueError(f"size {tuple(size)} is larger than the image {tuple(shape)}")
    if foreground is not None and len(foreground) and rng.uniform() < foreground_prob:
        centre = np.array(np.unravel_index(int(foreground[rng.integers(len(foreground))]), tuple(shape)))
        return tuple(int(v) for v in np.clip(centre - size // 2, 0, shape - size))
    return tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(shape, size))


def as_size(value, ndim, name):
    """An int or a sequence of ``ndim`` positive ints, as a tuple."""
    if isinstance(value, numbers.Integral):
        value = (int(value),) * ndim
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {ndim} positive integers, got {value!r}") from None
    if len(out) != ndim or min(out) < 1 or any(not float(v).is_integer() for v in value):
        raise ValueError(f"{name}: expected {ndim} positive integers, got {value!r}")
    return out
