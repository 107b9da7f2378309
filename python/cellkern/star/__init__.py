"""Star-convex polygons (StarDist semantics), fast: star_dist targets, polygon NMS, rasterisation, matching."""
from .nms import last_nms_stats, non_maximum_suppression
from .targets import rays_golden_spiral, star_dist, star_dist3d

__all__ = ["star_dist", "star_dist3d", "rays_golden_spiral", "non_maximum_suppression", "last_nms_stats"]
