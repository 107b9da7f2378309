"""U-Net (2D/3D) built only from cellkern's layers, with its exact receptive field and a stable state_dict."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import ops
from .conv import Conv2d, Conv3d, ConvTranspose2d, ConvTranspose3d
from .layers import MaxPool2d, MaxPool3d

__all__ = ["UNet", "ConvBlock", "NearestUpsample", "ReceptiveField", "receptive_field", "input_interval"]

ACTIVATIONS = ("relu", "leaky_relu")
UPSAMPLE_MODES = ("transposed", "nearest")


class ReceptiveField(NamedTuple):
    """Per spatial dim: every input pixel that can influence output pixel p lies in [p - left, p + right]
    (maximised over p's phase modulo the down-sampling factor); size = left + right + 1."""

    size: tuple
    left: tuple
    right: tuple


def _check_int(v, name, lo):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    return v


def kernel_tuple(kernel_size, ndim, name="kernel_size"):
    """An odd kernel size (int or ndim ints) as a tuple: 'same' padding k // 2 needs odd kernels."""
    k = (kernel_size,) * ndim if isinstance(kernel_size, int) and not isinstance(kernel_size, bool) else kernel_size
    try:
        k = tuple(k)
    except TypeError:
        raise ValueError(f"{name}: expected an odd int or {ndim} odd ints, got {kernel_size!r}") from None
    if len(k) != ndim or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v % 2 for v in k):
        raise ValueError(f"{name}: expected an odd int or {ndim} odd ints, got {kernel_size!r}")
    return k


def check_activation(activation, negative_slope):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if not (isinstance(negative_slope, (int, float)) and 0 <= negative_slope < math.inf):
        raise ValueError(f"negative_slope: expected a number >= 0, got {negative_slope!r}")


def _layer_types(ndim):
    if ndim == 2:
        return Conv2d, ConvTranspose2d, MaxPool2d, torch.nn.BatchNorm2d
    return Conv3d, ConvTranspose3d, MaxPool3d, torch.nn.BatchNorm3d


class NearestUpsample(torch.nn.Module):
    """Nearest-neighbour up-sampling by 2 as a depthwise transposed convolution with a constant all-ones 2^ndim
    kernel (groups = channels) on cellkern's kernel. The kernel is a non-persistent buffer: no parameters and no
    state_dict entries, but it follows the module's ``.to(dtype / device)``."""

    def __init__(self, channels, ndim):
        super().__init__()
        self.ndim = ndim
        self.channels = channels
        # the geometry the receptive-field walk reads (same attribute names as torch's ConvTransposeNd)
        self.kernel_size, self.stride = (2,) * ndim, (2,) * ndim
        self.padding, self.dilation, self.transposed = (0,) * ndim, (1,) * ndim, True
        self.register_buffer("kernel", torch.ones((channels, 1) + (2,) * ndim), persistent=False)

    def forward(self, x):
        op = ops.conv_transpose2d if self.ndim == 2 else ops.conv_transpose3d
        return op(x, self.kernel, None, stride=2, groups=self.channels)

    def extra_repr(self):
        return f"channels={self.channels}, scale_factor=2"


class ConvBlock(torch.nn.Module):
    """``n_convs`` 'same' convolutions ``conv{i}``; without batch norm each has its activation fused, with batch
    norm each is conv (no bias) -> ``norm{i}`` (torch BatchNorm) -> activation. The first convolution accepts a
    list of tensors (a channel concatenation that cellkern's conv reads in place)."""

    def __init__(self, ndim, in_channels, out_channels, n_convs, kernel_size, activation="relu",
                 negative_slope=0.01, batch_norm=False):
        super().__init__()
        Conv, _, _, Norm = _layer_types(ndim)
        k = kernel_tuple(kernel_size, ndim)
        self.n_convs, self.batch_norm = n_convs, batch_norm
        self.activation, self.negative_slope = activation, float(negative_slope)
        for i in range(n_convs):
            conv = Conv(in_channels if i == 0 else out_channels, out_channels, k, padding=tuple(v // 2 for v in k),
                        bias=not batch_norm, activation=None if batch_norm else activation,
                        negative_slope=negative_slope)
            setattr(self, f"conv{i}", conv)
            if batch_norm:
                setattr(self, f"norm{i}", Norm(out_channels))

    def layers(self):
        """The spatial layers in the order they run (the receptive-field walk reads them)."""
        return [getattr(self, f"conv{i}") for i in range(self.n_convs)]

    def forward(self, x):
        for i in range(self.n_convs):
            x = getattr(self, f"conv{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"norm{i}")(x)
                x = F.relu(x) if self.activation == "relu" else F.leaky_relu(x, self.negative_slope)
        return x


class _DecoderBlock(ConvBlock):
    """``up`` (transposed conv, or nearest up-sampling) then the ConvBlock on [upsampled, skip]."""

    def __init__(self, ndim, in_channels, skip_channels, out_channels, n_convs, kernel_size, activation,
                 negative_slope, batch_norm, upsample):
        up_channels = out_channels if upsample == "transposed" else in_channels
        super().__init__(ndim, up_channels + skip_channels, out_channels, n_convs, kernel_size, activation,
                         negative_slope, batch_norm)
        if upsample == "transposed":
            self.up = _layer_types(ndim)[1](in_channels, out_channels, 2, stride=2)
        else:
            self.up = NearestUpsample(in_channels, ndim)

    def forward(self, x, skip):
        return super().forward([self.up(x), skip])


class UNet(torch.nn.Module):
    """A 2D or 3D U-Net made of cellkern layers (cellkern.nn.Conv*d with fused activations, MaxPool*d,
    ConvTranspose*d).

    Level l (0 .. depth-1) has ``base_channels * 2**l`` channels, the bottleneck ``base_channels * 2**depth``.
    Encoder level l: ``conv_per_level`` 'same' convolutions, then a 2x max-pool. Decoder level l: up-sampling by 2
    (``upsample="transposed"``: a learned 2x2 transposed convolution to level l's channels; ``"nearest"``: a
    parameter-free nearest-neighbour copy, see :class:`NearestUpsample`), then ``conv_per_level`` convolutions
    whose first one reads ``[upsampled, skip]`` as a list (the concatenation is never materialised). With
    ``out_channels`` a 1x1 convolution ``head`` (no activation) follows; None: the output is level 0's features.

    Input ``(N, in_channels, *spatial)`` with every spatial size a multiple of ``downsampling_factor``
    (``2**depth``); output ``(N, out_channels or base_channels, *spatial)``.

    state_dict names (stable; ``i`` counts convolutions within a level from 0, ``l`` is the level):

    ==================================  ===============================================================
    ``encoder.{l}.conv{i}.weight/bias``  encoder convolutions (no bias with batch norm)
    ``encoder.{l}.norm{i}.*``            batch norm (weight, bias, running_mean, running_var,
                                         num_batches_tracked), only with ``batch_norm=True``
    ``bottleneck.conv{i}.*``,            the lowest level
    ``bottleneck.norm{i}.*``
    ``decoder.{l}.up.weight/bias``       transposed convolution (``upsample="transposed"`` only)
    ``decoder.{l}.conv{i}.*``,           decoder convolutions; conv0's input channels are
    ``decoder.{l}.norm{i}.*``            [upsampled, skip] in that order
    ``head.weight/bias``                 only with ``out_channels``
    ==================================  ===============================================================

    Weights have torch's layouts and initialisation; :class:`cellkern.reference.ReferenceUNet` (torch.nn layers
    only) has the same names and loads the same state_dict.
    """

    def __init__(self, ndim=2, in_channels=1, out_channels=None, depth=3, base_channels=32, conv_per_level=2,
                 kernel_size=3, activation="relu", negative_slope=0.01, batch_norm=False, upsample="transposed"):
        super().__init__()
        if ndim not in (2, 3) or isinstance(ndim, bool):
            raise ValueError(f"ndim: expected 2 or 3, got {ndim!r}")
        _check_int(in_channels, "in_channels", 1)
        if out_channels is not None:
            _check_int(out_channels, "out_channels", 1)
        _check_int(depth, "depth", 1)
        _check_int(base_channels, "base_channels", 1)
        _check_int(conv_per_level, "conv_per_level", 1)
        kernel_tuple(kernel_size, ndim)
        check_activation(activation, negative_slope)
        if not isinstance(batch_norm, bool):
            raise ValueError(f"batch_norm: expected True or False, got {batch_norm!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample: expected one of {UPSAMPLE_MODES}, got {upsample!r}")
        self.ndim, self.in_channels, self.out_channels, self.depth = ndim, in_channels, out_channels, depth
        self.upsample = upsample
        Conv, _, MaxPool, _ = _layer_types(ndim)
        ch = [base_channels * 2 ** level for level in range(depth + 1)]
        common = dict(kernel_size=kernel_size, activation=activation, negative_slope=negative_slope,
                      batch_norm=batch_norm)
        self.encoder = torch.nn.ModuleList(
            ConvBlock(ndim, in_channels if level == 0 else ch[level - 1], ch[level], conv_per_level, **common)
            for level in range(depth))
        self.pool = MaxPool(2)
        self.bottleneck = ConvBlock(ndim, ch[depth - 1], ch[depth], conv_per_level, **common)
        self.decoder = torch.nn.ModuleList(
            _DecoderBlock(ndim, ch[level + 1], ch[level], ch[level], conv_per_level, upsample=upsample, **common)
            for level in range(depth))
        self.head = Conv(ch[0], out_channels, 1) if out_channels is not None else None
        self.output_channels = out_channels if out_channels is not None else ch[0]

    @property
    def downsampling_factor(self):
        """Per spatial dim: the product of the pooling strides on the way down (input sizes must be multiples)."""
        s = self.pool.stride
        s = (s,) * self.ndim if isinstance(s, int) else tuple(s)
        return tuple(v ** self.depth for v in s)

    def forward(self, x):
        check_input(x, self.ndim, self.in_channels, self.downsampling_factor)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for level in reversed(range(self.depth)):
            x = self.decoder[level](x, skips[level])
        return self.head(x) if self.head is not None else x

    def input_interval(self, lo, hi, dim, numeric=False):
        """The input positions along ``dim`` that output positions [lo, hi] can depend on (a hull), walking the
        layers backwards: decoder levels from the output down, where each level's interval is also demanded from
        the skip, then the encoder back up, taking the hull of the skip's and the deeper path's demands.
        ``numeric``: the positions that can change the output's rounding (see :func:`layers_back`)."""
        if self.head is not None:
            lo, hi = layers_back([self.head], lo, hi, dim, numeric)
        skip_demand = []
        for level in range(self.depth):
            block = self.decoder[level]
            lo, hi = layers_back(block.layers(), lo, hi, dim, numeric)
            skip_demand.append((lo, hi))
            lo, hi = layers_back([block.up], lo, hi, dim, numeric)
        lo, hi = layers_back(self.bottleneck.layers(), lo, hi, dim, numeric)
        for level in reversed(range(self.depth)):
            lo, hi = layers_back([self.pool], lo, hi, dim, numeric)
            lo, hi = min(lo, skip_demand[level][0]), max(hi, skip_demand[level][1])
            lo, hi = layers_back(self.encoder[level].layers(), lo, hi, dim, numeric)
        return lo, hi

    def receptive_field(self):
        """The exact receptive field (:class:`ReceptiveField`), computed from the layers."""
        return receptive_field(self.input_interval, self.downsampling_factor)


def check_input(x, ndim, channels, multiple, name="x"):
    """ValueError/TypeError naming ``name`` unless x is a (N, channels, *spatial) float tensor whose spatial sizes
    are multiples of ``multiple``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if x.ndim != ndim + 2:
        dims = "(N, C, H, W)" if ndim == 2 else "(N, C, D, H, W)"
        raise ValueError(f"{name}: expected a {ndim + 2}D tensor {dims}, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, got shape {tuple(x.shape)}")
    spatial = tuple(x.shape[2:])
    if any(s == 0 or s % m for s, m in zip(spatial, multiple)):
        raise ValueError(f"{name}: spatial sizes {spatial} must be positive multiples of the down-sampling factor "
                         f"{tuple(multiple)}")


# ---- receptive field: exact interval propagation through the layers ------------------------------------------

def _per_dim(v, ndim):
    return (v,) * ndim if isinstance(v, int) else tuple(v)


def _geometry(m, dim):
    """(transposed, kernel, stride, padding, dilation) of a spatial layer along ``dim``; None for pointwise
    layers (batch norm, activations)."""
    if isinstance(m, (torch.nn.modules.conv._ConvNd, NearestUpsample)):
        nd = len(m.kernel_size)
        k, d = m.kernel_size[dim], m.dilation[dim]
        p = m.padding
        if isinstance(p, str):  # torch's 'valid' / 'same' (the odd pixel of 'same' goes on the right)
            p = 0 if p == "valid" else d * (k - 1) // 2
        else:
            p = _per_dim(p, nd)[dim]
        return m.transposed, k, m.stride[dim], p, d
    if isinstance(m, (torch.nn.modules.pooling._MaxPoolNd, MaxPool2d, MaxPool3d)):
        nd = 2 if isinstance(m, (MaxPool2d, torch.nn.MaxPool2d)) else 3
        g = [_per_dim(v, nd)[dim] for v in (m.kernel_size, m.stride, m.padding, m.dilation)]
        return (False, *g)
    return None


WINOGRAD_TILE = 4  # output tile of the CPU kernel's Winograd F(4x4, 3x3) along H and W


def _winograd_dim(m, dim):
    """Whether ``m`` may run on the Winograd path along ``dim``: a 3x3 (in H, W), stride-1, dilation-1 convolution
    (conservative: the kernel also needs enough channels, which is not checked; a wider hull is still correct)."""
    if not isinstance(m, torch.nn.modules.conv._ConvNd) or m.transposed:
        return False
    nd = len(m.kernel_size)
    hw = range(nd - 2, nd)
    return dim in hw and all(m.kernel_size[i] == 3 and m.stride[i] == 1 and m.dilation[i] == 1 for i in hw)


def layers_back(layers, lo, hi, dim, numeric=False):
    """Map an interval of output positions of a chain of layers (given in forward order) to the hull of the input
    positions it reads, on an unbounded grid (zero padding only removes inputs).

    ``numeric``: the hull of the inputs that can change the outputs' floating-point rounding, not only their
    value: a Winograd convolution computes each 4x4 output tile (tiles start at output 0) from the whole 6x6
    input tile, so the interval is first widened to whole tiles. Tiled inference crops halos this wide to be
    bit-equal to a whole-image run."""
    for m in reversed(list(layers)):
        g = _geometry(m, dim)
        if g is None:
            continue
        transposed, k, s, p, d = g
        if numeric and _winograd_dim(m, dim):
            t = WINOGRAD_TILE
            lo, hi = lo - lo % t, hi - hi % t + t - 1
        if not transposed:
            # y[i] reads x[i*s - p + j*d], j = 0 .. k-1
            lo, hi = lo * s - p, hi * s - p + (k - 1) * d
        else:
            # x[i] reaches y[i*s - p + j*d]: per tap j, the exact range of i reaching [lo, hi]; then their hull
            spans = [(-((j * d - lo - p) // s), (hi + p - j * d) // s) for j in range(k)]
            spans = [(a, b) for a, b in spans if a <= b]
            lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    return lo, hi


def input_interval(*stages):
    """An input_interval(lo, hi, dim, numeric=False) function for stages run in order; a stage is a module with its
    own ``input_interval`` or a list of plain layers."""
    def walk(lo, hi, dim, numeric=False):
        for stage in reversed(stages):
            lo, hi = stage.input_interval(lo, hi, dim, numeric) if hasattr(stage, "input_interval") else \
                layers_back(stage, lo, hi, dim, numeric)
        return lo, hi
    return walk


def receptive_field(interval, factor, grid=None):
    """:class:`ReceptiveField` of a network whose output cell q sits at input pixel ``q * grid`` and whose layers
    repeat with period ``factor`` input pixels: for each phase q of the output (0 <= q*grid < factor) the interval
    of input pixels that output cell q depends on is ``interval(q, q, dim)``; left / right are maximised over the
    phases."""
    grid = grid or (1,) * len(factor)
    left, right = [], []
    for dim, (f, g) in enumerate(zip(factor, grid)):
        ext = [(q * g, *interval(q, q, dim)) for q in range(f // g)]
        left.append(max(p - lo for p, lo, _ in ext))
        right.append(max(hi - p for p, _, hi in ext))
    return ReceptiveField(tuple(a + b + 1 for a, b in zip(left, right)), tuple(left), tuple(right))
