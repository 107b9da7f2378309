"""Tests of the synthetic data's training variety: the new texture / haze options and synthetic_training_set."""
import hashlib

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cellkern.data import synthetic_nuclei, synthetic_training_set


# sha256 prefixes of (image, labels) made by synthetic_nuclei before texture / haze existed (git HEAD at the time):
# the existing arguments must keep giving bit-identical data
BEFORE = [(((96, 128), 25, dict(seed=7)), "626ce5cb12c03dbd", "bc29dfbb95b95949"),
          (((24, 48, 40), 10, dict(seed=3)), "142d9666d400a15c", "88982a3f14bb7215"),
          (((64, 64), 12, dict(seed=5, touching=0.6, blur=0, photons=None)), "16060c0022b4ef6a", "0484353d51e75191")]


@pytest.mark.parametrize("args,image_hash,labels_hash", BEFORE)
def test_existing_arguments_unchanged(args, image_hash, labels_hash):
    image, labels = synthetic_nuclei(args[0], args[1], **args[2])
    assert hashlib.sha256(image.tobytes()).hexdigest()[:16] == image_hash
    assert hashlib.sha256(labels.tobytes()).hexdigest()[:16] == labels_hash


CLEAN = dict(seed=4, blur=0, photons=None, read_noise=0, background=0, gradient=0)


def test_texture_changes_only_object_pixels():
    plain, lab = synthetic_nuclei((64, 64), 10, **CLEAN)
    tex, lab2 = synthetic_nuclei((64, 64), 10, texture=0.3, **CLEAN)
    np.testing.assert_array_equal(lab, lab2)
    np.testing.assert_array_equal(tex[lab == 0], 0)
    inside = lab > 0
    ratio = tex[inside] / plain[inside]
    assert ratio.min() >= 0.1 - 1e-6 and 0.15 < ratio.std() < 0.45  # multiplicative texture of ~0.3 std


def test_haze_adds_the_blurred_signal():
    plain, lab = synthetic_nuclei((64, 64), 10, **CLEAN)
    hazy, lab2 = synthetic_nuclei((64, 64), 10, haze=0.2, haze_sigma=5.0, **CLEAN)
    np.testing.assert_array_equal(lab, lab2)
    np.testing.assert_allclose(hazy - plain, 0.2 * gaussian_filter(plain, 5.0, mode="reflect"), atol=1e-6)


def test_training_set_varies_and_is_deterministic():
    X, Y = synthetic_training_set(6, (96, 96), seed=3)
    X2, Y2 = synthetic_training_set(6, (96, 96), seed=3)
    assert len(X) == len(Y) == 6
    for a, b in zip(X + Y, X2 + Y2):
        np.testing.assert_array_equal(a, b)
    for x, y in zip(X, Y):
        assert x.shape == y.shape == (96, 96) and x.dtype == np.float32 and y.dtype == np.int32
        assert y.max() >= 1
    sizes = [np.bincount(y.ravel())[1:].mean() for y in Y]
    assert max(sizes) > 2 * min(sizes)  # object sizes differ between images
    # variety 0: every image uses synthetic_nuclei's defaults (same size range as the default radius (4, 12))
    _, Y0 = synthetic_training_set(3, (96, 96), seed=3, variety=0)
    assert all(np.bincount(y.ravel())[1:].max() <= np.pi * (12 * 1.6**0.5 * 1.15 + 1) ** 2 for y in Y0)


def test_training_set_bad_arguments():
    with pytest.raises(ValueError, match="variety"):
        synthetic_training_set(2, variety=1.5)
    with pytest.raises(ValueError, match="n: expected a positive"):
        synthetic_training_set(0)
