"""A sensitivity profile of the search steps and the allocation it implies.

Each step's choices are scored alone, every other step dense at the top bit-width, on a share of
the reward split. A policy's loss of quality is then taken as the sum of its steps' losses (the
additive model HAWQ-V3's integer programme allocates bits on), and the least-loss policy within
budget comes from the cost programme (:meth:`~rlprune.envs.space.SearchSpace.allocate`). Where
compression perturbs the outputs little, losses add up nearly exactly (on the embedded language
model the allocation is the proven optimum); near a CNN's floor the layers interact and it is a
rough start (docs/algorithms.md, "Searchers", the sensitivity profile).
"""

from __future__ import annotations

import numpy as np
from rlprune.envs.problem import SearchProblem
from rlprune.envs.space import Picks

FIDELITY = 0.125
"""Share of the reward split the profile scores on: the evolution's first selection stage."""


def profile_price(problem: SearchProblem) -> float:
    """Evaluations :func:`profile` spends: one score per choice of every step, plus the reference."""
    space = problem.space
    scores = 1 + sum(len(shapes) * len(space.bits) - 1 for shapes in space.shapes)
    return scores * problem.cost(_samples(problem))


def profile(problem: SearchProblem) -> list[np.ndarray]:
    """Per step, ``[options, bits]``: how much worse the network scores with only that step at
    that choice, the others dense at the top bit-width (0 at the top choice itself).

    "Worse" is the drop of the search's value (negative KL or loss), or under ``accuracy`` the
    rise of the loss: accuracy on a share of the split moves in coarse steps. Each score costs
    :data:`FIDELITY` of an evaluation.
    """
    space, samples = problem.space, _samples(problem)
    top = [(len(shapes) - 1, len(space.bits) - 1) for shapes in space.shapes]

    def worse(picks: Picks) -> float:
        outcome = problem.score(picks, samples=samples)
        return outcome.loss if problem.metric == "accuracy" else -problem.value(outcome)

    reference = worse(top)
    penalties = []
    for step, shapes in enumerate(space.shapes):
        grid = np.zeros((len(shapes), len(space.bits)))
        for option, bits in np.ndindex(grid.shape):
            if (option, bits) != top[step]:
                grid[option, bits] = worse([*top[:step], (option, bits), *top[step + 1 :]]) - reference
        penalties.append(grid)
    return penalties


def profiled_policy(problem: SearchProblem) -> Picks | None:
    """The least-penalty policy within budget under :func:`profile` (``None`` where none fits)."""
    penalties = profile(problem)
    return problem.space.allocate(penalties, problem.space.absolute_budget(problem.budget))


def _samples(problem: SearchProblem) -> int:
    return max(1, round(FIDELITY * problem.samples))
