"""The benchmark harness (benchmarks/common.py): the hypervisor's steal time and the kernel time are read and reported
per side."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("common")


def test_steal_seconds_reads_the_ninth_field(common, tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 2 30 4000 5 0 6 250 0 0\ncpu0 50 1 15 2000 2 0 3 125 0 0\n")
    assert common.steal_seconds(str(stat)) == pytest.approx(250 / os.sysconf("SC_CLK_TCK"))
    stat.write_text("cpu  100 2 30 4000\n")  # an old kernel without the column
    assert common.steal_seconds(str(stat)) == 0.0
    assert common.steal_seconds(str(tmp_path / "missing")) == 0.0


def test_run_case_reports_the_steal_of_each_side(common, monkeypatch, capsys):
    clock = {"t": 0.0}

    def fake_steal(path="/proc/stat"):
        return clock["t"]

    def ours():
        clock["t"] += 0.01  # 10 ms stolen while ours runs

    monkeypatch.setattr(common, "steal_seconds", fake_steal)
    case = common.Case("c", ours=ours, peers={"peer": lambda: None})
    r = common.run_case(case, repeat=4, warmup=1)
    assert r["results"]["ours"]["steal_s"] == pytest.approx(0.01)
    assert r["results"]["peer"]["steal_s"] == 0.0
    monkeypatch.setattr(common, "peak_flops_per_core", lambda isa=None: 1e9)
    common.print_table("t", [r], 2)
    lines = capsys.readouterr().out.splitlines()
    assert any(l.strip().startswith("ours") and "VM steal 10 ms per call" in l for l in lines)
    assert not any(l.strip().startswith("peer") and "steal" in l for l in lines)


def test_run_case_reports_kernel_time(common):
    import numpy as np

    def faults():  # fresh pages each call: the kernel zeroes them
        a = np.empty(256 << 20, dtype=np.uint8)
        a[::4096] = 1

    r = common.run_case(common.Case("c", ours=faults, peers={"peer": lambda: None}), repeat=5, warmup=1)
    assert r["results"]["ours"]["system_s"] > r["results"]["peer"]["system_s"]
