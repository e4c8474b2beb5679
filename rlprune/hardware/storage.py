"""Bits a layer's weights occupy in memory under a choice: packed values plus mask metadata.

The latency models charge memory time for these bits, so the rules here decide how much a
sparse pattern saves on bandwidth. They follow docs/algorithms.md ("Weight storage"):

* values are packed at ``w_bits`` per *kept* weight;
* N:M and transposable N:M: ``ceil(log2 C(M,N))`` bits per group, except 2:4, which is stored
  in cuSPARSELt's format at 2 bits per kept value. Each row of the 2-D view is cut into
  ``ceil(reduction / M)`` groups (a short last group is padded, as the masks may pad);
* k-of-n at weight granularity: ``ceil(log2 C(n,k))`` bits per output row (``n = reduction``);
* k-of-n at kernel granularity: ``ceil(log2 C(n,k))`` bits per filter (``n = c_in/groups``);
  a kept kernel keeps all its ``prod(kernel)`` weights;
* unstructured: a bitmap of 1 bit per weight (simple, and cheaper than CSR-style indices
  whenever more than about 1/8 of the weights are kept);
* filter pruning: no metadata, the layer is smaller (``keep`` filters of ``reduction`` weights).

A device stores whichever form is smaller, dense or compressed (at low sparsity the metadata
can cost more than the zeros it saves). That also keeps the bytes non-increasing in sparsity.
"""

from __future__ import annotations

import math

from rlprune.errors import ConfigError
from rlprune.layers import LayerInfo
from rlprune.policy import Choice, Pattern

SPARSE_PATTERNS = (
    Pattern.UNSTRUCTURED,
    Pattern.KOFN_WEIGHT,
    Pattern.KOFN_KERNEL,
    Pattern.NM,
    Pattern.NM_TRANSPOSABLE,
)
"""Patterns that keep the weight's shape and zero some of it (every pattern but dense and filter)."""


def log2_binomial_bits(n: int, k: int) -> int:
    """``ceil(log2 C(n, k))``: the bits needed to say which ``k`` of ``n`` units are kept."""
    if not 0 < k < n:
        return 0
    return math.ceil(math.log2(math.comb(n, k)))


def kofn_group_size(layer: LayerInfo, pattern: Pattern) -> int:
    """The ``n`` of a k-of-n choice on ``layer``: ``reduction`` (weight) or ``c_in/groups`` (kernel)."""
    if pattern is Pattern.KOFN_WEIGHT:
        return layer.reduction
    if pattern is Pattern.KOFN_KERNEL:
        return layer.in_channels // layer.groups
    raise ValueError(f"{pattern} is not a k-of-n pattern")


def check_group(layer: LayerInfo, choice: Choice, device: str = "") -> None:
    """Raise :class:`ConfigError` when ``choice.group`` does not match ``layer``'s shape.

    Filter pruning counts filters (``group = out_channels``); k-of-n counts the units of one
    group (``reduction`` weights per row, or ``c_in/groups`` kernels per filter). N:M and
    unstructured take any group.
    """
    where = f"hardware '{device}': " if device else ""
    if choice.pattern is Pattern.FILTER and choice.group != layer.out_channels:
        raise ConfigError(
            f"{where}filter choice {choice.keep}:{choice.group} on layer '{layer.name}' must have "
            f"group = out_channels = {layer.out_channels}"
        )
    if choice.pattern in (Pattern.KOFN_WEIGHT, Pattern.KOFN_KERNEL):
        n = kofn_group_size(layer, choice.pattern)
        if choice.group != n:
            unit = (
                "reduction length c_in/g*prod(kernel)" if choice.pattern is Pattern.KOFN_WEIGHT else "c_in/g"
            )
            raise ConfigError(
                f"{where}{choice.pattern.value} choice {choice.keep}:{choice.group} on layer '{layer.name}' "
                f"must have group = n = {unit} = {n}"
            )


def kept_and_metadata(layer: LayerInfo, choice: Choice) -> tuple[int, int]:
    """Kept weight values and metadata bits of ``layer`` under a shape-keeping sparse ``choice``.

    Dense returns ``(params, 0)``. Filter returns the kept filters' weights and no metadata.
    """
    pattern = choice.pattern
    params = layer.params
    if pattern is Pattern.DENSE:
        return params, 0
    if pattern is Pattern.FILTER:
        return choice.keep * layer.reduction, 0
    if pattern is Pattern.UNSTRUCTURED:
        kept = min(params, max(1, math.floor(choice.density * params + 0.5)))
        return kept, params  # bitmap
    if pattern in (Pattern.NM, Pattern.NM_TRANSPOSABLE):
        n, m = choice.keep, choice.group
        groups = layer.out_channels * math.ceil(layer.reduction / m)
        kept = groups * n
        metadata = 2 * kept if (n, m) == (2, 4) else groups * log2_binomial_bits(m, n)
        return kept, metadata
    if pattern in (Pattern.KOFN_WEIGHT, Pattern.KOFN_KERNEL):
        n = kofn_group_size(layer, pattern)
        k = choice.keep
        unit = math.prod(layer.kernel_size) if pattern is Pattern.KOFN_KERNEL else 1
        return layer.out_channels * k * unit, layer.out_channels * log2_binomial_bits(n, k)
    raise ConfigError(f"unknown pattern {pattern!r}")


def weight_storage_bits(layer: LayerInfo, choice: Choice, w_bits: int, compressed: bool) -> int:
    """Bits of ``layer``'s weights in memory under ``choice``, values packed at ``w_bits``.

    Args:
        layer: the layer (for filter pruning, the original one: ``choice.keep`` filters are kept).
        choice: pattern and keep/group; its own ``w_bits`` is ignored in favour of ``w_bits``,
            which the caller has already mapped (float -> the device's reference bits).
        w_bits: bits per stored value.
        compressed: whether the device stores this sparse pattern compressed. When false, the
            zeros are stored too (dense storage, no metadata).
    """
    dense = layer.params * w_bits
    if choice.pattern is Pattern.DENSE:
        return dense
    if choice.pattern is Pattern.FILTER:
        return choice.keep * layer.reduction * w_bits
    if not compressed:
        return dense
    kept, metadata = kept_and_metadata(layer, choice)
    return min(dense, kept * w_bits + metadata)
