"""Matching metrics against the shipped oracle and StarDist; the overlap counts by hand; the full round trip."""
import numpy as np
import pytest

from cellkern.data import synthetic_nuclei
from cellkern.reference import edt_prob_ref, matching_dataset_ref, matching_ref
from cellkern.star import label_overlap_sparse, matching, matching_dataset, non_maximum_suppression, polygons_to_label
from cellkern.star import star_dist

THRESHS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)


def _assert_same(ours, ref):
    for o, r in zip(ours if isinstance(ours, tuple) and not hasattr(ours, "_fields") else (ours,),
                    ref if isinstance(ref, tuple) and not hasattr(ref, "_fields") else (ref,)):
        for k in ("criterion", "thresh", "fp", "tp", "fn", "n_true", "n_pred"):
            assert getattr(o, k) == getattr(r, k), (k, o, r)
        for k in ("precision", "recall", "accuracy", "f1", "mean_true_score", "mean_matched_score",
                  "panoptic_quality"):
            assert getattr(o, k) == pytest.approx(getattr(r, k), rel=1e-12, abs=1e-15), (k, o, r)


def _pairs(n=4, shape=(96, 96)):
    rng = np.random.default_rng(4)
    out = []
    for seed in range(n):
        _, y_true = synthetic_nuclei(shape, 20, seed=seed, touching=0.5)
        y_pred = np.roll(y_true, rng.integers(-3, 4, 2), axis=(0, 1)) * 3  # shifted, relabelled
        y_pred[rng.random(y_pred.shape) < 0.02] = 0
        out.append((y_true, y_pred))
    return out


def test_overlap_counts_by_hand():
    t = np.array([[0, 1, 1, 0], [2, 2, 1, 0], [5, 5, 5, 0]], np.int32)
    p = np.array([[9, 9, 1, 0], [0, 0, 1, 1], [0, 3, 3, 3]], np.uint16)
    n_true, n_pred, st, sp, pairs, cnt = label_overlap_sparse(t, p)
    assert (n_true, n_pred) == (3, 3)  # ids 1, 2, 5 and 1, 3, 9 in ascending order
    np.testing.assert_array_equal(st, [3, 2, 3])
    np.testing.assert_array_equal(sp, [3, 3, 2])
    got = {(int(a), int(b)): int(c) for (a, b), c in zip(pairs, cnt)}
    assert got == {(0, 2): 1, (0, 0): 2, (2, 1): 2}


@pytest.mark.parametrize("criterion", ["iou", "iot", "iop"])
def test_matches_oracle(criterion):
    pairs = _pairs()
    for y_true, y_pred in pairs:
        _assert_same(matching(y_true, y_pred, THRESHS, criterion), matching_ref(y_true, y_pred, THRESHS, criterion))
        _assert_same(matching(y_true, y_pred, 0.5, criterion), matching_ref(y_true, y_pred, 0.5, criterion))
    for by_image in (False, True):
        _assert_same(matching_dataset(*zip(*pairs), thresh=THRESHS, criterion=criterion, by_image=by_image),
                     matching_dataset_ref(*zip(*pairs), thresh=THRESHS, criterion=criterion, by_image=by_image))


def test_conflicting_matches_need_the_assignment():
    # one true object split in two predictions of equal size, and low thresholds: several eligible pairs per
    # object, so the optimal assignment decides
    rng = np.random.default_rng(1)
    for _ in range(5):
        y_true = np.zeros((40, 40), np.int32)
        y_pred = np.zeros((40, 40), np.int32)
        for k in range(12):
            y, x = rng.integers(0, 34, 2)
            h, w = rng.integers(3, 7, 2)
            y_true[y:y + h, x:x + w] = k + 1
            dy, dx = rng.integers(-2, 3, 2)
            y_pred[max(0, y + dy):y + dy + h, max(0, x + dx):x + dx + w // 2] = 2 * k + 1
            y_pred[max(0, y + dy):y + dy + h, max(0, x + dx + w // 2):x + dx + w] = 2 * k + 2
        for crit in ("iou", "iot", "iop"):
            _assert_same(matching(y_true, y_pred, THRESHS, crit), matching_ref(y_true, y_pred, THRESHS, crit))


def test_dtypes_3d_empty_and_huge_ids():
    y_true, y_pred = _pairs(1)[0]
    ref = matching_ref(y_true, y_pred, THRESHS)
    _assert_same(matching(y_true.astype(np.uint16), y_pred.astype(np.int64), THRESHS), ref)
    # sparse huge ids: relabelled first
    _assert_same(matching(np.where(y_true > 0, y_true.astype(np.int64) + 10**12, 0), y_pred, THRESHS), ref)
    t3 = np.stack([y_true, np.roll(y_true, 1, 0)])
    p3 = np.stack([y_pred, np.roll(y_pred, 1, 0)])
    _assert_same(matching(t3, p3, THRESHS), matching_ref(t3, p3, THRESHS))
    z = np.zeros((8, 8), np.int32)
    _assert_same(matching(z, z, THRESHS), matching_ref(z, z, THRESHS))
    _assert_same(matching(y_true, np.zeros_like(y_pred), THRESHS), matching_ref(y_true, np.zeros_like(y_pred), THRESHS))


def test_matches_stardist():
    sd = pytest.importorskip("stardist.matching", reason="stardist not installed")
    pairs = _pairs(3)
    for crit in ("iou", "iot", "iop"):
        for y_true, y_pred in pairs:
            for o, t in zip(matching(y_true, y_pred, THRESHS[1:], crit), sd.matching(y_true, y_pred, THRESHS[1:], crit)):
                assert (o.tp, o.fp, o.fn) == (t.tp, t.fp, t.fn)
                # StarDist's scores are float32
                assert o.mean_matched_score == pytest.approx(t.mean_matched_score, abs=1e-6)
                assert o.panoptic_quality == pytest.approx(t.panoptic_quality, abs=1e-6)


def test_bad_input():
    y = np.zeros((5, 5), np.int32)
    with pytest.raises(ValueError, match="shape"):
        matching(y, y[:4])
    with pytest.raises(TypeError, match="y_true"):
        matching(y.astype(np.float32), y)
    with pytest.raises(ValueError, match="non-negative"):
        matching(y - 1, y)
    with pytest.raises(ValueError, match="criterion"):
        matching(y, y, criterion="dice")
    with pytest.raises(ValueError, match="thresh"):
        matching(y, y, thresh=[0.5, "x"])


@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_labels_polygons_labels(seed):
    # labels -> star_dist -> probability from the distance transform -> NMS -> polygons_to_label -> matching
    _, labels = synthetic_nuclei((256, 256), 60, seed=seed)
    dist = star_dist(labels, 32)
    prob = edt_prob_ref(labels)
    points, probs, dists = non_maximum_suppression(dist, prob, b=0, nms_thresh=0.4, prob_thresh=0.5)
    pred = polygons_to_label(dists, points, probs, labels.shape)
    m = matching(labels, pred, thresh=0.5)
    assert m.n_true == labels.max() >= 50
    assert m.f1 >= 0.99, m
    assert m.mean_matched_score > 0.75
    _assert_same(m, matching_ref(labels, pred, thresh=0.5))


def test_large_images_take_the_threaded_paths(two_threads):
    # above ~1M pixels the overlap count, rasterisation and star_dist split the work over threads (per-thread
    # hash maps merged, row bands): check those against the oracles too
    from cellkern.reference import polygons_to_label_ref
    _, y_true = synthetic_nuclei((1100, 1200), 500, seed=3)
    rng = np.random.default_rng(0)
    n = 400
    points = np.stack([rng.integers(0, 1100, n), rng.integers(0, 1200, n)], 1)
    dist = rng.uniform(2, 14, (n, 32)).astype(np.float32)
    prob = rng.random(n)
    y_pred = polygons_to_label(dist, points, prob, y_true.shape)
    np.testing.assert_array_equal(y_pred, polygons_to_label_ref(dist, points, y_true.shape, prob=prob))
    _assert_same(matching(y_true, y_pred, THRESHS), matching_ref(y_true, y_pred, THRESHS))
