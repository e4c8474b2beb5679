"""Searchers: stable-baselines3 agents and baselines, each a config choice (``agent=...``).

A searcher has one method, ``search(env, seed)``, which plays the env (or scores policies
through ``env.problem``) until the problem's evaluations are spent. The best policy is kept
by the problem, never by the searcher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from rlprune.agents.anchors import AnchorSearch
from rlprune.agents.baselines import GreedySearch, RandomSearch, TPESearch, UniformSearch
from rlprune.agents.sb3 import ALGORITHMS, SB3Search
from rlprune.envs.prune_env import PruneEnv

from rlprune.errors import ConfigError

__all__ = [
    "SEARCHERS",
    "AnchorSearch",
    "GreedySearch",
    "RandomSearch",
    "SB3Search",
    "Searcher",
    "TPESearch",
    "UniformSearch",
    "make_searcher",
]

BASELINES = {"uniform": UniformSearch, "random": RandomSearch, "greedy": GreedySearch, "tpe": TPESearch}
ANCHORS = ("amc", "haq")  # the published RL searchers, reproduced on SB3's DDPG
SEARCHERS = sorted([*ALGORITHMS, *BASELINES, *ANCHORS])


class Searcher(Protocol):
    """Anything that spends a search problem's evaluations."""

    def search(self, env: PruneEnv, seed: int) -> None:
        """Search until ``env.problem.exhausted``."""


def make_searcher(
    cfg: Mapping[str, Any],
    progress_bar: bool = False,
    log: Callable[[dict[str, Any], int], None] | None = None,
) -> Searcher:
    """The searcher an ``agent`` config node names; an RL agent sends its training records to ``log``.

    Raises:
        ConfigError: for an unknown agent name.
    """
    name = cfg["name"]
    if name in BASELINES:
        return BASELINES[name]()
    if name in ANCHORS:
        settings = {k: v for k, v in cfg.items() if k not in ("name", "wall")}
        return AnchorSearch(**settings, progress_bar=progress_bar, log=log)
    if name in ALGORITHMS:
        return SB3Search(
            algorithm=name,
            hyperparameters=dict(cfg.get("hyperparameters") or {}),
            action_noise=cfg.get("action_noise"),
            progress_bar=progress_bar,
            log=log,
        )
    raise ConfigError(f"unknown agent {name!r}; valid: {SEARCHERS}")
