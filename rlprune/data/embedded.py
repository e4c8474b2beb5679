"""Datasets that need no download: generated (MNIST-1D) or shipped by a package (digits)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from rlprune.io import write_atomic

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def cached_arrays(path: Path, make: Callable[[], dict[str, np.ndarray]]) -> Arrays:
    """``(x, y, x_test, y_test)`` read from the ``.npz`` at ``path``; when it is missing or corrupt,
    ``make`` generates them (a dict with those four keys) and they are cached there atomically."""
    try:
        with np.load(path) as f:
            return f["x"], f["y"], f["x_test"], f["y_test"]
    except (OSError, KeyError, ValueError):  # missing or corrupt cache: regenerate
        pass
    arrays = make()
    write_atomic(path, lambda f: np.savez(f, **arrays))
    return arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"]


def load_mnist1d_arrays(cache_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D (Greydanus 2020) as ``(x, y, x_test, y_test)``, x shaped ``(N, 1, 40)``.

    Generated with the package's default arguments (4000 train / 1000 test, seed 42), which
    is the published dataset. Generation takes a few seconds, so the arrays are cached.
    """

    def make() -> dict[str, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset  # only when the cache misses

        data = make_dataset(get_dataset_args())
        return {
            "x": data["x"][:, None, :].astype(np.float32),
            "y": data["y"].astype(np.int64),
            "x_test": data["x_test"][:, None, :].astype(np.float32),
            "y_test": data["y_test"].astype(np.int64),
        }

    return cached_arrays(Path(cache_dir) / "mnist1d.npz", make)


def load_digits_arrays(cache_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as ``(x, y, x_test, y_test)``, x shaped ``(N, 1, 8, 8)``.

    1797 images; a fixed, stratified 80/20 split (seed 0). Pixels are scaled to [0, 1].
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x, x_test, y, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x, y, x_test, y_test
