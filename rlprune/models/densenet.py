"""A small DenseNet (Huang et al. 2017) with compressing transitions, for 1-D or 2-D inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rlprune.models.ops import ops_for


class DenseLayer(nn.Module):
    """Batch norm, ReLU and a 3x3 convolution whose ``growth`` channels are appended to the input.

    Args:
        dims: 1 for sequences, 2 for images.
        in_planes: input channels.
        growth: channels the layer adds.
    """

    def __init__(self, dims: int, in_planes: int, growth: int) -> None:
        super().__init__()
        ops = ops_for(dims, "DenseNet")
        conv, norm = ops.conv, ops.norm
        self.bn = norm(in_planes)
        self.conv = conv(in_planes, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(torch.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    """Batch norm, ReLU, a 1x1 convolution and a 2x average pool (rounding up) between dense blocks.

    Args:
        dims: 1 for sequences, 2 for images.
        in_planes: input channels.
        planes: output channels.
    """

    def __init__(self, dims: int, in_planes: int, planes: int) -> None:
        super().__init__()
        ops = ops_for(dims, "DenseNet")
        conv, norm, avg_pool = ops.conv, ops.norm, ops.avg_pool
        self.bn = norm(in_planes)
        self.conv = conv(in_planes, planes, 1, bias=False)
        self.pool = avg_pool(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(torch.relu(self.bn(x))))


class DenseNet(nn.Module):
    """DenseNet: a stem, dense blocks joined by transitions that halve the channels, pooling, a linear.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        dims: 1 for sequences (MNIST-1D), 2 for images (digits, CIFAR).
        growth: channels each dense layer adds.
        blocks: dense layers per block.
        stem: channels of the stem convolution.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        dims: int = 2,
        growth: int = 12,
        blocks: Sequence[int] = (3, 3),
        stem: int = 24,
    ) -> None:
        super().__init__()
        ops = ops_for(dims, "DenseNet")
        conv, norm, pool = ops.conv, ops.norm, ops.adaptive_pool
        self.stem = conv(in_channels, stem, 3, padding=1, bias=False)
        features: list[nn.Module] = []
        planes = stem
        for i, layers in enumerate(blocks):
            if i > 0:
                features.append(Transition(dims, planes, planes // 2))
                planes //= 2
            for _ in range(layers):
                features.append(DenseLayer(dims, planes, growth))
                planes += growth
        self.features = nn.Sequential(*features)
        self.bn = norm(planes)
        self.pool = pool(1)
        self.fc = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))
        x = torch.relu(self.bn(x))
        return self.fc(self.pool(x).flatten(1))
