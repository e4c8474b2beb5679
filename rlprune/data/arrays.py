"""Your own arrays as a dataset (``data=arrays``): one ``.npz`` file of train and test splits.

The file holds ``x_train``, ``y_train``, ``x_test`` and ``y_test`` (``numpy.savez(path, x_train=...,
...)``). Inputs are channels first, ``(N, C, L)`` or ``(N, C, H, W)``, of any numeric type (integer
images are cast to float; ``data.normalize`` standardizes them), with one integer class per sample;
or integer token ids ``(N, T)`` with one class per sample (a sequence classifier) or the next
token at every position ``(N, T)`` (a language model). The arrays are
checked against the config the models read (``data.in_channels``, ``dims``, ``size``,
``num_classes``), so a mismatch is named here and not deep inside the first layer.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from rlprune.data.embedded import Arrays
from rlprune.errors import ConfigError, DataError

KEYS = ("x_train", "y_train", "x_test", "y_test")
LAYOUT = "numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"


def load_npz_arrays(path: str | None, channels: int, dims: int, size: int, num_classes: int | None) -> Arrays:
    """``(x, y, x_test, y_test)`` from the ``.npz`` file ``path``, checked against the data config.

    Raises:
        ConfigError: when ``data.path`` or ``data.num_classes`` is unset.
        DataError: when the file is missing, unreadable, lacks an array, or its arrays do not
            match each other or the config; the message says which setting to change.
    """
    if not path:
        raise ConfigError(f"data.path is not set: name the .npz file to read, written by {LAYOUT}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.path={path}: no such file")
    try:
        loaded = np.load(file, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file: one array
            raise ValueError(f"it holds one {type(loaded).__name__}, not the four arrays")
        with loaded as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"data.path={path} is not a .npz file of plain arrays ({LAYOUT}): {exc}") from exc
    missing = [key for key in KEYS if key not in arrays]
    if missing:
        raise DataError(
            f"data.path={path} lacks {missing} (it holds {sorted(arrays)}); write it with {LAYOUT}"
        )
    x, y, x_test, y_test = (arrays[key] for key in KEYS)
    where = f"data.path={path}"
    check_arrays((x, y, x_test, y_test), where)
    _check_samples(where, x, y, channels, dims, size)
    _check_num_classes(where, y, y_test, num_classes)
    return x, y, x_test, y_test


def holds_tokens(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether inputs ``x`` are token ids: integers ``(N, T)`` (other inputs are channels first,
    so they have 3 dims or more), or any inputs with a label per position (language modelling)."""
    return y.ndim > 1 or (x.ndim == 2 and np.issubdtype(x.dtype, np.integer))


def check_arrays(arrays: Arrays, where: str) -> None:
    """``(x, y, x_test, y_test)`` hold numbers, as many labels as inputs in each split, test
    samples shaped as the training ones, and integer labels >= 0; labels per position go with
    integer token ids of their shape.

    Raises:
        DataError: naming ``where`` the arrays come from and what is wrong.
    """
    for name, array in zip(KEYS, arrays, strict=True):
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise DataError(f"{where}: {name} holds {array.dtype}, not numbers")
    x, y, x_test, y_test = arrays
    for split, inputs, labels in (("train", x, y), ("test", x_test, y_test)):
        if len(inputs) != len(labels):
            raise DataError(f"{where}: {len(inputs)} x_{split} but {len(labels)} y_{split}")
    if x.shape[1:] != x_test.shape[1:] or y.shape[1:] != y_test.shape[1:]:
        raise DataError(
            f"{where}: a training sample is {x.shape[1:]} with labels {y.shape[1:]}, "
            f"a test sample {x_test.shape[1:]} with labels {y_test.shape[1:]}; they must match"
        )
    if not (np.issubdtype(y.dtype, np.integer) and np.issubdtype(y_test.dtype, np.integer)):
        raise DataError(f"{where}: labels must be integers, got {y.dtype} and {y_test.dtype}")
    if y.ndim > 1 and (not np.issubdtype(x.dtype, np.integer) or y.shape != x.shape or x.ndim != 2):
        raise DataError(
            f"{where}: labels per position {y.shape[1:]} need integer token ids of the same shape "
            f"(N, T), got x_train {x.dtype} {x.shape[1:]}"
        )
    low = min(y.min(initial=0), y_test.min(initial=0))
    if low < 0:
        raise DataError(f"{where}: labels must be >= 0, the smallest is {low}")


def _check_samples(where: str, x: np.ndarray, y: np.ndarray, channels: int, dims: int, size: int) -> None:
    """The samples' shape against ``data.in_channels``, ``dims`` and ``size``, which the models read."""
    sample = x.shape[1:]
    if holds_tokens(x, y):  # token ids (N, T), checked by check_arrays
        if sample[0] != size:
            raise DataError(f"{where}: sequences of {sample[0]} tokens; set data.size={sample[0]}")
        return
    wanted = (channels, *(size,) * dims)
    if sample != wanted:
        hint = (
            f"set data.in_channels={sample[0]} data.dims={len(sample) - 1} data.size={sample[-1]}"
            if len(sample) >= 2 and len(set(sample[1:])) == 1
            else "give inputs channels first, (N, C, L) or (N, C, S, S)"
        )
        raise DataError(f"{where}: samples are {sample}, the config reads {wanted}; {hint}")


def _check_num_classes(where: str, y: np.ndarray, y_test: np.ndarray, num_classes: int | None) -> None:
    """Labels below ``data.num_classes``, which must be set."""
    high = max(y.max(initial=0), y_test.max(initial=0))
    if num_classes is None:
        raise ConfigError(
            f"data.num_classes is not set: the labels ({where}) run 0..{high}; "
            f"set data.num_classes={high + 1}"
        )
    if high >= num_classes:
        raise DataError(
            f"{where}: a label is {high} but data.num_classes={num_classes}; set data.num_classes={high + 1}"
        )
