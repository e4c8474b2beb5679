"""The programmatic API: the chain of docs/design.md as plain function calls.

``run(cfg, run_dir)`` is what ``python -m rlprune`` calls; ``run_network(model, data, run_dir,
overrides)`` runs the same chain on a network and data held in Python. Each stage is usable alone:

    target = load_target(cfg)                    # data, dense model, layers
    hardware = build_latency_model(cfg.hardware)
    result = search(cfg, target, hardware)       # the best policy under the budget
    tuned = finetune(target.model, result.best.policy, target.searched, target.splits, FinetuneSettings(), 0)
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from rlprune.agents import ALGORITHMS, SB3Search, check_agent, make_searcher
from rlprune.compress import compress, recalibrate_batch_norms
from rlprune.config import AUTO, compose_config, plain, validate
from rlprune.data import Splits, load_splits, make_splits
from rlprune.data.arrays import check_arrays
from rlprune.data.augment import Augment
from rlprune.device import out_of_memory_explained, resolve_device
from rlprune.envs import PolicyEvaluator, PruneEnv, SearchProblem, SearchSpace, SpaceSettings, build_space
from rlprune.envs.features import measure_sensitivity, sensitivity_scores
from rlprune.envs.problem import Outcome
from rlprune.errors import ConfigError, DataError, ModelError
from rlprune.finetune import FinetuneResult, FinetuneSettings, finetune
from rlprune.finish import (
    Finetuned,
    build_report,
    check_tracking,
    log_outputs,
    test_score,
    tracking,
    write_outputs,
    write_policy,
)
from rlprune.finish import read_policy as read_policy  # re-exported: part of this API
from rlprune.hardware import LatencyModel, build_latency_model
from rlprune.io import check_fresh_run_dir, write_atomic
from rlprune.layers import FilterCoupling, LayerInfo, discover_layers, filter_couplings, select_layers
from rlprune.masks.criteria import CALIBRATION_BATCH, CALIBRATION_SAMPLES
from rlprune.models.attention import expose_layers
from rlprune.models.checkpoint import load_weights, read_checkpoint
from rlprune.patterns import get_pattern
from rlprune.policy import Policy
from rlprune.progress import SearchProgress, StageProgress, TrainingProgress
from rlprune.reconstruct import LayerFits
from rlprune.report import print_report
from rlprune.resume import SearchCheckpoint
from rlprune.tracking import Tracker, import_wandb
from rlprune.training import Score, TrainSettings, evaluate, train

log = logging.getLogger(__name__)
B = TypeVar("B", bound=contextlib.AbstractContextManager)  # a progress bar


@dataclass
class Target:
    """What is being compressed: the data, the trained dense model and its layers."""

    splits: Splits
    model: nn.Module
    layers: list[LayerInfo]
    searched: list[LayerInfo]
    dense_test: Score
    dense_reward: Score


@dataclass
class SearchResult:
    """The outcome of a search: the best policy and how it was found."""

    best: Outcome
    space: SearchSpace
    evaluations: int
    forward_passes: int
    seconds: float
    sensitivity_seconds: float = 0.0  # of ``seconds``: measuring the layers' sensitivity, where read


@dataclass(frozen=True)
class Budget:
    """A run's latency budget, resolved on its search space.

    Attributes:
        latency: the share of the dense model's latency the compressed network may take.
        auto: whether it was derived (``budget.latency=auto``) rather than typed.
        floor: the cheapest latency any policy of the search space reaches.
    """

    latency: float
    auto: bool
    floor: float


def resolve_budget(latency: float | str, auto_share: float, space: SearchSpace) -> Budget:
    """The budget ``latency`` (``budget.latency``) on ``space``: the number given, or with ``auto``
    ``floor + auto_share * (1 - floor)``, rounded up to 3 decimals.

    ``floor`` is the cheapest latency the search space reaches and 1 is the dense model, so
    ``auto`` is reachable on every model and hardware and leaves the search the same share of
    its room everywhere.

    Raises:
        BudgetError: when a number given is below the floor (the message names the lowest
            reachable budget), or no policy is faster than the dense model.
    """
    floor = space.cheapest()
    if latency == AUTO:
        derived = floor + auto_share * (1.0 - floor)
        budget = Budget(min(1.0, math.ceil(derived * 1000 - 1e-9) / 1000), True, floor)
    else:
        budget = Budget(float(latency), False, floor)
    space.check_budget(budget.latency)
    return budget


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


MODEL_SETTINGS = ("checkpoint", "train_dense")
"""Keys of the ``model`` node that rlprune reads; every other key is an argument of ``_target_``."""


def build_model(model_cfg: Mapping[str, Any]) -> nn.Module:
    """The ``model`` config node's network: ``_target_`` plus arguments, filled from ``checkpoint``.

    A whole module saved in ``checkpoint`` is used as it is (``_target_`` may then be null).

    Raises:
        ModelError: when the class cannot be found or rejects its arguments, or the checkpoint
            is missing, unreadable or does not match the architecture.
    """
    path = model_cfg.get("checkpoint")
    loaded = read_checkpoint(path) if path else None
    if isinstance(loaded, nn.Module):
        expose_layers(loaded)
        return loaded
    arguments = {k: v for k, v in model_cfg.items() if k not in MODEL_SETTINGS}
    if not arguments.get("_target_"):
        raise ModelError("model._target_ is not set: name the network's class (e.g. my_pkg.nets.MyNet)")
    try:
        model = instantiate(arguments)
    except InstantiationException as exc:
        raise ModelError(f"cannot build model {model_cfg.get('_target_')!r}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model._target_={model_cfg.get('_target_')!r} did not build a torch.nn.Module")
    expose_layers(model)
    return load_weights(model, loaded, path) if loaded is not None else model


def dense_cache_path(cfg: DictConfig, splits: Splits) -> Path:
    """Where the dense baseline of this model, training and training data is cached.

    The key holds the content of the checkpoint and of the training split itself, so a file or
    folder of data rewritten in place trains a new baseline, wherever the data came from.
    """
    key = {"model": plain(cfg.model), "data": plain(cfg.data), "dense": plain(cfg.dense)}
    checkpoint = cfg.model.get("checkpoint")
    if checkpoint and Path(checkpoint).expanduser().is_file():
        key["checkpoint_sha256"] = hashlib.sha256(Path(checkpoint).expanduser().read_bytes()).hexdigest()
    training = hashlib.sha256()
    for tensor in (splits.train_x, splits.train_y):
        training.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        training.update(np.ascontiguousarray(tensor.detach().cpu().numpy()))  # no copy of the bytes
    key["training_sha256"] = training.hexdigest()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.cache_dir) / "dense" / f"{cfg.data.name}-{digest}.pt"


def train_dense(cfg: DictConfig, model: nn.Module, splits: Splits) -> nn.Module:
    """Load the cached dense baseline into ``model``, or train a fresh one once and cache it.

    A truncated, corrupt or mismatched cache entry is retrained, never trusted. With
    ``model.train_dense=false`` the model (from ``model.checkpoint``) is used as it is.
    """
    if not cfg.model.get("train_dense", True):
        return model.eval()
    path = dense_cache_path(cfg, splits)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    except FileNotFoundError:
        pass
    except Exception as exc:  # any unreadable entry: rebuild it
        print(f"dense cache {path} is unreadable ({type(exc).__name__}); retraining")
    torch.manual_seed(cfg.dense.seed)
    model = build_model(cfg.model).to(splits.train_x.device)  # a failed load may have half-filled the old one
    settings = TrainSettings(
        epochs=cfg.dense.epochs,
        lr=cfg.dense.lr,
        batch_size=cfg.dense.batch_size,
        weight_decay=cfg.dense.weight_decay,
    )
    augment = augmentation(cfg)
    steps = settings.epochs * math.ceil(len(splits.train_x) / settings.batch_size)
    with _shown(cfg, TrainingProgress("dense model", steps)) as bar:
        train(
            model,
            splits.train_x,
            splits.train_y,
            settings,
            seed=cfg.dense.seed,
            augment=augment,
            bf16=True,
            progress=bar,
        )
    write_atomic(path, lambda f: torch.save(model.state_dict(), f))
    return model


def augmentation(cfg: DictConfig) -> Augment | None:
    """The training-time augmentation of ``data.augment``, or ``None`` when it changes nothing."""
    augment = Augment.from_config(plain(cfg.data.get("augment")))
    return augment if augment.active else None


def describe(cfg: DictConfig) -> tuple[nn.Module, Splits, list[LayerInfo], list[LayerInfo]]:
    """Data, an untrained model and its layers: everything the budget check needs, in seconds."""
    data = cfg.data
    augmentation(cfg)  # a bad data.augment fails here, before any training
    splits = load_splits(
        data.name,
        cfg.cache_dir,
        data.reward_fraction,
        data.split_seed,
        root=data.get("root"),
        normalize=bool(data.get("normalize", False)),
        image_size=int(data.get("image_size", 32)),
        channels=int(data.get("in_channels", 3)),
        dataset=data.get("dataset"),
        path=data.get("path"),
        tokenizer=data.get("tokenizer"),
        size=int(data.get("size") or 64),
        dims=int(data.get("dims", 1)),
        num_classes=data.num_classes,
    )
    if data.num_classes is not None and splits.num_classes > data.num_classes:
        raise DataError(
            f"the data holds {splits.num_classes} classes but data.num_classes={data.num_classes}; "
            f"set data.num_classes={splits.num_classes}"
        )
    torch.manual_seed(cfg.dense.seed)
    model = build_model(cfg.model)
    layers = discover_layers(model, splits.train_x[:1])
    searched = select_layers(layers, cfg.layers.exclude_first, cfg.layers.exclude_last)
    return model, splits, layers, searched


def search_patterns(cfg: DictConfig, hardware: LatencyModel) -> list[str]:
    """The patterns of ``search.pattern``; ``auto`` is the hardware's own (``search_pattern``)."""
    pattern = plain(cfg.search.pattern)
    if pattern == "auto":
        return list(hardware.search_pattern)
    return [pattern] if isinstance(pattern, str) else list(pattern)


def make_space(
    cfg: DictConfig,
    model: nn.Module,
    example: torch.Tensor,
    layers: list[LayerInfo],
    searched: list[LayerInfo],
    hardware: LatencyModel,
) -> SearchSpace:
    """The search space of the ``search`` config on ``hardware``, calibrated to ``model``.

    When filter pruning is searched, the layers' couplings come from Torch-Pruning's
    dependency graph of ``model`` traced on ``example``.
    """
    s = cfg.search
    patterns = search_patterns(cfg, hardware)
    shrinks = any(get_pattern(p).shrinks_outputs for p in patterns)
    couplings = filter_couplings(model, example, layers) if shrinks else None
    settings = SpaceSettings(patterns, plain(s.bits), s.levels, s.min_density, plain(s.nm_options), s.nm_pad)
    return build_space(layers, searched, hardware, settings, couplings, hardware.calibrate(model, example))


def load_target(cfg: DictConfig) -> Target:
    """Data, trained dense model (cached) and layers of the configured target."""
    return train_target(cfg, *describe(cfg))


def train_target(
    cfg: DictConfig, model: nn.Module, splits: Splits, layers: list[LayerInfo], searched: list[LayerInfo]
) -> Target:
    """The :class:`Target` of :func:`describe`'s pieces, with the dense model trained (or loaded).

    Raises:
        ModelError: when the dense model has non-finite weights, or has learned nothing (its
            reward-split accuracy is no better than always answering the most frequent class),
            so there is nothing for a search to keep.
    """
    model = train_dense(cfg, model, splits)
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise ModelError(
            f"the dense model has NaN or inf weights in {broken[:3]}; check dense.lr and the model"
        )
    dense_reward = evaluate(model, splits.reward_x, splits.reward_y)
    majority = torch.bincount(splits.reward_y.flatten()).max().item() / splits.reward_y.numel()
    if dense_reward.accuracy <= majority + 0.01:
        fix = (
            "train it longer (dense.epochs) or check the model and data"
            if cfg.model.get("train_dense", True)
            else "it is searched as it is (model.train_dense=false): start from trained weights "
            "(model.checkpoint, model.path, a trained network), or set model.train_dense=true to train it"
        )
        raise ModelError(
            f"the dense model's reward-split accuracy {dense_reward.accuracy:.3f} is no better than always "
            f"answering the most frequent class ({majority:.3f}): it has not learned; {fix}"
        )
    return Target(
        splits=splits,
        model=model,
        layers=layers,
        searched=searched,
        dense_test=evaluate(model, splits.test_x, splits.test_y),
        dense_reward=dense_reward,
    )


def search(
    cfg: DictConfig,
    target: Target,
    hardware: LatencyModel,
    tracker: Tracker | None = None,
    run_dir: Path | None = None,
    listeners: Sequence[Callable[[Outcome, bool], None]] = (),
    space: SearchSpace | None = None,
) -> SearchResult:
    """Run the configured searcher for ``search.evaluations`` policies and return the best.

    When ``run_dir`` is given, the best policy so far is written to ``policy.yaml`` whenever
    it improves, so an interrupted search keeps it. Each of ``listeners`` is called with every
    evaluated policy's outcome and whether it improved the best. ``space`` is the search space
    when the caller built it already (:func:`make_space`; it depends on the model's structure,
    not its weights). The budget is ``budget.latency`` resolved on the space (:func:`resolve_budget`).
    """
    space, evaluator = scorer(cfg, target, hardware, space)
    budget = resolve_budget(cfg.budget.latency, cfg.budget.auto_share, space)
    problem = SearchProblem(space, evaluator, budget.latency, cfg.search.evaluations, cfg.reward.metric)
    problem.listeners.extend(listeners)
    if tracker is not None:
        problem.listeners.append(tracker.log_outcome)
    if run_dir is not None:
        problem.listeners.append(
            lambda outcome, improved: (
                improved and write_policy(run_dir / "policy.yaml", outcome, hardware.name)
            )
        )
    env = _env(cfg, problem, evaluator)
    log = tracker.log_agent if tracker is not None else None
    searcher = make_searcher(plain(cfg.agent), log=log)
    if run_dir is not None:
        _checkpoint(cfg, problem, searcher, run_dir)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    if not problem.exhausted:
        with _shown(cfg, SearchProgress(problem)):
            searcher.search(env, cfg.seed)
    if problem.best is None:
        raise ConfigError("the search evaluated no policy within budget; raise search.evaluations")
    seconds = time.perf_counter() - start
    return SearchResult(
        problem.best, space, problem.used, evaluator.forward_passes, seconds, env.sensitivity_seconds
    )


def _shown(cfg: DictConfig, bar: B) -> contextlib.AbstractContextManager[B | None]:
    """``bar`` shown while entered, or ``None`` with ``progress_bar=false``."""
    return bar if cfg.progress_bar else contextlib.nullcontext()


def _env(
    cfg: DictConfig,
    problem: SearchProblem,
    evaluator: PolicyEvaluator,
    budgets: Sequence[float] | None = None,
) -> PruneEnv:
    """The search env of ``problem``, with the agent's wall and reward shaping; the layers'
    sensitivity is measured when the searcher first observes the env."""
    return PruneEnv(
        problem,
        partial(_sensitivity, cfg, problem.space, evaluator),
        cfg.reward.baseline_momentum,
        wall=cfg.agent.get("wall", "band"),
        budgets=budgets,
    )


def _sensitivity(cfg: DictConfig, space: SearchSpace, evaluator: PolicyEvaluator) -> np.ndarray:
    """:func:`measure_sensitivity` with a bar of its scores, shown under the search's bar."""
    bar = StageProgress("sensitivity", sensitivity_scores(space), transient=True)
    with _shown(cfg, bar) as shown:
        return measure_sensitivity(space, evaluator, shown.advance if shown else None)


def _checkpoint(cfg: DictConfig, problem: SearchProblem, searcher: Any, run_dir: Path) -> None:
    """Checkpoint the search in ``run_dir`` as it runs; with ``resume``, first restore it."""
    checkpoint = SearchCheckpoint(run_dir / "checkpoint", cfg)
    agentic = isinstance(searcher, SB3Search)  # SB3 agents reload; other searchers start over
    if cfg.resume:
        agent = checkpoint.restore(problem)
        print(f"resuming the search at evaluation {problem.used} of {problem.evaluations}")
        if agentic:
            searcher.resume_from = agent
    every = cfg.search.checkpoint_every
    due = [(problem.used // every + 1) * every]  # the next multiple of `every` (scores may be fractions)

    def save(outcome: Outcome, improved: bool) -> None:
        if problem.used >= due[0] - 1e-9:
            checkpoint.save(problem, searcher.agent if agentic else None)
            due[0] = (problem.used // every + 1) * every

    problem.listeners.append(save)


def scorer(
    cfg: DictConfig, target: Target, hardware: LatencyModel, space: SearchSpace | None
) -> tuple[SearchSpace, PolicyEvaluator]:
    """The search space (built unless given) and the reward-split evaluator of a search."""
    if space is None:
        example = target.splits.train_x[:1]
        space = make_space(cfg, target.model, example, target.layers, target.searched, hardware)
    evaluator = PolicyEvaluator(
        target.model,
        [lay.name for lay in target.searched],
        target.splits.reward_x,
        target.splits.reward_y,
        cfg.search.nm_pad,
        couplings=space.couplings,
        recalibration=_recalibration_inputs(cfg, target.splits),
        recalibration_batch=cfg.dense.batch_size,
        reference=cfg.reward.metric == "kl",
        fit_inputs=_fit_inputs(cfg, target.splits),
    )
    return space, evaluator


def _fit_inputs(cfg: DictConfig, splits: Splits) -> torch.Tensor | None:
    """The training inputs the search's layer fits read (``search.reconstruct``): the finetune's
    reconstruction's (:data:`rlprune.masks.criteria.CALIBRATION_SAMPLES`)."""
    return splits.train_x[:CALIBRATION_SAMPLES] if cfg.search.reconstruct else None


def _recalibration_inputs(cfg: DictConfig, splits: Splits) -> torch.Tensor | None:
    """The training inputs that re-estimate batch norms under a policy (``reward.bn_recalibration``)."""
    batches = cfg.reward.bn_recalibration
    return splits.train_x[: batches * cfg.dense.batch_size] if batches else None


def searched_network(
    cfg: DictConfig, target: Target, policy: Policy, couplings: Mapping[str, FilterCoupling] | None
) -> nn.Module:
    """``policy`` applied to a copy of the dense network (its compressed layers re-fit with
    ``search.reconstruct``), its batch norms re-estimated under it (``reward.bn_recalibration``):
    the network the search scored, before any finetune."""
    masked = compress(target.model, policy, pad=cfg.search.nm_pad, couplings=couplings)
    if (inputs := _fit_inputs(cfg, target.splits)) is not None:
        names = [layer.name for layer in target.searched]
        LayerFits(target.model, names, inputs.split(CALIBRATION_BATCH)).apply(masked, policy, couplings)
    if (inputs := _recalibration_inputs(cfg, target.splits)) is not None:
        recalibrate_batch_norms(masked, inputs, cfg.dense.batch_size)
    return masked


def search_budgets(
    cfg: DictConfig,
    target: Target,
    hardware: LatencyModel,
    budgets: Sequence[float],
    space: SearchSpace | None = None,
    run_dir: Path | None = None,
) -> dict[float, SearchResult]:
    """Budget-conditioned search: one RL agent for every budget of a sweep.

    The agent trains on episodes whose budget is drawn from ``budgets`` (it is in the
    observation), then plays one deterministic episode per budget. ``search.evaluations``
    counts both. Returns the best policy found for each budget, in training or when asked;
    with ``run_dir``, each budget's best so far is kept in ``budget_<b>/policy.yaml``.

    Raises:
        ConfigError: when the agent is not an RL agent, or the evaluations do not cover one
            question per budget.
    """
    budgets = list(dict.fromkeys(float(b) for b in budgets))
    searcher = make_searcher(plain(cfg.agent))
    if not isinstance(searcher, SB3Search):
        raise ConfigError(f"a budget-conditioned search needs an RL agent, one of {sorted(ALGORITHMS)}")
    # one agent learns every budget: no single budget's uniform policy to start from or best to refine
    searcher.warm_start, searcher.refine = False, 0.0
    if cfg.search.evaluations <= len(budgets):
        raise ConfigError(
            f"search.evaluations={cfg.search.evaluations} must exceed the {len(budgets)} budgets "
            "(one evaluation each is kept to ask the trained agent)"
        )
    space, evaluator = scorer(cfg, target, hardware, space)
    training = cfg.search.evaluations - len(budgets)
    problem = SearchProblem(space, evaluator, budgets[0], training, cfg.reward.metric)
    if run_dir is not None:
        problem.listeners.append(
            lambda outcome, improved: (
                improved
                and write_policy(run_dir / f"budget_{outcome.budget}" / "policy.yaml", outcome, hardware.name)
            )
        )
    env = _env(cfg, problem, evaluator, budgets)
    seed_everything(cfg.seed)
    start = time.perf_counter()
    with _shown(cfg, SearchProgress(problem)):
        searcher.search(env, cfg.seed)
    problem.evaluations += len(budgets)
    for budget in budgets:
        searcher.ask(env, budget)
    seconds = time.perf_counter() - start
    return {
        budget: SearchResult(
            problem.best_by_budget[budget],
            space,
            problem.used,
            evaluator.forward_passes,
            seconds,
            env.sensitivity_seconds,
        )
        for budget in budgets
    }


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """The whole chain: target, search, finetune, report, export. Returns the report.

    With ``budget.sweep`` (a list of budgets), one budget-conditioned agent searches them all
    (:func:`search_budgets`) and each budget gets its own folder ``budget_<b>`` with its
    report, policy and model; the report returned is the first budget's.

    Raises:
        TrackingError: after every output is written, when W&B tracking failed (it carries
            the report); the run itself finished.
    """
    return _run_checked(cfg, Path(run_dir), describe)


def run_network(
    model: nn.Module,
    data: Splits | Sequence[np.ndarray | torch.Tensor],
    run_dir: str | Path,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """:func:`run` on a trained network and data held in Python, configured by Hydra
    ``overrides`` as the command line is (``["hardware=local_cpu", "budget.latency=0.5"]``).

    ``model`` is searched as it is, never trained again; a copy is searched and finetuned, so
    the network passed is left untouched. ``data`` is a :class:`~rlprune.data.Splits`, or the
    arrays or tensors ``(x_train, y_train, x_test, y_test)``, split as ``data=arrays`` splits
    them (``data.reward_fraction``, ``data.split_seed`` and ``data.augment`` may be overridden).
    The outputs land in ``run_dir`` as a command-line run's do, the config in ``config.yaml``.

    Raises:
        ConfigError: for overrides given as one string, a ``model=`` or ``data=`` override (the
            network and data are the ones passed), or a bad value, as :func:`run` raises.
        DataError: for arrays that are not four, or malformed (:func:`~rlprune.data.arrays.check_arrays`).
    """
    if isinstance(overrides, str):
        raise ConfigError(
            f"run_network's overrides are a list of strings: [{overrides!r}], not {overrides!r}"
        )
    groups = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in ("model", "data")]
    if groups:
        raise ConfigError(
            f"run_network takes the network and data it is given; leave out {groups} "
            "(data.reward_fraction, data.split_seed and data.augment may be set)"
        )
    cfg = compose_config(list(overrides))
    splits = data if isinstance(data, Splits) else _splits_of(data, cfg.data)
    network = copy.deepcopy(model)
    expose_layers(network)
    kind = type(model)
    with open_dict(cfg):
        cfg.model = {
            "_target_": f"{kind.__module__}.{kind.__qualname__}",
            "checkpoint": None,
            "train_dense": False,
        }
        cfg.data = {
            "name": "in_memory",
            "num_classes": splits.num_classes,
            "reward_fraction": cfg.data.reward_fraction,
            "split_seed": cfg.data.split_seed,
            "augment": plain(cfg.data.get("augment")),
        }

    def described(cfg: DictConfig) -> tuple[nn.Module, Splits, list[LayerInfo], list[LayerInfo]]:
        layers = discover_layers(network, splits.train_x[:1])
        return (
            network,
            splits,
            layers,
            select_layers(layers, cfg.layers.exclude_first, cfg.layers.exclude_last),
        )

    run_dir = Path(run_dir)
    check_fresh_run_dir(run_dir, cfg.resume)  # before the config is written there
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg).encode()))
    return _run_checked(cfg, run_dir, described)


def _splits_of(data: Sequence[np.ndarray | torch.Tensor], node: DictConfig) -> Splits:
    """``(x_train, y_train, x_test, y_test)`` checked and split under the data config ``node``."""
    if isinstance(data, str | bytes) or not isinstance(data, Sequence) or len(data) != 4:
        raise DataError("run_network's data is a Splits, or four arrays: (x_train, y_train, x_test, y_test)")
    arrays = tuple(a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a) for a in data)
    check_arrays(arrays, "run_network's data")
    return make_splits(*arrays, node.reward_fraction, node.split_seed)


def _run_checked(
    cfg: DictConfig,
    run_dir: Path,
    describe: Callable[[DictConfig], tuple[nn.Module, Splits, list[LayerInfo], list[LayerInfo]]],
) -> dict[str, Any]:
    """:func:`run` with the network, data and layers from ``describe``: every config check first."""
    check_fresh_run_dir(run_dir, cfg.resume)
    validate(cfg)
    sweep = list(dict.fromkeys(float(b) for b in cfg.budget.sweep)) if cfg.budget.sweep else None
    if sweep and cfg.resume:
        raise ConfigError("resume=true continues one budget's search; budget.sweep runs cannot be resumed")
    for budget in sweep or []:
        check_fresh_run_dir(run_dir / f"budget_{budget}")
    check_agent(plain(cfg.agent))
    if cfg.wandb.mode != "disabled":
        import_wandb(cfg.wandb.mode)  # before the dense model trains
    device = resolve_device(cfg.device)
    hardware = build_latency_model(plain(cfg.hardware))
    settings = FinetuneSettings.from_config(plain(cfg.finetune), hardware.channel_multiple)
    model, splits, layers, searched = describe(cfg)
    space = make_space(cfg, model, splits.train_x[:1], layers, searched, hardware)
    # fail fast, before the dense model is trained
    budgets = [resolve_budget(b, cfg.budget.auto_share, space) for b in sweep or [cfg.budget.latency]]
    model, splits = model.to(device), splits.to(device)  # moved once: what follows stays there
    with out_of_memory_explained(device):
        return _run(cfg, run_dir, settings, hardware, model, splits, layers, searched, space, budgets, sweep)


def _run(
    cfg: DictConfig,
    run_dir: Path,
    settings: FinetuneSettings,
    hardware: LatencyModel,
    model: nn.Module,
    splits: Splits,
    layers: list[LayerInfo],
    searched: list[LayerInfo],
    space: SearchSpace,
    budgets: list[Budget],
    sweep: list[float] | None,
) -> dict[str, Any]:
    """:func:`run` once the config is checked and the space built: train, search, finish."""
    trackers: list[tuple[Path, Tracker]] = []
    if sweep:
        target = train_target(cfg, model, splits, layers, searched)
        results = search_budgets(cfg, target, hardware, sweep, space=space, run_dir=run_dir)
        reports = []
        for budget in budgets:
            folder = run_dir / f"budget_{budget.latency}"
            with tracking(cfg, hardware, folder, budget.latency) as tracker:
                result = results[budget.latency]
                reports.append(_finish(cfg, target, result, hardware, settings, budget, folder, tracker))
            trackers.append((folder, tracker))
        report = reports[0]
    else:
        (budget,) = budgets
        with tracking(cfg, hardware, run_dir, budget.latency) as tracker:
            target = train_target(cfg, model, splits, layers, searched)
            result = search(cfg, target, hardware, tracker, run_dir, space=space)
            report = _finish(cfg, target, result, hardware, settings, budget, run_dir, tracker)
        trackers.append((run_dir, tracker))
    check_tracking(trackers, report)
    return report


def _finish(
    cfg: DictConfig,
    target: Target,
    result: SearchResult,
    hardware: LatencyModel,
    settings: FinetuneSettings,
    budget: Budget,
    run_dir: Path,
    tracker: Tracker,
) -> dict[str, Any]:
    """Finetune the best policy of ``result``, then write, print and log its report, policy and model."""
    tuned = _finetune_best(cfg, target, result, settings)
    report = build_report(cfg, target, result, hardware, settings, budget, tuned)
    outputs = write_outputs(report, target, result, tuned, hardware, run_dir)
    print_report(report)
    log_outputs(tracker, report, tuned.result.policy, outputs)
    return report


def _finetune_best(
    cfg: DictConfig, target: Target, result: SearchResult, settings: FinetuneSettings
) -> Finetuned:
    """The search's best policy applied (test score before), then finetuned (test score after)."""
    splits, policy = target.splits, result.best.policy
    couplings = result.space.couplings
    if not couplings and settings.mask == "learned" and settings.granularity == "filter":
        couplings = filter_couplings(target.model, splits.train_x[:1], target.layers)
    before = test_score(searched_network(cfg, target, policy, couplings), splits)
    tuned = finetune_target(cfg, target, policy, couplings, settings)
    return Finetuned(tuned, couplings, before, test_score(tuned.model, splits))


def finetune_target(
    cfg: DictConfig,
    target: Target,
    policy: Policy,
    couplings: Mapping[str, FilterCoupling] | None,
    settings: FinetuneSettings,
    seed: int | None = None,
) -> FinetuneResult:
    """``policy`` applied to ``target``'s dense network and finetuned under ``settings``, with the
    run's N:M padding and augmentation (seed: the config's by default)."""
    steps = settings.train.epochs * math.ceil(len(target.splits.train_x) / settings.train.batch_size)
    shown = _shown(cfg, TrainingProgress("finetune", steps)) if steps else contextlib.nullcontext()
    with shown as bar:
        return finetune(
            target.model,
            policy,
            target.searched,
            target.splits,
            settings,
            cfg.seed if seed is None else seed,
            cfg.search.nm_pad,
            couplings,
            augmentation(cfg),
            bar,
        )
