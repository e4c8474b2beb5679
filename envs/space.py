"""The discrete search space of one network on one device, and the budget arithmetic.

Each searched layer has a list of *density options* (pattern, keep, group), sorted from the
sparsest to dense, and the device's bit-widths. Their latencies are computed once into a
table, so the env's action wall and every baseline work on numbers, not on models.

Filter pruning couples layers (Torch-Pruning's dependency graph says how,
:func:`rlprune.layers.filter_couplings`): a layer that drops filters shrinks the inputs of every
layer that reads them, layers that meet in a residual add keep or drop their filters together
(one step decides the whole group), and a depthwise conv follows the filters that feed it. So a
layer's seconds depend on up to a few steps' decisions: each step owns a :class:`Factor`, a table
over the decisions its layers depend on. The action wall needs, for every step, the fewest (and
most) seconds the later steps can still take given the decisions so far; that is a min-plus
dynamic programme over the factors, exact however the decisions interleave.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlprune.errors import BudgetError, ConfigError
from rlprune.hardware import LatencyModel, with_fewer_inputs
from rlprune.layers import FilterCoupling, LayerInfo, neighbour_pairs
from rlprune.patterns import SparsityPattern, get_pattern
from rlprune.policy import Choice, Pattern, Policy, searchable_patterns


@dataclass(frozen=True)
class Shape:
    """A density option of one layer: a pattern (its name) with ``keep`` of ``group`` kept."""

    pattern: str
    keep: int
    group: int

    @property
    def spec(self) -> SparsityPattern:
        """The pattern itself."""
        return get_pattern(self.pattern)

    @property
    def pruned(self) -> int:
        """Output channels the option removes (filter pruning), which its consumers lose."""
        return self.spec.pruned_outputs(self.keep, self.group)

    @property
    def density(self) -> float:
        """Share of weights kept."""
        return self.keep / self.group

    def choice(self, bits: int) -> Choice:
        """This option at ``bits`` for weights and activations."""
        pattern = Pattern.DENSE if self.keep == self.group else self.pattern
        return Choice(pattern, self.keep, self.group, w_bits=bits, a_bits=bits)

    def on(self, layer: LayerInfo, pad: bool) -> Shape | None:
        """This option on a layer tied to the one it was made for, or ``None`` where it cannot apply.

        Tied layers share their filters, so filter and N:M options carry over as they are (when
        the layer's shape allows them); k-of-n and unstructured keep the same share of the
        layer's own ``n`` (:meth:`~rlprune.patterns.SparsityPattern.fit`).
        """
        if not self.spec.fits(layer, self.group, pad=pad):
            return None
        return Shape(self.pattern, *self.spec.fit(self.keep, self.group, layer))


def layer_shapes(
    layer: LayerInfo,
    pattern: str,
    levels: int,
    min_density: float,
    nm_options: Sequence[tuple[int, int]],
    pad: bool = False,
) -> tuple[list[Shape], str | None]:
    """The density options of ``layer`` under ``pattern``, sparsest first, dense last
    (:meth:`~rlprune.patterns.SparsityPattern.options`).

    With ``pad``, N:M takes any reduction length (its last group is padded with zeros, as the
    masks do); transposable N:M always needs whole MxM tiles.
    Returns the options and, when the layer cannot take the pattern, the reason it stays dense.
    """
    options, reason = get_pattern(pattern).options(
        layer, levels=levels, min_density=min_density, nm_options=nm_options, pad=pad
    )
    return [*(Shape(pattern, keep, group) for keep, group in options), Shape(Pattern.DENSE, 1, 1)], reason


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

    def at(self, known: Mapping[int, int]) -> Factor:
        """The table once the ``known`` axes took the given indices."""
        index = tuple(known.get(a, slice(None)) for a in self.axes)
        return Factor(tuple(a for a in self.axes if a not in known), self.table[index])


ZERO = Factor((), np.zeros(()))


@dataclass
class SearchSpace:
    """The steps of a search, their options and their seconds, for a model on a device.

    A step decides one layer, or (filter pruning) a group of layers whose output channels are
    tied by residual adds; its depthwise followers go with it. The layers' seconds are grouped
    into one :class:`Factor` per step: the layers whose every dependency is decided once that
    step is.

    Attributes:
        layers: per step, its first layer (the one whose options ``shapes`` lists), in forward order.
        shapes: per step, its density options (sparsest first, dense last).
        bits: bit-widths to choose from, ascending.
        costs: per step, the seconds of the layers costed once it is decided.
        fixed_latency: seconds no choice changes: the layers no decision touches (kept at the
            reference precision) and the network's overhead outside its layers.
        dense_latency: seconds of the whole network, dense at the device's reference precision.
        skipped: layers that cannot take a searched pattern, or have no step of their own, with why.
        patterns: the searched patterns; with more than one, each step picks its own.
        members: per step, the layers it decides (tied layers share its option and bit-width).
        followers: per step, the depthwise convs that lose the channels its filter option
            prunes and run dense at its bits.
        couplings: the layers' filter couplings (empty unless filter pruning is searched).
        overhead: the network's seconds outside its layers (part of fixed and dense latency).
        nm_pad: N:M pads a reduction length that is not a multiple of M (for tied layers' options).
        mixed_seconds: seconds the network adds once when its layers run both float and int8
            (:attr:`~rlprune.hardware.LatencyModel.mixed_seconds`), charged to the step that
            first mixes them.
        integer: per bit-width, whether it runs in integers (empty when ``mixed_seconds`` is 0).
        fixed_kinds: whether the layers no step decides run in integers (empty when there are none).
    """

    layers: list[LayerInfo]
    shapes: list[list[Shape]]
    bits: tuple[int, ...]
    costs: list[Factor]
    fixed_latency: float
    dense_latency: float
    skipped: dict[str, str]
    patterns: tuple[Pattern, ...]
    members: list[tuple[LayerInfo, ...]] = field(default_factory=list)
    followers: list[tuple[str, ...]] = field(default_factory=list)
    couplings: dict[str, FilterCoupling] = field(default_factory=dict)
    overhead: float = 0.0
    nm_pad: bool = False
    mixed_seconds: float = 0.0
    integer: tuple[bool, ...] = ()
    fixed_kinds: frozenset[bool] = frozenset()

    def __post_init__(self) -> None:
        self.members = self.members or [(layer,) for layer in self.layers]
        self.followers = self.followers or [() for _ in self.layers]
        # rests[pick][kind][i]: the fewest (np.min) or most (np.max) seconds steps i+1.. can
        # take, over the decisions up to step i, at any bit-width (kind None) or only at those
        # that run in integers (True) or float (False); exact, by dynamic programming from the back.
        kinds = (None, True, False) if self.mixed_seconds > 0 else (None,)
        self._rests = {pick: {kind: self._rest(pick, kind) for kind in kinds} for pick in (np.min, np.max)}

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

    def _rest_grid(
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

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def step_of(self) -> dict[str, int]:
        """The step that decides each searched layer: its own, or a depthwise follower's leader's."""
        return _owners(self.members, self.followers)

    @property
    def min_latency(self) -> np.ndarray:
        """Cheapest seconds of each step (over every earlier decision)."""
        return np.array([c.table.min() for c in self.costs])

    @property
    def max_latency(self) -> np.ndarray:
        """Dearest seconds of each step (over every earlier decision)."""
        return np.array([c.table.max() for c in self.costs])

    def _grid(self, factor: Factor, step: int, picks: Sequence[tuple[int, int]]) -> np.ndarray:
        """``factor`` once the steps before ``step`` took ``picks``, as ``[options, bits]`` of ``step``."""
        known = {2 * j + k: int(v) for j, pick in enumerate(picks[:step]) for k, v in enumerate(pick)}
        own = factor.at(known).over((2 * step, 2 * step + 1))
        return np.broadcast_to(own, (len(self.shapes[step]), len(self.bits)))

    def table(self, step: int, picks: Sequence[tuple[int, int]] = ()) -> np.ndarray:
        """Seconds ``[options, bits]`` that ``step`` adds once the steps before it took ``picks``
        (``mixed_seconds`` where it is the first to run at the other kind)."""
        own = self._grid(self.costs[step], step, picks)
        if self.mixed_seconds > 0 and len(seen := self._seen(step, picks)) == 1:
            (kind,) = seen
            own = own + self.mixed_seconds * np.array([runs != kind for runs in self.integer])[None, :]
        return own

    def step_seconds(self, picks: Sequence[tuple[int, int]]) -> np.ndarray:
        """Seconds each step adds under a policy given as index pairs."""
        return np.array([self.table(i, picks)[tuple(picks[i])] for i in range(len(self))])

    def seconds(self, picks: Sequence[tuple[int, int]]) -> float:
        """Seconds of the searched layers (and of the layers they shrink) under a policy of index pairs."""
        return float(self.step_seconds(picks).sum())

    def relative(self, seconds: float) -> float:
        """Seconds of searched layers plus the fixed part, as a share of the dense network."""
        return (seconds + self.fixed_latency) / self.dense_latency

    def absolute_budget(self, budget: float) -> float:
        """The seconds the searched layers may spend under a relative ``budget``."""
        return budget * self.dense_latency - self.fixed_latency

    def cheapest(self) -> float:
        """The lowest relative latency any policy reaches."""
        return self.relative(float((self.table(0) + self._rest_grid(0, (), np.min)).min()))

    def check_budget(self, budget: float) -> None:
        """Raise when no policy of this space meets ``budget``."""
        if not 0.0 < budget <= 1.0:
            raise ConfigError(f"budget.latency must be in (0, 1], got {budget}")
        cheapest = self.cheapest()
        if cheapest > budget + 1e-12:
            shrinks = any(get_pattern(p).shrinks_outputs for p in self.patterns)
            hint = "" if shrinks else ", or search.pattern=filter (fewer channels)"
            raise BudgetError(
                f"budget.latency={budget} is below the cheapest reachable latency {cheapest:.4f} of the "
                f"dense model on this hardware with search.pattern={list(map(str, self.patterns))}; "
                f"use budget.latency >= {np.ceil(cheapest * 1000) / 1000:.3f}{hint}"
            )

    def policy(self, picks: Sequence[tuple[int, int]]) -> Policy:
        """The policy of one ``(option, bits)`` index pair per step: its layers, then its followers."""
        if len(picks) != len(self):
            raise ValueError(f"{len(self)} steps but {len(picks)} picks")
        choices = []
        for i, (s, b) in enumerate(picks):
            bits = self.bits[b]
            choices += [(m.name, self.shapes[i][s].on(m, self.nm_pad).choice(bits)) for m in self.members[i]]
            follow = Choice(Pattern.DENSE, 1, 1, bits, bits)
            choices += [(name, follow) for name in self.followers[i]]
        return Policy(tuple(choices))

    def policy_latency(self, picks: Sequence[tuple[int, int]]) -> float:
        """Relative latency of a policy given as index pairs."""
        return self.relative(self.seconds(picks))

    def project(
        self,
        step: int,
        want_density: float,
        want_bits: float,
        spent: float,
        budget: float,
        want_pattern: int | None = None,
        picks: Sequence[tuple[int, int]] = (),
        fill: bool = True,
    ) -> tuple[int, int]:
        """The action wall: the option nearest to the wish that keeps the episode within budget.

        Args:
            step: index of the step being decided.
            want_density: desired density in [0, 1].
            want_bits: desired position in the bits list, in [0, 1].
            spent: seconds the earlier steps added.
            budget: seconds the searched layers may spend in all.
            want_pattern: index into ``patterns`` of the wished pattern, when several are searched;
                an option of another pattern is one unit further from the wish (dense matches all).
            picks: the ``(option, bits)`` the earlier steps took (their filters may feed this one).
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
        densities = np.array([s.density for s in self.shapes[step]])
        bit_pos = np.linspace(0.0, 1.0, len(self.bits)) if len(self.bits) > 1 else np.ones(1)
        distance = np.abs(densities - want_density)[:, None] + np.abs(bit_pos - want_bits)[None, :]
        if want_pattern is not None:
            wanted = self.patterns[want_pattern]
            other = [s.pattern not in (wanted, Pattern.DENSE) for s in self.shapes[step]]
            distance = distance + np.array(other, dtype=float)[:, None]
        if np.isinf(budget):
            allowed = np.ones(table.shape, dtype=bool)
        else:
            slack = 1e-9 * abs(budget)  # relative: budgets are seconds, often microseconds
            left = budget - spent
            feasible = table <= left - self._rest_grid(step, picks, np.min) + slack
            in_band = feasible & (table >= left - self._rest_grid(step, picks, np.max) - slack)
            if not feasible.any():  # unreachable once the budget was checked; never step further out
                allowed = table == table.min()
            elif not fill:
                allowed = feasible
            else:  # per bit-width: in the band, or its dearest feasible option when all are below
                dearest = np.where(feasible, table, -np.inf).max(axis=0, keepdims=True)
                allowed = np.where(in_band.any(axis=0, keepdims=True), in_band, feasible & (table == dearest))
        # nearest wish first; on a tie, the dearer option (it uses the budget)
        score = np.where(allowed, distance, np.inf) - 1e-6 * table / max(table.max(), 1e-30)
        shape, bits = np.unravel_index(int(np.argmin(score)), table.shape)
        return int(shape), int(bits)

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


MAX_TABLE = 1 << 22
"""The most entries the dynamic programme's table may hold at any step (32 MiB of float64)."""


def build_space(
    all_layers: Sequence[LayerInfo],
    searched: Sequence[LayerInfo],
    hardware: LatencyModel,
    pattern: str | Sequence[str],
    bits: Sequence[int] | None,
    levels: int,
    min_density: float,
    nm_options: Sequence[Sequence[int]] | None,
    couplings: Mapping[str, FilterCoupling] | None = None,
    overhead: float = 0.0,
    nm_pad: bool = False,
) -> SearchSpace:
    """Enumerate the options of every step and cost them on ``hardware``.

    ``couplings`` (from :func:`rlprune.layers.filter_couplings` over ``all_layers``) are needed
    when ``pattern`` includes ``filter``: they say whose inputs a layer's filters feed, which
    layers are tied and which depthwise convs follow. ``overhead`` is the network's seconds
    outside its layers (:meth:`LatencyModel.calibrate`). ``nm_pad`` lets N:M pad a reduction
    length that is not a multiple of M instead of skipping the layer.

    Raises:
        ConfigError: for an unknown pattern, bits the device cannot run, or bad ranges.
    """
    names = [pattern] if isinstance(pattern, str) else list(pattern)
    valid = searchable_patterns()
    if not names or any(name not in valid for name in names):
        raise ConfigError(f"unknown search.pattern {pattern!r}; valid: {valid}, or a list of them")
    patterns = tuple(dict.fromkeys(get_pattern(name).name for name in names))
    for pat in patterns:
        if pat not in hardware.patterns:
            raise ConfigError(
                f"hardware {hardware.name} cannot run pattern {pat}; "
                f"it runs {list(map(str, hardware.patterns))}"
            )
    if not 0.0 < min_density <= 1.0:
        raise ConfigError(f"search.min_density must be in (0, 1], got {min_density}")
    if levels < 2:
        raise ConfigError(f"search.levels must be >= 2, got {levels}")
    chosen_bits = tuple(sorted(bits)) if bits else tuple(hardware.bits)
    unsupported = [b for b in chosen_bits if b not in hardware.bits]
    if unsupported:
        raise ConfigError(
            f"search.bits {unsupported} not supported by hardware {hardware.name}; "
            f"valid: {list(hardware.bits)}"
        )
    nm = [tuple(o) for o in nm_options] if nm_options else list(hardware.nm_options)
    for n, m in nm:
        if not 0 < n < m:
            raise ConfigError(f"search.nm_options: N:M must have 0 < N < M, got {n}:{m}")
    if any(get_pattern(p).n_of_m for p in patterns) and not nm:
        raise ConfigError(
            f"hardware {hardware.name} accelerates no N:M pattern; set search.nm_options, e.g. [[2, 4]]"
        )
    shrinks = any(get_pattern(p).shrinks_outputs for p in patterns)
    if shrinks and couplings is None:
        raise ValueError(
            "searching filter pruning needs the layers' couplings (rlprune.layers.filter_couplings)"
        )
    couplings = dict(couplings or {})

    steps, followers, blocked, skipped = _steps(searched, couplings, shrinks)

    def options(i: int, without_filters: str | None) -> list[Shape]:
        members, found, reasons = steps[i], {Shape(Pattern.DENSE, 1, 1)}, []
        for pat in patterns:
            if get_pattern(pat).shrinks_outputs and (reason := without_filters or blocked[i]):
                usable = []
            else:
                shapes, reason = layer_shapes(members[0], pat, levels, min_density, nm, nm_pad)
                usable = [s for s in shapes if all(s.on(m, nm_pad) for m in members[1:])]
                if len(usable) < len(shapes) and not reason:
                    reason = f"not every layer tied to '{members[0].name}' takes all of its options"
            found.update(usable)
            if reason:
                reasons.append(reason if len(patterns) == 1 else f"{pat}: {reason}")
        for member in members:
            if reasons:
                skipped[member.name] = "; ".join(reasons)
            else:
                skipped.pop(member.name, None)
        return sorted(found, key=lambda s: (s.density, str(s.pattern), s.keep))

    shapes = [options(i, None) for i in range(len(steps))]
    while True:
        terms = _terms(all_layers, steps, shapes, followers, couplings)
        wide = _widest(terms, shapes, len(chosen_bits))
        if wide is None:
            break
        step, entries = wide
        shapes[step] = options(
            step,
            f"its filters feed layers far down the network: deciding them with the others would need "
            f"a table of {entries:,} entries (the limit is {MAX_TABLE:,})",
        )

    cells = {}  # every (layer, choice) a table entry costs
    for term in terms:
        cells.update(
            {key: term.cell(key, shapes, chosen_bits, hardware) for key in term.keys(shapes, chosen_bits)}
        )
    hardware.prepare(list(cells.values()))
    seconds = {key: hardware.latency(*cell) for key, cell in cells.items()}
    costs = [
        Factor((2 * i, 2 * i + 1), np.zeros((len(shapes[i]), len(chosen_bits)))) for i in range(len(steps))
    ]
    reference = hardware.dense_choice()
    touched = {term.layer.name for term in terms}
    fixed = overhead + sum(hardware.latency(lay, reference) for lay in all_layers if lay.name not in touched)
    for term in terms:
        costs[term.step] = costs[term.step] + term.factor(shapes, chosen_bits, seconds)
    owner = _owners(steps, followers)
    for step, factor in _switch_factors(all_layers, owner, chosen_bits, hardware):
        costs[step] = costs[step] + factor
    dense = overhead + sum(hardware.latency(lay, reference) for lay in all_layers)
    integer = tuple(hardware.runs_integer(Choice(Pattern.DENSE, 1, 1, b, b)) for b in chosen_bits)
    mixes = hardware.mixed_seconds > 0 and len(set(integer)) > 1
    undecided = [lay for lay in all_layers if lay.name not in owner]
    return SearchSpace(
        [members[0] for members in steps],
        shapes,
        chosen_bits,
        costs,
        float(fixed),
        float(dense),
        skipped,
        patterns,
        steps,
        followers,
        couplings,
        overhead,
        nm_pad,
        hardware.mixed_seconds if mixes else 0.0,
        integer if mixes else (),
        frozenset({hardware.runs_integer(reference)} if undecided and mixes else ()),
    )


def _owners(steps: Sequence[Sequence[LayerInfo]], followers: Sequence[Sequence[str]]) -> dict[str, int]:
    """The step that decides each layer: the one it is a member of, or whose depthwise follower it is."""
    return {
        name: i
        for i, (members, follow) in enumerate(zip(steps, followers, strict=True))
        for name in (*(m.name for m in members), *follow)
    }


def _switch_factors(
    layers: Sequence[LayerInfo], owner: Mapping[str, int], bits: Sequence[int], hardware: LatencyModel
) -> list[tuple[int, Factor]]:
    """The seconds of switching between float and int8, each as a table over the bits of the two
    steps that decide a pair of neighbouring layers (:attr:`LayerInfo.neighbours`), and the
    later step it belongs to.

    A layer no step decides runs the reference choice; two layers of one step never switch.
    """
    if hardware.switch_seconds <= 0 or len(bits) < 2:
        return []
    choices = [Choice(Pattern.DENSE, 1, 1, b, b) for b in bits]
    reference = hardware.dense_choice()
    factors = []
    for first, then in neighbour_pairs(layers):
        a, b = owner.get(first), owner.get(then)
        if a == b:
            continue
        if a is None or b is None:  # one side runs the reference choice
            step = b if a is None else a
            table = [hardware.switches(reference, c) for c in choices]
            factors.append((step, Factor((2 * step + 1,), hardware.switch_seconds * np.array(table, float))))
            continue
        low, high = sorted((a, b))
        table = [[hardware.switches(c, d) for d in choices] for c in choices]
        axes = (2 * low + 1, 2 * high + 1)
        factors.append((high, Factor(axes, hardware.switch_seconds * np.array(table, float))))
    return factors


def _steps(
    searched: Sequence[LayerInfo], couplings: Mapping[str, FilterCoupling], filters: bool
) -> tuple[list[tuple[LayerInfo, ...]], list[tuple[str, ...]], list[str | None], dict[str, str]]:
    """The steps of the search: per step its layers, its depthwise followers and why its filters
    cannot be searched (or ``None``), and the layers folded into another step's, with why.

    Without filter pruning every searched layer is a step. With it, layers tied by residual
    adds form one step (in forward order, placed at the first of them) when all of them are
    searched and none is fixed; a layer's depthwise followers join its step when its filters
    can be searched.
    """
    if not filters:
        return [(layer,) for layer in searched], [() for _ in searched], [None] * len(searched), {}
    by_name = {layer.name: layer for layer in searched}
    placed: set[str] = set()
    steps, blocked = [], []
    for layer in searched:
        if layer.name in placed:
            continue
        coupling = couplings[layer.name]
        tied = [layer.name, *coupling.tied]
        missing = [name for name in coupling.tied if name not in by_name]
        fixed = next((couplings[n].fixed for n in tied if n in couplings and couplings[n].fixed), None)
        members, reason = (layer,), coupling.blocked
        if missing:
            reason = f"its output channels are tied (a residual add) to {missing}, which are not searched"
        elif fixed:
            reason = fixed
        elif coupling.tied and not any(n in placed for n in coupling.tied):
            members, reason = tuple(lay for lay in searched if lay.name in tied), None
        placed.update(m.name for m in members)
        steps.append(members)
        blocked.append(reason)
    followers: list[tuple[str, ...]] = []
    skipped: dict[str, str] = {}
    for members, reason in zip(steps, blocked, strict=True):
        led = {} if reason else {f: m.name for m in members for f in couplings[m.name].followers}
        led = {name: leader for name, leader in led.items() if name in by_name}
        skipped.update(
            {
                name: f"a depthwise conv: its channels are those of '{leader}', whose decision it shares"
                for name, leader in led.items()
            }
        )
        followers.append(tuple(led))
    kept = [i for i, members in enumerate(steps) if members[0].name not in skipped]
    return [steps[i] for i in kept], [followers[i] for i in kept], [blocked[i] for i in kept], skipped


@dataclass(frozen=True)
class _Term:
    """One layer's seconds, as they depend on the steps' decisions.

    Attributes:
        layer: the layer.
        own: the step that decides its pattern and bits (``None``: it runs the reference choice).
        follows: whether it is a depthwise follower of ``own`` (dense at its bits).
        inputs: ``{step: inputs}``: each step whose pruned filters remove ``inputs`` of its input
            channels per filter.
        step: the step at which every decision it depends on is known.
    """

    layer: LayerInfo
    own: int | None
    follows: bool
    inputs: dict[int, int]
    step: int

    @property
    def axes(self) -> tuple[int, ...]:
        own = () if self.own is None else (2 * self.own, 2 * self.own + 1)
        return tuple(sorted({*own, *(2 * h for h in self.inputs)}))

    def removed(self, shapes: list[list[Shape]]) -> np.ndarray:
        """Input channels removed, broadcast over :attr:`axes`."""
        total = np.zeros([1] * len(self.axes), dtype=int)
        for h, per_filter in self.inputs.items():
            pruned = np.array([s.pruned for s in shapes[h]])
            total = total + per_filter * pruned.reshape([-1 if a == 2 * h else 1 for a in self.axes])
        return total

    def keys(self, shapes: list[list[Shape]], bits: tuple[int, ...]) -> list[tuple]:
        """The distinct ``(layer, removed, option, bits)`` entries its table needs."""
        removed = np.unique(self.removed(shapes))
        if self.own is None:
            return [(self.layer.name, int(r), None, None) for r in removed]
        return [
            (self.layer.name, int(r), s, b)
            for r in removed
            for s in range(len(shapes[self.own]))
            for b in range(len(bits))
        ]

    def cell(
        self, key: tuple, shapes: list[list[Shape]], bits: tuple[int, ...], hardware: LatencyModel
    ) -> tuple[LayerInfo, Choice]:
        """The layer and choice that a key of :meth:`keys` costs."""
        _, removed, s, b = key
        if self.own is None:
            choice = hardware.dense_choice()
        elif self.follows:
            choice = Choice(Pattern.DENSE, 1, 1, bits[b], bits[b])
        else:
            # the step's options were kept only where every layer it decides takes them
            choice = shapes[self.own][s].on(self.layer, pad=True).choice(bits[b])
        return with_fewer_inputs(self.layer, choice, removed)

    def factor(
        self, shapes: list[list[Shape]], bits: tuple[int, ...], seconds: Mapping[tuple, float]
    ) -> Factor:
        """Its seconds over :attr:`axes`."""
        removed = self.removed(shapes)
        values = np.unique(removed)
        where = np.searchsorted(values, removed)
        name = self.layer.name
        if self.own is None:
            table = np.array([seconds[(name, int(r), None, None)] for r in values])[where]
        else:
            per = np.array(
                [
                    [
                        [seconds[(name, int(r), s, b)] for b in range(len(bits))]
                        for s in range(len(shapes[self.own]))
                    ]
                    for r in values
                ]
            )
            grid = [
                np.arange(n).reshape([-1 if a == axis else 1 for a in self.axes])
                for axis, n in ((2 * self.own, len(shapes[self.own])), (2 * self.own + 1, len(bits)))
            ]
            table = per[where, grid[0], grid[1]]
        sizes = [len(shapes[a // 2]) if a % 2 == 0 else len(bits) for a in self.axes]
        return Factor(self.axes, np.broadcast_to(table, sizes).copy())


def _terms(
    all_layers: Sequence[LayerInfo],
    steps: list[tuple[LayerInfo, ...]],
    shapes: list[list[Shape]],
    followers: list[tuple[str, ...]],
    couplings: Mapping[str, FilterCoupling],
) -> list[_Term]:
    """The :class:`_Term` of every layer some decision touches."""
    own = {m.name: i for i, members in enumerate(steps) for m in members}
    led = {name: i for i, names in enumerate(followers) for name in names}
    inputs: dict[str, dict[int, int]] = {}
    for i, members in enumerate(steps):
        if not any(s.spec.shrinks_outputs for s in shapes[i]):
            continue
        for m in members:
            for consumer, per_filter in couplings[m.name].consumers:
                inputs.setdefault(consumer, {}).setdefault(i, per_filter)
        for name in followers[i]:
            inputs.setdefault(name, {})[i] = 1
    terms = []
    for layer in all_layers:
        step = own.get(layer.name, led.get(layer.name))
        feeds = inputs.get(layer.name, {})
        if step is None and not feeds:
            continue
        last = max([*feeds, *([] if step is None else [step])])
        terms.append(_Term(layer, step, layer.name in led, feeds, last))
    return terms


def _widest(terms: list[_Term], shapes: list[list[Shape]], bits: int) -> tuple[int, int] | None:
    """The step whose filters to drop when a table of the dynamic programme would exceed
    :data:`MAX_TABLE` entries (and that table's size), or ``None`` when every table fits.

    A step's decision stays in the table from its step until the last layer that depends on it
    is costed; the step that stays longest in the widest table gives way.
    """
    last_use: dict[int, int] = {}
    for term in terms:
        for axis in term.axes:
            last_use[axis] = max(last_use.get(axis, 0), term.step)
    worst, worst_step = 0, None
    for i in range(len(shapes)):
        live = {a for a, end in last_use.items() if a // 2 <= i <= end} | {2 * i, 2 * i + 1}
        entries = int(np.prod([len(shapes[a // 2]) if a % 2 == 0 else bits for a in live], dtype=float))
        if entries > worst:
            worst, worst_step = entries, i
    if worst <= MAX_TABLE or worst_step is None:
        return None
    live = [a for a, end in last_use.items() if a // 2 < worst_step <= end and a % 2 == 0]
    live = [a for a in live if any(s.spec.shrinks_outputs for s in shapes[a // 2])]
    if not live:
        return None
    return max(live, key=lambda a: last_use[a] - a // 2) // 2, worst
