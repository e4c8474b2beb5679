"""Sparsity patterns as objects, found by name: :func:`get_pattern` and :func:`register_pattern`.

Importing the package registers the built-in patterns (:mod:`rlprune.patterns.builtin`).
"""

from rlprune.patterns import builtin
from rlprune.patterns.base import Pattern, SparsityPattern, get_pattern, pattern_names, register_pattern

__all__ = ["Pattern", "SparsityPattern", "builtin", "get_pattern", "pattern_names", "register_pattern"]
