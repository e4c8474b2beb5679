"""Datasets as in-memory tensors, split into train, reward and test.

Embedded datasets need nothing on disk (MNIST-1D and the ``text`` corpus are generated, digits
ships with scikit-learn); the others are read from ``data.root`` (:mod:`rlprune.data.folders`), never
downloaded. The *reward split* is a fixed, seeded share of the training data. The search
scores policies on it; the test split is touched only by the final report, so the reported
accuracy is not the one the search optimised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from rlprune.data.arrays import holds_tokens, load_npz_arrays
from rlprune.data.embedded import Arrays, load_digits_arrays, load_mnist1d_arrays
from rlprune.data.folders import (
    load_cifar10_arrays,
    load_cifar100_arrays,
    load_idx_arrays,
    load_image_folder_arrays,
)
from rlprune.data.text import load_text_arrays
from rlprune.data.text_file import load_text_file_arrays
from rlprune.data.vision import load_torchvision_arrays
from rlprune.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "LOADERS",
    "Source",
    "Splits",
    "as_inputs",
    "load_splits",
    "make_splits",
    "random_inputs",
]


@dataclass(frozen=True)
class Splits:
    """Train, reward and test tensors.

    Inputs are float32 channels-first, or int64 token ids ``(N, T)`` for language data; labels
    are int64: one class per sample, or for language data the next token at every position
    ``(N, T)``, and then ``num_classes`` is the vocabulary size.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    reward_x: torch.Tensor
    reward_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    def to(self, device: torch.device | str) -> Splits:
        """The same splits on ``device`` (moved once; a run then keeps them there)."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "num_classes"}
        return replace(self, **{name: t.to(device) for name, t in tensors.items()})

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, channels first."""
        return tuple(self.train_x.shape[1:])

    @property
    def per_token(self) -> bool:
        """Whether every sample has a label per position (language modelling), not one label."""
        return self.train_y.dim() > 1


def random_inputs(example: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of ``batch`` made-up inputs shaped like ``example``'s samples, for tracing and timing.

    Float inputs are standard normal; token ids are drawn from those ``example`` holds, so every
    one is a valid index of the model's embedding.
    """
    shape = (batch, *example.shape[1:])
    if example.is_floating_point():
        return torch.randn(shape, generator=generator)
    tokens = example.flatten().cpu()
    return tokens[torch.randint(len(tokens), shape, generator=generator)]


def as_inputs(
    x: torch.Tensor, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``x`` on ``device`` with float inputs in ``dtype``; token ids stay int64 (they index an embedding)."""
    return x.to(device=device, dtype=dtype if x.is_floating_point() else None)


@dataclass(frozen=True)
class Source:
    """The settings a dataset is read with; each loader takes those it needs (see :func:`load_splits`)."""

    cache_dir: str
    root: str | None = None
    image_size: int = 32
    channels: int = 3
    dataset: str | None = None
    path: str | None = None
    tokenizer: str | None = None
    size: int = 64
    dims: int = 1
    num_classes: int | None = None


LOADERS: dict[str, Callable[[Source], Arrays]] = {
    "mnist1d": lambda s: load_mnist1d_arrays(s.cache_dir),
    "digits": lambda s: load_digits_arrays(s.cache_dir),
    "text": lambda s: load_text_arrays(s.cache_dir),
    "cifar10": lambda s: load_cifar10_arrays(s.root),
    "cifar100": lambda s: load_cifar100_arrays(s.root),
    "mnist": lambda s: load_idx_arrays(s.root),
    "fashion_mnist": lambda s: load_idx_arrays(s.root),
    "image_folder": lambda s: load_image_folder_arrays(s.root, s.image_size, s.channels),
    "torchvision": lambda s: load_torchvision_arrays(str(s.dataset), s.root, s.image_size, s.channels),
    "text_file": lambda s: load_text_file_arrays(s.path, s.tokenizer, s.size),
    "arrays": lambda s: load_npz_arrays(s.path, s.channels, s.dims, s.size, s.num_classes),
}
DATASETS = sorted(LOADERS)


def make_splits(
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    reward_fraction: float,
    seed: int,
) -> Splits:
    """Carve a seeded reward split out of the training arrays and convert to tensors."""
    if not 0.0 < reward_fraction < 1.0:
        raise ConfigError(f"data.reward_fraction must be in (0, 1), got {reward_fraction}")
    if len(x) == 0 or len(x_test) == 0:
        raise DataError(f"empty dataset: {len(x)} training and {len(x_test)} test samples")
    order = np.random.default_rng(seed).permutation(len(x))
    n_reward = max(1, round(reward_fraction * len(x)))
    reward, train = order[:n_reward], order[n_reward:]
    labels = np.concatenate([y, y_test])

    dtype = torch.int64 if holds_tokens(x, y) else torch.float32

    def tx(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

    def ty(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.int64)

    return Splits(
        train_x=tx(x[train]),
        train_y=ty(y[train]),
        reward_x=tx(x[reward]),
        reward_y=ty(y[reward]),
        test_x=tx(x_test),
        test_y=ty(y_test),
        num_classes=int(labels.max()) + 1,
    )


def load_splits(
    name: str,
    cache_dir: str,
    reward_fraction: float,
    seed: int,
    *,
    root: str | None = None,
    normalize: bool = False,
    image_size: int = 32,
    channels: int = 3,
    dataset: str | None = None,
    path: str | None = None,
    tokenizer: str | None = None,
    size: int = 64,
    dims: int = 1,
    num_classes: int | None = None,
) -> Splits:
    """Load dataset ``name`` (a key of :data:`LOADERS`: embedded, or read from ``root`` or ``path``)
    and split it.

    Args:
        normalize: standardize every input channel with the training data's mean and std.
        image_size, channels: how ``image_folder`` and ``torchvision`` images are resized and read.
        dataset: the ``torchvision.datasets`` class a ``torchvision`` dataset reads.
        path, tokenizer, size: the file ``text_file`` reads, the folder of the tokenizer it reads
            it with, and the tokens per sequence.
        path, channels, dims, size, num_classes: the ``.npz`` file ``arrays`` reads, and the
            config its arrays must match (:func:`rlprune.data.arrays.load_npz_arrays`).

    Raises:
        ConfigError: for an unknown dataset name.
        DataError: for a missing, malformed or empty dataset.
    """
    if name not in LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; valid: {DATASETS}")
    source = Source(cache_dir, root, image_size, channels, dataset, path, tokenizer, size, dims, num_classes)
    x, y, x_test, y_test = LOADERS[name](source)
    if normalize:
        axes = (0, *range(2, x.ndim))  # every axis but the channels
        mean = x.mean(axis=axes, keepdims=True)[0]
        std = x.std(axis=axes, keepdims=True)[0] + 1e-8
        x, x_test = (x - mean) / std, (x_test - mean) / std
    return make_splits(x, y, x_test, y_test, reward_fraction, seed)
