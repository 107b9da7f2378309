"""Big-image instances: StarDist2D.predict_instances_big (in this process, and on a dask LocalCluster of 2 worker
processes) vs whole-image predict_instances on a synthetic nuclei image: time, peak memory, labels equal.

Each method runs in its own child process (peak RSS = ru_maxrss after - before, the image and the model in the
baseline; with dask the workers' memory is not counted, they are separate processes). The model is a small
StarDist2D (n_rays 32, grid 2, depth 2, base 16) with seeded random weights whose heads are scaled to give round
polygons of radius ~20 px and spread probabilities (no weights can be downloaded here; the exactness does not care
what the weights are); the threshold keeps the top 10% of cells as candidates. The parent checks that every big
run's labels equal the whole image's, id for id.

    python benchmarks/bench_predict_instances.py                   # 4096^2, blocks of 1024
    python benchmarks/bench_predict_instances.py --size 2048 --block 512 --json out.json
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

import numpy as np

METHODS = ("whole", "big", "big dask")


def _setup(size):
    import torch

    from cellkern.data import synthetic_nuclei
    from cellkern.models import StarDist2D

    torch.manual_seed(0)
    m = StarDist2D(n_rays=32, grid=(2, 2), unet_depth=2, unet_base_channels=16, net_conv_after_unet=32).eval()
    with torch.no_grad():
        m.dist.bias.fill_(20.0)
        m.dist.weight.mul_(50)
        m.prob.weight.mul_(100)
    image, _ = synthetic_nuclei((size, size), size * size // 4000, seed=1)
    return m, image


def child(args):
    import torch

    import cellkern

    torch.set_num_threads(args.threads)
    cellkern.set_num_threads(args.threads)
    m, image = _setup(args.size)
    probe = m.predict(image[:512, :512])[0]
    thr = float(np.percentile(probe, 90))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if args.child == "whole":
        labels, _ = m.predict_instances(image, prob_thresh=thr)
        rounds = None
    elif args.child == "big":
        labels, info = m.predict_instances_big(image, args.block, prob_thresh=thr, threads=args.threads)
        rounds = info["stats"]["nms_rounds"]
    else:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                Client(cl) as client:
            t = time.perf_counter()  # the cluster's start-up is not the method's time
            labels, info = m.predict_instances_big(image, args.block, prob_thresh=thr, scheduler=client, threads=1)
        rounds = info["stats"]["nms_rounds"]
    seconds = time.perf_counter() - t
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20
    np.save(args.save, labels)
    print(json.dumps({"seconds": seconds, "peak_gb": peak, "objects": int(labels.max()), "nms_rounds": rounds}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--json")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            save = os.path.join(tmp, method.replace(" ", "_") + ".npy")
            out = subprocess.run([sys.executable, __file__, "--child", method, "--save", save, "--size",
                                  str(args.size), "--block", str(args.block), "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True).stdout
            rows[method] = json.loads(out.strip().splitlines()[-1])
            rows[method]["labels"] = save
            print(f"{method:10s} {rows[method]['seconds']:8.2f} s  peak {rows[method]['peak_gb']:.2f} GB  "
                  f"{rows[method]['objects']} objects  nms rounds {rows[method]['nms_rounds']}", flush=True)
        if "whole" in rows:
            whole = np.load(rows["whole"]["labels"])
            for method in rows:
                if method != "whole":
                    rows[method]["equal_to_whole"] = bool(np.array_equal(np.load(rows[method]["labels"]), whole))
                    print(f"{method}: labels equal to whole-image predict_instances: {rows[method]['equal_to_whole']}")
    for r in rows.values():
        r.pop("labels")
    meta = {"size": args.size, "block": args.block, "threads": args.threads,
            "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"), "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
