"""Streamed inference: a network's layers run over an image slab by slab along its first axis, each layer's rows
computed once and kept only while a later layer still reads them, so no halo is ever recomputed along that axis."""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from .. import _pool
from ..nn.conv import _ConvMixin, _ConvTransposeMixin
from ..nn.layers import _MaxPoolNd
from ..nn.unet import WINOGRAD_TILE, NearestUpsample, UNet, _geometry, _winograd_dim
from ..ops._common import emu_flag
from ..ops.conv import _out_size, _params, conv_into

__all__ = ["Graph", "StreamUnsupported", "graph_of", "predict_streamed", "step_bytes", "stream_plan", "stream_rows"]


class StreamUnsupported(ValueError):
    """The model has a layer the streamer cannot run slab by slab (``predict_tiled(strategy="auto")`` then tiles)."""


class Node:
    """One layer of the graph: ``layer`` applied to ``inputs`` (a convolution reads a list of inputs as their
    channel concatenation), then the pointwise ``post`` modules. ``size`` rows along the streamed axis."""

    def __init__(self, layer, inputs, channels, post=(), size=None):
        self.layer, self.inputs, self.channels, self.post = layer, inputs, channels, tuple(post)
        self.size = size
        self.pieces = []  # [(row_lo, tensor (1, C, rows, *cross))] in row order, contiguous in rows
        self.lo = self.hi = 0  # rows held: [lo, hi)

    # -- geometry along the streamed axis ------------------------------------------------------------------

    def geometry(self):
        """(transposed, kernel, stride, padding, dilation) along the streamed axis (dim 0)."""
        return _geometry(self.layer, 0)

    def winograd(self):
        return _winograd_dim(self.layer, 0)

    def input_rows(self, y0, y1):
        """The input rows [r0, r1] (unclipped) this node's output rows [y0, y1] read."""
        t, k, s, p, d = self.geometry()
        if not t:
            return y0 * s - p, y1 * s - p + (k - 1) * d
        return -((p + (k - 1) * d - y0) // s), (y1 + p) // s

    def out_size(self, n):
        t, k, s, p, d = self.geometry()
        if not t:
            return (n + 2 * p - d * (k - 1) - 1) // s + 1
        return (n - 1) * s - 2 * p + d * (k - 1) + 1

    # -- the rows held -------------------------------------------------------------------------------------

    def rows(self, r0, r1, planes=False):
        """Held rows [r0, r1) as one (1, C, r1 - r0, *cross) tensor: contiguous (a view when one piece holds them
        whole), or with ``planes`` a view of one piece holding them (its channels apart, as the convolution reads
        them in place)."""
        if not (self.lo <= r0 < r1 <= self.hi):
            raise AssertionError(f"rows [{r0}, {r1}) asked of a node holding [{self.lo}, {self.hi})")
        parts = []
        for a, t in self.pieces:
            b = a + t.shape[2]
            if b <= r0 or a >= r1:
                continue
            parts.append(t[:, :, max(r0, a) - a:min(r1, b) - a])
        if len(parts) == 1 and (planes or parts[0].is_contiguous()):
            return parts[0]
        # assembled in a pooled buffer: a fresh allocation this size would page-fault on every step
        shape = list(parts[0].shape)
        shape[2] = r1 - r0
        buf = _pool.empty(shape, parts[0].dtype, parts[0].device)
        return torch.cat(parts, 2, out=buf) if len(parts) > 1 else buf.copy_(parts[0])

    def drop_below(self, r):
        """Forget rows below r (no later step reads them)."""
        keep = []
        for a, t in self.pieces:
            if a + t.shape[2] > r:
                keep.append((a, t))
        self.pieces = keep
        self.lo = max(self.lo, min(r, self.hi))
        if not self.pieces:
            self.lo = self.hi

    def compact(self):
        """Copy the held rows of the oldest piece out of its storage when they are a small part of it (the few
        rows a consumer's next window reaches back for): the rest of the slab is freed now, not a step later."""
        if not self.pieces:
            return
        a, t = self.pieces[0]
        held = a + t.shape[2] - self.lo
        if a >= self.lo or not isinstance(t, torch.Tensor):
            return
        if held * 4 <= t.untyped_storage().nbytes() // max(1, t[:, :, :1].numel() * t.element_size()):
            self.pieces[0] = (self.lo, self.rows(self.lo, a + t.shape[2]))

    def append(self, t):
        self.pieces.append((self.hi, t))
        self.hi += t.shape[2]

    # -- computing new rows --------------------------------------------------------------------------------

    def compute(self, y0, y1):
        """Output rows [y0, y1) from the inputs' held rows, as the whole-image layer computes them."""
        m = self.layer
        t, k, s, p, d = self.geometry()
        n_in = self.inputs[0].size
        if not t:
            if isinstance(m, _ConvMixin):
                segments = self._segments(y0, y1)
                if len(segments) == 1:
                    return self._post(self._conv(y0, y1, segments[0][2]))
                x = self.inputs[0].pieces[-1][1]
                if x.device.type != "cpu" or emu_flag(x):  # only the CPU kernels write a slab of a taller tensor
                    return [self._post(self._conv(a, b, in_place)) for a, b, in_place in segments]
                y = _pool.empty((1, self.channels, y1 - y0) + self._cross(), x.dtype, x.device)
                for a, b, in_place in segments:
                    self._conv(a, b, in_place, y[:, :, a - y0:b - y0])
                return self._post(y)
            else:  # max-pool without padding (checked when the graph is built): never past the axis's ends
                r0, r1 = y0 * s - p, (y1 - 1) * s - p + (k - 1) * d + 1
                if r0 < 0 or r1 > n_in:
                    raise AssertionError("a pooling window past the end of the axis")
                y = m(self.inputs[0].rows(r0, r1))
        else:
            i0, i1 = self.input_rows(y0, y1 - 1)
            i0, i1 = max(i0, 0), min(i1, n_in - 1)
            y = m(self.inputs[0].rows(i0, i1 + 1))
            # the call's output row 0 is the image's row i0 * s - p (p = 0 here): keep [y0, y1)
            y = y[:, :, y0 - i0 * s:y1 - i0 * s]
        return self._post(y)

    def _post(self, y):
        for f in self.post:
            y = f(y)
        return y

    def _segments(self, y0, y1):
        """Output rows [y0, y1) cut into [(a, b, in_place)]: runs whose windows read every input within one of its
        pieces (read in place), and around each piece boundary of an input the few rows whose windows cross it
        (read from rows copied together). Cuts fall on Winograd tiles, where the whole-image layer starts one too,
        so the rows are bit-equal to it."""
        _, k, s, p, d = self.geometry()
        tile = WINOGRAD_TILE if self.winograd() else 1
        bridges = []
        for u in self.inputs:
            for a, _ in u.pieces[1:]:  # a boundary: the windows of output rows [lo, hi) contain rows a - 1 and a
                lo = max(y0, -(-(a + p - (k - 1) * d) // s) // tile * tile)
                hi = min(y1, -(-(-(-(a + p) // s)) // tile) * tile)
                if lo < hi:
                    bridges.append((lo, hi))
        bridges.sort()
        merged = []
        for lo, hi in bridges:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        out, at = [], y0
        for lo, hi in merged:
            if at < lo:
                out.append((at, lo, True))
            out.append((lo, hi, False))
            at = hi
        if at < y1:
            out.append((at, y1, True))
        return out

    def _cross(self):
        """The sizes of the other axes of this node's output (as the convolution gives them)."""
        m = self.layer
        x = self.inputs[0].pieces[-1][1]
        st, lo, hi, dil = _params(len(m.kernel_size), tuple(m.weight.shape), m.stride, m.padding, m.dilation, m.groups,
                                  m.padding_mode, m.activation, m.negative_slope)[:4]
        return tuple(_out_size(x.shape[3 + i], m.weight.shape[3 + i], st[1 + i], dil[1 + i], lo[1 + i], hi[1 + i])
                     for i in range(x.dim() - 3))

    def _conv(self, y0, y1, in_place, out=None):
        """Output rows [y0, y1) of the convolution (into ``out`` when given), its inputs read in place
        (``in_place``: one piece holds the rows) or copied together; rows past the axis's ends are passed to the
        kernel as zero padding. The post modules are not applied."""
        m = self.layer
        _, k, s, p, d = self.geometry()
        r0, r1 = y0 * s - p, (y1 - 1) * s - p + (k - 1) * d + 1  # [r0, r1) unclipped
        a, b = max(r0, 0), min(r1, self.inputs[0].size)
        parts = [inp.rows(a, b, planes=in_place) for inp in self.inputs]
        nd = len(m.kernel_size)
        st, lo, hi, dil, groups, mode, act, slope = _params(
            nd, tuple(m.weight.shape), m.stride, m.padding, m.dilation, m.groups, m.padding_mode, m.activation,
            m.negative_slope)
        lo[0], hi[0] = a - r0, r1 - b
        if out is not None:
            return conv_into(parts, m.weight, m.bias, st, lo, hi, dil, groups, mode, act, slope, out)
        return torch.ops.cellkern.conv(parts, m.weight, m.bias, st, lo, hi, dil, groups, mode, act, slope)


class _Input(Node):
    """The image rows, read through ``read(r0, r1)`` -> (1, C, r1 - r0, *cross) float32 tensor."""

    def __init__(self, channels, size, read):
        super().__init__(None, [], channels, size=size)
        self.read = read

    def geometry(self):
        return None

    def winograd(self):
        return False

    def compute(self, y0, y1):
        return self.read(y0, y1)


class Graph:
    """The layers of a network in the order they run (each node after its inputs), the last node the output."""

    def __init__(self, nodes):
        self.nodes = nodes

    @property
    def source(self):
        return self.nodes[0]

    @property
    def output(self):
        return self.nodes[-1]

    def set_sizes(self, n):
        """Rows of every node for an input of n rows."""
        self.source.size = n
        for v in self.nodes[1:]:
            v.size = v.out_size(v.inputs[0].size)

    def demands(self, y0, y1):
        """Per node, the rows [lo, hi] it must hold for the output rows [y0, y1]: what its consumers read to
        compute their new rows (from the first row they do not hold yet), widened to whole Winograd tiles where
        the layer tiles the streamed axis (as :func:`cellkern.nn.unet.layers_back` with numeric=True) and clipped
        to the node's rows. Rows a node already holds are never asked of its inputs again."""
        need = {id(self.output): (y0, y1)}
        out = {}
        for v in reversed(self.nodes):
            lo, hi = need[id(v)]
            if v.winograd():
                lo, hi = lo - lo % WINOGRAD_TILE, hi - hi % WINOGRAD_TILE + WINOGRAD_TILE - 1
            lo, hi = max(lo, 0), min(hi, v.size - 1)
            out[id(v)] = (lo, hi)
            if v.inputs:
                c0 = min(max(lo, v.hi), v.size - 1)  # the first row this step computes (or would compute next)
                a, b = v.input_rows(c0, max(hi, c0))
                for u in v.inputs:
                    if id(u) in need:
                        c, e = need[id(u)]
                        a2, b2 = min(a, c), max(b, e)
                    else:
                        a2, b2 = a, b
                    need[id(u)] = (a2, b2)
        return out

    def reset(self):
        for v in self.nodes:
            v.pieces, v.lo, v.hi = [], 0, 0


def _post(block, i):
    """The pointwise modules after convolution i of a ConvBlock (batch norm and its activation)."""
    if not block.batch_norm:
        return ()
    act = (lambda y: F.relu(y)) if block.activation == "relu" else (
        lambda y, s=block.negative_slope: F.leaky_relu(y, s))
    return (getattr(block, f"norm{i}"), act)


def _block(nodes, block, inputs):
    for i in range(block.n_convs):
        conv = getattr(block, f"conv{i}")
        nodes.append(Node(conv, inputs if i == 0 else [nodes[-1]], conv.out_channels, _post(block, i)))
    return nodes[-1]


def _check_layer(m):
    if isinstance(m, _ConvMixin) and m.padding_mode != "zeros":
        raise StreamUnsupported(f"streaming needs zero padding, {type(m).__name__} has {m.padding_mode!r}")
    if isinstance(m, _MaxPoolNd) and (getattr(m, "ceil_mode", False) or any(
            v != 0 for v in ((m.padding,) if isinstance(m.padding, int) else m.padding))):
        raise StreamUnsupported("streaming needs max-pools without padding or ceil_mode")
    if isinstance(m, (_ConvTransposeMixin, NearestUpsample)):
        t, k, s, p, d = _geometry(m, 0)
        if p != 0 or getattr(m, "output_padding", (0,))[0] != 0:
            raise StreamUnsupported("streaming needs transposed convolutions without padding")


def _unet(nodes, net, x):
    skips = []
    for block in net.encoder:
        x = _block(nodes, block, [x])
        skips.append(x)
        nodes.append(Node(net.pool, [x], x.channels))
        x = nodes[-1]
    x = _block(nodes, net.bottleneck, [x])
    for level in reversed(range(net.depth)):
        dec = net.decoder[level]
        up_channels = dec.up.out_channels if hasattr(dec.up, "out_channels") else dec.up.channels
        nodes.append(Node(dec.up, [x], up_channels))
        x = _block(nodes, dec, [nodes[-1], skips[level]])
    if net.head is not None:
        nodes.append(Node(net.head, [x], net.head.out_channels))
        x = nodes[-1]
    return x


class _FusedHeads(torch.nn.Module):
    """StarDist's probability and distance 1x1 heads as the one convolution its forward runs."""

    def __init__(self, prob, dist):
        super().__init__()
        self.prob, self.dist = prob, dist
        nd = len(prob.kernel_size)
        self.kernel_size, self.stride, self.padding, self.dilation = (1,) * nd, (1,) * nd, (0,) * nd, (1,) * nd
        self.transposed = False
        self.out_channels = prob.out_channels + dist.out_channels

    def forward(self, parts):
        return torch.ops.cellkern.conv(
            parts, torch.cat([self.prob.weight, self.dist.weight]), torch.cat([self.prob.bias, self.dist.bias]),
            [1] * len(self.kernel_size), [0] * len(self.kernel_size), [0] * len(self.kernel_size),
            [1] * len(self.kernel_size), 1, 0, 0, 0.0)


class _HeadsNode(Node):
    def geometry(self):
        nd = len(self.layer.kernel_size)
        return (False, 1, 1, 0, 1) if nd else None

    def winograd(self):
        return False

    def compute(self, y0, y1):
        return self.layer([self.inputs[0].rows(y0, y1)])


def graph_of(model):
    """The :class:`Graph` of a :class:`cellkern.nn.UNet` or a StarDist model (:class:`StreamUnsupported` for layers
    the streamer cannot run: padding modes other than zeros, padded pools, padded transposed convolutions;
    TypeError for other models)."""
    channels = getattr(model, "in_channels", None)
    if isinstance(model, UNet):
        nodes = [_Input(model.in_channels, None, None)]
        _unet(nodes, model, nodes[0])
    elif hasattr(model, "stem") and hasattr(model, "unet") and hasattr(model, "prob"):
        channels = model.config.n_channel_in
        nodes = [_Input(channels, None, None)]
        x = nodes[0]
        for block, pool in zip(model.stem, model.stem_pool):
            x = _block(nodes, block, [x])
            nodes.append(Node(pool, [x], x.channels))
            x = nodes[-1]
        x = _unet(nodes, model.unet, x)
        if model.features is not None:
            nodes.append(Node(model.features, [x], model.features.out_channels))
            x = nodes[-1]
        heads = _FusedHeads(model.prob, model.dist)
        nodes.append(_HeadsNode(heads, [x], heads.out_channels))
    else:
        raise TypeError(f"model: streaming runs a cellkern.nn.UNet or a StarDist model, got {type(model).__name__}")
    for v in nodes[1:]:
        _check_layer(v.layer)
    return Graph(nodes)


class _Dry:
    """A piece of rows without data: what the dry run (:func:`step_bytes`) appends."""

    def __init__(self, rows):
        self.shape = (1, 0, rows)


def stream_rows(graph, read, n_rows, out_rows, rows_per_step, write, bar=None, account=None):
    """Run ``graph`` over an input of ``n_rows`` rows (``read(r0, r1)`` gives them) and hand its output rows
    [0, out_rows) to ``write(y0, tensor)`` in steps of ``rows_per_step`` output rows. Every node's rows are
    computed once, in chunks that start on the layer's Winograd tiles, so the result is the whole-image one.
    ``account(node, rows)``: a dry run, computing nothing and told of every chunk before it is appended."""
    graph.reset()
    graph.source.read = read
    graph.set_sizes(n_rows)
    consumers = {id(v): [] for v in graph.nodes}
    for v in graph.nodes:
        for u in v.inputs:
            consumers[id(u)].append(v)
    last = {id(u): max(graph.nodes.index(w) for w in ws) for u in graph.nodes if (ws := consumers[id(u)])}
    try:
        for y0 in range(0, out_rows, rows_per_step):
            y1 = min(y0 + rows_per_step, out_rows)
            need = graph.demands(y0, y1 - 1)
            for i, v in enumerate(graph.nodes):
                lo, hi = need[id(v)]
                v.drop_below(lo)
                if v.hi < lo:  # nothing held that is still read (first step)
                    v.pieces, v.lo, v.hi = [], lo, lo
                if hi + 1 > v.hi:
                    if account is None:
                        y = v.compute(v.hi, hi + 1)
                        for t in (y if isinstance(y, list) else [y]):
                            v.append(t)
                    else:
                        account(v, hi + 1 - v.hi)
                        v.append(_Dry(hi + 1 - v.hi))
                # an input whose consumers have all run this step keeps only what their next chunks read
                for u in v.inputs:
                    if last[id(u)] == i:
                        u.drop_below(min(max(w.input_rows(w.hi, w.hi)[0], 0) for w in consumers[id(u)]))
                        if account is None:
                            u.compact()
            if account is None:
                write(y0, graph.output.rows(y0, y1))
            if bar is not None:
                bar.update(y1 - y0)
    finally:
        graph.reset()
    return graph


def step_bytes(graph, n_rows, rows_per_step, cross):
    """Peak bytes of activations a run over ``n_rows`` input rows of ``cross`` (the sizes of the other axes) holds
    in steps of ``rows_per_step`` output rows: a dry run of :func:`stream_rows` adding up, whenever a chunk is
    computed, every node's held rows plus the chunk and its assembled input."""
    graph.set_sizes(n_rows)
    per_row = {id(v): v.channels * 4 * math.prod(max(1, -(-c * v.size // n_rows)) for c in cross)
               for v in graph.nodes}
    peak = [0]

    def account(v, rows):
        held = sum((u.hi - u.lo) * per_row[id(u)] for u in graph.nodes)
        # the chunk, and the inputs' rows copied together: a convolution reads its inputs in place but for the
        # few rows around a piece boundary; the other layers read a copy of their whole window
        copied = min(rows, 2 * WINOGRAD_TILE) if isinstance(v.layer, _ConvMixin) else rows
        chunk = rows * per_row[id(v)] + copied * sum(per_row[id(u)] for u in v.inputs) * max(
            1, v.inputs[0].size // v.size) if v.inputs else rows * per_row[id(v)]
        peak[0] = max(peak[0], held + chunk)

    stream_rows(graph, None, n_rows, graph.output.size, rows_per_step, None, account=account)
    return peak[0]


def predict_streamed(model, image, rows_per_step=None, tile_size=None, memory_budget=None, out=None,
                     progress=False, transform=None):
    """Run ``model`` (a :class:`cellkern.nn.UNet` or a StarDist model) over ``image (C, *spatial)`` (numpy,
    memory-mapped, zarr or dask array) streaming along the first spatial axis: every layer's rows are computed
    once, in slabs, and dropped when no later layer reads them, so nothing is recomputed along that axis. The
    other axes are cut into column tiles (cores of ``tile_size[1:]``, halos as :func:`plan_tiles` gives them)
    only when a whole cross-section would not fit ``memory_budget``.

    ``rows_per_step``: output rows (cells) per step, a multiple of ``alignment(model)[0]`` divided by the grid
    (default: the largest of 8, 4, 2, 1 alignments whose step fits the budget). ``tile_size``: per-axis column
    cores (axis 0 ignored; None: chosen from the budget, default 256 MiB of activations).

    Returns ``out`` (or a new float32 numpy array) of shape ``(C_out, *cells)``: on CPU float32 bit-equal to
    :func:`predict_whole`."""
    from .plan import DEFAULT_BUDGET, alignment, output_spec, plan_tiles
    from .tiled import _Eval, _cells, _check_image, _read

    spatial = _check_image(model, image)
    c_out, grid = output_spec(model)
    cells = _cells(spatial, grid)
    want = (c_out,) + cells
    if out is None:
        out = np.empty(want, np.float32)
    elif tuple(getattr(out, "shape", ())) != want:
        raise ValueError(f"out: expected shape {want}, got {tuple(getattr(out, 'shape', ()))}")
    graph = graph_of(model)
    align = alignment(model)
    factor = tuple(int(v) for v in model.downsampling_factor)
    padded = tuple(-(-s // f) * f for s, f in zip(spatial, factor))
    band = _row_chunk(out)
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Real)
                                      or not memory_budget > 0):
        raise ValueError(f"memory_budget: expected a positive number of bytes, got {memory_budget!r}")
    budget = DEFAULT_BUDGET if memory_budget is None else memory_budget
    step_unit = max(1, align[0] // grid[0])
    if rows_per_step is not None:
        if isinstance(rows_per_step, bool) or not isinstance(rows_per_step, numbers.Integral) or \
                rows_per_step <= 0 or rows_per_step % step_unit:
            raise ValueError(f"rows_per_step: expected a positive multiple of {step_unit}, got {rows_per_step!r}")
    cores, step = _choose(model, graph, spatial, padded, align, budget, step_unit, rows_per_step, tile_size)
    plan = plan_tiles(model, spatial, tuple(cores))
    device = next(model.parameters()).device
    bar = None
    if progress:
        from .._optional import require

        tqdm = require("tqdm.auto", "predict_streamed(progress=True)").tqdm
        bar = tqdm(total=cells[0] * math.prod(len(ax) for ax in plan.axes[1:]), desc="rows", unit="row")
    try:
        with _Eval(model), torch.no_grad(), _pool.limited(int(budget * 0.75)):
            for col in plan.tiles:
                window = [(a, b) for _, _, a, b in col[1:]]

                def read(r0, r1, window=window):
                    x = _read(image, [(r0, r1)] + window, spatial)
                    if transform is not None:
                        x = transform(x[None])[0]
                    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None]
                    return t.to(device) if device.type != "cpu" else t

                dst = tuple(slice(c0 // g, -(-c1 // g)) for (c0, c1, _, _), g in zip(col[1:], grid[1:]))
                src = tuple(slice((c0 - a) // g, (c0 - a) // g + d.stop - d.start)
                            for (c0, _, a, _), g, d in zip(col[1:], grid[1:], dst))

                pending = []  # rows held back until a chunk of a chunked `out` is whole: [(y0, array)]

                def flush(dst=dst):
                    if pending:
                        y0, y = pending[0][0], np.concatenate([a for _, a in pending], axis=1)
                        out[(slice(None), slice(y0, y0 + y.shape[1])) + dst] = y
                        pending.clear()

                def write(y0, t, dst=dst, src=src):
                    y = t[0][(slice(None), slice(None)) + src].float().cpu().numpy()
                    if band is None:
                        out[(slice(None), slice(y0, y0 + y.shape[1])) + dst] = y
                        return
                    # a zarr chunk written a few rows at a time is read, decoded and encoded again each time
                    pending.append((y0, y.copy()))  # a copy: the slab's storage is reused
                    end = y0 + y.shape[1]
                    if end // band > pending[0][0] // band or end >= cells[0]:
                        flush()

                stream_rows(graph, read, padded[0], cells[0], step, write, bar)
                flush()
    finally:
        if bar is not None:
            bar.close()
    return out


def _row_chunk(out):
    """Rows per chunk of ``out`` along its first spatial axis when it is stored in chunks of several rows (zarr),
    else None (numpy, memory-mapped: rows are written as they come)."""
    chunks = getattr(out, "chunks", None)
    if not isinstance(chunks, tuple) or len(chunks) != getattr(out, "ndim", -1) or len(chunks) < 2:
        return None
    rows = chunks[1]
    return int(rows) if isinstance(rows, numbers.Integral) and rows > 1 else None


def _choose(model, graph, spatial, padded, align, budget, step_unit, rows_per_step, tile_size):
    """(column cores per axis, rows per step): the widest columns, then the largest step, whose dry run fits half
    the budget (the pool may hold the other half)."""
    from .plan import _per_axis, plan_tiles

    nd = len(spatial)

    def full_core(d):
        return -(-spatial[d] // align[d]) * align[d]

    if tile_size is not None:
        cores = list(_per_axis(tile_size, nd, "tile_size"))
        cores[0] = full_core(0)
        steps = [rows_per_step] if rows_per_step else [step_unit * m for m in (8, 4, 2, 1)]
    else:
        # the widest columns, then the largest step, that fit the budget
        cores = [full_core(d) for d in range(nd)]
        rf = model.receptive_field().size
        least = [min(full_core(d), -(-rf[d] // align[d]) * align[d]) for d in range(nd)]  # plan_tiles' minimum
        steps = [rows_per_step] if rows_per_step else [step_unit * m for m in (8, 4, 2, 1)]
        while True:
            plan = plan_tiles(model, spatial, tuple(cores))
            cross = plan.tile_shape[1:]
            fits = [s for s in steps if step_bytes(graph, padded[0], s, cross) <= budget / 2]
            if fits or cores[1:] == least[1:]:
                steps = fits or steps[-1:]
                break
            d = 1 + max(range(nd - 1), key=lambda i: cores[1 + i] - least[1 + i])  # halve the widest cross axis
            cores[d] = max(least[d], (cores[d] // 2) // align[d] * align[d])
    return cores, steps[0]


def stream_plan(model, shape, rows_per_step=None, tile_size=None, memory_budget=None):
    """The (column cores per axis, rows per step) :func:`predict_streamed` picks for an image of spatial ``shape``."""
    from .plan import DEFAULT_BUDGET, alignment, output_spec

    graph = graph_of(model)
    align = alignment(model)
    _, grid = output_spec(model)
    factor = tuple(int(v) for v in model.downsampling_factor)
    padded = tuple(-(-s // f) * f for s, f in zip(shape, factor))
    budget = DEFAULT_BUDGET if memory_budget is None else memory_budget
    return _choose(model, graph, tuple(shape), padded, align, budget, max(1, align[0] // grid[0]), rows_per_step,
                   tile_size)
