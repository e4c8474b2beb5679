"""torchvision datasets (the optional ``vision`` extra): read from disk, never downloaded.

Only the torch, NumPy and rlprune.data imports, so this file also runs where torchvision is
installed beside a different torch (it was run on a GPU machine with torchvision 0.26).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from rlprune.data.folders import load_idx_arrays
from rlprune.data.vision import load_torchvision_arrays
from rlprune.errors import ConfigError, DataError

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed")
def test_without_the_extra_the_error_says_how_to_install_it(tmp_path):
    with pytest.raises(ConfigError, match=r'pip install "rlprune\[vision\]"'):
        load_torchvision_arrays("MNIST", str(tmp_path), 28, 1)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="needs torchvision (the vision extra)")
def test_torchvision_mnist_reads_what_the_idx_loader_reads(tmp_path):
    raw = tmp_path / "MNIST" / "raw"  # where torchvision.datasets.MNIST looks
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    ours = load_idx_arrays(raw)
    theirs = load_torchvision_arrays("MNIST", str(tmp_path), 28, 1)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="needs torchvision (the vision extra)")
def test_bad_names_and_empty_folders_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"torchvision\.datasets has no dataset 'Imagenet9'"):
        load_torchvision_arrays("Imagenet9", str(tmp_path), 32, 3)
    with pytest.raises(DataError, match=r"torchvision.datasets.CIFAR10 found no train data under data.root="):
        load_torchvision_arrays("CIFAR10", str(tmp_path), 32, 3)
