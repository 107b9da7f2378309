"""Tests of the training augmentations against independent plain-Python / NumPy formulations."""
import math

import numpy as np
import pytest

from cellkern.train import (Augmentation, add_noise, adjust_intensity, elastic_offsets, flip_rotate, gaussian_blur,
                            resample, zoom_coordinates)


def _labels(shape, seed=0, n=6):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        c = [rng.integers(0, s) for s in shape]
        sl = tuple(slice(max(0, v - 3), v + 3) for v in c)
        lab[sl] = 10 * k  # ids that are not consecutive: transforms must keep them as they are
    return lab


def test_zoom_coordinates_formula():
    c = zoom_coordinates((6, 10), (4, 5))
    for i in range(4):
        for j in range(5):
            assert c[0, i, j] == pytest.approx((i + 0.5) * 6 / 4 - 0.5)
            assert c[1, i, j] == pytest.approx((j + 0.5) * 10 / 5 - 0.5)
    ident = zoom_coordinates((7, 3), (7, 3))
    np.testing.assert_allclose(ident, np.indices((7, 3)), atol=1e-12)


def _bilinear(img, y, x):
    """Plain-Python bilinear interpolation with edge clamping."""
    H, W = img.shape
    y, x = min(max(y, 0.0), H - 1.0), min(max(x, 0.0), W - 1.0)
    y0, x0 = min(int(math.floor(y)), H - 2), min(int(math.floor(x)), W - 2)
    fy, fx = y - y0, x - x0
    return ((1 - fy) * (1 - fx) * img[y0, x0] + (1 - fy) * fx * img[y0, x0 + 1] + fy * (1 - fx) * img[y0 + 1, x0]
            + fy * fx * img[y0 + 1, x0 + 1])


def test_resample_against_plain_python():
    rng = np.random.default_rng(1)
    img = rng.random((9, 11)).astype(np.float32)
    lab = rng.integers(0, 5, (9, 11)).astype(np.int32) * 7
    coords = rng.uniform(-2, 12, (2, 5, 6))
    out_img, out_lab = resample(img[..., None], lab, coords)
    assert out_img.shape == (5, 6, 1) and out_img.dtype == np.float32
    assert out_lab.dtype == lab.dtype
    for i in range(5):
        for j in range(6):
            y, x = coords[:, i, j]
            assert out_img[i, j, 0] == pytest.approx(_bilinear(img, y, x), abs=1e-5)
            yi = min(max(int(math.floor(y + 0.5)), 0), 8)
            xi = min(max(int(math.floor(x + 0.5)), 0), 10)
            assert out_lab[i, j] == lab[yi, xi]


@pytest.mark.parametrize("shape,k", [((6, 6), 1), ((6, 6), 3), ((5, 7), 2), ((4, 6, 6), 1)])
def test_flip_rotate_exact(shape, k):
    rng = np.random.default_rng(2)
    lab = rng.integers(0, 100, shape).astype(np.int32)
    img = lab[..., None].astype(np.float32) * 0.5
    flips = (0,) if len(shape) == 2 else (0, 2)
    out_img, out_lab = flip_rotate(img, lab, flips, k)
    # independent formulation: index arithmetic per pixel; np.rot90(k=1) maps out[i, j] = in[j, W-1-i]
    flipped = lab.copy()
    for ax in flips:
        flipped = flipped[tuple(slice(None, None, -1) if a == ax else slice(None) for a in range(len(shape)))]
    expect = flipped
    for _ in range(k):
        H, W = expect.shape[-2:]
        nxt = np.empty(expect.shape[:-2] + (W, H), expect.dtype)
        for i in range(W):
            for j in range(H):
                nxt[..., i, j] = expect[..., j, W - 1 - i]
        expect = nxt
    np.testing.assert_array_equal(out_lab, expect)
    np.testing.assert_array_equal(out_img[..., 0], expect.astype(np.float32) * 0.5)  # image stays aligned


def test_adjust_intensity_formula():
    x = np.array([-0.5, 0.0, 0.25, 1.0, 2.0], np.float32)
    out = adjust_intensity(x, 1.5, -0.1, 0.7)
    for v, o in zip(x, out):
        assert o == pytest.approx(1.5 * math.copysign(abs(float(v)) ** 0.7, float(v)) - 0.1, rel=1e-6, abs=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(adjust_intensity(x), x)


def test_gaussian_blur_against_direct_convolution():
    rng = np.random.default_rng(3)
    x = rng.random((20, 17, 2)).astype(np.float32)
    sigma = 1.3
    r = int(4 * sigma + 0.5)
    t = np.arange(-r, r + 1)
    w = np.exp(-t**2 / (2 * sigma**2))
    w /= w.sum()
    # mirror padding that repeats the edge pixel (d c b a | a b c d), then a direct sum of shifted copies
    p = np.pad(x.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="symmetric")
    rows = sum(w[i] * p[i:i + 20 + 0, :, :] for i in range(2 * r + 1))
    expect = sum(w[j] * rows[:, j:j + 17, :] for j in range(2 * r + 1))
    np.testing.assert_allclose(gaussian_blur(x, sigma), expect, atol=1e-5)
    assert gaussian_blur(x, 0) is x


def test_add_noise_statistics():
    rng = np.random.default_rng(4)
    x = np.zeros((400, 400, 1), np.float32)
    x[200:] = 1.0
    y = add_noise(x, 0.05, rng, poisson=0.02)
    d0, d1 = (y - x)[:200], (y - x)[200:]
    # variance sigma^2 where x = 0 and sigma^2 + poisson * x where x = 1; means 0 (80k samples each)
    assert abs(d0.mean()) < 3 * 0.05 / 280 and abs(d1.mean()) < 3 * math.sqrt(0.0225) / 280
    assert d0.var() == pytest.approx(0.05**2, rel=0.02)
    assert d1.var() == pytest.approx(0.05**2 + 0.02, rel=0.02)


def test_elastic_offsets_amplitude_and_smoothness():
    rng = np.random.default_rng(5)
    f = elastic_offsets((40, 50), 3.0, 6.0, rng)
    assert f.shape == (2, 40, 50)
    np.testing.assert_allclose(np.abs(f).reshape(2, -1).max(axis=1), [3.0, 3.0])
    # smooth: neighbours differ by well under a pixel (scaled white noise would jump by up to 2 * amplitude),
    # so the warp never folds
    assert np.abs(np.diff(f, axis=1)).max() < 0.75 and np.abs(np.diff(f, axis=2)).max() < 0.75


def _find(patch, image):
    """All positions where ``patch`` occurs exactly in ``image`` (2D)."""
    ph, pw = patch.shape
    return [(i, j) for i in range(image.shape[0] - ph + 1) for j in range(image.shape[1] - pw + 1)
            if np.array_equal(image[i:i + ph, j:j + pw], patch)]


def test_plain_patch_is_a_crop():
    lab = _labels((30, 40))
    img = np.random.default_rng(6).random((30, 40, 1)).astype(np.float32)
    for seed in range(5):
        x, y = Augmentation.none().patch(img, lab, np.flatnonzero(lab), (16, 12), np.random.default_rng(seed))
        hits = _find(x[..., 0], img[..., 0])
        assert len(hits) == 1
        i, j = hits[0]
        np.testing.assert_array_equal(y, lab[i:i + 16, j:j + 12])


def test_dihedral_patch_stays_aligned():
    lab = _labels((40, 40), seed=7)
    img = (lab[..., None] * 0.01).astype(np.float32) + np.indices((40, 40)).sum(0)[..., None].astype(np.float32)
    aug = Augmentation(scale=None, intensity_scale=None, intensity_shift=None, gamma=None, blur=None, noise=None,
                       poisson=None)
    seen = set()
    for seed in range(40):
        x, y = aug.patch(img, lab, np.flatnonzero(lab), (16, 16), np.random.default_rng(seed))
        # the image was built from the labels plus a ramp: undo every dihedral transform until one is a crop
        found = False
        for k in range(4):
            for flip in (False, True):
                xx = np.rot90(x[..., 0], -k)
                yy = np.rot90(y, -k)
                if flip:
                    xx, yy = xx[::-1], yy[::-1]
                hits = _find(xx, img[..., 0])
                if hits:
                    i, j = hits[0]
                    np.testing.assert_array_equal(yy, lab[i:i + 16, j:j + 16])
                    seen.add((k, flip))
                    found = True
        assert found
    assert len(seen) >= 6  # rotations and flips both happen


@pytest.mark.parametrize("scale", [0.6, 1.5])
def test_zoom_patch_keeps_ids_and_alignment(scale):
    # every pixel its own label id, and an image whose two channels are the row and column coordinates: the patch
    # then tells exactly where each output pixel was sampled
    H = W = 60
    lab = (np.arange(H * W, dtype=np.int32) + 1).reshape(H, W)
    img = np.moveaxis(np.indices((H, W)), 0, -1).astype(np.float32)
    aug = Augmentation(scale=(scale, scale), flips=False, rotations=False, intensity_scale=None,
                       intensity_shift=None, gamma=None, blur=None, noise=None, poisson=None)
    x, y = aug.patch(img, lab, np.flatnonzero(lab), (24, 24), np.random.default_rng(0))
    assert x.shape == (24, 24, 2) and y.shape == (24, 24) and y.dtype == lab.dtype
    crop = round(24 / scale)
    cy, cx = x[:, 0, 0].astype(np.float64), x[0, :, 1].astype(np.float64)
    # bilinear interpolation of a linear ramp is exact: the rows/columns are (i + 0.5) * crop / 24 - 0.5 + corner
    corner_y, corner_x = cy[0] - (0.5 * crop / 24 - 0.5), cx[0] - (0.5 * crop / 24 - 0.5)
    assert corner_y == pytest.approx(round(corner_y), abs=1e-4) and 0 <= round(corner_y) <= H - crop
    i = np.arange(24)
    np.testing.assert_allclose(cy, (i + 0.5) * crop / 24 - 0.5 + round(corner_y), atol=1e-4)
    np.testing.assert_allclose(cx, (i + 0.5) * crop / 24 - 0.5 + round(corner_x), atol=1e-4)
    np.testing.assert_allclose(x[..., 0], cy[:, None] * np.ones(24), atol=1e-4)
    # labels: the nearest pixel, the same one for image and labels (ids unchanged, never mixed)
    for a in range(24):
        for b in range(24):
            r, c = math.floor(cy[a] + 0.5), math.floor(cx[b] + 0.5)
            assert y[a, b] == lab[r, c]


def test_intensity_noise_blur_leave_labels():
    lab = _labels((32, 32), seed=9)
    img = np.random.default_rng(1).random((32, 32, 1)).astype(np.float32)
    aug = Augmentation(scale=None, flips=False, rotations=False, blur_prob=1.0, noise_prob=1.0)
    x, y = aug.patch(img, lab, np.flatnonzero(lab), (32, 32), np.random.default_rng(3))
    np.testing.assert_array_equal(y, lab)
    assert np.isfinite(x).all() and not np.allclose(x, img)


def test_patch_deterministic_and_3d():
    lab = _labels((12, 30, 30), seed=10)
    img = np.random.default_rng(2).random((12, 30, 30, 2)).astype(np.float32)
    aug = Augmentation(elastic=2.0)
    a = aug.patch(img, lab, np.flatnonzero(lab), (8, 16, 16), np.random.default_rng(11))
    b = aug.patch(img, lab, np.flatnonzero(lab), (8, 16, 16), np.random.default_rng(11))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (8, 16, 16, 2) and a[1].shape == (8, 16, 16)
    assert set(np.unique(a[1])) <= set(np.unique(lab))


def test_augmentation_dict_round_trip():
    aug = Augmentation(elastic=3.0, blur=None)
    assert Augmentation.from_dict(aug.to_dict()) == aug
    with pytest.raises(ValueError, match="bogus"):
        Augmentation.from_dict({"bogus": 1})
