"""N:M masks: top-N per run of M along the reduction dimension of the 2-D view."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlprune.errors import ConfigError
from rlprune.masks import nm_mask, unview, weight_view
from tests.masks.helpers import make_scores, reference_topk, weight_shapes

NM = st.sampled_from([(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8), (5, 16)])


@settings(max_examples=60, deadline=None)
@given(weight_shapes(), NM, st.integers(0, 2**16), st.booleans())
def test_nm_is_top_n_per_group(shape: tuple[int, ...], nm: tuple[int, int], seed: int, ties: bool) -> None:
    keep, group = nm
    o, *rest = shape
    shape = (o, group * rest[0], *rest[1:])  # make R a multiple of M
    scores = make_scores(shape, seed, ties)
    mask = nm_mask(scores, keep, group)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    groups = weight_view(mask).reshape(-1, group)
    assert (groups.sum(-1) == keep).all()
    assert torch.equal(groups, reference_topk(weight_view(scores).reshape(-1, group), keep))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 30), NM, st.integers(0, 2**16), st.booleans())
def test_padding_keeps_min_n_r_of_the_partial_run(
    rows: int, length: int, nm: tuple[int, int], seed: int, ties: bool
) -> None:
    keep, group = nm
    scores = make_scores((rows, length), seed, ties)
    mask = nm_mask(scores, keep, group, pad=True)
    for start in range(0, length, group):
        run = slice(start, min(start + group, length))
        width = run.stop - run.start
        assert torch.equal(mask[:, run], reference_topk(scores[:, run], min(keep, width)))


def test_conv_groups_are_consecutive_input_channels() -> None:
    scores = torch.zeros(1, 4, 1, 2)  # (O, I, kh, kw); groups run over I at each kernel position
    scores[0, :, 0, 0] = torch.tensor([1.0, 4.0, 3.0, 2.0])
    scores[0, :, 0, 1] = torch.tensor([9.0, 0.0, 0.0, 8.0])
    mask = nm_mask(scores, 2, 4)
    assert mask[0, :, 0, 0].tolist() == [False, True, True, False]
    assert mask[0, :, 0, 1].tolist() == [True, False, False, True]
    assert torch.equal(unview(weight_view(mask), mask.shape), mask)


def test_n_at_least_m_names_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"'fc'.*N < M.*N=4 >= M=4"):
        nm_mask(torch.rand(4, 8), 4, 4, name="fc")


def test_indivisible_reduction_names_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"'conv1'.*R=6.*multiple of M=4"):
        nm_mask(torch.rand(4, 6), 2, 4, name="conv1")
