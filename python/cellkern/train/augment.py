"""Training augmentation: random patches with object-size scaling, optional elastic warps, flips, 90-degree
rotations, intensity scale/shift/gamma, blur and noise; each transform is also a plain function of its parameters."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .data import random_crop_corner

__all__ = ["Augmentation", "zoom_coordinates", "elastic_offsets", "resample", "flip_rotate", "adjust_intensity",
           "gaussian_blur", "add_noise"]


def zoom_coordinates(in_shape, out_shape):
    """Input coordinates ``(ndim, *out_shape)`` sampled by a resize from ``in_shape`` to ``out_shape``: output pixel
    i looks at ``(i + 0.5) * in / out - 0.5`` along each axis (pixel centres stay aligned, as in a resize of the
    whole field of view)."""
    axes = [(np.arange(o) + 0.5) * (i / o) - 0.5 for i, o in zip(in_shape, out_shape)]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def elastic_offsets(shape, amplitude, smoothness, rng):
    """A smooth random displacement field ``(ndim, *shape)``: white noise blurred by a Gaussian of sigma
    ``smoothness`` pixels, scaled so the largest displacement of each component is ``amplitude`` pixels."""
    from scipy.ndimage import gaussian_filter

    out = np.empty((len(shape),) + tuple(shape))
    for d in range(len(shape)):
        f = gaussian_filter(rng.standard_normal(shape), smoothness, mode="reflect")
        out[d] = f * (amplitude / max(np.abs(f).max(), 1e-12))
    return out


def resample(image, labels, coords):
    """Samples ``image (*spatial, C)`` and ``labels (*spatial)`` at ``coords (ndim, *out)`` (input pixel
    coordinates): the image linearly interpolated, the labels at the nearest pixel (``floor(c + 0.5)``), so label
    ids are never mixed. Coordinates outside the input take the border pixel (edge clamping) for both."""
    from scipy.ndimage import map_coordinates

    ndim = labels.ndim
    out = np.empty(coords.shape[1:] + image.shape[-1:], np.float32)
    for c in range(image.shape[-1]):
        out[..., c] = map_coordinates(image[..., c], coords, order=1, mode="nearest")
    idx = tuple(np.clip(np.floor(coords[d] + 0.5).astype(np.int64), 0, labels.shape[d] - 1) for d in range(ndim))
    return out, labels[idx]


def flip_rotate(image, labels, flips=(), k=0):
    """Flips the spatial axes in ``flips``, then rotates by ``k`` quarter turns in the plane of the last two
    spatial axes (``np.rot90``). ``image`` is ``(*spatial, C)``, ``labels`` ``(*spatial)``; exact (no resampling)."""
    nd = labels.ndim
    if flips:
        image, labels = np.flip(image, tuple(flips)), np.flip(labels, tuple(flips))
    if k % 4:
        image, labels = np.rot90(image, k, axes=(nd - 2, nd - 1)), np.rot90(labels, k, axes=(nd - 2, nd - 1))
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def adjust_intensity(x, scale=1.0, shift=0.0, gamma=1.0):
    """``scale * sign(x) * |x|^gamma + shift`` on a normalised image (the gamma curve is odd, so negative values
    left by the percentile normalisation stay monotone)."""
    y = x if gamma == 1 else np.sign(x) * np.abs(x) ** np.float32(gamma)
    return (np.float32(scale) * y + np.float32(shift)).astype(np.float32, copy=False)


def gaussian_blur(x, sigma):
    """Gaussian blur of sigma pixels over the spatial axes of ``x (*spatial, C)`` (scipy, mirror borders
    ``'reflect'``, kernel truncated at 4 sigma)."""
    from scipy.ndimage import gaussian_filter

    if sigma <= 0:
        return x
    return gaussian_filter(x, [float(sigma)] * (x.ndim - 1) + [0.0], mode="reflect").astype(np.float32, copy=False)


def add_noise(x, sigma, rng, poisson=0.0):
    """Adds zero-mean Gaussian noise of variance ``sigma**2 + poisson * max(x, 0)``: read noise plus a shot-noise
    term that grows with the signal."""
    std = np.sqrt(np.float32(sigma) ** 2 + np.float32(poisson) * np.maximum(x, 0, dtype=np.float32))
    return (x + std * rng.standard_normal(x.shape, dtype=np.float32)).astype(np.float32, copy=False)


@dataclass
class Augmentation:
    """Random augmentation of training patches. Ranges are (low, high) drawn uniformly (``scale`` and ``gamma``:
    log-uniformly); None or a zero range turns a transform off. Defaults are chosen so a model trained on
    synthetic nuclei meets real fluorescence images: objects 0.75-1.33x their size, any orientation, dimmer or
    brighter, blurrier and noisier than the training data.

    - ``scale``: object-size factor: a crop of ``patch / s`` is resized to the patch (image linear, labels nearest).
    - ``elastic``: largest displacement in pixels of a smooth random warp (sigma ``elastic_smoothness``); 0 = off.
    - ``flips`` (every spatial axis with probability 1/2) and ``rotations`` (0-3 quarter turns in the last two axes;
      only half turns when those axes differ in size).
    - ``intensity_scale``, ``intensity_shift``, ``gamma``: :func:`adjust_intensity`.
    - ``blur``: sigma range, applied with probability ``blur_prob``; ``noise``: Gaussian sigma range and
      ``poisson``: shot-noise factor range, applied with probability ``noise_prob``.
    """

    scale: tuple | None = (0.75, 1.33)
    elastic: float = 0.0
    elastic_smoothness: float = 8.0
    flips: bool = True
    rotations: bool = True
    intensity_scale: tuple | None = (0.6, 1.6)
    intensity_shift: tuple | None = (-0.15, 0.15)
    gamma: tuple | None = (0.75, 1.33)
    blur: tuple | None = (0.3, 1.5)
    blur_prob: float = 0.3
    noise: tuple | None = (0.0, 0.08)
    poisson: tuple | None = (0.0, 0.03)
    noise_prob: float = 0.5

    @classmethod
    def none(cls):
        """No augmentation: plain random crops."""
        return cls(scale=None, flips=False, rotations=False, intensity_scale=None, intensity_shift=None, gamma=None,
                   blur=None, noise=None, poisson=None)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"augment: unknown fields {sorted(unknown)}")
        return cls(**d)

    def patch(self, image, labels, foreground, patch_size, rng, foreground_prob=0.9):
        """One augmented training patch ``(image (*patch, C) float32, labels (*patch))`` from a normalised image
        ``(*spatial, C)``, its labels and their foreground flat indices, drawing everything from ``rng``."""
        shape = labels.shape
        patch_size = tuple(patch_size)
        s = 1.0
        if self.scale is not None and self.scale[0] != self.scale[1]:
            s = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
        elif self.scale is not None:
            s = float(self.scale[0])
        # the crop may not exceed the image: limit the zoom-out (isotropic, so shapes keep their aspect)
        s = max(s, max(p / d for p, d in zip(patch_size, shape)))
        crop = tuple(min(d, max(1, int(round(p / s)))) for p, d in zip(patch_size, shape))
        corner = random_crop_corner(shape, crop, rng, foreground, foreground_prob)
        if crop == patch_size and self.elastic <= 0:
            sl = tuple(slice(c, c + n) for c, n in zip(corner, crop))
            img, lab = image[sl], labels[sl]
        else:
            coords = zoom_coordinates(crop, patch_size)
            if self.elastic > 0:
                coords += elastic_offsets(patch_size, self.elastic * crop[0] / patch_size[0],
                                          self.elastic_smoothness, rng)
            # resample from the crop plus a margin, so samples just outside the crop read the real neighbours
            margin = 1 + int(np.ceil(self.elastic * crop[0] / patch_size[0]))
            lo = [max(0, c - margin) for c in corner]
            hi = [min(d, c + n + margin) for c, n, d in zip(corner, crop, shape)]
            coords += np.array([c - a for c, a in zip(corner, lo)], np.float64).reshape((-1,) + (1,) * len(shape))
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            img, lab = resample(image[sl], labels[sl], coords)
        flips = tuple(d for d in range(len(shape)) if self.flips and rng.uniform() < 0.5)
        k = 0
        if self.rotations:
            k = int(rng.integers(4)) if patch_size[-1] == patch_size[-2] else 2 * int(rng.integers(2))
        img, lab = flip_rotate(img, lab, flips, k)
        img = img.astype(np.float32, copy=True)  # never write into the cached image
        if self.gamma is not None or self.intensity_scale is not None or self.intensity_shift is not None:
            g = float(np.exp(rng.uniform(*np.log(self.gamma)))) if self.gamma is not None else 1.0
            a = float(rng.uniform(*self.intensity_scale)) if self.intensity_scale is not None else 1.0
            b = float(rng.uniform(*self.intensity_shift)) if self.intensity_shift is not None else 0.0
            img = adjust_intensity(img, a, b, g)
        if self.blur is not None and rng.uniform() < self.blur_prob:
            img = gaussian_blur(img, rng.uniform(*self.blur))
        if (self.noise is not None or self.poisson is not None) and rng.uniform() < self.noise_prob:
            sigma = rng.uniform(*self.noise) if self.noise is not None else 0.0
            poisson = rng.uniform(*self.poisson) if self.poisson is not None else 0.0
            img = add_noise(img, sigma, rng, poisson)
        return img, lab
