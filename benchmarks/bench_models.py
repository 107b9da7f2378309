"""Whole networks: cellkern's U-Net and StarDist2D vs the same nets on torch layers and ONNX Runtime: infer, train."""
from __future__ import annotations

import argparse
import copy
import functools
import gc
import io
import json
import math
import sys
import warnings
from pathlib import Path

import common
import numpy as np
import torch
import torch.nn.functional as F

from cellkern.data import normalize, synthetic_nuclei
from cellkern.models import StarDist2D, StarDistConfig
from cellkern.nn import UNet
from cellkern.reference import ReferenceStarDist, ReferenceUNet

UNET = dict(ndim=2, in_channels=1, out_channels=1, depth=3, base_channels=32, conv_per_level=2, upsample="transposed")
FORWARD_SIZES, TRAIN_SHAPE = (1024, 2048), (4, 256)   # TRAIN_SHAPE: (batch, size): StarDist2D's training default
QUICK_FORWARD_SIZES, QUICK_TRAIN_SHAPE = (128,), (2, 64)
NUCLEI_PER_MPIX = 500  # bench_star's density (500 nuclei on 1024^2)
RTOL = 1e-4            # forward outputs and the loss: max |ours - peer| <= RTOL * max |output| (Winograd float32)
# per parameter: max |grad ours - grad peer| <= GRAD_RTOL * max |grad|. Looser than the forward: at 4x256^2 torch's
# own float32 bias gradients are 1.5e-3 (NCHW) and 3e-3 (channels_last) of their scale away from float64, ours 4e-6.
GRAD_RTOL = 1e-2
TORCH_PEERS = ("torch NCHW", "torch CL")
CL = torch.channels_last


class _UNetNet:
    """The anchor U-Net; training: binary cross-entropy of the logit against the nuclei's foreground."""

    key = "unet"
    lr = 1e-3  # torch.optim.Adam's default

    def info(self):
        return {"net": "cellkern.nn.UNet vs cellkern.reference.ReferenceUNet", **UNET}

    def pair(self):
        torch.manual_seed(0)
        ours = UNet(**UNET)
        return ours, _twin(ours, ReferenceUNet(**UNET))

    def targets(self, ours, labels):
        return (torch.from_numpy((labels > 0).astype(np.float32)[:, None]),)

    def loss(self, ours, outputs, mask):
        return F.binary_cross_entropy_with_logits(outputs[0], mask)


class _StarDistNet:
    """StarDist2D with its default config; training: the model's own loss on targets from its own targets()."""

    key = "stardist"
    config = StarDistConfig(ndim=2)
    lr = config.train_learning_rate

    def info(self):
        arch = ("n_rays", "grid", "n_channel_in", "unet_depth", "unet_base_channels", "unet_conv_per_level",
                "unet_kernel_size", "unet_activation", "unet_batch_norm", "unet_upsample", "net_conv_after_unet",
                "train_loss_weights", "train_background_reg", "train_learning_rate")
        config = self.config.to_dict()
        return {"net": "cellkern.models.StarDist2D vs cellkern.reference.ReferenceStarDist",
                "config": {k: config[k] for k in arch}, "config_note": "StarDistConfig(ndim=2) defaults, unchanged"}

    def pair(self):
        torch.manual_seed(0)
        ours = StarDist2D(self.config)
        return ours, _twin(ours, ReferenceStarDist(ours.config))

    def targets(self, ours, labels):
        prob, dist = zip(*(ours.targets(lab) for lab in labels))
        return torch.from_numpy(np.stack(prob)[:, None]), torch.from_numpy(np.stack(dist))

    def loss(self, ours, outputs, prob_t, dist_t):
        # model.loss reads only the config, so the torch twins' outputs go through the very same formula
        return ours.loss(outputs, prob_t, dist_t)[0]


NETS = (_UNetNet(), _StarDistNet())


def _twin(ours, ref):
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref


def _outputs(out):
    return out if isinstance(out, tuple) else (out,)


def _images(batch, size, seed):
    """(x float32 (batch, 1, size, size) normalised synthetic nuclei, labels int32 (batch, size, size))."""
    n = max(4, round(NUCLEI_PER_MPIX * size * size / 1024 ** 2))
    pairs = [synthetic_nuclei((size, size), n, seed=seed + i) for i in range(batch)]
    x = np.stack([normalize(img) for img, _ in pairs])[:, None]
    return torch.from_numpy(x), np.stack([lab for _, lab in pairs])


def _run_counting_conv_flops(net, x):
    """net(x) and the floating-point work of its convolutions (2 per multiply-add), from each layer's shapes."""
    total = 0

    def count(m, inputs, out):
        nonlocal total
        taps = math.prod(m.kernel_size)
        if m.transposed:  # every input element is scattered into out_channels / groups x taps outputs
            total += 2 * inputs[0].numel() * (m.out_channels // m.groups) * taps
        else:
            total += 2 * out.numel() * (m.in_channels // m.groups) * taps

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    try:
        out = net(x)
    finally:
        for h in hooks:
            h.remove()
    return _outputs(out), total


def _check(name, what, ours, peers, rtol):
    """Per peer, max |ours - peer| over the outputs relative to each output's scale (max |ours|); aborts the
    benchmark when one exceeds rtol. Returns {peer: relative difference}, and prints it."""
    rel = {}
    for peer, theirs in peers.items():
        worst = 0.0
        for a, b in zip(ours, theirs):
            a, b = torch.as_tensor(a).detach().float(), torch.as_tensor(b).detach().float()
            if a.shape != b.shape:
                raise SystemExit(f"bench_models: {name}: {what} of ours {tuple(a.shape)} and {peer} "
                                 f"{tuple(b.shape)} differ in shape")
            worst = max(worst, float((a - b).abs().max()) / max(float(a.abs().max()), 1e-30))
        rel[peer] = worst
        if not worst <= rtol:
            raise SystemExit(f"bench_models: {name}: ours and {peer} do not compute the same {what}: max |diff| = "
                             f"{worst:.3g} x max |output| > {rtol:g}; not timing a mismatch")
    _log(f"{name}: {what} max |ours - peer| / max |ours|: " + ", ".join(f"{p} {v:.2g}" for p, v in rel.items()))
    return rel


def _log(message):
    """A line on stderr (the child's stdout carries the JSON), through tqdm when common.main draws its bar."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(message, file=sys.stderr)
    else:
        tqdm.write(message, file=sys.stderr)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        from cellkern._optional import message

        _log(message("onnxruntime", "the ONNX Runtime peer", "bench") + ": running without it")
        return None
    return onnxruntime


def _ort_session(ort, net, x, threads):
    """ORT CPU session of ``net`` exported for exactly x's shape."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter is chosen on purpose (dynamo=False): it warns that it is the legacy one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["x"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT's idle workers spin by default, and in one process they would keep spinning into the next side's timed
    # call (2 cores): let them sleep between runs, as torch's and cellkern's OpenMP workers soon do.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])


def _inference(net, x):
    with torch.inference_mode():
        return net(x)


def _forward_case(name, net, size, threads, ort):
    ours, ref = net.pair()
    ref_cl = copy.deepcopy(ref).to(memory_format=CL)
    for m in (ours, ref, ref_cl):
        m.eval()
    x, _ = _images(1, size, seed=1)
    x_cl = x.contiguous(memory_format=CL)
    with torch.inference_mode():
        expected, flops = _run_counting_conv_flops(ref, x)
    peers = {"torch NCHW": lambda: _inference(ref, x), "torch CL": lambda: _inference(ref_cl, x_cl)}
    results = {"torch NCHW": expected, "torch CL": _outputs(peers["torch CL"]())}
    info = {**net.info(), "kind": "forward", "input": list(x.shape), "flops": "conv FLOPs of the forward"}
    if ort:
        session, feed = _ort_session(ort, ref, x, threads), {"x": x.numpy()}
        peers["ORT"] = lambda: session.run(None, feed)
        results["ORT"] = peers["ORT"]()
        info["onnxruntime"] = ort.__version__
        info["ort_session"] = (f"CPUExecutionProvider, intra_op_num_threads={threads}, inter_op_num_threads=1, "
                               "allow_spinning=0, default CPU memory arena (its buffers persist between runs)")
    info["max_rel_diff"] = _check(name, "forward outputs", _outputs(_inference(ours, x)), results, RTOL)
    return common.Case(name, ours=lambda: _inference(ours, x), peers=peers, flops=flops, best_of=TORCH_PEERS,
                       info=info)


def _loss_and_grads(net, ours, model, x, targets):
    loss = net.loss(ours, _outputs(model(x)), *targets)
    loss.backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _train_case(name, net, batch, size):
    ours, ref = net.pair()
    ref_cl = copy.deepcopy(ref).to(memory_format=CL)
    x, labels = _images(batch, size, seed=100)
    targets = net.targets(ours, labels)
    # channels_last targets for the channels_last side, so that its loss does not pay for mixed layouts
    sides = {"ours": (ours, x, targets), "torch NCHW": (ref, x, targets),
             "torch CL": (ref_cl, x.contiguous(memory_format=CL), tuple(t.contiguous(memory_format=CL)
                                                                          for t in targets))}
    for m, *_ in sides.values():
        m.train()
    with torch.no_grad():
        _, flops = _run_counting_conv_flops(ref, x)
    computed = {k: _loss_and_grads(net, ours, *side) for k, side in sides.items()}
    mine, others = computed.pop("ours"), computed
    rel = _check(name, "loss", (mine[0],), {k: (v[0],) for k, v in others.items()}, RTOL)
    names = list(mine[1])
    grad_rel = _check(name, "parameter gradients", [mine[1][k] for k in names],
                      {p: [v[1][k] for k in names] for p, v in others.items()}, GRAD_RTOL)

    def step(model, optimizer, x, targets):
        optimizer.zero_grad(set_to_none=True)
        net.loss(ours, _outputs(model(x)), *targets).backward()
        optimizer.step()

    steps = {}
    for k, (model, xs, ts) in sides.items():
        # each side its own Adam over its own copy of the same initial weights
        steps[k] = functools.partial(step, model, torch.optim.Adam(model.parameters(), lr=net.lr), xs, ts)
    info = {**net.info(), "kind": "train", "input": list(x.shape), "optimizer": f"Adam(lr={net.lr:g})",
            "flops": "3x the forward's conv FLOPs (forward, input and weight gradients)",
            "max_rel_diff": rel, "max_rel_diff_grads": grad_rel}
    return common.Case(name, ours=steps.pop("ours"), peers=steps, flops=3 * flops, best_of=TORCH_PEERS, info=info)


def _specs(quick):
    """(name, net, kind, shape) of every case, in running order; shape: size (forward) or (batch, size)."""
    fwd = QUICK_FORWARD_SIZES if quick else FORWARD_SIZES
    train = QUICK_TRAIN_SHAPE if quick else TRAIN_SHAPE
    specs = []
    for net in NETS:
        specs += [(f"{net.key}-forward-{s}", net, "forward", s) for s in fwd]
        specs.append((f"{net.key}-train", net, "train", train))
    return specs


def _selected(name, tokens):
    return tokens is None or any(name == t or name.startswith(t + "-") for t in tokens)


def _case_list(text):
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    known = [spec[0] for quick in (False, True) for spec in _specs(quick)]
    unknown = [t for t in tokens if not any(_selected(n, [t]) for n in known)]
    if unknown or not tokens:
        raise argparse.ArgumentTypeError(f"unknown case(s) {unknown}; cases: {', '.join(dict.fromkeys(known))} "
                                         "(a prefix such as 'unet' or 'stardist-forward' selects several)")
    return tokens


def _add_args(ap):
    ap.add_argument("--cases", type=_case_list, default=None,
                    help="comma list of cases (or prefixes) to run, e.g. unet-forward-1024,unet-train")


def _cases(args):
    """A generator: each case is built when its turn comes and its models, inputs and ORT session are dropped
    before the next is built (a 2048^2 StarDist case alone holds gigabytes)."""
    specs = [spec for spec in _specs(args.quick) if _selected(spec[0], args.cases)]
    if not specs:
        raise SystemExit(f"bench_models: --cases selects none of {[spec[0] for spec in _specs(args.quick)]}"
                         + (" (--quick)" if args.quick else ""))
    ort = _onnxruntime()
    previous = None
    for name, net, kind, shape in specs:
        if previous is not None:
            previous.ours, previous.peers = None, {}
            gc.collect()
        if kind == "forward":
            previous = _forward_case(name, net, shape, args.threads, ort)
        else:
            previous = _train_case(name, net, *shape)
        yield previous


def _ms(result, side):
    r = result["results"].get(side)
    return f"{r['median_s'] * 1e3:10.1f}" if r else f"{'-':>10s}"


def _summary(path):
    """Per allocator setting: each case's medians, its speed-up over torch's better layout and over ORT."""
    for pl in json.loads(path.read_text()):
        thp = pl["meta"]["THP_MEM_ALLOC_ENABLE"] or "0"
        threads = pl["meta"]["threads"]
        print(f"\n== summary, THP_MEM_ALLOC_ENABLE={thp}, {threads} threads (ratios: peer time / ours)")
        print(f"{'case':22s} {'ours ms':>10s} {'GFLOP/s':>8s} {'torch NCHW':>10s} {'torch CL':>10s} {'ORT':>10s} "
              f"{'vs torch':>9s} {'vs ORT':>7s} {'max diff':>9s}")
        for c in pl["cases"]:
            ort = f"{c['ratios']['ORT']:7.2f}" if "ORT" in c["ratios"] else f"{'-':>7s}"
            print(f"{c['name']:22s} {_ms(c, 'ours')} {c['results']['ours'].get('GFLOP/s', 0):8.1f} "
                  f"{_ms(c, 'torch NCHW')} {_ms(c, 'torch CL')} {_ms(c, 'ORT')} {c['ratio']:9.2f} {ort} "
                  f"{max(c['info']['max_rel_diff'].values()):9.1e}")
    print("vs torch: against torch's better layout (NCHW or channels_last); max diff: forward outputs (train: the "
          "loss) relative to max |output|")


if __name__ == "__main__":
    common.main("models", _cases, _add_args)
    if "--child" not in sys.argv:
        out = argparse.ArgumentParser(add_help=False)
        out.add_argument("--out", type=Path, default=common.RESULTS / "models.json")
        _summary(out.parse_known_args()[0].out)
