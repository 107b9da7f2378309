"""StarDist2D / StarDist3D in PyTorch on cellkern's layers: network, targets, loss, prediction and instances."""
from __future__ import annotations

import dataclasses
import functools
import numbers

import numpy as np
import torch

from .. import ops
from ..data.normalize import normalize as _normalize
from ..nn.conv import Conv2d, Conv3d
from ..nn.layers import MaxPool2d, MaxPool3d
from ..nn.unet import ConvBlock, UNet, check_input, input_interval, kernel_tuple, receptive_field
from ..star import decode, edt_prob, rays_golden_spiral, star_dist, star_dist3d
from .io import load as _load, save as _save
from .config import StarDistConfig
from .loss import stardist_loss

__all__ = ["StarDist2D", "StarDist3D"]


class _StarDist(torch.nn.Module):
    """What StarDist2D and StarDist3D share; ``ndim`` picks the layers, targets and decoding."""

    ndim = 2

    def __init__(self, config=None, **overrides):
        super().__init__()
        self.config = _config(config, overrides, self.ndim, type(self).__name__)
        c, nd = self.config, self.ndim
        Conv, MaxPool = (Conv2d, MaxPool2d) if nd == 2 else (Conv3d, MaxPool3d)
        k = kernel_tuple(c.unet_kernel_size, nd, "unet_kernel_size")
        block = dict(n_convs=c.unet_conv_per_level, kernel_size=k, activation=c.unet_activation)
        # StarDist's grid stem: convolutions then a max-pool by 2 on every axis still short of the grid
        stem, pools, pooled, channels = [], [], (1,) * nd, c.n_channel_in
        while pooled != c.grid:
            step = tuple(2 if g > p else 1 for g, p in zip(c.grid, pooled))
            pooled = tuple(p * s for p, s in zip(pooled, step))
            stem.append(ConvBlock(nd, channels, c.unet_base_channels, **block))
            pools.append(MaxPool(step))
            channels = c.unet_base_channels
        self.stem = torch.nn.ModuleList(stem)
        self.stem_pool = torch.nn.ModuleList(pools)
        self.unet = UNet(nd, channels, None, c.unet_depth, c.unet_base_channels, c.unet_conv_per_level, k,
                         c.unet_activation, batch_norm=c.unet_batch_norm, upsample=c.unet_upsample)
        channels = self.unet.output_channels
        self.features = None
        if c.net_conv_after_unet:
            self.features = Conv(channels, c.net_conv_after_unet, k, padding=tuple(v // 2 for v in k),
                                 activation=c.unet_activation)
            channels = c.net_conv_after_unet
        self.prob = Conv(channels, 1, 1)
        self.dist = Conv(channels, c.n_rays, 1)
        self.thresholds = {"prob": c.prob_thresh, "nms": c.nms_thresh}

    # ---- network ------------------------------------------------------------------------------------------

    @property
    def thresholds(self):
        """{"prob": ..., "nms": ...}: the defaults of predict_instances (set by optimize_thresholds, saved)."""
        return self._thresholds

    @thresholds.setter
    def thresholds(self, value):
        if not isinstance(value, dict) or set(value) != {"prob", "nms"}:
            raise ValueError(f"thresholds: expected a dict with keys 'prob' and 'nms', got {value!r}")
        self._thresholds = {k: _threshold(v, f"thresholds[{k!r}]") for k, v in value.items()}

    @property
    def downsampling_factor(self):
        """Per axis: input sizes the network takes are multiples of this (grid * 2**unet_depth, from the layers)."""
        f = list(self.unet.downsampling_factor)
        for pool in self.stem_pool:
            s = pool.stride
            f = [a * b for a, b in zip(f, (s,) * self.ndim if isinstance(s, int) else s)]
        return tuple(f)

    def input_interval(self, lo, hi, dim, numeric=False):
        """The input pixels along ``dim`` that output cells [lo, hi] depend on (a hull), from the layers (stem,
        U-Net, feature convolution, heads)."""
        stem = [block.layers() + [pool] for block, pool in zip(self.stem, self.stem_pool)]
        heads = [m for m in (self.features, self.prob) if m is not None]  # dist: the same 1x1 geometry as prob
        return input_interval(*stem, self.unet, heads)(lo, hi, dim, numeric)

    def receptive_field(self):
        """The exact :class:`cellkern.nn.unet.ReceptiveField` of an output cell (at input pixel cell * grid)."""
        return receptive_field(self.input_interval, self.downsampling_factor, self.config.grid)

    def forward(self, x):
        """``x (N, n_channel_in, *spatial)`` float tensor, sizes multiples of ``downsampling_factor`` ->
        ``(prob_logit (N, 1, *spatial / grid), dist (N, n_rays, *spatial / grid))``."""
        check_input(x, self.ndim, self.config.n_channel_in, self.downsampling_factor)
        for block, pool in zip(self.stem, self.stem_pool):
            x = pool(block(x))
        x = self.unet(x)
        if self.features is not None:
            x = self.features(x)
        # Both 1x1 heads as one convolution: the features are read once, and their gradient comes back as one
        # tensor instead of two that autograd then adds (128 MiB each for 4 x 128 x 256^2 features).
        weight = torch.cat([self.prob.weight, self.dist.weight])
        bias = torch.cat([self.prob.bias, self.dist.bias])
        out = (ops.conv2d if self.ndim == 2 else ops.conv3d)(x, weight, bias)
        return out[:, :1], out[:, 1:]

    # ---- training -----------------------------------------------------------------------------------------

    def targets(self, labels):
        """Training targets of a label image ``(*spatial)`` (integer numpy array, 0 = background):
        ``(prob float32 (*spatial / grid), dist float32 (n_rays, *spatial / grid))``, sampled at offset 0 of every
        grid cell as StarDist: dist by cellkern.star.star_dist / star_dist3d, prob = edt_prob of the sub-sampled
        labels (2D) or sub-sampled edt_prob of the labels with the config's anisotropy (3D)."""
        lab = _labels(labels, self.ndim)
        sub = tuple(slice(None, None, g) for g in self.config.grid)
        if self.ndim == 2:
            dist, prob = star_dist(lab, self.config.n_rays, self.config.grid), edt_prob(lab[sub])
        else:
            dist = star_dist3d(lab, self.rays, self.config.grid)
            prob = edt_prob(lab, self.config.anisotropy)[sub]
        return prob, np.ascontiguousarray(np.moveaxis(dist, -1, 0))

    def loss(self, outputs, prob_t, dist_t):
        """StarDist's loss (:func:`cellkern.models.loss.stardist_loss`, weights and background regulariser from the
        config) of ``outputs`` (forward's tuple) against ``prob_t (N, 1, ...)`` and ``dist_t (N, n_rays, ...)``
        -> ``(total scalar tensor, {"prob": float, "dist": float})``."""
        if not (isinstance(outputs, (tuple, list)) and len(outputs) == 2):
            raise ValueError("outputs: expected forward's (prob_logit, dist) tuple")
        prob_logit, dist = outputs
        for name, t, ref in (("prob_t", prob_t, prob_logit), ("dist_t", dist_t, dist)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != tuple(ref.shape):
                raise ValueError(f"{name}: expected shape {tuple(ref.shape)} (the network's output), got "
                                 f"{tuple(t.shape)}")
        total, p, d = stardist_loss(prob_logit, dist, prob_t.to(prob_logit.dtype), dist_t.to(dist.dtype),
                                    self.config.train_loss_weights, self.config.train_background_reg)
        return total, {"prob": float(p.detach()), "dist": float(d.detach())}

    def fit(self, X, Y, validation_data=None, **kwargs):
        """Train with :func:`cellkern.train.fit` (see there); returns its history."""
        from .. import train  # imported on use: training pulls in more than inference needs

        return train.fit(self, X, Y, validation_data=validation_data, **kwargs)

    def optimize_thresholds(self, X_val, Y_val, **kwargs):
        """Tune ``thresholds`` on validation data with :func:`cellkern.train.optimize_thresholds`."""
        from .. import train

        return train.optimize_thresholds(self, X_val, Y_val, **kwargs)

    # ---- prediction ---------------------------------------------------------------------------------------

    def predict(self, image, normalize=True):
        """Probability and distances of an image ``(*spatial)`` or ``(*spatial, C)`` (numpy) ->
        ``(prob (*spatial / grid), dist (*spatial / grid, n_rays))`` float32, StarDist's layout.

        ``normalize``: percentile-normalise each channel (config's norm_pmin / norm_pmax) first; False: the image
        is used as is. The image is padded at the end (reflect) to multiples of ``downsampling_factor`` and the
        output cropped back to ceil(size / grid); distances are clipped below at 1e-3 (as StarDist)."""
        return self._predict(self._image(image), normalize)

    def _predict(self, x, normalize):
        if normalize:
            x = _normalize(x, self.config.norm_pmin, self.config.norm_pmax, axis=tuple(range(1, x.ndim)))
        spatial = x.shape[1:]
        pad = [(0, 0)] + [(0, -s % f) for s, f in zip(spatial, self.downsampling_factor)]
        x = np.pad(x.astype(np.float32, copy=False), pad, mode="reflect")
        p = next(self.parameters())
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                logit, dist = self(torch.from_numpy(x[None]).to(device=p.device, dtype=p.dtype))
        finally:
            self.train(was_training)
        crop = tuple(slice(0, -(-s // g)) for s, g in zip(spatial, self.config.grid))
        prob = sigmoid(logit[0, 0][crop].float().cpu().numpy())
        dist = dist[0][(slice(None),) + crop].float().cpu().numpy()
        return prob, clip_dist(np.moveaxis(dist, 0, -1))

    def predict_instances(self, image, prob_thresh=None, nms_thresh=None, normalize=True):
        """Instance labels of an image: :meth:`predict`, then non-maximum suppression of the candidates
        (prob > prob_thresh, 2 grid cells from the border) by overlap / smaller area > nms_thresh, rendered
        with higher probabilities winning. Thresholds None read ``self.thresholds``. Returns ``(labels int32
        (*spatial), {"points", "prob", "dist"})`` of the kept objects in descending probability (label k + 1 is
        the k-th)."""
        x = self._image(image)
        prob, dist = self._predict(x, normalize)
        return self.instances_from_prediction(prob, dist, x.shape[1:], prob_thresh, nms_thresh)

    def predict_instances_big(self, image, block_size, prob_thresh=None, nms_thresh=None, normalize=True, out=None,
                              store=None, scheduler=None, threads=None, progress=False):
        """:meth:`predict_instances` of an image too big for memory, block by block, with **the same labels** (the
        same ids) for objects of any size. Returns ``(labels, details)``: ``labels`` is ``out`` (or a new uint32
        numpy array; uint64 when the ids need it), ``details`` holds ``points`` and ``prob`` of the objects in id
        order and ``stats`` (blocks computed / reused per stage, NMS rounds, seconds).

        ``image``: numpy, memory-mapped, zarr or dask array, ``(*spatial)`` or ``(*spatial, C)``; read one block
        (plus its halo) at a time. ``block_size``: the block core in pixels (int or per axis), a multiple of
        :func:`cellkern.predict.alignment` and at least the receptive field. ``normalize``: percentiles of the
        whole image (exact, streamed over blocks: :func:`cellkern.data.normalize.percentiles`), then each block
        normalised with them. ``out``: an array to write the labels into (numpy, memmap or zarr; uint32, uint64
        or int64). ``store``: a zarr group path for the intermediate prediction and the per-block progress
        (default: a temporary directory, removed at the end); a re-run with the same store, model, image shape,
        block size, thresholds and normalisation after an interruption recomputes only the blocks not yet done
        (the labels too when ``out`` is the same zarr array or memory-mapped file). ``scheduler``: None (this
        process), a ``distributed.Client`` or a scheduler address: every block task then runs on the cluster
        (the store and a zarr ``out`` must be reachable by the workers). ``threads``: torch / cellkern threads in
        each task. ``progress``: tqdm bars per stage.

        How the labels stay exact: (1) the network runs per block on a tile whose halo covers its numeric
        receptive field (:mod:`cellkern.predict`: bit-equal to the whole image); (2) every block lists its
        candidates (prob > prob_thresh, 2 cells from the image border) and the largest distance ``rmax`` among
        all candidates gives the reach beyond which two centres cannot overlap (``2 rmax``); (3) each block runs
        the NMS on its window (core plus the reach), with the window's candidates outside its core that the other
        blocks' current decisions suppress taken out, and decides its core; blocks whose taken-out set changed
        run again, until no decision changes. Any such fixed point is the global greedy result (by induction on
        the probability rank: a window then holds exactly the globally kept higher-ranked neighbours of each of
        its core candidates), and every round fixes at least the next rank, so it ends; in practice after 2-3
        rounds. (4) ids are ranks in descending probability (ties: raster order), as the whole image numbers
        them; (5) each block paints the kept objects whose centres lie within reach, in global order, into its
        pixels (:func:`cellkern.star.polygons_to_label` with an origin). 2D models only."""
        from ..predict.instances import predict_instances_big

        return predict_instances_big(self, image, block_size, prob_thresh, nms_thresh, normalize, out, store,
                                     scheduler, threads, progress)

    def instances_from_prediction(self, prob, dist, shape=None, prob_thresh=None, nms_thresh=None):
        """The decoding step of :meth:`predict_instances` on a prediction ``(prob, dist)`` in :meth:`predict`'s
        layout; ``shape`` is the image's (default: the prediction's shape times the grid)."""
        prob_thresh = _threshold(self.thresholds["prob"] if prob_thresh is None else prob_thresh, "prob_thresh")
        nms_thresh = _threshold(self.thresholds["nms"] if nms_thresh is None else nms_thresh, "nms_thresh")
        prob, dist = np.asarray(prob), np.asarray(dist)
        if prob.ndim != self.ndim or dist.shape != prob.shape + (self.config.n_rays,):
            raise ValueError(f"prob, dist: expected shapes (*cells) with {self.ndim} axes and (*cells, "
                             f"{self.config.n_rays}), got {prob.shape} and {dist.shape}")
        if shape is None:
            shape = tuple(s * g for s, g in zip(prob.shape, self.config.grid))
        shape = tuple(int(s) for s in shape)
        if len(shape) != self.ndim or any(-(-s // g) != c for s, g, c in zip(shape, self.config.grid, prob.shape)):
            raise ValueError(f"shape: {shape} does not fit a prediction of {prob.shape} cells on grid "
                             f"{self.config.grid}")
        return self._decode(prob, dist, prob_thresh, nms_thresh, shape)

    def _image(self, image):
        """image as a (C, *spatial) array, checked."""
        nd, c = self.ndim, self.config.n_channel_in
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image: expected a numpy array, got {type(image).__name__}")
        if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or
                                       np.issubdtype(image.dtype, np.floating)):
            raise TypeError(f"image: expected a real-valued (integer or float) array, got {image.dtype}")
        if image.ndim == nd and c == 1:
            x = image[None]
        elif image.ndim == nd + 1 and image.shape[-1] == c:
            x = np.moveaxis(image, -1, 0)
        else:
            want = f"{nd} spatial axes" + (" (plus an optional trailing channel axis of 1)" if c == 1 else
                                           f" and a trailing channel axis of {c}")
            raise ValueError(f"image: expected {want}, got shape {image.shape}")
        if 0 in x.shape:
            raise ValueError(f"image: expected a non-empty image, got shape {image.shape}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ValueError("image: contains NaN or infinite values")
        return x

    # ---- saving -------------------------------------------------------------------------------------------

    def save(self, directory):
        """Write ``config.json``, ``weights.pt`` (the state_dict, tensors only) and ``thresholds.json`` into
        ``directory`` (created if needed); :meth:`load` restores an identical model."""
        _save(self, directory)

    @classmethod
    def load(cls, directory, map_location="cpu"):
        """The model saved in ``directory`` by :meth:`save`. Never runs code from the directory (JSON and
        ``torch.load(weights_only=True)``); a missing file raises FileNotFoundError, a corrupt or mismatched one
        ValueError, naming it."""
        return _load(cls, directory, map_location)


class StarDist2D(_StarDist):
    """StarDist for 2D images (star-convex polygons). ``StarDist2D(config=None, **overrides)``: the config (a
    :class:`StarDistConfig` with ndim=2, or a dict) with fields replaced by ``overrides``; see
    :class:`StarDistConfig` for the architecture and the module docs for the methods."""

    ndim = 2

    def _decode(self, prob, dist, prob_thresh, nms_thresh, shape):
        labels, details = decode(prob, dist, self.config.grid, prob_thresh, nms_thresh, shape=shape)
        return labels, details


class StarDist3D(_StarDist):
    """StarDist for 3D volumes (star-convex polyhedra on ``n_rays`` golden-spiral rays shaped by the config's
    anisotropy, StarDist's ``Rays_GoldenSpiral``). predict_instances decodes with cellkern's 3D NMS and
    polyhedron_to_label (:func:`cellkern.star.polyhedra.decode3d`)."""

    ndim = 3

    @property
    def rays(self):
        """The (n_rays, 3) unit ray directions (z, y, x) the distances are measured along."""
        return rays_golden_spiral(self.config.n_rays, self.config.anisotropy)

    @property
    def ray_set(self):
        """The rays as a Rays object (vertices and the faces the polyhedra are made of)."""
        return _ray_set(self.config.n_rays, None if self.config.anisotropy is None else
                        tuple(float(a) for a in self.config.anisotropy))

    def _decode(self, prob, dist, prob_thresh, nms_thresh, shape):
        from ..star.polyhedra import decode3d

        return decode3d(prob, dist, self.ray_set, self.config.grid, prob_thresh, nms_thresh, shape)


@functools.lru_cache(maxsize=8)
def _ray_set(n_rays, anisotropy):
    from ..star.rays import Rays_GoldenSpiral

    return Rays_GoldenSpiral(n_rays, anisotropy=anisotropy)


def sigmoid(logit):
    """The probability of a logit, float32. In float64 through numpy, elementwise: the value of a cell never
    depends on where it sits in the array (torch's vectorised CPU sigmoid and its scalar tail can differ in the
    last bit), so big images predicted block by block get exactly the whole image's probabilities."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logit, np.float64)))).astype(np.float32)


def clip_dist(dist):
    """Distances clipped below at 1e-3 (as StarDist: a polygon never collapses to its centre)."""
    return np.maximum(dist, np.float32(1e-3))


def _config(config, overrides, ndim, cls_name):
    if config is None:
        config = StarDistConfig(ndim=ndim, **overrides)
    elif isinstance(config, dict):
        config = StarDistConfig.from_dict({"ndim": ndim, **config, **overrides})
    elif isinstance(config, StarDistConfig):
        config = dataclasses.replace(config, **overrides) if overrides else config
    else:
        raise TypeError(f"config: expected a StarDistConfig, a dict or None, got {type(config).__name__}")
    if config.ndim != ndim:
        raise ValueError(f"config: {cls_name} needs ndim={ndim}, got ndim={config.ndim}")
    return config


def _threshold(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v <= 1:
        raise ValueError(f"{name}: expected a number in [0, 1], got {v!r}")
    return float(v)


def _labels(labels, ndim):
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels: expected a numpy array, got {type(labels).__name__}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels: expected an integer label image, got {labels.dtype}")
    if labels.ndim != ndim:
        raise ValueError(f"labels: expected a {ndim}D label image, got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels: must be non-negative (0 is background)")
    return labels
