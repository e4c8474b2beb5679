"""Wanda (|w| times the norm of its input): input norms per weight, for every layer kind and pattern."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rlprune.compress import bake
from rlprune.data import Splits
from rlprune.finetune import FinetuneSettings, finetune
from rlprune.layers import discover_layers
from rlprune.masks import Calibration, compute_mask, get_criterion, input_norms
from rlprune.models import MNIST1DCNN, DigitsCNN
from rlprune.patterns import get_pattern
from rlprune.policy import Choice, Pattern, Policy
from rlprune.training import TrainSettings


def wanda(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``wanda`` criterion's scores, calibrated on ``x``."""
    data = Calibration(x, torch.zeros(len(x), dtype=torch.long), torch.Generator().manual_seed(0))
    return get_criterion("wanda").scores(model, names, data)


def _brute_norms(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``||x||`` of the inputs each weight ``w[o, c, *k]`` multiplies, one output position at a time."""
    weight = layer.weight
    norms = torch.zeros(weight.shape)
    for index in itertools.product(*map(range, weight.shape)):
        probe = nn.functional.conv2d if weight.dim() == 4 else nn.functional.conv1d
        only = torch.zeros_like(weight)
        only[index] = 1.0
        # the output of a conv whose one weight is 1 is exactly the inputs that weight multiplies
        seen = probe(x, only, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        norms[index] = seen[:, index[0]].square().sum().sqrt()
    return norms


@pytest.mark.parametrize(
    ("conv", "shape", "kwargs"),
    [
        (nn.Conv1d, (3, 6, 11), {"kernel_size": 3, "padding": 1}),
        (nn.Conv1d, (3, 4, 12), {"kernel_size": 3, "stride": 2, "groups": 2}),
        (nn.Conv2d, (2, 4, 6, 5), {"kernel_size": 3, "padding": 1, "groups": 4}),  # depthwise-like
        (nn.Conv2d, (2, 3, 7, 7), {"kernel_size": (3, 2), "stride": 2, "dilation": (1, 2)}),
    ],
)
def test_conv_input_norms_are_those_of_the_inputs_each_weight_multiplies(conv, shape, kwargs):
    torch.manual_seed(0)
    in_channels = shape[1]
    out = 4 if kwargs.get("groups", 1) in (1, 2) else in_channels
    layer = conv(in_channels, out, **kwargs)
    x = torch.randn(shape) * torch.arange(1, in_channels + 1).reshape(1, -1, *[1] * (len(shape) - 2))
    model = nn.Sequential(layer)
    norms = input_norms(model, ["0"], [x[:1], x[1:]])["0"]  # summed over batches
    assert torch.allclose(norms.expand_as(layer.weight), _brute_norms(layer, x), rtol=1e-4, atol=1e-5)


def test_linear_input_norms_run_over_samples_and_tokens():
    layer = nn.Linear(3, 2)
    x = torch.tensor([[[1.0, 0.0, 2.0], [2.0, 1.0, 0.0]], [[2.0, 0.0, 1.0], [0.0, 0.0, 2.0]]])  # (B, T, in)
    norms = input_norms(nn.Sequential(layer), ["0"], [x])["0"]
    assert torch.allclose(norms, torch.tensor([3.0, 1.0, 3.0]))
    scores = wanda(nn.Sequential(layer), ["0"], x)["0"]
    assert torch.allclose(scores, layer.weight.detach().abs() * norms)


def _layer_case(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A layer whose weights are largest on the input channel with the smallest inputs."""
    torch.manual_seed(1)
    if kind == "linear":
        layer = nn.Linear(8, 8)
        x = torch.randn(64, 8)
    else:
        layer = nn.Conv1d(8, 8, 3, padding=1)
        x = torch.randn(64, 8, 10)
    scale = torch.logspace(2, -2, 8)  # input channel 0 is 10^4 times channel 7
    with torch.no_grad():
        layer.weight.mul_((1 / scale).reshape(1, 8, *[1] * (layer.weight.dim() - 2)) ** 0.5)
    return layer, x * scale.reshape(1, 8, *[1] * (x.dim() - 2))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("pattern", [p for p in Pattern if p is not Pattern.DENSE], ids=str)
def test_wanda_keeps_other_weights_than_magnitude_and_loses_less_output(kind, pattern):
    """With input channels of very different scales, Wanda keeps the weights that carry the signal:
    the masked layer's output is closer to the dense one's (for filters: every filter reads every
    input, so both criteria rank them alike)."""
    layer, x = _layer_case(kind)
    if pattern is Pattern.KOFN_KERNEL and kind == "linear":
        pytest.skip("k-of-n kernels are for convs")
    group = get_pattern(pattern).group_size(tuple(layer.weight.shape)) or 4  # N:M: 2:4
    choice = Choice(pattern, group // 2, group)
    weight = layer.weight.detach()
    by_magnitude = compute_mask(weight, choice)
    by_wanda = compute_mask(weight, choice, scores=wanda(nn.Sequential(layer), ["0"], x)["0"])
    assert by_magnitude.sum() == by_wanda.sum()  # the same pattern and density

    def error(mask: torch.Tensor) -> float:
        run = F.linear if kind == "linear" else lambda a, w, b: F.conv1d(a, w, b, padding=1)
        return (run(x, weight * mask, None) - run(x, weight, None)).norm().item()

    if choice.pattern is Pattern.FILTER:
        return
    assert not torch.equal(by_magnitude, by_wanda)
    assert error(by_wanda) < error(by_magnitude)


def test_finetune_criterion_wanda_starts_from_wanda_masks():
    torch.manual_seed(0)
    model = MNIST1DCNN(channels=(8, 16, 16, 16), hidden=16).eval()
    x, y = torch.randn(96, 1, 40), torch.randint(0, 10, (96,))
    x[:, :, :20] *= 50  # the first half of every input is loud: wanda sees it, magnitude does not
    splits = Splits(x, y, x[:32], y[:32], x[:32], y[:32], num_classes=10)
    layers = discover_layers(model, x)
    policy = Policy.of({layer.name: Choice(Pattern.UNSTRUCTURED, 1, 4) for layer in layers})
    names = [layer.name for layer in layers]
    expected = wanda(model, names, x)
    settings = FinetuneSettings(train=TrainSettings(epochs=0, batch_size=32), criterion="wanda")
    baked = bake(finetune(model, policy, layers, splits, settings, seed=0).model)
    magnitude = FinetuneSettings(train=TrainSettings(epochs=0, batch_size=32))
    plain = bake(finetune(model, policy, layers, splits, magnitude, seed=0).model)
    differs = 0
    for name in names:
        kept = baked.get_submodule(name).weight != 0
        weight = model.get_submodule(name).weight.detach()
        want = compute_mask(weight, Choice(Pattern.UNSTRUCTURED, 1, 4), expected[name])
        assert torch.equal(kept, want)
        differs += not torch.equal(kept, plain.get_submodule(name).weight != 0)
    assert differs >= 1


def test_wanda_on_a_2d_cnn_covers_every_layer():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.rand(16, 1, 8, 8)
    names = [layer.name for layer in discover_layers(model, x)]
    scores = wanda(model, names, x)
    for name in names:
        assert scores[name].shape == model.get_submodule(name).weight.shape
        assert torch.isfinite(scores[name]).all()
