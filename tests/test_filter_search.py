"""Filter pruning in the search: couplings from the dependency graph, exact coupled costs, export."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from rlprune.agents.baselines import play
from rlprune.envs import PolicyEvaluator, PruneEnv, SearchProblem, SpaceSettings, build_space
from rlprune.envs import costs as costs_module

from rlprune.compress import bake, compress
from rlprune.data import Splits
from rlprune.errors import ConfigError
from rlprune.export import export_filter_pruned
from rlprune.finetune import FinetuneSettings, finetune
from rlprune.hardware import build_latency_model, network_latency
from rlprune.layers import discover_layers, filter_couplings
from rlprune.models import MNIST1DCNN, DenseNet, MobileNetV2, ResNet20
from rlprune.policy import Choice, Pattern, Policy
from rlprune.report import layer_rows
from rlprune.training import TrainSettings
from tests.support import hardware_config, record, shift_batch_norms


def mnist1d() -> tuple[torch.nn.Module, torch.Tensor, list]:
    torch.manual_seed(0)
    model = MNIST1DCNN().eval()
    x = torch.randn(64, 1, 40)
    return model, x, discover_layers(model, x)


def filters(levels: int) -> SpaceSettings:
    """Filter pruning at ``levels`` densities from 0.1 to 1."""
    return SpaceSettings("filter", levels=levels, min_density=0.1)


def filter_space(model, x, layers, hardware: str = "a100", levels: int = 6, channel_multiple: int = 1):
    """The filter space on ``hardware`` keeping any count of channels, unless ``channel_multiple`` says."""
    device = build_latency_model({**hardware_config(hardware), "channel_multiple": channel_multiple})
    couplings = filter_couplings(model, x, layers)
    return build_space(layers, layers, device, filters(levels), couplings), device


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
    # each step but the first also costs the layer its predecessor's filters feed: its seconds
    # depend on both options; fc2 (the classifier) keeps its outputs
    assert [c.axes for c in space.costs] == [(0, 1)] + [(2 * i - 2, 2 * i, 2 * i + 1) for i in range(1, 6)]
    assert [s.pattern for s in space.shapes[-1]] == [Pattern.DENSE] and "fc2" in space.skipped
    rng = np.random.default_rng(0)
    for _ in range(20):
        picks = [(int(rng.integers(len(s))), int(rng.integers(len(space.bits)))) for s in space.shapes]
        expected = network_latency(device, layers, space.policy(picks), space.couplings)
        assert space.seconds(picks) == pytest.approx(expected, rel=1e-12)
    # pruning conv1's filters makes conv2 cheaper: its table's first axis is conv1's option
    assert space.costs[1].table[0].min() < space.costs[1].table[-1].min()


def test_precision_switches_cost_the_same_in_the_space_as_in_the_network():
    # a measured table charges each float/int8 switch between consecutive layers; the space
    # holds it as a table over two steps' bits (fc2, not searched, runs the reference FP16)
    model, x, layers = mnist1d()
    device = build_latency_model(hardware_config("a100"))
    couplings = filter_couplings(model, x, layers)
    plain = build_space(layers, layers[:-1], device, filters(4), couplings)
    device.switch_seconds = 1e-5
    space = build_space(layers, layers[:-1], device, filters(4), couplings)
    assert space.bits == (4, 8, 16)
    rng = np.random.default_rng(0)
    for _ in range(20):
        picks = [(int(rng.integers(len(s))), int(rng.integers(len(space.bits)))) for s in space.shapes]
        policy = space.policy(picks)
        expected = network_latency(device, layers, policy, couplings)
        assert space.seconds(picks) + space.fixed_latency == pytest.approx(expected, rel=1e-12)
        floats = [space.bits[b] == 16 for _, b in picks] + [True]  # fc2 at the reference
        switches = sum(a != b for a, b in itertools.pairwise(floats))
        assert space.seconds(picks) - plain.seconds(picks) == pytest.approx(1e-5 * switches, rel=1e-9)


@pytest.mark.parametrize("searched", [6, 5], ids=["all searched", "fc2 at the reference"])
def test_a_network_that_mixes_float_and_int8_pays_once_in_the_space_as_in_the_network(searched):
    # a measured table charges a network whose layers run both float and int8 once more
    # (mixed_seconds); the space charges it to the step that first mixes them, and the wall,
    # the cheapest policy and the network sum stay exact
    model, x, layers = mnist1d()
    device = build_latency_model(hardware_config("a100"))
    couplings = filter_couplings(model, x, layers)
    device.switch_seconds, device.mixed_seconds = 1e-6, 2e-5
    settings = SpaceSettings("filter", bits=[8, 16], levels=2, min_density=0.3, nm_pad=False)
    space = build_space(layers, layers[:searched], device, settings, couplings)
    picks_all = list(itertools.product(*[itertools.product(range(len(s)), range(2)) for s in space.shapes]))
    fixed = [] if searched == 6 else [False]  # fc2 at the reference FP16
    for picks in picks_all[:: len(picks_all) // 40]:
        policy = space.policy(picks)
        expected = network_latency(device, layers, policy, couplings)
        assert space.seconds(picks) + space.fixed_latency == pytest.approx(expected, rel=1e-12)
        kinds = {space.bits[b] == 8 for _, b in picks} | set(fixed)
        device.mixed_seconds = 0.0
        plain = network_latency(device, layers, policy, couplings)
        device.mixed_seconds = 2e-5
        assert expected - plain == pytest.approx(2e-5 * (len(kinds) > 1), abs=1e-12)
    latencies = [space.policy_latency(picks) for picks in picks_all]
    assert space.cheapest() == pytest.approx(min(latencies), rel=1e-12)
    for budget in np.quantile(latencies, [0.02, 0.3, 0.7]):
        outcomes = random_episodes(model, x, layers, space, float(budget), 30, seed=2)
        assert max(o.latency for o in outcomes) <= budget + 1e-9


def random_episodes(
    model, x, layers, space, budget: float, episodes: int, seed: int, wall: str = "band"
) -> list:
    """The outcomes of ``episodes`` random episodes through the action wall."""
    y = torch.randint(0, 10, (len(x),))
    evaluator = PolicyEvaluator(model, [lay.name for lay in layers], x, y, couplings=space.couplings)
    problem = SearchProblem(space, evaluator, budget, episodes)
    env = PruneEnv(problem, np.zeros((len(space), 3)), wall=wall)
    outcomes = record(env)
    rng = np.random.default_rng(seed)
    while not problem.exhausted:
        play(env, rng)
    return outcomes


def test_action_wall_is_exact_under_coupling():
    model, x, layers = mnist1d()
    space, _ = filter_space(model, x, layers, hardware="arm_cpu")
    budget = 0.35
    outcomes = random_episodes(model, x, layers, space, budget, 60, seed=1)
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


def test_masks_downstream_of_pruned_filters_keep_their_pattern_in_the_exported_layers():
    # fc1 reads conv4's 128 filters flattened, 10 inputs each; conv2 reads conv1's filters
    from rlprune.compress import policy_masks, removed_inputs
    from rlprune.cuda.kernels import is_two_four
    from rlprune.hardware.base import effective_cells
    from rlprune.masks.views import weight_view

    model, x, layers = mnist1d()
    couplings = filter_couplings(model, x, layers)
    two_four = Choice(Pattern.NM, 2, 4, 8, 8)
    policy = Policy.of(
        {
            "conv1": Choice(Pattern.FILTER, 21, 32, 8, 8),
            "conv2": Choice(Pattern.NM, 1, 2, 8, 8),
            "conv4": Choice(Pattern.FILTER, 77, 128, 8, 8),
            "fc1": two_four,
        }
    )
    masks = policy_masks(model, policy, pad=True, couplings=couplings)
    removed = removed_inputs(policy, masks, couplings)
    effective = {
        lay.name: lay
        for lay, _ in effective_cells(layers, [policy.get(lay.name, Choice()) for lay in layers], couplings)
    }
    for name, layer in ((n, model.get_submodule(n)) for n in ("conv2", "fc1")):
        inputs = layer.weight.shape[1]
        assert len(removed[name]) == inputs - effective[name].in_channels > 0
        assert not masks[name][:, removed[name]].any()  # the removed inputs' weights go too
    exported = export_filter_pruned(bake(compress(model, policy, couplings=couplings)), policy, x)
    fc1 = exported.get_submodule("fc1").weight
    assert fc1.shape[1] == 770 and is_two_four(fc1[:, :768])  # 77 filters of 10 inputs, 2 padded
    conv2 = weight_view(exported.get_submodule("conv2").weight)  # runs of 2 input channels
    assert conv2.shape[1] == 21 * 3 and ((conv2[:, :62].reshape(64, 31, 2) != 0).sum(-1) <= 1).all()
    with torch.no_grad():  # the export computes what was masked: nothing had to be pruned again
        torch.testing.assert_close(
            exported(x), compress(model, policy, couplings=couplings)(x), atol=1e-5, rtol=1e-5
        )
    # the evaluator keeps a mask per upstream filter choice: fewer conv4 filters, another fc1 mask
    y = torch.zeros(len(x), dtype=torch.long)
    evaluator = PolicyEvaluator(model, [lay.name for lay in layers], x, y, couplings=couplings)
    for keep in (77, 50):
        other = Policy.of({**dict(policy.choices), "conv4": Choice(Pattern.FILTER, keep, 128, 8, 8)})
        evaluator(other)
        want = policy_masks(model, other, pad=True, couplings=couplings)["fc1"]
        got = evaluator.model.get_submodule("fc1").parametrizations.weight[0].mask
        assert torch.equal(got, want)


def test_resnet_decides_the_convs_tied_by_residual_adds_as_one_step():
    resnet = ResNet20(in_channels=1, num_classes=10, width=8, dims=2).eval()
    images = torch.randn(2, 1, 8, 8)
    layers = discover_layers(resnet, images)
    space, device = filter_space(resnet, images, layers)
    steps = [[m.name for m in members] for members in space.members]
    stage = [f"stages.{s}.{b}.conv2" for s in range(3) for b in range(3)]
    assert steps[0] == ["stem", *stage[:3]]
    assert ["stages.1.0.conv2", "stages.1.0.shortcut.0", *stage[4:6]] in steps
    assert ["stages.2.0.conv2", "stages.2.0.shortcut.0", *stage[7:]] in steps
    assert [name for name in steps if len(name) == 1] == [
        [f"stages.{s}.{b}.conv1"] for s in range(3) for b in range(3)
    ] + [["fc"]]
    assert list(space.skipped) == ["fc"]  # every conv is searched; the classifier keeps its outputs
    for i, members in enumerate(steps[:-1]):
        assert any(s.pattern is Pattern.FILTER for s in space.shapes[i]), members
    # one option for the whole group: the stage's convs keep the same filters, and the convs that
    # read the stage (the next conv1s, the shortcut) get cheaper with it
    policy = space.policy(
        [(0, len(space.bits) - 1)] + [(len(s) - 1, len(space.bits) - 1) for s in space.shapes[1:]]
    )
    assert {policy.get(name) for name in steps[0]} == {space.shapes[0][0].choice(space.bits[-1])}
    thinned = network_latency(device, layers, policy, space.couplings)
    assert thinned < network_latency(device, layers, {name: policy.get(name) for name in steps[0]}, {})
    masks = compress(resnet, policy, couplings=space.couplings)
    kept = [masks.get_submodule(name).kept_filters.kept for name in steps[0]]
    assert all(torch.equal(k, kept[0]) for k in kept) and 0 < int(kept[0].sum()) < 8
    # the report numbers the step that decided each layer: a group's layers share one
    rows = layer_rows(layers, policy, device, space.skipped, couplings=space.couplings, steps=space.step_of)
    step = {row["layer"]: row["step"] for row in rows}
    assert [[step[name] for name in members] for members in steps] == [
        [i] * len(members) for i, members in enumerate(steps)
    ]
    assert len(step) == len(layers) and step["fc"] == len(space) - 1


@pytest.mark.slow
def test_cli_searches_filters_on_the_measured_table_and_reuses_it(tmp_path):
    # the cheapest reachable latency is the CPU's: 0.49 of dense on one machine, 0.61 on another
    # (narrow layers are dispatch-bound), so the budget leaves room for either
    budget = 0.8
    overrides = [
        "hardware=local_cpu",
        "hardware.rounds=1",
        "hardware.retries=0",
        "hardware.block_time=0.0001",
        "hardware.progress=false",  # search.pattern=auto: the measured CPU searches filters
        "search.levels=4",
        "search.evaluations=20",
        # PPO from the middle of the action box asks for about half the filters; warm-started from
        # the best uniform policy it kept every filter once (where int8 alone meets the budget),
        # and this test is about removing them
        "agent.warm_start=false",
        "agent.refine=0.0",
        f"budget.latency={budget}",
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
    assert first["hardware"] == "local_cpu" and first["latency"] <= budget + 1e-9
    assert any(row["pattern"] == "filter" for row in first["layers"])
    assert "local_cpu: measured" in first_log and "local_cpu: measured" not in second_log  # from the cache
    assert second["layers"] == first["layers"]
    smaller = torch.load(tmp_path / "first" / "model_pruned.pt", weights_only=False)
    assert first["export"]["params"] == sum(p.numel() for p in smaller.parameters())
    assert first["export"]["params"] < first["export"]["dense_params"]
    with torch.no_grad():
        assert smaller(torch.randn(2, 1, 40)).shape == (2, 10)
    # the policy deployed as the table costs it: TorchScript, int8 where the policy runs 8 bits
    deployed = first["deployed"]
    loaded = torch.jit.load(tmp_path / "first" / deployed["model"])
    assert loaded(torch.randn(2, 1, 40)).shape == (2, 10)
    int8 = [row["layer"] for row in first["layers"] if row["w_bits"] == 8]
    assert deployed["int8_layers"] == int8
    assert ("quantized::" in str(loaded.graph)) is bool(int8)
    assert deployed["measured_latency"] > 0 and deployed["deployed_seconds"] > 0
    # torch.ao rounds as the finetune's simulation nearly does
    tuned = first["accuracy"]["pruned_test_after_finetune"]
    assert deployed["test_accuracy"] == pytest.approx(tuned, abs=0.05)


def test_pruned_filters_silence_their_batch_norm_as_the_export_removes_it():
    torch.manual_seed(0)
    resnet = shift_batch_norms(ResNet20(in_channels=1, num_classes=10, width=8, dims=2).eval())
    images = torch.randn(4, 1, 8, 8)
    layers = discover_layers(resnet, images)
    space, _ = filter_space(resnet, images, layers)
    assert space.couplings["stages.0.0.conv1"].norms == (("stages.0.0.bn1", 0),)
    picks = [(0, len(space.bits) - 1) for _ in space.shapes]  # sparsest option everywhere
    policy = space.policy(picks)
    assert sum(c.pattern is Pattern.FILTER for _, c in policy) == len(layers) - 1  # all but fc
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
    steps = [lay.name for lay in space.layers]
    assert space.followers[steps.index(expand)] == (depthwise,) and depthwise in space.skipped
    assert depthwise not in steps and steps[steps.index(expand) + 1] == "blocks.1.project"
    assert space.step_of[depthwise] == space.step_of[expand] == steps.index(expand)  # as reported
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


def test_a_depthwise_conv_and_its_reader_are_masked_on_the_channels_the_expand_conv_keeps():
    from rlprune.compress import policy_masks
    from rlprune.masks.views import weight_view

    model, images, layers = mobilenet()
    couplings = filter_couplings(model, images, layers)
    expand = model.get_submodule("blocks.1.expand")
    policy = Policy.of(
        {
            "blocks.1.expand": Choice(Pattern.FILTER, 37, expand.out_channels, 8, 8),
            "blocks.1.depthwise": Choice(Pattern.UNSTRUCTURED, 1, 2, 8, 8),
            "blocks.1.project": Choice(Pattern.NM, 2, 4, 8, 8),
        }
    )
    masks = policy_masks(model, policy, pad=True, couplings=couplings)
    kept = masks["blocks.1.expand"].flatten(1).any(1)
    depthwise = masks["blocks.1.depthwise"]
    assert not depthwise[~kept].any()  # the removed channels are its rows
    assert depthwise[kept].sum() == depthwise[kept].numel() // 2  # half of what stays
    exported = export_filter_pruned(bake(compress(model, policy, couplings=couplings)), policy, images)
    project = weight_view(exported.get_submodule("blocks.1.project").weight)
    assert project.shape[1] == 37 and ((project[:, :36].reshape(len(project), 9, 4) != 0).sum(-1) <= 2).all()
    with torch.no_grad():
        torch.testing.assert_close(
            exported(images), compress(model, policy, couplings=couplings)(images), atol=1e-4, rtol=1e-4
        )


def resnet() -> tuple[torch.nn.Module, torch.Tensor, list]:
    torch.manual_seed(0)
    model = shift_batch_norms(ResNet20(in_channels=1, num_classes=10, width=8, dims=2).eval())
    images = torch.randn(32, 1, 8, 8)
    return model, images, discover_layers(model, images)


@pytest.mark.parametrize("wall", ["band", "feasible"])
def test_action_wall_is_exact_when_tied_groups_and_their_readers_interleave(wall):
    # a stage's group is decided before the conv1s that read it and the conv2s that join it: the
    # wall's bounds must carry the group's option and bits through those steps
    model, images, layers = resnet()
    space, _ = filter_space(model, images, layers, hardware="arm_cpu")
    assert max(len(c.axes) for c in space.costs) >= 4  # some step depends on two earlier decisions
    budget = 0.5
    latencies = np.array(
        [o.latency for o in random_episodes(model, images, layers, space, budget, 40, 2, wall)]
    )
    assert (latencies <= budget + 1e-9).all()
    if wall == "band":  # the wall spends the budget, it does not waste it
        assert latencies.max() > budget - 0.01
    assert space.cheapest() < budget


def test_tied_layers_must_share_their_filter_choice():
    model, images, layers = resnet()
    space, _ = filter_space(model, images, layers)
    policy = space.policy(
        [(0, len(space.bits) - 1)] + [(len(s) - 1, len(space.bits) - 1) for s in space.shapes[1:]]
    )
    split = Policy.of({**dict(policy.choices), "stages.0.1.conv2": Choice()})
    with pytest.raises(ConfigError, match=r"'stem' prunes filters .* tied to it by a residual add"):
        compress(model, split, couplings=space.couplings)


def test_the_evaluator_and_the_finetune_keep_tied_filters_together():
    model, images, layers = resnet()
    space, _ = filter_space(model, images, layers)
    rng = np.random.default_rng(0)
    picks = [(int(rng.integers(len(s) - 1)), len(space.bits) - 1) for s in space.shapes[:-1]] + [(0, 0)]
    policy = space.policy(picks)
    y = torch.randint(0, 10, (len(images),))
    evaluator = PolicyEvaluator(model, [lay.name for lay in layers], images, y, couplings=space.couplings)
    evaluator(space.policy([(0, 0)] * len(space)))  # masks of another option first: the cache keys differ
    evaluator(policy)
    splits = Splits(images, y, images[:8], y[:8], images[:8], y[:8], num_classes=10)
    tuned = FinetuneSettings(
        train=TrainSettings(epochs=2, lr=1e-2, batch_size=8),
        srste_decay=2e-4,
        refresh_steps=2,
        gap_partitions=2,
    )
    result = finetune(model, policy, layers, splits, tuned, seed=0, couplings=space.couplings)
    for members in space.members:
        for network in (evaluator.model, result.model):
            kept = [network.get_submodule(m.name).kept_filters.kept for m in members]
            assert all(torch.equal(k, kept[0]) for k in kept), [m.name for m in members]
    assert any("sad" in row for row in result.metrics.values())
    with torch.no_grad():  # what the search scored is what the export computes
        exported = export_filter_pruned(
            bake(compress(model, policy, couplings=space.couplings)), policy, images
        )
        torch.testing.assert_close(exported(images), evaluator.model(images), atol=1e-4, rtol=1e-4)


def test_a_step_whose_filters_are_read_too_far_down_gives_them_up(monkeypatch):
    torch.manual_seed(0)
    model = DenseNet(in_channels=3, num_classes=10, dims=2, blocks=(4,)).eval()
    images = torch.randn(2, 3, 16, 16)
    layers = discover_layers(model, images)
    full, device = filter_space(model, images, layers)
    widest = max(c.table.size for c in full.costs)
    monkeypatch.setattr(costs_module, "MAX_TABLE", widest // 8)
    small, _ = filter_space(model, images, layers)
    given_up = {name: why for name, why in small.skipped.items() if "table of" in why}
    assert given_up and "features.0.conv" in given_up  # the block's first layer is read by all the others
    assert max(c.table.size for c in small.costs) <= widest // 8
    rng = np.random.default_rng(0)
    for _ in range(5):
        picks = [(int(rng.integers(len(s))), int(rng.integers(len(small.bits)))) for s in small.shapes]
        expected = network_latency(device, layers, small.policy(picks), small.couplings)
        assert small.seconds(picks) == pytest.approx(expected, rel=1e-12)


class ConcatMeetsAdd(torch.nn.Module):
    """Two convs concatenated and added to a third: their channels are tied at offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c = torch.nn.Conv2d(3, 8, 1)
        self.d = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.a(x), self.b(x)], 1) + self.c(x)
        return self.fc(self.d(torch.relu(x)).mean((2, 3)))


def test_channels_tied_at_an_offset_are_not_searched():
    torch.manual_seed(0)
    model, images = ConcatMeetsAdd().eval(), torch.randn(2, 3, 8, 8)
    layers = discover_layers(model, images)
    space, _ = filter_space(model, images, layers)
    for name in ("a", "b", "c"):
        assert "other indices" in space.skipped[name]
    assert [[m.name for m in members] for members in space.members] == [["a"], ["b"], ["c"], ["d"], ["fc"]]
    assert any(s.pattern is Pattern.FILTER for s in space.shapes[3])  # d feeds fc alone


class Grouped(torch.nn.Module):
    """A conv feeding a grouped conv (2 groups), then a 1x1 conv and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.g = torch.nn.Conv2d(8, 16, 3, padding=1, groups=2)
        self.d = torch.nn.Conv2d(16, 8, 1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.d(torch.relu(self.g(torch.relu(self.a(x))))).mean((2, 3)))


def test_grouped_convs_keep_their_groups_equal():
    torch.manual_seed(0)
    model, images = Grouped().eval(), torch.randn(2, 3, 8, 8)
    layers = discover_layers(model, images)
    space, _ = filter_space(model, images, layers)
    assert "grouped conv(s) ['g']" in space.skipped["a"] and "2 groups" in space.skipped["g"]
    assert "d" not in space.skipped
    rng = np.random.default_rng(0)
    for _ in range(3):
        policy = space.policy([(int(rng.integers(len(s))), len(space.bits) - 1) for s in space.shapes])
        exported = export_filter_pruned(bake(compress(model, policy)), policy, images)
        with torch.no_grad():
            torch.testing.assert_close(
                exported(images), compress(model, policy)(images), atol=1e-5, rtol=1e-5
            )
    device = build_latency_model(hardware_config("a100"))
    nm = build_space(layers, layers, device, SpaceSettings("nm", levels=6, min_density=0.1, nm_pad=False))
    assert "g" not in nm.skipped  # its reduction, 4 channels x 3 x 3, takes 2:4
    policy = nm.policy([(0, len(nm.bits) - 1)] * len(nm))
    assert policy.get("g").pattern is Pattern.NM
    assert torch.isfinite(compress(model, policy)(images)).all()


@pytest.mark.parametrize("network", [mnist1d, mobilenet])
def test_picks_of_undoes_policy_with_tied_layers_and_followers(network):
    model, x, layers = network()
    space, _ = filter_space(model, x, layers)
    rng = np.random.default_rng(0)
    for _ in range(20):
        picks = [(int(rng.integers(len(s))), int(rng.integers(len(space.bits)))) for s in space.shapes]
        assert space.picks_of(space.policy(picks)) == picks


def _costed_space(network: str):
    """A filter space of ResNet-20 or MobileNetV2 (tied filters, followers), or of the MNIST-1D
    CNN on a device that charges for mixing float and int8 (``mixed``)."""
    model, x, layers = {"resnet": resnet, "mobilenet": mobilenet, "mixed": mnist1d}[network]()
    device = build_latency_model(hardware_config("a100"))
    if network == "mixed":
        device.switch_seconds, device.mixed_seconds = 1e-6, 2e-5
    couplings = filter_couplings(model, x, layers)
    settings = SpaceSettings("filter", bits=[8, 16], levels=4, min_density=0.3, nm_pad=False)
    space = build_space(layers, layers, device, settings, couplings)
    return space


@pytest.mark.parametrize("network", ["resnet", "mobilenet", "mixed"])
def test_step_seconds_read_from_the_factors_equal_each_steps_table(network):
    # step_seconds reads each factor at the policy directly; it must give what the wall sees,
    # each step's table once the steps before it are decided (mixed: the first to mix pays)
    space = _costed_space(network)
    rng = np.random.default_rng(0)
    for _ in range(30):
        picks = [(int(rng.integers(len(s))), int(rng.integers(len(space.bits)))) for s in space.shapes]
        expected = [space.table(i, picks)[picks[i]] for i in range(len(space))]
        assert space.step_seconds(picks) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("network", ["resnet", "mobilenet", "mixed"])
def test_seconds_changed_at_one_step_equal_the_seconds_of_each_changed_policy(network):
    # seconds_changed reads only the factors of the changed step; it must give what seconds()
    # gives the whole changed policy, tied filters, followers and the mixing charge included
    space = _costed_space(network)
    rng = np.random.default_rng(0)
    for _ in range(10):
        picks = [(int(rng.integers(len(s))), int(rng.integers(len(space.bits)))) for s in space.shapes]
        changes = [
            (i, (o, b))
            for i, s in enumerate(space.shapes)
            for o in range(len(s))
            for b in range(len(space.bits))
        ]
        expected = [space.seconds([*picks[:i], pick, *picks[i + 1 :]]) for i, pick in changes]
        assert space.seconds_changed(picks, changes) == pytest.approx(expected, rel=1e-12, abs=0)


def test_gpu_profiles_keep_filters_in_multiples_of_eight():
    model, x, layers = mnist1d()
    couplings = filter_couplings(model, x, layers)
    for name in ("a100", "h100", "h200", "jetson_orin"):
        assert build_latency_model(hardware_config(name)).channel_multiple == 8, name
    space = build_space(layers, layers, build_latency_model(hardware_config("h200")), filters(6), couplings)
    keeps = [(s.keep, s.group) for shapes in space.shapes for s in shapes if s.pattern == Pattern.FILTER]
    assert keeps and all(keep % 8 == 0 and keep < group for keep, group in keeps)
    free, _ = filter_space(model, x, layers, "h200")
    assert any(s.keep % 8 for shapes in free.shapes for s in shapes if s.pattern == Pattern.FILTER)


def test_a_layer_with_no_smaller_multiple_of_eight_stays_dense_and_says_why():
    resnet = ResNet20(in_channels=1, num_classes=10, width=8, dims=2).eval()
    images = torch.randn(2, 1, 8, 8)
    layers = discover_layers(resnet, images)
    space, _ = filter_space(resnet, images, layers, "h200", channel_multiple=8)
    first = space.layers[0]  # 8 channels tied through the first stage's residual adds
    assert first.out_channels == 8 and [s.pattern for s in space.shapes[0]] == [Pattern.DENSE]
    assert "no smaller multiple of 8" in space.skipped[first.name]
