"""Benchmarks: scripts that print a table last and write the same numbers as JSON.

Run one with ``python -m rlprune.bench <name> [options]``; ``--help`` lists the options.
Figures are compared side by side within one run, because these machines are shared and noisy.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from rlprune.api import Target
    from rlprune.finetune import FinetuneSettings
    from rlprune.hardware import LatencyModel
    from rlprune.layers import FilterCoupling
    from rlprune.policy import Policy
    from rlprune.training import Score

BENCHMARKS = {
    "search": "rlprune.bench.search",
    "reward": "rlprune.bench.reward",
    "sweep": "rlprune.bench.sweep",
    "masks": "rlprune.bench.masks",
    "latency": "rlprune.bench.latency",
    "soak": "rlprune.bench.soak",
    "gpu": "rlprune.bench.gpu",
    "optimum": "rlprune.bench.optimum",
    "finetune": "rlprune.bench.finetune",
}


# a benchmark's searches log nothing and draw no progress bar
QUIET = ["wandb.mode=disabled", "progress_bar=false"]


def load(cfg: DictConfig) -> tuple[Target, LatencyModel]:
    """The trained target (dense model cached) and the latency model of a composed config."""
    from omegaconf import OmegaConf

    from rlprune.api import load_target
    from rlprune.hardware import build_latency_model

    return load_target(cfg), build_latency_model(OmegaConf.to_container(cfg.hardware, resolve=True))


def finetune_settings(cfg: DictConfig, **changes: Any) -> FinetuneSettings:
    """The finetune settings of ``cfg``: its ``finetune`` node with ``changes`` to its keys, at
    its hardware's ``channel_multiple``."""
    from omegaconf import OmegaConf

    from rlprune.finetune import FinetuneSettings

    node = OmegaConf.to_container(cfg.finetune, resolve=True)
    return FinetuneSettings.from_config({**node, **changes}, cfg.hardware.get("channel_multiple", 1))


def finetuned_test_score(
    cfg: DictConfig, target: Target, policy: Policy, couplings: dict[str, FilterCoupling], epochs: int
) -> Score:
    """Test score of ``policy`` after the configured finetune cut to ``epochs`` epochs: the
    short finetune every benchmark gives the policies it compares. With no epochs, the network
    the search scored (:func:`rlprune.api.searched_network`), as a run's test before finetune;
    with ``finetune.reconstruct``, the finetune stage's one-shot reconstruction of it."""
    from rlprune.api import finetune_target, searched_network, test_score

    if epochs == 0 and not cfg.finetune.reconstruct:
        return test_score(searched_network(cfg, target, policy, couplings), target.splits)
    tuned = finetune_target(cfg, target, policy, couplings, finetune_settings(cfg, epochs=epochs))
    return test_score(tuned.model, target.splits)


def finetuned_test_accuracy(
    cfg: DictConfig, target: Target, policy: Policy, couplings: dict[str, FilterCoupling], epochs: int
) -> float:
    """The accuracy of :func:`finetuned_test_score`."""
    return finetuned_test_score(cfg, target, policy, couplings, epochs).accuracy


def machine() -> str:
    """The machine a benchmark ran on: the CPU (:func:`~rlprune.hardware.measured.cpu_model`;
    each CPU trains its own dense models), torch and its thread count (absolute times need it)."""
    import torch

    from rlprune.hardware.measured import cpu_model

    return (
        f"{cpu_model()} ({platform.machine()}), torch {torch.__version__}, threads={torch.get_num_threads()}"
    )
