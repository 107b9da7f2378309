"""polyhedron_to_label and the 3D NMS: against the shipped slow reference, StarDist (where installed), the
emulated CUDA kernels, and bad input."""
import numpy as np
import pytest

import cellkern
from cellkern.reference import star3d as ref
from cellkern.star import polyhedra as ph
from cellkern.star.rays import Rays_GoldenSpiral, Rays_Octo


def _scene(rng, n, shape, n_rays, dmin=1.3, dmax=4.7, integral=False):
    pts = rng.uniform(0, 1, (n, 3)) * np.array(shape)
    dist = rng.uniform(dmin, dmax, (n, n_rays))
    if integral:
        pts, dist = np.round(pts), np.round(dist)
    return dist, pts, rng.uniform(size=n)


def _cluster(rng, n, n_rays, spread=2.5, centre=(12, 12, 12)):
    """Candidates crowded around a few centres: the NMS has real decisions to make."""
    heads = np.array(centre) + rng.uniform(-6, 6, (3, 3))
    pts = heads[rng.integers(0, 3, n)] + rng.normal(0, spread, (n, 3))
    dist = rng.uniform(2.0, 5.5, (n, n_rays))
    return dist, pts, rng.uniform(size=n)


RAYS = [Rays_GoldenSpiral(32), Rays_GoldenSpiral(50, anisotropy=(2.0, 1.0, 1.0)), Rays_Octo(3)]


@pytest.mark.parametrize("rays", RAYS, ids=["spiral32", "spiral50-aniso", "octo3"])
def test_polyhedron_to_label_equals_reference(rays):
    rng = np.random.default_rng(1)
    shape = (14, 20, 22)
    dist, pts, prob = _scene(rng, 14, shape, len(rays))
    pts[0] = (-1.5, 3.2, 30.0)  # partly outside the volume
    ours = ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob)
    want = ref.polyhedron_to_label(dist, pts, rays, shape, prob=prob)
    assert ours.dtype == np.int32 and ours.shape == shape
    np.testing.assert_array_equal(ours, want)
    assert len(np.unique(ours)) > 8  # most polyhedra visible, many overlaps decided by probability


def test_polyhedron_to_label_threshold_labels_overlap():
    rng = np.random.default_rng(2)
    rays = Rays_GoldenSpiral(32)
    shape = (12, 16, 16)
    dist, pts, prob = _scene(rng, 10, shape, 32, 2.0, 5.0)
    labels = rng.permutation(np.arange(100, 110))
    ours = ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob, thr=0.4, labels=labels)
    want = ref.polyhedron_to_label(dist, pts, rays, shape, prob=prob, thr=0.4, labels=labels)
    np.testing.assert_array_equal(ours, want)
    assert set(np.unique(ours)) - {0} <= set(labels[prob >= 0.4])
    # overlap_label: voxels of two or more polyhedra (as counted by painting each alone)
    ov = ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob, overlap_label=-7)
    cover = sum((ph.polyhedron_to_label(dist[i:i + 1], pts[i:i + 1], rays, shape) > 0).astype(int)
                for i in range(len(pts)))
    np.testing.assert_array_equal(ov == -7, cover > 1)
    np.testing.assert_array_equal(ov[cover == 1], ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob)[cover == 1])


def test_polyhedron_to_label_modes_nest():
    rng = np.random.default_rng(3)
    rays = Rays_GoldenSpiral(40)
    dist, pts, _ = _scene(rng, 1, (20, 20, 20), 40, 2.0, 7.0)
    pts[:] = (10.3, 9.8, 10.1)
    full = ph.polyhedron_to_label(dist, pts, rays, (20, 20, 20)) > 0
    kern = ph.polyhedron_to_label(dist, pts, rays, (20, 20, 20), mode="kernel") > 0
    box = ph.polyhedron_to_label(dist, pts, rays, (20, 20, 20), mode="bbox") > 0
    assert kern.sum() < full.sum() < box.sum()
    assert not np.any(kern & ~full) and not np.any(full & ~box)


@pytest.mark.parametrize("integral", [False, True])
def test_polyhedron_to_label_equals_stardist(integral):
    """Identical labels; with integer centres and distances some vertices sit exactly on voxel centres, where
    StarDist's Qhull hull test decides (reproduced through scipy's Qhull)."""
    sd = pytest.importorskip("stardist")
    rng = np.random.default_rng(4)
    for n_rays, aniso in ((32, None), (96, None), (64, (1.5, 1.0, 1.0))):
        rays = sd.Rays_GoldenSpiral(n_rays, anisotropy=aniso)
        shape = (24, 40, 40)
        dist, pts, prob = _scene(rng, 40, shape, n_rays, 2.3, 7.7, integral=integral)
        want = sd.polyhedron_to_label(dist, pts, rays, shape, prob=prob, verbose=False)
        np.testing.assert_array_equal(ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob), want)
        if integral:
            hull = ph._hull_vertices(dist.astype(np.float32), pts.astype(np.float32), rays, shape, (0, 0, 0))
            assert hull is not None and hull.any()  # the Qhull rule was exercised


def test_polyhedron_to_label_emulated_cuda_equals_cpu():
    rng = np.random.default_rng(5)
    rays = Rays_GoldenSpiral(24)
    shape = (10, 14, 14)
    dist, pts, prob = _scene(rng, 8, shape, 24, 1.5, 4.0)
    for kw in ({}, {"overlap_label": -1}, {"mode": "kernel"}, {"mode": "bbox"}, {"thr": 0.5}):
        cpu = ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob, **kw)
        with cellkern.backend("emu"):
            emu = ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob, **kw)
        np.testing.assert_array_equal(cpu, emu)
    # integer vertices on the hull (the documented special case) take the same path on both
    dist, pts = np.round(dist + 1), np.round(pts)
    cpu = ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob)
    with cellkern.backend("emu"):
        np.testing.assert_array_equal(cpu, ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob))


def test_polyhedron_to_label_torch_and_empty():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    rays = Rays_GoldenSpiral(32)
    dist, pts, prob = _scene(rng, 5, (8, 12, 12), 32)
    want = ph.polyhedron_to_label(dist, pts, rays, (8, 12, 12), prob=prob)
    got = ph.polyhedron_to_label(torch.from_numpy(dist), torch.from_numpy(pts), rays, (8, 12, 12), prob=prob)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.int32
    np.testing.assert_array_equal(got.numpy(), want)
    empty = ph.polyhedron_to_label(np.zeros((0, 32)), np.zeros((0, 3)), rays, (4, 5, 6))
    assert empty.shape == (4, 5, 6) and not empty.any()
    assert not ph.polyhedron_to_label(dist, pts, rays, (8, 12, 12), prob=prob, thr=2.0).any()


def test_polyhedron_to_label_bad_input():
    rays = Rays_GoldenSpiral(16)
    d, p = np.full((2, 16), 3.0), np.array([[5.0, 5, 5], [6, 6, 6]])
    cases = [
        (dict(dist=np.full((2, 15), 3.0)), ValueError, "rays"),
        (dict(dist=np.zeros((2, 16))), ValueError, "positive"),
        (dict(dist=np.full((2, 16), np.nan)), ValueError, "finite"),
        (dict(dist=np.full((2, 16), 1e22)), ValueError, "2\\^10"),
        (dict(points=np.full((2, 3), np.inf)), ValueError, "points"),
        (dict(points=np.zeros((3, 3))), ValueError, "points"),
        (dict(shape=(4, 4)), ValueError, "shape"),
        (dict(mode="hull"), ValueError, "mode"),
        (dict(thr=np.nan), ValueError, "thr"),
        (dict(prob=np.ones(3)), ValueError, "prob"),
        (dict(labels=np.array([1.5, 2.5])), ValueError, "labels"),
        (dict(rays=np.zeros((16, 3))), TypeError, "rays"),
        (dict(dist=np.full((2, 16), 3.0).astype(object)), TypeError, "dist"),
    ]
    for kw, exc, msg in cases:
        args = dict(dist=d, points=p, rays=rays, shape=(10, 10, 10))
        args.update(kw)
        with pytest.raises(exc, match=msg):
            ph.polyhedron_to_label(**args)


# ---- NMS ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("integral", [True, False])
@pytest.mark.parametrize("thresh,criterion", [(0.1, "smaller"), (0.4, "smaller"), (0.3, "iou")])
def test_nms3d_equals_reference(integral, thresh, criterion):
    rng = np.random.default_rng(7)
    rays = Rays_GoldenSpiral(24)
    dist, pts, scores = _cluster(rng, 40, 24)
    if integral:
        pts = np.round(pts)
    ours = ph.non_maximum_suppression_3d_inds(dist, pts, rays, scores, thresh=thresh, criterion=criterion)
    want = ref.nms3d(dist, pts, rays, scores, thresh=thresh, criterion=criterion)
    np.testing.assert_array_equal(ours, want)
    assert 2 <= ours.sum() < len(ours)  # some kept, some suppressed: the test decides something
    with cellkern.backend("emu"):
        emu = ph.non_maximum_suppression_3d_inds(dist, pts, rays, scores, thresh=thresh, criterion=criterion)
    np.testing.assert_array_equal(emu, ours)
    assert ph.last_nms3d_stats() is not None


def test_nms3d_adversarial():
    rays = Rays_GoldenSpiral(20)
    rng = np.random.default_rng(8)
    d = rng.uniform(2, 4, 20)
    # identical polyhedra: the first in score order is kept, the rest suppressed
    keep = ph.non_maximum_suppression_3d_inds(np.tile(d, (4, 1)), np.tile([6.0, 6, 6], (4, 1)), rays,
                                              np.array([0.2, 0.9, 0.5, 0.1]), thresh=0.5)
    np.testing.assert_array_equal(keep, [False, True, False, False])
    # disjoint: all kept; zero rays (flat along them) and centres outside any volume are fine
    pts = np.array([[0.0, 0, 0], [30, 30, 30], [-50, 7, 3]])
    dz = np.tile(d, (3, 1))
    dz[1, :5] = 0
    assert ph.non_maximum_suppression_3d_inds(dz, pts, rays, np.array([0.3, 0.2, 0.1])).all()
    np.testing.assert_array_equal(ph.non_maximum_suppression_3d_inds(dz, pts, rays, None, thresh=0.0),
                                  ref.nms3d(np.maximum(dz, 1e-6), pts, rays, np.ones(3), thresh=0.0))
    # nested: a small polyhedron inside a big one shares all of its volume
    big, small = np.full(20, 6.0), np.full(20, 2.0)
    keep = ph.non_maximum_suppression_3d_inds(np.stack([big, small]), np.array([[9.0, 9, 9], [10, 9, 9]]), rays,
                                              np.array([0.9, 0.8]), thresh=0.9)
    np.testing.assert_array_equal(keep, [True, False])
    for kw, exc in [(dict(thresh=np.nan), ValueError), (dict(thresh=1.5), ValueError),
                    (dict(dist=np.full((4, 20), np.nan)), ValueError), (dict(dist=np.full((4, 20), 1e22)), ValueError),
                    (dict(criterion="dice"), ValueError), (dict(points=np.zeros((3, 3))), ValueError)]:
        args = dict(dist=np.tile(d, (4, 1)), points=np.tile([6.0, 6, 6], (4, 1)), rays=rays, scores=np.ones(4))
        args.update(kw)
        with pytest.raises(exc):
            ph.non_maximum_suppression_3d_inds(**args)


def test_nms3d_dense_api_matches_sparse():
    rng = np.random.default_rng(9)
    rays = Rays_GoldenSpiral(24)
    prob = rng.uniform(size=(10, 12, 12)).astype(np.float32)
    dist = rng.uniform(1.0, 4.0, (10, 12, 12, 24)).astype(np.float32)
    pts, probs, dists = ph.non_maximum_suppression_3d(dist, prob, rays, grid=(1, 2, 2), b=2, nms_thresh=0.3,
                                                      prob_thresh=0.6)
    cells = np.argwhere(prob > 0.6)
    cells = cells[np.all((cells >= 2) & (cells < np.array(prob.shape) - 2), axis=1)]
    sp = ph.non_maximum_suppression_3d_sparse(dist[tuple(cells.T)], prob[tuple(cells.T)], cells * [1, 2, 2], rays,
                                              nms_thresh=0.3)
    np.testing.assert_array_equal(pts, sp[0])
    np.testing.assert_array_equal(probs, sp[1])
    np.testing.assert_array_equal(dists, sp[2])
    assert np.all(np.diff(probs) <= 0) and 0 < len(pts) < len(cells)


def test_nms3d_keeps_what_stardist_keeps():
    sd = pytest.importorskip("stardist")
    from stardist.geometry import star_dist3D
    from stardist.nms import non_maximum_suppression_3d

    from cellkern.data.synthetic import synthetic_nuclei
    from cellkern.star import edt_prob, matching

    _, lbl = synthetic_nuclei((24, 80, 80), 25, seed=3)
    rays = sd.Rays_GoldenSpiral(64)
    g = (2, 2, 2)
    prob = edt_prob(lbl)[::2, ::2, ::2].astype(np.float32)
    dist = star_dist3D(lbl, rays, grid=g)
    a = non_maximum_suppression_3d(dist, prob, rays, grid=g, nms_thresh=0.4, prob_thresh=0.5)
    b = ph.non_maximum_suppression_3d(dist, prob, rays, grid=g, nms_thresh=0.4, prob_thresh=0.5)
    la = sd.polyhedron_to_label(a[2], a[0], rays, lbl.shape, prob=a[1], verbose=False)
    lb = ph.polyhedron_to_label(b[2], b[0], rays, lbl.shape, prob=b[1])
    assert matching(la, lb, thresh=0.5).f1 >= 0.99
    assert abs(len(a[0]) - len(b[0])) <= 1


@pytest.mark.parametrize("integral", [False, True])
def test_polyhedron_to_label_window_equals_whole(integral):
    rng = np.random.default_rng(10)
    rays = Rays_GoldenSpiral(32)
    shape = (20, 30, 30)
    dist, pts, prob = _scene(rng, 30, shape, 32, 1.5, 6.0, integral=integral)
    whole = ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob)
    for origin, size in (((5, 7, 11), (9, 13, 10)), ((0, 0, 0), (4, 30, 30)), ((19, 29, 29), (1, 1, 1))):
        want = whole[tuple(slice(o, o + s) for o, s in zip(origin, size))]
        np.testing.assert_array_equal(ph.polyhedron_to_label(dist, pts, rays, size, prob=prob, origin=origin), want)
        with cellkern.backend("emu"):
            np.testing.assert_array_equal(ph.polyhedron_to_label(dist, pts, rays, size, prob=prob, origin=origin),
                                          want)
    with pytest.raises(ValueError, match="origin"):
        ph.polyhedron_to_label(dist, pts, rays, shape, prob=prob, origin=(-1, 0, 0))
