"""The model zoo: small networks that train in seconds on the embedded datasets.

Every zoo model takes ``num_classes`` (and all but the language model ``in_channels``) so the
data config can fill them in; any other ``nn.Module`` can be named instead with Hydra's ``model._target_``.
"""

from rlprune.models.cnn import MNIST1DCNN, DigitsCNN
from rlprune.models.densenet import DenseNet
from rlprune.models.lm import TinyLM
from rlprune.models.mobilenet import MobileNetV2
from rlprune.models.resnet import ResNet20
from rlprune.models.vgg import VGG
from rlprune.models.vit import ViT

__all__ = ["MNIST1DCNN", "VGG", "DenseNet", "DigitsCNN", "MobileNetV2", "ResNet20", "TinyLM", "ViT"]
