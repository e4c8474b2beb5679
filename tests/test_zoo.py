"""The zoo's MobileNetV2, VGG, DenseNet and ViT: shapes, layers rlprune finds, training, configs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from rlprune.api import build_model
from rlprune.layers import discover_layers, filter_couplings
from rlprune.models import VGG, DenseNet, MobileNetV2, ViT
from tests.support import compose_config

# (dims, channels, size) of CIFAR, digits and MNIST-1D inputs
INPUTS = [(2, 3, 32), (2, 1, 8), (1, 1, 40)]
MODELS = [MobileNetV2, VGG, DenseNet, ViT]


def make(cls: type[nn.Module], dims: int, channels: int, size: int) -> tuple[nn.Module, torch.Tensor]:
    """A model for the input and a batch of 8 random inputs; the ViT gets the input size."""
    torch.manual_seed(0)
    sizes = {"image_size": size, "patch": 2 if size == 8 else 4} if cls is ViT else {}
    model = cls(in_channels=channels, num_classes=10, dims=dims, **sizes)
    return model, torch.randn(8, channels, *[size] * dims)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize(("dims", "channels", "size"), INPUTS)
def test_forward_gives_one_logit_per_class(cls: type[nn.Module], dims: int, channels: int, size: int) -> None:
    model, x = make(cls, dims, channels, size)
    assert model(x).shape == (8, 10)


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize(("dims", "channels", "size"), INPUTS)
def test_layers_found_and_graph_built(cls: type[nn.Module], dims: int, channels: int, size: int) -> None:
    model, x = make(cls, dims, channels, size)
    layers = discover_layers(model, x)
    kinds = [layer.kind for layer in layers]
    assert kinds[0] == f"conv{dims}d" and kinds[-1] == "linear"
    if cls is MobileNetV2:
        depthwise = [layer for layer in layers if layer.name.endswith("depthwise")]
        assert len(depthwise) == 7
        assert all(layer.groups == layer.in_channels == layer.out_channels for layer in depthwise)
        assert len(layers) == 1 + 3 * 7 + 2  # stem, 7 blocks of three convs, head, fc
    if cls is VGG:
        assert kinds == [f"conv{dims}d"] * 6 + ["linear"] * 2
    if cls is DenseNet:
        assert [layer.in_channels for layer in layers[1:]] == [24, 36, 48, 60, 30, 42, 54, 66]
    if cls is ViT:
        names = [layer.name for layer in layers]
        per_block = ["attn.qkv", "attn.proj", "fc1", "fc2"]
        blocks = [f"blocks.{i}.{name}" for i in range(2) for name in per_block]
        assert names == ["patch_embed", *blocks, "head"]
        assert kinds[1:] == ["linear"] * 9
    couplings = filter_couplings(model, x, layers)
    assert set(couplings) == {layer.name for layer in layers}


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize(("dims", "channels", "size"), INPUTS)
def test_trainable(cls: type[nn.Module], dims: int, channels: int, size: int) -> None:
    model, x = make(cls, dims, channels, size)
    y = torch.arange(8) % 10
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("cls", MODELS)
def test_dims_other_than_1_or_2_refused(cls: type[nn.Module]) -> None:
    with pytest.raises(ValueError, match="dims=3"):
        cls(dims=3)


def test_vit_sizes_must_divide() -> None:
    with pytest.raises(ValueError, match=r"image_size \(30\) to be a multiple of patch \(4\)"):
        ViT(image_size=30, patch=4)
    with pytest.raises(ValueError, match=r"dim \(60\) to be a multiple of heads \(8\)"):
        ViT(dim=60, heads=8)


@pytest.mark.parametrize("model", ["mobilenetv2", "vgg", "densenet", "vit"])
@pytest.mark.parametrize(("data", "shape"), [("digits", (1, 8, 8)), ("mnist1d", (1, 40))])
def test_config_builds_a_model_for_the_data(model: str, data: str, shape: tuple[int, ...]) -> None:
    cfg = compose_config(f"model={model}", f"data={data}")
    assert cfg.model.dims == cfg.data.dims
    net = build_model(cfg.model)
    assert net(torch.randn(2, *shape)).shape == (2, 10)


def test_the_vit_embeddings_block_the_patch_embedding_quietly():
    """Torch-Pruning warns of the ViT's position embedding and class token; rlprune never prunes
    the channels they join (the report says why), so a run shows no such warning."""
    model, x = make(ViT, 2, 1, 8)
    layers = discover_layers(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        couplings = filter_couplings(model, x, layers)
    assert "parameter added" in couplings["patch_embed"].fixed
