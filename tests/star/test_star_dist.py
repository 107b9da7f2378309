"""star_dist / star_dist3d against the shipped oracle (bit for bit) and StarDist, on every backend; bad input."""
import numpy as np
import pytest

import cellkern
from cellkern.data import synthetic_nuclei
from cellkern.reference import rays_golden_spiral, star_dist3d_ref, star_dist_ref
from cellkern.star import star_dist, star_dist3d

torch = pytest.importorskip("torch")


def _labels_2d():
    """Synthetic touching nuclei, plus hand-made objects on the image border and one-pixel objects."""
    _, a = synthetic_nuclei((70, 83), 14, seed=3, touching=0.6)
    b = np.zeros((37, 45), np.int32)
    b[0:10, 0:12] = 1          # corner
    b[15:30, 20:45] = 2        # right border
    b[20:25, 5:20] = 3
    b[36, :] = 4               # a one-pixel-high row on the bottom border
    b[5, 30] = 5               # a single pixel
    b[8:12, 30:34] = 7         # touching 5's neighbourhood
    return [a, b]


def _on(backend, x):
    return torch.from_numpy(x).to(backend.device) if backend.device == "cuda" else x


def _np(x):
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("n_rays,grid", [(32, (1, 1)), (8, (2, 2)), (17, (1, 3)), (64, (2, 1)), (3, (1, 1))])
def test_star_dist_matches_oracle(backend, n_rays, grid):
    for lbl in _labels_2d():
        ours = _np(star_dist(_on(backend, lbl), n_rays, grid))
        ref = star_dist_ref(lbl, n_rays, grid=grid)
        assert ours.dtype == np.float32 and ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_label_dtypes(dtype):
    # values beyond 16 bits take the int32 / int64 paths; ids that only differ above bit 16 must stay apart
    lbl = _labels_2d()[1].astype(np.int64)
    ref = star_dist_ref(lbl, 16)
    if np.iinfo(dtype).max > 70000:
        big = np.where(lbl > 0, lbl * 65536 + 1, 0)   # 65537, 131073, ...: equal modulo 2^16
        if np.iinfo(dtype).max > 2**33:
            big = np.where(lbl > 0, lbl * 2**33 + 1, 0)
        lbl = big
    np.testing.assert_array_equal(star_dist(lbl.astype(dtype), 16), ref)


def test_negative_labels_are_objects():
    # ids are only compared for equality: a negative id is an object like any other (the oracle rejects them)
    lbl = _labels_2d()[1]
    neg = np.where(lbl > 0, -lbl, 0).astype(np.int32)
    np.testing.assert_array_equal(star_dist(neg, 12), star_dist_ref(lbl, 12))


def test_rounding_of_origin_plus_offset_at_large_coordinates():
    # Far from the origin, float32(i) + offset rounds differently for some i than i + rint(offset): the tables
    # mark those steps and the kernels redo them exactly. Small objects spread over a large canvas reach many.
    rng = np.random.default_rng(7)
    lbl = np.zeros((2100, 2300), np.int32)
    _, small = synthetic_nuclei((60, 60), 8, seed=1, radius=(2, 4))
    for i in range(70):
        y, x = rng.integers(0, 2040), rng.integers(0, 2240)
        patch = lbl[y:y + 60, x:x + 60]
        patch[small > 0] = small[small > 0] + 8 * i
    for n_rays in (12, 40):
        np.testing.assert_array_equal(star_dist(lbl, n_rays), star_dist_ref(lbl, n_rays))


def test_out_is_overwritten_and_reused():
    lbl = _labels_2d()[0]
    ref = star_dist_ref(lbl, 16)
    out = np.full(ref.shape, np.nan, np.float32)
    res = star_dist(lbl, 16, out=out)
    assert res is out
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("shift", [0, 4, 12345])
def test_threads_take_rows_by_output_page(two_threads, shift):
    # outputs over 16 huge pages (2 MiB) are split between threads along page boundaries; `shift` floats moves the
    # boundaries to other rows (and mid-row)
    _, lbl = synthetic_nuclei((600, 700), 150, seed=7)
    ref = star_dist_ref(lbl, 32)
    buf = np.full(ref.size + shift, np.nan, np.float32)
    out = buf[shift:].reshape(ref.shape)
    star_dist(lbl, 32, out=out)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(star_dist(lbl, 32), ref)


def test_torch_cpu_tensor_in_torch_out():
    lbl = _labels_2d()[0]
    res = star_dist(torch.from_numpy(lbl), 16, (2, 2))
    assert isinstance(res, torch.Tensor) and res.dtype == torch.float32
    np.testing.assert_array_equal(res.numpy(), star_dist_ref(lbl, 16, grid=(2, 2)))


def test_empty_and_background_only():
    assert star_dist(np.zeros((0, 5), np.int32), 8).shape == (0, 5, 8)
    z = star_dist(np.zeros((9, 7), np.uint16), 8)
    assert z.shape == (9, 7, 8) and not z.any()


@pytest.mark.parametrize("n,grid", [(6, (1, 1, 1)), (33, (1, 2, 2)), (20, (2, 1, 3))])
def test_star_dist3d_matches_oracle(backend, n, grid):
    _, lbl = synthetic_nuclei((14, 26, 30), 8, seed=2, radius=(3, 6))
    lbl[0, :5, :5] = 99  # an object on the volume's corner
    ours = _np(star_dist3d(_on(backend, lbl), n, grid))
    np.testing.assert_array_equal(ours, star_dist3d_ref(lbl, rays_golden_spiral(n), grid=grid))


def test_star_dist_dispatches_3d_and_takes_ray_objects():
    _, lbl = synthetic_nuclei((10, 20, 20), 4, seed=5, radius=(3, 5))
    rays = rays_golden_spiral(14)

    class Rays:  # StarDist's Rays_* duck type
        vertices = rays

    ref = star_dist3d_ref(lbl, rays)
    np.testing.assert_array_equal(star_dist(lbl, 14), ref)
    np.testing.assert_array_equal(star_dist3d(lbl, Rays()), ref)
    np.testing.assert_array_equal(star_dist3d(lbl, rays), ref)


def test_matches_stardist():
    geometry = pytest.importorskip("stardist.geometry", reason="stardist not installed")
    rays3d = pytest.importorskip("stardist.rays3d")
    for lbl in _labels_2d():
        for n_rays, grid in ((32, (1, 1)), (64, (2, 2)), (17, (1, 4))):
            ours, theirs = star_dist(lbl, n_rays, grid), geometry.star_dist(lbl, n_rays, grid=grid)
            # StarDist's glibc sinf/cosf are one ulp off for a few angles (e.g. ray 3 of 64): ~1e-7 there
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5)
            assert np.mean(ours == theirs) > 0.99
    _, lbl = synthetic_nuclei((16, 32, 32), 10, seed=4, radius=(3, 7))
    for n, grid in ((33, (1, 1, 1)), (48, (1, 2, 2))):
        rays = rays3d.Rays_GoldenSpiral(n)
        np.testing.assert_array_equal(star_dist3d(lbl, rays, grid), geometry.star_dist3D(lbl, rays, grid=grid))


def test_bad_input():
    lbl = _labels_2d()[1]
    with pytest.raises(TypeError, match="labels"):
        star_dist(lbl.astype(np.float32))
    with pytest.raises(TypeError, match="labels"):
        star_dist(lbl > 0)
    with pytest.raises(ValueError, match="labels"):
        star_dist(lbl[0])
    with pytest.raises(ValueError, match="n_rays"):
        star_dist(lbl, 2)
    with pytest.raises(ValueError, match="grid"):
        star_dist(lbl, 8, (0, 1))
    with pytest.raises(ValueError, match="grid"):
        star_dist(lbl, 8, (1, 1, 1))
    with pytest.raises(ValueError, match="out"):
        star_dist(lbl, 8, out=np.zeros((3, 3, 8), np.float32))
    with pytest.raises(TypeError, match="out"):
        star_dist(lbl, 8, out=np.zeros(lbl.shape + (8,), np.float64))
    with pytest.raises(ValueError, match="rays"):
        star_dist3d(np.zeros((4, 4, 4), np.int32), np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="rays"):
        star_dist3d(np.zeros((4, 4, 4), np.int32), np.full((5, 3), 2.0, np.float32))
    with pytest.raises(TypeError, match="labels"):
        star_dist("not an image")
