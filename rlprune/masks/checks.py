"""Argument checks shared by the mask functions; every message names the layer and the constraint."""

from __future__ import annotations

from collections.abc import Sequence

from rlprune.errors import ConfigError, ModelError


def check_weight_shape(shape: Sequence[int]) -> None:
    """Refuse a shape that is not a Linear or Conv weight (fewer than 2 dims)."""
    if len(shape) < 2:
        raise ModelError(f"expected a Linear or Conv weight with at least 2 dims, got shape {tuple(shape)}")


def check_keep(keep: int, n: int, name: str, pattern: str) -> None:
    """Refuse a k-of-n choice unless ``1 <= k <= n``."""
    if keep > n:
        raise ConfigError(f"layer {name!r}: {pattern} needs k <= n, got k={keep} > n={n}")
    if keep < 1:
        raise ConfigError(f"layer {name!r}: {pattern} needs k >= 1, got k={keep}")


def check_nm(keep: int, group: int, name: str, pattern: str = "N:M") -> None:
    """Refuse an N:M choice unless ``1 <= N < M`` (N = M would keep every weight: use dense)."""
    if keep >= group:
        raise ConfigError(
            f"layer {name!r}: {pattern} needs N < M, got N={keep} >= M={group} "
            "(N = M keeps every weight: use pattern dense)"
        )
    if keep < 1:
        raise ConfigError(f"layer {name!r}: {pattern} needs N >= 1, got N={keep}")


def check_tiles(rows: int, cols: int, keep: int, group: int, name: str) -> None:
    """Refuse a transposable N:M choice unless the 2-D view ``(rows, cols)`` splits into MxM tiles."""
    if rows % group or cols % group:
        raise ConfigError(
            f"layer {name!r}: transposable {keep}:{group} needs both dims of the 2-D view to be multiples of "
            f"M={group}, got (O, R)=({rows}, {cols})"
        )
