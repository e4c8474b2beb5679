"""Plain convolutional networks for the embedded datasets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MNIST1DCNN(nn.Module):
    """A 1-D CNN for MNIST-1D: four convolutions (two with stride 2) and two linear layers.

    With the default widths it reaches about 94% test accuracy on the 4000/1000 split, the
    figure the MNIST-1D paper reports for its CNN. No batch norm, so a masked network is
    evaluated exactly, without stale statistics.

    Args:
        in_channels: input channels (1 for MNIST-1D).
        num_classes: output classes.
        channels: widths of the four convolutions.
        hidden: width of the hidden linear layer.
        length: input sequence length (40 for MNIST-1D).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 64, 128),
        hidden: int = 128,
        length: int = 40,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        self.conv1 = nn.Conv1d(in_channels, c1, kernel_size=5, padding=2)
        self.conv2 = nn.Conv1d(c1, c2, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(c2, c3, kernel_size=3, padding=1)
        self.conv4 = nn.Conv1d(c3, c4, kernel_size=3, stride=2, padding=1)
        out_length = (length + 1) // 2
        out_length = (out_length + 1) // 2
        self.fc1 = nn.Linear(c4 * out_length, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = torch.relu(self.conv4(x))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class DigitsCNN(nn.Module):
    """A 2-D CNN for scikit-learn's 8x8 digits: three 3x3 convolutions, two poolings, two linears.

    Args:
        in_channels: input channels (1 for digits).
        num_classes: output classes.
        channels: widths of the three convolutions.
        hidden: width of the hidden linear layer.
        size: input height and width (8 for digits).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 64),
        hidden: int = 64,
        size: int = 8,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c3 * (size // 4) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = self.pool(torch.relu(self.conv3(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)
