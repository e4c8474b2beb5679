"""Every shipped hardware config loads and builds; bad configs fail with a message naming the problem."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rlprune.errors import ConfigError
from rlprune.hardware import (
    SOURCE_KINDS,
    LatencyModel,
    available_hardware,
    build_latency_model,
    hardware_config_dir,
    load_latency_model,
)
from rlprune.layers import LayerInfo
from rlprune.policy import SUPPORTED_BITS, Choice, Pattern

CONF = Path(__file__).resolve().parents[2] / "conf" / "hardware"
GPU_ONLY = {
    "local_gpu"
}  # measures the CUDA GPU at hand: built only where torch sees one (tests/test_local_gpu.py)
HERE = set() if torch.cuda.is_available() else GPU_ONLY
FILES = sorted(CONF.glob("*.yaml"))
BUILDABLE = [p for p in FILES if p.stem not in HERE]
LAYER = LayerInfo("c1", "conv1d", 64, 64, (3,), (1,), 1, (64, 40), (64, 40))


def raw(name: str) -> dict:
    return yaml.safe_load((CONF / f"{name}.yaml").read_text())


def test_the_expected_devices_ship():
    names = {p.stem for p in FILES}
    assert {"a100", "h100", "h200", "jetson_orin", "arm_cpu", "bitfusion", "bops"} <= names
    assert set(available_hardware()) == names
    assert hardware_config_dir().resolve() == CONF.resolve()


@pytest.mark.parametrize("path", BUILDABLE, ids=lambda p: p.stem)
def test_every_config_builds_from_plain_yaml_and_omegaconf(path):
    plain = yaml.safe_load(path.read_text())
    for cfg in (plain, OmegaConf.load(path)):
        model = build_latency_model(cfg)
        assert isinstance(model, LatencyModel)
        assert model.name == path.stem
        assert model.bits == tuple(sorted(model.bits)) and set(model.bits) <= set(SUPPORTED_BITS)
        assert model.reference_bits in model.bits
        assert {Pattern.DENSE, Pattern.FILTER} <= set(model.patterns)
        for n, m in model.nm_options:
            assert 0 < n < m
        seconds = model.latency(LAYER, model.dense_choice())
        assert seconds > 0
        for bits in model.bits:
            assert model.latency(LAYER, Choice(Pattern.DENSE, 1, 1, bits, bits)) > 0


def test_auto_searches_what_buys_each_device_latency():
    auto = {
        name: build_latency_model(raw(name)).search_pattern
        for name in available_hardware()
        if name not in HERE
    }
    assert auto["a100"] == auto["h100"] == auto["h200"] == auto["jetson_orin"] == ("nm",)
    assert auto["arm_cpu"] == ("kofn_weight",)  # its sparse kernel speeds up fine-grained weights
    assert auto["local_cpu"] == auto["bitfusion"] == ("filter",)
    unnamed = broken("a100", lambda c: c.pop("search_pattern"))
    assert build_latency_model(unnamed).search_pattern == ("filter",)  # runs anywhere, always pays
    two = broken("a100", lambda c: c.update(search_pattern=["nm", "filter"]))
    assert build_latency_model(two).search_pattern == ("nm", "filter")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_number_has_a_source(path):
    cfg = yaml.safe_load(path.read_text())
    notes = cfg["sources"]
    for key, value in cfg.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("reference_bits",):
            assert key in notes, f"{path.name}: {key} has no source"
    for note in list(notes.values()) + [
        o["source"] for o in cfg.get("nm_options", []) if isinstance(o, dict)
    ]:
        assert note.split(":", 1)[0].split()[0] in SOURCE_KINDS


def test_hydra_composes_the_hardware_group():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="arm_cpu", overrides=["batch_size=2", "eta_compute=0.25"])
    model = build_latency_model(cfg)
    assert model.batch_size == 2 and model.profile.eta_compute == 0.25


def test_load_by_name_and_unknown_name():
    assert load_latency_model("a100").name == "a100"
    with pytest.raises(ConfigError, match=r"no hardware config 'tpu'.*a100"):
        load_latency_model("tpu")


# -- bad configs --------------------------------------------------------------------------------


def broken(name: str, edit) -> dict:
    cfg = copy.deepcopy(raw(name))
    edit(cfg)
    return cfg


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        (
            "a100",
            lambda c: c.update(model="quantum"),
            r"unknown latency model kind model='quantum'.*roofline",
        ),
        ("a100", lambda c: c.pop("model"), r"missing field 'model'"),
        ("a100", lambda c: c.pop("bandwidth_gbs"), r"'a100'.*missing field 'bandwidth_gbs'.*number"),
        ("a100", lambda c: c.update(bandwidth_gbs="fast"), r"'a100'.*field 'bandwidth_gbs' must be a number"),
        ("a100", lambda c: c.update(launch_s="4e-6"), r"launch_s.*write 4\.0e-6 or 1\.0e\+12"),
        ("a100", lambda c: c.update(batch_size=0), r"batch_size' must be an integer >= 1"),
        ("a100", lambda c: c.update(batch_size=True), r"batch_size' must be an integer"),
        ("a100", lambda c: c.update(eta_compute=1.5), r"eta_compute' must be a number > 0 and <= 1"),
        ("a100", lambda c: c.update(bandwith_gbs=1), r"unknown field\(s\) \['bandwith_gbs'\]"),
        ("a100", lambda c: c.update(bits=[4, 7]), r"field 'bits' must be"),
        ("a100", lambda c: c.update(bits=[4, 8, 16, 32]), r"drop 32 from bits"),
        ("a100", lambda c: c.update(reference_bits=32), r"contains reference_bits=32"),
        (
            "a100",
            lambda c: c.update(patterns=["dense", "sparse"]),
            r"field 'patterns' must be a list of patterns",
        ),
        ("a100", lambda c: c["sources"].pop("eta_memory"), r"sources\.eta_memory is missing"),
        ("a100", lambda c: c["sources"].update(eta_memory="my guess"), r"sources\.eta_memory must be a note"),
        ("a100", lambda c: c["peak_tops"].update(int8=100), r"peak_tops must not grow with precision"),
        ("a100", lambda c: c["peak_tops"].update(tf=100), r"peak key 'tf'"),
        ("a100", lambda c: c["nm_options"][0].update(speedup=2.5), r"nm_options\[0\].*speedup.*<= 2\.0"),
        ("a100", lambda c: c["nm_options"][0].update(keep=4), r"nm_options\[0\].*keep"),
        ("a100", lambda c: c["nm_options"][0].update(bits=[2]), r"nm_options\[0\].*bits"),
        ("a100", lambda c: c["nm_options"][0].pop("source"), r"nm_options\[0\].*source"),
        ("a100", lambda c: c.update(patterns=["dense"]), r"nm_options are given but patterns lists neither"),
        (
            "h100",
            lambda c: c["nm_options"][1].update(bits=[8, 16]),
            r"nm_options lists the same keep:group twice for one bit-width",
        ),
        ("a100", lambda c: c.update(search_pattern="dense"), r"'search_pattern' must be one or a list of"),
        ("h200", lambda c: c.update(channel_multiple=0), r"'channel_multiple' must be a positive integer"),
        ("arm_cpu", lambda c: c["sparse_kernel"].update(efficiency=0), r"sparse_kernel.*efficiency"),
        ("arm_cpu", lambda c: c["sparse_kernel"].update(patterns=["nm"]), r"sparse_kernel.*patterns"),
        ("bitfusion", lambda c: c.update(p_min=16), r"p_min' must be an integer <= p_max=8"),
        ("bitfusion", lambda c: c.pop("array_m"), r"'bitfusion'.*missing field 'array_m'"),
        ("bitfusion", lambda c: c.update(compressed_patterns=["dense"]), r"compressed_patterns"),
        ("bops", lambda c: c.update(nm_options=[[4, 4]]), r"nm_options.*0 < keep < group"),
        ("bops", lambda c: c.update(input_layers="conv1"), r"input_layers.*list of layer names"),
    ],
)
def test_bad_configs_name_the_problem(name, edit, message):
    with pytest.raises(ConfigError, match=message):
        build_latency_model(broken(name, edit))


def test_h100_bits_need_a_peak():
    cfg = broken("h100", lambda c: c.update(bits=[8, 16], peak_tops={"int8": 1979}))
    with pytest.raises(ConfigError, match=r"bits \[16\] exceed the widest compute precision"):
        build_latency_model(cfg)


def test_non_mapping_config():
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_latency_model([1, 2])  # type: ignore[arg-type]


def test_origin_is_named():
    with pytest.raises(ConfigError, match=r"a100\.yaml"):
        build_latency_model(broken("a100", lambda c: c.pop("eta_compute")), origin=CONF / "a100.yaml")


def test_unsupported_pattern_and_bits_on_shipped_devices():
    arm = load_latency_model("arm_cpu")
    with pytest.raises(ConfigError, match=r"arm_cpu.*w_bits=16.*\[4, 8, 32\]"):
        arm.latency(LAYER, Choice(Pattern.DENSE, 1, 1, 16, 32))
    bf = load_latency_model("bitfusion")
    with pytest.raises(ConfigError, match=r"bitfusion.*a_bits=16"):
        bf.latency(LAYER, Choice(Pattern.DENSE, 1, 1, 8, 16))
    cfg = broken("bitfusion", lambda c: c.update(patterns=["dense", "filter"]))
    with pytest.raises(ConfigError, match=r"bitfusion.*cannot run pattern 'nm'.*\['dense', 'filter'\]"):
        build_latency_model(cfg).latency(LAYER, Choice(Pattern.NM, 2, 4, 8, 8))
    with pytest.raises(ConfigError, match=r"kofn_weight.*group = n = .* = 192"):
        arm.latency(LAYER, Choice(Pattern.KOFN_WEIGHT, 10, 64, 32, 32))


def test_local_cpu_config_resolves_in_a_process_that_only_composed_it(tmp_path):
    # a joblib or submitit worker resolves the job's config before any rlprune code runs
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_module\n"
        "from omegaconf import OmegaConf\n"
        "with initialize_config_module(version_base='1.3', config_module='rlprune.conf'):\n"
        f"    cfg = compose('config', overrides=['hardware=local_cpu', 'cache_dir={tmp_path}'])\n"
        "OmegaConf.resolve(cfg)\n"
        "assert 'rlprune.hardware.measured' not in sys.modules\n"
        "print(cfg.hardware.cache_dir)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path)
