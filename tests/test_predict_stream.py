"""Streamed inference (cellkern.predict.stream): slab by slab along the first axis, every layer's rows computed
once, bit-equal to the whole-image forward; and the kernel properties it rests on."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cellkern import ops
from cellkern.models import StarDist2D
from cellkern.nn import UNet
from cellkern.predict import predict_tiled, predict_whole
from cellkern.predict.stream import graph_of, predict_streamed, step_bytes


def _unet(ndim=2, **kw):
    torch.manual_seed(0)
    net = UNet(ndim, 1, 2, **{"depth": 3, "base_channels": 16, **kw}).eval()
    for m in net.modules():  # batch norm with statistics that are not the identity
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net


@pytest.mark.parametrize("rows", [32, 64, 96])
def test_stream_bit_equal_2d(rows):
    # depth 3, 16 channels: Winograd at every level, so slabs must start on its tiles at every level
    net = _unet()
    img = (np.random.default_rng(2).random((1, 333, 290)) * 4000).astype(np.uint16)
    np.testing.assert_array_equal(predict_streamed(net, img, rows_per_step=rows), predict_whole(net, img))


def test_stream_columns_bit_equal():
    net = _unet()
    img = np.random.default_rng(3).random((1, 203, 420), dtype=np.float32)
    out = predict_streamed(net, img, rows_per_step=32, tile_size=(32, 128))  # 4 column tiles with halos
    np.testing.assert_array_equal(out, predict_whole(net, img))


def test_stream_batchnorm_leaky_nearest():
    net = _unet(batch_norm=True, activation="leaky_relu", upsample="nearest", base_channels=8)
    img = np.random.default_rng(4).random((1, 100, 333), dtype=np.float32)
    np.testing.assert_array_equal(predict_streamed(net, img, rows_per_step=32), predict_whole(net, img))


@pytest.mark.parametrize("rows", [8, 16])
def test_stream_bit_equal_3d(rows):
    # streamed along depth: slabs of one voxel at the deepest level (8 rows at level 0, depth 3)
    net = _unet(3, base_channels=8)
    img = np.random.default_rng(5).random((1, 42, 52, 37), dtype=np.float32)
    np.testing.assert_array_equal(predict_streamed(net, img, rows_per_step=rows), predict_whole(net, img))


def test_stream_stardist_grid():
    torch.manual_seed(0)
    model = StarDist2D(n_rays=8, grid=(2, 2), unet_depth=2, unet_base_channels=16, net_conv_after_unet=16).eval()
    img = np.random.default_rng(6).random((1, 333, 215), dtype=np.float32)
    whole = predict_whole(model, img)
    np.testing.assert_array_equal(predict_streamed(model, img, rows_per_step=16), whole)
    np.testing.assert_array_equal(predict_tiled(model, img), whole)


def test_auto_streams_and_tiles_agree():
    net = _unet()
    img = np.random.default_rng(7).random((1, 260, 200), dtype=np.float32)
    whole = predict_whole(net, img)
    budget = 4 << 20  # small: the streamer must cut columns, the tiles must be small
    for strategy in ("auto", "stream", "tiles"):
        np.testing.assert_array_equal(predict_tiled(net, img, memory_budget=budget, strategy=strategy), whole)


def test_auto_takes_the_strategy_that_reads_fewer_voxels(monkeypatch):
    from cellkern.predict import plan_tiles, tiled

    net = _unet()
    img = np.random.default_rng(8).random((1, 100, 90), dtype=np.float32)
    # one tile over the whole image reads its voxels, padded to the down-sampling factor (8)
    assert tiled._tile_volume(plan_tiles(net, (100, 90), (128, 128))) == 104 * 96
    # a 3D volume of few planes: the whole cross-section does not fit 256 MiB, so the streamer needs columns with
    # halos; it still reads fewer voxels than tiles of the same budget (halos on every axis)
    vol = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (1, 64, 512, 512), (0,) * 4)
    assert tiled._stream_reads_less(_unet(ndim=3), vol, None, None, 1)
    # tiles cannot be planned from a tile_size and a budget together; the streamer takes both
    wide = np.random.default_rng(11).random((1, 120, 260), dtype=np.float32)
    assert tiled._stream_reads_less(net, wide, (32, 128), 64 << 20, 1)
    np.testing.assert_array_equal(predict_tiled(net, wide, tile_size=(32, 128), memory_budget=64 << 20),
                                  predict_whole(net, wide))
    calls = []
    monkeypatch.setattr(tiled, "_stream_reads_less", lambda *a: calls.append(a) or False)
    import cellkern.predict.stream as stream

    monkeypatch.setattr(stream, "predict_streamed", lambda *a, **k: pytest.fail("auto streamed"))
    np.testing.assert_array_equal(predict_tiled(net, img), predict_whole(net, img))  # tiles
    assert calls


def test_step_bytes_grows_with_the_step_and_width():
    g = graph_of(_unet())
    a, b, c = step_bytes(g, 1024, 32, (1024,)), step_bytes(g, 1024, 128, (1024,)), step_bytes(g, 1024, 32, (2048,))
    assert 0 < a < b and a < c
    # at least the rows of the level-0 skip (16 channels) the decoder still needs when the encoder is ahead
    assert a > 16 * 4 * 1024 * 64


def test_stream_bad_input():
    net = _unet()
    img = np.zeros((1, 64, 64), np.float32)
    with pytest.raises(ValueError, match="rows_per_step"):
        predict_streamed(net, img, rows_per_step=20)
    with pytest.raises(ValueError, match="strategy"):
        predict_tiled(net, img, strategy="slabs")
    with pytest.raises(ValueError, match="out"):
        predict_streamed(net, img, out=np.zeros((2, 64, 63), np.float32))
    torch.manual_seed(0)
    reflect = UNet(2, 1, 1, depth=1, base_channels=4)
    reflect.encoder[0].conv0.padding_mode = "reflect"
    with pytest.raises(ValueError, match="zero padding"):  # StreamUnsupported
        predict_tiled(reflect, img, strategy="stream")
    np.testing.assert_array_equal(predict_tiled(reflect.eval(), img), predict_whole(reflect, img))  # auto: tiles


# ---- the kernel properties streaming rests on ------------------------------------------------------------------

@pytest.mark.parametrize("channels,width", [(16, 300), (64, 96)])
def test_winograd_slab_equals_whole(channels, width):
    """A 3x3 convolution of rows [r0, r1) (r0 on a Winograd tile) from a slab of the input equals those rows of
    the whole-image convolution bit for bit when the slab covers whole tiles (a tile mixes all its 6 input rows),
    however few (few rows take the column-sliced parallel path)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, channels, 64, width, generator=g)
    w = torch.randn(channels, channels, 3, 3, generator=g) / channels
    b = torch.randn(channels, generator=g)
    whole = ops.conv2d(x, w, b, padding=1, activation="relu")
    for r0, r1 in [(0, 4), (4, 8), (8, 20), (60, 64), (36, 44)]:  # whole tiles: ends on one too
        lo, hi = max(r0 - 1, 0), min(r1 + 1, 64)
        pads = (1 if r0 == 0 else 0, 1 if r1 == 64 else 0)
        y = torch.ops.cellkern.conv([x[:, :, lo:hi].contiguous()], w, b, [1, 1], [pads[0], 1], [pads[1], 1], [1, 1],
                                    1, 0, 1, 0.0)
        torch.testing.assert_close(y, whole[:, :, r0:r1], rtol=0, atol=0)
    torch.testing.assert_close(whole, F.relu(F.conv2d(x, w, b, padding=1)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nd", [2, 3])
def test_transposed_k2s2_one_row_slab(nd):
    """A kernel-2 stride-2 transposed convolution of one input row equals that row pair of the whole (a one-row
    input used to take another kernel)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn((1, 32, 5) + (7,) * (nd - 1), generator=g)
    w = torch.randn((32, 16) + (2,) * nd, generator=g)
    b = torch.randn(16, generator=g)
    op = ops.conv_transpose2d if nd == 2 else ops.conv_transpose3d
    whole = op(x, w, b, stride=2)
    rows = torch.cat([op(x[:, :, i:i + 1].contiguous(), w, b, stride=2) for i in range(5)], 2)
    torch.testing.assert_close(rows, whole, rtol=0, atol=0)


def test_winograd_weights_changed_in_place_are_seen():
    """The transformed weights are reused across calls only while every tap is unchanged."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 32, 12, 16, generator=g)
    w = torch.randn(32, 32, 3, 3, generator=g)
    y1 = ops.conv2d(x, w, None, padding=1)
    w[3, 5, 1, 2] += 1.0  # same storage, one tap changed
    y2 = ops.conv2d(x, w, None, padding=1)
    torch.testing.assert_close(y2, F.conv2d(x, w, None, padding=1), rtol=1e-4, atol=1e-3)
    assert not torch.equal(y1[:, 3], y2[:, 3])
    torch.testing.assert_close(y1[:, 4], y2[:, 4], rtol=0, atol=0)


class _ChunkedOut:
    """A numpy array behind zarr's interface (shape, ndim, chunks, slice assignment) that records the row ranges
    written."""

    def __init__(self, shape, chunks):
        self.a = np.full(shape, np.nan, np.float32)
        self.shape, self.ndim, self.chunks, self.writes = shape, len(shape), chunks, []

    def __setitem__(self, key, value):
        self.writes.append((key[1].start, key[1].stop))
        self.a[key] = value


def test_stream_writes_whole_chunks_of_a_chunked_output():
    net = _unet()
    img = np.random.default_rng(9).random((1, 203, 150), dtype=np.float32)
    out = _ChunkedOut((2, 203, 150), (1, 50, 64))
    predict_streamed(net, img, rows_per_step=32, out=out)
    np.testing.assert_array_equal(out.a, predict_whole(net, img))
    # every write but the last ends past a chunk boundary (50 rows): no chunk is written more than twice
    assert all(b // 50 > a // 50 for a, b in out.writes[:-1]), out.writes
    assert out.writes[-1][1] == 203 and len(out.writes) <= 203 // 50 + 1
    cols = _ChunkedOut((2, 203, 260), (1, 50, 64))  # column tiles: each column's rows are buffered apart
    wide = np.random.default_rng(10).random((1, 203, 260), dtype=np.float32)
    predict_streamed(net, wide, rows_per_step=32, tile_size=(32, 128), out=cols)  # 3 columns
    np.testing.assert_array_equal(cols.a, predict_whole(net, wide))
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(store={}, shape=(2, 203, 150), chunks=(1, 50, 64), dtype="float32")
    predict_streamed(net, img, rows_per_step=32, out=z)
    np.testing.assert_array_equal(z[:], predict_whole(net, img))


def test_stream_on_the_cuda_kernels_emulated():
    # the CUDA kernels (here on the SIMT emulator) write no slab of a taller tensor: a chunk cut at slab boundaries
    # is kept as separate pieces there, still equal to the whole image on the same kernels
    import cellkern

    torch.manual_seed(0)
    net = UNet(2, 1, 2, depth=2, base_channels=8).eval()
    img = np.random.default_rng(2).random((1, 70, 50), dtype=np.float32)
    with cellkern.backend("emu"):
        np.testing.assert_array_equal(predict_streamed(net, img, rows_per_step=16), predict_whole(net, img))
