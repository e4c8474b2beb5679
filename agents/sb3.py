"""stable-baselines3 agents as searchers."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rlprune.envs.parallel import RecordOutcomes, parallel_envs
from rlprune.envs.problem import Outcome
from rlprune.envs.prune_env import PruneEnv
from stable_baselines3 import A2C, DDPG, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.noise import NormalActionNoise

ALGORITHMS = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3, "ddpg": DDPG}
ON_POLICY = ("ppo", "a2c")  # their n_steps is per env; rlprune's is per update, over all envs


class ForwardRecords(KVWriter):
    """Hands each record SB3's logger dumps (losses, entropy, rewards) to ``log(values, timesteps)``."""

    def __init__(self, log: Callable[[dict[str, Any], int], None]) -> None:
        self.log = log

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        """Forward one record."""
        self.log(key_values, step)


def forward_records(agent: BaseAlgorithm, log: Callable[[dict[str, Any], int], None] | None) -> None:
    """Send ``agent``'s training records to ``log`` (a tracker), when given, and nowhere else.

    Set in every case: without a logger of its own, SB3 makes one that creates an empty
    ``SB3-<date>`` folder in the system temp folder on every ``learn``.
    """
    outputs = [ForwardRecords(log)] if log is not None else []
    agent.set_logger(Logger(folder=None, output_formats=outputs))


class StopWhenExhausted(BaseCallback):
    """Ends training as soon as the search problem has spent its evaluations."""

    def __init__(self, env: PruneEnv | RecordOutcomes) -> None:
        super().__init__()
        self.problem = env.problem  # the one problem, also behind parallel envs

    def _on_step(self) -> bool:
        return not self.problem.exhausted

    def _on_training_end(self) -> None:
        # the last update's record is only dumped with the next rollout, which a stop cuts short
        self.model.logger.dump(self.model.num_timesteps)


@dataclass
class SB3Search:
    """A stable-baselines3 algorithm trained on the env until the evaluations are spent.

    Args:
        algorithm: ``ppo``, ``a2c``, ``sac``, ``td3`` or ``ddpg``.
        hyperparameters: keyword arguments of the algorithm's constructor.
        action_noise: standard deviation of Gaussian exploration noise (TD3, DDPG).
        progress_bar: show SB3's progress bar.
        n_envs: envs played in parallel, one worker process each (:mod:`rlprune.envs.parallel`).
            PPO's and A2C's ``n_steps`` stays the number of transitions per update, split
            between the envs, so an update learns from as many episodes as with one env.
    """

    algorithm: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    action_noise: float | None = None
    progress_bar: bool = False
    n_envs: int = 1
    resume_from: Path | None = None  # a saved agent to go on training (rlprune.resume)
    log: Callable[[dict[str, Any], int], None] | None = None  # receives the agent's training records
    agent: Any = field(default=None, init=False, repr=False)  # the trained algorithm, after search

    def search(self, env: PruneEnv, seed: int) -> None:
        """Train until ``env.problem`` is exhausted."""
        kwargs = dict(self.hyperparameters)
        if self.action_noise is not None:
            size = env.action_size  # 3 entries when several patterns are searched
            kwargs["action_noise"] = NormalActionNoise(np.zeros(size), np.full(size, self.action_noise))
        if self.n_envs > 1 and self.algorithm in ON_POLICY and "n_steps" in kwargs:
            kwargs["n_steps"] = math.ceil(kwargs["n_steps"] / self.n_envs)
        played = parallel_envs(env, self.n_envs) if self.n_envs > 1 else env
        # parallel episodes end together, n_envs at a time: room for the last round; the callback stops
        rounds = math.ceil((env.problem.evaluations - env.problem.used) / self.n_envs)
        try:
            self._learn(played, seed, kwargs, steps=rounds * self.n_envs * len(env.space))
        finally:
            if played is not env:
                played.close()

    def _learn(self, env: PruneEnv | RecordOutcomes, seed: int, kwargs: dict[str, Any], steps: int) -> None:
        """Build (or reload) the agent on ``env``, the PruneEnv or its parallel twins, and train it."""
        algorithm = ALGORITHMS[self.algorithm]
        if self.resume_from is not None:
            self.agent = algorithm.load(self.resume_from, env=env, device="cpu")
        else:
            self.agent = algorithm("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **kwargs)
        forward_records(self.agent, self.log)
        self.agent.learn(
            total_timesteps=steps,
            callback=StopWhenExhausted(env),
            progress_bar=self.progress_bar,
            reset_num_timesteps=self.resume_from is None,
        )

    def ask(self, env: PruneEnv, budget: float) -> Outcome:
        """The trained agent's deterministic episode at ``budget`` (one evaluation)."""
        observation, _ = env.reset(options={"budget": budget})
        done = False
        while not done:
            action, _ = self.agent.predict(observation, deterministic=True)
            observation, _, done, _, info = env.step(action)
        return info["outcome"]
