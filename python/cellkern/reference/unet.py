"""ReferenceUNet: cellkern.nn.UNet's network written with torch.nn layers only (same arguments, same state_dict),
the oracle the whole-network tests compare against."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ReferenceUNet", "gradient_extents"]


class _Level(nn.Module):
    """conv{i} (+ norm{i}) + activation, torch.nn modules, explicit concatenation of list inputs."""

    def __init__(self, nd, c_in, c_out, n, k, act, bn):
        super().__init__()
        conv = nn.Conv2d if nd == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if nd == 2 else nn.BatchNorm3d
        k = (k,) * nd if isinstance(k, int) else tuple(k)
        self.n, self.bn, self.act = n, bn, act
        for i in range(n):
            setattr(self, f"conv{i}", conv(c_in if i == 0 else c_out, c_out, k, padding=[v // 2 for v in k],
                                           bias=not bn))
            if bn:
                setattr(self, f"norm{i}", norm(c_out))

    def forward(self, x):
        if isinstance(x, list):
            x = torch.cat(x, dim=1)
        for i in range(self.n):
            x = getattr(self, f"conv{i}")(x)
            if self.bn:
                x = getattr(self, f"norm{i}")(x)
            x = self.act(x)
        return x


class ReferenceUNet(nn.Module):
    """Same constructor and state_dict as :class:`cellkern.nn.UNet`; torch.nn.Conv, MaxPool, ConvTranspose,
    BatchNorm, ReLU / LeakyReLU, ``torch.cat`` for the skip connections and ``F.interpolate(mode='nearest')`` for
    ``upsample='nearest'``."""

    def __init__(self, ndim=2, in_channels=1, out_channels=None, depth=3, base_channels=32, conv_per_level=2,
                 kernel_size=3, activation="relu", negative_slope=0.01, batch_norm=False, upsample="transposed"):
        super().__init__()
        act = nn.ReLU() if activation == "relu" else nn.LeakyReLU(negative_slope)
        widths = [base_channels << i for i in range(depth + 1)]
        self.depth, self.upsample = depth, upsample
        self.encoder = nn.ModuleList()
        c = in_channels
        for i in range(depth):
            self.encoder.append(_Level(ndim, c, widths[i], conv_per_level, kernel_size, act, batch_norm))
            c = widths[i]
        self.pool = (nn.MaxPool2d if ndim == 2 else nn.MaxPool3d)(2)
        self.bottleneck = _Level(ndim, c, widths[depth], conv_per_level, kernel_size, act, batch_norm)
        self.decoder = nn.ModuleList()
        for i in range(depth):
            if upsample == "transposed":
                level = _Level(ndim, 2 * widths[i], widths[i], conv_per_level, kernel_size, act, batch_norm)
                level.up = (nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d)(widths[i + 1], widths[i], 2, 2)
            else:
                level = _Level(ndim, widths[i + 1] + widths[i], widths[i], conv_per_level, kernel_size, act,
                               batch_norm)
                level.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.decoder.append(level)
        if out_channels is not None:
            self.head = (nn.Conv2d if ndim == 2 else nn.Conv3d)(widths[0], out_channels, 1)
        else:
            self.head = None

    def forward(self, x):
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for i in range(self.depth - 1, -1, -1):
            x = self.decoder[i]([self.decoder[i].up(x), skips[i]])
        return x if self.head is None else self.head(x)


def gradient_extents(net, in_channels, ndim, size, cells, grid=1, trials=3, seed=0):
    """The receptive field measured: for each output cell ``c`` (a tuple of offsets from the centre cell), per dim,
    the (first, last) input position whose gradient of ``c``'s outputs (all outputs and channels summed) is
    non-zero for some of ``trials`` random float64 inputs of ``size`` pixels per dim, relative to the cell's
    input pixel ``(size // 2 // grid + c) * grid`` (``grid``: the output's sub-sampling, an int or one per dim).
    Pick ``size`` so that the centre cell ``size // 2 // grid`` is a multiple of the network's period in cells:
    then offset c is phase c. ``net`` must be float64; use weights and activations that
    rarely zero a gradient (e.g. leaky ReLU): max-pooling passes one position per window, and the trials let
    every position win somewhere."""
    grid = (grid,) * ndim if isinstance(grid, int) else tuple(grid)
    centre = [size // 2 // g for g in grid]
    x = torch.rand((len(cells) * trials, in_channels) + (size,) * ndim, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(seed), requires_grad=True)
    outs = net(x)
    outs = outs if isinstance(outs, tuple) else (outs,)
    total = 0
    for i, c in enumerate(cells):
        at = tuple(m + q for m, q in zip(centre, c))
        for t in range(trials):
            total = total + sum(o[(i * trials + t, slice(None)) + at].sum() for o in outs)
    (g,) = torch.autograd.grad(total, x)
    nonzero = (g != 0).any(1).numpy()
    result = {}
    for i, c in enumerate(cells):
        seen = nonzero[i * trials:(i + 1) * trials].any(0)
        ext = []
        for d in range(ndim):
            idx = seen.any(tuple(a for a in range(ndim) if a != d)).nonzero()[0]
            if idx.min() == 0 or idx.max() == size - 1:
                raise ValueError(f"size: {size} pixels are too few to hold the receptive field")
            p = (centre[d] + c[d]) * grid[d]
            ext.append((int(idx.min()) - p, int(idx.max()) - p))
        result[c] = ext
    return result
