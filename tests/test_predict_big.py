"""predict_instances_big: labels equal to whole-image predict_instances (objects across blocks and larger than a
block core), zarr in / out, resume after a killed run, a dask.distributed cluster, bad input."""
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from cellkern.models import StarDist2D

zarr = pytest.importorskip("zarr")


def _model(radius=60.0):
    """A small untrained StarDist whose heads are scaled so that its polygons are big (radius ~ ``radius`` +- 20
    px: larger than a 128 px block core) and its probabilities spread: many overlapping candidates, long chains
    of NMS decisions across blocks."""
    torch.manual_seed(0)
    m = StarDist2D(n_rays=16, grid=(2, 2), unet_depth=2, unet_base_channels=8, net_conv_after_unet=16).eval()
    with torch.no_grad():
        m.dist.bias.fill_(radius)
        m.dist.weight.mul_(200)
        m.prob.weight.mul_(100)
    return m


def _image(shape=(600, 521), seed=0):
    rng = np.random.default_rng(seed)
    img = (rng.random(shape) * 1000).astype(np.uint16)
    img[100:300, 50:400] += 2000  # structure, so probabilities vary across blocks
    return img


def _thresh(m, img, q=80):
    prob, _ = m.predict(img)
    return float(np.percentile(prob, q))


def _blocks_spanned(labels, block):
    """How many blocks the most spread object touches."""
    ids = {}
    for i in range(0, labels.shape[0], block):
        for j in range(0, labels.shape[1], block):
            for v in np.unique(labels[i:i + block, j:j + block]):
                if v:
                    ids[v] = ids.get(v, 0) + 1
    return max(ids.values())


@pytest.mark.parametrize("q,nms,block", [(80, 0.3, 128), (95, 0.1, 128), (50, 0.5, 256)])
def test_big_equals_whole(q, nms, block):
    m = _model()
    img = _image()
    thr = _thresh(m, img, q)
    whole, det = m.predict_instances(img, prob_thresh=thr, nms_thresh=nms)
    big, info = m.predict_instances_big(img, block, prob_thresh=thr, nms_thresh=nms)
    assert whole.max() > 20
    np.testing.assert_array_equal(big, whole)
    assert big.dtype == np.uint32
    np.testing.assert_array_equal(info["points"], det["points"])
    np.testing.assert_array_equal(info["prob"], det["prob"])
    if block == 128:  # objects larger than a core, decisions that needed a second look
        assert _blocks_spanned(whole, block) >= 4
        assert info["stats"]["nms_rounds"] >= 2


def test_big_equals_whole_channels_and_dask_input():
    da = pytest.importorskip("dask.array")
    torch.manual_seed(1)
    m = StarDist2D(n_rays=8, grid=(2, 2), unet_depth=2, unet_base_channels=8, net_conv_after_unet=16,
                   n_channel_in=2).eval()
    with torch.no_grad():
        m.dist.bias.fill_(15.0)
        m.prob.weight.mul_(100)
    img = np.random.default_rng(3).random((300, 270, 2)).astype(np.float32)
    thr = _thresh(m, img, 70)
    whole, _ = m.predict_instances(img, prob_thresh=thr)
    big, _ = m.predict_instances_big(da.from_array(img, chunks=(100, 77, 2)), 128, prob_thresh=thr)
    assert whole.max() > 20
    np.testing.assert_array_equal(big, whole)


def test_zarr_in_out_and_store_reuse(tmp_path):
    m = _model(20.0)
    img = _image((400, 333), seed=1)
    thr = _thresh(m, img)
    whole, _ = m.predict_instances(img, prob_thresh=thr)
    z = zarr.create_array(tmp_path / "in.zarr", shape=img.shape, chunks=(100, 100), dtype=img.dtype)
    z[:] = img
    out = zarr.create_array(tmp_path / "out.zarr", shape=img.shape, chunks=(128, 128), dtype=np.uint32)
    store = tmp_path / "run.zarr"
    _, info = m.predict_instances_big(z, 128, prob_thresh=thr, out=out, store=store)
    np.testing.assert_array_equal(out[:], whole)
    assert info["stats"]["predicted"] == info["stats"]["blocks"] == 12
    # the same run again: nothing is recomputed but the (cheap) NMS
    _, info = m.predict_instances_big(z, 128, prob_thresh=thr, out=out, store=store)
    assert info["stats"]["predicted"] == 0 and info["stats"]["rendered"] == 0
    np.testing.assert_array_equal(out[:], whole)
    # another threshold is another run: refused, nothing written
    before = out[:]
    with pytest.raises(ValueError, match="another model"):
        m.predict_instances_big(z, 128, prob_thresh=thr * 0.9, out=out, store=store)
    np.testing.assert_array_equal(out[:], before)


_KILLED_RUN = """
import sys, numpy as np, torch, zarr
sys.path[:0] = {path!r}
from test_predict_big import _model
m = _model(20.0)
z = zarr.open_array({inp!r}, mode="r")
out = zarr.open_array({out!r}, mode="r+")
m.predict_instances_big(z, 128, prob_thresh={thr!r}, out=out, store={store!r}, threads=1)
"""


def test_resume_after_killed_run(tmp_path):
    """A run killed half-way through the network stage, then resumed: only the missing blocks run, the labels
    equal the whole image's."""
    m = _model(20.0)
    img = _image((520, 520), seed=2)
    thr = _thresh(m, img)
    whole, _ = m.predict_instances(img, prob_thresh=thr)
    inp, out, store = (str(tmp_path / n) for n in ("in.zarr", "out.zarr", "run.zarr"))
    zarr.create_array(inp, shape=img.shape, chunks=(128, 128), dtype=img.dtype)[:] = img
    zarr.create_array(out, shape=img.shape, chunks=(128, 128), dtype=np.uint32)
    path = [os.path.dirname(__file__)] + sys.path
    code = textwrap.dedent(_KILLED_RUN.format(path=path, inp=inp, out=out, store=store, thr=thr))
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                done = int(np.asarray(zarr.open_group(store, mode="r")["pred_done"][:]).sum())
            except Exception:  # the store is not there yet
                done = 0
            if done >= 5:
                proc.kill()
                break
            time.sleep(0.05)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, "the run finished before it could be killed"
    done = int(np.asarray(zarr.open_group(store, mode="r")["pred_done"][:]).sum())
    assert 5 <= done < 25
    _, info = m.predict_instances_big(zarr.open_array(inp, mode="r"), 128, prob_thresh=thr,
                                      out=zarr.open_array(out, mode="r+"), store=store)
    assert info["stats"]["predicted"] == 25 - done and info["stats"]["predicted_before"] == done
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], whole)


def test_dask_cluster_equals_single_process(tmp_path):
    distributed = pytest.importorskip("distributed")
    m = _model(60.0)
    img = _image((400, 400), seed=4)
    thr = _thresh(m, img)
    whole, _ = m.predict_instances(img, prob_thresh=thr, nms_thresh=0.3)
    z = zarr.create_array(tmp_path / "in.zarr", shape=img.shape, chunks=(128, 128), dtype=img.dtype)
    z[:] = img
    out = zarr.create_array(tmp_path / "out.zarr", shape=img.shape, chunks=(128, 128), dtype=np.uint32)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            distributed.Client(cl) as client:
        _, info = m.predict_instances_big(z, 128, prob_thresh=thr, nms_thresh=0.3, out=out,
                                          store=tmp_path / "run.zarr", scheduler=client, threads=1)
        workers = set(client.run(os.getpid).values())
    assert len(workers) == 2 and os.getpid() not in workers
    np.testing.assert_array_equal(out[:], whole)
    assert info["stats"]["predicted"] == 16


def test_bad_input_writes_nothing(tmp_path):
    m = _model(20.0)
    img = _image((300, 300))
    out = np.zeros((300, 300), np.uint32)
    with pytest.raises(ValueError, match="multiple"):
        m.predict_instances_big(img, 100, out=out)
    with pytest.raises(ValueError, match="receptive field"):
        m.predict_instances_big(img, 32, out=out)
    with pytest.raises(ValueError, match="out: expected shape"):
        m.predict_instances_big(img, 128, out=np.zeros((300, 301), np.uint32))
    with pytest.raises(ValueError, match="out: expected a uint32"):
        m.predict_instances_big(img, 128, out=np.zeros((300, 300), np.int16))
    with pytest.raises(ValueError, match="image"):
        m.predict_instances_big(img[None], 128, out=out)
    with pytest.raises(TypeError, match="image"):
        m.predict_instances_big(img.astype(bool), 128, out=out)
    with pytest.raises(ValueError, match="prob_thresh"):
        m.predict_instances_big(img, 128, prob_thresh=2.0, out=out)
    bad = np.array(img, np.float32)
    bad[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.predict_instances_big(bad, 128, out=out)
    racy = zarr.create_array(tmp_path / "racy.zarr", shape=(300, 300), chunks=(100, 100), dtype=np.uint32)
    with pytest.raises(ValueError, match="must divide the block size"):
        m.predict_instances_big(img, 128, out=racy, scheduler="tcp://127.0.0.1:1")
    other = zarr.open_group(tmp_path / "other.zarr", mode="w")
    other.create_array("x", shape=(2,), dtype=np.uint8)
    with pytest.raises(ValueError, match="does not hold a cellkern run"):
        m.predict_instances_big(img, 128, out=out, store=tmp_path / "other.zarr")
    assert not out.any()


def test_big_equals_whole_3d():
    """StarDist3D: blocks smaller than the objects' reach in z (the window spans the volume) and in y/x."""
    from cellkern.models import StarDist3D

    torch.manual_seed(0)
    m = StarDist3D(n_rays=32, grid=(1, 2, 2), unet_depth=1, unet_base_channels=8, net_conv_after_unet=16,
                   anisotropy=(2.0, 1.0, 1.0)).eval()
    with torch.no_grad():
        m.dist.bias.fill_(9.0)
        m.dist.weight.mul_(30)
        m.prob.weight.mul_(5)
    rng = np.random.default_rng(0)
    img = (rng.random((40, 100, 90)) * 1000).astype(np.float32)
    img[10:30, 20:50, 10:40] += 2000
    prob, _ = m.predict(img)
    thr = float(np.percentile(prob[2:-2, 2:-2, 2:-2], 90))
    whole, det = m.predict_instances(img, prob_thresh=thr, nms_thresh=0.3)
    big, info = m.predict_instances_big(img, (26, 48, 48), prob_thresh=thr, nms_thresh=0.3)
    assert whole.max() > 50
    np.testing.assert_array_equal(big, whole)
    np.testing.assert_array_equal(info["points"], det["points"])
    assert info["stats"]["blocks"] == 12 and info["stats"]["nms_rounds"] >= 2
