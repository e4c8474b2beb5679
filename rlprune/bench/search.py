"""Search quality at equal cost (BENCHMARKS.md §1): best reward-split accuracy per searcher.

Every searcher gets the same ``--evaluations`` on the same dense model, space and budget;
the table gives mean ± std over seeds of the best policy's reward-split accuracy, the
latency it reached (≤ budget), and the search's wall time.

    python -m rlprune.bench search --budgets 0.5 0.3 --agents ppo uniform random --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch

from rlprune.api import load_target, search
from rlprune.bench import compose_config
from rlprune.hardware import build_latency_model
from rlprune.io import write_json_atomic


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table and write JSON. Returns the results."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench search", description=__doc__)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--agents", nargs="+", default=["ppo", "uniform", "random"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--evaluations", type=int, default=1000)
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="extra Hydra overrides, e.g. hardware=arm_cpu"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search.json"))
    args = parser.parse_args(argv)

    base = [
        "wandb.mode=disabled",
        "progress_bar=false",
        f"search.evaluations={args.evaluations}",
        *args.overrides,
    ]
    cfg = compose_config(base)
    target = load_target(cfg)
    hardware = build_latency_model(cfg.hardware)
    cells = []
    for budget in args.budgets:
        for agent in args.agents:
            runs = []
            for seed in args.seeds:
                run = [f"agent={agent}", f"budget.latency={budget}", f"seed={seed}"]
                run_cfg = compose_config([*base, *run])
                result = search(run_cfg, target, hardware)
                runs.append(
                    {
                        "seed": seed,
                        "accuracy": result.best.accuracy,
                        "latency": result.best.latency,
                        "evaluations": result.evaluations,
                        "seconds": result.seconds,
                    }
                )
            acc = np.array([r["accuracy"] for r in runs])
            cells.append(
                {
                    "budget": budget,
                    "agent": agent,
                    "accuracy_mean": float(acc.mean()),
                    "accuracy_std": float(acc.std()),
                    "latency_max": max(r["latency"] for r in runs),
                    "seconds_mean": float(np.mean([r["seconds"] for r in runs])),
                    "runs": runs,
                }
            )
    results = {
        "benchmark": "search",
        "model": cfg.model._target_,
        "data": cfg.data.name,
        "hardware": hardware.name,
        "pattern": cfg.search.pattern,
        "evaluations": args.evaluations,
        "seeds": args.seeds,
        "dense_reward_accuracy": target.dense_reward.accuracy,
        "machine": f"{platform.machine()} {platform.processor()} threads={torch.get_num_threads()}",
        "cells": cells,
    }
    write_json_atomic(args.out, results)
    print(
        f"search quality: {cfg.data.name}, hardware={hardware.name}, pattern={cfg.search.pattern}, "
        f"{args.evaluations} evaluations, seeds {args.seeds}, "
        f"dense reward accuracy {target.dense_reward.accuracy:.4f}"
    )
    print(f"{'budget':>6}  {'agent':<8} {'best reward acc':>17}  {'latency max':>11}  {'search s':>8}")
    for c in cells:
        print(
            f"{c['budget']:>6}  {c['agent']:<8} {c['accuracy_mean']:.4f} ± {c['accuracy_std']:.4f}  "
            f"{c['latency_max']:>11.4f}  {c['seconds_mean']:>8.1f}"
        )
    print(f"written to {args.out}")
    return results
