"""Command line: ``python -m rlprune [overrides]`` (or the ``rlprune`` script), configured by Hydra.

A mistake the user can fix (bad value, infeasible budget, unknown model) prints one line
starting with ``error:`` and exits with status 2; the traceback goes to ``error.log`` in the
run folder, never to the terminal. A sweep (``-m``) composes and checks every job's config
before any starts; a job that fails later is recorded and the others still run. An
interrupted run (Ctrl-C, or SIGTERM from a cluster) says where its best policy so far is and
exits with status 130.

Exit status:
    0: the run finished, outputs written and tracked.
    2: refused: a mistake the user can fix (one ``error:`` line; details in ``error.log``).
    3: the run finished and wrote its outputs, but W&B tracking failed (one ``error:`` line;
       details in ``tracking_error.log``).
    130: interrupted (Ctrl-C or SIGTERM); the best policy so far is kept.
"""

from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rlprune.errors import RlpruneError, TrackingError

EXIT_REFUSED = 2
EXIT_TRACKING_FAILED = 3
EXIT_INTERRUPTED = 130


@hydra.main(version_base="1.3", config_path="pkg://rlprune.conf", config_name="config")
def _main(cfg: DictConfig) -> float:
    from rlprune.api import run  # imported here so --help and --cfg stay fast

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        if cfg.wandb.group is None:
            cfg.wandb.group = str(hydra_cfg.sweep.dir)  # the runs of one sweep, grouped in W&B
        if not hydra_cfg.launcher._target_.endswith(".BasicLauncher"):
            cfg.progress_bar = False  # jobs side by side would draw their bars over each other's
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(cfg, run_dir)
    except TrackingError as exc:  # the run is done and its outputs stay: only the record failed
        print(f"error: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(EXIT_TRACKING_FAILED)
    except RlpruneError as exc:
        log = run_dir / "error.log"
        log.write_text(traceback.format_exc())
        print(f"error: {exc} (details: {log})", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job, runs the others, then reports the first failure
        sys.exit(EXIT_REFUSED)
    except KeyboardInterrupt:
        policy = run_dir / "policy.yaml"
        kept = f"the best policy so far is in {policy}" if policy.exists() else "no policy was found yet"
        again = f"; to continue, rerun with resume=true hydra.run.dir={run_dir}"
        resumable = (run_dir / "checkpoint").exists()
        print(f"error: interrupted; {kept}{again if resumable else ''}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    return float(report["accuracy"]["search_best_reward"])


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (a cluster's preemption, `kill`) ends the run as Ctrl-C does: outputs closed cleanly
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of ``python -m rlprune`` and of the ``rlprune`` console script."""
    if {"-m", "--multirun"} & set(sys.argv[1:]):
        from rlprune.config import check_sweep

        try:  # a bad value anywhere in the sweep stops it before any job starts
            check_sweep([arg for arg in sys.argv[1:] if not arg.startswith("-")])
        except RlpruneError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_REFUSED)
    _main()


if __name__ == "__main__":
    main()
