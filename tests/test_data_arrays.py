"""Your own arrays (``data=arrays``): a ``.npz`` file loaded, checked against the config, searched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rlprune.api import dense_cache_path, describe
from rlprune.data import load_splits, make_splits
from rlprune.errors import ConfigError, DataError
from tests.support import compose_config
from tests.test_cli import rlprune

RNG = np.random.default_rng(0)


def signals(n: int, channels: int = 2, length: int = 40, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Noise with a bump whose position names the class: learnable in a few epochs."""
    y = np.arange(n) % classes
    x = RNG.normal(0, 0.3, (n, channels, length)).astype(np.float32)
    for i, label in enumerate(y):
        start = 5 + label * (length - 10) // classes
        x[i, :, start : start + 6] += 2.0
    return x, y


def write(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def load(path: str, **config) -> object:
    settings = {"channels": 2, "dims": 1, "size": 40, "num_classes": 3} | config
    return load_splits("arrays", "unused", 0.25, 0, path=path, **settings)


def test_sequences_load_split_and_keep_the_test_arrays(tmp_path):
    x, y = signals(40)
    x_test, y_test = signals(12)
    splits = load(write(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test))
    assert splits.input_shape == (2, 40) and splits.num_classes == 3
    assert len(splits.train_x) + len(splits.reward_x) == 40
    assert torch.equal(splits.test_x, torch.from_numpy(x_test)) and torch.equal(
        splits.test_y, torch.from_numpy(y_test)
    )


def test_token_ids_with_a_class_per_sample_stay_ids(tmp_path):
    x = RNG.integers(0, 50, (20, 12))  # a sequence classifier's input: (N, T) token ids
    y = np.arange(20) % 3
    splits = load(write(tmp_path / "tok.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4]), size=12)
    assert splits.test_x.dtype == torch.int64 and torch.equal(splits.test_x, torch.from_numpy(x[:4]))
    assert not splits.per_token and splits.num_classes == 3
    floats = x.astype(np.float32)  # (N, F) float features stay float
    tabular = make_splits(floats, y, floats[:4], y[:4], 0.25, 0)
    assert tabular.test_x.dtype == torch.float32


def test_integer_images_become_float_inputs(tmp_path):
    x = RNG.integers(0, 256, (20, 1, 6, 6), dtype=np.uint8)
    y = np.arange(20) % 2
    path = write(tmp_path / "img.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    splits = load(path, channels=1, dims=2, size=6, num_classes=2)
    assert splits.test_x.dtype == torch.float32 and torch.equal(
        splits.test_x, torch.from_numpy(x[:4]).float()
    )


def test_token_ids_with_a_label_per_position(tmp_path):
    ids = RNG.integers(0, 50, (30, 13))
    path = write(
        tmp_path / "t.npz",
        x_train=ids[:24, :-1],
        y_train=ids[:24, 1:],
        x_test=ids[24:, :-1],
        y_test=ids[24:, 1:],
    )
    splits = load(path, channels=1, size=12, num_classes=50)
    assert splits.per_token and splits.train_x.dtype == torch.int64 and splits.input_shape == (12,)


GOOD = dict(zip(("x_train", "y_train"), signals(20), strict=True)) | dict(
    zip(("x_test", "y_test"), signals(6), strict=True)
)


@pytest.mark.parametrize(
    ("change", "config", "error", "message"),
    [
        (
            {"x_test": None},
            {},
            DataError,
            r"lacks \['x_test'\] \(it holds \['x_train', 'y_test', 'y_train'\]\)",
        ),
        ({"y_train": GOOD["y_train"][:-1]}, {}, DataError, "20 x_train but 19 y_train"),
        (
            {},
            {"channels": 1},
            DataError,
            r"samples are \(2, 40\), the config reads \(1, 40\); set data.in_channels=2",
        ),
        ({}, {"dims": 2}, DataError, r"set data.in_channels=2 data.dims=1 data.size=40"),
        ({"x_test": GOOD["x_test"][:, :, :30]}, {}, DataError, "a test sample .* they must match"),
        ({"y_train": GOOD["y_train"] + 0.5}, {}, DataError, "labels must be integers"),
        ({"y_train": GOOD["y_train"] - 1}, {}, DataError, "labels must be >= 0"),
        (
            {},
            {"num_classes": None},
            ConfigError,
            r"data.num_classes is not set: .* run 0..2; set data.num_classes=3",
        ),
        ({}, {"num_classes": 2}, DataError, "a label is 2 but data.num_classes=2; set data.num_classes=3"),
        ({"x_train": np.array(["a"] * 20)}, {}, DataError, "x_train holds <U1, not numbers"),
    ],
)
def test_bad_arrays_name_what_to_fix(tmp_path, change, config, error, message):
    arrays = {key: value for key, value in (GOOD | change).items() if value is not None}
    with pytest.raises(error, match=message):
        load(write(tmp_path / "bad.npz", **arrays), **config)


def test_a_missing_unset_or_unreadable_file_says_so(tmp_path):
    with pytest.raises(
        ConfigError, match=r"data.path is not set: name the .npz file to read, written by numpy.savez"
    ):
        load(None)
    with pytest.raises(DataError, match="no such file"):
        load(str(tmp_path / "none.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"is not a \.npz file of plain arrays"):
        load(str(tmp_path / "text.npz"))
    np.save(tmp_path / "one.npy", GOOD["x_train"])
    with pytest.raises(DataError, match=r"is not a \.npz file of plain arrays .* holds one ndarray"):
        load(str(tmp_path / "one.npy"))
    np.savez(tmp_path / "objects.npz", x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match=r"is not a \.npz file of plain arrays"):  # no pickles are run
        load(str(tmp_path / "objects.npz"))


def test_a_file_rewritten_in_place_trains_a_new_dense_model(tmp_path):
    path = write(tmp_path / "d.npz", **GOOD)
    cfg = compose_config(
        "data=arrays",
        f"data.path={path}",
        "data.in_channels=2",
        "data.num_classes=3",
        f"cache_dir={tmp_path}",
    )
    before = dense_cache_path(cfg, describe(cfg)[1])
    assert dense_cache_path(cfg, describe(cfg)[1]) == before
    write(tmp_path / "d.npz", **(GOOD | {"y_train": GOOD["y_train"][::-1].copy()}))
    assert dense_cache_path(cfg, describe(cfg)[1]) != before


@pytest.mark.slow  # end to end: trains, searches and finetunes in a subprocess
def test_search_on_arrays_from_a_file(tmp_path):
    x, y = signals(600)
    x_test, y_test = signals(150)
    path = write(tmp_path / "signals.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
    run = tmp_path / "run"
    overrides = ["data=arrays", f"data.path={path}", "data.in_channels=2", "data.num_classes=3"]
    quick = ["search.evaluations=20", "finetune.epochs=1", "budget.latency=0.5", "wandb.mode=disabled"]
    result = rlprune(run, *overrides, *quick, f"cache_dir={tmp_path / 'cache'}", "progress_bar=false")
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "report.json").read_text())
    assert report["run"]["data"] == "arrays" and report["latency"] <= 0.5 + 1e-9
    assert report["accuracy"]["dense_test"] > 0.9  # the bump's position is easy to learn

    unset = rlprune(
        tmp_path / "unset", "data=arrays", f"data.path={path}", "data.in_channels=2", "wandb.mode=disabled"
    )
    assert unset.returncode == 2 and "Traceback" not in unset.stderr
    assert "error: data.num_classes is not set" in unset.stderr and "set data.num_classes=3" in unset.stderr
