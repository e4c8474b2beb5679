"""The discrete search space of one network on one device, and the budget arithmetic.

Each searched layer has a list of *density options* (pattern, keep, group), sorted from the
sparsest to dense, and the device's bit-widths. Their latencies are computed once into a
table, so the env's action wall and every baseline work on numbers, not on models.

Filter pruning couples neighbours: a layer that drops filters shrinks its consumer's input
channels, so the consumer's cost depends on the earlier decision. Filter options are offered
only where the layer's sole consumer is the next searched layer (Torch-Pruning's dependency
graph says which, :func:`rlprune.layers.filter_couplings`), and that consumer's table gets one
row per option of the layer before it. Layers are decided in forward order, so the row is
known when the consumer is decided, and the action wall stays exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rlprune.errors import BudgetError, ConfigError
from rlprune.hardware import LatencyModel, with_fewer_inputs
from rlprune.layers import FilterCoupling, LayerInfo
from rlprune.policy import SEARCHABLE_PATTERNS, Choice, Pattern, Policy


@dataclass(frozen=True)
class Shape:
    """A density option of one layer: a pattern with ``keep`` of ``group`` kept."""

    pattern: Pattern
    keep: int
    group: int

    @property
    def density(self) -> float:
        """Share of weights kept."""
        return self.keep / self.group

    def choice(self, bits: int) -> Choice:
        """This option at ``bits`` for weights and activations."""
        pattern = Pattern.DENSE if self.keep == self.group else self.pattern
        return Choice(pattern, self.keep, self.group, w_bits=bits, a_bits=bits)


def layer_shapes(
    layer: LayerInfo,
    pattern: Pattern,
    levels: int,
    min_density: float,
    nm_options: Sequence[tuple[int, int]],
    pad: bool = False,
) -> tuple[list[Shape], str | None]:
    """The density options of ``layer`` under ``pattern``, sparsest first, dense last.

    With ``pad``, N:M takes any reduction length (its last group is padded with zeros, as the
    masks do); transposable N:M always needs whole MxM tiles.
    Returns the options and, when the layer cannot take the pattern, the reason it stays dense.
    """
    dense = Shape(Pattern.DENSE, 1, 1)
    if pattern in (Pattern.NM, Pattern.NM_TRANSPOSABLE):
        padded = pad and pattern is Pattern.NM
        usable = [(n, m) for n, m in nm_options if padded or layer.reduction % m == 0]
        if pattern is Pattern.NM_TRANSPOSABLE:
            usable = [(n, m) for n, m in usable if layer.out_channels % m == 0]
        if not usable:
            if pattern is Pattern.NM:
                return [
                    dense
                ], f"reduction length {layer.reduction} is not a multiple of any M in {list(nm_options)}"
            return [dense], (
                f"reduction length {layer.reduction} and output channels {layer.out_channels} are not both "
                f"multiples of any M in {list(nm_options)}"
            )
        shapes = sorted({Shape(pattern, n, m) for n, m in usable}, key=lambda s: s.density)
        return [*shapes, dense], None
    # k-of-n keeps k of the n = reduction weights of each row; unstructured, k of the whole
    # layer; filter, k of the n = out_channels filters
    n = {Pattern.KOFN_WEIGHT: layer.reduction, Pattern.FILTER: layer.out_channels}.get(pattern, layer.params)
    keeps = np.unique(np.clip(np.round(np.linspace(min_density, 1.0, levels) * n), 1, n).astype(int))
    shapes = [Shape(pattern, int(k), n) for k in keeps if k < n]
    return [*shapes, dense], None


@dataclass
class SearchSpace:
    """Per-layer options and their latencies, for a model on a device.

    Attributes:
        layers: the searched layers, in forward order.
        shapes: per layer, its density options (sparsest first, dense last).
        bits: bit-widths to choose from, ascending.
        latency: per layer, an array ``[rows, len(shapes), len(bits)]`` of seconds. A layer fed
            by the previous layer's filter options (``fed[i]``) has a row per option of that
            layer; any other layer has one row.
        fixed_latency: seconds no choice changes: the layers that are not searched (kept at
            reference precision) and the network's overhead outside its layers.
        dense_latency: seconds of the whole network, dense at the device's reference precision.
        skipped: layers that cannot take a searched pattern, with the reason.
        patterns: the searched patterns; with more than one, each layer picks its own.
        fed: per layer, whether its input channels follow the previous layer's option.
        couplings: the layers' filter couplings (empty unless filter pruning is searched).
        overhead: the network's seconds outside its layers (part of fixed and dense latency).
        followers: per layer, the depthwise convs that share its decision: they lose the
            channels its filter option prunes and run at its bits; their seconds are in its table.
    """

    layers: list[LayerInfo]
    shapes: list[list[Shape]]
    bits: tuple[int, ...]
    latency: list[np.ndarray]
    fixed_latency: float
    dense_latency: float
    skipped: dict[str, str]
    patterns: tuple[Pattern, ...]
    fed: list[bool] = field(default_factory=list)
    couplings: dict[str, FilterCoupling] = field(default_factory=dict)
    overhead: float = 0.0
    followers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.fed:
            self.fed = [False] * len(self.layers)
        # rest_min[i][s]: the fewest seconds layers i+1.. can take once layer i took option s
        # (rest_max: the most); exact under coupling, by dynamic programming from the back.
        self._rest_min = self._rest(np.min)
        self._rest_max = self._rest(np.max)

    def _rest(self, pick: Callable[..., np.ndarray]) -> list[np.ndarray]:
        rest = [np.zeros(len(shapes)) for shapes in self.shapes]
        for i in range(len(self) - 2, -1, -1):
            after = self.latency[i + 1] + rest[i + 1][None, :, None]  # [rows, shapes, bits]
            per_row = pick(after.reshape(after.shape[0], -1), axis=1)
            rest[i] = per_row if self.fed[i + 1] else np.full(len(self.shapes[i]), per_row[0])
        return rest

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def min_latency(self) -> np.ndarray:
        """Cheapest latency of each layer (over every input row)."""
        return np.array([t.min() for t in self.latency])

    @property
    def max_latency(self) -> np.ndarray:
        """Most expensive latency of each layer (over every input row)."""
        return np.array([t.max() for t in self.latency])

    def row(self, layer: int, previous_shape: int | None) -> int:
        """The row of ``layer``'s table given the option index the previous layer took."""
        return int(previous_shape) if self.fed[layer] and previous_shape is not None else 0

    def table(self, layer: int, previous_shape: int | None = None) -> np.ndarray:
        """Seconds ``[shapes, bits]`` of ``layer`` once the previous layer took ``previous_shape``."""
        return self.latency[layer][self.row(layer, previous_shape)]

    def seconds(self, picks: Sequence[tuple[int, int]]) -> float:
        """Seconds of the searched layers under a policy given as index pairs."""
        total, previous = 0.0, None
        for i, (shape, bits) in enumerate(picks):
            total += float(self.table(i, previous)[shape, bits])
            previous = shape
        return total

    def relative(self, seconds: float) -> float:
        """Seconds of searched layers plus the fixed part, as a share of the dense network."""
        return (seconds + self.fixed_latency) / self.dense_latency

    def absolute_budget(self, budget: float) -> float:
        """The seconds the searched layers may spend under a relative ``budget``."""
        return budget * self.dense_latency - self.fixed_latency

    def cheapest(self) -> float:
        """The lowest relative latency any policy reaches."""
        return self.relative(float((self.table(0) + self._rest_min[0][:, None]).min()))

    def check_budget(self, budget: float) -> None:
        """Raise when no policy of this space meets ``budget``."""
        if not 0.0 < budget <= 1.0:
            raise ConfigError(f"budget.latency must be in (0, 1], got {budget}")
        cheapest = self.cheapest()
        if cheapest > budget + 1e-12:
            hint = "" if Pattern.FILTER in self.patterns else ", or search.pattern=filter (fewer channels)"
            raise BudgetError(
                f"budget.latency={budget} is below the cheapest reachable latency {cheapest:.4f} of the "
                f"dense model on this hardware with search.pattern={[p.value for p in self.patterns]}; "
                f"use budget.latency >= {np.ceil(cheapest * 1000) / 1000:.3f}{hint}"
            )

    def choice(self, layer: int, shape: int, bits: int) -> Choice:
        """The choice of option ``(shape, bits)`` (indices) at ``layer``."""
        return self.shapes[layer][shape].choice(self.bits[bits])

    def policy(self, picks: Sequence[tuple[int, int]]) -> Policy:
        """The policy of one ``(shape, bits)`` index pair per layer (followers after their layer)."""
        choices = []
        for i, (lay, (s, b)) in enumerate(zip(self.layers, picks, strict=True)):
            choices.append((lay.name, self.choice(i, s, b)))
            follow = Choice(Pattern.DENSE, 1, 1, self.bits[b], self.bits[b])
            choices += [(name, follow) for name in self.followers.get(lay.name, ())]
        return Policy(tuple(choices))

    def policy_latency(self, picks: Sequence[tuple[int, int]]) -> float:
        """Relative latency of a policy given as index pairs."""
        return self.relative(self.seconds(picks))

    def project(
        self,
        layer: int,
        want_density: float,
        want_bits: float,
        spent: float,
        budget: float,
        want_pattern: int | None = None,
        previous_shape: int | None = None,
        fill: bool = True,
    ) -> tuple[int, int]:
        """The action wall: the option nearest to the wish that keeps the episode within budget.

        Args:
            layer: index of the layer being decided.
            want_density: desired density in [0, 1].
            want_bits: desired position in the bits list, in [0, 1].
            spent: seconds already spent by earlier layers.
            budget: seconds the searched layers may spend in all.
            want_pattern: index into ``patterns`` of the wished pattern, when several are searched;
                an option of another pattern is one unit further from the wish (dense matches all).
            previous_shape: the option index the previous layer took (its filters may feed this one).
            fill: also keep the budget used (below); ``False`` is AMC's wall, which only keeps
                the episode feasible. With ``budget=inf`` this is plain rounding to the nearest option.

        The option must leave the later layers room for their cheapest choices (so the
        episode ends within budget) and should leave them no more than their dearest choices
        can spend (so the budget is used). The second rule raises density only, at each
        bit-width on its own: more bits are not always worth more (8-bit dense beats 32-bit
        with a tenth of the weights kept), so it never forces a bit-width. Among allowed
        options the nearest to the wish wins; at a bit-width whose options all fall below the
        band, its dearest option within budget is allowed.
        """
        table = self.table(layer, previous_shape)
        densities = np.array([s.density for s in self.shapes[layer]])
        bit_pos = np.linspace(0.0, 1.0, len(self.bits)) if len(self.bits) > 1 else np.ones(1)
        distance = np.abs(densities - want_density)[:, None] + np.abs(bit_pos - want_bits)[None, :]
        if want_pattern is not None:
            wanted = self.patterns[want_pattern]
            other = [s.pattern not in (wanted, Pattern.DENSE) for s in self.shapes[layer]]
            distance = distance + np.array(other, dtype=float)[:, None]
        if np.isinf(budget):
            allowed = np.ones(table.shape, dtype=bool)
        else:
            slack = 1e-9 * abs(budget)  # relative: budgets are seconds, often microseconds
            feasible = table <= budget - spent - self._rest_min[layer][:, None] + slack
            in_band = feasible & (table >= budget - spent - self._rest_max[layer][:, None] - slack)
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
        """HAQ's post-episode wall: lower choices from the last layer back until within ``budget``.

        Each pass walks from the last layer to the first, lowering that layer's bit-width one
        step and then its density one option, and stops as soon as the policy fits. The rule
        assumes lower is cheaper; where it is not (int8 slower than FP32 on a small CPU layer)
        it still ends, at the lowest choice of every layer, which :meth:`lowest_fits` checks.
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
        """Whether the policy of every layer's lowest bits and sparsest option meets ``budget`` (seconds)."""
        return self.seconds([(0, 0)] * len(self)) <= budget * (1 + 1e-9)


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
    """Enumerate the options of every searched layer and cost them on ``hardware``.

    ``couplings`` (from :func:`rlprune.layers.filter_couplings`) are needed when ``pattern``
    includes ``filter``: they say whose input channels a layer's filters feed. ``overhead`` is
    the network's seconds outside its layers (:meth:`LatencyModel.calibrate`). ``nm_pad``
    lets N:M pad a reduction length that is not a multiple of M instead of skipping the layer.

    Raises:
        ConfigError: for an unknown pattern, bits the device cannot run, or bad ranges.
    """
    names = [pattern] if isinstance(pattern, str) else list(pattern)
    valid = [p.value for p in SEARCHABLE_PATTERNS]
    if not names or any(name not in valid for name in names):
        raise ConfigError(f"unknown search.pattern {pattern!r}; valid: {valid}, or a list of them")
    patterns = tuple(dict.fromkeys(Pattern(name) for name in names))
    for pat in patterns:
        if pat not in hardware.patterns:
            raise ConfigError(
                f"hardware {hardware.name} cannot run pattern {pat.value}; "
                f"it runs {[p.value for p in hardware.patterns]}"
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
    if {Pattern.NM, Pattern.NM_TRANSPOSABLE} & set(patterns) and not nm:
        raise ConfigError(
            f"hardware {hardware.name} accelerates no N:M pattern; set search.nm_options, e.g. [[2, 4]]"
        )

    if Pattern.FILTER in patterns and couplings is None:
        raise ValueError(
            "searching filter pruning needs the layers' couplings (rlprune.layers.filter_couplings)"
        )
    couplings = dict(couplings or {})
    followers = _followers(searched, couplings) if Pattern.FILTER in patterns else {}
    skipped = {
        name: f"a depthwise conv: its channels are those of '{leader}', whose decision it shares"
        for leader, names in followers.items()
        for name in names
    }
    steps = [layer for layer in searched if layer.name not in skipped]
    shapes = []
    for i, layer in enumerate(steps):
        following = steps[i + 1].name if i + 1 < len(steps) else None
        options, reasons = {Shape(Pattern.DENSE, 1, 1)}, []
        for pat in patterns:
            if pat is Pattern.FILTER and (reason := _filter_blocked(couplings[layer.name], following)):
                layer_opts = []
            else:
                layer_opts, reason = layer_shapes(layer, pat, levels, min_density, nm, nm_pad)
            options.update(layer_opts)
            if reason:
                reasons.append(reason if len(patterns) == 1 else f"{pat.value}: {reason}")
        if reasons:
            skipped[layer.name] = "; ".join(reasons)
        shapes.append(sorted(options, key=lambda s: (s.density, s.pattern.value, s.keep)))

    fed = [i > 0 and any(s.pattern is Pattern.FILTER for s in shapes[i - 1]) for i in range(len(steps))]
    by_name = {layer.name: layer for layer in searched}
    cells = []  # (row, option, bits) -> the (layer, choice) pairs each table entry sums
    for i, layer in enumerate(steps):
        removed = [0]
        if fed[i]:
            per_filter = dict(couplings[steps[i - 1].name].consumers)[layer.name]
            removed = [
                (s.group - s.keep) * per_filter if s.pattern is Pattern.FILTER else 0 for s in shapes[i - 1]
            ]
        led = [by_name[name] for name in followers.get(layer.name, ())]
        cells.append(
            [[[_entry(layer, led, s, b, r) for b in chosen_bits] for s in shapes[i]] for r in removed]
        )
    hardware.prepare([pair for rows in cells for row in rows for option in row for e in option for pair in e])
    latency = [
        np.array([[[sum(hardware.latency(*p) for p in e) for e in option] for option in row] for row in rows])
        for rows in cells
    ]
    reference = hardware.dense_choice()
    searched_names = {lay.name for lay in searched}
    fixed = overhead + sum(
        hardware.latency(lay, reference) for lay in all_layers if lay.name not in searched_names
    )
    dense = overhead + sum(hardware.latency(lay, reference) for lay in all_layers)
    return SearchSpace(
        steps,
        shapes,
        chosen_bits,
        latency,
        float(fixed),
        float(dense),
        skipped,
        patterns,
        fed,
        couplings,
        overhead,
        followers,
    )


def _entry(
    layer: LayerInfo, followers: list[LayerInfo], shape: Shape, bits: int, removed: int
) -> list[tuple[LayerInfo, Choice]]:
    """What one table entry costs: ``layer`` under the option with ``removed`` inputs gone, and
    its followers, which lose the filters the option prunes and run dense at its bits."""
    pruned = shape.group - shape.keep if shape.pattern is Pattern.FILTER else 0
    follow = Choice(Pattern.DENSE, 1, 1, bits, bits)
    return [with_fewer_inputs(layer, shape.choice(bits), removed)] + [
        with_fewer_inputs(f, follow, pruned) for f in followers
    ]


def _followers(
    searched: Sequence[LayerInfo], couplings: Mapping[str, FilterCoupling]
) -> dict[str, tuple[str, ...]]:
    """The depthwise convs folded into the step of the layer whose filters they follow.

    A layer's followers share its decision when its filters may be searched and they come
    right after it in the searched layers (so its step can cost them too).
    """
    names = [layer.name for layer in searched]
    folded = {}
    for i, name in enumerate(names):
        coupling = couplings.get(name)
        if coupling is None or coupling.blocked or not coupling.followers:
            continue
        if list(coupling.followers) == names[i + 1 : i + 1 + len(coupling.followers)]:
            folded[name] = coupling.followers
    return folded


def _filter_blocked(coupling: FilterCoupling, following: str | None) -> str | None:
    """Why a layer's filters are not searched, or None: they must feed the next searched layer only."""
    if coupling.blocked:
        return coupling.blocked
    consumers = [name for name, _ in coupling.consumers]
    if consumers != [following]:
        return (
            f"its outputs feed {consumers}; filter pruning is searched only where they feed just the "
            "next searched layer"
        )
    return None
