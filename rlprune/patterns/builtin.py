"""The built-in sparsity patterns, one class each.

Conventions: ``keep`` of ``group`` is kept; k-of-n groups are counted on the weight (a row's
``c_in/g * prod(kernel)`` weights, a filter's ``c_in/g`` kernels, or the layer's ``c_out``
filters); N:M runs along the reduction dimension of the 2-D view. Storage packs kept values at
``w_bits`` and adds the metadata that says which are kept: ``ceil(log2 C(n, k))`` bits per
group, or 2 bits per kept value for 2:4 (cuSPARSELt's format).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from rlprune.masks.checks import check_keep, check_nm, check_tiles, check_weight_shape
from rlprune.masks.kofn import kofn_group_size, kofn_mask, unstructured_kept, unstructured_mask
from rlprune.masks.metrics import log2_binomial_bits, log10_comb, transposable_tile_count
from rlprune.masks.nm import nm_mask
from rlprune.masks.transposable import transposable_mask
from rlprune.patterns.base import Pattern, SparsityPattern, register_pattern

if TYPE_CHECKING:
    from rlprune.layers import LayerInfo
    from rlprune.policy import Choice


@register_pattern
class Dense(SparsityPattern):
    """Every weight kept; a choice's ``keep`` and ``group`` are 1."""

    name = Pattern.DENSE
    sparse = False
    searchable = False
    fixed_group = False

    def group_size(self, shape: Sequence[int], *, name: str = "layer") -> int:
        return 1

    def mask(
        self, scores: torch.Tensor, keep: int, group: int, *, pad: bool = False, name: str = "layer"
    ) -> torch.Tensor:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)

    def log10_diversity(self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer") -> float:
        check_weight_shape(shape)
        return 0.0

    def fit(self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer") -> tuple[int, int]:
        return keep, group

    def kept_and_metadata(self, layer: LayerInfo, choice: Choice) -> tuple[int, int]:
        return layer.params, 0


@register_pattern
class Unstructured(SparsityPattern):
    """Keep the largest ``keep/group`` share of the whole layer (any group: a ratio); stored as
    the kept values and a 1-bit-per-weight bitmap."""

    name = Pattern.UNSTRUCTURED
    fixed_group = False

    def group_size(self, shape: Sequence[int], *, name: str = "layer") -> int:
        check_weight_shape(shape)
        return math.prod(shape)

    def mask(
        self, scores: torch.Tensor, keep: int, group: int, *, pad: bool = False, name: str = "layer"
    ) -> torch.Tensor:
        return unstructured_mask(scores, keep / group, name=name)

    def log10_diversity(self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer") -> float:
        numel = self.group_size(shape, name=name)
        return log10_comb(numel, unstructured_kept(numel, keep / group))


class KOfN(SparsityPattern):
    """Every group keeps exactly ``keep`` of its ``n`` units (:func:`~rlprune.masks.kofn.kofn_mask`)."""

    granularity: str

    def group_size(self, shape: Sequence[int], *, name: str = "layer") -> int:
        return kofn_group_size(shape, self.granularity, name=name)

    def mask(
        self, scores: torch.Tensor, keep: int, group: int, *, pad: bool = False, name: str = "layer"
    ) -> torch.Tensor:
        return kofn_mask(scores, keep, self.granularity, name=name)

    def log10_diversity(self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer") -> float:
        self.check_group(keep, group, shape, name=name)
        check_keep(keep, group, name, f"{self.granularity} k-of-n")
        groups = 1 if self.shrinks_outputs else shape[0]
        return groups * log10_comb(group, keep)

    def kept_and_metadata(self, layer: LayerInfo, choice: Choice) -> tuple[int, int]:
        # a kept unit keeps all of its weights; the metadata names the kept units of each row
        n, k = self.group_size(layer.weight_shape, name=layer.name), choice.keep
        unit = math.prod(layer.weight_shape[1:]) // n
        return layer.out_channels * k * unit, layer.out_channels * log2_binomial_bits(n, k)


@register_pattern
class KOfNWeight(KOfN):
    """Every output neuron keeps ``k`` of its ``n = c_in/g * prod(kernel)`` input weights."""

    name = Pattern.KOFN_WEIGHT
    aliases = ("kofn",)
    granularity = "weight"
    group_unit = "n = c_in/g*prod(kernel)"


@register_pattern
class KOfNKernel(KOfN):
    """Every output map keeps ``k`` of its ``n = c_in/g`` kernels (convolutions only)."""

    name = Pattern.KOFN_KERNEL
    granularity = "kernel"
    group_unit = "n = c_in/g"


@register_pattern
class Filter(KOfN):
    """The layer keeps ``k`` of its ``n = c_out`` filters: a smaller dense layer whose consumers
    read fewer input channels."""

    name = Pattern.FILTER
    granularity = "filter"
    group_unit = "out_channels"
    shrinks_outputs = True

    def fit(self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer") -> tuple[int, int]:
        return keep, group  # tied layers share their filters

    def pruned_outputs(self, keep: int, group: int) -> int:
        return group - keep

    def kept_and_metadata(self, layer: LayerInfo, choice: Choice) -> tuple[int, int]:
        return choice.keep * layer.reduction, 0  # the kept filters, no metadata

    def dense_equivalent(self, layer: LayerInfo, choice: Choice) -> tuple[LayerInfo, Choice]:
        smaller = layer.with_channels(layer.in_channels, choice.keep)
        return smaller, replace(choice, pattern=Pattern.DENSE, keep=1, group=1)


@register_pattern
class NM(SparsityPattern):
    """Every run of ``M`` reduction elements keeps ``N``; ``M`` comes from the device's N:M options.

    A reduction length that is not a multiple of M takes N:M only padded (``pad``): the last
    run is short and keeps ``min(N, r)`` of its ``r`` elements.
    """

    name = Pattern.NM
    n_of_m = True
    fixed_group = False
    group_unit = "M"

    def group_size(self, shape: Sequence[int], *, name: str = "layer") -> None:
        check_weight_shape(shape)
        return None

    def fits(self, layer: LayerInfo, group: int, *, pad: bool = False) -> bool:
        return pad or layer.reduction % group == 0

    def unfit(self, layer: LayerInfo, nm_options: Sequence[tuple[int, int]]) -> str:
        """Why ``layer`` takes none of ``nm_options``."""
        return f"reduction length {layer.reduction} is not a multiple of any M in {list(nm_options)}"

    def options(
        self,
        layer: LayerInfo,
        *,
        levels: int,
        min_density: float,
        nm_options: Sequence[tuple[int, int]] = (),
        pad: bool = False,
    ) -> tuple[list[tuple[int, int]], str | None]:
        usable = {(n, m) for n, m in nm_options if self.fits(layer, m, pad=pad)}
        if not usable:
            return [], self.unfit(layer, nm_options)
        return sorted(usable, key=lambda nm: (nm[0] / nm[1], nm)), None

    def recast(self, layer: LayerInfo, density: float, nm: tuple[int, int]) -> tuple[int, int] | str:
        n, m = nm
        if not self.fits(layer, m):
            return f"shape {layer.out_channels}x{layer.reduction} does not divide into {n}:{m} groups"
        return n, m

    def mask(
        self, scores: torch.Tensor, keep: int, group: int, *, pad: bool = False, name: str = "layer"
    ) -> torch.Tensor:
        return nm_mask(scores, keep, group, pad=pad, name=name)

    def log10_diversity(self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer") -> float:
        """``rows * log10 C(M, N)`` per full run; a trailing partial run of ``r`` elements, as
        padded by ``nm_mask(pad=True)``, counts ``C(r, min(N, r))``."""
        check_weight_shape(shape)
        check_nm(keep, group, name)
        rows, length = shape[0], math.prod(shape[1:])
        short = length % group
        return rows * ((length // group) * log10_comb(group, keep) + log10_comb(short, min(keep, short)))

    def kept_and_metadata(self, layer: LayerInfo, choice: Choice) -> tuple[int, int]:
        n, m = choice.keep, choice.group
        groups = layer.out_channels * math.ceil(layer.reduction / m)
        kept = groups * n
        return kept, 2 * kept if (n, m) == (2, 4) else groups * log2_binomial_bits(m, n)


@register_pattern
class NMTransposable(NM):
    """Every ``M x M`` tile of the 2-D view keeps ``N`` per row and per column (the exact
    min-cost-flow solution), so the transposed weight is N:M too; tiles are never padded."""

    name = Pattern.NM_TRANSPOSABLE
    aliases = ("transposable",)

    def fits(self, layer: LayerInfo, group: int, *, pad: bool = False) -> bool:
        return layer.reduction % group == 0 and layer.out_channels % group == 0

    def unfit(self, layer: LayerInfo, nm_options: Sequence[tuple[int, int]]) -> str:
        return (
            f"reduction length {layer.reduction} and output channels {layer.out_channels} are not both "
            f"multiples of any M in {list(nm_options)}"
        )

    def mask(
        self, scores: torch.Tensor, keep: int, group: int, *, pad: bool = False, name: str = "layer"
    ) -> torch.Tensor:
        return transposable_mask(scores, keep, group, method="exact", name=name)

    def log10_diversity(self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer") -> float:
        """``tiles * log10 MD_tile``, ``MD_tile`` the exact count of one tile's masks
        (:func:`~rlprune.masks.metrics.transposable_tile_count`)."""
        check_weight_shape(shape)
        check_nm(keep, group, name, "transposable N:M")
        rows, length = shape[0], math.prod(shape[1:])
        check_tiles(rows, length, keep, group, name)
        tiles = (rows // group) * (length // group)
        return tiles * math.log10(transposable_tile_count(keep, group))
