"""Loads the compiled modules: _C at import, _emu and _cuda only on first use (importing never touches a GPU)."""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import threading

from . import _C

_lock = threading.Lock()
_use_emu = contextvars.ContextVar("cellkern_use_emu", default=False)

_NO_CUDA_BUILD = ("cellkern was built without its CUDA module (no CUDA compiler was found at build time, "
                  "or CELLKERN_CUDA=OFF)")


def cuda_status() -> dict:
    """Whether cellkern can run CUDA kernels here, and if not, why.

    Returns a dict with ``available`` (bool), ``reason`` (str, empty when available), ``built`` (the _cuda module
    exists), and when built: ``device_count``, ``error`` (the cudaError_t of cudaGetDeviceCount, e.g. 35 =
    cudaErrorInsufficientDriver when no driver is installed), ``runtime_version``, ``driver_version``,
    ``architectures``. The first call loads _cuda and asks the CUDA runtime.
    """
    try:
        mod = importlib.import_module("cellkern._cuda")
    except ImportError as e:
        return {"available": False, "built": False, "reason": f"{_NO_CUDA_BUILD}: {e}"}
    s = dict(mod.status())
    s["built"] = True
    s["architectures"] = mod.architectures
    if s["error"] != 0:
        s["available"] = False
        s["reason"] = (f"cudaGetDeviceCount failed with {s['error_name']} ({s['error']}): {s['error_string']}"
                       + ("; no NVIDIA driver is installed" if s["driver_version"] == 0 else ""))
    elif s["device_count"] == 0:
        s["available"] = False
        s["reason"] = "the CUDA runtime found no device"
    else:
        s["available"] = True
        s["reason"] = ""
    return s


def _load_backend(name: str) -> None:
    """Called by _C before the first CUDA/emulator call: registers the kernel tables, or records why not."""
    with _lock:
        try:
            if name == "cuda":
                status = cuda_status()
                if not status["available"]:
                    _C._set_backend_error("cuda", status["reason"])
                    return
            mod = importlib.import_module(f"cellkern._{name}")
            _C._register_backend(name, mod.kernel_tables())
        except Exception as e:  # noqa: BLE001 - any failure becomes the reason the backend is unavailable
            _C._set_backend_error(name, f"{type(e).__name__}: {e}")


@contextlib.contextmanager
def backend(name: str):
    """Run ops on CPU data with the given backend: ``"cpu"`` (default) or ``"emu"`` (the CUDA kernels on the
    SIMT emulator; a correctness tool, slow). CUDA data always runs on CUDA."""
    if name not in ("cpu", "emu"):
        raise ValueError(f"backend must be 'cpu' or 'emu', got {name!r}")
    token = _use_emu.set(name == "emu")
    try:
        yield
    finally:
        _use_emu.reset(token)


def use_emu() -> bool:
    return _use_emu.get()


def set_num_threads(n: int) -> None:
    """Threads used by cellkern's CPU kernels (OpenMP); 0 restores the default (OMP_NUM_THREADS or all cores).
    Independent of torch.set_num_threads."""
    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    return _C.get_num_threads()
