"""`cellkern demo | info`: the command-line entry points."""
from __future__ import annotations

import argparse
import time


def _demo(args) -> None:
    import numpy as np

    import cellkern
    import cellkern.ops  # imports torch when installed: outside the timed region
    from cellkern import _C
    from cellkern.data import synthetic_nuclei

    print(f"cellkern {cellkern.__version__}: CPU kernels '{_C.cpu_isa()}', "
          f"{cellkern.get_num_threads()} threads")
    status = cellkern.cuda_status()
    print("CUDA:", "available" if status["available"] else f"unavailable ({status['reason']})")

    image, labels = synthetic_nuclei((args.size, args.size), args.objects, seed=0)
    print(f"synthetic image {image.shape}, {labels.max()} nuclei")
    # A U-Net encoder's down-sampling path: three 2x2 max-pools, on numpy and (when installed) torch.
    x = np.broadcast_to(image, (1, 16) + image.shape).copy()
    t0 = time.perf_counter()
    y = x
    for _ in range(3):
        y = cellkern.ops.max_pool2d(y, 2)
    t1 = time.perf_counter()
    print(f"max_pool2d x3 (numpy): {x.shape} -> {y.shape} in {(t1 - t0) * 1e3:.1f} ms")
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("torch not installed: skipping the autograd check")
        return
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = xt
    for _ in range(3):
        yt = cellkern.ops.max_pool2d(yt, 2)
    yt.sum().backward()
    ref = torch.from_numpy(x).requires_grad_(True)
    r = ref
    for _ in range(3):
        r = F.max_pool2d(r, 2)
    r.sum().backward()
    same = torch.equal(yt, r) and torch.equal(xt.grad, ref.grad)
    print(f"torch autograd: values and gradients {'equal' if same else 'DIFFER from'} torch's max_pool2d")
    if not same:
        raise SystemExit(1)


def _info(args) -> None:
    import cellkern
    from cellkern import _C

    print("cellkern", cellkern.__version__)
    print("build:", dict(_C.build_info()), "cpu isa:", _C.cpu_isa(), "threads:", cellkern.get_num_threads())
    print("cuda:", cellkern.cuda_status())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="cellkern", description="cellkern command-line tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="a small end-to-end run on a synthetic nuclei image")
    d.add_argument("--size", type=int, default=512)
    d.add_argument("--objects", type=int, default=60)
    d.set_defaults(fn=_demo)
    i = sub.add_parser("info", help="build and device information")
    i.set_defaults(fn=_info)
    args = ap.parse_args(argv)
    args.fn(args)
