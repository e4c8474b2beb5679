"""Datasets as in-memory tensors, split into train, reward and test.

The *reward split* is a fixed, seeded share of the training data. The search scores policies
on it; the test split is touched only by the final report, so the reported accuracy is not
the one the search optimised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rlprune.data.embedded import load_digits_arrays, load_mnist1d_arrays
from rlprune.errors import ConfigError, DataError

__all__ = ["LOADERS", "Splits", "load_splits", "make_splits"]


@dataclass(frozen=True)
class Splits:
    """Train, reward and test tensors. Inputs are float32 channels-first, labels int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    reward_x: torch.Tensor
    reward_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, channels first."""
        return tuple(self.train_x.shape[1:])


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
LOADERS: dict[str, Callable[[str], Arrays]] = {
    "mnist1d": load_mnist1d_arrays,
    "digits": load_digits_arrays,
}


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

    def tx(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)

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


def load_splits(name: str, cache_dir: str, reward_fraction: float, seed: int) -> Splits:
    """Load the embedded dataset ``name`` and split it.

    Raises:
        ConfigError: for an unknown dataset name.
    """
    if name not in LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; valid: {sorted(LOADERS)}")
    x, y, x_test, y_test = LOADERS[name](cache_dir)
    return make_splits(x, y, x_test, y_test, reward_fraction, seed)
