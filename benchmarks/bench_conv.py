"""Convolution: cellkern vs torch (NCHW and channels_last; the better one is the headline peer) on the U-Net shape
suite, forward and forward+backward (grad input, weight and bias), GFLOP/s and fraction of the fp32 peak; the
U-Net's 2x2 / stride-2 transposed convolutions (upsampling) and its decoder convolution over [upsampled, skip]
(cellkern reads both parts in place; torch concatenates them first)."""
from __future__ import annotations

import json
import math
import sys

import common
import torch
import torch.nn.functional as F

import cellkern.ops as ck

# (N, C_in, C_out, spatial): 3x3 (3x3x3) convolutions, padding 1, with bias.
SUITE_2D = [(1, 1, 32, (1024, 1024)), (1, 32, 32, (1024, 1024)), (1, 32, 64, (512, 512)), (1, 64, 64, (512, 512)),
            (1, 128, 128, (256, 256)), (8, 32, 32, (256, 256))]
SUITE_3D = [(1, 16, 16, (64, 256, 256))]
QUICK_2D = [(1, 1, 8, (128, 128)), (1, 16, 16, (96, 96))]
QUICK_3D = [(1, 4, 4, (8, 32, 32))]
# Transposed 2x2 / stride 2 (the anchor U-Net's three upsamplings at 1024^2, one of its training batch, 3D):
# (N, C_in, C_out, input spatial).
TRANSPOSE = [(1, 256, 128, (128, 128)), (1, 128, 64, (256, 256)), (1, 64, 32, (512, 512)), (4, 64, 32, (128, 128)),
             (1, 32, 16, (32, 64, 64))]
QUICK_TRANSPOSE = [(1, 16, 8, (48, 48)), (1, 8, 4, (8, 16, 16))]
# The decoder's first 3x3 convolution over [upsampled, skip]: (N, C_up, C_skip, C_out, spatial).
PARTS = [(1, 32, 32, 32, (1024, 1024)), (4, 64, 64, 64, (128, 128))]
QUICK_PARTS = [(1, 8, 8, 8, (64, 64))]


def _tag(n, ci, co, sp):
    return f"{n},{ci}->{co},{'x'.join(map(str, sp))}"


def _cases(args):
    cases = []
    suite = (QUICK_2D + QUICK_3D) if args.quick else (SUITE_2D + SUITE_3D)
    gen = torch.Generator().manual_seed(0)
    for n, ci, co, sp in suite:
        nd = len(sp)
        torch_conv = F.conv2d if nd == 2 else F.conv3d
        ours_conv = ck.conv2d if nd == 2 else ck.conv3d
        cl = torch.channels_last if nd == 2 else torch.channels_last_3d
        x = torch.randn((n, ci) + sp, generator=gen)
        w = torch.randn((co, ci) + (3,) * nd, generator=gen) / math.sqrt(ci * 3 ** nd)
        b = torch.randn(co, generator=gen)
        xcl = x.contiguous(memory_format=cl)
        flops = 2.0 * n * co * ci * 3 ** nd * math.prod(sp)
        tag = _tag(n, ci, co, sp)
        # Forward (inference): each side allocates its output through torch. Ours reads NCHW as given; the
        # channels_last input for torch is prepared outside the timed region (its best case).
        cases.append(common.Case(
            f"forward {tag}",
            ours=lambda x=x, w=w, b=b, f=ours_conv: f(x, w, b, 1, 1),
            peers={"torch NCHW": lambda x=x, w=w, b=b, f=torch_conv: f(x, w, b, 1, 1),
                   "torch CL": lambda x=xcl, w=w, b=b, f=torch_conv: f(x, w, b, 1, 1)},
            flops=flops, info={"kind": "forward", "shape": [n, ci, co, list(sp)]}))
        # Training step: forward, then backward to the input, the weight and the bias.
        g = torch.randn((n, co) + sp, generator=gen)
        gcl = g.contiguous(memory_format=cl)

        cases.append(common.Case(
            f"fwd+bwd {tag}",
            ours=lambda x=x, g=g, w=w, b=b, f=ours_conv: _step(f, x, w, b, g, 1, 1),
            peers={"torch NCHW": lambda x=x, g=g, w=w, b=b, f=torch_conv: _step(f, x, w, b, g, 1, 1),
                   "torch CL": lambda x=xcl, g=gcl, w=w, b=b, f=torch_conv: _step(f, x, w, b, g, 1, 1)},
            flops=3 * flops, info={"kind": "fwd+bwd", "shape": [n, ci, co, list(sp)]}))
    cases += _transpose_cases(args, gen) + _parts_cases(args, gen)
    if args.only:
        cases = [c for c in cases if any(word in c.name for word in args.only.split(","))]
    return cases


def _step(f, x, w, b, g, *args):
    """Forward and backward to x, weight and bias: a training step's work for one layer."""
    x = [t.detach().requires_grad_(True) for t in x] if isinstance(x, list) else x.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    f(x, w, b, *args).backward(g)
    return w.grad, b.grad


def _transpose_cases(args, gen):
    cases = []
    for n, ci, co, sp in (QUICK_TRANSPOSE if args.quick else TRANSPOSE):
        nd = len(sp)
        torch_op = F.conv_transpose2d if nd == 2 else F.conv_transpose3d
        ours_op = ck.conv_transpose2d if nd == 2 else ck.conv_transpose3d
        cl = torch.channels_last if nd == 2 else torch.channels_last_3d
        x = torch.randn((n, ci) + sp, generator=gen)
        w = torch.randn((ci, co) + (2,) * nd, generator=gen) / math.sqrt(ci)
        b = torch.randn(co, generator=gen)
        xcl = x.contiguous(memory_format=cl)
        flops = 2.0 * n * ci * co * 2 ** nd * math.prod(sp)
        tag = f"transpose k2s2 {n},{ci}->{co},{'x'.join(map(str, sp))}"
        cases.append(common.Case(
            f"forward {tag}",
            ours=lambda x=x, w=w, b=b, f=ours_op: f(x, w, b, 2),
            peers={"torch NCHW": lambda x=x, w=w, b=b, f=torch_op: f(x, w, b, 2),
                   "torch CL": lambda x=xcl, w=w, b=b, f=torch_op: f(x, w, b, 2)},
            flops=flops, info={"kind": "transpose forward", "shape": [n, ci, co, list(sp)]}))
        g = torch.randn((n, co) + tuple(2 * s for s in sp), generator=gen)
        gcl = g.contiguous(memory_format=cl)
        cases.append(common.Case(
            f"fwd+bwd {tag}",
            ours=lambda x=x, g=g, w=w, b=b, f=ours_op: _step(f, x, w, b, g, 2),
            peers={"torch NCHW": lambda x=x, g=g, w=w, b=b, f=torch_op: _step(f, x, w, b, g, 2),
                   "torch CL": lambda x=xcl, g=gcl, w=w, b=b, f=torch_op: _step(f, x, w, b, g, 2)},
            flops=3 * flops, info={"kind": "transpose fwd+bwd", "shape": [n, ci, co, list(sp)]}))
    return cases


def _parts_cases(args, gen):
    """torch pays the concatenation (and its gradient's split) inside the timed step; so does any U-Net on it."""
    cases = []
    for n, cu, cs, co, sp in (QUICK_PARTS if args.quick else PARTS):
        up, skip = (torch.randn((n, c) + sp, generator=gen) for c in (cu, cs))
        upcl, skipcl = (t.contiguous(memory_format=torch.channels_last) for t in (up, skip))
        w = torch.randn((co, cu + cs, 3, 3), generator=gen) / math.sqrt(9 * (cu + cs))
        b = torch.randn(co, generator=gen)
        g = torch.randn((n, co) + sp, generator=gen)
        gcl = g.contiguous(memory_format=torch.channels_last)
        flops = 2.0 * n * (cu + cs) * co * 9 * math.prod(sp)
        tag = f"[up, skip] {n},{cu}+{cs}->{co},{'x'.join(map(str, sp))}"
        ours = lambda x, w, b: ck.conv2d(x, w, b, 1, 1, activation="relu")  # noqa: E731
        theirs = lambda x, w, b: F.relu(F.conv2d(torch.cat(x, 1), w, b, 1, 1))  # noqa: E731
        cases.append(common.Case(
            f"forward {tag}",
            ours=lambda x=[up, skip], w=w, b=b: ours(x, w, b),
            peers={"torch NCHW": lambda x=[up, skip], w=w, b=b: theirs(x, w, b),
                   "torch CL": lambda x=[upcl, skipcl], w=w, b=b: theirs(x, w, b)},
            flops=flops, info={"kind": "parts forward", "shape": [n, cu + cs, co, list(sp)]}))
        cases.append(common.Case(
            f"fwd+bwd {tag}",
            ours=lambda x=[up, skip], g=g, w=w, b=b: _step(ours, x, w, b, g),
            peers={"torch NCHW": lambda x=[up, skip], g=g, w=w, b=b: _step(theirs, x, w, b, g),
                   "torch CL": lambda x=[upcl, skipcl], g=gcl, w=w, b=b: _step(theirs, x, w, b, g)},
            flops=3 * flops, info={"kind": "parts fwd+bwd", "shape": [n, cu + cs, co, list(sp)]}))
    return cases


def _summary(path):
    """Geometric means of the ratios (peer time / ours) per allocator setting, as the issue's targets read."""
    payloads = json.loads(path.read_text())
    for pl in payloads:
        thp = pl["meta"]["THP_MEM_ALLOC_ENABLE"] or "0"
        threads = pl["meta"]["threads"]
        peak = common.peak_flops_per_core(pl["meta"].get("cellkern_cpu_isa", "avx2")) * threads
        print(f"\n== summary, THP_MEM_ALLOC_ENABLE={thp}, {threads} threads "
              f"(peak {peak / 1e9:.0f} GFLOP/s, {pl['meta'].get('cellkern_cpu_isa', 'avx2')})")
        print(f"{'case':46s} {'ours ms':>9s} {'GFLOP/s':>8s} {'%peak':>6s} {'vs NCHW':>8s} {'vs CL':>7s} {'vs best':>8s}")
        by_kind = {}
        for c in pl["cases"]:
            r = c["results"]["ours"]
            print(f"{c['name']:46s} {r['median_s'] * 1e3:9.1f} {r['GFLOP/s']:8.1f} {r['GFLOP/s'] * 1e9 / peak:6.0%} "
                  f"{c['ratios']['torch NCHW']:8.2f} {c['ratios']['torch CL']:7.2f} {c['ratio']:8.2f}")
            by_kind.setdefault((c["info"]["kind"], len(c["info"]["shape"][3])), []).append(c["ratio"])
        for (kind, nd), ratios in sorted(by_kind.items()):
            gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            print(f"geometric mean of {kind} {nd}D ratios vs torch's best layout: {gm:.2f}x over {len(ratios)} shapes")


def _args(ap):
    ap.add_argument("--only", default="", help="comma list: run the cases whose name contains one (e.g. transpose,up)")


if __name__ == "__main__":
    common.main("conv", _cases, _args)
    if "--child" not in sys.argv:
        out = None
        for i, a in enumerate(sys.argv):
            if a == "--out":
                out = sys.argv[i + 1]
            elif a.startswith("--out="):
                out = a.split("=", 1)[1]
        from pathlib import Path
        _summary(Path(out) if out else common.RESULTS / "conv.json")
