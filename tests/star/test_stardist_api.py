"""StarDist's public 2D API on cellkern.star: each name against StarDist itself (where installed, called the way
StarDist users call it) and against independent numpy oracles (always), edge cases and bad input."""
import inspect

import numpy as np
import pytest

import cellkern.star as ck
from cellkern.data import synthetic_nuclei
from cellkern.reference import (matching_dataset_ref, non_maximum_suppression_ref, polygon_area, polygons_to_label_ref,
                                star_dist_ref, star_polygon_intersection_area)


def _stardist(module):
    return pytest.importorskip(f"stardist.{module}", reason="stardist not installed")


# ---- oracles ------------------------------------------------------------------------------------------------


def _areas(dist, points):
    phi = 2 * np.pi * np.arange(dist.shape[1]) / dist.shape[1]
    v = points[:, :, None] + np.maximum(dist, 0)[:, None, :] * np.stack([np.sin(phi), np.cos(phi)])
    return polygon_area(v)


def _overlap_matrix(dist, points, criterion="smaller"):
    """Exact pairwise overlaps (cellkern.reference's triangle-fan intersection), 0 for zero-area pairs."""
    dist, points = np.maximum(np.asarray(dist, np.float64), 0), np.asarray(points, np.float64)
    n = len(dist)
    area = _areas(dist, points)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            if np.hypot(*(points[i] - points[j])) >= dist[i].max() + dist[j].max() or min(area[i], area[j]) == 0:
                continue
            inter = star_polygon_intersection_area(dist[i], points[i], dist[j], points[j])
            den = min(area[i], area[j]) if criterion == "smaller" else area[i] + area[j] - inter
            out[i, j] = out[j, i] = inter / den
    return out


def _greedy_oracle(overlap, order, thresh):
    """Kept mask (in visiting order) of greedy NMS over a precomputed overlap matrix."""
    keep = []
    for i in order:
        if all(overlap[i, k] <= thresh for k in keep):
            keep.append(i)
    return np.isin(order, keep)


def _random_polygons(seed, n, n_rays=16, box=40, r=(3, 10), integer=True):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, box, (n, 2)) if integer else rng.uniform(0, box, (n, 2))
    dist = rng.uniform(*r, (n, n_rays)).astype(np.float32)
    prob = rng.random(n)
    return dist, prob, points


def _away_from(overlap, thresh, margin):
    """Indices of a subset whose pairwise overlaps all differ from thresh by more than margin (StarDist truncates
    vertices to integers, so only decisions clear of the threshold are comparable)."""
    keep = []
    for i in range(len(overlap)):
        if all(abs(overlap[i, k] - thresh) > margin for k in keep):
            keep.append(i)
    return np.array(keep)


# ---- non_maximum_suppression: StarDist's default threshold ---------------------------------------------------


def _prediction(shape=(40, 40), n=4, seed=3):
    _, lbl = synthetic_nuclei(shape, n, seed=seed, touching=0.7)
    dist = star_dist_ref(lbl, 16)
    prob = np.zeros(lbl.shape)
    rng = np.random.default_rng(seed)
    prob[lbl > 0] = 0.5 + 0.5 * rng.random(int((lbl > 0).sum()))  # distinct: no ties
    return dist, prob


def test_nms_default_threshold_is_stardists():
    sig = inspect.signature(ck.non_maximum_suppression)
    assert sig.parameters["nms_thresh"].default == 0.5 and sig.parameters["prob_thresh"].default == 0.5
    assert list(sig.parameters)[:9] == ["dist", "prob", "grid", "b", "nms_thresh", "prob_thresh", "use_bbox",
                                        "use_kdtree", "verbose"]
    dist, prob = _prediction()
    ours = ck.non_maximum_suppression(dist, prob)
    np.testing.assert_array_equal(ours[0], non_maximum_suppression_ref(dist, prob, nms_thresh=0.5)[0])
    # two regular polygons overlapping by 0.48 of their area: kept at 0.5, one suppressed at 0.4
    d = np.zeros((20, 24, 16))
    d[10, 8], d[10, 13] = 6.0, 6.0
    p = np.zeros((20, 24))
    p[10, 8], p[10, 13] = 0.9, 0.8
    assert len(ck.non_maximum_suppression(d, p)[0]) == 2
    assert len(ck.non_maximum_suppression(d, p, nms_thresh=0.4)[0]) == 1
    # StarDist's positional extras are accepted (and do not change the result)
    again = ck.non_maximum_suppression(dist, prob, (1, 1), 2, 0.5, 0.5, False, False, False)
    np.testing.assert_array_equal(again[0], ours[0])


def test_nms_default_threshold_agrees_with_stardist():
    sd = _stardist("nms")
    dist, prob = _prediction(shape=(64, 64), n=10, seed=5)
    ours = ck.non_maximum_suppression(dist, prob)
    theirs = sd.non_maximum_suppression(dist, prob)
    same = set(map(tuple, ours[0])) & set(map(tuple, theirs[0]))
    assert len(same) >= 0.9 * max(len(ours[0]), len(theirs[0]))  # StarDist's integer vertices move a few pairs


# ---- non_maximum_suppression_inds / _sparse ----------------------------------------------------------------


@pytest.mark.parametrize("integer", [True, False])  # lattice centres: the C++ sweep; float centres: numpy
@pytest.mark.parametrize("criterion", ["smaller", "iou"])
def test_inds_matches_exact_oracle(integer, criterion):
    for seed in range(2):
        dist, prob, points = _random_polygons(seed, 24, integer=integer)
        dist[np.random.default_rng(seed).random(dist.shape) < 0.1] = 0  # zero rays, some zero-area fans
        order = np.argsort(-prob)
        overlap = _overlap_matrix(dist, points, criterion)
        for thresh in (0.1, 0.5):
            keep = ck.non_maximum_suppression_inds(dist[order], points[order], prob[order], thresh, verbose=0,
                                                   criterion=criterion)
            assert keep.dtype == bool and keep.shape == (24,)
            np.testing.assert_array_equal(keep, _greedy_oracle(overlap, order, thresh))


def test_sparse_matches_grid_oracle():
    # candidates of a grid prediction, given as a sparse list: the same kept polygons as the grid NMS oracle
    dist, prob = _prediction()
    mask = prob > 0.5
    points, d, p = np.argwhere(mask), dist[mask], prob[mask]
    ref = non_maximum_suppression_ref(dist, prob, b=0, nms_thresh=0.4)
    assert len(points) > 100 and len(ref[0]) > 2
    # the lattice path (integers, halves), and (a translation by 1/3: same overlaps) the numpy path
    for pts in (points, points + 0.5, points + 1 / 3):
        kp, kprob, kd, inds = ck.non_maximum_suppression_sparse(d, p, pts, nms_thresh=0.4)
        np.testing.assert_array_equal(points[inds], ref[0])
        np.testing.assert_array_equal(kprob, ref[1])
        np.testing.assert_array_equal(kd, ref[2])
        np.testing.assert_array_equal(kp, pts[inds])


def test_sparse_order_ties_duplicates_and_empty():
    rng = np.random.default_rng(2)
    dist = np.broadcast_to(rng.uniform(3, 6, 8), (12, 8)).astype(np.float32).copy()
    points = np.stack([np.arange(12) % 4 * 20, np.arange(12) // 4 * 20], 1)
    points[6:] = points[:6]  # repeated centres: identical polygons
    prob = np.full(12, 0.7)
    prob[[1, 4]] = 0.9
    kp, kprob, kd, inds = ck.non_maximum_suppression_sparse(dist, prob, points)
    order = np.argsort(prob)[::-1]  # StarDist's visiting order, equal probabilities included
    first = {}
    for i in order:
        first.setdefault(tuple(points[i]), i)
    np.testing.assert_array_equal(inds, [i for i in order if first[tuple(points[i])] == i])
    assert inds.dtype == np.int64 and kp.dtype == points.dtype and kd.dtype == np.float32
    # a far copy cannot interact: each copy keeps what the original alone keeps (distinct probabilities: numpy's
    # tie order depends on the array)
    pr = rng.random(12)
    near = ck.non_maximum_suppression_sparse(dist, pr, points)[3]
    far = ck.non_maximum_suppression_sparse(np.r_[dist, dist], np.r_[pr, pr / 2], np.r_[points, points + 10**7])[3]
    np.testing.assert_array_equal(far[far < 12], near)
    np.testing.assert_array_equal(far[far >= 12] - 12, near)
    e = ck.non_maximum_suppression_sparse(dist[:0], prob[:0], points[:0])
    assert [x.shape for x in e] == [(0, 2), (0,), (0, 8), (0,)]
    assert ck.non_maximum_suppression_inds(dist[:0], points[:0], None, verbose=0).shape == (0,)


def test_sparse_and_inds_agree_with_stardist():
    sd = _stardist("nms")
    scale = 256  # overlaps are scale invariant; StarDist's integer vertices are then ~exact
    for seed, integer in ((0, True), (1, False)):
        dist, prob, points = _random_polygons(seed, 32, integer=integer)
        prob[:8] = 0.75  # ties: both visit them in np.argsort(prob)[::-1] order
        overlap = _overlap_matrix(dist, points)
        for thresh in (0.3, 0.5):
            sub = _away_from(overlap, thresh, 0.005)
            d, p, pts = dist[sub] * scale, prob[sub], points[sub] * scale
            ours = ck.non_maximum_suppression_sparse(d, p, pts, 2, thresh)  # StarDist's positional order
            theirs = sd.non_maximum_suppression_sparse(d, p, pts, 2, thresh)
            for o, t in zip(ours, theirs):
                assert o.dtype == t.dtype
                np.testing.assert_array_equal(o, t)
            order = np.argsort(p)[::-1]
            np.testing.assert_array_equal(
                ck.non_maximum_suppression_inds(d[order], pts[order], p[order], thresh, verbose=0),
                sd.non_maximum_suppression_inds(d[order], pts[order], p[order], thresh, verbose=0))


def test_nms_sparse_bad_input():
    dist, prob, points = _random_polygons(0, 5)
    f = ck.non_maximum_suppression_sparse
    with pytest.raises(ValueError, match="dist"):
        f(dist[0], prob, points)
    with pytest.raises(ValueError, match="points"):
        f(dist, prob, points[:, :1])
    with pytest.raises(ValueError, match="prob"):
        f(dist, prob[:4], points)
    with pytest.raises(ValueError, match="nms_thresh"):
        f(dist, prob, points, nms_thresh=1.5)
    with pytest.raises(ValueError, match="rays"):
        f(dist[:, :2], prob, points)
    with pytest.raises(ValueError, match="points"):
        f(dist, prob, np.where(points > 20, np.nan, points))
    with pytest.raises(ValueError, match="dist"):
        f(np.full_like(dist, np.inf), prob, points)
    with pytest.raises(TypeError, match="dist"):
        f(dist.astype(str), prob, points)
    with pytest.raises(ValueError, match="criterion"):
        f(dist, prob, points, criterion="area")
    with pytest.raises(ValueError, match="scores"):
        ck.non_maximum_suppression_inds(dist, points, prob[:3], verbose=0)
    with pytest.raises(ValueError, match="thresh"):
        ck.non_maximum_suppression_inds(dist, points, None, thresh="x", verbose=0)


# ---- polygons_to_label: StarDist's positional order --------------------------------------------------------


def _render_inputs(seed=0, n=40, n_rays=16):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 9, (n, n_rays)).astype(np.float32), rng.integers(-3, 50, (n, 2)), rng.random(n))


def test_polygons_to_label_stardist_positional_order():
    dist, points, prob = _render_inputs()
    shape = (48, 52)
    ref = polygons_to_label_ref(dist, points, shape, prob=prob, thresh=0.3, scale_dist=(1.0, 0.5))
    for call in (lambda: ck.polygons_to_label(dist, points, shape, prob, 0.3, (1.0, 0.5)),
                 lambda: ck.polygons_to_label(dist, points, shape, prob=prob, thr=0.3, scale_dist=(1.0, 0.5)),
                 lambda: ck.polygons_to_label(dist, points, np.array(shape), prob, 0.3, (1.0, 0.5)),
                 lambda: ck.polygons_to_label(dist, points, prob, shape, thr=0.3, scale_dist=(1.0, 0.5))):
        np.testing.assert_array_equal(call(), ref)
    np.testing.assert_array_equal(ck.polygons_to_label(dist, points, shape), polygons_to_label_ref(dist, points, shape))
    # two polygons: an integer pair third is prob when a shape tuple follows (cellkern's order)
    two = ck.polygons_to_label(dist[:2], points[:2], np.array([1, 2]), shape)
    np.testing.assert_array_equal(two, polygons_to_label_ref(dist[:2], points[:2], shape, prob=np.array([1, 2])))
    with pytest.raises(TypeError, match="twice"):
        ck.polygons_to_label(dist, points, shape, prob, 0.3, thr=0.5)
    with pytest.raises(TypeError, match="positional"):
        ck.polygons_to_label(dist, points, shape, prob, 0.3, (1, 1), 7)
    with pytest.raises(ValueError, match="thr"):
        ck.polygons_to_label(dist, points, shape, prob, "high")


def test_polygons_to_label_agrees_with_stardist():
    geometry = _stardist("geometry")
    dist, points, prob = _render_inputs(1)
    for args, kw in ((((48, 52),), {}), (((48, 52), prob), {}), (((48, 52), prob, 0.5), {}),
                     (((48, 52), prob, -np.inf, (0.5, 2.0)), {}), (((48, 52),), {"prob": prob, "thr": 0.2})):
        np.testing.assert_array_equal(ck.polygons_to_label(dist, points, *args, **kw),
                                      geometry.polygons_to_label(dist, points, *args, **kw))


# ---- polygons_to_label_coord, ray_angles, relabel_image_stardist -------------------------------------------


def test_polygons_to_label_coord_matches_oracle():
    dist, points, _ = _render_inputs(2)
    dist[:10] = np.round(dist[:10] * 2) / 2  # vertices on pixel centres and edges
    coord = ck.dist_to_coord(dist, points)
    lbl = ck.polygons_to_label_coord(coord, (48, 52))
    assert lbl.dtype == np.int32
    np.testing.assert_array_equal(lbl, polygons_to_label_ref(dist, points, (48, 52)))  # input order, i + 1
    perm = np.random.default_rng(0).permutation(len(dist)) * 2
    lut = np.r_[0, perm + 1]
    np.testing.assert_array_equal(ck.polygons_to_label_coord(coord, (48, 52), perm), lut[lbl])
    assert not ck.polygons_to_label_coord(coord[:0], (5, 6)).any()
    assert ck.polygons_to_label_coord(coord, (0, 6)).shape == (0, 6)


def test_polygons_to_label_coord_agrees_with_skimage():
    draw = pytest.importorskip("skimage.draw")
    rng = np.random.default_rng(3)
    # arbitrary (not star-convex, self-intersecting) polygons, partly outside, vertices on the pixel lattice
    coord = rng.uniform(-6, 46, (25, 2, 7))
    coord[:8] = np.round(coord[:8])
    coord[8:12] = np.round(coord[8:12] * 2) / 2
    coord = coord.astype(np.float32)
    expected = np.zeros((40, 44), np.int32)
    for i, c in enumerate(coord):
        rr, cc = draw.polygon(c[0], c[1], expected.shape)
        expected[rr, cc] = i + 1
    np.testing.assert_array_equal(ck.polygons_to_label_coord(coord, expected.shape), expected)


def test_polygons_to_label_coord_agrees_with_stardist():
    geometry = _stardist("geometry")
    rng = np.random.default_rng(4)
    arbitrary = rng.uniform(-6, 46, (25, 2, 7))
    arbitrary[:8] = np.round(arbitrary[:8])
    star = geometry.dist_to_coord(rng.uniform(0, 9, (25, 32)), rng.integers(0, 40, (25, 2)))
    for coord in (arbitrary, star):
        for lab in (None, rng.permutation(25)):
            np.testing.assert_array_equal(ck.polygons_to_label_coord(coord, (40, 44), lab),
                                          geometry.polygons_to_label_coord(coord, (40, 44), lab))


def test_polygons_to_label_coord_bad_input():
    coord = np.zeros((3, 2, 5))
    with pytest.raises(ValueError, match="coord"):
        ck.polygons_to_label_coord(coord[:, 0], (5, 5))
    with pytest.raises(ValueError, match="shape"):
        ck.polygons_to_label_coord(coord, (5, 5, 5))
    with pytest.raises(TypeError, match="labels"):
        ck.polygons_to_label_coord(coord, (5, 5), np.array([0.0, 1, 2]))
    with pytest.raises(ValueError, match="labels"):
        ck.polygons_to_label_coord(coord, (5, 5), np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="labels"):
        ck.polygons_to_label_coord(coord, (5, 5), np.array([0, 1]))
    with pytest.raises(ValueError, match="coord"):
        ck.polygons_to_label_coord(np.full((1, 2, 4), np.nan), (5, 5))


def test_ray_angles():
    for n in (1, 3, 32, 33):
        np.testing.assert_allclose(ck.ray_angles(n), 2 * np.pi * np.arange(n) / n, rtol=1e-15, atol=0)
    assert ck.ray_angles().shape == (32,)
    with pytest.raises(TypeError, match="n_rays"):
        ck.ray_angles(3.0)
    with pytest.raises(ValueError, match="n_rays"):
        ck.ray_angles(-1)


def test_ray_angles_agree_with_stardist():
    geometry = _stardist("geometry")
    for n in (5, 32, 64):
        np.testing.assert_array_equal(ck.ray_angles(n), geometry.ray_angles(n))


def _relabel_oracle(lbl, n_rays):
    from scipy import ndimage
    ids = np.unique(lbl)[1:]
    points = np.array(ndimage.center_of_mass(np.ones_like(lbl), lbl, ids)).astype(int).reshape(-1, 2)
    dist = star_dist_ref(lbl, n_rays)[tuple(points.T)]
    return polygons_to_label_ref(dist, points, lbl.shape)


def test_relabel_image_stardist():
    _, lbl = synthetic_nuclei((80, 80), 12, seed=4, touching=0.5)
    lbl = np.where(lbl > 0, lbl * 7 + 100, 0)  # non-sequential ids
    for n_rays in (6, 32):
        np.testing.assert_array_equal(ck.relabel_image_stardist(lbl, n_rays), _relabel_oracle(lbl, n_rays))
    assert not ck.relabel_image_stardist(np.zeros((5, 6), np.uint16), 8).any()
    np.testing.assert_array_equal(ck.relabel_image_stardist(lbl, 8, mode="cpp"), ck.relabel_image_stardist(lbl, 8))
    with pytest.raises(TypeError, match="lbl"):
        ck.relabel_image_stardist(lbl.astype(float), 8)
    with pytest.raises(ValueError, match="lbl"):
        ck.relabel_image_stardist(lbl[None], 8)
    with pytest.raises(ValueError, match="lbl"):
        ck.relabel_image_stardist(-lbl, 8)
    with pytest.raises(ValueError, match="n_rays"):
        ck.relabel_image_stardist(lbl, 2)
    with pytest.raises(ValueError, match="grid"):
        ck.relabel_image_stardist(lbl, 8, grid=(2, 2))
    with pytest.raises(TypeError, match="unexpected"):
        ck.relabel_image_stardist(lbl, 8, sparse=True)


def test_relabel_image_stardist_agrees_with_stardist():
    geometry = _stardist("geometry")
    for seed in range(2):
        _, lbl = synthetic_nuclei((96, 96), 15, seed=seed, touching=0.5)
        np.testing.assert_array_equal(ck.relabel_image_stardist(lbl, 32), geometry.relabel_image_stardist(lbl, 32))


# ---- matching: report_matches, datasets, relabelling, dense helpers ---------------------------------------


def _label_pairs(seed=0, shape=(64, 64)):
    rng = np.random.default_rng(seed)
    _, y_true = synthetic_nuclei(shape, 14, seed=seed, touching=0.5)
    y_pred = np.roll(y_true, tuple(rng.integers(-3, 4, 2)), axis=(0, 1)) * 5  # shifted, non-sequential ids
    y_pred[rng.random(shape) < 0.03] = 0
    y_pred[y_pred == 10] = 0  # one object missing
    y_pred[:6, :6] = 999  # one extra
    return y_true, y_pred


def _check_report(y_true, y_pred, rep, thresh, criterion="iou"):
    """Independent checks of a report: a one-to-one assignment of min(n_true, n_pred) pairs in ascending true
    order, scores recomputed from the masks, the tps are the pairs at or above thresh."""
    ids_t, ids_p = np.unique(y_true)[1:], np.unique(y_pred)[1:]
    assert len(rep.matched_pairs) == min(len(ids_t), len(ids_p))
    ts, ps = zip(*rep.matched_pairs) if rep.matched_pairs else ((), ())
    assert len(set(ts)) == len(ts) and len(set(ps)) == len(ps) and list(ts) == sorted(ts)
    for (t, p), s in zip(rep.matched_pairs, rep.matched_scores):
        a, b = y_true == t, y_pred == p
        inter = np.sum(a & b)
        den = {"iou": np.sum(a | b), "iot": np.sum(a), "iop": np.sum(b)}[criterion]
        assert s == pytest.approx(inter / den, abs=1e-12)
    assert rep.matched_tps == tuple(k for k, s in enumerate(rep.matched_scores) if s >= thresh)
    plain = ck.matching(y_true, y_pred, thresh, criterion)
    assert rep[:14] == plain[:14] or (rep.tp == plain.tp and rep.mean_true_score == pytest.approx(
        plain.mean_true_score, abs=1e-12))


def test_matching_report_matches_oracle():
    y_true, y_pred = _label_pairs()
    for crit in ("iou", "iop"):
        for thresh in (0.0, 0.3, 0.7):
            rep = ck.matching(y_true, y_pred, thresh, crit, True)
            assert isinstance(rep, ck.MatchingReport)
            _check_report(y_true, y_pred, rep, thresh, crit)
    reps = ck.matching(y_true, y_pred, (0.3, 0.9), report_matches=True)
    assert len(reps) == 2 and reps[1].tp <= reps[0].tp
    # no object overlaps: the pairs are still reported (score 0), none counts
    a, b = np.zeros((10, 10), np.int32), np.zeros((10, 10), np.int32)
    a[:3, :3], b[5:, 5:], b[:2, 7:] = 4, 3, 8
    rep = ck.matching(a, b, report_matches=True)
    assert rep.tp == 0 and rep.matched_tps == () and len(rep.matched_pairs) == 1 and rep.matched_scores == (0.0,)
    assert rep.matched_pairs[0][0] == 4
    empty = ck.matching(y_true, np.zeros_like(y_pred), report_matches=True)
    assert (empty.matched_pairs, empty.matched_scores, empty.matched_tps, empty.fn) == ((), (), (), 14)


def test_matching_report_agrees_with_stardist():
    sd = _stardist("matching")
    for seed in range(2):
        y_true, y_pred = _label_pairs(seed)
        for args in ((y_true, y_pred), (y_pred, y_true)):  # n_true > n_pred and n_true < n_pred
            for thresh in (0.1, (0.5, 0.8)):
                ours = ck.matching(*args, thresh, "iou", True)
                theirs = sd.matching(*args, thresh, "iou", True)
                for o, t in zip(ours if isinstance(thresh, tuple) else (ours,),
                                theirs if isinstance(thresh, tuple) else (theirs,)):
                    assert o.matched_pairs == t.matched_pairs and o.matched_tps == t.matched_tps
                    np.testing.assert_allclose(o.matched_scores, t.matched_scores, atol=1e-6)
                    assert (o.tp, o.fp, o.fn) == (t.tp, t.fp, t.fn)
                    assert o.mean_matched_score == pytest.approx(t.mean_matched_score, abs=1e-6)
    y_true, _ = _label_pairs()
    far = np.zeros_like(y_true)
    far[y_true == 0] = 1
    assert ck.matching(y_true, far, report_matches=True).matched_pairs == \
        sd.matching(y_true, far, report_matches=True).matched_pairs


def test_matching_dataset_and_lazy():
    pairs = [_label_pairs(s) for s in range(3)]
    yt, yp = zip(*pairs)
    for by_image in (False, True):
        ref = matching_dataset_ref(yt, yp, (0.3, 0.5), by_image=by_image)
        ours = ck.matching_dataset(yt, yp, (0.3, 0.5), "iou", by_image, False, True)  # StarDist's positional order
        lazy = ck.matching_dataset_lazy((p for p in pairs), (0.3, 0.5), by_image=by_image, show_progress=False)
        for o, lz, r in zip(ours, lazy, ref):
            assert isinstance(o, ck.DatasetMatching) and o.by_image is by_image
            assert o == lz
            for k in ("tp", "fp", "fn", "n_true", "n_pred"):
                assert getattr(o, k) == getattr(r, k)
            for k in ("precision", "f1", "mean_true_score", "panoptic_quality"):
                assert getattr(o, k) == pytest.approx(getattr(r, k), abs=1e-12)
    single = ck.matching_dataset(yt, yp, show_progress=False)
    assert single.tp == ck.matching_dataset(yt, yp, show_progress=3, parallel=True).tp
    with pytest.raises(ValueError, match="pairs"):
        ck.matching_dataset_lazy([yt[0]], show_progress=False)
    with pytest.raises(ValueError, match="criterion"):
        ck.matching_dataset_lazy(pairs, criterion="dice", show_progress=False)


def test_matching_dataset_agrees_with_stardist():
    sd = _stardist("matching")
    pairs = [_label_pairs(s) for s in range(3)]
    yt, yp = zip(*pairs)
    for by_image in (False, True):
        ours = ck.matching_dataset(yt, yp, 0.5, "iou", by_image, False)
        theirs = sd.matching_dataset(yt, yp, 0.5, "iou", by_image, False)
        assert ours._fields == theirs._fields
        for k in ours._fields:
            o, t = getattr(ours, k), getattr(theirs, k)
            assert o == (pytest.approx(t, abs=1e-6) if isinstance(o, float) else t), k
        lazy = sd.matching_dataset_lazy(iter(pairs), 0.5, by_image=by_image, show_progress=False)
        assert ck.matching_dataset_lazy(iter(pairs), 0.5, by_image=by_image, show_progress=False).tp == lazy.tp


def test_relabel_sequential():
    for lf in (np.array([1, 1, 5, 5, 8, 99, 42], np.int32), np.array([[0, 3], [3, 0]], np.uint8),
               np.array([0, 2.0, 7.0]), np.arange(0, 600, 2, dtype=np.uint16), np.zeros(4, np.int64)):
        for offset in (1, 5):
            relab, fw, inv = ck.relabel_sequential(lf, offset)
            ids = np.unique(lf)[np.unique(lf) != 0]
            assert len(fw) == int(lf.max()) + 1 and len(inv) == offset + len(ids)
            np.testing.assert_array_equal(fw[lf.astype(np.int64)], relab)
            np.testing.assert_array_equal(inv[relab], lf)
            np.testing.assert_array_equal(np.unique(relab[relab > 0]), np.arange(offset, offset + len(ids)))
            assert relab.dtype == fw.dtype == inv.dtype
    assert ck.relabel_sequential(np.array([0, 300], np.int16))[0].dtype == np.int16
    assert ck.relabel_sequential(np.array([1, 2, 3], np.uint8), offset=300)[0].dtype == np.uint16
    with pytest.raises(ValueError, match="offset"):
        ck.relabel_sequential(np.array([1, 2]), 0)
    with pytest.raises(TypeError, match="offset"):
        ck.relabel_sequential(np.array([1, 2]), 1.5)
    with pytest.raises(ValueError, match="negative"):
        ck.relabel_sequential(np.array([1, -2]))
    with pytest.raises(TypeError, match="label_field"):
        ck.relabel_sequential(np.array(["a"]))


def test_relabel_sequential_agrees_with_stardist():
    sd = _stardist("matching")
    for lf in (np.array([1, 1, 5, 5, 8, 99, 42], np.int32), np.array([[0, 3], [3, 0]], np.uint8),
               np.array([0, 2.0, 7.0]), np.arange(0, 600, 2, dtype=np.uint16)):
        for offset in (1, 5):
            for o, t in zip(ck.relabel_sequential(lf, offset), sd.relabel_sequential(lf, offset)):
                assert o.dtype == t.dtype
                np.testing.assert_array_equal(o, t)


def test_group_matching_labels():
    y0 = np.zeros((20, 20), np.uint16)
    y0[2:8, 2:8], y0[12:18, 12:18] = 4, 9
    y1 = np.zeros_like(y0)
    y1[3:9, 2:8], y1[12:18, 2:8], y1[12:18, 12:17] = 1, 2, 3  # 1 ~ 4, 3 ~ 9, 2 is new
    y2 = np.where(y1 == 2, 5, 0).astype(np.uint16)  # only the new one, relabelled
    out = ck.group_matching_labels(np.stack([y0, y1, y2]), thresh=0.5)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out[0], y0)
    lut1 = {0: 0, 1: 4, 2: 10, 3: 9}
    np.testing.assert_array_equal(out[1], np.vectorize(lut1.get)(y1))
    np.testing.assert_array_equal(out[2], np.where(y2 > 0, 10, 0))
    np.testing.assert_array_equal(ck.group_matching_labels([y0, y1, y2], 0.5), out)
    with pytest.raises(ValueError, match="ys"):
        ck.group_matching_labels([y0])
    with pytest.raises(ValueError, match="ys"):
        ck.group_matching_labels([y0, y1[:10]])
    with pytest.raises(TypeError, match="ys"):
        ck.group_matching_labels([y0, y1.astype(float)])


def test_group_matching_labels_agrees_with_stardist():
    sd = _stardist("matching")
    y_true, y_pred = _label_pairs(1)
    ys = np.stack([y_true, y_pred, np.roll(y_pred, 2, 1) % 13])
    for thresh in (1e-10, 0.5):
        np.testing.assert_array_equal(ck.group_matching_labels(ys, thresh), sd.group_matching_labels(ys, thresh))
        np.testing.assert_array_equal(ck.group_matching_labels(list(ys), thresh),
                                      sd.group_matching_labels(list(ys), thresh))


def test_dense_overlap_helpers():
    x = np.array([[0, 1, 1], [2, 2, 0]])
    y = np.array([[1, 1, 0], [0, 2, 2]])
    o = ck.label_overlap(x, y)
    assert o.dtype == np.uint64
    np.testing.assert_array_equal(o, [[0, 1, 1], [1, 1, 0], [1, 0, 1]])
    rows, cols = o.sum(1, keepdims=True).astype(float), o.sum(0, keepdims=True).astype(float)
    for f, ref in ((ck.intersection_over_union, o / (rows + cols - o)), (ck.intersection_over_true, o / rows),
                   (ck.intersection_over_pred, o / cols)):
        r = f(o)
        assert r.dtype == np.float32
        np.testing.assert_array_equal(r, ref.astype(np.float32))
    z = np.zeros((2, 3), np.int64)
    assert ck.intersection_over_union(z) is z  # an all-zero matrix comes back as is (StarDist)
    # non-sequential labels: refused with check, counted without
    xs = np.where(x > 0, x * 10, 0)
    with pytest.raises(ValueError, match="sequential"):
        ck.label_overlap(xs, y)
    big = ck.label_overlap(xs, y, check=False)
    assert big.shape == (21, 3) and big[10].tolist() == [1, 1, 0] and big.sum() == x.size
    brute = np.zeros((3, 3), np.uint64)
    np.add.at(brute, (x.ravel(), y.ravel()), 1)
    np.testing.assert_array_equal(o, brute)
    for f in (ck.intersection_over_union, ck.intersection_over_true):
        with pytest.raises(TypeError, match="overlap"):
            f(o.astype(float))
    with pytest.raises(ValueError, match="shape"):
        ck.label_overlap(x, y[:, :2])
    with pytest.raises(TypeError, match="x"):
        ck.label_overlap(x.astype(float), y)
    assert ck.label_are_sequential(np.array([[0, 1], [3, 2]]))
    assert not ck.label_are_sequential(np.array([0, 1, 3]))
    assert not ck.label_are_sequential(np.array([1.5, 2.0]))
    assert ck.label_are_sequential(np.zeros(3, int)) and ck.label_are_sequential(np.zeros(0, int))
    # the sparse contingency is kept under its own name (matching uses it)
    n_true, n_pred, *_ = ck.label_overlap_sparse(xs, y)
    assert (n_true, n_pred) == (2, 2)


def test_dense_overlap_helpers_agree_with_stardist():
    sd = _stardist("matching")
    y_true, y_pred = _label_pairs(2)
    a, b = ck.relabel_sequential(y_true)[0], ck.relabel_sequential(y_pred)[0]
    o = ck.label_overlap(a, b)
    t = sd.label_overlap(a, b)
    assert o.dtype == t.dtype
    np.testing.assert_array_equal(o, t)
    for name in ("intersection_over_union", "intersection_over_true", "intersection_over_pred"):
        np.testing.assert_array_equal(getattr(ck, name)(o), getattr(sd, name)(t))
    for y in (a, y_pred, np.array([0, 1, 2, 4])):
        assert ck.label_are_sequential(y) == sd.label_are_sequential(y)


def test_everything_is_exported():
    names = ["non_maximum_suppression", "non_maximum_suppression_sparse", "non_maximum_suppression_inds",
             "polygons_to_label", "polygons_to_label_coord", "relabel_image_stardist", "ray_angles", "dist_to_coord",
             "star_dist", "matching", "matching_dataset", "matching_dataset_lazy", "relabel_sequential",
             "group_matching_labels", "intersection_over_union", "intersection_over_true",
             "intersection_over_pred", "label_are_sequential", "label_overlap"]
    for n in names:
        assert n in ck.__all__ and callable(getattr(ck, n)), n


def test_star_dist_accepts_stardists_mode_argument():
    """StarDist's star_dist(lbl, n_rays, grid, mode) / star_dist3D(lbl, rays, grid, mode): mode is accepted (one
    implementation here) and checked."""
    _, lbl = synthetic_nuclei((40, 48), 5, seed=2)
    np.testing.assert_array_equal(ck.star_dist(lbl, 16, (1, 1), "cpp"), ck.star_dist(lbl, 16))
    np.testing.assert_array_equal(ck.star_dist(lbl, 16, mode="python"), ck.star_dist(lbl, 16))
    _, lbl3 = synthetic_nuclei((12, 16, 16), 3, seed=2)
    rays = ck.Rays_GoldenSpiral(20)
    np.testing.assert_array_equal(ck.star_dist3d(lbl3, rays, (1, 1, 1), "opencl"), ck.star_dist3d(lbl3, rays))
    relabelled = ck.relabel_image_stardist3D(lbl3, rays, mode="cpp")
    assert relabelled.shape == lbl3.shape
    with pytest.raises(ValueError, match="mode"):
        ck.star_dist(lbl, 16, mode="gpu")
