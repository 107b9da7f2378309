"""StarDist models in PyTorch on cellkern's layers: config, network, targets, loss, prediction, save/load."""
from .._optional import require as _require

_require("torch", "cellkern.models")  # fails here with the pip command, not deep inside
from .config import StarDistConfig
from .stardist import StarDist2D, StarDist3D

__all__ = ["StarDistConfig", "StarDist2D", "StarDist3D"]
