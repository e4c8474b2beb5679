"""SAD, mask diversity counts, and the compute_mask dispatch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlprune.errors import ConfigError, ModelError
from rlprune.masks import (
    compute_mask,
    kofn_mask,
    log10_mask_diversity,
    nm_mask,
    sad,
    transposable_mask,
    transposable_tile_count,
    unstructured_mask,
)
from rlprune.policy import Choice, Pattern
from tests.masks.helpers import make_scores


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**16))
def test_sad(rows: int, cols: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(rows, cols, generator=gen) > 0.5
    b = torch.rand(rows, cols, generator=gen) > 0.5
    assert sad(a, a) == 0.0
    assert sad(a, ~a) == 1.0
    differ = sum(x != y for x, y in zip(a.flatten().tolist(), b.flatten().tolist(), strict=True))
    assert sad(a, b) == pytest.approx(differ / a.numel())
    assert 0.0 <= sad(a, b) <= 1.0


def brute_force_tile_count(keep: int, group: int) -> int:
    rows = [r for r in itertools.product([0, 1], repeat=group) if sum(r) == keep]
    return sum(
        all(sum(col) == keep for col in zip(*tile, strict=True))
        for tile in itertools.product(rows, repeat=group)
    )


@pytest.mark.parametrize(
    ("keep", "group"), [(1, 2), (1, 3), (2, 3), (1, 4), (2, 4), (3, 4), (2, 5), (3, 5), (1, 6)]
)
def test_tile_count_matches_brute_force(keep: int, group: int) -> None:
    assert transposable_tile_count(keep, group) == brute_force_tile_count(keep, group)


def test_tile_counts_from_the_literature() -> None:
    # docs/algorithms.md ("Mask metrics") / Hubara et al.: 2:4 90, 1:4 and 3:4 24, 2:8 187,530,840,
    # 4:8 116,963,796,250.
    assert transposable_tile_count(2, 4) == 90
    assert transposable_tile_count(1, 4) == transposable_tile_count(3, 4) == 24
    assert transposable_tile_count(2, 8) == 187_530_840
    assert transposable_tile_count(4, 8) == 116_963_796_250
    assert transposable_tile_count(1, 8) == math.factorial(8)  # permutation matrices


def test_log10_mask_diversity_per_pattern() -> None:
    conv = (16, 8, 3, 3)  # view (16, 72)
    assert log10_mask_diversity(Choice(), conv) == 0.0
    assert log10_mask_diversity(Choice(Pattern.UNSTRUCTURED, 1, 4), (4, 4)) == pytest.approx(math.log10(1820))
    weight = log10_mask_diversity(Choice(Pattern.KOFN_WEIGHT, 30, 72), conv)
    assert weight == pytest.approx(16 * math.log10(math.comb(72, 30)))
    kernel = log10_mask_diversity(Choice(Pattern.KOFN_KERNEL, 3, 8), conv)
    assert kernel == pytest.approx(16 * math.log10(56))
    assert log10_mask_diversity(Choice(Pattern.FILTER, 4, 16), conv) == pytest.approx(math.log10(1820))
    assert log10_mask_diversity(Choice(Pattern.NM, 2, 4), conv) == pytest.approx(16 * 18 * math.log10(6))
    # padded: 72 = 9 runs of 8 exactly; (16, 10) has one run of 8 and a partial run of 2.
    assert log10_mask_diversity(Choice(Pattern.NM, 3, 8), (16, 10)) == pytest.approx(
        16 * (math.log10(56) + math.log10(1))
    )
    transposable = log10_mask_diversity(Choice(Pattern.NM_TRANSPOSABLE, 4, 8), (16, 8, 3, 3))
    assert transposable == pytest.approx(2 * 9 * math.log10(116_963_796_250))


def test_diversity_orders_the_patterns() -> None:
    # Per 4x4 tile: unstructured C(16, 8) > row-wise 2:4 6^4 > transposable 2:4 90.
    shape = (4, 4)
    unstructured = log10_mask_diversity(Choice(Pattern.UNSTRUCTURED, 2, 4), shape)
    nm = log10_mask_diversity(Choice(Pattern.NM, 2, 4), shape)
    transposable = log10_mask_diversity(Choice(Pattern.NM_TRANSPOSABLE, 2, 4), shape)
    assert unstructured > nm > transposable
    assert (unstructured, nm, transposable) == pytest.approx(
        (math.log10(12870), 4 * math.log10(6), math.log10(90))
    )


def test_diversity_errors_name_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"'fc'.*group = n = c_in/g\*prod\(kernel\) = 72, got 3:64"):
        log10_mask_diversity(Choice(Pattern.KOFN_WEIGHT, 3, 64), (16, 8, 3, 3), name="fc")
    with pytest.raises(ConfigError, match=r"'fc'.*multiples of M=8"):
        log10_mask_diversity(Choice(Pattern.NM_TRANSPOSABLE, 4, 8), (12, 16), name="fc")


@pytest.mark.parametrize("shape", [(16, 24), (8, 16, 3), (16, 8, 3, 3)])
def test_compute_mask_dispatches_on_the_pattern(shape: tuple[int, ...]) -> None:
    weight = make_scores(shape, 7, False) - 0.5
    scores = weight.abs()
    assert compute_mask(weight, Choice()).all()
    assert torch.equal(
        compute_mask(weight, Choice(Pattern.UNSTRUCTURED, 3, 8)), unstructured_mask(scores, 3 / 8)
    )
    n = math.prod(shape[1:])
    assert torch.equal(
        compute_mask(weight, Choice(Pattern.KOFN_WEIGHT, 5, n)), kofn_mask(scores, 5, "weight")
    )
    assert torch.equal(
        compute_mask(weight, Choice(Pattern.FILTER, 3, shape[0])), kofn_mask(scores, 3, "filter")
    )
    if len(shape) > 2:
        choice = Choice(Pattern.KOFN_KERNEL, 2, shape[1])
        assert torch.equal(compute_mask(weight, choice), kofn_mask(scores, 2, "kernel"))
    assert torch.equal(compute_mask(weight, Choice(Pattern.NM, 2, 4)), nm_mask(scores, 2, 4))
    exact = transposable_mask(scores, 2, 8, method="exact")
    assert torch.equal(compute_mask(weight, Choice(Pattern.NM_TRANSPOSABLE, 2, 8)), exact)
    random = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(compute_mask(weight, Choice(Pattern.NM, 1, 4), scores=random), nm_mask(random, 1, 4))


def test_compute_mask_errors_name_the_layer() -> None:
    weight = torch.randn(8, 10)
    with pytest.raises(ConfigError, match=r"'fc3'.*group = n = c_in/g\*prod\(kernel\) = 10, got 4:12"):
        compute_mask(weight, Choice(Pattern.KOFN_WEIGHT, 4, 12), name="fc3")
    with pytest.raises(ConfigError, match=r"'fc3'.*kernel granularity"):
        compute_mask(weight, Choice(Pattern.KOFN_KERNEL, 4, 10), name="fc3")
    with pytest.raises(ConfigError, match=r"'fc3'.*R=10.*M=4"):
        compute_mask(weight, Choice(Pattern.NM, 2, 4), name="fc3")
    assert compute_mask(weight, Choice(Pattern.NM, 2, 4), pad=True, name="fc3").sum() == 8 * (2 + 2 + 2)
    with pytest.raises(ConfigError, match=r"'fc3'.*N=4 >= M=4"):
        compute_mask(weight, Choice(Pattern.NM, 4, 4), name="fc3")
    with pytest.raises(ConfigError, match=r"'fc3'.*multiples of M=4"):
        compute_mask(weight, Choice(Pattern.NM_TRANSPOSABLE, 2, 4), name="fc3")
    with pytest.raises(ConfigError, match=r"'fc3'.*scores have shape"):
        compute_mask(weight, Choice(Pattern.NM, 2, 4), scores=torch.rand(8, 8), name="fc3")
    bad = weight.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ModelError, match=r"'fc3'.*NaN"):
        compute_mask(bad, Choice(Pattern.NM, 1, 2), name="fc3")
