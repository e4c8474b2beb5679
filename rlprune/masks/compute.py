"""One entry point from a layer's :class:`~rlprune.policy.Choice` to its mask."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rlprune.errors import ConfigError, ModelError
from rlprune.masks.criteria import magnitude
from rlprune.patterns.base import get_pattern

if TYPE_CHECKING:
    from rlprune.policy import Choice


def compute_mask(
    weight: torch.Tensor,
    choice: Choice,
    scores: torch.Tensor | None = None,
    pad: bool = False,
    name: str = "layer",
) -> torch.Tensor:
    """The bool mask, in ``weight``'s shape, that ``choice`` asks for: its pattern's
    (:meth:`~rlprune.patterns.SparsityPattern.mask`) once the scores and the group are checked.

    Args:
        weight: the layer's dense weight (Linear, Conv1d or Conv2d).
        choice: the pattern and its ``keep`` of ``group``. For k-of-n and filter patterns
            ``group`` must be the layer's ``n`` (:meth:`~rlprune.patterns.SparsityPattern.group_size`);
            unstructured keeps the share ``keep / group``; transposable N:M is solved exactly.
        scores: elementwise importance in ``weight``'s shape; magnitude when omitted.
        pad: N:M only: pad a reduction length that is not a multiple of M instead of refusing it.
        name: the layer, named by every error.
    """
    pattern = get_pattern(choice.pattern)
    if not pattern.sparse:
        return torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
    if scores is None:
        scores = magnitude(weight)
    elif scores.shape != weight.shape:
        raise ConfigError(
            f"layer {name!r}: scores have shape {tuple(scores.shape)}, the weight {tuple(weight.shape)}"
        )
    if not torch.isfinite(scores).all():
        raise ModelError(f"layer {name!r}: importance scores contain NaN or inf")
    pattern.check_group(choice.keep, choice.group, weight.shape, name=name)
    return pattern.mask(scores, choice.keep, choice.group, pad=pad, name=name)
