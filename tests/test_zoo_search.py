"""Quick searches of the zoo's residual, inverted-residual, concatenating, plain and ViT-style models.

Each searches filters and N:M on the A100 model and finishes with a valid policy and report; a
filter policy's exported network computes what the masked one does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rlprune.envs import SpaceSettings, build_space

from rlprune import api
from rlprune.compress import bake, compress
from rlprune.export import export_filter_pruned
from rlprune.hardware import build_latency_model, network_latency
from rlprune.layers import discover_layers, filter_couplings
from rlprune.models import VGG, DenseNet, MobileNetV2, ResNet20, ViT
from tests.support import compose_config, hardware_config, shift_batch_norms

ZOO = ["resnet20", "mobilenetv2", "densenet", "vit", "vgg"]
QUICK = ["data=digits", "dense.epochs=6", "search.evaluations=12", "finetune.epochs=1", "hardware=a100"]
QUICK += ["wandb.mode=disabled", "progress_bar=false"]
# At FP16 alone only fewer filters reach 0.95 (every zoo model can); N:M runs at any bits,
# since on these small inputs 2:4 alone barely moves the A100 model's latency.
SETTINGS = {"filter": ["search.bits=[16]", "budget.latency=0.95"], "nm": ["budget.latency=0.9"]}


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["filter", "nm"])
@pytest.mark.parametrize("model", ZOO)
def test_a_quick_search_finishes_with_a_valid_policy(tmp_path, model, pattern):
    cfg = compose_config(f"model={model}", f"search.pattern={pattern}", *QUICK, *SETTINGS[pattern])
    report = api.run(cfg, tmp_path)
    assert report["latency"] <= cfg.budget.latency + 1e-9
    assert json.loads((tmp_path / "report.json").read_text())["layers"] == report["layers"]
    assert {row["pattern"] for row in report["layers"]} <= {pattern, "dense"}
    assert len(report["skipped"]) < len(report["layers"])  # the pattern fits some layers
    if pattern == "filter":
        assert any(row["pattern"] == "filter" for row in report["layers"])
        smaller = torch.load(tmp_path / "model_pruned.pt", weights_only=False)
        assert report["export"]["params"] == sum(p.numel() for p in smaller.parameters())
        assert report["export"]["params"] < report["export"]["dense_params"]
        with torch.no_grad():
            assert smaller(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def zoo_model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """An untrained zoo model (or a plain MLP) on CIFAR-sized inputs, batch norms shifted so pruned
    channels show."""
    torch.manual_seed(0)
    build = {
        "resnet20": lambda: ResNet20(in_channels=3, num_classes=10, width=8, dims=2),
        "mobilenetv2": lambda: MobileNetV2(in_channels=3, num_classes=10, dims=2),
        "densenet": lambda: DenseNet(in_channels=3, num_classes=10, dims=2),
        "vit": lambda: ViT(in_channels=3, num_classes=10, dims=2, image_size=32, patch=4),
        "vgg": lambda: VGG(in_channels=3, num_classes=10, dims=2),
        "mlp": lambda: torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(3 * 32 * 32, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        ),
    }
    return shift_batch_norms(build[name]().eval()), torch.randn(4, 3, 32, 32)


@pytest.mark.parametrize("name", [*ZOO, "mlp"])
def test_exported_filter_policies_compute_what_the_masked_network_does(name):
    model, images = zoo_model(name)
    layers = discover_layers(model, images)
    device = build_latency_model(hardware_config("a100"))
    couplings = filter_couplings(model, images, layers)
    space = build_space(layers, layers, device, SpaceSettings("filter", levels=6, min_density=0.1), couplings)
    assert any(len(shapes) > 1 for shapes in space.shapes)  # something to search
    for seed in range(3):
        rng = np.random.default_rng(seed)
        picks = [(int(rng.integers(len(s))), len(space.bits) - 1) for s in space.shapes]
        policy = space.policy(picks)
        assert space.seconds(picks) == pytest.approx(
            network_latency(device, layers, policy, couplings), rel=1e-12
        )
        masked = compress(model, policy, couplings=couplings)
        exported = export_filter_pruned(bake(compress(model, policy, couplings=couplings)), policy, images)
        with torch.no_grad():
            torch.testing.assert_close(exported(images), masked(images), atol=1e-5, rtol=1e-5)
