"""The 2-D view in ASP's layout, and its inverse."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlprune.errors import ModelError
from rlprune.masks import unview, weight_view
from tests.masks.helpers import weight_shapes


def test_conv_view_runs_over_input_channels_at_one_kernel_position() -> None:
    w = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)  # (O, I, kh, kw)
    view = weight_view(w)
    assert view.shape == (2, 12)
    # r = (kh, kw, c_in) with c_in fastest
    for o in range(2):
        for kh in range(2):
            for kw in range(2):
                for c in range(3):
                    assert view[o, (kh * 2 + kw) * 3 + c] == w[o, c, kh, kw]


def test_linear_view_is_the_weight() -> None:
    w = torch.randn(4, 5)
    assert weight_view(w) is w


@settings(max_examples=30, deadline=None)
@given(weight_shapes(), st.integers(0, 2**16))
def test_unview_inverts_the_view(shape: tuple[int, ...], seed: int) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(unview(weight_view(w), shape), w)


def test_a_vector_is_not_a_weight() -> None:
    with pytest.raises(ModelError, match="at least 2 dims"):
        weight_view(torch.randn(5))
