"""The benchmark contract (ARCHITECTURE.md section 6): ours and peers in one process, alternating after warm-up;
median and IQR; ratio peer/ours; kernel and VM steal time per call; threads, versions, machine; JSON; optional
matplotlib plot; each benchmark is run under THP_MEM_ALLOC_ENABLE=1 (headline) and under torch's default allocator,
in two child processes."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MEMORY_BW = {1: 20e9, 2: 28e9}  # bytes/s measured on our machines (ARCHITECTURE.md section 6)
PEAK_FLOPS_PER_CORE = 102e9     # fp32 AVX2 FMA


def peak_flops_per_core(isa: str | None = None) -> float:
    """The nominal fp32 peak our kernels can reach: 102 GFLOP/s with AVX2 FMAs, twice that with AVX-512's (the
    variant `isa`, default the one running)."""
    if isa is None:
        from cellkern import _C
        isa = _C.cpu_isa()
    return PEAK_FLOPS_PER_CORE * (2 if isa == "avx512" else 1)
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Case:
    """One workload: `ours` and each peer are zero-argument callables that do the whole timed work."""
    name: str
    ours: Callable[[], object]
    peers: dict[str, Callable[[], object]]
    bytes: float | None = None   # memory traffic of one call (for GB/s and the fraction of bandwidth)
    flops: float | None = None   # floating-point work of one call (for GFLOP/s and the fraction of peak)
    best_of: tuple[str, ...] = ()  # peers whose best is "the peer" for the headline ratio (empty: all peers)
    info: dict = field(default_factory=dict)


def _quartiles(xs):
    xs = sorted(xs)
    if len(xs) < 4:
        return xs[0], statistics.median(xs), xs[-1]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[1], q[2]


def steal_seconds(path: str = "/proc/stat") -> float:
    """CPU time (all CPUs) the hypervisor gave to others while this VM's CPUs had work: /proc/stat's steal column
    (Linux; 0.0 where it is missing). On our VMs it rises after a process frees and re-touches gigabytes (torch's
    training step does), and lands on whatever runs next: a run's medians read with it."""
    try:
        with open(path) as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") if fields[:1] == ["cpu"] and len(fields) > 8 else 0.0
    except (OSError, ValueError):
        return 0.0


def run_case(case: Case, repeat: int, warmup: int, min_time: float = 0.0) -> dict:
    fns = {"ours": case.ours, **case.peers}
    for _ in range(warmup):
        for f in fns.values():
            f()
    samples = {k: [] for k in fns}
    stolen = {k: 0.0 for k in fns}
    system = {k: 0.0 for k in fns}  # kernel time of this process: page faults, mostly
    names = list(fns)
    i = 0
    start = time.perf_counter()
    while i < repeat or time.perf_counter() - start < min_time:
        # Alternate, rotating who goes first, so drift (thermal, other load) hits every side alike.
        for k in names[i % len(names):] + names[: i % len(names)]:
            s0, k0 = steal_seconds(), os.times().system
            t0 = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - t0)
            stolen[k] += steal_seconds() - s0
            system[k] += os.times().system - k0
        i += 1
    out = {"name": case.name, "info": case.info, "results": {}}
    for k, xs in samples.items():
        q1, med, q3 = _quartiles(xs)
        r = {"median_s": med, "iqr_s": q3 - q1, "q1_s": q1, "q3_s": q3, "n": len(xs),
             # means per call, CPU seconds (all CPUs, in clock ticks: 10 ms)
             "steal_s": stolen[k] / len(xs), "system_s": system[k] / len(xs)}
        if case.bytes:
            r["GB/s"] = case.bytes / med / 1e9
        if case.flops:
            r["GFLOP/s"] = case.flops / med / 1e9
        out["results"][k] = r
    peers = [p for p in (case.best_of or case.peers) if p in samples]
    if peers:
        best = min(peers, key=lambda p: out["results"][p]["median_s"])
        out["best_peer"] = best
        out["ratio"] = out["results"][best]["median_s"] / out["results"]["ours"]["median_s"]
        out["ratios"] = {p: out["results"][p]["median_s"] / out["results"]["ours"]["median_s"] for p in case.peers}
    return out


def metadata(threads: int) -> dict:
    import numpy

    import cellkern
    from cellkern import _C

    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "threads": threads,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "cellkern": cellkern.__version__,
        "cellkern_cpu_isa": _C.cpu_isa(),
        "git": _git_rev(),
    }
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:
        pass
    return meta


def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_rev():
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                       stderr=subprocess.DEVNULL, text=True).strip()
    except Exception:  # noqa: BLE001 - not a checkout
        return ""


def set_threads(n: int) -> None:
    import cellkern

    cellkern.set_num_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def fmt_time(s):
    return f"{s * 1e3:8.2f} ms" if s >= 1e-3 else f"{s * 1e6:8.1f} us"


def _cpu_lost(r: dict) -> str:
    """The CPU time a side spent in the kernel and lost to the hypervisor, where there was any."""
    parts = [f"{label} {r[key] * 1e3:.0f} ms" for key, label in (("system_s", "kernel"), ("steal_s", "VM steal"))
             if r.get(key, 0) > 0]
    return f"   ({', '.join(parts)} per call)" if parts else ""


def print_table(title: str, results: list[dict], threads: int) -> None:
    print(f"\n== {title} ({threads} threads)")
    for r in results:
        ours = r["results"]["ours"]
        extra = ""
        if "GB/s" in ours:
            extra += f"  {ours['GB/s']:6.1f} GB/s ({ours['GB/s'] * 1e9 / MEMORY_BW.get(threads, MEMORY_BW[2]):4.0%} of bw)"
        if "GFLOP/s" in ours:
            extra += f"  {ours['GFLOP/s']:6.1f} GFLOP/s ({ours['GFLOP/s'] * 1e9 / (peak_flops_per_core() * threads):4.0%} of peak)"
        print(f"{r['name']}")
        print(f"    ours          {fmt_time(ours['median_s'])} ± {fmt_time(ours['iqr_s']).strip()} IQR{extra}"
              f"{_cpu_lost(ours)}")
        for p, v in r["results"].items():
            if p == "ours":
                continue
            print(f"    {p:13s} {fmt_time(v['median_s'])} ± {fmt_time(v['iqr_s']).strip()} IQR   "
                  f"peer/ours = {r['ratios'][p]:.2f}x{_cpu_lost(v)}")
        if "ratio" in r:
            print(f"    => {r['ratio']:.2f}x vs best peer ({r['best_peer']})")


def check_plot(plot_requested: bool) -> None:
    """--plot needs matplotlib: say so before the benchmark runs, not after it."""
    if not plot_requested:
        return
    from cellkern._optional import MissingDependency, check

    try:
        check("matplotlib", purpose="--plot", extra="bench")
    except MissingDependency as e:
        raise SystemExit(f"{Path(sys.argv[0]).name}: {e}") from None


def plot(payloads: list[dict], path: Path) -> None:
    """Per allocator: median times with quartile whiskers (log scale), and the speed-up over each peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(payloads[0]["cases"])
    every = sorted({k for pl in payloads for c in pl["cases"] for k in c["results"]}, key=lambda k: (k != "ours", k))
    color = {k: f"C{i}" for i, k in enumerate(every)}
    fig, axes = plt.subplots(len(payloads), 2, figsize=(13, 1.2 + 0.55 * n * len(payloads)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    for row, pl in zip(axes, payloads):
        cases = pl["cases"]
        names = [c["name"] for c in cases]
        sides = sorted({k for c in cases for k in c["results"]}, key=lambda k: (k != "ours", k))
        h = 0.8 / len(sides)
        for j, side in enumerate(sides):
            idx = [i for i, c in enumerate(cases) if side in c["results"]]
            r = [cases[i]["results"][side] for i in idx]
            med = [x["median_s"] * 1e3 for x in r]
            err = [[(x["median_s"] - x.get("q1_s", x["median_s"])) * 1e3 for x in r],
                   [(x.get("q3_s", x["median_s"]) - x["median_s"]) * 1e3 for x in r]]
            row[0].barh([i + j * h for i in idx], med, h, xerr=err, label=side, capsize=2, color=color[side])
        row[0].set_xscale("log")
        row[0].set_yticks([i + 0.4 - h / 2 for i in range(n)])
        row[0].set_yticklabels(names, fontsize=8)
        row[0].invert_yaxis()
        row[0].set_xlabel("median time, ms (log; whiskers: quartiles)")
        row[0].legend(fontsize=7)
        alloc = "THP_MEM_ALLOC_ENABLE=1" if pl["meta"]["THP_MEM_ALLOC_ENABLE"] else "default allocator"
        row[0].set_title(f"{pl['benchmark']}: {pl['meta']['threads']} threads, {alloc}", fontsize=9)
        peers = sorted({p for c in cases for p in c.get("ratios", {})})
        hp = 0.8 / max(1, len(peers))
        for j, p in enumerate(peers):
            idx = [i for i, c in enumerate(cases) if p in c.get("ratios", {})]
            row[1].barh([i + j * hp for i in idx], [cases[i]["ratios"][p] for i in idx], hp, label=p, color=color[p])
        row[1].axvline(1.0, color="k", lw=0.8)
        row[1].set_xscale("log")
        row[1].set_yticks([i + 0.4 - hp / 2 for i in range(n)])
        row[1].set_yticklabels([""] * n)
        row[1].invert_yaxis()
        row[1].set_xlabel("speed-up: peer time / our time (log)")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main(benchmark: str, make_cases: Callable[[argparse.Namespace], list[Case]],
         add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Entry point of every bench_<op>.py. Without --child, runs itself twice (THP_MEM_ALLOC_ENABLE=1, then the
    default allocator: torch reads the variable at start-up), then prints, saves and optionally plots both."""
    ap = argparse.ArgumentParser(description=f"cellkern benchmark: {benchmark}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small shapes, few repeats (smoke test)")
    ap.add_argument("--alloc", choices=["both", "thp", "default"], default="both")
    ap.add_argument("--plot", action="store_true", help="draw a matplotlib chart next to the JSON")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<name>.json)")
    ap.add_argument("--child", choices=["thp", "default"], help=argparse.SUPPRESS)
    if add_args:
        add_args(ap)
    args = ap.parse_args()
    check_plot(args.plot and not args.child)

    if args.child:
        set_threads(args.threads)
        cases = make_cases(args)
        results = []
        try:
            from tqdm import tqdm
            it = tqdm(cases, desc=f"{benchmark} ({args.child})", file=sys.stderr, leave=False)
        except ImportError:
            it = cases
        for c in it:
            results.append(run_case(c, args.repeat if not args.quick else 3, args.warmup if not args.quick else 1))
        payload = {"benchmark": benchmark, "meta": metadata(args.threads), "cases": results}
        print(json.dumps(payload))
        return

    payloads = []
    for alloc in (["thp", "default"] if args.alloc == "both" else [args.alloc]):
        env = dict(os.environ)
        if alloc == "thp":
            env["THP_MEM_ALLOC_ENABLE"] = "1"
        else:
            env.pop("THP_MEM_ALLOC_ENABLE", None)
        argv = [a for a in sys.argv[1:] if a not in ("--plot",)]
        proc = subprocess.run([sys.executable, sys.argv[0], *argv, "--child", alloc], env=env,
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(proc.returncode)
        payload = json.loads(proc.stdout.strip().splitlines()[-1])
        payloads.append(payload)
        label = "THP_MEM_ALLOC_ENABLE=1 (headline)" if alloc == "thp" else "default allocator"
        print_table(f"{benchmark}, {label}", payload["cases"], args.threads)
    meta = payloads[0]["meta"]
    print(f"\nmachine: {meta['cpu']} ({meta['cores']} cores), torch {meta.get('torch', '-')}, "
          f"cellkern {meta['cellkern']} ({meta['cellkern_cpu_isa']}), git {meta['git']}")
    out = args.out or RESULTS / f"{benchmark}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payloads, indent=1))
    print(f"json: {out}")
    if args.plot:
        plot(payloads, out.with_suffix(".png"))
