"""conv2d/conv3d against torch's own convolution: forward, gradients, gradcheck, layouts, modules, compile, numpy,
errors; on every backend (cpu, the portable cpu path, the CUDA kernels on the emulator in three orders)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cellkern
from cellkern import _C
from cellkern.ops import conv2d, conv3d

# (x shape, out channels, kernel, stride, padding, dilation, groups, padding_mode, activation)
CASES_2D = [
    ((2, 3, 17, 19), 5, 3, 1, 1, 1, 1, "zeros", None),            # odd sizes, batch > 1
    ((1, 1, 20, 37), 8, 3, 1, 1, 1, 1, "zeros", "relu"),          # Cin = 1 (first layer), fused relu
    ((2, 3, 17, 19), 6, 3, 2, 1, 1, 1, "zeros", None),            # stride 2
    ((1, 4, 16, 21), 3, 3, 1, 2, 2, 1, "zeros", "leaky_relu"),    # dilation 2
    ((2, 3, 15, 18), 4, 3, 1, 1, 1, 1, "reflect", None),
    ((1, 2, 11, 13), 5, 5, 1, 2, 1, 1, "replicate", "relu"),
    ((1, 2, 11, 13), 3, 3, 1, 1, 1, 1, "circular", None),
    ((1, 3, 14, 17), 4, (3, 2), (2, 1), (1, 0), (1, 2), 1, "zeros", None),  # anisotropic everything
    ((2, 4, 12, 13), 6, 3, 1, 1, 1, 2, "zeros", None),             # groups
    ((2, 8, 9, 10), 8, 3, 1, 1, 1, 8, "zeros", "relu"),            # depthwise: groups run in parallel on the CPU
    ((1, 3, 9, 10), 4, 1, 1, 0, 1, 1, "zeros", None),              # 1x1
    ((1, 3, 10, 11), 2, 3, 3, 4, 1, 1, "zeros", None),             # padding beyond the kernel span, stride 3
    ((1, 2, 12, 14), 3, 4, 2, 2, 1, 1, "reflect", "leaky_relu"),   # even kernel, strided reflect
    ((1, 2, 13, 14), 3, 2, 3, 0, 1, 1, "zeros", None),             # stride > kernel: inputs no output reads
    ((2, 3, 12, 15), 4, 2, 2, 0, 1, 1, "zeros", "relu"),           # kernel == stride: the disjoint input gradient
    ((1, 3, 9, 11), 4, 3, 3, 1, 1, 1, "reflect", None),            # kernel == stride with a padding mode: the GEMM paths
    ((2, 40, 7, 30), 9, 1, 1, 0, 1, 1, "zeros", "leaky_relu"),      # 1x1 over many channels: GEMM forward and gradients
    ((1, 3, 9, 12), 5, 3, 1, "same", 1, 1, "zeros", None),
    ((1, 3, 9, 12), 5, (2, 4), 1, "same", (1, 2), 1, "reflect", None),  # asymmetric 'same' padding
    ((1, 40, 19, 35), 33, 3, 1, 1, 1, 1, "zeros", "relu"),         # many channels, channel tail
    ((0, 3, 8, 8), 4, 3, 1, 1, 1, 1, "zeros", None),               # empty batch
]
CASES_3D = [
    ((2, 3, 7, 9, 11), 4, 3, 1, 1, 1, 1, "zeros", None),
    ((1, 2, 8, 9, 10), 3, 3, 2, 1, 1, 1, "zeros", "relu"),
    ((1, 2, 7, 8, 9), 3, 3, 1, 1, 1, 1, "reflect", None),
    ((1, 2, 9, 8, 10), 3, (3, 1, 2), (1, 2, 1), (1, 0, 1), (2, 1, 1), 1, "replicate", "leaky_relu"),
    ((1, 1, 6, 7, 8), 5, 3, 1, 1, 1, 1, "zeros", None),
    ((1, 4, 5, 6, 7), 4, 3, 1, 1, 1, 2, "circular", None),
]
SLOPE = 0.1


def _ntuple(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def _reference(x, w, b, stride, padding, dilation, groups, mode, act):
    """torch's convolution with torch.nn.ConvNd's padding modes (F.pad, then an unpadded convolution)."""
    nd = x.dim() - 2
    f = F.conv2d if nd == 2 else F.conv3d
    if mode == "zeros":
        y = f(x, w, b, stride, padding, dilation, groups)
    else:
        if padding == "same":
            lo = [d * (k - 1) // 2 for d, k in zip(_ntuple(dilation, nd), w.shape[2:])]
            hi = [d * (k - 1) - l for d, k, l in zip(_ntuple(dilation, nd), w.shape[2:], lo)]
        else:
            lo = hi = list(_ntuple(padding, nd))
        pad = [p for i in reversed(range(nd)) for p in (lo[i], hi[i])]
        y = f(F.pad(x, pad, mode=mode), w, b, stride, 0, dilation, groups)
    if act == "relu":
        y = torch.relu(y)
    elif act == "leaky_relu":
        y = F.leaky_relu(y, SLOPE)
    return y


def _ours(nd):
    return conv2d if nd == 2 else conv3d


def _make(case, dtype, device, gen, bias=True):
    shape, cout, k, s, p, d, g, mode, act = case
    nd = len(shape) - 2
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    w = torch.randn((cout, shape[1] // g) + _ntuple(k, nd), generator=gen, dtype=dtype).to(device)
    b = torch.randn(cout, generator=gen, dtype=dtype).to(device) if bias else None
    return x, w, b, (s, p, d, g, mode, act)


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _close(got, want, dtype, what=""):
    # Relative to the output's scale: sums of many products round differently in every order.
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    t = _tol(dtype)
    torch.testing.assert_close(got, want, rtol=t["rtol"], atol=t["atol"] * scale, msg=lambda m: f"{what}: {m}")


def _cases(nd, backend):
    cases = CASES_2D if nd == 2 else CASES_3D
    return cases[::2] if backend.is_emu else cases  # the emulator is slow: every other case, all still covered below


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_torch(backend, nd, dtype):
    gen = torch.Generator().manual_seed(0)
    for case in _cases(nd, backend):
        x, w, b, (s, p, d, g, mode, act) = _make(case, dtype, backend.device, gen, bias=case[0][0] != 1)
        want = _reference(x, w, b, s, p, d, g, mode, act)
        got = _ours(nd)(x, w, b, s, p, d, g, mode, act, SLOPE)
        assert got.shape == want.shape and got.dtype == dtype
        _close(got, want, dtype, str(case))


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_matches_torch(backend, nd, dtype):
    gen = torch.Generator().manual_seed(1)
    cases = CASES_2D if nd == 2 else CASES_3D
    cases = cases[1::2] if backend.is_emu else cases  # the other half of the cases on the emulator
    for case in cases:
        x, w, b, (s, p, d, g, mode, act) = _make(case, dtype, backend.device, gen)
        x, w, b = (t.requires_grad_(True) for t in (x, w, b))
        want = _reference(x, w, b, s, p, d, g, mode, act)
        gy = torch.randn(want.shape, generator=gen, dtype=dtype).to(backend.device)
        want_grads = torch.autograd.grad(want, (x, w, b), gy)
        got = _ours(nd)(x, w, b, s, p, d, g, mode, act, SLOPE)
        got_grads = torch.autograd.grad(got, (x, w, b), gy)
        for name, gg, gw in zip(("x", "weight", "bias"), got_grads, want_grads):
            _close(gg, gw, dtype, f"grad {name} {case}")


GRADCHECK = [
    ((1, 2, 6, 7), 3, 3, 1, 1, 1, 1, "zeros", None),
    ((2, 2, 7, 6), 2, 3, 2, 1, 1, 1, "zeros", "relu"),
    ((1, 2, 7, 8), 2, 3, 1, 2, 2, 1, "reflect", "leaky_relu"),
    ((1, 2, 6, 7), 3, (2, 3), (1, 2), (1, 1), 1, 1, "replicate", None),
    ((1, 4, 6, 6), 4, 3, 1, 1, 1, 2, "circular", None),
    ((1, 1, 6, 7), 2, 3, 3, 2, 1, 1, "zeros", None),
    ((1, 2, 8, 9), 2, 2, 3, 1, 1, 1, "zeros", None),
    ((1, 2, 4, 5, 6), 2, 3, 1, 1, 1, 1, "reflect", "relu"),
    ((1, 1, 5, 5, 6), 2, 2, 2, 1, 1, 1, "zeros", None),
]


@pytest.mark.parametrize("case", GRADCHECK, ids=lambda c: f"{len(c[0]) - 2}d-{c[7]}-{c[8]}-s{c[3]}")
def test_gradcheck_float64(backend, case):
    nd = len(case[0]) - 2
    gen = torch.Generator().manual_seed(2)
    x, w, b, (s, p, d, g, mode, act) = _make(case, torch.float64, backend.device, gen)
    if act is not None:
        # Keep pre-activations away from the kink so finite differences see one branch.
        pre = _reference(x, w, b, s, p, d, g, mode, None)
        assert pre.abs().min() > 1e-4
    f = lambda x, w, b: _ours(nd)(x, w, b, s, p, d, g, mode, act, SLOPE)  # noqa: E731
    inputs = tuple(t.detach().requires_grad_(True) for t in (x, w, b))
    assert torch.autograd.gradcheck(f, inputs)


def test_gradients_of_some_inputs_only():
    x, w, b = torch.randn(1, 3, 8, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    for need in [(True, False, False), (False, True, False), (False, False, True), (False, True, True)]:
        ts = [t.detach().clone().requires_grad_(r) for t, r in zip((x, w, b), need)]
        tt = [t.detach().clone().requires_grad_(r) for t, r in zip((x, w, b), need)]
        conv2d(*ts, padding=1).square().sum().backward()
        F.conv2d(*tt, padding=1).square().sum().backward()
        for a, c, r in zip(ts, tt, need):
            assert (a.grad is None) == (not r)
            if r:
                torch.testing.assert_close(a.grad, c.grad, rtol=1e-4, atol=1e-4)
    # No bias at all.
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    conv2d(xr, wr, None, 2, 1).sum().backward()
    xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
    F.conv2d(xt, wt, None, 2, 1).sum().backward()
    torch.testing.assert_close(xr.grad, xt.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wr.grad, wt.grad, rtol=1e-4, atol=1e-4)


def test_winograd_weight_cache_sees_every_tap_a_channel_part_uses():
    """The CPU keeps transformed weights while the weight tensor is unchanged. A channel part's input gradient reads
    a window of every output channel's taps, up to the last output channel's: a tap changed in place there must
    not reuse the old transform."""
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(1, 16, 9, 10, generator=gen), torch.randn(1, 16, 9, 10, generator=gen)
    w = torch.randn(32, 32, 3, 3, generator=gen)
    gy = torch.randn(1, 32, 9, 10, generator=gen)

    def grad_of_b():
        bb = b.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(conv2d([a, bb], w, None, 1, 1), bb, gy)
        bt = b.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(F.conv2d(torch.cat([a, bt], 1), w, None, 1, 1), bt, gy)
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-3)
        return g

    before = grad_of_b()
    w[31, 31, 1, 1] += 1.0  # the last tap the part's gradient reads
    after = grad_of_b()
    assert not torch.equal(before[:, 15], after[:, 15])


def test_forward_and_input_gradient_do_not_depend_on_the_thread_count(cpu_variant):
    """Tiled and resumed runs (other processes, other thread counts) must reproduce a whole run bit for bit. The
    weights are transformed afresh for each thread count: the CPU's cache of transformed weights holds 32 layers,
    and 40 others pass through it in between."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 32, 23, 37, generator=gen)
    w, b = torch.randn(24, 32, 3, 3, generator=gen) * 0.1, torch.randn(24, generator=gen)
    gy = torch.randn(2, 24, 23, 37, generator=gen)
    before = cellkern.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            for _ in range(40):
                conv2d(x[:, :, :4], torch.randn(24, 32, 3, 3, generator=gen), None, 1, 1)
            cellkern.set_num_threads(threads)
            xr = x.clone().requires_grad_(True)
            y = conv2d(xr, w, b, 1, 1)
            runs.append((y, torch.autograd.grad(y, xr, gy)[0]))
    finally:
        cellkern.set_num_threads(before)
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


def test_first_layer_and_wide_rows_take_the_fast_paths(cpu_variant):
    # 1 -> 32 channels on rows wider than one panel chunk and an output above the streaming-store threshold.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 1, 300, 1100, generator=gen)
    w = torch.randn(32, 1, 3, 3, generator=gen)
    b = torch.randn(32, generator=gen)
    _close(conv2d(x, w, b, padding=1, activation="relu"), torch.relu(F.conv2d(x, w, b, padding=1)), torch.float32)
    x = torch.randn(1, 24, 9, 1030, generator=gen)  # wide rows with many channels: several panel chunks
    w = torch.randn(10, 24, 3, 3, generator=gen)
    _close(conv2d(x, w, None, padding=1), F.conv2d(x, w, None, padding=1), torch.float32)


@pytest.fixture(params=["direct", "winograd"])
def cpu_algorithm(request):
    previous = _C.conv_set_algorithm(request.param)
    yield request.param
    _C.conv_set_algorithm(previous)


# Winograd F(4x4, 3x3) rounds differently from a direct sum: its float32 error is about 1e-5 of the output's
# scale for 128 channels (measured; ~8x torch's direct convolution), so its documented tolerance is 5e-5 x scale.
WINOGRAD_CASES = [
    ((1, 20, 13, 19), 17, 1, 1, "zeros", None),      # sizes that are not multiples of the 4x4 tile, channel tail
    ((2, 16, 30, 70), 16, (1, 1), (1, 1), "reflect", "relu"),  # several chunks of 24 tiles, batch
    ((1, 3, 9, 11), 5, 1, 0, "zeros", "leaky_relu"),  # few channels ('winograd' forces it), no padding
    ((1, 8, 12, 9), 4, 1, 3, "circular", None),        # padding beyond the kernel span
    ((1, 128, 24, 40), 128, 1, 1, "zeros", None),
    ((2, 16, 32, 32), 24, 1, 1, "zeros", "relu"),      # 8 tiles per row: rows grouped (3, 3, 2; AVX-512 4, 4)
    ((3, 16, 24, 9), 33, 1, 1, "replicate", None),     # 3 tiles per row: 8 rows to a group, the last one partial
    # AVX-512's 16-lane GEMMs: 48 and 38 tiles per row, entries 24 and 40 (padded to 32 and 48 there)
    ((1, 24, 17, 190), 20, 1, 1, "zeros", None),
    ((2, 40, 12, 150), 36, 1, 1, "zeros", "relu"),
]


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=lambda c: f"{c[0][1]}-{c[1]}-{c[4]}")
def test_winograd_and_direct_match_torch(cpu_variant, cpu_algorithm, case):
    shape, cout, s, p, mode, act = case
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=gen, requires_grad=True)
    w = torch.randn(cout, shape[1], 3, 3, generator=gen, requires_grad=True)
    b = torch.randn(cout, generator=gen, requires_grad=True)
    xd, wd, bd = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    want = _reference(xd, wd, bd, s, p, 1, 1, mode, act)
    got = conv2d(x, w, b, s, p, 1, 1, mode, act, SLOPE)
    gy = torch.randn(want.shape, generator=gen)
    grads = torch.autograd.grad(got, (x, w, b), gy)  # the weight gradient: Winograd F(3x3, 4x4)
    grads_d = torch.autograd.grad(want, (xd, wd, bd), gy.double())
    for name, a, c in (("forward", got, want),) + tuple(zip(("x", "weight", "bias"), grads, grads_d)):
        err = (a.double() - c).abs().max().item() / c.abs().max().item()
        assert err < (5e-5 if cpu_algorithm == "winograd" else 1e-5), (cpu_algorithm, name, err)
    # 3D 3x3x3: the depth taps become entries of a 2D Winograd per input plane.
    x3 = torch.randn(1, 5, 6, 9, 13, generator=gen, requires_grad=True)
    w3 = torch.randn(6, 5, 3, 3, 3, generator=gen, requires_grad=True)
    x3d, w3d = (t.detach().double().requires_grad_(True) for t in (x3, w3))
    want3 = F.conv3d(x3d, w3d, None, 1, 1)
    got3 = conv3d(x3, w3, None, 1, 1)
    gy3 = torch.randn(want3.shape, generator=gen)
    for a, c in zip((got3,) + torch.autograd.grad(got3, (x3, w3), gy3),
                    (want3,) + torch.autograd.grad(want3, (x3d, w3d), gy3.double())):
        assert (a.double() - c).abs().max() / c.abs().max() < 5e-5


def test_algorithm_switch_validates():
    with pytest.raises(ValueError, match="algorithm must be"):
        _C.conv_set_algorithm("fft")
    assert _C.conv_set_algorithm(_C.conv_set_algorithm("direct")) == "direct"


def test_layouts_and_unbatched_inputs():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 10, 12, generator=gen)
    w = torch.randn(5, 4, 3, 3, generator=gen)
    want = F.conv2d(x, w, None, 1, 1)
    xcl = x.contiguous(memory_format=torch.channels_last)
    got = conv2d(xcl, w, None, 1, 1)
    assert got.is_contiguous(memory_format=torch.channels_last)  # as torch: channels_last in, channels_last out
    _close(got, want, torch.float32)
    _close(conv2d(torch.stack([x, x], -1)[..., 0], w.transpose(2, 3).contiguous().transpose(2, 3), None, 1, 1), want,
           torch.float32)  # strided input and weight are copied
    _close(conv2d(x[0], w, None, 1, 1), want[0], torch.float32)
    x3 = torch.randn(3, 5, 6, 7, generator=gen)
    w3 = torch.randn(2, 3, 3, 3, 3, generator=gen)
    _close(conv3d(x3, w3, None, 1, 1), F.conv3d(x3, w3, None, 1, 1), torch.float32)
    x3cl = torch.randn(1, 3, 5, 6, 7, generator=gen).contiguous(memory_format=torch.channels_last_3d)
    y3 = conv3d(x3cl, w3, None, 1, 1)
    assert y3.is_contiguous(memory_format=torch.channels_last_3d)
    _close(y3, F.conv3d(x3cl, w3, None, 1, 1), torch.float32)


@pytest.mark.parametrize("nd", [2, 3])
def test_modules_are_drop_in(nd):
    ours_cls, torch_cls = (cellkern.nn.Conv2d, torch.nn.Conv2d) if nd == 2 else (cellkern.nn.Conv3d, torch.nn.Conv3d)
    kw = dict(stride=1, padding=1, dilation=1, groups=1, bias=True, padding_mode="reflect")
    torch.manual_seed(0)
    ours = ours_cls(4, 6, 3, **kw)
    torch.manual_seed(0)
    ref = torch_cls(4, 6, 3, **kw)
    # Same names, shapes and the same default init (the same random draws).
    assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    for k in ("weight", "bias"):
        assert torch.equal(ours.state_dict()[k], ref.state_dict()[k])
    x = torch.randn((2, 4) + (7,) * nd)
    _close(ours(x), ref(x), torch.float32)
    # A state_dict loads either way.
    torch.manual_seed(1)
    other = torch_cls(4, 6, 3, **kw)
    ours.load_state_dict(other.state_dict())
    _close(ours(x), other(x), torch.float32)
    ref.load_state_dict(ours_cls(4, 6, 3, **kw).state_dict())
    # Fused activation and 'same' padding.
    act = ours_cls(4, 6, 3, padding="same", activation="leaky_relu", negative_slope=0.2)
    ref2 = torch_cls(4, 6, 3, padding="same")
    ref2.load_state_dict(act.state_dict())
    _close(act(x), F.leaky_relu(ref2(x), 0.2), torch.float32)
    assert "activation='leaky_relu'" in repr(act)
    with pytest.raises(ValueError, match="activation"):
        ours_cls(4, 6, 3, activation="gelu")


def test_torch_compile_fullgraph():
    def f(x, w, b):
        return conv2d(torch.relu(x), w, b, padding=1, activation="relu").sum()

    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    out = torch.compile(f, fullgraph=True)(x, w, b)
    grads = torch.autograd.grad(out, (x, w, b))
    xt, wt, bt = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    want = torch.relu(F.conv2d(torch.relu(xt), wt, bt, padding=1)).sum()
    want_grads = torch.autograd.grad(want, (xt, wt, bt))
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-3)
    for a, c in zip(grads, want_grads):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-3)


def test_opcheck():
    x = torch.randn(2, 3, 9, 10, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.cellkern.conv.default, ([x], w, b, [1, 1], [1, 1], [1, 1], [1, 1], 1, 1, 2, 0.1),
                          test_utils=utils)
    torch.library.opcheck(torch.ops.cellkern.conv.default, ([x], w, None, [2, 1], [0, 1], [1, 1], [1, 2], 1, 0, 0, 0.0),
                          test_utils=utils)
    x1, x2 = x.detach()[:, :1].clone().requires_grad_(True), x.detach()[:, 1:].clone().requires_grad_(True)
    torch.library.opcheck(torch.ops.cellkern.conv.default, ([x1, x2], w, b, [1, 1], [1, 1], [1, 1], [1, 1], 1, 0, 1,
                                                            0.0), test_utils=utils)
    gy = torch.randn(2, 4, 9, 10)
    y = torch.randn(2, 4, 9, 10)
    torch.library.opcheck(torch.ops.cellkern.conv_grad_input.default,
                          (gy, w.detach(), [2, 3, 9, 10], [1, 1], [1, 1], [1, 1], [1, 1], 1, 1, 0, None, 0, 0.0),
                          test_utils=utils)
    torch.library.opcheck(torch.ops.cellkern.conv_grad_input.default,
                          (gy, w.detach(), [2, 2, 9, 10], [1, 1], [1, 1], [1, 1], [1, 1], 1, 1, 1, y, 2, 0.1),
                          test_utils=utils)
    torch.library.opcheck(torch.ops.cellkern.conv_grad_weight.default,
                          (gy, [x.detach()], [4, 3, 3, 3], True, [1, 1], [1, 1], [1, 1], [1, 1], 1, 0, y, 1, 0.0),
                          test_utils=utils)


@pytest.mark.parametrize("nd", [2, 3])
def test_numpy_in_numpy_out(host_backend, nd):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 9, 11) if nd == 3 else (2, 3, 9, 11)).astype(np.float32)
    w = rng.standard_normal((4, 3) + (3,) * nd).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    got = _ours(nd)(x, w, b, 1, 1, activation="relu")
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    want = torch.relu((F.conv2d if nd == 2 else F.conv3d)(torch.from_numpy(x), torch.from_numpy(w),
                                                           torch.from_numpy(b), 1, 1)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    xf = np.asfortranarray(x)
    xf.setflags(write=False)  # read-only, non-contiguous input: copied
    np.testing.assert_allclose(_ours(nd)(xf, w, b, 1, 1, activation="relu"), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_ours(nd)(x[0], w, b, 1, 1, activation="relu"), want[0], rtol=1e-4, atol=1e-4)


# ---- bad input ------------------------------------------------------------------------------------------------

X, W = torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: conv2d(X.int(), W.int()), TypeError, "x: expected dtype float32 or float64, got int32"),
    (lambda: conv2d(X.half(), W.half()), TypeError, "float16"),
    (lambda: conv2d(X, W.double()), TypeError, "weight: expected dtype float32"),
    (lambda: conv2d(X, W, torch.zeros(4, dtype=torch.float64)), TypeError, "bias: expected dtype float32"),
    (lambda: conv2d(np.zeros((1, 3, 8, 8), np.int64), np.zeros((4, 3, 3, 3), np.int64)), TypeError, "int64"),
    (lambda: conv2d([[1.0]], W), TypeError, "expected a torch.Tensor or numpy.ndarray"),
    (lambda: conv2d(X, W, [1.0] * 4), TypeError, "bias: expected a torch.Tensor or None"),
    (lambda: conv2d(torch.zeros(1, 2, 8, 8), W), ValueError, r"weight: expected 2 input channels per group \(x has 2"),
    (lambda: conv2d(X, torch.zeros(4, 3, 3)), ValueError, "weight: expected a 4D tensor"),
    (lambda: conv2d(torch.zeros(8, 8), W), ValueError, "x: expected a 4D or 3D"),
    (lambda: conv3d(torch.zeros(3, 8, 8), torch.zeros(4, 3, 3, 3, 3)), ValueError, "x: expected a 5D or 4D"),
    (lambda: conv3d(X, W), ValueError, "weight: expected a 5D tensor"),
    (lambda: conv2d(X, W, torch.zeros(5)), ValueError, r"bias: expected shape \(4,\)"),
    (lambda: conv2d(X, torch.zeros(4, 1, 3, 3), groups=2), ValueError, "not divisible by groups=2"),
    (lambda: conv2d(torch.zeros(1, 4, 8, 8), torch.zeros(3, 2, 3, 3), groups=2), ValueError,
     "3 output channels are not divisible by groups=2"),
    (lambda: conv2d(X, W, groups=0), ValueError, "groups must be positive"),
    (lambda: conv2d(X, W, stride=0), ValueError, "stride must be positive"),
    (lambda: conv2d(X, W, padding=-1), ValueError, "padding must be non-negative"),
    (lambda: conv2d(X, W, dilation=0), ValueError, "dilation must be positive"),
    (lambda: conv2d(X, W, stride=(1, 2, 3)), ValueError, "stride: expected an int or 2 ints"),
    (lambda: conv2d(X, W, padding="full"), ValueError, "padding: expected an int"),
    (lambda: conv2d(X, W, stride=2, padding="same"), ValueError, "padding='same' is not supported for strided"),
    (lambda: conv2d(torch.zeros(1, 3, 2, 2), W), ValueError, "the kernel .* is larger than the padded input"),
    (lambda: conv2d(X, W, padding=8, padding_mode="reflect"), ValueError, "reflect padding must be smaller"),
    (lambda: conv2d(X, W, padding=9, padding_mode="circular"), ValueError, "circular padding must be at most"),
    (lambda: conv2d(X, W, padding_mode="mirror"), ValueError, "padding_mode: expected one of"),
    (lambda: conv2d(X, W, activation="gelu"), ValueError, "activation: expected None"),
    (lambda: conv2d(X, W, activation="leaky_relu", negative_slope=-0.1), ValueError, "negative_slope must be >= 0"),
    (lambda: conv2d(torch.zeros(1, 0, 8, 8), torch.zeros(4, 0, 3, 3)), ValueError, "channel dimension is empty"),
    (lambda: conv2d(torch.zeros(1, 3, 0, 8), W), ValueError, "spatial dimensions must be non-empty"),
    (lambda: conv2d(torch.zeros(1, 3, 8, 8, device="meta"), W), ValueError, "cpu and cuda"),
    (lambda: conv2d(np.zeros((1, 3, 8, 8), np.float32), W), TypeError, "expected numpy arrays"),
])
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_low_level_api_validates_outputs():
    x = np.zeros((1, 2, 8, 8), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    p = ([1, 1], [1, 1], [1, 1], [1, 1], 1, 0, 0, 0.0)
    with pytest.raises(ValueError, match=r"out: expected shape \(1, 3, 8, 8\), got \(1, 3, 8, 7\)"):
        _C.conv_forward(x, w, None, np.zeros((1, 3, 8, 7), np.float32), *p)
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        _C.conv_forward(x, w, None, np.zeros((1, 3, 8, 8), np.float64), *p)
    with pytest.raises(ValueError, match="overlap"):
        big = np.zeros(3 * 64 + 64, np.float32)
        _C.conv_forward(big[:128].reshape(1, 2, 8, 8), w, None, big[64:].reshape(1, 3, 8, 8), *p)
    ro = np.zeros((1, 3, 8, 8), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _C.conv_forward(x, w, None, ro, *p)
    with pytest.raises(ValueError, match="x: expected dense planes"):
        _C.conv_forward(np.zeros((1, 2, 8, 16), np.float32)[..., ::2], w, None, np.zeros((1, 3, 8, 8), np.float32), *p)
    with pytest.raises(ValueError, match="x: expected dense planes"):  # channels overlapping
        _C.conv_forward(np.lib.stride_tricks.as_strided(np.zeros(200, np.float32), (1, 2, 8, 8), (800, 40, 32, 4)),
                        w, None, np.zeros((1, 3, 8, 8), np.float32), *p)
    with pytest.raises(ValueError, match="out: expected dense planes"):
        _C.conv_forward(x, w, None, np.zeros((1, 3, 8, 16), np.float32)[..., ::2], *p)
    gy = np.zeros((1, 3, 8, 8), np.float32)
    reflect = ([1, 1], [1, 1], [1, 1], [1, 1], 1, 1, 0, 0.0)
    with pytest.raises(ValueError, match="workspace: padding_mode 1 needs a workspace"):
        _C.conv_grad_input(gy, w, np.zeros_like(x), None, *reflect)
    with pytest.raises(ValueError, match=r"workspace: expected shape \(1, 2, 10, 10\)"):
        _C.conv_grad_input(gy, w, np.zeros_like(x), np.zeros((1, 2, 8, 8), np.float32), *reflect)
    with pytest.raises(ValueError, match="grad_output: expected shape"):
        _C.conv_grad_weight(np.zeros((1, 3, 8, 9), np.float32), x, np.zeros_like(w), None, *p)
    with pytest.raises(ValueError, match=r"grad_bias: expected shape \(3,\)"):
        _C.conv_grad_weight(gy, x, np.zeros_like(w), np.zeros(2, np.float32), *p)
    relu = ([1, 1], [1, 1], [1, 1], [1, 1], 1, 0, 1, 0.0)
    with pytest.raises(ValueError, match="output: the gradient through a fused activation needs"):
        _C.conv_grad_input(gy, w, np.zeros_like(x), None, *relu)
    with pytest.raises(ValueError, match=r"output: expected shape \(1, 3, 8, 8\)"):
        _C.conv_grad_weight(gy, x, np.zeros_like(w), None, *relu, output=np.zeros((1, 3, 8, 7), np.float32))
    with pytest.raises(ValueError, match="output: given, but no activation is fused"):
        _C.conv_grad_weight(gy, x, np.zeros_like(w), None, *p, output=gy.copy())


@pytest.mark.no_gpu
def test_cuda_tensors_without_cuda_raise_the_reason(fake_cuda_capsule):
    status = cellkern.cuda_status()
    x, w, y = (fake_cuda_capsule(s) for s in ((1, 2, 6, 6), (3, 2, 3, 3), (1, 3, 6, 6)))
    with pytest.raises(RuntimeError, match="cuda backend is unavailable") as e:
        _C.conv_forward(x, w, None, y, [1, 1], [1, 1], [1, 1], [1, 1], 1, 0, 0, 0.0)
    assert status["reason"] in str(e.value)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(6)
    for case in CASES_2D[:6] + CASES_3D[:3]:
        x, w, b, (s, p, d, g, mode, act) = _make(case, torch.float32, "cpu", gen)
        nd = x.dim() - 2
        xs = [t.cuda().requires_grad_(True) for t in (x, w, b)]
        y = _ours(nd)(*xs, s, p, d, g, mode, act, SLOPE)
        yc = _reference(x, w, b, s, p, d, g, mode, act)
        _close(y.cpu(), yc, torch.float32, str(case))
        y.sum().backward()


# ---- an input given as channel parts (a concatenation that is never materialised) ---------------------------

# (part channels, out channels, spatial, kernel, padding, padding_mode, activation)
PARTS_CASES = [
    ((3, 2), 4, (9, 11), 3, 1, "zeros", "relu"),
    ((1, 5, 2), 3, (8, 7), 3, 1, "reflect", None),
    ((4, 4), 6, (6, 5, 7), 3, 1, "zeros", "leaky_relu"),     # 3D
    ((17, 16), 16, (12, 13), 3, 1, "zeros", "relu"),         # Winograd on the CPU (>= 16 channels)
    ((2, 3), 2, (7, 9), 1, 0, "zeros", None),                # 1x1
    ((70, 90), 6, (12, 12), 3, 1, "zeros", None),            # the CPU weight gradient's channel chunks cross parts
]


@pytest.mark.parametrize("case", PARTS_CASES, ids=lambda c: f"{len(c[2])}d-{'+'.join(map(str, c[0]))}-{c[5]}")
def test_channel_parts_match_torch_cat(backend, case):
    chans, cout, sp, k, p, mode, act = case
    nd = len(sp)
    gen = torch.Generator().manual_seed(8)
    for dtype in (torch.float32, torch.float64):
        xs = [torch.randn((2, c) + sp, generator=gen, dtype=dtype).to(backend.device).requires_grad_(True)
              for c in chans]
        w = torch.randn((cout, sum(chans)) + (k,) * nd, generator=gen, dtype=dtype).to(backend.device)
        w.requires_grad_(True)
        b = torch.randn(cout, generator=gen, dtype=dtype).to(backend.device).requires_grad_(True)
        want = _reference(torch.cat(xs, 1), w, b, 1, p, 1, 1, mode, act)
        got = _ours(nd)(xs, w, b, 1, p, 1, 1, mode, act, SLOPE)
        _close(got, want, dtype, f"forward {case}")
        gy = torch.randn(want.shape, generator=gen, dtype=dtype).to(backend.device)
        names = [f"x[{i}]" for i in range(len(xs))] + ["weight", "bias"]
        for name, a, c in zip(names, torch.autograd.grad(got, (*xs, w, b), gy),
                              torch.autograd.grad(want, (*xs, w, b), gy)):
            _close(a, c, dtype, f"grad {name} {case} {dtype}")
        if backend.is_emu:
            break  # float64 on the emulator adds little and costs a lot


def test_channel_parts_gradcheck_and_partial_grads():
    gen = torch.Generator().manual_seed(9)
    a = torch.randn(1, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 3, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, w, c: conv2d([a, b], w, c, 1, 1, activation="relu"), (a, b, w, bias))
    assert torch.autograd.gradcheck(lambda a, b, w: conv2d((a, b), w, None, 2, 1, padding_mode="replicate"), (a, b, w))
    # Only the skip part needs a gradient (the other is a constant): only its gradient is computed.
    skip = b.detach().clone().requires_grad_(True)
    conv2d([a.detach(), skip], w.detach(), None, 1, 1).sum().backward()
    ref = skip.detach().clone().requires_grad_(True)
    F.conv2d(torch.cat([a.detach(), ref], 1), w.detach(), None, 1, 1).sum().backward()
    torch.testing.assert_close(skip.grad, ref.grad)


def test_channel_parts_numpy_and_layouts():
    rng = np.random.default_rng(10)
    a, b = (rng.standard_normal((1, c, 8, 9)).astype(np.float32) for c in (2, 3))
    w = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)
    want = F.conv2d(torch.from_numpy(np.concatenate([a, b], 1)), torch.from_numpy(w), None, 1, 1).numpy()
    np.testing.assert_allclose(conv2d([a, b], w, None, 1, 1), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv2d([a[0], b[0]], w, None, 1, 1), want[0], rtol=1e-4, atol=1e-4)  # unbatched
    # channels_last and strided parts are made dense; the output takes the first part's layout.
    ta = torch.from_numpy(a).contiguous(memory_format=torch.channels_last)
    tb = torch.from_numpy(b).transpose(2, 3).contiguous().transpose(2, 3)
    got = conv2d([ta, tb], torch.from_numpy(w), None, 1, 1)
    assert got.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: conv2d([X, torch.zeros(1, 2, 8, 9)], torch.zeros(4, 5, 3, 3)), ValueError,
     r"x\[1\]: channel parts must agree in every dim but the channels"),
    (lambda: conv2d([X, torch.zeros(2, 2, 8, 8)], torch.zeros(4, 5, 3, 3)), ValueError, "must agree"),
    (lambda: conv2d([X, X], torch.zeros(4, 3, 3, 3), groups=2), ValueError, "channel parts needs groups=1"),
    (lambda: conv2d([X, X.double()], torch.zeros(4, 6, 3, 3)), TypeError, r"x\[1\]: expected dtype float32"),
    (lambda: conv2d([X, np.zeros((1, 3, 8, 8), np.float32)], torch.zeros(4, 6, 3, 3)), TypeError,
     "all torch tensors or all numpy arrays"),
    (lambda: conv2d([X] * 5, torch.zeros(4, 15, 3, 3)), ValueError, "at most 4 channel parts"),
    (lambda: conv2d([], W), ValueError, "non-empty list"),
    (lambda: conv2d([X, torch.zeros(1, 2, 8, 8)], W), ValueError, "weight: expected 5 input channels"),
    (lambda: conv2d([X, torch.zeros(3, 8, 8)], torch.zeros(4, 6, 3, 3)), ValueError, "mix batched and unbatched"),
    (lambda: conv2d([X, torch.zeros(1, 0, 8, 8)], W), ValueError, "a channel part must have channels"),
])
def test_channel_parts_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_channel_part_gradient_low_level_validates():
    gy, w = np.zeros((1, 4, 8, 8), np.float32), np.zeros((4, 5, 3, 3), np.float32)
    p = ([1, 1], [1, 1], [1, 1], [1, 1], 1, 0, 0, 0.0)
    with pytest.raises(ValueError, match=r"channels \[3, 6\) are not input channels of the weight"):
        _C.conv_grad_input(gy, w, np.zeros((1, 3, 8, 8), np.float32), None, *p, channel_offset=3)
    with pytest.raises(ValueError, match=r"channels \[-1, 1\)"):
        _C.conv_grad_input(gy, w, np.zeros((1, 2, 8, 8), np.float32), None, *p, channel_offset=-1)


# A slab of rows of a taller tensor (channels apart, each plane dense) is read in place by the forward, and written in
# place by conv_into on the CPU: how the streamed inference avoids copying a layer's rows together.
SLAB_CASES = [  # (channels in, out, kernel, stride, padding, dilation, groups)
    (16, 8, 3, 1, 1, 1, 1),   # Winograd in float32
    (3, 5, 3, 1, 1, 1, 1),    # direct
    (8, 8, 3, 1, 1, 1, 4),    # groups
    (6, 4, 1, 1, 0, 1, 1),    # 1x1
    (6, 4, 2, 2, 0, 1, 1),    # kernel == stride
    (2, 3, 3, 1, 3, 3, 1),    # dilation
]


@pytest.mark.parametrize("case", SLAB_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_slab_views_read_and_written_in_place(backend, case, dtype):
    from cellkern.ops.conv import _planes, conv_into
    cin, cout, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(3)
    big = torch.randn(2, cin, 40, 45, generator=gen, dtype=dtype)
    x = big[:, :, 7:23]  # 16 rows: channels and items apart
    assert not x.is_contiguous() and _planes(x) is x
    w = torch.randn(cout, cin // g, k, k, generator=gen, dtype=dtype)
    b = torch.randn(cout, generator=gen, dtype=dtype)
    args = ([s, s], [p, p], [p, p], [d, d], g, 0, 1, 0.0)
    got = torch.ops.cellkern.conv([x], w, b, *args)
    want = torch.ops.cellkern.conv([x.contiguous()], w, b, *args)
    assert torch.equal(got, want)  # the same kernel on the same numbers: bit-equal
    _close(got, F.relu(F.conv2d(x, w, b, s, p, d, g)), dtype)
    # two parts, each a slab
    big2 = torch.randn(2, 3, 40, 45, generator=gen, dtype=dtype)
    w2 = torch.randn(cout, cin + 3, k, k, generator=gen, dtype=dtype)
    got = torch.ops.cellkern.conv([x, big2[:, :, 7:23]], w2, b, [s, s], [p, p], [p, p], [d, d], 1, 0, 0, 0.0)
    _close(got, F.conv2d(torch.cat([x, big2[:, :, 7:23]], 1), w2, b, s, p, d), dtype)
    # written into rows [5, 5 + n) of a taller output: the rows around are untouched
    out = torch.full((2, cout, want.shape[2] + 9, want.shape[3]), 7.0, dtype=dtype)
    if backend.name.startswith("emu"):
        with pytest.raises(ValueError, match="planes apart .* only by the CPU"):
            conv_into([x], w, b, *args, out[:, :, 5:5 + want.shape[2]])
        return
    conv_into([x], w, b, *args, out[:, :, 5:5 + want.shape[2]])
    assert torch.equal(out[:, :, 5:5 + want.shape[2]], want)
    assert (out[:, :, :5] == 7).all() and (out[:, :, 5 + want.shape[2]:] == 7).all()


@pytest.mark.parametrize("ow", [25, 32, 50, 59])  # row tiles of 3 vectors; 4 and 7 vectors end in two of 2
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_equal_stride_row_tiles(ow, dtype):
    from cellkern.ops import conv_transpose2d
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 12, 6, 2 * ow, generator=gen, dtype=dtype, requires_grad=True)
    w = torch.randn(9, 12, 2, 2, generator=gen, dtype=dtype, requires_grad=True)
    y = conv2d(x, w, None, 2)
    _close(y, F.conv2d(x, w, None, 2), dtype)
    # the transposed convolution's input gradient runs the same kernel with 2x the entries
    xt = torch.randn(1, 9, 5, ow, generator=gen, dtype=dtype, requires_grad=True)
    gy = torch.randn(1, 12, 10, 2 * ow, generator=gen, dtype=dtype)
    _close(conv_transpose2d(xt, w, None, stride=2), F.conv_transpose2d(xt, w, None, stride=2), dtype)  # its tiles too
    got = torch.autograd.grad(conv_transpose2d(xt, w, None, stride=2), (xt, w), gy)
    want = torch.autograd.grad(F.conv_transpose2d(xt, w, None, stride=2), (xt, w), gy)
    for a, b in zip(got, want):
        _close(a, b, dtype)


@pytest.mark.parametrize("width", [70, 64])
def test_kernel_equal_stride_with_many_entries_and_a_channel_tail(cpu_variant, width):
    """The kernel == stride forward sums its entries (channel x tap) in chunks of 256 through a parked partial sum,
    and on AVX-512 runs two blocks of 4 output channels at once: 80 x 2 x 2 = 320 entries, 13 output channels (the
    last pair holds the tail), a fused ReLU, and the gradients (the input's is the transposed k == s kernel; the
    weight's packs blocks of 48 entries, the last 32). Width 64: the kw = 1 entries' last vectors end at the row's
    last element, and are loaded from one element earlier."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 80, 10, width, generator=gen, requires_grad=True)
    w = torch.randn(13, 80, 2, 2, generator=gen, requires_grad=True)
    b = torch.randn(13, generator=gen, requires_grad=True)
    xd, wd, bd = (t.detach().double().requires_grad_(True) for t in (x, w, b))
    want = torch.relu(F.conv2d(xd, wd, bd, 2))
    got = conv2d(x, w, b, 2, 0, 1, 1, "zeros", "relu")
    gy = torch.randn(want.shape, generator=gen)
    for a, c in zip((got,) + torch.autograd.grad(got, (x, w, b), gy),
                    (want,) + torch.autograd.grad(want, (xd, wd, bd), gy.double())):
        assert (a.double() - c).abs().max() / c.abs().max() < 1e-5
