"""k-out-of-n masks at weight, kernel and filter granularity, and unstructured masks.

A *unit* is what is kept or dropped whole: one weight, one ``kh x kw`` kernel, or one filter; a
*group* is the set of units that must keep exactly ``k`` of its ``n``
(docs/algorithms.md, "k-out-of-n masks"). A unit's
score is the sum of its elements' scores (L1 for magnitude). Ties go to the lowest unit index in
the weight's own layout (``weight.reshape(O, -1)`` for weight granularity).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from rlprune.errors import ConfigError
from rlprune.masks.checks import check_keep, check_weight_shape
from rlprune.masks.select import to_numpy, topk_rows

GRANULARITIES = ("weight", "kernel", "filter")


def kofn_group_size(shape: Sequence[int], granularity: str, *, name: str = "layer") -> int:
    """The ``n`` of k-of-n for a weight ``shape``.

    ``weight``: ``c_in/g * prod(kernel)`` (Linear: in_features); ``kernel``: ``c_in/g`` (convs
    only); ``filter``: ``c_out``.
    """
    check_weight_shape(shape)
    if granularity == "weight":
        return math.prod(shape[1:])
    if granularity == "kernel":
        if len(shape) < 3:
            raise ConfigError(
                f"layer {name!r}: kernel granularity needs a conv weight, got a Linear weight {tuple(shape)}"
            )
        return shape[1]
    if granularity == "filter":
        return shape[0]
    raise ConfigError(f"layer {name!r}: unknown granularity {granularity!r}; valid: {list(GRANULARITIES)}")


def unit_scores(scores: torch.Tensor, granularity: str) -> torch.Tensor:
    """Scores per unit as ``(groups, n)``: one row per group (the filter granularity has one group)."""
    out = scores.shape[0]
    if granularity == "weight":
        return scores.reshape(out, -1)
    if granularity == "kernel":
        return scores.reshape(out, scores.shape[1], -1).sum(-1)
    return scores.reshape(1, out, -1).sum(-1)


def expand_units(unit_mask: torch.Tensor, shape: Sequence[int], granularity: str) -> torch.Tensor:
    """Inverse of :func:`unit_scores` for masks: a ``(groups, n)`` unit mask in weight ``shape``."""
    shape = tuple(shape)
    if granularity == "weight":
        return unit_mask.reshape(shape)
    ones = (1,) * (len(shape) - 2)
    if granularity == "kernel":
        return unit_mask.reshape(*shape[:2], *ones).expand(shape).contiguous()
    return unit_mask.reshape(shape[0], 1, *ones).expand(shape).contiguous()


def kofn_mask(scores: torch.Tensor, keep: int, granularity: str, *, name: str = "layer") -> torch.Tensor:
    """Keep exactly ``keep`` units of every group, those with the largest summed score.

    Args:
        scores: elementwise importance, in the weight's shape.
        keep: ``k``, the units kept per group.
        granularity: ``weight``, ``kernel`` or ``filter``.
        name: the layer, for error messages.

    Returns:
        A bool mask in the weight's shape.
    """
    n = kofn_group_size(scores.shape, granularity, name=name)
    check_keep(keep, n, name, f"{granularity} k-of-n")
    units = unit_scores(scores.detach(), granularity)
    unit_mask = torch.from_numpy(topk_rows(to_numpy(units), keep))
    return expand_units(unit_mask, scores.shape, granularity).to(scores.device)


def tied_filter_masks(scores: Mapping[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """One choice of ``keep`` filters for layers whose filters are tied (they meet in a residual add).

    Each layer's filter scores (summed elementwise scores, L1 for magnitude) are divided by
    their mean, so a layer with a long reduction does not outvote the others, and summed over
    the layers (Torch-Pruning's group importance with its mean normalizer); every layer keeps
    the filters with the largest sums.

    Args:
        scores: elementwise importance per layer, each in its weight's shape, with equal filters.
        keep: filters kept.

    Returns:
        A bool mask per layer, in its weight's shape.
    """
    per_layer = {name: unit_scores(s.detach(), "filter") for name, s in scores.items()}
    filters = {units.shape[1] for units in per_layer.values()}
    if len(filters) != 1:
        raise ConfigError(f"tied layers {sorted(scores)} must have equal filters, got {sorted(filters)}")
    check_keep(keep, filters.pop(), ", ".join(scores), "tied filter")
    total = sum(units / units.mean().clamp_min(torch.finfo(units.dtype).tiny) for units in per_layer.values())
    unit_mask = torch.from_numpy(topk_rows(to_numpy(total), keep))
    return {name: expand_units(unit_mask, s.shape, "filter").to(s.device) for name, s in scores.items()}


def kept_filters(mask: torch.Tensor) -> torch.Tensor:
    """Which filters (output channels) ``mask`` keeps: its rows that are not empty."""
    return mask.flatten(1).any(1)


def pruned_filters(mask: torch.Tensor) -> list[int]:
    """The indices of the filters ``mask`` empties, ascending."""
    return (~kept_filters(mask)).nonzero().flatten().tolist()


def unstructured_kept(numel: int, keep_ratio: float) -> int:
    """How many weights an unstructured mask keeps: ``round(keep_ratio * numel)``, at least 1."""
    return max(1, round(keep_ratio * numel))


def unstructured_mask(scores: torch.Tensor, keep_ratio: float, *, name: str = "layer") -> torch.Tensor:
    """Keep the top :func:`unstructured_kept` scores of the whole tensor (ties: lowest flat index)."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ConfigError(f"layer {name!r}: unstructured keep ratio must be in (0, 1], got {keep_ratio}")
    kept = unstructured_kept(scores.numel(), keep_ratio)
    flat = topk_rows(to_numpy(scores).reshape(1, -1), kept)
    return torch.from_numpy(flat).reshape(scores.shape).to(scores.device)
