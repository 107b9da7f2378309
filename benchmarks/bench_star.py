"""Star-convex polygons and polyhedra: cellkern vs StarDist (star_dist 2D/3D, polygon and polyhedron NMS,
polygons_to_label, polyhedron_to_label, matching 2D/3D) on synthetic nuclei, in one process, alternating after
warm-up (benchmarks/common.py). The peak memory of the 3D NMS is measured in child processes (--nms3d-memory)."""
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
        from stardist.geometry import polyhedron_to_label
        from stardist.nms import non_maximum_suppression_3d
        from stardist.rays3d import Rays_GoldenSpiral
    except ImportError:
        print("stardist is not installed: cellkern only (pip install stardist)", file=sys.stderr)
        return None
    return dict(star_dist=star_dist, star_dist3D=star_dist3D, polygons_to_label=polygons_to_label,
                matching=matching, nms=non_maximum_suppression, Rays=Rays_GoldenSpiral, nms3d=non_maximum_suppression_3d,
                polyhedron_to_label=polyhedron_to_label)


@functools.lru_cache(maxsize=None)
def _data(size, n):
    _, lbl = synthetic_nuclei((size, size), n, seed=1)
    return lbl, edt_prob_ref(lbl)


def _cases(args):
    sd = _stardist()
    wanted = set(args.ops.split(",")) if args.ops else {"star_dist", "star_dist3d", "nms", "p2l", "matching",
                                                        "nms3d", "p2l3d", "matching3d"}
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
            ours = ck.non_maximum_suppression(d, p, grid=(g, g), nms_thresh=0.4)
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
                                         ours=lambda d=d, p=p, g=g: ck.non_maximum_suppression(d, p, grid=(g, g),
                                                                                            nms_thresh=0.4),
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
    if wanted & {"nms3d", "nms3d_full", "p2l3d", "matching3d"}:
        cases += _cases_3d(args, sd, wanted)
    return cases


@functools.lru_cache(maxsize=None)
def _data3d(shape, n, n_rays, g):
    """Synthetic nuclei, their edt probability on the grid and StarDist's own distances (both sides decode the
    same prediction)."""
    _, lbl = synthetic_nuclei(shape, n, seed=1)
    rays = ck.Rays_GoldenSpiral(n_rays)
    sub = (slice(None, None, g),) * 3
    prob = np.ascontiguousarray(ck.edt_prob(lbl)[sub], np.float32)
    dist = ck.star_dist3d(lbl, rays, (g, g, g))
    return lbl, rays, prob, dist


def _cases_3d(args, sd, wanted):
    cases = []
    shape, n = QUICK_3D if args.quick else (SHAPE_3D, N_3D)
    tag = f"{'x'.join(map(str, shape))}/{n} objects, 96 rays"
    grids = [2] + ([1] if "nms3d_full" in wanted or args.quick else [])
    for g in grids:
        lbl, rays, prob, dist = _data3d(shape, n, 96, g)
        sdrays = sd["Rays"](96) if sd else None
        ours = ck.non_maximum_suppression_3d(dist, prob, rays, grid=(g,) * 3, nms_thresh=0.4, prob_thresh=0.5)
        stats = ck.last_nms3d_stats()
        pred = ck.polyhedron_to_label(ours[2], ours[0], rays, shape, prob=ours[1])
        info = {"op": "nms3d", "shape": shape, "grid": g, "candidates": stats.get("candidates"),
                "kept_ours": len(ours[0]), "stats": stats, "f1_vs_truth": ck.matching(lbl, pred).f1}
        peers = {}
        if sd:
            theirs = sd["nms3d"](dist, prob, sdrays, grid=(g,) * 3, nms_thresh=0.4, prob_thresh=0.5)
            want = sd["polyhedron_to_label"](theirs[2], theirs[0], sdrays, shape, prob=theirs[1], verbose=False)
            info.update(kept_stardist=len(theirs[0]), f1_vs_stardist=ck.matching(want, pred).f1)
            peers = {"stardist": lambda d=dist, p=prob, g=g: sd["nms3d"](d, p, sdrays, grid=(g,) * 3, nms_thresh=0.4,
                                                                           prob_thresh=0.5)}
        if "nms3d" in wanted or (g == 1 and "nms3d_full" in wanted):
            cases.append(common.Case(f"nms3d {tag}, grid {g} ({info['candidates']} candidates)",
                                     ours=lambda d=dist, p=prob, g=g: ck.non_maximum_suppression_3d(
                                         d, p, rays, grid=(g,) * 3, nms_thresh=0.4, prob_thresh=0.5),
                                     peers=peers, info=info))
        if g == 2 and "p2l3d" in wanted:
            pts, probs, dists = ours
            p2l_info = {"op": "polyhedron_to_label", "shape": shape, "polyhedra": len(pts)}
            p2l_peers = {}
            if sd:
                theirs = sd["polyhedron_to_label"](dists, pts, sdrays, shape, prob=probs, verbose=False)
                p2l_info["identical_to_stardist"] = bool(np.array_equal(theirs, pred))
                p2l_info["voxels_differing"] = int(np.count_nonzero(theirs != pred))
                p2l_peers = {"stardist": lambda: sd["polyhedron_to_label"](dists, pts, sdrays, shape, prob=probs,
                                                                           verbose=False)}
            cases.append(common.Case(f"polyhedron_to_label {tag}, {len(pts)} polyhedra",
                                     ours=lambda: ck.polyhedron_to_label(dists, pts, rays, shape, prob=probs),
                                     peers=p2l_peers, info=p2l_info))
        if g == 2 and "matching3d" in wanted:
            m_peers = {"stardist": lambda: sd["matching"](lbl, pred, thresh=0.5)} if sd else {}
            cases.append(common.Case(f"matching 3D {tag}, IoU 0.5", ours=lambda: ck.matching(lbl, pred),
                                     peers=m_peers, info={"op": "matching3d", "shape": shape}))
    return cases


def _nms3d_memory(args):
    """Peak memory of one 3D NMS call, ours and StarDist's: each in a fresh child process that loads the same
    prediction from a file, then reports its resident set before the call and its peak during it (Linux's VmHWM,
    reset after loading): the difference is what the NMS needed above the loaded inputs."""
    import json
    import subprocess
    import tempfile

    shape, n = QUICK_3D if args.quick else (SHAPE_3D, N_3D)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for g in (2, 1):
            _, _, prob, dist = _data3d(shape, n, 96, g)
            path = os.path.join(tmp, f"grid{g}.npz")
            np.savez(path, prob=prob, dist=dist)
            for who in ("cellkern", "stardist"):
                code = "\n".join([
                    "import sys, numpy as np",
                    f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})",
                    "import bench_star as b",
                    f"d = np.load({path!r}); prob, dist = d['prob'], d['dist']",
                    "sd = b._stardist()",
                    "rays = b.ck.Rays_GoldenSpiral(96) if " + repr(who) + " == 'cellkern' else sd['Rays'](96)",
                    # the resident set now, and the high-water mark reset to it (Linux: clear_refs 5)
                    "status = lambda key: int(next(l.split()[1] for l in open('/proc/self/status') "
                    "if l.startswith(key)))",
                    # a small call first: code pages, thread pools and caches are not the call's own memory
                    "nms = b.ck.non_maximum_suppression_3d if " + repr(who) + " == 'cellkern' else sd['nms3d']",
                    f"nms(dist[:12, :12, :12], prob[:12, :12, :12], rays, grid=({g},) * 3, nms_thresh=0.4)",
                    "open('/proc/self/clear_refs', 'w').write('5')",
                    "r0 = status('VmRSS:')",
                    f"nms(dist, prob, rays, grid=({g},) * 3, nms_thresh=0.4, prob_thresh=0.5)",
                    "print(r0, status('VmHWM:'))"])
                res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                before, after = (int(v) for v in res.stdout.split()[-2:])
                out[f"grid{g}_{who}_kib"] = {"before": before, "after": after, "nms_peak_kib": after - before}
            print(f"nms3d grid {g}: peak RSS the call added above the loaded prediction "
                  f"({prob.nbytes + dist.nbytes >> 20} MiB): cellkern "
                  f"{out[f'grid{g}_cellkern_kib']['nms_peak_kib'] / 1024:.1f} MiB, stardist "
                  f"{out[f'grid{g}_stardist_kib']['nms_peak_kib'] / 1024:.1f} MiB", flush=True)
    print(json.dumps(out))


def _args(ap):
    ap.add_argument("--ops", default="", help="comma list of star_dist,star_dist3d,nms,p2l,matching,nms3d,"
                    "nms3d_full (full resolution: StarDist takes minutes),p2l3d,matching3d (default all but "
                    "nms3d_full)")
    ap.add_argument("--nms3d-memory", action="store_true", help="only measure the 3D NMS peak memory, then exit")
    ap.add_argument("--max-size", type=int, default=4096, help="largest 2D image side to run")
    # StarDist's NMS takes seconds to a minute per call on the large images: fewer repeats by default
    ap.set_defaults(repeat=5, warmup=1)


if __name__ == "__main__":
    if "--nms3d-memory" in sys.argv:
        import argparse

        _nms3d_memory(argparse.Namespace(quick="--quick" in sys.argv))
    else:
        common.main("star", _cases, _args)
