"""The gathered padded-convolution oracle against F.pad + torch's convolution, where the padding fits in memory."""
import pytest
import torch
import torch.nn.functional as F

from cellkern.reference.conv import padded_conv_gathered


@pytest.mark.parametrize("mode", ["zeros", "replicate", "reflect", "circular"])
@pytest.mark.parametrize("nd, k, s, d, lohi", [(2, 3, 1, 1, (2, 1)), (2, 3, 2, 2, (3, 3)), (2, 2, 5, 1, (4, 0)),
                                                (3, 2, 3, 1, (1, 2)), (2, 1, 7, 1, (4, 4))])
def test_gathered_equals_padded(mode, nd, k, s, d, lohi):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, 3) + (6,) * nd, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn((4, 3) + (k,) * nd, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    got = padded_conv_gathered(x, w, b, s, d, [lohi] * nd, 1, mode)
    conv = F.conv2d if nd == 2 else F.conv3d
    want = conv(F.pad(x, list(lohi) * nd, mode="constant" if mode == "zeros" else mode), w, b, s, 0, d)
    torch.testing.assert_close(got, want)
    g = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    for a, c in zip(torch.autograd.grad(got, (x, w, b), g), torch.autograd.grad(want, (x, w, b), g)):
        torch.testing.assert_close(a, c)


def test_empty_output_and_bad_padding_raise():
    x, w = torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3)
    with pytest.raises(ValueError, match="empty"):
        padded_conv_gathered(x, w, None, 1, 3, [(0, 0)] * 2)
    with pytest.raises(ValueError, match="reflect"):
        padded_conv_gathered(x, w, None, 1, 1, [(4, 4)] * 2, mode="reflect")
