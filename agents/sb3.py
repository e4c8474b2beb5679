"""stable-baselines3 agents as searchers."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rlprune.agents.baselines import best_uniform
from rlprune.agents.evolution import EvolutionSearch, spend_rest
from rlprune.agents.profile import profile_price, profiled_policy
from rlprune.envs.parallel import RecordOutcomes, one_lead_thread, parallel_envs
from rlprune.envs.problem import Outcome
from rlprune.envs.prune_env import Demonstration, PruneEnv
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
    """Ends training as soon as the search problem cannot pay for another full evaluation (it
    spent them, or a fraction is left), or has spent ``until`` of them."""

    def __init__(self, env: PruneEnv | RecordOutcomes, until: float | None = None) -> None:
        super().__init__()
        self.problem = env.problem  # the one problem, also behind parallel envs
        self.until = until

    def _on_step(self) -> bool:
        spent = self.until is not None and self.problem.used >= self.until - 1e-9
        # after a profile's partial scores, less than a whole episode's evaluation may be left
        return self.problem.affords() and not spent

    def _on_training_end(self) -> None:
        # the last update's record is only dumped with the next rollout, which a stop cuts short
        self.model.logger.dump(self.model.num_timesteps)


def imitate(agent: BaseAlgorithm, demonstration: Demonstration, updates: int = 500) -> None:
    """Fit ``agent``'s mean action to the demonstration's actions at its observations (behaviour
    cloning of the actor alone: the critic and the exploration width stay as they start)."""
    policy = agent.policy
    observations = torch.as_tensor(demonstration.observations, device=policy.device)
    actions = torch.as_tensor(demonstration.actions, device=policy.device)
    actor = [*policy.mlp_extractor.policy_net.parameters(), *policy.action_net.parameters()]
    optimiser = torch.optim.Adam(actor, lr=1e-3)
    for _ in range(updates):
        error = (policy.get_distribution(observations).distribution.mean - actions).pow(2).mean()
        optimiser.zero_grad()
        error.backward()
        optimiser.step()


@dataclass
class SB3Search:
    """A stable-baselines3 algorithm trained on the env until the evaluations are spent.

    Args:
        algorithm: ``ppo``, ``a2c``, ``sac``, ``td3`` or ``ddpg``.
        hyperparameters: keyword arguments of the algorithm's constructor.
        action_noise: standard deviation of Gaussian exploration noise (TD3, DDPG).
        n_envs: envs played in parallel, one worker process each (:mod:`rlprune.envs.parallel`).
            PPO's and A2C's ``n_steps`` stays the number of transitions per update, split
            between the envs, so an update learns from as many episodes as with one env.
        warm_start: first score the uniform policies (one evaluation per bit-width,
            :func:`~rlprune.agents.baselines.uniform_policies`) and start the policy's mean
            action at the best of them, so exploration begins around a policy known to be good
            instead of the middle of the action box, unless the middle's own episode (one more
            evaluation) scores at least as well (PPO and A2C).
        profile: with ``warm_start``, the largest share of the evaluations that a sensitivity
            profile and its allocation (:mod:`rlprune.agents.profile`) may cost; where they cost
            no more and its policy scores better than the other starts, the agent first imitates
            that policy's episode. 0 never profiles.
        refine: the share of the evaluations kept for the end, where an EvoPress-style
            evolution (:meth:`~rlprune.agents.evolution.EvolutionSearch.evolve`) refines the
            best policy the agent found by level switches: the agent proposes, evolution refines.
    """

    algorithm: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    action_noise: float | None = None
    n_envs: int = 1
    warm_start: bool = False
    profile: float = 0.0
    refine: float = 0.0
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
        start = self._warm_start(env) if self.warm_start and self.resume_from is None else None
        problem = env.problem
        until = problem.evaluations - round(self.refine * problem.evaluations)
        played = parallel_envs(env, self.n_envs) if self.n_envs > 1 else env
        # parallel episodes end together, n_envs at a time: room for the last round; the callback stops
        rounds = math.ceil(max(until - problem.used, 0) / self.n_envs)
        try:
            with one_lead_thread() if played is not env else nullcontext():
                self._learn(played, seed, kwargs, rounds * self.n_envs * len(env.space), until, start)
            if self.refine and not problem.exhausted:  # parallel envs' workers score its offspring
                best = problem.best
                parent = None if best is None else env.space.picks_of(best.policy)
                value = -np.inf if best is None else problem.value(best)
                EvolutionSearch().evolve(env, parent, value, np.random.default_rng(seed))
            if not problem.exhausted and problem.best is not None:  # a profile's fraction is left
                spend_rest(problem, env.space.picks_of(problem.best.policy))
        finally:
            if played is not env:
                played.close()

    def _warm_start(self, env: PruneEnv) -> np.ndarray | Demonstration | None:
        """Score the candidate starts and return where a new agent begins: the action that wishes
        for the best uniform policy, ``None`` (the action box's centre) when the centre's episode
        scores at least as well, or the profiled policy's episode to imitate when that scores
        better still; ``None`` too when no uniform policy fits."""
        problem = env.problem
        best, value = best_uniform(problem)
        if best is None:
            return None
        start: np.ndarray | Demonstration | None = env.action_of(best)
        # near the floor the only uniform policy that fits may be poor; the centre, walled, is not
        if problem.affords() and (centre := problem.value(env.play(np.zeros(env.action_size)))) >= value:
            start, value = None, centre
        # one step has nothing to allocate between steps, and its episode would score while a
        # profile's fraction of an evaluation is left; the price adds the allocated policy's episode
        price = profile_price(problem) + 1 if self.profile and len(env.space) > 1 else math.inf
        if price <= self.profile * problem.evaluations and problem.affords(price):
            picks = profiled_policy(problem)
            if picks is not None and problem.value((shown := env.demonstrate(picks)).outcome) > value:
                start = shown
        return start

    def _learn(
        self,
        env: PruneEnv | RecordOutcomes,
        seed: int,
        kwargs: dict[str, Any],
        steps: int,
        until: float,
        start: np.ndarray | Demonstration | None = None,
    ) -> None:
        """Build (or reload) the agent on ``env``, the PruneEnv or its parallel twins, and train it
        until ``until`` evaluations are spent; a new agent's mean action starts at ``start``, or
        imitates it where it is a demonstration."""
        algorithm = ALGORITHMS[self.algorithm]
        if self.resume_from is not None:
            self.agent = algorithm.load(self.resume_from, env=env, device="cpu")
        else:
            self.agent = algorithm("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **kwargs)
        if isinstance(start, Demonstration):
            imitate(self.agent, start)
        elif start is not None:  # the action head's weights start near 0 (gain 0.01): its bias is the mean
            with torch.no_grad():
                self.agent.policy.action_net.bias.copy_(torch.as_tensor(start))
        forward_records(self.agent, self.log)
        self.agent.learn(
            total_timesteps=steps,
            callback=StopWhenExhausted(env, until),
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
