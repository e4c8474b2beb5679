import torch

from rlprune.quant import ActivationQuantizer, fake_quantize_activation, fake_quantize_weight


def test_weight_quantization_is_per_channel_with_few_levels():
    torch.manual_seed(0)
    w = torch.randn(6, 5, 3) * torch.arange(1, 7).view(6, 1, 1)
    for bits in (2, 4, 8):
        q = fake_quantize_weight(w, bits)
        for o in range(6):
            levels = torch.unique(q[o]).numel()
            assert levels <= 2**bits - 1
            scale = w[o].abs().max() / (2 ** (bits - 1) - 1)
            assert torch.allclose(q[o].abs().max(), w[o].abs().max(), atol=1e-6)  # the max is a level
            assert (q[o] - w[o]).abs().max() <= scale / 2 + 1e-6
    assert fake_quantize_weight(w, 32) is w
    assert torch.equal(fake_quantize_weight(w, 16), w.half().float())


def test_straight_through_gradient_is_identity():
    for bits in (3, 16):
        w = torch.randn(4, 8, requires_grad=True)
        fake_quantize_weight(w, bits).sum().backward()
        assert torch.equal(w.grad, torch.ones_like(w))


def test_half_rounding_is_the_same_with_and_without_autograd():
    x = torch.randn(64, 33) * torch.logspace(-6, 4, 33)  # subnormal to wide halves
    x.requires_grad_(True)
    with torch.no_grad():
        scored = fake_quantize_activation(x, 16, x.min(), x.max())
    trained = fake_quantize_activation(x, 16, x.min(), x.max())
    assert torch.equal(scored, trained.detach()) and torch.equal(scored, x.detach().half().float())


def test_activation_quantization_range_and_levels():
    x = torch.linspace(-1.0, 3.0, 1000)
    q = fake_quantize_activation(x, 4, x.min(), x.max())
    assert torch.unique(q).numel() <= 16
    assert (q - x).abs().max() <= (4.0 / 15) / 2 + 1e-6


def test_activation_quantizer_calibrates_in_training_mode():
    quantizer = ActivationQuantizer(bits=8)
    quantizer.train()
    quantizer(torch.tensor([-2.0, 5.0]))
    assert bool(quantizer.calibrated) and quantizer.low.item() == -2.0 and quantizer.high.item() == 5.0
    quantizer.eval()
    out = quantizer(torch.tensor([10.0]))  # outside the calibrated range: clamped
    assert out.item() <= 5.0 + 1e-5
