"""Hostile calls to the ops layer (conv, transposed conv, max-pool): absurd geometry, wrong kinds, devices and
dtypes, and exceptions inside parallel regions. Valid calls are compared with torch's own ops."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cellkern
from cellkern import _C
from cellkern.ops import conv2d, conv3d, conv_transpose2d, max_pool2d, max_pool3d
from cellkern.ops.star import as_array
from cellkern.reference.conv import padded_conv_gathered

KINDS = {"bad_alloc": MemoryError, "memory": MemoryError, "value": ValueError, "type": TypeError,
         "runtime": RuntimeError}
REGIONS = ["parallel_for", "dynamic_for", "run_workers", "nested"]


# ---- exceptions inside parallel regions ------------------------------------------------------------------------

def test_worker_exceptions_reach_python_instead_of_aborting():
    """A worker thread of each kind of region throws; the process must survive and raise the mapped exception.
    Run in a child process: an abort (std::terminate) would otherwise take pytest down with it."""
    code = textwrap.dedent(f"""
        from cellkern import _C
        for region in {REGIONS!r}:
            for kind in {list(KINDS)!r}:
                try:
                    _C._test_parallel_throw(region, kind, 2)
                    print(region, kind, "none")
                except Exception as e:
                    print(region, kind, type(e).__name__, str(e).replace(" ", "_"))
            _C._test_parallel_throw(region, "none", 2)
        print("survived")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert "survived" in lines
    got = {(l.split()[0], l.split()[1]): l.split()[2:] for l in lines if len(l.split()) >= 3}
    for region in REGIONS:
        for kind, exc in KINDS.items():
            name, msg = got[(region, kind)]
            assert name == exc.__name__, (region, kind, name)
            if kind == "memory":
                assert "123456789_bytes" in msg  # the size survives the region


@pytest.mark.parametrize("region", REGIONS)
def test_worker_exception_in_process(region, two_threads):
    with pytest.raises(MemoryError, match="123456789 bytes"):
        _C._test_parallel_throw(region, "memory", 2)
    _C._test_parallel_throw(region, "none", 2)  # the region still works afterwards


# ---- geometry: torch's answer where torch gives one cheaply ---------------------------------------------------

def _conv_vs_torch(nd, xs, ws, *, transpose=False, **kw):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*xs, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(*ws, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(ws[1] * kw.get("groups", 1) if transpose else ws[0], generator=gen, dtype=torch.float64,
                    requires_grad=True)
    if transpose:
        ours, theirs = conv_transpose2d, F.conv_transpose2d
    else:
        ours, theirs = (conv2d, F.conv2d) if nd == 2 else (conv3d, F.conv3d)
    y, yr = ours(x, w, b, **kw), theirs(x, w, b, **kw)
    assert y.shape == yr.shape
    torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-10)
    g = torch.randn(yr.shape, generator=gen, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(yr, (x, w, b), g)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    return y


GEOMETRIES = [
    # (nd, x shape, weight shape, kwargs): each valid in torch, with a small output
    (2, (2, 3, 4, 8), (5, 3, 3, 3), dict(stride=2**31 - 1)),                      # 1x1 output
    (2, (2, 3, 4, 8), (5, 3, 3, 3), dict(dilation=2**30, padding=2**30)),         # one tap of three reads data
    (2, (2, 3, 4, 8), (5, 3, 3, 3), dict(padding=2**30, stride=2**30)),           # 3x3 output, mostly padding
    (2, (2, 3, 9, 11), (5, 3, 3, 2), dict(padding=5000, stride=3000, dilation=2000)),
    (2, (2, 3, 4, 8), (5, 3, 3, 3), dict(dilation=(1, 5000), padding=(1, 5000))),
    (2, (1, 4, 5, 6), (4, 2, 3, 3), dict(dilation=(7000, 1), padding=(7000, 1), groups=2)),
    (3, (1, 2, 3, 4, 5), (4, 2, 2, 3, 3), dict(padding=(1, 2**20, 2**20), stride=(1, 2**19, 2**20),
                                               dilation=(1, 2**20, 2**19))),
]


@pytest.mark.parametrize("nd, xs, ws, kw", GEOMETRIES)
def test_absurd_geometry_matches_torch(nd, xs, ws, kw, two_threads):
    _conv_vs_torch(nd, xs, ws, **kw)


@pytest.mark.parametrize("xs, kw", [((2, 2, 1, 1), dict(stride=2**31 - 1)),
                                    ((1, 2, 3, 4), dict(padding=2**20, dilation=2**20)),
                                    ((1, 2, 3, 4), dict(padding=(2000, 3000), dilation=(2000, 3000), stride=(1, 2)))])
def test_absurd_transposed_geometry_matches_torch(xs, kw, two_threads):
    _conv_vs_torch(2, xs, (2, 3, 3, 3), transpose=True, **kw)


def test_absurd_geometry_is_fast():
    x, w = np.ones((1, 16, 4, 8), np.float32), np.ones((16, 16, 3, 3), np.float32)
    import time
    t = time.perf_counter()
    y1 = conv2d(x, w, None, stride=2**31 - 1)
    y2 = conv2d(x, w, None, dilation=2**30, padding=2**30)
    assert time.perf_counter() - t < 5.0  # was a minute and 12 GB, or an abort
    assert y1.shape == (1, 16, 1, 1) and y2.shape == (1, 16, 4, 8)
    np.testing.assert_allclose(y1, F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=2**31 - 1).numpy())
    np.testing.assert_allclose(y2, F.conv2d(torch.from_numpy(x), torch.from_numpy(w), dilation=2**30,
                                            padding=2**30).numpy())


def test_replicate_padding_with_huge_stride_matches_padded_torch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = conv2d(x, w, padding=300, stride=299, padding_mode="replicate")
    yr = F.conv2d(F.pad(x, (300,) * 4, mode="replicate"), w, stride=299)
    assert y.shape == yr.shape
    torch.testing.assert_close(y, yr)
    g = torch.randn(yr.shape, generator=gen, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(yr, (x, w), g)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode, padding", [("replicate", 2**30), ("replicate", 4), ("reflect", 4), ("circular", 4)])
def test_padding_modes_with_absurd_stride_backward_without_the_padded_input(mode, padding):
    """Stride 2**31 - 1: the input gradient runs the gather kernel through the padding mode instead of folding a
    padded input's gradient, which for padding 2**30 would be (2**31)^2 elements (found by the long fuzz: ValueError
    in backward)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    s = 2**31 - 1
    y = conv2d(x, w, padding=padding, stride=s, padding_mode=mode)
    yr = padded_conv_gathered(x, w, None, s, 1, [(padding, padding)] * 2, 1, mode)  # torch on the read positions
    torch.testing.assert_close(y, yr)
    g = torch.randn(yr.shape, generator=gen, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(y, (x, w), g), torch.autograd.grad(yr, (x, w), g)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("nd, layout, kw", [
    (2, "cl", dict(kernel_size=2**20, padding=2**19)),
    (2, "nchw", dict(kernel_size=2**20, padding=2**19)),
    (2, "cl", dict(kernel_size=2**20, padding=2**19, stride=2**20)),
    (2, "cl", dict(kernel_size=2, stride=2**31 - 1)),
    (3, "cl", dict(kernel_size=(3, 2**18, 2**19), padding=(1, 2**17, 2**18))),
    (3, "nchw", dict(kernel_size=(1, 2**18, 3), padding=(0, 2**17, 1), stride=(1, 5, 2**30), dilation=(9, 1, 1))),
])
def test_absurd_pooling_matches_torch(nd, layout, kw, two_threads):
    gen = torch.Generator().manual_seed(2)
    shape = (2, 4, 8, 8) if nd == 2 else (2, 3, 4, 5, 6)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last if nd == 2 else torch.channels_last_3d)
    x.requires_grad_(True)
    ours, theirs = (max_pool2d, F.max_pool2d) if nd == 2 else (max_pool3d, F.max_pool3d)
    y, yr = ours(x, **kw), theirs(x, **kw)
    assert y.shape == yr.shape
    torch.testing.assert_close(y, yr)
    (yi, ii), (ri, ri_idx) = ours(x, return_indices=True, **kw), theirs(x, return_indices=True, **kw)
    assert torch.equal(ii, ri_idx)
    g = torch.randn(yr.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(yr, x, g)[0])


@pytest.mark.parametrize("call, exc, match", [
    # beyond the documented parameter limit (torch itself accepts strides up to 2^63 - 1)
    (lambda: conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3), stride=2**31), ValueError,
     "stride must be positive and below 2\\^31"),
    (lambda: conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3), stride=2**70), ValueError,
     "stride: .* does not fit in int64"),
    (lambda: conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3), padding=2**31), ValueError,
     "padding must be non-negative and below 2\\^31"),
    (lambda: max_pool2d(torch.ones(1, 1, 4, 4), 2, dilation=2**40), ValueError, "dilation must be positive and below"),
    (lambda: conv_transpose2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3), dilation=2**31), ValueError,
     "dilation"),
    # the kernel's extent beyond the padded input (torch: RuntimeError)
    (lambda: conv2d(torch.ones(1, 16, 4, 8), torch.ones(16, 16, 3, 3), dilation=2**30), ValueError,
     "weight, dilation: the kernel .* is larger than the padded input"),
    (lambda: max_pool2d(torch.ones(1, 4, 8, 8), 2, dilation=2**30), ValueError, "output size is too small"),
    # outputs no process can hold
    (lambda: conv2d(np.ones((1, 16, 4, 8), np.float32), np.ones((16, 16, 3, 3), np.float32), padding=2**22),
     ValueError, "out: shape .* needs \\d+ bytes, more than a process can address"),
    (lambda: conv2d(torch.ones(1, 16, 4, 8), torch.ones(16, 16, 3, 3), padding=2**22), ValueError,
     "out: shape .* more than a process can address"),
    (lambda: conv_transpose2d(torch.ones(1, 2, 4, 4), torch.ones(2, 2, 3, 3), stride=2**22), ValueError,
     "out: shape .* more than a process can address"),
    (lambda: conv2d(torch.ones(1, 16, 4, 8), torch.ones(16, 16, 3, 3), padding=2**30), ValueError,
     "the output's number of elements .* overflows int64"),
    (lambda: conv_transpose2d(torch.ones(1, 2, 3, 4), torch.ones(2, 2, 3, 3), stride=2**31 - 1), ValueError,
     "out: the number of elements overflows int64"),
    # products that overflow int64 (the low-level shape function: no tensor that large can exist)
    (lambda: _C.conv_output_shape([2**40, 2**40, 2**40, 2**40], [1, 2**40, 1, 1], [1, 1], [0, 0], [0, 0], [1, 1], 1,
                                  0), ValueError, "overflows int64"),
    # a padding beyond range is refused before the size arithmetic, which it would overflow (UBSan found 2 * 2^62)
    (lambda: conv_transpose2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3), padding=2**62), ValueError,
     "padding must be non-negative and below 2\\^31"),
    (lambda: _C.conv_transpose_output_shape([1, 1, 2**62, 1], [1, 1, 2**31 - 1, 1], [2, 1], [0, 0], [0, 0],
                                            [2**31 - 1, 1], 1), ValueError, "out: the output size overflows int64"),
])
def test_absurd_geometry_raises_value_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_failed_allocation_is_memory_error_with_the_size():
    """4 TiB outputs under a 16 GiB address-space limit (a child process): the allocation fails deterministically,
    whatever the host's overcommit policy."""
    # Under tools/sanitize.sh ASan has reserved terabytes of shadow already, so no address-space cap can be set;
    # there ASAN_OPTIONS caps each allocation at 4 GiB instead, which fails the same way.
    code = textwrap.dedent("""
        import os, resource, numpy as np, torch
        if os.environ.get("CELLKERN_SANITIZED") != "1":
            resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))
        import cellkern.ops as ops
        x, w = np.ones((1, 1, 4, 8), np.float32), np.ones((4, 1, 3, 3), np.float32)
        for args in [(x, w), (torch.from_numpy(x), torch.from_numpy(w))]:
            try:
                ops.conv2d(*args, padding=2**18)
                print("no error")
            except MemoryError as e:
                print("MemoryError", e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.split("\n") if l]
    want = 4 * 4 * (2 * 2**18 + 2) * (2 * 2**18 + 6)  # float32 (1, 4, 524290, 524294)
    assert len(lines) == 2 and all(l.startswith("MemoryError out: could not allocate") for l in lines), lines
    assert all(f" {want} bytes" in l for l in lines), lines


# ---- kinds, dtypes, devices ------------------------------------------------------------------------------------

X, W = torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3)
XN, WN = np.zeros((1, 3, 8, 8), np.float32), np.zeros((4, 3, 3, 3), np.float32)


@pytest.mark.parametrize("call, exc, match", [
    # numpy object / string arrays: TypeError naming the argument (was BufferError)
    (lambda: conv2d(XN.astype(object), WN), TypeError, "x: expected a numeric array"),
    (lambda: conv2d(XN, WN.astype(object)), TypeError, "weight: expected a numeric array"),
    (lambda: conv2d(XN, WN, np.zeros(4, object)), TypeError, "bias: expected a numeric array"),
    (lambda: conv2d(XN.astype(str), WN), TypeError, "x: expected a numeric array"),
    (lambda: conv_transpose2d(np.zeros((1, 4, 3, 3), object), WN), TypeError, "x: expected a numeric array"),
    (lambda: max_pool2d(np.zeros((1, 1, 4, 4), object), 2), TypeError, "x: expected a numeric array"),
    (lambda: conv2d([XN, XN.astype(object)], np.zeros((4, 6, 3, 3), np.float32)), TypeError,
     r"x\[1\]: expected a numeric array"),
    # lists, tuples, None where arrays are needed (was AttributeError)
    (lambda: conv2d(None, W), TypeError, "x: expected a torch.Tensor or numpy.ndarray, got None"),
    (lambda: conv2d(X, [[0.0]]), TypeError, "weight: expected a torch.Tensor, got list"),
    (lambda: conv2d(X, None), TypeError, "weight: expected a torch.Tensor, got None"),
    (lambda: conv2d(X, W, (0.0,) * 4), TypeError, "bias: expected a torch.Tensor or None, got tuple"),
    (lambda: conv2d(X, WN), TypeError, "weight: expected a torch.Tensor when x is a torch.Tensor"),
    (lambda: conv2d(XN, W), TypeError, "expected numpy arrays"),
    (lambda: max_pool2d(None, 2), TypeError, "x: expected a torch.Tensor or numpy.ndarray, got None"),
    (lambda: max_pool2d((1.0, 2.0), 2), TypeError, "x: expected a torch.Tensor or numpy.ndarray, got tuple"),
    (lambda: conv_transpose2d(X, "w"), TypeError, "weight: expected a torch.Tensor, got str"),
    # devices: meta anywhere or mixed devices -> ValueError naming the argument (a meta bias added garbage)
    (lambda: conv2d(X, W, torch.zeros(4, device="meta")), ValueError, "bias: cellkern runs on cpu and cuda"),
    (lambda: conv2d(X, W.to("meta")), ValueError, "weight: cellkern runs on cpu and cuda"),
    (lambda: conv2d([X, torch.zeros(1, 2, 8, 8, device="meta")], torch.zeros(4, 5, 3, 3)), ValueError,
     r"x\[1\]: cellkern runs on cpu and cuda"),
    (lambda: conv_transpose2d(torch.zeros(1, 3, 4, 4), torch.zeros(3, 2, 2, 2), torch.zeros(2, device="meta")),
     ValueError, "bias: cellkern runs on cpu and cuda"),
    (lambda: max_pool3d(torch.zeros(1, 1, 4, 4, 4, device="meta"), 2), ValueError, "x: cellkern runs on cpu and cuda"),
    # dtypes -> TypeError; shapes -> ValueError
    (lambda: conv2d(X.int(), W.int()), TypeError, "x: expected dtype float32 or float64, got int32"),
    (lambda: conv2d(X, W.double()), TypeError, "weight: expected dtype float32"),
    (lambda: conv2d(X, W, torch.zeros(4, dtype=torch.float16)), TypeError, "bias: expected dtype float32"),
    (lambda: conv2d(XN.astype(np.float16), WN.astype(np.float16)), TypeError, "float16"),
    (lambda: max_pool2d(np.zeros((1, 1, 4, 4), bool), 2), TypeError, "bool"),
    (lambda: conv2d(torch.zeros(8, 8), W), ValueError, "x: expected a 4D or 3D"),
    (lambda: conv2d(X, torch.zeros(4, 3, 0, 3)), ValueError, "weight: kernel dimensions must be in"),
    (lambda: conv2d(X, W, torch.zeros(4, 1)), ValueError, r"bias: expected shape \(4,\)"),
    (lambda: max_pool2d(torch.zeros(1, 1, 0, 4), 2), ValueError, "spatial dimensions must be non-empty"),
])
def test_wrong_kinds_devices_dtypes(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_empty_batch_matches_torch():
    y = conv2d(torch.zeros(0, 3, 8, 8), W, padding=1)
    assert y.shape == F.conv2d(torch.zeros(0, 3, 8, 8), W, padding=1).shape


def test_meta_bias_never_reaches_the_kernel():
    """The fake (meta) kernel of the custom op would return uninitialised memory: the device check comes first."""
    with pytest.raises(ValueError, match="bias"):
        conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3), torch.ones(1, device="meta"))


def test_low_level_api_names_the_argument():
    x, out = np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(TypeError, match="x: cannot be read as a numeric array"):
        _C.max_pool_forward(x.astype(object), out, None, [2, 2], [2, 2], [0, 0], [1, 1], False, 0)
    with pytest.raises(TypeError, match="out: expected an array"):
        _C.max_pool_forward(x, [[0.0, 0.0]], None, [2, 2], [2, 2], [0, 0], [1, 1], False, 0)
    with pytest.raises(TypeError, match="bias: expected an array"):
        _C.conv_forward(x, np.zeros((1, 1, 3, 3), np.float32), (0.0,), out, [1, 1], [0, 0], [0, 0], [1, 1], 1, 0,
                        0, 0.0)
    with pytest.raises(ValueError, match="weight: cellkern runs on cpu and cuda data"):
        _C.conv_forward(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 3, 3, device="meta"), None,
                        torch.zeros(1, 1, 2, 2), [1, 1], [0, 0], [0, 0], [1, 1], 1, 0, 0, 0.0)


def test_non_native_byte_order_is_read_by_value():
    gen = np.random.default_rng(3)
    x, w = gen.standard_normal((1, 2, 6, 6)).astype(np.float32), gen.standard_normal((3, 2, 3, 3)).astype(np.float32)
    got = conv2d(x.astype(">f4"), w.astype(">f4"), padding=1)
    np.testing.assert_allclose(got, conv2d(x, w, padding=1))
    np.testing.assert_array_equal(max_pool2d(x.astype(">f4"), 2), max_pool2d(x, 2))


def test_star_array_conversion_names_the_argument():
    with pytest.raises(TypeError, match="labels: expected a numeric array"):
        as_array(np.zeros((4, 4), object), "labels")
    with pytest.raises(TypeError, match="labels: expected a numeric array"):
        as_array([["a", "b"]], "labels")
    with pytest.raises(TypeError, match="labels: could not convert"):
        as_array([[1, 2], [3]], "labels")
    with pytest.raises(TypeError, match="labels: expected a numpy array or torch tensor, got NoneType|got None"):
        as_array(None, "labels")
    assert as_array([[1, 2], [3, 4]], "labels", kind="int").dtype.kind == "i"


# ---- the emulator backend on small valid hostile cases -------------------------------------------------------

@pytest.mark.parametrize("nd, xs, ws, kw", [GEOMETRIES[0], GEOMETRIES[1], GEOMETRIES[2], GEOMETRIES[5]])
def test_absurd_geometry_on_the_emulator(nd, xs, ws, kw):
    with cellkern.backend("emu"):
        _conv_vs_torch(nd, xs, ws, **kw)


def test_absurd_pooling_on_the_emulator():
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with cellkern.backend("emu"):
        y = max_pool2d(x, 2**20, padding=2**19)
        g = torch.autograd.grad(y.sum(), x)[0]
    yr = F.max_pool2d(x, 2**20, padding=2**19)
    torch.testing.assert_close(y, yr)
    torch.testing.assert_close(g, torch.autograd.grad(yr.sum(), x)[0])
