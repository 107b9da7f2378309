"""The CPU kernel variant: chosen from the CPU's features, forced older by CELLKERN_CPU_ISA or set_cpu_isa."""
import os
import subprocess
import sys

import pytest

from cellkern import _C

ORDER = ["base", "avx2", "avx512"]


def _flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _best_from_cpuinfo():
    flags = _flags()
    if {"avx2", "fma"} <= flags:
        if {"avx512f", "avx512vl", "avx512dq", "avx512bw"} <= flags:
            return "avx512"
        return "avx2"
    return "base"


def _isa_in_child(value):
    env = dict(os.environ)
    env.pop("CELLKERN_CPU_ISA", None)
    if value is not None:
        env["CELLKERN_CPU_ISA"] = value
    out = subprocess.run([sys.executable, "-c", "from cellkern import _C; print(_C.cpu_isa())"], env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo") or os.uname().machine != "x86_64",
                    reason="reads the x86 CPU flags from /proc/cpuinfo")
def test_the_best_variant_of_the_cpu_is_the_default_and_the_variable_only_goes_older():
    best = _best_from_cpuinfo()
    assert _isa_in_child(None) == best
    assert _isa_in_child("base") == "base"
    # An older variant than the CPU's best is taken, a newer one or an unknown name is not.
    assert _isa_in_child("avx2") == min("avx2", best, key=ORDER.index)
    assert _isa_in_child("avx512") == best
    assert _isa_in_child("sse9") == best


def test_set_cpu_isa_switches_and_refuses_what_the_cpu_lacks():
    previous = _C.cpu_isa()
    try:
        for name in ORDER:
            before = _C.cpu_isa()
            ok = _C.set_cpu_isa(name)
            assert ok == (ORDER.index(name) <= ORDER.index(_best_from_cpuinfo()))
            assert _C.cpu_isa() == (name if ok else before)
    finally:
        _C.set_cpu_isa(previous)
    with pytest.raises(ValueError, match="cpu isa must be"):
        _C.set_cpu_isa("avx1024")
