"""What every op's Python layer shares: argument tidying, DLPack hand-off, layouts, backend and stream choice."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _ext

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
    """An int or a sequence of nd ints -> a list of nd Python ints."""
    if isinstance(v, (int, np.integer)):
        return [int(v)] * nd
    if isinstance(v, Sequence) and len(v) == nd and all(isinstance(i, (int, np.integer)) for i in v):
        return [int(i) for i in v]
    if isinstance(v, Sequence) and len(v) == 1 and isinstance(v[0], (int, np.integer)):
        return [int(v[0])] * nd
    raise ValueError(f"{name}: expected an int or {nd} ints, got {v!r}")


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
