"""Finetuning: apply a policy's masks and bit-widths to a copy of the dense model and train it back.

The searched policy fixes each layer's density and bit-width. The finetune can keep its masks
(``mask=policy``) or re-express the same densities in another mask family: any shape-keeping
sparse pattern of the registry (N:M, transposable N:M, k-of-n, unstructured, or one registered
with :func:`~rlprune.patterns.register_pattern`), or learned Gumbel top-k masks; and can train
them with plain masked training, SR-STE with periodic mask refresh, and/or the scheduled
grow-and-prune cycle (GaP).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rlprune.compress import (
    LearnedMaskedWeight,
    calibrate_activations,
    compress,
    dense_weight,
    feeding_layers,
    filter_feeders,
    policy_masks,
    prunes_filters,
    recalibrate_batch_norms,
    removed_inputs,
    set_mask,
    silence_pruned_filters,
    tied_filters,
    use_learned_mask,
    weight_parametrization,
)
from rlprune.config import is_number
from rlprune.data import Splits
from rlprune.data.augment import Augment
from rlprune.errors import ConfigError
from rlprune.layers import FilterCoupling, LayerInfo
from rlprune.masks import (
    Calibration,
    GapSchedule,
    GumbelTopKMask,
    criterion_names,
    get_criterion,
    kept_filters,
    log10_mask_diversity,
    sad,
)
from rlprune.patterns import SparsityPattern, channel_multiples, get_pattern, pattern_names
from rlprune.policy import Choice, Pattern, Policy
from rlprune.reconstruct import Reconstruction, reconstruct
from rlprune.training import Distillation, TrainSettings, train

LEARNED_PATTERNS = {"weight": Pattern.KOFN_WEIGHT, "kernel": Pattern.KOFN_KERNEL, "filter": Pattern.FILTER}
"""The pattern a learned mask of each granularity keeps (``finetune.granularity``)."""


def mask_families() -> list[str]:
    """What ``finetune.mask`` may name: ``policy``, ``learned``, or a shape-keeping sparse
    pattern (by its name or an alias, such as ``transposable`` for ``nm_transposable``)."""
    recastable = [name for name in pattern_names() if _recastable(get_pattern(name))]
    return ["policy", *recastable, "learned"]


def _recastable(pattern: SparsityPattern) -> bool:
    return pattern.sparse and pattern.keeps_shape


@dataclass(frozen=True)
class FinetuneSettings:
    """How the chosen policy is applied and trained.

    Attributes:
        train: optimiser settings (epochs, lr, batch size, weight decay).
        mask: ``policy`` keeps the searched masks; a pattern (:func:`mask_families`: ``nm``,
            ``nm_transposable``, ``kofn_weight``, ``unstructured``, ...) or ``learned``
            re-expresses each layer's density in that family. An alias is stored as the
            pattern's canonical name.
        nm: ``(keep N, group M)`` for the N:M patterns.
        granularity: ``weight``, ``kernel`` or ``filter``, for ``learned`` masks.
        criterion: a registered :class:`~rlprune.masks.Criterion` (``magnitude``, ``taylor``,
            ``random``, ``wanda``; :func:`~rlprune.masks.criterion_names`): what the first masks
            keep (refreshes and GaP re-prune by the magnitude of the current dense weights, as
            SR-STE does).
        srste_decay: ``None`` for plain masked training; a number trains with SR-STE.
        refresh_steps: recompute fixed masks from the dense weights every so many steps (0: never).
        entropy_weight: weight of the learned masks' entropy regulariser.
        gap_partitions: scheduled grow-and-prune over this many partitions (0: off).
        gap_epochs_per_step: epochs a partition stays grown.
        channel_multiple: a recast that removes filters keeps a multiple of this many (the
            hardware's ``channel_multiple``, as the search does).
        reconstruct: before training, re-fit each compressed layer's kept weights, and those of
            a layer that loses inputs to pruned filters, to the dense network's output on
            calibration inputs (:func:`rlprune.reconstruct.reconstruct`).
        distill_weight: the share of the loss that is the KL divergence from the dense
            network's outputs (:class:`~rlprune.training.Distillation`), in [0, 1]; 0: none.
        distill_temperature: the temperature both outputs are softened by.
    """

    train: TrainSettings = field(default_factory=TrainSettings)
    mask: str = "policy"
    nm: tuple[int, int] = (2, 4)
    granularity: str = "weight"
    criterion: str = "magnitude"
    srste_decay: float | None = None
    refresh_steps: int = 0
    entropy_weight: float = 5e-5
    gap_partitions: int = 0
    gap_epochs_per_step: int = 1
    channel_multiple: int = 1
    reconstruct: bool = False
    distill_weight: float = 0.0
    distill_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.mask not in ("policy", "learned"):
            try:
                pattern = get_pattern(self.mask)
            except ConfigError:
                pattern = None
            if pattern is None or not _recastable(pattern):
                raise ConfigError(f"finetune.mask={self.mask!r} is unknown; valid: {mask_families()}")
            object.__setattr__(self, "mask", pattern.name)
        keep, group = self.nm
        if not 0 < keep < group:
            raise ConfigError(f"finetune.nm: N:M needs 0 < N < M, got keep={keep}, group={group}")
        if self.granularity not in LEARNED_PATTERNS:
            raise ConfigError(f"finetune.granularity={self.granularity!r}; valid: {list(LEARNED_PATTERNS)}")
        if self.criterion not in criterion_names():
            raise ConfigError(f"finetune.criterion={self.criterion!r}; valid: {criterion_names()}")
        if self.refresh_steps < 0 or self.gap_partitions < 0 or self.train.epochs < 0:
            raise ConfigError("finetune.epochs, refresh_steps and gap.partitions must be >= 0")
        if not isinstance(self.reconstruct, bool):
            raise ConfigError(f"finetune.reconstruct must be true or false, got {self.reconstruct!r}")
        if not (is_number(self.distill_weight) and 0 <= self.distill_weight <= 1):
            raise ConfigError(f"finetune.distill.weight must lie in [0, 1], got {self.distill_weight!r}")
        if not (is_number(self.distill_temperature) and self.distill_temperature > 0):
            raise ConfigError(f"finetune.distill.temperature must be > 0, got {self.distill_temperature!r}")
        if self.channel_multiple < 1:
            raise ConfigError(f"hardware.channel_multiple must be >= 1, got {self.channel_multiple}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], channel_multiple: int = 1) -> FinetuneSettings:
        """Settings from the ``finetune`` config node, on hardware that keeps filters in
        multiples of ``channel_multiple``."""
        return cls(
            train=TrainSettings(
                epochs=cfg["epochs"],
                lr=cfg["lr"],
                batch_size=cfg["batch_size"],
                weight_decay=cfg["weight_decay"],
            ),
            mask=cfg["mask"],
            nm=(cfg["nm"]["keep"], cfg["nm"]["group"]),
            granularity=cfg["granularity"],
            criterion=cfg["criterion"],
            srste_decay=cfg["srste"]["decay"],
            refresh_steps=cfg["srste"]["refresh_steps"],
            entropy_weight=cfg["learned"]["entropy_weight"],
            gap_partitions=cfg["gap"]["partitions"],
            gap_epochs_per_step=cfg["gap"]["epochs_per_step"],
            channel_multiple=channel_multiple,
            reconstruct=cfg["reconstruct"],
            distill_weight=cfg["distill"]["weight"],
            distill_temperature=cfg["distill"]["temperature"],
        )


def _recast(layer: LayerInfo, choice: Choice, settings: FinetuneSettings) -> Choice | str:
    """``choice``'s density and bits in the finetune's mask family, or why the layer keeps its own."""
    family = LEARNED_PATTERNS[settings.granularity] if settings.mask == "learned" else settings.mask
    pattern = get_pattern(family)
    recast = pattern.recast(layer, choice.density, settings.nm)
    if isinstance(recast, str):
        return recast
    keep, group = recast
    if pattern.shrinks_outputs and settings.channel_multiple > 1:
        keeps, reason = channel_multiples([keep], group, settings.channel_multiple)
        if reason:
            return reason
        keep = keeps[0]
    return Choice(pattern.name, keep, group, w_bits=choice.w_bits, a_bits=choice.a_bits)


def finetune_policy(
    policy: Policy,
    layers: Sequence[LayerInfo],
    settings: FinetuneSettings,
    couplings: Mapping[str, FilterCoupling] | None = None,
) -> tuple[Policy, dict[str, str]]:
    """The policy the finetune applies, and the layers that keep the searched choice (with why).

    Dense layers stay dense; with ``mask=policy`` nothing changes. Learned filter masks go only
    where ``couplings`` (:func:`rlprune.layers.filter_couplings`, needed for them) allow
    pruning a layer's filters on their own: never the network's outputs (its class scores),
    nor convs tied by a residual add.

    Raises:
        ValueError: for learned filter masks without ``couplings``.
    """
    if settings.mask == "policy":
        return policy, {}
    filters = settings.mask == "learned" and settings.granularity == "filter"
    if filters and couplings is None:
        raise ValueError("learned filter masks need the layers' couplings (rlprune.layers.filter_couplings)")
    by_name = {layer.name: layer for layer in layers}
    applied, kept = {}, {}
    for name, choice in policy:
        blocked = filters and (couplings[name].blocked if name in couplings else "no coupling known")
        if blocked and choice.spec.sparse:
            kept[name] = f"filters: {blocked}"
            applied[name] = choice
            continue
        recast = _recast(by_name[name], choice, settings) if choice.spec.sparse else choice
        if isinstance(recast, str):
            kept[name] = recast
            recast = choice
        applied[name] = recast
    return Policy.of(applied), kept


@dataclass
class FinetuneResult:
    """The finetuned model, the policy it applies, and per-layer mask metrics."""

    model: nn.Module
    policy: Policy
    kept: dict[str, str]
    metrics: dict[str, dict[str, float]]


class _MaskTrainer:
    """Mask schedules during training: SR-STE refresh, GaP grow/prune, learned-mask annealing,
    and fixed masks following the filters that feed them (:meth:`follow_filters`)."""

    def __init__(
        self,
        model: nn.Module,
        policy: Policy,
        settings: FinetuneSettings,
        steps: int,
        pad: bool,
        couplings: Mapping[str, FilterCoupling] | None,
        masks: Mapping[str, torch.Tensor],
    ) -> None:
        self.model, self.settings, self.steps, self.pad = model, settings, max(1, steps), pad
        self.couplings = couplings
        self.choices = dict(policy.choices)
        self.ties = tied_filters(policy, couplings)
        self.sads: dict[str, list[float]] = {name: [] for name in self.choices}
        self.grown: dict[str, torch.Tensor] = {}  # grown layer -> its mask before growing
        self.learned_filters = [n for n, c in policy if prunes_filters(c) and not self._fixed(n)]
        self.feeders = {  # the fixed masks made on the inputs that filter choices leave
            name: fed
            for name, fed in filter_feeders(policy, feeding_layers(couplings)).items()
            if self._fixed(name)
        }
        self.made_on = {name: {p: kept_filters(masks[p]) for p in fed} for name, fed in self.feeders.items()}
        names = [n for n, c in policy if c.spec.sparse and self._fixed(n)]  # learned masks move on their own
        self.gap = (
            GapSchedule(names, min(settings.gap_partitions, len(names)), settings.gap_epochs_per_step)
            if settings.gap_partitions and names
            else None
        )

    def _fixed(self, name: str) -> bool:
        return not isinstance(weight_parametrization(self.model.get_submodule(name)), LearnedMaskedWeight)

    def reprune(self, name: str, before: torch.Tensor | None = None) -> set[str]:
        """Recompute ``name``'s fixed mask by magnitude of its current dense weight, and those of
        the layers tied to it (they keep the same filters); return the layers updated.

        Records each one's SAD against the mask it had (for ``name``: ``before``, by default the
        mask in use). A tied layer that GaP grew dense keeps growing until its own turn.
        """
        names = self.ties.get(name, (name,))
        standing = {  # the masks in use decide which inputs upstream filters leave
            n: weight_parametrization(self.model.get_submodule(n)).mask
            for n in self.choices
            if n not in names and n not in self.grown
        }
        policy = Policy(tuple(self.choices.items()))
        fresh = policy_masks(self.model, policy, self.pad, self.couplings, known=standing)
        updated = {name} | {n for n in names if n not in self.grown}
        for n in updated:
            layer = self.model.get_submodule(n)
            old = before if n == name and before is not None else weight_parametrization(layer).mask
            self.sads[n].append(sad(old, fresh[n]))
            set_mask(layer, fresh[n], prunes_filters(self.choices[n]))
            if n in self.feeders:
                self.made_on[n] = {p: self._kept(p) for p in self.feeders[n]}
        return updated

    def _mask(self, name: str) -> torch.Tensor:
        return weight_parametrization(self.model.get_submodule(name)).mask

    def _kept(self, name: str) -> torch.Tensor:
        return kept_filters(self._mask(name))

    def follow_filters(self) -> None:
        """Silence the filters learned masks now drop, and re-prune each fixed mask whose
        feeding filters moved since it was made.

        Such a mask is made on the inputs the filters upstream leave
        (:func:`~rlprune.compress.policy_masks`). Learned filter masks pick other filters as they
        train, and GaP may prune a grown layer back to other filters; the N:M runs downstream
        then no longer line up with the layer the export makes. While GaP grows a layer or a
        filter layer feeding it, the layer waits for the pruning back.
        """
        for name in self.learned_filters:
            silence_pruned_filters(self.model.get_submodule(name), self._mask(name))
        for name, fed in self.feeders.items():
            if self.grown.keys() & {name, *fed}:
                continue
            if any(not torch.equal(self._kept(p), self.made_on[name][p]) for p in fed):
                self.reprune(name)

    def on_epoch(self, epoch: int) -> None:
        """GaP: grow this step's partition, prune back the one grown before; the last step prunes
        all. Then the masks whose feeding filters moved follow them (:meth:`follow_filters`)."""
        if self.gap is not None:
            self._grow_and_prune(epoch)
        self.follow_filters()

    def _grow_and_prune(self, epoch: int) -> None:
        last_step = epoch >= self.settings.train.epochs - self.settings.gap_epochs_per_step
        grown = set() if last_step else self.gap.dense_layers(epoch)
        for name in set(self.grown) - grown:
            self.reprune(name, before=self.grown.pop(name))
        for name in grown - set(self.grown):
            layer = self.model.get_submodule(name)
            self.grown[name] = weight_parametrization(layer).mask
            set_mask(layer, torch.ones_like(self.grown[name]), prunes_filters(self.choices[name]))

    def on_step(self, step: int) -> None:
        """SR-STE mask refresh and learned-mask temperature annealing."""
        for module in self.model.modules():
            if isinstance(module, GumbelTopKMask):
                module.anneal(step / self.steps)
        every = self.settings.refresh_steps
        if every and step and step % every == 0:
            done: set[str] = set()
            for name in self.choices:
                if (
                    name not in done
                    and name not in self.grown
                    and self._fixed(name)
                    and self.choices[name].spec.sparse
                ):
                    done |= self.reprune(name)

    def entropy(self) -> torch.Tensor:
        """The learned masks' entropy regulariser."""
        terms = [m.entropy() for m in self.model.modules() if isinstance(m, GumbelTopKMask)]
        return self.settings.entropy_weight * torch.stack(terms).sum() if terms else torch.zeros(())


def finetune(
    dense: nn.Module,
    policy: Policy,
    layers: Sequence[LayerInfo],
    splits: Splits,
    settings: FinetuneSettings,
    seed: int,
    pad: bool = True,
    couplings: Mapping[str, FilterCoupling] | None = None,
    augment: Augment | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> FinetuneResult:
    """Apply ``policy`` (recast into ``settings.mask``) to a copy of ``dense`` and train it back.

    ``augment`` (``data.augment``) draws random flips and crops of every training batch. The
    batch norms are re-estimated on the training split before training and after it.

    ``couplings`` name the batch norms that a pruned filter silences (:func:`compress.attach`)
    and which layers' filters a learned filter mask may prune (:func:`finetune_policy`).
    ``progress`` is told each step's loss (:func:`rlprune.training.train`). With
    ``settings.distill_weight``, ``dense`` is the teacher the training distills from.
    """
    applied, kept = finetune_policy(policy, layers, settings, couplings)
    names = [name for name, _ in applied]
    generator = torch.Generator().manual_seed(seed)
    data = Calibration(splits.train_x, splits.train_y, generator)
    scores = get_criterion(settings.criterion).scores(dense, names, data)
    masks = policy_masks(dense, applied, pad, couplings, scores)
    model = compress(dense, applied, masks=masks, pad=pad, couplings=couplings)
    for name, choice in applied:
        layer = model.get_submodule(name)
        learned = settings.mask == "learned" and name not in kept  # a kept choice keeps its fixed mask
        if learned and choice.pattern is LEARNED_PATTERNS[settings.granularity] and choice.density < 1:
            sampler = GumbelTopKMask(
                dense_weight(layer).shape,
                choice.keep,
                settings.granularity,
                weight=dense_weight(layer),
                name=name,
            )
            use_learned_mask(layer, sampler)
        elif settings.srste_decay is not None:
            weight_parametrization(layer).decay = settings.srste_decay
    # the masked network's own batch-norm statistics first: activation ranges taken under the
    # dense ones misfit it, and a short finetune does not move them back
    recalibrate_batch_norms(model, splits.train_x, settings.train.batch_size)
    calibrate_activations(model, splits.train_x)
    fits = {}
    if settings.reconstruct:
        calls = {layer.name: layer.calls for layer in layers}
        removed = removed_inputs(applied, masks, couplings)
        to_fit = [layer.name for layer in layers if layer.name in masks or layer.name in removed]
        fits = reconstruct(model, dense, to_fit, [x for x, _ in data.batches()], calls, removed)
        recalibrate_batch_norms(model, splits.train_x, settings.train.batch_size)
        calibrate_activations(model, splits.train_x)
    steps = settings.train.epochs * math.ceil(len(splits.train_x) / settings.train.batch_size)
    trainer = _MaskTrainer(model, applied, settings, steps, pad, couplings, masks)
    distill = (
        Distillation(dense, settings.distill_weight, settings.distill_temperature)
        if settings.distill_weight > 0
        else None
    )
    if settings.train.epochs > 0:
        train(
            model,
            splits.train_x,
            splits.train_y,
            settings.train,
            seed,
            extra_loss=trainer.entropy,
            on_epoch=trainer.on_epoch,
            on_step=trainer.on_step,
            augment=augment if augment is not None and augment.active else None,
            progress=progress,
            distill=distill,
        )
    trainer.follow_filters()
    if settings.train.epochs > 0:
        # the running statistics average the last few steps, taken under older weights and masks
        # (GaP prunes its last partition back an epoch before the end)
        recalibrate_batch_norms(model, splits.train_x, settings.train.batch_size)
    return FinetuneResult(model, applied, kept, _metrics(model, applied, trainer, fits))


def _metrics(
    model: nn.Module, policy: Policy, trainer: _MaskTrainer, fits: Mapping[str, Reconstruction]
) -> dict[str, dict[str, float]]:
    metrics = {}
    for name, choice in policy:
        layer = model.get_submodule(name)
        row: dict[str, float] = {
            "log10_mask_diversity": log10_mask_diversity(choice, dense_weight(layer).shape, name=name)
        }
        parametrization = weight_parametrization(layer)
        if isinstance(parametrization, LearnedMaskedWeight):
            row["confidence"] = parametrization.sampler.confidence()
            row["diversity"] = parametrization.sampler.diversity()
        if trainer.sads[name]:
            row["sad"] = trainer.sads[name][-1]
        if name in fits:
            row["output_error_compressed"] = fits[name].compressed
            row["output_error_fitted"] = fits[name].fitted
            if fits[name].damping is not None:
                row["fit_ridge"] = fits[name].damping
        metrics[name] = row
    return metrics
