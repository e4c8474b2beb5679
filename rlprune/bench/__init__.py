"""Benchmarks: scripts that print a table last and write the same numbers as JSON.

Run one with ``python -m rlprune.bench <name> [options]``; ``--help`` lists the options.
Figures are compared side by side within one run, because these machines are shared and noisy.
"""

from omegaconf import DictConfig

BENCHMARKS = {
    "search": "rlprune.bench.search",
    "sweep": "rlprune.bench.sweep",
    "masks": "rlprune.bench.masks",
    "latency": "rlprune.bench.latency",
    "soak": "rlprune.bench.soak",
}


def compose_config(overrides: list[str]) -> DictConfig:
    """rlprune's config with Hydra ``overrides``, as ``python -m rlprune`` would see it."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="rlprune.conf"):
        return compose(config_name="config", overrides=overrides)
