"""The finetune stage: every mask family applies, trains, and keeps its pattern's invariants."""

import pytest
import torch

from rlprune.compress import bake, policy_masks, weight_parametrization
from rlprune.data import Splits
from rlprune.errors import ConfigError
from rlprune.finetune import FinetuneSettings, finetune, finetune_policy
from rlprune.layers import discover_layers, filter_couplings
from rlprune.masks import weight_view
from rlprune.models import MNIST1DCNN
from rlprune.policy import Choice, Pattern, Policy
from rlprune.training import TrainSettings, kl_divergence


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = MNIST1DCNN(channels=(8, 16, 16, 16), hidden=16).eval()
    x, y = torch.randn(96, 1, 40), torch.randint(0, 10, (96,))
    splits = Splits(x, y, x[:32], y[:32], x[:32], y[:32], num_classes=10)
    layers = discover_layers(model, x)
    policy = Policy.of(
        {
            layer.name: Choice(Pattern.KOFN_WEIGHT, max(1, layer.reduction // 2), layer.reduction, 8, 8)
            for layer in layers
        }
    )
    return model, splits, layers, policy


def settings(**kwargs) -> FinetuneSettings:
    return FinetuneSettings(train=TrainSettings(epochs=2, lr=1e-3, batch_size=32, weight_decay=0.0), **kwargs)


def kept_per_row(weight: torch.Tensor) -> torch.Tensor:
    return (weight.reshape(weight.shape[0], -1) != 0).sum(1)


def test_policy_masks_survive_training_exactly(setup):
    model, splits, layers, policy = setup
    result = finetune(model, policy, layers, splits, settings(), seed=0)
    baked = bake(result.model)
    for name, choice in policy:
        assert (kept_per_row(baked.get_submodule(name).weight) <= choice.keep).all()
    assert all(m["log10_mask_diversity"] > 0 for m in result.metrics.values())


def test_nm_recast_with_srste_refresh_keeps_n_of_m_and_logs_sad(setup):
    model, splits, layers, policy = setup
    result = finetune(
        model, policy, layers, splits, settings(mask="nm", srste_decay=2e-4, refresh_steps=2), seed=0
    )
    assert result.kept == {"conv1": "shape 8x5 does not divide into 2:4 groups"}
    assert all(result.metrics[name]["sad"] >= 0 for name, c in result.policy if c.pattern is Pattern.NM)
    baked = bake(result.model)
    for name, choice in result.policy:
        if choice.pattern is Pattern.NM:
            groups = weight_view(baked.get_submodule(name).weight.detach()).reshape(-1, 4)
            assert ((groups != 0).sum(1) <= 2).all()


def test_srste_lets_pruned_weights_move_and_plain_masking_does_not(setup):
    model, splits, layers, policy = setup
    for decay, moves in ((None, False), (2e-4, True)):
        result = finetune(model, policy, layers, splits, settings(srste_decay=decay), seed=0)
        layer = result.model.get_submodule("fc1")
        mask = weight_parametrization(layer).mask
        original = model.fc1.weight.detach()
        changed = (layer.parametrizations.weight.original.detach() != original)[~mask]
        assert bool(changed.any()) == moves


def test_learned_masks_keep_exactly_k_and_report_dpp_metrics(setup):
    model, splits, layers, policy = setup
    result = finetune(model, policy, layers, splits, settings(mask="learned"), seed=0)
    for name, choice in result.policy:
        mask = weight_parametrization(result.model.get_submodule(name)).mask
        assert (mask.reshape(mask.shape[0], -1).sum(1) == choice.keep).all()
        assert 0.0 <= result.metrics[name]["confidence"] <= 1.0
        assert 0.0 <= result.metrics[name]["diversity"] <= 1.0


def test_gap_grows_and_prunes_back_to_target(setup):
    model, splits, layers, policy = setup
    tuned = settings(gap_partitions=2, gap_epochs_per_step=1, criterion="taylor")
    tuned = FinetuneSettings(**{**tuned.__dict__, "train": TrainSettings(epochs=3, lr=1e-3, batch_size=32)})
    result = finetune(model, policy, layers, splits, tuned, seed=0)
    baked = bake(result.model)
    for name, choice in policy:  # the final prune leaves every layer at its target
        assert (kept_per_row(baked.get_submodule(name).weight) <= choice.keep).all()
    assert any("sad" in m for m in result.metrics.values())


def test_recast_keeps_density_and_bits(setup):
    _, _, layers, policy = setup
    recast, kept = finetune_policy(policy, layers, settings(mask="unstructured"))
    assert not kept
    for (_, old), (_, new) in zip(policy, recast, strict=True):
        assert new.pattern is Pattern.UNSTRUCTURED and new.w_bits == old.w_bits
        assert abs(new.density - old.density) < 0.05


def test_learned_filter_masks_spare_the_class_outputs(setup):
    model, splits, layers, policy = setup
    learned = settings(mask="learned", granularity="filter")
    with pytest.raises(ValueError, match="couplings"):
        finetune_policy(policy, layers, learned)
    couplings = filter_couplings(model, splits.train_x[:1], layers)
    recast, kept = finetune_policy(policy, layers, learned, couplings)
    output = layers[-1].name
    assert kept == {output: "filters: its outputs are the network's outputs"}
    assert dict(recast)[output] == dict(policy)[output]  # its searched k-of-n choice stays
    assert all(dict(recast)[layer.name].pattern is Pattern.FILTER for layer in layers[:-1])


def test_learned_filter_masks_keep_the_hardwares_channel_multiple(setup):
    model, splits, layers, _ = setup
    # about 0.6 of 16 filters is 9 or 10: not a whole tile of 8
    choices = {layer.name: (round(0.6 * layer.reduction), layer.reduction) for layer in layers}
    policy = Policy.of({name: Choice(Pattern.KOFN_WEIGHT, k, n) for name, (k, n) in choices.items()})
    couplings = filter_couplings(model, splits.train_x[:1], layers)
    hidden = [layer.name for layer in layers[:-1] if layer.out_channels == 16]
    anywhere, _ = finetune_policy(policy, layers, settings(mask="learned", granularity="filter"), couplings)
    assert {dict(anywhere)[name].keep for name in hidden} <= {9, 10}
    tiled = settings(mask="learned", granularity="filter", channel_multiple=8)
    recast, kept = finetune_policy(policy, layers, tiled, couplings)
    assert {dict(recast)[name].keep for name in hidden} == {8}
    first = layers[0].name  # 8 filters: no smaller multiple of 8, so its searched choice stays
    assert kept[first] == "8 output channels hold no smaller multiple of 8 to keep"
    assert dict(recast)[first] == dict(policy)[first]


@pytest.mark.parametrize(
    ("fc1", "moves"),
    [
        (Choice(Pattern.KOFN_WEIGHT, 100, 160, 8, 8), {"mask": "learned", "granularity": "filter"}),
        # grown in epochs 0 and 2, fc1 is pruned back to other filters as the last epoch starts
        (Choice(Pattern.FILTER, 20, 32, 8, 8), {"gap_partitions": 2}),
    ],
    ids=["learned", "gap"],
)
def test_a_fixed_nm_mask_follows_the_filters_that_feed_it_as_they_move(fc1, moves):
    from rlprune.cuda.kernels import is_two_four
    from rlprune.export import export_filter_pruned

    torch.manual_seed(0)
    model = MNIST1DCNN(channels=(8, 16, 16, 16), hidden=32).eval()
    with torch.no_grad():  # fc1's filters start of equal magnitude: training decides which stay
        model.fc1.weight.copy_(model.fc1.weight.sign() * 0.05)
    x, y = torch.randn(256, 1, 40), torch.randint(0, 10, (256,))
    splits = Splits(x, y, x[:32], y[:32], x[:32], y[:32], num_classes=10)
    layers = discover_layers(model, x)
    couplings = filter_couplings(model, x[:1], layers)
    # fc1 keeps 20 of its 32 filters; fc2, the class outputs, is 2:4 on the 20 inputs they leave
    policy = Policy.of({"fc1": fc1, "fc2": Choice(Pattern.NM, 2, 4, 8, 8)})
    train = TrainSettings(epochs=4, lr=1e-2, batch_size=32, weight_decay=0.0)
    result = finetune(
        model, policy, layers, splits, FinetuneSettings(train, **moves), seed=0, couplings=couplings
    )
    kept = weight_parametrization(result.model.get_submodule("fc1")).mask.any(1)
    first = policy_masks(model, result.policy, True, couplings)["fc1"].any(1)
    assert not torch.equal(kept, first)  # the filters moved
    exported = export_filter_pruned(bake(result.model), result.policy, x[:2])
    assert exported.fc2.weight.shape == (10, 20) and is_two_four(exported.fc2.weight)
    assert result.metrics["fc2"]["sad"] > 0


def test_filters_pruned_back_to_others_silence_what_the_export_removes():
    from rlprune.export import export_filter_pruned

    torch.manual_seed(0)
    model = MNIST1DCNN(channels=(8, 16, 16, 16), hidden=32).eval()
    with torch.no_grad():  # fc1's filters start of equal magnitude: GaP's dense epochs reorder them
        model.fc1.weight.copy_(model.fc1.weight.sign() * 0.05)
    x, y = torch.randn(256, 1, 40), torch.randint(0, 10, (256,))
    splits = Splits(x, y, x[:32], y[:32], x[:32], y[:32], num_classes=10)
    layers = discover_layers(model, x)
    couplings = filter_couplings(model, x[:1], layers)
    policy = Policy.of({"fc1": Choice(Pattern.FILTER, 20, 32, 8, 8)})  # fc2 reads them dense
    train = TrainSettings(epochs=3, lr=1e-2, batch_size=32, weight_decay=0.0)
    result = finetune(
        model, policy, layers, splits, FinetuneSettings(train, gap_partitions=1), 0, True, couplings
    )
    assert result.metrics["fc1"]["sad"] > 0  # pruned back to other filters
    exported = export_filter_pruned(bake(result.model), result.policy, x[:2])
    with torch.no_grad():  # the filters dropped last emit no bias that the export would not
        torch.testing.assert_close(exported(x), result.model(x), atol=1e-5, rtol=1e-5)


def test_a_finetuned_network_ends_with_the_batch_norm_statistics_of_its_final_masks():
    import copy

    from rlprune.compress import recalibrate_batch_norms
    from rlprune.models import ResNet20

    torch.manual_seed(0)
    model = ResNet20(num_classes=10, width=8).eval()
    x, y = torch.randn(200, 3, 16, 16), torch.randint(0, 10, (200,))
    splits = Splits(x, y, x[:50], y[:50], x[:50], y[:50], num_classes=10)
    layers = discover_layers(model, x)
    couplings = filter_couplings(model, x[:1], layers)
    conv1s = [layer for layer in layers if layer.name.endswith("conv1")]
    policy = Policy.of(
        {c.name: Choice(Pattern.FILTER, c.out_channels // 2, c.out_channels, 8, 8) for c in conv1s}
    )
    train = TrainSettings(epochs=3, lr=1e-2, batch_size=50, weight_decay=0.0)
    # grown for two epochs, the conv1s are pruned back as the last one starts
    result = finetune(
        model, policy, layers, splits, FinetuneSettings(train, gap_partitions=1), 0, True, couplings
    )
    again = copy.deepcopy(result.model)
    recalibrate_batch_norms(again, x, 50)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), again(x), atol=1e-4, rtol=1e-4)


def test_a_distilled_finetune_learns_from_the_dense_network(setup):
    model, splits, layers, policy = setup  # random labels: training on them pulls away from dense
    kls = {}
    for weight in (0.0, 1.0):
        tuned = finetune(model, policy, layers, splits, settings(distill_weight=weight), seed=0).model
        kls[weight] = kl_divergence(tuned, model, splits.train_x)
    assert kls[1.0] < 0.5 * kls[0.0]


def test_finetune_mask_takes_the_old_spellings_and_keeps_the_canonical_names():
    assert settings(mask="transposable").mask == "nm_transposable"
    assert settings(mask="kofn").mask == "kofn_weight"
    with pytest.raises(ConfigError, match=r"finetune\.mask='filter' is unknown"):
        settings(mask="filter")  # it does not keep the weight's shape


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask": "zigzag"}, "finetune.mask='zigzag' is unknown"),
        ({"nm": (4, 4)}, "N:M needs 0 < N < M"),
        ({"criterion": "vibes"}, "finetune.criterion='vibes'"),
        ({"granularity": "row"}, "finetune.granularity='row'"),
        ({"distill_weight": 1.5}, r"finetune.distill.weight must lie in \[0, 1\], got 1.5"),
        ({"distill_weight": "half"}, r"finetune.distill.weight must lie in \[0, 1\], got 'half'"),
        ({"distill_temperature": 0.0}, "finetune.distill.temperature must be > 0, got 0.0"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        settings(**kwargs)


@pytest.mark.parametrize("epochs", [0, 1])
def test_a_short_finetune_of_a_batch_norm_network_starts_from_the_network_the_search_scored(epochs):
    from omegaconf import OmegaConf

    from rlprune.api import searched_network, test_score
    from rlprune.bench import QUIET, load
    from rlprune.config import compose_config

    cfg = compose_config([*QUIET, "model=resnet20", "data=digits", "search.pattern=filter", "dense.epochs=3"])
    target, _ = load(cfg)
    couplings = filter_couplings(target.model, target.splits.train_x[:1], target.layers)
    conv1s = [layer for layer in target.layers if layer.name.endswith("conv1")]
    policy = Policy.of(
        {c.name: Choice(Pattern.FILTER, c.out_channels // 2, c.out_channels, 8, 8) for c in conv1s}
    )
    searched = test_score(searched_network(cfg, target, policy, couplings), target.splits).accuracy
    short = FinetuneSettings.from_config(
        {**OmegaConf.to_container(cfg.finetune, resolve=True), "epochs": epochs}
    )
    splits = target.splits
    tuned = finetune(target.model, policy, target.searched, splits, short, 0, True, couplings)
    # activation ranges taken under the dense batch-norm statistics left it near chance (0.10 and 0.49)
    assert test_score(tuned.model, splits).accuracy >= searched - 0.05
