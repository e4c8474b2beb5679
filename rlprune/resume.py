"""Resumable search: the run folder keeps a checkpoint of the search while it runs.

Every ``search.checkpoint_every`` evaluations, ``<run>/checkpoint/`` gets the search's state
(evaluations spent, the best policy) and, for stable-baselines3 agents, the agent itself.
After an interruption (Ctrl-C, SIGTERM from a cluster, a crash), the same command in the same
folder with ``resume=true`` continues from there: the evaluations already spent count, the
best policy is kept, and an SB3 agent goes on learning from its saved weights (other
searchers start over with the evaluations left). A checkpoint made under another config is
refused, since its policies would not mean the same thing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlprune.envs.problem import Outcome, SearchProblem
from rlprune.errors import ConfigError
from rlprune.io import write_atomic, write_json_atomic
from rlprune.policy import Policy

# keys a resumed run may change: they do not change what a policy scores (the finetune runs
# after the search, on its best policy)
FREE_KEYS = (
    "resume",
    "progress_bar",
    "wandb",
    "search.evaluations",
    "search.checkpoint_every",
    "agent.n_envs",
    "finetune",
)


def fingerprint(cfg: DictConfig) -> str:
    """A hash of everything in ``cfg`` that decides what the search's policies score."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in FREE_KEYS:
        *parents, leaf = key.split(".")
        node = data
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SearchCheckpoint:
    """The checkpoint folder of one run.

    Args:
        folder: where it lives (``<run>/checkpoint``).
        config: the run's config; its :func:`fingerprint` is stored and checked on resume.
    """

    def __init__(self, folder: Path, config: DictConfig) -> None:
        self.folder = Path(folder)
        self.fingerprint = fingerprint(config)

    @property
    def state_path(self) -> Path:
        """The search's state (JSON)."""
        return self.folder / "search.json"

    @property
    def agent_path(self) -> Path:
        """The SB3 agent (its own zip format)."""
        return self.folder / "agent.zip"

    def save(self, problem: SearchProblem, agent: Any | None = None) -> None:
        """Write the agent, then the state; each file atomically."""
        if agent is not None:
            write_atomic(self.agent_path, agent.save)
        state = {
            "fingerprint": self.fingerprint,
            "used": problem.used,
            "scored": problem.scored,
            "agent": agent is not None,
            "best": [
                {**asdict(outcome), "policy": outcome.policy.to_dict()}
                for outcome in problem.best_by_budget.values()
            ],
        }
        write_json_atomic(self.state_path, state)

    def restore(self, problem: SearchProblem) -> Path | None:
        """Put the saved state into ``problem``; return the agent's path when one was saved.

        Raises:
            ConfigError: when there is no checkpoint, it is unreadable, or another config made it.
        """
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"resume=true, but {self.folder} holds no checkpoint; run without resume=true"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the checkpoint {self.state_path} is unreadable ({exc}); run without resume=true"
            ) from exc
        if state.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"the checkpoint in {self.folder} was made with another config (only "
                f"{', '.join(FREE_KEYS)} may change on resume); rerun with the interrupted run's overrides"
            )
        problem.used = min(state["used"], problem.evaluations)
        problem.scored = int(state.get("scored", problem.used))
        for saved in state["best"]:
            outcome = Outcome(**{**saved, "policy": Policy.from_dict(saved["policy"])})
            problem.best_by_budget[outcome.budget] = outcome
        return self.agent_path if state["agent"] and self.agent_path.exists() else None
