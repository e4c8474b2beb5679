"""Score policies on the reward split, fast: one attached model, cached masks, memoized scores."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn

from rlprune.compress import attach, policy_masks, recalibrate_batch_norms, set_choice, tied_filters
from rlprune.errors import RlpruneError
from rlprune.layers import FilterCoupling
from rlprune.policy import Policy
from rlprune.training import Score, evaluate


class PolicyEvaluator:
    """Accuracy and loss of the masked, quantized network on a fixed batch.

    The network is copied and attached once; each evaluation only swaps masks and bit-widths
    in. Masks are cached per layer and option (with the layers tied to it), and the scores of
    identical policies are memoized, so a search that revisits a policy pays nothing.

    It pickles as its arguments (the attached copy cannot be pickled), so a parallel env's
    worker process rebuilds its own (:mod:`rlprune.envs.parallel`).

    Args:
        model: the trained dense network (left unchanged).
        names: the searched layers.
        x, y: the reward split.
        pad: N:M pads (True) or refuses a reduction length that is not a multiple of M.
        memo_size: scores of this many most recently evaluated policies are remembered.
        couplings: the layers' filter couplings (the batch norms a pruned filter silences).
        recalibration: training inputs that re-estimate the batch norms' statistics under
            each policy before it is scored (``None``: keep the dense network's statistics).
        recalibration_batch: the batch size of that pass.
    """

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        x: torch.Tensor,
        y: torch.Tensor,
        pad: bool = True,
        memo_size: int = 4096,
        couplings: Mapping[str, FilterCoupling] | None = None,
        recalibration: torch.Tensor | None = None,
        recalibration_batch: int = 100,
    ) -> None:
        self._arguments = (model, names, x, y, pad, memo_size, couplings, recalibration, recalibration_batch)
        self.model = copy.deepcopy(model).eval()
        self.recalibration, self.recalibration_batch = recalibration, recalibration_batch
        attach(self.model, names, couplings)
        self.couplings = couplings
        self.x, self.y, self.pad, self.memo_size = x, y, pad, memo_size
        self._masks: dict[tuple, torch.Tensor] = {}
        self._memo: OrderedDict[Policy, Score] = OrderedDict()
        self.forward_passes = 0

    def __reduce__(self) -> tuple[type, tuple]:
        return type(self), self._arguments

    def to(self, device: torch.device | str) -> PolicyEvaluator:
        """This evaluator with its network and data on ``device`` (cached masks are dropped)."""
        self.model.to(device)
        self.x, self.y = self.x.to(device), self.y.to(device)
        if self.recalibration is not None:
            self.recalibration = self.recalibration.to(device)
        self._masks.clear()
        return self

    def __call__(self, policy: Policy) -> Score:
        """The reward-split score of ``policy`` (memoized).

        Raises:
            RlpruneError: when the network's outputs are not finite under this policy.
        """
        if policy in self._memo:
            self._memo.move_to_end(policy)
            return self._memo[policy]
        ties = tied_filters(policy, self.couplings)
        keys = {name: (name, c.pattern, c.keep, c.group, ties.get(name)) for name, c in policy}
        missing = {n for name, key in keys.items() if key not in self._masks for n in ties.get(name, (name,))}
        if missing:  # with the layers tied to them: they keep the same filters
            fresh = policy_masks(
                self.model, Policy(tuple((n, c) for n, c in policy if n in missing)), self.pad, self.couplings
            )
            self._masks.update({keys[name]: mask for name, mask in fresh.items()})
        for name, choice in policy:
            set_choice(self.model.get_submodule(name), choice, self._masks[keys[name]])
        if self.recalibration is not None:
            recalibrate_batch_norms(self.model, self.recalibration, self.recalibration_batch)
        score = evaluate(self.model, self.x, self.y)
        self.forward_passes += 1
        if not math.isfinite(score.loss):
            raise RlpruneError(
                f"the network's loss is {score.loss} under policy {policy.to_dict()}; check the model"
            )
        self._memo[policy] = score
        if len(self._memo) > self.memo_size:  # least recently used first: a long search stays flat
            self._memo.popitem(last=False)
        return score
