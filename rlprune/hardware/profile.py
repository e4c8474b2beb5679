"""Device profiles: reading and validating a ``conf/hardware/*.yaml`` node.

Every hardware config is a flat mapping with a ``model`` kind (``roofline``, ``bitfusion``,
``bops``), a ``name``, and the model's fields. Every number carries a source note in the
``sources`` mapping (``field: "kind: where from"``, kind one of :data:`SOURCE_KINDS`), so a
reader can tell a datasheet figure from a measurement or an estimate; list items (N:M options,
the sparse-kernel rule) carry their own ``source``. A missing or ill-typed field, an unknown
field, or a number without a source is a :class:`ConfigError` that names the config and the
field and says what is expected.

Numbers in YAML: write ``4.0e-6`` and ``1.0e+12``, not ``4e-6`` or ``1.0e12`` (YAML 1.1, as read
by PyYAML, wants a dot and a signed exponent and reads the others as strings; OmegaConf reads
both).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlprune.config import is_integer, is_number
from rlprune.errors import ConfigError
from rlprune.hardware.base import LAYER_KINDS
from rlprune.patterns import Pattern, get_pattern, pattern_names
from rlprune.policy import FLOAT_BITS, SUPPORTED_BITS

SOURCE_KINDS = ("datasheet", "paper", "measured", "derived", "estimate")
"""Allowed first words of a source note: ``"datasheet: NVIDIA A100 datasheet (2021), p. 2"``."""

_MISSING = object()
_PRECISION_KEY = re.compile(r"^(?:int|fp|bf|b)?(\d+)$")
_SOURCE_KIND = re.compile(r"^\s*([a-z]+)\b[^:]*:")


def _type_name(value: Any) -> str:
    return type(value).__name__


class ConfigReader:
    """Takes the fields of one config mapping one by one, with errors that name the field.

    Args:
        data: the config node as plain data.
        where: how errors name the config, e.g. ``"hardware config 'a100'"``.
    """

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping of fields, got {_type_name(data)}")
        self.data = dict(data)
        self.where = where
        self._taken: set[str] = set()

    def error(self, key: str, expected: str, value: Any = _MISSING) -> ConfigError:
        """A :class:`ConfigError` saying field ``key`` should be ``expected``."""
        if value is _MISSING:
            return ConfigError(f"{self.where}: missing field '{key}'; expected {expected}")
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (YAML 1.1 reads 4e-6 or 1.0e12 as strings; write 4.0e-6 or 1.0e+12)"
            except ValueError:
                pass
        return ConfigError(
            f"{self.where}: field '{key}' must be {expected}, got {value!r} ({_type_name(value)}){hint}"
        )

    def raw(self, key: str, default: Any = _MISSING, expected: str = "a value") -> Any:
        """The value of ``key``; ``default`` when absent, or an error when there is none."""
        self._taken.add(key)
        if key in self.data:
            return self.data[key]
        if default is _MISSING:
            raise self.error(key, expected)
        return default

    def integer(self, key: str, default: Any = _MISSING, minimum: int | None = None) -> int:
        """An int (not a bool), at least ``minimum``."""
        expected = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        value = self.raw(key, default, expected)
        if not is_integer(value) or (minimum is not None and value < minimum):
            raise self.error(key, expected, value)
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        positive: bool = False,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """A real number (int or float, not a bool) within the given bounds."""
        parts = []
        if positive:
            parts.append("> 0")
        if minimum is not None:
            parts.append(f">= {minimum}")
        if maximum is not None:
            parts.append(f"<= {maximum}")
        expected = "a number" + (f" {' and '.join(parts)}" if parts else "")
        value = self.raw(key, default, expected)
        ok = is_number(value)
        if ok:
            ok = value == value and value not in (float("inf"), float("-inf"))
            ok = ok and not (positive and value <= 0)
            ok = ok and not (minimum is not None and value < minimum)
            ok = ok and not (maximum is not None and value > maximum)
        if not ok:
            raise self.error(key, expected, value)
        return float(value)

    def string(self, key: str, default: Any = _MISSING) -> str:
        """A non-empty string."""
        value = self.raw(key, default, "a non-empty string")
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "a non-empty string", value)
        return value

    def bits(
        self, key: str, default: Any = _MISSING, allowed: Sequence[int] = SUPPORTED_BITS
    ) -> tuple[int, ...]:
        """A non-empty list of distinct bit-widths from ``allowed``, returned ascending."""
        expected = f"a non-empty list of distinct bit-widths from {list(allowed)}"
        value = self.raw(key, default, expected)
        if (
            not isinstance(value, list | tuple)
            or not value
            or any(not is_integer(b) or b not in allowed for b in value)
            or len(set(value)) != len(value)
        ):
            raise self.error(key, expected, value)
        return tuple(sorted(value))

    def patterns(
        self,
        key: str,
        default: Any = _MISSING,
        allowed: Iterable[str] | None = None,
        always: Iterable[str] = (),
    ) -> tuple[str, ...]:
        """A list of pattern names from ``allowed`` (every registered pattern by default),
        returned as canonical names in the registry's order, with the ``always`` ones added."""
        names = [get_pattern(name).name for name in pattern_names()]
        allowed = tuple(names if allowed is None else (get_pattern(p).name for p in allowed))
        expected = f"a list of patterns from {list(map(str, allowed))}"
        value = self.raw(key, default, expected)
        if not isinstance(value, list | tuple):
            raise self.error(key, expected, value)
        found = {get_pattern(p).name for p in always}
        for item in value:
            try:
                pattern = get_pattern(item).name
            except ConfigError:
                raise self.error(key, expected, value) from None
            if pattern not in allowed:
                raise self.error(key, expected, value)
            found.add(pattern)
        return tuple(p for p in names if p in found)

    def mapping(self, key: str, default: Any = _MISSING) -> dict[str, Any]:
        """A mapping."""
        value = self.raw(key, default, "a mapping")
        if not isinstance(value, Mapping):
            raise self.error(key, "a mapping", value)
        return dict(value)

    def sources(self, numeric_fields: Iterable[str]) -> dict[str, str]:
        """The ``sources`` mapping: one note per field in ``numeric_fields``, nothing else."""
        fields = list(numeric_fields)
        expected = f"a mapping with a source note for each of {fields}"
        notes = self.mapping("sources") if "sources" in self.data else self.raw("sources", expected=expected)
        unknown = sorted(set(notes) - set(fields))
        if unknown:
            raise ConfigError(
                f"{self.where}: sources has notes for unknown fields {unknown}; expected {fields}"
            )
        for name in fields:
            if name not in notes:
                raise ConfigError(
                    f"{self.where}: sources.{name} is missing; every number needs a note such as "
                    f"'datasheet: <document>' (kinds: {list(SOURCE_KINDS)})"
                )
            check_source(notes[name], f"{self.where}: sources.{name}")
        return {name: notes[name] for name in fields}

    def finish(self) -> None:
        """Raise for fields that no reader asked for (usually a typo)."""
        unknown = sorted(set(self.data) - self._taken, key=str)
        if unknown:
            known = sorted(self._taken)
            raise ConfigError(f"{self.where}: unknown field(s) {unknown}; known fields: {known}")


def check_source(note: Any, where: str) -> str:
    """A source note must be a string ``"<kind>: <where from>"`` with kind in :data:`SOURCE_KINDS`.

    The kind may carry a remark before the colon: ``"measured (by the torchao authors): ..."``.
    """
    match = _SOURCE_KIND.match(note) if isinstance(note, str) else None
    if match is None or match.group(1) not in SOURCE_KINDS or not note.split(":", 1)[1].strip():
        raise ConfigError(
            f"{where} must be a note '<kind>: <where from>' with kind one of {list(SOURCE_KINDS)}, "
            f"got {note!r}"
        )
    return note


def precision_bits(key: Any, where: str) -> int:
    """The bit-width a peak key names: ``int8 -> 8``, ``fp16 -> 16``, ``"32" -> 32``, ``4 -> 4``."""
    if is_integer(key):
        bits = key
    else:
        match = _PRECISION_KEY.match(str(key).strip().lower())
        if not match:
            raise ConfigError(f"{where}: peak key {key!r} must name a precision like int8, fp16, fp32 or 8")
        bits = int(match.group(1))
    if bits < 1 or bits > 64:
        raise ConfigError(f"{where}: peak key {key!r} names {bits} bits; expected 1..64")
    return bits


@dataclass(frozen=True)
class NMOption:
    """An N:M pattern the device accelerates.

    Attributes:
        keep: N, weights kept per group.
        group: M, the group length.
        speedup: compute speedup over dense at the same precision, in ``[1, M/N]`` (the
            datasheet says ``M/N``; a measured figure is lower).
        bits: compute precisions (keys of the peak table) where the sparse units run.
        source: where the speedup comes from.
        layers: the layer kinds the modelled runtime has an N:M kernel for (PyTorch's 2:4 path,
            cuSPARSELt, runs Linear layers only); other kinds gain nothing.
    """

    keep: int
    group: int
    speedup: float
    bits: tuple[int, ...]
    source: str
    layers: tuple[str, ...] = LAYER_KINDS

    def covers(self, keep: int, group: int) -> bool:
        """Whether a ``keep:group`` mask is also a valid mask of this option.

        An ``N':M'`` mask with ``M`` dividing ``M'`` and ``N' <= N`` has at most ``N`` kept in
        every run of ``M``, so the same sparse units run it (1:4 and 2:8 run as 2:4).
        """
        return group % self.group == 0 and keep <= self.keep


@dataclass(frozen=True)
class SparseKernel:
    """A sparse-kernel rule for unstructured / k-of-n weights (e.g. XNNPACK SpMM on a CPU).

    The compute speedup at density ``d`` is ``clip(efficiency / d, 1, max_speedup)``: the kernel
    does ``d`` of the work at ``efficiency`` of the dense kernel's rate.

    Attributes:
        patterns: the patterns it runs.
        bits: compute precisions where it exists.
        efficiency: sparse-kernel rate relative to the dense kernel, in (0, 1]. Break-even
            density is ``efficiency``.
        max_speedup: cap on the speedup.
        pointwise_only: run it only for Linear and 1x1 convolutions.
        source: where the numbers come from.
    """

    patterns: tuple[str, ...]
    bits: tuple[int, ...]
    efficiency: float
    max_speedup: float
    pointwise_only: bool
    source: str

    def speedup(self, density: float) -> float:
        """``clip(efficiency / density, 1, max_speedup)``."""
        return min(self.max_speedup, max(1.0, self.efficiency / density))


@dataclass(frozen=True)
class DeviceProfile:
    """What the roofline model knows about a device.

    Attributes:
        name: device name.
        description: one line about the device.
        runtime: the software the profile models (its kernels decide what a pattern gains).
        batch_size: samples per batch the latency is for.
        reference_bits: precision of the dense baseline.
        bits: bit-widths offered to the search (32 = float, allowed only as the reference).
        peak_tops: ``(precision bits, dense peak in TOPS = 1e12 ops/s, 1 MAC = 2 ops)``,
            ascending in bits. Below the smallest precision there is no compute gain.
        bandwidth_gbs: DRAM bandwidth in GB/s (1e9 bytes/s).
        eta_compute: achieved share of the peak compute rate, (0, 1].
        eta_memory: achieved share of the bandwidth, (0, 1].
        launch_s: fixed overhead per layer (kernel launch, framework), seconds.
        patterns: patterns the device runs.
        nm_options: the accelerated N:M patterns.
        sparse_kernel: optional sparse-kernel rule for unstructured / k-of-n.
        compressed_patterns: sparse patterns whose weights are stored compressed (kept values
            plus metadata); the others are stored dense, zeros included.
        sources: a note per number.
    """

    name: str
    description: str
    runtime: str
    batch_size: int
    reference_bits: int
    bits: tuple[int, ...]
    peak_tops: tuple[tuple[int, float], ...]
    bandwidth_gbs: float
    eta_compute: float
    eta_memory: float
    launch_s: float
    patterns: tuple[str, ...]
    nm_options: tuple[NMOption, ...]
    sparse_kernel: SparseKernel | None
    compressed_patterns: tuple[str, ...]
    sources: tuple[tuple[str, str], ...]

    @property
    def precisions(self) -> tuple[int, ...]:
        """Compute precisions with a peak, ascending."""
        return tuple(b for b, _ in self.peak_tops)

    def compute_bits(self, bits: int) -> int:
        """The smallest compute precision that holds ``bits``-bit operands."""
        for precision in self.precisions:
            if precision >= bits:
                return precision
        raise ConfigError(f"hardware '{self.name}' has no compute precision >= {bits} bits")

    def peak(self, precision: int) -> float:
        """Dense peak in ops/s at a compute precision from :attr:`precisions`."""
        return dict(self.peak_tops)[precision] * 1e12


ROOFLINE_NUMBERS = ("batch_size", "peak_tops", "bandwidth_gbs", "eta_compute", "eta_memory", "launch_s")


def read_common(reader: ConfigReader) -> tuple[str, int, int, tuple[int, ...]]:
    """``name``, ``batch_size``, ``reference_bits`` and ``bits``, checked against each other."""
    name = reader.string("name")
    batch_size = reader.integer("batch_size", minimum=1)
    reference = reader.integer("reference_bits")
    if reference not in SUPPORTED_BITS:
        raise reader.error("reference_bits", f"one of {list(SUPPORTED_BITS)}", reference)
    bits = reader.bits("bits")
    if reference not in bits:
        raise reader.error("bits", f"a list that contains reference_bits={reference}", list(bits))
    if FLOAT_BITS in bits and reference != FLOAT_BITS:
        raise ConfigError(
            f"{reader.where}: bits lists 32 (float), which runs at reference_bits={reference} on this "
            "device; drop 32 from bits (a float choice is always accepted)"
        )
    return name, batch_size, reference, bits


def parse_device_profile(data: Mapping[str, Any], where: str) -> DeviceProfile:
    """Validate a ``model: roofline`` config node into a :class:`DeviceProfile`."""
    reader = ConfigReader(data, where)
    reader.raw("model")
    name, batch_size, reference, bits = read_common(reader)
    description = reader.string("description", name)
    runtime = reader.raw("runtime", "", "a line naming the software modelled")
    if not isinstance(runtime, str):
        raise reader.error("runtime", "a line naming the software modelled", runtime)

    peak_tops = _read_peaks(reader, (*bits, reference))
    precisions = tuple(precision for precision, _ in peak_tops)
    bandwidth = reader.number("bandwidth_gbs", positive=True)
    eta_compute = reader.number("eta_compute", positive=True, maximum=1.0)
    eta_memory = reader.number("eta_memory", positive=True, maximum=1.0)
    launch = reader.number("launch_s", minimum=0.0)
    patterns = reader.patterns("patterns", always=(Pattern.DENSE, Pattern.FILTER))

    nm_options = _read_nm_options(reader, precisions, patterns)
    sparse_kernel = _read_sparse_kernel(reader, precisions, patterns)
    sparse_here = tuple(p for p in patterns if get_pattern(p).compressed_storage)
    compressed = reader.patterns("compressed_patterns", list(sparse_here), allowed=sparse_here)
    sources = reader.sources(ROOFLINE_NUMBERS)
    reader.finish()
    return DeviceProfile(
        name=name,
        description=description,
        runtime=runtime,
        batch_size=batch_size,
        reference_bits=reference,
        bits=bits,
        peak_tops=peak_tops,
        bandwidth_gbs=bandwidth,
        eta_compute=eta_compute,
        eta_memory=eta_memory,
        launch_s=launch,
        patterns=patterns,
        nm_options=nm_options,
        sparse_kernel=sparse_kernel,
        compressed_patterns=compressed,
        sources=tuple(sources.items()),
    )


def _read_peaks(reader: ConfigReader, used_bits: Sequence[int]) -> tuple[tuple[int, float], ...]:
    """``peak_tops`` as ``(bits, TOPS)`` pairs, narrowest first: none growing with precision, and
    one at least as wide as every bit-width in ``used_bits``."""
    where = reader.where
    peaks_raw = reader.mapping("peak_tops")
    if not peaks_raw:
        raise reader.error("peak_tops", "a non-empty mapping like {int8: 624, fp16: 312}", peaks_raw)
    peaks: dict[int, float] = {}
    for key, value in peaks_raw.items():
        precision = precision_bits(key, f"{where}: peak_tops")
        if precision in peaks:
            raise ConfigError(f"{where}: peak_tops names {precision} bits twice")
        if not is_number(value) or not value > 0:
            raise reader.error(f"peak_tops.{key}", "a positive number of TOPS", value)
        peaks[precision] = float(value)
    peak_tops = tuple(sorted(peaks.items()))
    for (low_bits, low), (high_bits, high) in itertools.pairwise(peak_tops):
        if low < high:
            raise ConfigError(
                f"{where}: peak_tops must not grow with precision, but {low_bits} bits has {low} TOPS "
                f"and {high_bits} bits {high} TOPS"
            )
    widest = max(peaks)
    too_wide = [b for b in used_bits if b > widest]
    if too_wide:
        raise ConfigError(
            f"{where}: bits {sorted(set(too_wide))} exceed the widest compute precision in peak_tops "
            f"({widest}); add a peak for them or drop them"
        )
    return peak_tops


def _read_nm_options(
    reader: ConfigReader, precisions: Sequence[int], patterns: Sequence[str]
) -> tuple[NMOption, ...]:
    """``nm_options``: each keep:group's speedup, bits, layer kinds and source, at most one per
    keep:group and bit-width; only where ``patterns`` holds an N:M pattern."""
    where = reader.where
    nm_raw = reader.raw("nm_options", [], "a list of {keep, group, speedup, bits, source}")
    if not isinstance(nm_raw, list | tuple):
        raise reader.error("nm_options", "a list of {keep, group, speedup, bits, source}", nm_raw)
    nm_options = []
    for i, item in enumerate(nm_raw):
        sub = ConfigReader(item, f"{where}: nm_options[{i}]")
        keep = sub.integer("keep", minimum=1)
        group = sub.integer("group", minimum=2)
        if keep >= group:
            raise sub.error("keep", f"an integer below group={group}", keep)
        speedup = sub.number("speedup", minimum=1.0, maximum=group / keep)
        option_bits = sub.bits("bits", allowed=precisions)
        source = check_source(sub.raw("source", expected="a source note"), f"{sub.where}: source")
        kinds = sub.raw("layers", list(LAYER_KINDS))
        if not isinstance(kinds, list | tuple) or not kinds or any(k not in LAYER_KINDS for k in kinds):
            raise sub.error("layers", f"a non-empty list of layer kinds from {list(LAYER_KINDS)}", kinds)
        sub.finish()
        nm_options.append(NMOption(keep, group, speedup, option_bits, source, tuple(kinds)))
    if nm_options and not any(get_pattern(p).n_of_m for p in patterns):
        n_of_m = [name for name in pattern_names() if get_pattern(name).n_of_m]
        raise ConfigError(f"{where}: nm_options are given but patterns lists neither {' nor '.join(n_of_m)}")
    # one keep:group may have an option per precision (measured gains differ), never two for one
    covered = [(o.keep, o.group, b) for o in nm_options for b in o.bits]
    if len(set(covered)) != len(covered):
        raise ConfigError(f"{where}: nm_options lists the same keep:group twice for one bit-width")

    return tuple(nm_options)


def _read_sparse_kernel(
    reader: ConfigReader, precisions: Sequence[int], patterns: Sequence[str]
) -> SparseKernel | None:
    """``sparse_kernel``, the kernel of the shape-keeping patterns other than N:M, if given."""
    kernel_raw = reader.raw("sparse_kernel", None)
    if kernel_raw is None:
        return None
    sub = ConfigReader(kernel_raw, f"{reader.where}: sparse_kernel")
    # N:M runs on the N:M units (nm_options); a sparse kernel runs the other shape-keeping ones
    allowed = tuple(p for p in patterns if get_pattern(p).compressed_storage and not get_pattern(p).n_of_m)
    kernel_patterns = sub.patterns("patterns", allowed=allowed)
    if not kernel_patterns:
        raise sub.error("patterns", f"a non-empty list from {list(map(str, allowed))}", [])
    kernel = SparseKernel(
        patterns=kernel_patterns,
        bits=sub.bits("bits", allowed=precisions),
        efficiency=sub.number("efficiency", positive=True, maximum=1.0),
        max_speedup=sub.number("max_speedup", minimum=1.0),
        pointwise_only=read_boolean(sub, "pointwise_only", False),
        source=check_source(sub.raw("source", expected="a source note"), f"{sub.where}: source"),
    )
    sub.finish()
    return kernel


def read_boolean(reader: ConfigReader, key: str, default: Any = _MISSING) -> bool:
    """A YAML boolean."""
    value = reader.raw(key, default, "true or false")
    if not isinstance(value, bool):
        raise reader.error(key, "true or false", value)
    return value
