"""The BOPs proxy: bit operations as a stand-in for latency (docs/algorithms.md, "BOPs proxy").

``BOPs = keep_ratio · MACs · b_w · b_a`` per layer and sample, times ``batch_size``, returned
as seconds ``BOPs / bops_per_second + overhead_s`` so that it plugs in wherever a latency
model does; only ratios mean anything.

* ``keep_ratio`` is the choice's density ``keep/group`` for every pattern: the proxy assumes
  every kind of sparsity is skipped perfectly. For filter pruning that equals the MACs of the
  smaller layer.
* Bits: ``2..8`` and ``16`` count as themselves; ``32`` (float) counts as ``float_bits``
  (32 by default, the usual convention that a float MAC costs ``32 · 32`` bit operations), so
  the dense float baseline is ``MACs · 32 · 32``.
* The network input counts as 8-bit: for a layer named in ``input_layers`` (the layers that
  read the network's input; set them with :meth:`BopsModel.with_input_layers` or in the
  config), a float ``a_bits`` counts as ``input_bits`` (8). A quantized ``a_bits`` there counts
  as itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from rlprune.config import is_integer
from rlprune.hardware.base import LatencyModel
from rlprune.hardware.profile import ConfigReader, read_common
from rlprune.layers import LayerInfo
from rlprune.patterns import Pattern, pattern_names
from rlprune.policy import FLOAT_BITS, Choice

BOPS_NUMBERS = ("batch_size", "bops_per_second", "float_bits", "input_bits", "overhead_s")


@dataclass(frozen=True)
class BopsProfile:
    """Parameters of the BOPs proxy (see ``conf/hardware/bops.yaml``)."""

    name: str
    description: str
    batch_size: int
    reference_bits: int
    bits: tuple[int, ...]
    bops_per_second: float
    float_bits: int
    input_bits: int
    input_layers: tuple[str, ...]
    overhead_s: float
    patterns: tuple[str, ...]
    nm_options: tuple[tuple[int, int], ...]
    sources: tuple[tuple[str, str], ...]


def parse_bops_profile(data: Mapping[str, Any], where: str) -> BopsProfile:
    """Validate a ``model: bops`` config node."""
    reader = ConfigReader(data, where)
    reader.raw("model")
    name, batch_size, reference, bits = read_common(reader)
    patterns = reader.patterns("patterns", pattern_names(), always=(Pattern.DENSE, Pattern.FILTER))
    nm_raw = reader.raw("nm_options", [], "a list of [keep, group] pairs with 0 < keep < group")
    nm_options = []
    for pair in nm_raw if isinstance(nm_raw, list | tuple) else [nm_raw]:
        ok = isinstance(pair, list | tuple) and len(pair) == 2
        ok = ok and all(is_integer(v) for v in pair)
        if not ok or not 0 < pair[0] < pair[1]:
            raise reader.error("nm_options", "a list of [keep, group] pairs with 0 < keep < group", nm_raw)
        nm_options.append((pair[0], pair[1]))
    input_layers = reader.raw("input_layers", [], "a list of layer names")
    if not isinstance(input_layers, list | tuple) or not all(isinstance(n, str) for n in input_layers):
        raise reader.error("input_layers", "a list of layer names", input_layers)
    profile = BopsProfile(
        name=name,
        description=reader.string("description", name),
        batch_size=batch_size,
        reference_bits=reference,
        bits=bits,
        bops_per_second=reader.number("bops_per_second", positive=True),
        float_bits=reader.integer("float_bits", FLOAT_BITS, minimum=1),
        input_bits=reader.integer("input_bits", 8, minimum=1),
        input_layers=tuple(input_layers),
        overhead_s=reader.number("overhead_s", 0.0, minimum=0.0),
        patterns=patterns,
        nm_options=tuple(nm_options),
        sources=tuple(reader.sources(BOPS_NUMBERS).items()),
    )
    reader.finish()
    return profile


class BopsModel(LatencyModel):
    """``keep_ratio · MACs · b_w · b_a · batch_size`` bit operations, as nominal seconds."""

    def __init__(self, profile: BopsProfile) -> None:
        super().__init__(
            name=profile.name,
            batch_size=profile.batch_size,
            bits=profile.bits,
            reference_bits=profile.reference_bits,
            nm_options=profile.nm_options,
            patterns=profile.patterns,
        )
        self.profile = profile

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "hardware config") -> BopsModel:
        """Build from a ``model: bops`` config node (plain data)."""
        return cls(parse_bops_profile(cfg, where))

    def with_input_layers(self, names: Iterable[str]) -> BopsModel:
        """A copy in which the layers ``names`` read the network input (float counts as 8-bit)."""
        return BopsModel(replace(self.profile, input_layers=tuple(names)))

    def counted_bits(self, bits: int, *, network_input: bool = False) -> int:
        """The bit-width a BOP count uses for ``bits``: float maps to ``float_bits``/``input_bits``."""
        if bits != FLOAT_BITS:
            return bits
        return self.profile.input_bits if network_input else self.profile.float_bits

    def bops(self, layer: LayerInfo, choice: Choice) -> float:
        """Bit operations of one batch through ``layer`` under ``choice``."""
        w_bits = self.counted_bits(choice.w_bits)
        a_bits = self.counted_bits(choice.a_bits, network_input=layer.name in self.profile.input_layers)
        return choice.density * layer.macs * w_bits * a_bits * self.batch_size

    def _latency(self, layer: LayerInfo, choice: Choice) -> float:
        return self.bops(layer, choice) / self.profile.bops_per_second + self.profile.overhead_s
