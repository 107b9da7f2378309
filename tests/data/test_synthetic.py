"""Tests of the synthetic nuclei generator (cellkern.data.synthetic_nuclei)."""

import time

import numpy as np
import pytest
from scipy import ndimage

from cellkern.data import digital_segment, synthetic_nuclei


def _segment_pixels(d):
    """Independent plain-Python digital segment: steps 0 < s < k of s*d/k rounded half up, k = max |d|."""
    k = max(abs(v) for v in d)
    # floor(x + 1/2) with exact integer arithmetic: (2*s*v + k) // (2*k)
    return [tuple((2 * s * v + k) // (2 * k) for v in d) for s in range(1, k)]


def _assert_star_convex(labels, centres):
    """Every pixel p of label k sees its centre c: all pixels c + segment(p - c) have label k."""
    for k, c in enumerate(centres, 1):
        c = tuple(int(v) for v in c)
        assert labels[c] == k, f"centre of {k} not in its object"
        for p in zip(*np.nonzero(labels == k)):
            d = tuple(int(a) - b for a, b in zip(p, c))
            for step in _segment_pixels(d):
                q = tuple(a + b for a, b in zip(c, step))
                assert labels[q] == k, f"label {k}: pixel {p} does not see centre {c} (blocked at {q})"


def test_digital_segment_hand_computed():
    np.testing.assert_array_equal(digital_segment((4, 2)), [[1, 1], [2, 1], [3, 2]])
    np.testing.assert_array_equal(digital_segment((-3, 0)), [[-1, 0], [-2, 0]])
    np.testing.assert_array_equal(digital_segment((1, -1)), np.zeros((0, 2)))
    np.testing.assert_array_equal(digital_segment((2, 2, -2)), [[1, 1, -1]])
    for d in [(5, -3), (-7, 2), (6, 6), (0, 9), (3, 4, -5)]:
        assert [tuple(q) for q in digital_segment(d)] == _segment_pixels(d)


@pytest.mark.parametrize("shape,n", [((96, 128), 25), ((24, 48, 40), 10)])
def test_deterministic(shape, n):
    a = synthetic_nuclei(shape, n, seed=7, return_centres=True)
    b = synthetic_nuclei(shape, n, seed=7, return_centres=True)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = synthetic_nuclei(shape, n, seed=8)
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("shape,n", [((96, 128), 25), ((24, 48, 40), 10)])
def test_types_and_consecutive_labels(shape, n):
    image, labels, centres = synthetic_nuclei(shape, n, seed=1, return_centres=True)
    assert image.shape == labels.shape == shape
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert centres.shape == (n, len(shape)) and centres.dtype == np.int64
    assert np.isfinite(image).all()
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))  # 0 and 1..K, all present


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_star_convex_and_connected_2d(seed):
    _, labels, centres = synthetic_nuclei((80, 96), 30, seed=seed, touching=0.6, return_centres=True)
    _assert_star_convex(labels, centres)
    for k, sl in enumerate(ndimage.find_objects(labels), 1):
        _, n_parts = ndimage.label(labels[sl] == k, structure=np.ones((3, 3)))
        assert n_parts == 1


def test_star_convex_3d():
    _, labels, centres = synthetic_nuclei((20, 32, 32), 8, seed=3, radius=(3, 6), touching=0.6, return_centres=True)
    _assert_star_convex(labels, centres)


def _touching_pairs(labels):
    """Pairs of different labels that are 8-adjacent."""
    pairs = set()
    H, W = labels.shape
    p = np.pad(labels, 1)
    for dy, dx in [(0, 1), (1, 0), (1, 1), (1, -1)]:
        a = p[1:H + 1, 1:W + 1]
        b = p[1 + dy:H + 1 + dy, 1 + dx:W + 1 + dx]
        m = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(t)) for t in zip(a[m].tolist(), b[m].tolist())}
    return pairs


def test_touching_fraction():
    _, apart = synthetic_nuclei((160, 160), 30, seed=4, touching=0.0, gap=1)
    assert not _touching_pairs(apart)  # with a gap nothing touches
    _, crowded = synthetic_nuclei((160, 160), 30, seed=4, touching=0.8)
    touching_labels = {lab for pair in _touching_pairs(crowded) for lab in pair}
    assert len(touching_labels) >= 0.5 * crowded.max()


def test_objects_keep_most_of_their_shape_and_vary_in_size():
    _, labels = synthetic_nuclei((256, 256), 60, seed=2, radius=(4, 12))
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() >= 4 and sizes.max() > 3 * sizes.min()
    assert 30 < np.median(sizes) < 500  # radius 4..12 pixels


def test_image_looks_like_fluorescence():
    image, labels = synthetic_nuclei((128, 128), 25, seed=6, blur=1.0, photons=200, read_noise=0.01)
    inside = image[ndimage.binary_erosion(labels > 0, iterations=2)]
    outside = image[~ndimage.binary_dilation(labels > 0, iterations=3)]
    assert inside.mean() > outside.mean() + 0.25  # nuclei are bright
    assert 0.0 < outside.mean() < 0.15  # dim background
    assert outside.std() > 0.005  # noisy
    clean, labels2 = synthetic_nuclei((128, 128), 25, seed=6, blur=0, photons=None, read_noise=0, gradient=0)
    np.testing.assert_array_equal(labels, labels2)  # noise settings do not change the objects
    np.testing.assert_allclose(clean[labels2 == 0], 0.05, atol=1e-6)  # flat background without noise or blur


def test_crowded_request_warns_and_returns_fewer():
    with pytest.warns(UserWarning, match="placed"):
        _, labels = synthetic_nuclei((32, 32), 200, seed=0)
    assert 0 < labels.max() < 200
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))


@pytest.mark.slow
def test_large_image_is_fast():
    t = time.perf_counter()
    image, labels = synthetic_nuclei((4096, 4096), 8000, seed=0)
    elapsed = time.perf_counter() - t
    assert labels.max() == 8000 and image.shape == (4096, 4096)
    assert elapsed < 30, f"{elapsed:.1f} s"  # a few seconds here; generous for loaded CI machines
