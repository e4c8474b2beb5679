"""Searchers: stable-baselines3 agents and baselines, each a config choice (``agent=...``).

A searcher has one method, ``search(env, seed)``, which plays the env (or scores policies
through ``env.problem``) until the problem's evaluations are spent. The best policy is kept
by the problem, never by the searcher.

An ``agent`` node names a searcher of this package (``name: ppo``), or any searcher by its
import path (``_target_: my_pkg.MySearch``: a class or factory called with the node's other
keys, as Hydra instantiates a ``model``); the short names are aliases of the classes here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from hydra.utils import get_object
from rlprune.agents.anchors import AnchorSearch
from rlprune.agents.baselines import GreedySearch, RandomSearch, TPESearch, UniformSearch
from rlprune.agents.evolution import EvolutionSearch
from rlprune.agents.sb3 import ALGORITHMS, ON_POLICY, SB3Search
from rlprune.envs.prune_env import PruneEnv

from rlprune.errors import ConfigError

__all__ = [
    "SEARCHERS",
    "AnchorSearch",
    "EvolutionSearch",
    "GreedySearch",
    "RandomSearch",
    "SB3Search",
    "Searcher",
    "TPESearch",
    "UniformSearch",
    "check_agent",
    "make_searcher",
    "searcher_name",
]

BASELINES = {"uniform": UniformSearch, "random": RandomSearch, "greedy": GreedySearch, "tpe": TPESearch}
ANCHORS = ("amc", "haq")  # the published RL searchers, reproduced on SB3's DDPG
EVOLUTION = "evolution"  # EvoPress-style level-switch evolution, settings from its config node
SEARCHERS = sorted([*ALGORITHMS, *BASELINES, *ANCHORS, EVOLUTION])
PARALLEL = (*ALGORITHMS, EVOLUTION)  # the searchers that score in worker processes (agent.n_envs)
AGENT_SETTINGS = ("_target_", "name", "wall", "n_envs")
"""Keys of the ``agent`` node that rlprune reads; a ``_target_``'s other keys are its arguments."""


class Searcher(Protocol):
    """Anything that spends a search problem's evaluations."""

    def search(self, env: PruneEnv, seed: int) -> None:
        """Search until ``env.problem.exhausted``."""


def check_agent(cfg: Mapping[str, Any]) -> None:
    """Fail fast on an ``agent`` node that names no searcher, before any training.

    Raises:
        ConfigError: for an unknown ``name``, a ``_target_`` that cannot be imported, or
            ``n_envs`` other than 1 for a searcher that does not play parallel envs.
    """
    if cfg.get("_target_"):
        _locate(cfg["_target_"])
    elif cfg.get("name") not in SEARCHERS:
        raise ConfigError(
            f"agent.name={cfg.get('name')!r} is not allowed: one of {SEARCHERS}, "
            "or set agent._target_ to your searcher's import path (e.g. my_pkg.MySearch)"
        )
    check_n_envs(cfg)


def check_n_envs(cfg: Mapping[str, Any]) -> None:
    """Refuse an ``agent.n_envs`` that is not a count, or above 1 for a searcher of one env.

    Raises:
        ConfigError: naming ``agent.n_envs`` and what is allowed.
    """
    n_envs = cfg.get("n_envs", 1)
    if not isinstance(n_envs, int) or isinstance(n_envs, bool) or n_envs < 1:
        raise ConfigError(
            f"agent.n_envs={n_envs!r} is not allowed: an integer >= 1 (envs played in parallel)"
        )
    if n_envs > 1 and cfg.get("name") not in PARALLEL:
        raise ConfigError(
            f"agent.n_envs={n_envs} needs a stable-baselines3 agent ({', '.join(sorted(ALGORITHMS))}) "
            f"or {EVOLUTION}; {searcher_name(cfg)} scores in one process: set agent.n_envs=1"
        )


def searcher_name(cfg: Mapping[str, Any]) -> str:
    """The agent's name in reports and W&B: ``name``, else the class name of ``_target_``."""
    return str(cfg.get("name") or str(cfg["_target_"]).rsplit(".", 1)[-1])


def make_searcher(
    cfg: Mapping[str, Any],
    log: Callable[[dict[str, Any], int], None] | None = None,
) -> Searcher:
    """The searcher an ``agent`` config node names; an RL agent sends its training records to ``log``.

    Raises:
        ConfigError: for an unknown agent name, or a ``_target_`` that cannot be imported,
            rejects its arguments or builds no searcher.
    """
    check_n_envs(cfg)
    if cfg.get("_target_"):
        return _build_target(cfg)
    name = cfg["name"]
    if name in BASELINES:
        return BASELINES[name]()
    if name in ANCHORS:
        settings = {k: v for k, v in cfg.items() if k not in AGENT_SETTINGS}
        return AnchorSearch(**settings, log=log)
    if name == EVOLUTION:
        settings = {k: v for k, v in cfg.items() if k not in AGENT_SETTINGS}
        try:
            return EvolutionSearch(**settings, n_envs=cfg.get("n_envs", 1))
        except TypeError as exc:
            raise ConfigError(
                f"agent=evolution takes offspring, fidelities, survivors and switches: {exc}"
            ) from exc
    if name in ALGORITHMS:
        warm_start, refine = cfg.get("warm_start", False), cfg.get("refine", 0.0)
        profile = cfg.get("profile", 0.0)
        if not isinstance(warm_start, bool):
            raise ConfigError(f"agent.warm_start={warm_start!r} is not allowed: true or false")
        for key, share, meaning in (
            ("refine", refine, "0: the agent spends them all"),
            ("profile", profile, "0: the warm start never profiles"),
        ):
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share < 1:
                raise ConfigError(
                    f"agent.{key}={share!r} is not allowed: a share of the evaluations in [0, 1) ({meaning})"
                )
        if warm_start and name not in ON_POLICY:
            raise ConfigError(
                f"agent.warm_start=true starts a Gaussian policy's mean action (ppo, a2c); "
                f"{name}'s actor squashes its action: set agent.warm_start=false"
            )
        return SB3Search(
            algorithm=name,
            hyperparameters=dict(cfg.get("hyperparameters") or {}),
            action_noise=cfg.get("action_noise"),
            n_envs=cfg.get("n_envs", 1),
            warm_start=warm_start,
            profile=float(profile),
            refine=float(refine),
            log=log,
        )
    raise ConfigError(f"unknown agent {name!r}; valid: {SEARCHERS}")


def _locate(target: str) -> Callable[..., Any]:
    """The class or factory at import path ``target`` (``agent._target_``)."""
    try:
        found = get_object(target)
    except Exception as exc:  # Hydra wraps the import error; say which key holds the path
        raise ConfigError(
            f"agent._target_={target!r} cannot be imported ({exc}); name a searcher class or factory "
            "importable from here (e.g. my_pkg.MySearch)"
        ) from exc
    if not callable(found):
        raise ConfigError(f"agent._target_={target!r} is not a class or factory")
    return found


def _build_target(cfg: Mapping[str, Any]) -> Searcher:
    """The searcher of ``_target_``, called with the node's keys other than rlprune's own."""
    target = cfg["_target_"]
    arguments = {k: v for k, v in cfg.items() if k not in AGENT_SETTINGS}
    try:
        searcher = _locate(target)(**arguments)
    except TypeError as exc:
        raise ConfigError(
            f"agent._target_={target!r} rejects its arguments {sorted(arguments)}: {exc}"
        ) from exc
    if not callable(getattr(searcher, "search", None)):
        raise ConfigError(
            f"agent._target_={target!r} built a {type(searcher).__name__}, "
            "which has no search(env, seed) method"
        )
    return searcher
