"""Tests of the command line: train / segment / evaluate round trip on tiny data, the quick demo, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from cellkern.cli import main
from cellkern.data import synthetic_nuclei
from cellkern.models import StarDist2D

TINY = ["--n-rays", "8", "--grid", "2", "--unet-depth", "1", "--unet-base-channels", "8", "--net-conv-after-unet",
        "0", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "2", "--patch-size", "32"]


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        x, y = synthetic_nuclei((64, 64), 8, seed=i, radius=(4, 7))
        tifffile.imwrite(tmp_path / "images" / f"n{i}.tif", x)
        tifffile.imwrite(tmp_path / "masks" / f"n{i}.tif", y)
    return tmp_path


def test_train_segment_evaluate_round_trip(folders, capsys):
    out = folders / "model"
    main(["train", str(folders / "images"), str(folders / "masks"), "--out", str(out), *TINY])
    text = capsys.readouterr().out
    assert "trained 2 epochs" in text and "model saved" in text
    assert {"config.json", "weights.pt", "thresholds.json", "history.json", "history.png"} <= {
        p.name for p in out.iterdir()}
    history = json.loads((out / "history.json").read_text())
    assert len(history["epoch"]) == 2
    main(["segment", str(folders / "images" / "n0.tif"), "--model", str(out), "--out", str(folders / "labels.tif"),
          "--png", str(folders / "labels.png")])
    labels = tifffile.imread(folders / "labels.tif")
    model = StarDist2D.load(out)
    expect, _ = model.predict_instances(tifffile.imread(folders / "images" / "n0.tif"))
    np.testing.assert_array_equal(labels, expect)
    assert labels.dtype == np.int32 and labels.shape == (64, 64)
    assert (folders / "labels.png").read_bytes()[:4] == b"\x89PNG"
    main(["evaluate", str(folders / "images"), str(folders / "masks"), "--model", str(out)])
    assert "4 images" in capsys.readouterr().out


def test_train_synthetic(tmp_path, capsys):
    main(["train", "--synthetic", "2", "--synthetic-size", "64", "--val-synthetic", "1", "--out",
          str(tmp_path / "m"), *TINY])
    assert "model saved" in capsys.readouterr().out
    main(["evaluate", "--synthetic", "1", "--size", "64", "--objects", "6", "--model", str(tmp_path / "m")])
    assert "F1" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["train", "missing_images", "masks", "--out", "o"], "images: no such file or folder"),
    (["train", "--out", "o"], "images, masks: give both image and mask files"),
    (["segment", "nope.tif", "--model", "nomodel", "--out", "l.tif"], "directory: nomodel does not exist"),
])
def test_bad_input_is_one_clear_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_training_data_is_named(folders, capsys):
    (folders / "masks" / "n3.tif").rename(folders / "masks" / "other.tif")
    with pytest.raises(SystemExit):
        main(["train", str(folders / "images"), str(folders / "masks"), "--out", str(folders / "m"), *TINY])
    assert "no mask for ['n3.tif']" in capsys.readouterr().err
    (folders / "masks" / "other.tif").rename(folders / "masks" / "n3.tif")
    with pytest.raises(SystemExit):
        main(["train", str(folders / "images"), str(folders / "masks"), "--out", str(folders / "m"), *TINY[:-2],
              "--patch-size", "128"])
    assert "patch_size: (128, 128) is larger than training image" in capsys.readouterr().err
    tifffile.imwrite(folders / "masks" / "n1.tif", np.zeros((64, 64), np.float32))
    with pytest.raises(SystemExit):
        main(["train", str(folders / "images"), str(folders / "masks"), "--out", str(folders / "m"), *TINY])
    assert "masks must be integer label images" in capsys.readouterr().err


def test_quick_demo(tmp_path, capsys):
    main(["demo", "--quick", "--out", str(tmp_path / "demo.png"), "--no-progress"])
    text = capsys.readouterr().out
    assert "F1" in text and "AP" in text
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "cellkern", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "cellkern" in r.stdout and "cuda:" in r.stdout


@pytest.mark.parametrize("suffix_in,suffix_out", [(".tif", ".zarr"), (".npy", ".tif"), (".zarr", ".npy")])
def test_predict_big_image(tmp_path, capsys, suffix_in, suffix_out):
    """`cellkern predict`: block by block, from and to each format, the labels of segmenting the image whole."""
    zarr = pytest.importorskip("zarr")
    import torch

    torch.manual_seed(0)
    model = StarDist2D(n_rays=8, grid=(2, 2), unet_depth=2, unet_base_channels=8, net_conv_after_unet=16)
    with torch.no_grad():
        model.dist.bias.fill_(12.0)
        model.prob.weight.mul_(100)
    image, _ = synthetic_nuclei((300, 280), 30, seed=3)
    prob, _ = model.predict(image)
    model.thresholds = {"prob": float(np.percentile(prob, 80)), "nms": 0.4}
    model.save(tmp_path / "model")
    src, dst = tmp_path / ("in" + suffix_in), tmp_path / ("labels" + suffix_out)
    if suffix_in == ".tif":
        tifffile.imwrite(src, image)
    elif suffix_in == ".npy":
        np.save(src, image)
    else:
        zarr.create_array(src, shape=image.shape, chunks=(100, 100), dtype=image.dtype)[:] = image
    main(["predict", str(src), "--model", str(tmp_path / "model"), "--out", str(dst), "--block-size", "128",
          "--no-progress"])
    text = capsys.readouterr().out
    got = {".tif": tifffile.imread, ".npy": np.load, ".zarr": lambda p: zarr.open_array(p, mode="r")[:]}[suffix_out](dst)
    expect, _ = model.predict_instances(image)
    assert expect.max() > 10
    np.testing.assert_array_equal(got, expect)
    assert f"{expect.max()} objects" in text and "9 blocks of 128x128" in text and "peak memory" in text
    assert not (tmp_path / ("labels" + suffix_out + ".run.zarr")).exists()  # the intermediate store is removed


def test_predict_bad_input(tmp_path, capsys):
    StarDist2D(n_rays=8, grid=(2, 2), unet_depth=1, unet_base_channels=8, net_conv_after_unet=0).save(tmp_path / "m")
    np.save(tmp_path / "x.npy", np.zeros((64, 64), np.float32))
    for argv, message in ((["predict", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.png")], "OUT: expected"),
                          (["predict", str(tmp_path / "nope.npy"), "--out", str(tmp_path / "y.npy")], "no such file"),
                          (["predict", str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy"), "--block-size",
                            "30"], "multiple")):
        with pytest.raises(SystemExit):
            main(argv + ["--model", str(tmp_path / "m")])
        assert message in capsys.readouterr().err
