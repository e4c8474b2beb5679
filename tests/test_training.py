"""Evaluation in eval mode (every module evaluates, and each model's mode is back after), and
training towards a teacher's outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rlprune.models import MNIST1DCNN
from rlprune.training import Distillation, TrainSettings, evaluate, kl_divergence, train


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


@pytest.mark.parametrize("shape", [(8,), (4, 3)], ids=["classifier", "language model"])
def test_distillation_mixes_the_label_loss_with_the_teachers_softened_kl(shape):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5)).train()  # dropout: must run in eval mode
    x, y, logits = torch.randn(*shape, 6), torch.randint(0, 5, shape), torch.randn(*shape, 5)
    t, weight = 3.0, 0.25
    p = (teacher[0](x) / t).softmax(-1).reshape(-1, 5)  # per sample or token
    q = (logits / t).softmax(-1).reshape(-1, 5)
    kl = (p * (p.log() - q.log())).sum(1).mean()
    ce = F.cross_entropy(logits.reshape(-1, 5), y.reshape(-1))
    loss = Distillation(teacher, weight, t).loss(logits, x, y)
    torch.testing.assert_close(loss, (1 - weight) * ce + weight * t * t * kl)
    assert teacher.training  # its mode is back


def test_distillation_trains_towards_the_teacher_and_leaves_it_alone():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    x = torch.randn(256, 6)
    y = torch.randint(0, 5, (256,))  # labels the teacher knows nothing of
    before = [p.detach().clone() for p in teacher.parameters()]
    settings = TrainSettings(epochs=30, lr=1e-2, batch_size=64, weight_decay=0.0)
    kls = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(1)
        student = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 5))
        train(student, x, y, settings, seed=0, distill=Distillation(teacher, weight, 2.0) if weight else None)
        kls[weight] = kl_divergence(student, teacher, x)
    assert kls[1.0] < 0.25 * kls[0.0]
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    assert all(p.grad is None for p in teacher.parameters())
