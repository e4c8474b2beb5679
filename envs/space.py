"""The discrete search space of one network on one device, and the budget arithmetic.

Each searched layer has a list of *density options* (pattern, keep, group), sorted from the
sparsest to dense, and the device's bit-widths. Their latencies are computed once into a
table, so the env's action wall and every baseline work on numbers, not on models.

Filter pruning couples layers (Torch-Pruning's dependency graph says how,
:func:`rlprune.layers.filter_couplings`): a layer that drops filters shrinks the inputs of every
layer that reads them, layers that meet in a residual add keep or drop their filters together
(one step decides the whole group), and a depthwise conv follows the filters that feed it. So a
layer's seconds depend on up to a few steps' decisions: each step owns a
:class:`~rlprune.envs.dp.Factor`, a table over the decisions its layers depend on (built by
:mod:`rlprune.envs.costs`), and the action wall is a dynamic programme over the factors
(:mod:`rlprune.envs.dp`).

What a pattern offers on a layer, and how it carries over to a tied layer or one that lost
inputs, is the pattern's to say (:mod:`rlprune.patterns`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from rlprune.envs import costs as layer_costs
from rlprune.envs.dp import CostProgramme, Factor

from rlprune.errors import BudgetError, ConfigError
from rlprune.hardware import LatencyModel
from rlprune.layers import FilterCoupling, LayerInfo
from rlprune.patterns import SparsityPattern, channel_multiples, get_pattern
from rlprune.policy import Choice, Pattern, Policy, searchable_patterns

Picks = list[tuple[int, int]]
"""A policy as the searchers handle it: per step, the index of its option and of its bit-width."""


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
        return Shape(self.pattern, *self.spec.fit(self.keep, self.group, layer.weight_shape, name=layer.name))


def layer_shapes(
    layer: LayerInfo,
    pattern: str,
    levels: int,
    min_density: float,
    nm_options: Sequence[tuple[int, int]],
    pad: bool = False,
    channel_multiple: int = 1,
) -> tuple[list[Shape], str | None]:
    """The density options of ``layer`` under ``pattern``, sparsest first, dense last
    (:meth:`~rlprune.patterns.SparsityPattern.options`).

    With ``pad``, N:M takes any reduction length (its last group is padded with zeros, as the
    masks do); transposable N:M always needs whole MxM tiles. A pattern that removes output
    channels keeps a multiple of ``channel_multiple`` of them (the device's
    :attr:`~rlprune.hardware.LatencyModel.channel_multiple`), each level rounded to the nearest.
    Returns the options and, when the layer cannot take the pattern, the reason it stays dense.
    """
    spec = get_pattern(pattern)
    options, reason = spec.options(
        layer, levels=levels, min_density=min_density, nm_options=nm_options, pad=pad
    )
    if spec.shrinks_outputs and channel_multiple > 1 and options:
        group = options[0][1]
        keeps, reason = channel_multiples((keep for keep, _ in options), group, channel_multiple)
        options = [(keep, group) for keep in keeps]
    return [*(Shape(pattern, keep, group) for keep, group in options), Shape(Pattern.DENSE, 1, 1)], reason


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
        programme: the dynamic programme over ``costs`` that the wall and the budget checks use.
    """

    layers: list[LayerInfo]
    shapes: list[list[Shape]]
    bits: tuple[int, ...]
    costs: list[Factor]
    fixed_latency: float
    dense_latency: float
    skipped: dict[str, str]
    patterns: tuple[str, ...]
    members: list[tuple[LayerInfo, ...]] = field(default_factory=list)
    followers: list[tuple[str, ...]] = field(default_factory=list)
    couplings: dict[str, FilterCoupling] = field(default_factory=dict)
    overhead: float = 0.0
    nm_pad: bool = False
    mixed_seconds: float = 0.0
    integer: tuple[bool, ...] = ()
    fixed_kinds: frozenset[bool] = frozenset()
    programme: CostProgramme = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.members = self.members or [(layer,) for layer in self.layers]
        self.followers = self.followers or [() for _ in self.layers]
        self.programme = CostProgramme(
            self.costs,
            tuple(len(options) for options in self.shapes),
            len(self.bits),
            self.mixed_seconds,
            self.integer,
            self.fixed_kinds,
        )

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def step_of(self) -> dict[str, int]:
        """The step that decides each searched layer: its own, or a depthwise follower's leader's."""
        return _owners(self.members, self.followers)

    @property
    def min_latency(self) -> np.ndarray:
        """Cheapest seconds of each step (over every earlier decision)."""
        return self.programme.min_latency

    @property
    def max_latency(self) -> np.ndarray:
        """Dearest seconds of each step (over every earlier decision)."""
        return self.programme.max_latency

    def table(self, step: int, picks: Sequence[tuple[int, int]] = ()) -> np.ndarray:
        """Seconds ``[options, bits]`` that ``step`` adds once the steps before it took ``picks``
        (``mixed_seconds`` where it is the first to run at the other kind)."""
        return self.programme.table(step, picks)

    def step_seconds(self, picks: Sequence[tuple[int, int]]) -> np.ndarray:
        """Seconds each step adds under a policy given as index pairs."""
        return self.programme.step_seconds(picks)

    def seconds(self, picks: Sequence[tuple[int, int]]) -> float:
        """Seconds of the searched layers (and of the layers they shrink) under a policy of index pairs."""
        return self.programme.seconds(picks)

    def seconds_changed(
        self, picks: Sequence[tuple[int, int]], changes: Sequence[tuple[int, tuple[int, int]]]
    ) -> np.ndarray:
        """:meth:`seconds` of each policy that differs from ``picks`` at one step, ``(step, pick)``."""
        return self.programme.seconds_changed(picks, changes)

    def relative(self, seconds: float) -> float:
        """Seconds of searched layers plus the fixed part, as a share of the dense network."""
        return (seconds + self.fixed_latency) / self.dense_latency

    def absolute_budget(self, budget: float) -> float:
        """The seconds the searched layers may spend under a relative ``budget``."""
        return budget * self.dense_latency - self.fixed_latency

    def cheapest(self) -> float:
        """The lowest relative latency any policy reaches."""
        return self.relative(self.programme.cheapest())

    def check_budget(self, budget: float) -> None:
        """Raise when no policy of this space meets ``budget``."""
        if not 0.0 < budget <= 1.0:
            raise ConfigError(f"budget.latency must be in (0, 1], got {budget}")
        cheapest = self.cheapest()
        if cheapest > 1.0 + 1e-12:
            raise BudgetError(
                f"no policy is faster than the dense model on this hardware with "
                f"search.pattern={list(map(str, self.patterns))} and search.bits={list(self.bits)}: the "
                f"cheapest reaches {cheapest:.4f} of its latency; search other bits or patterns"
            )
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

    def picks_of(self, policy: Policy) -> Picks:
        """The ``(option, bits)`` index pairs of a policy of this space: :meth:`policy` undone."""
        choices = dict(policy)
        picks = []
        for step, members in enumerate(self.members):
            layer = members[0]
            choice = choices[layer.name]
            bits = self.bits.index(choice.w_bits)
            options = [shape.on(layer, self.nm_pad) for shape in self.shapes[step]]
            option = next(s for s, o in enumerate(options) if o and o.choice(choice.w_bits) == choice)
            picks.append((option, bits))
        return picks

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
        """The action wall: the option nearest to the wish that keeps the episode within budget
        (:meth:`~rlprune.envs.dp.CostProgramme.nearest`, which says how).

        Args:
            step: index of the step being decided.
            want_density: desired density in [0, 1].
            want_bits: desired position in the bits list, in [0, 1].
            spent: seconds the earlier steps added.
            budget: seconds the searched layers may spend in all.
            want_pattern: index into ``patterns`` of the wished pattern, when several are searched;
                an option of another pattern is one unit further from the wish (dense matches all).
            picks: the ``(option, bits)`` the earlier steps took (their filters may feed this one).
            fill: also keep the budget used; ``False`` is AMC's wall, which only keeps the
                episode feasible. With ``budget=inf`` this is plain rounding to the nearest option.
        """
        densities = np.array([s.density for s in self.shapes[step]])
        bit_pos = np.linspace(0.0, 1.0, len(self.bits)) if len(self.bits) > 1 else np.ones(1)
        distance = np.abs(densities - want_density)[:, None] + np.abs(bit_pos - want_bits)[None, :]
        if want_pattern is not None:
            wanted = self.patterns[want_pattern]
            other = [s.pattern not in (wanted, Pattern.DENSE) for s in self.shapes[step]]
            distance = distance + np.array(other, dtype=float)[:, None]
        return self.programme.nearest(step, distance, spent, budget, picks, fill)

    def lower_until_within(self, picks: Sequence[tuple[int, int]], budget: float) -> Picks:
        """HAQ's post-episode wall (:meth:`~rlprune.envs.dp.CostProgramme.lower_until_within`)."""
        return self.programme.lower_until_within(picks, budget)

    def lowest_fits(self, budget: float) -> bool:
        """Whether the policy of every step's lowest bits and sparsest option meets ``budget`` (seconds)."""
        return self.programme.lowest_fits(budget)

    def allocate(self, penalties: Sequence[np.ndarray], budget: float) -> Picks | None:
        """The policy of least summed per-step ``penalties`` within ``budget`` seconds
        (:meth:`~rlprune.envs.dp.CostProgramme.allocate`)."""
        return self.programme.allocate(penalties, budget)


@dataclass(frozen=True)
class SpaceSettings:
    """What the ``search`` config says about the search space.

    Attributes:
        patterns: the searched patterns (one name, or several: then each step picks its own);
            stored as canonical names without repeats.
        bits: bit-widths to choose from, ascending; ``None``: every bit-width the device runs.
        levels: density levels between ``min_density`` and 1 of the patterns whose group is
            counted on the layer (k-of-n, unstructured, filter).
        min_density: the sparsest such level, in (0, 1].
        nm_options: ``(N, M)`` options of the N:M patterns; ``None``: those the device accelerates.
        nm_pad: N:M pads a reduction length that is not a multiple of M instead of skipping the layer.

    Raises:
        ConfigError: for an unknown pattern or a value out of range.
    """

    patterns: str | Sequence[str]
    bits: Sequence[int] | None = None
    levels: int = 20
    min_density: float = 0.05
    nm_options: Sequence[Sequence[int]] | None = None
    nm_pad: bool = True

    def __post_init__(self) -> None:
        names = [self.patterns] if isinstance(self.patterns, str) else list(self.patterns)
        valid = searchable_patterns()
        if not names or any(name not in valid for name in names):
            raise ConfigError(f"unknown search.pattern {self.patterns!r}; valid: {valid}, or a list of them")
        if not 0.0 < self.min_density <= 1.0:
            raise ConfigError(f"search.min_density must be in (0, 1], got {self.min_density}")
        if self.levels < 2:
            raise ConfigError(f"search.levels must be >= 2, got {self.levels}")
        nm = None if self.nm_options is None else tuple((int(n), int(m)) for n, m in self.nm_options)
        for n, m in nm or ():
            if not 0 < n < m:
                raise ConfigError(f"search.nm_options: N:M must have 0 < N < M, got {n}:{m}")
        object.__setattr__(self, "patterns", tuple(dict.fromkeys(get_pattern(name).name for name in names)))
        object.__setattr__(self, "bits", None if self.bits is None else tuple(sorted(self.bits)))
        object.__setattr__(self, "nm_options", nm)


def build_space(
    all_layers: Sequence[LayerInfo],
    searched: Sequence[LayerInfo],
    hardware: LatencyModel,
    settings: SpaceSettings,
    couplings: Mapping[str, FilterCoupling] | None = None,
    overhead: float = 0.0,
) -> SearchSpace:
    """Enumerate the options of every step and cost them on ``hardware``.

    ``couplings`` (from :func:`rlprune.layers.filter_couplings` over ``all_layers``) are needed
    when a searched pattern shrinks outputs (filter pruning): they say whose inputs a layer's
    filters feed, which layers are tied and which depthwise convs follow. ``overhead`` is the
    network's seconds outside its layers (:meth:`LatencyModel.calibrate`).

    Raises:
        ConfigError: for a pattern or bits the device cannot run, or N:M without options.
    """
    bits, nm = _device_settings(settings, hardware)
    shrinks = any(get_pattern(p).shrinks_outputs for p in settings.patterns)
    if shrinks and couplings is None:
        raise ValueError(
            "searching filter pruning needs the layers' couplings (rlprune.layers.filter_couplings)"
        )
    couplings = dict(couplings or {})
    steps, followers, blocked, skipped = _steps(searched, couplings, shrinks)

    def options(step: int, without_filters: str | None = None) -> tuple[list[Shape], str | None]:
        return _step_options(
            steps[step], settings, nm, hardware.channel_multiple, without_filters or blocked[step]
        )

    listed = [options(step) for step in range(len(steps))]
    shapes, reasons = [found for found, _ in listed], [reason for _, reason in listed]
    while True:  # a step whose filters reach too far down keeps them, until every table is small
        terms = layer_costs.layer_terms(all_layers, steps, shapes, followers, couplings)
        wide = layer_costs.widest(terms, shapes, len(bits))
        if wide is None:
            break
        step, entries = wide
        shapes[step], reasons[step] = options(
            step,
            f"its filters feed layers far down the network: deciding them with the others would need "
            f"a table of {entries:,} entries (the limit is {layer_costs.MAX_TABLE:,})",
        )
    skipped.update(
        {m.name: reason for members, reason in zip(steps, reasons, strict=True) if reason for m in members}
    )

    owner = _owners(steps, followers)
    costs = _step_costs(all_layers, terms, shapes, bits, owner, hardware)
    reference = hardware.dense_choice()
    touched = {term.layer.name for term in terms}
    fixed = overhead + sum(hardware.latency(lay, reference) for lay in all_layers if lay.name not in touched)
    dense = overhead + sum(hardware.latency(lay, reference) for lay in all_layers)
    integer = tuple(hardware.runs_integer(Choice(Pattern.DENSE, 1, 1, b, b)) for b in bits)
    mixes = hardware.mixed_seconds > 0 and len(set(integer)) > 1
    undecided = [lay for lay in all_layers if lay.name not in owner]
    return SearchSpace(
        [members[0] for members in steps],
        shapes,
        bits,
        costs,
        float(fixed),
        float(dense),
        skipped,
        settings.patterns,
        steps,
        followers,
        couplings,
        overhead,
        settings.nm_pad,
        hardware.mixed_seconds if mixes else 0.0,
        integer if mixes else (),
        frozenset({hardware.runs_integer(reference)} if undecided and mixes else ()),
    )


def _device_settings(
    settings: SpaceSettings, hardware: LatencyModel
) -> tuple[tuple[int, ...], Sequence[tuple[int, int]]]:
    """The bit-widths and N:M options searched on ``hardware``, checked against what it runs."""
    for pat in settings.patterns:
        if pat not in hardware.patterns:
            raise ConfigError(
                f"hardware {hardware.name} cannot run pattern {pat}; "
                f"it runs {list(map(str, hardware.patterns))}"
            )
    bits = settings.bits or tuple(hardware.bits)
    unsupported = [b for b in bits if b not in hardware.bits]
    if unsupported:
        raise ConfigError(
            f"search.bits {unsupported} not supported by hardware {hardware.name}; "
            f"valid: {list(hardware.bits)}"
        )
    nm = settings.nm_options or hardware.nm_options
    if any(get_pattern(p).n_of_m for p in settings.patterns) and not nm:
        raise ConfigError(
            f"hardware {hardware.name} accelerates no N:M pattern; set search.nm_options, e.g. [[2, 4]]"
        )
    return bits, nm


def _step_options(
    members: Sequence[LayerInfo],
    settings: SpaceSettings,
    nm: Sequence[tuple[int, int]],
    channel_multiple: int,
    without_filters: str | None,
) -> tuple[list[Shape], str | None]:
    """The density options of a step (sparsest first, dense last), every member able to take
    each, and why a searched pattern offers fewer than on a free layer (``None`` when none does).

    ``without_filters`` is why the step's filters are not searched, if they are not.
    """
    found, reasons = {Shape(Pattern.DENSE, 1, 1)}, []
    for pat in settings.patterns:
        if get_pattern(pat).shrinks_outputs and without_filters:
            usable, reason = [], without_filters
        else:
            shapes, reason = layer_shapes(
                members[0], pat, settings.levels, settings.min_density, nm, settings.nm_pad, channel_multiple
            )
            usable = [s for s in shapes if all(s.on(m, settings.nm_pad) for m in members[1:])]
            if len(usable) < len(shapes) and not reason:
                reason = f"not every layer tied to '{members[0].name}' takes all of its options"
        found.update(usable)
        if reason:
            reasons.append(reason if len(settings.patterns) == 1 else f"{pat}: {reason}")
    return sorted(found, key=lambda s: (s.density, str(s.pattern), s.keep)), "; ".join(reasons) or None


def _step_costs(
    all_layers: Sequence[LayerInfo],
    terms: Sequence[layer_costs.Term],
    shapes: Sequence[Sequence[Shape]],
    bits: tuple[int, ...],
    owner: Mapping[str, int],
    hardware: LatencyModel,
) -> list[Factor]:
    """Per step, a :class:`Factor` of the seconds of the layers its decision completes, and of
    the precision switches it causes; every (layer, choice) is timed in one batch."""
    cells = {}
    for term in terms:
        cells.update({key: term.cell(key, shapes, bits, hardware) for key in term.keys(shapes, bits)})
    hardware.prepare(list(cells.values()))
    seconds = {key: hardware.latency(*cell) for key, cell in cells.items()}
    costs = [
        Factor((2 * i, 2 * i + 1), np.zeros((len(options), len(bits)))) for i, options in enumerate(shapes)
    ]
    for term in terms:
        costs[term.step] = costs[term.step] + term.factor(shapes, bits, seconds)
    for step, factor in layer_costs.switch_factors(all_layers, owner, bits, hardware):
        costs[step] = costs[step] + factor
    return costs


def _owners(steps: Sequence[Sequence[LayerInfo]], followers: Sequence[Sequence[str]]) -> dict[str, int]:
    """The step that decides each layer: the one it is a member of, or whose depthwise follower it is."""
    return {
        name: i
        for i, (members, follow) in enumerate(zip(steps, followers, strict=True))
        for name in (*(m.name for m in members), *follow)
    }


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
