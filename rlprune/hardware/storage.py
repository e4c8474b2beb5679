"""Bits a layer's weights occupy in memory under a choice: packed values plus mask metadata.

The latency models charge memory time for these bits, so the rules decide how much a sparse
pattern saves on bandwidth. Each pattern states its own (its
:meth:`~rlprune.patterns.SparsityPattern.kept_and_metadata`; docs/algorithms.md, "Weight
storage"); for the built-in ones:

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

from rlprune.layers import LayerInfo
from rlprune.masks.metrics import log2_binomial_bits
from rlprune.policy import Choice

__all__ = ["log2_binomial_bits", "weight_storage_bits"]


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
    layer, choice = choice.spec.dense_equivalent(layer, choice)
    dense = layer.params * w_bits
    if not choice.spec.sparse or not compressed:
        return dense
    kept, metadata = choice.spec.kept_and_metadata(layer, choice)
    return min(dense, kept * w_bits + metadata)
