"""Tiled U-Net inference: cellkern.predict.predict_tiled vs one whole-image forward pass (torch reference net and
cellkern) and MONAI's sliding_window_inference, on large random images: time, peak memory, error.

Every (case, method) runs in its own child process, so that the peak RSS is that method's alone: the child builds
the model (torch.manual_seed(0), so every child has the same weights) and the image (numpy seed 1), takes
ru_maxrss as its baseline, then runs the method --warmup + --repeat times; peak RSS = ru_maxrss after - baseline
(the input image and the model are in the baseline; the output and all working memory are not). The child saves its
last output; the parent compares every output with the whole-image torch output (max |diff|) and checks that the
tiled output equals cellkern's whole-image output bit for bit.

Sides: "cellkern tiled" is ours; "torch whole" (cellkern.reference.ReferenceUNet with the same state_dict, NCHW,
torch.no_grad), "cellkern whole" (predict_whole), "monai gaussian" / "monai constant" (sliding_window_inference
with the reference net, roi = cellkern's default tile shape, overlap --monai-overlap; only if monai imports) are
the peers. Ratios are peer time / our time. THP_MEM_ALLOC_ENABLE is taken from the environment as it is (run the
script twice to compare allocators) and reported.

    python benchmarks/bench_predict.py                       # all 2D cases: base 16/32 on 2048^2 and 4096^2
    python benchmarks/bench_predict.py --size 512 --repeat 1 # quick
    python benchmarks/bench_predict.py --3d                  # also the 3D case (64x512x512, base 16)
    python benchmarks/bench_predict.py --cases unet2d-b16 --plot
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

METHODS = ("torch whole", "cellkern whole", "cellkern tiled", "monai gaussian", "monai constant")
OURS = "cellkern tiled"
REFERENCE = "torch whole"
BASES_2D = (16, 32)
SHAPE_3D = (64, 512, 512)
BASE_3D = 16


def _unet_args(ndim, base):
    return dict(ndim=ndim, in_channels=1, out_channels=1, depth=3, base_channels=base)


# ----------------------------------------------------------------------------------------------------- child side

def _maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def _worker(args):
    import numpy as np
    import torch

    import cellkern
    from cellkern.nn import UNet
    from cellkern.predict import plan_tiles, predict_tiled, predict_whole
    from cellkern.reference import ReferenceUNet

    spec = json.loads(args.worker_spec)
    method = args.worker_method
    common.set_threads(args.threads)
    unet_args = _unet_args(spec["ndim"], spec["base"])
    shape = tuple(spec["shape"])
    torch.manual_seed(0)
    model = UNet(**unet_args).eval()
    image = np.random.default_rng(1).standard_normal((1,) + shape, dtype=np.float32)
    result = {"method": method, "torch_threads": torch.get_num_threads(),
              "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", "")}

    if method in ("cellkern whole", "cellkern tiled"):
        if method == "cellkern whole":
            def fn():
                return predict_whole(model, image)
        else:
            plan = plan_tiles(model, shape, batch_size=args.batch_size)
            result.update(tile_shape=list(plan.tile_shape), n_tiles=len(plan), core=list(plan.core),
                          strategy=args.strategy)

            if args.strategy != "tiles":  # the streamer's own plan: column tiles and rows per step
                from cellkern.predict.stream import stream_plan
                cores, step = stream_plan(model, shape)
                result.update(stream_columns=cores[1:], rows_per_step=step)

            def fn():
                return predict_tiled(model, image, batch_size=args.batch_size, strategy=args.strategy)
    else:
        ref = ReferenceUNet(**unet_args)
        ref.load_state_dict(model.state_dict(), strict=True)
        ref.eval()
        if method == "torch whole":
            factor = tuple(model.downsampling_factor)

            def fn():
                pad = [(0, 0)] + [(0, -(-s // f) * f - s) for s, f in zip(shape, factor)]
                x = np.pad(image, pad, mode="reflect") if any(p for _, p in pad) else image
                with torch.no_grad():
                    y = ref(torch.from_numpy(np.ascontiguousarray(x))[None])[0]
                return np.ascontiguousarray(y.numpy()[(slice(None),) + tuple(slice(0, s) for s in shape)])
        else:
            try:
                import monai
                from monai.inferers import sliding_window_inference
            except ImportError as e:
                print(json.dumps({"method": method, "skipped": f"monai does not import: {e}"}))
                return
            roi = tuple(plan_tiles(model, shape, batch_size=args.batch_size).tile_shape)
            mode = method.split()[1]
            result.update(monai=monai.__version__, roi_size=list(roi), overlap=args.monai_overlap, mode=mode,
                          sw_batch_size=args.batch_size)
            x = torch.from_numpy(image)[None]

            def fn():
                with torch.no_grad():
                    y = sliding_window_inference(x, roi, args.batch_size, ref, overlap=args.monai_overlap, mode=mode)
                return y[0].numpy()

    gc.collect()
    base = _maxrss_bytes()
    times = []
    y = None
    for i in range(args.warmup + args.repeat):
        y = None
        t0 = time.perf_counter()
        y = fn()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
    peak = _maxrss_bytes() - base
    y = np.asarray(y, dtype=np.float32)
    out_path = Path(args.worker_out) / (method.replace(" ", "_") + ".npy")
    np.save(out_path, y)
    q1, med, q3 = common._quartiles(times)
    result.update(median_s=med, iqr_s=q3 - q1, q1_s=q1, q3_s=q3, n=len(times), times_s=times,
                  peak_rss_gb=peak / 1e9, baseline_rss_gb=base / 1e9, output=str(out_path),
                  output_shape=list(y.shape), cellkern=cellkern.__version__)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------------- parent side

def _specs(args):
    """(name, spec) of every case for these size flags, 2D then 3D."""
    specs = []
    for size in args.size:
        for base in BASES_2D:
            specs.append((f"unet2d-b{base}-{size}", {"ndim": 2, "base": base, "shape": [size, size]}))
    specs.append((f"unet3d-b{BASE_3D}-{'x'.join(map(str, args.shape3d))}",
                  {"ndim": 3, "base": BASE_3D, "shape": list(args.shape3d)}))
    return specs


def _selected(name, tokens, want_3d):
    if tokens is None:
        return name.startswith("unet2d") or (want_3d and name.startswith("unet3d"))
    return any(name.startswith(t) for t in tokens) or (want_3d and name.startswith("unet3d"))


def _ints(text):
    return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]


def _run_child(name, spec, method, args, outdir):
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker-spec", json.dumps(spec),
            "--worker-method", method, "--worker-out", str(outdir), "--threads", str(args.threads),
            "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
            "--monai-overlap", str(args.monai_overlap), "--strategy", args.strategy]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = f"child exited with {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode < 0 else "")
        print(f"  {name}: {method}: FAILED, {why}", file=sys.stderr)
        return {"method": method, "error": why}
    r = json.loads(lines[-1])
    r["child_wall_s"] = wall
    if "skipped" in r:
        print(f"  {name}: {method}: skipped ({r['skipped']})", file=sys.stderr)
    else:
        print(f"  {name}: {method}: {common.fmt_time(r['median_s']).strip()} ± "
              f"{common.fmt_time(r['iqr_s']).strip()} IQR, peak RSS +{r['peak_rss_gb']:.2f} GB", file=sys.stderr)
    return r


def _case(name, spec, args, methods):
    import numpy as np

    print(f"{name}: {spec}", file=sys.stderr)
    info = {"net": "cellkern.nn.UNet vs cellkern.reference.ReferenceUNet (same state_dict)",
            **_unet_args(spec["ndim"], spec["base"]), "input": [1] + spec["shape"], "batch_size": args.batch_size,
            "image": "numpy default_rng(1).standard_normal float32", "weights": "torch.manual_seed(0)"}
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as outdir:
        raw = {m: _run_child(name, spec, m, args, outdir) for m in methods}
        ok = {m: r for m, r in raw.items() if "median_s" in r}
        outs = {m: np.load(r["output"]) for m, r in ok.items()}
        ref = outs.get(REFERENCE)
        for m, r in ok.items():
            r.pop("output", None)
            if ref is not None and outs[m].shape == ref.shape:
                r["max_abs_err"] = float(np.abs(outs[m].astype(np.float64) - ref).max())
            if ref is not None:
                r["max_abs_ref"] = float(np.abs(ref).max())
        if OURS in outs and "cellkern whole" in outs:
            info["tiled_equals_whole"] = bool(np.array_equal(outs[OURS], outs["cellkern whole"]))
        if OURS in outs and ref is not None:
            info["tiled_equals_torch"] = bool(np.array_equal(outs[OURS], ref))
        del outs, ref
    for key in ("tile_shape", "n_tiles", "core", "strategy", "stream_columns", "rows_per_step"):
        if OURS in ok and key in ok[OURS]:
            info[key] = ok[OURS][key]
    res = {"name": name, "info": info, "results": ok,
           "failed": {m: r.get("error") or r.get("skipped") for m, r in raw.items() if m not in ok}}
    if OURS in ok:
        ours = ok[OURS]["median_s"]
        res["ratios"] = {m: r["median_s"] / ours for m, r in ok.items() if m != OURS}
        res["mem_ratios"] = {m: r["peak_rss_gb"] / max(ok[OURS]["peak_rss_gb"], 1e-9) for m, r in ok.items()
                             if m != OURS}
        if REFERENCE in ok:
            res["ratio"] = res["ratios"][REFERENCE]  # torch_time / tiled_time, the headline
            res["best_peer"] = REFERENCE
    return res


def _print(payload):
    meta = payload["meta"]
    print(f"\n== predict: {meta['threads']} threads (torch.get_num_threads() = {meta['torch_num_threads']}), "
          f"THP_MEM_ALLOC_ENABLE={meta['THP_MEM_ALLOC_ENABLE'] or '(unset)'}; repeat {meta['repeat']}, "
          f"warm-up {meta['warmup']}; ratios: peer time / ours ({OURS})")
    for c in payload["cases"]:
        info = c["info"]
        extra = f"  tiles {info['n_tiles']} x {info['tile_shape']}" if "n_tiles" in info else ""
        if info.get("rows_per_step"):
            extra = f"  streamed: {info['rows_per_step']} rows per step, column cores {info['stream_columns']}"
        print(f"{c['name']}  input {info['input']}{extra}")
        print(f"    {'side':15s} {'median':>11s} {'IQR':>11s} {'peak RSS':>9s} {'max|err|':>9s} {'peer/ours':>9s}")
        for m, r in c["results"].items():
            err = f"{r['max_abs_err']:9.2e}" if "max_abs_err" in r else f"{'-':>9s}"
            ratio = f"{c['ratios'][m]:8.2f}x" if m in c.get("ratios", {}) else f"{'(ours)' if m == OURS else '-':>9s}"
            print(f"    {m:15s} {common.fmt_time(r['median_s'])}  {common.fmt_time(r['iqr_s'])} "
                  f"{r['peak_rss_gb']:6.2f} GB {err} {ratio}")
        for m, why in c["failed"].items():
            print(f"    {m:15s} {why}")
        if "ratio" in c:
            print(f"    => torch whole / cellkern tiled = {c['ratio']:.2f}x", end="")
        if "tiled_equals_whole" in info:
            print(f"; tiled == cellkern whole bit-exactly: {info['tiled_equals_whole']}", end="")
        print()
    print(f"\nmachine: {meta['cpu']} ({meta['cores']} cores), torch {meta.get('torch', '-')}, "
          f"monai {meta.get('monai', '-')}, numpy {meta['numpy']}, cellkern {meta['cellkern']} "
          f"({meta['cellkern_cpu_isa']}), git {meta['git']}")


def _plot(payload, path):
    """Median time with quartile whiskers (log), speed-up of the tiled run over each peer, peak RSS per side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = payload["cases"]
    n = len(cases)
    sides = [m for m in METHODS if any(m in c["results"] for c in cases)]
    peers = [m for m in sides if m != OURS]
    color = {m: f"C{i}" for i, m in enumerate(METHODS)}
    fig, ax = plt.subplots(1, 3, figsize=(16, 1.5 + 0.7 * n), squeeze=False,
                           gridspec_kw={"width_ratios": [3, 2, 2]})
    ax = ax[0]
    names = [c["name"] for c in cases]
    h = 0.8 / max(1, len(sides))
    for j, m in enumerate(sides):
        idx = [i for i, c in enumerate(cases) if m in c["results"]]
        r = [cases[i]["results"][m] for i in idx]
        med = [x["median_s"] for x in r]
        err = [[x["median_s"] - x["q1_s"] for x in r], [x["q3_s"] - x["median_s"] for x in r]]
        ax[0].barh([i + j * h for i in idx], med, h, xerr=err, capsize=2, label=m, color=color[m])
        ax[2].barh([i + j * h for i in idx], [x["peak_rss_gb"] for x in r], h, label=m, color=color[m])
    hp = 0.8 / max(1, len(peers))
    for j, m in enumerate(peers):
        idx = [i for i, c in enumerate(cases) if m in c.get("ratios", {})]
        ax[1].barh([i + j * hp for i in idx], [cases[i]["ratios"][m] for i in idx], hp, label=m, color=color[m])
    ax[1].axvline(1.0, color="k", lw=0.8)
    for a, hh in zip(ax, (h, hp, h)):
        a.set_yticks([i + 0.4 - hh / 2 for i in range(n)])
        a.set_yticklabels(names if a is ax[0] else [""] * n, fontsize=8)
        a.invert_yaxis()
        a.legend(fontsize=7)
    ax[0].set_xscale("log")
    ax[0].set_xlabel("median time, s (log; whiskers: quartiles)")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("speed-up: peer time / tiled time (log)")
    ax[2].set_xlabel("peak RSS above baseline, GB")
    meta = payload["meta"]
    ax[0].set_title(f"predict: {meta['threads']} threads, THP_MEM_ALLOC_ENABLE="
                    f"{meta['THP_MEM_ALLOC_ENABLE'] or 'unset'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main():
    ap = argparse.ArgumentParser(description="cellkern benchmark: tiled U-Net inference (predict_tiled)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones (in each child)")
    ap.add_argument("--size", type=_ints, default=[2048, 4096],
                    help="2D image side(s), comma list (default 2048,4096); cases are unet2d-b{16,32}-<size>")
    ap.add_argument("--3d", dest="three_d", action="store_true", help="also run the 3D case (unet3d-...)")
    ap.add_argument("--shape3d", type=_ints, default=list(SHAPE_3D), help="3D image shape, e.g. 64x512x512")
    ap.add_argument("--cases", type=lambda s: [t.strip() for t in s.split(",") if t.strip()], default=None,
                    help="comma list of case names or prefixes (e.g. unet2d-b16, unet2d-b32-4096, unet3d); "
                         "default: every 2D case")
    ap.add_argument("--methods", type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                    default=list(METHODS), help=f"comma list out of {', '.join(METHODS)}")
    ap.add_argument("--strategy", default="auto", choices=("auto", "stream", "tiles"),
                    help="predict_tiled strategy for 'cellkern tiled' (auto: streamed for a U-Net)")
    ap.add_argument("--batch-size", type=int, default=1, help="predict_tiled batch_size and MONAI sw_batch_size")
    ap.add_argument("--monai-overlap", type=float, default=0.25)
    ap.add_argument("--json", type=Path, default=Path("bench_predict.json"))
    ap.add_argument("--plot", action="store_true", help="draw a matplotlib chart next to the JSON (.png)")
    ap.add_argument("--worker-spec", help=argparse.SUPPRESS)
    ap.add_argument("--worker-method", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_method:
        _worker(args)
        return
    common.check_plot(args.plot)

    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; methods: {', '.join(METHODS)}")
    if len(args.shape3d) != 3:
        ap.error("--shape3d: expected three sizes")
    specs = [(n, s) for n, s in _specs(args) if _selected(n, args.cases, args.three_d)]
    if not specs:
        ap.error(f"--cases selects none of {[n for n, _ in _specs(args)]}")
    methods = [m for m in METHODS if m in args.methods]  # the reference first, when it runs

    import torch

    common.set_threads(args.threads)
    meta = common.metadata(args.threads)
    meta.update(torch_num_threads=torch.get_num_threads(), repeat=args.repeat, warmup=args.warmup,
                peak_rss="ru_maxrss after the runs minus ru_maxrss after imports, model and image creation, "
                         "one child process per case and method")
    try:
        import monai

        meta["monai"] = monai.__version__
    except ImportError:
        pass
    cases = [_case(n, s, args, methods) for n, s in specs]
    payload = {"benchmark": "predict", "meta": meta, "cases": cases}
    _print(payload)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1))
    print(f"json: {args.json}")
    if args.plot:
        _plot(payload, args.json.with_suffix(".png"))


if __name__ == "__main__":
    main()
