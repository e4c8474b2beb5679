"""The finishing steps of a run: its report, its outputs (policy, models, exports) and its W&B log.

:func:`rlprune.api.run` finetunes the search's best policy, then hands it here: :func:`build_report`
turns it into plain data, :func:`write_outputs` writes the run folder, :func:`log_outputs` logs it
to the run's tracker (:func:`tracking`), and :func:`check_tracking` says, once every output is
written, whether tracking failed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import nn

from rlprune.agents import searcher_name
from rlprune.compress import bake, calibrate_activations, without_input_quantizers
from rlprune.config import plain
from rlprune.cuda.measure import deploy_and_measure
from rlprune.data import Splits
from rlprune.envs.problem import Outcome
from rlprune.errors import ConfigError, ModelError, TrackingError
from rlprune.export import export_filter_pruned, export_int8, fold_batch_norms
from rlprune.finetune import FinetuneResult, FinetuneSettings
from rlprune.hardware import LatencyModel, MeasuredModel, network_latency
from rlprune.hardware.local_gpu import GpuTableModel
from rlprune.io import write_atomic, write_dir_atomic, write_json_atomic, write_text_atomic, write_yaml_atomic
from rlprune.layers import PRUNABLE_TYPES, FilterCoupling, LayerInfo
from rlprune.models.hf import Pretrained
from rlprune.policy import Pattern, Policy
from rlprune.report import layer_rows, size_ratio
from rlprune.tracking import Tracker
from rlprune.training import Score, evaluate, kl_divergence

if TYPE_CHECKING:  # the stages' results, read here; rlprune.api imports this module
    from rlprune.api import Budget, SearchResult, Target


def _export_filters(baked: nn.Module, policy: Policy, example: torch.Tensor, run_dir: Path) -> dict[str, Any]:
    """Remove the policy's pruned filters for real and save the smaller network whole.

    A policy the export cannot serve (a finetune that recast the classifier's outputs as
    filters) keeps the run's other outputs; the report says why there is no smaller network.
    """
    try:
        smaller = export_filter_pruned(baked, policy, example)
    except (ConfigError, ModelError) as exc:
        print(f"no model_pruned.pt: {exc}")
        return {"model_pruned": None, "skipped": str(exc)}
    write_atomic(run_dir / "model_pruned.pt", lambda f: torch.save(smaller, f))
    return {
        "model_pruned": "model_pruned.pt",
        "params": sum(p.numel() for p in smaller.parameters()),
        "dense_params": sum(p.numel() for p in baked.parameters()),
    }


def _deploy_here(
    dense: nn.Module,
    baked: nn.Module,
    policy: Policy,
    layers: list[LayerInfo],
    splits: Splits,
    hardware: MeasuredModel,
    run_dir: Path,
) -> dict[str, Any]:
    """Deploy the policy as the measured table costs it, save it, and measure it on this CPU.

    The network with the policy's filters removed and its batch norms folded, int8 (torch.ao,
    ranges from training batches) in the layers the policy runs at 8 bits, traced and frozen:
    ``model_deployed.pt``, for ``torch.jit.load`` without rlprune. Reported: its test accuracy
    (int8 rounds as torch.ao does, not as the finetune's simulation did), and its latency over
    the dense network's, both deployed and timed side by side on this CPU as the table is. A
    network that cannot be exported or traced keeps the run's other outputs; the report says why.
    """
    try:
        example = splits.train_x[:1]
        plain = without_input_quantizers(copy.deepcopy(baked))
        filters = Policy(tuple((name, c) for name, c in policy if c.pattern is Pattern.FILTER))
        network = fold_batch_norms(
            export_filter_pruned(plain, filters, example) if filters.choices else plain
        )
        dense_choice = hardware.dense_choice()
        integer = {
            layer.name: hardware.runs_integer(policy.get(layer.name, dense_choice)) for layer in layers
        }
        int8 = [name for name, runs in integer.items() if runs]
        left_float: list[str] = []
        if int8:
            floats = [name for name, runs in integer.items() if not runs]
            calibration = list(splits.train_x[:512].split(64))
            network = export_int8(network, example, calibration, float_layers=floats)
            # torch.ao does not trace into torch.nn containers such as nn.TransformerDecoderLayer
            left_float = [name for name in int8 if type(network.get_submodule(name)) in PRUNABLE_TYPES]
            int8 = [name for name in int8 if name not in left_float]
        deployed = hardware.deploy(network, example)
        write_atomic(run_dir / "model_deployed.pt", lambda f: torch.jit.save(deployed, f))
        x = splits.test_x[: hardware.batch_size]
        dense_s, deployed_s = hardware.time_networks(
            [hardware.deploy(fold_batch_norms(dense), example), deployed],
            x,
            [32, 8 if int8 else 32],
            repeats=5,  # int8 and float are timed apart: their ratio varied 1-5% (cv) from timing to timing
        )
        result = {
            "model": "model_deployed.pt",
            "device": "this CPU",
            "int8_layers": int8,
            "int8_left_float": left_float,
            "test_accuracy": evaluate(deployed, splits.test_x, splits.test_y).accuracy,
            "measured_latency": deployed_s / dense_s,
            "dense_seconds": dense_s,
            "deployed_seconds": deployed_s,
        }
    except (ConfigError, ModelError) as exc:
        print(f"no model_deployed.pt: {exc}")
        return {"model": None, "skipped": str(exc)}
    return result


def write_policy(path: Path, outcome: Outcome, hardware: str) -> None:
    """Write a policy and how it scored to ``path`` (YAML, atomically)."""
    write_yaml_atomic(
        path,
        {
            "hardware": hardware,
            "budget": outcome.budget,
            "latency": round(outcome.latency, 6),
            "reward_accuracy": round(outcome.accuracy, 6),
            "episode": outcome.episode,
            "layers": outcome.policy.to_dict(),
        },
    )


def read_policy(path: str | Path) -> Policy:
    """The policy stored in a ``policy.yaml``."""
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or "layers" not in data:
        raise ConfigError(f"{path} is not a policy file: it has no 'layers' mapping")
    return Policy.from_dict(data["layers"])


def test_score(model: nn.Module, splits: Splits) -> Score:
    """Test accuracy of a compressed model, its activation ranges calibrated on the reward split."""
    calibrate_activations(model, splits.reward_x)
    return evaluate(model, splits.test_x, splits.test_y)


TRACKING_LOG = "tracking_error.log"
"""The file, in the run folder, that holds the tracebacks of a failed W&B tracking."""


@contextmanager
def tracking(cfg: DictConfig, hardware: LatencyModel, run_dir: Path, budget: float) -> Iterator[Tracker]:
    """The W&B run of one budget's run, closed with the run's outcome.

    A tracking failure leaves its tracebacks in ``<run_dir>/tracking_error.log``.
    """
    model_name = str(cfg.model.get("_target_") or "model").rsplit(".", 1)[-1]
    agent = searcher_name(cfg.agent)
    tracker = Tracker(
        cfg.wandb.mode,
        cfg.wandb.project,
        run_dir,
        plain(cfg),
        name=f"{model_name}-{cfg.data.name}-{hardware.name}-{agent}-b{budget}-s{cfg.seed}",
        group=cfg.wandb.group,
        tags=[agent, hardware.name, cfg.data.name],
    )
    try:
        yield tracker
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish()
    if tracker.failures:
        write_text_atomic(run_dir / TRACKING_LOG, "\n".join(tracker.tracebacks))


def check_tracking(trackers: Sequence[tuple[Path, Tracker]], report: dict[str, Any]) -> None:
    """Raise :class:`TrackingError` when any W&B run of the finished run failed to log."""
    failed = [(folder, tracker) for folder, tracker in trackers if tracker.failure]
    if failed:
        folder, tracker = failed[0]
        raise TrackingError(
            f"the run finished and wrote its outputs in {folder}, but W&B tracking failed: "
            f"{tracker.failure} (details: {folder / TRACKING_LOG})",
            report,
        )


@dataclass
class Finetuned:
    """The best policy finetuned, with the couplings it was applied with and its test scores."""

    result: FinetuneResult
    couplings: Mapping[str, FilterCoupling] | None
    before: Score
    after: Score


def language_metrics(target: Target, result: SearchResult, tuned: Finetuned) -> dict[str, Any]:
    """Perplexities (exp of the token-level mean loss) of the dense and the final network on the
    reward and test splits, and the final network's KL divergence to the dense one on the test split."""
    splits, final = target.splits, tuned.result.model
    after_reward = evaluate(final, splits.reward_x, splits.reward_y)
    return {
        "perplexity": {
            "dense_test": math.exp(target.dense_test.loss),
            "dense_reward": math.exp(target.dense_reward.loss),
            "search_best_reward": math.exp(result.best.loss),
            "pruned_test_before_finetune": math.exp(tuned.before.loss),
            "pruned_test_after_finetune": math.exp(tuned.after.loss),
            "pruned_reward_after_finetune": math.exp(after_reward.loss),
        },
        "kl_to_dense_test": kl_divergence(final, target.model, splits.test_x),
    }


def build_report(
    cfg: DictConfig,
    target: Target,
    result: SearchResult,
    hardware: LatencyModel,
    settings: FinetuneSettings,
    budget: Budget,
    tuned: Finetuned,
) -> dict[str, Any]:
    """The report of a finished run as plain data: budget, latency, size, accuracies, layers; for a
    language model (labels per token) also perplexities and the KL divergence to the dense network
    (:func:`language_metrics`), the accuracies then being token accuracies."""
    layers, policy, couplings = target.layers, tuned.result.policy, tuned.couplings
    overhead = result.space.overhead
    rows = layer_rows(
        layers,
        policy,
        hardware,
        {**result.space.skipped, **tuned.result.kept},
        tuned.result.metrics,
        couplings,
        result.space.step_of,
    )
    latency = (network_latency(hardware, layers, policy, couplings) + overhead) / (
        network_latency(hardware, layers, Policy()) + overhead
    )
    return {
        "run": {"model": str(cfg.model.get("_target_")), "data": cfg.data.name, "seed": cfg.seed},
        "budget": budget.latency,
        "budget_auto": budget.auto,
        "cheapest_latency": budget.floor,
        "latency": latency,
        "size_ratio": size_ratio(layers, rows),
        "hardware": hardware.name,
        "device": str(target.splits.train_x.device),
        "accuracy": {
            "dense_test": target.dense_test.accuracy,
            "dense_reward": target.dense_reward.accuracy,
            "search_best_reward": result.best.accuracy,
            "pruned_test_before_finetune": tuned.before.accuracy,
            "pruned_test_after_finetune": tuned.after.accuracy,
        },
        "search": {
            "agent": searcher_name(cfg.agent),
            "evaluations": result.evaluations,
            "forward_passes": result.forward_passes,
            "best_episode": result.best.episode,
            "metric": cfg.reward.metric,
            "best_reward_loss": result.best.loss,
            "best_reward_kl": result.best.kl,
            "latency": result.best.latency,
            "seconds": result.seconds,
            "sensitivity_seconds": result.sensitivity_seconds,
        },
        "finetune": asdict(settings),
        "skipped": result.space.skipped,
        **({"language_model": language_metrics(target, result, tuned)} if target.splits.per_token else {}),
        "layers": rows,
    }


def write_outputs(
    report: dict[str, Any],
    target: Target,
    result: SearchResult,
    tuned: Finetuned,
    hardware: LatencyModel,
    run_dir: Path,
) -> list[Path]:
    """Write the run's outputs (the exports add their results to ``report``); returns their paths."""
    policy, splits = tuned.result.policy, target.splits.to("cpu")
    baked = bake(tuned.result.model).cpu()  # the exports and model.pt are CPU networks
    run_dir.mkdir(parents=True, exist_ok=True)
    outputs = [run_dir / "policy.yaml", run_dir / "report.json", run_dir / "model.pt"]
    if any(choice.pattern is Pattern.FILTER for _, choice in policy):
        report["export"] = _export_filters(baked, policy, splits.train_x[:1], run_dir)
        if report["export"]["model_pruned"]:
            outputs.append(run_dir / "model_pruned.pt")
    if isinstance(hardware, MeasuredModel):
        dense = copy.deepcopy(target.model).cpu()
        report["deployed"] = _deploy_here(dense, baked, policy, target.layers, splits, hardware, run_dir)
        if report["deployed"]["model"]:
            outputs.append(run_dir / "model_deployed.pt")
    if isinstance(hardware, GpuTableModel):
        test = (splits.test_x, splits.test_y)
        try:
            report["deployed"] = deploy_and_measure(
                target.model, baked, policy, test, splits.train_x, hardware.batch_size, run_dir
            )
            outputs.append(run_dir / "model_deployed_gpu.pt")
        except (ConfigError, ModelError) as exc:  # the run's other outputs stay
            print(f"no model_deployed_gpu.pt: {exc}")
            report["deployed"] = {"model": None, "skipped": str(exc)}
    state = own_state_dict(baked, target.model)
    write_policy(run_dir / "policy.yaml", result.best, hardware.name)
    write_atomic(run_dir / "model.pt", lambda f: torch.save(state, f))
    if isinstance(target.model, Pretrained):
        report["model_hf"] = _export_hugging_face(target.model, state, run_dir)
        if report["model_hf"]["folder"]:
            outputs.append(run_dir / "model_hf")
    write_json_atomic(run_dir / "report.json", report)  # last: a folder with a report holds a finished run
    return outputs


def _export_hugging_face(
    network: Pretrained, state: Mapping[str, torch.Tensor], run_dir: Path
) -> dict[str, Any]:
    """The compressed model in ``transformers``' own format, ``model_hf/``: what
    ``AutoModel….from_pretrained`` loads without rlprune, with its tokenizer where the model's
    folder has one (:meth:`~rlprune.models.hf.Pretrained.save_pretrained`). A model that
    ``transformers`` cannot save keeps the run's other outputs; the report says why."""
    try:
        folder = write_dir_atomic(run_dir / "model_hf", lambda d: network.save_pretrained(d, state))
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"no model_hf/: {exc}")
        return {"folder": None, "skipped": str(exc)}
    return {"folder": folder.name, "tokenizer": (folder / "tokenizer_config.json").exists()}


def own_state_dict(baked: nn.Module, network: nn.Module) -> dict[str, torch.Tensor]:
    """``baked``'s state under the keys of ``network``, the class it was compressed from: what
    ``network.load_state_dict`` takes. The search's bookkeeping (kept filters, activation
    ranges) is left out: the weights already hold the masks, weight quantization and silenced
    filters, and a deploy calibrates its own activation ranges."""
    own = network.state_dict().keys()
    return {key: value for key, value in baked.state_dict().items() if key in own}


def log_outputs(tracker: Tracker, report: dict[str, Any], policy: Policy, outputs: Sequence[Path]) -> None:
    """Log the finished run to W&B: layer table, per-layer bars, summary, outputs as an artifact.

    Isolated from the steps before it: a failure is recorded in ``tracker.failures``, never raised.
    """
    with tracker.guard("final log"):
        tracker.log_table("layers", report["layers"])
        names = [name for name, _ in policy]
        tracker.log_bars("policy/sparsity", names, [1 - c.density for _, c in policy], "sparsity per layer")
        tracker.log_bars("policy/bits", names, [c.w_bits for _, c in policy], "weight bits per layer")
        tracker.log_summary({k: v for k, v in report.items() if k != "layers"})
        tracker.log_artifact("compressed", "model", outputs)
