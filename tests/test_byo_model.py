"""Bring your own model: a network rlprune has never seen, trained here, saved, then searched."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from torch import nn

from rlprune.data import load_splits
from rlprune.training import evaluate
from tests.test_cli import rlprune


class TinyNet(nn.Module):
    """A user's 1-D network for MNIST-1D, unknown to rlprune's zoo."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(4),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * width, 48), nn.ReLU(), nn.Linear(48, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def trained(cache: str) -> TinyNet:
    splits = load_splits("mnist1d", cache, 0.2, 0)
    torch.manual_seed(0)
    net = TinyNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(4):
        for start in range(0, len(splits.train_x), 100):
            loss = nn.functional.cross_entropy(
                net(splits.train_x[start : start + 100]), splits.train_y[start : start + 100]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


SEARCH = [
    "model=custom",
    "model._target_=tests.test_byo_model.TinyNet",
    "model.train_dense=false",
    "search.evaluations=20",
    "finetune.epochs=1",
    "progress_bar=false",
    "wandb.mode=disabled",
]


@pytest.mark.slow  # end to end: trains, searches and finetunes in a subprocess
@pytest.mark.parametrize("form", ["state_dict", "module", "safetensors"])
def test_a_saved_unseen_network_is_searched_as_it_is(tmp_path, form):

    net = trained(os.environ["RLPRUNE_CACHE"])
    path = tmp_path / ("net.safetensors" if form == "safetensors" else "net.pt")
    if form == "state_dict":
        torch.save(net.state_dict(), path)
    elif form == "module":
        torch.save(net, path)
    else:
        from safetensors.torch import save_file

        save_file(net.state_dict(), str(path))
    run = tmp_path / "run"
    result = rlprune(run, *SEARCH, f"model.checkpoint={path}", "budget.latency=0.5")
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "report.json").read_text())
    splits = load_splits("mnist1d", os.environ["RLPRUNE_CACHE"], 0.2, 0)
    measured = evaluate(net, splits.test_x, splits.test_y).accuracy
    assert report["accuracy"]["dense_test"] == pytest.approx(measured, abs=1e-9)  # as it is, not retrained
    assert report["latency"] <= 0.5 + 1e-9
    assert [row["layer"] for row in report["layers"]] == ["features.0", "features.3", "head.1", "head.3"]
    policy = yaml.safe_load((run / "policy.yaml").read_text())
    assert set(policy["layers"]) == {"features.0", "features.3", "head.1", "head.3"}


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ("missing.pt", "model.checkpoint='{dir}/missing.pt': no such file"),
        ("garbage.pt", "model.checkpoint='{dir}/garbage.pt' cannot be read"),
        (
            "other.pt",
            "model.checkpoint='{dir}/other.pt' does not match the TinyNet that model._target_ builds",
        ),
    ],
)
def test_a_bad_checkpoint_names_the_file(tmp_path, checkpoint, message):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save(TinyNet(width=8).state_dict(), tmp_path / "other.pt")
    result = rlprune(tmp_path / "run", *SEARCH, f"model.checkpoint={tmp_path / checkpoint}")
    assert result.returncode == 2
    assert message.format(dir=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr
