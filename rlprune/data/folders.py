"""Real datasets from a local folder (nothing is downloaded): CIFAR, MNIST-style IDX, image folders.

Every loader returns ``(x, y, x_test, y_test)`` as NumPy arrays, x float32 channels-first in
[0, 1], y int64. A folder in the wrong layout, a missing or truncated file, or an empty class
stops with a :class:`DataError` naming the path and the layout expected.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlprune.errors import DataError

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def require_root(root: str | Path | None, layout: str) -> Path:
    """``data.root`` as a folder, or a :class:`DataError` that says which ``layout`` it should hold."""
    if root is None or str(root) in ("", "???"):
        raise DataError(f"data.root is not set: point it at a folder holding {layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root={str(path)!r} is not a folder; expected {layout}")
    return path


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise DataError(f"{path} is missing") from None
    except Exception as exc:  # truncated or not a pickle
        raise DataError(f"{path} cannot be read as a CIFAR python batch ({type(exc).__name__})") from exc


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    data = np.asarray(batch.get("data"))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be N x 3072 uint8 rows (CIFAR python format), got {data.shape}")
    return (data.reshape(-1, 3, 32, 32) / 255.0).astype(np.float32)


def load_cifar10_arrays(root: str | Path | None) -> Arrays:
    """CIFAR-10 in its python-pickle layout: ``cifar-10-batches-py/{data_batch_1..5,test_batch}``."""
    layout = "cifar-10-batches-py/ with data_batch_1 .. data_batch_5 and test_batch (python version)"
    folder = require_root(root, layout)
    folder = folder / "cifar-10-batches-py" if (folder / "cifar-10-batches-py").is_dir() else folder
    train = [folder / f"data_batch_{i}" for i in range(1, 6)]
    missing = [p.name for p in [*train, folder / "test_batch"] if not p.is_file()]
    if missing:
        raise DataError(f"data.root={str(folder)!r} lacks {missing}; expected {layout}")
    parts = [_unpickle(p) for p in train]
    x = np.concatenate([_cifar_images(b, p) for b, p in zip(parts, train, strict=True)])
    y = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in parts])
    test = _unpickle(folder / "test_batch")
    return x, y, _cifar_images(test, folder / "test_batch"), np.asarray(test["labels"], dtype=np.int64)


def load_cifar100_arrays(root: str | Path | None) -> Arrays:
    """CIFAR-100 in its python-pickle layout: ``cifar-100-python/{train,test}``, fine labels."""
    layout = "cifar-100-python/ with train and test (python version)"
    folder = require_root(root, layout)
    folder = folder / "cifar-100-python" if (folder / "cifar-100-python").is_dir() else folder
    arrays = []
    for name in ("train", "test"):
        batch = _unpickle(folder / name)
        if "fine_labels" not in batch:
            raise DataError(f"{folder / name} has no 'fine_labels'; expected {layout}")
        arrays += [_cifar_images(batch, folder / name), np.asarray(batch["fine_labels"], dtype=np.int64)]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _read_idx(folder: Path, stem: str) -> np.ndarray:
    """An IDX file (``stem`` or ``stem.gz``) as a NumPy array (LeCun's MNIST format)."""
    path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
    if path is None:
        raise DataError(
            f"data.root={str(folder)!r} lacks {stem} (or {stem}.gz), an IDX file of MNIST's layout"
        )
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic number 0x0000 08 nn)")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = raw[4 + 4 * dims :]
    if len(body) != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: its header promises {shape}, it holds {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def load_idx_arrays(root: str | Path | None) -> Arrays:
    """MNIST or Fashion-MNIST in IDX format: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``."""
    folder = require_root(
        root, "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-... (MNIST's IDX files)"
    )
    arrays = []
    for split in ("train", "t10k"):
        images = _read_idx(folder, f"{split}-images-idx3-ubyte")
        labels = _read_idx(folder, f"{split}-labels-idx1-ubyte")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not pair up"
            )
        arrays += [(images[:, None] / 255.0).astype(np.float32), labels.astype(np.int64)]
    return arrays[0], arrays[1], arrays[2], arrays[3]


def _read_class_folders(
    folder: Path, classes: Sequence[str], size: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{folder / name} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        for path in files:
            try:
                with Image.open(path) as image:
                    image = image.convert("L" if channels == 1 else "RGB").resize((size, size))
                    pixels = np.asarray(image, dtype=np.float32) / 255.0
            except OSError as exc:
                raise DataError(f"{path} cannot be read as an image ({exc})") from exc
            images.append(pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def load_image_folder_arrays(root: str | Path | None, size: int = 32, channels: int = 3) -> Arrays:
    """Images in ``root/train/<class>/*`` and ``root/test/<class>/*``, resized to ``size``x``size``.

    Classes are the train sub-folders in sorted order; the test split must have the same ones.
    """
    layout = "train/<class>/<image> and test/<class>/<image>"
    folder = require_root(root, layout)
    splits = [folder / "train", folder / "test"]
    if not all(s.is_dir() for s in splits):
        raise DataError(f"data.root={str(folder)!r} needs train/ and test/ sub-folders: {layout}")
    classes = sorted(p.name for p in splits[0].iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{splits[0]} has no class sub-folder: {layout}")
    test_classes = sorted(p.name for p in splits[1].iterdir() if p.is_dir())
    if test_classes != classes:
        raise DataError(f"{splits[1]} has classes {test_classes}, train/ has {classes}; they must match")
    x, y = _read_class_folders(splits[0], classes, size, channels)
    x_test, y_test = _read_class_folders(splits[1], classes, size, channels)
    return x, y, x_test, y_test
