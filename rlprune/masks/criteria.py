"""Importance criteria: what the first masks of a finetune keep, one object each.

A criterion scores every weight of the named layers of a network (larger is kept first);
``finetune.criterion`` names one. :func:`get_criterion` finds one by name and
:func:`register_criterion` adds one (a :class:`Criterion` subclass), as patterns are found
(:mod:`rlprune.patterns`). docs/algorithms.md, "Importance and selection", describes the
built-ins.
"""

from __future__ import annotations

import abc
import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from rlprune.errors import ConfigError
from rlprune.training import eval_mode, flat

CALIBRATION_SAMPLES = 512  # training samples a data-aware criterion reads
CALIBRATION_BATCH = 128


@dataclass(frozen=True)
class Calibration:
    """What a criterion may read: training inputs ``x`` and labels ``y`` (on the network's device)
    and a seeded random source (a CPU generator, so a seed draws the same on every device)."""

    x: torch.Tensor
    y: torch.Tensor
    generator: torch.Generator

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first :data:`CALIBRATION_SAMPLES` samples in batches of :data:`CALIBRATION_BATCH`."""
        x, y = self.x[:CALIBRATION_SAMPLES], self.y[:CALIBRATION_SAMPLES]
        return list(zip(x.split(CALIBRATION_BATCH), y.split(CALIBRATION_BATCH), strict=True))


class Criterion(abc.ABC):
    """One importance criterion; subclass it, name it and :func:`register_criterion` the subclass."""

    name: ClassVar[str]

    @abc.abstractmethod
    def scores(self, model: nn.Module, names: Sequence[str], data: Calibration) -> dict[str, torch.Tensor]:
        """A score per weight of each named layer of ``model``, in the weight's shape and on its
        device. ``model`` is left as it was."""


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """``|w|``: the importance every mask falls back on (and every refresh and GaP re-prune uses)."""
    return weight.detach().abs()


def _weights(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    return {name: model.get_submodule(name).weight for name in names}


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Register a :class:`Criterion` subclass under its name; returns it (a class decorator).
    Registering the same class again does nothing.

    Raises:
        ConfigError: when the class is not a criterion, or its name is taken by another one.
    """
    if not (isinstance(cls, type) and issubclass(cls, Criterion)) or not isinstance(
        getattr(cls, "name", None), str
    ):
        raise ConfigError(f"register_criterion needs a Criterion subclass with a name, got {cls!r}")
    taken = _CRITERIA.get(cls.name)
    if taken is not None and type(taken) is not cls:
        raise ConfigError(
            f"criterion name {cls.name!r} is taken by {type(taken).__qualname__}; choose another"
        )
    _CRITERIA[cls.name] = cls()
    return cls


def get_criterion(name: str) -> Criterion:
    """The registered criterion called ``name``.

    Raises:
        ConfigError: for an unknown name, listing the valid ones.
    """
    if not isinstance(name, str) or name not in _CRITERIA:
        raise ConfigError(f"unknown importance criterion {name!r}; valid: {criterion_names()}")
    return _CRITERIA[name]


def criterion_names() -> list[str]:
    """Names of the registered criteria, built-ins first."""
    return list(_CRITERIA)


@register_criterion
class Magnitude(Criterion):
    """``|w|``: the trained weights' own size."""

    name = "magnitude"

    def scores(self, model: nn.Module, names: Sequence[str], data: Calibration) -> dict[str, torch.Tensor]:
        return {name: magnitude(weight) for name, weight in _weights(model, names).items()}


@register_criterion
class Taylor(Criterion):
    """``|w · ∂L/∂w|``, first-order Taylor (Molchanov et al.): the cross-entropy's gradient summed
    over the calibration batches, on a copy of the network in its own mode."""

    name = "taylor"

    def scores(self, model: nn.Module, names: Sequence[str], data: Calibration) -> dict[str, torch.Tensor]:
        probe = copy.deepcopy(model)
        probe.zero_grad(set_to_none=True)
        for x, y in data.batches():
            F.cross_entropy(*flat(probe(x), y)).backward()
        return {
            name: (weight * weight.grad).detach().abs() for name, weight in _weights(probe, names).items()
        }


@register_criterion
class Random(Criterion):
    """Uniform noise from the calibration's generator: the control every criterion should beat."""

    name = "random"

    def scores(self, model: nn.Module, names: Sequence[str], data: Calibration) -> dict[str, torch.Tensor]:
        return {
            name: torch.rand(weight.shape, generator=data.generator, dtype=weight.dtype).to(weight.device)
            for name, weight in _weights(model, names).items()
        }


@register_criterion
class Wanda(Criterion):
    """``|w_ij| · ||x_j||_2`` (Sun et al. 2024): each weight by the norm of the inputs it multiplies
    (:func:`input_norms`), measured on the calibration inputs."""

    name = "wanda"

    def scores(self, model: nn.Module, names: Sequence[str], data: Calibration) -> dict[str, torch.Tensor]:
        norms = input_norms(model, names, [x for x, _ in data.batches()])
        return {
            name: magnitude(weight) * norms[name].to(weight).expand_as(weight)
            for name, weight in _weights(model, names).items()
        }


def input_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs each weight of ``layer`` multiplies, one row per output position: ``(rows, in)``
    for a Linear, ``(rows, in * prod(kernel))`` for a conv (its input unfolded over the kernel window,
    padding included, in the weight's ``(in, *kernel)`` order)."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(layer, nn.Conv1d):  # a conv1d is a conv2d of height 1
        x, kernel = x.unsqueeze(2), (1, *layer.kernel_size)
        stride, padding, dilation = (1, *layer.stride), (0, *layer.padding), (1, *layer.dilation)
    else:
        kernel, stride, padding, dilation = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    if isinstance(padding, str):
        raise ConfigError(
            f"pairing a conv's inputs with its weights (criterion 'wanda', finetune.reconstruct) needs "
            f"numeric padding, not padding={padding!r}"
        )
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, in·k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _as_weight(layer: nn.Module, squares: torch.Tensor) -> torch.Tensor:
    """Summed squares per input column as norms broadcastable to ``layer``'s weight."""
    norms = squares.sqrt()
    if isinstance(layer, nn.Linear):
        return norms
    groups, out = layer.groups, layer.out_channels
    per_group = norms.reshape(groups, layer.in_channels // groups, *layer.kernel_size)
    return per_group.repeat_interleave(out // groups, dim=0)  # output o reads its group's inputs


class EndPass(Exception):
    """Raised by a :func:`read_inputs` reader to end the current batch's pass early."""


@torch.no_grad()
def read_inputs(
    model: nn.Module,
    names: Sequence[str],
    batches: Sequence[torch.Tensor],
    read: Callable[[str, nn.Module, torch.Tensor], None],
    new_batch: Callable[[], None] = lambda: None,
) -> None:
    """Pass ``batches`` through ``model`` in eval mode, calling ``read(name, layer, x)`` with each
    named layer's input ``x`` whenever the layer is called, before its own pre-hooks (an input
    quantizer). ``new_batch()`` is called before each batch; a reader may raise :class:`EndPass`
    to end that batch's pass. Each parametrized weight is made once per pass; the model is left
    unchanged.
    """
    handles = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda layer, args, name=name: read(name, layer, args[0]), prepend=True
        )
        for name in names
    ]
    try:
        with eval_mode(model), parametrize.cached():
            for batch in batches:
                new_batch()
                with contextlib.suppress(EndPass):
                    model(batch)
    finally:
        for handle in handles:
            handle.remove()


def input_norms(
    model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Wanda's ``||x_j||_2`` for each named Linear or conv layer of ``model`` over ``batches``.

    :func:`read_inputs` reads each layer's input; a Linear's input channel ``j`` is normed over
    every row (samples and tokens), a conv's over every output position of the unfolded input,
    so each weight ``w[o, c, k]`` is paired with the norm of exactly the inputs it multiplies.
    """
    squares: dict[str, torch.Tensor] = {}

    def record(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        total = input_columns(layer, x.float()).square().sum(0)
        squares[name] = squares[name] + total if name in squares else total

    read_inputs(model, names, batches, record)
    missing = [n for n in names if n not in squares]
    if missing:
        raise ConfigError(f"criterion 'wanda': layers {missing} saw no input on the calibration batches")
    return {name: _as_weight(model.get_submodule(name), squares[name]) for name in names}
