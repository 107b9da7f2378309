"""A missing optional dependency fails up front with the pip command (the extra) that installs it."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from cellkern import _optional
from cellkern._optional import MissingDependency, require

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _missing(monkeypatch, *names):
    """Simulates uninstalled packages: a None entry in sys.modules makes every import of them fail."""
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("name, extra", [("matplotlib", "train"), ("matplotlib.figure", "train"), ("tqdm.auto", None),
                                         ("dask", "big"), ("distributed", "big"), ("zarr", "big"),
                                         ("tifffile", "train"), ("torch", "torch"), ("onnxruntime", "bench")])
def test_missing_module_names_the_extra(monkeypatch, name, extra):
    top = name.split(".")[0]
    _missing(monkeypatch, top)
    with pytest.raises(ImportError) as e:
        require(name, "this feature")
    assert isinstance(e.value, MissingDependency)
    text = str(e.value)
    assert text.startswith(f"this feature needs {top}, which is not installed: pip install ")
    if extra is None:
        assert f'pip install "{top}" (a dependency of cellkern)' in text
    else:
        assert f'pip install "cellkern[{extra}]"' in text
    if top == "torch":
        assert "torch==2.13.0" in text


def test_extra_override_and_present_module(monkeypatch):
    _missing(monkeypatch, "tifffile")
    with pytest.raises(ImportError, match=r'pip install "cellkern\[big\]"'):
        require("tifffile", "cellkern predict", extra="big")
    assert require("numpy", "x") is np


def test_broken_package_keeps_its_own_error(tmp_path, monkeypatch):
    # installed, but failing inside on a module of its own: not reported as "not installed"
    (tmp_path / "ck_broken_pkg.py").write_text("import ck_no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        require("ck_broken_pkg", "x")
    assert not isinstance(e.value, MissingDependency)
    assert e.value.name == "ck_no_such_module_xyz"


def test_torch_packages_say_which_extra(monkeypatch):
    _missing(monkeypatch, "torch")
    for pkg in ("cellkern.nn", "cellkern.models", "cellkern.train", "cellkern.predict"):
        for loaded in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        with pytest.raises(ImportError, match=r'pip install "cellkern\[torch\]"'):
            importlib.import_module(pkg)


def test_fit_checks_matplotlib_before_training(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from cellkern.data import synthetic_nuclei
    from cellkern.models import StarDist2D
    from cellkern.train import fit

    image, labels = synthetic_nuclei((64, 64), 3, seed=0)
    model = StarDist2D(n_rays=8, grid=(2, 2), unet_depth=1, unet_base_channels=4, net_conv_after_unet=0)
    _missing(monkeypatch, "matplotlib")
    with pytest.raises(ImportError, match=r"fit\(out_dir=\.\.\.\).*cellkern\[train\]"):
        fit(model, [image], [labels], epochs=1, steps_per_epoch=1, patch_size=32, out_dir=tmp_path / "m")
    assert not (tmp_path / "m").exists()  # nothing trained, nothing written


def test_cli_demo_says_what_to_install(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from cellkern import cli

    _missing(monkeypatch, "matplotlib")
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--quick", "--out", str(tmp_path / "d.png")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'cellkern demo: error: cellkern demo (its PNG) needs matplotlib' in err
    assert 'pip install "cellkern[train]"' in err


def test_bench_plot_is_checked_before_running(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    common = importlib.import_module("common")
    common.check_plot(False)  # no --plot: nothing asked for
    _missing(monkeypatch, "matplotlib")
    with pytest.raises(SystemExit, match=r'--plot needs matplotlib.*pip install "cellkern\[bench\]"'):
        common.check_plot(True)


def test_every_extra_named_exists():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for top, (package, extra) in _optional._EXTRAS.items():
        if extra is None:
            assert any(d.startswith(top) for d in project["dependencies"]), top
        else:
            assert any(d.split(">")[0].split("[")[0] == package.split("[")[0] for d in extras[extra]), (top, extra)
