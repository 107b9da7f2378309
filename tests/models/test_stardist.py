"""StarDist2D / StarDist3D: the network against a torch.nn rebuild with the same weights, the receptive field
against measured gradients, the loss against a plain formula, prediction, decoding back to the true objects,
save/load, and bad input to every entry point."""
import itertools
import json
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cellkern  # noqa: E402
from cellkern.data import synthetic_nuclei  # noqa: E402
from cellkern.data.normalize import normalize  # noqa: E402
from cellkern.models import StarDist2D, StarDist3D, StarDistConfig  # noqa: E402
from cellkern.reference import ReferenceStarDist, gradient_extents  # noqa: E402
from cellkern.star import matching  # noqa: E402

TINY = dict(unet_depth=1, unet_base_channels=2, unet_conv_per_level=1, net_conv_after_unet=3)


def _tiny(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(**{**TINY, "n_rays": 8 if cls is StarDist2D else 12, **kw})


@pytest.mark.parametrize("cls,grid,size", [(StarDist2D, (2, 2), (16, 24)), (StarDist2D, (1, 4), (8, 32)),
                                           (StarDist3D, (1, 2, 2), (4, 8, 12))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("upsample,features", [("transposed", 3), ("nearest", 0)])
def test_network_matches_torch_rebuild(cls, grid, size, dtype, upsample, features):
    model = _tiny(cls, grid=grid, unet_conv_per_level=2, unet_upsample=upsample,
                  net_conv_after_unet=features).to(dtype)
    ref = ReferenceStarDist(model.config).to(dtype)
    ref.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn((2, 1) + size, dtype=dtype, generator=torch.Generator().manual_seed(1))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    outs_a, outs_b = model(xa), ref(xb)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for a, b in zip(outs_a, outs_b):
        a, b = a.detach(), b.detach()
        assert a.shape == b.shape and a.shape[2:] == tuple(s // g for s, g in zip(size, grid))
        assert float((a - b).abs().max()) <= tol * float(b.abs().max())
    loss_a = sum((o * o).sum() for o in outs_a)
    loss_b = sum((o * o).sum() for o in outs_b)
    ga = torch.autograd.grad(loss_a, [xa] + list(model.parameters()))
    gb = torch.autograd.grad(loss_b, [xb] + list(ref.parameters()))
    for a, b in zip(ga, gb):
        assert float((a - b).abs().max()) <= tol * max(float(b.abs().max()), 1e-30)


@pytest.mark.parametrize("cls,grid,size", [(StarDist2D, (2, 2), 64), (StarDist2D, (1, 2), 48),
                                           (StarDist3D, (2, 1, 2), 32)])
def test_receptive_field_matches_measured_gradients(cls, grid, size):
    model = _tiny(cls, grid=grid, unet_activation="leaky_relu").double()
    f = model.downsampling_factor
    assert f == tuple(2 * g for g in grid)
    cells = list(itertools.product(*(range(v // g) for v, g in zip(f, grid))))
    assert all(size // 2 // g % (v // g) == 0 for v, g in zip(f, grid))  # the centre cell has phase 0
    measured = gradient_extents(model, 1, model.ndim, size, cells, grid=grid)
    for c, ext in measured.items():
        for d, g in enumerate(grid):
            lo, hi = model.input_interval(c[d], c[d], d)
            assert (lo - c[d] * g, hi - c[d] * g) == ext[d], (c, d)
    rf = model.receptive_field()
    for d in range(model.ndim):
        assert rf.left[d] == max(-e[d][0] for e in measured.values())
        assert rf.right[d] == max(e[d][1] for e in measured.values())


def _loss_formula(logit, dist, p, d, weights, reg):
    """StarDist's loss written out: BCE of sigmoid(logit); (sum over pixels of the mean over rays of
    p |d - dist|) / n_pixels / (mean p + 1e-7) + reg * the same mean of (1 - p) |dist|."""
    prob = torch.sigmoid(logit)
    bce = -(p * torch.log(prob) + (1 - p) * torch.log1p(-prob)).sum() / p.numel()
    n_pix, n_rays = p.numel(), d.shape[1]
    fg = sum((p[:, 0] * (d[:, r] - dist[:, r]).abs()).sum() for r in range(n_rays)) / n_rays / n_pix
    bg = sum(((1 - p[:, 0]) * dist[:, r].abs()).sum() for r in range(n_rays)) / n_rays / n_pix
    dl = fg / (p.sum() / n_pix + 1e-7) + reg * bg
    return weights[0] * bce + weights[1] * dl, bce, dl


@pytest.mark.parametrize("weights,reg", [((1.0, 0.2), 1e-4), ((0.5, 2.0), 0.0), ((1.0, 1.0), 0.3)])
def test_loss_matches_formula(weights, reg):
    model = _tiny(StarDist2D, grid=(2, 2), train_loss_weights=weights, train_background_reg=reg).double()
    _, lab = synthetic_nuclei((32, 40), 5, seed=3)
    p, d = model.targets(lab)
    pt, dt = torch.from_numpy(p)[None, None].double(), torch.from_numpy(d)[None].double()
    out = model(torch.randn(1, 1, 32, 40, dtype=torch.float64))
    total, parts = model.loss(out, pt, dt)
    want, bce, dl = _loss_formula(out[0], out[1], pt, dt, weights, reg)
    assert abs(float(total.detach()) - float(want.detach())) <= 1e-12 * abs(float(want.detach()))
    assert parts["prob"] == pytest.approx(float(bce.detach()), rel=1e-12)
    assert parts["dist"] == pytest.approx(float(dl.detach()), rel=1e-12)
    total.backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in model.parameters())


def test_predict_shapes_padding_and_normalisation():
    model = _tiny(StarDist2D, grid=(2, 2))
    img = np.random.default_rng(0).random((37, 50)).astype(np.float32) * 300
    prob, dist = model.predict(img, normalize=False)
    assert prob.shape == (19, 25) and dist.shape == (19, 25, 8) and prob.dtype == dist.dtype == np.float32
    # the image is reflect-padded at the end to multiples of 4: the same as predicting the padded image
    padded = np.pad(img, ((0, 3), (0, 2)), mode="reflect")
    p2, d2 = model.predict(padded, normalize=False)
    np.testing.assert_array_equal(prob, p2[:19, :25])
    np.testing.assert_array_equal(dist, d2[:19, :25])
    # the network's outputs: sigmoid of the logit, distances clipped at 1e-3
    with torch.no_grad():
        logit, raw = model(torch.from_numpy(padded)[None, None])
    np.testing.assert_allclose(p2, torch.sigmoid(logit)[0, 0].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(d2, np.maximum(np.moveaxis(raw[0].numpy(), 0, -1), np.float32(1e-3)))
    p3, _ = model.predict(img)  # normalize=True: the config's percentiles first
    np.testing.assert_array_equal(p3, model.predict(normalize(img, 1.0, 99.8), normalize=False)[0])
    model.train()
    model.predict(img)
    assert model.training


def test_predict_multichannel_normalises_each_channel():
    model = _tiny(StarDist2D, n_channel_in=2)
    rng = np.random.default_rng(1)
    img = np.stack([rng.random((16, 12)), 1000 * rng.random((16, 12))], -1)
    per_channel = np.stack([normalize(img[..., c], 1.0, 99.8) for c in range(2)], -1)
    np.testing.assert_array_equal(model.predict(img)[0], model.predict(per_channel, normalize=False)[0])


def _oracle_forward(model, lab, monkeypatch):
    """Make the network output the true targets of ``lab`` (probability as a logit)."""
    prob, dist = model.targets(lab)
    p = torch.from_numpy(prob).double().clamp(1e-6, 1 - 1e-6)

    def forward(x):
        assert x.shape[2:] == lab.shape
        return torch.log(p / (1 - p))[None, None].to(x.dtype), torch.from_numpy(dist)[None].to(x.dtype)

    monkeypatch.setattr(model, "forward", forward)


@pytest.mark.parametrize("grid", [(1, 1), (2, 2)])
def test_predict_instances_recovers_the_objects_2d(grid, monkeypatch):
    img, lab = synthetic_nuclei((96, 112), 18, seed=7, touching=0.3)
    model = _tiny(StarDist2D, grid=grid, n_rays=32)
    _oracle_forward(model, lab, monkeypatch)
    labels, details = model.predict_instances(img)
    assert labels.shape == lab.shape and labels.dtype == np.int32
    m = matching(lab, labels, thresh=0.5)
    assert m.f1 >= 0.95, m
    assert len(details["points"]) == len(details["prob"]) == len(details["dist"]) == labels.max()
    assert np.all(np.diff(details["prob"]) <= 0) and np.all(details["points"] % np.array(grid) == 0)
    assert details["prob"].min() > 0.5
    # thresholds: the model's defaults, overridden per call
    model.thresholds = {"prob": 0.9, "nms": 0.4}
    _, strict = model.predict_instances(img)
    assert strict["prob"].min() > 0.9
    _, loose = model.predict_instances(img, prob_thresh=0.5)
    assert len(loose["prob"]) == len(details["prob"])
    # the decoding step alone, on predict's output
    again, _ = model.instances_from_prediction(*model.predict(img), shape=img.shape, prob_thresh=0.5)
    np.testing.assert_array_equal(again, labels)


def test_predict_instances_recovers_the_objects_3d(monkeypatch):
    img, lab = synthetic_nuclei((12, 24, 24), 6, seed=8, radius=(3.5, 6), touching=0.3)
    # away from the border, where candidates are not taken (2 grid cells, StarDist's b=2)
    img, lab = np.pad(img, ((2, 2), (4, 4), (4, 4))), np.pad(lab, ((2, 2), (4, 4), (4, 4)))
    model = _tiny(StarDist3D, grid=(1, 2, 2), n_rays=48)
    _oracle_forward(model, lab, monkeypatch)
    labels, details = model.predict_instances(img)
    m = matching(lab, labels, thresh=0.5)
    assert m.f1 >= 0.9, m
    assert details["points"].shape == (len(details["prob"]), 3) and details["dist"].shape[1] == 48


@pytest.mark.parametrize("cls", [StarDist2D, StarDist3D])
def test_save_load_round_trip(cls, tmp_path):
    model = _tiny(cls, seed=4, unet_batch_norm=True, grid=(2,) * cls.ndim).double()
    x = torch.randn((3, 1) + (8,) * cls.ndim, dtype=torch.float64)
    model(x)  # moves the batch-norm statistics away from their initial values
    model.thresholds = {"prob": 0.61, "nms": 0.25}
    model.save(tmp_path / "m")
    loaded = cls.load(tmp_path / "m")
    assert loaded.config == model.config and loaded.thresholds == {"prob": 0.61, "nms": 0.25}
    assert next(loaded.parameters()).dtype == torch.float64
    for (ka, a), (kb, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    img = np.random.default_rng(2).random((12,) * cls.ndim).astype(np.float32)
    for a, b in zip(model.predict(img), loaded.predict(img)):
        np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"] == cls.__name__


def test_load_rejects_missing_corrupt_and_mismatched_directories(tmp_path):
    model = _tiny(StarDist2D)
    good = tmp_path / "good"
    model.save(good)

    def variant(name, change):
        d = tmp_path / name
        d.mkdir()
        for f in ("config.json", "weights.pt", "thresholds.json"):
            (d / f).write_bytes((good / f).read_bytes())
        change(d)
        return d

    with pytest.raises(FileNotFoundError, match="does not exist"):
        StarDist2D.load(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="directory"):
        StarDist2D.load(None)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        model.save(tmp_path / "a_file")
    for f in ("config.json", "weights.pt", "thresholds.json"):
        with pytest.raises(FileNotFoundError, match=f):
            StarDist2D.load(variant(f"no_{f}", lambda d: (d / f).unlink()))
    cfg = json.loads((good / "config.json").read_text())

    def write_config(**change):
        return lambda d: (d / "config.json").write_text(json.dumps({**cfg, **change}))

    cases = [
        ("bad_json", lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        ("format", write_config(format="something"), "not a cellkern StarDist config"),
        ("version", write_config(format_version=99), "format_version"),
        ("class", write_config(model="StarDist3D"), "not a StarDist2D"),
        ("field", write_config(config={**cfg["config"], "n_rays": -3}), "n_rays"),
        ("unknown", write_config(config={**cfg["config"], "colour": 1}), "colour"),
        ("rays", write_config(config={**cfg["config"], "n_rays": 9}), "dist.weight has shape"),
        ("depth", write_config(config={**cfg["config"], "unet_depth": 2}), "missing"),
        ("garbage", lambda d: (d / "weights.pt").write_bytes(b"\x00garbage" * 10), "cannot be read"),
        ("truncated", lambda d: (d / "weights.pt").write_bytes((good / "weights.pt").read_bytes()[:200]),
         "cannot be read"),
        ("code", lambda d: torch.save({"x": types.SimpleNamespace()}, d / "weights.pt"), "cannot be read"),
        ("not_tensors", lambda d: torch.save({"prob.weight": 3}, d / "weights.pt"), "dict of tensors"),
        ("thresholds", lambda d: (d / "thresholds.json").write_text('{"prob": 2, "nms": 0.4}'), "thresholds"),
    ]
    for name, change, match in cases:
        with pytest.raises(ValueError, match=match):
            StarDist2D.load(variant(name, change))
    with pytest.raises(ValueError, match="not a StarDist3D"):
        StarDist3D.load(good)


def test_config_defaults_round_trip_and_errors():
    c2, c3 = StarDistConfig(), StarDistConfig(ndim=3)
    # StarDist's Config2D / Config3D defaults
    assert (c2.n_rays, c2.grid, c2.unet_depth, c2.train_patch_size, c2.train_batch_size) == (
        32, (1, 1), 3, (256, 256), 4)
    assert (c3.n_rays, c3.grid, c3.unet_depth, c3.train_patch_size, c3.train_batch_size) == (
        96, (1, 1, 1), 2, (128, 128, 128), 1)
    assert (c2.train_loss_weights, c2.train_background_reg, c2.prob_thresh, c2.nms_thresh,
            c2.net_conv_after_unet, c2.train_learning_rate) == ((1.0, 0.2), 1e-4, 0.5, 0.4, 128, 3e-4)
    c = StarDistConfig(ndim=3, grid=[1, 2, 2], anisotropy=(2, 1, 1), unet_kernel_size=(1, 3, 3))
    assert StarDistConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.downsampling_factor == (4, 8, 8)


@pytest.mark.parametrize("field,value", [
    ("ndim", 4), ("n_rays", 2), ("n_rays", 3.5), ("grid", (3, 1)), ("grid", (1,)), ("grid", (0, 1)),
    ("anisotropy", (1, 2)), ("n_channel_in", 0), ("unet_depth", 0), ("unet_base_channels", 0),
    ("unet_conv_per_level", 0), ("unet_kernel_size", 2), ("unet_kernel_size", (3, 3, 3)),
    ("unet_activation", "tanh"), ("unet_batch_norm", 1), ("unet_upsample", "linear"),
    ("net_conv_after_unet", -1), ("train_loss_weights", (1.0,)), ("train_loss_weights", (1, -1)),
    ("train_background_reg", -1.0), ("norm_pmin", 101), ("norm_pmax", float("nan")), ("prob_thresh", 1.5),
    ("nms_thresh", -0.1), ("train_patch_size", (256,)), ("train_batch_size", 0), ("train_epochs", -1),
    ("train_steps_per_epoch", 0), ("train_learning_rate", float("inf")), ("train_foreground_only", 2),
    ("train_reduce_lr_factor", 1.5), ("train_reduce_lr_patience", -2), ("extra", [1]),
])
def test_config_rejects_bad_fields(field, value):
    with pytest.raises(ValueError, match=field):
        StarDistConfig(**{field: value})


def test_bad_input_to_models():
    model = _tiny(StarDist2D, grid=(2, 2))
    img = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match="config"):
        StarDist2D(StarDistConfig(ndim=3))
    with pytest.raises(TypeError, match="config"):
        StarDist2D(config="fast")
    with pytest.raises(ValueError, match="norm_pmin"):
        StarDist2D(norm_pmin=99.9)
    with pytest.raises(TypeError, match="image"):
        model.predict(img.tolist())
    with pytest.raises(TypeError, match="image"):
        model.predict(img > 0)
    with pytest.raises(ValueError, match="image"):
        model.predict(np.zeros((4, 16, 16), np.float32))
    with pytest.raises(ValueError, match="image"):
        model.predict(np.zeros((16, 16, 2), np.float32))
    with pytest.raises(ValueError, match="image: contains NaN"):
        model.predict(np.where(np.eye(16) > 0, np.nan, 0).astype(np.float32))
    with pytest.raises(ValueError, match="image"):
        model.predict_instances(np.zeros((0, 16), np.float32))
    with pytest.raises(ValueError, match="prob_thresh"):
        model.predict_instances(img, prob_thresh=1.5)
    with pytest.raises(ValueError, match="nms_thresh"):
        model.predict_instances(img, nms_thresh="0.3")
    with pytest.raises(ValueError, match="thresholds"):
        model.thresholds = {"prob": 0.5}
    with pytest.raises(ValueError, match="prob, dist"):
        model.instances_from_prediction(np.zeros((8, 8)), np.zeros((8, 8, 7)))
    with pytest.raises(ValueError, match="shape"):
        model.instances_from_prediction(np.zeros((8, 8)), np.zeros((8, 8, 8)), shape=(20, 16))
    with pytest.raises(TypeError, match="labels"):
        model.targets(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="labels"):
        model.targets(np.zeros((2, 8, 8), np.int32))
    with pytest.raises(ValueError, match="labels"):
        model.targets(-np.ones((8, 8), np.int32))
    with pytest.raises(ValueError, match="x: expected 1 channels"):
        model(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="multiples"):
        model(torch.zeros(1, 1, 8, 6))
    out = model(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="prob_t"):
        model.loss(out, torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match="dist_t"):
        model.loss(out, torch.zeros(1, 1, 4, 4), torch.zeros(1, 7, 4, 4))
    with pytest.raises(TypeError, match="dist_t"):
        model.loss(out, torch.zeros(1, 1, 4, 4), np.zeros((1, 8, 4, 4)))
    with pytest.raises(ValueError, match="outputs"):
        model.loss(out[0], torch.zeros(1, 1, 4, 4), torch.zeros(1, 8, 4, 4))


def test_fit_and_optimize_thresholds_delegate_to_train(monkeypatch):
    calls = []
    fake = types.ModuleType("cellkern.train")
    fake.fit = lambda model, X, Y, **kw: calls.append(("fit", model, X, Y, kw)) or {"loss": [1.0]}
    fake.optimize_thresholds = lambda model, X, Y, **kw: calls.append(("opt", model, X, Y, kw)) or {"prob": 0.3}
    monkeypatch.setitem(sys.modules, "cellkern.train", fake)
    monkeypatch.setattr(cellkern, "train", fake, raising=False)  # once imported, the package attribute wins
    model = _tiny(StarDist2D)
    assert model.fit("X", "Y", validation_data=("Xv", "Yv"), epochs=2) == {"loss": [1.0]}
    assert model.optimize_thresholds("Xv", "Yv", nms_threshs=[0.3]) == {"prob": 0.3}
    assert calls == [("fit", model, "X", "Y", {"validation_data": ("Xv", "Yv"), "epochs": 2}),
                     ("opt", model, "Xv", "Yv", {"nms_threshs": [0.3]})]
