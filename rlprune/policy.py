"""What a search decides: per layer, a sparsity pattern and a bit-width.

A :class:`Choice` is the decision for one layer; a :class:`Policy` is the decision for the
whole network, the answer a search writes to ``policy.yaml``.  Both are plain, frozen data so
they can be hashed (reward memoization), compared, and serialized without surprises.

Convention (docs/algorithms.md, "Conventions"): ``keep`` of ``group`` is *kept*, never pruned. For N:M that is
``keep=N, group=M``; for k-out-of-n it is ``keep=k, group=n``; for filter pruning
``group`` is the number of output channels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rlprune.errors import ConfigError
from rlprune.patterns import Pattern, SparsityPattern, get_pattern, pattern_names

FLOAT_BITS = 32
"""A bit-width of 32 means the tensor stays in floating point (no fake quantization)."""

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8, 16, 32)


def searchable_patterns() -> list[str]:
    """The registered patterns ``search.pattern`` may name; dense is always an option besides them."""
    return pattern_names(searchable=True)


@dataclass(frozen=True)
class Choice:
    """The decision for one layer.

    Attributes:
        pattern: the sparsity pattern's name (a :class:`Pattern` for the built-in ones); an
            alias is stored as the canonical name.
        keep: units kept per group (k, or N for N:M). Equal to ``group`` for dense.
        group: units per group (n, or M for N:M).
        w_bits: weight bit-width; 32 is float.
        a_bits: bit-width of the layer's input activations; 32 is float.
    """

    pattern: str = Pattern.DENSE
    keep: int = 1
    group: int = 1
    w_bits: int = FLOAT_BITS
    a_bits: int = FLOAT_BITS

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, Pattern):  # an alias or a plug-in: ask the registry
            object.__setattr__(self, "pattern", get_pattern(self.pattern).name)
        if not self.group >= 1:
            raise ConfigError(f"group must be >= 1, got {self.group}")
        if not 0 < self.keep <= self.group:
            raise ConfigError(
                f"keep must be in [1, group={self.group}] for pattern {self.pattern}, got keep={self.keep}"
            )
        for name in ("w_bits", "a_bits"):
            bits = getattr(self, name)
            if bits not in SUPPORTED_BITS:
                raise ConfigError(f"{name}={bits} is not supported; use one of {SUPPORTED_BITS}")

    @property
    def spec(self) -> SparsityPattern:
        """The pattern itself (:func:`~rlprune.patterns.get_pattern` of its name)."""
        return get_pattern(self.pattern)

    @property
    def density(self) -> float:
        """Share of weights kept, in (0, 1]."""
        return self.keep / self.group if self.spec.sparse else 1.0

    @property
    def sparsity(self) -> float:
        """Share of weights pruned, in [0, 1)."""
        return 1.0 - self.density

    def label(self) -> str:
        """Short human-readable form, e.g. ``nm 2:4 w8a8``."""
        shape = f"{self.pattern} {self.keep}:{self.group}" if self.spec.sparse else str(self.pattern)
        return f"{shape} w{self.w_bits}a{self.a_bits}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for YAML and JSON."""
        data = asdict(self)
        data["pattern"] = str(self.pattern)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Choice:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - {"pattern", "keep", "group", "w_bits", "a_bits"}
        if unknown:
            raise ConfigError(f"unknown keys in a layer choice: {sorted(unknown)}")
        return cls(
            pattern=data.get("pattern", Pattern.DENSE),
            keep=int(data.get("keep", 1)),
            group=int(data.get("group", 1)),
            w_bits=int(data.get("w_bits", FLOAT_BITS)),
            a_bits=int(data.get("a_bits", FLOAT_BITS)),
        )


DENSE_FLOAT = Choice()


@dataclass(frozen=True)
class Policy:
    """A choice for every searched layer, by layer name, in forward order.

    Layers not named (for example an excluded first or last layer) stay dense and float.
    """

    choices: tuple[tuple[str, Choice], ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, choices: Mapping[str, Choice]) -> Policy:
        """Build from a mapping that preserves forward order."""
        return cls(tuple(choices.items()))

    def __iter__(self) -> Iterator[tuple[str, Choice]]:
        return iter(self.choices)

    def __len__(self) -> int:
        return len(self.choices)

    def get(self, name: str, default: Choice = DENSE_FLOAT) -> Choice:
        """The choice for layer ``name``, or ``default`` when the policy does not name it."""
        return dict(self.choices).get(name, default)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain-data form, ``{layer name: choice dict}``."""
        return {name: choice.to_dict() for name, choice in self.choices}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> Policy:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple((str(name), Choice.from_dict(c)) for name, c in data.items()))
