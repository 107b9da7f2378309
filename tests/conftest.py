"""Shared fixtures: the backends every kernel test runs on (cpu, the portable cpu path, the CUDA kernels on the
emulator in three thread orders, and real CUDA when a GPU exists)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

import cellkern
from cellkern import _C, _ext


def _cuda_reason():
    s = cellkern.cuda_status()
    return None if s["available"] else s["reason"]


def pytest_collection_modifyitems(config, items):
    reason = _cuda_reason()
    if reason is None:
        skip, marker = pytest.mark.skip(reason="checks behaviour without CUDA; a GPU works here"), "no_gpu"
    else:
        skip, marker = pytest.mark.skip(reason=f"needs a CUDA GPU: {reason}"), "gpu"
    for item in items:
        if marker in item.keywords:
            item.add_marker(skip)


@dataclass
class Backend:
    name: str      # cpu | cpu-avx2 | cpu-base | emu-forward | emu-reverse | emu-random | cuda
    device: str    # where test tensors live

    @property
    def is_emu(self):
        return self.name.startswith("emu")


# "cpu" is the best CPU variant of this machine; older variants it also runs are tested by name (cpu-avx2 where the
# best is avx512; cpu-base everywhere).
_OLDER_CPU = ["cpu-avx2"] if _C.cpu_isa() == "avx512" else []
BACKENDS = ["cpu", *_OLDER_CPU, "cpu-base", "emu-forward", "emu-reverse", "emu-random",
            pytest.param("cuda", marks=pytest.mark.gpu)]


def _activate(request, monkeypatch, name):
    if name in ("cpu-base", "cpu-avx2"):
        previous = _C.cpu_isa()
        assert _C.set_cpu_isa(name[4:])
        request.addfinalizer(lambda: _C.set_cpu_isa(previous))
    if name.startswith("emu"):
        order = name.split("-")[1]
        monkeypatch.setenv("CELLKERN_EMU_ORDER", "random:1234" if order == "random" else order)
        token = _ext._use_emu.set(True)
        request.addfinalizer(lambda: _ext._use_emu.reset(token))
    return Backend(name, "cuda" if name == "cuda" else "cpu")


@pytest.fixture(params=["cpu", *_OLDER_CPU])
def cpu_variant(request):
    """The machine's best CPU kernel variant, then each older one with its own kernels (not the portable path)."""
    if request.param != "cpu":
        previous = _C.cpu_isa()
        assert _C.set_cpu_isa(request.param[4:])
        request.addfinalizer(lambda: _C.set_cpu_isa(previous))
    return _C.cpu_isa()


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Runs the test body with one backend active; tests create their tensors on backend.device."""
    return _activate(request, monkeypatch, request.param)


@pytest.fixture(params=BACKENDS[:-1])
def host_backend(request, monkeypatch):
    """The backends that take host data (numpy arrays): all but real CUDA."""
    return _activate(request, monkeypatch, request.param)


@pytest.fixture
def two_threads():
    """cellkern's thread count set to 2 for the test (the threaded paths run even where the default is 1)."""
    import cellkern
    previous = cellkern.get_num_threads()
    cellkern.set_num_threads(2)
    yield
    cellkern.set_num_threads(previous)


@pytest.fixture
def fake_cuda_capsule():
    """Makes legacy DLPack capsules that claim float32 CUDA memory (a real one needs CUDA), to test what an op
    does with CUDA data on a machine without it. Their buffers live until the test ends."""
    import ctypes

    import numpy as np

    class DLTensor(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
                    ("ndim", ctypes.c_int32), ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                    ("lanes", ctypes.c_uint16), ("shape", ctypes.POINTER(ctypes.c_int64)),
                    ("strides", ctypes.c_void_p), ("byte_offset", ctypes.c_uint64)]

    class DLManagedTensor(ctypes.Structure):
        _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]

    keep = []
    new = ctypes.pythonapi.PyCapsule_New
    new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

    def make(shape):
        dims = (ctypes.c_int64 * len(shape))(*shape)
        buf = ctypes.create_string_buffer(4 * int(np.prod(shape)))
        mt = DLManagedTensor(DLTensor(ctypes.cast(buf, ctypes.c_void_p), 2, 0, len(shape), 2, 32, 1, dims, None, 0),
                             None, None)
        keep.extend([dims, buf, mt])
        return new(ctypes.addressof(mt), b"dltensor", None)

    yield make
    keep.clear()


def pytest_addoption(parser):
    parser.addoption("--fuzz-long", action="store_true", help="tests/test_fuzz.py: 50x the CI number of examples")
    parser.addoption("--fuzz-scale", type=float, default=None, help="tests/test_fuzz.py: K x the CI examples")


def pytest_configure(config):
    # Read by tests/test_fuzz.py when it is imported (after this hook), so hypothesis settings see it.
    scale = config.getoption("--fuzz-scale") or (50.0 if config.getoption("--fuzz-long") else None)
    if scale:
        import os
        os.environ["CELLKERN_FUZZ_SCALE"] = str(scale)
