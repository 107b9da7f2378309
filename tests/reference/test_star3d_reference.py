"""The 3D polyhedron oracles (cellkern.reference.star3d) against closed forms, hand-made cases and StarDist."""
import itertools
import math

import numpy as np
import pytest

from cellkern.reference import star3d as ref
from cellkern.star import rays as cr


def _octahedron_points(center, d):
    """Integer points with |z - cz| + |y - cy| + |x - cx| <= d, found by brute force over a generous box."""
    c = np.asarray(center, np.float64)
    r = int(math.ceil(d)) + 2
    base = np.floor(c).astype(int)
    box = np.array(list(itertools.product(*(range(b - r, b + r + 1) for b in base))))
    return box[np.abs(box - c).sum(axis=1) <= d + 1e-12]


def _cube_rays():
    from scipy.spatial import ConvexHull

    v = np.array(list(itertools.product((-1, 1), repeat=3)), np.float64) / math.sqrt(3)
    return cr.Rays_Explicit(v, cr.reorder_faces(v, ConvexHull(v).simplices))


def _rows(a):
    return {tuple(p) for p in np.asarray(a).tolist()}


# ---- one polyhedron: closed forms ----------------------------------------------------------------------------

@pytest.mark.parametrize("center,d", [((0, 0, 0), 3.0), ((5, -2, 7), 4.0), ((0, 0.5, 0), 3.0), ((1, 2, 3), 2.6),
                                      ((0.25, -0.5, 0.75), 3.5)])
def test_octahedron_voxels(center, d):
    # Rays_Octo(1) with equal distances d is the octahedron |z| + |y| + |x| <= d; with integer d and centre many
    # voxels lie exactly on its faces, which count as inside
    octo = cr.Rays_Octo(1)
    vox = ref.polyhedron_voxels(center, np.full(6, d), octo)
    assert vox.dtype == np.int64 and vox.shape[1] == 3
    assert _rows(vox) == _rows(_octahedron_points(center, d))
    assert len(_rows(vox)) == len(vox)
    np.testing.assert_array_equal(vox, np.array(sorted(_rows(vox))))  # raster order
    if d == int(d) and all(c == int(c) for c in center):
        n = int(d)
        assert len(vox) == (2 * n + 1) * (2 * n * n + 2 * n + 3) // 3  # the octahedral numbers 1, 7, 25, 63, ...


@pytest.mark.parametrize("a", [2, 3])
def test_cube_voxels_and_volume(a):
    # rays to the cube's corners with distances a sqrt 3: the cube max(|z|, |y|, |x|) <= a, volume 8 a^3
    cube = _cube_rays()
    dist = np.full(8, a * math.sqrt(3))
    vox = ref.polyhedron_voxels((10, 20, 30), dist, cube)
    expect = np.array(list(itertools.product(*(range(c - a, c + a + 1) for c in (10, 20, 30)))))
    assert _rows(vox) == _rows(expect)
    assert ref.polyhedron_volume(dist, cube) == pytest.approx(8 * a ** 3, rel=1e-14)


def test_volume_closed_forms_and_rays_volume():
    octo = cr.Rays_Octo(1)
    assert ref.polyhedron_volume(np.full(6, 2.5), octo) == pytest.approx(4 / 3 * 2.5 ** 3, rel=1e-14)
    dist = np.full(6, 2.0)
    dist[4] = 5.0  # +z pulled out: two square pyramids of heights 5 and 2 over a base of area 2 * 2^2
    assert ref.polyhedron_volume(dist, octo) == pytest.approx(8 * 7 / 3, rel=1e-14)
    # the loop over |det| / 6 equals Rays_Base.volume's product formula (an independent implementation)
    rng = np.random.default_rng(0)
    for rays in (cr.Rays_GoldenSpiral(30, (2, 1, 1)), cr.Rays_Octo(3), cr.Rays_Tetra(3)):
        dist = rng.uniform(1, 7, (4, len(rays)))
        vol = ref.polyhedron_volume(dist, rays)
        assert vol.shape == (4,)
        np.testing.assert_allclose(vol, rays.volume(dist), rtol=1e-13)
        # many sample points: the fraction inside the box estimates the volume
    rays = cr.Rays_GoldenSpiral(20)
    d = rng.uniform(2, 4, 20)
    p = rng.uniform(-4, 4, (40000, 3))
    est = ref.inside_polyhedron(p, (0, 0, 0), d, rays).mean() * 8 ** 3
    assert est == pytest.approx(ref.polyhedron_volume(d, rays), rel=0.03)


def test_inside_polyhedron_faces_and_tolerance():
    octo = cr.Rays_Octo(1)
    d = np.full(6, 3.0)
    c = np.array([1.0, 2.0, 3.0])
    n = np.ones(3) / math.sqrt(3)  # the outward normal of the face in the (+, +, +) octant
    on_face = c + np.array([1.0, 1.0, 1.0])  # |.|_1 = 3: on the face
    pts = np.array([c, on_face, on_face + 1e-6 * n, on_face - 1e-6 * n, c + [3, 0, 0], c + [3.01, 0, 0]])
    np.testing.assert_array_equal(ref.inside_polyhedron(pts, c, d, octo), [1, 1, 0, 1, 1, 0])
    assert ref.inside_polyhedron(on_face + 1e-6 * n, c, d, octo, tol=1e-6).item()  # within tol * max(dist)
    assert not ref.inside_polyhedron(on_face + 1e-5 * n, c, d, octo, tol=1e-6).item()
    # shapes: (..., 3) -> (...)
    assert ref.inside_polyhedron(np.zeros((2, 5, 3)), (0, 0, 0), d, octo).shape == (2, 5)


def test_star_convex_but_not_convex():
    # one long ray: a spike; points near the spike's axis are inside, points beside it (inside the convex hull of
    # the vertices, outside the star polyhedron) are not
    octo = cr.Rays_Octo(2)
    d = np.full(len(octo), 2.0)
    k = int(np.flatnonzero((octo.vertices == [1, 0, 0]).all(axis=1))[0])
    d[k] = 8.0
    # in the plane x = 0 the spike's side runs from (8, 0) to the neighbouring ray's vertex (sqrt 2, sqrt 2): at
    # z = 3 its half-width is 5 / (8 - sqrt 2) * sqrt 2 = 1.074, at z = 2.5 it is 1.181
    p = np.array([[7.0, 0, 0], [3, 1.0, 0], [3, 1.1, 0], [2.5, 1.2, 0]])
    np.testing.assert_array_equal(ref.inside_polyhedron(p, (0, 0, 0), d, octo), [True, True, False, False])
    # the convex hull of the vertices contains all four: a convex rule would differ
    from scipy.spatial import Delaunay

    assert np.all(Delaunay(d[:, None] * octo.vertices).find_simplex(p) >= 0)


# ---- polyhedron_to_label ---------------------------------------------------------------------------------------

def test_polyhedron_to_label_painting_order():
    octo = cr.Rays_Octo(1)
    dist = np.full((3, 6), 3.0)
    pts = np.array([[5, 5, 5], [5, 5, 8], [5, 5, 20]])  # 0 and 1 overlap; 2 sticks out of the volume
    shape = (11, 11, 22)
    lab = ref.polyhedron_to_label(dist, pts, octo, shape, prob=[0.4, 0.9, 0.5])
    assert lab.dtype == np.int32 and lab.shape == shape
    v0, v1 = _rows(ref.polyhedron_voxels(pts[0], dist[0], octo)), _rows(ref.polyhedron_voxels(pts[1], dist[1], octo))
    both = v0 & v1
    assert both and all(lab[p] == 2 for p in both)  # the higher probability wins the shared voxels
    assert all(lab[p] == 1 for p in v0 - v1)
    v2 = _rows(ref.polyhedron_voxels(pts[2], dist[2], octo))
    assert {p for p in v2 if p[2] < 22} == _rows(np.argwhere(lab == 3))  # clipped at the border
    # thr drops the 0.4 one (prob >= thr keeps 0.5); labels are taken per polyhedron
    lab = ref.polyhedron_to_label(dist, pts, octo, shape, prob=[0.4, 0.9, 0.5], thr=0.5, labels=[7, 8, 9])
    assert set(np.unique(lab)) == {0, 8, 9} and (lab == 8).sum() == len(v1)
    # equal probabilities: StarDist's np.argsort(prob)[::-1] puts index 1 before 0
    lab = ref.polyhedron_to_label(dist[:2], pts[:2], octo, shape)
    assert all(lab[p] == 2 for p in both)
    assert not ref.polyhedron_to_label(np.zeros((0, 6)), np.zeros((0, 3)), octo, shape).any()


def _random_polyhedra(seed, rays, n=7, shape=(20, 26, 23)):
    rng = np.random.default_rng(seed)
    # non-integer distances: no voxel centre lies on a face, where float32 (StarDist) and float64 could differ
    return rng.uniform(2.3, 6.7, (n, len(rays))), rng.integers(-2, 24, (n, 3)), rng.uniform(size=n), shape


@pytest.mark.parametrize("seed,aniso", [(0, None), (1, (2, 1, 1)), (2, None)])
def test_polyhedron_to_label_equals_stardist(seed, aniso):
    # golden-spiral rays have irrational directions: no voxel lies on a ray or on a face, so the float32 and
    # float64 rules agree on every voxel
    sd = pytest.importorskip("stardist.geometry", reason="stardist not installed")
    rays = cr.Rays_GoldenSpiral(32 if aniso is None else 24, aniso)
    dist, pts, prob, shape = _random_polyhedra(seed, rays)
    ours = ref.polyhedron_to_label(dist, pts, rays, shape, prob=prob, thr=0.2)
    theirs = sd.polyhedron_to_label(dist, pts, rays, shape, prob=prob, thr=0.2, verbose=False)
    assert np.count_nonzero(ours) > 500 and len(np.unique(ours)) > 3
    np.testing.assert_array_equal(ours, theirs)


def test_polyhedron_to_label_stardist_drops_voxels_on_rays():
    # Rays_Octo's rays have rational directions, so voxels can lie exactly on a ray through the centre: inside
    # the polyhedron (on an edge shared by several closed tetrahedra), which StarDist's float32 test may miss.
    # Everywhere else the labels agree.
    sd = pytest.importorskip("stardist.geometry", reason="stardist not installed")
    rays = cr.Rays_Octo(3)
    dist, pts, prob, shape = _random_polyhedra(2, rays)
    ours = ref.polyhedron_to_label(dist, pts, rays, shape, prob=prob, thr=0.2)
    theirs = sd.polyhedron_to_label(dist, pts, rays, shape, prob=prob, thr=0.2, verbose=False)
    diff = np.argwhere(ours != theirs)
    assert len(diff) <= 10
    for q in diff:
        i = ours[tuple(q)] - 1  # labels are 1..n in input order
        u = q - pts[i]
        along = u @ rays.vertices.T
        assert i >= 0 and theirs[tuple(q)] == 0
        assert np.any(np.isclose(along, np.linalg.norm(u), rtol=1e-12) & (along < dist[i]))


# ---- nms3d -------------------------------------------------------------------------------------------------

def test_nms3d_hand_made():
    octo = cr.Rays_Octo(2)
    d = np.full(len(octo), 4.0)
    # identical polyhedra: the higher score survives
    keep = ref.nms3d(np.stack([d, d]), [[10, 10, 10], [10, 10, 10]], octo, [0.3, 0.8])
    np.testing.assert_array_equal(keep, [False, True])
    # equal scores: StarDist's np.argsort(scores)[::-1] order visits index 1 first
    np.testing.assert_array_equal(ref.nms3d(np.stack([d, d]), [[10, 10, 10]] * 2, octo, None), [False, True])
    # disjoint: all kept, whatever the threshold
    pts = [[0, 0, 0], [0, 0, 9], [0, 9, 0], [9, 0, 0]]
    np.testing.assert_array_equal(ref.nms3d(np.tile(d, (4, 1)), pts, octo, [0.1, 0.2, 0.3, 0.4], thresh=0.0), True)
    # nested: a small one inside a big one shares all of its voxels: suppressed under "smaller" (1 > 0.5) but
    # not under "iou" (its share of the union is about (1/3)^3)
    dist = np.stack([np.full(len(octo), 6.0), np.full(len(octo), 2.0)])
    pts = [[10, 10, 10], [10, 11, 10]]
    np.testing.assert_array_equal(ref.nms3d(dist, pts, octo, [0.9, 0.5]), [True, False])
    np.testing.assert_array_equal(ref.nms3d(dist, pts, octo, [0.9, 0.5], criterion="iou"), [True, True])
    np.testing.assert_array_equal(ref.nms3d(dist, pts, octo, [0.5, 0.9]), [False, True])  # the small one first
    # a suppressed candidate does not suppress others: 0 kills 1, so 2 (overlapping only 1) survives
    dist = np.tile(d, (3, 1))
    pts = [[10, 10, 10], [10, 10, 13], [10, 10, 17]]
    vox = [_rows(ref.polyhedron_voxels(p, d, octo)) for p in pts]
    vol = ref.polyhedron_volume(d, octo)
    r01, r12, r02 = len(vox[0] & vox[1]) / vol, len(vox[1] & vox[2]) / vol, len(vox[0] & vox[2]) / vol
    assert r01 > 0.3 and r12 > 0.1 and r02 < 0.1
    np.testing.assert_array_equal(ref.nms3d(dist, pts, octo, [0.9, 0.8, 0.7], thresh=0.1), [True, False, True])
    assert ref.nms3d(np.zeros((0, len(octo))), np.zeros((0, 3)), octo, []).shape == (0,)


def test_nms3d_equals_stardist_away_from_threshold():
    sd_nms = pytest.importorskip("stardist.nms", reason="stardist not installed")
    rays = cr.Rays_GoldenSpiral(32)
    rng = np.random.default_rng(3)
    n, thresh = 12, 0.3
    dist, pts, scores = rng.uniform(2.3, 6.7, (n, 32)), rng.integers(0, 20, (n, 3)).astype(float), rng.uniform(size=n)
    # StarDist decides by continuous volumes; with every pair's overlap far from the threshold both must agree
    vox = [_rows(ref.polyhedron_voxels(p, d, rays)) for p, d in zip(pts, dist)]
    vol = ref.polyhedron_volume(dist, rays)
    ratio = [len(vox[i] & vox[j]) / min(vol[i], vol[j]) for i, j in itertools.combinations(range(n), 2)]
    assert min(abs(r - thresh) for r in ratio) > 0.1 and sum(r > thresh for r in ratio) >= 2
    keep = ref.nms3d(dist, pts, rays, scores, thresh=thresh)
    assert 0 < keep.sum() < n
    np.testing.assert_array_equal(keep, sd_nms.non_maximum_suppression_3d_inds(dist, pts, rays, scores, thresh=thresh,
                                                                               verbose=0))


# ---- bad input ---------------------------------------------------------------------------------------------

def test_bad_input():
    octo = cr.Rays_Octo(1)
    with pytest.raises(TypeError, match="rays"):
        ref.polyhedron_voxels((0, 0, 0), np.ones(6), octo.vertices)
    with pytest.raises(ValueError, match="dist"):
        ref.polyhedron_voxels((0, 0, 0), np.ones(5), octo)
    with pytest.raises(ValueError, match="dist"):
        ref.polyhedron_voxels((0, 0, 0), -np.ones(6), octo)
    with pytest.raises(ValueError, match="dist"):
        ref.inside_polyhedron((0, 0, 0), (0, 0, 0), np.ones((2, 6)), octo)
    with pytest.raises(ValueError, match="center"):
        ref.inside_polyhedron((0, 0, 0), (0, 0), np.ones(6), octo)
    with pytest.raises(ValueError, match="p:"):
        ref.inside_polyhedron((0, 0), (0, 0, 0), np.ones(6), octo)
    with pytest.raises(ValueError, match="tol"):
        ref.inside_polyhedron((0, 0, 0), (0, 0, 0), np.ones(6), octo, tol=-1)
    with pytest.raises(ValueError, match="points"):
        ref.polyhedron_to_label(np.ones((2, 6)), np.zeros((3, 3)), octo, (5, 5, 5))
    with pytest.raises(ValueError, match="shape"):
        ref.polyhedron_to_label(np.ones((2, 6)), np.zeros((2, 3)), octo, (5, 5))
    with pytest.raises(ValueError, match="prob"):
        ref.polyhedron_to_label(np.ones((2, 6)), np.zeros((2, 3)), octo, (5, 5, 5), prob=[1])
    with pytest.raises(ValueError, match="labels"):
        ref.polyhedron_to_label(np.ones((2, 6)), np.zeros((2, 3)), octo, (5, 5, 5), labels=[1.5, 2])
    with pytest.raises(ValueError, match="criterion"):
        ref.nms3d(np.ones((2, 6)), np.zeros((2, 3)), octo, None, criterion="union")
    with pytest.raises(ValueError, match="scores"):
        ref.nms3d(np.ones((2, 6)), np.zeros((2, 3)), octo, [1, 2, 3])
