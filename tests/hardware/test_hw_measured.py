"""The measured lookup table: builds from its yaml, interpolates, caches safely. No timing assertions:
the table is timed by a fake timer (a plain class, deterministic seconds by label)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path

import pytest
import torch
import yaml

from rlprune.hardware import MeasuredModel, build_latency_model, hardware_config_dir
from rlprune.hardware.factory import load_hardware_config, model_fields
from rlprune.hardware.measured import EMPTY_CALL, int8_engine
from rlprune.hardware.measured.cache import TableCache
from rlprune.hardware.measured.ops import build_op
from rlprune.hardware.measured.timing import Group, OnTimed, Timing
from rlprune.layers import LayerInfo
from rlprune.policy import Choice, Pattern
from tests.support import compose_config

CONV = LayerInfo("c", "conv1d", 16, 16, (3,), (1,), 1, (16, 20), (16, 20))
LINEAR = LayerInfo("fc", "linear", 24, 16, (), (), 1, (24,), (16,))


def plain_cfg(cache_dir, **extra) -> dict:
    cfg = yaml.safe_load((hardware_config_dir() / "local_cpu.yaml").read_text())
    cfg.update(
        cache_dir=str(cache_dir), rounds=1, block_time=1e-4, warmup=1, retries=0, verify=0, progress=False
    )
    cfg.update(extra)
    return cfg


def op_seconds(label: str) -> float:
    """A table op's seconds, from its table key (its spec): a function of its shape."""
    spec = json.loads(label)
    return 1e-6 * (1 + spec["c_in"] * spec["c_out"] / 64) * (0.5 if spec["bits"] == 8 else 1.0)


def precision(group: Group) -> int:
    """The bits of the marker a group was read against (its ``pace:`` key names its spec)."""
    return json.loads(group.marker.key.removeprefix("pace:"))["bits"]


class FakeTimer:
    """A timer on a machine always quiet: an op's seconds from its table key (:func:`op_seconds`),
    the empty call's 0, a network's from ``networks`` (``other`` for a label not in it); each
    timing's seconds times the next of ``factors`` (then 1). Builds nothing; records what it timed."""

    def __init__(
        self, networks: Mapping[str, float] | None = None, other: float = 1e-4, factors: Iterable[float] = ()
    ) -> None:
        self.networks = dict(networks or {})
        self.other = other
        self.factors = iter(factors)
        self.timed: list[list[Group]] = []  # the groups of each call

    def seconds(self, label: str) -> float:
        if label in self.networks:
            return self.networks[label]
        if label == EMPTY_CALL:
            return 0.0
        return op_seconds(label) if label.startswith("{") else self.other

    def time(
        self,
        groups: Sequence[Group],
        paces: MutableMapping[str, float],
        *,
        rounds: int,
        fastest: bool = False,
        on_timed: OnTimed | None = None,
    ) -> Timing:
        self.timed.append(list(groups))
        seconds = []
        for i, group in enumerate(groups):
            factor = next(self.factors, 1.0)
            seconds.append([factor * self.seconds(label) for label in group.labels])
            if on_timed is not None:
                on_timed(i, seconds[-1], True)
        return Timing(seconds)

    @property
    def ops(self) -> list[list[str]]:
        """The table's ops of each group timed, by key (without the empty call)."""
        return [[label for label in g.labels if label != EMPTY_CALL] for each in self.timed for g in each]


class NoTimer:
    """A timer that must not be used: everything comes from the cache."""

    def time(self, *args, **kwargs) -> Timing:
        raise AssertionError("the table should come from the cache")


def faked(cache_dir, timer=None, **extra) -> tuple[MeasuredModel, FakeTimer]:
    """The local_cpu table (``extra`` over its yaml), timed by ``timer`` (a new :class:`FakeTimer`)."""
    timer = FakeTimer() if timer is None else timer
    cfg = model_fields(plain_cfg(cache_dir, **extra))  # the rest is read by build_latency_model
    return MeasuredModel.from_config(cfg, timer=timer), timer


def dense(bits: int) -> Choice:
    return Choice(Pattern.DENSE, 1, 1, bits, bits)


def test_builds_from_yaml_and_measures_for_real(tmp_path):
    model = build_latency_model(plain_cfg(tmp_path, verify=1))  # the table verified, for real
    assert isinstance(model, MeasuredModel) and model.name == "local_cpu"
    assert model.nm_options == () and model.bits == (8, 32)
    for layer in (CONV, LINEAR):
        for bits in (8, 32):
            assert model.latency(layer, dense(bits)) > 0
    assert model.measurements == 4
    assert model.cache_path.is_file() and str(model.cache_path).startswith(str(tmp_path))


def test_ops_take_turns_only_with_ops_of_their_own_precision(tmp_path):
    model, timer = faked(tmp_path)
    cells = [(LayerInfo(f"c{i}", "conv1d", 8 * i, 16, (3,), (1,), 1, (8 * i, 20), (16, 20)), dense(b))
             for i in range(1, 40) for b in (32, 8)]  # fmt: skip
    model.prepare(cells)
    groups = [g for each in timer.timed for g in each]
    assert len(groups) > 2
    for group in groups:  # each part beside the marker of its precision, and an empty call
        assert group.labels[-1] == EMPTY_CALL
        assert {json.loads(key)["bits"] for key in group.labels[:-1]} == {precision(group)}


def test_every_channel_count_is_measured_unless_a_grid_is_asked_for(tmp_path):
    # off multiples of 8 kernels slow down in steps (an INT8 3x3 conv on 8x8: 15 channels
    # 16.4 µs, 16 channels 11.9 µs), so by default no line between grid points stands in for them
    layer = LayerInfo("c", "conv2d", 20, 20, (3, 3), (1, 1), 1, (20, 8, 8), (20, 8, 8))
    exact = build_latency_model(plain_cfg(tmp_path))
    for bits in (8, 32):
        assert [(s["c_in"], s["c_out"], w) for s, w in exact.grid_points(layer, dense(bits))] == [
            (20, 20, 1.0)
        ]
    coarse = build_latency_model(plain_cfg(tmp_path, channel_step=8))
    assert len(coarse.grid_points(layer, dense(8))) == len(coarse.grid_points(layer, dense(32))) == 4


def test_unresolved_cache_dir_falls_back_to_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "env"))
    cfg = plain_cfg(tmp_path)
    cfg["cache_dir"] = "${rlprune.cache_dir:}"
    assert str(build_latency_model(cfg).cache_path).startswith(str(tmp_path / "env"))


@pytest.mark.parametrize("progress_bar", [True, False])
def test_the_tables_bar_follows_the_runs_progress_bar(tmp_path, progress_bar):
    cfg = compose_config("hardware=local_cpu", f"cache_dir={tmp_path}", f"progress_bar={progress_bar}")
    assert build_latency_model(cfg.hardware).progress is progress_bar
    alone = load_hardware_config("local_cpu")[0]  # read on its own: the bar is on
    assert alone["progress"] is True and build_latency_model(alone).progress is True
    raw = plain_cfg(tmp_path)
    raw["progress"] = "${rlprune.progress_bar:}"  # read as plain YAML: unresolved
    assert build_latency_model(raw).progress is True


def test_interpolation_lies_between_grid_neighbours(tmp_path):
    model, _ = faked(tmp_path, channel_step=8)
    layer = LayerInfo("c", "conv1d", 20, 20, (3,), (1,), 1, (20, 20), (20, 20))
    points = model.grid_points(layer, dense(32))
    assert sorted((s["c_in"], s["c_out"]) for s, _ in points) == [(16, 16), (16, 24), (24, 16), (24, 24)]
    assert sum(w for _, w in points) == pytest.approx(1.0)
    value = model.latency(layer, dense(32))
    low = model.latency(layer.with_channels(16, 16), dense(32))
    high = model.latency(layer.with_channels(24, 24), dense(32))
    assert low < value < high
    # bilinear: the fake's seconds are bilinear in (c_in, c_out), so the table reads them exactly
    assert value == pytest.approx(1e-6 * (1 + 20 * 20 / 64))
    on_grid = model.grid_points(layer.with_channels(16, 8), dense(32))
    assert len(on_grid) == 1 and on_grid[0][1] == 1.0


def test_filter_and_sparse_patterns_cost_as_dense_shapes(tmp_path):
    model, _ = faked(tmp_path)
    filt = Choice(Pattern.FILTER, 8, 16, 32, 32)
    assert model.latency(CONV, filt) == model.latency(CONV.with_channels(16, 8), dense(32))
    nm = Choice(Pattern.NM, 2, 4, 8, 8)
    assert model.latency(CONV, nm) == model.latency(CONV, dense(8))
    points = model.grid_points(CONV, filt)
    assert [(s["c_in"], s["c_out"]) for s, _ in points] == [(16, 8)]


def test_a_table_built_and_calibrated_once_gives_the_same_predictions_from_its_cache(tmp_path):
    from rlprune.layers import discover_layers
    from rlprune.models import MNIST1DCNN

    torch.manual_seed(0)
    net, x = MNIST1DCNN().eval(), torch.randn(1, 1, 40)
    layers = discover_layers(net, x)
    cells = [
        (layer, choice)
        for layer in layers
        for b in (8, 32)
        for choice in (dense(b), Choice(Pattern.FILTER, layer.out_channels // 3, layer.out_channels, b, b))
    ]
    # stubbed networks narrowed faster than the full one (glue), the int8 ones faster than float
    networks = {"full": 3e-4, "again": 3e-4, "stubbed:int8": 2.5e-4, "deployed:float": 2e-3}
    networks |= {"deployed:half": 1e-3, "deployed:int8": 1.2e-3, "deployed:half:int8": 7e-4}
    networks |= {"deployed:alternating:8": 1.9e-3, "deployed:alternating:32": 1.9e-3}
    networks |= {"deployed:halves:8": 1.6e-3, "deployed:halves:32": 1.6e-3}
    first, _ = faked(tmp_path, timer=FakeTimer(networks, other=2.8e-4))
    first.prepare(cells)
    assert first.measurements == len({spec["key"] for cell in cells for spec, _ in first.grid_points(*cell)})
    uncalibrated = [first.latency(layer, choice) for layer, choice in cells]
    assert uncalibrated[0] == op_seconds(first.grid_points(*cells[0])[0][0]["key"])  # the op alone
    overhead = first.calibrate(net, x)
    values = [first.latency(layer, choice) for layer, choice in cells]
    assert values != uncalibrated and first.switch_seconds > 0

    second, _ = faked(tmp_path, timer=NoTimer())
    assert [second.latency(layer, choice) for layer, choice in cells] == uncalibrated
    assert second.calibrate(net, x) == overhead
    assert [second.latency(layer, choice) for layer, choice in cells] == values
    assert (second.switch_seconds, second.mixed_seconds) == (first.switch_seconds, first.mixed_seconds)
    assert second.measurements == 0 and second.table == first.table


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "not json",
        lambda text: text.replace("e-06", "e-05", 1),  # an entry edited: checksum fails
    ],
    ids=["truncated", "garbage", "checksum"],
)
def test_a_corrupt_cache_is_rebuilt(tmp_path, caplog, damage):
    first, _ = faked(tmp_path)
    first.latency(CONV, dense(32))
    path = first.cache_path
    path.write_text(damage(path.read_text()))
    with caplog.at_level("WARNING"):
        second, timer = faked(tmp_path)
        second.latency(CONV, dense(32))
    assert timer.ops == [[second.grid_points(CONV, dense(32))[0][0]["key"]]]
    assert caplog.text.count("is corrupt or stale") == 1  # said once, not again as it is replaced
    data = json.loads(path.read_text())  # rewritten, valid again
    assert data["checksum"] == TableCache.checksum(data["key"], data["entries"])


def test_a_cache_with_another_key_is_not_used(tmp_path):
    first, _ = faked(tmp_path)
    first.latency(CONV, dense(32))
    data = json.loads(first.cache_path.read_text())
    data["key"]["cpu"] = "some other CPU"
    data["checksum"] = TableCache.checksum(data["key"], data["entries"])
    first.cache_path.write_text(json.dumps(data))
    second, timer = faked(tmp_path)
    second.latency(CONV, dense(32))
    assert len(timer.ops) == 1
    other_threads = build_latency_model(plain_cfg(tmp_path, threads=2))
    assert other_threads.cache_path != second.cache_path


def test_cpus_of_one_name_but_another_generation_keep_their_own_tables(tmp_path):
    # cloud VMs may name only "AMD EPYC"; its generations time ops differently
    from rlprune.hardware.measured import cpu_model

    def cpuinfo(model: int) -> Path:
        path = tmp_path / f"cpuinfo{model}"
        core = f"processor\t: {{}}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\n"
        path.write_text(
            "\n".join(core.format(i) + "model name\t: AMD EPYC\nstepping\t: 1\n" for i in range(2))
        )
        return path

    assert cpu_model(cpuinfo(17)) == "AMD EPYC (cpu family 25, model 17, stepping 1)"
    assert cpu_model(cpuinfo(1)) != cpu_model(cpuinfo(17))
    assert cpu_model(tmp_path / "missing") != ""
    model = build_latency_model(plain_cfg(tmp_path))
    assert model.key["cpu"] == cpu_model() and model.key["isa"] == torch.backends.cpu.get_cpu_capability()


def test_bad_config_fails_with_a_message(tmp_path):
    from rlprune.errors import ConfigError

    with pytest.raises(ConfigError, match="nm_options"):
        build_latency_model(plain_cfg(tmp_path, nm_options=[[2, 4]]))
    with pytest.raises(ConfigError, match="bits"):
        build_latency_model(plain_cfg(tmp_path, bits=[4, 8, 32]))
    with pytest.raises(ConfigError, match="epilogue"):
        build_latency_model(plain_cfg(tmp_path, epilogue="gelu"))
    with pytest.raises(ConfigError, match="memory_format"):
        build_latency_model(plain_cfg(tmp_path, memory_format="nhwc"))


def test_conv2d_ops_are_timed_in_the_memory_format_networks_deploy_in(tmp_path):
    conv = LayerInfo("c", "conv2d", 16, 16, (3, 3), (1, 1), 1, (16, 8, 8), (16, 8, 8))
    for memory_format, nhwc in (("channels_last", True), ("contiguous", False)):
        model = build_latency_model(plain_cfg(tmp_path, memory_format=memory_format))
        ((spec, _),) = model.grid_points(conv, dense(32))
        assert spec["memory_format"] == memory_format  # one table entry per format
        op, x, _ = build_op(spec, model.engine)
        assert x.is_contiguous(memory_format=torch.channels_last) == nhwc
        assert model.deploy(op, x)(x).is_contiguous(memory_format=torch.channels_last) == nhwc


def _dense_prediction(
    model: MeasuredModel, layers: dict[str, LayerInfo], overhead: float, bits: int
) -> float:
    return overhead + sum(model.latency(layer, dense(bits)) for layer in layers.values())


def test_calibrate_charges_glue_to_layers_and_caches_it(tmp_path):
    from rlprune.layers import discover_layers
    from rlprune.models import MNIST1DCNN, ResNet20

    torch_model = ResNet20(in_channels=1, num_classes=10, width=8, dims=2).eval()
    x = torch.randn(2, 1, 8, 8)
    layers = {layer.name: layer for layer in discover_layers(torch_model, x)}
    # every stub that can be narrowed saves time (glue), the deployed network spends 1.5x its ops
    model, timer = faked(tmp_path, timer=FakeTimer({"full": 1e-4, "again": 1e-4}, other=0.9e-4))
    ops = sum(model.latency(layer, dense(32)) for layer in layers.values())  # alone
    timer.networks["deployed:float"] = 1.5 * ops
    overhead = model.calibrate(torch_model, x)
    assert overhead >= 0
    # the dense deployed network is predicted as measured (int8: next test)
    assert _dense_prediction(model, layers, overhead, 32) == pytest.approx(1.5 * ops, rel=1e-9)
    stubbed = next(groups for groups in timer.timed if "full" in groups[-1].labels)  # float: last
    narrowed = {label for group in stubbed for label in group.labels} & set(layers)
    # a conv2 feeds a residual add: halving its output cannot run, so it has no glue
    assert "stages.0.0.conv1" in narrowed and "stages.0.0.conv2" not in narrowed
    conv1 = layers["stages.0.0.conv1"]
    # a filter choice pays the glue of the channels it keeps, as the narrower layer does
    half = Choice(Pattern.FILTER, conv1.out_channels // 2, conv1.out_channels, 32, 32)
    narrower = conv1.with_channels(conv1.in_channels, conv1.out_channels // 2)
    assert model.latency(conv1, half) == pytest.approx(model.latency(narrower, dense(32)), rel=1e-12)
    after = {name: model.latency(layer, dense(32)) for name, layer in layers.items()}

    again, _ = faked(tmp_path, timer=NoTimer())
    assert again.calibrate(torch_model, x) == overhead
    assert {name: again.latency(layer, dense(32)) for name, layer in layers.items()} == after
    with pytest.raises(AssertionError, match="from the cache"):
        again.calibrate(MNIST1DCNN().eval(), torch.randn(2, 1, 40))


def test_a_layer_called_again_is_calibrated_and_charged_for_every_call(tmp_path):
    from dataclasses import replace

    from rlprune.hardware import network_latency
    from rlprune.layers import discover_layers
    from tests.support import RepeatedBlock

    net, x = RepeatedBlock(times=3).eval(), torch.randn(2, 16)
    layers = discover_layers(net, x)
    block = layers[1]
    model, timer = faked(tmp_path, timer=FakeTimer({"full": 1e-4, "again": 1e-4}, other=0.9e-4))
    assert model.latency(block, dense(32)) == pytest.approx(
        3 * model.latency(replace(block, calls=1), dense(32))
    )
    ops = network_latency(model, layers, {})  # alone: the block's op three times
    timer.networks["deployed:float"] = 1.5 * ops
    overhead = model.calibrate(net, x)
    # the dense deployed network is predicted as measured, its block fitted at each call
    assert network_latency(model, layers, {}) + overhead == pytest.approx(1.5 * ops, rel=1e-9)
    # narrowing the block's stub narrows its three outputs, as narrowing the stem's (as wide) its one
    glue = model.calibration.glue
    assert glue["stem"][0] > 0 and 3 * glue["blocks.0"][0] == pytest.approx(glue["stem"][0])


def test_a_transformers_glue_follows_its_features_not_its_tokens(tmp_path):
    """A transformer's Linear maps ``(N, T, C)``: its output is narrowed, and its glue charged,
    by its ``C`` features, not by its ``T`` tokens at dim 1 as a conv's channels."""
    from rlprune.hardware.measured.networks import layer_outputs, narrowed_stubs
    from rlprune.layers import discover_layers
    from rlprune.models import ViT

    net = ViT(in_channels=1, num_classes=10, image_size=8, patch=2, dim=32, depth=1, heads=2).eval()
    x = torch.randn(2, 1, 8, 8)
    fc1 = next(layer for layer in discover_layers(net, x) if layer.name == "blocks.0.fc1")
    outputs = layer_outputs(net, x)
    assert outputs[fc1.name].shape[1] == 17 != fc1.out_channels  # 16 patches and the class token
    stub, kept = narrowed_stubs(net, x, outputs)[fc1.name]
    assert kept == fc1.out_channels // 4
    assert stub.get_submodule(fc1.name).output.shape == (2, 17, kept)

    model, timer = faked(tmp_path, timer=FakeTimer({"full": 1e-4, "again": 1e-4}, other=0.9e-4))
    layers = discover_layers(net, x)
    timer.networks["deployed:float"] = 1.5 * sum(model.latency(layer, dense(32)) for layer in layers)
    model.calibrate(net, x)
    glue, width = model.calibration.glue[fc1.name]
    assert width == fc1.out_channels and glue > 0
    # the dense layer pays its glue once; half its filters, half of it
    assert model.calibration.glue_seconds(fc1.name, fc1.out_channels, False) == pytest.approx(glue)
    assert model.calibration.glue_seconds(fc1.name, fc1.out_channels // 2, False) == pytest.approx(glue / 2)


class _Untraceable(torch.nn.Module):
    """Two Linear layers with a Python branch on a tensor's size, which torch.fx cannot trace
    (as in many Hugging Face models): no int8 export."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x.flatten(1))
        return self.fc2(h[:, : h.shape[1]] if h.shape[0] > 0 else h)


def test_int8_is_left_out_for_a_network_without_an_int8_export(tmp_path, caplog):
    from rlprune.models import MNIST1DCNN

    x = torch.randn(2, 1, 8)
    model, _ = faked(tmp_path, timer=FakeTimer(other=1e-4))
    model.calibrate(_Untraceable().eval(), x)
    assert model.bits == (32,) and "int8 is left out of the search" in caplog.text
    again, _ = faked(tmp_path, timer=NoTimer())  # from the cache: the same
    again.calibrate(_Untraceable().eval(), x)
    assert again.bits == (32,)
    if int8_engine() is not None:  # the next network has an int8 export: int8 is searched again
        model.calibrate(MNIST1DCNN().eval(), torch.randn(2, 1, 40))
        assert model.bits == (8, 32)


@pytest.mark.skipif(int8_engine() is None, reason="no int8 engine on this CPU")
def test_a_cheaper_int8_glue_is_cached_and_read_back(tmp_path):
    # int8 glue cheaper than float glue is common since the export fuses ReLUs; its negative
    # difference once made the whole cache read as corrupt, so every run measured it again
    from rlprune.models import DigitsCNN

    net, x = DigitsCNN().eval(), torch.randn(2, 1, 8, 8)
    # the stubbed networks (full, again, the 5 narrowed: 8e-5, int8), then apart from them the
    # deployed ones (float and int8 each at full and half width, and the mixed: layers
    # alternating float and int8, and halves that differ)
    networks = {"full": 1e-4, "again": 1e-4, "stubbed:int8": 5e-5}
    networks |= {"deployed:float": 2e-4, "deployed:half": 1.2e-4}
    networks |= {"deployed:int8": 6e-5, "deployed:half:int8": 4e-5}
    networks |= {
        f"deployed:{mix}:{b}": s for mix, s in (("alternating", 3e-4), ("halves", 2.5e-4)) for b in (8, 32)
    }
    model, timer = faked(tmp_path, timer=FakeTimer(networks, other=8e-5))
    overhead = model.calibrate(net, x)
    networks_timed = [each for each in timer.timed if not each[0].labels[0].startswith("{")]  # not ops
    stubbed, deployed = ({precision(g): set(g.labels) for g in groups} for groups in networks_timed)
    assert stubbed == {8: {"stubbed:int8"}, 32: {"full", "again", "conv1", "conv2", "conv3", "fc1", "fc2"}}
    assert deployed == {
        32: {"deployed:float", "deployed:half"},
        8: set(networks) - stubbed[8] - stubbed[32] - deployed[32],
    }
    assert model.calibration.int8_glue_scale < 1.0  # cheaper int8 glue shrinks each int8 layer's glue

    again, _ = faked(tmp_path, timer=NoTimer())
    assert again.table == model.table
    assert (
        again.calibrate(net, x) == overhead
        and again.calibration.int8_glue_scale == model.calibration.int8_glue_scale
    )
    assert (again.switch_seconds, again.mixed_seconds) == (model.switch_seconds, model.mixed_seconds)
    assert model.switch_seconds > 0 and model.mixed_seconds > 0


@pytest.mark.parametrize("bits", [32, 8])
@pytest.mark.parametrize("half_width_cost", ["between", "over_scaled"])
def test_calibration_predicts_the_dense_and_the_half_width_network_as_measured(
    tmp_path, bits, half_width_cost
):
    # the half-width network between the ops scaled and the ops less a share (float at batch
    # 1), or over the ops scaled (int8 at batch 32: quantize and dequantize cost per layer)
    from rlprune.export import fold_batch_norms
    from rlprune.hardware import network_latency
    from rlprune.hardware.measured.networks import half_width
    from rlprune.layers import discover_layers
    from rlprune.models import DigitsCNN

    torch.manual_seed(0)
    net, x = DigitsCNN().eval(), torch.randn(1, 1, 8, 8)
    model, timer = faked(tmp_path, bits=sorted({bits, 32}), timer=FakeTimer(other=1e-5))  # no glue
    folded = fold_batch_norms(net)
    layers, half = discover_layers(folded, x), half_width(folded, x, discover_layers(folded, x))
    half_layers = discover_layers(half, x)
    measured = {}
    for b in {bits, 32}:
        ops = sum(model.latency(layer, dense(b)) for layer in layers)  # alone
        half_ops = sum(model.latency(layer, dense(b)) for layer in half_layers)
        dense_s = 0.8 * ops  # the ops alone add up to more than the network
        scaled, shared = dense_s * half_ops / ops, half_ops - ops + dense_s
        measured[b] = dense_s, (scaled + shared) / 2 if half_width_cost == "between" else 1.1 * scaled
    timer.networks = {"deployed:float": measured[32][0], "deployed:half": measured[32][1]}
    if bits == 8:  # and the mixed networks
        timer.networks |= {"deployed:int8": measured[8][0], "deployed:half:int8": measured[8][1]}
        timer.networks |= {
            f"deployed:{mix}:{b}": measured[8][0] for mix in ("alternating", "halves") for b in (8, 32)
        }
    overhead = model.calibrate(net, x)
    for found, seconds in zip((layers, half_layers), measured[bits], strict=True):
        assert network_latency(model, found, [dense(bits)] * len(layers)) + overhead == pytest.approx(seconds)
    scale, saving = (
        (model.calibration.float_scale, model.calibration.float_saving)
        if bits == 32
        else (model.calibration.int8_scale, model.calibration.int8_saving)
    )
    if half_width_cost == "between":
        assert 0.8 < scale < 1.0 and saving > 0
    else:
        assert 0.0 < scale < 0.8 and saving < 0


def conv_cells(count: int) -> list[tuple[LayerInfo, Choice]]:
    return [
        (LayerInfo(f"c{i}", "conv1d", 8 * i, 16, (3,), (1,), 1, (8 * i, 20), (16, 20)), dense(32))
        for i in range(1, count + 1)
    ]


class SlowFirstTimer(FakeTimer):
    """Times the first group 1.8x slow, then again, quiet, after the others (as a
    :class:`~rlprune.hardware.measured.timing.QuietTimer` does where its marker shows it)."""

    def time(self, groups, paces, *, rounds, fastest=False, on_timed=None) -> Timing:
        self.factors = iter([1.8])
        timing = super().time(groups, paces, rounds=rounds, fastest=fastest, on_timed=on_timed)
        self.timed.append(groups[:1])
        quiet = [self.seconds(label) for label in groups[0].labels]
        if on_timed is not None:
            on_timed(0, quiet, False)
        return Timing([quiet, *timing.seconds[1:]], retimed=1)


def test_a_part_timed_again_keeps_its_quiet_timing_and_is_counted_once(tmp_path):
    model, timer = faked(tmp_path, timer=SlowFirstTimer())
    model.prepare(conv_cells(40))  # two parts of 32 and 8 ops
    assert [len(p) for p in timer.ops] == [32, 8, 32]  # the first part, slow, again after the second
    for key in timer.ops[0]:  # its entries are the quiet ones
        assert model.table[key] == pytest.approx(op_seconds(key))
    assert model.measurements == 40 and model.retimed == 1 and model.still_slow == 0


def test_a_part_slow_where_its_marker_was_not_is_caught_by_its_ops_and_timed_again(tmp_path):
    # a part's ops can all run slow while the marker op beside it runs quiet: a few of each
    # part's ops, timed again beside other parts' ops, show it
    model, timer = faked(tmp_path, verify=2, timer=FakeTimer(factors=[1.5]))  # the first part slow
    model.prepare(conv_cells(40))  # two parts of 32 and 8 ops
    parts = timer.ops
    # the parts, two ops of each timed again together, then the slow part again
    assert [len(p) for p in parts] == [32, 8, 4, 32]
    assert parts[2] == parts[0][::16] + parts[1][::4] and parts[3] == parts[0]
    for key in parts[0] + parts[1]:
        assert model.table[key] == pytest.approx(op_seconds(key))
    assert model.retimed == 1 and model.measurements == 40


def test_a_quiet_table_is_verified_and_each_op_keeps_its_fastest_timing(tmp_path):
    # the two parts, then the ops timed again: faster
    model, timer = faked(tmp_path, verify=4, timer=FakeTimer(factors=[1.0, 1.04, 0.97]))
    model.prepare(conv_cells(40))
    parts = timer.ops
    assert [len(p) for p in parts] == [32, 8, 8] and model.retimed == 0
    for key in parts[0] + parts[1]:
        first = 1.0 if key in parts[0] else 1.04
        assert model.table[key] == pytest.approx(op_seconds(key) * (0.97 if key in parts[2] else first))


def test_networks_take_turns_by_precision_and_each_keeps_its_median(tmp_path):
    # the int8 group's three timings at 3, 1 and 2x, the float group's at 5, 4 and 6x
    timer = FakeTimer({"0": 1e-6, "1": 1e-6, "2": 1e-6}, factors=[3, 5, 1, 4, 2, 6])
    model, _ = faked(tmp_path, timer=timer)
    nets = [torch.nn.Linear(4, 4) for _ in range(3)]
    assert model.time_networks(nets, torch.randn(1, 4), [8, 32, 8], repeats=3) == pytest.approx(
        [2e-6, 5e-6, 2e-6]
    )
    assert [precision(g) for g in timer.timed[0]] == [8, 32] * 3
    assert [g.labels for g in timer.timed[0][:2]] == [("0", "2"), ("1",)]


class BusyFor(FakeTimer):
    """A fake timer on a machine busy for the float network's first ``readings``."""

    def __init__(self, networks: Mapping[str, float], readings: int, **kwargs) -> None:
        super().__init__(networks, **kwargs)
        self.busy = readings
        self.float_timings = 0

    def seconds(self, label: str) -> float:
        if label == "deployed:float":
            self.float_timings += 1
            if self.float_timings <= self.busy:
                return 10 * self.networks[label]
        return super().seconds(label)


# read quietly, the int8 network beats the float one; read busy (ten times slower), the float
# network's overhead exceeds the whole int8 network, which would price its ops at nothing.
# Narrowing a stub saves nothing (no glue).
QUIET_NETWORKS = {"full": 3e-4, "again": 3e-4, "stubbed:int8": 3e-4, "deployed:float": 2e-3}
QUIET_NETWORKS |= {"deployed:half": 1e-3, "deployed:int8": 1.2e-3, "deployed:half:int8": 7e-4}


def mnist1d_net() -> tuple[torch.nn.Module, torch.Tensor, list[LayerInfo]]:
    from rlprune.layers import discover_layers
    from rlprune.models import MNIST1DCNN

    torch.manual_seed(0)
    net, x = MNIST1DCNN().eval(), torch.randn(1, 1, 40)
    return net, x, discover_layers(net, x)


def readings_per_calibration(cache_dir: Path) -> int:
    """How often one calibration reads the float network (it takes several turns)."""
    net, x, _ = mnist1d_net()
    model, timer = faked(cache_dir, timer=BusyFor(QUIET_NETWORKS, readings=0, other=3e-4))
    model.calibrate(net, x)
    return timer.float_timings


def test_networks_timed_while_the_cpu_was_busy_are_timed_again(tmp_path):
    per_calibration = readings_per_calibration(tmp_path / "quiet")
    net, x, layers = mnist1d_net()
    timer = BusyFor(QUIET_NETWORKS, readings=per_calibration, other=3e-4)
    model, _ = faked(tmp_path, timer=timer)
    model.calibrate(net, x)
    assert timer.float_timings == 2 * per_calibration
    assert all(model.latency(layer, dense(8)) > 0 for layer in layers)
    cached = [v for k, v in model.table.items() if k.endswith(":deployed:float")]
    assert cached == [QUIET_NETWORKS["deployed:float"]]


def test_networks_busy_twice_are_refused_with_the_fix_and_not_kept(tmp_path):
    from rlprune.errors import MeasurementError

    per_calibration = readings_per_calibration(tmp_path / "quiet")
    net, x, _ = mnist1d_net()
    timer = BusyFor(QUIET_NETWORKS, readings=2 * per_calibration, other=3e-4)
    model, _ = faked(tmp_path, timer=timer)
    with pytest.raises(MeasurementError, match=r"busy .* search float only \(search.bits=\[32\]\)"):
        model.calibrate(net, x)
    assert timer.float_timings == 2 * per_calibration
    assert not [k for k in model.table if k.startswith("network:")]
    again, _ = faked(tmp_path, timer=FakeTimer(QUIET_NETWORKS, other=3e-4))  # idle now, same cache
    again.calibrate(net, x)
    assert [v for k, v in again.table.items() if k.endswith(":deployed:float")] == [2e-3]


@pytest.mark.skipif(int8_engine() is None, reason="no int8 engine on this CPU")
def test_busy_timings_cached_by_an_interrupted_calibration_are_timed_again_with_int8(tmp_path, monkeypatch):
    per_calibration = readings_per_calibration(tmp_path / "quiet")
    net, x, _ = mnist1d_net()
    busy, _ = faked(tmp_path, timer=BusyFor(QUIET_NETWORKS, readings=per_calibration, other=3e-4))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # after the networks' timings were cached, before their fit

    monkeypatch.setattr(busy, "_fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        busy.calibrate(net, x)
    again, _ = faked(tmp_path, timer=FakeTimer(QUIET_NETWORKS, other=3e-4))
    again.calibrate(net, x)  # the cached busy timings do not fit: forgotten, timed again
    assert [v for k, v in again.table.items() if k.endswith(":deployed:int8")] == [1.2e-3]
    assert again.bits == (8, 32)


def test_a_model_that_prices_the_chosen_layers_at_zero_still_gives_report_rows(tmp_path):
    import dataclasses

    from rlprune.policy import Policy
    from rlprune.report import layer_rows

    net, x, layers = mnist1d_net()
    model, _ = faked(tmp_path, timer=FakeTimer(QUIET_NETWORKS, other=3e-4))
    model.calibrate(net, x)
    # every op and its glue free
    free = {"float_scale": 0.0, "float_saving": 0.0, "int8_scale": 0.0, "int8_saving": 0.0, "glue": {}}
    model.calibration = dataclasses.replace(model.calibration, **free)
    policy = Policy(tuple((layer.name, dense(8)) for layer in layers))
    assert sum(model.latency(layer, dense(8)) for layer in layers) == 0.0
    rows = layer_rows(layers, policy, model, {})
    assert [row["latency_share"] for row in rows] == [0.0] * len(layers)
