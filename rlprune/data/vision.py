"""Any ``torchvision.datasets`` class, read from ``data.root`` (never downloaded).

Needs the optional extra: ``pip install "rlprune[vision]"``; the core does not depend on
torchvision. Images become float32 channels-first arrays in [0, 1], like the other loaders.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from rlprune.data.folders import Arrays, require_root
from rlprune.errors import ConfigError, DataError

EXTRA = 'pip install "rlprune[vision]"'


def load_torchvision_arrays(dataset: str, root: str | None, size: int, channels: int) -> Arrays:
    """The train and test splits of ``torchvision.datasets.<dataset>`` found under ``root``.

    Args:
        dataset: the class name, e.g. ``CIFAR10``, ``MNIST``, ``FashionMNIST``, ``SVHN``.
        root: the folder the dataset class reads (as its own ``root`` argument).
        size: images are resized to ``size`` x ``size``.
        channels: 1 reads grey, 3 reads RGB.

    Raises:
        ConfigError: torchvision is not installed, or has no such dataset.
        DataError: the dataset class finds no data under ``root``.
    """
    try:
        import torchvision
    except ImportError as exc:
        raise ConfigError(f"data=torchvision needs torchvision, which is not installed: {EXTRA}") from exc
    cls = getattr(torchvision.datasets, dataset, None)
    if not inspect.isclass(cls):
        raise ConfigError(
            f"torchvision.datasets has no dataset {dataset!r}; name a class such as CIFAR10, MNIST, "
            "FashionMNIST or SVHN (data.dataset=...)"
        )
    folder = require_root(root, f"the files torchvision.datasets.{dataset} reads (see its documentation)")
    mode = "L" if channels == 1 else "RGB"
    transform = torchvision.transforms.Compose(
        [
            torchvision.transforms.Lambda(lambda image: image.convert(mode)),
            torchvision.transforms.Resize((size, size)),
            torchvision.transforms.ToTensor(),
        ]
    )
    train = _read(cls, folder, True, transform)
    test = _read(cls, folder, False, transform)
    return train[0], train[1], test[0], test[1]


def _read(cls: type, folder: Any, train: bool, transform: Any) -> tuple[np.ndarray, np.ndarray]:
    """One split of a torchvision dataset as ``(x, y)`` arrays."""
    params = inspect.signature(cls).parameters
    if "train" in params:
        split = {"train": train}
    elif "split" in params:
        split = {"split": "train" if train else "test"}
    else:
        raise ConfigError(f"torchvision.datasets.{cls.__name__} has no train/test split argument")
    if "download" in params:
        split["download"] = False
    try:
        data = cls(str(folder), transform=transform, **split)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        raise DataError(
            f"torchvision.datasets.{cls.__name__} found no {'train' if train else 'test'} data under "
            f"data.root={str(folder)!r}: {exc}"
        ) from exc
    if len(data) == 0:
        raise DataError(f"torchvision.datasets.{cls.__name__} under {str(folder)!r} holds no samples")
    pairs = [data[i] for i in range(len(data))]
    x = np.stack([image.numpy() for image, _ in pairs]).astype(np.float32)
    y = np.asarray([int(label) for _, label in pairs], dtype=np.int64)
    return x, y
