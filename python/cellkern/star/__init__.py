"""Star-convex polygons and polyhedra (StarDist semantics), fast: star_dist targets, NMS, rasterisation, matching."""
from .matching import MatchingStats, label_overlap, matching, matching_dataset
from .nms import last_nms_stats, non_maximum_suppression
from .polyhedra import (decode3d, last_nms3d_stats, non_maximum_suppression_3d, non_maximum_suppression_3d_inds,
                        non_maximum_suppression_3d_sparse, polyhedron_to_label, polyhedron_volumes,
                        relabel_image_stardist3d, relabel_image_stardist3D)
from .render import decode, dist_to_coord, polygons_to_label
from .rays import (Rays_Base, Rays_Cartesian, Rays_Explicit, Rays_GoldenSpiral, Rays_Octo, Rays_SubDivide,
                   Rays_Tetra, rays_from_json)
from .geometry3d import (dist_to_centroid, dist_to_coord3d, dist_to_coord3D, dist_to_volume, export_to_obj_file3d,
                         export_to_obj_file3D)
from .targets import edt_prob, rays_golden_spiral, star_dist, star_dist3d
# StarDist's 2D names (stardist.nms, stardist.geometry, stardist.matching)
from .matching import (DatasetMatching, MatchingReport, group_matching_labels, intersection_over_pred,
                       intersection_over_true, intersection_over_union, label_are_sequential, label_overlap_sparse,
                       matching_dataset_lazy, relabel_sequential)
from .nms import non_maximum_suppression_inds, non_maximum_suppression_sparse
from .render import polygons_to_label_coord, ray_angles, relabel_image_stardist

__all__ = ["star_dist", "star_dist3d", "rays_golden_spiral", "edt_prob", "non_maximum_suppression", "last_nms_stats",
           "dist_to_coord", "polygons_to_label", "decode", "matching", "matching_dataset", "MatchingStats",
           "label_overlap",
           # 3D polyhedra
           "polyhedron_to_label", "non_maximum_suppression_3d", "non_maximum_suppression_3d_sparse",
           "non_maximum_suppression_3d_inds", "relabel_image_stardist3D", "relabel_image_stardist3d",
           "last_nms3d_stats", "polyhedron_volumes", "decode3d", "Rays_Base", "Rays_GoldenSpiral", "Rays_Octo",
           "Rays_Tetra", "Rays_SubDivide", "Rays_Cartesian", "Rays_Explicit", "rays_from_json", "dist_to_coord3d",
           "dist_to_coord3D", "dist_to_volume", "dist_to_centroid", "export_to_obj_file3d", "export_to_obj_file3D",
           # StarDist's 2D API
           "non_maximum_suppression_sparse", "non_maximum_suppression_inds", "polygons_to_label_coord",
           "relabel_image_stardist", "ray_angles", "matching_dataset_lazy", "relabel_sequential",
           "group_matching_labels", "intersection_over_union", "intersection_over_true", "intersection_over_pred",
           "label_are_sequential", "label_overlap_sparse", "MatchingReport", "DatasetMatching"]
