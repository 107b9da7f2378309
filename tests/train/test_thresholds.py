"""optimize_thresholds on a constructed prediction whose best (prob, nms) thresholds are known by design."""
from types import SimpleNamespace

import numpy as np
import pytest

from cellkern.star import polygons_to_label
from cellkern.train import optimize_thresholds

N_RAYS = 32
SHAPE = (128, 128)
# (centre, radius, probability, is a true object). Disks of radius 8 (32-gons): the touching pair B/C overlaps by
# about 0.35 of a disk (centres (8, 3) apart), the duplicate of A by about 0.46 (centres 7 apart), so
# nms 0.3 suppresses a true object, nms 0.5 keeps the duplicate and only nms 0.4 does neither. The weak true
# object D (prob 0.65) and the spurious S (prob 0.5) make prob_thresh in [0.5, 0.65) the only perfect range.
POLYS = [((20, 20), 8, 0.9, True),     # A
         ((27, 20), 8, 0.85, False),   # duplicate of A
         ((60, 30), 8, 0.9, True),     # B
         ((68, 33), 8, 0.9, True),     # C, touching B
         ((100, 100), 8, 0.65, True),  # D, weak
         ((100, 40), 8, 0.9, True),    # E
         ((30, 100), 6, 0.5, False)]   # S, spurious


class Constructed:
    """A stand-in whose predict returns the constructed probability and distance maps (grid 1)."""

    def __init__(self):
        self.config = SimpleNamespace(grid=(1, 1))
        self.thresholds = {"prob": 0.5, "nms": 0.4}
        self.calls = 0

    def predict(self, image, normalize=True):
        self.calls += 1
        prob = np.zeros(SHAPE, np.float32)
        dist = np.ones(SHAPE + (N_RAYS,), np.float32)
        for (y, x), r, p, _ in POLYS:
            prob[y, x] = p
            dist[y, x] = r
        return prob, dist


def _truth():
    true = [(c, r, p) for c, r, p, t in POLYS if t]
    points = np.array([c for c, _, _ in true])
    dists = np.array([[r] * N_RAYS for _, r, _ in true], np.float32)
    return polygons_to_label(dists, points, np.array([p for _, _, p in true]), shape=SHAPE)


def test_finds_the_known_optimum():
    model = Constructed()
    Y = [_truth()]
    assert len(np.unique(Y[0])) == 6
    res = optimize_thresholds(model, [np.zeros(SHAPE)], Y, progress=False)
    assert res["nms"] == 0.4
    assert 0.5 <= res["prob"] < 0.65
    assert res["measure"] == pytest.approx(1.0)
    assert model.thresholds == {"prob": res["prob"], "nms": 0.4}
    assert model.calls == 1  # the network runs once per image, not once per threshold


def test_single_nms_and_measure():
    model = Constructed()
    res = optimize_thresholds(model, [np.zeros(SHAPE)], [_truth()], nms_threshs=0.5, measure="f1", progress=False)
    assert res["nms"] == 0.5
    # with the duplicate kept the best is 5 tp, 1 fp: F1 = 10 / 11 (the spurious S dropped by prob_thresh >= 0.5)
    assert res["measure"] == pytest.approx(10 / 11)


def test_bad_arguments():
    model = Constructed()
    with pytest.raises(ValueError, match="X_val and Y_val"):
        optimize_thresholds(model, [np.zeros(SHAPE)], [], progress=False)
    with pytest.raises(ValueError, match="X_val: no validation images"):
        optimize_thresholds(model, [], [], progress=False)
    with pytest.raises(ValueError, match="nms_threshs"):
        optimize_thresholds(model, [np.zeros(SHAPE)], [_truth()], nms_threshs=(1.5,), progress=False)
    with pytest.raises(ValueError, match=r"Y_val\[0\]: mask shape"):
        optimize_thresholds(model, [np.zeros(SHAPE)], [np.zeros((64, 64), np.int32)], progress=False)
