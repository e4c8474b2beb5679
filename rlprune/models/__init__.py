"""The model zoo: small networks that train in seconds on the embedded datasets.

Every zoo model takes ``in_channels`` and ``num_classes`` so the data config can fill them in;
any other ``nn.Module`` can be named instead with Hydra's ``model._target_``.
"""

from rlprune.models.cnn import MNIST1DCNN, DigitsCNN
from rlprune.models.resnet import ResNet20

__all__ = ["MNIST1DCNN", "DigitsCNN", "ResNet20"]
