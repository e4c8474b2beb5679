"""The measured lookup table: builds from its yaml, interpolates, caches safely. No timing assertions."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from rlprune.hardware import MeasuredModel, build_latency_model, hardware_config_dir
from rlprune.hardware.measured import int8_engine
from rlprune.layers import LayerInfo
from rlprune.policy import Choice, Pattern

CONV = LayerInfo("c", "conv1d", 16, 16, (3,), (1,), 1, (16, 20), (16, 20))
LINEAR = LayerInfo("fc", "linear", 24, 16, (), (), 1, (24,), (16,))


def plain_cfg(cache_dir, **extra) -> dict:
    cfg = yaml.safe_load((hardware_config_dir() / "local_cpu.yaml").read_text())
    cfg.update(cache_dir=str(cache_dir), rounds=1, block_time=1e-4, warmup=1, progress=False, **extra)
    return cfg


def fake(model: MeasuredModel) -> list[dict]:
    """Replace the timer by a deterministic function of the shape; return the specs it timed."""
    timed = []

    def time(specs):
        timed.extend(specs)
        return [1e-6 * (1 + s["c_in"] * s["c_out"] / 64) * (0.5 if s["bits"] == 8 else 1.0) for s in specs]

    model._time = time
    return timed


def dense(bits: int) -> Choice:
    return Choice(Pattern.DENSE, 1, 1, bits, bits)


def test_builds_from_yaml_and_measures_for_real(tmp_path):
    model = build_latency_model(plain_cfg(tmp_path))
    assert isinstance(model, MeasuredModel) and model.name == "local_cpu"
    assert model.nm_options == () and model.bits == (8, 32)
    for layer in (CONV, LINEAR):
        for bits in (8, 32):
            assert model.latency(layer, dense(bits)) > 0
    assert model.measurements == 4
    assert model.cache_path.is_file() and str(model.cache_path).startswith(str(tmp_path))


def test_ops_take_turns_only_with_ops_of_their_own_precision(tmp_path):
    model = build_latency_model(plain_cfg(tmp_path))
    chunks = []

    def time(specs):
        chunks.append({spec["bits"] for spec in specs})
        return [1e-6] * len(specs)

    model._time = time
    cells = [(LayerInfo(f"c{i}", "conv1d", 8 * i, 16, (3,), (1,), 1, (8 * i, 20), (16, 20)), dense(b))
             for i in range(1, 40) for b in (32, 8)]  # fmt: skip
    model.prepare(cells)
    assert len(chunks) > 2 and all(len(bits) == 1 for bits in chunks)


def test_unresolved_cache_dir_falls_back_to_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "env"))
    cfg = plain_cfg(tmp_path)
    cfg["cache_dir"] = "${rlprune.cache_dir:}"
    assert str(build_latency_model(cfg).cache_path).startswith(str(tmp_path / "env"))


def test_interpolation_lies_between_grid_neighbours(tmp_path):
    model = build_latency_model(plain_cfg(tmp_path))
    fake(model)
    layer = LayerInfo("c", "conv1d", 20, 20, (3,), (1,), 1, (20, 20), (20, 20))
    points = model.grid_points(layer, dense(32))
    assert sorted((s["c_in"], s["c_out"]) for s, _ in points) == [(16, 16), (16, 24), (24, 16), (24, 24)]
    assert sum(w for _, w in points) == pytest.approx(1.0)
    value = model.latency(layer, dense(32))
    low = model.latency(layer.with_channels(16, 16), dense(32))
    high = model.latency(layer.with_channels(24, 24), dense(32))
    assert low <= value <= high
    on_grid = model.grid_points(layer.with_channels(16, 8), dense(32))
    assert len(on_grid) == 1 and on_grid[0][1] == 1.0


def test_filter_and_sparse_patterns_cost_as_dense_shapes(tmp_path):
    model = build_latency_model(plain_cfg(tmp_path))
    fake(model)
    filt = Choice(Pattern.FILTER, 8, 16, 32, 32)
    assert model.latency(CONV, filt) == model.latency(CONV.with_channels(16, 8), dense(32))
    nm = Choice(Pattern.NM, 2, 4, 8, 8)
    assert model.latency(CONV, nm) == model.latency(CONV, dense(8))
    points = model.grid_points(CONV, filt)
    assert [(s["c_in"], s["c_out"]) for s, _ in points] == [(16, 8)]


def test_cache_round_trips(tmp_path):
    first = build_latency_model(plain_cfg(tmp_path))
    fake(first)
    first.prepare([(layer, dense(b)) for layer in (CONV, LINEAR) for b in (8, 32)])
    assert first.measurements == 4
    values = [first.latency(layer, dense(b)) for layer in (CONV, LINEAR) for b in (8, 32)]
    second = build_latency_model(plain_cfg(tmp_path))
    timed = fake(second)
    second.prepare([(layer, dense(b)) for layer in (CONV, LINEAR) for b in (8, 32)])
    assert [second.latency(layer, dense(b)) for layer in (CONV, LINEAR) for b in (8, 32)] == values
    assert timed == [] and second.measurements == 0


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "not json",
        lambda text: text.replace("e-06", "e-05", 1),  # an entry edited: checksum fails
    ],
    ids=["truncated", "garbage", "checksum"],
)
def test_a_corrupt_cache_is_rebuilt(tmp_path, damage):
    first = build_latency_model(plain_cfg(tmp_path))
    fake(first)
    first.latency(CONV, dense(32))
    path = first.cache_path
    path.write_text(damage(path.read_text()))
    second = build_latency_model(plain_cfg(tmp_path))
    timed = fake(second)
    second.latency(CONV, dense(32))
    assert len(timed) == 1
    data = json.loads(path.read_text())  # rewritten, valid again
    assert data["checksum"] == MeasuredModel._checksum(data["key"], data["entries"])


def test_a_cache_with_another_key_is_not_used(tmp_path):
    first = build_latency_model(plain_cfg(tmp_path))
    fake(first)
    first.latency(CONV, dense(32))
    data = json.loads(first.cache_path.read_text())
    data["key"]["cpu"] = "some other CPU"
    data["checksum"] = MeasuredModel._checksum(data["key"], data["entries"])
    first.cache_path.write_text(json.dumps(data))
    second = build_latency_model(plain_cfg(tmp_path))
    timed = fake(second)
    second.latency(CONV, dense(32))
    assert len(timed) == 1
    other_threads = build_latency_model(plain_cfg(tmp_path, threads=2))
    assert other_threads.cache_path != second.cache_path


def test_bad_config_fails_with_a_message(tmp_path):
    from rlprune.errors import ConfigError

    with pytest.raises(ConfigError, match="nm_options"):
        build_latency_model(plain_cfg(tmp_path, nm_options=[[2, 4]]))
    with pytest.raises(ConfigError, match="bits"):
        build_latency_model(plain_cfg(tmp_path, bits=[4, 8, 32]))
    with pytest.raises(ConfigError, match="epilogue"):
        build_latency_model(plain_cfg(tmp_path, epilogue="gelu"))


def test_calibrate_charges_glue_to_layers_and_caches_it(tmp_path, monkeypatch):
    from rlprune.hardware import measured
    from rlprune.layers import discover_layers
    from rlprune.models import MNIST1DCNN, ResNet20

    torch_model = ResNet20(in_channels=1, num_classes=10, width=8, dims=2).eval()
    x = torch.randn(2, 1, 8, 8)
    layers = {layer.name: layer for layer in discover_layers(torch_model, x)}
    model = build_latency_model(plain_cfg(tmp_path))
    fake(model)
    before = {name: model.latency(layer, dense(32)) for name, layer in layers.items()}
    overhead = model.calibrate(torch_model, x)
    assert overhead >= 0
    # int8 ops are scaled by how much slower they ran inside the whole int8 export than alone
    (scale,) = [v for k, v in model.table.items() if k.endswith(":int8_scale")]
    glue, _ = model._glue["stages.0.0.conv1"]
    conv1 = layers["stages.0.0.conv1"]
    seconds = model.latency(conv1, dense(8))  # measures its int8 entries where missing
    op = sum(w * model.table[spec["key"]] for spec, w in model.grid_points(conv1, dense(8)))
    assert seconds == pytest.approx(op * scale + glue * model._int8_glue_scale + model._int8_glue, rel=1e-12)
    after = {name: model.latency(layer, dense(32)) for name, layer in layers.items()}
    assert all(after[name] >= before[name] for name in layers)
    # a conv2 feeds a residual add: halving its output cannot run, so its glue stays constant
    assert after["stages.0.0.conv2"] == before["stages.0.0.conv2"]
    # a filter choice pays the glue of the channels it keeps, as the narrower layer does
    conv1 = layers["stages.0.0.conv1"]
    half = Choice(Pattern.FILTER, conv1.out_channels // 2, conv1.out_channels, 32, 32)
    narrower = conv1.with_channels(conv1.in_channels, conv1.out_channels // 2)
    assert model.latency(conv1, half) == pytest.approx(model.latency(narrower, dense(32)), rel=1e-12)

    def no_timing(*args, **kwargs):
        raise AssertionError("the calibration should come from the cache")

    monkeypatch.setattr(measured, "time_calls", no_timing)
    again = build_latency_model(plain_cfg(tmp_path))
    fake(again)
    assert again.calibrate(torch_model, x) == overhead
    assert {name: again.latency(layer, dense(32)) for name, layer in layers.items()} == after
    with pytest.raises(AssertionError, match="from the cache"):
        again.calibrate(MNIST1DCNN().eval(), torch.randn(2, 1, 40))


def test_int8_glue_dearer_is_shared_and_cheaper_shrinks_each_int8_layers_glue(tmp_path):
    # at batch 32 a digits CNN's quantized pooling ran in a sixth of its float pooling's time
    from rlprune.layers import discover_layers
    from rlprune.models import DigitsCNN

    net, x = DigitsCNN().eval(), torch.randn(2, 1, 8, 8)
    layers = {layer.name: layer for layer in discover_layers(net, x)}
    model = build_latency_model(plain_cfg(tmp_path))
    fake(model)
    model.calibrate(net, x)
    prefix = next(k for k in model.table if k.endswith(":int8_scale")).removesuffix("int8_scale")
    conv = layers["conv2"]
    model.prepare([(conv, dense(8)), (conv, dense(32))])
    table = model.table
    op8, op32 = (sum(w * table[s["key"]] for s, w in model.grid_points(conv, dense(b))) for b in (8, 32))
    scale, glue = table[prefix + "int8_scale"], 1e-5

    def seconds(extra: float, bits: int) -> float:
        model._table.update({f"{prefix}glue:{name}": glue for name in layers})
        model._table[prefix + "stubbed:float"] = 1e-4  # the stubbed float network: glue only
        model._table[prefix + "stubbed:int8"] = 1e-4 + extra
        model.calibrate(net, x)  # from the table
        return model.latency(conv, dense(bits))

    width = glue * len(layers)
    assert seconds(2e-6, 8) == pytest.approx(op8 * scale + glue + 2e-6 / len(layers), rel=1e-9)
    assert seconds(-0.25 * width, 8) == pytest.approx(op8 * scale + 0.75 * glue, rel=1e-9)
    assert seconds(-2 * width, 8) == pytest.approx(op8 * scale, rel=1e-9)  # no glue left to save
    assert seconds(-0.25 * width, 32) == pytest.approx(op32 + glue, rel=1e-9)  # float layers keep theirs


@pytest.mark.skipif(int8_engine() is None, reason="no int8 engine on this CPU")
def test_a_cheaper_int8_glue_is_cached_and_read_back(tmp_path, monkeypatch):
    # int8 glue cheaper than float glue is common since the export fuses ReLUs; its negative
    # difference once made the whole cache read as corrupt, so every run measured it again
    from rlprune.hardware import measured
    from rlprune.models import DigitsCNN

    net, x = DigitsCNN().eval(), torch.randn(2, 1, 8, 8)

    def timed(calls, precisions, *args):
        # full, again, the narrowed stubs, a stub call; then the stubbed int8 export and the export
        assert list(precisions[-2:]) == [8, 8]
        return [1e-4, 1e-4] + [8e-5] * (len(calls) - 5) + [1e-6, 5e-5, 6e-5]

    monkeypatch.setattr(measured, "time_apart", timed)
    model = build_latency_model(plain_cfg(tmp_path))
    fake(model)
    overhead = model.calibrate(net, x)
    assert model._int8_glue_scale < 1.0  # cheaper int8 glue shrinks each int8 layer's glue

    def no_timing(*args):
        raise AssertionError("the calibration should come from the cache")

    monkeypatch.setattr(measured, "time_apart", no_timing)
    again = build_latency_model(plain_cfg(tmp_path))
    assert again.table == model.table
    assert again.calibrate(net, x) == overhead and again._int8_glue_scale == model._int8_glue_scale


@pytest.mark.parametrize(("bits", "warned"), [(None, True), ([32], False)])
def test_a_mixed_precision_search_on_the_table_is_warned_of(tmp_path, caplog, bits, warned):
    # the table sums layers; a network mixing float and int8 layers costs more than that
    from rlprune.api import make_space
    from rlprune.layers import discover_layers
    from rlprune.models import MNIST1DCNN
    from tests.support import compose_config

    cfg = compose_config("hardware=local_cpu", "search.pattern=kofn_weight", f"search.bits={bits or 'null'}")
    model, x = MNIST1DCNN().eval(), torch.randn(1, 1, 40)
    layers = discover_layers(model, x)
    hardware = build_latency_model(plain_cfg(tmp_path))
    fake(hardware)
    with caplog.at_level("WARNING", logger="rlprune.api"):
        space = make_space(cfg, model, x, layers, layers, hardware)
    assert len(space.bits) == (2 if warned else 1)
    assert ("runs slower than the sum of its layers" in caplog.text) is warned
