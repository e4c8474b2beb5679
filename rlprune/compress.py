"""Apply a policy to a network: masks and fake quantizers that keep every shape.

Each searched layer gets a weight parametrization ``w -> q(mask ⊙ w)`` (so the mask is
re-applied on every forward pass and after every optimizer step the dense weight underneath
stays intact) and an input fake-quantizer run as a forward pre-hook. One attached model can be
re-targeted to another policy cheaply with :func:`set_choice`; that is how the search
evaluates thousands of policies without copying the network.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from rlprune.errors import ConfigError
from rlprune.layers import FilterCoupling, is_depthwise, pruning_groups
from rlprune.masks import (
    GumbelTopKMask,
    compute_mask,
    kept_filters,
    magnitude,
    pruned_filters,
    srste,
    tied_filter_masks,
)
from rlprune.policy import FLOAT_BITS, Choice, Pattern, Policy
from rlprune.quant import ActivationQuantizer, fake_quantize_weight


class MaskedQuantizedWeight(nn.Module):
    """Weight parametrization ``w -> fake_quantize(w ⊙ mask, bits)``.

    The mask is a boolean buffer with the weight's shape. With ``decay=None`` gradients reach
    the kept weights only (plain masked training); with a number, the backward pass is SR-STE's
    ``g + decay·(1 − mask)⊙w`` on every weight, so pruned weights can regrow when the mask is
    recomputed.
    """

    def __init__(self, mask: torch.Tensor, bits: int = FLOAT_BITS, decay: float | None = None) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.bits = bits
        self.decay = decay

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        masked = weight * self.mask if self.decay is None else srste(weight, self.mask, self.decay)
        return fake_quantize_weight(masked, self.bits)


class LearnedMaskedWeight(nn.Module):
    """Weight parametrization ``w -> fake_quantize(w ⊙ m, bits)`` with ``m`` a trainable Gumbel top-k mask."""

    def __init__(self, sampler: GumbelTopKMask, bits: int = FLOAT_BITS) -> None:
        super().__init__()
        self.sampler = sampler
        self.bits = bits

    @property
    def mask(self) -> torch.Tensor:
        """The current deterministic mask (top-k of the logits)."""
        return self.sampler.hard_mask()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize_weight(weight * self.sampler(), self.bits)


class KeptFilters(nn.Module):
    """Which output channels of a layer its filter choice keeps (all, for other patterns)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("kept", torch.ones(channels, dtype=torch.bool))


class SilencePruned(nn.Module):
    """Parametrization ``t -> t ⊙ kept`` of a per-channel bias, or a batch norm's scale and shift.

    A filter whose weights are masked still emits its bias, and the batch norm after it its
    shift: a constant channel the next layer keeps reading. Silencing both makes a pruned filter
    output exactly zero, so the masked network computes what the exported one does.
    """

    def __init__(self, filters: KeptFilters, offset: int = 0) -> None:
        super().__init__()
        self.filters = filters  # shared with the layer: set_choice updates one buffer
        self.offset = offset  # where the filters sit in a wider tensor (a norm after a concatenation)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        kept = self.filters.kept.to(tensor.dtype)
        after = len(tensor) - self.offset - len(kept)
        return tensor * nn.functional.pad(kept, (self.offset, after), value=1.0)


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    # A plain function (not a closure) so deep copies of the model keep working hooks.
    return (module.input_quantizer(args[0]), *args[1:])


def attach(model: nn.Module, names: list[str], couplings: Mapping[str, FilterCoupling] | None = None) -> None:
    """Give each named layer an all-ones mask, float weights and a float input quantizer.

    A layer's bias, the batch norms its ``couplings`` entry names and its depthwise followers'
    biases are silenced on the channels whose filters a filter choice prunes.
    """
    for name in names:
        layer = model.get_submodule(name)
        if parametrize.is_parametrized(layer, "weight"):
            continue
        device = layer.weight.device  # the new masks and ranges live beside the weights
        mask = torch.ones_like(layer.weight, dtype=torch.bool)
        parametrize.register_parametrization(layer, "weight", MaskedQuantizedWeight(mask))
        layer.kept_filters = KeptFilters(layer.weight.shape[0]).to(device)
        coupling = couplings.get(name, FilterCoupling()) if couplings else FilterCoupling()
        silenced = [
            (layer, "bias", 0),
            *((model.get_submodule(n), t, at) for n, at in coupling.norms for t in ("weight", "bias")),
            *((model.get_submodule(n), "bias", 0) for n in coupling.followers),  # their inputs are silent
        ]
        for module, tensor, offset in silenced:
            if getattr(module, tensor, None) is not None:
                silence = SilencePruned(layer.kept_filters, offset)
                parametrize.register_parametrization(module, tensor, silence)
        layer.input_quantizer = ActivationQuantizer().to(device)
        layer.register_forward_pre_hook(_quantize_input)
        # new modules start in training mode: in an eval-mode network a training input quantizer
        # would record the range of the first pass and keep it for every later policy
        for module in {layer, *(module for module, _, _ in silenced)}:
            module.train(module.training)


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's unmasked, unquantized weight."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def set_choice(layer: nn.Module, choice: Choice, mask: torch.Tensor) -> None:
    """Point an attached layer at ``mask`` and the bit-widths of ``choice``."""
    set_mask(layer, mask, choice.pattern is Pattern.FILTER)
    weight_parametrization(layer).bits = choice.w_bits
    layer.input_quantizer.bits = choice.a_bits


def set_mask(layer: nn.Module, mask: torch.Tensor, filters: bool) -> None:
    """Point an attached layer's fixed mask at ``mask``; with ``filters`` (a filter choice), the
    filters whose rows it empties are also silenced (:class:`SilencePruned`)."""
    weight_parametrization(layer).mask = mask
    silence_pruned_filters(layer, mask if filters else None)


def silence_pruned_filters(layer: nn.Module, mask: torch.Tensor | None) -> None:
    """Silence the outputs of the filters whose rows ``mask`` empties (none for ``None``)."""
    kept = layer.kept_filters.kept
    layer.kept_filters.kept = torch.ones_like(kept) if mask is None else kept_filters(mask)


def weight_parametrization(layer: nn.Module) -> MaskedQuantizedWeight | LearnedMaskedWeight:
    """The mask-and-quantize parametrization of an attached layer."""
    return layer.parametrizations.weight[0]


def use_learned_mask(layer: nn.Module, sampler: GumbelTopKMask) -> None:
    """Swap an attached layer's fixed mask for a trainable one, keeping its bit-width."""
    bits = weight_parametrization(layer).bits
    layer.parametrizations.weight[0] = LearnedMaskedWeight(sampler, bits)


def tied_filters(
    policy: Policy, couplings: Mapping[str, FilterCoupling] | None
) -> dict[str, tuple[str, ...]]:
    """For each filter choice of ``policy`` tied to others by a residual add, all of them, in policy order.

    Raises:
        ConfigError: when a layer tied to a filter choice is missing from the policy or takes
            another choice (the export would prune its channels all the same).
    """
    choices = dict(policy.choices)
    ties = {}
    for name, choice in policy:
        tied = couplings[name].tied if couplings and name in couplings else ()
        if choice.pattern is not Pattern.FILTER or not tied:
            continue
        differing = {n: choices.get(n) for n in tied if choices.get(n) != choice}
        if differing:
            raise ConfigError(
                f"layer '{name}' prunes filters ({choice.keep} of {choice.group}) but the layers tied to it "
                f"by a residual add take {differing}; tied layers take one filter choice"
            )
        ties[name] = tuple(n for n in choices if n == name or n in tied)
    return ties


def prunes_filters(choice: Choice) -> bool:
    """Whether ``choice`` removes output channels, and with them its consumers' inputs."""
    return choice.spec.pruned_outputs(choice.keep, choice.group) > 0


def removed_inputs(
    policy: Policy, masks: Mapping[str, torch.Tensor], couplings: Mapping[str, FilterCoupling] | None
) -> dict[str, list[int]]:
    """The input channels of each layer that the filter choices of ``policy`` remove, ascending.

    A filter is removed where its row of ``masks`` is empty; its consumers lose the channels it
    feeds (:attr:`~rlprune.layers.FilterCoupling.feeds`), its depthwise followers that channel.
    """
    removed: dict[str, set[int]] = {}
    pruning = [name for name, choice in policy if prunes_filters(choice)]
    for name, coupling in pruning_groups(pruning, couplings or {}):
        pruned = pruned_filters(masks[name])
        for consumer, channels in coupling.feeds:
            removed.setdefault(consumer, set()).update(c for f in pruned for c in channels[f])
        for follower in coupling.followers:
            removed.setdefault(follower, set()).update(pruned)
    return {name: sorted(channels) for name, channels in removed.items()}


def filter_feeders(policy: Policy, fed_by: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Each layer of ``policy`` whose mask is made on the inputs its filter choices leave (a
    sparse choice that keeps its own filters, :func:`mask_on_kept_inputs`), with those filter
    layers; ``fed_by`` is :func:`feeding_layers`."""
    choices = dict(policy.choices)
    feeders = {}
    for name, choice in policy:
        if choice.spec.sparse and not prunes_filters(choice):
            producers = tuple(p for p in fed_by.get(name, ()) if p in choices and prunes_filters(choices[p]))
            if producers:
                feeders[name] = producers
    return feeders


def feeding_layers(couplings: Mapping[str, FilterCoupling] | None) -> dict[str, tuple[str, ...]]:
    """For each layer, the layers whose filters feed its inputs (it consumes or follows them)."""
    fed: dict[str, list[str]] = {}
    for name, coupling in (couplings or {}).items():
        for consumer in [*(c for c, _ in coupling.feeds), *coupling.followers]:
            fed.setdefault(consumer, []).append(name)
    return {name: tuple(producers) for name, producers in fed.items()}


def mask_on_kept_inputs(
    layer: nn.Module,
    choice: Choice,
    removed: list[int],
    scores: torch.Tensor | None = None,
    pad: bool = False,
    name: str = "layer",
) -> torch.Tensor:
    """``choice``'s mask of ``layer`` taken over the input channels that upstream filter pruning
    leaves (``removed`` go), so it is the mask of the layer the export makes: an N:M run of the
    deployed weight is a run of this mask. The removed channels' weights are masked out.

    The choice keeps its density on the smaller weight (:meth:`~rlprune.patterns.SparsityPattern.fit`),
    as the latency models cost it. Where the smaller weight cannot take the pattern (a
    transposable tile cut short), the mask is taken over all inputs.
    """
    weight = dense_weight(layer)
    if not removed or not choice.spec.sparse:
        return compute_mask(weight, choice, scores=scores, pad=pad, name=name)
    axis = 0 if is_depthwise(layer) else 1  # a depthwise conv's channels are its rows
    kept = torch.ones(weight.shape[axis], dtype=torch.bool, device=weight.device)
    kept[removed] = False
    index = kept.nonzero().flatten()
    part = weight.index_select(axis, index)
    keep, group = choice.spec.fit(choice.keep, choice.group, part.shape, name=name)
    try:  # a run cut short by the removed channels is padded, as the export's would be
        small = compute_mask(
            part,
            replace(choice, keep=keep, group=group),
            scores=None if scores is None else scores.index_select(axis, index),
            pad=True,
            name=name,
        )
    except ConfigError:
        return compute_mask(weight, choice, scores=scores, pad=pad, name=name)
    return torch.zeros(weight.shape, dtype=torch.bool, device=weight.device).index_copy_(axis, index, small)


def policy_masks(
    model: nn.Module,
    policy: Policy,
    pad: bool,
    couplings: Mapping[str, FilterCoupling] | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
    known: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The mask of every layer of ``policy`` not in ``known``, from its dense weight in ``model``.

    Units are ranked by ``scores`` (elementwise, per layer) or by magnitude; layers whose
    filters are tied (``couplings``) keep the same filters (:func:`tied_filter_masks`). Filter
    masks come first: the other layers' masks are taken over the inputs those leave
    (:func:`mask_on_kept_inputs`). ``known`` masks (of other layers of ``policy``) stand as
    they are. ``pad``: N:M on a reduction length that is not a multiple of M pads (True) or refuses.
    """
    scores = scores or {}
    known = known or {}
    ties = tied_filters(policy, couplings)
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, choice in policy:
            if not prunes_filters(choice) or name in masks or name in known:
                continue
            weights = {n: dense_weight(model.get_submodule(n)) for n in ties.get(name, (name,))}
            if name in ties:
                tied = tied_filter_masks(
                    {n: scores[n] if n in scores else magnitude(w) for n, w in weights.items()},
                    choice.keep,
                )
                masks |= {n: mask for n, mask in tied.items() if n not in known}
            else:
                masks[name] = compute_mask(weights[name], choice, scores=scores.get(name), pad=pad, name=name)
        removed = removed_inputs(policy, {**known, **masks}, couplings)
        for name, choice in policy:
            if name not in masks and name not in known:
                layer, cut = model.get_submodule(name), removed.get(name, [])
                masks[name] = mask_on_kept_inputs(layer, choice, cut, scores.get(name), pad, name)
    return masks


def compress(
    model: nn.Module,
    policy: Policy,
    masks: Mapping[str, torch.Tensor] | None = None,
    pad: bool = True,
    couplings: Mapping[str, FilterCoupling] | None = None,
) -> nn.Module:
    """A copy of ``model`` with the masks and quantizers of ``policy`` attached.

    Args:
        model: the dense network (left unchanged).
        policy: choices by layer name.
        masks: precomputed masks by layer name; otherwise :func:`policy_masks` by magnitude.
        pad: N:M on a reduction length that is not a multiple of M pads (True) or refuses.
        couplings: the layers' filter couplings: the batch norms a pruned filter silences, and
            the layers tied by residual adds, which keep the same filters.
    """
    compressed = copy.deepcopy(model)
    attach(compressed, [name for name, _ in policy], couplings)
    chosen = policy_masks(model, policy, pad, couplings) if masks is None else masks
    for name, choice in policy:
        set_choice(compressed.get_submodule(name), choice, chosen[name])
    return compressed


@torch.no_grad()
def calibrate_activations(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> None:
    """Record the input range of every activation quantizer from a pass over ``x``."""
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    for q in quantizers:
        q.calibrated.fill_(False)
        q.train()  # observe ranges while the rest of the model stays in eval mode
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size])
    for q in quantizers:
        q.eval()


@torch.no_grad()
def recalibrate_batch_norms(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Re-estimate every batch norm's running statistics from a pass over ``x``.

    Masking and quantization shift each layer's output distribution, so statistics of the dense
    network under-report a compressed network's accuracy. The statistics are replaced, not
    blended (a cumulative average over the batches); the rest of the model stays in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        # the norm alone, not its filter masks (bn.train() recurses, a policy's score pays per call)
        bn.training = True
    try:
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    finally:
        for bn, momentum in zip(norms, momenta, strict=True):
            bn.momentum = momentum
            bn.training = False


def without_input_quantizers(model: nn.Module) -> nn.Module:
    """``model`` without its layers' float input quantizers, in place: a deployment quantizes for real."""
    for module in model.modules():
        if isinstance(getattr(module, "input_quantizer", None), ActivationQuantizer):
            for key, hook in list(module._forward_pre_hooks.items()):
                if hook is _quantize_input:
                    del module._forward_pre_hooks[key]
            del module.input_quantizer
    return model


def bake(model: nn.Module) -> nn.Module:
    """Fold masks and weight quantization into plain weights, in place, and return the model.

    Activation quantizers stay, so the baked model computes what the compressed one did.
    """
    for module in model.modules():
        for name in ("weight", "bias"):
            if parametrize.is_parametrized(module, name):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model
