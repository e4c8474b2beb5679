"""k-out-of-n at weight, kernel and filter granularity; unstructured; importance criteria."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlprune.errors import ConfigError
from rlprune.masks import kofn_group_size, kofn_mask, tied_filter_masks, unstructured_mask
from rlprune.masks.select import topk_rows
from tests.masks.helpers import make_scores, reference_topk, weight_shapes


def unit_sums(scores: torch.Tensor, granularity: str) -> torch.Tensor:
    """Unit scores computed independently: (groups, n)."""
    if granularity == "weight":
        return torch.stack([scores[o].flatten() for o in range(scores.shape[0])])
    if granularity == "kernel":
        return torch.tensor(
            [[scores[o, c].sum().item() for c in range(scores.shape[1])] for o in range(scores.shape[0])]
        )
    return torch.tensor([[scores[o].sum().item() for o in range(scores.shape[0])]])


def units_of_mask(mask: torch.Tensor, granularity: str) -> torch.Tensor:
    """(groups, n) unit mask, asserting every unit is kept or dropped whole."""
    if granularity == "weight":
        return mask.reshape(mask.shape[0], -1)
    if granularity == "kernel":
        per_kernel = mask.reshape(*mask.shape[:2], -1)
        assert (per_kernel.all(-1) | ~per_kernel.any(-1)).all(), "a kernel is split"
        return per_kernel.any(-1)
    per_filter = mask.reshape(mask.shape[0], -1)
    assert (per_filter.all(-1) | ~per_filter.any(-1)).all(), "a filter is split"
    return per_filter.any(-1)[None]


@settings(max_examples=60, deadline=None)
@given(
    weight_shapes(),
    st.sampled_from(["weight", "kernel", "filter"]),
    st.floats(0.01, 1.0),
    st.integers(0, 2**16),
    st.booleans(),
)
def test_kofn_keeps_exactly_k_per_group_and_the_best_units(
    shape: tuple[int, ...], granularity: str, share: float, seed: int, ties: bool
) -> None:
    if granularity == "kernel" and len(shape) == 2:
        return
    scores = make_scores(shape, seed, ties)
    n = kofn_group_size(shape, granularity)
    keep = max(1, math.ceil(share * n))
    mask = kofn_mask(scores, keep, granularity)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    units = units_of_mask(mask, granularity)
    assert (units.sum(-1) == keep).all()
    assert torch.equal(units, reference_topk(unit_sums(scores, granularity), keep))


def test_group_sizes() -> None:
    assert kofn_group_size((8, 5), "weight") == 5
    assert kofn_group_size((8, 4, 3, 3), "weight") == 36
    assert kofn_group_size((8, 4, 3), "kernel") == 4
    assert kofn_group_size((8, 4, 3, 3), "filter") == 8


def test_ties_go_to_the_lowest_index() -> None:
    mask = kofn_mask(torch.ones(2, 6), 2, "weight")
    assert mask.tolist() == [[True, True, False, False, False, False]] * 2
    filters = kofn_mask(torch.ones(4, 2, 3, 3), 1, "filter")
    assert filters.reshape(4, -1).all(1).tolist() == [True, False, False, False]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(1, 40), st.integers(0, 2**16), st.booleans())
def test_selection_paths_agree_with_a_plain_sort(rows: int, length: int, seed: int, ties: bool) -> None:
    # Rows up to SHORT_ROW use pairwise ranking, longer rows a partition, both in blocks of rows:
    # every path must match a plain sort.
    scores = make_scores((rows, length), seed, ties)
    for k in {1, (length + 1) // 2, length}:
        expected = reference_topk(scores, k).numpy()
        assert np.array_equal(topk_rows(scores.numpy(), k), expected)
        with mock.patch("rlprune.masks.select.BLOCK", 2 * length):  # two rows per block
            assert np.array_equal(topk_rows(scores.numpy(), k), expected)


def test_kernel_granularity_on_a_linear_layer_names_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"'fc1'.*kernel granularity needs a conv"):
        kofn_mask(torch.rand(4, 8), 2, "kernel", name="fc1")


def test_k_above_n_names_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"'conv2'.*k=9 > n=8"):
        kofn_mask(torch.rand(4, 8), 9, "weight", name="conv2")


def test_unknown_granularity() -> None:
    with pytest.raises(ConfigError, match="valid"):
        kofn_mask(torch.rand(4, 8), 2, "channel")


@settings(max_examples=30, deadline=None)
@given(weight_shapes(), st.floats(0.0, 1.0, exclude_min=True), st.integers(0, 2**16), st.booleans())
def test_unstructured_keeps_the_top_share(
    shape: tuple[int, ...], ratio: float, seed: int, ties: bool
) -> None:
    scores = make_scores(shape, seed, ties)
    mask = unstructured_mask(scores, ratio)
    kept = max(1, round(ratio * scores.numel()))
    assert mask.shape == scores.shape and mask.sum().item() == kept
    assert torch.equal(mask.flatten()[None], reference_topk(scores.flatten()[None], kept))


def test_unstructured_refuses_a_ratio_out_of_range() -> None:
    with pytest.raises(ConfigError, match="'fc'"):
        unstructured_mask(torch.rand(3, 3), 0.0, name="fc")


def test_tied_layers_keep_the_same_filters_ranked_by_their_normalized_sums() -> None:
    # filter L1 norms: a = [1, 2, 3, 10] (mean 4), b = [400, 300, 200, 100] (mean 250); normalized
    # sums 1.85, 1.7, 1.55, 2.9 keep filters 3 and 0, where raw sums (b outvoting a) keep 0 and 1
    a = torch.tensor([1.0, 2.0, 3.0, 10.0])[:, None].expand(4, 5).contiguous() / 5
    b = torch.tensor([400.0, 300.0, 200.0, 100.0])[:, None, None].expand(4, 2, 5).contiguous() / 10
    masks = tied_filter_masks({"a": a, "b": b}, 2)
    assert masks["a"].shape == a.shape and masks["b"].shape == b.shape
    for mask in masks.values():
        assert mask.flatten(1).all(1).tolist() == [True, False, False, True]
        assert torch.equal(mask.flatten(1).any(1), mask.flatten(1).all(1))  # whole filters


def test_one_layer_alone_keeps_what_filter_kofn_keeps() -> None:
    scores = make_scores((6, 3, 3, 3), seed=5, ties=False)
    assert torch.equal(tied_filter_masks({"conv": scores}, 4)["conv"], kofn_mask(scores, 4, "filter"))


def test_tied_layers_must_have_equal_filters() -> None:
    with pytest.raises(ConfigError, match=r"\['a', 'b'\] must have equal filters"):
        tied_filter_masks({"a": torch.rand(4, 3), "b": torch.rand(5, 3)}, 2)
