"""Learned k-of-n masks by Gumbel top-k, as in Dynamic Probabilistic Pruning (DPP).

Every group of a layer has one trainable logit per unit. Training samples a hard top-k of the
logits perturbed by Gumbel noise and back-propagates through a relaxation: ``k`` successive
softmaxes at temperature ``T``, each excluding the items already chosen (straight-through).
Evaluation takes the deterministic top-k of the logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from rlprune.masks.checks import check_keep
from rlprune.masks.kofn import expand_units, kofn_group_size, unit_scores


def top_k_order(logits: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` largest logits of every row, largest first; ties: lowest index."""
    return torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :keep]


def successive_softmax(logits: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Sum of ``k`` softmaxes of ``logits`` per row, the ``i``-th excluding ``chosen[:, :i]``.

    ``chosen`` holds ``k < n`` distinct indices per row, in the order they were chosen. Softmax
    ``i`` gives an item ``e_x / Z_i``, where ``Z_i`` sums ``e`` over the items not yet chosen;
    an item chosen at step ``r`` takes part in softmaxes ``0..r``, any other item in all ``k``.
    So the sum is ``e_x * sum_{i <= min(r, k-1)} 1 / Z_i``: ``O(n + k)`` per row instead of
    ``k`` softmaxes, computed in log space so that no ``Z_i`` underflows.
    """
    keep = chosen.shape[-1]
    picked = logits.gather(-1, chosen)
    rest = logits.scatter(-1, chosen, float("-inf")).logsumexp(-1, keepdim=True)
    # log Z_i = log(sum over the unchosen + sum over chosen[i:]).
    log_z = torch.logaddexp(rest, picked.flip(-1).logcumsumexp(-1).flip(-1))
    log_coef = (-log_z).logcumsumexp(-1)  # log sum_{i <= r} 1 / Z_i
    coef = log_coef[..., -1:].expand_as(logits).scatter(-1, chosen, log_coef[..., :keep])
    return (logits + coef).exp()


class GumbelTopKMask(nn.Module):
    """Trainable k-of-n mask for one layer: logits ``D`` of shape ``(groups, n)``.

    Args:
        weight_shape: the layer's weight shape.
        keep: ``k``, the units kept per group.
        granularity: ``weight``, ``kernel`` or ``filter`` (as :func:`~rlprune.masks.kofn.kofn_mask`).
        scale: ``s``, the Gumbel noise scale. Default (DPP): 0.1 for a Linear weight, 0.01 for a
            conv weight, whose many units would otherwise be reshuffled by the noise.
        weight: when given, ``D`` starts at ``log`` of each unit's share of its group's L1 norm, so
            the first deterministic mask is the magnitude mask; otherwise ``D`` starts at zero.
        name: the layer, for error messages.

    ``forward()`` returns a float mask in weight shape: in training mode a sampled hard mask whose
    gradient flows to ``D`` through the relaxation; in eval mode the top-k of ``D``.
    """

    T_START = 5.0
    T_END = 0.5

    def __init__(
        self,
        weight_shape: Sequence[int],
        keep: int,
        granularity: str,
        scale: float | None = None,
        weight: torch.Tensor | None = None,
        *,
        name: str = "layer",
    ) -> None:
        super().__init__()
        self.weight_shape = tuple(weight_shape)
        self.granularity = granularity
        n = kofn_group_size(self.weight_shape, granularity, name=name)
        check_keep(keep, n, name, f"{granularity} k-of-n")
        self.keep = keep
        self.scale = (0.1 if len(self.weight_shape) == 2 else 0.01) if scale is None else scale
        self.temperature = self.T_START
        groups = 1 if granularity == "filter" else self.weight_shape[0]
        logits = torch.zeros(groups, n)
        if weight is not None:
            l1 = unit_scores(weight.detach().abs().float().cpu(), granularity)
            share = l1 / l1.sum(-1, keepdim=True).clamp_min(torch.finfo(l1.dtype).tiny)
            logits = share.clamp_min(torch.finfo(l1.dtype).tiny).log().to(weight.device)
        self.logits = nn.Parameter(logits)

    def anneal(self, progress: float) -> None:
        """Set the temperature for training ``progress`` in [0, 1]: linear from 5 to 0.5."""
        progress = min(max(progress, 0.0), 1.0)
        self.temperature = self.T_START + (self.T_END - self.T_START) * progress

    def hard_mask(self) -> torch.Tensor:
        """The deterministic mask (top-k of ``D``) as a bool tensor in weight shape."""
        unit_mask = self._one_hot(top_k_order(self.logits.detach(), self.keep), torch.bool)
        return expand_units(unit_mask, self.weight_shape, self.granularity)

    def forward(self) -> torch.Tensor:
        """A float mask in weight shape with exactly ``k`` kept units per group."""
        if not self.training:
            return self.hard_mask().to(self.logits.dtype)
        n = self.logits.shape[-1]
        if self.keep == n:  # nothing to choose
            return torch.ones(self.weight_shape, dtype=self.logits.dtype, device=self.logits.device)
        # -log(Exp(1)) is Gumbel(0, 1), the same as -log(-log U) without U = 0 or 1 edge cases.
        gumbel = -torch.empty_like(self.logits).exponential_().log()
        perturbed = (self.logits + self.scale * gumbel) / self.temperature
        chosen = top_k_order(perturbed.detach(), self.keep)
        hard = self._one_hot(chosen, self.logits.dtype)
        soft = successive_softmax(perturbed, chosen)
        # Straight-through: the value is exactly `hard`, the gradient is that of `soft`.
        units = hard + (soft - soft.detach())
        return expand_units(units, self.weight_shape, self.granularity)

    def _one_hot(self, chosen: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(self.logits.shape, dtype=dtype, device=self.logits.device).scatter_(-1, chosen, 1)

    def entropy(self) -> torch.Tensor:
        """Mean over groups of the entropy of ``softmax(D)``: the regulariser (weight about 5e-5)."""
        log_p = self.logits.log_softmax(-1)
        return -(log_p.exp() * log_p).sum(-1).mean()

    def confidence(self) -> float:
        """``1 - mean_g H(softmax(D_g)) / log n``: 1 when every softmax is one-hot.

        As docs/algorithms.md ("Mask metrics") defines it: a group whose softmax is spread evenly over its k
        kept units
        scores ``1 - log k / log n``, not 1.
        """
        n = self.logits.shape[-1]
        if n == 1:
            return 1.0
        with torch.no_grad():
            return 1.0 - self.entropy().item() / math.log(n)

    def diversity(self) -> float:
        """Entropy of the distinct kept-sets across groups over ``log min(#groups, C(n, k))``.

        0 when every group keeps the same positions (and for a single group).
        """
        groups, n = self.logits.shape
        bound = min(groups, math.comb(n, self.keep))
        if bound < 2:
            return 0.0
        unit_mask = self._one_hot(top_k_order(self.logits.detach(), self.keep), torch.bool)
        counts = torch.unique(unit_mask, dim=0, return_counts=True)[1].double()
        p = counts / groups
        return float(-(p * p.log()).sum() / math.log(bound))
