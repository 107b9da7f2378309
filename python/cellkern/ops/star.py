"""Star-convex polygon plumbing: numpy/torch hand-off, output and workspace allocation, ray tables (cached)."""
from __future__ import annotations

import functools
import threading

import numpy as np

from .. import _C
from ._common import dl, emu_flag, stream_of, torch

__all__ = ["is_torch", "as_array", "ray_steps_2d", "trig_table", "ray_tables", "to_device", "new_zeros",
           "new_empty", "emu_for", "stream_for", "workspace"]

_INT_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


def is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def as_array(x, name: str, *, ndim=None, kind=None):
    """A contiguous numpy array or torch tensor (torch tensors stay on their device), checked for rank/kind.

    kind: 'int' (integer labels), 'float' (float32/float64), or None. Raises TypeError / ValueError naming `name`.
    """
    if is_torch(x):
        t = x.detach()
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name}: cellkern runs on cpu and cuda tensors, got a tensor on {t.device}")
        dt = t.dtype
        if kind == "int" and (dt.is_floating_point or dt.is_complex or dt == torch.bool):
            raise TypeError(f"{name}: expected an integer tensor, got {dt}")
        if kind == "float" and dt not in (torch.float32, torch.float64):
            raise TypeError(f"{name}: expected a float32 or float64 tensor, got {dt}")
        if ndim is not None and t.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
            raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")
        return t.contiguous()
    if not isinstance(x, np.ndarray):
        if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
            try:
                x = np.asarray(x)
            except (TypeError, ValueError):  # ragged nesting: not an array of numbers at all
                raise TypeError(f"{name}: expected a numpy array or torch tensor, got a {type(x).__name__} that "
                                "is not a regular array of numbers") from None
        else:
            raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype.hasobject or x.dtype.kind in "USV":
        raise TypeError(f"{name}: expected an array of numbers, got dtype {x.dtype}")
    if kind == "int" and x.dtype.type not in _INT_DTYPES:
        raise TypeError(f"{name}: expected an integer array, got {x.dtype}")
    if kind == "float" and x.dtype not in (np.float32, np.float64):
        if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32 if x.dtype.itemsize <= 4 else np.float64)
        else:
            raise TypeError(f"{name}: expected a float32 or float64 array, got {x.dtype}")
    if ndim is not None and x.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ValueError(f"{name}: expected {ndim} dims, got shape {x.shape}")
    return np.ascontiguousarray(x)


def emu_for(x) -> bool:
    return emu_flag(x)


def stream_for(x) -> int:
    return stream_of(x)


def new_empty(shape, dtype, like):
    """np.empty / torch.empty on like's device (dtype given as a numpy dtype)."""
    if is_torch(like):
        return torch.empty(tuple(shape), dtype=_torch_dtype(dtype), device=like.device)
    return np.empty(tuple(shape), dtype)


def new_zeros(shape, dtype, like):
    """Zeros. For numpy this is calloc: large buffers come from fresh zero pages that are only touched where a
    kernel writes, so kernels that skip background never pay for the untouched pages."""
    if is_torch(like):
        return torch.zeros(tuple(shape), dtype=_torch_dtype(dtype), device=like.device)
    return np.zeros(tuple(shape), dtype)


def _torch_dtype(dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
            np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
            np.dtype(np.uint8): torch.uint8}[np.dtype(dtype)]


_ws = threading.local()
_WS_CAP = 256 << 20  # bytes kept per thread between calls


def workspace(name: str, shape, dtype, like):
    """A scratch buffer reused across calls by this thread (host numpy only; torch tensors get fresh ones from
    torch's allocator). Freed buffers of this size go back to the OS, and mapping them again costs a page fault per
    4 KiB -- e.g. 4000 faults, several ms, for the padded labels of a 2048^2 image. Contents are not preserved."""
    if is_torch(like):
        return new_empty(shape, dtype, like)
    cache = getattr(_ws, "cache", None)
    if cache is None:
        cache = _ws.cache = {}
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    buf = cache.get(name)
    if buf is None or buf.nbytes < n:
        buf = np.empty(max(n, 1), np.uint8)
        if n <= _WS_CAP:
            cache[name] = buf
    return buf[:n].view(dtype).reshape(shape)


def to_device(a: np.ndarray, like):
    """A host numpy table moved next to `like` (torch tensors on their device; numpy stays numpy)."""
    if is_torch(like):
        return torch.from_numpy(np.array(a)).to(like.device)  # a writable copy: torch warns on read-only memory
    return a


def ray_steps_2d(n_rays: int) -> np.ndarray:
    """StarDist's 2D unit steps (n_rays, 2) float32 (row, col): phi = f32(k) * f32(2 pi / n), correctly rounded
    sin/cos (StarDist calls glibc sinf/cosf, one ulp off for a few angles)."""
    st = np.float32(2 * np.pi / n_rays)
    phi = np.arange(n_rays, dtype=np.float32) * st
    return np.stack([np.sin(phi.astype(np.float64)), np.cos(phi.astype(np.float64))], 1).astype(np.float32)


@functools.lru_cache(maxsize=64)
def trig_table(n_rays: int) -> np.ndarray:
    """(2, n_rays) float64: sin and cos of np.linspace(0, 2 pi, n_rays, endpoint=False) (dist_to_coord, NMS)."""
    phis = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    t = np.ascontiguousarray(np.stack([np.sin(phis), np.cos(phis)]))
    t.flags.writeable = False
    return t


_table_lock = threading.Lock()
_table_cache: dict = {}


def ray_tables(steps: np.ndarray, shape: tuple):
    """The per-ray star_dist tables (offs, pos, dist) for this image shape; cached (a few MB, ~1 ms to build)."""
    steps = np.ascontiguousarray(steps, np.float32)
    key = (tuple(int(s) for s in shape), steps.shape, steps.tobytes())
    with _table_lock:
        hit = _table_cache.get(key)
    if hit is not None:
        return hit
    n_steps = _C.star_table_steps(list(shape))
    n_rays, nd = steps.shape
    offs = np.empty((n_rays, n_steps), np.int64)
    pos = np.empty((n_rays, n_steps, nd), np.float32)
    dist = np.empty((n_rays, n_steps), np.float32)
    _C.star_dist_tables(steps, list(shape), offs, pos, dist)
    for a in (offs, pos, dist):
        a.flags.writeable = False
    tables = (offs, pos, dist)
    with _table_lock:
        if len(_table_cache) >= 8:
            _table_cache.pop(next(iter(_table_cache)))
        _table_cache[key] = tables
    return tables


def dlp(x):
    """What the bindings take: numpy arrays as they are, torch tensors as DLPack capsules."""
    return dl(x) if is_torch(x) else x
