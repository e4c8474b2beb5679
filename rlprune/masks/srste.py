"""SR-STE (Zhou et al. 2021): straight-through masked weights with a sparse-refined decay."""

from __future__ import annotations

import torch


class _SRSTE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, weight: torch.Tensor, mask: torch.Tensor, decay: float
    ) -> torch.Tensor:
        mask = mask.to(weight.dtype)
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        weight, mask = ctx.saved_tensors
        # The gradient reaches every weight (straight-through), and pruned weights also decay
        # towards zero so that the mask settles.
        return grad + ctx.decay * (1 - mask) * weight, None, None


def srste(weight: torch.Tensor, mask: torch.Tensor, decay: float = 2e-4) -> torch.Tensor:
    """``weight * mask`` whose backward is ``grad_W = g + decay * (1 - mask) * W``.

    ``decay = 0`` is the plain straight-through estimator: the gradient passes to all weights.
    ``mask`` may be bool or float; it gets no gradient.
    """
    return _SRSTE.apply(weight, mask, decay)
