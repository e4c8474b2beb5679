"""What a sparsity pattern is, and the registry that finds one by name.

A :class:`SparsityPattern` holds everything that depends on the pattern: its name, its group
size on a layer, the ``keep`` of ``group`` options a search offers on a layer, its mask (built
by the algorithms of :mod:`rlprune.masks`), the bits its weights take in memory, and whether it
shrinks the layer (filter pruning: fewer outputs, so fewer inputs for the layers that read
them) or keeps its shape. Latency models, the search space and the finetune ask the pattern;
none of them branches on its name.

:func:`register_pattern` adds a pattern (a subclass, used as a class decorator, as timm
registers models) and :func:`get_pattern` finds it by its name or an alias. A
:class:`~rlprune.policy.Choice` names its pattern; every built-in name is a :class:`Pattern`.
"""

from __future__ import annotations

import abc
import enum
import importlib
import math
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from rlprune.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from rlprune.layers import LayerInfo
    from rlprune.policy import Choice


class Pattern(enum.StrEnum):
    """The names of the built-in patterns (:mod:`rlprune.patterns.builtin`); each is a ``str``."""

    DENSE = "dense"
    UNSTRUCTURED = "unstructured"
    KOFN_WEIGHT = "kofn_weight"
    KOFN_KERNEL = "kofn_kernel"
    FILTER = "filter"
    NM = "nm"
    NM_TRANSPOSABLE = "nm_transposable"


class SparsityPattern(abc.ABC):
    """One sparsity pattern; subclass it and :func:`register_pattern` the subclass.

    ``keep`` of ``group`` is kept, never pruned. A subclass names itself and says how many
    units a group of a layer holds (:meth:`group_size`), which mask satisfies a choice
    (:meth:`mask`) and how many masks do (:meth:`log10_diversity`); the rest has defaults
    that fit a pattern whose group is counted on the layer and whose mask keeps its shape.

    Attributes:
        name: the one name, in policies, ``search.pattern`` and ``finetune.mask``.
        aliases: other spellings accepted on input; the canonical :attr:`name` is what is written.
        sparse: whether it prunes anything (false only for dense).
        searchable: whether ``search.pattern`` may name it.
        shrinks_outputs: whether it removes output channels (filter pruning): the layer is
            costed as a smaller dense one and the layers that read it lose inputs.
        n_of_m: whether its ``keep`` of ``group`` is an N:M rule along the reduction, which
            N:M sparse units (``nm_options`` of a device) run.
        fixed_group: whether ``group`` must equal :meth:`group_size` (otherwise any group is
            taken, as a ratio for unstructured or as M for N:M).
        group_unit: what a group counts, for error messages.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    sparse: ClassVar[bool] = True
    searchable: ClassVar[bool] = True
    shrinks_outputs: ClassVar[bool] = False
    n_of_m: ClassVar[bool] = False
    fixed_group: ClassVar[bool] = True
    group_unit: ClassVar[str] = "n"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.name)!r})"

    @property
    def keeps_shape(self) -> bool:
        """Whether the weight keeps its shape after export (every pattern but filter pruning)."""
        return not self.shrinks_outputs

    @property
    def compressed_storage(self) -> bool:
        """Whether a device may store its weights compressed: kept values plus mask metadata."""
        return self.sparse and self.keeps_shape

    # -- what a subclass must say --------------------------------------------------------------

    @abc.abstractmethod
    def group_size(self, shape: Sequence[int], *, name: str = "layer") -> int | None:
        """Units per group of a weight of ``shape``, or ``None`` where a choice picks its own
        group (N:M). Raises :class:`ConfigError` (naming the layer) where the shape cannot take
        the pattern at all."""

    @abc.abstractmethod
    def mask(
        self, scores: torch.Tensor, keep: int, group: int, *, pad: bool = False, name: str = "layer"
    ) -> torch.Tensor:
        """The bool mask, in ``scores``' shape, that keeps ``keep`` of ``group`` by ``scores``.

        ``scores`` are checked (shape, finite); ``pad`` lets N:M pad a short last run.
        """

    @abc.abstractmethod
    def log10_diversity(self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer") -> float:
        """``log10`` of the number of masks of a weight of ``shape`` that keep ``keep`` of ``group``."""

    # -- checks and options --------------------------------------------------------------------

    def check_group(
        self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer", where: str = ""
    ) -> None:
        """Raise :class:`ConfigError` when ``group`` is not the layer's group size (fixed groups only).

        ``where`` prefixes the message (e.g. ``"hardware 'a100': "``).
        """
        if not self.fixed_group:
            return
        n = self.group_size(shape, name=name)
        if group != n:
            raise ConfigError(
                f"{where}layer {name!r}: a {self.name} choice needs group = {self.group_unit} = {n}, "
                f"got {keep}:{group}"
            )

    def fits(self, layer: LayerInfo, group: int, *, pad: bool = False) -> bool:
        """Whether ``layer`` takes a choice of this pattern with ``group`` (``pad``: N:M may pad)."""
        try:
            self.group_size(layer.weight_shape, name=layer.name)
        except ConfigError:
            return False
        return True

    def fit(self, keep: int, group: int, shape: Sequence[int], *, name: str = "layer") -> tuple[int, int]:
        """``keep`` of ``group`` at the same density on a weight of ``shape``, whose units the group counts.

        For a layer tied to the one the choice was made for, or one that lost inputs to upstream
        filter pruning; at least one unit is kept.
        """
        n = self.group_size(shape, name=name)
        if n is None:
            return keep, group
        return min(n, max(1, round(keep * n / group))), n

    def options(
        self,
        layer: LayerInfo,
        *,
        levels: int,
        min_density: float,
        nm_options: Sequence[tuple[int, int]] = (),
        pad: bool = False,
    ) -> tuple[list[tuple[int, int]], str | None]:
        """The sparse ``(keep, group)`` options a search offers on ``layer``, sparsest first, and
        why the layer cannot take the pattern (``None`` when it can).

        The default spreads ``levels`` densities from ``min_density`` to 1 over the layer's
        group size; dense is not among them (the search adds it).
        """
        try:
            n = self.group_size(layer.weight_shape, name=layer.name)
        except ConfigError as exc:
            return [], str(exc)
        if n is None:
            raise NotImplementedError(f"pattern {self.name!r} takes any group: it must define options()")
        keeps = np.unique(np.clip(np.round(np.linspace(min_density, 1.0, levels) * n), 1, n).astype(int))
        return [(int(k), n) for k in keeps if k < n], None

    def recast(self, layer: LayerInfo, density: float, nm: tuple[int, int]) -> tuple[int, int] | str:
        """The ``(keep, group)`` nearest ``density`` on ``layer``, or why the layer cannot take it.

        ``nm`` is the ``(N, M)`` a pattern whose choice picks its own group takes (the
        finetune's ``finetune.nm``).
        """
        try:
            n = self.group_size(layer.weight_shape, name=layer.name)
        except ConfigError as exc:
            return str(exc)
        if n is None:
            raise NotImplementedError(f"pattern {self.name!r} takes any group: it must define recast()")
        return max(1, min(n, round(density * n))), n

    # -- cost ------------------------------------------------------------------------------------

    def pruned_outputs(self, keep: int, group: int) -> int:
        """Output channels a ``keep`` of ``group`` choice removes: inputs its consumers lose."""
        return 0

    def dense_equivalent(self, layer: LayerInfo, choice: Choice) -> tuple[LayerInfo, Choice]:
        """The layer and choice a latency model costs: a choice that shrinks the layer becomes
        the smaller dense layer; others are costed as they are."""
        return layer, choice

    def kept_and_metadata(self, layer: LayerInfo, choice: Choice) -> tuple[int, int]:
        """Kept weight values and metadata bits of ``layer`` stored compressed under ``choice``.

        The default fits any mask: ``round(density * params)`` values and a 1-bit-per-weight bitmap.
        """
        params = layer.params
        kept = min(params, max(1, math.floor(choice.density * params + 0.5)))
        return kept, params


_PATTERNS: dict[str, SparsityPattern] = {}
_ALIASES: dict[str, str] = {}
_BUILTINS = "rlprune.patterns.builtin"


def _load_builtins() -> None:
    """Register the built-in patterns before the first look-up or plug-in: on demand, since they
    need torch, which ``rlprune --help`` should not import. (While the module is being imported
    it is in ``sys.modules`` already, so its own registrations do not come back here.)"""
    if _BUILTINS not in sys.modules:
        importlib.import_module(_BUILTINS)


def register_pattern(cls: type[SparsityPattern]) -> type[SparsityPattern]:
    """Register a :class:`SparsityPattern` subclass under its name and aliases; returns it
    (use it as a class decorator). Registering the same class again does nothing.

    Raises:
        ConfigError: when the class is not a pattern, or a name is taken by another pattern.
    """
    if not (isinstance(cls, type) and issubclass(cls, SparsityPattern)) or not isinstance(
        getattr(cls, "name", None), str
    ):
        raise ConfigError(f"register_pattern needs a SparsityPattern subclass with a name, got {cls!r}")
    _load_builtins()
    for spelling in (cls.name, *cls.aliases):
        taken = _PATTERNS.get(_ALIASES.get(spelling, ""))
        if taken is not None and type(taken) is not cls:
            raise ConfigError(
                f"pattern name {spelling!r} is taken by {type(taken).__qualname__}; choose another name"
            )
    _PATTERNS[cls.name] = cls()
    _ALIASES.update({spelling: cls.name for spelling in (cls.name, *cls.aliases)})
    return cls


def channel_multiples(keeps: Iterable[int], group: int, multiple: int) -> tuple[list[int], str | None]:
    """Output-channel counts ``keeps`` of ``group`` rounded to the nearest multiple of ``multiple``
    (at least one multiple), those below ``group`` in order, and why none is left (else ``None``).

    A GPU's tensor cores run channels in tiles (the hardware's ``channel_multiple``): a filter
    pattern keeps whole tiles there.
    """
    rounded = sorted({max(1, round(keep / multiple)) * multiple for keep in keeps})
    kept = [keep for keep in rounded if keep < group]
    reason = None if kept else f"{group} output channels hold no smaller multiple of {multiple} to keep"
    return kept, reason


def get_pattern(name: str) -> SparsityPattern:
    """The registered pattern called ``name`` (or an alias of it).

    Raises:
        ConfigError: for an unknown name, listing the valid ones.
    """
    _load_builtins()
    canonical = _ALIASES.get(name) if isinstance(name, str) else None
    if canonical is None:
        raise ConfigError(f"unknown pattern {name!r}; valid: {pattern_names()}")
    return _PATTERNS[canonical]


def pattern_names(*, searchable: bool = False) -> list[str]:
    """Canonical names of the registered patterns, built-ins first; ``searchable``: only those
    ``search.pattern`` may name."""
    _load_builtins()
    return [str(name) for name, p in _PATTERNS.items() if p.searchable or not searchable]
