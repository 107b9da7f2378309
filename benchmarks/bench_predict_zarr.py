"""A U-Net over an image larger than the tiled runner's memory: zarr in, zarr out, peak RSS measured.

Writes a random float32 image of --size^2 (default 16384^2, 1 GiB) to a zarr store block by block, then runs
cellkern.predict.predict_tiled over it in a child process (U-Net depth 3, --base channels, torch.manual_seed(0)) that
writes a zarr store whose chunks are the plan's cores. The child reports its time and its peak RSS above the baseline
it takes after building the model and opening the stores (ru_maxrss; the image is never loaded whole, so everything
the run holds is in the number). --check compares a crop of 2x2 cores from the middle, recomputed with
predict_whole on the crop, bit for bit.

    python benchmarks/bench_predict_zarr.py                       # 16384^2, base 16, 2 threads
    python benchmarks/bench_predict_zarr.py --size 4096 --check   # quick
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common


def _maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def _write_image(path, size, chunk):
    import numpy as np
    import zarr

    z = zarr.create_array(str(path), shape=(1, size, size), chunks=(1, chunk, chunk), dtype="float32",
                          overwrite=True)
    for k, y in enumerate(range(0, size, chunk)):
        rng = np.random.default_rng(k)
        z[0, y:y + chunk] = rng.standard_normal((min(chunk, size - y), size), dtype=np.float32)
    return z


def _child(args):
    import numpy as np
    import torch
    import zarr

    import cellkern
    from cellkern.nn import UNet
    from cellkern.predict import plan_tiles, predict_tiled, predict_whole

    torch.set_num_threads(args.threads)
    cellkern.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UNet(ndim=2, in_channels=1, out_channels=1, depth=3, base_channels=args.base).eval()
    image = zarr.open_array(str(args.dir / "in.zarr"), mode="r")
    plan = plan_tiles(model, image.shape[1:], memory_budget=args.budget)
    out = zarr.create_array(str(args.dir / "out.zarr"), shape=image.shape, chunks=(1,) + plan.core,
                            dtype="float32", overwrite=True)
    base = _maxrss_bytes()
    t0 = time.perf_counter()
    predict_tiled(model, image, memory_budget=args.budget, out=out, progress=True)
    seconds = time.perf_counter() - t0
    peak = _maxrss_bytes() - base
    result = {"seconds": seconds, "peak_rss_above_baseline_bytes": peak, "baseline_rss_bytes": base,
              "peak_rss_bytes": _maxrss_bytes(),
              "tiles": len(plan), "core": plan.core, "tile": plan.tile_shape, "halo": plan.halo}
    if args.check:
        # 2x2 cores from the middle, with their halo, aligned as the plan aligns tiles: the whole-image forward on
        # that crop must give the tiled run's values on those cores.
        (ay, ax) = plan.align
        cy, cx = plan.core
        (hy, _), (hx, _) = plan.halo
        y0 = (image.shape[1] // 2 // cy) * cy
        x0 = (image.shape[2] // 2 // cx) * cx
        a = max(0, (y0 - hy) // ay * ay), max(0, (x0 - hx) // ax * ax)
        b = min(image.shape[1], y0 + 2 * cy + hy + ay), min(image.shape[2], x0 + 2 * cx + hx + ax)
        crop = np.asarray(image[:, a[0]:b[0], a[1]:b[1]])
        whole = predict_whole(model, crop)
        got = np.asarray(out[:, y0:y0 + 2 * cy, x0:x0 + 2 * cx])
        want = whole[:, y0 - a[0]:y0 - a[0] + 2 * cy, x0 - a[1]:x0 - a[1] + 2 * cx]
        result["check_bit_equal"] = bool(np.array_equal(got, want))
        result["check_region"] = [y0, x0, 2 * cy, 2 * cx]
    print("RESULT " + json.dumps(result))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--base", type=int, default=16, help="U-Net base channels")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=1024, help="the input store's chunk size")
    ap.add_argument("--budget", type=float, default=None, help="predict_tiled memory_budget (bytes; default its own)")
    ap.add_argument("--check", action="store_true", help="also compare a 2x2-core crop with predict_whole")
    ap.add_argument("--dir", type=Path, default=None, help="where the zarr stores go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=Path("bench_predict_zarr.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ck-zarr-")
        args.dir = Path(tmp.name)
    try:
        t0 = time.perf_counter()
        _write_image(args.dir / "in.zarr", args.size, args.chunk)
        print(f"wrote a {args.size}^2 float32 zarr image in {time.perf_counter() - t0:.1f} s", flush=True)
        cmd = [sys.executable, __file__, "--child", "--size", str(args.size), "--base", str(args.base),
               "--threads", str(args.threads), "--dir", str(args.dir)]
        if args.budget:
            cmd += ["--budget", str(args.budget)]
        if args.check:
            cmd.append("--check")
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        if r.returncode:
            sys.exit(f"child failed with {r.returncode}:\n{r.stdout}")
        result = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[7:])
    finally:
        if tmp is not None:
            tmp.cleanup()
    payload = {"benchmark": "predict_zarr", "size": args.size, "base_channels": args.base,
               "meta": common.metadata(args.threads), "result": result}
    args.json.write_text(json.dumps(payload, indent=1))
    gb = result["peak_rss_above_baseline_bytes"] / 2**30
    print(f"U-Net depth 3 base {args.base}, {args.size}^2 zarr -> zarr, {args.threads} threads: "
          f"{result['seconds']:.1f} s, {result['tiles']} tiles of core {result['core']}, peak RSS above baseline "
          f"{gb:.2f} GiB (process total {result['peak_rss_bytes'] / 2**30:.2f} GiB, of which python, torch and the "
          f"model {result['baseline_rss_bytes'] / 2**30:.2f} GiB)"
          + (f", crop bit-equal to predict_whole: {result['check_bit_equal']}" if args.check else ""))


if __name__ == "__main__":
    main()
