"""A search problem: a space, a scorer and a budget, with the record of every policy tried.

Every searcher, RL agent or baseline, spends evaluations through :meth:`SearchProblem.score`,
so the count is the same for all of them and the best policy is tracked in one place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rlprune.envs.evaluator import PolicyEvaluator
from rlprune.envs.space import SearchSpace

from rlprune.errors import RlpruneError
from rlprune.policy import Policy


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
    """

    episode: int
    policy: Policy
    accuracy: float
    loss: float
    latency: float
    budget: float


class SearchProblem:
    """The budgeted search over a :class:`SearchSpace`, scored by a :class:`PolicyEvaluator`.

    Args:
        space: options and latencies per layer.
        evaluator: scores a policy on the reward split.
        budget: relative latency budget in (0, 1].
        evaluations: how many policies a searcher may evaluate.
        metric: ``accuracy`` or ``loss``: what "best" means.
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
        if metric not in ("accuracy", "loss"):
            raise RlpruneError(f"reward.metric must be accuracy or loss, got {metric!r}")
        space.check_budget(budget)
        self.space, self.evaluator, self.budget = space, evaluator, budget
        self.evaluations, self.metric = evaluations, metric
        self.used = 0  # evaluations spent; outcomes go to the listeners, not to an ever-growing list
        self.best_by_budget: dict[float, Outcome] = {}  # several when the env samples budgets
        self.listeners: list[Callable[[Outcome, bool], None]] = []
        self.started = time.perf_counter()

    @property
    def best(self) -> Outcome | None:
        """The best policy within :attr:`budget` evaluated so far."""
        return self.best_by_budget.get(self.budget)

    @property
    def exhausted(self) -> bool:
        """Whether the evaluation budget is spent."""
        return self.used >= self.evaluations

    def value(self, outcome: Outcome) -> float:
        """The number the search maximises: accuracy, or negative loss."""
        return outcome.accuracy if self.metric == "accuracy" else -outcome.loss

    def score(self, picks: Sequence[tuple[int, int]], budget: float | None = None) -> Outcome:
        """Evaluate the policy of ``picks`` (one ``(shape, bits)`` index pair per layer) and record it.

        ``budget`` is the one the policy was searched under, when not :attr:`budget` (an env
        that samples budgets per episode); the best policy is kept per budget.
        """
        self._check_left()
        policy = self.space.policy(picks)
        result = self.evaluator(policy)
        outcome = Outcome(
            episode=self.used + 1,
            policy=policy,
            accuracy=result.accuracy,
            loss=result.loss,
            latency=self.space.policy_latency(picks),
            budget=self.budget if budget is None else budget,
        )
        return self.record(outcome)

    def record(self, outcome: Outcome) -> Outcome:
        """Count ``outcome``, keep it when it is the best within its budget, tell the listeners.

        :meth:`score` ends here; a parallel env's worker scores policies in its own process
        and the lead process records them (:mod:`rlprune.envs.parallel`). Returns the outcome
        numbered as this search's next evaluation.
        """
        self._check_left()
        outcome = replace(outcome, episode=self.used + 1)
        self.used += 1
        best = self.best_by_budget.get(outcome.budget)
        improved = outcome.latency <= outcome.budget + 1e-9 and (
            best is None or self.value(outcome) > self.value(best)
        )
        if improved:
            self.best_by_budget[outcome.budget] = outcome
        for listener in self.listeners:
            listener(outcome, improved)
        return outcome

    def _check_left(self) -> None:
        if self.exhausted:
            raise RlpruneError(f"the search already used its {self.evaluations} evaluations")

    @property
    def seconds(self) -> float:
        """Wall time since the problem was created."""
        return time.perf_counter() - self.started
