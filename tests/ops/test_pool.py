"""max_pool2d/3d against torch's own op: values and indices exactly, gradients, autograd, compile, numpy, errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cellkern
from cellkern import _C
from cellkern.ops import max_pool2d, max_pool3d

# (shape, kernel, stride, padding, dilation, ceil_mode)
CASES_2D = [
    ((2, 3, 17, 19), 2, None, 0, 1, False),
    ((1, 4, 32, 48), 2, 2, 0, 1, False),          # the U-Net case, vector path
    ((2, 3, 17, 19), 3, 2, 1, 1, False),
    ((2, 3, 17, 19), 3, 2, 1, 1, True),
    ((1, 2, 20, 23), 3, 1, 1, 1, False),          # overlapping windows, stride 1
    ((1, 2, 21, 22), (3, 2), (2, 1), (1, 0), (2, 1), False),
    ((2, 2, 16, 40), 2, 3, 0, 1, True),           # gaps between windows
    ((1, 3, 25, 37), 4, 3, 2, 2, True),           # dilation + padding + ceil
    ((1, 1, 5, 70), (1, 5), (1, 5), 0, 1, False), # generic-stride vector path
    ((3, 5, 1, 9), 1, 1, 0, 1, False),
    ((0, 3, 8, 8), 2, 2, 0, 1, False),            # empty batch
]
CASES_3D = [
    ((2, 3, 7, 9, 11), 2, None, 0, 1, False),
    ((1, 2, 8, 16, 20), 2, 2, 0, 1, False),
    ((1, 2, 9, 10, 11), 3, 2, 1, 1, True),
    ((1, 2, 7, 12, 13), (3, 1, 2), (1, 2, 2), (1, 0, 1), (2, 1, 1), False),
]


def _torch_pool(nd, x, k, s, p, d, ceil, return_indices=False):
    f = F.max_pool2d if nd == 2 else F.max_pool3d
    return f(x, k, s, p, d, ceil_mode=ceil, return_indices=return_indices)


def _ours(nd):
    return max_pool2d if nd == 2 else max_pool3d


def _layouts(x, nd):
    yield "contiguous", x
    yield "channels_last", x.contiguous(memory_format=torch.channels_last if nd == 2 else torch.channels_last_3d)
    yield "strided", torch.stack([x, x], dim=-1)[..., 0]  # not dense: the Python layer makes it contiguous


def _assert_same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _cases(nd, backend):
    cases = CASES_2D if nd == 2 else CASES_3D
    return cases[:6] if backend.is_emu else cases


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_values_and_indices_equal_torch(backend, nd, dtype):
    gen = torch.Generator().manual_seed(0)
    for shape, k, s, p, d, ceil in _cases(nd, backend):
        x = torch.randn(shape, generator=gen, dtype=dtype).to(backend.device)
        want, want_idx = _torch_pool(nd, x, k, s, p, d, ceil, True)
        for layout, xl in _layouts(x, nd):
            got, idx = _ours(nd)(xl, k, s, p, d, ceil, return_indices=True)
            assert torch.equal(idx, want_idx), (shape, k, s, p, d, ceil, layout)
            _assert_same(got, want)
            _assert_same(_ours(nd)(xl, k, s, p, d, ceil), want)


@pytest.mark.parametrize("nd", [2, 3])
def test_nan_ties_and_infinities_follow_torch(backend, nd):
    gen = torch.Generator().manual_seed(1)
    shape = (2, 3, 6, 14, 18) if nd == 3 else (2, 3, 14, 18)
    for fill in ("ties", "nan", "neg_inf", "signed_zero"):
        x = torch.randint(0, 3, shape, generator=gen).float()  # many ties
        if fill == "nan":
            x[torch.rand(shape, generator=gen) < 0.1] = float("nan")
        if fill == "neg_inf":
            x[torch.rand(shape, generator=gen) < 0.7] = float("-inf")
        if fill == "signed_zero":
            x = torch.where(torch.rand(shape, generator=gen) < 0.5, torch.tensor(-0.0), torch.tensor(0.0))
        x = x.to(backend.device)
        for k, s, p in ((2, 2, 0), (3, 1, 1), (3, 2, 1)):
            want, want_idx = _torch_pool(nd, x, k, s, p, 1, False, True)
            for _, xl in _layouts(x, nd):
                got, idx = _ours(nd)(xl, k, s, p, return_indices=True)
                _assert_same(got, want)
                assert torch.equal(idx, want_idx), (fill, k, s, p)
                if fill == "signed_zero":  # the first of equal maxima wins, so the sign matches too
                    assert torch.equal(torch.signbit(got), torch.signbit(want))


@pytest.mark.parametrize("nd", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_equals_torch(backend, nd, dtype):
    gen = torch.Generator().manual_seed(2)
    for shape, k, s, p, d, ceil in _cases(nd, backend):
        x0 = torch.randn(shape, generator=gen, dtype=dtype).to(backend.device)
        for layout, xl in _layouts(x0, nd):
            x = xl.detach().clone().requires_grad_(True)
            xt = x0.detach().clone().requires_grad_(True)
            y = _ours(nd)(x, k, s, p, d, ceil)
            yt = _torch_pool(nd, xt, k, s, p, d, ceil)
            g = torch.randn(yt.shape, generator=gen, dtype=dtype).to(backend.device)
            (gx,) = torch.autograd.grad(y, x, g)
            (gt,) = torch.autograd.grad(yt, xt, g)
            # Same summation order as torch's scatter: exact on the CPU; the GPU gather may round differently.
            if backend.name.startswith("cpu") or backend.is_emu:
                _assert_same(gx, gt)
            else:
                torch.testing.assert_close(gx, gt)


@pytest.mark.parametrize("nd", [2, 3])
def test_backward_through_returned_indices(backend, nd):
    x = torch.randn((2, 3, 5, 9, 10)[-(nd + 2):], dtype=torch.float64, device=backend.device, requires_grad=True)
    y, idx = _ours(nd)(x, 3, 2, 1, return_indices=True)
    (gx,) = torch.autograd.grad(y.sum() * 2, x)
    xt = x.detach().clone().requires_grad_(True)
    (gt,) = torch.autograd.grad(_torch_pool(nd, xt, 3, 2, 1, 1, False).sum() * 2, xt)
    _assert_same(gx, gt)


@pytest.mark.parametrize("args", [((2, 2, 7, 9), 2, None, 0, 1, False),
                                  ((1, 2, 8, 9), 3, 1, 1, 1, False),
                                  ((1, 2, 9, 11), 3, 2, 1, 2, True),
                                  ((1, 2, 5, 6, 7), 2, 1, 1, 1, True),
                                  ((1, 1, 6, 7, 8), (3, 2, 2), (2, 1, 2), (1, 0, 1), 1, False)])
def test_gradcheck_float64(backend, args):
    shape, k, s, p, d, ceil = args
    nd = len(shape) - 2
    # Distinct values keep the argmax stable under gradcheck's finite differences.
    x = torch.randperm(int(np.prod(shape)), dtype=torch.float64).reshape(shape).div_(7).to(backend.device)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _ours(nd)(t, k, s, p, d, ceil), (x,))
    assert torch.autograd.gradgradcheck(lambda t: _ours(nd)(t, k, s, p, d, ceil), (x,))


def test_unbatched_input_and_modules():
    x = torch.randn(3, 17, 19)
    _assert_same(max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 3, 2, 1))
    m, mt = cellkern.nn.MaxPool2d(3, 2, 1, return_indices=True), torch.nn.MaxPool2d(3, 2, 1, return_indices=True)
    got, want = m(x[None]), mt(x[None])
    _assert_same(got[0], want[0])
    assert torch.equal(got[1], want[1])
    x3 = torch.randn(2, 3, 6, 8, 10)
    _assert_same(cellkern.nn.MaxPool3d(2)(x3), torch.nn.MaxPool3d(2)(x3))
    _assert_same(max_pool3d(x3[0], 2), F.max_pool3d(x3[0], 2))


def test_channels_last_in_channels_last_out():
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    y = max_pool2d(x, 2)
    assert y.is_contiguous(memory_format=torch.channels_last)
    x3 = torch.randn(1, 8, 4, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    assert max_pool3d(x3, 2).is_contiguous(memory_format=torch.channels_last_3d)


def test_torch_compile_fullgraph():
    def f(x):
        y = max_pool2d(torch.relu(x), 2)
        return max_pool2d(y * 2, 3, 1, 1).sum()

    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x)
    (g,) = torch.autograd.grad(out, x)
    xt = x.detach().clone().requires_grad_(True)
    want = F.max_pool2d(F.max_pool2d(torch.relu(xt), 2) * 2, 3, 1, 1).sum()
    (gt,) = torch.autograd.grad(want, xt)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(g, gt)


def test_opcheck():
    x = torch.randn(2, 3, 9, 10, requires_grad=True)
    for mode in (0, 1, 2):  # mode 0 saves no indices: only for inputs that need no gradient
        xm = x.detach() if mode == 0 else x
        torch.library.opcheck(torch.ops.cellkern.max_pool.default, (xm, [2, 2], [2, 2], [0, 0], [1, 1], False, mode),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("nd", [2, 3])
def test_numpy_in_numpy_out(host_backend, nd):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 11, 13)[-(nd + 2):]).astype(np.float32)
    got, idx = _ours(nd)(x, 3, 2, 1, return_indices=True)
    assert isinstance(got, np.ndarray) and isinstance(idx, np.ndarray) and got.dtype == np.float32
    want, want_idx = _torch_pool(nd, torch.from_numpy(x), 3, 2, 1, 1, False, True)
    assert np.array_equal(got, want.numpy()) and np.array_equal(idx, want_idx.numpy())
    # Non-contiguous and read-only inputs are accepted (copied or read in place).
    xr = np.asfortranarray(x)
    xr.setflags(write=False)
    assert np.array_equal(_ours(nd)(xr, 2), _torch_pool(nd, torch.from_numpy(x), 2, 2, 0, 1, False).numpy())
    assert np.array_equal(_ours(nd)(x[0], 2), _torch_pool(nd, torch.from_numpy(x[0]), 2, 2, 0, 1, False).numpy())


# ---- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, exc, match", [
    (lambda: max_pool2d(torch.zeros(1, 1, 4, 4, dtype=torch.int32), 2), TypeError, "x: expected dtype float32 or float64, got int32"),
    (lambda: max_pool2d(torch.zeros(1, 1, 4, 4, dtype=torch.float16), 2), TypeError, "float16"),
    (lambda: max_pool2d(np.zeros((1, 1, 4, 4), np.int64), 2), TypeError, "int64"),
    (lambda: max_pool2d(torch.zeros(4, 4), 2), ValueError, "expected a 4D or 3D"),
    (lambda: max_pool3d(torch.zeros(1, 1, 1, 4, 4, 4), 2), ValueError, "expected a 5D or 4D"),
    (lambda: max_pool2d(torch.zeros(1, 1, 4, 4), 0), ValueError, "kernel_size must be positive"),
    (lambda: max_pool2d(torch.zeros(1, 1, 4, 4), -2), ValueError, "kernel_size must be positive"),
    (lambda: max_pool2d(torch.zeros(1, 1, 4, 4), 2, 0), ValueError, "stride must be positive"),
    (lambda: max_pool2d(torch.zeros(1, 1, 4, 4), 2, 1, -1), ValueError, "padding must be non-negative"),
    (lambda: max_pool2d(torch.zeros(1, 1, 4, 4), 2, 1, 0, 0), ValueError, "dilation must be positive"),
    (lambda: max_pool2d(torch.zeros(1, 1, 8, 8), 3, 1, 2), ValueError, "padding should be at most half"),
    (lambda: max_pool2d(torch.zeros(1, 1, 2, 2), 3), ValueError, "output size is too small"),
    (lambda: max_pool2d(torch.zeros(1, 0, 4, 4), 2), ValueError, "channel dimension is empty"),
    (lambda: max_pool2d(torch.zeros(1, 1, 0, 4), 2), ValueError, "spatial dimensions must be non-empty"),
    (lambda: max_pool2d(torch.zeros(1, 1, 4, 4), (2, 2, 2)), ValueError, "kernel_size: expected an int or 2 ints"),
    (lambda: max_pool2d([[1.0]], 2), TypeError, "expected a torch.Tensor or numpy.ndarray"),
    (lambda: max_pool2d(torch.zeros(1, 1, 4, 4, device="meta"), 2), ValueError, "cpu and cuda"),
])
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_low_level_api_validates_outputs():
    x = np.zeros((1, 2, 8, 8), np.float32)
    args = ([2, 2], [2, 2], [0, 0], [1, 1], False)
    with pytest.raises(ValueError, match=r"out: expected shape \(1, 2, 4, 4\), got \(1, 2, 4, 5\)"):
        _C.max_pool_forward(x, np.zeros((1, 2, 4, 5), np.float32), None, *args, 0)
    with pytest.raises(TypeError, match="out: expected dtype float32"):
        _C.max_pool_forward(x, np.zeros((1, 2, 4, 4), np.float64), None, *args, 0)
    with pytest.raises(TypeError, match="indices: expected dtype int64"):
        _C.max_pool_forward(x, np.zeros((1, 2, 4, 4), np.float32), np.zeros((1, 2, 4, 4), np.int32), *args, 2)
    with pytest.raises(ValueError, match="overlap"):
        _C.max_pool_forward(x, x.reshape(-1)[:32].reshape(1, 2, 4, 4), None, *args, 0)
    ro = np.zeros((1, 2, 4, 4), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        _C.max_pool_forward(x, ro, None, *args, 0)
    with pytest.raises(ValueError, match="expected a contiguous or channels_last"):
        _C.max_pool_forward(np.zeros((1, 2, 8, 16), np.float32)[..., ::2], np.zeros((1, 2, 4, 4), np.float32), None,
                            *args, 0)
    with pytest.raises(ValueError, match="indices must come from the forward pass"):
        g = np.ones((1, 2, 4, 4), np.float32)
        _C.max_pool_backward(g, np.full((1, 2, 4, 4), 10**6, np.int64), np.zeros_like(x), *args, 2)


@pytest.mark.no_gpu
def test_cuda_tensor_without_cuda_raises_the_reason(fake_cuda_capsule):
    status = cellkern.cuda_status()
    x, out = fake_cuda_capsule((1, 1, 4, 4)), fake_cuda_capsule((1, 1, 2, 2))
    with pytest.raises(RuntimeError, match="cuda backend is unavailable") as e:
        _C.max_pool_forward(x, out, None, [2, 2], [2, 2], [0, 0], [1, 1], False, 0)
    assert status["reason"] in str(e.value)


def test_cuda_status_explains_itself():
    s = cellkern.cuda_status()
    assert isinstance(s["available"], bool) and isinstance(s["reason"], str)
    if not s["available"]:
        assert s["reason"]
    if s.get("built") and not s["available"]:
        assert s["error"] != 0 or s["device_count"] == 0


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = torch.randn(2, 8, 33, 65, device="cuda", requires_grad=True)
    y, idx = max_pool2d(x, 3, 2, 1, return_indices=True)
    yc, ic = max_pool2d(x.detach().cpu(), 3, 2, 1, return_indices=True)
    _assert_same(y.cpu(), yc)
    assert torch.equal(idx.cpu(), ic)
