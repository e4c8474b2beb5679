"""Weights & Biases tracking. Offline by default: runs are written under the run folder and
can be uploaded later with ``wandb sync``; ``wandb.mode=disabled`` turns tracking off.

Tracking is a record of a run, never a reason for it to fail: once the run is open, a logging
call that raises is recorded in :attr:`Tracker.failures` and the run goes on; the caller says
so when the run is done (the CLI exits with status 3).
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rlprune.envs.problem import Outcome
from rlprune.errors import ConfigError

MODES = ("offline", "online", "disabled")


def import_wandb(mode: str) -> Any:
    """The ``wandb`` module that ``wandb.mode`` (``offline`` or ``online``) logs through.

    Raises:
        ConfigError: when it does not import, naming the fix.
    """
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError(
            f"wandb.mode={mode} needs the wandb package, which does not import here ({exc}); "
            "pip install wandb, or run with wandb.mode=disabled"
        ) from exc
    return wandb


class Tracker:
    """One W&B run for one rlprune run; a no-op when tracking is disabled.

    Args:
        mode: ``offline``, ``online`` or ``disabled``.
        project: W&B project name.
        run_dir: folder the offline run is written into (``<run_dir>/wandb``).
        config: the resolved configuration, logged as the run's config.
        name: run name; group and tags organise sweeps.

    Attributes:
        failures: one line per logging call that raised (the run went on without it).
        tracebacks: the traceback of each failure, in the same order.
    """

    def __init__(
        self,
        mode: str,
        project: str,
        run_dir: str | os.PathLike[str],
        config: Mapping[str, Any],
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"wandb.mode must be one of {list(MODES)}, got {mode!r}")
        self.run = None
        self.failures: list[str] = []
        self.tracebacks: list[str] = []
        if mode == "disabled":
            return
        wandb = import_wandb(mode)
        self._wandb = wandb
        self.run = wandb.init(
            project=project,
            mode=mode,
            dir=str(run_dir),
            config=dict(config),
            name=name,
            group=group,
            tags=list(tags),
            reinit="finish_previous",
            settings=wandb.Settings(console="off", quiet=True),
        )
        # two x-axes: policies evaluated (the search) and env steps (the SB3 agent's training)
        self.run.define_metric("search/episode")
        self.run.define_metric("search/*", step_metric="search/episode")
        self.run.define_metric("agent/timesteps")
        self.run.define_metric("agent/*", step_metric="agent/timesteps")

    @property
    def enabled(self) -> bool:
        """Whether a W&B run is open."""
        return self.run is not None

    @property
    def failure(self) -> str | None:
        """One line on what failed in tracking (the first failure, and how many there were), or None."""
        if not self.failures:
            return None
        more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        return f"{self.failures[0]}{more}"

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run a tracking step; an exception is recorded in :attr:`failures`, not raised."""
        try:
            yield
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.failures.append(f"{what}: {type(exc).__name__}: {message}")
            self.tracebacks.append(traceback.format_exc())

    def log_outcome(self, outcome: Outcome, improved: bool) -> None:
        """Log one evaluated policy (reward-split accuracy, latency, best so far)."""
        if self.run is None:
            return
        with self.guard("search/*"):
            self.run.log(
                {
                    "search/episode": outcome.episode,
                    "search/accuracy": outcome.accuracy,
                    "search/loss": outcome.loss,
                    "search/latency": outcome.latency,
                    "search/improved": int(improved),
                    "search/fidelity": outcome.fidelity,
                    **({} if outcome.kl is None else {"search/kl": outcome.kl}),
                }
            )

    def log_agent(self, values: Mapping[str, Any], timesteps: int) -> None:
        """Log an SB3 agent's training record (losses, entropy, rewards) at its env step count."""
        if self.run is None:
            return
        numbers = {f"agent/{k}": v for k, v in values.items() if isinstance(v, int | float)}
        if numbers:
            with self.guard("agent/*"):
                self.run.log({**numbers, "agent/timesteps": timesteps})

    def log_bars(self, key: str, labels: Sequence[str], values: Sequence[float], title: str) -> None:
        """Log a bar chart (one bar per label), e.g. the per-layer sparsity of the policy."""
        if self.run is None:
            return
        with self.guard(key):
            table = self._wandb.Table(
                columns=["layer", key], data=[[a, b] for a, b in zip(labels, values, strict=True)]
            )
            self.run.log({key: self._wandb.plot.bar(table, "layer", key, title=title)})

    def log_table(self, key: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Log records as a ``wandb.Table``: one column per key of any row, ``None`` where a row lacks it."""
        if self.run is None:
            return
        with self.guard(key):
            columns = list(dict.fromkeys(column for row in rows for column in row))
            data = [[row.get(column) for column in columns] for row in rows]
            self.run.log({key: self._wandb.Table(columns=columns, data=data)})

    def log_image(self, key: str, path: Path) -> None:
        """Log a picture file (a plot) as a ``wandb.Image``."""
        if self.run is None:
            return
        with self.guard(key):
            self.run.log({key: self._wandb.Image(str(path))})

    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        """Set final metrics in the run summary (nested keys joined with ``/``)."""
        if self.run is None:
            return
        with self.guard("summary"):
            for key, value in _flatten(metrics).items():
                self.run.summary[key] = value

    def log_artifact(self, name: str, kind: str, files: Sequence[Path]) -> None:
        """Log existing files and folders as one artifact.

        They are referenced where they lie (W&B's ``immutable`` policy), not copied: a run's
        outputs are written once, and W&B's copies in its staging folder outlive an offline run,
        a whole network each.
        """
        if self.run is None:
            return
        with self.guard(f"artifact {name}"):
            artifact = self._wandb.Artifact(name, type=kind)
            for path in files:
                if path.is_dir():
                    artifact.add_dir(str(path), name=path.name, policy="immutable")
                else:
                    artifact.add_file(str(path), policy="immutable")
            self.run.log_artifact(artifact)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run."""
        if self.run is None:
            return
        run, self.run = self.run, None
        with self.guard("finish"):
            run.finish(exit_code=exit_code)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        elif isinstance(value, int | float | str | bool) or value is None:
            flat[name] = value
    return flat
