"""A CIFAR-style ResNet-20 (He et al. 2016, section 4.2) for 1-D or 2-D inputs."""

from __future__ import annotations

import torch
from torch import nn

from rlprune.models.ops import ops_for


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity or 1x1-conv shortcut."""

    def __init__(self, dims: int, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        ops = ops_for(dims, "ResNet20")
        conv, norm = ops.conv, ops.norm
        self.conv1 = conv(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(conv(in_planes, planes, 1, stride=stride, bias=False), norm(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20: a stem, three stages of three basic blocks (widths w, 2w, 4w), pooling, a linear.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        width: channels of the first stage (16 in the paper).
        dims: 1 for sequences (MNIST-1D), 2 for images (digits, CIFAR).
        blocks: basic blocks per stage (3 gives ResNet-20).
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, width: int = 16, dims: int = 2, blocks: int = 3
    ) -> None:
        super().__init__()
        ops = ops_for(dims, "ResNet20")
        conv, norm, pool = ops.conv, ops.norm, ops.adaptive_pool
        self.stem = conv(in_channels, width, 3, padding=1, bias=False)
        self.bn = norm(width)
        stages, in_planes = [], width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            stage = [
                BasicBlock(dims, in_planes if b == 0 else planes, planes, stride if b == 0 else 1)
                for b in range(blocks)
            ]
            stages.append(nn.Sequential(*stage))
            in_planes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = pool(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.stages(x)
        return self.fc(self.pool(x).flatten(1))
