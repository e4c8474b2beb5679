"""``api.run_network``: the whole chain on a network and data held in Python."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from sklearn.datasets import load_digits
from torch.nn.utils import parametrize

from rlprune import api
from rlprune.data import make_splits
from rlprune.errors import ConfigError, DataError, ModelError
from rlprune.models import DigitsCNN
from rlprune.training import TrainSettings, evaluate, train

QUICK = ["search.evaluations=20", "finetune.epochs=1", "budget.latency=0.5", "progress_bar=false"]


def digits() -> tuple[np.ndarray, ...]:
    data = load_digits()
    x, y = (data.images[:, None] / 16).astype(np.float32), data.target
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="module")
def trained() -> DigitsCNN:
    x, y, _, _ = digits()
    torch.manual_seed(0)
    net = DigitsCNN(channels=(16, 32, 32), hidden=64)
    return train(net, torch.from_numpy(x), torch.from_numpy(y), TrainSettings(epochs=15), seed=0).eval()


@pytest.mark.slow  # searches, finetunes and exports, with W&B offline (the default logger)
def test_a_network_and_arrays_in_python_run_the_whole_chain_and_stay_untouched(tmp_path, trained):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    x, y, x_test, y_test = digits()
    run = tmp_path / "run"
    report = api.run_network(trained, (x, y, x_test, torch.from_numpy(y_test)), run, QUICK)
    assert json.loads(json.dumps(report)) == json.loads((run / "report.json").read_text())
    assert report["run"]["model"] == "rlprune.models.cnn.DigitsCNN" and report["run"]["data"] == "in_memory"
    assert report["latency"] <= 0.5 + 1e-9 and (run / "policy.yaml").exists() and (run / "model.pt").exists()
    dense_test = evaluate(trained, torch.from_numpy(x_test), torch.from_numpy(y_test)).accuracy
    assert report["accuracy"]["dense_test"] == pytest.approx(dense_test)  # searched as passed, not retrained
    assert report["accuracy"]["pruned_test_after_finetune"] > 0.8
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["train_dense"] is False and config["data"]["num_classes"] == 10
    assert config["budget"]["latency"] == 0.5 and config["wandb"]["mode"] == "offline"
    assert list(run.glob("wandb/offline-run-*"))
    tuned = DigitsCNN(channels=(16, 32, 32), hidden=64)
    tuned.load_state_dict(torch.load(run / "model.pt", weights_only=True))  # the caller's class takes it
    assert not torch.equal(tuned.conv2.weight, trained.conv2.weight)
    # float activations where the finetune quantized them: close to the finetuned network's accuracy
    float_test = evaluate(tuned.eval(), torch.from_numpy(x_test), torch.from_numpy(y_test)).accuracy
    assert float_test == pytest.approx(report["accuracy"]["pruned_test_after_finetune"], abs=0.02)
    # the network passed is the caller's still: no masks attached, no weight moved
    assert not any(parametrize.is_parametrized(m) for m in trained.modules())
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())


def test_splits_are_taken_as_they_are(tmp_path, trained, monkeypatch):
    splits = make_splits(*digits(), reward_fraction=0.3, seed=4)
    seen = {}

    def search(cfg, target, hardware, *args, **kwargs):
        seen.update(splits=target.splits, cfg=cfg)
        raise KeyboardInterrupt  # enough: the chain got this far with these splits

    monkeypatch.setattr(api, "search", search)
    with pytest.raises(KeyboardInterrupt):
        api.run_network(
            trained, splits, tmp_path / "run", [*QUICK, "wandb.mode=disabled", "data.reward_fraction=0.5"]
        )
    for name in ("train_x", "train_y", "reward_x", "reward_y", "test_x", "test_y"):  # split no further
        assert torch.equal(getattr(seen["splits"], name), getattr(splits, name))
    assert seen["cfg"].data.reward_fraction == 0.5 and seen["cfg"].model.train_dense is False


@pytest.mark.parametrize(
    ("overrides", "data", "error", "message"),
    [
        (["model=resnet20"], None, ConfigError, r"leave out \['model=resnet20'\]"),
        (["data=digits"], None, ConfigError, r"leave out \['data=digits'\]"),
        ([], "three", DataError, "a Splits, or four arrays"),
        ([], "float labels", DataError, "run_network's data: labels must be integers"),
        (["budget.latency=2"], None, ConfigError, "budget.latency=2"),
        ("budget.latency=0.5", None, ConfigError, r"a list of strings: \['budget.latency=0.5'\]"),
        ([], "float tokens", DataError, r"labels per position \(8,\) need integer token ids"),
    ],
)
def test_bad_calls_say_what_to_change(tmp_path, trained, overrides, data, error, message):
    arrays = digits()
    if data == "three":
        arrays = arrays[:3]
    elif data == "float labels":
        arrays = (arrays[0], arrays[1].astype(np.float32), *arrays[2:])
    elif data == "float tokens":  # would be cast to ids: refused
        arrays = tuple(np.ones((4, 8), dtype=np.float32 if i % 2 == 0 else np.int64) for i in range(4))
    with pytest.raises(error, match=message):
        extra = overrides if isinstance(overrides, str) else [*overrides, "wandb.mode=disabled"]
        api.run_network(trained, arrays, tmp_path / "run", extra)


def test_an_untrained_network_and_a_finished_run_are_refused(tmp_path, trained):
    torch.manual_seed(0)
    untrained = DigitsCNN(channels=(16, 32, 32), hidden=64)
    with torch.no_grad():
        untrained.fc2.weight.zero_()  # every class scores the same: no better than the majority
        untrained.fc2.bias.zero_()
    with pytest.raises(
        ModelError, match=r"has not learned; it is searched as it is \(model\.train_dense=false\)"
    ):
        api.run_network(untrained, digits(), tmp_path / "untrained", ["wandb.mode=disabled"])
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "report.json").write_text("{}")
    (finished / "config.yaml").write_text("theirs")
    with pytest.raises(ConfigError, match="already holds a run"):
        api.run_network(trained, digits(), finished, ["wandb.mode=disabled"])
    assert (finished / "config.yaml").read_text() == "theirs"  # nothing of the finished run is touched
