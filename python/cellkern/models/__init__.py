"""StarDist models in PyTorch on cellkern's layers: config, network, targets, loss, prediction, save/load."""
from .config import StarDistConfig
from .stardist import StarDist2D, StarDist3D

__all__ = ["StarDistConfig", "StarDist2D", "StarDist3D"]
