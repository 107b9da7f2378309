"""StarDistConfig: a StarDist model's architecture, loss, normalisation, thresholds and training defaults."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Optional

from ..nn.unet import ACTIVATIONS, UPSAMPLE_MODES

__all__ = ["StarDistConfig"]

# StarDist's defaults where 2D and 3D differ (Config2D / Config3D); None in a field means "this default"
_DEFAULTS = {
    2: dict(n_rays=32, unet_depth=3, train_patch_size=(256, 256), train_batch_size=4),
    3: dict(n_rays=96, unet_depth=2, train_patch_size=(128, 128, 128), train_batch_size=1),
}


@dataclass
class StarDistConfig:
    """Everything that defines a StarDist model except its weights (saved as JSON next to them).

    Architecture (StarDist's): ``grid`` sub-sampling by a stem of ``log2(max(grid))`` stages (each
    ``unet_conv_per_level`` convolutions with ``unet_base_channels`` filters, then a max-pool by 2 on the axes
    still short of ``grid``), a :class:`cellkern.nn.UNet` (``unet_*``), an optional feature convolution with
    ``net_conv_after_unet`` filters (0: none), and 1x1 heads for the probability (1 channel, a logit) and the
    ``n_rays`` distances. ``anisotropy`` (3D, (z, y, x) spacing) shapes the rays and the distance transform.

    Fields left None take the 2D / 3D default of ``ndim`` (n_rays 32 / 96, unet_depth 3 / 2, train_patch_size
    (256, 256) / (128, 128, 128), train_batch_size 4 / 1; grid all ones). Invalid values raise ValueError naming
    the field (at construction, so also in :meth:`from_dict`).
    """

    ndim: int = 2
    n_rays: Optional[int] = None
    grid: Optional[tuple] = None
    anisotropy: Optional[tuple] = None
    n_channel_in: int = 1
    unet_depth: Optional[int] = None
    unet_base_channels: int = 32
    unet_conv_per_level: int = 2
    unet_kernel_size: int = 3
    unet_activation: str = "relu"
    unet_batch_norm: bool = False
    unet_upsample: str = "nearest"
    net_conv_after_unet: int = 128
    train_loss_weights: tuple = (1.0, 0.2)
    train_background_reg: float = 1e-4
    norm_pmin: float = 1.0
    norm_pmax: float = 99.8
    prob_thresh: float = 0.5
    nms_thresh: float = 0.4
    train_patch_size: Optional[tuple] = None
    train_batch_size: Optional[int] = None
    train_epochs: int = 400
    train_steps_per_epoch: int = 100
    train_learning_rate: float = 3e-4
    train_foreground_only: float = 0.9
    train_reduce_lr_factor: float = 0.5
    train_reduce_lr_patience: int = 40
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.ndim not in (2, 3) or isinstance(self.ndim, bool):
            raise ValueError(f"ndim: expected 2 or 3, got {self.ndim!r}")
        nd = self.ndim
        for name, value in _DEFAULTS[nd].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.grid is None:
            self.grid = (1,) * nd
        _int(self, "n_rays", 3 if nd == 2 else 4)
        self.grid = _ints(self, "grid", nd, 1)
        if any(g & (g - 1) for g in self.grid):
            raise ValueError(f"grid: expected powers of 2, got {self.grid!r}")
        if self.anisotropy is not None:
            if nd != 3:
                raise ValueError(f"anisotropy: only 3D models have one (it shapes the rays), got {self.anisotropy!r}")
            self.anisotropy = _numbers(self, "anisotropy", nd, positive=True)
        _int(self, "n_channel_in", 1)
        _int(self, "unet_depth", 1)
        _int(self, "unet_base_channels", 1)
        _int(self, "unet_conv_per_level", 1)
        k = self.unet_kernel_size
        if isinstance(k, (list, tuple)):
            k = self.unet_kernel_size = _ints(self, "unet_kernel_size", nd, 1)
        ks = k if isinstance(k, tuple) else (k,)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v % 2 for v in ks):
            raise ValueError(f"unet_kernel_size: expected an odd int or {nd} odd ints, got {k!r}")
        _choice(self, "unet_activation", ACTIVATIONS)
        _choice(self, "unet_upsample", UPSAMPLE_MODES)
        if not isinstance(self.unet_batch_norm, bool):
            raise ValueError(f"unet_batch_norm: expected True or False, got {self.unet_batch_norm!r}")
        _int(self, "net_conv_after_unet", 0)
        self.train_loss_weights = _numbers(self, "train_loss_weights", 2, positive=False)
        _number(self, "train_background_reg", 0)
        _number(self, "norm_pmin", 0, 100)
        _number(self, "norm_pmax", 0, 100)
        if not self.norm_pmin < self.norm_pmax:
            raise ValueError(f"norm_pmin, norm_pmax: expected norm_pmin < norm_pmax, got {self.norm_pmin!r}, "
                             f"{self.norm_pmax!r}")
        _number(self, "prob_thresh", 0, 1)
        _number(self, "nms_thresh", 0, 1)
        self.train_patch_size = _ints(self, "train_patch_size", nd, 1)
        _int(self, "train_batch_size", 1)
        _int(self, "train_epochs", 0)
        _int(self, "train_steps_per_epoch", 1)
        _number(self, "train_learning_rate", 0)
        _number(self, "train_foreground_only", 0, 1)
        _number(self, "train_reduce_lr_factor", 0, 1)
        _int(self, "train_reduce_lr_patience", 0)
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra: expected a dict (free-form, JSON-serialisable), got {self.extra!r}")

    @property
    def downsampling_factor(self):
        """Input sizes the network takes are multiples of grid * 2**unet_depth per axis."""
        return tuple(g * 2 ** self.unet_depth for g in self.grid)

    def to_dict(self):
        """A JSON-serialisable dict (tuples as lists) that :meth:`from_dict` turns back into an equal config."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d):
        """The config of a dict as :meth:`to_dict` writes it; missing fields take their defaults, unknown ones
        raise ValueError naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"config: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def _int(cfg, name, lo):
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    setattr(cfg, name, int(v))


def _number(cfg, name, lo, hi=math.inf):
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (lo <= v <= hi) or not math.isfinite(v):
        raise ValueError(f"{name}: expected a number in [{lo}, {hi}], got {v!r}")
    setattr(cfg, name, float(v))


def _seq(cfg, name, n):
    v = getattr(cfg, name)
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != n:
        raise ValueError(f"{name}: expected {n} values, got {v!r}")
    return tuple(v)


def _ints(cfg, name, n, lo):
    v = _seq(cfg, name, n)
    if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= lo for x in v):
        raise ValueError(f"{name}: expected {n} integers >= {lo}, got {getattr(cfg, name)!r}")
    return tuple(int(x) for x in v)


def _numbers(cfg, name, n, positive):
    v = _seq(cfg, name, n)
    ok = all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and
             (x > 0 if positive else x >= 0) for x in v)
    if not ok:
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name}: expected {n} {kind} finite numbers, got {getattr(cfg, name)!r}")
    return tuple(float(x) for x in v)


def _choice(cfg, name, options):
    if getattr(cfg, name) not in options:
        raise ValueError(f"{name}: expected one of {options}, got {getattr(cfg, name)!r}")
