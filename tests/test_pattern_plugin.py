"""A sparsity pattern from outside the package: registered here, searched and finetuned by rlprune.

``Block1x4`` keeps, in every row of a layer's 2-D weight view, ``k`` of its ``n = R / 4`` blocks
of 4 consecutive reduction weights (input channels at one kernel position, as N:M runs). It is
defined and registered in this file only; the search, the latency model, the finetune and the
report find it through :func:`rlprune.patterns.get_pattern`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
import yaml

from rlprune import api
from rlprune.data import Splits
from rlprune.errors import ConfigError
from rlprune.finetune import FinetuneSettings, finetune, finetune_policy, mask_families
from rlprune.layers import LayerInfo
from rlprune.masks import unview, weight_view
from rlprune.patterns import SparsityPattern, get_pattern, register_pattern
from rlprune.policy import Choice, Policy
from rlprune.training import TrainSettings
from tests.support import compose_config

BLOCK = 4


@register_pattern
class Block1x4(SparsityPattern):
    """Every row keeps ``keep`` of its ``group = R / 4`` blocks of 4 consecutive reduction weights."""

    name = "block1x4"
    group_unit = "R/4 blocks"

    def group_size(self, shape: Sequence[int], *, name: str = "layer") -> int:
        reduction = math.prod(shape[1:])
        if reduction % BLOCK:
            raise ConfigError(
                f"layer {name!r}: 1x4 blocks need a reduction length divisible by 4, got {reduction}"
            )
        return reduction // BLOCK

    def mask(
        self, scores: torch.Tensor, keep: int, group: int, *, pad: bool = False, name: str = "layer"
    ) -> torch.Tensor:
        view = weight_view(scores.detach())
        blocks = view.reshape(view.shape[0], group, BLOCK).sum(-1)
        kept = torch.zeros_like(blocks, dtype=torch.bool)
        kept.scatter_(1, blocks.topk(keep, dim=1).indices, True)
        return unview(kept.repeat_interleave(BLOCK, dim=1), scores.shape)

    def log10_diversity(self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer") -> float:
        self.check_group(keep, group, shape, name=name)
        return shape[0] * math.log10(math.comb(group, keep))

    def kept_and_metadata(self, layer: LayerInfo, choice: Choice) -> tuple[int, int]:
        n = self.group_size(layer.weight_shape, name=layer.name)
        index_bits = math.ceil(math.log2(math.comb(n, choice.keep))) if choice.keep < n else 0
        return layer.out_channels * choice.keep * BLOCK, layer.out_channels * index_bits


def block_rows(weight: torch.Tensor) -> torch.Tensor:
    """Per row of the 2-D view, per block of 4: how many of its weights are non-zero."""
    view = weight_view(weight.detach())
    return (view != 0).reshape(view.shape[0], -1, BLOCK).sum(-1)


# the arm_cpu profile, told it runs 1x4 blocks (stored compressed, through its sparse FP32 kernel)
DEVICE = [
    "hardware.patterns=[dense,filter,kofn_weight,unstructured,block1x4]",
    "hardware.compressed_patterns=[kofn_weight,unstructured,block1x4]",
    "hardware.sparse_kernel.patterns=[kofn_weight,unstructured,block1x4]",
]
QUICK = ["dense.epochs=3", "search.evaluations=20", "finetune.epochs=1", "progress_bar=false"]
QUICK += ["wandb.mode=disabled", "search.bits=[32]", "budget.latency=0.6"]


def test_the_registry_finds_the_plugin_by_its_one_name():
    pattern = get_pattern("block1x4")
    assert isinstance(pattern, Block1x4) and pattern.compressed_storage and not pattern.shrinks_outputs
    assert Choice("block1x4", 3, 8).density == 3 / 8
    read = Policy.from_dict({"fc": {"pattern": "block1x4", "keep": 3, "group": 8}})
    assert read.get("fc") == Choice("block1x4", 3, 8) and read.to_dict()["fc"]["pattern"] == "block1x4"
    assert "block1x4" in mask_families()
    with pytest.raises(ConfigError, match="is taken by"):

        @register_pattern
        class Impostor(Block1x4):
            pass


@pytest.mark.slow
def test_a_search_and_its_finetune_keep_1x4_blocks(tmp_path):
    cfg = compose_config("search.pattern=block1x4", *DEVICE, *QUICK)
    report = api.run(cfg, tmp_path)
    assert report["latency"] <= 0.6 + 1e-9
    assert "1x4 blocks need a reduction length divisible by 4, got 5" in report["skipped"]["conv1"]
    policy = yaml.safe_load((tmp_path / "policy.yaml").read_text())["layers"]
    blocked = {name: c for name, c in policy.items() if c["pattern"] == "block1x4"}
    assert blocked, "the budget needs sparsity at 32 bits, and 1x4 blocks are the only pattern searched"
    weights = torch.load(tmp_path / "model.pt", weights_only=True)  # masks folded in
    for name, choice in blocked.items():
        counts = block_rows(weights[f"{name}.weight"])
        assert set(counts.unique().tolist()) <= {0, BLOCK}, f"{name}: a block is partly pruned"
        assert (counts.eq(BLOCK).sum(1) == choice["keep"]).all(), f"{name}: a row keeps another number"


def test_finetune_mask_recasts_a_policy_into_1x4_blocks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    layers = [
        LayerInfo("0", "linear", 16, 12, (), (), 1, (16,), (12,)),
        LayerInfo("2", "linear", 12, 3, (), (), 1, (12,), (3,)),
    ]
    policy = Policy.of({"0": Choice("kofn_weight", 8, 16), "2": Choice("unstructured", 1, 2)})
    settings = FinetuneSettings(train=TrainSettings(epochs=1, lr=1e-2, batch_size=16), mask="block1x4")
    recast, kept = finetune_policy(policy, layers, settings)
    assert not kept and dict(recast) == {"0": Choice("block1x4", 2, 4), "2": Choice("block1x4", 2, 3)}
    x, y = torch.randn(96, 16), torch.randint(0, 3, (96,))
    splits = Splits(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], num_classes=3)
    result = finetune(model, policy, layers, splits, settings, seed=0)
    for name, choice in recast:
        layer = result.model.get_submodule(name)
        trained = layer.parametrizations.weight.original.detach()
        assert not torch.equal(trained, model.get_submodule(name).weight.detach())  # it trained
        counts = block_rows(layer.weight)
        assert set(counts.unique().tolist()) <= {0, BLOCK} and (counts.eq(BLOCK).sum(1) == choice.keep).all()
        assert result.metrics[name]["log10_mask_diversity"] == pytest.approx(
            layer.weight.shape[0] * math.log10(math.comb(choice.group, choice.keep))
        )
