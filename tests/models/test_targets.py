"""edt_prob against a brute-force oracle and the shipped per-object oracle; StarDist models' targets against
StarDist's semantics (the reference star_dist / edt_prob at grid offset 0)."""
import numpy as np
import pytest

from cellkern.data import synthetic_nuclei
from cellkern.reference import edt_prob_ref, rays_golden_spiral, star_dist3d_ref, star_dist_ref
from cellkern.star import edt_prob

torch = pytest.importorskip("torch")


def _brute_edt_prob(lab, spacing=None):
    """For every object pixel, the distance to the nearest pixel of another label, by checking all pixels;
    normalised by the object's maximum (+1e-10). A constant image gets a ring of background (StarDist)."""
    lab = np.asarray(lab)
    if lab.min() == lab.max() > 0:
        inner = (slice(1, -1),) * lab.ndim
        return _brute_edt_prob(np.pad(lab, 1), spacing)[inner]
    s = np.ones(lab.ndim) if spacing is None else np.asarray(spacing, float)
    pts = np.argwhere(np.ones(lab.shape, bool))
    vals = lab.ravel()
    d = np.zeros(lab.size)
    for i in np.flatnonzero(vals):
        other = pts[vals != vals[i]]
        d[i] = np.sqrt((((other - pts[i]) * s) ** 2).sum(1)).min()
    out = np.zeros(lab.size)
    for obj in np.unique(vals[vals > 0]):
        m = vals == obj
        out[m] = d[m] / (d[m].max() + 1e-10)
    return out.reshape(lab.shape).astype(np.float32)


def _tiny_labels():
    a = np.zeros((11, 13), np.int32)
    a[0:4, 0:5] = 1                 # corner: the image border is not background
    a[3:9, 5:12] = 2                # touches 1 diagonally and 3 along an edge
    a[9:11, 2:9] = 3                # bottom border
    a[5:7, 7:9] = 4                 # a hole inside 2
    a[6, 0] = 5                     # one pixel on the left border
    b = np.zeros((6, 7, 8), np.uint16)
    b[1:5, 1:6, 2:8] = 7
    b[0:3, 0:2, 0:3] = 2
    b[3:6, 4:7, 0:4] = 9
    return [a, b, np.full((5, 6), 3, np.int64), np.zeros((4, 4), np.uint8)]


@pytest.mark.parametrize("case", range(4))
def test_edt_prob_matches_brute_force(case):
    lab = _tiny_labels()[case]
    np.testing.assert_allclose(edt_prob(lab), _brute_edt_prob(lab), rtol=1e-6, atol=1e-7)
    spacing = (2.0, 1.0, 0.5)[:lab.ndim] if lab.ndim == 3 else (1.7, 1.0)
    np.testing.assert_allclose(edt_prob(lab, anisotropy=spacing), _brute_edt_prob(lab, spacing), rtol=1e-6,
                               atol=1e-7)


@pytest.mark.parametrize("shape,n,seed", [((96, 120), 25, 0), ((40, 48, 56), 14, 1), ((200, 180), 90, 2)])
def test_edt_prob_equals_reference(shape, n, seed):
    _, lab = synthetic_nuclei(shape, n, seed=seed, touching=0.6, gap=0)
    ours = edt_prob(lab)
    assert ours.dtype == np.float32 and ours.shape == lab.shape
    np.testing.assert_array_equal(ours, edt_prob_ref(lab))


def test_edt_prob_label_dtypes_and_sparse_ids():
    _, lab = synthetic_nuclei((64, 64), 10, seed=4, touching=0.5)
    ref = edt_prob_ref(lab)
    for dt in (np.uint8, np.uint16, np.int32, np.uint32, np.int64, np.uint64):
        np.testing.assert_array_equal(edt_prob(lab.astype(dt)), ref)
    sparse = np.where(lab > 0, lab.astype(np.int64) * 10**12 + 7, 0)  # ids far beyond the image size
    np.testing.assert_array_equal(edt_prob(sparse), ref)
    t = edt_prob(torch.from_numpy(lab))
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), ref)


def test_edt_prob_bad_input():
    with pytest.raises(TypeError, match="labels"):
        edt_prob(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        edt_prob(np.array([[0, -1], [1, 1]]))
    with pytest.raises(ValueError, match="anisotropy"):
        edt_prob(np.zeros((4, 4), np.int32), anisotropy=(1, 1, 1))
    with pytest.raises(ValueError, match="anisotropy"):
        edt_prob(np.zeros((4, 4), np.int32), anisotropy=(1, 0))


def test_model_targets_2d():
    from cellkern.models import StarDist2D

    _, lab = synthetic_nuclei((60, 70), 12, seed=5, touching=0.5)
    for grid in ((1, 1), (2, 2), (1, 4)):
        m = StarDist2D(n_rays=12, grid=grid, unet_depth=1, unet_base_channels=2, net_conv_after_unet=0)
        prob, dist = m.targets(lab)
        sub = lab[::grid[0], ::grid[1]]
        np.testing.assert_array_equal(prob, edt_prob_ref(sub))  # StarDist 2D: the EDT of the sub-sampled labels
        np.testing.assert_array_equal(dist, np.moveaxis(star_dist_ref(lab, 12, grid=grid), -1, 0))
        assert prob.dtype == dist.dtype == np.float32


def test_model_targets_3d():
    from cellkern.models import StarDist3D

    _, lab = synthetic_nuclei((12, 18, 16), 4, seed=6, radius=(3, 5), touching=0.5)
    m = StarDist3D(n_rays=20, grid=(1, 2, 2), anisotropy=(2.0, 1.0, 1.0), unet_depth=1, unet_base_channels=2,
                   net_conv_after_unet=0)
    prob, dist = m.targets(lab)
    # StarDist 3D: the anisotropic EDT of the full labels, sub-sampled
    np.testing.assert_allclose(prob, _brute_edt_prob(lab, (2.0, 1.0, 1.0))[:, ::2, ::2], rtol=1e-6, atol=1e-7)
    rays = rays_golden_spiral(20, (2.0, 1.0, 1.0))
    np.testing.assert_array_equal(m.rays, rays)
    np.testing.assert_array_equal(dist, np.moveaxis(star_dist3d_ref(lab, rays, grid=(1, 2, 2)), -1, 0))
