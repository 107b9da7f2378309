"""The buffer pool behind the ops' large CPU outputs: reuse only of storages nothing holds, the limit, empty_cache,
and that results (values, gradients, layouts) are those of unpooled outputs."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import cellkern  # noqa: E402
from cellkern import _pool, ops  # noqa: E402

pytestmark = pytest.mark.skipif(_pool._pool is None, reason="this torch has no storage use count: pool off")

BIG = (2, 16, 128, 128)  # 2 MiB of float32: pooled


@pytest.fixture
def pool():
    limit = _pool._pool.limit
    _pool.set_pool_limit(1 << 30)
    _pool.empty_cache()
    yield _pool._pool
    _pool.set_pool_limit(limit)
    _pool.empty_cache()


def _ptr(t):
    return t.untyped_storage().data_ptr()


def test_reuses_a_storage_once_its_last_holder_lets_go(pool):
    x = torch.randn(BIG)
    y1 = ops.max_pool2d(torch.randn(2, 16, 256, 256), 2)
    p1 = _ptr(y1)
    y2 = ops.max_pool2d(x, 1)
    assert _ptr(y2) != p1  # y1 is alive: never handed out twice
    del y1
    y3 = ops.max_pool2d(x, 1)
    assert _ptr(y3) == p1  # y1's storage again, no fresh pages
    torch.testing.assert_close(y3, x)
    assert pool.hits >= 1


@pytest.mark.parametrize("holder", ["view", "numpy", "dlpack", "saved_for_backward"])
def test_any_holder_keeps_a_storage_out_of_the_pool(pool, holder):
    x = torch.randn(BIG)
    y = ops.max_pool2d(torch.randn(2, 16, 256, 256, requires_grad=holder == "saved_for_backward"), 2)
    p = _ptr(y)
    if holder == "view":
        kept = y[:, 3]
    elif holder == "numpy":
        kept = y.numpy() if not y.requires_grad else None
    elif holder == "dlpack":
        kept = torch.utils.dlpack.to_dlpack(y)
    else:
        kept = y * y  # mul saves y for its backward
    expect = y.detach().clone()
    del y
    for _ in range(3):
        z = ops.max_pool2d(x, 1)
        assert _ptr(z) != p
    if holder == "dlpack":
        kept = torch.utils.dlpack.from_dlpack(kept)
    if holder in ("view", "numpy", "dlpack"):
        torch.testing.assert_close(torch.as_tensor(kept), expect[:, 3] if holder == "view" else expect)


def test_channels_last_and_gradients_match_torch(pool):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 64, 64, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3, dtype=torch.float64)
    for _ in range(3):  # the second and third rounds run on pooled storages
        xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
        xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
        ya = ops.max_pool2d(ops.conv2d(xa, wa, padding=1, activation="relu"), 2)
        yb = F.max_pool2d(F.relu(F.conv2d(xb, wb, padding=1)), 2)
        assert ya.is_contiguous(memory_format=torch.channels_last)
        g = torch.randn_like(yb)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(ya, yb)
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(wa.grad, wb.grad)
    assert pool.hits > 0


def test_limit_and_empty_cache(pool):
    x = torch.randn(2, 16, 256, 256)  # 8 MiB out of max_pool2d(x, 1)
    _pool.set_pool_limit(10 << 20)
    a = ops.max_pool2d(x, 1)
    b = ops.max_pool2d(x, 1)  # would pass the limit while a is alive: not pooled
    assert _pool.pool_stats()["bytes"] == 8 << 20
    del a, b
    assert _pool.pool_stats()["idle_bytes"] == 8 << 20
    _pool.empty_cache()
    assert _pool.pool_stats()["bytes"] == 0
    _pool.set_pool_limit(0)
    ops.max_pool2d(x, 1)
    assert _pool.pool_stats()["bytes"] == 0
    with pytest.raises(ValueError, match="nbytes"):
        _pool.set_pool_limit(-1)
    with pytest.raises(ValueError, match="nbytes"):
        cellkern.set_pool_limit(1.5)


def test_evicts_idle_storages_of_other_sizes(pool):
    _pool.set_pool_limit(10 << 20)
    y = ops.max_pool2d(torch.randn(2, 16, 256, 256), 1)  # 8 MiB
    del y
    z = ops.max_pool2d(torch.randn(2, 16, 128, 256), 1)  # 4 MiB: the idle 8 MiB storage makes room
    assert _pool.pool_stats()["bytes"] == 4 << 20
    del z


def test_env_limit():
    code = ("import cellkern, torch; from cellkern import ops; ops.max_pool2d(torch.randn(2, 16, 256, 256), 1); "
            "print(cellkern.pool_stats()['limit'], cellkern.pool_stats()['bytes'])")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CELLKERN_POOL_MB": "0"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"]
    bad = subprocess.run([sys.executable, "-c", "import torch; from cellkern import ops"],
                         env={**os.environ, "CELLKERN_POOL_MB": "lots"}, capture_output=True, text=True)
    assert bad.returncode != 0 and "CELLKERN_POOL_MB" in bad.stderr


def test_threads_never_share_a_storage(pool, monkeypatch):
    # Every thread fills its outputs with its own value and checks them after yielding: a storage handed to two
    # threads at once would show the other thread's value. The idle check yields the GIL right after it has
    # decided, which widens the window between "idle" and "taken" that the pool's lock must close.
    import threading
    import time

    check = type(pool)._idle

    def slow_idle(self, storage):
        idle = check(self, storage)
        time.sleep(0.0005)
        return idle

    monkeypatch.setattr(type(pool), "_idle", slow_idle)
    errors = []

    def work(value):
        x = torch.full(BIG, float(value))
        for _ in range(30):
            y = ops.max_pool2d(x, 1)
            time.sleep(0.0005)
            if not bool((y == value).all()):
                errors.append(value)
            del y

    threads = [threading.Thread(target=work, args=(v,)) for v in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert pool.hits > 0


def test_evicts_the_least_recently_used_first(pool):
    _pool.set_pool_limit(13 << 20)
    a = ops.max_pool2d(torch.randn(2, 16, 128, 256), 1)  # 4 MiB, handed out first
    b = ops.max_pool2d(torch.randn(2, 16, 256, 256), 1)  # 8 MiB
    pa, pb = _ptr(a), _ptr(b)
    del a, b
    a = ops.max_pool2d(torch.randn(2, 16, 128, 256), 1)  # the 4 MiB storage again: now the most recent
    assert _ptr(a) == pa
    del a
    c = ops.max_pool2d(torch.randn(2, 16, 64, 256), 1)  # 2 MiB: needs room, the 8 MiB one goes
    sizes = sorted(b.nbytes for e in pool.by_size.values() for b in e.values())
    assert sizes == [2 << 20, 4 << 20]
    assert pb not in [b.data_ptr() for e in pool.by_size.values() for b in e.values()]
    del c


def test_limited_maps_its_storages_and_gives_them_back(pool):
    x = torch.randn(2, 16, 256, 256)  # 8 MiB outputs
    with _pool.limited(10 << 20):
        a = ops.max_pool2d(x, 1)  # pooled, its own mapping
        b = ops.max_pool2d(x, 1)  # past the limit: a mapping of its own, not pooled
        assert not a.untyped_storage().resizable() and not b.untyped_storage().resizable()
        assert _pool.pool_stats()["bytes"] == 8 << 20
        torch.testing.assert_close(a, x)
        torch.testing.assert_close(b, x)
        del a, b
    assert _pool.pool_stats()["bytes"] == 0  # freed on the way out


def test_autograd_adds_a_second_gradient_into_a_pooled_one_in_place(pool):
    """Autograd sums two gradients of one tensor in place only into a dense tensor that holds its storage alone.
    Pooled outputs are such tensors, and so are the multi-input convolution's gradients of its parts after the
    first: a U-Net's skip tensor feeds the pooling and the decoder's first convolution, and the sum of its two
    gradients was a fresh tensor (torch's add of a strided view: 29-43 ms of a 750 ms training step)."""
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    x = torch.randn(2, 16, 128, 64, dtype=torch.float64)  # 2 MiB per 16-channel tensor: pooled
    w1 = torch.randn(16, 16, 3, 3, dtype=torch.float64) * 0.1
    w2 = torch.randn(8, 32, 3, 3, dtype=torch.float64) * 0.1
    grads, names = [], None
    for ours in (True, False):
        xs, a, b = (t.clone().requires_grad_() for t in (x, w1, w2))
        if ours:
            skip = ops.conv2d(xs, a, padding=1, activation="relu")
            up = F.interpolate(ops.max_pool2d(skip, 2), scale_factor=2)
            out = ops.conv2d([up, skip], b, padding=1)
        else:
            skip = F.relu(F.conv2d(xs, a, padding=1))
            up = F.interpolate(F.max_pool2d(skip, 2), scale_factor=2)
            out = F.conv2d(torch.cat([up, skip], 1), b, padding=1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out.square().sum().backward()
        if ours:
            names = [e.name for e in prof.events()]
        grads.append((xs.grad, a.grad, b.grad))
    assert "aten::add_" in names and "aten::add" not in names
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)
