"""Filter pruning in the search: couplings from the dependency graph, exact coupled costs, export."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from rlprune.envs import PolicyEvaluator, PruneEnv, SearchProblem, build_space

from rlprune.compress import bake, compress
from rlprune.export import export_filter_pruned
from rlprune.hardware import build_latency_model, network_latency
from rlprune.layers import discover_layers, filter_couplings
from rlprune.models import MNIST1DCNN, MobileNetV2, ResNet20
from rlprune.policy import Pattern
from tests.support import hardware_config, record, shift_batch_norms


def mnist1d() -> tuple[torch.nn.Module, torch.Tensor, list]:
    torch.manual_seed(0)
    model = MNIST1DCNN().eval()
    x = torch.randn(64, 1, 40)
    return model, x, discover_layers(model, x)


def filter_space(model, x, layers, hardware: str = "a100", levels: int = 6):
    device = build_latency_model(hardware_config(hardware))
    couplings = filter_couplings(model, x, layers)
    return build_space(layers, layers, device, "filter", None, levels, 0.1, None, couplings), device


def test_couplings_follow_the_dependency_graph():
    model, x, layers = mnist1d()
    couplings = filter_couplings(model, x, layers)
    assert couplings["conv1"].consumers == (("conv2", 1),)
    # conv4's 128 channels of length 10 are flattened into fc1: 10 inputs per filter
    assert couplings["conv4"].consumers == (("fc1", 10),)
    assert "network's outputs" in couplings["fc2"].blocked

    resnet = ResNet20(in_channels=1, num_classes=10, width=8, dims=2).eval()
    images = torch.randn(2, 1, 8, 8)
    tied = filter_couplings(resnet, images, discover_layers(resnet, images))
    assert tied["stages.0.0.conv1"].blocked is None
    assert tied["stages.0.0.conv1"].consumers == (("stages.0.0.conv2", 1),)
    assert "residual add" in tied["stages.0.0.conv2"].blocked


def test_coupled_costs_equal_the_network_latency():
    model, x, layers = mnist1d()
    space, device = filter_space(model, x, layers)
    # each layer but the first is fed by its predecessor's filters; fc2 (the classifier) is not searched
    assert space.fed == [False, True, True, True, True, True]
    assert [s.pattern for s in space.shapes[-1]] == [Pattern.DENSE] and "fc2" in space.skipped
    rng = np.random.default_rng(0)
    for _ in range(20):
        picks = [(int(rng.integers(len(s))), int(rng.integers(len(space.bits)))) for s in space.shapes]
        expected = network_latency(device, layers, space.policy(picks), space.couplings)
        assert space.seconds(picks) == pytest.approx(expected, rel=1e-12)
    # pruning conv1's filters makes conv2 cheaper: its table rows follow conv1's option
    assert space.latency[1][0].min() < space.latency[1][-1].min()


def test_action_wall_is_exact_under_coupling():
    model, x, layers = mnist1d()
    space, _ = filter_space(model, x, layers, hardware="arm_cpu")
    y = torch.randint(0, 10, (len(x),))
    budget = 0.35
    problem = SearchProblem(space, PolicyEvaluator(model, [lay.name for lay in layers], x, y), budget, 60)
    env = PruneEnv(problem, np.zeros((len(space), 3)))
    outcomes = record(env)
    rng = np.random.default_rng(1)
    while not problem.exhausted:
        env.reset()
        done = False
        while not done:
            _, _, done, _, _ = env.step(rng.uniform(-1, 1, size=env.action_size).astype(np.float32))
    latencies = np.array([o.latency for o in outcomes])
    assert (latencies <= budget + 1e-9).all()
    assert latencies.max() > budget - 0.05  # the wall spends the budget, it does not waste it
    assert any(c.pattern is Pattern.FILTER for o in outcomes for _, c in o.policy)


def test_masked_filters_compute_what_the_export_computes():
    model, x, layers = mnist1d()
    space, _ = filter_space(model, x, layers)
    picks = [(max(0, len(s) - 3), len(space.bits) - 1) for s in space.shapes]
    policy = space.policy(picks)
    assert sum(c.pattern is Pattern.FILTER for _, c in policy) >= 4
    masked = compress(model, policy)
    exported = export_filter_pruned(bake(compress(model, policy)), policy, x)
    assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(exported(x), masked(x), atol=1e-5, rtol=1e-5)


def test_resnet_searches_the_free_convs_and_skips_the_tied_ones():
    resnet = ResNet20(in_channels=1, num_classes=10, width=8, dims=2).eval()
    images = torch.randn(2, 1, 8, 8)
    layers = discover_layers(resnet, images)
    space, _ = filter_space(resnet, images, layers)
    names = [lay.name for lay in layers]
    for i, name in enumerate(names):
        has_filter = any(s.pattern is Pattern.FILTER for s in space.shapes[i])
        assert has_filter == name.endswith(".conv1"), name
        if has_filter:
            assert space.fed[i + 1] and names[i + 1] == name.replace("conv1", "conv2")
    assert "tied" in space.skipped["stages.1.0.conv2"]


@pytest.mark.slow
def test_cli_searches_filters_on_the_measured_table_and_reuses_it(tmp_path):
    overrides = [
        "hardware=local_cpu",
        "hardware.rounds=1",
        "hardware.block_time=0.0001",
        "hardware.progress=false",  # search.pattern=auto: the measured CPU searches filters
        "search.levels=4",
        "search.evaluations=20",
        "budget.latency=0.6",
        "finetune.epochs=1",
        "dense.epochs=3",
        "progress_bar=false",
        "wandb.mode=disabled",
    ]
    runs = []
    for name in ("first", "second"):
        run_dir = tmp_path / name
        result = subprocess.run(
            [sys.executable, "-m", "rlprune", f"hydra.run.dir={run_dir}", *overrides],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
        runs.append((json.loads((run_dir / "report.json").read_text()), result.stdout + result.stderr))
    (first, first_log), (second, second_log) = runs
    assert first["hardware"] == "local_cpu" and first["latency"] <= 0.6 + 1e-9
    assert any(row["pattern"] == "filter" for row in first["layers"])
    assert "local_cpu: measured" in first_log and "local_cpu: measured" not in second_log  # from the cache
    assert second["layers"] == first["layers"]
    smaller = torch.load(tmp_path / "first" / "model_pruned.pt", weights_only=False)
    assert first["export"]["params"] == sum(p.numel() for p in smaller.parameters())
    assert first["export"]["params"] < first["export"]["dense_params"]
    with torch.no_grad():
        assert smaller(torch.randn(2, 1, 40)).shape == (2, 10)


def test_pruned_filters_silence_their_batch_norm_as_the_export_removes_it():
    torch.manual_seed(0)
    resnet = shift_batch_norms(ResNet20(in_channels=1, num_classes=10, width=8, dims=2).eval())
    images = torch.randn(4, 1, 8, 8)
    layers = discover_layers(resnet, images)
    space, _ = filter_space(resnet, images, layers)
    assert space.couplings["stages.0.0.conv1"].norms == (("stages.0.0.bn1", 0),)
    picks = [(0, len(space.bits) - 1) for _ in space.shapes]  # sparsest option everywhere
    policy = space.policy(picks)
    assert sum(c.pattern is Pattern.FILTER for _, c in policy) == 9
    masked = compress(resnet, policy, couplings=space.couplings)
    exported = export_filter_pruned(bake(compress(resnet, policy, couplings=space.couplings)), policy, images)
    with torch.no_grad():
        torch.testing.assert_close(exported(images), masked(images), atol=1e-5, rtol=1e-5)
        # without the couplings the batch norms' shifts survive, and the two differ
        assert not torch.allclose(compress(resnet, policy)(images), exported(images), atol=1e-3)


def mobilenet() -> tuple[torch.nn.Module, torch.Tensor, list]:
    torch.manual_seed(0)
    model = shift_batch_norms(MobileNetV2(in_channels=3, num_classes=10, dims=2).eval())
    images = torch.randn(4, 3, 32, 32)
    return model, images, discover_layers(model, images)


def test_depthwise_convs_follow_the_filters_that_feed_them():
    model, images, layers = mobilenet()
    space, device = filter_space(model, images, layers)
    expand, depthwise = "blocks.1.expand", "blocks.1.depthwise"
    assert space.couplings[expand].blocked is None
    assert space.couplings[expand].followers == (depthwise,)
    assert "depthwise" in space.couplings[depthwise].blocked
    # the depthwise conv is no step of its own: the expand conv's step decides and costs both
    assert space.followers[expand] == (depthwise,) and depthwise in space.skipped
    steps = [lay.name for lay in space.layers]
    assert depthwise not in steps and steps[steps.index(expand) + 1] == "blocks.1.project"
    searched = [lay.name for lay, shapes in zip(space.layers, space.shapes, strict=True) if len(shapes) > 1]
    assert sum(name.endswith("expand") for name in searched) == 7
    rng = np.random.default_rng(0)
    for _ in range(20):
        picks = [(int(rng.integers(len(s))), int(rng.integers(len(space.bits)))) for s in space.shapes]
        policy = space.policy(picks)
        assert policy.get(depthwise).w_bits == policy.get(expand).w_bits
        expected = network_latency(device, layers, policy, space.couplings)
        assert space.seconds(picks) == pytest.approx(expected, rel=1e-12)
    # the sparsest expand option also thins its depthwise conv: both show in the network's seconds
    sparsest = space.policy([(0, 0)] * len(space))
    assert sparsest.get(expand).pattern is Pattern.FILTER
    thin = network_latency(device, layers, sparsest, space.couplings)
    alone = network_latency(
        device, layers, sparsest, {k: replace(c, followers=()) for k, c in space.couplings.items()}
    )
    assert thin < alone
