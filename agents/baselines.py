"""Searchers without learning, behind the same interface as the RL agents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rlprune.envs.prune_env import PruneEnv


def play(env: PruneEnv, rng: np.random.Generator) -> None:
    """One episode of uniformly random actions, through the action wall."""
    env.reset()
    done = False
    while not done:
        _, _, done, _, _ = env.step(rng.uniform(-1.0, 1.0, size=2).astype(np.float32))


@dataclass
class RandomSearch:
    """Random search: uniformly random actions, each episode projected into the budget."""

    def search(self, env: PruneEnv, seed: int) -> None:
        """Play random episodes until the evaluations are spent."""
        rng = np.random.default_rng(seed)
        while not env.problem.exhausted:
            play(env, rng)


@dataclass
class UniformSearch:
    """One density and one bit-width for every layer, the densest that meets the budget.

    For each bit-width of the device, every layer takes the option nearest to a common
    density; the densest common density within budget is found exactly by scanning the
    densities that occur. Spends one evaluation per bit-width that has such a policy.
    """

    def search(self, env: PruneEnv, seed: int) -> None:
        """Evaluate the uniform policy of each bit-width, densest first."""
        space, problem = env.space, env.problem
        budget = space.absolute_budget(problem.budget)
        candidates = sorted({s.density for shapes in space.shapes for s in shapes}, reverse=True)
        for bits in reversed(range(len(space.bits))):
            for density in candidates:
                picks = [
                    (int(np.argmin([abs(s.density - density) for s in shapes])), bits)
                    for shapes in space.shapes
                ]
                seconds = sum(space.latency[i][p] for i, p in enumerate(picks))
                if seconds <= budget + 1e-12:
                    if not problem.exhausted:
                        problem.score(picks)
                    break
