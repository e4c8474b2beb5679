"""The interface every latency model implements, and the network sum.

A latency model answers one question: how many seconds does one batch of ``batch_size``
samples take through this layer under this choice (pattern, keep/group, bits)? The env, the
baselines and the report only ever call :meth:`LatencyModel.latency`, so an analytical model
(roofline, BitFusion, BOPs) and a measured lookup table are interchangeable.

Conventions shared by every model:

* ``32`` bits means float. A float weight or activation runs at the device's
  ``reference_bits`` (FP16 on a GPU, FP32 on a CPU, 8-bit fixed point on BitFusion), so
  ``Choice(w_bits=32, a_bits=32)`` costs the same as :meth:`LatencyModel.dense_choice`.
* ``a_bits`` is the precision of the layer's input activations. The layer's *output* is
  costed at the same precision (the epilogue writes what the next quantized layer reads), so a
  layer's latency depends on its own choice only, which the env's action wall relies on.
* A pattern that shrinks the layer (filter pruning: ``keep`` of ``group = out_channels``
  filters) is costed as its :meth:`~rlprune.patterns.SparsityPattern.dense_equivalent`, the
  smaller dense layer ``layer.with_channels(layer.in_channels, keep)``. The consumers' fewer
  input channels follow from the layers' :class:`~rlprune.layers.FilterCoupling`
  (:func:`with_fewer_inputs`, :func:`network_latency`).
* A network pays :attr:`LatencyModel.switch_seconds` for each pair of neighbouring layers
  (:attr:`~rlprune.layers.LayerInfo.neighbours`: consecutive ones, and the operands of a
  residual add) one of which runs float and the other int8 (a quantize or dequantize, and what
  a measured network spends beyond it), and :attr:`LatencyModel.mixed_seconds` once if any
  layer runs float and another int8; analytical models count both in their layers (0).
* Results are deterministic and memoized per ``(layer, choice)``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from rlprune.config import is_integer
from rlprune.errors import ConfigError
from rlprune.layers import FilterCoupling, LayerInfo, neighbour_pairs, pruning_groups
from rlprune.patterns import get_pattern, pattern_names
from rlprune.policy import FLOAT_BITS, SUPPORTED_BITS, Choice, Pattern, Policy

LAYER_KINDS = ("linear", "conv1d", "conv2d")
_CACHE_LIMIT = 1 << 16


class LatencyModel(abc.ABC):
    """Seconds per batch of a layer under a choice, on one device.

    Attributes:
        name: the device/model name (the Hydra choice, e.g. ``a100``).
        batch_size: samples per batch that :meth:`latency` is for.
        bits: weight/activation bit-widths the device runs, ascending: the search's choices.
            32 (float) is always accepted as well and costed at ``reference_bits``.
        reference_bits: precision of the dense baseline on this device.
        nm_options: ``(keep N, group M)`` patterns the device accelerates; empty when none.
        patterns: the names of the patterns the device can run (always dense and filter), in
            the registry's order.
        search_pattern: what ``search.pattern=auto`` searches here: the patterns that buy this
            device latency (a hardware config's ``search_pattern``; filter when it names none).
        channel_multiple: filter pruning keeps a multiple of this many output channels (a
            hardware config's ``channel_multiple``; 1, any count, when it names none). GPUs run
            FP16 and int8 products on tensor cores in tiles of 8 or more channels.
        switch_seconds: seconds a network adds each time a layer runs float and the next int8,
            or the reverse (:meth:`switches`); 0 unless measured (:meth:`calibrate`).
        mixed_seconds: seconds a network adds once when its layers run both float and int8,
            however often they switch; 0 unless measured (:meth:`calibrate`).
    """

    switch_seconds: float = 0.0
    mixed_seconds: float = 0.0

    name: str
    batch_size: int
    bits: tuple[int, ...]
    reference_bits: int
    nm_options: tuple[tuple[int, int], ...]
    patterns: tuple[str, ...]
    search_pattern: tuple[str, ...] = (Pattern.FILTER,)
    channel_multiple: int = 1

    def __init__(
        self,
        *,
        name: str,
        batch_size: int,
        bits: Sequence[int],
        reference_bits: int,
        nm_options: Sequence[tuple[int, int]] = (),
        patterns: Sequence[str] = (Pattern.DENSE, Pattern.FILTER),
    ) -> None:
        where = f"hardware '{name}'"
        if not is_integer(batch_size) or batch_size < 1:
            raise ConfigError(f"{where}: batch_size must be a positive integer, got {batch_size!r}")
        bad = [b for b in bits if b not in SUPPORTED_BITS]
        if bad or not bits:
            raise ConfigError(f"{where}: bits {list(bits)} must be a non-empty subset of {SUPPORTED_BITS}")
        if reference_bits not in SUPPORTED_BITS:
            raise ConfigError(f"{where}: reference_bits={reference_bits} must be one of {SUPPORTED_BITS}")
        pats = {get_pattern(p).name for p in patterns} | {Pattern.DENSE, Pattern.FILTER}
        self.name = name
        self.batch_size = batch_size
        self.bits = tuple(sorted(set(bits)))
        self.reference_bits = reference_bits
        self.nm_options = tuple((int(n), int(m)) for n, m in nm_options)
        self.patterns = tuple(get_pattern(p).name for p in pattern_names() if p in pats)
        self._cache: dict[tuple[LayerInfo, Choice], float] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, batch_size={self.batch_size})"

    # -- the interface -------------------------------------------------------------------------

    def latency(self, layer: LayerInfo, choice: Choice) -> float:
        """Seconds for one batch of ``batch_size`` samples through ``layer`` under ``choice``:
        :meth:`_latency` of one call, for each of the layer's :attr:`~rlprune.layers.LayerInfo.calls`.

        Raises:
            ConfigError: when the device cannot run ``choice`` (pattern or bits not supported,
                or a keep/group that does not fit the layer).
        """
        key = (layer, choice)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        self.check(layer, choice)
        seconds = float(self._latency(layer, choice)) * layer.calls
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = seconds
        return seconds

    @abc.abstractmethod
    def _latency(self, layer: LayerInfo, choice: Choice) -> float:
        """The model's formula, for one call of ``layer``; ``choice`` has been checked by :meth:`check`."""

    def prepare(self, cells: Sequence[tuple[LayerInfo, Choice]]) -> None:
        """Get ready to cost every ``(layer, choice)`` of ``cells``; a measured table measures them now."""
        return None  # analytical models cost a cell when asked

    def calibrate(self, network: nn.Module, example: torch.Tensor) -> float:
        """Fit the model to ``network``; return its seconds outside the layers that no choice changes.

        Analytical models count launch and glue costs in their per-layer terms: nothing to fit,
        0 returned. A measured table times the glue between the layers (pooling, activations,
        residual adds) and charges each layer the part that follows its width.
        """
        return 0.0

    def runs_integer(self, choice: Choice) -> bool:
        """Whether ``choice`` runs in integers here (weights and activations at 8 bits or fewer)."""
        return max(self.effective_bits(choice.w_bits), self.effective_bits(choice.a_bits)) <= 8

    def switches(self, first: Choice, then: Choice) -> bool:
        """Whether a network converts between float and int8 from a layer at ``first`` to one at ``then``."""
        return self.runs_integer(first) != self.runs_integer(then)

    def dense_choice(self) -> Choice:
        """Dense at the reference precision for weights and activations: the baseline."""
        return Choice(Pattern.DENSE, 1, 1, w_bits=self.reference_bits, a_bits=self.reference_bits)

    def effective_bits(self, bits: int) -> int:
        """The precision ``bits`` runs at: float (32) runs at ``reference_bits``."""
        return self.reference_bits if bits == FLOAT_BITS else bits

    def check(self, layer: LayerInfo, choice: Choice) -> None:
        """Raise :class:`ConfigError` unless this device can run ``choice`` on ``layer``."""
        if layer.kind not in LAYER_KINDS:
            raise ConfigError(
                f"hardware '{self.name}': layer '{layer.name}' has kind {layer.kind!r}; "
                f"latency models cost {list(LAYER_KINDS)}"
            )
        if choice.pattern not in self.patterns:
            raise ConfigError(
                f"hardware '{self.name}' cannot run pattern '{choice.pattern}' "
                f"(layer '{layer.name}'); it runs {list(map(str, self.patterns))}"
            )
        for field in ("w_bits", "a_bits"):
            bits = getattr(choice, field)
            if bits != FLOAT_BITS and bits not in self.bits:
                raise ConfigError(
                    f"hardware '{self.name}' does not run {field}={bits} (layer '{layer.name}', "
                    f"pattern '{choice.pattern}'); it runs bits {list(self.bits)}, "
                    f"or 32 = float at the reference {self.reference_bits} bits"
                )
        choice.spec.check_group(
            choice.keep, choice.group, layer.weight_shape, name=layer.name, where=f"hardware '{self.name}': "
        )

    def supports(self, layer: LayerInfo, choice: Choice) -> bool:
        """Whether :meth:`latency` accepts ``choice`` on ``layer``."""
        try:
            self.check(layer, choice)
        except ConfigError:
            return False
        return True


def with_fewer_inputs(layer: LayerInfo, choice: Choice, removed: int) -> tuple[LayerInfo, Choice]:
    """``layer`` after upstream filter pruning removed ``removed`` input channels, and ``choice`` on it.

    A depthwise conv loses the same output channels (each output reads one input). The choice
    keeps its density on the smaller layer (:meth:`~rlprune.patterns.SparsityPattern.fit`):
    N:M, filter and dense choices carry over; k-of-n and unstructured groups count the layer's
    weights, so they shrink with it (at least one unit kept).
    """
    if removed == 0:
        return layer, choice
    smaller = layer.with_channels(layer.in_channels - removed, layer.out_channels - removed * layer.depthwise)
    keep, group = choice.spec.fit(choice.keep, choice.group, smaller.weight_shape, name=layer.name)
    return smaller, replace(choice, keep=keep, group=group)


def effective_cells(
    layers: Sequence[LayerInfo], choices: Sequence[Choice], couplings: Mapping[str, FilterCoupling] | None
) -> list[tuple[LayerInfo, Choice]]:
    """Each layer with its choice, as costed once upstream filter choices removed its inputs.

    A layer missing from ``couplings`` (or all of them, without couplings) is taken as given:
    already adjusted, or its filter choice costed on itself alone. Layers tied by a residual add
    prune the same filters, so their consumers lose them once.
    """
    pruned = {
        layer.name: c.spec.pruned_outputs(c.keep, c.group) for layer, c in zip(layers, choices, strict=True)
    }
    removed: dict[str, int] = {}
    for name, coupling in pruning_groups([n for n, count in pruned.items() if count], couplings or {}):
        for consumer, per_filter in [*coupling.consumers, *((f, 1) for f in coupling.followers)]:
            removed[consumer] = removed.get(consumer, 0) + pruned[name] * per_filter
    return [
        with_fewer_inputs(layer, choice, removed.get(layer.name, 0))
        for layer, choice in zip(layers, choices, strict=True)
    ]


def network_latency(
    model: LatencyModel,
    layers: Sequence[LayerInfo],
    choices: Sequence[Choice] | Mapping[str, Choice] | Policy,
    couplings: Mapping[str, FilterCoupling] | None = None,
) -> float:
    """Seconds per batch of the whole network: the sum of the per-layer latencies, plus
    :attr:`LatencyModel.switch_seconds` for each pair of neighbours (:attr:`LayerInfo.neighbours`)
    one of which runs float and the other int8, and :attr:`LatencyModel.mixed_seconds` once
    where some layer runs float and another int8.

    Args:
        model: the latency model.
        layers: the layers, in forward order.
        choices: one choice per layer (same order), or a mapping / :class:`Policy` by layer
            name, where a layer not named runs :meth:`LatencyModel.dense_choice`.
        couplings: the layers' filter couplings; with them, a filter choice also shrinks its
            consumers' inputs. Without them, pass layers already adjusted for upstream pruning.
    """
    if isinstance(choices, Policy | Mapping):
        get = choices.get
        picked = [get(layer.name, model.dense_choice()) for layer in layers]
    else:
        picked = list(choices)
        if len(picked) != len(layers):
            raise ValueError(f"{len(layers)} layers but {len(picked)} choices")
    choice_of = {layer.name: choice for layer, choice in zip(layers, picked, strict=True)}
    switches = sum(model.switches(choice_of[a], choice_of[b]) for a, b in neighbour_pairs(layers))
    mixed = len({model.runs_integer(choice) for choice in picked}) > 1
    layers_seconds = sum(model.latency(*cell) for cell in effective_cells(layers, picked, couplings))
    return float(layers_seconds + model.switch_seconds * switches + model.mixed_seconds * mixed)
