"""The 1-D or 2-D flavour of each op, so every zoo model runs on sequences and images alike."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Ops:
    """The op classes of one input dimensionality."""

    conv: type[nn.Module]
    norm: type[nn.Module]
    max_pool: type[nn.Module]
    avg_pool: type[nn.Module]
    adaptive_pool: type[nn.Module]


_OPS = {
    1: Ops(nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d),
    2: Ops(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d),
}


def ops_for(dims: int, model: str) -> Ops:
    """The ops for ``dims`` (1: sequences such as MNIST-1D, 2: images).

    Raises:
        ValueError: for any other ``dims``, naming ``model``.
    """
    if dims not in _OPS:
        raise ValueError(f"{model} supports dims=1 or dims=2, got dims={dims}")
    return _OPS[dims]
