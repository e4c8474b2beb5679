"""The networks a calibration times beside the deployed one: copies whose prunable layers are
stubs returning their recorded outputs (the glue between the layers alone), stubs narrowed to
fewer channels (the glue that follows a layer's width), and a copy with half the filters."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from rlprune.layers import LayerInfo
from rlprune.policy import Choice, Pattern, Policy


class Stub(nn.Module):
    """Stands in for a layer: returns its recorded output at the cost of a module call."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, *args: Any) -> torch.Tensor:
        return self.output


def record_outputs(net: nn.Module, x: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The outputs of the named modules of ``net`` on ``x`` (those that exist and run)."""
    modules = dict(net.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: outputs.setdefault(name, out.detach())
        )
        for name in names
        if name in modules
    ]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def layer_outputs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of every prunable layer of ``net`` on ``x``, by name, in forward order."""
    from rlprune.layers import PRUNABLE_TYPES

    return record_outputs(net, x, [name for name, m in net.named_modules() if type(m) in PRUNABLE_TYPES])


def stubbed(net: nn.Module, outputs: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``net`` whose named layers return the given outputs."""
    copied = copy.deepcopy(net)
    for name, output in outputs.items():
        parent, _, child = name.rpartition(".")
        setattr(copied.get_submodule(parent) if parent else copied, child, Stub(output))
    return copied


def channel_dim(layer: nn.Module, output: torch.Tensor) -> int:
    """The dim of ``layer``'s ``output`` that holds its channels: 1 for a conv, the last for a
    Linear (a transformer's Linear maps ``(N, T, C)``: its tokens sit at dim 1)."""
    return output.dim() - 1 if isinstance(layer, nn.Linear) else 1


def output_channels(net: nn.Module, outputs: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The channels of each of ``outputs``, recorded from the layers of ``net`` by name."""
    return {name: out.shape[channel_dim(net.get_submodule(name), out)] for name, out in outputs.items()}


def narrow_channels(output: torch.Tensor, dim: int, kept: int) -> torch.Tensor:
    """``output`` with only its first ``kept`` channels along ``dim`` (NHWC stays NHWC)."""
    return output.narrow(dim, 0, kept).clone(memory_format=torch.preserve_format)


def narrowed_stubs(
    net: nn.Module, x: torch.Tensor, outputs: Mapping[str, torch.Tensor]
) -> dict[str, tuple[nn.Module, int]]:
    """Per layer, ``net`` stubbed (:func:`stubbed`) with that layer's output narrowed to a
    quarter of its channels (at least 2, which cannot broadcast into a residual add), and the
    channels kept; only where the copy still runs (a layer whose output meets another's in a
    residual add has none)."""
    narrowed = {}
    for name, out in outputs.items():
        dim = channel_dim(net.get_submodule(name), out)
        kept = max(2, out.shape[dim] // 4)
        if out.shape[dim] <= kept:
            continue
        copied = stubbed(net, {**outputs, name: narrow_channels(out, dim, kept)})
        try:  # quietly: a traced (FX) network prints the traceback of a failing call itself
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                copied(x)
            narrowed[name] = copied, kept
        except RuntimeError:  # the layer's outputs meet another's (a residual add): constant
            pass
    return narrowed


def half_width(net: nn.Module, x: torch.Tensor, layers: list[LayerInfo]) -> nn.Module | None:
    """``net`` exported with half the filters of each layer that can lose filters on its own
    (Torch-Pruning; never the classifier), for :func:`~rlprune.hardware.measured.calibration.scale_and_share`;
    None where none can."""
    from rlprune.export import export_filter_pruned
    from rlprune.layers import filter_couplings

    couplings = filter_couplings(net, x, layers[:-1])
    policy = Policy.of(
        {
            layer.name: Choice(Pattern.FILTER, layer.out_channels // 2, layer.out_channels)
            for layer in layers[:-1]
            if couplings[layer.name].blocked is None and layer.out_channels >= 2
        }
    )
    return export_filter_pruned(net, policy, x) if len(policy) else None
