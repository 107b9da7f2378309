"""The simple 3D decoder: rasterised polyhedra against independent point-in-polyhedron tests (scipy's Delaunay),
greedy NMS by voxel overlap / smaller volume, painting order, and decoding true targets back to the objects."""
import numpy as np
import pytest

from cellkern.data import synthetic_nuclei
from cellkern.models._decode3d import decode3d, polyhedron_faces, rasterize
from cellkern.reference import rays_golden_spiral, star_dist3d_ref
from cellkern.star import edt_prob, matching

Delaunay = pytest.importorskip("scipy.spatial").Delaunay


def _ball(radius):
    r = int(np.ceil(radius)) + 1
    g = np.stack(np.meshgrid(*(np.arange(-r, r + 1),) * 3, indexing="ij"), -1).reshape(-1, 3)
    return g


def _as_set(points):
    return set(map(tuple, np.asarray(points).tolist()))


def _far_from_faces(points, vertices, faces, eps=1e-6):
    """Points not within eps of any face plane (where two exact tests could round either way)."""
    keep = np.ones(len(points), bool)
    for f in faces:
        a, b, c = vertices[f]
        n = np.cross(b - a, c - a)
        keep &= np.abs((points - a) @ n) / np.linalg.norm(n) > eps
    return keep


def test_equal_distances_give_the_convex_hull():
    rays = rays_golden_spiral(40).astype(np.float64)
    verts = 4.3 * rays
    pts = _ball(4.3)
    ours = _as_set(rasterize(np.full(40, 4.3), rays))
    keep = _far_from_faces(pts.astype(float), verts, polyhedron_faces(rays))
    inside = Delaunay(verts).find_simplex(pts.astype(float)) >= 0  # all distances equal: the polyhedron is convex
    assert {p for p, k in zip(map(tuple, pts.tolist()), keep) if k} & ours == _as_set(pts[keep & inside])
    assert (0, 0, 0) in ours and len(ours) > 200


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_distances_match_a_union_of_tetrahedra(seed):
    rng = np.random.default_rng(seed)
    rays = rays_golden_spiral(32, (1.0, 1.0, 1.0) if seed else (2.0, 1.0, 1.0)).astype(np.float64)
    dist = rng.uniform(1.5, 6.0, len(rays))
    faces = polyhedron_faces(rays)
    verts = dist[:, None] * rays
    pts = _ball(dist.max()).astype(float)
    inside = np.zeros(len(pts), bool)
    for f in faces:  # the fan of tetrahedra (centre, three vertices of a face) is the polyhedron
        inside |= Delaunay(np.vstack([np.zeros(3), verts[f]])).find_simplex(pts) >= 0
    keep = _far_from_faces(pts, verts, faces)
    ours = _as_set(rasterize(dist, rays))
    assert ours <= _as_set(pts)
    assert {p for p, k in zip(map(tuple, pts.astype(int).tolist()), keep) if k} & ours == _as_set(
        pts[keep & inside].astype(int))


def _one_cell_prediction(shape, cells, rays):
    """prob / dist volumes with the given {cell: (prob, dist)} candidates and nothing else."""
    prob = np.zeros(shape, np.float32)
    dist = np.ones(shape + (len(rays),), np.float32)
    for cell, (p, d) in cells.items():
        prob[cell], dist[cell] = p, d
    return prob, dist


def test_nms_suppresses_by_overlap_over_the_smaller_volume():
    rays = rays_golden_spiral(24).astype(np.float64)
    big, small = np.full(24, 5.0), np.full(24, 2.5)
    a = _as_set(rasterize(big, rays))
    for shift in range(0, 9):  # a small sphere moving out of a big one: suppressed while overlap/small > 0.4
        b = _as_set(rasterize(small, rays) + np.array([0, 0, shift]))
        ratio = len(a & b) / min(len(a), len(b))
        prob, dist = _one_cell_prediction((12, 12, 24), {(6, 6, 8): (0.9, big), (6, 6, 8 + shift): (0.8, small)},
                                          rays)
        if shift == 0:
            prob[6, 6, 8] = 0.9  # the same cell: one candidate only
        labels, det = decode3d(prob, dist, rays, prob_thresh=0.5, nms_thresh=0.4)
        n_kept = len(det["prob"])
        if shift == 0:
            assert n_kept == 1
        else:
            assert n_kept == (1 if ratio > 0.4 else 2), (shift, ratio)
            assert det["prob"][0] == pytest.approx(0.9) and tuple(det["points"][0]) == (6, 6, 8)


def test_higher_probability_paints_on_top_and_labels_follow_rank():
    rays = rays_golden_spiral(24).astype(np.float64)
    d = np.full(24, 3.0)
    prob, dist = _one_cell_prediction((10, 10, 16), {(5, 5, 5): (0.6, d), (5, 5, 9): (0.95, d)}, rays)
    labels, det = decode3d(prob, dist, rays, prob_thresh=0.5, nms_thresh=0.9)
    assert [tuple(p) for p in det["points"]] == [(5, 5, 9), (5, 5, 5)]
    shared = _as_set(rasterize(d, rays) + [5, 5, 5]) & _as_set(rasterize(d, rays) + [5, 5, 9])
    assert shared and all(labels[p] == 1 for p in shared)  # label 1 = the most probable, painted last
    assert labels[5, 5, 5] == 2 and labels[5, 5, 9] == 1


def test_grid_and_border():
    rays = rays_golden_spiral(16).astype(np.float64)
    d = np.full(16, 2.0)
    prob, dist = _one_cell_prediction((6, 8, 8), {(1, 4, 4): (0.9, d), (3, 4, 4): (0.8, d)}, rays)
    labels, det = decode3d(prob, dist, rays, grid=(2, 2, 2), prob_thresh=0.5, nms_thresh=0.4)
    # (1, 4, 4) is one cell from the border: not a candidate (b=2); (3, 4, 4) sits at voxel (6, 8, 8)
    assert labels.shape == (12, 16, 16) and [tuple(p) for p in det["points"]] == [(6, 8, 8)]
    assert labels[6, 8, 8] == 1 and labels[2, 8, 8] == 0


def test_true_targets_decode_to_the_objects():
    _, lab = synthetic_nuclei((14, 28, 28), 7, seed=3, radius=(3.5, 6), touching=0.4)
    lab = np.pad(lab, 3)
    rays = rays_golden_spiral(64)
    dist = star_dist3d_ref(lab, rays)
    labels, det = decode3d(edt_prob(lab), dist, rays, prob_thresh=0.5, nms_thresh=0.4)
    m = matching(lab, labels, thresh=0.5)
    assert m.f1 >= 0.95 and m.mean_matched_score > 0.7, m


def test_bad_shapes():
    rays = rays_golden_spiral(8)
    with pytest.raises(ValueError, match="dist"):
        decode3d(np.zeros((4, 4, 4)), np.zeros((4, 4, 4, 7)), rays)
    with pytest.raises(ValueError, match="prob"):
        decode3d(np.zeros((4, 4)), np.zeros((4, 4, 8)), rays)
