"""Fixtures for the training tests: a tiny StarDist2D and small synthetic data sets."""
from __future__ import annotations

import pytest
import torch

from cellkern.data import synthetic_nuclei
from cellkern.models import StarDist2D


def make_model(seed=0, **overrides):
    """A StarDist2D small enough to train in seconds: 8 rays, grid 2, a one-level U-Net of 8 channels."""
    torch.manual_seed(seed)
    return StarDist2D(**{"n_rays": 8, "grid": (2, 2), "unet_depth": 1, "unet_base_channels": 8,
                         "net_conv_after_unet": 0, **overrides})


@pytest.fixture(scope="session")
def nuclei():
    """Six 64x64 synthetic images (four for training, two for validation)."""
    pairs = [synthetic_nuclei((64, 64), 8, seed=s, radius=(4, 7)) for s in range(6)]
    return [p[0] for p in pairs], [p[1] for p in pairs]
