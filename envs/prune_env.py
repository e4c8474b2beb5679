"""The Gymnasium environment ``rlprune/Prune-v0``: one step per searched layer (or tied group).

The action ``Box([-1, 1]^2)`` asks for a density (−1 the sparsest option of the layer, +1
dense) and a bit-width (−1 the lowest the device runs, +1 the highest); when several sparsity
patterns are searched, a third entry picks the layer's pattern. The action wall
(:meth:`SearchSpace.project`) turns the wish into the nearest option that keeps the episode
within budget and uses it, so every finished episode is within budget and the reward, given at
the last step, is about accuracy alone.

Two other walls reproduce the anchors (``wall``): AMC's keeps each step feasible but does not
push the episode to use the budget, and HAQ's rounds each wish freely and, once the episode
ends, lowers choices from the last layer back until the policy fits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from rlprune.envs.features import DYNAMIC_FEATURES, SENSITIVITY_COLUMNS, static_features
from rlprune.envs.problem import Outcome, SearchProblem

from rlprune.config import WALLS
from rlprune.errors import BudgetError, ConfigError


@dataclass(frozen=True)
class Demonstration:
    """One episode played by wishing for a known policy (:meth:`PruneEnv.demonstrate`).

    Attributes:
        observations: ``[steps, observation]``, what each step observed.
        actions: ``[steps, action]``, the action each step took.
        outcome: the policy's score.
    """

    observations: np.ndarray
    actions: np.ndarray
    outcome: Outcome


class PruneEnv(gym.Env):
    """Per-layer sparsity and bit-width search as an episodic MDP.

    Args:
        problem: the search problem; every finished episode spends one of its evaluations.
        sensitivity: per-step sensitivity features, ``[steps, 3]`` in [0, 1]
            (:func:`~rlprune.envs.features.measure_sensitivity`), or a function that measures
            them, called when an observation first needs them: a searcher that only scores
            policies through :attr:`problem` (evolution) or plays episodes with :meth:`outcome_of`
            (TPE, random) never pays for them.
        baseline_momentum: when set, the reward is the score minus a moving average of past
            scores (AMC's variance reduction); ``None`` gives the raw score.
        wall: ``band`` (keep the episode feasible and use the budget), ``feasible`` (AMC's:
            feasible only) or ``final`` (HAQ's: no wall during the episode, then
            :meth:`SearchSpace.lower_until_within`).
        budgets: budgets to sample one of per episode (budget-conditioned search); the best
            policy of each is kept by the problem. ``None``: the problem's budget only.

    Raises:
        ConfigError: for an unknown wall.
        ValueError: for sensitivity features of another shape, or outside [0, 1].
        BudgetError: for a budget no policy meets, or (HAQ's wall) one that even the lowest
            choice of every layer misses.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        problem: SearchProblem,
        sensitivity: np.ndarray | Callable[[], np.ndarray],
        baseline_momentum: float | None = None,
        wall: str = "band",
        budgets: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if wall not in WALLS:
            raise ConfigError(f"agent.wall={wall!r} is not allowed: one of {list(WALLS)}")
        self.problem = problem
        self.space = problem.space
        self.wall = wall
        self.budgets = tuple(budgets) if budgets else (problem.budget,)
        for budget in self.budgets:
            self.space.check_budget(budget)
            if wall == "final" and not self.space.lowest_fits(self.space.absolute_budget(budget)):
                raise BudgetError(
                    f"agent.wall=final (HAQ's rule) lowers bits and density until the budget holds, but even "
                    f"the lowest of both misses budget.latency={budget} on this hardware; raise the budget "
                    "or use agent.wall=band"
                )
        self.budget = self.budgets[0]
        self._measure = sensitivity if callable(sensitivity) else None
        if self._measure is None:
            self.sensitivity = self._checked(sensitivity)
        self.sensitivity_seconds = 0.0  # spent measuring them, when measured here
        self.shape_features = static_features(self.space)
        self.baseline_momentum = baseline_momentum
        self.baseline: float | None = None
        self.action_size = 2 if len(self.space.patterns) == 1 else 3
        size = self.shape_features.shape[1] + SENSITIVITY_COLUMNS + DYNAMIC_FEATURES + self.action_size
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(size,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.action_size,), dtype=np.float32)
        self._start_episode()

    @cached_property
    def sensitivity(self) -> np.ndarray:
        """Per-step sensitivity features, ``[steps, 3]``: measured on first read, when the env was
        given the function that measures them."""
        start = time.perf_counter()
        measured = self._checked(self._measure())
        self.sensitivity_seconds = time.perf_counter() - start
        return measured

    @cached_property
    def features(self) -> np.ndarray:
        """Per-step static features: shape and cost, then the sensitivity."""
        return np.concatenate([self.shape_features, self.sensitivity], axis=1).astype(np.float32)

    def _checked(self, sensitivity: np.ndarray) -> np.ndarray:
        sensitivity = np.asarray(sensitivity, dtype=np.float32)
        shape = (len(self.space), SENSITIVITY_COLUMNS)
        if sensitivity.shape != shape:
            raise ValueError(
                f"sensitivity features are {shape}, a row per step of the space "
                f"(rlprune.envs.features.measure_sensitivity), not {sensitivity.shape}"
            )
        outside = sensitivity[~((sensitivity >= 0.0) & (sensitivity <= 1.0))]  # NaN fails both
        if outside.size:
            raise ValueError(f"sensitivity features lie in [0, 1], not {outside[:3].tolist()}")
        return sensitivity

    def _start_episode(self, budget: float | None = None) -> None:
        if budget is not None:
            self.space.check_budget(budget)
            self.budget = budget
        elif len(self.budgets) > 1:  # budget-conditioned: the budget is part of the observation
            self.budget = self.budgets[int(self.np_random.integers(len(self.budgets)))]
        self.layer = 0
        self.spent = 0.0
        self.picks: list[tuple[int, int]] = []
        self.previous = np.zeros(self.action_size, dtype=np.float32)

    def _observation(self) -> np.ndarray:
        space, t = self.space, min(self.layer, len(self.space) - 1)
        total = space.dense_latency
        budget = space.absolute_budget(self.budget)
        rest_min = space.min_latency[t + 1 :].sum()
        upper = budget - self.spent - rest_min
        dynamic = [
            self.budget,
            self.spent / total,
            rest_min / total,
            space.max_latency[t + 1 :].sum() / total,
            np.clip(upper / space.max_latency[t], 0.0, 1.0),
            space.fixed_latency / total,
            *self.previous,
        ]
        obs = np.concatenate([self.features[t], np.asarray(dynamic, dtype=np.float32)])
        return np.clip(obs, -1.0, 1.0).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        """Start a new episode at the first searched layer; ``options={"budget": b}`` fixes its budget."""
        super().reset(seed=seed)
        self._start_episode((options or {}).get("budget"))
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide the current layer; the last step evaluates the policy and returns its reward."""
        outcome = self._decide(action)
        if outcome is None:
            return self._observation(), 0.0, False, False, {}
        return self._observation(), self._reward(outcome), True, False, {"outcome": outcome}

    def outcome_of(self, actions: np.ndarray) -> Outcome:
        """One episode that takes ``actions[t]`` at step ``t`` through the wall (one evaluation),
        never observed: a searcher that needs only outcomes (TPE, random) has the sensitivity
        features left unmeasured."""
        actions = np.asarray(actions, dtype=np.float32)
        if len(actions) != len(self.space) or not len(actions):
            raise ValueError(
                f"an episode takes one action per step: {len(self.space)} steps, {len(actions)} actions"
            )
        self._start_episode()
        decided = [self._decide(action) for action in actions]
        return decided[-1]

    def _decide(self, action: np.ndarray) -> Outcome | None:
        """Take ``action`` at the current step; once the last step is decided, score the policy."""
        action = np.clip(np.asarray(action, dtype=np.float32).reshape(self.action_size), -1.0, 1.0)
        space, t = self.space, self.layer
        densities = [s.density for s in space.shapes[t]]
        sparsest = min(densities)
        want_density = sparsest + (action[0] + 1.0) / 2.0 * (1.0 - sparsest)
        want_bits = (action[1] + 1.0) / 2.0
        budget = space.absolute_budget(self.budget)
        want_pattern = None
        if self.action_size == 3:  # evenly spaced positions in [-1, 1], one per pattern
            want_pattern = round((action[2] + 1.0) / 2.0 * (len(space.patterns) - 1))
        limit = np.inf if self.wall == "final" else budget
        pick = space.project(
            t, want_density, want_bits, self.spent, limit, want_pattern, self.picks, fill=self.wall == "band"
        )
        self.spent += float(space.table(t, self.picks)[pick])
        self.picks.append(pick)
        self.previous = action
        self.layer += 1
        if self.layer < len(space):
            return None
        if self.wall == "final":
            self.picks = space.lower_until_within(self.picks, budget)
        return self.problem.score(self.picks, budget=self.budget)

    def play(self, action: np.ndarray) -> Outcome:
        """One episode that takes ``action`` at every step (one evaluation); its outcome. Its
        reward moves the baseline (``baseline_momentum``) as a stepped episode's does."""
        outcome = self.outcome_of(np.tile(np.asarray(action, dtype=np.float32), (len(self.space), 1)))
        self._reward(outcome)
        return outcome

    def action_of(self, picks: Sequence[tuple[int, int]]) -> np.ndarray:
        """The action that wishes for ``picks``, one per step, averaged over the steps: the inverse
        of :meth:`step`'s mapping from an action to the wished density, bit-width and pattern."""
        if len(picks) != len(self.space):
            raise ValueError(f"{len(self.space)} steps but {len(picks)} picks")
        return np.mean([self._wish(step, pick) for step, pick in enumerate(picks)], axis=0).astype(np.float32)

    def demonstrate(self, picks: Sequence[tuple[int, int]]) -> Demonstration:
        """One episode that wishes for ``picks`` step by step (one evaluation): what it observed,
        what it did, and its outcome (the wall may move a wish that no longer fits)."""
        observations = [self.reset()[0]]
        actions = np.array([self._wish(step, pick) for step, pick in enumerate(picks)], dtype=np.float32)
        for action in actions:
            observation, _, done, _, info = self.step(action)
            if not done:
                observations.append(observation)
        return Demonstration(np.stack(observations), actions, info["outcome"])

    def _wish(self, step: int, pick: tuple[int, int]) -> np.ndarray:
        """The action that wishes for option and bit-width ``pick`` at ``step``."""
        shapes, (shape, bits) = self.space.shapes[step], pick
        sparsest = min(s.density for s in shapes)
        density = (shapes[shape].density - sparsest) / max(1.0 - sparsest, 1e-12)
        position = bits / max(len(self.space.bits) - 1, 1)
        action = [2.0 * density - 1.0, 2.0 * position - 1.0]
        if self.action_size == 3:
            pattern = shapes[shape].pattern
            patterns = self.space.patterns
            index = patterns.index(pattern) if pattern in patterns else (len(patterns) - 1) / 2
            action.append(2.0 * index / (len(patterns) - 1) - 1.0)
        return np.asarray(action)

    def _reward(self, outcome: Outcome) -> float:
        value = self.problem.value(outcome)
        if self.baseline_momentum is None:
            return float(value)
        previous = value if self.baseline is None else self.baseline
        self.baseline = previous + self.baseline_momentum * (value - previous)
        return float(value - previous)
