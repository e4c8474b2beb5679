"""EvoPress-style evolution (Sieberling et al., ICML 2025): level switches and staged selection.

A (1+λ) evolution over the steps' options, started from the best of the uniform policies and
a first generation of random wishes through the wall. An offspring moves compression levels between
steps: one step goes up a level (a denser option, or more bits), then other steps go down a
level, one at a time and each time saving seconds, until the policy fits the budget again, so
every offspring is within budget, on every device and pattern space. The λ offspring are scored
on a small share of the reward split, the best few again on a larger share, and the best of
those on all of it; the parent is replaced only by a full-fidelity score at least as good
(staged selection: most evaluations are spent cheaply, none decides alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rlprune.agents.baselines import best_uniform
from rlprune.envs.parallel import parallel_envs
from rlprune.envs.problem import SearchProblem
from rlprune.envs.prune_env import PruneEnv
from rlprune.envs.space import Picks, SearchSpace

from rlprune.errors import ConfigError


@dataclass
class EvolutionSearch:
    """Level-switch (1+λ) evolution with staged, multi-fidelity selection.

    Args:
        offspring: λ, the offspring of each generation.
        fidelities: the share of the reward split each selection stage scores on, ascending,
            each in (0, 1); a last stage always scores on all of it.
        survivors: per stage, how many of its best go on to the next (non-increasing, at most
            ``offspring``); the last number is how many get a full-fidelity score.
        switches: an offspring makes 1 to ``switches`` level switches (drawn uniformly).
        n_envs: worker processes that score each selection stage's offspring in parallel
            (:mod:`rlprune.envs.parallel`); the same evaluations and the same policies as one.

    Raises:
        ConfigError: for settings out of range.
    """

    offspring: int = 16
    fidelities: Sequence[float] = (0.125, 0.5)
    survivors: Sequence[int] = (4, 1)
    switches: int = 3
    n_envs: int = 1

    def __post_init__(self) -> None:
        self.fidelities, self.survivors = tuple(self.fidelities), tuple(self.survivors)
        checks = [
            ("agent.offspring", self.offspring >= 1, "an integer >= 1"),
            ("agent.switches", self.switches >= 1, "an integer >= 1"),
            ("agent.n_envs", self.n_envs >= 1, "an integer >= 1"),
            (
                "agent.fidelities",
                all(0 < f < 1 for f in self.fidelities) and list(self.fidelities) == sorted(self.fidelities),
                "ascending shares of the reward split in (0, 1)",
            ),
            (
                "agent.survivors",
                len(self.survivors) == len(self.fidelities)
                and all(1 <= n <= self.offspring for n in self.survivors)
                and list(self.survivors) == sorted(self.survivors, reverse=True),
                f"one count per fidelity ({len(self.fidelities)}), non-increasing, in [1, agent.offspring]",
            ),
        ]
        for key, ok, allowed in checks:
            if not ok:
                value = getattr(self, key.split(".")[1])
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f"{key}={shown} is not allowed: {allowed}")

    def search(self, env: PruneEnv, seed: int) -> None:
        """Evolve from the best start until ``env.problem`` is exhausted.

        The starts are the uniform policies (a full score each) and a first generation of
        random wishes through the wall, selected in stages like every later one.
        """
        workers = parallel_envs(env, self.n_envs) if self.n_envs > 1 else None
        try:
            parent, best = best_uniform(env.problem)
            self.evolve(env, parent, best, np.random.default_rng(seed), random_first=True)
        finally:
            if workers is not None:
                workers.close()

    def evolve(
        self,
        env: PruneEnv,
        parent: Picks | None,
        best: float,
        rng: np.random.Generator,
        random_first: bool = False,
    ) -> None:
        """Generations of offspring of ``parent`` (whose full-fidelity value is ``best``) until
        ``env.problem`` is exhausted; with ``random_first`` (or no parent) the first generation
        is random wishes through the wall instead."""
        problem, space = env.problem, env.space
        limit = space.absolute_budget(problem.budget)
        samples = [max(1, round(f * problem.samples)) for f in self.fidelities]
        first = random_first
        while not problem.exhausted:
            lam = self._affordable(problem, samples)
            if first or parent is None:
                children = [wall_projection(space, limit, rng) for _ in range(max(lam, 1))]
            else:
                children = self._offspring(space, parent, limit, rng, max(lam, 1))
            first = False
            if lam == 0:  # less than one staged generation left: spend it on what fits
                spend_rest(problem, children[0])
                return
            child, value = self._select(problem, children, samples)
            if value >= best:  # ties move the parent: drift across a plateau of equal scores
                parent, best = child, value

    def _affordable(self, problem: SearchProblem, samples: list[int]) -> int:
        """The most offspring, up to λ, whose staged selection the evaluations left pay for."""
        for lam in range(self.offspring, 0, -1):
            counts = [lam, *(min(n, lam) for n in self.survivors)]
            cost = sum(c * problem.cost(n) for c, n in zip(counts, [*samples, None], strict=True))
            if cost <= problem.left + 1e-9:
                return lam
        return 0

    def _select(
        self, problem: SearchProblem, children: list[Picks], samples: list[int]
    ) -> tuple[Picks, float]:
        """Staged selection: score on each fidelity, keep the best; the winner's full-fidelity value."""
        pool = children
        for n, keep in zip(samples, self.survivors, strict=True):
            # on a few samples accuracy ties often: the loss breaks ties (then the earlier child)
            scores = problem.score_many(pool, samples=n)
            order = sorted(range(len(pool)), key=lambda k: (-problem.value(scores[k]), scores[k].loss))
            pool = [pool[k] for k in order[:keep]]
        scored = [(problem.value(o), k) for k, o in enumerate(problem.score_many(pool))]
        value, k = max(scored, key=lambda vk: (vk[0], -vk[1]))
        return pool[k], value

    def _offspring(
        self, space: SearchSpace, parent: Picks, limit: float, rng: np.random.Generator, count: int
    ) -> list[Picks]:
        """``count`` distinct offspring of ``parent`` within ``limit`` seconds (a random wall
        projection stands in when level switches find no new policy)."""
        children: list[Picks] = []
        seen = {tuple(parent)}
        for _ in range(20 * count):
            if len(children) == count:
                break
            child = mutate(space, parent, limit, rng, int(rng.integers(1, self.switches + 1)))
            if child is not None and tuple(child) not in seen:
                seen.add(tuple(child))
                children.append(child)
        while len(children) < count:
            children.append(wall_projection(space, limit, rng))
        return children


def spend_rest(problem: SearchProblem, child: Picks) -> None:
    """Full scores of ``child`` while they fit, then the last fraction of an evaluation on that
    share of the split, so the search spends exactly its evaluations."""
    while problem.affords():
        problem.score(child)
    rest = round(problem.left * problem.samples)
    if rest >= 1 and not problem.exhausted:
        problem.score(child, samples=rest)


def mutate(
    space: SearchSpace, parent: Picks, limit: float, rng: np.random.Generator, switches: int
) -> Picks | None:
    """``switches`` level switches of ``parent``: one step up a level, then others down until
    the policy fits ``limit`` seconds; ``None`` when a switch cannot be paid for."""
    child = list(parent)
    for _ in range(switches):
        ups = [(i, move) for i in range(len(space)) for move in _moves(space, i, child[i], +1)]
        if not ups:
            return None
        raised, move = ups[int(rng.integers(len(ups)))]
        child[raised] = move
        now = space.seconds(child)
        while now > limit + 1e-12:
            lowers = [
                (j, lower)
                for j in range(len(space))
                if j != raised
                for lower in _moves(space, j, child[j], -1)
            ]
            saving = space.seconds_changed(child, lowers) < now
            downs = [move for move, saves in zip(lowers, saving, strict=True) if saves]
            if not downs:
                return None
            lowered, move = downs[int(rng.integers(len(downs)))]
            child[lowered] = move
            now = space.seconds(child)
    return child


def _moves(space: SearchSpace, step: int, pick: tuple[int, int], direction: int) -> list[tuple[int, int]]:
    """The picks one level up (``+1``) or down (``-1``) from ``pick``: the next option or bit-width."""
    shape, bits = pick
    moves = [(shape + direction, bits), (shape, bits + direction)]
    return [(s, b) for s, b in moves if 0 <= s < len(space.shapes[step]) and 0 <= b < len(space.bits)]


def wall_projection(space: SearchSpace, limit: float, rng: np.random.Generator) -> Picks:
    """A random wish per step through the action wall (as random search plays it): within ``limit``."""
    picks: Picks = []
    spent = 0.0
    for step, shapes in enumerate(space.shapes):
        sparsest = min(s.density for s in shapes)
        pattern = int(rng.integers(len(space.patterns))) if len(space.patterns) > 1 else None
        wish = sparsest + rng.uniform() * (1.0 - sparsest)
        pick = space.project(step, wish, rng.uniform(), spent, limit, pattern, picks)
        spent += float(space.table(step, picks)[pick])
        picks.append(pick)
    return picks
