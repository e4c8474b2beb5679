"""Roofline model: the formula by hand, precision mapping, pattern speedups, monotonicity."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml

from rlprune.errors import ConfigError
from rlprune.hardware import RooflineModel, build_latency_model, load_latency_model, network_latency
from rlprune.layers import LayerInfo
from rlprune.policy import Choice, Pattern, Policy

CONF = Path(__file__).resolve().parents[2] / "conf" / "hardware"
ROOFLINE_FILES = sorted(
    p.stem for p in CONF.glob("*.yaml") if yaml.safe_load(p.read_text()).get("model") == "roofline"
)

LINEAR = LayerInfo("fc", "linear", 1000, 1000, (), (), 1, (1000,), (1000,))
CONV1D = LayerInfo("c1", "conv1d", 64, 64, (3,), (1,), 1, (64, 40), (64, 40))
CONV2D = LayerInfo("c2", "conv2d", 32, 64, (3, 3), (1, 1), 1, (32, 8, 8), (64, 8, 8))
FC_SMALL = LayerInfo("fc2", "linear", 1280, 128, (), (), 1, (1280,), (128,))
LAYERS = (LINEAR, CONV1D, CONV2D, FC_SMALL)


def toy_profile(**changes) -> dict:
    """A made-up device with round numbers, so that every latency can be worked out by hand."""
    cfg = {
        "model": "roofline",
        "name": "toy",
        "batch_size": 64,
        "reference_bits": 16,
        "bits": [4, 8, 16],
        "peak_tops": {"int4": 200, "int8": 100, "fp16": 50},
        "bandwidth_gbs": 100,
        "eta_compute": 0.5,
        "eta_memory": 0.5,
        "launch_s": 1.0e-6,
        "patterns": ["dense", "filter", "nm", "kofn_weight", "unstructured"],
        "nm_options": [{"keep": 2, "group": 4, "speedup": 2.0, "bits": [8, 16], "source": "estimate: test"}],
        "sources": {
            k: "estimate: test"
            for k in ("batch_size", "peak_tops", "bandwidth_gbs", "eta_compute", "eta_memory", "launch_s")
        },
    }
    cfg.update(changes)
    return cfg


def shipped(name: str) -> RooflineModel:
    return build_latency_model(yaml.safe_load((CONF / f"{name}.yaml").read_text()))


def dense(bits: int) -> Choice:
    return Choice(Pattern.DENSE, 1, 1, bits, bits)


# -- the formula by hand ------------------------------------------------------------------------


def test_memory_bound_linear_by_hand():
    model = build_latency_model(toy_profile())
    # FLOPs = 2 * 1e6 MACs * 64 = 1.28e8 at 50e12 * 0.5 -> 5.12e-6 s
    # bytes = weights 1e6 * 2 + activations 64 * (1000 + 1000) * 2 = 2.256e6 at 100e9 * 0.5 -> 4.512e-5 s
    expected = max(1.28e8 / 25e12, 2.256e6 / 5e10) + 1e-6
    assert model.latency(LINEAR, dense(16)) == pytest.approx(expected, rel=1e-12)
    assert model.terms(LINEAR, dense(16)).bound == "memory"
    # 8-bit weights, 16-bit activations (input and output): 1e6 * 1 + 64 * 2000 * 2 bytes
    mixed = Choice(Pattern.DENSE, 1, 1, 8, 16)
    assert model.latency(LINEAR, mixed) == pytest.approx((1e6 + 256000) / 5e10 + 1e-6, rel=1e-12)


def test_compute_bound_linear_by_hand():
    model = build_latency_model(toy_profile(bandwidth_gbs=10000))
    # the same bytes at 10e12 * 0.5 -> 4.512e-7 s, now below the compute time
    expected = 1.28e8 / 25e12 + 1e-6
    assert model.latency(LINEAR, dense(16)) == pytest.approx(expected, rel=1e-12)
    # int8 doubles the rate: 1.28e8 / (100e12 * 0.5)
    assert model.latency(LINEAR, dense(8)) == pytest.approx(1.28e8 / 50e12 + 1e-6, rel=1e-12)


def test_conv1d_by_hand_with_2of4():
    model = build_latency_model(toy_profile(bandwidth_gbs=10000, batch_size=2))
    choice = Choice(Pattern.NM, 2, 4, 8, 8)
    macs = 40 * 64 * 64 * 3  # positions * c_out * c_in * k
    flops = 2 * macs * 2
    # weights: 64 rows * 48 groups of 4, 2 kept at 8 bits + 2 index bits each; activations 8-bit
    groups = 64 * (192 // 4)
    weight_bytes = (groups * 2 * 8 + groups * 2 * 2) / 8
    act_bytes = 2 * (64 * 40 + 64 * 40) * 1
    expected = max(flops / (100e12 * 0.5 * 2.0), (weight_bytes + act_bytes) / (10000e9 * 0.5)) + 1e-6
    assert model.latency(CONV1D, choice) == pytest.approx(expected, rel=1e-12)


def test_float_runs_at_reference_bits():
    for name in ROOFLINE_FILES:
        model = shipped(name)
        for layer in LAYERS:
            assert model.latency(layer, Choice()) == model.latency(layer, model.dense_choice())


# -- precisions ---------------------------------------------------------------------------------


def test_bits_below_smallest_precision_give_no_compute_gain():
    option = {"keep": 2, "group": 4, "speedup": 2.0, "bits": [16], "source": "estimate: test"}
    model = build_latency_model(
        toy_profile(bits=[2, 4, 8, 16], peak_tops={"int4": 200, "fp16": 50}, nm_options=[option])
    )
    four, two = model.terms(LINEAR, dense(4)), model.terms(LINEAR, dense(2))
    assert two.compute_s == four.compute_s
    assert two.bytes < four.bytes
    # 8-bit has no peak of its own: it runs at the next wider precision, fp16
    assert model.terms(LINEAR, dense(8)).compute_s == model.terms(LINEAR, dense(16)).compute_s


def test_arm_cpu_4bit_computes_at_int8():
    model = shipped("arm_cpu")
    for layer in LAYERS:
        w4, w8 = model.terms(layer, dense(4)), model.terms(layer, dense(8))
        assert w4.compute_s == w8.compute_s
        assert w4.bytes < w8.bytes


def test_mixed_bits_use_the_wider_operand():
    model = build_latency_model(toy_profile(bandwidth_gbs=10000))
    w4a16 = model.terms(LINEAR, Choice(Pattern.DENSE, 1, 1, 4, 16))
    assert w4a16.compute_bits == 16
    assert w4a16.compute_s == model.terms(LINEAR, dense(16)).compute_s


# -- pattern speedups ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROOFLINE_FILES)
def test_two_of_four_compute_gain_at_most_two(name):
    model = shipped(name)
    for layer, bits in itertools.product(LAYERS, model.bits):
        if not model.supports(layer, Choice(Pattern.NM, 2, 4, bits, bits)):
            continue
        base = model.terms(layer, dense(bits)).compute_s
        sparse = model.terms(layer, Choice(Pattern.NM, 2, 4, bits, bits)).compute_s
        assert base / 2 - 1e-18 <= sparse <= base


def test_nm_cover_rule():
    model = build_latency_model(toy_profile(bandwidth_gbs=10000))
    base = model.terms(LINEAR, dense(16)).compute_s
    speed = {
        (n, m): base / model.terms(LINEAR, Choice(Pattern.NM, n, m, 16, 16)).compute_s
        for n, m in [(2, 4), (1, 4), (2, 8), (1, 8), (4, 8), (3, 4)]
    }
    assert speed[(2, 4)] == pytest.approx(2.0)
    assert speed[(1, 4)] == pytest.approx(2.0)  # a 1:4 mask is a 2:4 mask
    assert speed[(2, 8)] == pytest.approx(2.0)  # every run of 4 in 2:8 has at most 2 kept
    assert speed[(1, 8)] == pytest.approx(2.0)
    assert speed[(4, 8)] == pytest.approx(1.0)  # a run of 4 may hold 3 or 4 kept
    assert speed[(3, 4)] == pytest.approx(1.0)


def test_nm_speedup_only_at_listed_precisions():
    model = build_latency_model(toy_profile(bandwidth_gbs=10000))  # 2:4 runs at 8 and 16, not 4
    assert model.terms(LINEAR, Choice(Pattern.NM, 2, 4, 4, 4)).speedup == 1.0
    assert model.terms(LINEAR, Choice(Pattern.NM, 2, 4, 8, 8)).speedup == 2.0


@pytest.mark.parametrize("name", ["h100", "h200"])
def test_nm_speedup_per_precision_on_hopper(name):
    # the Hopper profiles carry measured 2:4 gains per precision (python -m rlprune.bench gpu)
    model = shipped(name)
    gains = {b: model.terms(LINEAR, Choice(Pattern.NM, 2, 4, b, b)).speedup for b in (8, 16)}
    options = {b: o.speedup for o in model.profile.nm_options for b in o.bits}
    assert gains == options
    assert gains[8] != gains[16]


def test_sparse_kernel_rule():
    kernel = {
        "patterns": ["kofn_weight", "unstructured"],
        "bits": [16],
        "efficiency": 0.4,
        "max_speedup": 3.0,
        "source": "estimate: test",
    }
    model = build_latency_model(toy_profile(bandwidth_gbs=1e6, sparse_kernel=kernel))
    base = model.terms(LINEAR, dense(16)).compute_s
    for keep, expected in [(800, 1.0), (400, 1.0), (200, 2.0), (100, 3.0), (10, 3.0)]:
        choice = Choice(Pattern.KOFN_WEIGHT, keep, 1000, 16, 16)
        assert base / model.terms(LINEAR, choice).compute_s == pytest.approx(expected)
    # not at 8 bits, and not declared for kofn_kernel
    assert model.terms(LINEAR, Choice(Pattern.KOFN_WEIGHT, 100, 1000, 8, 8)).speedup == 1.0
    # no sparse kernel declared: k-of-n runs at the dense rate
    plain = build_latency_model(toy_profile(bandwidth_gbs=1e6))
    assert plain.terms(LINEAR, Choice(Pattern.KOFN_WEIGHT, 100, 1000, 16, 16)).compute_s == pytest.approx(
        base
    )


def test_pointwise_only_sparse_kernel_skips_wide_kernels():
    kernel = {
        "patterns": ["kofn_weight"],
        "bits": [16],
        "efficiency": 0.5,
        "max_speedup": 4.0,
        "pointwise_only": True,
        "source": "estimate: test",
    }
    model = build_latency_model(toy_profile(sparse_kernel=kernel))
    assert model.terms(CONV1D, Choice(Pattern.KOFN_WEIGHT, 19, 192, 16, 16)).speedup == 1.0
    assert model.terms(LINEAR, Choice(Pattern.KOFN_WEIGHT, 100, 1000, 16, 16)).speedup == 4.0


def test_filter_is_the_smaller_dense_layer():
    model = build_latency_model(toy_profile())
    small = CONV2D.with_channels(32, 16)
    assert model.latency(CONV2D, Choice(Pattern.FILTER, 16, 64, 8, 8)) == model.latency(small, dense(8))


def test_uncompressed_patterns_save_no_bytes():
    model = build_latency_model(toy_profile(compressed_patterns=["nm"]))
    kofn = model.terms(LINEAR, Choice(Pattern.KOFN_WEIGHT, 100, 1000, 16, 16))
    assert kofn.bytes == model.terms(LINEAR, dense(16)).bytes
    assert model.terms(LINEAR, Choice(Pattern.NM, 2, 4, 16, 16)).bytes < kofn.bytes


# -- monotonicity on every shipped profile ------------------------------------------------------


def sparse_choices(model, layer, bits):
    """Sequences of choices from dense to sparser, for every pattern the device runs."""
    n = layer.reduction
    chains = [
        [dense(bits)]
        + [
            Choice(Pattern.FILTER, k, layer.out_channels, bits, bits)
            for k in sorted({layer.out_channels * 3 // 4, layer.out_channels // 2, 1}, reverse=True)
        ]
    ]
    if Pattern.KOFN_WEIGHT in model.patterns:
        ks = sorted({n, n * 3 // 4, n // 2, n // 4, n // 10, 1}, reverse=True)
        chains.append([Choice(Pattern.KOFN_WEIGHT, k, n, bits, bits) for k in ks])
    if Pattern.UNSTRUCTURED in model.patterns:
        p = layer.params
        chains.append([Choice(Pattern.UNSTRUCTURED, k, p, bits, bits) for k in (p, p // 2, p // 10, 1)])
    for n_keep, m in model.nm_options:
        chains.append([dense(bits), Choice(Pattern.NM, n_keep, m, bits, bits)])
    return chains


@pytest.mark.parametrize("name", ROOFLINE_FILES)
def test_more_sparsity_never_slower(name):
    model = shipped(name)
    for layer, bits in itertools.product(LAYERS, model.bits):
        for chain in sparse_choices(model, layer, bits):
            times = [model.latency(layer, c) for c in chain]
            assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(times)), (layer.name, chain, times)


@pytest.mark.parametrize("name", ROOFLINE_FILES)
def test_fewer_bits_never_slower(name):
    model = shipped(name)
    for layer in LAYERS:
        for chain in sparse_choices(model, layer, model.reference_bits):
            for choice in chain:
                for low, high in itertools.pairwise(model.bits):
                    for field in ("w_bits", "a_bits", "both"):
                        if field == "both":
                            lo = Choice(choice.pattern, choice.keep, choice.group, low, low)
                            hi = Choice(choice.pattern, choice.keep, choice.group, high, high)
                        else:
                            base = {"w_bits": high, "a_bits": high}
                            lo = Choice(choice.pattern, choice.keep, choice.group, **{**base, field: low})
                            hi = Choice(choice.pattern, choice.keep, choice.group, **base)
                        assert model.latency(layer, lo) <= model.latency(layer, hi), (name, layer.name, lo)


# -- errors, determinism, network sum -----------------------------------------------------------


def test_unsupported_choices_raise_config_error():
    model = build_latency_model(toy_profile(patterns=["dense", "nm"]))
    with pytest.raises(ConfigError, match=r"toy.*kofn_weight.*\['dense', 'filter', 'nm'\]"):
        model.latency(LINEAR, Choice(Pattern.KOFN_WEIGHT, 10, 1000, 16, 16))
    with pytest.raises(ConfigError, match=r"toy.*w_bits=2.*\[4, 8, 16\]"):
        model.latency(LINEAR, Choice(Pattern.DENSE, 1, 1, 2, 16))
    with pytest.raises(ConfigError, match=r"a_bits=6"):
        model.latency(LINEAR, Choice(Pattern.NM, 2, 4, 8, 6))
    with pytest.raises(ConfigError, match=r"group = out_channels = 1000"):
        model.latency(LINEAR, Choice(Pattern.FILTER, 10, 100, 16, 16))
    h100 = shipped("h100")
    with pytest.raises(ConfigError, match=r"h100.*w_bits=4"):
        h100.latency(LINEAR, dense(4))
    assert not h100.supports(LINEAR, dense(4))
    assert h100.supports(LINEAR, dense(8))


def test_deterministic_and_memoized():
    a, b = shipped("a100"), shipped("a100")
    choice = Choice(Pattern.NM, 2, 4, 8, 8)
    first = a.latency(CONV2D, choice)
    assert a.latency(CONV2D, choice) == first == b.latency(CONV2D, choice)


def test_network_latency_sums_layers():
    model = shipped("a100")
    choices = [Choice(Pattern.NM, 2, 4, 8, 8), dense(4), Choice(Pattern.FILTER, 32, 64, 16, 16), dense(16)]
    total = network_latency(model, LAYERS, choices)
    assert total == pytest.approx(sum(model.latency(lay, c) for lay, c in zip(LAYERS, choices, strict=True)))
    policy = Policy.of({"fc": choices[0]})
    expected = model.latency(LINEAR, choices[0]) + sum(
        model.latency(lay, model.dense_choice()) for lay in LAYERS[1:]
    )
    assert network_latency(model, LAYERS, policy) == pytest.approx(expected)
    assert network_latency(model, LAYERS, {"fc": choices[0]}) == pytest.approx(expected)
    with pytest.raises(ValueError):
        network_latency(model, LAYERS, choices[:2])


def test_dense_choice_is_reference_bits():
    for name in ROOFLINE_FILES:
        model = shipped(name)
        ref = model.dense_choice()
        assert (ref.pattern, ref.w_bits, ref.a_bits) == (
            Pattern.DENSE,
            model.reference_bits,
            model.reference_bits,
        )
        assert math.isfinite(model.latency(CONV1D, ref)) and model.latency(CONV1D, ref) > 0


def test_gpu_profiles_give_nm_only_to_the_layers_their_runtime_runs_sparse():
    linear = LayerInfo("fc", "linear", 1024, 1024, (), (), 1, (64, 1024), (64, 1024))
    conv = LayerInfo("conv", "conv2d", 256, 256, (3, 3), (1, 1), 1, (256, 32, 32), (256, 32, 32))
    two_four = Choice(Pattern.NM, 2, 4, 16, 16)
    pytorch = load_latency_model("h200")
    assert "Linear layers only" in pytorch.profile.runtime
    assert pytorch.speedup(linear, two_four, 16) == pytest.approx(1.5)
    assert pytorch.speedup(conv, two_four, 16) == 1.0  # PyTorch has no 2:4 convolution
    tensorrt = load_latency_model("jetson_orin")
    assert tensorrt.speedup(conv, two_four, 16) == pytest.approx(2.0)
