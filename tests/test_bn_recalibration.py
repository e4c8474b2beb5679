"""Batch-norm recalibration under a policy: the reward sees the masked network's own statistics."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from rlprune.envs import PolicyEvaluator

from rlprune.compress import compress, recalibrate_batch_norms
from rlprune.config import validate
from rlprune.errors import ConfigError
from rlprune.layers import discover_layers, filter_couplings
from rlprune.models import ResNet20
from rlprune.policy import Choice, Pattern, Policy
from tests.support import compose_config


def resnet() -> tuple[torch.nn.Module, torch.Tensor, list]:
    torch.manual_seed(0)
    model = ResNet20(in_channels=1, num_classes=10, width=8, dims=2)
    x = torch.randn(256, 1, 8, 8)
    model.train()
    with torch.no_grad():  # dense statistics that differ from a fresh batch norm's
        for _ in range(5):
            model(x)
    return model.eval(), x, discover_layers(model, x)


def half_filters(layers) -> Policy:
    conv1s = [lay for lay in layers if lay.name.endswith("conv1")]
    return Policy.of(
        {lay.name: Choice(Pattern.FILTER, lay.out_channels // 2, lay.out_channels, 32, 32) for lay in conv1s}
    )


def batch_mean(model: torch.nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0].mean(dim=(0, 2, 3))


def test_statistics_are_the_masked_networks_own():
    model, x, layers = resnet()
    policy = half_filters(layers)
    masked = compress(model, policy, couplings=filter_couplings(model, x, layers))
    bn = "stages.0.0.bn2"  # after conv2, whose inputs lost half their channels
    dense_mean = masked.get_submodule(bn).running_mean.clone()
    recalibrate_batch_norms(masked, x, batch_size=64)
    own = batch_mean(masked, bn, x)
    # equal up to the batch statistics the layers upstream normalized with during the pass
    assert torch.allclose(masked.get_submodule(bn).running_mean, own, atol=1e-3)
    assert not torch.allclose(dense_mean, own, atol=1e-2)
    assert not masked.training and masked.get_submodule(bn).momentum == 0.1  # restored


def test_the_norms_alone_train_during_recalibration():
    model, x, layers = resnet()
    masked = compress(model, half_filters(layers), couplings=filter_couplings(model, x, layers))
    seen: dict[str, bool] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            seen.setdefault(name, module.training)

        return hook

    for name, module in masked.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.Linear, torch.nn.ReLU)):
            module.register_forward_hook(record(name))
    recalibrate_batch_norms(masked, x, batch_size=64)
    norms = {n for n, m in masked.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert norms and {n for n, training in seen.items() if training} == norms
    assert not any(m.training for m in masked.modules())


def test_the_evaluator_scores_recalibrated_networks():
    model, x, layers = resnet()
    y = torch.randint(0, 10, (len(x),))
    names = [lay.name for lay in layers]
    couplings = filter_couplings(model, x, layers)
    plain = PolicyEvaluator(model, names, x, y, couplings=couplings)
    recalibrated = PolicyEvaluator(
        model, names, x, y, couplings=couplings, recalibration=x, recalibration_batch=64
    )
    quarter = Policy.of({name: replace(c, keep=c.keep // 2) for name, c in half_filters(layers)})
    for policy in (half_filters(layers), quarter, half_filters(layers)):  # no weights kept from the last
        expected_model = compress(model, policy, couplings=couplings)
        recalibrate_batch_norms(expected_model, x, batch_size=64)
        with torch.no_grad():
            expected = torch.nn.functional.cross_entropy(expected_model(x), y).item()
        assert recalibrated(policy).loss == pytest.approx(expected, rel=1e-5)
        assert plain(policy).loss != pytest.approx(expected, rel=1e-3)
    assert model.get_submodule("stages.0.0.bn2").running_mean.abs().sum() > 0  # the input model is untouched


def test_a_policys_score_does_not_depend_on_the_policies_scored_before():
    model, x, layers = resnet()
    y = torch.randint(0, 10, (len(x),))
    names = [lay.name for lay in layers]
    couplings = filter_couplings(model, x, layers)

    def evaluator() -> PolicyEvaluator:
        return PolicyEvaluator(
            model, names, x, y, couplings=couplings, recalibration=x, recalibration_batch=32
        )

    # 8-bit inputs: their quantizers must use each pass's range, never one recorded in an earlier policy's
    first = Policy.of(dict.fromkeys(names, Choice(Pattern.DENSE, 1, 1, 8, 8)))
    halves = {name: replace(c, w_bits=8, a_bits=8) for name, c in half_filters(layers)}
    second = Policy.of({name: halves.get(name, Choice(Pattern.DENSE, 1, 1, 16, 16)) for name in names})
    after_first = evaluator()
    after_first(first)
    assert after_first(second) == evaluator()(second)


def test_networks_without_batch_norm_are_left_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    before = [p.clone() for p in model.state_dict().values()]
    recalibrate_batch_norms(model, torch.randn(8, 4), batch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(), strict=True))


def test_a_negative_batch_count_is_refused():
    with pytest.raises(ConfigError, match=r"reward\.bn_recalibration"):
        validate(compose_config("reward.bn_recalibration=-1"))
