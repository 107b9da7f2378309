"""Tests of the training loop: it learns, it is deterministic, it keeps the best checkpoint, reads files lazily,
rejects bad input, and runs under DDP with two processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import cellkern.train.data as tdata
from cellkern.models import StarDist2D
from cellkern.train import Augmentation, PairedImages, fit
from cellkern.train.fit import _batch, _windows

from conftest import make_model

SMALL = dict(epochs=2, steps_per_epoch=3, batch_size=2, patch_size=32, progress=False)


def _loss_on(model, X, Y):
    """The model's loss on whole 64x64 images (normalised as fit does)."""
    with torch.no_grad():
        total = 0.0
        for x, y in zip(X, Y):
            lo, hi = np.percentile(x, [1, 99.8])
            xt = torch.from_numpy(((x - lo) / (hi - lo)).astype(np.float32))[None, None]
            p, d = model.targets(y)
            total += float(model.loss(model(xt), torch.from_numpy(p)[None, None], torch.from_numpy(d)[None])[0])
    return total / len(X)


def test_training_lowers_the_loss(nuclei):
    X, Y = nuclei
    model = make_model()
    before = _loss_on(model, X[4:], Y[4:])
    h = fit(model, X[:4], Y[:4], (X[4:], Y[4:]), epochs=4, steps_per_epoch=8, batch_size=4, patch_size=32,
            learning_rate=3e-3, progress=False)
    after = _loss_on(model, X[4:], Y[4:])
    assert after < 0.85 * before
    assert h["loss"][-1] < h["loss"][0]
    assert len(h["epoch"]) == 4 and all(np.isfinite(h["val_loss"]))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights(nuclei):
    X, Y = nuclei
    runs = []
    for seed in (3, 3, 4):
        model = make_model(seed=0)
        fit(model, X[:4], Y[:4], (X[4:], Y[4:]), seed=seed, **SMALL)
        runs.append(_state(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_out_dir_best_checkpoint_and_curves(nuclei, tmp_path):
    X, Y = nuclei
    model = make_model()
    h = fit(model, X[:4], Y[:4], (X[4:], Y[4:]), epochs=3, steps_per_epoch=4, batch_size=2, patch_size=32,
            out_dir=tmp_path / "run", progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"history.json", "history.png", "config.json", "weights.pt", "thresholds.json"} <= files
    assert (tmp_path / "run" / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["val_f1"] == h["val_f1"] and saved["best_epoch"] == h["best_epoch"]
    # the best epoch has the highest F1, ties broken by the lowest validation loss
    keys = [(f, -v) for f, v in zip(h["val_f1"], h["val_loss"])]
    assert h["best_epoch"] == 1 + max(range(len(keys)), key=lambda i: (keys[i], -i))
    # the model ends with the best weights and the optimised thresholds, and that is what was saved
    loaded = StarDist2D.load(tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert loaded.thresholds == model.thresholds == {k: h["thresholds"][k] for k in ("prob", "nms")}
    assert set(model.thresholds) == {"prob", "nms"}


def test_max_time_stops_after_an_epoch(nuclei):
    X, Y = nuclei
    h = fit(make_model(), X[:4], Y[:4], (X[4:], Y[4:]), max_time=0, **{**SMALL, "epochs": 5})
    assert h["epoch"] == [1] and h["stopped_early"] and h["best_epoch"] == 1


def test_files_train_like_arrays(nuclei, tmp_path, monkeypatch):
    X, Y = nuclei
    px, py = [], []
    for i in range(4):
        px.append(tmp_path / f"x{i}.tif")
        py.append(tmp_path / f"y{i}.tif")
        tifffile.imwrite(px[-1], X[i])
        tifffile.imwrite(py[-1], Y[i])
    loads = []
    real = tdata.read_array
    monkeypatch.setattr(tdata, "read_array", lambda p: loads.append(p) or real(p))
    a, b = make_model(), make_model()
    fit(a, X[:4], Y[:4], None, cache_size=2, **SMALL)
    assert loads == []
    fit(b, px, py, None, cache_size=2, **SMALL)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))
    # one check pass (8 files), then about one read per file per epoch: 2 epochs walk 2 groups of 2 pairs
    assert 8 < len(loads) <= 8 + 2 * 8


def test_bad_input_is_named(nuclei, tmp_path):
    X, Y = nuclei
    m = make_model()
    with pytest.raises(ValueError, match=r"patch_size: \(96, 96\) is larger than training image X\[0\]"):
        fit(m, X[:2], Y[:2], **{**SMALL, "patch_size": 96})
    with pytest.raises(ValueError, match="patch_size.*multiple of the model's downsampling factor"):
        fit(m, X[:2], Y[:2], **{**SMALL, "patch_size": 31})
    with pytest.raises(ValueError, match="X: empty training set"):
        fit(m, [], [], **SMALL)
    with pytest.raises(ValueError, match=r"Y\[1\]: mask shape"):
        fit(m, X[:2], [Y[0], Y[1][:40]], **SMALL)
    with pytest.raises(TypeError, match=r"Y\[0\]: masks must be integer"):
        fit(m, X[:1], [Y[0].astype(np.float64)], **SMALL)
    nan = X[0].copy()
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"X\[0\]: image contains NaN"):
        fit(m, [nan], Y[:1], **SMALL)
    with pytest.raises(FileNotFoundError, match=r"X\[0\]: no such file"):
        fit(m, [str(tmp_path / "nope.tif")], Y[:1], **SMALL)
    with pytest.raises(TypeError, match=r"Y_val\[0\]: masks must be integer"):
        fit(m, X[:1], Y[:1], ([X[1]], [Y[1].astype(np.float32)]), **SMALL)
    with pytest.raises(ValueError, match="validation_data: expected a pair"):
        fit(m, X[:1], Y[:1], [X[1]], **SMALL)
    with pytest.raises(TypeError, match="augment"):
        fit(m, X[:1], Y[:1], augment="yes", **SMALL)
    for name in ("epochs", "steps_per_epoch", "batch_size"):
        with pytest.raises(ValueError, match=name):
            fit(m, X[:1], Y[:1], **{**SMALL, name: 0})
    with pytest.raises(ValueError, match="seed"):
        fit(m, X[:1], Y[:1], seed=-1, **SMALL)


DDP_SCRIPT = """
import os, sys, numpy as np, torch
sys.path.insert(0, {tests!r})
from conftest import make_model
from cellkern.train import fit
d = np.load({data!r})
X, Y = [d["x%d" % i] for i in range(6)], [d["y%d" % i] for i in range(6)]
model = make_model()
h = fit(model, X[:4], Y[:4], (X[4:], Y[4:]), epochs=2, steps_per_epoch=3, batch_size=1, patch_size=32, seed=5,
        learning_rate=1e-3, progress=False, optimize_thresholds=False)
torch.save({{"state": model.state_dict(), "history": h}}, {out!r} + "/rank%s.pt" % os.environ["RANK"])
"""


def _reference_two_ranks(X, Y, X_val, Y_val, epochs, steps, seed, lr):
    """What DDP over two processes with one patch each must compute, in one process: every step averages the
    gradients of the two ranks' patches (patches k = 0 and 1 of the global batch) and takes one Adam step; after
    each epoch the whole validation set is evaluated. Returns the weights and (val loss, F1) after each epoch."""
    from cellkern.star import matching

    model = make_model()
    data = PairedImages(X, Y, 2)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    params = list(model.parameters())
    states, val = [], []
    for epoch in range(epochs):
        model.train()
        windows = _windows(len(data), data.cache_size, seed, epoch)
        for step in range(steps):
            grads = []
            for k in range(2):
                x, p, d = _batch(model, data, Augmentation(), (32, 32), 0.9, seed, epoch, step, [k],
                                 windows[step * len(windows) // steps], torch.device("cpu"))
                grads.append(torch.autograd.grad(model.loss(model(x), p, d)[0], params))
            for q, g0, g1 in zip(params, *grads):
                q.grad = (g0 + g1) / 2
            opt.step()
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        losses, counts = [], np.zeros(3)
        with torch.no_grad():
            for x, y in zip(X_val, Y_val):
                lo, hi = np.percentile(x, [1, 99.8])
                xn = ((x - lo) / (hi - lo)).astype(np.float32)
                p, d = model.targets(y)
                out = model(torch.from_numpy(xn)[None, None])
                losses.append(float(model.loss(out, torch.from_numpy(p)[None, None], torch.from_numpy(d)[None])[0]))
                m = matching(y, model.predict_instances(x)[0], 0.5)
                counts += m.tp, m.fp, m.fn
        tp, fp, fn = counts
        val.append((np.mean(losses), 2 * tp / (2 * tp + fp + fn) if tp else 0.0))
    return states, val


def test_ddp_two_processes(nuclei, tmp_path):
    X, Y = nuclei
    np.savez(tmp_path / "data.npz", **{f"x{i}": x for i, x in enumerate(X)}, **{f"y{i}": y for i, y in enumerate(Y)})
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), data=str(tmp_path / "data.npz"),
                                        out=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                        str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt") for i in range(2))
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert {k: v for k, v in r0["history"].items() if k != "time"} == \
        {k: v for k, v in r1["history"].items() if k != "time"}
    states, val = _reference_two_ranks(X[:4], Y[:4], X[4:], Y[4:], epochs=2, steps=3, seed=5, lr=1e-3)
    for k, v in states[r0["history"]["best_epoch"] - 1].items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-4, atol=1e-5)
    # each rank validated one image; the summed counts and losses equal validating both in one process
    np.testing.assert_allclose(r0["history"]["val_loss"], [v[0] for v in val], rtol=1e-4)
    np.testing.assert_allclose(r0["history"]["val_f1"], [v[1] for v in val], atol=1e-12)


def test_fit_3d():
    from cellkern.data import synthetic_nuclei
    from cellkern.models import StarDist3D

    data = [synthetic_nuclei((16, 32, 32), 5, seed=s, radius=(3, 5)) for s in range(3)]
    torch.manual_seed(0)
    model = StarDist3D(n_rays=16, grid=(1, 2, 2), unet_depth=1, unet_base_channels=4, net_conv_after_unet=0)
    h = fit(model, [d[0] for d in data[:2]], [d[1] for d in data[:2]], ([data[2][0]], [data[2][1]]), epochs=2,
            steps_per_epoch=2, batch_size=2, patch_size=(8, 16, 16), progress=False, optimize_thresholds=False)
    assert len(h["epoch"]) == 2 and np.isfinite(h["loss"]).all() and np.isfinite(h["val_loss"]).all()
    assert 0 <= h["val_f1"][-1] <= 1
