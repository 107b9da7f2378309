"""Star-convex polygons (StarDist semantics), fast: star_dist targets, polygon NMS, rasterisation, matching."""
from .targets import rays_golden_spiral, star_dist, star_dist3d

__all__ = ["star_dist", "star_dist3d", "rays_golden_spiral"]
