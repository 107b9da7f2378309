"""NaN, +-inf and huge finite values through every convolution and max-pooling path, against torch's own ops:
which outputs are NaN / inf (and their signs) must match exactly, the finite values within tolerance; forward and
gradients, each CPU algorithm forced (direct, Winograd, auto), the portable CPU path and the CUDA kernels on the
emulator."""
import pytest
import torch
import torch.nn.functional as F

from cellkern import _C
from cellkern.ops import conv2d, conv3d, conv_transpose2d, conv_transpose3d, max_pool2d, max_pool3d

SLOPE = 0.1
NAN, INF = float("nan"), float("inf")

# (x shape, out channels, kernel, stride, padding, dilation, groups, padding_mode, activation)
CASES = {
    "wino2d": ((1, 16, 18, 21), 16, 3, 1, 1, 1, 1, "zeros", None),            # Winograd F(4x4, 3x3) under auto
    "wino2d-reflect-relu": ((2, 16, 13, 30), 17, 3, 1, 1, 1, 1, "reflect", "relu"),
    "wino2d-wide": ((1, 16, 10, 75), 16, 3, 1, 1, 1, 1, "zeros", None),      # 19 tiles a row: AVX-512's 16-tile vectors
    "few-leaky": ((1, 4, 12, 14), 5, 3, 1, 1, 1, 1, "zeros", "leaky_relu"),   # direct under auto; forced Winograd
    "valid": ((1, 16, 11, 14), 16, 3, 1, 0, 1, 1, "zeros", None),             # no padding: partial last tiles
    "grouped": ((1, 16, 10, 12), 16, 3, 1, 1, 1, 2, "zeros", None),
    "strided": ((1, 3, 12, 13), 4, 3, 2, 1, 1, 1, "zeros", None),
    "dilated": ((1, 3, 12, 13), 4, 3, 1, 2, 2, 1, "replicate", None),
    "1x1": ((1, 6, 10, 12), 5, 1, 1, 0, 1, 1, "zeros", "relu"),               # the GEMM paths
    "k=s": ((1, 4, 12, 14), 6, 2, 2, 0, 1, 1, "zeros", None),                 # kernel == stride
    "5x5": ((1, 3, 11, 13), 4, 5, 1, 2, 1, 1, "zeros", None),
    "wino3d": ((1, 16, 5, 8, 9), 16, 3, 1, 1, 1, 1, "zeros", None),           # 3x3x3 Winograd under auto
    "wino3d-few-relu": ((1, 3, 6, 9, 10), 4, 3, 1, 1, 1, 1, "zeros", "relu"),  # forced Winograd only
    "strided3d": ((1, 2, 7, 8, 9), 3, 3, 2, 1, 1, 1, "zeros", None),
}
WINOGRAD_ELIGIBLE = {"wino2d", "wino2d-reflect-relu", "wino2d-wide", "few-leaky", "valid", "grouped", "wino3d", "wino3d-few-relu"}
KINDS = ["nan", "inf", "huge", "overflow", "mixed"]


def _nt(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def _spots(spatial, spread, margin=0):
    """Positions at 4x4 tile borders (output rows / columns 0, 3, 4, 7, 8 read inputs -1..9 with padding 1), the
    last row / column and the interior; `spread`: only positions at least 5 apart (no window holds two), `margin`
    away from the borders."""
    *lead, H, W = spatial
    pts = [(0, 0), (H - 1, W - 1), (H // 2, W // 2), (0, W - 1), (H - 1, 0)] if spread else \
        [(0, 0), (3, 4), (4, 3), (5, 8), (H - 1, W - 1), (H // 2, W // 2 + 1), (H - 2, 0), (7, W - 4)]
    pts = [(min(max(h, margin), H - 1 - margin), min(max(w, margin), W - 1 - margin)) for h, w in pts]
    d0 = [min(1, lead[0] - 1), lead[0] - 1, 0, lead[0] // 2, lead[0] - 1] if lead else None
    return [((d0[i % len(d0)],) if lead else ()) + p for i, p in enumerate(pts)]


def _spoil(t, kind, gen, mode="zeros"):
    """A copy of t (N, C, ...) with non-finite or huge values placed at the spots. With a padding mode other than
    zeros, overflowing values stay off the border, where the padding would repeat them within one window."""
    t = t.detach().clone()
    spread = kind == "overflow"
    # Huge values of one sign per channel: sums over a channel (the bias gradient) do not cancel them.
    values = {"nan": [NAN], "inf": [INF, -INF], "huge": [1e37, 2e37, 3e36], "overflow": [3e38, -3e38],
              "mixed": [NAN, INF, 1e37, -INF, 2e37]}[kind]
    C = t.shape[1]
    for i, p in enumerate(_spots(t.shape[2:], spread, 2 if spread and mode != "zeros" else 0)):
        if spread and i >= C:
            # Overflowing products: at most one per channel and window, so that every sum holds one at most and
            # its result does not depend on the order (or the FMA contraction) of the sum.
            break
        n = i % t.shape[0]
        c = i if spread else (i * 5 + 1) % C
        v = values[i % len(values)]
        t[(n, c) + p] = -v if kind == "huge" and c % 2 else v
    return t


def _assert_match(got, want, what, tol=5e-5):
    """NaN and inf (with sign) where torch has them; finite values within tol of the finite scale or relatively."""
    assert got.shape == want.shape, what
    gn, wn = torch.isnan(got), torch.isnan(want)
    assert torch.equal(gn, wn), f"{what}: NaN at {int((gn & ~wn).sum())} extra, {int((wn & ~gn).sum())} missing"
    gi, wi = torch.isinf(got), torch.isinf(want)
    assert torch.equal(gi, wi), f"{what}: inf at {int((gi & ~wi).sum())} extra, {int((wi & ~gi).sum())} missing"
    assert torch.equal(got[gi], want[wi]), f"{what}: infinities of the wrong sign"
    fin = torch.isfinite(want)
    g, w = got[fin].double(), want[fin].double()
    if w.numel() == 0:
        return
    ordinary = w.abs() < 1e30
    scale = max(1.0, w[ordinary].abs().max().item()) if ordinary.any() else 1.0
    excess = (g - w).abs() - tol * (scale + w.abs())
    assert excess.max().item() <= 0, f"{what}: finite values differ by {(g - w).abs().max().item():.3g}"


def _reference(x, w, b, s, p, d, g, mode, act):
    """torch's convolution of the padded input. Zero padding too is applied by F.pad: cellkern's padding zeros
    multiply like any input (0 * NaN = NaN), which torch's own convolution does on small inputs (im2col) but its
    oneDNN path does not (it skips the padding), so with a NaN gy at the border, torch's weight gradient depends on
    the input's size; F.pad makes it one definition."""
    nd = x.dim() - 2
    f = F.conv2d if nd == 2 else F.conv3d
    pad = [q for q in reversed(_nt(p, nd)) for _ in (0, 1)]
    y = f(F.pad(x, pad, mode="constant" if mode == "zeros" else mode), w, b, s, 0, d, g)
    if act == "relu":
        return torch.relu(y)
    if act == "leaky_relu":
        return F.leaky_relu(y, SLOPE)
    return y


def _make(case, gen, dtype=torch.float32):
    shape, cout, k, s, p, d, g, mode, act = case
    nd = len(shape) - 2
    x = torch.randn(shape, generator=gen, dtype=dtype)
    w = torch.randn((cout, shape[1] // g) + _nt(k, nd), generator=gen, dtype=dtype)
    b = torch.randn(cout, generator=gen, dtype=dtype)
    return x, w, b


def _check_conv(case, x, w, b, gy_kind, gen, what, device="cpu"):
    """Forward and the three gradients of our conv against torch's, gy spoiled with gy_kind (or plain)."""
    shape, cout, k, s, p, d, g, mode, act = case
    nd = len(shape) - 2
    ours = conv2d if nd == 2 else conv3d
    xs, ws, bs = (t.detach().clone().to(device).requires_grad_(True) for t in (x, w, b))
    xt, wt, bt = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    want = _reference(xt, wt, bt, s, p, d, g, mode, act)
    got = ours(xs, ws, bs, s, p, d, g, mode, act, SLOPE)
    _assert_match(got.cpu(), want.detach(), f"{what} forward")
    gy = torch.randn(want.shape, generator=gen, dtype=x.dtype)
    if gy_kind:
        gy = _spoil(gy, gy_kind, gen, mode)
    want_g = torch.autograd.grad(want, (xt, wt, bt), gy)
    got_g = torch.autograd.grad(got, (xs, ws, bs), gy.to(device))
    for name, a, c in zip(("x", "weight", "bias"), got_g, want_g):
        _assert_match(a.cpu(), c, f"{what} grad {name}")


@pytest.fixture
def algorithm():
    previous = _C.conv_set_algorithm("auto")
    yield lambda a: _C.conv_set_algorithm(a)
    _C.conv_set_algorithm(previous)


def _algos(name):
    return ["auto", "direct", "winograd"] if name in WINOGRAD_ELIGIBLE else ["auto"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_conv_input_nonfinite(cpu_variant, algorithm, name, kind):
    """Spoiled x: the forward and every gradient (the weight gradient reads x; gy is plain)."""
    case = CASES[name]
    for algo in _algos(name):
        algorithm(algo)
        gen = torch.Generator().manual_seed(3)
        x, w, b = _make(case, gen)
        _check_conv(case, _spoil(x, kind, gen, case[7]), w, b, None, gen, f"{name} {kind} {algo}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_conv_grad_nonfinite(cpu_variant, algorithm, name, kind):
    """Plain x, spoiled gy: the input gradient (Winograd over the flipped kernel) and the weight gradient."""
    case = CASES[name]
    for algo in _algos(name):
        algorithm(algo)
        gen = torch.Generator().manual_seed(4)
        x, w, b = _make(case, gen)
        _check_conv(case, x, w, b, kind, gen, f"{name} gy {kind} {algo}")


@pytest.mark.parametrize("name", ["wino2d", "few-leaky", "wino3d-few-relu", "strided", "1x1"])
def test_conv_nonfinite_weights_and_bias(algorithm, name):
    case = CASES[name]
    for algo in _algos(name):
        algorithm(algo)
        for spoil in ("w_nan", "w_inf", "w_huge", "b_inf"):
            gen = torch.Generator().manual_seed(5)
            x, w, b = _make(case, gen)
            flat = w.view(-1)
            if spoil == "w_nan":
                flat[7] = NAN
            elif spoil == "w_inf":
                flat[3] = INF
                flat[-1] = -INF
            elif spoil == "w_huge":
                flat[5] = 1e36
            else:
                b[1] = INF
            # The input gradient with a NaN weight is NaN only where torch's is: the products of real positions,
            # not of gy's padding.
            _check_conv(case, x, w, b, None, gen, f"{name} {spoil} {algo}")


def test_huge_finite_inputs_stay_finite_under_winograd(algorithm):
    """Inputs near 1e37 whose exact convolution is finite: the transforms' constants (up to 100 on the input, 361
    on the output) would overflow float32; those tiles must be computed directly."""
    algorithm("winograd")
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 16, 12, 12, generator=gen)
    w = torch.randn(16, 16, 3, 3, generator=gen) * 0.1
    x[0, 3, 5, 6] = 1e37
    x[0, 9, 0, 11] = -2e37
    y = conv2d(x, w, None, 1, 1)
    assert torch.isfinite(y).all()
    _assert_match(y, F.conv2d(x, w, None, 1, 1), "1e37")


def test_single_nan_and_inf_reach_only_their_window(algorithm):
    """The fuzz finding: one NaN must make 9 x Cout outputs NaN (torch: 144 for 16 channels), not whole tiles."""
    for algo in ("auto", "winograd"):
        algorithm(algo)
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(1, 16, 16, 16, generator=gen)
        w = torch.randn(16, 16, 3, 3, generator=gen)
        for v, n_nan in ((NAN, 144), (INF, 0)):
            xs = x.clone()
            xs[0, 2, 6, 9] = v
            y = conv2d(xs, w, None, 1, 1)
            assert int(torch.isnan(y).sum()) == n_nan, (algo, v)
            _assert_match(y, F.conv2d(xs, w, None, 1, 1), f"single {v} {algo}")


@pytest.mark.parametrize("kind", ["nan", "inf", "overflow", "mixed"])
def test_channel_parts_nonfinite(algorithm, kind):
    for algo in ("auto", "direct", "winograd"):
        algorithm(algo)
        gen = torch.Generator().manual_seed(8)
        a = _spoil(torch.randn(1, 16, 12, 13, generator=gen), kind, gen)
        c = torch.randn(1, 8, 12, 13, generator=gen)
        w = torch.randn(16, 24, 3, 3, generator=gen)
        b = torch.randn(16, generator=gen)
        for where in ("x", "gy"):
            a0 = a if where == "x" else torch.randn(a.shape, generator=gen)
            parts = [t.clone().requires_grad_(True) for t in (a0, c)]
            ws, bs = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
            xt, wt, bt = (t.clone().requires_grad_(True) for t in (torch.cat([a0, c], 1), w, b))
            got = conv2d(parts, ws, bs, 1, 1, activation="relu")
            want = torch.relu(F.conv2d(F.pad(xt, [1, 1, 1, 1]), wt, bt))
            what = f"parts {kind} in {where} {algo}"
            _assert_match(got, want.detach(), what)
            gy = torch.randn(want.shape, generator=gen)
            if where == "gy":
                gy = _spoil(gy, kind, gen)
            gx0, gx1, gw, gb = torch.autograd.grad(got, parts + [ws, bs], gy)
            gxt, gwt, gbt = torch.autograd.grad(want, (xt, wt, bt), gy)
            _assert_match(torch.cat([gx0, gx1], 1), gxt, f"{what} grad x")
            _assert_match(gw, gwt, f"{what} grad weight")
            _assert_match(gb, gbt, f"{what} grad bias")


# (x shape, out channels, kernel, stride, padding, output_padding)
TRANSPOSE_CASES = {
    "s1-wino": ((1, 16, 9, 10), 16, 3, 1, 1, 0),   # stride 1: the forward is Winograd over the flipped kernel
    "k=s": ((1, 8, 7, 9), 6, 2, 2, 0, 0),          # the U-Net's upsampling
    "phases": ((1, 3, 6, 7), 4, 3, 2, 1, 1),
    "3d": ((1, 4, 3, 4, 5), 3, 2, 2, 0, 0),
}


@pytest.mark.parametrize("kind", ["nan", "inf", "huge", "mixed"])
@pytest.mark.parametrize("name", list(TRANSPOSE_CASES))
def test_conv_transpose_nonfinite(algorithm, name, kind):
    shape, cout, k, s, p, op = TRANSPOSE_CASES[name]
    nd = len(shape) - 2
    ours, ref = (conv_transpose2d, F.conv_transpose2d) if nd == 2 else (conv_transpose3d, F.conv_transpose3d)
    for algo in ("auto", "direct", "winograd"):
        algorithm(algo)
        gen = torch.Generator().manual_seed(9)
        x = torch.randn(shape, generator=gen)
        w = torch.randn((shape[1], cout) + _nt(k, nd), generator=gen)
        b = torch.randn(cout, generator=gen)
        # A spoiled weight reaches only the outputs its products with real inputs land on (as torch's col2im),
        # not the zeros between strided outputs or around the input.
        for where in ("x", "gy", "w"):
            xx = _spoil(x, kind, gen) if where == "x" else x
            ww = _spoil(w, kind, gen) if where == "w" else w
            xs, ws, bs = (t.clone().requires_grad_(True) for t in (xx, ww, b))
            xt, wt, bt = (t.clone().requires_grad_(True) for t in (xx, ww, b))
            got = ours(xs, ws, bs, s, p, op)
            want = ref(xt, wt, bt, s, p, op)
            what = f"transpose {name} {kind} in {where} {algo}"
            _assert_match(got, want.detach(), what)
            gy = torch.randn(want.shape, generator=gen)
            if where == "gy":
                gy = _spoil(gy, kind, gen)
            for n, a, c in zip("xwb", torch.autograd.grad(got, (xs, ws, bs), gy),
                               torch.autograd.grad(want, (xt, wt, bt), gy)):
                _assert_match(a, c, f"{what} grad {n}")


# Every backend (the portable CPU path and the CUDA kernels on the emulator included), small shapes.
BACKEND_CASES = ["few-leaky", "strided", "1x1", "k=s", "wino3d-few-relu"]


@pytest.mark.parametrize("kind", ["nan", "inf", "overflow", "mixed"])
def test_conv_nonfinite_on_every_backend(backend, kind):
    names = BACKEND_CASES[:3] if backend.is_emu else BACKEND_CASES
    for name in names:
        case = CASES[name]
        if backend.is_emu:  # smaller planes: the emulator runs every CUDA thread as a fiber
            case = ((1, case[0][1], 9, 10) if len(case[0]) == 4 else (1, case[0][1], 4, 6, 7),) + case[1:]
        gen = torch.Generator().manual_seed(10)
        x, w, b = _make(case, gen)
        _check_conv(case, _spoil(x, kind, gen), w, b, None, gen, f"{backend.name} {name} {kind} x", backend.device)
        _check_conv(case, x, w, b, kind, gen, f"{backend.name} {name} {kind} gy", backend.device)


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
def test_fused_activation_gradient_at_nan_inf_and_zero(backend, algorithm, act):
    """torch's threshold_backward passes the gradient where the output is NaN (NaN <= 0 is false) and zeroes it at
    exactly 0 (a NaN or inf gradient there too); leaky_relu's backward scales it where the output is not > 0 (NaN
    and 0 included). The derivative is taken at our own output: Winograd rounds tiles with non-zero inputs
    differently, so an output that is exactly 0 in torch may be 1e-7 there."""
    algos = ["auto", "winograd", "direct"] if backend.name == "cpu" else ["auto"]
    for algo in algos:
        algorithm(algo)
        gen = torch.Generator().manual_seed(11)
        cin = 16 if backend.name == "cpu" else 3
        x = torch.zeros(1, cin, 9, 10)  # zeros and a zero bias: outputs exactly 0 away from the spots
        x[0, 1, 2, 2] = NAN
        x[0, 2, 6, 7] = INF
        x[0, 0, 4, 8] = -INF
        x[0, 3 % cin, 8, 0] = 1.5
        w = torch.randn(6, cin, 3, 3, generator=gen)
        b = torch.zeros(6)
        gy = torch.randn(1, 6, 9, 10, generator=gen)
        gy[0, 0, 0, 0] = NAN  # where y is 0: relu must give 0, leaky NaN * slope
        gy[0, 1, 5, 5] = INF
        xs, ws, bs = (t.clone().to(backend.device).requires_grad_(True) for t in (x, w, b))
        xt, wt, bt = (t.clone().requires_grad_(True) for t in (x, w, b))
        got = conv2d(xs, ws, bs, 1, 1, activation=act, negative_slope=SLOPE)
        want = _reference(xt, wt, bt, 1, 1, 1, 1, "zeros", act)
        assert (want == 0).any() and torch.isnan(want).any() and torch.isinf(want).any()
        _assert_match(got.detach().cpu(), want.detach(), f"{backend.name} {act} {algo} forward")
        y = got.detach().cpu()
        gy_act = torch.ops.aten.threshold_backward(gy, y, 0.0) if act == "relu" else \
            torch.ops.aten.leaky_relu_backward(gy, y, SLOPE, True)
        pre = _reference(xt, wt, bt, 1, 1, 1, 1, "zeros", None)
        for n, a, c in zip("xwb", torch.autograd.grad(got, (xs, ws, bs), gy.to(backend.device), retain_graph=True),
                           torch.autograd.grad(pre, (xt, wt, bt), gy_act)):
            _assert_match(a.cpu(), c, f"{backend.name} {act} {algo} grad {n}")
        if algo != "winograd":  # and torch's own gradient, its output being ours exactly in class
            for n, a, c in zip("xwb", torch.autograd.grad(got, (xs, ws, bs), gy.to(backend.device)),
                               torch.autograd.grad(want, (xt, wt, bt), gy)):
                _assert_match(a.cpu(), c, f"{backend.name} {act} {algo} torch grad {n}")


@pytest.mark.parametrize("nd", [2, 3])
def test_max_pool_nonfinite_values_indices_and_gradients(backend, nd):
    gen = torch.Generator().manual_seed(12)
    shape = (1, 2, 5, 9, 10) if nd == 3 else (2, 3, 11, 14)
    x = torch.randn(shape, generator=gen)
    r = torch.rand(shape, generator=gen)
    x[r < 0.08] = NAN
    x[(r >= 0.08) & (r < 0.16)] = INF
    x[(r >= 0.16) & (r < 0.3)] = -INF
    ours, ref = (max_pool2d, F.max_pool2d) if nd == 2 else (max_pool3d, F.max_pool3d)
    for k, s, p, ceil in ((2, 2, 0, False), (3, 1, 1, False), (3, 2, 1, True)):
        xs = x.clone().to(backend.device).requires_grad_(True)
        xt = x.clone().requires_grad_(True)
        got, idx = ours(xs, k, s, p, 1, ceil, return_indices=True)
        want, want_idx = ref(xt, k, s, p, 1, ceil_mode=ceil, return_indices=True)
        torch.testing.assert_close(got.detach().cpu(), want.detach(), rtol=0, atol=0, equal_nan=True)
        assert torch.equal(idx.cpu(), want_idx), (k, s, p)
        gy = torch.randn(want.shape, generator=gen)
        (gx,) = torch.autograd.grad(got, xs, gy.to(backend.device))
        (gt,) = torch.autograd.grad(want, xt, gy)
        torch.testing.assert_close(gx.cpu(), gt, rtol=0, atol=0, equal_nan=True)
