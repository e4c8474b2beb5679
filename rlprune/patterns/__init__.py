"""Sparsity patterns as objects, found by name: :func:`get_pattern` and :func:`register_pattern`.

The built-in patterns (:mod:`rlprune.patterns.builtin`) are registered on the first look-up.
"""

from rlprune.patterns.base import (
    Pattern,
    SparsityPattern,
    channel_multiples,
    get_pattern,
    pattern_names,
    register_pattern,
)

__all__ = [
    "Pattern",
    "SparsityPattern",
    "channel_multiples",
    "get_pattern",
    "pattern_names",
    "register_pattern",
]
