"""Packed weight bits and mask metadata, worked out by hand (docs/algorithms.md, "Weight storage")."""

from __future__ import annotations

import math

import pytest

from rlprune.errors import ConfigError
from rlprune.hardware import log2_binomial_bits, weight_storage_bits
from rlprune.layers import LayerInfo
from rlprune.policy import Choice, Pattern

FC = LayerInfo("fc", "linear", 8, 4, (), (), 1, (8,), (4,))  # 4 rows of 8 weights: 32 params
FC6 = LayerInfo("fc6", "linear", 6, 4, (), (), 1, (6,), (4,))  # rows of 6: N:M with M=4 pads
CONV = LayerInfo("conv", "conv2d", 4, 2, (3, 3), (1, 1), 1, (4, 5, 5), (2, 5, 5))  # 2 x 36 params


def bits(layer, pattern, keep, group, w_bits=8, compressed=True):
    return weight_storage_bits(layer, Choice(pattern, keep, group, w_bits, w_bits), w_bits, compressed)


def test_log2_binomial():
    assert log2_binomial_bits(4, 2) == 3  # C(4,2) = 6
    assert log2_binomial_bits(8, 2) == 5  # 28
    assert log2_binomial_bits(4, 1) == 2
    assert log2_binomial_bits(4, 4) == 0
    assert log2_binomial_bits(1280, 128) == math.ceil(math.log2(math.comb(1280, 128)))


def test_dense_and_filter():
    assert bits(FC, Pattern.DENSE, 1, 1) == 32 * 8
    assert bits(FC, Pattern.DENSE, 1, 1, w_bits=4) == 32 * 4
    assert bits(FC, Pattern.FILTER, 3, 4) == 3 * 8 * 8


def test_two_of_four_is_cusparselt_format():
    # 4 rows x 2 groups, 2 kept each = 16 values at 8 bits, plus 2 index bits per kept value
    assert bits(FC, Pattern.NM, 2, 4) == 16 * 8 + 16 * 2
    assert bits(FC, Pattern.NM_TRANSPOSABLE, 2, 4) == 16 * 8 + 16 * 2


def test_other_nm_is_log2_binomial_per_group():
    # 1:4: 8 groups, 8 kept, ceil(log2 4) = 2 bits per group
    assert bits(FC, Pattern.NM, 1, 4) == 8 * 8 + 8 * 2
    # 2:8: 4 groups, 8 kept, ceil(log2 28) = 5 bits per group
    assert bits(FC, Pattern.NM, 2, 8) == 8 * 8 + 4 * 5


def test_nm_pads_a_short_last_group():
    # rows of 6 with M = 4: 2 groups per row, the second padded
    assert bits(FC6, Pattern.NM, 1, 4) == (4 * 2) * 8 + (4 * 2) * 2


def test_kofn():
    # weight granularity: 4 rows keep 2 of 8 -> 8 values + 4 * ceil(log2 28) = 20 bits
    assert bits(FC, Pattern.KOFN_WEIGHT, 2, 8) == 8 * 8 + 4 * 5
    # kernel granularity: 2 filters keep 1 of 4 kernels of 9 weights -> 18 values + 2 * 2 bits
    assert bits(CONV, Pattern.KOFN_KERNEL, 1, 4) == 18 * 8 + 2 * 2


def test_unstructured_bitmap():
    assert bits(FC, Pattern.UNSTRUCTURED, 8, 32) == 8 * 8 + 32
    assert bits(FC, Pattern.UNSTRUCTURED, 1, 4) == 8 * 8 + 32  # density 1/4 of 32


def test_never_more_than_dense_and_uncompressed_is_dense():
    assert bits(FC, Pattern.UNSTRUCTURED, 31, 32) == 32 * 8  # 31 * 8 + 32 > 256
    assert bits(FC, Pattern.NM, 2, 4, compressed=False) == 32 * 8
    assert bits(FC, Pattern.KOFN_WEIGHT, 2, 8, compressed=False) == 32 * 8


def check_group(layer, choice):
    choice.spec.check_group(choice.keep, choice.group, layer.weight_shape, name=layer.name)


def test_group_must_fit_the_layer():
    with pytest.raises(ConfigError, match=r"group = out_channels = 4"):
        check_group(FC, Choice(Pattern.FILTER, 2, 8))
    with pytest.raises(ConfigError, match=r"kofn_kernel.*group = n = c_in/g = 4"):
        check_group(CONV, Choice(Pattern.KOFN_KERNEL, 1, 36))
    check_group(CONV, Choice(Pattern.KOFN_WEIGHT, 5, 36))
    check_group(FC, Choice(Pattern.UNSTRUCTURED, 1, 100))
