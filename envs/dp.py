"""The dynamic programme behind the action wall: what the later steps of an episode can still spend.

A search decides one step after another, each an ``(option, bits)`` pair. A step's seconds may
depend on earlier decisions too (a filter choice shrinks the layers that read it), so each step
owns a :class:`Factor`: a table over the decisions its seconds depend on. For every step, the
wall needs the fewest (and most) seconds the later steps can still take given the decisions so
far; that is a min-plus (max-plus) dynamic programme over the factors from the back, exact however
the decisions interleave. :class:`CostProgramme` holds the factors, the programme, and the
walls built on it: the nearest option within budget (:meth:`CostProgramme.nearest`) and HAQ's
post-episode lowering (:meth:`CostProgramme.lower_until_within`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Factor:
    """Seconds as a table over some steps' decisions.

    ``axes`` names the dimensions of ``table`` in ascending order: ``2*step`` is that step's
    option, ``2*step + 1`` its bit-width.
    """

    axes: tuple[int, ...]
    table: np.ndarray

    def over(self, axes: Sequence[int]) -> np.ndarray:
        """The table as a view that broadcasts over ``axes`` (ascending, a superset of ours)."""
        return self.table.reshape(
            [self.table.shape[self.axes.index(a)] if a in self.axes else 1 for a in axes]
        )

    def __add__(self, other: Factor) -> Factor:
        axes = tuple(sorted({*self.axes, *other.axes}))
        return Factor(axes, self.over(axes) + other.over(axes))

    def reduce(self, axes: set[int], pick: Callable[..., np.ndarray]) -> Factor:
        """``pick`` (``np.min`` or ``np.max``) over ``axes``."""
        dims = tuple(i for i, a in enumerate(self.axes) if a in axes)
        kept = tuple(a for a in self.axes if a not in axes)
        return Factor(kept, pick(self.table, axis=dims) if dims else self.table)

    def value(self, decided: Sequence[int]) -> float:
        """The table's entry once every axis is decided: axis ``a`` took ``decided[a]``."""
        return float(self.table[tuple(decided[a] for a in self.axes)])

    def at(self, known: Mapping[int, int]) -> Factor:
        """The table once the ``known`` axes took the given indices."""
        index = tuple(known.get(a, slice(None)) for a in self.axes)
        return Factor(tuple(a for a in self.axes if a not in known), self.table[index])


ZERO = Factor((), np.zeros(()))


@dataclass
class CostProgramme:
    """The seconds each step adds, as factors over the decisions, and the programme over them.

    Attributes:
        costs: per step, the seconds of the layers costed once it is decided.
        options: per step, how many options it has.
        bits: how many bit-widths every step chooses from.
        mixed_seconds: seconds the network adds once when its layers run both float and int8,
            charged to the step that first mixes them.
        integer: per bit-width, whether it runs in integers (empty when ``mixed_seconds`` is 0).
        fixed_kinds: whether the layers no step decides run in integers (empty when there are none).
    """

    costs: list[Factor]
    options: tuple[int, ...]
    bits: int
    mixed_seconds: float = 0.0
    integer: tuple[bool, ...] = ()
    fixed_kinds: frozenset[bool] = frozenset()
    _rests: dict = field(init=False, repr=False)
    _readers: list[list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # per step, the factors whose tables read its option or bit-width
        self._readers = [
            [f for f, c in enumerate(self.costs) if {2 * step, 2 * step + 1} & set(c.axes)]
            for step in range(len(self.costs))
        ]
        # rests[pick][kind][i]: the fewest (np.min) or most (np.max) seconds steps i+1.. can
        # take, over the decisions up to step i, at any bit-width (kind None) or only at those
        # that run in integers (True) or float (False); exact, by dynamic programming from the back.
        kinds = (None, True, False) if self.mixed_seconds > 0 else (None,)
        self._rests = {pick: {kind: self._rest(pick, kind) for kind in kinds} for pick in (np.min, np.max)}

    def __len__(self) -> int:
        return len(self.costs)

    def _rest(self, pick: Callable[..., np.ndarray], kind: bool | None) -> list[Factor]:
        costs = self.costs if kind is None else [self._only(cost, kind, pick) for cost in self.costs]
        rest = [ZERO] * len(self)
        for i in range(len(self) - 1, 0, -1):
            rest[i - 1] = (costs[i] + rest[i]).reduce({2 * i, 2 * i + 1}, pick)
        return rest

    def _only(self, factor: Factor, kind: bool, pick: Callable[..., np.ndarray]) -> Factor:
        """``factor`` with the other kind's bit-widths ruled out (``inf`` for a min, ``-inf`` for a max)."""
        table = factor.table.astype(float, copy=True)
        other = [b for b, runs in enumerate(self.integer) if runs != kind]
        for dim, axis in enumerate(factor.axes):
            if axis % 2 and table.shape[dim] == len(self.integer):  # a bit-width axis
                index: list[Any] = [slice(None)] * table.ndim
                index[dim] = other
                table[tuple(index)] = np.inf if pick is np.min else -np.inf
        return Factor(factor.axes, table)

    def _seen(self, step: int, picks: Sequence[tuple[int, int]]) -> set[bool]:
        """Whether the layers decided before ``step`` (and those no step decides) run in integers."""
        return set(self.fixed_kinds) | {self.integer[b] for _, b in picks[:step]}

    def _grid(self, factor: Factor, step: int, picks: Sequence[tuple[int, int]]) -> np.ndarray:
        """``factor`` once the steps before ``step`` took ``picks``, as ``[options, bits]`` of ``step``."""
        known = {2 * j + k: int(v) for j, pick in enumerate(picks[:step]) for k, v in enumerate(pick)}
        own = factor.at(known).over((2 * step, 2 * step + 1))
        return np.broadcast_to(own, (self.options[step], self.bits))

    def rest(
        self, step: int, picks: Sequence[tuple[int, int]], pick: Callable[..., np.ndarray]
    ) -> np.ndarray:
        """The fewest (``np.min``) or most (``np.max``) seconds the steps after ``step`` take,
        as ``[options, bits]`` of ``step``, once the steps before it took ``picks``. Where the
        layers decided so far run at one kind, the rest either stays at it or pays
        ``mixed_seconds``."""
        rests = self._rests[pick]
        grid = self._grid(rests[None][step], step, picks)
        if self.mixed_seconds <= 0 or step == len(self) - 1:
            return grid
        seen = self._seen(step, picks)
        columns = []
        for b, kind in enumerate(self.integer):
            column = grid[:, b]
            if seen <= {kind}:  # still one kind after this step
                alone = self._grid(rests[kind][step], step, picks)[:, b]
                column = pick(np.stack([alone, column + self.mixed_seconds]), axis=0)
            columns.append(column)
        return np.stack(columns, axis=1)

    @property
    def min_latency(self) -> np.ndarray:
        """Cheapest seconds of each step (over every earlier decision)."""
        return np.array([c.table.min() for c in self.costs])

    @property
    def max_latency(self) -> np.ndarray:
        """Dearest seconds of each step (over every earlier decision)."""
        return np.array([c.table.max() for c in self.costs])

    def table(self, step: int, picks: Sequence[tuple[int, int]] = ()) -> np.ndarray:
        """Seconds ``[options, bits]`` that ``step`` adds once the steps before it took ``picks``
        (``mixed_seconds`` where it is the first to run at the other kind)."""
        own = self._grid(self.costs[step], step, picks)
        if self.mixed_seconds > 0 and len(seen := self._seen(step, picks)) == 1:
            (kind,) = seen
            own = own + self.mixed_seconds * np.array([runs != kind for runs in self.integer])[None, :]
        return own

    def step_seconds(self, picks: Sequence[tuple[int, int]]) -> np.ndarray:
        """Seconds each step adds under a policy given as index pairs (what :meth:`table` gives
        each step, read from the factors directly: searchers call this for every trial policy)."""
        decided = _decided(picks)
        return self._charge_mixing([c.value(decided) for c in self.costs], picks)

    def _charge_mixing(self, values: Sequence[float], picks: Sequence[tuple[int, int]]) -> np.ndarray:
        """Each step's factor seconds ``values``, plus ``mixed_seconds`` on the first step to mix."""
        out = np.array(values, dtype=float)
        if self.mixed_seconds > 0:
            seen = set(self.fixed_kinds)
            for step, (_, b) in enumerate(picks):
                if len(seen) == 1 and self.integer[b] not in seen:  # the first to mix
                    out[step] += self.mixed_seconds
                seen.add(self.integer[b])
        return out

    def seconds(self, picks: Sequence[tuple[int, int]]) -> float:
        """Seconds of all steps under a policy of index pairs."""
        return float(self.step_seconds(picks).sum())

    def seconds_changed(
        self, picks: Sequence[tuple[int, int]], changes: Sequence[tuple[int, tuple[int, int]]]
    ) -> np.ndarray:
        """:meth:`seconds` of each policy that differs from ``picks`` at one step, given as
        ``(step, pick)``: only the factors that read that step are read again (an evolution
        costs every neighbour of a policy)."""
        decided = _decided(picks)
        values = [c.value(decided) for c in self.costs]
        integers = sum(self.integer[b] for _, b in picks) if self.mixed_seconds > 0 else 0
        # summed as seconds() sums: a change that saves nothing compares equal
        total = float(self._charge_mixing(values, picks).sum())
        out = np.empty(len(changes))
        for k, (step, pick) in enumerate(changes):
            trial = decided.copy()
            trial[2 * step : 2 * step + 2] = pick
            change = sum(self.costs[f].value(trial) - values[f] for f in self._readers[step])
            if self.mixed_seconds > 0:
                moved = integers - self.integer[picks[step][1]] + self.integer[pick[1]]
                change += self._mixing(moved, len(picks)) - self._mixing(integers, len(picks))
            out[k] = total + change
        return out

    def _mixing(self, integers: int, steps: int) -> float:
        """The mixing seconds of a policy whose steps run ``integers`` of ``steps`` in integers: charged
        once when float and int8 both run and the undecided layers did not mix them already."""
        if self.mixed_seconds <= 0 or len(self.fixed_kinds) == 2:
            return 0.0
        kinds = (
            set(self.fixed_kinds) | ({True} if integers else set()) | ({False} if integers < steps else set())
        )
        return self.mixed_seconds if len(kinds) == 2 else 0.0

    def cheapest(self) -> float:
        """The fewest seconds any policy takes."""
        return float((self.table(0) + self.rest(0, (), np.min)).min())

    def nearest(
        self,
        step: int,
        distance: np.ndarray,
        spent: float,
        budget: float,
        picks: Sequence[tuple[int, int]] = (),
        fill: bool = True,
    ) -> tuple[int, int]:
        """The action wall: the ``(option, bits)`` of ``step`` nearest to a wish that keeps the
        episode within budget.

        Args:
            step: index of the step being decided.
            distance: ``[options, bits]``: how far each option is from the wish.
            spent: seconds the earlier steps added.
            budget: seconds all steps may spend.
            picks: the ``(option, bits)`` the earlier steps took.
            fill: also keep the budget used (below); ``False`` is AMC's wall, which only keeps
                the episode feasible. With ``budget=inf`` this is plain rounding to the nearest option.

        The option must leave the later steps room for their cheapest choices (so the
        episode ends within budget) and should leave them no more than their dearest choices
        can spend (so the budget is used). The second rule raises density only, at each
        bit-width on its own: more bits are not always worth more (8-bit dense beats 32-bit
        with a tenth of the weights kept), so it never forces a bit-width. Among allowed
        options the nearest to the wish wins; at a bit-width whose options all fall below the
        band, its dearest option within budget is allowed.
        """
        table = self.table(step, picks)
        if np.isinf(budget):
            allowed = np.ones(table.shape, dtype=bool)
        else:
            slack = 1e-9 * abs(budget)  # relative: budgets are seconds, often microseconds
            left = budget - spent
            feasible = table <= left - self.rest(step, picks, np.min) + slack
            in_band = feasible & (table >= left - self.rest(step, picks, np.max) - slack)
            if not feasible.any():  # unreachable once the budget was checked; never step further out
                allowed = table == table.min()
            elif not fill:
                allowed = feasible
            else:  # per bit-width: in the band, or its dearest feasible option when all are below
                dearest = np.where(feasible, table, -np.inf).max(axis=0, keepdims=True)
                allowed = np.where(in_band.any(axis=0, keepdims=True), in_band, feasible & (table == dearest))
        # nearest wish first; on a tie, the dearer option (it uses the budget)
        score = np.where(allowed, distance, np.inf) - 1e-6 * table / max(table.max(), 1e-30)
        option, bits = np.unravel_index(int(np.argmin(score)), table.shape)
        return int(option), int(bits)

    def allocate(self, penalties: Sequence[np.ndarray], budget: float) -> list[tuple[int, int]] | None:
        """The policy of least summed ``penalties`` within ``budget`` seconds, or ``None`` where
        none was found.

        ``penalties[i]`` is ``[options, bits]`` of step ``i``: what each choice is taken to cost in
        quality, the steps' costs adding up. The budgeted problem is a multiple-choice knapsack
        over the factors; its Lagrangian, least ``penalty + λ · seconds``, is a min-plus programme
        over the same factors as the wall's, exact however the decisions interleave. ``λ`` is
        bisected to the cheapest relaxation that fits, then the budget left is spent greedily on
        the upgrades that remove the most penalty per second, so the result is within budget and
        no single step can lower its penalty and still fit.
        """
        budget *= 1 + 1e-9  # as the wall's slack: budgets are seconds, often microseconds
        fitting = self._relaxed(penalties, 0.0)
        if self.seconds(fitting) > budget:  # the least penalty misses: price the seconds
            scale = max(float(np.abs(p).max()) for p in penalties) / max(budget, 1e-30) + 1e-30
            low, high = 0.0, scale
            while self.seconds(fitting := self._relaxed(penalties, high)) > budget:
                if high > 1e12 * scale:  # even the cheapest relaxation misses (float and int8 mixed)
                    return None
                high *= 2
            for _ in range(60):
                middle = (low + high) / 2
                if self.seconds(relaxed := self._relaxed(penalties, middle)) > budget:
                    low = middle
                else:
                    high, fitting = middle, relaxed
        return self._fill(fitting, penalties, budget)

    def _relaxed(self, penalties: Sequence[np.ndarray], price: float) -> list[tuple[int, int]]:
        """The least ``penalty + price · seconds`` policy (mixing seconds left out), decoded forward."""
        factors = [
            Factor(cost.axes, price * cost.table) + Factor((2 * i, 2 * i + 1), penalty)
            for i, (cost, penalty) in enumerate(zip(self.costs, penalties, strict=True))
        ]
        rest = [ZERO] * len(self)
        for i in range(len(self) - 1, 0, -1):
            rest[i - 1] = (factors[i] + rest[i]).reduce({2 * i, 2 * i + 1}, np.min)
        picks: list[tuple[int, int]] = []
        for i in range(len(self)):
            known = {2 * j + k: v for j, pick in enumerate(picks) for k, v in enumerate(pick)}
            total = (factors[i].at(known) + rest[i].at(known)).over((2 * i, 2 * i + 1))
            grid = np.broadcast_to(total, (self.options[i], self.bits))
            option, bits = np.unravel_index(int(np.argmin(grid)), grid.shape)
            picks.append((int(option), int(bits)))
        return picks

    def _fill(
        self, picks: list[tuple[int, int]], penalties: Sequence[np.ndarray], budget: float
    ) -> list[tuple[int, int]]:
        """Upgrade one step at a time, the most penalty removed per second first, while it fits."""
        while True:
            now = self.seconds(picks)
            changes = [
                (i, (o, b))
                for i, p in enumerate(penalties)
                for o, b in zip(*np.nonzero(p < p[picks[i]] - 1e-12), strict=True)
            ]
            if not changes:
                return picks
            seconds = self.seconds_changed(picks, changes)
            gains = [
                (penalties[i][picks[i]] - penalties[i][p]) / max(s - now, 1e-30) if s <= budget else -np.inf
                for (i, p), s in zip(changes, seconds, strict=True)
            ]
            best = int(np.argmax(gains))
            if gains[best] == -np.inf:
                return picks
            step, pick = changes[best]
            picks[step] = (int(pick[0]), int(pick[1]))

    def lower_until_within(self, picks: Sequence[tuple[int, int]], budget: float) -> list[tuple[int, int]]:
        """HAQ's post-episode wall: lower choices from the last step back until within ``budget``.

        Each pass walks from the last step to the first, lowering that step's bit-width one
        step and then its density one option, and stops as soon as the policy fits. The rule
        assumes lower is cheaper; where it is not (int8 slower than FP32 on a small CPU layer)
        it still ends, at the lowest choice of every step, which :meth:`lowest_fits` checks.
        """
        picks = [tuple(p) for p in picks]
        while self.seconds(picks) > budget:
            lowered = False
            for i in reversed(range(len(self))):
                for axis in (1, 0):  # bits first, then density
                    if picks[i][axis] > 0:
                        pick = list(picks[i])
                        pick[axis] -= 1
                        picks[i], lowered = tuple(pick), True
                        if self.seconds(picks) <= budget:
                            return picks
            if not lowered:
                break
        return picks

    def lowest_fits(self, budget: float) -> bool:
        """Whether the policy of every step's lowest bits and sparsest option meets ``budget`` (seconds)."""
        return self.seconds([(0, 0)] * len(self)) <= budget * (1 + 1e-9)


def _decided(picks: Sequence[tuple[int, int]]) -> list[int]:
    """A policy's index pairs as one index per axis: axis ``2*step`` its option, ``2*step + 1`` its bits."""
    return [int(v) for pick in picks for v in pick]
