"""ReferenceStarDist: the StarDist network on torch.nn layers only (same state_dict), oracle of tests and bench."""
from __future__ import annotations

from torch import nn

from .unet import ReferenceUNet, _Level

__all__ = ["ReferenceStarDist"]


class ReferenceStarDist(nn.Module):
    """``ReferenceStarDist(config)``: the network of a :class:`cellkern.models.StarDist2D` / ``StarDist3D`` with
    that :class:`~cellkern.models.StarDistConfig`, on torch.nn layers: the grid stem (convolutions + activation,
    then a max-pool by 2 on every axis still short of the grid), a :class:`ReferenceUNet`, the optional feature
    convolution + activation, and the 1x1 heads. It loads the model's state_dict (``strict=True``); ``forward``
    returns ``(prob_logit, dist)`` as the model does."""

    def __init__(self, config):
        super().__init__()
        c, nd = config, config.ndim
        Conv, Pool = (nn.Conv2d, nn.MaxPool2d) if nd == 2 else (nn.Conv3d, nn.MaxPool3d)
        act = nn.ReLU() if c.unet_activation == "relu" else nn.LeakyReLU(0.01)
        k = (c.unet_kernel_size,) * nd if isinstance(c.unet_kernel_size, int) else tuple(c.unet_kernel_size)
        self.stem, self.stem_pool = nn.ModuleList(), nn.ModuleList()
        channels, pooled = c.n_channel_in, (1,) * nd
        while pooled != tuple(c.grid):
            step = tuple(2 if g > p else 1 for g, p in zip(c.grid, pooled))
            pooled = tuple(p * s for p, s in zip(pooled, step))
            self.stem.append(_Level(nd, channels, c.unet_base_channels, c.unet_conv_per_level, k, act, False))
            self.stem_pool.append(Pool(step))
            channels = c.unet_base_channels
        self.unet = ReferenceUNet(nd, channels, None, c.unet_depth, c.unet_base_channels, c.unet_conv_per_level, k,
                                  c.unet_activation, batch_norm=c.unet_batch_norm, upsample=c.unet_upsample)
        channels = c.unet_base_channels
        self.features = None
        if c.net_conv_after_unet:
            self.features = Conv(channels, c.net_conv_after_unet, k, padding=[v // 2 for v in k])
            channels = c.net_conv_after_unet
        self.act = act
        self.prob = Conv(channels, 1, 1)
        self.dist = Conv(channels, c.n_rays, 1)

    def forward(self, x):
        for block, pool in zip(self.stem, self.stem_pool):
            x = pool(block(x))
        x = self.unet(x)
        if self.features is not None:
            x = self.act(self.features(x))
        return self.prob(x), self.dist(x)
