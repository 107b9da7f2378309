"""pytest plugin for tools/sanitize.sh: records which C++ entry points each test calls, on which backend.

Every public function of cellkern._C is wrapped; a call is recorded as (function, backend) where backend is the
CPU variant in use ("avx2", "base") or "emu" when the CUDA kernels run on the emulator. The AVX-512 variant (the
AVX2 sources again, with wider GEMMs) records as "avx2": a test's "cpu" backend runs the machine's best variant,
so the one list serves AVX2 and AVX-512 machines alike. Options:
  --ck-coverage-out FILE      write {test id: {"seconds": s, "calls": ["fn backend", ...]}} as JSON
  --ck-coverage-require FILE  fail the session unless every "fn backend" line of FILE was called
The sanitizer's CI subset (tools/sanitize_ci_tests.txt, made by tools/pick_subset.py from a full run's JSON) must
still reach every entry point on every backend a full run reaches; this check is what tells when it no longer does.
"""
from __future__ import annotations

import functools
import json

import pytest

_calls: dict[str, set[str]] = {}
_seconds: dict[str, float] = {}
_current = ["<collection>"]


def pytest_addoption(parser):
    group = parser.getgroup("ck-coverage", "cellkern C++ entry-point coverage (tools/sanitize.sh)")
    group.addoption("--ck-coverage-out", default=None, help="write per-test entry-point calls as JSON")
    group.addoption("--ck-coverage-require", default=None, help="fail unless every 'fn backend' line was called")


def _wrap(name, fn, C, ext):
    @functools.wraps(fn)
    def recorded(*args, **kwargs):
        where = "emu" if ext.use_emu() else "base" if C.cpu_isa() == "base" else "avx2"
        _calls.setdefault(_current[0], set()).add(f"{name} {where}")
        return fn(*args, **kwargs)
    return recorded


def pytest_configure(config):
    # The ops look functions up on the module at call time (`_C.conv_forward(...)`), so patching the module is enough.
    from cellkern import _C, _ext
    for name in dir(_C):
        fn = getattr(_C, name)
        if not name.startswith("_") and callable(fn) and name not in ("cpu_isa", "set_cpu_isa"):
            setattr(_C, name, _wrap(name, fn, _C, _ext))


def pytest_runtest_logstart(nodeid, location):
    _current[0] = nodeid


def pytest_runtest_logreport(report):
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    config = session.config
    out = config.getoption("--ck-coverage-out")
    if out:
        data = {t: {"seconds": round(_seconds.get(t, 0.0), 3), "calls": sorted(_calls.get(t, ()))}
                for t in sorted(set(_seconds) | set(_calls))}
        with open(out, "w") as f:
            json.dump(data, f, indent=1)
    need = config.getoption("--ck-coverage-require")
    if need:
        with open(need) as f:
            required = {line.strip() for line in f if line.strip() and not line.startswith("#")}
        seen = set().union(*_calls.values()) if _calls else set()
        missing = sorted(required - seen)
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if missing:
            msg = (f"ck-coverage: {len(missing)} of {len(required)} required entry points were not called: "
                   + ", ".join(missing))
            if tr:
                tr.ensure_newline()
                tr.write_line(msg, red=True)
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        elif tr:
            tr.ensure_newline()
            tr.write_line(f"ck-coverage: all {len(required)} required entry points called")
