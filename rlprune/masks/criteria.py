"""Importance criteria: elementwise scores that decide which weights a mask keeps."""

from __future__ import annotations

import torch

from rlprune.errors import ConfigError

CRITERIA = ("magnitude", "taylor", "random")


def importance(
    weight: torch.Tensor,
    criterion: str,
    grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Elementwise importance of ``weight``, with the weight's shape (larger is kept first).

    Args:
        weight: the layer's dense weight.
        criterion: ``magnitude`` ``|w|``; ``taylor`` ``|w * grad|`` (first-order Taylor, Molchanov
            et al.), where ``grad`` is the loss gradient, accumulated by the caller over a few
            batches; ``random`` uniform noise, a control, drawn from ``generator``.
        grad: the gradient for ``taylor``; ignored otherwise.
        generator: the random source for ``random``; ignored otherwise.
    """
    weight = weight.detach()
    if criterion == "magnitude":
        return weight.abs()
    if criterion == "taylor":
        if grad is None:
            raise ConfigError("criterion 'taylor' needs the weight's gradient (grad=...)")
        if grad.shape != weight.shape:
            raise ConfigError(f"grad has shape {tuple(grad.shape)}, the weight {tuple(weight.shape)}")
        return (weight * grad.detach()).abs()
    if criterion == "random":
        return torch.rand(weight.shape, generator=generator, dtype=weight.dtype, device=weight.device)
    raise ConfigError(f"unknown importance criterion {criterion!r}; valid: {list(CRITERIA)}")
