"""Importance criteria as registered objects: the built-ins' scores, and one added from outside."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rlprune.compress import bake
from rlprune.data import Splits
from rlprune.errors import ConfigError
from rlprune.finetune import FinetuneSettings, finetune
from rlprune.layers import discover_layers
from rlprune.masks import (
    Calibration,
    Criterion,
    criterion_names,
    get_criterion,
    magnitude,
    register_criterion,
)
from rlprune.masks import criteria as criteria_module
from rlprune.models import MNIST1DCNN
from rlprune.policy import Choice, Pattern, Policy
from rlprune.training import TrainSettings


def _data(samples: int = 8, seed: int = 0) -> Calibration:
    torch.manual_seed(1)
    return Calibration(
        torch.randn(samples, 3), torch.randint(0, 2, (samples,)), torch.Generator().manual_seed(seed)
    )


def test_the_builtins_are_registered_in_order_and_an_unknown_name_lists_them():
    assert criterion_names()[:4] == ["magnitude", "taylor", "random", "wanda"]
    with pytest.raises(ConfigError, match=r"unknown importance criterion 'hessian'; valid: \['magnitude'"):
        get_criterion("hessian")
    with pytest.raises(ConfigError, match=r"finetune.criterion='hessian'; valid: \['magnitude'"):
        FinetuneSettings(criterion="hessian")


def test_magnitude_and_taylor_scores_and_the_network_is_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    data = _data(samples=300)  # two calibration batches of 128 and one of 44
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(get_criterion("magnitude").scores(model, ["2"], data)["2"], model[2].weight.abs())
    taylor = get_criterion("taylor").scores(model, ["0", "2"], data)
    grads = torch.autograd.grad(  # the summed loss of the batches: the gradients add up
        sum(F.cross_entropy(model(x), y) for x, y in data.batches()), [model[0].weight, model[2].weight]
    )
    assert torch.allclose(taylor["0"], (model[0].weight * grads[0]).abs())
    assert torch.allclose(taylor["2"], (model[2].weight * grads[1]).abs())
    assert [len(x) for x, _ in data.batches()] == [128, 128, 44]
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_random_scores_follow_the_calibrations_seed():
    model = nn.Sequential(nn.Linear(3, 4))
    first, again, other = (
        get_criterion("random").scores(model, ["0"], _data(seed=s))["0"] for s in (3, 3, 4)
    )
    assert first.shape == model[0].weight.shape
    assert torch.equal(first, again) and not torch.equal(first, other)


class Smallest(Criterion):
    """The reverse of magnitude: keeps the smallest weights (a plug-in, for the test)."""

    name = "smallest"

    def scores(self, model: nn.Module, names: Sequence[str], data: Calibration) -> dict[str, torch.Tensor]:
        return {name: -magnitude(model.get_submodule(name).weight) for name in names}


def test_a_registered_criterion_chooses_the_finetunes_first_masks(monkeypatch):
    monkeypatch.setattr(criteria_module, "_CRITERIA", dict(criteria_module._CRITERIA))
    assert register_criterion(Smallest) is Smallest
    register_criterion(Smallest)  # again: nothing changes
    assert criterion_names()[-1] == "smallest"

    class Impostor(Smallest):
        pass

    with pytest.raises(ConfigError, match="'smallest' is taken by Smallest"):
        register_criterion(Impostor)
    with pytest.raises(ConfigError, match="needs a Criterion subclass"):
        register_criterion(nn.Linear)

    torch.manual_seed(0)
    model = MNIST1DCNN(channels=(8, 16, 16, 16), hidden=16).eval()
    x, y = torch.randn(64, 1, 40), torch.randint(0, 10, (64,))
    splits = Splits(x, y, x[:16], y[:16], x[:16], y[:16], num_classes=10)
    layers = discover_layers(model, x)
    policy = Policy.of({layer.name: Choice(Pattern.UNSTRUCTURED, 1, 4) for layer in layers})
    settings = FinetuneSettings(train=TrainSettings(epochs=0, batch_size=32), criterion="smallest")
    tuned = bake(finetune(model, policy, layers, splits, settings, seed=0).model)
    for layer in layers:
        weight = model.get_submodule(layer.name).weight.detach().abs()
        kept = tuned.get_submodule(layer.name).weight != 0
        assert weight[kept].max() <= weight[~kept].min()  # the smallest quarter, not the largest
