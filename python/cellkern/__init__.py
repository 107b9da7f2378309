"""cellkern: fast CPU/CUDA kernels for microscopy segmentation (conv, pooling, star-convex polygons, tiling)."""
from importlib import import_module as _import_module

__version__ = "0.1.0"

# Submodules load on first use: `import cellkern` stays cheap and never imports torch or touches a GPU driver.
_SUBMODULES = ("ops", "nn", "star", "data", "models", "train", "reference", "predict")


def __getattr__(name):
    if name in _SUBMODULES:
        return _import_module(f"{__name__}.{name}")
    if name in ("cuda_status", "set_num_threads", "get_num_threads", "backend"):
        return getattr(_import_module(f"{__name__}._ext"), name)
    if name in ("empty_cache", "set_pool_limit", "pool_stats"):
        return getattr(_import_module(f"{__name__}._pool"), name)
    raise AttributeError(f"module 'cellkern' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES) + ["cuda_status", "set_num_threads", "get_num_threads", "backend",
                                                   "empty_cache", "set_pool_limit", "pool_stats"])
