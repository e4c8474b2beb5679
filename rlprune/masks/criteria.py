"""Importance criteria: elementwise scores that decide which weights a mask keeps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from rlprune.errors import ConfigError
from rlprune.training import eval_mode

CRITERIA = ("magnitude", "taylor", "random", "wanda")


def importance(
    weight: torch.Tensor,
    criterion: str,
    grad: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    input_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Elementwise importance of ``weight``, with the weight's shape (larger is kept first).

    Args:
        weight: the layer's dense weight.
        criterion: ``magnitude`` ``|w|``; ``taylor`` ``|w * grad|`` (first-order Taylor, Molchanov
            et al.), where ``grad`` is the loss gradient, accumulated by the caller over a few
            batches; ``random`` uniform noise, a control, drawn from ``generator``; ``wanda``
            ``|w_ij| * ||x_j||_2`` (Sun et al. 2024), where ``input_norms`` holds the norm of each
            input the weight multiplies, measured on calibration batches (:func:`input_norms`).
        grad: the gradient for ``taylor``; ignored otherwise.
        generator: the random source for ``random``; ignored otherwise.
        input_norms: for ``wanda``, broadcastable to the weight: ``(in,)`` for a Linear,
            ``(1, in/g, *kernel)`` or ``(out, in/g, *kernel)`` for a conv; ignored otherwise.
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
    if criterion == "wanda":
        if input_norms is None:
            raise ConfigError("criterion 'wanda' needs the norms of the layer's inputs (input_norms=...)")
        return weight.abs() * input_norms.to(weight).expand_as(weight)
    raise ConfigError(f"unknown importance criterion {criterion!r}; valid: {list(CRITERIA)}")


def _input_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
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
        raise ConfigError(f"criterion 'wanda' needs numeric conv padding, not padding={padding!r}")
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


@torch.no_grad()
def input_norms(
    model: nn.Module, names: Sequence[str], batches: Sequence[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Wanda's ``||x_j||_2`` for each named Linear or conv layer of ``model`` over ``batches``.

    Forward hooks record each layer's input; a Linear's input channel ``j`` is normed over every
    row (samples and tokens), a conv's over every output position of the unfolded input, so each
    weight ``w[o, c, k]`` is paired with the norm of exactly the inputs it multiplies. The model
    runs in eval mode and is left unchanged.
    """
    squares: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:

        def record(layer: nn.Module, args: tuple, name: str = name) -> None:
            columns = _input_columns(layer, args[0].float())
            total = columns.square().sum(0)
            squares[name] = squares[name] + total if name in squares else total

        hooks.append(model.get_submodule(name).register_forward_pre_hook(record))
    try:
        with eval_mode(model):
            for batch in batches:
                model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    missing = [n for n in names if n not in squares]
    if missing:
        raise ConfigError(f"criterion 'wanda': layers {missing} saw no input on the calibration batches")
    return {name: _as_weight(model.get_submodule(name), squares[name]) for name in names}
