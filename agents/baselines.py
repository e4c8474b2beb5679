"""Searchers without learning, behind the same interface as the RL agents."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rlprune.envs.problem import SearchProblem
from rlprune.envs.prune_env import PruneEnv
from rlprune.envs.space import SearchSpace


def play(env: PruneEnv, rng: np.random.Generator) -> None:
    """One episode of uniformly random actions, through the action wall."""
    env.outcome_of(rng.uniform(-1.0, 1.0, size=(len(env.space), env.action_size)))


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
        """Evaluate the uniform policy of each bit-width, highest bits first."""
        best_uniform(env.problem)


def best_uniform(problem: SearchProblem) -> tuple[list[tuple[int, int]] | None, float]:
    """Score each of :func:`uniform_policies` while full evaluations are left; the best of them
    and its value (``None`` and ``-inf`` when none was scored)."""
    best, value = None, -np.inf
    for picks in uniform_policies(problem.space, problem.budget):
        if not problem.affords():
            break
        scored = problem.value(problem.score(picks))
        if scored > value:
            best, value = picks, scored
    return best, value


def uniform_policies(space: SearchSpace, budget: float) -> list[list[tuple[int, int]]]:
    """Per bit-width (highest first) that has one, the densest uniform policy within ``budget``
    (relative): every step takes the option nearest to one common density."""
    seconds = space.absolute_budget(budget)
    candidates = sorted({s.density for shapes in space.shapes for s in shapes}, reverse=True)
    policies = []
    for bits in reversed(range(len(space.bits))):
        for density in candidates:
            picks = [
                (int(np.argmin([abs(s.density - density) for s in shapes])), bits) for shapes in space.shapes
            ]
            if space.seconds(picks) <= seconds + 1e-12:
                policies.append(picks)
                break
    return policies


@dataclass
class GreedySearch:
    """Greedy descent by measured sensitivity: compress first where it costs least accuracy.

    From the dense policy at the highest bit-width, every round tries two steps for each layer,
    one evaluation each: its density down by an eighth of its options, and its bit-width down
    by one. It keeps the step that loses the least reward-split accuracy per second saved, until
    the budget is met. Steps that save nothing (int8 can be slower than FP32 on a small CPU
    layer) are not tried. If the evaluations run out first, the search found nothing within budget.

    Args:
        steps: how many density steps take a layer from dense to its sparsest option.
    """

    steps: int = 8

    def search(self, env: PruneEnv, seed: int) -> None:
        """Descend until within budget or out of evaluations."""
        space, problem = env.space, env.problem
        budget = space.absolute_budget(problem.budget)
        picks = [(len(shapes) - 1, len(space.bits) - 1) for shapes in space.shapes]
        accuracy = problem.score(picks).accuracy
        while not problem.exhausted and space.seconds(picks) > budget + 1e-12:
            now = space.seconds(picks)
            best, best_cost, best_accuracy = None, np.inf, accuracy
            for i, shapes in enumerate(space.shapes):
                shape, bits = picks[i]
                stride = max(1, len(shapes) // self.steps)
                for step in ((max(0, shape - stride), bits), (shape, max(0, bits - 1))):
                    if step == picks[i] or problem.exhausted:
                        continue
                    trial = [*picks[:i], step, *picks[i + 1 :]]
                    saved = now - space.seconds(trial)
                    if saved <= 0:
                        continue
                    outcome = problem.score(trial)
                    cost = (accuracy - outcome.accuracy) / saved
                    if cost < best_cost:
                        best, best_cost, best_accuracy = trial, cost, outcome.accuracy
            if best is None:
                break
            picks, accuracy = best, best_accuracy


@dataclass
class TPESearch:
    """Optuna's TPE sampler over the per-layer actions, each trial played through the action wall;
    its objective is the search's value (accuracy, or minus the loss or KL)."""

    def search(self, env: PruneEnv, seed: int) -> None:
        """One Optuna trial per evaluation until the evaluations are spent."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))

        def objective(trial: optuna.Trial) -> float:
            steps, size = range(len(env.space)), range(env.action_size)
            actions = [[trial.suggest_float(f"{i}.{k}", -1.0, 1.0) for k in size] for i in steps]
            return env.problem.value(env.outcome_of(np.array(actions)))

        while not env.problem.exhausted:
            study.optimize(objective, n_trials=1)
