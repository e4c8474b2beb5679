"""BitFusion cycle model and the BOPs proxy, checked by hand."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from rlprune.hardware import BitFusionModel, BopsModel, build_latency_model, perf_factor
from rlprune.layers import LayerInfo
from rlprune.policy import SUPPORTED_BITS, Choice, Pattern

CONF = Path(__file__).resolve().parents[2] / "conf" / "hardware"

CONV1D = LayerInfo("c1", "conv1d", 64, 64, (3,), (1,), 1, (64, 40), (64, 40))
LINEAR = LayerInfo("fc", "linear", 1280, 128, (), (), 1, (1280,), (128,))
CONV2D = LayerInfo("c2", "conv2d", 32, 64, (3, 3), (1, 1), 1, (32, 8, 8), (64, 8, 8))
DEPTHWISE = LayerInfo("dw", "conv2d", 32, 32, (3, 3), (1, 1), 32, (32, 8, 8), (32, 8, 8))
LAYERS = (CONV1D, LINEAR, CONV2D, DEPTHWISE)


def load(name: str):
    return build_latency_model(yaml.safe_load((CONF / f"{name}.yaml").read_text()))


def dense(bits: int) -> Choice:
    return Choice(Pattern.DENSE, 1, 1, bits, bits)


# -- BitFusion ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a_bits", "w_bits", "expected"),
    [(8, 8, 1), (4, 4, 4), (2, 2, 16), (2, 8, 4), (8, 2, 4), (4, 8, 2), (3, 3, 4), (1, 1, 16), (6, 2, 4)],
)
def test_bitfusion_perf_formula(a_bits, w_bits, expected):
    # floor(8 / max(b_a, 2)) * floor(8 / max(b_w, 2))
    assert perf_factor(a_bits, w_bits, p_max=8, p_min=2) == expected


def test_bitfusion_wide_operands_take_more_passes():
    assert perf_factor(16, 8) == Fraction(1, 2)
    assert perf_factor(16, 16) == Fraction(1, 4)


def test_bitfusion_conv1d_compute_bound_by_hand():
    model = load("bitfusion")
    assert isinstance(model, BitFusionModel)
    p = model.profile
    assert (p.array_n, p.array_m, p.frequency_hz, p.batch_size) == (16, 32, 500e6, 16)
    # B * ceil(OC/M) * OW * OH * KW * KH * ceil(IC/(N*perf)) = 16 * 2 * 40 * 1 * 3 * 1 * ceil(64/16)
    cycles = 16 * 2 * 40 * 3 * 4
    # memory: weights 64*192*8 + activations 16*(2560+2560)*8 bits over 192 bits/cycle: less than compute
    mem_cycles = math.ceil((64 * 192 * 8 + 16 * 5120 * 8) / 192)
    assert mem_cycles < cycles
    assert model.latency(CONV1D, dense(8)) == pytest.approx(cycles / 500e6, rel=1e-12)
    # 2-bit: perf 16 -> ceil(64 / 256) = 1 instead of 4
    assert model.latency(CONV1D, dense(2)) == pytest.approx(16 * 2 * 40 * 3 * 1 / 500e6, rel=1e-12)


def test_bitfusion_linear_memory_bound_by_hand():
    model = load("bitfusion")
    cycles = 16 * math.ceil(128 / 32) * math.ceil(1280 / 16)  # 5120
    mem_cycles = math.ceil((1280 * 128 * 8 + 16 * (1280 + 128) * 8) / 192)  # 7766
    assert mem_cycles > cycles
    # total = compute + max(0, memory - compute)
    assert model.latency(LINEAR, dense(8)) == pytest.approx(mem_cycles / 500e6, rel=1e-12)


def test_bitfusion_grouped_conv_runs_groups_one_after_another():
    model = load("bitfusion")
    # each of 32 groups: 16 * ceil(1/32) * 8 * 8 * 3 * 3 * ceil(1/16)
    cycles = 32 * 16 * 1 * 64 * 9 * 1
    assert model.compute_cycles(DEPTHWISE, 8, 8) == cycles


def test_bitfusion_only_filter_pruning_reduces_compute():
    model = load("bitfusion")
    base = model.latency(CONV2D, dense(8))
    kofn = Choice(Pattern.KOFN_WEIGHT, 29, 288, 8, 8)
    nm = Choice(Pattern.NM, 2, 4, 8, 8)
    assert model.latency(CONV2D, kofn) == base  # weights stored dense, no sparse datapath
    assert model.latency(CONV2D, nm) == base
    assert model.latency(CONV2D, Choice(Pattern.FILTER, 32, 64, 8, 8)) == pytest.approx(base / 2)


def test_bitfusion_compressed_weights_when_the_profile_says_so():
    cfg = yaml.safe_load((CONF / "bitfusion.yaml").read_text())
    cfg["compressed_patterns"] = ["kofn_weight"]
    model = build_latency_model(cfg)
    kofn = Choice(Pattern.KOFN_WEIGHT, 128, 1280, 8, 8)
    assert model.latency(LINEAR, kofn) < model.latency(LINEAR, dense(8))  # memory-bound layer


def test_bitfusion_float_is_reference_bits():
    model = load("bitfusion")
    for layer in LAYERS:
        assert model.latency(layer, Choice()) == model.latency(layer, dense(8))


def test_bitfusion_monotone():
    model = load("bitfusion")
    for layer in LAYERS:
        for low, high in itertools.pairwise(model.bits):
            assert model.latency(layer, dense(low)) <= model.latency(layer, dense(high))
        oc = layer.out_channels
        times = [model.latency(layer, Choice(Pattern.FILTER, k, oc, 8, 8)) for k in (oc, oc // 2, oc // 4, 1)]
        assert all(b <= a for a, b in itertools.pairwise(times))


# -- BOPs ---------------------------------------------------------------------------------------


def test_bops_proportional_to_keep_bits():
    model = load("bops")
    assert isinstance(model, BopsModel)
    rate = model.profile.bops_per_second
    for layer in LAYERS:
        base = model.latency(layer, dense(8))
        assert base == pytest.approx(layer.macs * 8 * 8 / rate)
        for w, a in itertools.product((2, 4, 8, 16), repeat=2):
            assert model.latency(layer, Choice(Pattern.DENSE, 1, 1, w, a)) == pytest.approx(base * w * a / 64)
        assert model.latency(layer, Choice(Pattern.NM, 2, 4, 4, 8)) == pytest.approx(base * 0.5 * 4 / 8)
        assert model.latency(layer, Choice(Pattern.NM, 1, 8, 8, 8)) == pytest.approx(base / 8)
        n = layer.reduction
        k = max(1, n // 3)
        assert model.latency(layer, Choice(Pattern.KOFN_WEIGHT, k, n, 8, 8)) == pytest.approx(base * k / n)
        oc = layer.out_channels
        assert model.latency(layer, Choice(Pattern.FILTER, oc // 4, oc, 8, 8)) == pytest.approx(base / 4)


def test_bops_float_and_network_input():
    model = load("bops")
    assert set(model.bits) == set(SUPPORTED_BITS)
    base = model.latency(CONV1D, dense(8))
    assert model.latency(CONV1D, Choice()) == pytest.approx(base * 16)  # float: 32 x 32
    first = model.with_input_layers(["c1"])
    assert first.latency(CONV1D, Choice()) == pytest.approx(base * 4)  # 32-bit weights x 8-bit input
    assert first.latency(CONV1D, Choice(Pattern.DENSE, 1, 1, 8, 4)) == pytest.approx(base / 2)
    assert first.latency(LINEAR, Choice()) == model.latency(LINEAR, Choice())  # not an input layer


def test_bops_batch_scales_linearly():
    cfg = yaml.safe_load((CONF / "bops.yaml").read_text())
    cfg["batch_size"] = 4
    assert build_latency_model(cfg).latency(LINEAR, dense(8)) == pytest.approx(
        4 * load("bops").latency(LINEAR, dense(8))
    )
