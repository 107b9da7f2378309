"""Saving and loading StarDist models: config.json + weights.pt (tensors only, no pickled code) + thresholds.json,
validated on load."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["save", "load", "CONFIG", "WEIGHTS", "THRESHOLDS"]

CONFIG, WEIGHTS, THRESHOLDS = "config.json", "weights.pt", "thresholds.json"
FORMAT, FORMAT_VERSION = "cellkern.stardist", 1


def _write(path: Path, write):
    """Write through a temporary file and rename, so a crash never leaves a half-written file behind."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj):
    _write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def _path(directory):
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory: expected a path (str or os.PathLike), got {type(directory).__name__}")
    return Path(directory)


def save(model, directory):
    """``model.save``: the config, the state_dict (CPU tensors) and the thresholds into ``directory``."""
    from .. import __version__

    d = _path(directory)
    if d.exists() and not d.is_dir():
        raise ValueError(f"directory: {d} exists and is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _write(d / WEIGHTS, lambda p: torch.save(state, p))
    _write_json(d / THRESHOLDS, dict(model.thresholds))
    _write_json(d / CONFIG, {"format": FORMAT, "format_version": FORMAT_VERSION, "model": type(model).__name__,
                             "cellkern_version": __version__, "config": model.config.to_dict()})


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (a saved model directory holds {CONFIG}, {WEIGHTS} and "
                                f"{THRESHOLDS})")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load(cls, directory, map_location="cpu"):
    """``cls.load``: the model saved in ``directory``, with its weights' dtype, on ``map_location``."""
    from .config import StarDistConfig

    d = _path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"directory: {d} does not exist or is not a directory")
    meta = _read_json(d / CONFIG)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{d / CONFIG}: not a cellkern StarDist config (expected \"format\": \"{FORMAT}\")")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{d / CONFIG}: format_version {meta.get('format_version')!r} is not supported "
                         f"(this cellkern reads {FORMAT_VERSION})")
    if meta.get("model") != cls.__name__:
        raise ValueError(f"{d / CONFIG}: holds a {meta.get('model')!r} model, not a {cls.__name__}")
    try:
        config = StarDistConfig.from_dict(meta.get("config"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{d / CONFIG}: invalid config: {e}") from None
    thresholds = _read_json(d / THRESHOLDS)
    model = cls(config)
    try:
        model.thresholds = thresholds
    except ValueError as e:
        raise ValueError(f"{d / THRESHOLDS}: {e}") from None
    model.load_state_dict(_read_weights(d / WEIGHTS, model))
    return model.to(map_location)


def _read_weights(path: Path, model):
    """The state_dict in ``path``, checked against ``model``'s names and shapes; ``model`` is converted to the
    saved floating dtype so the loaded model computes exactly what the saved one did."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (pickle errors, RuntimeError, EOFError...) for a bad file
        raise ValueError(f"{path}: cannot be read as a state_dict of tensors ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ValueError(f"{path}: expected a dict of tensors")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: does not match the config's network: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, the config's network needs "
                             f"{tuple(expected[k].shape)}")
        if v.dtype.is_floating_point != expected[k].dtype.is_floating_point:
            raise ValueError(f"{path}: {k} has dtype {v.dtype}, expected a {expected[k].dtype}-like tensor")
    dtypes = {v.dtype for v in state.values() if v.dtype.is_floating_point}
    if len(dtypes) > 1:
        raise ValueError(f"{path}: mixed floating dtypes {sorted(map(str, dtypes))}")
    if dtypes:
        model.to(dtypes.pop())
    return state
