"""How ops timed alone run inside a deployed network: the network-level calibration fit.

Plain data in, plain data out: the caller times the networks (a CPU table with
:mod:`torch.utils.benchmark`, a GPU table with CUDA events) and hands their seconds here by
key, with each layer's ops timed alone. The keys of ``networks``:

* ``deployed:float``: the dense network as deployed; ``deployed:half``: its copy with half
  the filters of every layer that can lose them on its own (optional);
* ``stubbed:float``: the network with its prunable layers stubbed (returning recorded
  outputs): the glue between the layers; ``stubbed:int8``: the same of its int8 export;
* ``deployed:int8`` and ``deployed:half:int8``: the int8 exports of the two (optional);
* the mixed networks of :func:`mixed_bits` (optional): some layers float, the others int8.

:func:`fit` turns them into a :class:`Calibration`, which a table applies to each layer's op
(:meth:`Calibration.layer_seconds`).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# how far below 0 the overhead the dense and half-width networks imply may read (noise), as a
# share of the network, before they are taken to disagree
SLACK = 0.1
# the key of the half-width network timed at each bits
HALF_KEYS = {32: "deployed:half", 8: "deployed:half:int8"}


class ImplausibleTimings(ValueError):
    """Network timings that no calibration fits: taken while the machine was busy."""


@dataclass(frozen=True)
class FitLayer:
    """A call of a prunable layer of the calibrated network, as the fit sees it (a layer the
    network calls again is one of these per call).

    Attributes:
        name: its module name.
        channels: its output channels.
        ops: seconds of its dense op timed alone, by bits (32; 8 where int8 is searched).
    """

    name: str
    channels: int
    ops: Mapping[int, float]


@dataclass(frozen=True)
class Calibration:
    """How the ops of one network run inside it, deployed; the default: as alone.

    Attributes:
        glue: per layer, the seconds of the glue that follows its width (pooling,
            activations: what narrowing its stub saved) and its channels then.
        float_scale, float_saving: a float op inside the network runs
            ``max(0, scale * op - saving)`` (:func:`scale_and_share`).
        int8_scale, int8_saving: the same for int8 ops (the saving negative where the int8
            network pays more, as its quantize and dequantize).
        int8_glue_scale: an int8 layer's glue over a float layer's (at most 1).
        overhead: the network's seconds that no choice changes.
        switch_seconds: seconds a network adds per pair of neighbouring layers, one float and
            the other int8; ``mixed_seconds``: seconds once where it runs both.
    """

    glue: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    float_scale: float = 1.0
    float_saving: float = 0.0
    int8_scale: float = 1.0
    int8_saving: float = 0.0
    int8_glue_scale: float = 1.0
    overhead: float = 0.0
    switch_seconds: float = 0.0
    mixed_seconds: float = 0.0

    def glue_seconds(self, name: str, kept: int, int8: bool) -> float:
        """The glue that follows layer ``name`` keeping ``kept`` filters (0 for a layer without)."""
        glue, channels = self.glue.get(name, (0.0, 1))
        return glue * (self.int8_glue_scale if int8 else 1.0) * kept / channels

    def layer_seconds(self, name: str, op: float, kept: int, int8: bool) -> float:
        """Seconds of layer ``name`` inside the network: its op (``op`` seconds alone) scaled,
        and the glue of the ``kept`` filters."""
        if int8:
            int8_op = max(0.0, self.int8_scale * op - self.int8_saving)
            return float(int8_op + self.glue_seconds(name, kept, True))
        float_op = max(0.0, self.float_scale * op - self.float_saving)
        return float(float_op + self.glue_seconds(name, kept, False))


def fit(
    layers: Sequence[FitLayer],
    half: Sequence[FitLayer],
    glue: Mapping[str, tuple[float, int]],
    networks: Mapping[str, float],
    pairs: Sequence[tuple[str, str]],
) -> Calibration:
    """The calibration that predicts the measured ``networks`` from their layers' ops.

    Args:
        layers: the dense network's prunable layers, in forward order, each once per call.
        half: the half-width network's (empty where none was built); ``ops`` at the bits whose
            half-width network was timed (:data:`HALF_KEYS`).
        glue: per layer, the stubs' glue that follows its width at each call (:func:`width_glue`
            over its calls) and its channels.
        networks: measured seconds by key (see the module's docstring).
        pairs: the neighbouring layers, by name (:func:`rlprune.layers.neighbour_pairs`).

    The dense network is predicted as measured: where its ops, each timed alone, add up to
    more than the network (1.1-1.6x for the zoo's CNNs at batch 1, channels-last), they run
    faster inside it; otherwise the stubs' glue is kept up to what the network spends beyond
    them, and the rest is the overhead. How the ops shrink with width inside the network is
    set by the half-width copy: each op runs scaled by at most 1 less a share, so that the
    dense network is predicted as measured and the half-width one, less its glue and the
    overhead, as near as the scale allows (:func:`scale_and_share`). Where the dense network
    spends beyond its ops and glue, the half-width copy splits that excess between the overhead
    and a scale above 1 of the ops (:func:`_slowed_ops`: weights read from memory, not cache).
    Where int8 is searched, an int8 layer's glue shrinks by the ratio of the two stubbed
    networks (never grows), and the int8 ops are fitted as the float ones, to the int8 network
    and its half-width copy less that glue and the overhead (quantize and dequantize are in the
    share); then the mixed networks set what switching between float and int8 costs
    (:func:`mixing_seconds`).

    Raises:
        ImplausibleTimings: when the int8 network measured no more than what the float
            network says lies beyond its ops, which would price every int8 op at nothing.
    """
    int8 = all(8 in layer.ops for layer in layers)
    stub_total = sum(glue[layer.name][0] for layer in layers if layer.name in glue)
    # the dense deployed network, predicted as measured: its ops less their saving, then the
    # stubs' glue up to what is left, split over the layers as the stubs say
    deployed = networks["deployed:float"]
    beyond_ops = max(0.0, deployed - sum(layer.ops[32] for layer in layers))
    kept = min(1.0, beyond_ops / stub_total) if stub_total > 0 else 1.0
    cal = Calibration(
        glue={name: (seconds * kept, channels) for name, (seconds, channels) in glue.items()},
        overhead=beyond_ops - kept * stub_total,
    )
    slowed = _slowed_ops(cal, layers, half, deployed, networks.get(HALF_KEYS[32]))
    if slowed is not None:
        cal = dataclasses.replace(cal, float_scale=slowed[0], overhead=slowed[1])
    else:
        scale, saving = _fit_ops(cal, layers, half, 32, deployed - beyond_ops, networks.get(HALF_KEYS[32]))
        cal = dataclasses.replace(cal, float_scale=scale, float_saving=saving)
    if not int8:
        return cal
    if "deployed:int8" in networks:
        if stub_total > 0:
            extra = networks["stubbed:int8"] - networks["stubbed:float"]
            cal = dataclasses.replace(cal, int8_glue_scale=min(1.0, max(0.0, 1.0 + extra / stub_total)))
        rest = networks["deployed:int8"] - cal.overhead - _glue(cal, layers, True)
        if rest <= 0:  # the float network read slow: its overhead leaves the int8 ops nothing
            raise ImplausibleTimings(
                f"the int8 network measured {networks['deployed:int8'] * 1e6:.0f} µs, no more than "
                f"the float network's overhead and glue ({(networks['deployed:int8'] - rest) * 1e6:.0f} µs)"
            )
        scale, saving = _fit_ops(cal, layers, half, 8, rest, networks.get(HALF_KEYS[8]))
        cal = dataclasses.replace(cal, int8_scale=scale, int8_saving=saving)
    switch, mixed = mixing_seconds(cal, layers, networks, pairs)
    return dataclasses.replace(cal, switch_seconds=switch, mixed_seconds=mixed)


def _slowed_ops(
    cal: Calibration,
    layers: Sequence[FitLayer],
    half: Sequence[FitLayer],
    deployed: float,
    half_network: float | None,
) -> tuple[float, float] | None:
    """The scale above 1 at which the float ops run inside the network, and the overhead left,
    where the network spends beyond its ops and glue and its half-width copy shows that this
    excess shrinks with the ops; ``None`` otherwise (the excess is overhead).

    Each op timed alone runs with its weights in cache; inside a network whose weights do not
    fit, each layer reads them from memory. A transformer with 11 MB of float weights (width
    256, 3 layers) ran its ops at 1.7x their time alone, and its dense and half-width networks
    put all of the excess there (an overhead of 0); read as an overhead instead, the excess was
    larger than the whole int8 network, whose weights fit. Where the two networks imply an
    overhead below 0 (beyond :data:`SLACK`), one of them was read slow: ``None``, and the excess
    stays overhead.
    """
    if cal.overhead <= 0 or not half or half_network is None:
        return None
    ops, half_ops = sum(layer.ops[32] for layer in layers), sum(layer.ops[32] for layer in half)
    network = deployed - _glue(cal, layers, False)
    if ops <= half_ops:
        return None
    scale = (network - (half_network - _glue(cal, half, False))) / (ops - half_ops)
    if scale <= 1.0 or network - scale * ops < -SLACK * network:
        return None  # no excess in the ops, or the two disagree: one was read in a busy stretch
    scale = min(scale, network / ops)
    return scale, network - scale * ops


def _glue(cal: Calibration, layers: Sequence[FitLayer], int8: bool) -> float:
    return sum(cal.glue_seconds(layer.name, layer.channels, int8) for layer in layers)


def _fit_ops(
    cal: Calibration,
    layers: Sequence[FitLayer],
    half: Sequence[FitLayer],
    bits: int,
    network: float,
    half_network: float | None,
) -> tuple[float, float]:
    """The scale and the saving per op with which the ops at ``bits`` add up to ``network``
    seconds, and the half-width network's (less its glue and the overhead) as near as a scale
    allows (:func:`scale_and_share`); scale 1 where it was not timed."""
    ops = [layer.ops[bits] for layer in layers]
    if not half or half_network is None:
        return 1.0, share_per_op(ops, sum(ops) - network)
    half_ops = half_network - cal.overhead - _glue(cal, half, bits == 8)
    return scale_and_share(ops, network, [layer.ops[bits] for layer in half], half_ops)


def mixing_seconds(
    cal: Calibration,
    layers: Sequence[FitLayer],
    networks: Mapping[str, float],
    pairs: Sequence[tuple[str, str]],
) -> tuple[float, float]:
    """What a network that runs both float and int8 adds beyond its layers: seconds per pair of
    neighbours that differ, and seconds once.

    Fitted by least squares (:func:`fit_switches`) to the mixed networks of :func:`mixed_bits`
    found in ``networks``: two whose consecutive layers alternate (many switches) and two whose
    halves differ (one or two). On this VM, over 64 bit-width draws of a dense resnet20, the
    networks ran a mean 30 µs (9%) over layers and switches fitted to the alternating networks
    alone, whatever their switch count.
    """
    counts, excess = [], []
    for key, bits in mixed_bits(list(dict.fromkeys(layer.name for layer in layers))).items():
        switches = sum(bits[a] != bits[b] for a, b in pairs)
        if key not in networks or not switches:
            continue
        predicted = cal.overhead + sum(
            cal.layer_seconds(layer.name, layer.ops[bits[layer.name]], layer.channels, bits[layer.name] == 8)
            for layer in layers
        )
        counts.append(switches)
        excess.append(networks[key] - predicted)
    return fit_switches(counts, excess) if counts else (0.0, 0.0)


def width_glue(full: float, again: float, narrowed: Mapping[str, tuple[float, int, int]]) -> dict[str, float]:
    """Per layer, the glue that follows its width, from stubbed networks.

    Args:
        full, again: two timings of the stubbed network (their gap is the noise).
        narrowed: per layer, the seconds of the stubbed network with that layer's output
            narrowed, its channels, and the channels the narrowed output kept.

    The time narrowing saved, scaled to all channels, is the layer's glue if it stands out of
    the noise (three times the gap between ``full`` and ``again``, and 1% of ``full``); else 0.
    """
    noise = max(3.0 * abs(full - again), 0.01 * full)
    glue = {}
    for name, (seconds, channels, kept) in narrowed.items():
        saved = (full - seconds) * channels / (channels - kept)
        glue[name] = saved if saved > noise else 0.0
    return glue


def scale_and_share(
    dense_ops: Sequence[float], dense: float, half_ops: Sequence[float], half: float
) -> tuple[float, float]:
    """A scale ``k`` and a saving ``s`` per op with ``sum(max(0, k * op - s))`` equal to
    ``dense`` (the seconds the dense network spends in its ops), and as near ``half`` (the
    half-width network's) as ``k`` allows.

    ``k`` runs from 0 (every op a constant, whatever its width) to 1 (an equal share off each
    op, as :func:`share_per_op`); ``s`` is negative where the network costs more than its
    ops scaled (an int8 network's quantize and dequantize). A narrower network is predicted
    faster the larger ``k``. On this VM, over 22 filter-pruned float resnet20s, the share
    alone put them a mean 5.5% under their measured time; refitted so, 2.4% under (3.2% in
    the next run). Over 17 filter-pruned int8 mnist1d CNNs at batch 32 the share alone put
    them a mean 13.5% under; fitted so, 2.9% (k 0.77, s -2.6 µs).
    """

    def share(k: float) -> float:
        return share_per_op([k * op for op in dense_ops], k * sum(dense_ops) - dense)

    def predicted_half(k: float) -> float:
        saving = share(k)
        return sum(max(0.0, k * op - saving) for op in half_ops)

    low, high = 0.0, 1.0
    if half >= predicted_half(low):
        return low, share(low)
    if half <= predicted_half(high):
        return high, share(high)
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if predicted_half(mid) > half else (low, mid)
    return low, share(low)


def share_per_op(ops: Sequence[float], total: float) -> float:
    """The share ``c`` with ``sum(min(op, c) for op in ops) == total``: equal, capped at each op.

    A negative ``total`` (the ops cost more inside the network) is shared equally, uncapped.
    """
    if total <= 0:
        return total / len(ops)
    remaining = total
    for i, op in enumerate(sorted(ops)):
        share = remaining / (len(ops) - i)
        if share <= op:
            return share
        remaining -= op
    return max(ops)


def fit_switches(counts: Sequence[int], excess: Sequence[float]) -> tuple[float, float]:
    """Seconds per switch and seconds once, by least squares over networks that switch
    ``counts`` times and run ``excess`` seconds over their layers; neither negative. With one
    switch count only, all is per switch."""
    if len(set(counts)) > 1:
        per_switch, once = statistics.linear_regression(counts, excess)
        if per_switch < 0:
            return 0.0, max(0.0, statistics.fmean(excess))
        if once >= 0:
            return per_switch, once
    through_origin = sum(c * e for c, e in zip(counts, excess, strict=True)) / sum(c * c for c in counts)
    return max(0.0, through_origin), 0.0


def mixed_bits(names: Sequence[str]) -> dict[str, dict[str, int]]:
    """The mixed networks a calibration times, by key: the bits of each layer (``names``, in
    forward order) in them.

    ``alternating``: consecutive layers alternate, starting int8 (``:8``) or float (``:32``);
    ``halves``: the first half of the layers int8 and the rest float, or the reverse. None for
    a network of one layer.
    """
    if len(names) < 2:
        return {}
    half = len(names) // 2
    networks = {}
    for first in (8, 32):
        other = 32 if first == 8 else 8
        networks[f"deployed:alternating:{first}"] = {n: (first, other)[i % 2] for i, n in enumerate(names)}
        networks[f"deployed:halves:{first}"] = {n: first if i < half else other for i, n in enumerate(names)}
    return networks
