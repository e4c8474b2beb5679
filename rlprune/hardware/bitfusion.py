"""A BitFusion-style bit-flexible accelerator (Sharma et al., ISCA 2018).

BitFusion is a systolic array of ``N x M`` Fusion Units; each fuses 2-bit BitBricks into one
multiplier of up to ``p_max`` bits, or splits into several narrower ones. Following the
authors' simulator (github.com/hsharma35/bitfusion, ``Accelerator.get_compute_cycles``):

* ``perf = floor(p_max / max(b_a, p_min)) · floor(p_max / max(b_w, p_min))`` multiplies per
  Fusion Unit per cycle;
* ``cycles = B · ceil(OC/M) · OW · OH · KW · KH · ceil(IC / (N · perf))``.

How rlprune maps its layers onto the conv loop nest:

* Conv2d: ``OH, OW`` the output map, ``KH, KW`` the kernel.
* Conv1d: a Conv2d with ``OH = KH = 1`` (``OW`` the output length, ``KW`` the kernel).
* Linear: ``OH = OW = KH = KW = 1``, ``IC = in_features``, ``OC = out_features``; leading
  dimensions of a Linear over a sequence multiply the batch.
* Grouped conv: each group is its own conv with ``IC/g`` and ``OC/g`` channels, run one
  after another (``cycles · g``).
* Operands wider than ``p_max`` (16 bits with ``p_max = 8``): an extension, not in the
  paper's formula (which would give ``perf = 0``). The operand is split into
  ``ceil(b / p_max)`` slices processed in as many passes, a per-operand factor
  ``1 / ceil(b / p_max)``.
* Float (32) is costed at ``reference_bits`` (8): the accelerator has no float unit, a
  deployed model is quantized to its reference precision.

Memory: every weight, input and output activation crosses the ``mem_bits_per_cycle`` off-chip
interface once (ideal on-chip reuse), at its bit-width: weights at ``w_bits`` (plus metadata
only for patterns the profile stores compressed), activations at ``a_bits`` (input and output).
``total = compute + max(0, memory − compute) + overhead``.

Sparsity: BitFusion has no sparse datapath, so only a pattern that shrinks the layer (filter
pruning: fewer output channels) reduces compute; other patterns save bytes only if
``compressed_patterns`` lists them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from rlprune.hardware.base import LatencyModel
from rlprune.hardware.profile import ConfigReader, read_common
from rlprune.hardware.storage import weight_storage_bits
from rlprune.layers import LayerInfo
from rlprune.patterns import Pattern, get_pattern
from rlprune.policy import Choice

BITFUSION_NUMBERS = (
    "batch_size",
    "frequency_hz",
    "array_n",
    "array_m",
    "p_max",
    "p_min",
    "mem_bits_per_cycle",
    "overhead_s",
)


def operand_factor(bits: int, p_max: int, p_min: int) -> Fraction:
    """Operands of ``bits`` bits one Fusion Unit handles per cycle along one input.

    ``floor(p_max / max(bits, p_min))`` up to ``p_max`` bits; ``1 / ceil(bits / p_max)`` above.
    """
    if bits <= p_max:
        return Fraction(p_max // max(bits, p_min))
    return Fraction(1, math.ceil(bits / p_max))


def perf_factor(a_bits: int, w_bits: int, p_max: int = 8, p_min: int = 2) -> Fraction:
    """BitFusion's ``perf``: multiplies per Fusion Unit per cycle at these bit-widths."""
    return operand_factor(a_bits, p_max, p_min) * operand_factor(w_bits, p_max, p_min)


@dataclass(frozen=True)
class BitFusionProfile:
    """The accelerator's parameters (see ``conf/hardware/bitfusion.yaml`` for sources).

    Attributes:
        array_n: N, Fusion Units along the input-channel (reduction) dimension.
        array_m: M, Fusion Units along the output-channel dimension.
        p_max: widest operand a Fusion Unit multiplies in one cycle.
        p_min: narrowest operand (a BitBrick).
        frequency_hz: clock.
        mem_bits_per_cycle: off-chip interface width, bits per cycle.
        overhead_s: fixed time per layer.
        compressed_patterns: sparse patterns whose weights are stored compressed.
    """

    name: str
    description: str
    batch_size: int
    reference_bits: int
    bits: tuple[int, ...]
    array_n: int
    array_m: int
    p_max: int
    p_min: int
    frequency_hz: float
    mem_bits_per_cycle: int
    overhead_s: float
    patterns: tuple[str, ...]
    compressed_patterns: tuple[str, ...]
    sources: tuple[tuple[str, str], ...]


def parse_bitfusion_profile(data: Mapping[str, Any], where: str) -> BitFusionProfile:
    """Validate a ``model: bitfusion`` config node."""
    reader = ConfigReader(data, where)
    reader.raw("model")
    name, batch_size, reference, bits = read_common(reader)
    always = (Pattern.DENSE, Pattern.FILTER)
    patterns = reader.patterns("patterns", list(always), always=always)
    sparse_here = tuple(p for p in patterns if get_pattern(p).compressed_storage)
    p_max = reader.integer("p_max", minimum=1)
    p_min = reader.integer("p_min", minimum=1)
    if p_min > p_max:
        raise reader.error("p_min", f"an integer <= p_max={p_max}", p_min)
    profile = BitFusionProfile(
        name=name,
        description=reader.string("description", name),
        batch_size=batch_size,
        reference_bits=reference,
        bits=bits,
        array_n=reader.integer("array_n", minimum=1),
        array_m=reader.integer("array_m", minimum=1),
        p_max=p_max,
        p_min=p_min,
        frequency_hz=reader.number("frequency_hz", positive=True),
        mem_bits_per_cycle=reader.integer("mem_bits_per_cycle", minimum=1),
        overhead_s=reader.number("overhead_s", 0.0, minimum=0.0),
        patterns=patterns,
        compressed_patterns=reader.patterns("compressed_patterns", [], allowed=sparse_here),
        sources=tuple(reader.sources(BITFUSION_NUMBERS).items()),
    )
    reader.finish()
    return profile


def conv_loop(layer: LayerInfo, batch_size: int) -> tuple[int, int, int, int, int, int, int, int]:
    """``(B, OC, OW, OH, KW, KH, IC, groups)`` of ``layer`` in BitFusion's conv loop nest (per group)."""
    if layer.kind == "linear":
        return batch_size * layer.out_positions, layer.out_channels, 1, 1, 1, 1, layer.in_channels, 1
    g = layer.groups
    if layer.kind == "conv1d":
        (kw,) = layer.kernel_size
        return batch_size, layer.out_channels // g, layer.out_shape[1], 1, kw, 1, layer.in_channels // g, g
    kh, kw = layer.kernel_size
    oh, ow = layer.out_shape[1], layer.out_shape[2]
    return batch_size, layer.out_channels // g, ow, oh, kw, kh, layer.in_channels // g, g


class BitFusionModel(LatencyModel):
    """Cycle-level BitFusion latency: compute cycles vs. off-chip traffic per layer."""

    def __init__(self, profile: BitFusionProfile) -> None:
        super().__init__(
            name=profile.name,
            batch_size=profile.batch_size,
            bits=profile.bits,
            reference_bits=profile.reference_bits,
            nm_options=(),
            patterns=profile.patterns,
        )
        self.profile = profile

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "hardware config") -> BitFusionModel:
        """Build from a ``model: bitfusion`` config node (plain data)."""
        return cls(parse_bitfusion_profile(cfg, where))

    def perf(self, a_bits: int, w_bits: int) -> Fraction:
        """``perf`` at these (already float-mapped) bit-widths on this accelerator."""
        return perf_factor(a_bits, w_bits, self.profile.p_max, self.profile.p_min)

    def compute_cycles(self, layer: LayerInfo, a_bits: int, w_bits: int) -> int:
        """``g · B · ceil(OC/M) · OW · OH · KW · KH · ceil(IC / (N · perf))``."""
        p = self.profile
        b, oc, ow, oh, kw, kh, ic, g = conv_loop(layer, self.batch_size)
        lanes = p.array_n * self.perf(a_bits, w_bits)
        return g * b * math.ceil(Fraction(oc, p.array_m)) * ow * oh * kw * kh * math.ceil(ic / lanes)

    def memory_bits(self, layer: LayerInfo, choice: Choice, a_bits: int, w_bits: int) -> int:
        """Bits crossing the off-chip interface: weights, input and output activations."""
        compressed = choice.pattern in self.profile.compressed_patterns
        weights = weight_storage_bits(layer, choice, w_bits, compressed)
        return weights + self.batch_size * (layer.in_elements + layer.out_elements) * a_bits

    def _latency(self, layer: LayerInfo, choice: Choice) -> float:
        p = self.profile
        a_bits = self.effective_bits(choice.a_bits)
        w_bits = self.effective_bits(choice.w_bits)
        layer, choice = choice.spec.dense_equivalent(layer, choice)
        compute = self.compute_cycles(layer, a_bits, w_bits) / p.frequency_hz
        memory = (
            math.ceil(self.memory_bits(layer, choice, a_bits, w_bits) / p.mem_bits_per_cycle) / p.frequency_hz
        )
        return compute + max(0.0, memory - compute) + p.overhead_s
