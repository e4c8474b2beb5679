"""Sparsity masks: k-of-n, N:M, transposable N:M, unstructured, learned, and their metrics.

Every mask is a ``torch.bool`` tensor with exactly the weight's shape; applying one never changes
a shape. Conventions (docs/algorithms.md, "Conventions"): ``keep`` of ``group`` is *kept*; N:M groups run
along the
reduction dimension of the 2-D view (:func:`weight_view`, NVIDIA ASP's layout).
"""

from rlprune.masks.compute import compute_mask
from rlprune.masks.criteria import (
    Calibration,
    Criterion,
    EndPass,
    criterion_names,
    get_criterion,
    input_columns,
    input_norms,
    magnitude,
    read_inputs,
    register_criterion,
)
from rlprune.masks.gap import GapSchedule
from rlprune.masks.kofn import (
    GRANULARITIES,
    kept_filters,
    kofn_group_size,
    kofn_mask,
    pruned_filters,
    tied_filter_masks,
    unstructured_mask,
)
from rlprune.masks.learned import GumbelTopKMask
from rlprune.masks.metrics import log10_mask_diversity, sad, transposable_tile_count
from rlprune.masks.nm import nm_mask
from rlprune.masks.srste import srste
from rlprune.masks.transposable import METHODS, transposable_mask
from rlprune.masks.views import unview, weight_view

__all__ = [
    "GRANULARITIES",
    "METHODS",
    "Calibration",
    "Criterion",
    "EndPass",
    "GapSchedule",
    "GumbelTopKMask",
    "compute_mask",
    "criterion_names",
    "get_criterion",
    "input_columns",
    "input_norms",
    "kept_filters",
    "kofn_group_size",
    "kofn_mask",
    "log10_mask_diversity",
    "magnitude",
    "nm_mask",
    "pruned_filters",
    "read_inputs",
    "register_criterion",
    "sad",
    "srste",
    "tied_filter_masks",
    "transposable_mask",
    "transposable_tile_count",
    "unstructured_mask",
    "unview",
    "weight_view",
]
