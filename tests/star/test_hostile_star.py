"""Hostile input to the star API (issue 12): distances at and beyond the documented range, NaN and out-of-range
thresholds, meta tensors, huge ray counts; inside the range results equal the float64 reference and StarDist."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import cellkern
import cellkern.star as S
from cellkern import _C
from cellkern.reference import non_maximum_suppression_ref, polygons_to_label_ref
from cellkern.reference import star3d as ref3d
from cellkern.star import polyhedra as ph
from cellkern.star._checks import COORD_MAX, COORD_MAX_NMS, DIST_MAX_2D, DIST_MAX_3D, MAX_RAYS
from cellkern.star.rays import Rays_Cartesian, Rays_GoldenSpiral, Rays_Octo, Rays_Tetra

torch = pytest.importorskip("torch")

E = DIST_MAX_2D
BACKENDS = ["cpu", "emu"]


def _run(backend, f, *a, **kw):
    if backend == "emu":
        with cellkern.backend("emu"):
            return f(*a, **kw)
    return f(*a, **kw)


def test_documented_constants():
    # the Python checks and the kernels share one definition (csrc/ops/star/star.h)
    assert DIST_MAX_2D == COORD_MAX == 2.0 ** 22 and DIST_MAX_3D == 2.0 ** 10 and MAX_RAYS == 4096
    assert COORD_MAX_NMS == 2.0 ** 31 and _C.star_dist_max == DIST_MAX_2D and _C.star_max_rays == MAX_RAYS


# ---- 2D NMS ----------------------------------------------------------------------------------------------------

def _grid_case():
    dist = np.full((8, 8, 8), 3.0)
    prob = np.zeros((8, 8))
    prob[3, 3] = prob[3, 4] = 0.9  # two nearly identical polygons: one must go
    prob[5, 5] = 0.8
    return dist, prob


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [1e22, 1e300, 2 * E, np.inf, np.nan])
def test_nms_huge_ray_rejected(backend, value):
    # one candidate with a ray of 1e22 used to switch suppression off for every candidate (int64 overflow of
    # the bucket range): identical polygons were all kept
    dist, prob = _grid_case()
    dist[5, 5, 2] = value
    with pytest.raises(ValueError, match="dist"):
        _run(backend, S.non_maximum_suppression, dist, prob, b=0, nms_thresh=0.3)
    # a huge ray on a cell that is no candidate is never read
    dist[5, 5, 2] = 3.0
    dist[0, 0] = value
    pts = _run(backend, S.non_maximum_suppression, dist, prob, b=0, nms_thresh=0.3)[0]
    np.testing.assert_array_equal(pts, non_maximum_suppression_ref(dist, prob, b=0, nms_thresh=0.3)[0])


def test_nms_sparse_and_inds_huge_rays_rejected():
    rng = np.random.default_rng(0)
    d = rng.uniform(2, 4, (5, 8))
    p = rng.integers(0, 20, (5, 2))
    for bad in (1e22, -1e22, np.nan, np.inf):
        dd = d.copy()
        dd[2, 3] = bad
        with pytest.raises(ValueError, match="dist"):
            S.non_maximum_suppression_sparse(dd, rng.uniform(size=5), p)
        with pytest.raises(ValueError, match="dist"):
            S.non_maximum_suppression_inds(dd, p, None, verbose=0)
    with pytest.raises(ValueError, match="points"):
        S.non_maximum_suppression_inds(d, np.where(p > 10, 1e30, p), None, verbose=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_nms_near_the_edge_equals_reference_and_stardist(seed):
    # polygons of ~2^21 px on a canvas of 2^22 px (grid 2^19), some exactly at 2^22: every decision the exact
    # reference and StarDist make, with the emulated CUDA kernels too
    rng = np.random.default_rng(seed)
    g = 2 ** 19
    dist = (rng.uniform(0.05, 0.55, (7, 7, 16)) * E).astype(np.float32)
    dist[rng.uniform(size=(7, 7)) < 0.2] = E
    prob = rng.uniform(size=(7, 7)).astype(np.float32)
    kw = dict(grid=(g, g), b=0, nms_thresh=0.3, prob_thresh=0.2)
    want = non_maximum_suppression_ref(dist, prob, **kw)[0]
    assert 2 <= len(want) < (prob > 0.2).sum()
    for backend in BACKENDS:
        np.testing.assert_array_equal(_run(backend, S.non_maximum_suppression, dist, prob, **kw)[0], want)
    sd = pytest.importorskip("stardist.nms").non_maximum_suppression(dist, prob, **kw)[0]
    np.testing.assert_array_equal(np.sort(sd, axis=0), np.sort(want, axis=0))


def test_nms_one_large_candidate_does_not_stop_suppression():
    # the in-range version of the fuzz case: one polygon of 2^22 px among small ones
    rng = np.random.default_rng(3)
    dist = rng.uniform(2, 4, (24, 24, 16)).astype(np.float32)
    prob = rng.uniform(size=(24, 24)).astype(np.float32)
    dist[20, 20] = E
    prob[20, 20] = 0.55
    for crit in ("smaller", "iou"):
        want = non_maximum_suppression_ref(dist, prob, b=1, nms_thresh=0.3, prob_thresh=0.5, criterion=crit)[0]
        for backend in BACKENDS:
            got = _run(backend, S.non_maximum_suppression, dist, prob, b=1, nms_thresh=0.3, prob_thresh=0.5,
                       criterion=crit)[0]
            np.testing.assert_array_equal(got, want)


def test_nms_large_grid_factor_is_cheap():
    # centres 2^19 px apart: the bucket grid once asked for (2^22 / 8)^2 buckets (bad_alloc, or 20 s)
    rng = np.random.default_rng(1)
    dist = rng.uniform(1e-6, 2e-6, (7, 7, 16)).astype(np.float32)
    prob = rng.uniform(size=(7, 7)).astype(np.float32)
    t0 = time.perf_counter()
    pts = S.non_maximum_suppression(dist, prob, grid=(2 ** 19, 2 ** 19), b=0, prob_thresh=0.2)[0]
    assert time.perf_counter() - t0 < 2.0
    assert len(pts) == (prob > 0.2).sum()  # tiny polygons far apart: all kept


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_tiny_distances_equal_reference(backend):
    rng = np.random.default_rng(2)
    dist = rng.uniform(0.5e-6, 1.5e-6, (10, 10, 12)).astype(np.float32)
    prob = rng.uniform(size=(10, 10)).astype(np.float32)
    got = _run(backend, S.non_maximum_suppression, dist, prob, b=1, nms_thresh=0.1)
    want = non_maximum_suppression_ref(dist, prob, b=1, nms_thresh=0.1)
    np.testing.assert_array_equal(got[0], want[0])
    # tiny polygons at one centre (sparse API): they overlap completely
    d = rng.uniform(0.5e-6, 1.5e-6, (4, 12))
    keep = S.non_maximum_suppression_inds(d, np.full((4, 2), 7.25), None, thresh=0.5, verbose=0)
    np.testing.assert_array_equal(keep, [True, False, False, False])


# ---- 2D rasterisation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_polygons_to_label_huge_ray_rejected(backend):
    # a ray of 1e20 painted 424 px where the reference paints 105: rejected now, naming the argument
    dist = np.full((1, 8), 3.0)
    dist[0, 2] = 1e20
    with pytest.raises(ValueError, match="dist"):
        _run(backend, S.polygons_to_label, dist, np.array([[10, 10]]), (32, 32))
    with pytest.raises(ValueError, match="dist"):
        _run(backend, S.dist_to_coord, dist, np.array([[10, 10]]))
    # the range applies to the distances as scaled
    dist[0, 2] = E / 2
    with pytest.raises(ValueError, match="scale_dist"):
        S.polygons_to_label(dist, np.array([[10, 10]]), (32, 32), scale_dist=(4, 1))
    with pytest.raises(ValueError, match="points"):
        S.polygons_to_label(np.full((1, 8), 3.0), np.array([[10, 1e30]]), (32, 32))
    # dropped polygons (prob <= thr) are never read
    dist[0, 2] = np.inf
    assert not S.polygons_to_label(dist, np.array([[10, 10]]), (32, 32), prob=np.array([0.1]), thr=0.5).any()


def test_polygons_to_label_thr_nan_rejected():
    dist, pts = np.full((2, 8), 3.0), np.array([[5, 5], [6, 6]])
    for prob in (None, np.array([0.5, 0.6])):
        for thr in (np.nan, float("nan"), np.float32("nan"), "0.5", None, True, np.array([0.1, 0.2])):
            with pytest.raises(ValueError, match="thr"):
                S.polygons_to_label(dist, pts, (12, 12), prob=prob, thr=thr)
    # +inf: nothing passes, as in StarDist (prob > thr)
    assert not S.polygons_to_label(dist, pts, (12, 12), thr=np.inf).any()


def _spiky(seed, n=12, n_rays=24, scale=E):
    rng = np.random.default_rng(seed)
    dist = rng.uniform(2, 9, (n, n_rays))
    spikes = rng.uniform(size=(n, n_rays)) < 0.15
    dist[spikes] = rng.uniform(0.5, 1.0, spikes.sum()) * scale
    return dist, rng.uniform(-4, 68, (n, 2)), rng.uniform(size=n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polygons_to_label_near_the_edge_equals_reference_and_stardist(seed):
    # spikes of 2^21 .. 2^22 px across a 64 x 64 canvas: steep edges, crossings computed from far vertices
    dist, pts, prob = _spiky(seed)
    want = polygons_to_label_ref(dist, pts, (64, 64), prob=prob)
    assert (want > 0).sum() > 500
    for backend in BACKENDS:
        np.testing.assert_array_equal(_run(backend, S.polygons_to_label, dist, pts, (64, 64), prob=prob), want)
    sd = pytest.importorskip("stardist.geometry").polygons_to_label(dist, pts, (64, 64), prob=prob)
    np.testing.assert_array_equal(sd, want)


def test_polygons_to_label_far_centres_near_the_edge():
    # centres at +-2^22 with rays reaching back into the window (a window of a huge image, origin at 2^22 - 32)
    rng = np.random.default_rng(5)
    n, n_rays = 6, 16
    pts = np.stack([rng.uniform(-20, 20, n) + E - 60, np.full(n, E)], 1)  # (row, col) near (2^22, 2^22)
    dist = rng.uniform(10, 60, (n, n_rays))
    prob = rng.uniform(size=n)
    o = int(E) - 96
    got = S.polygons_to_label(dist, pts, (64, 64), prob=prob, origin=(o, o))
    # the reference in image coordinates over the same window: the rows/cols [o, o + 64) of a full render are
    # what a shifted render gives only if no float32 rounding depends on the shift, so render the full image's
    # window through the coordinates of the vertices themselves
    from cellkern.reference.star import _rasterize_polygon, dist_to_coord_ref

    coord = dist_to_coord_ref(dist, pts).astype(np.float64)
    want = np.zeros((64, 64), np.int32)
    for i in np.argsort(prob, kind="stable"):
        rr, cc = _rasterize_polygon(coord[i, 0] - o, coord[i, 1] - o, (64, 64))
        want[rr, cc] = i + 1
    assert (want > 0).sum() > 100
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_polygons_to_label_tiny_distances_equal_reference_and_stardist(backend):
    rng = np.random.default_rng(4)
    n = 12
    d = rng.uniform(0.5e-6, 1e-6, (n, 24))
    pts = rng.integers(0, 64, (n, 2)).astype(float)
    pts[: n // 2] += rng.uniform(-1e-6, 1e-6, (n // 2, 2))
    want = polygons_to_label_ref(d, pts, (64, 64))
    assert (want > 0).sum() >= n // 2
    np.testing.assert_array_equal(_run(backend, S.polygons_to_label, d, pts, (64, 64)), want)
    sd = pytest.importorskip("stardist.geometry").polygons_to_label(d, pts, (64, 64))
    np.testing.assert_array_equal(sd, want)


def test_cpu_rasteriser_stays_exact_beyond_the_range():
    # defence in depth: the kernel's slack around each crossing grows with the coordinates, so even vertices of
    # 1e20 (which the Python API refuses) are painted with skimage's rule, pixel for pixel
    from cellkern.ops import star as _p

    bad = 0
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(3, 12))
        dist = rng.uniform(1, 6, (1, n))
        dist[0, rng.integers(n)] = 10.0 ** rng.uniform(13, 30)
        pts = rng.uniform(5, 25, (1, 2))
        labels = np.zeros((32, 32), np.int32)
        coord = np.empty((1, 2, n), np.float32)
        _C.star_polygons_to_label(dist, pts, _p.trig_table(n), np.zeros(1, np.int64), 1.0, 1.0, coord, labels,
                                  0, 0, False, 0)
        bad += int((labels != polygons_to_label_ref(dist, pts, (32, 32))).any())
    assert bad == 0


# ---- 3D --------------------------------------------------------------------------------------------------------

def test_3d_distances_beyond_the_range_rejected():
    rays = Rays_GoldenSpiral(16)
    d = np.full((2, 16), 3.0)
    pts = np.array([[8.0, 8, 8], [9, 8, 8]])
    for bad in (DIST_MAX_3D * 2, 1e22, np.nan):
        dd = d.copy()
        dd[1, 4] = bad
        with pytest.raises(ValueError, match="dist"):
            ph.polyhedron_to_label(dd, pts, rays, (16, 16, 16))
        with pytest.raises(ValueError, match="dist"):
            ph.non_maximum_suppression_3d_inds(dd, pts, rays, None)
        with pytest.raises(ValueError, match="dist"):
            ph.polyhedron_volumes(dd, rays)
        with pytest.raises(ValueError, match="dist"):
            S.dist_to_volume(dd, rays)
        with pytest.raises(ValueError, match="dist"):
            rays.volume(dd)
    with pytest.raises(ValueError, match="points"):
        ph.polyhedron_to_label(d, pts * 1e30, rays, (16, 16, 16))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_3d_polyhedron_to_label_near_the_edge_equals_stardist(seed):
    # polyhedra with spikes of 2^9 .. 2^10 voxels around a 12^3 window: planes far from the centres decide the
    # voxels; StarDist's float32 rule voxel for voxel, and the float64 reference but for float32 rounding
    rng = np.random.default_rng(seed)
    rays = Rays_GoldenSpiral(20)
    dist = rng.uniform(2, 5, (5, 20))
    dist[:, rng.integers(0, 20, 3)] = rng.uniform(0.5, 1.0, (5, 3)) * DIST_MAX_3D
    dist[0, 0] = DIST_MAX_3D
    pts = rng.uniform(0, 12, (5, 3))
    prob = rng.uniform(size=5)
    got = ph.polyhedron_to_label(dist, pts, rays, (12, 12, 12), prob=prob)
    assert (got > 0).sum() > 300
    with cellkern.backend("emu"):
        np.testing.assert_array_equal(ph.polyhedron_to_label(dist, pts, rays, (12, 12, 12), prob=prob), got)
    # the float64 reference's rule over the window's voxels (its own renderer visits the polyhedra's whole boxes)
    vox = np.stack(np.meshgrid(*(np.arange(12),) * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    want = np.zeros(len(vox), np.int32)
    for i in np.argsort(prob)[::-1]:
        want[ref3d.inside_polyhedron(vox, pts[i], dist[i], rays) & (want == 0)] = i + 1
    assert (got.reshape(-1) != want).sum() <= 3  # StarDist's float32 rule vs exact, within its rounding
    sd = pytest.importorskip("stardist.geometry")
    sdr = pytest.importorskip("stardist.rays3d").Rays_GoldenSpiral(20)
    np.testing.assert_array_equal(got, sd.polyhedron_to_label(dist, pts, sdr, (12, 12, 12), prob=prob,
                                                              verbose=False))


# ---- thresholds ------------------------------------------------------------------------------------------------

NAN = float("nan")


def _nms2d_inputs():
    rng = np.random.default_rng(0)
    return rng.uniform(2, 4, (12, 12, 8)).astype(np.float32), rng.uniform(size=(12, 12)).astype(np.float32)


def _entry_points():
    dist, prob = _nms2d_inputs()
    d2, p2 = dist.reshape(-1, 8)[:6], np.argwhere(np.ones((12, 12)))[:6]
    rays = Rays_GoldenSpiral(12)
    rng = np.random.default_rng(1)
    d3, prob3 = rng.uniform(1, 2, (6, 6, 6, 12)).astype(np.float32), rng.uniform(size=(6, 6, 6)).astype(np.float32)
    pts3 = rng.uniform(0, 6, (4, 3))
    lab = np.zeros((8, 8), np.int32)
    lab[2:5, 2:5] = 1
    return [
        ("nms_thresh", lambda v: S.non_maximum_suppression(dist, prob, nms_thresh=v)),
        ("prob_thresh", lambda v: S.non_maximum_suppression(dist, prob, prob_thresh=v)),
        ("nms_thresh", lambda v: S.non_maximum_suppression_sparse(d2, np.ones(6), p2, nms_thresh=v)),
        ("thresh", lambda v: S.non_maximum_suppression_inds(d2, p2, None, thresh=v, verbose=0)),
        ("prob_thresh", lambda v: S.decode(prob, dist, prob_thresh=v)),
        ("nms_thresh", lambda v: S.decode(prob, dist, nms_thresh=v)),
        ("thr", lambda v: S.polygons_to_label(d2, p2, (12, 12), prob=np.ones(6), thr=v)),
        ("nms_thresh", lambda v: ph.non_maximum_suppression_3d(d3, prob3, rays, nms_thresh=v)),
        ("prob_thresh", lambda v: ph.non_maximum_suppression_3d(d3, prob3, rays, prob_thresh=v)),
        ("nms_thresh", lambda v: ph.non_maximum_suppression_3d_sparse(d3[0, 0, :4], np.ones(4), pts3, rays,
                                                                      nms_thresh=v)),
        ("thresh", lambda v: ph.non_maximum_suppression_3d_inds(d3[0, 0, :4], pts3, rays, None, thresh=v)),
        ("prob_thresh", lambda v: ph.decode3d(prob3, d3, rays, prob_thresh=v)),
        ("nms_thresh", lambda v: ph.decode3d(prob3, d3, rays, nms_thresh=v)),
        ("thr", lambda v: ph.polyhedron_to_label(d3[0, 0, :4], pts3, rays, (6, 6, 6), thr=v)),
        ("thresh", lambda v: S.matching(lab, lab, thresh=v)),
        ("thresh", lambda v: S.matching(lab, lab, thresh=(0.5, v))),
        ("thresh", lambda v: S.matching_dataset([lab], [lab], thresh=v, show_progress=False)),
    ]


UNIT = {"nms_thresh", "thresh"}  # overlaps: [0, 1]; scores (prob_thresh, thr): any number but NaN


@pytest.mark.parametrize("case", range(len(_entry_points())))
def test_thresholds_nan_and_out_of_range(case):
    name, call = _entry_points()[case]
    bad = [NAN, np.float32(NAN), np.float64(NAN), torch.tensor(NAN), np.array(NAN), "x", True]
    if name in UNIT:
        bad += [-0.1, 1.5, np.inf, -np.inf]
    if not any("matching" in n for n in call.__code__.co_names):
        bad.append(None)  # StarDist's matching takes None for 0
    for v in bad:
        with pytest.raises(ValueError, match=name):
            call(v)
    good = [0.0, 0.5, 1.0, np.float32(0.25)] + ([] if name in UNIT else [-np.inf, np.inf, 7.0])
    for v in good:
        call(v)


def test_model_thresholds_nan_rejected(tmp_path):
    from cellkern.models import StarDist2D, StarDistConfig

    model = StarDist2D(StarDistConfig(n_rays=8, unet_depth=1, unet_base_channels=4))
    img = np.random.default_rng(0).uniform(size=(16, 16)).astype(np.float32)
    for kw in (dict(prob_thresh=NAN), dict(nms_thresh=NAN), dict(prob_thresh=1.5), dict(nms_thresh=-0.1),
               dict(prob_thresh=np.float32(NAN))):
        with pytest.raises(ValueError, match=next(iter(kw))):
            model.predict_instances(img, **kw)
        with pytest.raises(ValueError, match=next(iter(kw))):
            model.predict_instances_big(img, 16, **kw)
    with pytest.raises(ValueError, match="thresholds"):
        model.thresholds = {"prob": NAN, "nms": 0.4}


def test_cli_rejects_nan_thresholds_before_loading(tmp_path):
    for cmd in ("segment", "predict"):
        r = subprocess.run([sys.executable, "-m", "cellkern", cmd, str(tmp_path / "missing.npy"), "--model",
                            str(tmp_path / "no_model"), "--out", str(tmp_path / "o.npy"), "--prob-thresh", "nan"],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        assert r.returncode == 2 and "prob-thresh" in r.stderr and "no_model" not in r.stderr, r.stderr


# ---- kinds, devices, sizes ----------------------------------------------------------------------------------------

def test_meta_and_mixed_devices_are_value_errors():
    meta = torch.zeros(4, 4, dtype=torch.int32, device="meta")
    cpu = torch.zeros(4, 4, dtype=torch.int32)
    for a, b in ((meta, meta), (cpu, meta), (meta, cpu)):
        with pytest.raises(ValueError, match="meta"):
            S.matching(a, b)
    with pytest.raises(ValueError, match="meta"):
        S.star_dist(meta)
    with pytest.raises(ValueError, match="meta"):
        S.label_are_sequential(meta)
    d = torch.ones(3, 8, device="meta")
    p = torch.zeros(3, 2)
    with pytest.raises(ValueError):
        S.polygons_to_label(d, p, (8, 8))
    with pytest.raises(ValueError, match="meta"):
        S.non_maximum_suppression_inds(d, p, None, verbose=0)
    with pytest.raises(ValueError, match="meta"):
        ph.polyhedron_to_label(torch.ones(2, 12, device="meta"), np.ones((2, 3)), Rays_GoldenSpiral(12), (4, 4, 4))


def test_wrong_kinds_are_type_errors():
    ragged = [[1, 2], [3]]
    with pytest.raises(TypeError, match="labels"):
        S.star_dist(np.array([[object()] * 4] * 4))
    with pytest.raises(TypeError, match="labels"):
        S.star_dist(ragged)
    with pytest.raises(TypeError, match="dist"):
        S.non_maximum_suppression(np.full((8, 8, 8), None), np.ones((8, 8)))
    with pytest.raises(TypeError, match="points"):
        S.polygons_to_label(np.ones((2, 8)), ragged, (8, 8))
    with pytest.raises(TypeError, match="y_true"):
        S.matching(np.array([[None]]), np.zeros((1, 1), int))
    with pytest.raises(TypeError, match="prob"):
        S.polygons_to_label(np.ones((2, 8)), np.ones((2, 2)), (8, 8), prob=np.array(["a", "b"]))
    with pytest.raises(TypeError, match="n_rays"):
        S.star_dist(np.zeros((4, 4), np.int32), 8.0)


@pytest.mark.parametrize("call", [
    lambda: S.star_dist(np.zeros((4, 4), np.int32), 2 ** 31),
    lambda: S.star_dist(np.zeros((4, 4, 4), np.int32), 2 ** 31),
    lambda: S.star_dist3d(np.zeros((4, 4, 4), np.int32), 2 ** 40),
    lambda: S.ray_angles(2 ** 31),
    lambda: S.relabel_image_stardist(np.zeros((4, 4), np.int32), 2 ** 31),
    lambda: Rays_GoldenSpiral(2 ** 31),
    lambda: Rays_Octo(40),
    lambda: Rays_Tetra(2 ** 31),
    lambda: Rays_Cartesian(2 ** 20, 2 ** 20),
], ids=["star_dist", "star_dist-3d", "star_dist3d", "ray_angles", "relabel", "spiral", "octo", "tetra", "cartesian"])
def test_huge_ray_counts_rejected_before_allocating(call):
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="n_rays|rays|n:|n_level|n_rays_x"):
        call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < 1 << 20
    # the largest accepted count still works
    assert len(S.ray_angles(MAX_RAYS)) == MAX_RAYS


def test_nms3d_huge_polyhedra_memory_error_before_allocating():
    # Two overlapping polyhedra of radius 1000 (inside the documented 2^10): a kept one's voxel map would take ~34 GB,
    # which zero-filling would page in until the machine ran out; it is refused up front with the size it needs.
    rays = Rays_GoldenSpiral(16)
    dist = np.full((1, 1, 2, 16), 1000.0, np.float32)
    prob = np.array([[[0.9, 0.8]]], np.float32)
    t0 = time.perf_counter()
    with pytest.raises(MemoryError, match="voxel map .* needs [0-9]+ bytes"):
        S.non_maximum_suppression_3d(dist, prob, rays, b=0)
    assert time.perf_counter() - t0 < 5.0
    # the same pair at radius 20 runs and keeps the more probable one
    assert len(S.non_maximum_suppression_3d(dist / 50, prob, rays, b=0)[0]) == 1
