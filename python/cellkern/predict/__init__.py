"""Tiled inference: a tile plan from the network's layers and a runner whose output is bit-equal to one whole-image
forward pass, with memory bounded by the tile, not the image."""
from .plan import TilePlan, plan_tiles
from .tiled import predict_tiled, predict_whole

__all__ = ["TilePlan", "plan_tiles", "predict_tiled", "predict_whole"]
