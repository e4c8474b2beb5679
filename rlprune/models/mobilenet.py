"""A MobileNetV2 (Sandler et al. 2018) sized for 32x32 inputs, for 1-D or 2-D inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rlprune.models.ops import ops_for


class InvertedResidual(nn.Module):
    """A 1x1 expansion, a 3x3 depthwise convolution and a 1x1 projection, each with batch norm.

    The input is added back when the block keeps its stride and channels.

    Args:
        dims: 1 for sequences, 2 for images.
        in_planes: input channels.
        planes: output channels.
        stride: stride of the depthwise convolution.
        expansion: hidden channels per input channel.
    """

    def __init__(self, dims: int, in_planes: int, planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        ops = ops_for(dims, "MobileNetV2")
        conv, norm = ops.conv, ops.norm
        hidden = in_planes * expansion
        self.expand = conv(in_planes, hidden, 1, bias=False)
        self.bn1 = norm(hidden)
        self.depthwise = conv(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = norm(hidden)
        self.project = conv(hidden, planes, 1, bias=False)
        self.bn3 = norm(planes)
        self.residual = stride == 1 and in_planes == planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu6(self.bn1(self.expand(x)))
        out = nn.functional.relu6(self.bn2(self.depthwise(out)))
        out = self.bn3(self.project(out))
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2: a stride-1 stem, stages of inverted residual blocks, a 1x1 head, pooling, a linear.

    With the defaults a 32x32 image ends at 4x4 (8x8 digits at 1x1, MNIST-1D's 40 at 5).

    Args:
        in_channels: input channels.
        num_classes: output classes.
        dims: 1 for sequences (MNIST-1D), 2 for images (digits, CIFAR).
        width: channels of the stem.
        stages: ``(channels, blocks, stride)`` of each stage; the stride applies to its first block.
        expansion: hidden channels per input channel inside a block (6 in the paper).
        head: channels of the 1x1 convolution before pooling.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        dims: int = 2,
        width: int = 16,
        stages: Sequence[Sequence[int]] = ((16, 1, 1), (24, 2, 2), (32, 2, 2), (64, 2, 2)),
        expansion: int = 4,
        head: int = 128,
    ) -> None:
        super().__init__()
        ops = ops_for(dims, "MobileNetV2")
        conv, norm, pool = ops.conv, ops.norm, ops.adaptive_pool
        self.stem = conv(in_channels, width, 3, padding=1, bias=False)
        self.bn = norm(width)
        blocks, in_planes = [], width
        for planes, repeats, stride in stages:
            for b in range(repeats):
                blocks.append(InvertedResidual(dims, in_planes, planes, stride if b == 0 else 1, expansion))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.head = conv(in_planes, head, 1, bias=False)
        self.bn_head = norm(head)
        self.pool = pool(1)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.bn(self.stem(x)))
        x = self.blocks(x)
        x = nn.functional.relu6(self.bn_head(self.head(x)))
        return self.fc(self.pool(x).flatten(1))
