import os

import numpy as np
import pytest

from rlprune.data import load_splits, make_splits
from rlprune.errors import ConfigError, DataError


def test_mnist1d_splits_are_fixed_and_disjoint():
    cache = os.environ["RLPRUNE_CACHE"]
    splits = load_splits("mnist1d", cache, reward_fraction=0.2, seed=0)
    assert splits.input_shape == (1, 40)
    assert len(splits.train_x) == 3200 and len(splits.reward_x) == 800 and len(splits.test_x) == 1000
    assert splits.num_classes == 10
    again = load_splits("mnist1d", cache, reward_fraction=0.2, seed=0)  # from the cache
    assert np.array_equal(again.reward_x.numpy(), splits.reward_x.numpy())


def test_digits_splits():
    splits = load_splits("digits", os.environ["RLPRUNE_CACHE"], reward_fraction=0.25, seed=1)
    assert splits.input_shape == (1, 8, 8)
    assert len(splits.train_x) + len(splits.reward_x) + len(splits.test_x) == 1797


def test_corrupt_cache_is_regenerated(tmp_path):
    (tmp_path / "mnist1d.npz").write_bytes(b"not an npz file")
    splits = load_splits("mnist1d", str(tmp_path), 0.2, 0)
    assert len(splits.test_x) == 1000


def test_bad_names_and_values():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        load_splits("cifar", "/tmp", 0.2, 0)
    x, y = np.zeros((10, 1, 4)), np.zeros(10, dtype=int)
    with pytest.raises(ConfigError, match="reward_fraction"):
        make_splits(x, y, x, y, 1.5, 0)
    with pytest.raises(DataError, match="empty dataset"):
        make_splits(x[:0], y[:0], x, y, 0.2, 0)
