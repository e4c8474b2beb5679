"""Evaluation in eval mode: every module evaluates, and each model's mode is back after."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlprune.models import MNIST1DCNN
from rlprune.training import evaluate, kl_divergence


class CountsSwitches(nn.Sequential):
    """A network that counts how often its mode is switched."""

    switches = 0

    def train(self, mode: bool = True) -> CountsSwitches:
        type(self).switches += 1
        return super().train(mode)


def modes_during(model: nn.Module, run) -> set[bool]:
    """The ``training`` flags of every module that ran a forward pass during ``run()``."""
    seen: set[bool] = set()
    hooks = [m.register_forward_hook(lambda m, i, o: seen.add(m.training)) for m in model.modules()]
    run()
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_runs_every_module_in_eval_mode_and_restores_the_mode(training):
    torch.manual_seed(0)
    model = MNIST1DCNN().train(training)
    model.get_submodule("fc1").train()  # a module left training under an eval-mode root
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    assert modes_during(model, lambda: evaluate(model, x, y)) == {False}
    assert {m.training for m in model.modules()} == {training}


def test_kl_divergence_evaluates_both_networks_in_eval_mode():
    torch.manual_seed(0)
    model, reference = MNIST1DCNN().train(), MNIST1DCNN().eval()
    x = torch.randn(16, 1, 40)
    seen = modes_during(model, lambda: modes_during(reference, lambda: kl_divergence(model, reference, x)))
    assert seen == {False}
    assert model.training and not reference.training


def test_a_network_in_eval_mode_is_not_switched():
    # switching recurses through every module: a policy's score would pay it twice per pass
    model = CountsSwitches(nn.Linear(4, 3)).eval()
    CountsSwitches.switches = 0
    evaluate(model, torch.randn(8, 4), torch.randint(0, 3, (8,)))
    assert CountsSwitches.switches == 0
    model.train()
    CountsSwitches.switches = 0
    evaluate(model, torch.randn(8, 4), torch.randint(0, 3, (8,)))
    assert CountsSwitches.switches == 2 and model.training  # eval() switches through train(False), then back
