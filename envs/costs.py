"""What each layer's seconds depend on: the factors of a search space's dynamic programme.

A layer's seconds depend on the step that decides its own option and bits, and on the steps
whose filter options remove some of its inputs (filter pruning upstream). Each layer becomes a
:class:`Term` over those decisions, costed once on the device and added to the factor of the
step at which all of them are known (:mod:`rlprune.envs.dp`). Switching between float and int8
between neighbouring layers adds factors over the bits of the two steps (:func:`switch_factors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from rlprune.envs.dp import Factor

from rlprune.hardware import LatencyModel, with_fewer_inputs
from rlprune.layers import FilterCoupling, LayerInfo, neighbour_pairs
from rlprune.policy import Choice, Pattern

if TYPE_CHECKING:
    from rlprune.envs.space import Shape

MAX_TABLE = 1 << 22
"""The most entries the dynamic programme's table may hold at any step (32 MiB of float64)."""


def switch_factors(
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


@dataclass(frozen=True)
class Term:
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


def layer_terms(
    all_layers: Sequence[LayerInfo],
    steps: list[tuple[LayerInfo, ...]],
    shapes: list[list[Shape]],
    followers: list[tuple[str, ...]],
    couplings: Mapping[str, FilterCoupling],
) -> list[Term]:
    """The :class:`Term` of every layer some decision touches."""
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
        terms.append(Term(layer, step, layer.name in led, feeds, last))
    return terms


def widest(terms: list[Term], shapes: list[list[Shape]], bits: int) -> tuple[int, int] | None:
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
