"""The SIMT emulator itself: barriers, shared memory, warp collectives, atomics, thread orders, and the errors
it must raise. Each property is checked against an answer computed here in NumPy, in every thread order."""
import numpy as np
import pytest

from cellkern import _emu

st = _emu.selftest
ORDERS = ["forward", "reverse", "random:7", "random:8"]


@pytest.fixture(params=ORDERS)
def order(request, monkeypatch):
    monkeypatch.setenv("CELLKERN_EMU_ORDER", request.param)
    return request.param


def f32(a):
    return np.asarray(a, dtype=np.float32)


def test_barrier_makes_shared_memory_exchange_correct(order):
    x = f32(np.random.default_rng(0).standard_normal(256))
    assert np.array_equal(f32(st.reverse(x.tolist(), True)), x[::-1])


def test_missing_barrier_gives_a_wrong_answer(order):
    # Fresh values each time, so stale shared memory from an earlier launch cannot hide the race.
    x = f32(np.random.default_rng(abs(hash(order)) % 1000).standard_normal(256) + 10)
    assert not np.array_equal(f32(st.reverse(x.tolist(), False)), x[::-1])


def test_a_race_that_only_some_orders_expose(monkeypatch):
    n, iters = 64, 4
    x = f32(np.random.default_rng(1).standard_normal(n * iters))
    tiles = x.reshape(iters, n)
    want = np.zeros(n, np.float32)
    for k in range(iters):
        want[:-1] += tiles[k, 1:]
    wrong_in = []
    for o in ORDERS:
        monkeypatch.setenv("CELLKERN_EMU_ORDER", o)
        np.testing.assert_allclose(st.neighbour_sum(x.tolist(), n, iters, True), want, rtol=1e-6)
        racy = f32(st.neighbour_sum(x.tolist(), n, iters, False))
        if not np.allclose(racy, want, rtol=1e-6):
            wrong_in.append(o)
    # Forward order runs each thread before its right neighbour overwrites anything: the race stays hidden.
    assert "forward" not in wrong_in
    assert "reverse" in wrong_in and any(o.startswith("random") for o in wrong_in)


def test_early_return_before_barrier_is_an_error_with_file_and_line(order):
    with pytest.raises(RuntimeError, match=r"thread \(5,0,0\) returned before reaching __syncthreads\(\) at "
                                           r".*selftest\.cuh:\d+"):
        st.early_return()


def test_divergent_barriers_are_an_error(order):
    with pytest.raises(RuntimeError, match=r"different barriers: .*selftest\.cuh:\d+.*selftest\.cuh:\d+"):
        st.divergent_barrier()


def test_warp_deadlock_is_reported(order):
    with pytest.raises(RuntimeError, match=r"deadlock: .*__shfl_sync at .*selftest\.cuh:\d+"):
        st.warp_deadlock()


def test_invalid_launch_configuration_is_refused():
    with pytest.raises(RuntimeError, match=r"invalid launch .*block \(2048,1,1\)"):
        st.bad_launch()


@pytest.mark.parametrize("threads", [32, 96, 256])
def test_warp_shuffles_votes_and_syncwarp(order, threads):
    blocks = 3
    n = blocks * threads
    v = np.random.default_rng(threads).integers(0, 1000, n).astype(np.int32)
    v[5] = 1001  # makes __any_sync(v > 1000) true in the first warp only
    out = np.asarray(st.warp_ops(v.tolist(), blocks, threads)).reshape(6, n)
    w = v.reshape(-1, 32)
    sums = w.sum(1)
    assert np.array_equal(out[0].reshape(-1, 32)[:, 0], sums)
    assert np.array_equal(out[1].reshape(-1, 32), np.repeat(sums[:, None], 32, 1))
    assert np.array_equal(out[2].reshape(-1, 32), np.repeat(w[:, 3:4], 32, 1))
    assert np.array_equal(out[3].reshape(-1, 32), np.cumsum(w, 1))
    ballots = ((w & 1) << np.arange(32)).sum(1).astype(np.uint32).view(np.int32)
    assert np.array_equal(out[4].reshape(-1, 32), np.repeat(ballots[:, None], 32, 1))
    flags = (w > 1000).any(1) * 1 + (w >= 0).all(1) * 2
    assert np.array_equal(out[5].reshape(-1, 32), np.repeat(flags[:, None], 32, 1))


def test_shuffle_width_segments(order):
    x = f32(np.random.default_rng(3).standard_normal(128))
    got = f32(st.segment_sum(x.tolist(), 2, 64))
    want = np.repeat(x.reshape(-1, 8).sum(1), 8)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_atomics_across_concurrent_blocks(monkeypatch):
    monkeypatch.setenv("CELLKERN_EMU_WORKERS", "4")
    v = np.random.default_rng(4).integers(0, 10_000, 20_000)
    hist, total = st.atomics(v.tolist(), 17, 40)
    assert np.array_equal(hist, np.bincount(v % 17, minlength=17))
    assert total == len(v)


def test_shared_memory_is_private_to_each_block(monkeypatch, order):
    monkeypatch.setenv("CELLKERN_EMU_WORKERS", "4")
    out = np.asarray(st.block_isolation(50, 64)).reshape(50, 64)
    assert np.array_equal(out, np.repeat(np.arange(50)[:, None], 64, 1))


def test_thread_order_follows_the_environment(monkeypatch):
    monkeypatch.setenv("CELLKERN_EMU_ORDER", "forward")
    assert st.order(64) == list(range(64))
    monkeypatch.setenv("CELLKERN_EMU_ORDER", "reverse")
    assert st.order(64) == list(range(63, -1, -1))
    monkeypatch.setenv("CELLKERN_EMU_ORDER", "random:5")
    a = st.order(64)
    assert sorted(a) == list(range(64)) and a != list(range(64)) and a != list(range(63, -1, -1))
    assert st.order(64) == a  # same seed, same order
    monkeypatch.setenv("CELLKERN_EMU_ORDER", "random:6")
    assert st.order(64) != a
    monkeypatch.setenv("CELLKERN_EMU_ORDER", "sideways")
    with pytest.raises(RuntimeError, match="CELLKERN_EMU_ORDER"):
        st.order(4)


def test_dynamic_shared_memory_and_syncthreads_count(order):
    x = f32(np.random.default_rng(5).standard_normal(4 * 128))
    sums, pos = st.block_sum(x.tolist(), 4, 128)
    np.testing.assert_allclose(sums, x.reshape(4, 128).sum(1), rtol=1e-5, atol=1e-5)
    assert list(pos) == list((x.reshape(4, 128) > 0).sum(1))
