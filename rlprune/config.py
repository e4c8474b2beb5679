"""The config schema: the type of every key rlprune reads, and the ranges checked before any work.

Hydra composes ``conf/config.yaml`` on top of :class:`RlpruneConfig` (stored in Hydra's
ConfigStore as ``rlprune_schema``), so an unknown key or a value of the wrong type is refused
while the config is composed, naming the key. :func:`validate` then checks the ranges of a
composed config and raises one :class:`ConfigError` naming the key, the bad value and what is
allowed. The groups whose keys depend on the choice (``model``, ``data``, ``agent``,
``hardware``, ``finetune``) are checked by the code that reads them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from rlprune.errors import ConfigError
from rlprune.policy import SUPPORTED_BITS, searchable_patterns

METRICS = ("accuracy", "loss", "kl")  # what the search maximises (envs/problem.py)
# action walls of the env: rlprune's (keep feasible, use the budget), AMC's, HAQ's (envs/prune_env.py)
WALLS = ("band", "feasible", "final")
WANDB_MODES = ("offline", "online", "disabled")


AUTO = "auto"
"""``budget.latency=auto``: the budget derived from the reachable range (``api.resolve_budget``)."""


@dataclass
class BudgetConfig:
    """``budget.*``: the latency budget relative to the dense model.

    ``latency`` is a share of the dense latency in (0, 1], or ``auto``: ``auto_share`` of the
    way from the cheapest latency the search space reaches (on this model and hardware) to dense.
    """

    latency: Any = AUTO  # "auto" or a float in (0, 1]
    auto_share: float = 0.1
    sweep: Any = None  # null or a list of budgets for one budget-conditioned search


@dataclass
class DenseConfig:
    """``dense.*``: training of the dense baseline (once per model, data and settings)."""

    epochs: int = 60
    lr: float = 0.01
    batch_size: int = 100
    weight_decay: float = 0.0
    seed: int = 0


@dataclass
class LayersConfig:
    """``layers.*``: which prunable layers the search decides for."""

    exclude_first: bool = False
    exclude_last: bool = False


@dataclass
class SearchConfig:
    """``search.*``: the search space and its cost in evaluations."""

    evaluations: int = 1000
    pattern: Any = "auto"  # one name or a list of names; auto: the hardware's search_pattern
    bits: Any = None  # null or a list of bit-widths
    nm_options: Any = None  # null or a list of [N, M]
    levels: int = 20
    min_density: float = 0.05
    nm_pad: bool = True
    reconstruct: bool = False
    checkpoint_every: int = 100


@dataclass
class RewardConfig:
    """``reward.*``: what the search maximises on the reward split."""

    metric: str = "accuracy"
    baseline_momentum: float | None = None
    bn_recalibration: int = 4


@dataclass
class WandbConfig:
    """``wandb.*``: Weights & Biases tracking."""

    mode: str = "offline"
    project: str = "rlprune"
    group: str | None = None


@dataclass
class RlpruneConfig:
    """The whole tree. Group choices (``model``, ``data``, ...) are open mappings."""

    model: Any = MISSING
    data: Any = MISSING
    agent: Any = MISSING
    hardware: Any = MISSING
    finetune: Any = MISSING
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    cache_dir: str = MISSING
    progress_bar: bool = True
    dense: DenseConfig = field(default_factory=DenseConfig)
    layers: LayersConfig = field(default_factory=LayersConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)


ConfigStore.instance().store(name="rlprune_schema", node=RlpruneConfig)


def default_cache_dir() -> str:
    """The root config's default: ``$RLPRUNE_CACHE`` or ``~/.cache/rlprune``."""
    return os.environ.get("RLPRUNE_CACHE") or str(Path(os.environ.get("HOME", ".")) / ".cache" / "rlprune")


def _from_root(key: str, default: Any, parent: Any, root: Any) -> Any:
    """The root config's ``key`` when ``parent`` is composed into the full config, else ``default``."""
    if parent._get_parent() is not None:
        value = OmegaConf.select(root, key, default=None)
        if value is not None:
            return value
    return default


def _cache_dir_resolver(*, _parent_: Any, _root_: Any) -> str:
    # ``${rlprune.cache_dir:}`` in conf/hardware/local_cpu.yaml: the root config's ``cache_dir``
    # when the file is composed into the full config (hardware=local_cpu), the default cache
    # when the file is loaded on its own (a plain ``${cache_dir}`` would point at itself there).
    # Registered here, with the schema, so every process that composes the config has it
    # (a joblib or submitit worker resolves the config before any rlprune code runs).
    return str(_from_root("cache_dir", default_cache_dir(), _parent_, _root_))


def _progress_bar_resolver(*, _parent_: Any, _root_: Any) -> bool:
    # ``${rlprune.progress_bar:}``: the measured table's bar follows the root ``progress_bar``
    return bool(_from_root("progress_bar", True, _parent_, _root_))


for _name, _resolver in (
    ("rlprune.cache_dir", _cache_dir_resolver),
    ("rlprune.progress_bar", _progress_bar_resolver),
):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def plain(value: Any) -> Any:
    """A config node (OmegaConf, resolved) or a mapping or sequence of them as plain dicts and lists."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def is_number(value: Any) -> bool:
    """Whether a config value is an int or a float (YAML's ``true`` is neither)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """Whether a config value is an int (YAML's ``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def validate(cfg: DictConfig) -> None:
    """Check the ranges of a composed config; raise :class:`ConfigError` on the first bad key."""
    latency = cfg.budget.latency
    checks: list[tuple[str, bool, str]] = [
        (
            "budget.latency",
            latency == AUTO or (is_number(latency) and 0.0 < latency <= 1.0),
            f"a share of the dense latency in (0, 1], or {AUTO} (derived from the reachable range)",
        ),
        ("budget.auto_share", 0.0 < cfg.budget.auto_share <= 1.0, "a share of the reachable range in (0, 1]"),
        ("search.evaluations", cfg.search.evaluations >= 1, "an integer >= 1"),
        ("search.checkpoint_every", cfg.search.checkpoint_every >= 1, "an integer >= 1"),
        ("search.levels", cfg.search.levels >= 2, "an integer >= 2"),
        ("search.min_density", 0.0 < cfg.search.min_density <= 1.0, "a density in (0, 1]"),
        ("reward.metric", cfg.reward.metric in METRICS, f"one of {list(METRICS)}"),
        ("wandb.mode", cfg.wandb.mode in WANDB_MODES, f"one of {list(WANDB_MODES)}"),
        ("dense.epochs", cfg.dense.epochs >= 0, "an integer >= 0"),
        ("dense.lr", cfg.dense.lr > 0, "a learning rate > 0"),
        ("dense.batch_size", cfg.dense.batch_size >= 1, "an integer >= 1"),
        ("reward.bn_recalibration", cfg.reward.bn_recalibration >= 0, "an integer >= 0 (batches)"),
    ]
    sweep = plain(cfg.budget.sweep)
    if sweep is not None and (
        not isinstance(sweep, list) or not sweep or not all(is_number(b) and 0.0 < b <= 1.0 for b in sweep)
    ):
        raise _fail("budget.sweep", sweep, "null or a list of budgets in (0, 1]")
    wall = cfg.agent.get("wall", "band")
    checks.append(("agent.wall", wall in WALLS, f"one of {list(WALLS)}"))
    momentum = cfg.reward.baseline_momentum
    checks.append(
        ("reward.baseline_momentum", momentum is None or 0.0 < momentum <= 1.0, "null or in (0, 1]")
    )
    for key, ok, allowed in checks:
        if not ok:
            raise _fail(key, OmegaConf.select(cfg, key), allowed)

    pattern = plain(cfg.search.pattern)
    names = [pattern] if isinstance(pattern, str) else pattern
    valid = searchable_patterns()
    if pattern != "auto" and (not isinstance(names, list) or not names or any(n not in valid for n in names)):
        raise _fail("search.pattern", pattern, f"auto, one of {valid}, or a list of them")
    bits = plain(cfg.search.bits)
    if bits is not None and (
        not isinstance(bits, list) or not bits or any(b not in SUPPORTED_BITS for b in bits)
    ):
        raise _fail("search.bits", bits, f"null or a list of bit-widths from {list(SUPPORTED_BITS)}")
    options = plain(cfg.search.nm_options)
    if options is not None:
        valid = isinstance(options, list) and all(
            isinstance(o, list) and len(o) == 2 and all(isinstance(v, int) for v in o) and 0 < o[0] < o[1]
            for o in options
        )
        if not valid or not options:
            raise _fail("search.nm_options", options, "null or a list of [N, M] with 0 < N < M")


def sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """The overrides of every job of a Hydra multirun (the basic sweeper's product of choices).

    ``hydra.*`` overrides are left out; ``None`` when a sweep cannot be enumerated ahead
    (an ``interval(...)`` for an optimizing sweeper).
    """
    from itertools import product

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if key.lstrip("+~").startswith("hydra"):
            continue
        if not override.is_sweep_override():
            choices.append([override.input_line])
            continue
        try:
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        except HydraException:
            return None
    return [list(job) for job in product(*choices)]


def compose_config(overrides: list[str]) -> DictConfig:
    """rlprune's config with Hydra ``overrides``, as ``python -m rlprune`` would see it."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="rlprune.conf"):
        return compose(config_name="config", overrides=overrides)


def check_sweep(overrides: list[str]) -> None:
    """Compose and :func:`validate` every job of a multirun before any starts.

    Raises:
        ConfigError: naming the first job whose config is refused, and why.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    jobs = sweep_jobs(overrides)
    if jobs is None or len(jobs) < 2:
        return  # one job: the run itself says what is wrong, in its own folder
    with initialize_config_module(version_base="1.3", config_module="rlprune.conf"):
        for number, job in enumerate(jobs):
            try:
                validate(compose(config_name="config", overrides=job))
            except (ConfigError, HydraException, OmegaConfBaseException) as exc:
                message = "; ".join(str(exc).strip().splitlines()[:2])
                raise ConfigError(
                    f"sweep job {number} ({' '.join(job)}) of {len(jobs)} is refused, so no job was "
                    f"started: {message}"
                ) from exc
