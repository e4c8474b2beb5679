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
        _, _, done, _, _ = env.step(rng.uniform(-1.0, 1.0, size=env.action_size).astype(np.float32))


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
                if space.seconds(picks) <= budget + 1e-12:
                    if not problem.exhausted:
                        problem.score(picks)
                    break


@dataclass
class GreedySearch:
    """Greedy descent by measured sensitivity: compress first where it costs least accuracy.

    Each layer's options are ordered from dearest to cheapest. From the dense policy at the
    highest bit-width, every round tries, for each layer, a step down that order (an eighth of
    its options, one evaluation each, memoized) and keeps the step that loses the least
    reward-split accuracy per second saved, until the budget is met. The last round's winner
    is within budget; if the evaluations run out first, the search found nothing within budget.

    Args:
        steps: how many steps take a layer from dense to its cheapest option.
    """

    steps: int = 8

    def search(self, env: PruneEnv, seed: int) -> None:
        """Descend until within budget or out of evaluations."""
        space, problem = env.space, env.problem
        budget = space.absolute_budget(problem.budget)
        # each layer's options by their cost with a dense input, dearest first
        tables = [table[-1] for table in space.latency]
        order = [np.argsort(-table.ravel(), kind="stable") for table in tables]
        stride = [max(1, len(o) // self.steps) for o in order]

        def picks(rank: list[int]) -> list[tuple[int, int]]:
            return [
                tuple(int(v) for v in np.unravel_index(order[i][r], tables[i].shape))
                for i, r in enumerate(rank)
            ]

        def seconds(rank: list[int]) -> float:
            return space.seconds(picks(rank))

        rank = [0] * len(space)
        accuracy = problem.score(picks(rank)).accuracy
        while not problem.exhausted and seconds(rank) > budget + 1e-12:
            best, best_cost, best_accuracy = None, np.inf, accuracy
            for i in range(len(space)):
                if rank[i] == len(order[i]) - 1 or problem.exhausted:
                    continue
                trial = list(rank)
                trial[i] = min(rank[i] + stride[i], len(order[i]) - 1)
                outcome = problem.score(picks(trial))
                cost = (accuracy - outcome.accuracy) / max(seconds(rank) - seconds(trial), 1e-15)
                if cost < best_cost:
                    best, best_cost, best_accuracy = trial, cost, outcome.accuracy
            if best is None:
                break
            rank, accuracy = best, best_accuracy


@dataclass
class TPESearch:
    """Optuna's TPE sampler over the per-layer actions, each trial played through the action wall."""

    def search(self, env: PruneEnv, seed: int) -> None:
        """One Optuna trial per evaluation until the evaluations are spent."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))

        def objective(trial: optuna.Trial) -> float:
            env.reset()
            reward = 0.0
            for i in range(len(env.space)):
                action = [trial.suggest_float(f"{i}.{k}", -1.0, 1.0) for k in range(env.action_size)]
                _, reward, _, _, _ = env.step(np.array(action, dtype=np.float32))
            return reward

        while not env.problem.exhausted:
            study.optimize(objective, n_trials=1)
