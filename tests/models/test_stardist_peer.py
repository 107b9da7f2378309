"""The models' targets and the 3D decoder against StarDist itself (an optional peer: skipped without it)."""
import numpy as np
import pytest

from cellkern.data import synthetic_nuclei
from cellkern.star.polyhedra import decode3d, polyhedron_to_label
from cellkern.star import edt_prob

sd_geometry = pytest.importorskip("stardist.geometry", reason="stardist not installed")
sd_utils = pytest.importorskip("stardist.utils", reason="stardist not installed")
sd_nms = pytest.importorskip("stardist.nms", reason="stardist not installed")
stardist = pytest.importorskip("stardist", reason="stardist not installed")
torch = pytest.importorskip("torch")


def _labels_3d(seed):
    _, lab = synthetic_nuclei((14, 28, 28), 7, seed=seed, radius=(3.5, 6), touching=0.4)
    return np.pad(lab, 3)


@pytest.mark.parametrize("anisotropy", [None, (2.0, 1.0, 1.0)])
def test_edt_prob_equals_stardist(anisotropy):
    _, lab2 = synthetic_nuclei((90, 100), 20, seed=1, touching=0.6)
    np.testing.assert_allclose(edt_prob(lab2), sd_utils.edt_prob(lab2), rtol=1e-6, atol=1e-7)
    lab3 = _labels_3d(2)
    np.testing.assert_allclose(edt_prob(lab3, anisotropy), sd_utils.edt_prob(lab3, anisotropy=anisotropy),
                               rtol=1e-6, atol=1e-7)


def test_model_targets_follow_stardists_data_generators():
    from cellkern.models import StarDist2D, StarDist3D

    _, lab = synthetic_nuclei((64, 80), 14, seed=3, touching=0.5)
    m2 = StarDist2D(n_rays=16, grid=(2, 2), unet_depth=1, unet_base_channels=2, net_conv_after_unet=0)
    prob, dist = m2.targets(lab)
    # StarDistData2D: edt_prob of the sub-sampled labels, star_dist with the grid
    np.testing.assert_allclose(prob, sd_utils.edt_prob(lab[::2, ::2]), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.moveaxis(dist, 0, -1), sd_geometry.star_dist(lab, 16, grid=(2, 2)), atol=1e-5)
    lab3 = _labels_3d(4)
    m3 = StarDist3D(n_rays=32, grid=(1, 2, 2), anisotropy=(2.0, 1.0, 1.0), unet_depth=1, unet_base_channels=2,
                    net_conv_after_unet=0)
    prob, dist = m3.targets(lab3)
    rays = stardist.Rays_GoldenSpiral(32, anisotropy=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(m3.rays, rays.vertices, atol=1e-7)
    # StarDistData3D: edt_prob of the full labels (anisotropic), sub-sampled; star_dist3D with the grid
    np.testing.assert_allclose(prob, sd_utils.edt_prob(lab3, anisotropy=(2.0, 1.0, 1.0))[:, ::2, ::2], rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_allclose(np.moveaxis(dist, 0, -1), sd_geometry.star_dist3D(lab3, rays, grid=(1, 2, 2)),
                               atol=1e-6)


@pytest.mark.parametrize("anisotropy", [None, (1.5, 1.0, 1.0)])
def test_rasterised_polyhedra_equal_stardists(anisotropy):
    rays = stardist.Rays_GoldenSpiral(48, anisotropy=anisotropy)
    rng = np.random.default_rng(0)
    for _ in range(6):
        d = rng.uniform(1.5, 7.0, 48).astype(np.float32)
        theirs = sd_geometry.polyhedron_to_label(d[None], np.array([[9, 9, 9]]), rays, shape=(19, 19, 19),
                                                 verbose=False)
        np.testing.assert_array_equal(polyhedron_to_label(d[None], np.array([[9, 9, 9]]), rays, (19, 19, 19)),
                                      theirs)


def test_decode3d_keeps_what_stardists_nms_keeps():
    lab = _labels_3d(0)
    rays = stardist.Rays_GoldenSpiral(48, anisotropy=(1.5, 1.0, 1.0))
    dist = sd_geometry.star_dist3D(lab, rays)
    # distinct probabilities: StarDist's order among ties is unspecified
    prob = edt_prob(lab, (1.5, 1.0, 1.0)) + 1e-4 * np.random.default_rng(0).random(lab.shape, np.float32)
    points, probs, dists = sd_nms.non_maximum_suppression_3d(dist, prob, rays, prob_thresh=0.5, nms_thresh=0.4,
                                                             verbose=False)
    labels, det = decode3d(prob, dist, rays, prob_thresh=0.5, nms_thresh=0.4)
    assert {tuple(p) for p in det["points"].tolist()} == {tuple(p) for p in points.tolist()}
    theirs = sd_geometry.polyhedron_to_label(dists, points, rays, shape=lab.shape, prob=probs, verbose=False)
    # the same objects, painted voxel for voxel the same (ids: StarDist numbers them in its candidate order)
    np.testing.assert_array_equal(theirs > 0, labels > 0)
