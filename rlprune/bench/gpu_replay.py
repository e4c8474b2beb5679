"""Replay a GPU deploy benchmark on any machine: ``local_gpu``'s predictions from its saved table.

``python -m rlprune.bench gpu --deploy`` saves, per model and batch, every op time the table
measured and the deployed networks its calibration timed (``table`` and ``fitted_networks``).
:class:`ReplayTimer` serves those measurements as a :class:`~rlprune.hardware.local_gpu.GpuTimer`,
so :func:`replay` rebuilds ``local_gpu`` without a GPU, with other settings (a coarser
``channel_step`` reads a subset of a finer grid), and scores its predictions against the
deployed networks' measured times again. A GPU's few minutes then serve many modelling
experiments on a CPU.

``python -m rlprune.bench gpu --replay PATH [--channel-step N]``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlprune.cuda.ops import OpSpec
from rlprune.errors import ConfigError
from rlprune.policy import Policy


def _policy_key(policy: Mapping[str, Any]) -> str:
    return json.dumps(policy, sort_keys=True)


class ReplayTimer:
    """A :class:`~rlprune.hardware.local_gpu.GpuTimer` that serves saved measurements.

    Args:
        device: what identified the GPU (goes into the table's cache key).
        table: op key -> seconds, as the benchmark saved it.
        networks: the calibration's deployed networks: dicts with ``policy`` and ``seconds``.

    Asking for an op or a network that was not measured raises :class:`ConfigError` naming it.
    """

    def __init__(
        self, device: Mapping[str, Any], table: Mapping[str, float], networks: Sequence[Mapping[str, Any]]
    ) -> None:
        self.device = {**device, "replayed": True}
        self.table = dict(table)
        self.networks = {_policy_key(n["policy"]): float(n["seconds"]) for n in networks}

    def device_key(self) -> dict[str, Any]:
        """The recorded GPU's key, marked as replayed (never mixed with a live table's cache)."""
        return dict(self.device)

    def op_seconds(self, specs: Sequence[OpSpec]) -> list[float]:
        """The saved seconds of each op."""
        if missing := [spec.key for spec in specs if spec.key not in self.table]:
            raise ConfigError(
                f"the benchmark did not measure {len(missing)} op(s) this table needs, e.g. {missing[0]}; "
                "measure them on the GPU (a finer --channel-step covers every coarser one)"
            )
        return [self.table[spec.key] for spec in specs]

    def network_seconds(
        self, model: nn.Module, policies: Sequence[Policy], example: torch.Tensor
    ) -> list[float]:
        """The saved seconds of each deployed network (the calibration's own policies)."""
        keys = [_policy_key(policy.to_dict()) for policy in policies]
        if missing := [k for k in keys if k not in self.networks]:
            raise ConfigError(f"the benchmark did not time the deployed network of policy {missing[0]}")
        return [self.networks[k] for k in keys]


def replay_row(
    traced: tuple[nn.Module, Any, list, dict],
    choices: list[dict],
    row: Mapping[str, Any],
    device: Mapping[str, Any],
    channel_step: int | None = None,
) -> dict[str, Any]:
    """``local_gpu``'s fidelity on one batch of a saved benchmark of the model ``traced``
    (:func:`~rlprune.bench.gpu_deploy.traced_zoo_model`), rebuilt from its table."""
    from rlprune.bench.gpu_deploy import build_local_gpu, fidelity
    from rlprune.hardware import network_latency
    from rlprune.hardware.factory import load_hardware_config

    if "table" not in row:
        raise ConfigError(f"batch {row['batch']}: no saved table (measured before tables were saved)")
    model, inputs, layers, couplings = traced
    config = load_hardware_config("local_gpu")[0]
    step = channel_step or row.get("channel_step", config["channel_step"])
    timer = ReplayTimer(device, row["table"], row["fitted_networks"])
    with tempfile.TemporaryDirectory(prefix="rlprune_replay_") as cache:
        local = build_local_gpu(config | {"batch_size": row["batch"], "cache_dir": cache}, timer, step)
        constant = local.calibrate(model, inputs(row["batch"]))
        policies = [Policy.from_dict(c) for c in choices]
        seconds = [network_latency(local, layers, p, couplings) + constant for p in policies]
    predicted = [s / seconds[0] for s in seconds[1:]]
    return {
        "batch": row["batch"],
        "channel_step": step,
        "local_gpu_ratio": predicted,
        "local_gpu": fidelity(predicted, row["measured_ratio"]),
        "recorded": row["local_gpu"],
        "timed_again": row["timed_again"],
        "scales": local.scales,
        "constant_s": constant,
    }


def replay(path: str | Path, channel_step: int | None = None) -> list[dict[str, Any]]:
    """Every model and batch of a saved ``--deploy`` benchmark, replayed (:func:`replay_row`);
    each model is traced once."""
    from rlprune.bench.gpu_deploy import traced_zoo_model

    report = json.loads(Path(path).read_text())
    device = {"gpu": report["device"], "torch": report["torch"], "cuda": report.get("cuda")}
    rows = []
    for model in report["models"]:
        batches = model.get("batches", [])
        traced = traced_zoo_model(model["model"]) if batches else None
        for row in batches:
            replayed = replay_row(traced, model["choices"], row, device, channel_step)
            rows.append({"model": model["model"], **replayed})
    return rows


def replay_line(row: Mapping[str, Any]) -> str:
    """One line: the replayed fidelity beside the recorded one and the second timing's."""

    def cell(f: Mapping[str, float]) -> str:
        return f"MAPE {100 * f['mape']:.1f}% ±10% {100 * f['within_10pct']:.0f}% τ {f['kendall_tau']:.2f}"

    return (
        f"{row['model']} b={row['batch']} step {row['channel_step']}: replayed {cell(row['local_gpu'])} | "
        f"recorded {cell(row['recorded'])} | again τ {row['timed_again']['kendall_tau']:.2f}"
    )
