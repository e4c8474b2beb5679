"""Independent reference implementations and strategies for the mask tests."""

from __future__ import annotations

import torch
from hypothesis import strategies as st


def reference_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest of every row, ties to the lowest index, by a plain Python sort."""
    out = torch.zeros(scores.shape, dtype=torch.bool)
    for r, row in enumerate(scores.tolist()):
        best = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        out[r, best] = True
    return out


def make_scores(shape: tuple[int, ...], seed: int, ties: bool) -> torch.Tensor:
    """Nonnegative scores; with ``ties`` drawn from {0, 1, 2} so that many are equal."""
    gen = torch.Generator().manual_seed(seed)
    if ties:
        return torch.randint(0, 3, shape, generator=gen).float()
    return torch.randn(shape, generator=gen).abs()


def weight_shapes(max_side: int = 9) -> st.SearchStrategy[tuple[int, ...]]:
    """Linear (O, I), Conv1d (O, I, k) and Conv2d (O, I, kh, kw) weight shapes."""
    side = st.integers(1, max_side)
    kernel = st.integers(1, 3)
    return st.one_of(
        st.tuples(side, side),
        st.tuples(side, side, kernel),
        st.tuples(side, side, kernel, kernel),
    )
