"""Roofline latency over a device profile (docs/algorithms.md, "Roofline").

``t = max(FLOPs / (P · η_c · s), bytes / (BW · η_m)) + t_launch`` per layer and batch, with

* ``FLOPs = 2 · MACs · batch_size`` (dense MACs of the layer; a pattern that shrinks the layer,
  filter pruning, is costed as its dense equivalent);
* ``P`` the dense peak of the smallest compute precision that holds ``max(w_bits, a_bits)``
  (float = the reference precision). Bits below the smallest precision run at that
  precision: no compute gain, only fewer bytes;
* ``s`` the pattern's compute speedup:
  - N:M patterns (:attr:`~rlprune.patterns.SparsityPattern.n_of_m`): the speedup of an
    accelerated option that covers the choice (``N':M'`` with ``M | M'`` and ``N' <= N`` is
    also ``N:M``, so 1:4 runs as 2:4) when the compute precision is one the sparse units run;
    otherwise 1 (the mask runs dense);
  - other sparse patterns (unstructured, k-of-n): ``clip(efficiency / density, 1, max_speedup)``
    when the profile declares a sparse kernel for the pattern and precision; otherwise 1;
  - dense and filter: 1;
* ``bytes`` = weights (see :mod:`rlprune.hardware.storage`; compressed when the profile lists
  the pattern in ``compressed_patterns``) + ``batch_size · (in_elements + out_elements) ·
  a_bits / 8``. Input and output activations are both at the layer's ``a_bits`` (float at
  the reference bits). Bias is ignored (``out_channels`` values, negligible).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlprune.hardware.base import LatencyModel
from rlprune.hardware.profile import DeviceProfile, parse_device_profile
from rlprune.hardware.storage import weight_storage_bits
from rlprune.layers import LayerInfo
from rlprune.policy import Choice


@dataclass(frozen=True)
class RooflineTerms:
    """The parts of one roofline latency, for reports and checks.

    Attributes:
        flops: floating/integer operations of the batch (2 per MAC).
        bytes: bytes moved: weights plus input and output activations.
        compute_bits: the compute precision the layer runs at.
        speedup: the pattern's compute speedup ``s``.
        compute_s: ``flops / (P · η_c · s)``.
        memory_s: ``bytes / (BW · η_m)``.
        overhead_s: the fixed per-layer overhead.
    """

    flops: float
    bytes: float
    compute_bits: int
    speedup: float
    compute_s: float
    memory_s: float
    overhead_s: float

    @property
    def seconds(self) -> float:
        """``max(compute_s, memory_s) + overhead_s``."""
        return max(self.compute_s, self.memory_s) + self.overhead_s

    @property
    def bound(self) -> str:
        """``compute`` or ``memory``: which roof the layer is under."""
        return "compute" if self.compute_s >= self.memory_s else "memory"


class RooflineModel(LatencyModel):
    """Roofline latency of a layer on the device a :class:`DeviceProfile` describes."""

    def __init__(self, profile: DeviceProfile) -> None:
        patterns = profile.patterns
        super().__init__(
            name=profile.name,
            batch_size=profile.batch_size,
            bits=profile.bits,
            reference_bits=profile.reference_bits,
            nm_options=[(o.keep, o.group) for o in profile.nm_options],
            patterns=patterns,
        )
        self.profile = profile

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "hardware config") -> RooflineModel:
        """Build from a ``model: roofline`` config node (plain data)."""
        return cls(parse_device_profile(cfg, where))

    def speedup(self, layer: LayerInfo, choice: Choice, compute_bits: int) -> float:
        """The compute speedup ``s`` the device gives ``choice`` at ``compute_bits``."""
        if choice.spec.n_of_m:
            gains = [
                o.speedup
                for o in self.profile.nm_options
                if compute_bits in o.bits and layer.kind in o.layers and o.covers(choice.keep, choice.group)
            ]
            return max(gains, default=1.0)
        kernel = self.profile.sparse_kernel
        if kernel is not None and choice.pattern in kernel.patterns and compute_bits in kernel.bits:
            if kernel.pointwise_only and math.prod(layer.kernel_size) > 1:
                return 1.0
            return kernel.speedup(choice.density)
        return 1.0

    def terms(self, layer: LayerInfo, choice: Choice) -> RooflineTerms:
        """Every part of the latency of ``choice`` on ``layer`` (unchecked; see :meth:`latency`)."""
        p = self.profile
        w_bits = self.effective_bits(choice.w_bits)
        a_bits = self.effective_bits(choice.a_bits)
        layer, choice = choice.spec.dense_equivalent(layer, choice)
        compute_bits = p.compute_bits(max(w_bits, a_bits))
        speedup = self.speedup(layer, choice, compute_bits)
        flops = 2.0 * layer.macs * self.batch_size
        weight_bits = weight_storage_bits(layer, choice, w_bits, choice.pattern in p.compressed_patterns)
        activation_bits = self.batch_size * (layer.in_elements + layer.out_elements) * a_bits
        moved = (weight_bits + activation_bits) / 8.0
        return RooflineTerms(
            flops=flops,
            bytes=moved,
            compute_bits=compute_bits,
            speedup=speedup,
            compute_s=flops / (p.peak(compute_bits) * p.eta_compute * speedup),
            memory_s=moved / (p.bandwidth_gbs * 1e9 * p.eta_memory),
            overhead_s=p.launch_s,
        )

    def _latency(self, layer: LayerInfo, choice: Choice) -> float:
        return self.terms(layer, choice).seconds
