"""Tests of the training data layer: input checks, lazy loading, normalisation, foreground-biased crops."""
import weakref
from pathlib import Path

import numpy as np
import pytest
import tifffile

import cellkern.train.data as tdata
from cellkern.train import PairedImages, random_crop_corner


def _pairs(n=3, shape=(20, 24)):
    rng = np.random.default_rng(0)
    X = [rng.random(shape).astype(np.float32) * 100 for _ in range(n)]
    Y = [(rng.random(shape) > 0.7).astype(np.uint16) * (i + 1) for i in range(n)]
    return X, Y


def test_normalisation_matches_numpy_percentiles():
    X, Y = _pairs()
    X[1] = (X[1] * 3 + 7).astype(np.uint16)  # integer images are normalised too
    d = PairedImages(X, Y, ndim=2, pmin=2.0, pmax=99.0)
    for i in range(3):
        img, lab, fg = d.get(i)
        lo, hi = np.percentile(X[i].astype(np.float64), [2.0, 99.0])
        assert img.dtype == np.float32 and img.shape == X[i].shape + (1,)
        np.testing.assert_allclose(img[..., 0], (X[i] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(fg, np.flatnonzero(Y[i]))
        assert lab is Y[i]


def test_multichannel_normalised_per_channel():
    rng = np.random.default_rng(1)
    x = np.stack([rng.random((16, 16)), 50 + 10 * rng.random((16, 16))], -1)
    d = PairedImages([x], [np.ones((16, 16), np.int32)], ndim=2, n_channels=2)
    img = d.get(0)[0]
    for c in range(2):
        lo, hi = np.percentile(x[..., c], [1.0, 99.8])
        np.testing.assert_allclose(img[..., c], (x[..., c] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


def test_lazy_files_loaded_on_demand(tmp_path, monkeypatch):
    X, Y = _pairs(n=6)
    paths_x, paths_y = [], []
    for i, (x, y) in enumerate(zip(X, Y)):
        paths_x.append(tmp_path / f"img{i}.tif")
        paths_y.append(tmp_path / f"mask{i}.npy")
        tifffile.imwrite(paths_x[-1], x)
        np.save(paths_y[-1], y)
    loads, alive = [], [0]
    peak = [0]
    real = tdata.read_array

    def counting(path):
        a = real(path)
        loads.append(Path(path).name)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(a, lambda: alive.__setitem__(0, alive[0] - 1))
        return a

    monkeypatch.setattr(tdata, "read_array", counting)
    d = PairedImages([str(p) for p in paths_x], paths_y, ndim=2, cache_size=2)
    assert loads == []  # construction reads nothing
    d.check()
    assert len(loads) == 12 and d.shapes == [(20, 24)] * 6
    assert d.n_foreground == [int(np.count_nonzero(y)) for y in Y]
    # masks stay referenced by the cache (2 pairs); images are replaced by their normalised copies
    assert peak[0] <= 2 + 2
    n = len(loads)
    d.get(5)
    d.get(4)
    assert len(loads) == n  # the last two checked pairs are cached
    img, lab, _ = d.get(0)
    assert loads[n:] == ["img0.tif", "mask0.npy"]
    np.testing.assert_array_equal(lab, Y[0])
    lo, hi = np.percentile(X[0], [1.0, 99.8])
    np.testing.assert_allclose(img[..., 0], (X[0] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_argument(tmp_path):
    X, Y = _pairs()
    with pytest.raises(ValueError, match="X and Y: 3 images but 2 masks"):
        PairedImages(X, Y[:2], 2)
    with pytest.raises(ValueError, match="empty training set"):
        PairedImages([], [], 2)
    with pytest.raises(TypeError, match="X: expected a sequence"):
        PairedImages(X[0], Y[0], 2)
    with pytest.raises(TypeError, match=r"Y\[1\]: expected a numpy array or a file path"):
        PairedImages(X, [Y[0], 5, Y[2]], 2)
    with pytest.raises(FileNotFoundError, match=r"X\[0\]: no such file"):
        PairedImages([str(tmp_path / "missing.tif")], [Y[0]], 2)
    bad = [Y[0], Y[1].astype(np.float32), Y[2]]
    with pytest.raises(TypeError, match=r"Y\[1\]: masks must be integer label images"):
        PairedImages(X, bad, 2).check()
    nan = [x.copy() for x in X]
    nan[2][3, 3] = np.nan
    with pytest.raises(ValueError, match=r"X\[2\]: image contains NaN"):
        PairedImages(nan, Y, 2).check()
    with pytest.raises(ValueError, match=r"Y\[0\]: mask shape \(20, 23\) does not match image X\[0\]"):
        PairedImages(X, [Y[0][:, :23]] + Y[1:], 2).check()
    with pytest.raises(ValueError, match=r"Y\[0\]: labels must be non-negative"):
        PairedImages(X, [Y[0].astype(np.int32) - 1] + Y[1:], 2).check()
    with pytest.raises(ValueError, match=r"X\[0\]: expected shape"):
        PairedImages([np.zeros((20, 24, 3))], [Y[0]], 2).check()
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "a.png").write_bytes(b"x")
        PairedImages([str(tmp_path / "a.png")], [Y[0]], 2).check()


@pytest.mark.parametrize("shape,size", [((30, 40), (16, 8)), ((9, 9), (9, 9)), ((10, 12, 14), (4, 12, 5))])
def test_crops_inside_the_image(shape, size):
    rng = np.random.default_rng(3)
    fg = rng.choice(int(np.prod(shape)), 5, replace=False)
    for p in (0.0, 1.0):
        for _ in range(200):
            c = random_crop_corner(shape, size, rng, fg, p)
            assert all(0 <= a and a + s <= d for a, s, d in zip(c, size, shape))
    with pytest.raises(ValueError, match="larger than the image"):
        random_crop_corner((10, 10), (11, 4), rng)


def test_foreground_bias_measured():
    # one foreground pixel in a 100x100 image; 10x10 crops contain it with probability 100/91^2 when uniform
    shape, size = (100, 100), (10, 10)
    fg = np.array([np.ravel_multi_index((50, 70), shape)])
    rng = np.random.default_rng(4)

    def hit_rate(p, n=4000):
        hits = 0
        for _ in range(n):
            y, x = random_crop_corner(shape, size, rng, fg, p)
            hits += (y <= 50 < y + 10) and (x <= 70 < x + 10)
        return hits / n

    uniform = 100 / 91**2
    for p in (0.0, 0.5, 0.9):
        expect = p + (1 - p) * uniform
        sd = np.sqrt(expect * (1 - expect) / 4000)
        assert abs(hit_rate(p) - expect) < 4 * sd + 1e-3
    # centred on the foreground pixel unless the border forbids it
    assert random_crop_corner(shape, size, rng, fg, 1.0) == (45, 65)
    corner = np.array([np.ravel_multi_index((2, 98), shape)])
    assert random_crop_corner(shape, size, rng, corner, 1.0) == (0, 90)
