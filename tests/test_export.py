"""Filter-pruned and int8 export: shapes, equivalence to zeroed filters, residual groups, the CLI bench."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch

from rlprune.errors import ConfigError, ModelError
from rlprune.export import effective_layers, export_filter_pruned, export_int8, to_torchscript
from rlprune.layers import discover_layers
from rlprune.models import MNIST1DCNN, DigitsCNN, ResNet20
from rlprune.policy import Choice, Pattern, Policy


def filters(layers, keep: dict[str, int]) -> Policy:
    by_name = {layer.name: layer for layer in layers}
    return Policy.of({n: Choice(Pattern.FILTER, k, by_name[n].out_channels) for n, k in keep.items()})


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mnist1d_export_equals_zeroed_filters():
    torch.manual_seed(0)
    model = MNIST1DCNN().eval()
    x = torch.randn(4, 1, 40)
    layers = discover_layers(model, x)
    keep = {"conv1": 16, "conv2": 40, "conv3": 24, "conv4": 64, "fc1": 72}
    policy = filters(layers, keep)
    exported = export_filter_pruned(model, policy, x)
    assert exported(x).shape == (4, 10)
    assert params(exported) < params(model)
    eff = effective_layers(model, layers, policy, x)
    for info in eff:
        module = exported.get_submodule(info.name)
        assert tuple(module.weight.shape[:2]) == (info.out_channels, info.in_channels)
        if info.name in keep:
            assert info.out_channels == keep[info.name]
    assert eff[-1].out_channels == 10 and eff[-1].in_channels == 72
    # the same network with the removed filters' weights and biases zeroed (no batch norm, ReLU(0) = 0)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, k in keep.items():
            module = zeroed.get_submodule(name)
            norms = module.weight.abs().flatten(1).sum(1)
            drop = norms.argsort()[: len(norms) - k]
            module.weight[drop] = 0
            module.bias[drop] = 0
        assert torch.allclose(exported(x), zeroed(x), atol=1e-5)


def test_resnet20_residual_groups_export_and_run():
    model = ResNet20(in_channels=1, width=16, dims=2).eval()
    x = torch.randn(2, 1, 8, 8)
    layers = discover_layers(model, x)
    policy = filters(layers, {layer.name: max(8, layer.out_channels // 2) for layer in layers[:-1]})
    exported = export_filter_pruned(model, policy, x)
    assert exported(x).shape == (2, 10)
    assert params(exported) < params(model)
    eff = effective_layers(model, layers, policy, x)
    assert [i.name for i in eff] == [layer.name for layer in layers]
    assert eff[0].out_channels == 8  # the stem's group (stage 1 adds) follows the stem
    assert eff[-1].in_channels == 32 and eff[-1].out_channels == 10


def test_the_classifier_is_never_pruned():
    model = MNIST1DCNN().eval()
    x = torch.randn(1, 1, 40)
    layers = discover_layers(model, x)
    with pytest.raises(ConfigError, match="'fc2' is the final classifier"):
        export_filter_pruned(model, filters(layers, {"fc2": 5}), x)
    with pytest.raises(ConfigError, match="group = out_channels"):
        export_filter_pruned(model, Policy.of({"conv1": Choice(Pattern.FILTER, 4, 8)}), x)


def _float_ops_between_int8(quantized: torch.nn.Module) -> list[str]:
    """The dequantize calls of an FX int8 export: each hands a tensor back to float."""
    return [n.name for n in quantized.graph.nodes if n.target in ("dequantize", torch.dequantize)]


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        (MNIST1DCNN, (1, 40)),
        (DigitsCNN, (1, 8, 8)),
        (lambda: ResNet20(in_channels=1, width=8, dims=2), (1, 8, 8)),
    ],
)
def test_int8_export_fuses_relu_and_stays_int8_to_the_end(build, shape):
    # the zoo writes torch.relu and x.flatten(1); spelled so, torch.ao would dequantize around them
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, *shape)
    quantized = export_int8(model, x)
    out = quantized(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert len(_float_ops_between_int8(quantized)) == 1  # the output's
    assert (out - model(x)).abs().max() < 0.05 * model(x).abs().max()


def test_int8_export_keeps_float_layers_float():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.randn(2, 1, 8, 8)
    mixed = export_int8(model, x, float_layers=["conv2", "fc1"])
    modules = dict(mixed.named_modules())
    assert not _is_quantized(modules["conv2"]) and not _is_quantized(modules["fc1"])
    assert all(_is_quantized(modules[name]) for name in ("conv1", "conv3", "fc2"))
    # int8 conv1 -> float conv2 -> int8 conv3 ... float fc1 -> int8 fc2: three hand-overs to float
    assert len(_float_ops_between_int8(mixed)) == 3
    assert (mixed(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()
    with pytest.raises(ConfigError, match=r"float_layers \['conv9'\] are not modules of DigitsCNN"):
        export_int8(model, x, float_layers=["conv9"])


def test_int8_export_runs_the_pool_between_float_layers_in_float():
    # torch.ao would quantize it (global qconfig): quantize, int8 max-pool, dequantize
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.randn(2, 1, 8, 8)
    mixed = export_int8(model, x, float_layers=["conv2", "conv3"])
    graph = list(mixed.graph.nodes)
    pools = [n for n in graph if n.op == "call_module" and n.target == "pool"]
    relu = pools[0].args[0]  # conv2's ReLU, float
    assert relu.args[0].op == "call_module" and relu.args[0].target == "conv2"  # float in
    assert [u.target for u in pools[0].users] == ["conv3"]  # float out
    # int8 conv1 hands over to float once; the second pool quantizes for fc1; fc2's output
    assert len(_float_ops_between_int8(mixed)) == 2
    assert (mixed(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


@pytest.mark.parametrize("seed", range(4))
def test_a_mixed_int8_export_converts_where_the_layers_neighbours_differ(seed):
    # float and int8 meet once per pair of neighbours that differ: the latency model's switches.
    # A residual add runs at its first operand's layer's precision; torch.ao alone would run
    # every add in int8 and quantize every float ReLU's output (11 more on one full-size draw).
    # One conversion can serve two neighbours (a block's int8 output dequantized once for a
    # float conv1 and a float shortcut conv): at most one fewer on these draws.
    torch.manual_seed(seed)
    model = ResNet20(in_channels=1, width=8, dims=2).eval()
    x = torch.randn(2, 1, 8, 8)
    layers = discover_layers(model, x)
    rng = random.Random(seed)
    floats = {layer.name for layer in layers if rng.random() < 0.5}
    mixed = export_int8(model, x, float_layers=floats)
    conversions = sum(
        n.target is torch.quantize_per_tensor or n.target in ("dequantize", torch.dequantize)
        for n in mixed.graph.nodes
    )
    bits = {layer.name: 32 if layer.name in floats else 8 for layer in layers}
    pairs = sum(bits[other] != bits[layer.name] for layer in layers for other in layer.neighbours)
    ends = (bits[layers[0].name] == 8) + (bits[layers[-1].name] == 8)  # the input's, the output's
    assert pairs + ends - 1 <= conversions <= pairs + ends
    assert (mixed(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


def test_a_mixed_int8_export_deploys_as_torchscript_and_loads_back(tmp_path):
    # the deploy form: saved and loaded without rlprune or torch.ao's FX module (which torch.save
    # cannot pickle in torch 2.13), computing what the export does
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.randn(2, 1, 8, 8)
    mixed = export_int8(model, x, float_layers=["conv2"])
    deployed = to_torchscript(mixed, x)
    torch.jit.save(deployed, tmp_path / "model.pt")
    loaded = torch.jit.load(tmp_path / "model.pt")
    assert torch.equal(loaded(x), mixed(x))
    assert "quantized::conv2d_relu" in str(loaded.graph)  # the int8 ops, not a float copy


def test_a_channels_last_deploy_computes_the_same_in_nhwc():
    # the float layers of a mixed network run on NHWC activations, as the int8 ones return them
    torch.manual_seed(0)
    model = ResNet20(in_channels=1, num_classes=10, width=8, dims=2).eval()
    x = torch.randn(2, 1, 8, 8)
    for network in (model, export_int8(model, x, float_layers=["stem", "stages.1.0.conv1"])):
        plain, nhwc = to_torchscript(network, x), to_torchscript(network, x, channels_last=True)
        assert torch.allclose(nhwc(x), plain(x), atol=1e-5)
    conv = torch.nn.Conv2d(1, 4, 3).eval()
    assert to_torchscript(conv, x, channels_last=True)(x).is_contiguous(memory_format=torch.channels_last)
    assert not to_torchscript(conv, x)(x).is_contiguous(memory_format=torch.channels_last)


def test_a_model_that_cannot_be_traced_is_refused_clearly():
    class Branchy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.numpy()  # not a tensor op: the tracer cannot record it

    with pytest.raises(ModelError, match="Branchy cannot be traced to TorchScript"):
        to_torchscript(Branchy(), torch.randn(1, 3))


def _is_quantized(module: torch.nn.Module) -> bool:
    return ".quantized." in type(module).__module__  # torch.ao.nn{,.intrinsic}.quantized


def test_latency_bench_quick_writes_json(tmp_path):
    from rlprune.bench.latency import main

    out = tmp_path / "latency.json"
    results = main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["benchmark"] == "latency" and data["machine"]["torch"] == torch.__version__
    model = results["models"][0]
    assert set(model["fidelity"]["fp32"]) == {"local_cpu", "arm_cpu", "flops", "bops", "timed again"}
    # the ceiling row scores a second, separate timing of each network against the first
    assert all(r["measured_again"] > 0 for r in model["records"])
    assert model["fidelity"]["fp32"]["timed again"]["mape"] == pytest.approx(
        np.mean([abs(r["measured_again"] / r["measured"] - 1) for r in model["records"]])
    )
    assert model["policies"] >= 2 and "filter_budget_0.5" in model["speedup"]


def test_latency_bench_samples_a_language_model_without_touching_its_heads(tmp_path):
    from rlprune.bench.latency import main

    results = main(
        [
            "--quick",
            "--models",
            "tiny_lm",
            "--cache-dir",
            str(tmp_path / "c"),
            "--out",
            str(tmp_path / "o.json"),
        ]
    )
    model = results["models"][0]
    assert model["input_shape"] == [32]  # token ids
    pruned = {name for record in model["records"] for name, keep in record["keep"].items()}
    assert pruned and all(".fc1" in name or ".proj" in name or ".fc2" in name for name in pruned)
    # the attention projections split into heads keep their filters; the LM head its classes
    assert not any(name.endswith(("qkv", "head")) for name in pruned)


def test_a_policy_the_cpu_cannot_deploy_keeps_the_run_going(tmp_path, monkeypatch):
    # the deployed network is an extra output: a model torch.ao cannot quantize must not cost
    # the run its report, policy and model
    from rlprune import finish
    from rlprune.data import Splits
    from rlprune.hardware import MeasuredModel

    def cannot(*args, **kwargs):
        raise ModelError("MNIST1DCNN cannot be quantized to int8 with torch.ao FX (x86): a test")

    monkeypatch.setattr(finish, "export_int8", cannot)
    torch.manual_seed(0)
    model, x, y = MNIST1DCNN().eval(), torch.randn(8, 1, 40), torch.randint(0, 10, (8,))
    splits = Splits(x, y, x, y, x, y, 10)
    policy = Policy.of({"conv2": Choice(Pattern.DENSE, 1, 1, 8, 8)})
    hardware = MeasuredModel(cache_dir=tmp_path, rounds=1, block_time=1e-4, retries=0, progress=False)
    layers = discover_layers(model, x[:1])
    result = finish._deploy_here(model, copy.deepcopy(model), policy, layers, splits, hardware, tmp_path)
    assert result == {
        "model": None,
        "skipped": "MNIST1DCNN cannot be quantized to int8 with torch.ao FX (x86): a test",
    }
    assert not (tmp_path / "model_deployed.pt").exists()
    # the same policy in float deploys, and is timed against the dense network
    float_policy = Policy.of({"conv2": Choice(Pattern.FILTER, 32, 64, 32, 32)})
    result = finish._deploy_here(
        model, copy.deepcopy(model), float_policy, layers, splits, hardware, tmp_path
    )
    assert result["model"] == "model_deployed.pt" and result["int8_layers"] == []
    assert torch.jit.load(tmp_path / "model_deployed.pt")(x).shape == (8, 10)
    assert result["measured_latency"] > 0


class _Decoded(torch.nn.Module):
    """A Linear, then torch's TransformerDecoderLayer, which torch.ao does not trace into unless
    :func:`~rlprune.models.attention.expose_layers` opens it (as every run does)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.decoder = torch.nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x[:, 0])
        return self.decoder(tokens, tokens).mean(1)[:, :10]


@pytest.mark.parametrize("exposed", [False, True])
def test_int8_layers_the_export_leaves_float_are_reported_as_float(tmp_path, exposed):
    from rlprune import finish
    from rlprune.data import Splits
    from rlprune.hardware import MeasuredModel
    from rlprune.models.attention import expose_layers

    torch.manual_seed(0)
    model, x, y = _Decoded().eval(), torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    if exposed:
        expose_layers(model)
    splits = Splits(x, y, x, y, x, y, 10)
    int8 = Choice(Pattern.DENSE, 1, 1, 8, 8)
    policy = Policy.of({"embed": int8, "decoder.linear1": int8})
    hardware = MeasuredModel(cache_dir=tmp_path, rounds=1, block_time=1e-4, retries=0, progress=False)
    layers = discover_layers(model, x[:1])
    result = finish._deploy_here(model, copy.deepcopy(model), policy, layers, splits, hardware, tmp_path)
    if exposed:  # the decoder's twin is traced through
        assert result["int8_layers"] == ["embed", "decoder.linear1"] and result["int8_left_float"] == []
    else:
        assert result["int8_layers"] == ["embed"] and result["int8_left_float"] == ["decoder.linear1"]


def test_model_pt_loads_into_the_networks_own_class_and_computes_the_finetuned_weights():
    from rlprune.compress import bake, compress, policy_masks, without_input_quantizers
    from rlprune.finish import own_state_dict
    from rlprune.layers import filter_couplings

    torch.manual_seed(0)
    model = ResNet20(in_channels=1, width=16, dims=2).eval()
    x = torch.randn(4, 1, 8, 8)
    layers = discover_layers(model, x)
    couplings = filter_couplings(model, x[:1], layers)
    keep = {layer.name: max(8, layer.out_channels // 2) for layer in layers[:-1]}
    policy = Policy.of(
        dict(filters(layers, keep).choices) | {layers[-1].name: Choice(Pattern.NM, 2, 4, 8, 8)}
    )
    masks = policy_masks(model, policy, True, couplings)
    baked = bake(compress(model, policy, masks=masks, couplings=couplings)).eval()
    plain = ResNet20(in_channels=1, width=16, dims=2).eval()
    plain.load_state_dict(own_state_dict(baked, model))  # strict: the class's own keys, no others
    # pruned filters are silent in the plain weights too (their biases and norms folded to zero)
    assert torch.allclose(plain(x), without_input_quantizers(baked)(x), atol=1e-5)
    assert not torch.allclose(plain(x), model(x), atol=1e-3)
