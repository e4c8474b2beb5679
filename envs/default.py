"""What ``gym.make("rlprune/Prune-v0")`` builds: a given search problem, or the default one.

Without a problem, the env is the search of ``python -m rlprune`` with the same ``overrides``:
the app's config composed by Hydra, its target (data and dense model, trained once into the
rlprune cache), its hardware, search space, budget, reward split and agent's wall::

    env = gym.make("rlprune/Prune-v0")                                  # the default problem
    env = gym.make("rlprune/Prune-v0", overrides=["hardware=a100"])   # any override of the app
    env = gym.make("rlprune/Prune-v0", problem=problem, sensitivity=s)  # your own problem
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig
from rlprune.envs.features import measure_sensitivity
from rlprune.envs.problem import SearchProblem
from rlprune.envs.prune_env import PruneEnv

from rlprune.api import describe, make_space, resolve_budget, scorer, train_target
from rlprune.config import plain, validate
from rlprune.device import resolve_device
from rlprune.errors import ConfigError
from rlprune.hardware import build_latency_model

CONFIG_MODULE = "rlprune.conf"
"""The package that holds the app's config (``config.yaml`` and its groups)."""


def default_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The app's config with ``overrides`` (Hydra's syntax), as ``python -m rlprune`` composes it.

    Raises:
        ConfigError: for an override Hydra cannot apply (the message names it).
    """
    try:
        with initialize_config_module(version_base="1.3", config_module=CONFIG_MODULE):
            return compose(config_name="config", overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(f"overrides={list(overrides)} cannot be applied: {exc}") from exc


def default_problem(cfg: DictConfig) -> tuple[SearchProblem, np.ndarray]:
    """The search problem of ``cfg`` and its layers' sensitivity, as :func:`rlprune.api.run` builds them.

    The space and budget are checked before the dense model is trained (or read from the cache).
    """
    validate(cfg)
    hardware = build_latency_model(plain(cfg.hardware))
    model, splits, layers, searched = describe(cfg)
    space = make_space(cfg, model, splits.train_x[:1], layers, searched, hardware)
    budget = resolve_budget(cfg.budget.latency, cfg.budget.auto_share, space)
    device = resolve_device(cfg.device)
    target = train_target(cfg, model.to(device), splits.to(device), layers, searched)
    space, evaluator = scorer(cfg, target, hardware, space)
    problem = SearchProblem(space, evaluator, budget.latency, cfg.search.evaluations, cfg.reward.metric)
    return problem, measure_sensitivity(space, evaluator)


def make_env(
    problem: SearchProblem | None = None,
    sensitivity: np.ndarray | Callable[[], np.ndarray] | None = None,
    overrides: Sequence[str] = (),
    **kwargs: Any,
) -> PruneEnv:
    """The env ``rlprune/Prune-v0``: over ``problem`` when given, else over the default problem.

    Args:
        problem: a search problem; ``None`` builds the one of the app's config with ``overrides``.
        sensitivity: the problem's per-step sensitivity, or the function that measures it
            (required with ``problem``).
        overrides: Hydra overrides of the app's config (e.g. ``["dense.epochs=2"]``); only
            without ``problem``.
        kwargs: further :class:`PruneEnv` arguments (``baseline_momentum``, ``wall``,
            ``budgets``); without ``problem`` they default to the config's.

    Raises:
        TypeError: for a problem without its sensitivity (or the reverse), or overrides beside
            a problem.
        ConfigError, BudgetError, ModelError, DataError: as ``python -m rlprune`` would refuse
            the config.
    """
    if (problem is None) != (sensitivity is None) or (problem is not None and overrides):
        raise TypeError(
            "rlprune/Prune-v0 takes either problem= with sensitivity=, or neither (the default "
            "problem, changed by overrides=[...])"
        )
    if problem is not None:
        return PruneEnv(problem, sensitivity, **kwargs)
    cfg = default_config(overrides)
    problem, sensitivity = default_problem(cfg)
    settings = {"baseline_momentum": cfg.reward.baseline_momentum, "wall": cfg.agent.get("wall", "band")}
    return PruneEnv(problem, sensitivity, **{**settings, **kwargs})
