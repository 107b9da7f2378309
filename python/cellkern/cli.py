"""`cellkern train | segment | predict | evaluate | demo | info`: the command-line entry points."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# the model `cellkern train` builds unless told otherwise: small enough to train on a laptop CPU in minutes
MODEL_DEFAULTS = dict(n_rays=32, grid=2, unet_depth=3, unet_base_channels=32, net_conv_after_unet=64)
TRAIN_DEFAULTS = dict(epochs=30, steps_per_epoch=25, batch_size=4, patch_size=128, learning_rate=1e-3)


def _files(path, name):
    """The image files of ``path`` (one file, or a folder's .tif/.tiff/.npy files sorted by name)."""
    from .train.data import IMAGE_SUFFIXES

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            raise ValueError(f"{name}: no {'/'.join(IMAGE_SUFFIXES)} files in folder {p}")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"{name}: no such file or folder: {p}")
    return [p]


def _pairs(images, masks, name="images"):
    """Image and mask files: folders are paired by file name, single files with each other."""
    mname = name.replace("images", "masks")
    if not (images and masks):
        hint = " (or --synthetic N)" if name == "images" else ""
        raise ValueError(f"{name}, {mname}: give both image and mask files or folders{hint}")
    xs, ys = _files(images, name), _files(masks, mname)
    if Path(images).is_dir() and Path(masks).is_dir():
        by_name = {f.stem: f for f in ys}
        missing = [f.name for f in xs if f.stem not in by_name]
        extra = sorted(set(by_name) - {f.stem for f in xs})
        if missing or extra:
            raise ValueError(f"{name}: images and masks must have the same file names; no mask for {missing[:5]}, "
                             f"no image for {extra[:5]}")
        ys = [by_name[f.stem] for f in xs]
    elif len(xs) != len(ys):
        raise ValueError(f"{name}: {len(xs)} images but {len(ys)} masks")
    return [str(f) for f in xs], [str(f) for f in ys]


def _need(*names, purpose, extra=None):
    from ._optional import check

    check(*names, purpose=purpose, extra=extra)


def _need_tiff(*paths, purpose, extra="train"):
    """tifffile, when any of ``paths`` is a TIFF file or a folder holding one."""
    def tiff(p):
        return p.suffix.lower() in (".tif", ".tiff")

    if any(p and (tiff(Path(p)) or Path(p).is_dir() and any(map(tiff, Path(p).iterdir()))) for p in paths):
        _need("tifffile", purpose=purpose, extra=extra)


def _set_threads(n):
    if n:
        import torch

        import cellkern

        torch.set_num_threads(n)
        cellkern.set_num_threads(n)


def _rank():
    return int(os.environ.get("RANK", "0"))


def _synthetic(n, size, seed, variety):
    from .data import synthetic_training_set

    return synthetic_training_set(n, (size, size), seed=seed, variety=variety)


def _train(args) -> None:
    import numpy as np

    from .models import StarDist2D
    from .train import Augmentation, fit

    _need("matplotlib", purpose="cellkern train (its history.png)")
    if not args.synthetic:
        _need_tiff(args.images, args.masks, args.val_images, args.val_masks, purpose="cellkern train (TIFF files)")
    _set_threads(args.threads)
    if args.synthetic:
        if args.images or args.masks:
            raise ValueError("images, masks: give either files/folders or --synthetic N, not both")
        X, Y = _synthetic(args.synthetic, args.synthetic_size, args.seed, args.variety)
        n_val = args.val_synthetic if args.val_synthetic is not None else max(2, args.synthetic // 8)
        val = _synthetic(n_val, args.synthetic_size, args.seed + 10_000, args.variety)
    else:
        X, Y = _pairs(args.images, args.masks)
        if args.val_images or args.val_masks:
            val = _pairs(args.val_images, args.val_masks, "val_images")
        elif len(X) >= 2 and args.val_fraction > 0:
            order = np.random.default_rng(args.seed).permutation(len(X))
            n_val = max(1, int(round(args.val_fraction * len(X))))
            v, t = sorted(order[:n_val]), sorted(order[n_val:])
            val = ([X[i] for i in v], [Y[i] for i in v])
            X, Y = [X[i] for i in t], [Y[i] for i in t]
        else:
            val = None
            print("no validation images: training without validation (thresholds stay at their defaults)")
    config = dict(n_rays=args.n_rays, grid=(args.grid, args.grid), unet_depth=args.unet_depth,
                  unet_base_channels=args.unet_base_channels, net_conv_after_unet=args.net_conv_after_unet)
    import torch

    torch.manual_seed(args.seed)
    model = StarDist2D(**config)
    augment = Augmentation(elastic=args.elastic) if args.augment else False
    t0 = time.perf_counter()
    history = fit(model, X, Y, val, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                  batch_size=args.batch_size, patch_size=args.patch_size, learning_rate=args.learning_rate,
                  seed=args.seed, out_dir=args.out, augment=augment, max_time=args.max_time,
                  cache_size=args.cache_images, reduce_lr={"patience": args.lr_patience})
    if _rank() == 0:
        best = history["best_epoch"] - 1
        print(f"trained {len(history['epoch'])} epochs in {time.perf_counter() - t0:.0f} s; best epoch "
              f"{best + 1}: F1 {history['val_f1'][best]:.3f}, AP {history['val_ap'][best]:.3f} at IoU 0.5; "
              f"thresholds {json.dumps(history['thresholds'])}; model saved in {args.out}")


def load_model(directory):
    """The StarDist2D or StarDist3D saved in ``directory`` (read from its config.json)."""
    from .models import StarDist2D, StarDist3D

    d = Path(directory)
    cls = StarDist2D
    try:
        if json.loads((d / "config.json").read_text()).get("model") == "StarDist3D":
            cls = StarDist3D
    except (OSError, ValueError, AttributeError):
        pass  # load() says what is wrong with the directory
    return cls.load(d)


def _segment(args) -> None:
    import numpy as np

    from .train import read_array

    if args.png:
        _need("matplotlib", purpose="cellkern segment --png")
    _need_tiff(args.image, args.out, purpose="cellkern segment (TIFF files)")
    _set_threads(args.threads)
    model = load_model(args.model)
    image = read_array(args.image)
    t0 = time.perf_counter()
    labels, _ = model.predict_instances(image, prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh)
    out = Path(args.out)
    if out.suffix.lower() == ".npy":
        np.save(out, labels)
    else:
        import tifffile

        tifffile.imwrite(out, labels, compression="zlib")
    print(f"{args.image}: {int(labels.max())} objects in {time.perf_counter() - t0:.2f} s -> {out}")
    if args.png:
        if labels.ndim != 2:
            raise ValueError(f"--png: outlines are drawn for 2D images only, got a {labels.ndim}D image")
        _overlay_png(args.png, image if image.ndim == 2 else image.mean(axis=-1),
                     [(labels, "prediction", "tab:orange")])


def _open_input(path):
    """A big image without reading it: .npy memory-mapped, .zarr opened, .tif/.tiff through tifffile's zarr view
    (memory-mapped when the file allows it)."""
    import numpy as np

    p = Path(path)
    suffix = p.suffix.lower()
    if not p.exists():
        raise FileNotFoundError(f"IN: no such file or folder: {p}")
    if suffix == ".npy":
        return np.load(p, mmap_mode="r")
    if suffix == ".zarr":
        import zarr

        return zarr.open_array(p, mode="r")
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            return tifffile.memmap(p, mode="r")
        except ValueError:  # compressed or tiled: read through its zarr view, one block at a time
            import zarr

            return zarr.open_array(tifffile.imread(p, aszarr=True), mode="r")
    raise ValueError(f"IN: expected a .tif, .tiff, .npy or .zarr image, got {p}")


def _open_output(path, shape, block):
    """Where the labels go: a zarr array chunked by block or a memory-mapped .npy (both persistent, so an
    interrupted run resumes), or None for a .tif (written at the end)."""
    import numpy as np

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".zarr":
        import zarr

        if p.exists():
            z = zarr.open_array(p, mode="r+")
            if tuple(z.shape) != tuple(shape) or np.dtype(z.dtype) != np.uint32:
                raise ValueError(f"OUT: {p} exists with shape {tuple(z.shape)} and dtype {z.dtype}, not {shape} "
                                 f"uint32: remove it or give another path")
            return z
        return zarr.create_array(p, shape=shape, chunks=tuple(min(b, s) for b, s in zip(block, shape)),
                                 dtype=np.uint32, fill_value=0)
    if suffix == ".npy":
        if p.exists():
            m = np.load(p, mmap_mode="r+")
            if m.shape == tuple(shape) and m.dtype == np.uint32:
                return m
        return np.lib.format.open_memmap(p, mode="w+", dtype=np.uint32, shape=tuple(shape))
    if suffix in (".tif", ".tiff"):
        return None
    raise ValueError(f"OUT: expected a .tif, .tiff, .npy or .zarr path, got {p}")


def _predict(args) -> None:
    import resource

    import numpy as np

    _need("zarr", purpose="cellkern predict (its run store)", extra="big")
    _need_tiff(args.image, args.out, purpose="cellkern predict (TIFF files)", extra="big")
    if args.workers or args.scheduler:
        _need("distributed", purpose="cellkern predict --workers/--scheduler", extra="big")
    _set_threads(args.threads)
    model = load_model(args.model)
    image = _open_input(args.image)
    spatial = tuple(image.shape[:model.ndim])
    if args.block_size is None:
        from .predict import plan_tiles

        block = plan_tiles(model, spatial).core
    else:
        block = (args.block_size,) * model.ndim
    out_path = Path(args.out)
    out = _open_output(out_path, spatial, block)
    store = args.store or str(out_path.with_name(out_path.name + ".run.zarr"))
    client = cluster = None
    if args.workers and args.scheduler:
        raise ValueError("give --workers or --scheduler, not both")
    if args.workers:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=args.threads or 1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    scheduler = client if client is not None else args.scheduler
    t0 = time.perf_counter()
    try:
        labels, details = model.predict_instances_big(image, block, prob_thresh=args.prob_thresh,
                                                      nms_thresh=args.nms_thresh, out=out, store=store,
                                                      scheduler=scheduler, threads=args.threads,
                                                      progress=not args.no_progress)
    finally:
        if client is not None:
            client.close()
            cluster.close()
    if out is None:
        import tifffile

        tifffile.imwrite(out_path, labels, compression="zlib")
    elif isinstance(out, np.memmap):
        out.flush()
    if not args.keep_store:
        import shutil

        shutil.rmtree(store, ignore_errors=True)
    st = details["stats"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"{args.image}: {len(details['prob'])} objects in {time.perf_counter() - t0:.1f} s, {st['blocks']} blocks "
          f"of {'x'.join(map(str, block))} ({st['predicted_before']} predicted and {st['rendered_before']} "
          f"labelled by an earlier run, {st['nms_rounds']} NMS rounds), peak memory {peak:.2f} GB (this process) "
          f"-> {out_path}")


def _evaluate(args) -> None:
    from .star import matching_dataset
    from .train import read_array

    if not args.synthetic:
        _need_tiff(args.images, args.masks, purpose="cellkern evaluate (TIFF files)")
    _set_threads(args.threads)
    model = load_model(args.model)
    if args.synthetic:
        from .data import synthetic_nuclei

        data = [synthetic_nuclei((args.size, args.size), args.objects, seed=args.seed + i)
                for i in range(args.synthetic)]
        X, Y = [d[0] for d in data], [d[1] for d in data]
    else:
        X, Y = _pairs(args.images, args.masks)
    preds, truth = [], []
    t0 = time.perf_counter()
    for x, y in zip(X, Y):
        x, y = (read_array(x), read_array(y)) if isinstance(x, str) else (x, y)
        preds.append(model.predict_instances(x)[0])
        truth.append(y)
    m = matching_dataset(truth, preds, thresh=0.5, show_progress=False)
    print(f"{len(X)} images in {time.perf_counter() - t0:.1f} s: F1 {m.f1:.4f}, AP {m.accuracy:.4f} at IoU 0.5 "
          f"(tp {m.tp}, fp {m.fp}, fn {m.fn}; thresholds {model.thresholds})")


def _overlay_png(path, image, outlines, titles=None):
    """The image, then the image with each label image's outlines, side by side."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy import ndimage

    def edges(lab):
        return lab != ndimage.grey_erosion(lab, size=3)

    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img, [1, 99.8])
    panels = 1 + len(outlines)
    fig = Figure(figsize=(4 * panels, 4.3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title("image")
    for k, (lab, title, colour) in enumerate(outlines, 2):
        ax = fig.add_subplot(1, panels, k)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.contour(edges(lab), levels=[0.5], colors=[colour], linewidths=0.6)
        ax.set_title(title)
    for ax in fig.axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(str(path))


def _demo(args) -> None:
    _need("torch", purpose="cellkern demo")
    _need("matplotlib", purpose="cellkern demo (its PNG)")
    import numpy as np
    import torch

    import cellkern
    from cellkern import _C
    from cellkern.data import synthetic_nuclei, synthetic_training_set
    from cellkern.models import StarDist2D
    from cellkern.star import matching
    from cellkern.train import Augmentation, fit

    _set_threads(args.threads)
    print(f"cellkern {cellkern.__version__}: CPU kernels '{_C.cpu_isa()}', {cellkern.get_num_threads()} threads")
    status = cellkern.cuda_status()
    print("CUDA:", "available" if status["available"] else f"unavailable ({status['reason']})")
    quick = args.quick
    n_train, size = (8, 128) if quick else (24, 192)
    X, Y = synthetic_training_set(n_train, (size, size), seed=args.seed, variety=0.3)
    Xv, Yv = synthetic_training_set(2 if quick else 4, (size, size), seed=args.seed + 1, variety=0.3)
    torch.manual_seed(args.seed)
    model = StarDist2D(n_rays=32, grid=(2, 2), unet_depth=2, unet_base_channels=16, net_conv_after_unet=32)
    epochs, steps = (16, 16) if quick else (24, 20)
    print(f"training a StarDist2D ({sum(p.numel() for p in model.parameters())} parameters) on {n_train} synthetic "
          f"{size}x{size} images: {epochs} epochs of {steps} steps")
    t0 = time.perf_counter()
    history = fit(model, X, Y, (Xv, Yv), epochs=epochs, steps_per_epoch=steps, batch_size=4,
                  patch_size=64 if quick else 96, learning_rate=3e-3, seed=args.seed,
                  augment=Augmentation(scale=(0.8, 1.25), blur_prob=0.2, noise_prob=0.3),
                  max_time=20 if quick else 140, reduce_lr={"patience": 3}, progress=not args.no_progress)
    t_train = time.perf_counter() - t0
    image, truth = synthetic_nuclei((256, 256) if quick else (512, 512), 15 if quick else 60, seed=args.seed + 2)
    t0 = time.perf_counter()
    pred, _ = model.predict_instances(image)
    m = matching(truth, pred, thresh=0.5)
    print(f"trained {len(history['epoch'])} epochs in {t_train:.0f} s; held-out {image.shape[0]}x{image.shape[1]} "
          f"image: {m.n_true} nuclei, {m.n_pred} found in {time.perf_counter() - t0:.2f} s")
    print(f"F1 {m.f1:.3f}, AP {m.accuracy:.3f} at IoU 0.5 (thresholds prob {model.thresholds['prob']:.3f}, "
          f"nms {model.thresholds['nms']:.2f})")
    _overlay_png(args.out, image, [(truth, "ground truth", "tab:green"), (pred, f"prediction (F1 {m.f1:.2f})",
                                                                           "tab:orange")])
    print(f"wrote {args.out}")
    if not np.isfinite(history["loss"]).all():
        raise SystemExit("training diverged")


def _info(args) -> None:
    import cellkern
    from cellkern import _C

    print("cellkern", cellkern.__version__)
    print("build:", dict(_C.build_info()), "cpu isa:", _C.cpu_isa(), "threads:", cellkern.get_num_threads())
    print("cuda:", cellkern.cuda_status())


def _parser():
    ap = argparse.ArgumentParser(prog="cellkern", description="cellkern command-line tools")
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a StarDist2D model on images and masks (or synthetic nuclei)",
                       description="Train a StarDist2D. Images and masks: TIFF (or .npy) files or folders (folders "
                                   "are paired by file name); masks are integer label images. Also runs under "
                                   "torchrun --nproc_per_node N (DDP).")
    t.add_argument("images", nargs="?", help="training image file or folder")
    t.add_argument("masks", nargs="?", help="training mask file or folder")
    t.add_argument("--synthetic", type=int, metavar="N", help="train on N generated synthetic nuclei images")
    t.add_argument("--synthetic-size", type=int, default=256, help="size of the synthetic images (default 256)")
    t.add_argument("--variety", type=float, default=1.0,
                   help="0-1: how much the synthetic images vary (sizes, density, blur, noise; default 1)")
    t.add_argument("--val-synthetic", type=int, help="synthetic validation images (default max(2, N / 8))")
    t.add_argument("--val-images", help="validation image file or folder")
    t.add_argument("--val-masks", help="validation mask file or folder")
    t.add_argument("--val-fraction", type=float, default=0.15,
                   help="without --val-images: hold out this fraction of the images for validation (default 0.15)")
    t.add_argument("--out", required=True, help="folder for the model, history.json and history.png")
    for name, v in TRAIN_DEFAULTS.items():
        t.add_argument("--" + name.replace("_", "-"), type=type(v), default=v, help=f"default {v}")
    t.add_argument("--lr-patience", type=int, default=5, help="epochs without progress before halving the rate")
    t.add_argument("--max-time", type=float, help="stop after the epoch that passes this many seconds")
    t.add_argument("--no-augment", dest="augment", action="store_false", help="plain random patches")
    t.add_argument("--elastic", type=float, default=0.0, help="elastic warp amplitude in pixels (default 0: off)")
    t.add_argument("--cache-images", type=int, help="image pairs kept in memory when reading files (default 16)")
    for name, v in MODEL_DEFAULTS.items():
        t.add_argument("--" + name.replace("_", "-"), type=int, default=v, help=f"default {v}")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    t.set_defaults(fn=_train)

    s = sub.add_parser("segment", help="segment an image with a trained model")
    s.add_argument("image", help="image file (TIFF or .npy)")
    s.add_argument("--model", required=True, help="folder of a saved model (cellkern train --out)")
    s.add_argument("--out", required=True, help="label image to write (.tif or .npy)")
    s.add_argument("--prob-thresh", type=_threshold_arg, help="in [0, 1]; default: the model's")
    s.add_argument("--nms-thresh", type=_threshold_arg, help="in [0, 1]; default: the model's")
    s.add_argument("--png", help="also write a PNG with the outlines")
    s.add_argument("--threads", type=int)
    s.set_defaults(fn=_segment)

    pr = sub.add_parser("predict", help="segment an image of any size block by block (exact, resumable, on dask)",
                        description="Instances of a big image with a trained StarDist2D, block by block, equal to "
                                    "segmenting it whole. IN and OUT: .tif/.tiff, .npy or .zarr. An interrupted run "
                                    "resumes from OUT's run store (OUT.run.zarr) when run again with the same "
                                    "arguments.")
    pr.add_argument("image", metavar="IN", help="image (.tif/.tiff, .npy or .zarr; (Y, X) or (Y, X, C))")
    pr.add_argument("--model", required=True, help="folder of a saved model (cellkern train --out)")
    pr.add_argument("--out", required=True, help="label image to write (.tif/.tiff, .npy or .zarr; uint32)")
    pr.add_argument("--block-size", type=int, help="block core in pixels, a multiple of the model's alignment "
                                                   "(default: from a 256 MiB activation budget)")
    pr.add_argument("--workers", type=int, help="run the blocks on a local dask cluster of N worker processes")
    pr.add_argument("--scheduler", help="run the blocks on the dask.distributed scheduler at this address")
    pr.add_argument("--store", help="zarr group for the intermediate prediction (default OUT.run.zarr)")
    pr.add_argument("--keep-store", action="store_true", help="keep the intermediate store after a finished run")
    pr.add_argument("--prob-thresh", type=_threshold_arg, help="in [0, 1]; default: the model's")
    pr.add_argument("--nms-thresh", type=_threshold_arg, help="in [0, 1]; default: the model's")
    pr.add_argument("--threads", type=int, help="CPU threads (per worker with --workers)")
    pr.add_argument("--no-progress", action="store_true", help="no progress bars")
    pr.set_defaults(fn=_predict)

    e = sub.add_parser("evaluate", help="F1 / AP at IoU 0.5 of a trained model on labelled images")
    e.add_argument("images", nargs="?")
    e.add_argument("masks", nargs="?")
    e.add_argument("--model", required=True)
    e.add_argument("--synthetic", type=int, metavar="N", help="evaluate on N synthetic_nuclei images instead")
    e.add_argument("--size", type=int, default=512, help="synthetic image size (default 512)")
    e.add_argument("--objects", type=int, default=80, help="nuclei per synthetic image (default 80)")
    e.add_argument("--seed", type=int, default=1000, help="seed of the first synthetic image (default 1000)")
    e.add_argument("--threads", type=int)
    e.set_defaults(fn=_evaluate)

    d = sub.add_parser("demo", help="train a small StarDist2D on synthetic nuclei and segment a held-out image")
    d.add_argument("--quick", action="store_true", help="a ~20 s smoke version")
    d.add_argument("--out", default="cellkern-demo.png", help="PNG to write (default cellkern-demo.png)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int)
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(fn=_demo)

    i = sub.add_parser("info", help="build and device information")
    i.set_defaults(fn=_info)
    return ap


def _threshold_arg(text):
    """--prob-thresh / --nms-thresh: parsed through the models' own rule (a number in [0, 1], not NaN), so a bad
    value stops the command before the model and the image are loaded."""
    from .models.stardist import _threshold

    try:
        return _threshold(float(text), "threshold")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv=None) -> None:
    from ._optional import MissingDependency

    ap = _parser()
    args = ap.parse_args(argv)
    try:
        if args.cmd != "info":
            _need("torch", purpose=f"cellkern {args.cmd}")
        args.fn(args)
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError, MissingDependency) as e:
        # bad input: one clear line, not a traceback (CELLKERN_DEBUG=1 shows it)
        if os.environ.get("CELLKERN_DEBUG"):
            raise
        print(f"cellkern {args.cmd}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
