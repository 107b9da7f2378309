"""Buffer pool for the large CPU tensors cellkern's ops return: a storage whose last user has let go is handed
out again instead of being freed and page-faulted anew.

Why: a training step allocates and frees the same few hundred MB of activations and gradients every step. Fresh
pages cost the kernel's zeroing and fault handling (measured on the anchor U-Net's step, 4 x 1 x 256^2, 2 threads:
medians of 889-1217 ms over four runs without the pool, 805-832 ms over three with it). torch's CPU allocator has no
cache, so this one lives here, only for cellkern's own outputs.

The pool owns blocks of memory; each output gets a torch storage of its own over a block (through
``torch.frombuffer``), and the block returns to the pool only when that storage dies, i.e. when no tensor, view,
numpy array or DLPack export of it is left: a pooled output never aliases a live tensor. The storage has no other
holder (no Python storage object, no reference from the pool), so torch treats it as its own: autograd adds a
second gradient into it in place and AccumulateGrad keeps it as ``.grad`` without a copy. Like any tensor over
external memory it cannot grow in place (``resize_`` to more bytes raises; shrinking, views, pickling, saving and
``share_memory_`` work). The pool keeps at most ``limit`` bytes (default 1 GiB; ``CELLKERN_POOL_MB`` or
``cellkern.set_pool_limit``; 0 turns it off); idle blocks are evicted, least recently used first, to make room,
and ``cellkern.empty_cache()`` drops all idle ones.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import threading
import weakref
from collections import OrderedDict

import numpy as np

MIN_BYTES = 1 << 20  # smaller tensors: torch's allocator (malloc) reuses them without faulting anyway

try:
    import torch
except ImportError:  # numpy-only install: nothing to pool
    torch = None


def _limit_from_env() -> int:
    text = os.environ.get("CELLKERN_POOL_MB", "1024")
    try:
        mb = float(text)
    except ValueError:
        raise ValueError(f"CELLKERN_POOL_MB: expected a number of MiB, got {text!r}") from None
    if not mb >= 0:
        raise ValueError(f"CELLKERN_POOL_MB: expected >= 0, got {text!r}")
    return int(mb * (1 << 20))


class _Block:
    """Memory the pool owns (a torch uint8 tensor, or an anonymous mapping within :func:`limited`) and whether a
    storage over it is out."""
    __slots__ = ("array", "nbytes", "in_use", "__weakref__")

    def __init__(self, array, nbytes: int):
        self.array = array  # numpy uint8 view of the memory (holds the tensor or the mapping)
        self.nbytes = nbytes
        self.in_use = False

    def data_ptr(self) -> int:
        return self.array.ctypes.data


class _Pool:
    def __init__(self, limit: int):
        self.limit = limit
        self.mapped = False  # blocks of their own mappings (within limited(), see _mapped)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        # Reentrant: a storage's death (which frees its block, under the lock) can happen while this thread holds it.
        self.lock = threading.RLock()
        self.by_size: dict[int, dict] = {}   # nbytes -> {id: block} of that size
        self.order: OrderedDict = OrderedDict()  # id -> nbytes, least recently handed out first

    def _idle(self, block) -> bool:
        return not block.in_use

    def take(self, nbytes: int):
        for key, block in self.by_size.get(nbytes, {}).items():
            if self._idle(block):
                self.order.move_to_end(key)
                self.hits += 1
                block.in_use = True
                return block
        self.misses += 1
        if nbytes > self.limit:
            return None
        if self.bytes + nbytes > self.limit:
            self._evict(self.bytes + nbytes - self.limit)
            if self.bytes + nbytes > self.limit:
                return None  # the pooled blocks are in use: this one is not kept
        block = _Block(_mapped(nbytes) if self.mapped else torch.empty(nbytes, dtype=torch.uint8).numpy(), nbytes)
        self.by_size.setdefault(nbytes, {})[id(block)] = block
        self.order[id(block)] = nbytes
        self.bytes += nbytes
        block.in_use = True
        return block

    def give_back(self, block) -> None:
        with self.lock:
            block.in_use = False

    def _evict(self, need: int) -> None:
        """Free idle blocks, least recently handed out first, until ``need`` bytes are freed."""
        for key, size in list(self.order.items()):
            if need <= 0:
                return
            entries = self.by_size[size]
            if not self._idle(entries[key]):
                continue
            del entries[key], self.order[key]
            if not entries:
                del self.by_size[size]
            self.bytes -= size
            need -= size


def _tensor_over(array, dtype, numel: int, pool=None, block=None):
    """A flat tensor of its own storage over the array's memory, made without a Python storage object: such an
    object stays attached to the storage and counts as a second holder, and autograd adds a gradient into a buffer
    in place only when it holds the storage's last reference (measured: the U-Net's skip connections' gradients were
    summed into fresh tensors, 43 ms of a 750 ms training step). With a pool, the storage's death hands the block
    back."""
    view = array.view()  # an exporter of its own: it dies with the storage
    if pool is not None:
        weakref.finalize(view, pool.give_back, block).atexit = False
    return torch.frombuffer(view, dtype=dtype, count=numel)


def _mapped(nbytes: int):
    """A uint8 array over an anonymous memory mapping of its own, unmapped when the pool lets it go: what a
    memory-bounded run (:func:`limited`) allocates. Through malloc, blocks evicted from the pool stayed in glibc's
    heap as free chunks of the wrong sizes (measured: a streamed 4096^2 run with a 256 MiB pool peaked 355 MB above
    its start, 250 MB of it free heap). Outside :func:`limited` blocks are torch's own allocations. Huge pages are
    asked for as torch asks for them (THP_MEM_ALLOC_ENABLE=1), so both sides of a benchmark fault alike."""
    try:
        buf = mmap.mmap(-1, nbytes)
    except OSError as e:  # ENOMEM (an address-space limit, overcommit refused): what malloc's failure raises
        raise MemoryError(f"could not map {nbytes} bytes: {e}") from None
    if _THP and nbytes >= (2 << 20) and hasattr(buf, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # the kernel refuses (THP off): plain pages
            pass
    return np.frombuffer(buf, dtype=np.uint8)  # the array keeps buf alive


_THP = os.environ.get("THP_MEM_ALLOC_ENABLE", "") == "1"
_pool = _Pool(_limit_from_env()) if torch is not None else None


def _strides(shape, channels_last: bool):
    nd = len(shape)
    if channels_last:  # N, C, spatial...: C fastest, then the spatial dims, then N
        perm = [0] + list(range(2, nd)) + [1]
    else:
        perm = list(range(nd))
    strides = [0] * nd
    step = 1
    for d in reversed(perm):
        strides[d] = step
        step *= int(shape[d])
    return strides


def _size_class(nbytes: int) -> int:
    """nbytes rounded up to one of 8 sizes per octave (at most 12.5% more): outputs whose sizes differ a little (a
    streamed run's slabs of a few rows more or less) share storages instead of each missing the pool."""
    grain = 1 << max(0, nbytes.bit_length() - 4)
    return -(-nbytes // grain) * grain


def empty(shape, dtype, device, channels_last: bool = False):
    """torch.empty(shape, dtype=dtype, device=device) in contiguous (or channels_last) layout; a pooled storage for
    large CPU tensors."""
    shape = [int(s) for s in shape]
    numel = 1
    for s in shape:
        numel *= s
    nbytes = numel * dtype.itemsize
    strides = _strides(shape, channels_last)
    if _pool is not None and _pool.limit > 0 and nbytes >= MIN_BYTES and torch.device(device).type == "cpu":
        with _pool.lock:
            block = _pool.take(_size_class(nbytes))
            if block is not None:
                flat = _tensor_over(block.array, dtype, numel, _pool, block)
                return torch.empty(0, dtype=dtype).set_(flat, 0, shape, strides)
        if _pool.mapped:  # past the limit: a mapping of its own too, given back whole when freed
            return torch.empty(0, dtype=dtype).set_(_tensor_over(_mapped(nbytes), dtype, numel), 0, shape, strides)
    return torch.empty_strided(shape, strides, dtype=dtype, device=device)


def set_pool_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of cellkern's large CPU outputs for reuse (0: no pool; idle storages beyond the new
    limit are freed now)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes: expected an int >= 0, got {nbytes!r}")
    if _pool is None:
        return
    with _pool.lock:
        _pool.limit = nbytes
        if _pool.bytes > nbytes:
            _pool._evict(_pool.bytes - nbytes)


@contextlib.contextmanager
def limited(nbytes: int):
    """Within the block the pool keeps at most ``nbytes`` (never more than its own limit): a memory-bounded runner
    (streamed inference) reuses its own buffers without the pool's default GiB of idle storages piling up on top.
    Blocks made within the block are anonymous mappings of their own (:func:`_mapped`), and outputs past the limit
    too. Idle blocks are freed and the old limit restored afterwards."""
    if _pool is None:
        yield
        return
    with _pool.lock:
        old, old_mapped = _pool.limit, _pool.mapped
    empty_cache()  # idle storages from before are of the other kind
    set_pool_limit(min(old, int(nbytes)))
    _pool.mapped = True
    try:
        yield
    finally:
        _pool.mapped = old_mapped
        empty_cache()
        set_pool_limit(old)


def empty_cache() -> None:
    """Free every pooled storage that no tensor uses (the memory goes back to the allocator)."""
    if _pool is not None:
        with _pool.lock:
            _pool._evict(_pool.bytes + 1)


def pool_stats() -> dict:
    """{'limit', 'bytes' (pooled, in use or idle), 'idle_bytes', 'storages', 'hits', 'misses'}."""
    if _pool is None:
        return {"limit": 0, "bytes": 0, "idle_bytes": 0, "storages": 0, "hits": 0, "misses": 0}
    with _pool.lock:
        idle = sum(size for size, e in _pool.by_size.items() for b in e.values() if _pool._idle(b))
        return {"limit": _pool.limit, "bytes": _pool.bytes, "idle_bytes": idle,
                "storages": sum(len(e) for e in _pool.by_size.values()), "hits": _pool.hits, "misses": _pool.misses}
