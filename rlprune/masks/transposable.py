"""Transposable N:M masks (Hubara et al. 2021): every MxM tile keeps at most N per row and column.

Tiles are ``W[o:o+M, r:r+M]`` of the 2-D view, so the mask's transpose is N:M as well and the
backward GEMM can use it. Both solvers work on a batch of tiles at once:

- ``exact`` maximises the kept score with exactly N per tile row and column, by successive
  shortest paths on integer costs, vectorized over tiles (see :func:`_exact`);
- ``greedy`` is the paper's 2-approximation (ASP's ``mn_2d_greedy``), vectorized over tiles: it
  loops over the M*M positions in score order, not over tiles.

Both only compare scores within a tile and every valid exact mask keeps N*M, so adding a constant
to the scores changes neither: any real scores work, not only magnitudes.
"""

from __future__ import annotations

import numpy as np
import torch

from rlprune.errors import ConfigError
from rlprune.masks.checks import check_nm, check_tiles
from rlprune.masks.select import to_numpy
from rlprune.masks.views import unview, weight_view

METHODS = ("exact", "greedy")
# Scores solved together (tiles x M x M): enough to amortize Python's cost per operation, few
# enough for the greedy's temporaries to stay in cache.
GREEDY_CHUNK = 2**18
EXACT_CHUNK = 2**20
COST_SCALE = 2**30  # scores are mapped to integers in [0, 2^30] per chunk for the exact solver
_INF = 2**60  # "unreachable" in int64 path lengths; INF + INF still fits


def transposable_mask(
    scores: torch.Tensor, keep: int, group: int, method: str = "greedy", *, name: str = "layer"
) -> torch.Tensor:
    """A transposable ``keep``:``group`` (N:M) mask of the weight whose importance is ``scores``.

    Args:
        scores: elementwise importance, in the weight's shape.
        keep: N, the most kept per tile row and column (``exact`` keeps exactly N).
        group: M, the tile side. Both dims of the 2-D view must be multiples of M.
        method: ``exact`` (optimal kept score, up to the 2^-30 integer scaling of the scores) or
            ``greedy`` (at least half the optimum, about 0.98 of it on Gaussian weights).
        name: the layer, for error messages.

    Returns:
        A bool mask in the weight's shape.
    """
    if method not in METHODS:
        raise ConfigError(f"layer {name!r}: unknown transposable method {method!r}; valid: {list(METHODS)}")
    check_nm(keep, group, name, "transposable N:M")
    view = weight_view(scores.detach())
    rows, cols = view.shape
    check_tiles(rows, cols, keep, group, name)
    solve, chunk = (_exact, EXACT_CHUNK) if method == "exact" else (_greedy, GREEDY_CHUNK)
    tiles = to_tiles(view.cpu(), group)
    kept = torch.cat([solve(part, keep) for part in tiles.split(max(1, chunk // group**2))])
    return unview(from_tiles(kept, rows, cols), scores.shape).to(scores.device)


def to_tiles(view: torch.Tensor, group: int) -> torch.Tensor:
    """The ``(tiles, M, M)`` tiles of a 2-D view, row-major over tile positions."""
    rows, cols = view.shape
    tiles = view.reshape(rows // group, group, cols // group, group).permute(0, 2, 1, 3)
    return tiles.reshape(-1, group, group)


def from_tiles(tiles: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of :func:`to_tiles`: the ``(rows, cols)`` view."""
    group = tiles.shape[-1]
    return tiles.reshape(rows // group, cols // group, group, group).permute(0, 2, 1, 3).reshape(rows, cols)


def _descending_order(scores: np.ndarray) -> np.ndarray:
    """Per row of the float32 ``scores``, the positions sorted by score, highest first, ties by position.

    Each float is mapped to an int32 with the same order and the position packed into the low bits
    of an int64 key, so one plain (fast, unstable) sort gives a deterministic order.
    """
    length = scores.shape[1]
    bits = scores.view(np.int32)
    key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64)  # negative floats: flip magnitude bits
    shift = max(1, (length - 1).bit_length())
    key <<= shift
    key |= (length - 1) - np.arange(length)  # the lower position gets the larger key
    key.sort(axis=1)
    position = (length - 1) - (key[:, ::-1] & ((1 << shift) - 1))
    return position.astype(np.min_scalar_type(length - 1))


def _greedy(tiles: torch.Tensor, keep: int) -> torch.Tensor:
    """The 2-approximation on ``(b, M, M)`` tiles: accept positions in score order while their row
    and column each have fewer than ``keep``."""
    b, m, _ = tiles.shape
    order = _descending_order(to_numpy(tiles).astype(np.float32, copy=False).reshape(b, m * m))
    row_of, col_of = np.arange(m * m) // m, np.arange(m * m) % m
    base = np.arange(b) * m
    rows_used = np.zeros(b * m, dtype=np.uint8)
    cols_used = np.zeros(b * m, dtype=np.uint8)
    mask = np.zeros(b * m * m, dtype=bool)
    for pos in order.T.copy():  # step t holds every tile's t-th best position
        r, c = row_of[pos] + base, col_of[pos] + base
        ok = (rows_used[r] < keep) & (cols_used[c] < keep)
        rows_used[r] += ok  # one index per tile, so no repeated index in these updates
        cols_used[c] += ok
        mask[r * m + col_of[pos]] = ok
    return torch.from_numpy(mask.reshape(b, m, m))


def _integer_costs(tiles: torch.Tensor) -> torch.Tensor:
    """Scores as int64 in [0, COST_SCALE]; integer path lengths make the shortest paths exact."""
    x = tiles.double()
    low, span = x.min(), x.max() - x.min()
    scale = COST_SCALE / span if span > 0 else 0.0
    return ((x - low) * scale).round().long()


def _exact(tiles: torch.Tensor, keep: int) -> torch.Tensor:
    """Optimal masks of ``(b, M, M)`` tiles with exactly ``keep`` per row and per column.

    A min-cost flow solved from a good start. Every row first keeps its own top ``keep``: optimal
    when columns are ignored, and its residual graph has no negative cycle (a row only swaps a kept
    entry for one it scored lower). Columns then hold an excess or a deficit. Each round moves one
    unit, in every tile that still has an excess, along a shortest path (Bellman-Ford over the
    residual graph) from an over-full column to an under-full one: column -> row through a kept
    entry (cost +w, it is dropped), row -> column through a dropped one (cost -w, it is kept). Row
    counts never change and successive shortest paths keep the flow optimal, so when no column is
    over-full the mask is optimal. Rounds = the largest excess of a tile, about 10 for 4:8.
    """
    cost = _integer_costs(tiles)
    b, m, _ = cost.shape
    top = torch.sort(cost, dim=-1, descending=True, stable=True).indices[..., :keep]
    kept = torch.zeros(b, m, m, dtype=torch.bool).scatter_(-1, top, True)
    while True:
        col_count = kept.sum(1)
        todo = (col_count > keep).any(1).nonzero().squeeze(1)
        if todo.numel() == 0:
            return kept
        kept[todo] = _move_one_unit(kept[todo], cost[todo], col_count[todo], keep)


def _move_one_unit(
    kept: torch.Tensor, cost: torch.Tensor, col_count: torch.Tensor, keep: int
) -> torch.Tensor:
    """One shortest-path augmentation per tile, from an over-full column to an under-full one."""
    b, m, _ = kept.shape
    drop_cost = torch.where(kept, cost, _INF)  # column j -> row i, indexed [tile, i, j]
    keep_cost = torch.where(kept, _INF, -cost)  # row i -> column j
    col_dist = torch.where(col_count > keep, 0, _INF)  # every over-full column is a source
    row_dist = torch.full((b, m), _INF)
    col_pred = torch.full((b, m), -1)
    row_pred = torch.full((b, m), -1)
    for _ in range(m + 1):  # a shortest path visits each column at most once
        # Strict improvements only: the predecessors then form a tree even with zero-cost cycles.
        cand, arg = (col_dist[:, None, :] + drop_cost).min(2)
        better = cand < row_dist
        row_dist, row_pred = torch.where(better, cand, row_dist), torch.where(better, arg, row_pred)
        cand, arg = (row_dist[:, :, None] + keep_cost).min(1)
        better = cand < col_dist
        if not better.any():
            break
        col_dist, col_pred = torch.where(better, cand, col_dist), torch.where(better, arg, col_pred)
    # Walk back from the nearest under-full column, flipping the entries on the path.
    tile = torch.arange(b)
    col = torch.where(col_count < keep, col_dist, _INF).argmin(1)
    live = torch.ones(b, dtype=torch.bool)
    while live.any():
        t, j = tile[live], col[live]
        i = col_pred[t, j]
        prev = row_pred[t, i]
        kept[t, i, j] = True
        kept[t, i, prev] = False
        col[live] = prev
        live[live.clone()] = col_pred[t, prev] >= 0
    return kept
