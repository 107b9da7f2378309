"""The training loop of cellkern's StarDist models: a plain PyTorch loop (Adam, plateau schedule, validation every
epoch, best checkpoint, threshold optimisation), deterministic with a seed, DDP-ready (torchrun, gloo on CPU)."""
from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..star import matching
from .augment import Augmentation
from .data import PairedImages, as_size

__all__ = ["fit", "plot_history"]


def _config(model, name, default):
    return getattr(getattr(model, "config", None), name, default)


def _distributed(device):
    """(torch.distributed or None, rank, world size, whether this call initialised it). Under torchrun
    (WORLD_SIZE > 1 in the environment) the process group is created here: gloo for a CPU model, nccl for CUDA."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist, dist.get_rank(), dist.get_world_size(), True
    return None, 0, 1, False


def _windows(n_images, cache_size, seed, epoch):
    """Groups of images that fit the data cache, in a fresh random order every epoch: the steps of an epoch walk
    through the groups so lazily loaded files are read about once per epoch instead of once per patch."""
    order = np.random.default_rng([seed, epoch, 1]).permutation(n_images)
    return [order[i:i + cache_size] for i in range(0, n_images, cache_size)]


def _batch(model, data, augmentation, patch_size, foreground_prob, seed, epoch, step, indices, window, device):
    """The patches ``indices`` of the global batch of (epoch, step): each patch has its own random stream, so a
    patch is the same whichever process (under DDP) or batch size draws it."""
    xs, probs, dists = [], [], []
    for k in indices:
        rng = np.random.default_rng([seed, epoch, step, k])
        i = int(window[rng.integers(len(window))])
        image, labels, fg = data.get(i)
        x, y = augmentation.patch(image, labels, fg, patch_size, rng, foreground_prob)
        p, d = model.targets(y)
        xs.append(np.moveaxis(x, -1, 0))
        probs.append(np.asarray(p)[None])
        dists.append(np.asarray(d))
    return tuple(torch.from_numpy(np.stack(a)).to(device) for a in (xs, probs, dists))


def _crop_to_factor(shape, factor, limit):
    """The central crop of ``shape`` (at most ``limit`` per axis) whose sizes are multiples of ``factor``."""
    size = [min(s, limit) // f * f for s, f in zip(shape, factor)]
    return tuple(slice((s - n) // 2, (s - n) // 2 + n) for s, n in zip(shape, size)), min(size) > 0


@torch.no_grad()
def _validate(model, val, indices, device, loss_crop):
    """Sums over the validation images ``indices``: loss (on a central crop of at most ``loss_crop`` pixels per
    axis), number of images with a loss, and the IoU-0.5 matching counts of predict_instances' labels."""
    model.eval()
    sums = np.zeros(5)  # loss, n, tp, fp, fn
    factor = tuple(model.downsampling_factor)
    for i in indices:
        image, labels, _ = val.get(int(i))
        sl, ok = _crop_to_factor(labels.shape, factor, loss_crop)
        if ok:
            x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image[sl], -1, 0)))[None].to(device)
            p, d = model.targets(np.ascontiguousarray(labels[sl]))
            pt = torch.from_numpy(np.asarray(p))[None, None].to(device)
            dt = torch.from_numpy(np.asarray(d))[None].to(device)
            loss, _ = model.loss(model(x), pt, dt)
            sums[:2] += float(loss), 1
        img = image[..., 0] if image.shape[-1] == 1 else image
        pred, _ = model.predict_instances(img, normalize=False)
        m = matching(labels, pred, thresh=0.5)
        sums[2:] += m.tp, m.fp, m.fn
    return sums


def _metrics(sums):
    loss, n, tp, fp, fn = (float(v) for v in sums)
    return {"val_loss": loss / n if n else math.nan,
            "val_f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
            "val_ap": tp / (tp + fp + fn) if tp else 0.0}


def _allreduce(dist, array, device):
    """The sum over processes (on the model's device: nccl only reduces CUDA tensors)."""
    if dist is None:
        return array
    t = torch.from_numpy(np.asarray(array, np.float64).copy()).to(device)
    dist.all_reduce(t)
    return t.cpu().numpy()


def plot_history(history, path):
    """Writes the training curves (loss, validation loss, validation F1 / AP at IoU 0.5 per epoch) to a PNG."""
    from .._optional import require

    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "plot_history").FigureCanvasAgg
    Figure = require("matplotlib.figure", "plot_history").Figure

    fig = Figure(figsize=(9, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ep = history["epoch"]
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(ep, history["loss"], label="train loss")
    if any(np.isfinite(history["val_loss"])):
        ax.plot(ep, history["val_loss"], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_yscale("log")
    ax.legend()
    ax = fig.add_subplot(1, 2, 2)
    ax.plot(ep, history["val_f1"], label="F1 @ IoU 0.5")
    ax.plot(ep, history["val_ap"], label="AP @ IoU 0.5")
    if history.get("best_epoch"):
        ax.axvline(history["best_epoch"], color="0.6", linestyle=":", label="kept (best) epoch")
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(str(path))


def fit(model, X, Y, validation_data=None, *, epochs=None, steps_per_epoch=None, batch_size=None, patch_size=None,
        learning_rate=None, seed=0, out_dir=None, augment=True, foreground_prob=None, reduce_lr=None,
        optimize_thresholds=True, max_time=None, cache_size=None, val_loss_crop=1024, progress=True):
    """Trains a StarDist model (``cellkern.models.StarDist2D/3D``) on images ``X`` and label masks ``Y``.

    Data: ``X``, ``Y`` (and ``validation_data=(X_val, Y_val)``) are equal-length sequences of numpy arrays or file
    paths (TIFF or .npy), read on demand into a cache of ``cache_size`` pairs (default: everything for arrays, 16
    for files): they are never all loaded at once. Every pair is read and checked once before training (shapes,
    integer masks, finite images). Images are normalised once per load with the model's percentiles
    (``config.norm_pmin/norm_pmax``, default 1 / 99.8).

    Each step draws ``batch_size`` random patches of ``patch_size`` (a multiple of ``model.downsampling_factor``),
    a fraction ``foreground_prob`` (default ``config.train_foreground_only``, 0.9) of them around a random
    foreground pixel, augments them (``augment``: True for
    :class:`Augmentation`'s defaults, False for plain crops, or an :class:`Augmentation`), computes the targets
    with ``model.targets`` and takes an Adam step on ``model.loss``. After every epoch the validation images are
    segmented with ``model.predict_instances`` and matched with the ground truth (F1 and AP = tp / (tp + fp + fn)
    at IoU 0.5); ``ReduceLROnPlateau`` (``reduce_lr`` = dict(factor, patience, min_lr), defaults
    ``config.train_reduce_lr_factor`` / ``train_reduce_lr_patience``, StarDist's 0.5 / 40) watches the validation
    loss. The best epoch (highest F1, then lowest validation
    loss) is kept; at the end its weights are loaded back, ``prob``/``nms`` thresholds are chosen on the validation
    set (:func:`cellkern.train.optimize_thresholds`) and, with ``out_dir``, the model is saved there
    (``model.save``) with ``history.json`` and ``history.png``. ``max_time`` (seconds) stops after the epoch that
    passes it.

    Defaults of epochs, steps_per_epoch, batch_size, patch_size, learning_rate come from ``model.config.train_*``.

    Deterministic: the same seed, data and thread count give the same weights (the model's initial weights are
    the caller's). Under ``torchrun --nproc_per_node N`` (or an initialised ``torch.distributed``), the model is
    wrapped in DistributedDataParallel: every process trains on ``batch_size`` patches of a global batch of
    ``N * batch_size`` (the same patches a single process draws with that batch size), validation images are
    split between the processes and their counts summed, and only rank 0 writes files and shows progress. The
    process group is gloo for a CPU model and nccl for a CUDA one (move each rank's model to its own GPU,
    ``cuda:LOCAL_RANK``, before calling fit).

    Returns the history: per-epoch lists ``epoch, loss, loss_prob, loss_dist, val_loss, val_f1, val_ap, lr, time``
    and ``best_epoch``, ``thresholds``, ``stopped_early``.
    """
    from .._optional import require

    tqdm = require("tqdm.auto", "fit").tqdm
    if out_dir is not None:  # history.png is written at the end: a missing matplotlib must not cost the training
        require("matplotlib", "fit(out_dir=...) (its history.png)")

    nd = len(model.downsampling_factor)
    factor = tuple(int(f) for f in model.downsampling_factor)
    epochs = int(epochs if epochs is not None else _config(model, "train_epochs", 100))
    steps = int(steps_per_epoch if steps_per_epoch is not None else _config(model, "train_steps_per_epoch", 100))
    batch_size = int(batch_size if batch_size is not None else _config(model, "train_batch_size", 4))
    lr = float(learning_rate if learning_rate is not None else _config(model, "train_learning_rate", 3e-4))
    patch_size = as_size(patch_size if patch_size is not None else _config(model, "train_patch_size", 256), nd,
                         "patch_size")
    for name, v in (("epochs", epochs), ("steps_per_epoch", steps), ("batch_size", batch_size)):
        if v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning_rate: expected a positive number, got {lr}")
    if any(p % f for p, f in zip(patch_size, factor)):
        raise ValueError(f"patch_size: {patch_size} must be a multiple of the model's downsampling factor {factor}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if foreground_prob is None:
        foreground_prob = float(_config(model, "train_foreground_only", 0.9))
    if not 0 <= foreground_prob <= 1:
        raise ValueError(f"foreground_prob: expected a probability in [0, 1], got {foreground_prob}")
    if augment is True:
        augmentation = Augmentation()
    elif augment is False or augment is None:
        augmentation = Augmentation.none()
    elif isinstance(augment, Augmentation):
        augmentation = augment
    else:
        raise TypeError(f"augment: expected True, False or an Augmentation, got {type(augment).__name__}")

    n_channels = int(_config(model, "n_channel_in", 1))
    pmin, pmax = float(_config(model, "norm_pmin", 1.0)), float(_config(model, "norm_pmax", 99.8))
    device = next(model.parameters()).device
    dist, rank, world, own_group = _distributed(device)
    show = progress and rank == 0
    train = PairedImages(X, Y, nd, n_channels, pmin, pmax, cache_size).check(progress=show)
    for i, s in enumerate(train.shapes):
        if any(p > d for p, d in zip(patch_size, s)):
            raise ValueError(f"patch_size: {patch_size} is larger than training image X[{i}] of shape {s}")
    val = None
    if validation_data is not None:
        try:
            X_val, Y_val = validation_data
        except (TypeError, ValueError):
            raise ValueError("validation_data: expected a pair (X_val, Y_val)") from None
        val = PairedImages(X_val, Y_val, nd, n_channels, pmin, pmax, cache_size, names=("X_val", "Y_val"))
        val.check(progress=show)

    net = model
    if dist is not None:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rl = {"factor": _config(model, "train_reduce_lr_factor", 0.5), "min_lr": 0.0,
          "patience": _config(model, "train_reduce_lr_patience", 40), **(reduce_lr or {})}
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=rl["factor"], patience=rl["patience"],
                                                       min_lr=rl["min_lr"])
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    keys = ("epoch", "loss", "loss_prob", "loss_dist", "val_loss", "val_f1", "val_ap", "lr", "time")
    history = {k: [] for k in keys}
    best, best_key, best_state = None, None, None
    t0 = time.perf_counter()
    stopped_early = False
    f1_shown = math.nan
    for epoch in range(epochs):
        model.train()
        windows = _windows(len(train), train.cache_size, seed, epoch)
        sums = np.zeros(3)
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs}", disable=not show, leave=False)
        for step in bar:
            window = windows[step * len(windows) // steps]
            mine = range(rank * batch_size, (rank + 1) * batch_size)
            x, prob_t, dist_t = _batch(model, train, augmentation, patch_size, foreground_prob, seed, epoch, step,
                                       mine, window, device)
            loss, parts = model.loss(net(x), prob_t, dist_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += loss.item(), float(parts["prob"]), float(parts["dist"])
            bar.set_postfix(loss=f"{sums[0] / (step + 1):.4f}", f1=f"{f1_shown:.3f}")
        bar.close()
        sums = _allreduce(dist, sums, device) / (world * steps)
        metrics = {"val_loss": math.nan, "val_f1": math.nan, "val_ap": math.nan}
        if val is not None:
            counts = _validate(model, val, range(rank, len(val), world), device, val_loss_crop)
            metrics = _metrics(_allreduce(dist, counts, device))
        monitor = metrics["val_loss"] if math.isfinite(metrics["val_loss"]) else float(sums[0])
        sched.step(monitor)
        elapsed = time.perf_counter() - t0
        for k, v in zip(keys, (epoch + 1, *(float(s) for s in sums), metrics["val_loss"], metrics["val_f1"],
                               metrics["val_ap"], opt.param_groups[0]["lr"], elapsed)):
            history[k].append(v)
        f1_shown = metrics["val_f1"]
        key = (metrics["val_f1"] if val is not None else 0.0, -monitor)
        if best_key is None or key > best_key:
            best, best_key, best_state = epoch + 1, key, copy.deepcopy(model.state_dict())
            if out is not None and rank == 0:
                model.save(out)
        if show:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: loss {sums[0]:.4f} val_loss {metrics['val_loss']:.4f} "
                       f"F1 {metrics['val_f1']:.3f} AP {metrics['val_ap']:.3f} lr {opt.param_groups[0]['lr']:.2g} "
                       f"({elapsed:.0f} s){' *' if best == epoch + 1 else ''}")
        if max_time is not None and epoch + 1 < epochs:
            # every process must stop after the same epoch: rank 0's clock decides
            stop = torch.tensor([float(elapsed > max_time)], device=device)
            if dist is not None:
                dist.broadcast(stop, 0)
            if stop.item():
                stopped_early = True
                break

    model.load_state_dict(best_state)
    history.update(best_epoch=best, stopped_early=stopped_early)
    if val is not None and optimize_thresholds:
        from .thresholds import optimize_thresholds as _optimize

        result = [None]
        if rank == 0:
            found = _optimize(model, _Normalised(val, "image"), _Normalised(val, "labels"), normalize=False,
                              progress=show)
            result[0] = {"prob": found["prob"], "nms": found["nms"]}
        if dist is not None:
            dist.broadcast_object_list(result, 0)
        model.thresholds = dict(result[0])
    history["thresholds"] = dict(model.thresholds)
    if out is not None and rank == 0:
        model.save(out)
        (out / "history.json").write_text(json.dumps(history, indent=1))
        plot_history(history, out / "history.png")
    if dist is not None:
        dist.barrier()
        if own_group:
            dist.destroy_process_group()
    return history


class _Normalised:
    """A read-only sequence view of PairedImages: its normalised images (2D/3D, channel axis dropped when single)
    or its labels, loaded on access."""

    def __init__(self, data, what):
        self.data, self.what = data, what

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        image, labels, _ = self.data.get(i)
        if self.what == "labels":
            return labels
        return image[..., 0] if image.shape[-1] == 1 else image
