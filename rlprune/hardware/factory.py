"""Build a latency model from its Hydra config node, or from a ``conf/hardware`` file.

``build_latency_model(cfg.hardware)`` looks at ``model`` (the kind) and hands the node to that
kind's builder. New kinds (the measured lookup table) register with
:func:`register_latency_model`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlprune.config import plain
from rlprune.errors import ConfigError
from rlprune.hardware.base import LatencyModel
from rlprune.hardware.bitfusion import BitFusionModel
from rlprune.hardware.bops import BopsModel
from rlprune.hardware.local_gpu import GpuTableModel
from rlprune.hardware.measured import MeasuredModel
from rlprune.hardware.roofline import RooflineModel
from rlprune.policy import Pattern, searchable_patterns

Builder = Callable[[Mapping[str, Any], str], LatencyModel]

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
    kinds = latency_model_kinds()
    if "model" not in data:
        raise ConfigError(f"{where}: missing field 'model'; expected one of {list(kinds)}")
    kind = data["model"]
    if kind not in _BUILDERS:
        raise ConfigError(
            f"{where}: unknown latency model kind model={kind!r}; expected one of {list(kinds)}"
        )
    data = dict(data)
    wanted = data.pop("search_pattern", str(Pattern.FILTER))
    model = _BUILDERS[kind](data, where)
    model.search_pattern = _search_pattern(wanted, model, where)
    return model


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
