"""cellkern.data.normalize (csbdeep's percentile normalisation) on images whose percentiles are known by hand."""
import numpy as np
import pytest

from cellkern.data.normalize import normalize


def test_percentiles_of_a_ramp():
    x = np.arange(101)  # the p-th percentile of 0..100 is p (linear interpolation)
    y = normalize(x, 1, 99.8)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, (np.arange(101) - 1) / 98.8, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(normalize(x, 0, 100, clip=True), np.arange(101) / 100, rtol=1e-6)
    clipped = normalize(x, 10, 20, clip=True)
    assert clipped.min() == 0 and clipped.max() == 1 and clipped[15] == pytest.approx(0.5)


def test_axis_normalises_each_channel_alone():
    x = np.stack([np.arange(101.0), 10 * np.arange(101.0) + 7], -1)  # (101, 2): channel 1 scaled and shifted
    y = normalize(x, 1, 99.8, axis=0)
    np.testing.assert_allclose(y[:, 0], y[:, 1], rtol=1e-5)
    joint = normalize(x, 1, 99.8)
    assert not np.allclose(joint[:, 0], joint[:, 1])


def test_constant_image_and_eps():
    y = normalize(np.full((4, 5), 3.0), eps=1e-20)
    np.testing.assert_array_equal(y, np.zeros((4, 5), np.float32))


@pytest.mark.parametrize("kw,exc,match", [
    (dict(image=np.array([1.0, np.nan])), ValueError, "image: contains NaN"),
    (dict(image=np.array([1.0, np.inf])), ValueError, "image: contains NaN"),
    (dict(image=np.zeros((2, 2), bool)), TypeError, "image"),
    (dict(image=np.zeros(3, complex)), TypeError, "image"),
    (dict(image=np.zeros((0, 3))), ValueError, "image"),
    (dict(pmin=50, pmax=50), ValueError, "pmin"),
    (dict(pmin=-1), ValueError, "pmin"),
    (dict(pmax=101), ValueError, "pmax"),
    (dict(pmin="1"), ValueError, "pmin"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(axis=3), ValueError, "axis"),
])
def test_bad_input(kw, exc, match):
    args = dict(image=np.arange(12.0).reshape(3, 4))
    args.update(kw)
    with pytest.raises(exc, match=match):
        normalize(**args)
