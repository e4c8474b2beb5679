"""Score policies on the reward split, fast: one attached model, cached masks, memoized scores."""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from rlprune.compress import (
    attach,
    feeding_layers,
    filter_feeders,
    policy_masks,
    recalibrate_batch_norms,
    removed_inputs,
    set_choice,
    tied_filters,
)
from rlprune.errors import RlpruneError
from rlprune.layers import FilterCoupling
from rlprune.masks.criteria import CALIBRATION_BATCH
from rlprune.policy import DENSE_FLOAT, Policy
from rlprune.reconstruct import LayerFits, fits
from rlprune.training import Score, eval_mode, evaluate

MASK_BYTES = 1 << 29  # cached masks kept at most: a large network's options stay within memory
FIT_BYTES = 1 << 31  # cached fitted weights kept at most (search.reconstruct)


class TensorCache:
    """Tensors by key, the least recently used dropped once they hold more than ``max_bytes``
    (never the ``pinned`` most recent, which one policy needs together)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._tensors: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._tensors)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors stored."""
        return self._bytes

    def get(self, key: tuple) -> torch.Tensor | None:
        """The tensor stored under ``key`` (now the most recently used), or ``None``."""
        if key not in self._tensors:
            return None
        self._tensors.move_to_end(key)
        return self._tensors[key]

    def put(self, key: tuple, tensor: torch.Tensor, pinned: int = 0) -> None:
        """Store ``tensor`` under ``key``, then drop the least recently used past ``max_bytes``."""
        self._tensors[key] = tensor
        self._bytes += tensor.nbytes
        while self._bytes > self.max_bytes and len(self._tensors) > pinned:
            self._bytes -= self._tensors.popitem(last=False)[1].nbytes

    def to(self, device: torch.device | str) -> None:
        """Move every stored tensor to ``device``."""
        self._tensors = OrderedDict((key, t.to(device)) for key, t in self._tensors.items())


class PolicyEvaluator:
    """Accuracy and loss of the masked, quantized network on a fixed batch.

    The network is copied and attached once; each evaluation only swaps masks and bit-widths
    in. Masks are cached per layer and option (with the layers tied to it and the filter
    choices that feed it), the least recently used dropped past ``MASK_BYTES``, and the scores
    of identical policies are memoized, so a search that revisits a policy pays nothing.

    A policy can be scored on the first ``samples`` of the reward split only (multi-fidelity
    search); the split is drawn in a seeded random order (:func:`rlprune.data.make_splits`), so
    its first samples are a fixed random subset of it.

    With ``fit_inputs`` (``search.reconstruct``), each compressed layer is scored re-fit to its
    dense output (:class:`rlprune.reconstruct.LayerFits`: alone, on the dense network's inputs),
    the fitted weights cached per layer and option as the masks are, the least recently used
    dropped past ``FIT_BYTES``.

    It pickles as its arguments (the attached copy cannot be pickled), so a parallel env's
    worker process rebuilds its own (:mod:`rlprune.envs.parallel`).

    Args:
        model: the trained dense network (left unchanged).
        names: the searched layers (a policy that leaves one out keeps it dense and float).
        x, y: the reward split.
        pad: N:M pads (True) or refuses a reduction length that is not a multiple of M.
        memo_size: scores of this many most recently evaluated policies are remembered.
        couplings: the layers' filter couplings (the batch norms a pruned filter silences).
        recalibration: training inputs that re-estimate the batch norms' statistics under
            each policy before it is scored (``None``: keep the dense network's statistics);
            a score on a share of the reward split uses that share of their batches (one at least).
        recalibration_batch: the batch size of that pass.
        reference: also measure KL(dense ‖ policy) of the output distributions, against the
            dense network's outputs computed once here.
        fit_inputs: calibration inputs of the layers' fits (``None``: no fits).
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
        reference: bool = False,
        fit_inputs: torch.Tensor | None = None,
    ) -> None:
        self._arguments = (
            model,
            names,
            x,
            y,
            pad,
            memo_size,
            couplings,
            recalibration,
            recalibration_batch,
            reference,
            fit_inputs,
        )
        self.model = copy.deepcopy(model).eval()
        self.reference = _log_probs(self.model, x) if reference else None  # before masks go in
        self.fits = None
        if fit_inputs is not None:  # before masks go in: the dense network's inputs
            self.fits = LayerFits(self.model, names, fit_inputs.split(CALIBRATION_BATCH))
        self.recalibration, self.recalibration_batch = recalibration, recalibration_batch
        attach(self.model, names, couplings)
        self.couplings = couplings
        self._fed_by = feeding_layers(couplings)
        self.names = list(names)
        self.x, self.y, self.pad, self.memo_size = x, y, pad, memo_size
        self._masks = TensorCache(MASK_BYTES)
        self._fitted = TensorCache(FIT_BYTES)
        self._dense = self._weights()
        self._memo: OrderedDict[tuple[Policy, int], Score] = OrderedDict()
        self.forward_passes = 0

    def __reduce__(self) -> tuple[type, tuple]:
        return type(self), self._arguments

    def to(self, device: torch.device | str) -> PolicyEvaluator:
        """This evaluator with its network, data, cached masks and fits on ``device``."""
        self._restore_dense()  # the network's own weights move; the fitted ones move with the cache
        self.model.to(device)
        self._dense = self._weights()
        self.x, self.y = self.x.to(device), self.y.to(device)
        if self.recalibration is not None:
            self.recalibration = self.recalibration.to(device)
        if self.reference is not None:
            self.reference = self.reference.to(device)
        self._masks.to(device)
        if self.fits is not None:
            self.fits.to(device)
            self._fitted.to(device)
        return self

    @property
    def samples(self) -> int:
        """Samples in the reward split: the highest fidelity."""
        return len(self.x)

    def __call__(self, policy: Policy, samples: int | None = None) -> Score:
        """The score of ``policy`` on the first ``samples`` of the reward split (all by default; memoized).

        Raises:
            RlpruneError: for ``samples`` outside ``[1, len(reward split)]``, or when the
                network's outputs are not finite under this policy.
        """
        n = self.samples if samples is None else int(samples)
        if not 1 <= n <= self.samples:
            raise RlpruneError(f"a policy is scored on 1 to {self.samples} reward samples, not {samples}")
        key = self._key(policy, n)
        policy = key[0]
        known = self._recall(key)
        if known is not None:
            return known
        self._restore_dense()  # masks are taken from the dense weights
        keys = self._mask_keys(policy)
        masks = self._policy_masks(policy, keys)
        for name, choice in policy:
            set_choice(self.model.get_submodule(name), choice, masks[name])
        if self.fits is not None:
            self._use_fits(policy, masks, keys)
        with parametrize.cached():  # each masked, quantized weight made once for all the passes below
            if self.recalibration is not None:  # a share of the split: that share of its batches
                batches = math.ceil(len(self.recalibration) / self.recalibration_batch)
                share = max(1, round(batches * n / self.samples)) * self.recalibration_batch
                recalibrate_batch_norms(self.model, self.recalibration[:share], self.recalibration_batch)
            if self.reference is None:
                score = evaluate(self.model, self.x[:n], self.y[:n])
            else:
                score = evaluate_against(self.model, self.x[:n], self.y[:n], self.reference[:n])
        self.forward_passes += 1
        if not math.isfinite(score.loss):
            raise RlpruneError(
                f"the network's loss is {score.loss} under policy {policy.to_dict()}; check the model"
            )
        self._store(key, score)
        return score

    def _policy_masks(self, policy: Policy, keys: Mapping[str, tuple]) -> dict[str, torch.Tensor]:
        """Every layer's mask under ``policy`` (``keys``: :meth:`_mask_keys`): cached ones, the
        others made and cached."""
        masks = {name: mask for name, key in keys.items() if (mask := self._masks.get(key)) is not None}
        if len(masks) < len(keys):
            made = policy_masks(self.model, policy, self.pad, self.couplings, known=masks)
            for name, mask in made.items():
                self._masks.put(keys[name], mask, pinned=len(keys))
            masks |= made
        return masks

    def _use_fits(self, policy: Policy, masks: Mapping[str, torch.Tensor], keys: Mapping[str, tuple]) -> None:
        """Point each layer that ``policy`` compresses, or whose inputs its filter choices remove
        (:func:`rlprune.reconstruct.fits`), at its fitted weight: cached per mask, weight bit-width
        and removed inputs; the others keep their dense ones."""
        removed = removed_inputs(policy, masks, self.couplings)
        for name, choice in policy:
            layer, silenced = self.model.get_submodule(name), tuple(removed.get(name, ()))
            if not fits(layer, silenced):
                continue
            key = (keys[name], choice.w_bits, silenced)
            fitted = self._fitted.get(key)
            if fitted is None:
                fitted = nn.Parameter(self.fits.weight(self.model, name, silenced), requires_grad=False)
                self._fitted.put(key, fitted, pinned=len(keys))
            layer.parametrizations.weight.original = fitted

    def _weights(self) -> dict[str, nn.Parameter]:
        """The weight each searched layer's parametrization reads now."""
        return {name: self.model.get_submodule(name).parametrizations.weight.original for name in self.names}

    def _restore_dense(self) -> None:
        """Every searched layer back on its dense weight (from a fitted one)."""
        if self.fits is not None:
            for name, weight in self._dense.items():
                self.model.get_submodule(name).parametrizations.weight.original = weight

    def _mask_keys(self, policy: Policy) -> dict[str, tuple]:
        """What each layer's mask depends on: its choice, the layers tied to it (they keep the
        same filters) and, where it is sparse but keeps its filters, the filter choices that feed it
        (its mask is made on the inputs those leave)."""
        ties, choices = tied_filters(policy, self.couplings), dict(policy.choices)
        feeders = filter_feeders(policy, self._fed_by)
        return {
            name: (
                name,
                c.pattern,
                c.keep,
                c.group,
                ties.get(name),
                tuple((p, choices[p].keep) for p in feeders.get(name, ())),
            )
            for name, c in policy
        }

    def remembered(self, policy: Policy, samples: int | None = None) -> Score | None:
        """The memoized score of ``policy`` on the first ``samples`` of the reward split, if any."""
        return self._recall(self._key(policy, samples))

    def remember(self, policy: Policy, samples: int | None, score: Score) -> None:
        """Memoize ``score`` as ``policy``'s on the first ``samples`` of the split (scored elsewhere:
        by a parallel env's worker), so this evaluator does not score it again."""
        self._store(self._key(policy, samples), score)

    def _recall(self, key: tuple[Policy, int]) -> Score | None:
        if key not in self._memo:
            return None
        self._memo.move_to_end(key)
        return self._memo[key]

    def _store(self, key: tuple[Policy, int], score: Score) -> None:
        self._memo[key] = score
        if len(self._memo) > self.memo_size:  # least recently used first: a long search stays flat
            self._memo.popitem(last=False)

    def _key(self, policy: Policy, samples: int | None) -> tuple[Policy, int]:
        """The memo's key: the policy completed (:meth:`_complete`); ``None`` samples is all of the
        reward split."""
        return self._complete(policy), self.samples if samples is None else int(samples)

    def _complete(self, policy: Policy) -> Policy:
        """``policy`` with the dense float choice on the searched layers it leaves out, as
        :meth:`Policy.get` reads it: a layer keeps the last choice set on it otherwise."""
        chosen = dict(policy)
        if all(name in chosen for name in self.names):
            return policy
        return Policy.of({**dict.fromkeys(self.names, DENSE_FLOAT), **chosen})


@torch.no_grad()
def _log_probs(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``model``'s log-probabilities over its classes (last dimension) for every input of ``x``."""
    return torch.cat([F.log_softmax(model(x[i : i + batch_size]), -1) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate_against(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, reference: torch.Tensor, batch_size: int = 1024
) -> Score:
    """Accuracy, loss and mean KL(reference ‖ model) of ``model`` on ``(x, y)``, in eval mode.

    ``reference`` holds the reference network's log-probabilities for ``x``. Unlike accuracy,
    which moves in steps of one sample, the KL divergence tells apart policies whose answers
    are the same but whose confidence is not. Outputs with more than two dimensions (one
    prediction per token) count every prediction, as their targets do.
    """
    correct, loss, kl, count = 0, 0.0, 0.0, 0
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            logits = logits.reshape(-1, logits.shape[-1])
            target = y[start : start + batch_size].reshape(-1)
            dense = reference[start : start + batch_size].reshape(logits.shape)
            loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(1) == target).sum().item()
            kl += F.kl_div(F.log_softmax(logits, -1), dense, reduction="sum", log_target=True).item()
            count += len(target)
    return Score(accuracy=correct / count, loss=loss / count, kl=kl / count)
