"""The tile plan: core grid, aligned tiles whose halos cover the network's numeric receptive field, tile size from a
memory budget."""
from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass

import torch

from ..nn.unet import WINOGRAD_TILE

__all__ = ["TilePlan", "plan_tiles", "alignment", "estimate_bytes_per_pixel", "output_spec"]

DEFAULT_BUDGET = 256 << 20  # bytes of activations per batch of tiles when neither tile_size nor a budget is given


@dataclass(frozen=True)
class TilePlan:
    """Tiles over an image of ``shape`` (spatial), run as if it were reflect-padded at the end to ``padded``.

    Per axis ``d``: cores ``[k * core[d], min((k + 1) * core[d], shape[d]))`` partition the image (their outputs:
    the cells ``[c0 / grid, ceil(c1 / grid))`` of a model predicting on a coarser ``grid``); the tile of a core
    is the input range ``[a, b)`` of the padded image that holds every input that can change the core's outputs,
    even in their rounding (:meth:`cellkern.nn.UNet.input_interval` with ``numeric=True``), widened so that ``a``
    is a multiple of ``align[d]`` (the down-sampling factor, times the Winograd tile on the axes it tiles: then
    every layer of the tile sees the same pooling phases and Winograd tiles as the whole image) and ``b - a`` a
    multiple of the down-sampling factor, and clipped to ``[0, padded)`` (where a tile ends at the image border it
    sees the same zero padding as the whole image)."""

    shape: tuple
    padded: tuple
    core: tuple
    align: tuple
    factor: tuple
    grid: tuple
    axes: tuple  # per axis: [(core_lo, core_hi, tile_lo, tile_hi), ...]

    @property
    def tiles(self):
        """Every tile as a tuple over axes of (core_lo, core_hi, tile_lo, tile_hi)."""
        return list(itertools.product(*self.axes))

    @property
    def halo(self):
        """Per axis: the largest (left, right) extension of a tile beyond its core."""
        return tuple((max(c0 - a for c0, _, a, _ in ax), max(b - c1 for _, c1, _, b in ax)) for ax in self.axes)

    @property
    def tile_shape(self):
        """Per axis: the largest tile."""
        return tuple(max(b - a for _, _, a, b in ax) for ax in self.axes)

    def __len__(self):
        return math.prod(len(ax) for ax in self.axes)


def _spatial_dims(model):
    nd = getattr(model, "ndim", None)
    if nd not in (2, 3):
        raise TypeError("model: expected a cellkern.nn.UNet or a model with ndim, downsampling_factor and "
                        "input_interval (cellkern.models.StarDist2D/3D)")
    return nd


def output_spec(model):
    """``(channels, grid)`` of the model's output: a U-Net has ``output_channels`` per input pixel; a StarDist
    model has 1 + n_rays channels (probability logit, then the distances, concatenated) per cell of its
    ``config.grid``."""
    nd = _spatial_dims(model)
    channels = getattr(model, "output_channels", None)
    if channels is not None:
        return int(channels), (1,) * nd
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "n_rays", None) and getattr(config, "grid", None):
        return 1 + int(config.n_rays), tuple(int(g) for g in config.grid)
    raise TypeError(f"model: expected a cellkern.nn.UNet or a StarDist model, got {type(model).__name__}")


def alignment(model):
    """Per axis: the multiple every tile start must be at to see the whole image's pooling phases and Winograd
    tiles (the down-sampling factor, times the Winograd tile on the axes the Winograd kernel tiles)."""
    nd = _spatial_dims(model)
    f = tuple(model.downsampling_factor)
    return tuple(v * WINOGRAD_TILE if d >= nd - 2 else v for d, v in enumerate(f))


def _per_axis(v, nd, name):
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = (int(v),) * nd
    try:
        v = tuple(v)
    except TypeError:
        raise ValueError(f"{name}: expected an int or {nd} ints, got {v!r}") from None
    if len(v) != nd or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in v):
        raise ValueError(f"{name}: expected an int or {nd} ints, got {v!r}")
    return tuple(int(x) for x in v)


def estimate_bytes_per_pixel(model, dtype=torch.float32):
    """Bytes of activations a no-grad forward holds per input pixel (estimate): half the sum of every leaf layer's
    output on a probe input, measured with forward hooks (the forward frees most outputs once read)."""
    _spatial_dims(model)  # TypeError for what is not a model
    probe = tuple(2 * a for a in alignment(model))
    total = [0]

    def hook(_m, _i, out):
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    p = next(model.parameters())
    channels = getattr(model, "in_channels", None) or model.config.n_channel_in
    was_training = model.training
    model.eval()  # the probe must not move batch-norm statistics
    try:
        with torch.no_grad():
            model(torch.zeros((1, channels) + probe, dtype=dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0] / 2 / math.prod(probe)


def plan_tiles(model, shape, tile_size=None, memory_budget=None, batch_size=1):
    """A :class:`TilePlan` for an image of spatial ``shape``.

    ``tile_size``: the core size (int or per axis), a positive multiple of :func:`alignment` (ValueError
    otherwise); None: the largest such core whose tile batch fits ``memory_budget`` bytes of activations (default
    256 MiB, estimated with :func:`estimate_bytes_per_pixel`), capped at the image. A core smaller than the
    receptive field would make every tile mostly halo: ValueError."""
    nd = _spatial_dims(model)
    shape = _per_axis(shape, nd, "shape")
    if any(s <= 0 for s in shape):
        raise ValueError(f"shape: expected positive sizes, got {shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    factor = tuple(int(v) for v in model.downsampling_factor)
    align = alignment(model)
    padded = tuple(-(-s // f) * f for s, f in zip(shape, factor))

    _, grid = output_spec(model)

    def interval(c0, c1, d):  # the input a core [c0, c1) needs: that of its output cells
        return model.input_interval(c0 // grid[d], -(-c1 // grid[d]) - 1, d, numeric=True)

    # the halo a core needs (phase-independent once the core starts on the alignment)
    need = [(-lo, hi - a + 1) for a, (lo, hi) in ((a, interval(0, a, d)) for d, a in enumerate(align))]
    rf = model.receptive_field()
    if tile_size is None:
        budget = DEFAULT_BUDGET if memory_budget is None else memory_budget
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not budget > 0:
            raise ValueError(f"memory_budget: expected a positive number of bytes, got {memory_budget!r}")
        bpp = estimate_bytes_per_pixel(model) * batch_size
        core = list(align)
        # grow every axis together (cubic tiles minimise halo overhead) while the tile batch fits the budget
        while True:
            grown = [min(c + a, -(-s // a) * a) for c, a, s in zip(core, align, shape)]
            tile = [g + l + r for g, (l, r) in zip(grown, need)]
            if grown == core or math.prod(tile) * bpp > budget:
                break
            core = grown
        core = tuple(core)
    else:
        if memory_budget is not None:
            raise ValueError("give tile_size or memory_budget, not both")
        core = _per_axis(tile_size, nd, "tile_size")
        for d, (c, a) in enumerate(zip(core, align)):
            if c <= 0 or c % a:
                raise ValueError(f"tile_size: axis {d} core {c} must be a positive multiple of {a} (the down-"
                                 f"sampling factor {factor[d]}" + (f" times the Winograd tile {WINOGRAD_TILE})"
                                                                   if a != factor[d] else ")"))
            if c < min(rf.size[d], padded[d]):
                raise ValueError(f"tile_size: axis {d} core {c} is smaller than the receptive field "
                                 f"{rf.size[d]}: use larger tiles")
    axes = []
    for d in range(nd):
        ax = []
        for c0 in range(0, shape[d], core[d]):
            c1 = min(c0 + core[d], shape[d])
            lo, hi = interval(c0, c1, d)
            a = max(0, lo - lo % align[d])
            b = min(padded[d], a + -(-(hi + 1 - a) // factor[d]) * factor[d])
            ax.append((c0, c1, a, b))
        axes.append(ax)
    return TilePlan(shape, padded, core, align, factor, grid, tuple(axes))
