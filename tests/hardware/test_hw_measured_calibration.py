"""The calibration fit on plain data: layers' ops timed alone, networks timed whole, no torch."""

from __future__ import annotations

import itertools

import pytest

from rlprune.hardware.measured.calibration import (
    Calibration,
    FitLayer,
    ImplausibleTimings,
    fit,
    fit_switches,
    mixed_bits,
    scale_and_share,
    width_glue,
)

NAMES = ("conv1", "conv2", "conv3", "fc1", "fc2")
PAIRS = list(itertools.pairwise(NAMES))


def layers(scale: float = 1.0, channels: int = 16) -> list[FitLayer]:
    """Five layers, their int8 ops half their float ones."""
    return [
        FitLayer(name, channels, {32: scale * 1e-5 * (i + 1), 8: scale * 0.5e-5 * (i + 1)})
        for i, name in enumerate(NAMES)
    ]


def predicted(cal: Calibration, found: list[FitLayer], bits: int) -> float:
    """A network of ``found`` dense at ``bits``, as the table predicts it."""
    return cal.overhead + sum(
        cal.layer_seconds(lay.name, lay.ops[bits], lay.channels, bits == 8) for lay in found
    )


@pytest.mark.parametrize("deployed_over_ops", [0.8, 1.05, 1.5])
def test_the_dense_deployed_networks_are_predicted_as_measured(deployed_over_ops):
    # ops alone summed up to 1.2x a deployed resnet20 at batch 1 (0.8 here), and to less than
    # a digits CNN whose pooling takes half its time at batch 32 (1.05: some glue; 1.5: all)
    dense = layers()
    ops = {b: sum(lay.ops[b] for lay in dense) for b in (8, 32)}
    glue = {lay.name: (0.1 * ops[32] / len(dense), lay.channels) for lay in dense}
    stub_total = 0.1 * ops[32]
    networks = {
        "deployed:float": deployed_over_ops * ops[32],
        "stubbed:float": 1e-4,
        "stubbed:int8": 1e-4 - 0.5 * stub_total,  # int8 pools: half the glue
    }
    first = fit(dense, [], glue, networks, PAIRS)
    # the int8 network spends 2% beyond its ops (quantize, dequantize), besides the float overhead
    int8_glue = 0.5 * sum(g for g, _ in first.glue.values())
    networks["deployed:int8"] = first.overhead + int8_glue + 1.02 * ops[8]
    cal = fit(dense, [], glue, networks, PAIRS)
    assert cal.overhead == first.overhead >= 0
    for bits, key in ((32, "deployed:float"), (8, "deployed:int8")):
        assert predicted(cal, dense, bits) == pytest.approx(networks[key], rel=1e-9)
    glue_kept = sum(g for g, _ in cal.glue.values())
    if deployed_over_ops < 1:  # no room for glue: every op is charged less
        assert glue_kept == 0 and cal.float_saving > 0
    else:  # the stubs' glue, up to what the network spends beyond its ops
        assert glue_kept == pytest.approx(min(0.1, deployed_over_ops - 1) * ops[32], rel=1e-9)
        assert cal.float_saving == 0 and cal.int8_glue_scale == pytest.approx(0.5)
    assert cal.int8_saving == pytest.approx(-0.02 * ops[8] / len(dense), rel=1e-9)
    assert (cal.switch_seconds, cal.mixed_seconds) == (0.0, 0.0)  # no mixed network timed


def test_the_half_width_network_is_fitted_less_its_glue_and_the_overhead():
    # the dense network spends 1.3x its ops: glue following the layers' widths (0.1) and an
    # overhead (0.2); its half-width copy less its glue and the overhead is all ops, which
    # run at 0.9 of their time alone and a constant per op (a digits CNN's int8 ops at batch 32)
    dense = [FitLayer(lay.name, lay.channels, {32: lay.ops[32]}) for lay in layers()]
    half = [FitLayer(lay.name, lay.channels, {32: lay.ops[32]}) for lay in layers(scale=0.4, channels=8)]
    ops, half_ops = sum(lay.ops[32] for lay in dense), sum(lay.ops[32] for lay in half)
    glue = 0.1 * ops / len(dense)
    half_glue = sum(glue * h.channels / d.channels for d, h in zip(dense, half, strict=True))
    extra = (ops - 0.9 * ops) / len(dense)  # per op, so that the dense ops add up as alone
    networks = {
        "deployed:float": 1.3 * ops,
        "deployed:half": 0.2 * ops + half_glue + 0.9 * half_ops + len(dense) * extra,
    }
    cal = fit(dense, half, {lay.name: (glue, lay.channels) for lay in dense}, networks, PAIRS)
    assert cal.overhead == pytest.approx(0.2 * ops)
    for found, key in ((dense, "deployed:float"), (half, "deployed:half")):
        assert predicted(cal, found, 32) == pytest.approx(networks[key])
    assert cal.float_scale == pytest.approx(0.9) and cal.float_saving == pytest.approx(-extra)


def test_an_excess_the_half_width_network_shrinks_with_is_the_ops_read_from_memory():
    # the ops run at 1.7x their time alone inside the network (their weights read from memory,
    # not cache) beside an overhead of 0.05 of the ops and some glue; the int8 network, whose
    # weights fit in cache, runs its ops as alone and costs less than that excess would
    dense = layers()
    half = layers(scale=0.4, channels=8)
    ops, half_ops = sum(lay.ops[32] for lay in dense), sum(lay.ops[32] for lay in half)
    int8_ops = sum(lay.ops[8] for lay in dense)
    glue = 0.1 * ops / len(dense)
    half_glue = sum(glue * h.channels / d.channels for d, h in zip(dense, half, strict=True))
    networks = {
        "deployed:float": 0.05 * ops + 0.1 * ops + 1.7 * ops,
        "deployed:half": 0.05 * ops + half_glue + 1.7 * half_ops,
        "stubbed:float": 1e-4,
        "stubbed:int8": 1e-4,
        "deployed:int8": 0.05 * ops + 0.1 * ops + int8_ops,
    }
    cal = fit(dense, half, {lay.name: (glue, lay.channels) for lay in dense}, networks, PAIRS)
    assert cal.float_scale == pytest.approx(1.7) and cal.overhead == pytest.approx(0.05 * ops)
    assert predicted(cal, half, 32) == pytest.approx(networks["deployed:half"])
    for bits, key in ((32, "deployed:float"), (8, "deployed:int8")):
        assert predicted(cal, dense, bits) == pytest.approx(networks[key])
    # without the half-width network the excess is overhead, which the int8 network contradicts
    with pytest.raises(ImplausibleTimings):
        fit(dense, [], {lay.name: (glue, lay.channels) for lay in dense}, networks, PAIRS)


def test_switching_precision_is_fitted_to_the_mixed_networks():
    # beyond their layers, a network pays 2 µs per float/int8 switch and 10 µs once
    dense = layers()
    networks = {"deployed:float": sum(lay.ops[32] for lay in dense)}
    for key, bits in mixed_bits(NAMES).items():
        switches = sum(bits[a] != bits[b] for a, b in PAIRS)
        layers_seconds = sum(lay.ops[bits[lay.name]] for lay in dense)
        networks[key] = layers_seconds + 2e-6 * switches + 10e-6
    cal = fit(dense, [], {}, networks, PAIRS)
    assert (cal.switch_seconds, cal.mixed_seconds) == pytest.approx((2e-6, 10e-6))
    assert sorted(mixed_bits(NAMES)) == [
        "deployed:alternating:32",
        "deployed:alternating:8",
        "deployed:halves:32",
        "deployed:halves:8",
    ]
    assert mixed_bits(NAMES[:1]) == {}  # one layer cannot mix


def test_a_layer_s_glue_is_what_narrowing_it_saved_above_the_noise():
    # the stubbed network ran 100 and 101 µs: noise 3 µs; a quarter of 16 channels kept
    narrowed = {"a": (91e-6, 16, 4), "b": (99e-6, 16, 4), "c": (100e-6, 16, 4)}
    glue = width_glue(100e-6, 101e-6, narrowed)
    assert glue == {"a": pytest.approx(12e-6), "b": 0.0, "c": 0.0}  # b saved 2.7 µs: noise
    cal = Calibration(glue={"a": (12e-6, 16)}, int8_glue_scale=0.5)
    assert cal.glue_seconds("a", 8, int8=False) == pytest.approx(6e-6)  # the glue of 8 channels
    assert cal.glue_seconds("a", 8, int8=True) == pytest.approx(3e-6)
    assert cal.glue_seconds("other", 8, int8=False) == 0.0


def test_ops_shrink_inside_the_network_between_a_scale_and_an_equal_share():
    # three 10 µs ops run as 24 µs in the network: a scale of 0.8 or 2 µs off each (k = 1)
    dense, ops, narrow = 24e-6, [10e-6] * 3, [5e-6] * 3
    assert scale_and_share(ops, dense, narrow, 12e-6) == pytest.approx((0.8, 0.0))  # as scaled
    assert scale_and_share(ops, dense, narrow, 9e-6) == pytest.approx((1.0, 2e-6))  # as shared
    assert scale_and_share(ops, dense, narrow, 10.5e-6) == pytest.approx((0.9, 1e-6))  # between
    assert scale_and_share(ops, dense, narrow, 1e-6) == pytest.approx((1.0, 2e-6))  # at most a share
    # a half-width network slower than the ops scaled: each op also costs a constant (int8's
    # quantize and dequantize), 15 k - 3 s = 14 µs beside 30 k - 3 s = 24 µs
    assert scale_and_share(ops, dense, narrow, 14e-6) == pytest.approx((2 / 3, -4e-6 / 3))
    assert scale_and_share(ops, dense, narrow, 30e-6) == pytest.approx((0.0, -8e-6))  # all constant


def test_mixing_costs_are_fitted_per_switch_and_once():
    # networks switching 5 and 1 times, 2 µs a switch and 10 µs once
    assert fit_switches([5, 5, 1, 1], [20e-6, 20e-6, 12e-6, 12e-6]) == pytest.approx((2e-6, 10e-6))
    # more switches costing less: all of it once; a negative constant: all of it per switch
    assert fit_switches([5, 1], [10e-6, 12e-6]) == pytest.approx((0.0, 11e-6))
    assert fit_switches([5, 1], [10e-6, 1e-6]) == pytest.approx(((5 * 10e-6 + 1e-6) / 26, 0.0))
    assert fit_switches([4, 4], [8e-6, 8e-6]) == pytest.approx((2e-6, 0.0))  # one switch count only
