"""Top-k per row with a fixed tie rule: the selection step behind every k-of-n and N:M mask.

Selection runs in NumPy on the CPU: ``np.partition`` finds a row's k-th largest value in linear
time, several times faster than ``torch.topk``/``torch.kthvalue`` on one core, and the result
does not depend on an unstable sort's tie order.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

SHORT_ROW = 8
"""Rows up to this length (N:M groups) are ranked by pairwise comparisons instead of a partition."""
BLOCK = 2**18
"""Scores handled at once (1 MiB of float32): each block's temporaries stay in cache."""


def to_numpy(scores: torch.Tensor) -> np.ndarray:
    """``scores`` as a float32 or float64 NumPy array on the CPU (other dtypes become float32)."""
    scores = scores.detach()
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    return scores.cpu().numpy()


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask keeping the ``k`` largest entries of every row of the 2-D ``scores``.

    Exactly ``min(k, row length)`` entries are kept per row; among equal scores the lowest index
    wins. Scores must not be NaN.
    """
    n = scores.shape[1]
    if k >= n:
        return np.ones(scores.shape, dtype=bool)
    select = _topk_short_rows if n <= SHORT_ROW else _topk_long_rows
    rows = max(1, BLOCK // n)
    mask = np.empty(scores.shape, dtype=bool)
    for start in range(0, scores.shape[0], rows):
        mask[start : start + rows] = select(scores[start : start + rows], k)
    return mask


def _topk_short_rows(scores: np.ndarray, k: int) -> np.ndarray:
    # An entry's rank is the number of entries of its row that beat it. With short rows the
    # n(n-1)/2 comparisons on contiguous columns beat a partition, whose cost is per row.
    cols = np.ascontiguousarray(scores.T)
    rank = np.zeros(cols.shape, dtype=np.uint8)
    for i, j in itertools.combinations(range(scores.shape[1]), 2):
        j_wins = cols[j] > cols[i]  # a tie goes to the lower index i
        rank[i] += j_wins
        rank[j] += ~j_wins
    return (rank < k).T


def _topk_long_rows(scores: np.ndarray, k: int) -> np.ndarray:
    n = scores.shape[1]
    kth = np.partition(scores, n - k, axis=1)[:, n - k : n - k + 1]  # k-th largest of each row
    mask = scores >= kth
    # Rows with more than k entries >= the k-th largest have ties at the threshold: keep the
    # lowest-index tied entries. Rare on real weights, so only those rows pay for a cumsum.
    bad = np.flatnonzero(np.count_nonzero(mask, axis=1) != k)
    if bad.size:
        rows, thr = scores[bad], kth[bad]
        above, tied = rows > thr, rows == thr
        need = k - np.count_nonzero(above, axis=1, keepdims=True)
        fixed = above | (tied & (np.cumsum(tied, axis=1) <= need))
        if (np.count_nonzero(fixed, axis=1) != k).any():
            raise ValueError("cannot select the top k of scores that contain NaN")
        mask[bad] = fixed
    return mask
