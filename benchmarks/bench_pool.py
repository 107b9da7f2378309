"""Max-pooling: cellkern vs torch (NCHW and channels_last), forward and forward+backward, GB/s vs bandwidth."""
from __future__ import annotations

import common
import torch
import torch.nn.functional as F

import cellkern.ops as ck

SHAPES = [(1, 32, 1024, 1024), (8, 64, 256, 256)]
QUICK = [(1, 8, 128, 128)]


def _cases(args):
    cases = []
    for shape in QUICK if args.quick else SHAPES:
        nd = len(shape) - 2
        x = torch.randn(shape)
        xcl = x.contiguous(memory_format=torch.channels_last)
        n_in = x.numel() * 4
        n_out = n_in // 4
        tag = "x".join(map(str, shape))
        # Inference forward: input read + output written. Both sides allocate the output through torch.
        cases.append(common.Case(
            f"forward 2x2/2 {tag}",
            ours=lambda x=x: ck.max_pool2d(x, 2),
            peers={"torch NCHW": lambda x=x: F.max_pool2d(x, 2),
                   "torch CL": lambda x=xcl: F.max_pool2d(x, 2)},
            bytes=n_in + n_out))
        cases.append(common.Case(
            f"forward channels_last {tag}",
            ours=lambda x=xcl: ck.max_pool2d(x, 2),
            peers={"torch CL": lambda x=xcl: F.max_pool2d(x, 2)},
            bytes=n_in + n_out))
        # Training step: forward with whatever each side saves for backward, then backward (fresh grad_input).
        g = torch.randn([shape[0], shape[1], shape[2] // 2, shape[3] // 2])
        gcl = g.contiguous(memory_format=torch.channels_last)

        def step(f, x, g):
            x = x.detach().requires_grad_(True)
            f(x, 2).backward(g)
            return x.grad

        cases.append(common.Case(
            f"fwd+bwd 2x2/2 {tag}",
            ours=lambda x=x, g=g: step(ck.max_pool2d, x, g),
            peers={"torch NCHW": lambda x=x, g=g: step(F.max_pool2d, x, g),
                   "torch CL": lambda x=xcl, g=gcl: step(F.max_pool2d, x, g)},
            bytes=2 * (n_in + n_out) + n_in))
    shape3 = (1, 16, 16, 64, 64) if args.quick else (1, 16, 64, 128, 128)
    x3 = torch.randn(shape3)
    n3 = x3.numel() * 4
    cases.append(common.Case(
        f"forward 3d 2x2x2/2 {'x'.join(map(str, shape3))}",
        ours=lambda: ck.max_pool3d(x3, 2),
        peers={"torch NCDHW": lambda: F.max_pool3d(x3, 2)},
        bytes=n3 + n3 // 8))
    x = torch.randn(QUICK[0] if args.quick else (1, 32, 512, 512))
    cases.append(common.Case(
        f"forward 3x3/1 pad 1 {'x'.join(map(str, x.shape))}",
        ours=lambda: ck.max_pool2d(x, 3, 1, 1),
        peers={"torch NCHW": lambda: F.max_pool2d(x, 3, 1, 1)},
        bytes=2 * x.numel() * 4))
    return cases


if __name__ == "__main__":
    common.main("pool", _cases)
