"""What every op's Python layer shares: argument tidying, DLPack hand-off, layouts, backend and stream choice."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import _ext
from .._pool import empty as _pooled_empty

try:
    import torch
    from torch.utils.dlpack import to_dlpack as _to_dlpack
except ImportError:  # torch is optional: numpy entry points work without it
    torch = None


def batched(x, nd, name="x"):
    """(x with a leading batch dim, whether one was added): accepts (N, C, *spatial) or (C, *spatial)."""
    if x.ndim == nd + 2:
        return x, False
    if x.ndim == nd + 1:
        return x[None], True
    dims = "(N, C, H, W) or (C, H, W)" if nd == 2 else "(N, C, D, H, W) or (C, D, H, W)"
    raise ValueError(f"{name}: expected a {nd + 2}D or {nd + 1}D array {dims}, got shape {tuple(x.shape)}")


def require_torch():
    if torch is None:
        from .._optional import require

        return require("torch", "this cellkern call (torch tensors, autograd, torch.compile)")
    return torch


def ntuple(v, nd: int, name: str) -> list[int]:
    """An int or a sequence of nd ints -> a list of nd Python ints (each within int64; the C++ side checks the
    op's own limits and names the argument)."""
    if isinstance(v, (int, np.integer)):
        out = [int(v)] * nd
    elif isinstance(v, Sequence) and len(v) == nd and all(isinstance(i, (int, np.integer)) for i in v):
        out = [int(i) for i in v]
    elif isinstance(v, Sequence) and len(v) == 1 and isinstance(v[0], (int, np.integer)):
        out = [int(v[0])] * nd
    else:
        raise ValueError(f"{name}: expected an int or {nd} ints, got {v!r}")
    for i in out:
        if not -(1 << 63) <= i < (1 << 63):
            raise ValueError(f"{name}: {i} does not fit in int64")
    return out


# ---- array arguments: kinds, dtypes, devices -------------------------------------------------------------------

def is_tensor(t) -> bool:
    return torch is not None and isinstance(t, torch.Tensor)


def _kind(a) -> str:
    return "None" if a is None else type(a).__name__


def host_array(a, name: str):
    """A numpy array argument as the kernels read it: TypeError naming `name` for anything but a numpy array of a
    numeric dtype (lists, tuples, None, object or string arrays: DLPack cannot carry them); non-native byte order
    is converted (the bytes differ, the values do not)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {_kind(a)}")
    if a.dtype.kind not in "biufc":
        raise TypeError(f"{name}: expected a numeric array (float32 or float64), got dtype {a.dtype}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def to_numpy(a, name: str):
    """An array-like argument (numpy array, list, tuple, object with __array__) as a numeric numpy array, for ops that
    accept array-likes: TypeError naming `name` when it is none of these or does not convert to numbers."""
    if isinstance(a, np.ndarray):
        return host_array(a, name)
    if a is None or not (isinstance(a, (list, tuple)) or hasattr(a, "__array__")):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {_kind(a)}")
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:  # ragged nesting, objects that refuse
        raise TypeError(f"{name}: could not convert a {_kind(a)} to an array ({e})") from None
    return host_array(arr, name)


def check_tensor(t, name: str, *, none_ok: bool = False):
    """A torch tensor argument: TypeError naming `name` for other kinds, ValueError for devices cellkern does not run
    on (meta, mps, ...). Returns t."""
    if t is None and none_ok:
        return t
    if not is_tensor(t):
        raise TypeError(f"{name}: expected a torch.Tensor{' or None' if none_ok else ''}, got {_kind(t)}")
    check_device(t, name)
    return t


def check_same_device(*named) -> None:
    """(name, tensor or None) pairs: every tensor on a cpu/cuda device and all on the same one, else ValueError
    naming the pair that differs (a kernel reads every operand from one device)."""
    first = None
    for name, t in named:
        if t is None:
            continue
        check_device(t, name)
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise ValueError(f"{name} is on {t.device} but {first[0]} is on {first[1]}: every tensor of a call must "
                             f"be on the same device")


# ---- allocation --------------------------------------------------------------------------------------------------

ADDRESSABLE_BYTES = 1 << 47  # a 64-bit process's user address space (x86-64 / arm64, 4-level page tables): 128 TiB


def _nbytes(shape, itemsize: int, name: str) -> int:
    n = math.prod(int(s) for s in shape) * itemsize
    if n > ADDRESSABLE_BYTES:
        raise ValueError(f"{name}: shape {tuple(int(s) for s in shape)} needs {n} bytes, more than a process can "
                         f"address (2**47); check the stride, padding, dilation and sizes")
    return n


def _oom(e) -> bool:
    if torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(e)
    return "can't allocate memory" in text or "out of memory" in text or "Unable to allocate" in text


def empty(shape, dtype, device, name: str, channels_last: bool = False):
    """An uninitialised torch tensor for an output or workspace (pooled when large, on CPU): ValueError beyond
    addressable memory, MemoryError naming `name` and the bytes when the allocation fails."""
    n = _nbytes(shape, dtype.itemsize, name)
    try:
        return _pooled_empty(shape, dtype, device, channels_last)
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, MemoryError) or _oom(e):
            raise MemoryError(f"{name}: could not allocate {n} bytes ({tuple(shape)}, {dtype})") from None
        raise


def np_empty(shape, dtype, name: str):
    """np.empty for an output: ValueError beyond addressable memory, MemoryError naming `name` and the bytes."""
    dtype = np.dtype(dtype)
    n = _nbytes(shape, dtype.itemsize, name)
    try:
        return np.empty(tuple(int(s) for s in shape), dtype)
    except MemoryError:
        raise MemoryError(f"{name}: could not allocate {n} bytes ({tuple(shape)}, {dtype})") from None


def dl(t):
    """A DLPack capsule for a torch tensor (about 1 us), the array itself for numpy (read through __dlpack__)."""
    if t is None or isinstance(t, np.ndarray):
        return t
    return _to_dlpack(t.detach())


def emu_flag(t) -> bool:
    """Whether this call runs on the emulator (CPU data inside ``cellkern.backend("emu")``)."""
    return _ext.use_emu() and (isinstance(t, np.ndarray) or t.device.type == "cpu")


def stream_of(t) -> int:
    """The caller's CUDA stream for CUDA tensors (kernels run on it), else 0."""
    if isinstance(t, np.ndarray) or t.device.type != "cuda":
        return 0
    return torch.cuda.current_stream(t.device).cuda_stream


def check_device(t, name: str) -> None:
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: cellkern runs on cpu and cuda tensors, got a tensor on {t.device}")


def channels_last_format(nd: int):
    return torch.channels_last if nd == 2 else torch.channels_last_3d


def is_channels_last(t, nd: int) -> bool:
    """Dense channels-last and not also plain contiguous (the C++ side reads it the same way)."""
    return (not t.is_contiguous()) and t.is_contiguous(memory_format=channels_last_format(nd))


def dense(t, nd: int):
    """t itself when contiguous or channels-last, else a contiguous copy: the layouts kernels read."""
    if t.is_contiguous() or t.is_contiguous(memory_format=channels_last_format(nd)):
        return t
    return t.contiguous()


def memory_format(channels_last: bool, nd: int):
    return channels_last_format(nd) if channels_last else torch.contiguous_format
