"""Star-convex polygons: cellkern vs StarDist (star_dist 2D/3D, polygon NMS, polygons_to_label, matching) on
synthetic nuclei, in one process, alternating after warm-up (benchmarks/common.py)."""
from __future__ import annotations

import os
import sys

# StarDist's OpenMP reads the thread count when its runtime starts: set it before anything loads libgomp
if "--threads" in sys.argv:
    os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")

import functools  # noqa: E402

import common  # noqa: E402
import numpy as np  # noqa: E402

import cellkern.star as ck  # noqa: E402
from cellkern.data import synthetic_nuclei  # noqa: E402
from cellkern.reference import edt_prob_ref  # noqa: E402

SIZES_2D = [(1024, 500), (2048, 2000), (4096, 8000)]
QUICK_2D = [(256, 40)]
SHAPE_3D, N_3D = (64, 256, 256), 250
QUICK_3D = ((16, 64, 64), 12)


def _stardist():
    try:
        from stardist.geometry import polygons_to_label, star_dist, star_dist3D
        from stardist.matching import matching
        from stardist.nms import non_maximum_suppression
        from stardist.rays3d import Rays_GoldenSpiral
    except ImportError:
        print("stardist is not installed: cellkern only (pip install stardist)", file=sys.stderr)
        return None
    return dict(star_dist=star_dist, star_dist3D=star_dist3D, polygons_to_label=polygons_to_label,
                matching=matching, nms=non_maximum_suppression, Rays=Rays_GoldenSpiral)


@functools.lru_cache(maxsize=None)
def _data(size, n):
    _, lbl = synthetic_nuclei((size, size), n, seed=1)
    return lbl, edt_prob_ref(lbl)


def _cases(args):
    sd = _stardist()
    wanted = set(args.ops.split(",")) if args.ops else {"star_dist", "star_dist3d", "nms", "p2l", "matching"}
    cases = []
    sizes = QUICK_2D if args.quick else [s for s in SIZES_2D if s[0] <= args.max_size]
    for size, n in sizes:
        lbl, prob = _data(size, n)
        tag = f"{size}^2/{n} objects, 32 rays"
        if "star_dist" in wanted:
            for g in (1, 2):
                # bind the loop's arrays now (default arguments): the cases run after the loop
                peers = {"stardist": lambda g=g, lbl=lbl: sd["star_dist"](lbl, 32, grid=(g, g))} if sd else {}
                cases.append(common.Case(f"star_dist {tag}, grid {g}",
                                         ours=lambda g=g, lbl=lbl: ck.star_dist(lbl, 32, (g, g)),
                                         peers=peers, info={"op": "star_dist", "size": size, "grid": g}))
        dist = ck.star_dist(lbl, 32)
        for g in (1, 2):
            d, p = (dist, prob) if g == 1 else (ck.star_dist(lbl, 32, (2, 2)), np.ascontiguousarray(prob[::2, ::2]))
            ours = ck.non_maximum_suppression(d, p, grid=(g, g))
            info = {"op": "nms", "size": size, "grid": g, "candidates": ck.last_nms_stats()["candidates"],
                    "kept_ours": len(ours[0]), "pair_paths": ck.last_nms_stats()}
            if "nms" in wanted:
                peers = {}
                if sd:
                    theirs = sd["nms"](d, p, grid=(g, g), nms_thresh=0.4, prob_thresh=0.5)
                    a = ck.polygons_to_label(ours[2], ours[0], ours[1], lbl.shape)
                    b = sd["polygons_to_label"](theirs[2], theirs[0], lbl.shape, prob=theirs[1])
                    info.update(kept_stardist=len(theirs[0]), f1_vs_stardist=ck.matching(b, a).f1,
                                f1_vs_truth=ck.matching(lbl, a).f1)
                    peers = {"stardist": lambda d=d, p=p, g=g: sd["nms"](d, p, grid=(g, g), nms_thresh=0.4,
                                                                         prob_thresh=0.5)}
                cases.append(common.Case(f"nms {tag}, grid {g} ({info['candidates']} candidates)",
                                         ours=lambda d=d, p=p, g=g: ck.non_maximum_suppression(d, p, grid=(g, g)),
                                         peers=peers, info=info))
            if g == 1:
                points, probs, dists = ours
        pred = ck.polygons_to_label(dists, points, probs, lbl.shape)
        if "p2l" in wanted:
            peers = ({"stardist": lambda dists=dists, points=points, probs=probs, shape=lbl.shape:
                      sd["polygons_to_label"](dists, points, shape, prob=probs)} if sd else {})
            info = {"op": "polygons_to_label", "size": size, "polygons": len(points)}
            if sd:
                info["identical_to_stardist"] = bool(np.array_equal(pred, peers["stardist"]()))
            cases.append(common.Case(f"polygons_to_label {size}^2, {len(points)} polygons",
                                     ours=lambda dists=dists, points=points, probs=probs, shape=lbl.shape:
                                     ck.polygons_to_label(dists, points, probs, shape),
                                     peers=peers, info=info))
        if "matching" in wanted:
            info = {"op": "matching", "size": size, "f1": ck.matching(lbl, pred).f1}
            peers = {"stardist": lambda lbl=lbl, pred=pred: sd["matching"](lbl, pred, thresh=0.5)} if sd else {}
            cases.append(common.Case(f"matching {size}^2, {n} objects, IoU 0.5",
                                     ours=lambda lbl=lbl, pred=pred: ck.matching(lbl, pred), peers=peers, info=info))
            ts = (0.1, 0.3, 0.5, 0.7, 0.9)
            peers = {"stardist": lambda lbl=lbl, pred=pred: sd["matching"](lbl, pred, thresh=ts)} if sd else {}
            cases.append(common.Case(f"matching {size}^2, {n} objects, 5 thresholds",
                                     ours=lambda lbl=lbl, pred=pred: ck.matching(lbl, pred, thresh=ts), peers=peers,
                                     info=dict(info, thresholds=ts)))
    if "star_dist3d" in wanted:
        shape, n = QUICK_3D if args.quick else (SHAPE_3D, N_3D)
        _, lbl3 = synthetic_nuclei(shape, n, seed=1)
        rays = sd["Rays"](96) if sd else ck.rays_golden_spiral(96)
        for g in ((1, 1, 1), (1, 2, 2)):
            peers = {"stardist": lambda g=g: sd["star_dist3D"](lbl3, rays, grid=g)} if sd else {}
            info = {"op": "star_dist3d", "shape": shape, "grid": g}
            if sd:
                info["identical_to_stardist"] = bool(np.array_equal(ck.star_dist3d(lbl3, rays, g), peers["stardist"]()))
            cases.append(common.Case(f"star_dist3d {'x'.join(map(str, shape))}/{n} objects, 96 rays, grid {g}",
                                     ours=lambda g=g: ck.star_dist3d(lbl3, rays, g), peers=peers, info=info))
    return cases


def _args(ap):
    ap.add_argument("--ops", default="", help="comma list of star_dist,star_dist3d,nms,p2l,matching (default all)")
    ap.add_argument("--max-size", type=int, default=4096, help="largest 2D image side to run")
    # StarDist's NMS takes seconds to a minute per call on the large images: fewer repeats by default
    ap.set_defaults(repeat=5, warmup=1)


if __name__ == "__main__":
    common.main("star", _cases, _args)
