"""Transposable N:M: validity, optimality of the exact solver, and the greedy 2-approximation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from rlprune.errors import ConfigError
from rlprune.masks import transposable_mask, weight_view
from rlprune.masks.transposable import from_tiles, to_tiles
from tests.masks.helpers import make_scores

# All 2^16 0/1 matrices of a 4x4 tile, as rows of 16, and those with N per row and column.
ALL_4X4 = torch.tensor(list(itertools.product([0, 1], repeat=16)), dtype=torch.float64)
_GRID = ALL_4X4.reshape(-1, 4, 4)
VALID_4X4 = {n: ALL_4X4[((_GRID.sum(1) == n) & (_GRID.sum(2) == n)).all(1)] for n in (1, 2, 3)}


def tiles_of(mask_or_scores: torch.Tensor, group: int) -> torch.Tensor:
    return to_tiles(weight_view(mask_or_scores), group)


def brute_force_optimum(tile: torch.Tensor, keep: int) -> float:
    """Best kept sum over every 4x4 mask with exactly `keep` per row and column."""
    return (VALID_4X4[keep] @ tile.double().flatten()).max().item()


def lp_optimum(tile: torch.Tensor, keep: int) -> float:
    """The exact optimum by an independent LP (totally unimodular, so integral)."""
    m = tile.shape[0]
    rows = np.kron(np.eye(m), np.ones(m))  # sum_j x_ij
    cols = np.kron(np.ones(m), np.eye(m))  # sum_i x_ij
    res = linprog(
        -tile.double().flatten().numpy(),
        A_eq=np.vstack([rows, cols]),
        b_eq=np.full(2 * m, keep),
        bounds=(0, 1),
        method="highs",
    )
    return -res.fun


def naive_greedy(tile: torch.Tensor, keep: int) -> torch.Tensor:
    """The paper's greedy on one tile, in plain Python; ties to the lower flat position."""
    m = tile.shape[0]
    values = tile.flatten().tolist()
    mask = torch.zeros(m, m, dtype=torch.bool)
    for pos in sorted(range(m * m), key=lambda p: (-values[p], p)):
        i, j = divmod(pos, m)
        if mask[i].sum() < keep and mask[:, j].sum() < keep:
            mask[i, j] = True
    return mask


def test_brute_force_counts_90_valid_2_of_4_tiles() -> None:
    assert [len(VALID_4X4[n]) for n in (1, 2, 3)] == [24, 90, 24]


@pytest.mark.parametrize("method", ["exact", "greedy"])
def test_chunks_do_not_change_the_mask(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = make_scores((16, 24), 5, True)
    whole = transposable_mask(scores, 4, 8, method=method)
    monkeypatch.setattr("rlprune.masks.transposable.GREEDY_CHUNK", 2 * 64)
    monkeypatch.setattr("rlprune.masks.transposable.EXACT_CHUNK", 2 * 64)
    assert torch.equal(transposable_mask(scores, 4, 8, method=method), whole)


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([1, 2, 3]), st.integers(0, 2**16), st.booleans(), st.integers(1, 3), st.integers(1, 3))
def test_exact_matches_brute_force_on_4x4(keep: int, seed: int, ties: bool, tr: int, tc: int) -> None:
    scores = make_scores((4 * tr, 4 * tc), seed, ties)
    mask = transposable_mask(scores, keep, 4, method="exact")
    tm, ts = tiles_of(mask, 4), tiles_of(scores, 4)
    assert (tm.sum(1) == keep).all() and (tm.sum(2) == keep).all()
    for m, s in zip(tm, ts, strict=True):
        assert (s[m].double().sum().item()) == pytest.approx(brute_force_optimum(s, keep), rel=1e-6)


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([2, 4, 6]), st.integers(0, 2**16), st.booleans())
def test_exact_matches_an_lp_on_8x8(keep: int, seed: int, ties: bool) -> None:
    scores = make_scores((16, 16), seed, ties)
    mask = transposable_mask(scores, keep, 8, method="exact")
    tm, ts = tiles_of(mask, 8), tiles_of(scores, 8)
    assert (tm.sum(1) == keep).all() and (tm.sum(2) == keep).all()
    for m, s in zip(tm, ts, strict=True):
        assert s[m].double().sum().item() == pytest.approx(lp_optimum(s, keep), rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([(1, 4), (2, 4), (3, 4), (2, 8), (4, 8)]),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 2**16),
    st.booleans(),
    st.booleans(),
)
def test_greedy_is_the_paper_greedy_and_at_least_half_the_optimum(
    nm: tuple[int, int], tr: int, tc: int, seed: int, ties: bool, conv: bool
) -> None:
    keep, group = nm
    shape = (group * tr, group * tc, 1, 1) if conv else (group * tr, group * tc)
    scores = make_scores(shape, seed, ties)
    greedy = transposable_mask(scores, keep, group, method="greedy")
    assert greedy.shape == scores.shape and greedy.dtype == torch.bool
    tg, ts = tiles_of(greedy, group), tiles_of(scores, group)
    assert (tg.sum(1) <= keep).all() and (tg.sum(2) <= keep).all()
    for m, s in zip(tg, ts, strict=True):
        assert torch.equal(m, naive_greedy(s, keep))
        assert s[m].double().sum().item() >= 0.5 * lp_optimum(s, keep) - 1e-9


def test_negative_scores_are_allowed() -> None:
    scores = make_scores((8, 8), 0, False) - 1.0
    exact = transposable_mask(scores, 2, 4, method="exact")
    shifted = transposable_mask(scores + 5.0, 2, 4, method="exact")
    assert torch.equal(exact, shifted)
    for m, s in zip(tiles_of(exact, 4), tiles_of(scores, 4), strict=True):
        assert s[m].double().sum().item() == pytest.approx(lp_optimum(s, 2), rel=1e-6)
    greedy = transposable_mask(scores, 2, 4)
    for m, s in zip(tiles_of(greedy, 4), tiles_of(scores, 4), strict=True):
        assert torch.equal(m, naive_greedy(s, 2))


def test_conv_tiles_follow_the_2d_view() -> None:
    scores = make_scores((8, 4, 3, 3), 1, False)  # view (8, 36)
    mask = transposable_mask(scores, 2, 4, method="exact")
    view = weight_view(mask)
    assert torch.equal(from_tiles(to_tiles(view, 4), 8, 36), view)
    tm = tiles_of(mask, 4)
    assert (tm.sum(1) == 2).all() and (tm.sum(2) == 2).all()


def test_indivisible_shape_names_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"'fc'.*multiples of M=4.*\(6, 8\)"):
        transposable_mask(torch.rand(6, 8), 2, 4, name="fc")


def test_n_at_least_m_and_unknown_method_name_the_layer() -> None:
    with pytest.raises(ConfigError, match=r"'fc'.*N=8 >= M=8"):
        transposable_mask(torch.rand(8, 8), 8, 8, name="fc")
    with pytest.raises(ConfigError, match=r"'fc'.*valid: \['exact', 'greedy'\]"):
        transposable_mask(torch.rand(8, 8), 2, 4, method="optimal", name="fc")
