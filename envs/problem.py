"""A search problem: a space, a scorer and a budget, with the record of every policy tried.

Every searcher, RL agent or baseline, spends evaluations through :meth:`SearchProblem.score`,
so the count is the same for all of them and the best policy is tracked in one place.

A policy may be scored on the first ``samples`` of the reward split only (a lower fidelity,
for searchers that select in stages): that costs ``samples / N`` of an evaluation, ``N`` being
the split's size, whoever asks, and a later score of the same policy at a higher fidelity
costs its own price again. Only full-fidelity scores can become the best policy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rlprune.envs.evaluator import PolicyEvaluator
from rlprune.envs.space import SearchSpace

from rlprune.config import METRICS
from rlprune.errors import RlpruneError
from rlprune.policy import Policy
from rlprune.training import Score


@dataclass(frozen=True)
class Outcome:
    """One evaluated policy.

    Attributes:
        episode: 1-based index of the evaluation in the search.
        policy: the per-layer choices.
        accuracy: reward-split accuracy.
        loss: reward-split cross-entropy.
        latency: latency relative to the dense network under the hardware model.
        budget: the relative latency budget it was searched under.
        kl: reward-split KL(dense ‖ policy) of the output distributions (``reward.metric=kl``
            only, else ``None``).
        fidelity: the share of the reward split it was scored on (1: all of it).
    """

    episode: int
    policy: Policy
    accuracy: float
    loss: float
    latency: float
    budget: float
    kl: float | None = None
    fidelity: float = 1.0


class SearchProblem:
    """The budgeted search over a :class:`SearchSpace`, scored by a :class:`PolicyEvaluator`.

    Args:
        space: options and latencies per layer.
        evaluator: scores a policy on the reward split.
        budget: relative latency budget in (0, 1].
        evaluations: how many policies a searcher may evaluate (at full fidelity).
        metric: ``accuracy``, ``loss`` or ``kl``: what "best" means.
    """

    def __init__(
        self,
        space: SearchSpace,
        evaluator: PolicyEvaluator,
        budget: float,
        evaluations: int,
        metric: str = "accuracy",
    ) -> None:
        if evaluations < 1:
            raise RlpruneError(f"search.evaluations must be >= 1, got {evaluations}")
        if metric not in METRICS:
            raise RlpruneError(f"reward.metric must be one of {list(METRICS)}, got {metric!r}")
        if metric == "kl" and getattr(evaluator, "reference", None) is None:
            raise RlpruneError("reward.metric=kl needs an evaluator built with reference=True")
        space.check_budget(budget)
        self.space, self.evaluator, self.budget = space, evaluator, budget
        self.evaluations, self.metric = evaluations, metric
        # evaluations spent (an int while every score is at full fidelity); outcomes go to the
        # listeners, not to an ever-growing list
        self.used: float = 0
        self.scored = 0  # scores made, at any fidelity: the episode numbers
        self.best_by_budget: dict[float, Outcome] = {}  # several when the env samples budgets
        self.listeners: list[Callable[[Outcome, bool], None]] = []
        # scores a batch of policies at once, elsewhere: parallel envs' workers, while they run
        self.pool: Callable[[list[Policy], int | None], list[Score]] | None = None
        self.started = time.perf_counter()

    @property
    def best(self) -> Outcome | None:
        """The best policy within :attr:`budget` evaluated so far."""
        return self.best_by_budget.get(self.budget)

    @property
    def exhausted(self) -> bool:
        """Whether the evaluation budget is spent."""
        return self.used >= self.evaluations - 1e-9

    @property
    def left(self) -> float:
        """Evaluations still to spend (a fraction of one buys a score on that share of the split)."""
        return max(0.0, self.evaluations - self.used)

    @property
    def samples(self) -> int:
        """Samples of the reward split, the full fidelity (:meth:`score`'s ``samples``)."""
        return self.evaluator.samples

    def cost(self, samples: int | None = None) -> float:
        """Evaluations a score on the first ``samples`` of the reward split costs (1 for all of it)."""
        return 1 if samples is None or samples >= self.samples else samples / self.samples

    def value(self, outcome: Outcome) -> float:
        """The number the search maximises: accuracy, negative loss or negative KL."""
        if self.metric == "accuracy":
            return outcome.accuracy
        return -outcome.loss if self.metric == "loss" else -outcome.kl

    def score(
        self, picks: Sequence[tuple[int, int]], budget: float | None = None, samples: int | None = None
    ) -> Outcome:
        """Evaluate the policy of ``picks`` (one ``(shape, bits)`` index pair per layer) and record it.

        ``budget`` is the one the policy was searched under, when not :attr:`budget` (an env
        that samples budgets per episode); the best policy is kept per budget. ``samples``
        scores it on the first ``samples`` of the reward split only, for :meth:`cost` of an
        evaluation; such an outcome never becomes the best.

        Raises:
            RlpruneError: when the evaluations left do not cover the score.
        """
        price = self.cost(samples)
        self._check_left(price)
        policy = self.space.policy(picks)
        result = self.evaluator(policy) if price == 1 else self.evaluator(policy, samples)
        return self.record(self._outcome(picks, policy, result, budget, price))

    def score_many(
        self, picks: Sequence[Sequence[tuple[int, int]]], samples: int | None = None
    ) -> list[Outcome]:
        """:meth:`score` each of ``picks`` at one fidelity, recorded in their order.

        The policies are scored by :attr:`pool` when it is set (in parallel, by the workers of
        parallel envs), else here one after another; the count and the outcomes are the same.

        Raises:
            RlpruneError: when the evaluations left do not cover the scores.
        """
        price = self.cost(samples)
        self._check_left(price * len(picks))
        if self.pool is None or len(picks) < 2:
            return [self.score(p, samples=samples) for p in picks]
        policies = [self.space.policy(p) for p in picks]
        results = self.pool(policies, None if price == 1 else samples)
        return [
            self.record(self._outcome(p, policy, result, None, price))
            for p, policy, result in zip(picks, policies, results, strict=True)
        ]

    def _outcome(
        self,
        picks: Sequence[tuple[int, int]],
        policy: Policy,
        result: Score,
        budget: float | None,
        price: float,
    ) -> Outcome:
        return Outcome(
            episode=self.scored + 1,
            policy=policy,
            accuracy=result.accuracy,
            loss=result.loss,
            latency=self.space.policy_latency(picks),
            budget=self.budget if budget is None else budget,
            kl=result.kl,
            fidelity=price,
        )

    def record(self, outcome: Outcome) -> Outcome:
        """Count ``outcome`` at the cost of its fidelity, keep it when it is the best full score
        within its budget, tell the listeners.

        :meth:`score` ends here; a parallel env's worker scores policies in its own process
        and the lead process records them (:mod:`rlprune.envs.parallel`). Returns the outcome
        numbered as this search's next score.
        """
        price = outcome.fidelity
        self._check_left(price)
        outcome = replace(outcome, episode=self.scored + 1)
        if price == 1:
            self.used += 1  # an int while every score is at full fidelity
        else:  # on the grid of one sample: fractions of an evaluation add up exactly
            used = round((self.used + price) * self.samples) / self.samples
            self.used = int(used) if used.is_integer() else used
        self.scored += 1
        best = self.best_by_budget.get(outcome.budget)
        improved = (
            price == 1
            and outcome.latency <= outcome.budget + 1e-9
            and (best is None or self.value(outcome) > self.value(best))
        )
        if improved:
            self.best_by_budget[outcome.budget] = outcome
        for listener in self.listeners:
            listener(outcome, improved)
        return outcome

    def affords(self, price: float = 1.0) -> bool:
        """Whether a score costing ``price`` evaluations (1: a full one) can still be bought."""
        return not self.exhausted and price <= self.left + 1e-9

    def _check_left(self, price: float) -> None:
        if not self.affords(price):
            raise RlpruneError(
                f"the search has {self.left:g} of its {self.evaluations} evaluations left, "
                f"and a score costs {price:g}"
            )

    @property
    def seconds(self) -> float:
        """Wall time since the problem was created."""
        return time.perf_counter() - self.started
