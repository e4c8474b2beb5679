"""A VGG-style network with batch norm (Simonyan & Zisserman 2015), for 1-D or 2-D inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rlprune.models.ops import ops_for


class VGG(nn.Module):
    """VGG: stages of 3x3 convolutions with batch norm and ReLU, each closed by a 2x max pool.

    The pools round up, so a side of 1 stays 1 and any input size works (8x8 digits end at
    1x1, 32x32 at 4x4); an adaptive average pool and two linear layers follow.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        dims: 1 for sequences (MNIST-1D), 2 for images (digits, CIFAR).
        stages: the widths of the convolutions of each stage.
        hidden: width of the hidden linear layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        dims: int = 2,
        stages: Sequence[Sequence[int]] = ((32, 32), (64, 64), (128, 128)),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        ops = ops_for(dims, "VGG")
        conv, norm, max_pool, pool = ops.conv, ops.norm, ops.max_pool, ops.adaptive_pool
        features: list[nn.Module] = []
        planes = in_channels
        for stage in stages:
            for width in stage:
                features += [conv(planes, width, 3, padding=1, bias=False), norm(width), nn.ReLU()]
                planes = width
            features.append(max_pool(2, ceil_mode=True))
        self.features = nn.Sequential(*features)
        self.pool = pool(1)
        self.fc1 = nn.Linear(planes, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))
