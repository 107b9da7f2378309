"""Optional dependencies: imported where used, checked before the work starts, with the pip command that adds them."""
from __future__ import annotations

import importlib

# top-level module -> (pip requirement, the cellkern extra that brings it in, or None for a required dependency)
_EXTRAS = {
    "torch": ("torch", "torch"),
    "matplotlib": ("matplotlib", "train"),
    "tifffile": ("tifffile", "train"),
    "dask": ("dask[array]", "big"),
    "distributed": ("distributed", "big"),
    "zarr": ("zarr", "big"),
    "onnx": ("onnx", "bench"),
    "onnxruntime": ("onnxruntime", "bench"),
    "tqdm": ("tqdm", None),
}


class MissingDependency(ImportError):
    """An optional dependency is not installed (the message says how to install it)."""


def message(name: str, purpose: str, extra: str | None = None) -> str:
    """The ImportError text for a missing ``name`` (a module, or a submodule of one) needed by ``purpose``."""
    top = name.split(".")[0]
    package, default_extra = _EXTRAS.get(top, (top, None))
    extra = extra or default_extra
    text = f"{purpose} needs {top}, which is not installed: "
    if extra is None:
        return text + f'pip install "{package}" (a dependency of cellkern)'
    text += f'pip install "cellkern[{extra}]" (or pip install "{package}")'
    if top == "torch":
        # a bare torch requirement on a fresh machine pulls a multi-GB CUDA build
        text += "; install your torch build first, e.g. pip install torch==2.13.0"
    return text


def require(name: str, purpose: str, extra: str | None = None):
    """The module ``name``, imported; ImportError naming the extra to install when it (or its package) is missing.

    ``purpose`` names what needs it ("cellkern demo", "fit(out_dir=...)"); ``extra`` overrides the default extra
    where another one fits the caller better (tifffile is in both ``train`` and ``big``)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing = getattr(e, "name", None)
        # a package that is there but fails inside (a broken build, a missing C library) keeps its own error
        if isinstance(e, ModuleNotFoundError) and (missing is None or name == missing or
                                                   name.startswith(missing + ".")):
            raise MissingDependency(message(name, purpose, extra), name=name) from e
        raise


def check(*names: str, purpose: str, extra: str | None = None) -> None:
    """Fails early, before a long run, when any of ``names`` is missing (imports them: later imports are free)."""
    for name in names:
        require(name, purpose, extra)
