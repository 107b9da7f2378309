"""Star-convex polygons (StarDist semantics), fast: star_dist targets, polygon NMS, rasterisation, matching."""
from .matching import MatchingStats, label_overlap, matching, matching_dataset
from .nms import last_nms_stats, non_maximum_suppression
from .render import decode, dist_to_coord, polygons_to_label
from .targets import edt_prob, rays_golden_spiral, star_dist, star_dist3d

__all__ = ["star_dist", "star_dist3d", "rays_golden_spiral", "edt_prob", "non_maximum_suppression", "last_nms_stats",
           "dist_to_coord", "polygons_to_label", "decode", "matching", "matching_dataset", "MatchingStats",
           "label_overlap"]
