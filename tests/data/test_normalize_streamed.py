"""Exact percentiles in memory and streamed (numpy, memmap, zarr, dask), and block-wise normalisation equal to whole."""
import importlib
import itertools
import zlib

import dask.array as da
import numpy as np
import pytest
import zarr

N = importlib.import_module("cellkern.data.normalize")  # the module (cellkern.data.normalize is the function)
percentiles, normalize, normalize_block = N.percentiles, N.normalize, N.normalize_block

QS = [0, 0.1, 1, 12.5, 33.3333, 50, 99.8, 99.99, 100]
DTYPES = [np.float32, np.float64, np.float16, np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64,
          np.uint64]


@pytest.fixture
def streamed(monkeypatch):
    """Force streaming on small inputs: no in-memory partition, tiny blocks, tiny gather windows (so the
    histogram passes run)."""
    monkeypatch.setattr(N, "_IN_MEMORY_LIMIT", 0)
    monkeypatch.setattr(N, "_BLOCK_BYTES", 1024)
    monkeypatch.setattr(N, "_REFINE_LIMIT", 5)


def _data(rng, dtype, shape, kind):
    dtype = np.dtype(dtype)
    if kind == "const":
        return np.full(shape, 7, dtype)
    if dtype.kind == "f":
        if kind == "ties":  # few distinct values, zeros of both signs
            return rng.choice(np.array([-0.0, 0.0, 1.5, -2.25, 3.0]), shape).astype(dtype)
        return (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(dtype)
    info = np.iinfo(dtype)
    lo, hi = (0, 3) if kind == "ties" else (info.min, info.max)
    return rng.integers(max(lo, info.min), hi, shape, dtype=dtype, endpoint=True)


def _rng(*case):
    return np.random.default_rng(zlib.crc32(repr((np.dtype(case[0]).name,) + case[1:]).encode()))  # reproducible


def _ref(x, qs=QS, channel_axis=None):
    x = np.asarray(x).astype(np.float64)
    if channel_axis is None:
        return np.percentile(x, qs)
    return np.percentile(x, qs, axis=tuple(a for a in range(x.ndim) if a != channel_axis % x.ndim)).T


def _zarr(tmp_path, x, chunks, shards=None):
    z = zarr.create_array(store=str(tmp_path / "img.zarr"), shape=x.shape, chunks=chunks, shards=shards,
                          dtype=x.dtype)
    z[:] = x
    return z


CASES = list(itertools.product(DTYPES, ["random", "ties", "const"], [(1,), (9,), (3, 17, 13)]))


@pytest.mark.parametrize("dtype,kind,shape", CASES)
def test_in_memory_equals_numpy(dtype, kind, shape):
    x = _data(_rng(dtype, kind, shape), dtype, shape, kind)
    np.testing.assert_array_equal(percentiles(x, QS), _ref(x))
    if x.ndim == 3:
        np.testing.assert_array_equal(percentiles(x, QS, channel_axis=0), _ref(x, channel_axis=0))
        np.testing.assert_array_equal(percentiles(x, QS, channel_axis=-1), _ref(x, channel_axis=-1))


@pytest.mark.parametrize("dtype,kind,shape", CASES)
def test_streamed_equals_numpy(dtype, kind, shape, streamed, tmp_path):
    x = _data(_rng(dtype, kind, shape, 1), dtype, shape, kind)
    mm = np.memmap(tmp_path / "img.raw", dtype=x.dtype, mode="w+", shape=x.shape)
    mm[:] = x
    chunks = (5,) if x.ndim == 1 else (2, 7, 5)
    images = {"numpy": x, "memmap": mm, "zarr": _zarr(tmp_path, x, chunks), "dask": da.from_array(x, chunks)}
    for name, img in images.items():
        np.testing.assert_array_equal(percentiles(img, QS), _ref(x), err_msg=name)
        if x.ndim == 3:
            for ca in (0, 2) if name in ("numpy", "dask") else (1,):
                np.testing.assert_array_equal(percentiles(img, QS, channel_axis=ca), _ref(x, channel_axis=ca),
                                              err_msg=f"{name}, channel_axis={ca}")


@pytest.mark.parametrize("seed", range(20))
def test_random_streamed_cases(seed, monkeypatch):
    """Random sizes, chunkings, percentiles and knob settings: dask and streamed numpy equal numpy.percentile."""
    rng = np.random.default_rng(seed)
    dtype = DTYPES[seed % len(DTYPES)]
    shape = tuple(int(s) for s in rng.integers(1, 30, rng.integers(1, 4)))
    x = _data(rng, dtype, shape, ["random", "ties"][seed % 2])
    qs = np.concatenate([[0, 100], rng.uniform(0, 100, 5), rng.integers(0, 101, 3)])
    monkeypatch.setattr(N, "_IN_MEMORY_LIMIT", 0)
    monkeypatch.setattr(N, "_BLOCK_BYTES", int(rng.integers(64, 4000)))
    monkeypatch.setattr(N, "_REFINE_LIMIT", int(rng.integers(0, 50)))
    chunks = tuple(int(rng.integers(max(1, s // 3), s + 1)) for s in shape)  # odd, not too many
    for img in (x, da.from_array(x, chunks)):
        np.testing.assert_array_equal(percentiles(img, qs), _ref(x, qs))
        ca = int(rng.integers(0, x.ndim))
        np.testing.assert_array_equal(percentiles(img, qs, channel_axis=ca), _ref(x, qs, channel_axis=ca))


def test_extreme_floats(streamed):
    """Values over the whole float64 range (subnormals, +-max: the lerp may overflow as numpy's does)."""
    tiny, big = np.nextafter(0.0, 1.0), np.finfo(np.float64).max
    x = np.array([-big, big, tiny, -tiny, 0.0, -0.0, 1e-300, -1e300, 1.0, 1.0 + 2**-52] * 3)
    qs = np.linspace(0, 100, 41)
    np.testing.assert_array_equal(percentiles(x, qs), np.percentile(x, qs))
    np.testing.assert_array_equal(percentiles(da.from_array(x, 7), qs), np.percentile(x, qs))


def test_histogram_and_bincount_paths_run(streamed, monkeypatch):
    """Floats go through histogram passes (then a gather), small integers through one counting pass."""
    calls = []
    scan = N._scan
    monkeypatch.setattr(N, "_scan", lambda *a: calls.append(1) or scan(*a))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 50, 60))
    np.testing.assert_array_equal(percentiles(x, [1, 99.8]), _ref(x, [1, 99.8]))
    assert len(calls) >= 2  # at least one histogram pass and the gather pass
    monkeypatch.setattr(N, "_REFINE_LIMIT", 0)  # refine down to single values: no gather
    calls.clear()
    np.testing.assert_array_equal(percentiles(x, [1, 99.8]), _ref(x, [1, 99.8]))
    assert 2 <= len(calls) <= 4
    calls.clear()
    u = rng.integers(0, 65536, (4, 50, 60)).astype(np.uint16)
    np.testing.assert_array_equal(percentiles(u, [1, 99.8], channel_axis=0), _ref(u, [1, 99.8], channel_axis=0))
    assert not calls


@pytest.mark.parametrize("channel_axis,axis", [(None, None), (0, (1, 2))])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int32])
@pytest.mark.parametrize("clip", [False, True])
def test_blockwise_normalisation_equals_whole(tmp_path, monkeypatch, dtype, channel_axis, axis, clip):
    """A zarr image normalised chunk by chunk with its streamed percentiles == normalize of the whole image."""
    monkeypatch.setattr(N, "_BLOCK_BYTES", 4096)
    monkeypatch.setattr(N, "_REFINE_LIMIT", 100)
    rng = np.random.default_rng(5)
    x = (rng.gamma(2.0, 300.0, (3, 70, 53)) - 50).astype(dtype)
    z = _zarr(tmp_path, x, (1, 16, 16))
    lo, hi = percentiles(z, [1, 99.8], channel_axis=channel_axis).T
    if channel_axis is not None:
        lo, hi = lo.reshape(-1, 1, 1), hi.reshape(-1, 1, 1)
    whole = normalize(x, 1, 99.8, axis=axis, clip=clip)
    out = np.empty(x.shape, np.float32)
    for c, i, j in itertools.product(range(3), range(0, 70, 16), range(0, 53, 16)):
        sl = np.s_[c:c + 1, i:i + 16, j:j + 16]
        out[sl] = normalize_block(z[sl], lo if channel_axis is None else lo[c:c + 1],
                                  hi if channel_axis is None else hi[c:c + 1], clip=clip)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, whole)


def test_normalize_uses_float64_percentiles():
    """normalize == the float32 formula with numpy.percentile of the float64-cast image, cast to float32."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 33, 29)).astype(np.float32) * 1000
    for axis in (None, (1, 2), 0, (0, 2)):
        lo, hi = np.percentile(x.astype(np.float64), [2, 99.5], axis=axis, keepdims=True).astype(np.float32)
        np.testing.assert_array_equal(normalize(x, 2, 99.5, axis=axis), (x - lo) / (hi - lo + np.float32(1e-20)))


def test_sharded_zarr(tmp_path, streamed):
    x = np.random.default_rng(9).standard_normal((2, 40, 36)).astype(np.float32)
    z = _zarr(tmp_path, x, (1, 8, 8), shards=(1, 16, 16))
    np.testing.assert_array_equal(percentiles(z, QS, channel_axis=0), _ref(x, channel_axis=0))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kw,exc,match", [
    (dict(qs=[-1]), ValueError, "qs"),
    (dict(qs=[100.5]), ValueError, "qs"),
    (dict(qs=[np.nan]), ValueError, "qs"),
    (dict(qs=[]), ValueError, "qs"),
    (dict(qs=["a"]), ValueError, "qs"),
    (dict(image=np.zeros((0, 3))), ValueError, "image"),
    (dict(image=np.zeros((2, 3), bool)), TypeError, "image"),
    (dict(image=np.zeros(3, complex)), TypeError, "image"),
    (dict(image=np.array(["a", "b"])), TypeError, "image"),
    (dict(image=np.array([[1.0, np.nan], [2, 3]])), ValueError, "image: contains NaN"),
    (dict(image=da.from_array(np.array([1.0, 2, -np.inf, 4]), 2)), ValueError, "image: contains NaN"),
    (dict(channel_axis=2), ValueError, "channel_axis"),
    (dict(channel_axis=1.0), ValueError, "channel_axis"),
])
def test_bad_input(kw, exc, match, stream, monkeypatch):
    if stream:
        monkeypatch.setattr(N, "_IN_MEMORY_LIMIT", 0)
    args = dict(image=np.arange(12.0).reshape(3, 4), qs=[1, 99])
    args.update(kw)
    with pytest.raises(exc, match=match):
        percentiles(**args)


def test_nan_in_zarr(tmp_path):
    x = np.arange(600, dtype=np.float32).reshape(20, 30)
    x[13, 17] = np.nan
    with pytest.raises(ValueError, match="image: contains NaN"):
        percentiles(_zarr(tmp_path, x, (8, 8)), [50])
