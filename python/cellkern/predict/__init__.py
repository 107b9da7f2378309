"""Tiled inference: a tile plan from the network's layers and a runner whose output is bit-equal to one whole-image
forward pass, with memory bounded by the tile, not the image; StarDist instances of big images, block by block."""
from .._optional import require as _require

_require("torch", "cellkern.predict")  # fails here with the pip command, not deep inside
from .instances import predict_instances_big
from .plan import TilePlan, alignment, plan_tiles
from .stream import predict_streamed
from .tiled import predict_tiled, predict_whole

__all__ = ["TilePlan", "alignment", "plan_tiles", "predict_streamed", "predict_tiled", "predict_whole",
           "predict_instances_big"]
