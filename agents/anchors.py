"""AMC and HAQ, the RL searchers rlprune must beat, as stable-baselines3 DDPG with their settings.

Both papers train DDPG (He et al. 2018, AMC; Wang et al. 2019, HAQ) the same way, and differ
from SB3's defaults in four places, each reproduced here:

* exploration is a truncated normal around the actor's action, whose width decays by a
  factor per episode after the warm-up (:class:`TruncatedNormalDDPG`);
* the warm-up plays uniformly random episodes only (SB3's ``learning_starts``);
* every transition of an episode is stored with the episode's final reward, and sampled
  rewards are centred on a moving average of batch means (:class:`EpisodeRewardBuffer`);
* the actor learns ten times slower than the critic.

What tells them apart is the wall (``agent.wall``): AMC clips each action so the budget stays
reachable; HAQ lets the agent choose and, after the episode, lowers bits from the last layer
back until the budget holds (:meth:`SearchSpace.lower_until_within`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rlprune.agents.sb3 import StopWhenExhausted, forward_records
from rlprune.envs.prune_env import PruneEnv
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.common.vec_env import VecNormalize


class EpisodeRewardBuffer(ReplayBuffer):
    """A replay buffer that gives each transition its episode's final reward, centred on a baseline.

    Args:
        baseline_momentum: weight of each sampled batch's mean reward in the moving average
            subtracted from sampled rewards (AMC's 0.5); ``None`` leaves rewards as stored.
        *args, **kwargs: those of :class:`ReplayBuffer` (one env only).
    """

    def __init__(self, *args: Any, baseline_momentum: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.n_envs != 1:
            raise ValueError("EpisodeRewardBuffer serves one env")
        self.baseline_momentum = baseline_momentum
        self.baseline: float | None = None
        self._episode: list[int] = []  # buffer positions of the running episode

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Store a transition; when it ends the episode, write its reward into the whole episode."""
        self._episode.append(self.pos)
        super().add(obs, next_obs, action, reward, done, infos)
        if done[0]:
            self.rewards[self._episode, 0] = reward[0]
            self._episode = []

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """A batch whose rewards have the moving average of batch means subtracted."""
        batch = super().sample(batch_size, env)
        if self.baseline_momentum is None:
            return batch
        mean = float(batch.rewards.mean())
        previous = mean if self.baseline is None else self.baseline
        self.baseline = previous + self.baseline_momentum * (mean - previous)
        return batch._replace(rewards=batch.rewards - self.baseline)


class TruncatedNormalDDPG(DDPG):
    """DDPG exploring by a truncated normal around the actor's action (AMC, HAQ).

    Args:
        noise: initial standard deviation, in units of the action range (AMC and HAQ: 0.5).
        noise_decay: factor applied to it per episode after the warm-up.
        warmup_episodes: episodes of uniformly random actions before learning.
        actor_learning_rate: the actor's rate; ``learning_rate`` is the critic's.
        *args, **kwargs: those of :class:`DDPG`.
    """

    def __init__(
        self,
        *args: Any,
        noise: float,
        noise_decay: float,
        warmup_episodes: int,
        actor_learning_rate: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.noise, self.noise_decay = noise, noise_decay
        self.warmup_episodes = warmup_episodes
        self.actor_learning_rate = actor_learning_rate
        self.noise_rng = np.random.default_rng(self.seed)

    def _sample_action(
        self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.num_timesteps < learning_starts:
            return super()._sample_action(learning_starts, None, n_envs)
        mean, _ = self.predict(self._last_obs, deterministic=True)
        low, high = self.action_space.low, self.action_space.high
        decays = max(0, self._episode_num - self.warmup_episodes)
        sigma = self.noise * (high - low) * self.noise_decay**decays
        action = truncnorm.rvs(
            (low - mean) / sigma,
            (high - mean) / sigma,
            loc=mean,
            scale=sigma,
            size=mean.shape,
            random_state=self.noise_rng,
        ).astype(np.float32)
        return action, self.policy.scale_action(action)

    def _update_learning_rate(self, optimizers: list[torch.optim.Optimizer] | torch.optim.Optimizer) -> None:
        super()._update_learning_rate(optimizers)
        update_learning_rate(self.actor.optimizer, self.actor_learning_rate)


@dataclass
class AnchorSearch:
    """AMC's or HAQ's DDPG trained on the env until the evaluations are spent.

    Args:
        warmup_episodes: random episodes before learning (AMC 100, HAQ 20).
        noise: initial exploration width, a share of the action range (0.5).
        noise_decay: per-episode decay of the width (AMC 0.95, HAQ 0.99).
        replay_per_layer: replay buffer size per searched layer (AMC 100, HAQ 128).
        baseline_momentum: weight of a batch's mean in the reward baseline (0.5).
        actor_learning_rate: the actor's rate (1e-4); the critic's is in ``hyperparameters``.
        hyperparameters: keyword arguments of :class:`DDPG` (network, critic rate, tau, batch).
    """

    warmup_episodes: int
    noise: float
    noise_decay: float
    replay_per_layer: int
    baseline_momentum: float | None
    actor_learning_rate: float
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    log: Callable[[dict[str, Any], int], None] | None = None  # receives the agent's training records

    def search(self, env: PruneEnv, seed: int) -> None:
        """Train until ``env.problem`` is exhausted."""
        layers = len(env.space)
        agent = TruncatedNormalDDPG(
            "MlpPolicy",
            env,
            seed=seed,
            verbose=0,
            device="cpu",
            noise=self.noise,
            noise_decay=self.noise_decay,
            warmup_episodes=self.warmup_episodes,
            actor_learning_rate=self.actor_learning_rate,
            learning_starts=self.warmup_episodes * layers,
            buffer_size=self.replay_per_layer * layers,
            replay_buffer_class=EpisodeRewardBuffer,
            replay_buffer_kwargs={"baseline_momentum": self.baseline_momentum},
            # learn once an episode is stored whole, one gradient step per transition, as both papers do
            train_freq=(1, "episode"),
            gradient_steps=-1,
            **self.hyperparameters,
        )
        forward_records(agent, self.log)
        steps = (env.problem.evaluations - env.problem.used) * layers
        agent.learn(total_timesteps=steps, callback=StopWhenExhausted(env))
