"""Build a latency model from its Hydra config node, or from a ``conf/hardware`` file.

``build_latency_model(cfg.hardware)`` hands the node to its builder: the one of its ``model``
kind (``roofline``, ``measured``, ...: short names of the classes here, more registered with
:func:`register_latency_model`), or the one of ``_target_``, the import path of a latency model
of the user's own package (as ``model._target_`` names a network): a :class:`LatencyModel`
subclass built by its ``from_config(cfg, where)``, or a class or factory called with the node's
other fields that returns a :class:`LatencyModel`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import OmegaConf

from rlprune.config import is_integer, plain
from rlprune.errors import ConfigError
from rlprune.hardware.base import LatencyModel
from rlprune.hardware.bitfusion import BitFusionModel
from rlprune.hardware.bops import BopsModel
from rlprune.hardware.local_gpu import GpuTableModel
from rlprune.hardware.measured import MeasuredModel
from rlprune.hardware.profile import check_source
from rlprune.hardware.roofline import RooflineModel
from rlprune.policy import Pattern, searchable_patterns

Builder = Callable[[Mapping[str, Any], str], LatencyModel]
# fields of every hardware config that say how to search the device, read here, not by its model
SEARCH_FIELDS = ("search_pattern", "channel_multiple")

_BUILDERS: dict[str, Builder] = {
    "roofline": RooflineModel.from_config,
    "bitfusion": BitFusionModel.from_config,
    "bops": BopsModel.from_config,
    "measured": MeasuredModel.from_config,
    "measured_gpu": GpuTableModel.from_config,
}


def register_latency_model(kind: str, builder: Builder) -> None:
    """Make ``model: <kind>`` configs build with ``builder(plain_cfg, where)``."""
    _BUILDERS[kind] = builder


def latency_model_kinds() -> tuple[str, ...]:
    """The ``model`` kinds :func:`build_latency_model` knows."""
    return tuple(sorted(_BUILDERS))


def build_latency_model(
    cfg: Mapping[str, Any], *, origin: str | os.PathLike[str] | None = None
) -> LatencyModel:
    """The latency model a hardware config node describes.

    Args:
        cfg: the node (``cfg.hardware``): a plain mapping or an OmegaConf ``DictConfig``.
        origin: where it came from (a file path), for error messages.

    Raises:
        ConfigError: unknown ``model`` kind, or a missing, unknown or ill-typed field; the
            message names the config and the field and says what is expected.
    """
    data = plain(cfg)
    name = data.get("name") if isinstance(data, Mapping) else None
    where = f"hardware config '{name}'" if isinstance(name, str) else "hardware config"
    if origin is not None:
        where += f" ({origin})"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping of fields, got {type(data).__name__}")
    builder, target = _builder(data, where), data.get("_target_")
    model = builder({k: v for k, v in model_fields(data).items() if k != "_target_"}, where)
    if not isinstance(model, LatencyModel):
        raise ConfigError(
            f"{where}: _target_={target!r} built a {type(model).__name__}, "
            "not a rlprune.hardware.LatencyModel"
        )
    return with_search_fields(model, data, where)


def with_search_fields(
    model: LatencyModel, data: Mapping[str, Any], where: str = "hardware config"
) -> LatencyModel:
    """``model`` with its config's :data:`SEARCH_FIELDS` checked and set (for a model built from
    :func:`model_fields` by hand, e.g. with a timer of one's own).

    Raises:
        ConfigError: a search field that is not valid for ``model``.
    """
    multiple = data.get("channel_multiple", 1)
    if not is_integer(multiple) or multiple < 1:
        raise ConfigError(
            f"{where}: field 'channel_multiple' must be a positive integer (8: filter pruning keeps "
            f"multiples of 8 channels, as tensor cores want; 1: any count), got {multiple!r}"
        )
    if isinstance(notes := data.get("sources"), Mapping) and "channel_multiple" in notes:
        check_source(notes["channel_multiple"], f"{where}: sources.channel_multiple")
    model.search_pattern = _search_pattern(data.get("search_pattern", str(Pattern.FILTER)), model, where)
    model.channel_multiple = multiple
    return model


def model_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """A hardware config's fields less :data:`SEARCH_FIELDS` and their ``sources`` notes: what its
    model's ``from_config`` reads."""
    fields = {key: value for key, value in data.items() if key not in SEARCH_FIELDS}
    if isinstance(notes := fields.get("sources"), Mapping):
        fields["sources"] = {key: note for key, note in notes.items() if key not in SEARCH_FIELDS}
    return fields


def _builder(data: Mapping[str, Any], where: str) -> Builder:
    """The builder of a hardware node: its ``_target_``'s, or its ``model`` kind's."""
    kinds = latency_model_kinds()
    if data.get("_target_") is not None:
        if "model" in data:
            raise ConfigError(
                f"{where}: set one of 'model' (a kind: {list(kinds)}) or '_target_' (an import path), "
                "not both"
            )
        return _target_builder(data["_target_"], where)
    if "model" not in data:
        raise ConfigError(
            f"{where}: missing field 'model'; expected one of {list(kinds)}, "
            "or '_target_' naming your latency model (e.g. my_pkg.MyLatencyModel)"
        )
    kind = data["model"]
    if kind not in _BUILDERS:
        raise ConfigError(
            f"{where}: unknown latency model kind model={kind!r}; expected one of {list(kinds)}"
        )
    return _BUILDERS[kind]


def _target_builder(target: Any, where: str) -> Builder:
    """The builder of ``_target_``: a LatencyModel's ``from_config``, else the callable itself."""
    try:
        found = get_object(str(target))
    except Exception as exc:  # Hydra wraps the import error; say which field holds the path
        raise ConfigError(
            f"{where}: _target_={target!r} cannot be imported ({exc}); name a LatencyModel subclass "
            "or factory importable from here (e.g. my_pkg.MyLatencyModel)"
        ) from exc
    if isinstance(found, type) and issubclass(found, LatencyModel) and hasattr(found, "from_config"):
        return found.from_config
    if not callable(found):
        raise ConfigError(f"{where}: _target_={target!r} is not a class or factory")

    def build(cfg: Mapping[str, Any], where: str) -> LatencyModel:
        try:
            return found(**cfg)
        except TypeError as exc:
            raise ConfigError(
                f"{where}: _target_={target!r} rejects its fields {sorted(cfg)}: {exc}"
            ) from exc

    return build


def _search_pattern(wanted: Any, model: LatencyModel, where: str) -> tuple[str, ...]:
    """The patterns ``search.pattern=auto`` searches on ``model``: those that buy it latency."""
    names = [wanted] if isinstance(wanted, str) else wanted
    runs = [str(p) for p in model.patterns]
    searchable = searchable_patterns()
    if not isinstance(names, list) or not names or any(n not in searchable or n not in runs for n in names):
        raise ConfigError(
            f"{where}: field 'search_pattern' must be one or a list of the patterns the device runs "
            f"({[p for p in runs if p in searchable]}), got {wanted!r}"
        )
    return tuple(names)


def hardware_config_dir() -> Path:
    """The folder of the ``hardware`` config group (``rlprune/conf/hardware`` once installed)."""
    try:
        folder = resources.files("rlprune.conf").joinpath("hardware")
        if folder.is_dir():
            return Path(str(folder))
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "conf" / "hardware"


def available_hardware() -> tuple[str, ...]:
    """Names of the shipped hardware configs (``hardware=<name>``)."""
    return tuple(sorted(p.stem for p in hardware_config_dir().glob("*.yaml")))


def load_hardware_config(name_or_path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    """A shipped config by name (``a100``) or a YAML file by path, as plain data and its path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = hardware_config_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"no hardware config {str(name_or_path)!r}; shipped: {list(available_hardware())}")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # a YAML syntax error: say which file
        raise ConfigError(f"hardware config {path} cannot be read: {exc}") from exc
    return data, path


def load_latency_model(name_or_path: str | os.PathLike[str]) -> LatencyModel:
    """:func:`build_latency_model` of a shipped config name or a YAML path."""
    data, path = load_hardware_config(name_or_path)
    return build_latency_model(data, origin=path)
