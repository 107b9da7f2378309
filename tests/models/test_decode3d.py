"""The model's 3D decoder (cellkern.star.polyhedra.decode3d): rasterised polyhedra against an independent
point-in-polyhedron test (scipy's Delaunay), NMS by voxel overlap / smaller volume, painting order, grid and border,
and decoding true targets back to the objects."""
import numpy as np
import pytest

from cellkern.data import synthetic_nuclei
from cellkern.reference import star_dist3d_ref
from cellkern.reference import star3d as ref
from cellkern.star import edt_prob, matching
from cellkern.star.polyhedra import decode3d, polyhedron_to_label
from cellkern.star.rays import Rays_GoldenSpiral

Delaunay = pytest.importorskip("scipy.spatial").Delaunay


def _as_set(points):
    return set(map(tuple, np.asarray(points).tolist()))


def _far_from_faces(points, vertices, faces, eps=1e-4):
    """Points not within eps of any face plane (where StarDist's float32 rule may round either way)."""
    keep = np.ones(len(points), bool)
    for f in faces:
        a, b, c = vertices[f]
        n = np.cross(b - a, c - a)
        keep &= np.abs((points - a) @ n) / np.linalg.norm(n) > eps
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rendered_polyhedron_is_the_union_of_its_tetrahedra(seed):
    rng = np.random.default_rng(seed)
    rays = Rays_GoldenSpiral(32, anisotropy=(1.0, 1.0, 1.0) if seed else (2.0, 1.0, 1.0))
    dist = rng.uniform(1.5, 6.0, len(rays))
    centre = np.array([8.0, 8.0, 8.0])
    lab = polyhedron_to_label(dist[None], centre[None], rays, (17, 17, 17))
    verts = dist[:, None] * rays.vertices
    pts = np.argwhere(np.ones((17, 17, 17), bool)).astype(float) - centre
    inside = np.zeros(len(pts), bool)
    for f in rays.faces:  # the fan of tetrahedra (centre, three vertices of a face) is the polyhedron
        inside |= Delaunay(np.vstack([np.zeros(3), verts[f]])).find_simplex(pts) >= 0
    keep = _far_from_faces(pts, verts, rays.faces)
    got = lab.reshape(-1) > 0
    np.testing.assert_array_equal(got[keep], inside[keep])
    assert inside.sum() > 20


def _one_cell_prediction(shape, cells, n_rays):
    """prob / dist volumes with the given {cell: (prob, dist)} candidates and nothing else."""
    prob = np.zeros(shape, np.float32)
    dist = np.ones(shape + (n_rays,), np.float32)
    for cell, (p, d) in cells.items():
        prob[cell], dist[cell] = p, d
    return prob, dist


def test_nms_suppresses_by_overlap_over_the_smaller_volume():
    rays = Rays_GoldenSpiral(24)
    big, small = np.full(24, 5.0), np.full(24, 2.5)
    a = _as_set(ref.polyhedron_voxels((0, 0, 0), big, rays))
    seen = set()
    for shift in range(0, 9):  # a small polyhedron moving out of a big one: suppressed while overlap/small > 0.4
        b = _as_set(ref.polyhedron_voxels((0, 0, shift), small, rays))
        ratio = len(a & b) / min(ref.polyhedron_volume(big, rays), ref.polyhedron_volume(small, rays))
        prob, dist = _one_cell_prediction((12, 12, 24), {(6, 6, 8): (0.9, big), (6, 6, 8 + shift): (0.8, small)}, 24)
        if shift == 0:
            prob[6, 6, 8] = 0.9  # the same cell: one candidate only
        labels, det = decode3d(prob, dist, rays, prob_thresh=0.5, nms_thresh=0.4)
        n_kept = len(det["prob"])
        if shift == 0:
            assert n_kept == 1
        else:
            assert n_kept == (1 if ratio > 0.4 else 2), (shift, ratio)
            assert det["prob"][0] == pytest.approx(0.9) and tuple(det["points"][0]) == (6, 6, 8)
            seen.add(n_kept)
    assert seen == {1, 2}


def test_higher_probability_paints_on_top_and_labels_follow_rank():
    rays = Rays_GoldenSpiral(24)
    d = np.full(24, 3.0)
    prob, dist = _one_cell_prediction((10, 10, 16), {(5, 5, 5): (0.6, d), (5, 5, 9): (0.95, d)}, 24)
    labels, det = decode3d(prob, dist, rays, prob_thresh=0.5, nms_thresh=0.9)
    assert [tuple(p) for p in det["points"]] == [(5, 5, 9), (5, 5, 5)]
    shared = (polyhedron_to_label(d[None], [(5, 5, 5)], rays, labels.shape) > 0) & \
             (polyhedron_to_label(d[None], [(5, 5, 9)], rays, labels.shape) > 0)
    assert shared.any() and np.all(labels[shared] == 1)  # label 1 = the most probable, on top
    assert labels[5, 5, 5] == 2 and labels[5, 5, 9] == 1


def test_ties_in_probability_keep_raster_order():
    rays = Rays_GoldenSpiral(16)
    d = np.full(16, 2.0)
    prob, dist = _one_cell_prediction((8, 8, 16), {(4, 4, 4): (0.7, d), (4, 4, 10): (0.7, d), (3, 4, 7): (0.7, d)},
                                      16)
    _, det = decode3d(prob, dist, rays, prob_thresh=0.5, nms_thresh=0.9)
    assert [tuple(p) for p in det["points"]] == [(3, 4, 7), (4, 4, 4), (4, 4, 10)]


def test_grid_and_border():
    rays = Rays_GoldenSpiral(16)
    d = np.full(16, 2.0)
    prob, dist = _one_cell_prediction((6, 8, 8), {(1, 4, 4): (0.9, d), (3, 4, 4): (0.8, d)}, 16)
    labels, det = decode3d(prob, dist, rays, grid=(2, 2, 2), prob_thresh=0.5, nms_thresh=0.4)
    # (1, 4, 4) is one cell from the border: not a candidate (b=2); (3, 4, 4) sits at voxel (6, 8, 8)
    assert labels.shape == (12, 16, 16) and [tuple(p) for p in det["points"]] == [(6, 8, 8)]
    assert labels[6, 8, 8] == 1 and labels[2, 8, 8] == 0


def test_true_targets_decode_to_the_objects():
    _, lab = synthetic_nuclei((14, 28, 28), 7, seed=3, radius=(3.5, 6), touching=0.4)
    lab = np.pad(lab, 3)
    rays = Rays_GoldenSpiral(64)
    dist = star_dist3d_ref(lab, rays.vertices)
    labels, det = decode3d(edt_prob(lab), dist, rays, prob_thresh=0.5, nms_thresh=0.4)
    m = matching(lab, labels, thresh=0.5)
    assert m.f1 >= 0.95 and m.mean_matched_score > 0.7, m


def test_bad_shapes():
    rays = Rays_GoldenSpiral(8)
    with pytest.raises(ValueError, match="dist"):
        decode3d(np.zeros((4, 4, 4)), np.zeros((4, 4, 4, 7)), rays)
    with pytest.raises(ValueError, match="prob"):
        decode3d(np.zeros((4, 4)), np.zeros((4, 4, 8)), rays)
