"""Helpers shared by the tests: configs and a small search env."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from rlprune.envs import PolicyEvaluator, PruneEnv, SearchProblem, SpaceSettings, build_space
from rlprune.envs.features import measure_sensitivity

from rlprune.hardware import build_latency_model
from rlprune.layers import discover_layers
from rlprune.models import MNIST1DCNN

CONF = Path(__file__).resolve().parents[1] / "conf"


def hardware_config(name: str) -> dict:
    """A hardware config group file as plain data."""
    return OmegaConf.to_container(OmegaConf.load(CONF / "hardware" / f"{name}.yaml"), resolve=True)


def compose_config(*overrides: str) -> DictConfig:
    """The app's config with ``overrides``, as ``python -m rlprune`` would see it."""
    with initialize_config_module(version_base="1.3", config_module="rlprune.conf"):
        return compose(config_name="config", overrides=list(overrides))


def make_env(
    budget: float = 0.5,
    evaluations: int = 1000,
    pattern: str | list[str] = "nm",
    hardware: str = "a100",
    samples: int = 64,
    wall: str = "band",
    metric: str = "accuracy",
) -> PruneEnv:
    """An env over an untrained MNIST-1D CNN scored on random data: fast, for mechanics only."""
    torch.manual_seed(0)
    model = MNIST1DCNN().eval()
    x = torch.randn(samples, 1, 40)
    y = torch.randint(0, 10, (samples,))
    layers = discover_layers(model, x)
    device = build_latency_model(hardware_config(hardware))
    settings = SpaceSettings(pattern, levels=8, min_density=0.05, nm_pad=False)
    space = build_space(layers, layers, device, settings)
    evaluator = PolicyEvaluator(model, [lay.name for lay in layers], x, y, reference=metric == "kl")
    problem = SearchProblem(space, evaluator, budget, evaluations, metric)
    return PruneEnv(problem, measure_sensitivity(space, evaluator), wall=wall)


def record(env: PruneEnv) -> list:
    """A list that collects every outcome the env's problem evaluates from now on."""
    outcomes: list = []
    env.problem.listeners.append(lambda outcome, improved: outcomes.append(outcome))
    return outcomes


def shift_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Give every batch norm shifts that would keep a pruned channel alive unless it is silenced."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            torch.nn.init.uniform_(module.bias, 0.5, 1.0)
            torch.nn.init.uniform_(module.running_mean, -0.5, 0.5)
    return model


def printable_report(**extra: object) -> dict:
    """The fewest keys of a run's report that :func:`rlprune.report.print_report` prints, plus ``extra``."""
    accuracy = dict.fromkeys(
        ("dense_test", "dense_reward", "search_best_reward", "pruned_test_before_finetune"), 0.4
    )
    return {
        "budget": 0.5,
        "latency": 0.4,
        "size_ratio": 0.3,
        "hardware": "arm_cpu",
        "accuracy": {**accuracy, "pruned_test_after_finetune": 0.45},
        "search": {"agent": "ppo", "evaluations": 10, "seconds": 1.0},
        "finetune": {"mask": "policy"},
        "layers": [],
        **extra,
    }


class RepeatedBlock(torch.nn.Module):
    """A Linear block that the network calls ``times`` times, its weights shared (as ALBERT's
    layers), between a stem and a neck and head; ``unrolled``: ``times`` blocks of their own
    instead. The neck's filters can go (the block's cannot: it reads its own output)."""

    def __init__(self, times: int = 3, width: int = 32, unrolled: bool = False) -> None:
        super().__init__()
        self.stem, self.neck = torch.nn.Linear(16, width), torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, 4)
        count = times if unrolled else 1
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(count))
        self.times = times

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        for i in range(self.times):
            x = torch.relu(self.blocks[i % len(self.blocks)](x))
        return self.head(torch.relu(self.neck(x)))
