"""A budget sweep two ways (docs/benchmarks.md, "Budget-conditioned search"): one agent per budget, or one
budget-conditioned agent.

Per-budget: a fresh agent searches each budget with ``--evaluations``. Conditioned: one agent
trains on episodes whose budget is drawn from the sweep (it is in the observation), with
``--share`` of the per-budget runs' total evaluations, and is then asked for each budget
(:func:`rlprune.api.search_budgets`). The table gives, per budget, mean ± std over seeds of the
best reward-split accuracy of both, and the evaluations and seconds each way spent in all.

    python -m rlprune.bench sweep --targets mnist1d-arm_cpu --budgets 0.5 0.35 0.25 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlprune.api import make_space, search, search_budgets
from rlprune.bench import QUIET, load, machine
from rlprune.bench.search import TARGETS
from rlprune.config import compose_config
from rlprune.io import write_json_atomic


def bench_target(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Both ways of sweeping ``args.budgets`` on one target, for every seed."""
    base = [*QUIET, f"agent={args.agent}", *TARGETS[name], *args.overrides]
    cfg = compose_config(base)
    target, hardware = load(cfg)
    space = make_space(cfg, target.model, target.splits.train_x[:1], target.layers, target.searched, hardware)
    conditioned_evaluations = max(
        len(args.budgets) + 1, round(args.share * args.evaluations * len(args.budgets))
    )
    per_budget: dict[float, list[float]] = {b: [] for b in args.budgets}
    conditioned: dict[float, list[float]] = {b: [] for b in args.budgets}
    seconds = {"per_budget": 0.0, "conditioned": 0.0}
    for seed in args.seeds:
        for budget in args.budgets:
            run = compose_config(
                [*base, f"search.evaluations={args.evaluations}", f"budget.latency={budget}", f"seed={seed}"]
            )
            start = time.perf_counter()
            per_budget[budget].append(search(run, target, hardware, space=space).best.accuracy)
            seconds["per_budget"] += time.perf_counter() - start
        run = compose_config([*base, f"search.evaluations={conditioned_evaluations}", f"seed={seed}"])
        start = time.perf_counter()
        best = search_budgets(run, target, hardware, args.budgets, space=space)
        seconds["conditioned"] += time.perf_counter() - start
        for budget, result in best.items():
            conditioned[budget].append(result.best.accuracy)
    rows = [
        {
            "budget": b,
            "per_budget_mean": float(np.mean(per_budget[b])),
            "per_budget_std": float(np.std(per_budget[b])),
            "conditioned_mean": float(np.mean(conditioned[b])),
            "conditioned_std": float(np.std(conditioned[b])),
            "per_budget": per_budget[b],
            "conditioned": conditioned[b],
        }
        for b in args.budgets
    ]
    return {
        "name": name,
        "dense_reward_accuracy": target.dense_reward.accuracy,
        "evaluations": {
            "per_budget": args.evaluations * len(args.budgets),
            "conditioned": conditioned_evaluations,
        },
        "seconds_per_seed": {k: v / len(args.seeds) for k, v in seconds.items()},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table and write JSON. Returns the results."""
    parser = argparse.ArgumentParser(prog="python -m rlprune.bench sweep", description=__doc__)
    parser.add_argument("--targets", nargs="+", default=["mnist1d-arm_cpu"], choices=sorted(TARGETS))
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.35, 0.25])
    parser.add_argument("--agent", default="ppo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--evaluations", type=int, default=500, help="per budget, for the per-budget agents")
    parser.add_argument(
        "--share", type=float, default=1 / 3, help="conditioned evaluations / per-budget total"
    )
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for every target")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.json"))
    args = parser.parse_args(argv)

    results = {
        "benchmark": "sweep",
        "agent": args.agent,
        "seeds": args.seeds,
        "machine": machine(),
        "targets": [],
    }
    for name in args.targets:
        results["targets"].append(bench_target(name, args))
        write_json_atomic(args.out, results)
    print(
        f"budget sweep: {args.agent}, one agent per budget against one budget-conditioned agent, "
        f"seeds {args.seeds}"
    )
    for t in results["targets"]:
        ev, sec = t["evaluations"], t["seconds_per_seed"]
        print(
            f"\n{t['name']}: dense reward {t['dense_reward_accuracy']:.4f}; evaluations per seed "
            f"{ev['per_budget']} (per budget) vs {ev['conditioned']} (conditioned); seconds per seed "
            f"{sec['per_budget']:.1f} vs {sec['conditioned']:.1f}"
        )
        print(f"{'budget':>6}  {'per-budget agents':>17}  {'conditioned agent':>17}  {'difference':>10}")
        for r in t["rows"]:
            print(
                f"{r['budget']:>6}  {r['per_budget_mean']:.4f} ± {r['per_budget_std']:.4f}  "
                f"{r['conditioned_mean']:.4f} ± {r['conditioned_std']:.4f}  "
                f"{r['conditioned_mean'] - r['per_budget_mean']:>+10.4f}"
            )
    print(f"\nwritten to {args.out}")
    return results
