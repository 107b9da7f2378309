"""cellkern.nn.UNet against the torch.nn reference network (same weights), its receptive field against measured
input gradients, its state_dict names, and bad input."""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cellkern.nn.unet import NearestUpsample, UNet  # noqa: E402
from cellkern.reference import ReferenceUNet, gradient_extents  # noqa: E402


def _pair(ndim, dtype, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(ndim=ndim, in_channels=2, out_channels=3, depth=2, base_channels=3, **kw)
    ours = UNet(**args).to(dtype)
    ref = ReferenceUNet(**args).to(dtype)
    ref.load_state_dict(ours.state_dict(), strict=True)  # same names and shapes, or this raises
    return ours, ref


def _close(a, b, dtype, what):
    # relative to the scale of the values: float32 convolutions may sum in another order than torch's
    a, b = a.detach(), b.detach()
    scale = max(float(b.abs().max()), 1e-30)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    err = float((a - b).abs().max()) / scale
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol}"


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("upsample", ["transposed", "nearest"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_forward_and_gradients_match_reference(ndim, dtype, upsample, batch_norm):
    ours, ref = _pair(ndim, dtype, upsample=upsample, batch_norm=batch_norm, activation="leaky_relu",
                      negative_slope=0.05)
    size = (12, 16) if ndim == 2 else (8, 8, 12)
    x = torch.randn((2, 2) + size, dtype=dtype, generator=torch.Generator().manual_seed(1))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    assert ya.shape == yb.shape == (2, 3) + size
    _close(ya, yb, dtype, "forward")
    w = torch.randn(ya.shape, dtype=dtype, generator=torch.Generator().manual_seed(2))
    ga = torch.autograd.grad((ya * w).sum(), [xa] + list(ours.parameters()))
    gb = torch.autograd.grad((yb * w).sum(), [xb] + list(ref.parameters()))
    names = ["x"] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, ga, gb):
        _close(a, b, dtype, f"gradient of {name}")
    if batch_norm:  # the running statistics moved the same way; eval mode uses them
        ref_buffers = dict(ref.named_buffers())
        for name, a in ours.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                _close(a, ref_buffers[name], dtype, name)
        _close(ours.eval()(x), ref.eval()(x), dtype, "forward in eval mode")


def test_relu_without_head_matches_reference():
    torch.manual_seed(3)
    ours = UNet(ndim=2, in_channels=2, out_channels=None, depth=1, base_channels=4)
    ref = ReferenceUNet(ndim=2, in_channels=2, out_channels=None, depth=1, base_channels=4)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 2, 10, 6)
    _close(ours(x), ref(x), torch.float32, "forward")
    assert ours(x).shape == (1, 4, 10, 6) and ours.output_channels == 4


def test_state_dict_names():
    net = UNet(ndim=2, in_channels=1, out_channels=2, depth=1, base_channels=2, conv_per_level=2, batch_norm=True)
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = []
    for block in ("encoder.0", "bottleneck", "decoder.0"):
        for i in range(2):
            expected += [f"{block}.conv{i}.weight"] + [f"{block}.norm{i}.{n}" for n in bn]
    expected += ["decoder.0.up.weight", "decoder.0.up.bias", "head.weight", "head.bias"]
    assert sorted(net.state_dict()) == sorted(expected)
    plain = UNet(ndim=3, depth=2, base_channels=2, conv_per_level=1, upsample="nearest")
    assert sorted(plain.state_dict()) == sorted(
        f"{b}.conv0.{p}" for b in ("encoder.0", "encoder.1", "bottleneck", "decoder.0", "decoder.1")
        for p in ("weight", "bias"))


def test_nearest_upsampling_is_a_constant_buffer():
    net = UNet(ndim=2, depth=1, base_channels=2, upsample="nearest").double()
    up = net.decoder[0].up
    assert isinstance(up, NearestUpsample) and list(up.parameters()) == []
    assert up.kernel.dtype == torch.float64 and bool((up.kernel == 1).all())
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    assert torch.equal(up(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_decoder_first_conv_gets_a_list(monkeypatch):
    net = UNet(ndim=2, depth=2, base_channels=2)
    seen = []
    for level in range(2):
        net.decoder[level].conv0.register_forward_pre_hook(lambda m, args: seen.append(args[0]))

    def no_concatenation(*args, **kwargs):
        raise AssertionError("the skip connection was concatenated")

    for name in ("cat", "concat", "concatenate"):
        monkeypatch.setattr(torch, name, no_concatenation)
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    net(x).sum().backward()
    assert len(seen) == 2 and x.grad is not None
    for parts, c in zip(seen, (4, 2)):  # decoder 1 runs first: [upsampled, skip], each of level 1's channels
        assert isinstance(parts, list) and [p.shape[1] for p in parts] == [c, c]


@pytest.mark.parametrize("ndim,kw,size", [
    (2, dict(depth=2, kernel_size=3, upsample="transposed"), 64),  # sizes: the centre pixel has phase 0
    (2, dict(depth=2, kernel_size=(5, 3), conv_per_level=1, upsample="nearest"), 64),
    (3, dict(depth=1, kernel_size=3, upsample="transposed"), 24),
])
def test_receptive_field_matches_measured_gradients(ndim, kw, size):
    torch.manual_seed(0)
    net = UNet(ndim=ndim, in_channels=1, out_channels=2, base_channels=2, activation="leaky_relu", **kw).double()
    f = net.downsampling_factor
    cells = list(itertools.product(*(range(v) for v in f)))
    measured = gradient_extents(net, 1, ndim, size, cells)
    for c, ext in measured.items():
        for d in range(ndim):
            lo, hi = net.input_interval(c[d], c[d], d)
            assert (lo - c[d], hi - c[d]) == ext[d], (c, d)
    rf = net.receptive_field()
    for d in range(ndim):
        assert rf.left[d] == max(-ext[d][0] for ext in measured.values())
        assert rf.right[d] == max(ext[d][1] for ext in measured.values())
        assert rf.size[d] == rf.left[d] + rf.right[d] + 1


def test_downsampling_factor_and_size_check():
    net = UNet(ndim=3, depth=2, base_channels=2)
    assert net.downsampling_factor == (4, 4, 4)
    with pytest.raises(ValueError, match="multiples of the down-sampling factor"):
        net(torch.randn(1, 1, 8, 8, 6))


@pytest.mark.parametrize("kw,match", [
    (dict(ndim=4), "ndim"), (dict(ndim=True), "ndim"), (dict(in_channels=0), "in_channels"),
    (dict(out_channels=0), "out_channels"), (dict(depth=0), "depth"), (dict(depth=1.5), "depth"),
    (dict(base_channels=-1), "base_channels"), (dict(conv_per_level=0), "conv_per_level"),
    (dict(kernel_size=4), "kernel_size"), (dict(kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(kernel_size="3"), "kernel_size"), (dict(activation="gelu"), "activation"),
    (dict(activation=None), "activation"), (dict(negative_slope=-0.1), "negative_slope"),
    (dict(batch_norm="yes"), "batch_norm"), (dict(upsample="bilinear"), "upsample"),
])
def test_bad_constructor_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kw)


def test_bad_forward_input():
    net = UNet(ndim=2, in_channels=2, depth=1, base_channels=2)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        net(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        net(torch.zeros(1, 2, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="x: expected a 4D tensor"):
        net(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="x: expected 2 channels"):
        net(torch.zeros(1, 3, 4, 4))
