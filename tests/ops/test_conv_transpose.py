"""conv_transpose2d/3d against torch's own transposed convolution: forward, gradients, gradcheck, the kernel ==
stride fast path, layouts, modules, compile, numpy, errors; on every backend (cpu, the portable cpu path, the CUDA
kernels on the emulator in three orders)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cellkern
from cellkern import _C
from cellkern.ops import conv_transpose2d, conv_transpose3d

# (x shape, out channels per group * groups, kernel, stride, padding, output_padding, groups, dilation)
CASES_2D = [
    ((2, 5, 7, 9), 6, 2, 2, 0, 0, 1, 1),          # the U-Net's upsampling (kernel == stride), odd sizes
    ((1, 3, 6, 5), 4, 2, 2, 1, 1, 1, 1),          # kernel == stride with a cropped border and output padding
    ((1, 2, 5, 6), 3, 2, 2, 0, 1, 1, 1),          # output padding: a last row and column no tap reaches
    ((1, 3, 4, 9), 2, (2, 3), (2, 3), (0, 1), 0, 1, 1),  # kernel == stride, anisotropic
    ((2, 3, 5, 6), 4, 3, 2, 1, 1, 1, 1),          # overlapping taps (phase path)
    ((1, 4, 6, 7), 6, 3, 1, 1, 0, 2, 2),          # stride 1, groups, dilation
    ((1, 2, 5, 5), 3, 3, 1, 0, 2, 1, 3),          # output_padding >= stride (allowed by dilation)
    ((1, 3, 4, 5), 2, 4, 2, 1, 0, 1, 1),          # kernel 4, stride 2 (two taps per phase)
    ((1, 2, 5, 4), 2, 1, 3, 0, 2, 1, 1),          # stride beyond the kernel: positions no tap reaches
    ((1, 20, 9, 10), 18, 3, 1, 1, 0, 1, 1),       # Winograd on the CPU (>= 16 channels, stride 1)
    ((1, 33, 6, 40), 7, 2, 2, 0, 0, 1, 1),        # kernel == stride: channel tails, rows wider than one tile
    ((2, 8, 5, 6), 8, 2, 2, 0, 0, 8, 1),          # depthwise kernel == stride (nearest-neighbour upsampling's form)
    ((0, 3, 4, 4), 2, 2, 2, 0, 0, 1, 1),          # empty batch
]
CASES_3D = [
    ((1, 3, 3, 4, 5), 4, 2, 2, 0, 0, 1, 1),       # kernel == stride
    ((2, 2, 3, 4, 4), 3, 3, 2, 1, 1, 1, 1),
    ((1, 4, 3, 3, 4), 2, (1, 2, 2), (1, 2, 2), 0, 0, 2, 1),  # kernel == stride, groups, anisotropic
]


def _t(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def _make(case, dtype, device, gen, bias=True):
    shape, cout, k, s, p, op, g, d = case
    nd = len(shape) - 2
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    w = torch.randn((shape[1], cout // g) + _t(k, nd), generator=gen, dtype=dtype).to(device)
    b = torch.randn(cout, generator=gen, dtype=dtype).to(device) if bias else None
    return x, w, b, (s, p, op, g, d)


def _ours(nd):
    return conv_transpose2d if nd == 2 else conv_transpose3d


def _torch(nd):
    return F.conv_transpose2d if nd == 2 else F.conv_transpose3d


def _close(got, want, dtype, what=""):
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_match_torch(backend, nd, dtype):
    gen = torch.Generator().manual_seed(0)
    cases = CASES_2D if nd == 2 else CASES_3D
    if backend.is_emu:  # the emulator is slow: half the cases per dtype, all covered over both
        cases = cases[::2] if dtype == torch.float32 else cases[1::2]
    for i, case in enumerate(cases):
        x, w, b, (s, p, op, g, d) = _make(case, dtype, backend.device, gen, bias=i % 3 != 1)
        ins = [t.requires_grad_(True) for t in (x, w, b) if t is not None]
        want = _torch(nd)(x, w, b, s, p, op, g, d)
        got = _ours(nd)(x, w, b, s, p, op, g, d)
        assert got.shape == want.shape and got.dtype == dtype
        _close(got, want, dtype, f"forward {case}")
        if want.numel() == 0:
            continue
        gy = torch.randn(want.shape, generator=gen, dtype=dtype).to(backend.device)
        for name, a, c in zip(("x", "weight", "bias"), torch.autograd.grad(got, ins, gy),
                              torch.autograd.grad(want, ins, gy)):
            _close(a, c, dtype, f"grad {name} {case}")


@pytest.mark.parametrize("case", [CASES_2D[0], CASES_2D[4], CASES_2D[11], CASES_3D[0]],
                         ids=["k2s2", "overlapping", "depthwise", "3d-k2s2"])
def test_gradient_of_a_channel_part_is_read_in_place(backend, case):
    """The U-Net's decoder convolution reads the upsampled tensor next to the skip, so the upsampling's gradient
    arrives as a channel slice of a wider gradient (batch items further apart than its own channels): the three
    gradient ops read it at its strides. The same ops on a contiguous copy, and torch, give the reference."""
    nd = len(case[0]) - 2
    gen = torch.Generator().manual_seed(3)
    x, w, b, (s, p, op, g, d) = _make(case, torch.float32, backend.device, gen)
    y = _torch(nd)(x, w, b, s, p, op, g, d)
    wide = torch.randn((y.shape[0], y.shape[1] + 5) + y.shape[2:], generator=gen).to(backend.device)
    gy = wide[:, 2:2 + y.shape[1]]
    assert not gy.is_contiguous() or y.shape[0] == 1
    args = ([s] * nd if isinstance(s, int) else list(s), [p] * nd if isinstance(p, int) else list(p),
            [d] * nd if isinstance(d, int) else list(d), g)
    ops = torch.ops.cellkern
    for view, dense in [(ops.conv_transpose_grad_input(gy, w, list(x.shape), *args),
                         ops.conv_transpose_grad_input(gy.contiguous(), w, list(x.shape), *args)),
                        (ops.conv_transpose_grad_weight(gy, x, list(w.shape), *args),
                         ops.conv_transpose_grad_weight(gy.contiguous(), x, list(w.shape), *args)),
                        (ops.conv_bias_grad(gy), ops.conv_bias_grad(gy.contiguous()))]:
        if str(backend.device).startswith("cuda"):  # CUDA weight gradients sum with atomics: last bits vary
            _close(view, dense, torch.float32, f"strided grad_output {case}")
        else:
            torch.testing.assert_close(view, dense, rtol=0, atol=0)
    # Through autograd: a concatenation's backward hands each part such a slice.
    ins = [t.requires_grad_(True) for t in (x, w, b)]
    other = torch.randn((y.shape[0], 5) + y.shape[2:], generator=gen).to(backend.device)
    gz = torch.randn(wide.shape, generator=gen).to(backend.device)
    got = torch.autograd.grad(torch.cat([other, _ours(nd)(x, w, b, s, p, op, g, d)], 1), ins, gz)
    want = torch.autograd.grad(torch.cat([other, _torch(nd)(x, w, b, s, p, op, g, d)], 1), ins, gz)
    for name, a, c in zip(("x", "weight", "bias"), got, want):
        _close(a, c, torch.float32, f"grad {name} {case}")


GRADCHECK = [
    ((1, 2, 4, 5), 3, 2, 2, 0, 0, 1, 1),
    ((2, 2, 4, 3), 2, 2, 2, 1, 1, 1, 1),
    ((1, 2, 4, 4), 4, 3, 2, 1, 1, 2, 1),
    ((1, 2, 4, 5), 2, 3, 1, 1, 0, 1, 2),
    ((1, 2, 3, 3, 4), 2, 2, 2, 0, 1, 1, 1),
]


@pytest.mark.parametrize("case", GRADCHECK, ids=lambda c: f"{len(c[0]) - 2}d-k{c[2]}-s{c[3]}-p{c[4]}-op{c[5]}")
def test_gradcheck_float64(backend, case):
    nd = len(case[0]) - 2
    gen = torch.Generator().manual_seed(1)
    x, w, b, (s, p, op, g, d) = _make(case, torch.float64, backend.device, gen)
    f = lambda x, w, b: _ours(nd)(x, w, b, s, p, op, g, d)  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(t.requires_grad_(True) for t in (x, w, b)))


def test_unet_upsampling_sizes_take_the_fast_path_exactly():
    # Kernel == stride: every output is one product sum, so float64 results equal torch's to rounding, on rows
    # wider than one tile, with a bias, into an output above the streaming-store threshold.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 64, 150, 130, generator=gen)
    w = torch.randn(64, 64, 2, 2, generator=gen) / 8
    b = torch.randn(64, generator=gen)
    _close(conv_transpose2d(x, w, b, 2), F.conv_transpose2d(x, w, b, 2), torch.float32, "large")
    xd, wd = x[:, :8, :20, :37].double(), w[:8, :5].double()
    torch.testing.assert_close(conv_transpose2d(xd, wd, None, 2), F.conv_transpose2d(xd, wd, None, 2), rtol=1e-13,
                               atol=1e-13)


def test_layouts_unbatched_and_modules():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 6, 7, generator=gen)
    w = torch.randn(4, 3, 2, 2, generator=gen)
    want = F.conv_transpose2d(x, w, None, 2)
    got = conv_transpose2d(x.contiguous(memory_format=torch.channels_last), w, None, 2)
    assert got.is_contiguous(memory_format=torch.channels_last)
    _close(got, want, torch.float32)
    _close(conv_transpose2d(x[0], w, None, 2), want[0], torch.float32)
    for nd, ours_cls, torch_cls in ((2, cellkern.nn.ConvTranspose2d, torch.nn.ConvTranspose2d),
                                    (3, cellkern.nn.ConvTranspose3d, torch.nn.ConvTranspose3d)):
        torch.manual_seed(0)
        ours = ours_cls(4, 6, 3, stride=2, padding=1)
        torch.manual_seed(0)
        ref = torch_cls(4, 6, 3, stride=2, padding=1)
        assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
        assert all(torch.equal(ours.state_dict()[k], ref.state_dict()[k]) for k in ("weight", "bias"))
        xi = torch.randn((1, 4) + (5,) * nd, generator=gen)
        _close(ours(xi), ref(xi), torch.float32)
        size = [10] * nd  # output_size picks the output padding, as torch's module does
        _close(ours(xi, output_size=size), ref(xi, output_size=size), torch.float32)
        with pytest.raises(ValueError, match="padding_mode"):
            bad = ours_cls(4, 6, 3)
            bad.padding_mode = "reflect"
            bad(xi)


def test_torch_compile_and_opcheck():
    def f(x, w, b):
        return conv_transpose2d(torch.relu(x), w, b, 2).square().sum()

    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    w = torch.randn(3, 4, 2, 2, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    out = torch.compile(f, fullgraph=True)(x, w, b)
    grads = torch.autograd.grad(out, (x, w, b))
    xt, wt, bt = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    want = F.conv_transpose2d(torch.relu(xt), wt, bt, 2).square().sum()
    for a, c in zip(grads, torch.autograd.grad(want, (xt, wt, bt))):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-3)
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.cellkern.conv_transpose.default, (x, w, b, [2, 2], [0, 0], [1, 0], [1, 1], 1),
                          test_utils=utils)
    gy = torch.randn(2, 4, 10, 12)
    torch.library.opcheck(torch.ops.cellkern.conv_transpose_grad_input.default,
                          (gy, w.detach(), [2, 3, 5, 6], [2, 2], [0, 0], [1, 1], 1), test_utils=utils)
    torch.library.opcheck(torch.ops.cellkern.conv_transpose_grad_weight.default,
                          (gy, x.detach(), [3, 4, 2, 2], [2, 2], [0, 0], [1, 1], 1), test_utils=utils)
    torch.library.opcheck(torch.ops.cellkern.conv_bias_grad.default, (gy,), test_utils=utils)


@pytest.mark.parametrize("nd", [2, 3])
def test_numpy_in_numpy_out(host_backend, nd):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3) + (5,) * nd).astype(np.float32)
    w = rng.standard_normal((3, 4) + (2,) * nd).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    got = _ours(nd)(x, w, b, 2)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    want = _torch(nd)(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), 2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_ours(nd)(x[0], w, b, 2), want[0], rtol=1e-4, atol=1e-4)


def test_bias_gradient_kernel(host_backend):
    rng = np.random.default_rng(5)
    for shape in [(3, 5, 7, 9), (1, 2, 1000), (2, 1, 3, 4, 5)]:
        gy = rng.standard_normal(shape)
        gb = np.empty(shape[1])
        _C.conv_bias_grad(gy, gb)
        np.testing.assert_allclose(gb, gy.sum(axis=tuple(i for i in range(len(shape)) if i != 1)), rtol=1e-12)


X, W = torch.zeros(1, 3, 4, 4), torch.zeros(3, 2, 2, 2)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: conv_transpose2d(X.int(), W.int()), TypeError, "x: expected dtype float32 or float64"),
    (lambda: conv_transpose2d(X, W.double()), TypeError, "weight: expected dtype float32"),
    (lambda: conv_transpose2d(X, W, torch.zeros(2, dtype=torch.float64)), TypeError, "bias: expected dtype"),
    (lambda: conv_transpose2d(X, W, [0.0, 0.0]), TypeError, "bias: expected a torch.Tensor or None"),
    (lambda: conv_transpose2d(X.numpy(), W), TypeError, "expected numpy arrays"),
    (lambda: conv_transpose2d(torch.zeros(4, 4), W), ValueError, "x: expected a 4D or 3D"),
    (lambda: conv_transpose2d(X, torch.zeros(3, 2, 2)), ValueError, "expected 4D shapes"),
    (lambda: conv_transpose2d(X, torch.zeros(2, 2, 2, 2)), ValueError, "weight: expected 3 input channels"),
    (lambda: conv_transpose2d(X, W, torch.zeros(3)), ValueError, r"bias: expected shape \(2,\)"),
    (lambda: conv_transpose2d(X, W, stride=2, output_padding=2), ValueError, "output_padding: must be smaller"),
    (lambda: conv_transpose2d(X, W, stride=0), ValueError, "positive"),
    (lambda: conv_transpose2d(X, W, padding=-1), ValueError, "padding must be non-negative"),
    (lambda: conv_transpose2d(X, W, padding=3), ValueError, "the output would be empty"),
    (lambda: conv_transpose2d(X, torch.zeros(3, 2, 2, 2), groups=2), ValueError, "not a positive multiple of groups"),
    (lambda: conv_transpose2d(X, W, groups=1.5), ValueError, "groups: expected an int"),
    (lambda: conv_transpose2d(X, W, stride=(1, 2, 3)), ValueError, "stride: expected an int or 2 ints"),
    (lambda: conv_transpose3d(torch.zeros(4, 4, 4), W), ValueError, "x: expected a 5D or 4D"),
    (lambda: conv_transpose2d(torch.zeros(1, 3, 4, 4, device="meta"), W), ValueError, "cpu and cuda"),
])
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_low_level_api_validates_outputs():
    x, w = np.zeros((1, 3, 4, 4), np.float32), np.zeros((3, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="out: size 10 along dim h is not"):
        _C.conv_transpose_forward(x, w, None, np.zeros((1, 2, 10, 8), np.float32), [2, 2], [0, 0], [1, 1], 1)
    with pytest.raises(ValueError, match=r"out: expected shape \(1, 2, \.\.\.\)"):
        _C.conv_transpose_forward(x, w, None, np.zeros((1, 3, 8, 8), np.float32), [2, 2], [0, 0], [1, 1], 1)
    ro = np.zeros((1, 2, 8, 8), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _C.conv_transpose_forward(x, w, None, ro, [2, 2], [0, 0], [1, 1], 1)
    with pytest.raises(ValueError, match="grad_bias: expected shape"):
        _C.conv_bias_grad(np.zeros((1, 2, 3), np.float32), np.zeros(3, np.float32))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(6)
    for case in CASES_2D[:5] + CASES_3D[:2]:
        x, w, b, (s, p, op, g, d) = _make(case, torch.float32, "cpu", gen)
        nd = x.dim() - 2
        got = _ours(nd)(x.cuda(), w.cuda(), b.cuda(), s, p, op, g, d)
        _close(got.cpu(), _torch(nd)(x, w, b, s, p, op, g, d), torch.float32, str(case))
