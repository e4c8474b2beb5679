import pytest
import torch
from torch import nn

from rlprune.errors import ModelError
from rlprune.layers import discover_layers, select_layers
from rlprune.models import MNIST1DCNN, DigitsCNN, ResNet20


def test_mnist1d_cnn_layers_in_forward_order_with_macs():
    layers = discover_layers(MNIST1DCNN(), torch.randn(3, 1, 40))
    assert [lay.name for lay in layers] == ["conv1", "conv2", "conv3", "conv4", "fc1", "fc2"]
    conv2 = layers[1]
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size, conv2.stride) == (32, 64, (3,), (2,))
    assert conv2.in_shape == (32, 40) and conv2.out_shape == (64, 20)
    assert conv2.reduction == 32 * 3
    assert conv2.macs == 20 * 64 * 32 * 3  # positions * c_out * c_in * k
    fc1 = layers[4]
    assert fc1.kind == "linear" and fc1.reduction == 128 * 10 and fc1.macs == 1280 * 128


def test_conv2d_and_residual_layers():
    layers = discover_layers(DigitsCNN(), torch.randn(1, 1, 8, 8))
    assert layers[0].macs == 8 * 8 * 32 * 9
    resnet = discover_layers(ResNet20(in_channels=1, width=8, dims=2), torch.randn(1, 1, 8, 8))
    assert len(resnet) == 1 + 18 + 2 + 1  # stem, 9 blocks x 2 convs, 2 shortcut convs, fc


def test_with_channels_scales_macs():
    conv = discover_layers(MNIST1DCNN(), torch.randn(1, 1, 40))[2]
    half = conv.with_channels(conv.in_channels // 2, conv.out_channels // 2)
    assert half.macs * 4 == conv.macs
    assert half.out_shape[0] == conv.out_channels // 2


def test_a_layer_called_again_is_one_layer_charged_for_every_call():
    from rich.console import Console

    from rlprune.hardware import build_latency_model, network_latency
    from rlprune.policy import Choice, Pattern, Policy
    from rlprune.report import layer_rows, print_report
    from tests.support import RepeatedBlock, hardware_config, printable_report

    x = torch.randn(2, 16)
    repeated = discover_layers(RepeatedBlock(times=3), x)
    assert {layer.name: layer.calls for layer in repeated} == {"stem": 1, "blocks.0": 3, "neck": 1, "head": 1}
    unrolled = discover_layers(RepeatedBlock(times=3, unrolled=True), x)
    assert [layer.calls for layer in unrolled] == [1] * 6
    device = build_latency_model(hardware_config("a100"))
    sparse = Choice(Pattern.NM, 2, 4, 16, 16)
    for choice in (device.dense_choice(), sparse):  # the shared block costs its three calls
        one = {"blocks.0": choice}
        three = {f"blocks.{i}": choice for i in range(3)}
        assert network_latency(device, repeated, one) == pytest.approx(
            network_latency(device, unrolled, three)
        )
    # the report's row and table say how often it runs
    rows = layer_rows(repeated, Policy(), device, {})
    assert [row["calls"] for row in rows] == [1, 3, 1, 1]
    console = Console(width=200, record=True)
    print_report(printable_report(layers=rows), console)
    assert "blocks.0 (x3)" in console.export_text() and "stem (x" not in console.export_text()


def test_model_without_prunable_layer_is_refused():
    with pytest.raises(ModelError, match="no prunable layer"):
        discover_layers(nn.Sequential(nn.ReLU(), nn.Flatten()), torch.randn(1, 4))


def test_input_the_model_rejects_is_a_clear_error():
    with pytest.raises(ModelError, match="rejects an input of shape"):
        discover_layers(MNIST1DCNN(), torch.randn(1, 3, 40))


def test_select_layers_exclusions():
    layers = discover_layers(MNIST1DCNN(), torch.randn(1, 1, 40))
    assert [lay.name for lay in select_layers(layers, True, True)] == ["conv2", "conv3", "conv4", "fc1"]
    with pytest.raises(ModelError, match="exclusion settings"):
        select_layers(layers[:1], True, False)


def test_neighbours_follow_the_data_through_glue_and_residual_adds():
    chain = {layer.name: layer.neighbours for layer in discover_layers(DigitsCNN(), torch.randn(1, 1, 8, 8))}
    assert chain == {
        "conv1": (),
        "conv2": ("conv1",),
        "conv3": ("conv2",),
        "fc1": ("conv3",),
        "fc2": ("fc1",),
    }
    res = {layer.name: layer.neighbours for layer in discover_layers(ResNet20(), torch.randn(1, 3, 32, 32))}
    # conv2's add meets the block's input: the previous block's conv2 (or the stem) ...
    assert res["stages.0.0.conv2"] == ("stages.0.0.conv1", "stem")
    assert res["stages.0.1.conv2"] == ("stages.0.1.conv1", "stages.0.0.conv2")
    # ... or its 1x1 shortcut conv, which reads the block's input
    assert res["stages.1.0.conv2"] == ("stages.1.0.conv1", "stages.1.0.shortcut.0")
    assert res["stages.1.0.shortcut.0"] == ("stages.0.2.conv2",)
    assert res["fc"] == ("stages.2.2.conv2",)  # through pooling and flatten


def test_a_model_fx_cannot_trace_has_its_forward_order_as_neighbours():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x)
            return self.b(x if x.sum() > 0 else -x)  # control flow on a value: no FX graph

    layers = discover_layers(DataDependent(), torch.randn(1, 4))
    assert [layer.neighbours for layer in layers] == [(), ("a",)]


class _Shuffle(nn.Module):
    """conv -> channel shuffle (a view splitting the channels into groups) -> conv -> flatten -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.view(x.shape[0], 2, 4, 8, 8).transpose(1, 2).reshape(x.shape[0], 8, 8, 8)
        return self.fc(self.conv2(x).flatten(1))


class _Heads(nn.Module):
    """Attention written out as Hugging Face models do: q, k and v viewed as heads."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[:, 0]
        q, k, v = (p(tokens).view(*tokens.shape[:-1], 2, 4).transpose(1, 2) for p in (self.q, self.k, self.v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.fc(self.o(out).mean(1))


class _Gate(nn.Module):
    """A squeeze-excite gate whose (N, C) weights are viewed as (N, C, 1, 1): no split."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gate, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        weights = torch.sigmoid(self.gate(x.mean((2, 3)))).view(x.shape[0], 8, 1, 1)
        return self.fc((x * weights).mean((2, 3)))


class _FusedHeads(nn.Module):
    """Attention as Phi-3, OPT and OLMo-2 write it: one projection sliced into q, k and v, the
    queries scaled and normalized before they are viewed as heads, the output added to the
    residual stream, which is normalized too."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.qkv, self.o = nn.Linear(8, 8), nn.Linear(8, 24), nn.Linear(8, 8)
        self.norm, self.fc = nn.LayerNorm(8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x[:, 0])
        qkv = self.qkv(tokens)
        q = self.norm(qkv[..., :8] * 0.5)
        k, v = qkv[..., 8:].split(8, dim=-1)
        heads = [t.view(*t.shape[:-1], 2, 4).transpose(1, 2) for t in (q, k, v)]
        out = torch.nn.functional.scaled_dot_product_attention(*heads).transpose(1, 2).flatten(2)
        return self.fc(self.norm(tokens + self.o(out)).mean(1))


def test_split_channels_finds_heads_and_shuffles_not_flattens_or_unit_dims():
    from rlprune.layers import filter_couplings, split_channels

    x = torch.randn(2, 1, 8, 8)
    assert split_channels(_Shuffle(), x, ["conv1", "conv2", "fc"]) == {"conv1"}
    assert split_channels(_Gate(), x, ["conv", "gate", "fc"]) == set()
    assert split_channels(_Heads(), x, ["q", "k", "v", "o", "fc"]) == {"q", "k", "v"}
    net = _Heads()
    couplings = filter_couplings(net, x, discover_layers(net, x))
    assert "attention heads" in couplings["q"].fixed and couplings["o"].fixed is None


def test_split_channels_follows_the_channels_through_slices_scales_and_norms():
    from rlprune.layers import SPLIT_CHANNELS, filter_couplings, split_channels

    x = torch.randn(2, 1, 8, 8)
    net = _FusedHeads()
    # the residual stream (embed, o) is normalized and pooled, never split into heads
    assert split_channels(net, x, ["embed", "qkv", "o", "fc"]) == {"qkv"}
    assert filter_couplings(net, x, discover_layers(net, x))["qkv"].fixed == SPLIT_CHANNELS


def test_a_network_torch_pruning_cannot_trace_keeps_its_filters_with_the_reason(monkeypatch):
    import torch_pruning as tp

    from rlprune.layers import filter_couplings

    def fail(*_args: object, **_kwargs: object) -> None:
        raise ZeroDivisionError("integer division or modulo by zero")  # as on torchvision's ShuffleNetV2

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", fail)
    x = torch.randn(2, 1, 8, 8)
    net = _Heads()
    couplings = filter_couplings(net, x, discover_layers(net, x))
    assert set(couplings) == {"q", "k", "v", "o", "fc"}
    assert all(
        c.fixed.startswith("Torch-Pruning cannot trace") and "ZeroDivisionError" in c.fixed
        for c in couplings.values()
    )


def test_the_dependency_graph_is_traced_on_the_batched_example_alone():
    from rlprune.layers import dependency_graph

    class Recording(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.shapes = nn.Linear(8, 4), []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.shapes.append(tuple(x.shape))
            return self.fc(x)

    net = Recording()
    dependency_graph(net, torch.randn(3, 8))
    assert net.shapes == [(1, 8)]  # not first (8,): one unbatched sample, which a Linear accepts
