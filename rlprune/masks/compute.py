"""One entry point from a layer's :class:`~rlprune.policy.Choice` to its mask."""

from __future__ import annotations

import torch

from rlprune.errors import ConfigError, ModelError
from rlprune.masks.checks import check_group
from rlprune.masks.criteria import importance
from rlprune.masks.kofn import PATTERN_GRANULARITY, kofn_group_size, kofn_mask, unstructured_mask
from rlprune.masks.nm import nm_mask
from rlprune.masks.transposable import transposable_mask
from rlprune.policy import Choice, Pattern


def compute_mask(
    weight: torch.Tensor,
    choice: Choice,
    scores: torch.Tensor | None = None,
    pad: bool = False,
    name: str = "layer",
) -> torch.Tensor:
    """The bool mask, in ``weight``'s shape, that ``choice`` asks for.

    Args:
        weight: the layer's dense weight (Linear, Conv1d or Conv2d).
        choice: the pattern and its ``keep`` of ``group``. For k-of-n and filter patterns
            ``group`` must be the layer's ``n`` (:func:`~rlprune.masks.kofn.kofn_group_size`);
            unstructured keeps the share ``keep / group``; transposable N:M is solved exactly.
        scores: elementwise importance in ``weight``'s shape; magnitude when omitted.
        pad: N:M only: pad a reduction length that is not a multiple of M instead of refusing it.
        name: the layer, named by every error.
    """
    pattern = choice.pattern
    if pattern is Pattern.DENSE:
        return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    if scores is None:
        scores = importance(weight, "magnitude")
    elif scores.shape != weight.shape:
        raise ConfigError(
            f"layer {name!r}: scores have shape {tuple(scores.shape)}, the weight {tuple(weight.shape)}"
        )
    if not torch.isfinite(scores).all():
        raise ModelError(f"layer {name!r}: importance scores contain NaN or inf")
    keep, group = choice.keep, choice.group
    if pattern is Pattern.UNSTRUCTURED:
        return unstructured_mask(scores, keep / group, name=name)
    if pattern in PATTERN_GRANULARITY:
        granularity = PATTERN_GRANULARITY[pattern]
        check_group(
            group, kofn_group_size(weight.shape, granularity, name=name), name, f"{granularity} k-of-n"
        )
        return kofn_mask(scores, keep, granularity, name=name)
    if pattern is Pattern.NM:
        return nm_mask(scores, keep, group, pad=pad, name=name)
    return transposable_mask(scores, keep, group, method="exact", name=name)
