"""Datasets from a local folder: tiny files in each format are built here, then loaded and searched."""

from __future__ import annotations

import gzip
import json
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from rlprune.data import load_splits
from rlprune.errors import DataError
from tests.test_cli import rlprune

RNG = np.random.default_rng(0)


def cifar_batch(n: int, labels_key: str, classes: int) -> dict:
    return {
        "data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
        labels_key: list(RNG.integers(0, classes, n)),
    }


def write_pickle(path, obj) -> None:
    path.write_bytes(pickle.dumps(obj))


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def mnist_folder(root, gz: bool = True) -> None:
    for split, n in (("train", 30), ("t10k", 10)):
        write_idx(
            root / f"{split}-images-idx3-ubyte{'.gz' if gz else ''}", RNG.integers(0, 256, (n, 28, 28)), gz
        )
        write_idx(root / f"{split}-labels-idx1-ubyte{'.gz' if gz else ''}", np.arange(n) % 10, gz)


def image_folder(root, classes=("cat", "dog"), per_class: int = 12, size: int = 10) -> None:
    for split, n in (("train", per_class), ("test", per_class // 3)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.full((size, size, 3), 40 + 170 * c, dtype=np.uint8) + RNG.integers(
                    0, 40, (size, size, 3), dtype=np.uint8
                )
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_cifar10_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_pickle(folder / f"data_batch_{i}", cifar_batch(4, "labels", 10))
    write_pickle(folder / "test_batch", cifar_batch(6, "labels", 10))
    splits = load_splits("cifar10", "unused", 0.25, 0, root=str(tmp_path), normalize=True)
    assert splits.input_shape == (3, 32, 32)
    assert len(splits.train_x) + len(splits.reward_x) == 20 and len(splits.test_x) == 6
    all_train = np.concatenate([splits.train_x.numpy(), splits.reward_x.numpy()])
    assert np.allclose(all_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)  # standardized per channel


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_pickle(folder / "train", cifar_batch(10, "fine_labels", 100))
    write_pickle(folder / "test", cifar_batch(5, "fine_labels", 100))
    splits = load_splits("cifar100", "unused", 0.2, 0, root=str(folder))
    assert splits.input_shape == (3, 32, 32) and float(splits.train_x.max()) <= 1.0


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files(tmp_path, gz):
    mnist_folder(tmp_path, gz)
    splits = load_splits("fashion_mnist", "unused", 0.2, 0, root=str(tmp_path))
    assert splits.input_shape == (1, 28, 28) and len(splits.test_y) == 10 and splits.num_classes == 10


def test_image_folder(tmp_path):
    image_folder(tmp_path)
    splits = load_splits("image_folder", "unused", 0.25, 0, root=str(tmp_path), image_size=8, channels=1)
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 2 and len(splits.test_y) == 8


def test_a_folder_rewritten_in_place_trains_a_new_dense_model(tmp_path):
    from rlprune.api import dense_cache_path, describe
    from tests.support import compose_config

    root = tmp_path / "images"
    image_folder(root)
    cfg = compose_config(
        "data=image_folder",
        f"data.root={root}",
        "data.num_classes=2",
        "data.image_size=8",
        "model=digits_cnn",
        "data.in_channels=3",
        f"cache_dir={tmp_path}",
    )
    before = dense_cache_path(cfg, describe(cfg)[1])
    assert dense_cache_path(cfg, describe(cfg)[1]) == before
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(root / "train" / "cat" / "0.png")
    assert dense_cache_path(cfg, describe(cfg)[1]) != before


def cifar100_without_files(root) -> None:
    (root / "cifar-100-python").mkdir()


def idx_truncated(root) -> None:
    mnist_folder(root, gz=False)
    write_idx(root / "t10k-images-idx3-ubyte", np.zeros((3, 2, 2)), gz=False)
    raw = (root / "t10k-images-idx3-ubyte").read_bytes()
    (root / "t10k-images-idx3-ubyte").write_bytes(raw[:-5])


def idx_not_idx(root) -> None:
    (root / "train-images-idx3-ubyte").write_bytes(b"PK\x03\x04junk")


def empty_class(root) -> None:
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)


def classes_differ(root) -> None:
    image_folder(root)
    (root / "test" / "bird").mkdir()


def no_split_folders(root) -> None:
    (root / "pictures").mkdir()


@pytest.mark.parametrize(
    ("build", "name", "message"),
    [
        (lambda root: None, "cifar10", "lacks ['data_batch_1'"),
        (cifar100_without_files, "cifar100", "train is missing"),
        (idx_truncated, "mnist", "is truncated"),
        (idx_not_idx, "mnist", "is not an unsigned-byte IDX file"),
        (empty_class, "image_folder", "holds no image"),
        (classes_differ, "image_folder", "must match"),
        (no_split_folders, "image_folder", "needs train/ and test/ sub-folders"),
    ],
    ids=[
        "cifar10-empty",
        "cifar100-missing",
        "idx-truncated",
        "idx-magic",
        "empty-class",
        "classes-differ",
        "layout",
    ],
)
def test_a_folder_in_the_wrong_format_names_the_path(tmp_path, build, name, message):
    build(tmp_path)
    with pytest.raises(DataError, match=re.escape(message)):
        load_splits(name, "unused", 0.2, 0, root=str(tmp_path))


def test_an_unset_root_says_so():
    with pytest.raises(DataError, match=r"data\.root is not set"):
        load_splits("cifar10", "unused", 0.2, 0)


def test_search_on_images_from_a_folder(tmp_path):
    image_folder(tmp_path / "images")
    run = tmp_path / "run"
    result = rlprune(
        run,
        "data=image_folder",
        f"data.root={tmp_path / 'images'}",
        "data.image_size=8",
        "data.in_channels=1",
        "model=digits_cnn",
        "search.evaluations=20",
        "finetune.epochs=1",
        "dense.epochs=15",
        "budget.latency=0.5",
        "progress_bar=false",
        "wandb.mode=disabled",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "report.json").read_text())
    assert report["run"]["data"] == "image_folder" and report["latency"] <= 0.5 + 1e-9
    assert report["accuracy"]["dense_test"] > 0.9  # the two classes differ in brightness


def test_a_cli_run_without_root_fails_in_one_line(tmp_path):
    result = rlprune(tmp_path, "data=cifar10", "model=resnet20", "wandb.mode=disabled")
    assert result.returncode == 2
    assert "error: data.root is not set: point it at a folder holding cifar-10-batches-py/" in result.stderr
    assert "Traceback" not in result.stderr
