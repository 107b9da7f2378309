"""dist_to_coord and polygons_to_label bit for bit against the oracle (skimage's rule) and StarDist, every backend."""
import numpy as np
import pytest

from cellkern.reference import dist_to_coord_ref, polygons_to_label_ref
from cellkern.star import decode, dist_to_coord, polygons_to_label

torch = pytest.importorskip("torch")


def _on(backend, *xs):
    return [torch.from_numpy(np.asarray(x)).to(backend.device) if backend.device == "cuda" else x for x in xs]


def _np(x):
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


def _polygons(seed, n=120, n_rays=32, lo=-6, hi=76):
    rng = np.random.default_rng(seed)
    points = rng.integers(lo, hi, (n, 2))
    prob = rng.uniform(size=n)
    prob[: n // 5] = 0.5  # ties: painted in input order
    dists = [rng.uniform(0, 12, (n, n_rays)).astype(np.float32),
             (rng.integers(0, 24, (n, n_rays)) / 2).astype(np.float32),  # vertices on pixel centres and edges
             rng.uniform(0, 30, (n, n_rays))]                            # float64, large
    return points, prob, dists


@pytest.mark.parametrize("n_rays", [32, 16, 5])
def test_polygons_to_label_matches_oracle(backend, n_rays):
    points, prob, dists = _polygons(n_rays, n=60 if backend.is_emu else 150, n_rays=n_rays)
    for dist in dists:
        for kw in ({}, {"prob": prob}, {"prob": prob, "thr": 0.45}):
            ref = polygons_to_label_ref(dist, points, (70, 80), prob=kw.get("prob"), thresh=kw.get("thr", -np.inf))
            d, p = _on(backend, dist, points)
            pr = _on(backend, kw["prob"])[0] if "prob" in kw else None
            ours = _np(polygons_to_label(d, p, pr, (70, 80), thr=kw.get("thr", -np.inf)))
            assert ours.dtype == np.int32
            np.testing.assert_array_equal(ours, ref)


def test_origin_paints_a_window_of_the_whole_image(backend):
    """Block-wise rendering of a big image: each window equals the crop of the whole label image, bit for bit,
    also far from the origin where the float32 vertices round differently than they would near 0."""
    for shift in (0, 3001, 1 << 20):
        points, prob, dists = _polygons(7, n=60 if backend.is_emu else 150)
        points = points + shift
        shape = (shift + 70, shift + 80)
        for dist in dists[:2]:
            d, p, pr = _on(backend, dist, points, prob)
            whole = polygons_to_label_ref(dist, points - shift, (70, 80), prob=prob) if shift else None
            for oy, ox, h, w in ((0, 0, 70, 80), (13, 29, 17, 40), (60, 0, 10, 80), (0, 77, 70, 3)):
                win = _np(polygons_to_label(d, p, pr, (h, w), origin=(shift + oy, shift + ox)))
                full = _np(polygons_to_label(d, p, pr, shape))[shift + oy:shift + oy + h, shift + ox:shift + ox + w] \
                    if shift < 5000 else None
                if full is not None:
                    np.testing.assert_array_equal(win, full)
                if shift == 0:
                    np.testing.assert_array_equal(win, polygons_to_label_ref(dist, points, (70, 80), prob=prob)[
                        oy:oy + h, ox:ox + w])
    with pytest.raises(ValueError, match="origin"):
        polygons_to_label(dists[0], points, prob, (9, 9), origin=(-1, 0))
    with pytest.raises(ValueError, match="origin"):
        polygons_to_label(dists[0], points, prob, (9, 9), origin=(1,))


def test_threads_take_bands_by_output_page(two_threads):
    # a label image over 16 huge pages: row bands are split between threads along page boundaries
    rng = np.random.default_rng(5)
    n, shape = 300, (4096, 2400)
    points = np.stack([rng.integers(-10, shape[0] + 10, n), rng.integers(-10, shape[1] + 10, n)], 1)
    dist = rng.uniform(2, 40, (n, 16)).astype(np.float32)
    prob = rng.random(n)
    np.testing.assert_array_equal(polygons_to_label(dist, points, prob, shape),
                                  polygons_to_label_ref(dist, points, shape, prob=prob))


def test_dist_to_coord_matches_oracle(backend):
    points, _, dists = _polygons(1)
    for dist in dists:
        for scale in ((1, 1), (2, 0.5)):
            d, p = _on(backend, dist, points)
            np.testing.assert_array_equal(_np(dist_to_coord(d, p, scale_dist=scale)),
                                          dist_to_coord_ref(dist, points, scale_dist=scale))


def test_scale_float_points_and_argument_orders():
    points, prob, dists = _polygons(2)
    fpts = points + np.random.default_rng(0).uniform(-0.5, 0.5, points.shape)
    ref = polygons_to_label_ref(dists[0], fpts, (60, 64), prob=prob, scale_dist=(1.5, 0.75))
    np.testing.assert_array_equal(polygons_to_label(dists[0], fpts, prob, (60, 64), scale_dist=(1.5, 0.75)), ref)
    # StarDist's order (dist, points, shape, prob=...) and keywords
    np.testing.assert_array_equal(polygons_to_label(dists[0], fpts, (60, 64), prob=prob, scale_dist=(1.5, 0.75)), ref)
    np.testing.assert_array_equal(polygons_to_label(dists[0], fpts, shape=(60, 64), prob=prob,
                                                    scale_dist=(1.5, 0.75)), ref)
    t = polygons_to_label(torch.from_numpy(dists[0]), torch.from_numpy(fpts), torch.from_numpy(prob), (60, 64),
                          scale_dist=(1.5, 0.75))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int32
    np.testing.assert_array_equal(t.numpy(), ref)


def test_edge_cases():
    points, prob, dists = _polygons(3, n=10)
    assert not polygons_to_label(dists[0][:0], points[:0], None, (5, 6)).any()
    assert polygons_to_label(dists[0], points, prob, (0, 7)).shape == (0, 7)
    assert not polygons_to_label(dists[0], points, prob, (9, 9), thr=2).any()  # nothing kept
    # one huge polygon over the whole image, one entirely outside, NaN probability (never kept)
    d = np.full((3, 8), 5.0, np.float32)
    d[0] = 1000
    pts = np.array([[5, 5], [-100, -100], [3, 3]])
    pr = np.array([0.1, 0.9, np.nan])
    lbl = polygons_to_label(d, pts, pr, (10, 12))
    np.testing.assert_array_equal(lbl, polygons_to_label_ref(d, pts, (10, 12), prob=pr))
    assert set(np.unique(lbl)) == {1}


def test_matches_stardist():
    geometry = pytest.importorskip("stardist.geometry", reason="stardist not installed")
    points, prob, dists = _polygons(4)
    for dist in dists[:2]:
        np.testing.assert_array_equal(dist_to_coord(dist, points), geometry.dist_to_coord(dist, points))
        for kw in ({}, {"prob": prob}, {"prob": prob, "thr": 0.4}):
            np.testing.assert_array_equal(polygons_to_label(dist, points, (70, 80), **kw),
                                          geometry.polygons_to_label(dist, points, (70, 80), **kw))


def test_decode():
    from cellkern.data import synthetic_nuclei
    from cellkern.reference import edt_prob_ref, matching_ref
    from cellkern.star import star_dist
    _, lbl = synthetic_nuclei((80, 90), 12, seed=6)
    labels, det = decode(edt_prob_ref(lbl), star_dist(lbl, 32), b=0)
    assert labels.shape == lbl.shape and len(det["points"]) == labels.max()
    assert matching_ref(lbl, labels).f1 >= 0.99
    sub, _ = decode(edt_prob_ref(lbl)[::2, ::2], star_dist(lbl, 32, (2, 2)), grid=(2, 2), b=0)
    assert sub.shape == (80, 90)


def test_bad_input():
    points, prob, dists = _polygons(5, n=10)
    d = dists[0]
    with pytest.raises(ValueError, match="shape"):
        polygons_to_label(d, points, prob)
    with pytest.raises(ValueError, match="points"):
        polygons_to_label(d, points[:, :1], prob, (9, 9))
    with pytest.raises(ValueError, match="polygons"):
        polygons_to_label(d, points[:5], prob, (9, 9))
    with pytest.raises(ValueError, match="prob"):
        polygons_to_label(d, points, prob[:3], (9, 9))
    with pytest.raises(ValueError, match="rays"):
        polygons_to_label(d[:, :2], points, prob, (9, 9))
    with pytest.raises(TypeError, match="dist"):
        polygons_to_label(d.astype(np.complex64), points, prob, (9, 9))
    bad = d.copy()
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        polygons_to_label(bad, points, None, (9, 9))
    polygons_to_label(bad, points, np.where(np.arange(10) == 2, 0.0, 1.0), (9, 9), thr=0.5)  # dropped: fine
    with pytest.raises(ValueError, match="scale_dist"):
        dist_to_coord(d, points, scale_dist=(1,))
    with pytest.raises(TypeError):
        polygons_to_label(d, points, prob, (9, 9), None, 1)
