"""StarDist instances of images too big for memory: prediction block by block, an exact block-wise NMS and block-wise
rendering whose labels equal whole-image ``predict_instances``; in-process or on dask.distributed, resumable."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
import os
import tempfile
import time

import numpy as np

from .._optional import require
from ..star import non_maximum_suppression, non_maximum_suppression_3d, polygons_to_label, polyhedron_to_label
from .plan import output_spec, plan_tiles
from .tiled import _Eval, run_tiles

__all__ = ["predict_instances_big"]

BORDER = 2  # cells next to the image border that are never candidates (StarDist's b=2, as predict_instances)


class ChannelFirst:
    """A ``(C, *spatial)`` view of an image stored as ``(*spatial)`` or ``(*spatial, C)`` (numpy, zarr or dask),
    read only where indexed."""

    def __init__(self, array, channel_last):
        self.array, self.channel_last = array, channel_last
        shape = tuple(int(s) for s in array.shape)
        self.shape = (shape[-1],) + shape[:-1] if channel_last else (1,) + shape
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        spatial = tuple(index[1:])
        block = np.asarray(self.array[spatial + ((slice(None),) if self.channel_last else ())])
        block = np.moveaxis(block, -1, 0) if self.channel_last else block[None]
        return block[index[0]]


def _image(model, image):
    """The image as a ChannelFirst view, checked like predict_instances checks a numpy image."""
    nd, c = model.ndim, model.config.n_channel_in
    shape = getattr(image, "shape", None)
    if shape is None or not hasattr(image, "__getitem__") or not hasattr(image, "dtype"):
        raise TypeError(f"image: expected an array (numpy, memmap, zarr or dask), got {type(image).__name__}")
    dtype = np.dtype(image.dtype)
    if dtype == bool or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise TypeError(f"image: expected a real-valued (integer or float) array, got {dtype}")
    if len(shape) == nd and c == 1:
        view = ChannelFirst(image, False)
    elif len(shape) == nd + 1 and shape[-1] == c:
        view = ChannelFirst(image, True)
    else:
        raise ValueError(f"image: expected {nd} spatial axes" + (" (plus an optional trailing channel axis of 1)"
                         if c == 1 else f" and a trailing channel axis of {c}") + f", got shape {tuple(shape)}")
    if 0 in shape:
        raise ValueError(f"image: expected a non-empty image, got shape {tuple(shape)}")
    return view


class _Job:
    """Everything a block task needs, picklable (sent once to each dask worker)."""

    def __init__(self, model, image, plan, pred, lo, hi, prob_thresh, nms_thresh, threads):
        self.model, self.image, self.plan, self.pred = model, image, plan, pred
        self.lo, self.hi = lo, hi
        self.prob_thresh, self.nms_thresh, self.threads = prob_thresh, nms_thresh, threads
        self.n_rays = int(model.config.n_rays)
        self.grid = plan.grid
        self.cells = tuple(-(-s // g) for s, g in zip(plan.shape, plan.grid))
        self.blocks = plan.tiles

    def core_cells(self, k):
        return tuple((c0 // g, -(-c1 // g)) for (c0, c1, _, _), g in zip(self.blocks[k], self.grid))

    def _threads(self):
        if self.threads:
            import torch

            from .. import set_num_threads

            torch.set_num_threads(self.threads)
            set_num_threads(self.threads)

    def transform(self, x):
        if self.lo is None:
            return x
        from ..data.normalize import normalize_block

        return normalize_block(x, self.lo, self.hi)

    def window(self, box):
        """prob (h, w) and dist (h, w, n_rays) of the cells in ``box`` ((lo, hi) per axis), as predict gives them."""
        from ..models.stardist import clip_dist, sigmoid

        p = np.asarray(self.pred[(slice(None),) + tuple(slice(a, b) for a, b in box)])
        return sigmoid(p[0]), np.ascontiguousarray(clip_dist(np.moveaxis(p[1:], 0, -1)))


# ---- block tasks (module functions: dask pickles them by reference) ----------------------------------------------

def _task_predict(job, k):
    """Network outputs of block k's core cells into the prediction store."""
    job._threads()
    with _Eval(job.model):
        run_tiles(job.model, job.image, job.plan, [job.blocks[k]], job.pred, transform=job.transform)
    return k


def _task_candidates(job, k):
    """Block k's candidates (global flat cell indices, raster order) and the largest distance among them."""
    box = job.core_cells(k)
    prob, dist = job.window(box)
    mask = prob > np.float32(job.prob_thresh)
    for d, ((a, b), n) in enumerate(zip(box, job.cells)):  # the image border (StarDist's b)
        idx = np.arange(a, b)
        bad = (idx < BORDER) | (idx >= n - BORDER)
        mask[(slice(None),) * d + (bad,)] = False
    local = np.flatnonzero(mask)
    coords = np.unravel_index(local, mask.shape)
    flat = np.ravel_multi_index(tuple(c + a for c, (a, _) in zip(coords, box)), job.cells).astype(np.int64)
    rmax = float(dist.reshape(-1, job.n_rays)[local].max()) if len(local) else 0.0
    return flat, rmax


def _task_nms(job, k, box, removed):
    """The NMS of block k's window ``box`` with the ``removed`` ring candidates (global flat cells) taken out:
    the kept candidates of block k's core (global flat cells, their probabilities and distances)."""
    job._threads()
    prob, dist = job.window(box)
    shape = prob.shape
    for d, ((a, b), n) in enumerate(zip(box, job.cells)):
        idx = np.arange(a, b)
        prob[(slice(None),) * d + ((idx < BORDER) | (idx >= n - BORDER),)] = np.nan  # never candidates
    if len(removed):
        coords = np.unravel_index(removed, job.cells)
        prob[tuple(c - a for c, (a, _) in zip(coords, box))] = np.nan
    if len(shape) == 3:
        _, probs, dists, inds = non_maximum_suppression_3d(dist, prob, job.model.ray_set, job.grid, b=0,
                                                           nms_thresh=job.nms_thresh, prob_thresh=job.prob_thresh,
                                                           stable=True, return_inds=True)
    else:
        _, probs, dists, inds = non_maximum_suppression(dist, prob, job.grid, b=0, nms_thresh=job.nms_thresh,
                                                        prob_thresh=job.prob_thresh, return_inds=True)
    coords = np.unravel_index(inds, shape)
    core = job.core_cells(k)
    inside = np.ones(len(inds), bool)
    for c, (a, _), (c0, c1) in zip(coords, box, core):
        inside &= (c + a >= c0) & (c + a < c1)
    flat = np.ravel_multi_index(tuple(c + a for c, (a, _) in zip(coords, box)), job.cells).astype(np.int64)
    order = np.argsort(flat[inside], kind="stable")  # raster order: the candidate arrays' order
    return flat[inside][order], probs[inside][order], dists[inside][order]


def _task_render(job, k, flat, probs, dists, ids, out, done):
    """Labels of block k's pixels from the kept objects that can reach it (in global rank order), global ids:
    written into ``out`` (and ``done[k]`` set after), or returned when ``out`` is None."""
    block = job.blocks[k]
    origin = tuple(c0 for c0, _, _, _ in block)
    shape = tuple(c1 - c0 for c0, c1, _, _ in block)
    points = np.stack([c * g for c, g in zip(np.unravel_index(flat, job.cells), job.grid)], 1).astype(np.int64)
    if len(shape) == 3:
        # paint order = global id order (the whole volume's): lower id on top
        local = polyhedron_to_label(dists, points, job.model.ray_set, shape, prob=-ids.astype(np.float64),
                                    labels=np.arange(1, len(ids) + 1), origin=origin)
    else:
        local = polygons_to_label(dists, points, probs, shape=shape, origin=origin)
    lut = np.concatenate([np.zeros(1, ids.dtype), ids])
    if out is None:
        return lut[local]
    out[tuple(slice(o, o + s) for o, s in zip(origin, shape))] = lut[local]
    if done is not None:
        done[k] = 1
    return None


# ---- the driver --------------------------------------------------------------------------------------------------

class _Engine:
    """Runs block tasks in this process, or on a dask.distributed client; tqdm progress either way."""

    def __init__(self, client, progress):
        self.client, self.progress = client, progress
        self._job = None

    def share(self, job):
        self.job = job
        self._job = self.client.scatter(job, broadcast=True) if self.client is not None else job

    def map(self, fn, args, desc):
        """fn(job, *a) for a in args, results in order."""
        bar = None
        if self.progress and args:
            tqdm = require("tqdm.auto", "progress bars").tqdm

            bar = tqdm(total=len(args), desc=desc, unit="block")
        try:
            if self.client is None:
                results = []
                for a in args:
                    results.append(fn(self._job, *a))
                    if bar is not None:
                        bar.update(1)
                return results
            from distributed import as_completed

            futures = [self.client.submit(fn, self._job, *a, pure=False) for a in args]
            for _ in as_completed(futures):
                if bar is not None:
                    bar.update(1)
            return self.client.gather(futures)
        finally:
            if bar is not None:
                bar.close()


def _client(scheduler):
    if scheduler is None:
        return None
    distributed = require("distributed", "predict_instances_big(scheduler=...)")
    if isinstance(scheduler, distributed.Client):
        return scheduler
    if isinstance(scheduler, str):
        return distributed.Client(scheduler)
    raise TypeError(f"scheduler: expected None, a distributed.Client or a scheduler address, got "
                    f"{type(scheduler).__name__}")


def _fingerprint(model, image_shape, block, thresholds, lo, hi):
    """What a stored run depends on: resuming with anything else would mix two runs."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    h.update(json.dumps([list(image_shape), list(block), list(thresholds)]).encode())
    for v in (lo, hi):
        h.update(b"none" if v is None else np.ascontiguousarray(v, np.float64).tobytes())
    return h.hexdigest()


def _open_store(store, fingerprint, shapes):
    """The zarr group of a run: created, or reopened when it holds this very run (else ValueError)."""
    import zarr

    group = zarr.open_group(store, mode="a")
    attrs = dict(group.attrs)
    if attrs.get("cellkern") is None:
        if len(list(group.keys())):
            raise ValueError(f"store: {store} is a zarr group that does not hold a cellkern run; give an empty or "
                             f"new path")
        group.attrs["cellkern"] = {"fingerprint": fingerprint}
    elif attrs["cellkern"].get("fingerprint") != fingerprint:
        raise ValueError(f"store: {store} holds a run with another model, image shape, block size, thresholds or "
                         f"normalisation; give a new path to start over")
    arrays = {}
    for name, (shape, chunks, dtype) in shapes.items():
        if name in group:
            arrays[name] = group[name]
        else:
            # uncompressed: network outputs do not compress, and (de)compressing them cost more than the NMS
            arrays[name] = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                              compressors=None)
    return group, arrays


def predict_instances_big(model, image, block_size, prob_thresh=None, nms_thresh=None, normalize=True, out=None,
                          store=None, scheduler=None, threads=None, progress=False):
    """Instances of a big image, equal to ``model.predict_instances(image)`` (same ids) without ever holding it.

    See :meth:`cellkern.models.StarDist2D.predict_instances_big` for the arguments and the algorithm. Returns
    ``(labels, details)``: ``labels`` is ``out`` (or a new numpy array), details has ``points``, ``prob`` of the
    kept objects in id order and ``stats`` (blocks computed and reused per stage, NMS rounds, seconds)."""
    t_start = time.perf_counter()
    from ..models.stardist import _threshold

    prob_thresh = _threshold(model.thresholds["prob"] if prob_thresh is None else prob_thresh, "prob_thresh")
    nms_thresh = _threshold(model.thresholds["nms"] if nms_thresh is None else nms_thresh, "nms_thresh")
    view = _image(model, image)
    spatial = view.shape[1:]
    nd = len(spatial)
    if isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool):
        block_size = (int(block_size),) * nd
    plan = plan_tiles(model, spatial, block_size)  # checks the block size: multiple of the alignment, >= the RF
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or
                                threads < 1):
        raise ValueError(f"threads: expected None or an int >= 1, got {threads!r}")
    c_out, grid = output_spec(model)
    cells = tuple(-(-s // g) for s, g in zip(spatial, grid))
    core_cells = tuple(c // g for c, g in zip(plan.core, grid))
    n_blocks = len(plan)
    want_out = tuple(spatial)
    if out is not None and tuple(getattr(out, "shape", ())) != want_out:
        raise ValueError(f"out: expected shape {want_out}, got {tuple(getattr(out, 'shape', ()))}")
    if out is not None and np.dtype(out.dtype) not in (np.dtype(np.uint32), np.dtype(np.uint64),
                                                       np.dtype(np.int64)):
        raise ValueError(f"out: expected a uint32, uint64 or int64 array, got {out.dtype}")

    chunks = getattr(out, "chunks", None)
    if scheduler is not None and chunks is not None and not isinstance(out, np.ndarray) and any(
            c % k for c, k in zip(plan.core, tuple(chunks))):
        # workers write whole blocks; a chunk shared by two blocks would be written by two processes at once
        raise ValueError(f"out: its chunks {tuple(chunks)} must divide the block size {plan.core} when blocks run "
                         f"on a cluster")

    require("zarr", "predict_instances_big (its run store)")  # before the percentile pass over the whole image
    lo = hi = None
    if normalize:
        from ..data.normalize import percentiles

        p = percentiles(view.array, [model.config.norm_pmin, model.config.norm_pmax],
                        channel_axis=-1 if view.channel_last else None).reshape(-1, 2)
        lo = p[:, 0].reshape((-1,) + (1,) * nd)
        hi = p[:, 1].reshape((-1,) + (1,) * nd)

    client = _client(scheduler)
    tmp = None
    if store is None:
        tmp = tempfile.TemporaryDirectory(prefix="cellkern-big-")
        store = os.path.join(tmp.name, "run.zarr")
    stats = {"blocks": n_blocks}
    try:
        fp = _fingerprint(model, view.shape, plan.core, (prob_thresh, nms_thresh), lo, hi)
        group, arrays = _open_store(store, fp, {
            "pred": ((c_out,) + cells, (c_out,) + core_cells, np.float32),
            "pred_done": ((n_blocks,), (1,), np.uint8),
            "labels_done": ((n_blocks,), (1,), np.uint8)})
        pred, pred_done, labels_done = arrays["pred"], arrays["pred_done"], arrays["labels_done"]
        engine = _Engine(client, progress)
        engine.share(_Job(model, view, plan, pred, lo, hi, prob_thresh, nms_thresh, threads))

        # 1. the network, block by block (blocks done in an earlier, interrupted run are kept)
        todo = [int(k) for k in np.flatnonzero(np.asarray(pred_done[:]) == 0)]
        done = engine.map(_task_predict_mark, [(k, pred_done) for k in todo], "predict")
        stats["predicted"], stats["predicted_before"] = len(done), n_blocks - len(done)
        stats["seconds_predict"] = time.perf_counter() - t_start

        # 2. candidates and how far two of them can interact
        cand = engine.map(_task_candidates, [(k,) for k in range(n_blocks)], "candidates")
        rmax = max((r for _, r in cand), default=0.0)
        reach = tuple(int(math.ceil(2 * rmax / g)) + 1 for g in grid)  # centres further apart never overlap

        # 3. block NMS until no block's decisions change (see StarDist2D.predict_instances_big)
        block_idx = [tuple(int(c0 // (cc * g)) for (c0, _, _, _), cc, g in zip(plan.tiles[k], core_cells, grid))
                     for k in range(n_blocks)]
        index_of = {b: k for k, b in enumerate(block_idx)}
        n_per_axis = tuple(len(ax) for ax in plan.axes)
        boxes, neighbours = [], []
        for k in range(n_blocks):
            core = engine.job.core_cells(k)
            box = tuple((max(0, a - r), min(n, b + r)) for (a, b), r, n in zip(core, reach, cells))
            boxes.append(box)
            span = [range(max(0, (a) // cc), min(m, (b - 1) // cc + 1)) for (a, b), cc, m
                    in zip(box, core_cells, n_per_axis)]
            neighbours.append([index_of[t] for t in itertools.product(*span)])
        cand_flat = [c for c, _ in cand]
        kept = [np.ones(len(c), bool) for c in cand_flat]  # round 0: everything kept, nothing removed
        results = [None] * n_blocks
        last_removed = [None] * n_blocks
        rounds = 0
        while True:
            args = []
            for k in range(n_blocks):
                removed = _ring_removed(k, boxes[k], neighbours[k], cand_flat, kept, cells)
                if last_removed[k] is None or not np.array_equal(removed, last_removed[k]):
                    args.append((k, boxes[k], removed))
                    last_removed[k] = removed
            if not args:
                break
            rounds += 1
            new = engine.map(_task_nms, args, f"nms round {rounds}")
            changed = False
            for (k, _, _), r in zip(args, new):
                results[k] = r
                now = np.isin(cand_flat[k], r[0], assume_unique=True)
                if not np.array_equal(now, kept[k]):
                    changed = True
                kept[k] = now
            if not changed:
                break
        stats["nms_rounds"] = rounds
        stats["seconds_nms"] = time.perf_counter() - t_start - stats["seconds_predict"]

        # 4. global ids: rank in (descending probability, raster) order, as the whole-image NMS keeps them
        flat = np.concatenate([r[0] for r in results]) if n_blocks else np.zeros(0, np.int64)
        probs = np.concatenate([r[1] for r in results]) if n_blocks else np.zeros(0, np.float32)
        order = np.lexsort((flat, -probs.astype(np.float64)))
        n_obj = len(flat)
        id_dtype = np.uint32 if n_obj < 2 ** 32 - 1 else np.uint64
        ids = np.empty(n_obj, id_dtype)
        ids[order] = np.arange(1, n_obj + 1, dtype=id_dtype)
        starts = np.cumsum([0] + [len(r[0]) for r in results])

        # 5. labels, block by block
        if out is None:
            out = np.zeros(want_out, id_dtype)
        elif np.dtype(out.dtype) == np.uint32 and n_obj >= 2 ** 32 - 1:
            raise ValueError(f"out: {n_obj} objects do not fit uint32 ids; give a uint64 array")
        # blocks of a persistent output (zarr, or a memory-mapped file) written by an earlier run are kept, as long
        # as it is the same output; an in-memory array is always written whole
        out_key = "" if type(out) is np.ndarray else str(getattr(out, "store_path", None) or
                                                          getattr(out, "filename", None) or "")
        if not out_key or group.attrs.get("labels_out") != out_key:
            labels_done[:] = 0
            group.attrs["labels_out"] = out_key
        direct = client is None or not isinstance(out, np.ndarray)  # workers cannot write into our memory
        skip = np.asarray(labels_done[:]) == 1 if out_key else np.zeros(n_blocks, bool)
        args = []
        for k in range(n_blocks):
            if skip[k]:
                continue
            sel = neighbours[k]
            f = np.concatenate([results[j][0] for j in sel])
            pr = np.concatenate([results[j][1] for j in sel])
            di = np.concatenate([results[j][2] for j in sel]).reshape(-1, engine.job.n_rays)
            ii = np.concatenate([ids[starts[j]:starts[j + 1]] for j in sel])
            o = np.argsort(ii, kind="stable")  # global paint order: the whole image's
            args.append((k, f[o], pr[o], di[o], ii[o], out if direct else None, labels_done if out_key else None))
        blocks = engine.map(_task_render, args, "labels")
        if not direct:
            for a, lab in zip(args, blocks):
                out[tuple(slice(c0, c1) for c0, c1, _, _ in plan.tiles[a[0]])] = lab
        stats["rendered"], stats["rendered_before"] = len(args), int(skip.sum())
        stats["seconds"] = time.perf_counter() - t_start
        details = {"points": np.stack([c * g for c, g in zip(np.unravel_index(flat[order], cells), grid)], 1)
                   .astype(np.int64).reshape(-1, nd),
                   "prob": probs[order], "stats": stats}
        return out, details
    finally:
        if tmp is not None:
            tmp.cleanup()


def _task_predict_mark(job, k, done):
    _task_predict(job, k)
    done[k] = 1  # after the block's outputs are written: a killed run never marks a half-written block
    return k


def _ring_removed(k, box, neighbours, cand_flat, kept, cells):
    """The candidates of block k's window outside its core that the current decisions suppress (sorted)."""
    parts = []
    for j in neighbours:
        if j == k:
            continue
        f = cand_flat[j][~kept[j]]
        if not len(f):
            continue
        coords = np.unravel_index(f, cells)
        inside = np.ones(len(f), bool)
        for c, (a, b) in zip(coords, box):
            inside &= (c >= a) & (c < b)
        parts.append(f[inside])
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
