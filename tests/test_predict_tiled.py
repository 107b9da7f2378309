"""Tiled inference (cellkern.predict): tiled output bit-equal to the whole-image forward, plan checks, bad input."""
import numpy as np
import pytest
import torch

from cellkern.models import StarDist2D
from cellkern.nn import UNet
from cellkern.predict import plan_tiles, predict_tiled, predict_whole


def _net(ndim=2, **kw):
    torch.manual_seed(0)
    return UNet(ndim, 1, 2, **{"depth": 2, "base_channels": 8, **kw}).eval()


@pytest.mark.parametrize("shape,tile", [((203, 157), 64), ((256, 256), 64), ((97, 301), (64, 128)),
                                        ((40, 40), None)])
def test_tiled_bit_equal_2d(shape, tile):
    net = _net()
    img = np.random.default_rng(1).random((1,) + shape, dtype=np.float32)
    plan = plan_tiles(net, shape, tile)
    out = predict_tiled(net, img, tile)
    assert out.shape == (2,) + shape
    np.testing.assert_array_equal(out, predict_whole(net, img))
    if tile is not None:
        assert len(plan) > 1


def test_tiled_bit_equal_depth3_uint16_batched():
    # depth 3: the Winograd convolutions run at every level (>= 16 channels), so the numeric halo matters
    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=3, base_channels=16).eval()
    img = (np.random.default_rng(2).random((1, 333, 290)) * 4000).astype(np.uint16)
    np.testing.assert_array_equal(predict_tiled(net, img, 128, batch_size=3), predict_whole(net, img))


def test_numeric_halo_is_needed():
    """The halo from the values' receptive field alone is not enough for bit-equality (Winograd rounding): this
    is what makes the test above able to fail."""
    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=3, base_channels=16).eval()
    orig = net.input_interval
    net.input_interval = lambda lo, hi, d, numeric=False: orig(lo, hi, d, False)
    img = np.random.default_rng(3).random((1, 400, 300), dtype=np.float32)
    assert not np.array_equal(predict_tiled(net, img, 128), predict_whole(net, img))


def test_tiled_bit_equal_3d():
    net = _net(3, depth=2, base_channels=8)
    img = np.random.default_rng(4).random((1, 21, 70, 53), dtype=np.float32)
    np.testing.assert_array_equal(predict_tiled(net, img, (24, 48, 48)), predict_whole(net, img))


def test_tiled_into_memmap(tmp_path):
    net = _net()
    img = np.random.default_rng(5).random((1, 150, 190), dtype=np.float32)
    whole = predict_whole(net, img)
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=whole.shape)
    predict_tiled(net, img, 64, out=out)
    np.testing.assert_array_equal(np.asarray(out), whole)


@pytest.mark.parametrize("shape,tile", [((333, 215), 128), ((130, 64), 128)])
def test_stardist_tiled_bit_equal(shape, tile):
    """StarDist's outputs live on its grid: (1 + n_rays) channels of ceil(size / grid) cells."""
    torch.manual_seed(0)
    model = StarDist2D(n_rays=8, grid=(2, 2), unet_depth=2, unet_base_channels=8, net_conv_after_unet=16).eval()
    img = np.random.default_rng(6).random((1,) + shape, dtype=np.float32)
    whole = predict_whole(model, img)
    assert whole.shape == (9, -(-shape[0] // 2), -(-shape[1] // 2))
    np.testing.assert_array_equal(predict_tiled(model, img, tile), whole)
    # the same numbers as the model's own forward on the padded image
    x = np.pad(img, [(0, 0)] + [(0, -s % f) for s, f in zip(shape, model.downsampling_factor)], mode="reflect")
    with torch.no_grad():
        logit, dist = model(torch.from_numpy(x[None]))
    ref = torch.cat([logit, dist], 1)[0].numpy()
    np.testing.assert_array_equal(whole, ref[:, :whole.shape[1], :whole.shape[2]])


def test_not_a_model():
    with pytest.raises(TypeError, match="model"):
        predict_tiled(torch.nn.Identity(), np.zeros((1, 64, 64), np.float32))


def test_memory_budget_picks_tiles():
    net = _net()
    small = plan_tiles(net, (1024, 1024), memory_budget=4 << 20)
    large = plan_tiles(net, (1024, 1024), memory_budget=256 << 20)
    assert len(small) > len(large)
    assert all(c % a == 0 for c, a in zip(small.core, small.align))


@pytest.mark.parametrize("kwargs,err", [
    (dict(tile_size=60), "multiple"),
    (dict(tile_size=-64), "multiple"),
    (dict(tile_size=24), "multiple"),
    (dict(tile_size=64, memory_budget=1), "not both"),
    (dict(memory_budget=-5), "memory_budget"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_plan_arguments(kwargs, err):
    with pytest.raises(ValueError, match=err):
        plan_tiles(_net(), (200, 200), **kwargs)


def test_tile_smaller_than_receptive_field():
    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=3, base_channels=16).eval()
    with pytest.raises(ValueError, match="receptive field"):
        plan_tiles(net, (1000, 1000), 64)


def test_bad_image_and_output_write_nothing():
    net = _net()
    with pytest.raises(ValueError, match="shape"):
        predict_tiled(net, np.zeros((2, 64, 64), np.float32))
    with pytest.raises(TypeError):
        predict_tiled(net, np.zeros((1, 64, 64), bool))
    with pytest.raises(ValueError, match="non-empty"):
        predict_tiled(net, np.zeros((1, 0, 64), np.float32))
    out = np.full((2, 64, 65), 7, np.float32)
    with pytest.raises(ValueError, match="out"):
        predict_tiled(net, np.zeros((1, 64, 64), np.float32), out=out)
    assert (out == 7).all()


def test_probe_leaves_batch_norm_statistics_alone():
    torch.manual_seed(0)
    net = UNet(2, 1, 1, depth=2, base_channels=8, batch_norm=True)  # left in training mode on purpose
    before = {k: v.clone() for k, v in net.state_dict().items()}
    img = np.random.default_rng(6).random((1, 100, 90), dtype=np.float32)
    out = predict_tiled(net, img)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    np.testing.assert_array_equal(out, predict_whole(net, img))
